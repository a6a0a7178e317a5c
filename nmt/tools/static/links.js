// The nmt serve page's links: every setting that changes the output goes in the address
// (`/?text=…&model=…&beam=…&sample=1&seed=…&glossary=…`), and a link is checked value by value when
// the page opens it: a malformed or out-of-range value is left out (the control keeps its default)
// and named in a note. Values only ever reach the page as text (input values), never as HTML.
"use strict";

/** Longer links are refused by the share action: chat tools, mail and proxies cut or drop them. */
export const MAX_LINK = 2000;
/** The API's largest seed (a signed 64-bit integer); larger than JavaScript numbers hold exactly. */
export const MAX_SEED = 9223372036854775807n;

const INT = /^\d{1,15}$/;
const DECIMAL = /^\d{1,15}(\.\d{1,15})?$/;

/** A whole number from `lo` to `hi` as text, or null. */
function intIn(raw, lo, hi) {
  if (!INT.test(raw)) return null;
  const n = Number(raw);
  return n >= lo && n <= hi ? String(n) : null;
}

/** A decimal number in `[lo, hi]` (or `(lo, hi]` with `open`), as text, or null. */
function numberIn(raw, lo, hi, open = false) {
  if (!DECIMAL.test(raw)) return null;
  const n = Number(raw);
  return (open ? n > lo : n >= lo) && n <= hi ? raw : null;
}

/** A seed: digits only, 0 to MAX_SEED (kept as text: it may not fit a JavaScript number). */
export function seedIn(raw) {
  if (!/^\d{1,19}$/.test(raw)) return null;
  return BigInt(raw) <= MAX_SEED ? String(BigInt(raw)) : null;
}

function flag(raw) {
  return { 1: true, true: true, 0: false, false: false }[raw] ?? null;
}

/** Each link key: the control it sets, how it is read, and what a valid value is (for the note). */
function linkFields(maxBeam) {
  return [
    { key: "beam", id: "beam", read: (v) => intIn(v, 1, maxBeam), want: `a whole number from 1 to ${maxBeam}` },
    { key: "n_best", id: "nbest", read: (v) => intIn(v, 1, maxBeam), want: `a whole number from 1 to ${maxBeam}` },
    { key: "length_penalty", id: "lp", read: (v) => numberIn(v, 0, 10), want: "a number from 0 to 10" },
    { key: "sample", id: "sample", check: true, read: flag, want: "1 or 0" },
    { key: "temperature", id: "temperature", read: (v) => numberIn(v, 0.001, 100), want: "a number from 0.001 to 100" },
    { key: "top_k", id: "topk", read: (v) => intIn(v, 0, Number.MAX_SAFE_INTEGER), want: "a whole number, 0 or more" },
    { key: "top_p", id: "topp", read: (v) => numberIn(v, 0, 1, true), want: "a number above 0 and at most 1" },
    { key: "seed", id: "seed", read: seedIn, want: `a whole number from 0 to ${MAX_SEED}` },
    { key: "markup", id: "markup", check: true, read: (v) => (v === "html" ? true : null), want: "html" },
    { key: "glossary", id: "glossary", read: (v) => v, want: "" },
  ];
}

/** The query string of settings `s` (see serve.js's readSettings), `seed` the seed used. */
export function linkOf(s, seed) {
  const params = new URLSearchParams({ text: s.text });
  for (const n of s.models) params.append("model", n);
  if (s.sample) {
    params.set("sample", "1");
    for (const [key, v] of [["temperature", s.temperature], ["top_k", s.topK], ["top_p", s.topP]]) {
      if (v !== null) params.set(key, v);
    }
    if (seed !== null) params.set("seed", seed);
  } else if (s.beam !== null) {
    params.set("beam", s.beam);
  }
  if (s.nBest !== null) params.set("n_best", s.nBest);
  if (s.lp !== null) params.set("length_penalty", s.lp);
  if (s.markup) params.set("markup", "html");
  if (!s.sample && s.glossary.trim()) params.set("glossary", s.glossary.trim());  // beam search only
  return "?" + params.toString();
}

function shown(value) {
  return value.length > 40 ? value.slice(0, 39) + "…" : value;
}

/** Sets the form's controls from a link's `params`; returns `{text, notes}`, notes naming each
 * value left out. `$` finds a control by id. */
export function readLink(params, $, maxBeam) {
  const notes = [];
  for (const f of linkFields(maxBeam)) {
    const raw = params.get(f.key);
    if (raw === null) continue;
    const value = f.read(f.check ? raw : raw.trim());
    if (value === null) {
      notes.push(`${f.key} “${shown(raw)}” (${f.want})`);
      continue;
    }
    if (f.check) $(f.id).checked = value; else $(f.id).value = value;
  }
  const text = params.get("text");
  if (text) $("source").value = text;
  return { text, notes };
}

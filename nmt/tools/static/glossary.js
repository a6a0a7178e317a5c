// The page's glossary box: one term a line, "source term → target term" (a tab, "=>" or "=" also
// separate them). The target terms whose source term occurs in the sentence are sent as the API's
// `constraints`; as with `nmt translate --glossary`, a source term matches whole words, case-sensitively.
"use strict";

const SEPARATOR = /\s*(?:→|=>|\t|=)\s*/;

/** `{terms: [[source, target], ...], problem}`: the box's terms, or the first line that is not one. */
export function readGlossary(text) {
  const terms = [];
  const lines = text.split("\n");
  for (let k = 0; k < lines.length; k++) {
    const line = lines[k].trim();
    if (!line) continue;
    const parts = line.split(SEPARATOR);
    if (parts.length !== 2 || !parts[0] || !parts[1]) {
      return { terms, problem: `Glossary line ${k + 1} (“${line}”): write source term → target term.` };
    }
    terms.push([parts[0], parts[1]]);
  }
  return { terms, problem: null };
}

function escapeRegExp(s) { return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); }

/** The target terms (each once, in sentence order) of the source terms that occur in `text` as
 * whole words; where matches overlap, the longest (then the leftmost) wins, as in `nmt translate`. */
export function termsIn(text, terms) {
  const found = [];
  for (const [src, tgt] of terms) {
    const words = src.split(/\s+/).map(escapeRegExp).join("\\s+");
    const re = new RegExp(`(?<![\\p{L}\\p{N}_])${words}(?![\\p{L}\\p{N}_])`, "gu");
    for (const m of text.matchAll(re)) found.push({ start: m.index, end: m.index + m[0].length, tgt });
  }
  found.sort((a, b) => (b.end - b.start) - (a.end - a.start) || a.start - b.start);
  const taken = [];
  for (const f of found) if (taken.every((t) => f.end <= t.start || f.start >= t.end)) taken.push(f);
  const out = [];
  for (const f of taken.sort((a, b) => a.start - b.start)) if (!out.includes(f.tgt)) out.push(f.tgt);
  return out;
}

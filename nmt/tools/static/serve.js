// The nmt serve page: translate with one or more served runs and show their attention.
// Plain browser JavaScript modules (no build step, no network beyond this server's /api).
"use strict";

import { $, el } from "./dom.js";
import { hideTip } from "./heatmap.js";
import { readGlossary, termsIn } from "./glossary.js";
import { MAX_LINK, linkOf, readLink } from "./links.js";
import { describe, renderPanel } from "./panel.js";

const DEFAULT_MAX_CHARS = 1000;  // the server's default when /api/models gives no limits
const LIVE_DELAY_MS = 400;       // translate-as-you-type waits this long after the last key
const LIVE_KEY = "nmt-serve-live";
let MODELS = [];
let LIMITS = {};
let liveTimer = 0;     // the pending translate-as-you-type request
let shared = null;     // the link of the translation on screen (null: none shown)

// ------------------------------------------------------------------------------ messages
function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(message) { $("status").textContent = message; }

function clearResults() {
  $("results").textContent = "";
  hideTip();
  shared = null;  // and the share action's link with it
  $("share-note").textContent = "";
  $("share-link").hidden = true;
}

/** A refusal before or after asking the server: the old result goes, so nothing stale stays on screen. */
function fail(message) {
  clearResults();
  showError(message);
  setStatus("");
}

// ------------------------------------------------------------------------------ settings
function selectedModels() {
  return Array.from(document.querySelectorAll("#models input:checked")).map((i) => i.value);
}

function numberField(id) {
  const raw = $(id).value.trim();
  return raw === "" ? null : Number(raw);
}

function maxChars() { return LIMITS.max_chars || DEFAULT_MAX_CHARS; }

/** The beam a model searches with: the page's Beam field, or the run's recipe. */
function beamOf(name, beam) {
  if (beam !== null) return beam;
  const m = MODELS.find((x) => x.name === name);
  return m ? m.decode.beam : null;
}

/** N-best never exceeds the beam: lowered in the field when Beam is set, per model otherwise. */
function clampNbest() {
  const beam = numberField("beam"), field = $("nbest"), note = $("nbest-note");
  note.textContent = "";
  if (sampling()) { field.max = LIMITS.max_beam || 16; return; }  // n-best: the number of samples
  field.max = beam !== null && beam >= 1 ? beam : (LIMITS.max_beam || 16);
  const n = numberField("nbest");
  if (n === null) return;
  if (beam !== null && beam >= 1 && n > beam) {
    field.value = String(beam);
    note.textContent = `N-best lowered to ${beam}: at most the beam.`;
    return;
  }
  if (beam !== null) return;
  const small = selectedModels().map((name) => [name, beamOf(name, null)]).filter(([, b]) => b !== null && b < n);
  if (small.length) {
    note.textContent = small.map(([name, b]) => `${name} searches with beam ${b}: n-best ${b}`).join("; ") + ".";
  }
}

function sampling() { return $("sample").checked; }

/** Sampling on: its fields shown, the beam (which does not apply) disabled with a cue saying why. */
function showSampling() {
  const on = sampling();
  $("sampling").hidden = !on;
  $("beam").disabled = on;
  $("glossary").disabled = on;
  $("beam-cue").hidden = !on;
  clampNbest();
}

function readSettings() {
  return { text: $("source").value.trim(), models: selectedModels(), beam: numberField("beam"),
    nBest: numberField("nbest"), lp: numberField("lp"), glossary: $("glossary").value,
    markup: $("markup").checked, sample: sampling(), temperature: numberField("temperature"),
    topK: numberField("topk"), topP: numberField("topp"), seed: $("seed").value.trim() };
}

/** The seed a sampling request sends: the Seed field's, else a new random one (shown with the
 * answer and put in the link, so the translation can be reproduced and shared). */
function seedFor(s) {
  if (!s.sample) return null;
  if (s.seed !== "") return String(BigInt(s.seed));  // checked digits; "007" is no JSON number
  return String(crypto.getRandomValues(new Uint32Array(1))[0]);
}

/** The JSON text of a request: the seed written as digits, exact up to the API's 2^63 - 1. */
function requestJson(body) {
  const { seed, ...rest } = body;
  const json = JSON.stringify(rest);
  return seed === undefined ? json : `${json.slice(0, -1)},"seed":${seed}}`;
}

function requestBody(s, name, seed) {
  const body = { text: s.text, model: name, return_attention: true, return_scores: true };
  if (s.sample) {
    body.sample = true;
    if (s.nBest !== null) body.n_best = s.nBest;  // the number of samples
    if (s.temperature !== null) body.temperature = s.temperature;
    if (s.topK !== null) body.top_k = s.topK;
    if (s.topP !== null) body.top_p = s.topP;
    body.seed = seed;
  } else {
    const beam = beamOf(name, s.beam);
    if (s.nBest !== null) body.n_best = beam !== null ? Math.min(s.nBest, beam) : s.nBest;
    if (s.beam !== null) body.beam = s.beam;
  }
  if (s.lp !== null) body.length_penalty = s.lp;
  const targets = s.sample ? [] : termsIn(s.text, readGlossary(s.glossary).terms);
  if (targets.length) body.constraints = [targets];
  if (s.markup) body.markup = "html";
  return body;
}

function searchNote(body) {
  const beam = body.beam ?? `${beamOf(body.model, null)} (the run's recipe)`;
  const search = body.sample
    ? `sampling · seed ${body.seed}` + (body.temperature !== undefined ? ` · temperature ${body.temperature}` : "") +
      (body.top_k !== undefined ? ` · top-k ${body.top_k}` : "") + (body.top_p !== undefined ? ` · top-p ${body.top_p}` : "") +
      ` · samples ${body.n_best ?? 1}`
    : `beam ${beam} · n-best ${body.n_best ?? 1}`;
  return search +
    (body.length_penalty !== undefined ? ` · length penalty ${body.length_penalty}` : "") +
    (body.constraints ? ` · glossary: ${body.constraints[0].join(", ")}` : "") +
    (body.markup ? " · HTML markup" : "");
}

// ------------------------------------------------------------------------------ links
/** The address of the translation on screen: in the address bar (unless too long), and shared. */
function remember(s, seed) {
  const link = location.origin + location.pathname + linkOf(s, seed);
  shared = link;
  history.replaceState(null, "", link.length <= MAX_LINK ? link : location.pathname);
}

/** "Copy link": the translation on screen as a link, refused (with the reason) when too long. */
async function share() {
  const note = $("share-note"), box = $("share-link");
  box.hidden = true;
  if (shared === null) { note.textContent = "Translate first: the link opens the translation shown."; return; }
  if (shared.length > MAX_LINK) {
    note.textContent = `No link: it would be ${shared.length.toLocaleString("en")} characters, over ` +
      `${MAX_LINK.toLocaleString("en")} (the glossary is too long for a link). Shorten the glossary to share.`;
    return;
  }
  box.value = shared;
  box.hidden = false;
  try {
    await navigator.clipboard.writeText(shared);
    note.textContent = "Link copied.";
  } catch (_) {
    note.textContent = "Copy the link:";
    box.select();
  }
}

function showLinkNotes(notes) {
  const box = $("link-note");
  box.textContent = notes.length ? `Not taken from the link (the defaults instead): ${notes.join("; ")}.` : "";
  box.hidden = !notes.length;
}

// ------------------------------------------------------------------------------ requests
// A server started with --token-file answers the API only with its token: asked once on the
// first 401, kept for this tab only (sessionStorage), sent as "Authorization: Bearer TOKEN".
async function api(url, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const token = sessionStorage.getItem("nmt-token");
    const headers = { ...(options.headers || {}), ...(token ? { Authorization: `Bearer ${token}` } : {}) };
    const r = await fetch(url, { ...options, headers });
    if (r.status !== 401 || attempt > 0) return r;
    const given = window.prompt("This server needs its access token (the contents of its --token-file):");
    if (!given) return r;
    sessionStorage.setItem("nmt-token", given.trim());
  }
}

let latest = 0;        // the number of the newest request; older answers are dropped
let inflight = null;   // {key, controller} of the request being answered

async function ask(s, seed, signal) {
  return Promise.all(s.models.map(async (name) => {
    const body = requestBody(s, name, seed);
    const r = await api("/api/translate", { method: "POST", signal,
      headers: { "Content-Type": "application/json" }, body: requestJson(body) });
    let data;
    try { data = await r.json(); } catch (_) { data = { error: `HTTP ${r.status}` }; }
    return { name, ok: r.ok, status: r.status, data, body };
  }));
}

function checkInput(s, live) {
  if (!s.text) return live ? "" : "Type a sentence to translate.";
  if (s.text.length > maxChars()) {
    return `The sentence has ${s.text.length.toLocaleString("en")} characters; the server translates at most ` +
      `${maxChars().toLocaleString("en")} at once: shorten it or split it into sentences.`;
  }
  if (!s.models.length) return "Choose at least one model.";
  const outOfRange = fieldProblem();
  if (outOfRange) return outOfRange;
  if (s.sample && s.seed !== "" && !/^\d+$/.test(s.seed)) {
    return "Seed: a whole number (0 or more), or empty for a new random seed each time.";
  }
  const glossary = readGlossary(s.sample ? "" : s.glossary);
  if (glossary.problem) return glossary.problem;
  return null;
}

/** The first number field in use whose value is out of its range or not a number, named by its
 * label (the form is not validated by the browser: every refusal goes to the error area). */
function fieldProblem() {
  for (const input of document.querySelectorAll("#form input[type=number]")) {
    if (input.disabled || input.closest("[hidden]")) continue;
    const v = input.validity;
    if (v.rangeUnderflow || v.rangeOverflow || v.badInput) {
      const label = input.closest("label").firstChild.textContent.trim();
      return `${label}: ${input.validationMessage}`;
    }
  }
  return null;
}

function setBusy(busy) {
  const results = $("results");
  results.setAttribute("aria-busy", String(busy));
  results.classList.toggle("busy", busy);
}

function show(answers, s, seed, started) {
  clearResults();
  const failed = answers.filter((a) => !a.ok);
  if (failed.length === answers.length) {
    fail(failed.map((a) => `${a.name}: ${a.data.error || `HTTP ${a.status}`}`).join("\n"));
    return;
  }
  for (const a of answers) {
    $("results").append(renderPanel(a, MODELS.find((m) => m.name === a.name), searchNote(a.body)));
  }
  showError(failed.map((a) => `${a.name}: ${a.data.error || `HTTP ${a.status}`}`).join("\n"));
  setStatus(`Translated with ${answers.length - failed.length} of ${answers.length} model(s) in ` +
    `${Math.round(performance.now() - started)} ms.`);
  remember(s, seed);
  if (seed !== null) showSeed(s.seed === "" ? seed : null);
}

/** Under the Seed field: the random seed just used, with a button that keeps it. */
function showSeed(random) {
  const box = $("seed-used");
  box.textContent = "";
  if (random === null) return;
  const keep = el("button", { type: "button", class: "keep-seed" }, "Keep it");
  keep.addEventListener("click", () => { $("seed").value = random; box.textContent = ""; });
  box.append(`Random seed used: ${random}. `, keep);
}

/** Sends the form's request; a newer one cancels it, the same one while it runs is dropped. */
async function translate({ live = false } = {}) {
  clearTimeout(liveTimer);
  const s = readSettings();
  const problem = checkInput(s, live);
  if (problem !== null) {
    if (inflight) inflight.controller.abort();
    inflight = null;
    latest += 1;
    setBusy(false);
    if (problem) fail(problem); else { clearResults(); showError(""); setStatus(""); }
    return;
  }
  const key = JSON.stringify(s);
  if (inflight && inflight.key === key) return;  // a second Enter for the same request
  if (inflight) inflight.controller.abort();
  const mine = ++latest, controller = new AbortController();
  inflight = { key, controller };
  setBusy(true);
  setStatus("Translating…");
  const started = performance.now();
  const seed = seedFor(s);
  try {
    const answers = await ask(s, seed, controller.signal);
    if (mine === latest) { showError(""); show(answers, s, seed, started); }
  } catch (err) {
    if (mine === latest && err.name !== "AbortError") fail(`The server did not answer: ${err}`);
  } finally {
    if (mine === latest) { inflight = null; setBusy(false); }
  }
}

// ------------------------------------------------------------------------------ typing
function liveOn() { return $("live").checked; }

function scheduleLive() {
  clearTimeout(liveTimer);
  if (liveOn()) liveTimer = setTimeout(() => translate({ live: true }), LIVE_DELAY_MS);
}

function updateCounter() {
  const n = $("source").value.trim().length, max = maxChars(), box = $("counter");
  const over = n > max;
  box.textContent = `${n.toLocaleString("en")} / ${max.toLocaleString("en")} characters` +
    (over ? `: ${(n - max).toLocaleString("en")} too many` : "");
  box.classList.toggle("over", over);
  $("source").setAttribute("aria-invalid", String(over));
}

// ------------------------------------------------------------------------------ start-up
async function loadModels() {
  const r = await api("/api/models");
  const data = await r.json();
  MODELS = data.models;
  LIMITS = data.limits || {};
  const box = $("models");
  box.textContent = "";
  box.append(el("legend", {}, MODELS.length > 1 ? "Models (checked ones side by side)" : "Model"));
  const params = new URLSearchParams(location.search);
  const wanted = params.getAll("model").flatMap((v) => v.split(",")).filter(Boolean);
  const unknown = wanted.filter((n) => !MODELS.some((m) => m.name === n));
  if (unknown.length) showError(`Unknown model(s) in the link: ${unknown.join(", ")}; served: ${MODELS.map((m) => m.name).join(", ")}`);
  for (const m of MODELS) {
    const checked = wanted.length && !unknown.length ? wanted.includes(m.name) : true;
    box.append(el("label", { title: describe(m) },
      el("input", { type: "checkbox", name: "model", value: m.name, checked }), ` ${m.name} (${m.attention})`));
  }
  if (LIMITS.max_beam) { $("beam").max = LIMITS.max_beam; $("nbest").max = LIMITS.max_beam; }
  if (MODELS.length) $("beam").placeholder = String(MODELS[0].decode.beam);
  const { text, notes } = readLink(params, $, LIMITS.max_beam || 16);
  showLinkNotes(notes);
  return text;
}

function wire() {
  $("form").addEventListener("submit", (e) => { e.preventDefault(); translate(); });
  $("source").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("form").requestSubmit();
    }
  });
  $("source").addEventListener("input", () => { updateCounter(); scheduleLive(); });
  $("glossary").addEventListener("input", scheduleLive);
  $("share").addEventListener("click", share);
  $("sample").addEventListener("change", showSampling);
  for (const id of ["beam", "nbest"]) $(id).addEventListener("input", clampNbest);
  $("form").addEventListener("change", (e) => {
    if (e.target.id === "live") {
      localStorage.setItem(LIVE_KEY, liveOn() ? "on" : "off");
      if (!liveOn()) clearTimeout(liveTimer);
      return;
    }
    clampNbest();
    if (e.target.id !== "source" && e.target.id !== "glossary") scheduleLive();  // those two: on input
  });
  $("live").checked = localStorage.getItem(LIVE_KEY) !== "off";
}

document.addEventListener("DOMContentLoaded", async () => {
  wire();
  try {
    const text = await loadModels();
    updateCounter();
    showSampling();
    if (text) await translate();
  } catch (err) {
    showError(`Could not load the served models: ${err}`);
  }
});

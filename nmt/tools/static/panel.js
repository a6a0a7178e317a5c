// One model's answer on the nmt serve page: the best translation (low-confidence words marked),
// the n-best list, the attention heatmap and, for self-attention encoders, a map per layer and head.
"use strict";

import { LOW_CONFIDENCE, compact, el, formatProb, weightColor } from "./dom.js";
import { heatmap } from "./heatmap.js";

export function describe(m) {
  const enc = m.encoder;
  const parts = [
    `${m.src_lang}→${m.tgt_lang}`,
    `${m.attention} attention` + (m.window ? ` (window D = ${m.window})` : ""),
    m.activation,
    `encoder ${enc.layers}×${enc.hidden_size}${enc.bidirectional ? " bidirectional" : ""}` +
      (enc.self_attention_layers ? ` + ${enc.self_attention_layers} self-attention layers × ${enc.self_attention_heads} heads` : ""),
    `decoder ${m.decoder.layers}×${m.decoder.hidden_size}`,
    `${compact(m.parameters)} parameters`,
  ];
  if (m.test_bleu) parts.push(`test BLEU ${m.test_bleu.bleu.toFixed(2)} (beam ${m.test_bleu.beam})`);
  return parts.join(" · ");
}

// ------------------------------------------------------------------------------ low confidence
const WORD_START = "▁";  // SentencePiece's mark of a piece that starts a word

/** The words of a hypothesis with the lowest probability of their pieces, or null when the pieces
 * do not spell out its text word by word (unknown pieces, normalisation): then nothing is marked. */
export function wordProbs(hyp) {
  if (!hyp.token_log_probs || !hyp.tokens) return null;
  const words = [];
  hyp.tokens.forEach((piece, k) => {
    if (piece === "</s>") return;
    const p = Math.exp(hyp.token_log_probs[k]);
    if (piece.startsWith(WORD_START) || !words.length) words.push({ word: "", p: 1 });
    const w = words[words.length - 1];
    w.word += piece.startsWith(WORD_START) ? piece.slice(1) : piece;
    w.p = Math.min(w.p, p);
  });
  const spelled = words.filter((w) => w.word !== "");
  const text = hyp.text.split(/\s+/).filter(Boolean);
  if (spelled.length !== text.length || spelled.some((w, k) => w.word !== text[k])) return null;
  return spelled;
}

/** Word index → the glossary term whose pieces made that word (the answer's `constraint_spans`). */
function termWords(hyp) {
  const of = new Map();
  for (const span of hyp.constraint_spans || []) for (const w of span.words) of.set(w, span.term);
  return of;
}

/** A word of the best translation, in <mark> when it is of low confidence (underlined, not only
 * coloured) or comes from a glossary term (highlighted); the title says which. */
function markedWord(word, prob, term) {
  const low = prob !== null && prob < LOW_CONFIDENCE;
  if (!low && term === undefined) return word;
  const titles = [];
  if (low) titles.push(`probability ${formatProb(prob)} (below ${LOW_CONFIDENCE})`);
  if (term !== undefined) titles.push(`from the glossary term “${term}”`);
  const kind = [low ? "low" : "", term !== undefined ? "term" : ""].filter(Boolean).join(" ");
  return el("mark", { class: kind, title: titles.join("; ") }, word);
}

/** The best translation as text, its low-confidence and glossary words marked. With HTML markup
 * the translation's tags are shown as written (as text, never rendered) and nothing is marked. */
function bestSentence(hyp, lang, markup) {
  const p = el("p", { class: markup ? "best markup" : "best", lang });
  const probs = hyp.text && !markup ? wordProbs(hyp) : null;
  const terms = markup ? new Map() : termWords(hyp);
  if (!probs && !terms.size) { p.textContent = hyp.text || "(empty)"; return { p, low: null }; }
  const low = [];
  hyp.text.split(/\s+/).filter(Boolean).forEach((word, k) => {
    if (k) p.append(" ");
    const prob = probs ? probs[k].p : null;
    if (prob !== null && prob < LOW_CONFIDENCE) low.push(probs[k]);
    p.append(markedWord(word, prob, terms.get(k)));
  });
  return { p, low: probs ? low : null };
}

/** Which glossary terms the best translation holds (null without a glossary). */
function termNote(hyp) {
  if (!hyp.constraint_spans || !hyp.constraint_spans.length) return null;
  const found = hyp.constraint_spans.filter((s) => s.tokens !== null).map((s) => `“${s.term}”`);
  const missing = hyp.constraint_spans.filter((s) => s.tokens === null).map((s) => `“${s.term}”`);
  const note = el("p", { class: "terms-note help" });
  if (found.length) note.append(el("span", { class: "term-sample", "aria-hidden": "true" }, "highlighted"),
    `: glossary term${found.length > 1 ? "s" : ""} ${found.join(", ")}`);
  if (missing.length) note.append(`${found.length ? "; " : ""}not placed (no room in the output): ${missing.join(", ")}`);
  return note;
}

function lowNote(low) {
  if (low === null) return null;
  const note = el("p", { class: "lowconf help" });
  if (!low.length) note.append(`No word below probability ${LOW_CONFIDENCE}.`);
  else {
    note.append(el("span", { class: "low-sample", "aria-hidden": "true" }, "wavy"),
      ` underline: probability below ${LOW_CONFIDENCE} (lowest piece of the word): `);
    note.append(low.map((w) => `“${w.word}” ${formatProb(w.p)}`).join(", "));
  }
  return note;
}

// ------------------------------------------------------------------------------ panels
function legend(extra) {
  const p = el("p", { class: "legend" },
    el("span", { class: "swatch", style: `background:${weightColor(0.05)}` }), "low ",
    el("span", { class: "swatch", style: `background:${weightColor(1)}` }), "high weight; bar: target piece probability",
    ` (bold, orange: below ${LOW_CONFIDENCE})`);
  if (extra) p.append(" · ", extra);
  return p;
}

function mapBox() {
  const wrap = el("div", { class: "heatmap-wrap" });
  const hint = el("p", { class: "scroll-hint help", hidden: true }, "Wider than the panel: scroll sideways →");
  const readout = el("p", { class: "readout", "aria-live": "polite" });
  return { wrap, hint, readout };
}

function renderSelfAttention(parent, tr) {
  const maps = tr.self_attention;
  if (!maps || !maps.length) return;
  const section = el("section", { class: "selfatt" });
  section.append(el("h3", {}, "Encoder self-attention (per layer and head)"));
  const controls = el("div", { class: "selfatt-controls", role: "group", "aria-label": "Layer and head" });
  const { wrap, hint, readout } = mapBox();
  let layer = 0, head = 0;
  const buttons = [];
  function draw() {
    for (const b of buttons) b.setAttribute("aria-pressed", String(+b.dataset.layer === layer && +b.dataset.head === head));
    readout.textContent = "";
    heatmap(wrap, readout, { rows: tr.src_tokens, cols: tr.src_tokens, weights: maps[layer][head],
      kind: "selfattention", rowName: "query", colName: "key",
      label: `Self-attention, layer ${layer + 1}, head ${head + 1}` });
  }
  maps.forEach((heads, l) => {
    controls.append(el("span", { class: "help" }, `layer ${l + 1}:`));
    heads.forEach((_, h) => {
      const b = el("button", { type: "button", "data-layer": l, "data-head": h, "aria-pressed": "false" }, `head ${h + 1}`);
      b.addEventListener("click", () => { layer = l; head = h; draw(); });
      buttons.push(b);
      controls.append(b);
    });
  });
  section.append(controls, wrap, hint, readout);
  parent.append(section);
  draw();
}

function nbestList(hyps, show) {
  const list = el("ol", { class: "nbest", "aria-label": "n-best translations" });
  const buttons = hyps.map((h, k) => {
    const b = el("button", { type: "button", "aria-pressed": String(k === 0),
      title: "show this hypothesis's attention" },
    el("span", { class: "text" }, `${k + 1}. ${h.text || "(empty)"}`),
    el("span", { class: "score" }, `score ${h.score.toFixed(3)} · P ${formatProb(Math.exp(h.log_prob))}`));
    b.addEventListener("click", () => show(k));
    list.append(el("li", {}, b));
    return b;
  });
  return { list, buttons };
}

/** The panel of one model's answer {name, ok, status, data}; `model` is its /api/models summary. */
export function renderPanel(answer, model, settings) {
  const panel = el("article", { class: "panel", "data-model": answer.name, "aria-label": `Model ${answer.name}` });
  panel.append(el("h2", {}, answer.name));
  if (model) panel.append(el("p", { class: "meta" }, describe(model)));
  if (!answer.ok) {
    panel.append(el("p", { class: "error", role: "alert" }, answer.data.error || `HTTP ${answer.status}`));
    return panel;
  }
  if (settings) panel.append(el("p", { class: "meta search" }, settings));
  const tr = answer.data.translations[0];
  const hyps = tr.hypotheses;
  const texts = el("div", { class: "texts" }), maps = el("div", { class: "maps" });
  panel.append(el("div", { class: "cols" }, texts, maps));
  const best = bestSentence(hyps[0], model ? model.tgt_lang : null, answer.body && answer.body.markup);
  texts.append(best.p);
  for (const note of [lowNote(best.low), termNote(hyps[0])]) if (note) texts.append(note);
  const { wrap, hint, readout } = mapBox();
  const { list, buttons } = nbestList(hyps, show);
  texts.append(list);
  const localNote = answer.data.attention === "local-p" && answer.data.window
    ? el("span", {}, el("span", { class: "swatch", style: "background:var(--hl);border-radius:50%" }),
      `predicted centre p_t, dashed: window |s − p_t| ≤ ${answer.data.window}`)
    : null;
  maps.append(el("h3", {}, "Attention (target × source pieces)"), legend(localNote), wrap, hint, readout);
  function show(k) {
    buttons.forEach((b, n) => b.setAttribute("aria-pressed", String(n === k)));
    const h = hyps[k];
    readout.textContent = "";
    if (!h.attention || !h.tokens.length) {
      wrap.textContent = "";
      wrap.append(el("p", { class: "help" }, "No attention: the input was empty after cleaning."));
      return;
    }
    heatmap(wrap, readout, { rows: h.tokens, cols: tr.src_tokens, weights: h.attention,
      rowProbs: h.token_log_probs, positions: h.positions, window: answer.data.window,
      kind: "attention", rowName: "target", colName: "source",
      label: `Attention of hypothesis ${k + 1} (${answer.name})` });
  }
  show(0);
  renderSelfAttention(maps, tr);
  return panel;
}

// The nmt serve page: translate with one or more served runs and show their attention.
// Plain browser JavaScript (no build step, no network beyond this server's /api).
"use strict";

(() => {
  const SVGNS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let MODELS = [];
  let LIMITS = {};

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svgEl(tag, attrs = {}, text) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function setStatus(message) { $("status").textContent = message; }

  function compact(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e3) return Math.round(n / 1e3) + "k";
    return String(n);
  }

  function describe(m) {
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

  function shortPiece(piece) {
    return piece.length > 16 ? piece.slice(0, 15) + "…" : piece;
  }

  function weightColor(w) {
    const x = Math.max(0, Math.min(1, w));
    return `hsl(214, 78%, ${(97 - 64 * x).toFixed(1)}%)`;
  }

  // ------------------------------------------------------------------------------ heatmap
  // rows × cols weights as an SVG grid; hovering (or arrow keys after focusing it) highlights a
  // cell's row and column and writes the weight into `readout`.
  function heatmap(wrap, readout, opts) {
    const { rows, cols, weights, kind } = opts;
    const probs = opts.rowProbs || null;
    const T = rows.length, S = cols.length;
    const cell = Math.max(18, Math.min(30, Math.floor(620 / Math.max(S, 1))));
    const rowLabelW = Math.min(140, 16 + 8 * Math.max(1, ...rows.map((r) => shortPiece(r).length)));
    const probW = probs ? 46 : 0;
    const left = rowLabelW + probW;
    const top = Math.min(110, 16 + 5.2 * Math.max(1, ...cols.map((c) => shortPiece(c).length)));
    const W = Math.ceil(left + S * cell + 40), H = Math.ceil(top + T * cell + 6);
    const root = svgEl("svg", {
      class: `heatmap ${kind}`, width: W, height: H, viewBox: `0 0 ${W} ${H}`, tabindex: 0,
      role: "img", "data-rows": T, "data-cols": S,
      "aria-label": `${opts.label}: ${T} ${opts.rowName} pieces by ${S} ${opts.colName} pieces; ` +
        "use the arrow keys to read the weights",
    });
    const cells = svgEl("g", { class: "cells" });
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < S; j++) {
        const w = weights[i][j];
        cells.append(svgEl("rect", {
          class: "cell", x: left + j * cell, y: top + i * cell, width: cell, height: cell,
          fill: weightColor(w), "data-i": i, "data-j": j, "data-w": w,
        }));
      }
    }
    root.append(cells);
    const rowLabels = [], colLabels = [];
    for (let i = 0; i < T; i++) {
      const y = top + (i + 0.5) * cell;
      const t = svgEl("text", { class: "label row", x: rowLabelW - 6, y, "text-anchor": "end",
        "dominant-baseline": "middle", "data-i": i }, shortPiece(rows[i]));
      rowLabels.push(t);
      root.append(t);
      if (probs) {
        const p = Math.exp(probs[i]);
        root.append(svgEl("rect", { class: "probbar", x: rowLabelW, y: top + i * cell + 3,
          width: Math.max(1, (probW - 8) * p), height: cell - 6 }));
        root.append(svgEl("text", { class: "prob", x: rowLabelW + 2, y, "dominant-baseline": "middle" },
          p.toFixed(2)));
      }
    }
    for (let j = 0; j < S; j++) {
      const x = left + (j + 0.5) * cell, y = top - 9;
      const t = svgEl("text", { class: "label col", x, y, transform: `rotate(-55 ${x} ${y})`, "data-j": j },
        shortPiece(cols[j]));
      colLabels.push(t);
      root.append(t);
    }
    // local-p: the predicted centre p_t and the window |s - p_t| <= D of each target step
    const positions = opts.positions, D = opts.window;
    if (positions && D) {
      const overlay = svgEl("g", { class: "localp" });
      for (let i = 0; i < Math.min(T, positions.length); i++) {
        const p = positions[i];
        const lo = Math.max(0, p - D + 0.5), hi = Math.min(S, p + D + 0.5);
        overlay.append(svgEl("rect", { class: "window", x: left + lo * cell, y: top + i * cell + 2,
          width: Math.max(0, (hi - lo) * cell), height: cell - 4 }));
        overlay.append(svgEl("circle", { class: "centre", cx: left + (p + 0.5) * cell,
          cy: top + (i + 0.5) * cell, r: Math.max(3, cell / 7) }));
      }
      root.append(overlay);
    }
    const rowBand = svgEl("rect", { class: "band", x: left, width: S * cell, height: cell, y: top });
    const colBand = svgEl("rect", { class: "band", y: top, width: cell, height: T * cell, x: left });
    root.append(rowBand, colBand);

    let active = null;
    function clear() {
      if (active) active.classList.remove("active");
      active = null;
      for (const t of rowLabels.concat(colLabels)) t.classList.remove("on");
      rowBand.classList.remove("on");
      colBand.classList.remove("on");
    }
    function showRow(i) {
      rowBand.setAttribute("y", top + i * cell);
      rowBand.classList.add("on");
      rowLabels[i].classList.add("on");
    }
    function showCol(j) {
      colBand.setAttribute("x", left + j * cell);
      colBand.classList.add("on");
      colLabels[j].classList.add("on");
    }
    function probText(i) {
      return probs ? ` (probability ${Math.exp(probs[i]).toFixed(3)})` : "";
    }
    function focusCell(i, j) {
      clear();
      active = cells.children[i * S + j];
      active.classList.add("active");
      showRow(i);
      showCol(j);
      let text = `${opts.rowName} “${rows[i]}”${probText(i)} → ${opts.colName} “${cols[j]}”: ` +
        `weight ${weights[i][j].toFixed(3)}`;
      if (positions && D && i < positions.length) {
        text += ` · predicted centre p = ${positions[i].toFixed(2)}, window ${Math.max(0, positions[i] - D).toFixed(1)}` +
          `–${Math.min(S - 1, positions[i] + D).toFixed(1)}`;
      }
      readout.textContent = text;
      root.dataset.i = i;
      root.dataset.j = j;
    }
    function argmax(values) {
      let k = 0;
      values.forEach((v, n) => { if (v > values[k]) k = n; });
      return k;
    }
    function focusRow(i) {
      clear();
      showRow(i);
      const j = argmax(weights[i]);
      readout.textContent = `${opts.rowName} “${rows[i]}”${probText(i)}: most weight on ` +
        `${opts.colName} “${cols[j]}” (${weights[i][j].toFixed(3)})`;
    }
    function focusCol(j) {
      clear();
      showCol(j);
      const column = weights.map((row) => row[j]);
      const i = argmax(column);
      const total = column.reduce((a, b) => a + b, 0);
      readout.textContent = `${opts.colName} “${cols[j]}”: largest weight ${column[i].toFixed(3)} from ` +
        `${opts.rowName} “${rows[i]}”; total over ${opts.rowName} pieces ${total.toFixed(3)}`;
    }
    root.addEventListener("mouseover", (e) => {
      const t = e.target;
      if (t.classList.contains("cell")) focusCell(+t.dataset.i, +t.dataset.j);
      else if (t.classList.contains("row")) focusRow(+t.dataset.i);
      else if (t.classList.contains("col")) focusCol(+t.dataset.j);
    });
    root.addEventListener("focus", () => { if (!active && T && S) focusCell(0, 0); });
    root.addEventListener("keydown", (e) => {
      if (!T || !S) return;
      let i = active ? +root.dataset.i : 0, j = active ? +root.dataset.j : 0;
      const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
      if (moves[e.key]) {
        i = Math.max(0, Math.min(T - 1, i + moves[e.key][0]));
        j = Math.max(0, Math.min(S - 1, j + moves[e.key][1]));
      } else if (e.key === "Home") j = 0;
      else if (e.key === "End") j = S - 1;
      else if (e.key === "Escape") { clear(); readout.textContent = ""; return; }
      else return;
      e.preventDefault();
      focusCell(i, j);
    });
    wrap.textContent = "";
    wrap.append(root);
    return root;
  }

  // ------------------------------------------------------------------------------ panels
  function legend(extra) {
    const p = el("p", { class: "legend" },
      el("span", { class: "swatch", style: `background:${weightColor(0.05)}` }), "low ",
      el("span", { class: "swatch", style: `background:${weightColor(1)}` }), "high weight; bar: target piece probability");
    if (extra) p.append(" · ", extra);
    return p;
  }

  function renderSelfAttention(parent, tr) {
    const maps = tr.self_attention;
    if (!maps || !maps.length) return;
    const section = el("section", { class: "selfatt" });
    section.append(el("h3", {}, "Encoder self-attention (per layer and head)"));
    const controls = el("div", { class: "selfatt-controls", role: "group", "aria-label": "Layer and head" });
    const readout = el("p", { class: "readout", "aria-live": "polite" });
    const wrap = el("div", { class: "heatmap-wrap" });
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
    section.append(controls, wrap, readout);  // the readout below: its changes never move the map
    parent.append(section);
    draw();
  }

  function renderPanel(answer) {
    const model = MODELS.find((m) => m.name === answer.name);
    const panel = el("article", { class: "panel", "data-model": answer.name, "aria-label": `Model ${answer.name}` });
    panel.append(el("h2", {}, answer.name));
    if (model) panel.append(el("p", { class: "meta" }, describe(model)));
    if (!answer.ok) {
      panel.append(el("p", { class: "error", role: "alert" }, answer.data.error || `HTTP ${answer.status}`));
      return panel;
    }
    const tr = answer.data.translations[0];
    const texts = el("div", { class: "texts" }), maps = el("div", { class: "maps" });
    panel.append(el("div", { class: "cols" }, texts, maps));
    texts.append(el("p", { class: "best", lang: model ? model.tgt_lang : null }, tr.text || "(empty)"));
    const hyps = tr.hypotheses;
    const list = el("ol", { class: "nbest", "aria-label": "n-best translations" });
    const readout = el("p", { class: "readout", "aria-live": "polite" });
    const wrap = el("div", { class: "heatmap-wrap" });
    const buttons = hyps.map((h, k) => {
      const prob = Math.exp(h.log_prob);
      const b = el("button", { type: "button", "aria-pressed": String(k === 0),
        title: "show this hypothesis's attention" },
      el("span", { class: "text" }, `${k + 1}. ${h.text || "(empty)"}`),
      el("span", { class: "score" }, `score ${h.score.toFixed(3)} · P ${prob < 0.001 ? prob.toExponential(1) : prob.toFixed(3)}`));
      b.addEventListener("click", () => show(k));
      list.append(el("li", {}, b));
      return b;
    });
    texts.append(list);
    const localNote = answer.data.attention === "local-p" && answer.data.window
      ? el("span", {}, el("span", { class: "swatch", style: "background:var(--hl);border-radius:50%" }),
        `predicted centre p_t, dashed: window |s − p_t| ≤ ${answer.data.window}`)
      : null;
    maps.append(el("h3", {}, "Attention (target × source pieces)"), legend(localNote), wrap, readout);
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

  // ------------------------------------------------------------------------------ actions
  function selectedModels() {
    return Array.from(document.querySelectorAll("#models input:checked")).map((i) => i.value);
  }

  function numberField(id) {
    const raw = $(id).value.trim();
    return raw === "" ? null : Number(raw);
  }

  async function translate() {
    showError("");
    const text = $("source").value.trim();
    if (!text) { showError("Type a sentence to translate."); $("source").focus(); return; }
    const names = selectedModels();
    if (!names.length) { showError("Choose at least one model."); return; }
    const beam = numberField("beam"), nBest = numberField("nbest"), lp = numberField("lp");
    const button = $("translate");
    button.disabled = true;
    setStatus("Translating…");
    const started = performance.now();
    try {
      const answers = await Promise.all(names.map(async (name) => {
        const body = { text, model: name, return_attention: true, return_scores: true };
        if (nBest !== null) body.n_best = nBest;
        if (beam !== null) body.beam = beam;
        if (lp !== null) body.length_penalty = lp;
        const r = await fetch("/api/translate", { method: "POST",
          headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
        let data;
        try { data = await r.json(); } catch (_) { data = { error: `HTTP ${r.status}` }; }
        return { name, ok: r.ok, status: r.status, data };
      }));
      const results = $("results");
      results.textContent = "";
      for (const a of answers) results.append(renderPanel(a));
      const failed = answers.filter((a) => !a.ok);
      if (failed.length) showError(failed.map((a) => `${a.name}: ${a.data.error}`).join("\n"));
      setStatus(`Translated with ${answers.length - failed.length} of ${answers.length} model(s) in ` +
        `${Math.round(performance.now() - started)} ms.`);
      const params = new URLSearchParams({ text });
      for (const n of names) params.append("model", n);
      history.replaceState(null, "", "?" + params.toString());
    } catch (err) {
      showError(`The server did not answer: ${err}`);
      setStatus("");
    } finally {
      button.disabled = false;
    }
  }

  async function loadModels() {
    const r = await fetch("/api/models");
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
    if (LIMITS.max_chars) $("source").maxLength = LIMITS.max_chars;
    return params.get("text");
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("form").addEventListener("submit", (e) => { e.preventDefault(); translate(); });
    $("source").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("form").requestSubmit();
      }
    });
    try {
      const text = await loadModels();
      if (text) {
        $("source").value = text;
        await translate();
      }
    } catch (err) {
      showError(`Could not load the served models: ${err}`);
    }
  });
})();

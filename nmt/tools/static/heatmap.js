// The attention heatmap of the nmt serve page: an SVG grid of rows × cols weights. Hovering a cell
// (or the arrow keys after focusing the map) highlights its row and column and writes the weight
// into the panel's read-out (a live region) and into a tooltip beside the pointer or the cell.
"use strict";

import { LOW_CONFIDENCE, shortPiece, svgEl, weightColor } from "./dom.js";

// ------------------------------------------------------------------------------ tooltip
const GAP = 14;  // px between the pointer (or the cell) and the tooltip

function tipNode() {
  let tip = document.getElementById("tip");
  if (!tip) {
    // aria-hidden: screen readers hear the same text from the read-out's live region
    tip = Object.assign(document.createElement("div"), { id: "tip", className: "tip", hidden: true });
    tip.setAttribute("aria-hidden", "true");
    document.body.append(tip);
  }
  return tip;
}

// the element the tooltip is beside (the keyboard's cell, or the one under the pointer) and where
// `box` is on it: the tooltip follows it when the page or the map scrolls (a page scrolled by the
// wheel or to bring a cell into view would otherwise leave the pointer's tooltip behind, or hide it)
let tipAnchor = null, tipOffset = null;

/** Shows `text` beside the box {left, top, right, bottom} (viewport px), flipped and clamped so
 * that the whole tooltip stays inside the viewport; `anchor`: the element it stays beside. */
export function showTip(text, box, anchor = null) {
  const tip = tipNode();
  tipAnchor = anchor;
  if (anchor) {
    const r = anchor.getBoundingClientRect();
    tipOffset = { left: box.left - r.left, right: box.right - r.left, top: box.top - r.top, bottom: box.bottom - r.top };
  }
  tip.textContent = text;
  tip.hidden = false;
  place(tip, box);
}

function place(tip, box) {
  const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
  const w = tip.offsetWidth, h = tip.offsetHeight;
  let x = box.right + GAP;
  if (x + w > vw - 4) x = box.left - GAP - w;  // no room on the right: the left side
  x = Math.max(4, Math.min(x, vw - w - 4));
  let y = box.bottom + GAP;
  if (y + h > vh - 4) y = box.top - GAP - h;  // no room below: above
  y = Math.max(4, Math.min(y, vh - h - 4));
  tip.style.left = `${Math.round(x)}px`;
  tip.style.top = `${Math.round(y)}px`;
}

export function hideTip() {
  const tip = document.getElementById("tip");
  if (tip) tip.hidden = true;
  tipAnchor = null;
}

document.addEventListener("scroll", () => {  // capture: the maps' own horizontal scrolling too
  const tip = document.getElementById("tip");
  if (!tip || tip.hidden) return;
  if (!tipAnchor || !tipAnchor.isConnected) { hideTip(); return; }  // beside nothing
  const r = tipAnchor.getBoundingClientRect(), o = tipOffset;
  place(tip, { left: r.left + o.left, right: r.left + o.right, top: r.top + o.top, bottom: r.top + o.bottom });
}, { capture: true, passive: true });

// ------------------------------------------------------------------------------ layout
function layout(opts) {
  const { rows, cols } = opts;
  const T = rows.length, S = cols.length;
  const cell = Math.max(18, Math.min(30, Math.floor(620 / Math.max(S, 1))));
  const rowLabelW = Math.min(140, 16 + 8 * Math.max(1, ...rows.map((r) => shortPiece(r).length)));
  const probW = opts.rowProbs ? 46 : 0;
  const left = rowLabelW + probW;
  const top = Math.min(110, 16 + 5.2 * Math.max(1, ...cols.map((c) => shortPiece(c).length)));
  return { T, S, cell, rowLabelW, probW, left, top,
    W: Math.ceil(left + S * cell + 40), H: Math.ceil(top + T * cell + 6) };
}

function drawCells(root, g, weights) {
  const cells = svgEl("g", { class: "cells" });
  for (let i = 0; i < g.T; i++) {
    for (let j = 0; j < g.S; j++) {
      const w = weights[i][j];
      cells.append(svgEl("rect", {
        class: "cell", x: g.left + j * g.cell, y: g.top + i * g.cell, width: g.cell, height: g.cell,
        fill: weightColor(w), "data-i": i, "data-j": j, "data-w": w,
      }));
    }
  }
  root.append(cells);
  return cells;
}

function drawRowLabels(root, g, rows, probs) {
  const labels = [];
  for (let i = 0; i < g.T; i++) {
    const y = g.top + (i + 0.5) * g.cell;
    const p = probs ? Math.exp(probs[i]) : 1;
    const low = probs && p < LOW_CONFIDENCE ? " low" : "";
    const t = svgEl("text", { class: "label row" + low, x: g.rowLabelW - 6, y, "text-anchor": "end",
      "dominant-baseline": "middle", "data-i": i }, shortPiece(rows[i]));
    labels.push(t);
    root.append(t);
    if (probs) {
      root.append(svgEl("rect", { class: "probbar" + low, x: g.rowLabelW, y: g.top + i * g.cell + 3,
        width: Math.max(1, (g.probW - 8) * p), height: g.cell - 6 }));
      root.append(svgEl("text", { class: "prob" + low, x: g.rowLabelW + 2, y, "dominant-baseline": "middle" },
        p.toFixed(2)));
    }
  }
  return labels;
}

function drawColLabels(root, g, cols) {
  const labels = [];
  for (let j = 0; j < g.S; j++) {
    const x = g.left + (j + 0.5) * g.cell, y = g.top - 9;
    const t = svgEl("text", { class: "label col", x, y, transform: `rotate(-55 ${x} ${y})`, "data-j": j },
      shortPiece(cols[j]));
    labels.push(t);
    root.append(t);
  }
  return labels;
}

// local-p: the predicted centre p_t and the window |s - p_t| <= D of each target step
function drawLocalP(root, g, positions, D) {
  if (!positions || !D) return;
  const overlay = svgEl("g", { class: "localp" });
  for (let i = 0; i < Math.min(g.T, positions.length); i++) {
    const p = positions[i];
    const lo = Math.max(0, p - D + 0.5), hi = Math.min(g.S, p + D + 0.5);
    overlay.append(svgEl("rect", { class: "window", x: g.left + lo * g.cell, y: g.top + i * g.cell + 2,
      width: Math.max(0, (hi - lo) * g.cell), height: g.cell - 4 }));
    overlay.append(svgEl("circle", { class: "centre", cx: g.left + (p + 0.5) * g.cell,
      cy: g.top + (i + 0.5) * g.cell, r: Math.max(3, g.cell / 7) }));
  }
  root.append(overlay);
}

function argmax(values) {
  let k = 0;
  values.forEach((v, n) => { if (v > values[k]) k = n; });
  return k;
}

/** The sentences the read-out gives for a cell, a whole row and a whole column. */
function texts(opts) {
  const { rows, cols, weights, rowName, colName } = opts;
  const probs = opts.rowProbs || null, positions = opts.positions, D = opts.window;
  const S = cols.length;
  function probText(i) {
    if (!probs) return "";
    const p = Math.exp(probs[i]);
    return ` (probability ${p.toFixed(3)}${p < LOW_CONFIDENCE ? ", low confidence" : ""})`;
  }
  return {
    cell(i, j) {
      let text = `${rowName} “${rows[i]}”${probText(i)} → ${colName} “${cols[j]}”: weight ${weights[i][j].toFixed(3)}`;
      if (positions && D && i < positions.length) {
        text += ` · predicted centre p = ${positions[i].toFixed(2)}, window ${Math.max(0, positions[i] - D).toFixed(1)}` +
          `–${Math.min(S - 1, positions[i] + D).toFixed(1)}`;
      }
      return text;
    },
    row(i) {
      const j = argmax(weights[i]);
      return `${rowName} “${rows[i]}”${probText(i)}: most weight on ${colName} “${cols[j]}” (${weights[i][j].toFixed(3)})`;
    },
    col(j) {
      const column = weights.map((row) => row[j]);
      const i = argmax(column);
      const total = column.reduce((a, b) => a + b, 0);
      return `${colName} “${cols[j]}”: largest weight ${column[i].toFixed(3)} from ${rowName} “${rows[i]}”; ` +
        `total over ${rowName} pieces ${total.toFixed(3)}`;
    },
  };
}

const MOVES = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };

/** Pointer and keyboard on the map `root`: highlights a cell's row and column (or a whole row or
 * column from its label) and writes what `say` tells about it into `readout` and the tooltip. */
function interact(root, g, parts, readout, say) {
  const { cells, rowLabels, colLabels, rowBand, colBand } = parts;
  const { T, S } = g;
  let active = null;
  function clear() {
    if (active) active.classList.remove("active");
    active = null;
    for (const t of rowLabels.concat(colLabels)) t.classList.remove("on");
    rowBand.classList.remove("on");
    colBand.classList.remove("on");
  }
  function showRow(i) {
    rowBand.setAttribute("y", g.top + i * g.cell);
    rowBand.classList.add("on");
    rowLabels[i].classList.add("on");
  }
  function showCol(j) {
    colBand.setAttribute("x", g.left + j * g.cell);
    colBand.classList.add("on");
    colLabels[j].classList.add("on");
  }
  function write(text, box, anchor) {
    readout.textContent = text;
    showTip(text, box, anchor);
  }
  function pointerBox(e) { return { left: e.clientX, right: e.clientX, top: e.clientY, bottom: e.clientY }; }
  function focusCell(i, j, box) {
    clear();
    active = cells.children[i * S + j];
    active.classList.add("active");
    showRow(i);
    showCol(j);
    root.dataset.i = i;
    root.dataset.j = j;
    readout.textContent = say.cell(i, j);
    showTip(readout.textContent, box || active.getBoundingClientRect(), active);
  }
  root.addEventListener("mousemove", (e) => {
    const t = e.target;
    if (t.classList.contains("cell")) focusCell(+t.dataset.i, +t.dataset.j, pointerBox(e));
    else if (t.classList.contains("row")) { clear(); showRow(+t.dataset.i); write(say.row(+t.dataset.i), pointerBox(e), t); }
    else if (t.classList.contains("col")) { clear(); showCol(+t.dataset.j); write(say.col(+t.dataset.j), pointerBox(e), t); }
  });
  root.addEventListener("mouseleave", () => { if (document.activeElement !== root) hideTip(); });
  root.addEventListener("blur", hideTip);
  root.addEventListener("focus", () => {
    if (!T || !S) return;
    if (!active) focusCell(0, 0);
    else showTip(readout.textContent, active.getBoundingClientRect(), active);
  });
  root.addEventListener("keydown", (e) => {
    if (!T || !S) return;
    let i = active ? +root.dataset.i : 0, j = active ? +root.dataset.j : 0;
    if (MOVES[e.key]) {
      i = Math.max(0, Math.min(T - 1, i + MOVES[e.key][0]));
      j = Math.max(0, Math.min(S - 1, j + MOVES[e.key][1]));
    } else if (e.key === "Home") j = 0;
    else if (e.key === "End") j = S - 1;
    else if (e.key === "Escape") { clear(); readout.textContent = ""; hideTip(); return; }
    else return;
    e.preventDefault();  // the page must not scroll: the cell is brought into view below
    cells.children[i * S + j].scrollIntoView({ block: "nearest", inline: "nearest" });
    focusCell(i, j);
  });
}

/** Draws the heatmap of `opts` into `wrap`; the read-out paragraph `readout` follows the pointer. */
export function heatmap(wrap, readout, opts) {
  const g = layout(opts);
  const { T, S } = g;
  const root = svgEl("svg", {
    class: `heatmap ${opts.kind}`, width: g.W, height: g.H, viewBox: `0 0 ${g.W} ${g.H}`, tabindex: 0,
    role: "img", "data-rows": T, "data-cols": S,
    "aria-label": `${opts.label}: ${T} ${opts.rowName} pieces by ${S} ${opts.colName} pieces; ` +
      "use the arrow keys to read the weights",
  });
  const cells = drawCells(root, g, opts.weights);
  const rowLabels = drawRowLabels(root, g, opts.rows, opts.rowProbs || null);
  const colLabels = drawColLabels(root, g, opts.cols);
  drawLocalP(root, g, opts.positions, opts.window);
  const rowBand = svgEl("rect", { class: "band", x: g.left, width: S * g.cell, height: g.cell, y: g.top });
  const colBand = svgEl("rect", { class: "band", y: g.top, width: g.cell, height: T * g.cell, x: g.left });
  root.append(rowBand, colBand);
  interact(root, g, { cells, rowLabels, colLabels, rowBand, colBand }, readout, texts(opts));
  wrap.textContent = "";
  wrap.append(root);
  watchOverflow(wrap);
  return root;
}

// ------------------------------------------------------------------------------ sideways scrolling
const overflowWatch = typeof ResizeObserver === "function"
  ? new ResizeObserver((entries) => entries.forEach((e) => markOverflow(e.target))) : null;

/** `data-overflow` on the wrapper when the map is wider than it: the CSS draws edge shadows and
 * the hint "scroll sideways" after it. */
function markOverflow(wrap) {
  const over = wrap.scrollWidth > wrap.clientWidth + 1;
  wrap.dataset.overflow = String(over);
  const hint = wrap.nextElementSibling;
  if (hint && hint.classList.contains("scroll-hint")) hint.hidden = !over;
}

function watchOverflow(wrap) {
  markOverflow(wrap);
  if (overflowWatch && !wrap.dataset.watched) {
    overflowWatch.observe(wrap);
    wrap.dataset.watched = "1";
  }
}

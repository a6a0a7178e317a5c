// Small DOM helpers of the nmt serve page. Text always goes in as text nodes, never as HTML.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);

/** An HTML element with attributes (null/undefined/false are left out) and text or node children. */
export function el(tag, attrs = {}, ...children) {
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

/** An SVG element; `text` becomes its textContent. */
export function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function compact(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e3) return Math.round(n / 1e3) + "k";
  return String(n);
}

export function shortPiece(piece) {
  return piece.length > 16 ? piece.slice(0, 15) + "…" : piece;
}

export function weightColor(w) {
  const x = Math.max(0, Math.min(1, w));
  return `hsl(214, 78%, ${(97 - 64 * x).toFixed(1)}%)`;
}

/** Target pieces whose probability is below this are marked as low-confidence. */
export const LOW_CONFIDENCE = 0.5;

export function formatProb(p) {
  return p < 0.001 ? p.toExponential(1) : p.toFixed(3);
}

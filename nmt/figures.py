"""Figures: attention heatmaps, training curves, gradient norms, bar charts (matplotlib only).

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, no global state,
no display needed) and saved by extension: ``.png`` (the default when there is none), ``.svg``,
``.pdf`` or any other format matplotlib writes. Files are written to a temporary name in the target
directory and renamed into place, so a reader never sees half an image. Every function returns the
figure, which stays inspectable after saving; ``path=None`` only builds it.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure

from nmt.errors import DataError, NmtError

__all__ = ["DPI", "plot_attention", "plot_curves", "plot_grad_norms", "plot_bars", "read_metrics", "save_figure"]


DPI = 100  #: dots per inch of raster output (PNG): pixel size = figure inches x DPI
GRAD_PARTS = ("embeddings", "encoder", "attention", "decoder", "output")


# -------------------------------------------------------------------------------------- saving

def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` in the format its extension names (PNG without one), atomically."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise NmtError(f"cannot write {str(path)!r}: unknown image format {fmt!r}; use .png, .svg or .pdf "
                       f"(matplotlib also writes {', '.join(sorted(set(supported) - {'png', 'svg', 'pdf'}))})")
    if path.is_dir():
        raise NmtError(f"{str(path)!r} is a directory; give an image file name such as plot.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NmtError(f"cannot create the directory for {str(path)!r}: {exc.strerror or exc}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if os.path.islink(tmp):  # a planted link is never written through
        raise NmtError(f"{tmp} is a symbolic link; nmt does not write through links. Remove it and run again")
    kwargs: dict[str, Any] = {"format": fmt, "dpi": DPI}
    if fmt in ("svg", "pdf"):
        kwargs["metadata"] = {"Date": None}  # reproducible files
    try:
        fig.savefig(tmp, **kwargs)
        os.replace(tmp, path)
    except OSError as exc:
        raise NmtError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# ----------------------------------------------------------------------------------- attention

def _as_array(value: Any, what: str, ndim: int) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (possibly bf16 / on a GPU)
        value = value.detach().to("cpu").float().numpy()
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise NmtError(f"{what}: expected numbers, got {type(value).__name__}") from None
    if arr.ndim != ndim:
        raise NmtError(f"{what}: expected {ndim} dimensions, got shape {arr.shape}")
    return arr


def _token_font(n: int) -> tuple[float, float]:
    """(font size in points, cell size in inches) for a side of ``n`` tokens."""
    if n <= 25:
        return 10.0, 0.32
    if n <= 45:
        return 8.5, 0.25
    if n <= 70:
        return 7.5, 0.2
    return 6.0, 0.15


def _label_inches(tokens: Sequence[str], font: float) -> float:
    longest = max((len(t) for t in tokens), default=1)
    return 0.4 + min(longest, 30) * font * 0.62 / 72


def plot_attention(weights: Any, src_tokens: Sequence[str], tgt_tokens: Sequence[str],
                   path: str | os.PathLike | None, title: str = "", positions: Any = None,
                   head_weights: Any = None) -> Figure:
    """Heatmap of attention ``weights`` (tgt_len, src_len): source pieces on x, output pieces on y.

    ``positions`` (tgt_len,): local-p's predicted centres p_t (0-based source positions), drawn as
    a marker on every row. ``head_weights`` (heads, tgt_len, src_len): one panel per head instead
    (multi-head self-attention, where both token lists are the source pieces); ``weights`` is then
    not drawn and may be ``None``. The figure grows with the sentence lengths and the label font
    shrinks, so 50-piece sentences stay readable. Saved to ``path`` (format by extension) unless
    ``path`` is None; the figure is returned.
    """
    src_tokens, tgt_tokens = [str(t) for t in src_tokens], [str(t) for t in tgt_tokens]
    S, T = len(src_tokens), len(tgt_tokens)
    if S == 0 or T == 0:
        raise NmtError(f"nothing to plot: {S} source and {T} output tokens")
    if head_weights is not None:
        panels = _as_array(head_weights, "head_weights (heads, tgt_len, src_len)", 3)
        names = [f"head {h + 1}" for h in range(panels.shape[0])]
        if panels.shape[0] == 0:
            raise NmtError("head_weights has no heads")
    else:
        if weights is None:
            raise NmtError("plot_attention needs weights (tgt_len, src_len) or head_weights")
        panels = _as_array(weights, "attention weights (tgt_len, src_len)", 2)[None]
        names = [""]
    if panels.shape[1:] != (T, S):
        raise NmtError(f"attention weights have shape {tuple(panels.shape[1:])} (tgt_len, src_len) but "
                       f"there are {T} output and {S} source tokens; they must match")
    pos = None
    if positions is not None:
        pos = _as_array(positions, "positions (tgt_len,)", 1)
        if pos.shape[0] != T:
            raise NmtError(f"positions has {pos.shape[0]} entries but there are {T} output tokens")

    font, cell = _token_font(max(S, T))
    n = len(panels)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    panel_w = S * cell + _label_inches(tgt_tokens, font) + 0.4
    panel_h = T * cell + _label_inches(src_tokens, font) + (0.35 if n > 1 else 0.1)
    width = max(4.0, ncols * panel_w + 1.2)  # + colour bar
    height = max(3.0, nrows * panel_h + (0.5 if title else 0.1))
    fig = new_figure(width, height)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    vmax = float(np.nanmax(panels)) if np.isfinite(panels).any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    image = None
    for ax, data, name in zip(axes, panels, names):
        image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(S), labels=src_tokens, rotation=90, fontsize=font, parse_math=False)
        ax.set_yticks(range(T), labels=tgt_tokens, fontsize=font, parse_math=False)
        ax.tick_params(length=2)
        ax.set_xlabel("source", fontsize=font + 1)
        ax.set_ylabel("output", fontsize=font + 1)
        if name:
            ax.set_title(name, fontsize=font + 2)
        if pos is not None:
            ax.plot(pos, np.arange(T), color="red", linestyle="-", linewidth=0.8, marker="x",
                    markersize=max(3.0, font * 0.6), label="p_t (predicted centre)")
            ax.legend(loc="upper right", fontsize=font, framealpha=0.7)
            ax.set_xlim(-0.5, S - 0.5)
            ax.set_ylim(T - 0.5, -0.5)
    fig.colorbar(image, ax=axes, label="attention weight", pad=0.02)
    if title:
        # wrap long titles to the figure width (about 0.1 inch per character at 10 pt)
        import textwrap
        fig.suptitle("\n".join(textwrap.wrap(title, max(20, int(width * 10)))), fontsize=max(font + 2, 10))
    if path is not None:
        save_figure(fig, path)
    return fig


# ------------------------------------------------------------------------------------- metrics

_NUMERIC_FIELDS = ("step", "epoch", "time", "loss", "ppl", "lr", "tokens_per_s", "bleu", "chrf")


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl``, in file order.

    A corrupt line raises :class:`DataError` naming the file and line, except an unterminated last
    line (a run still writing it), which is skipped with a warning.
    """
    run = Path(run_dir)
    path = run / "metrics.jsonl"
    if not run.is_dir():
        raise DataError(f"run directory {str(run)!r} not found")
    if not path.is_file():
        raise DataError(f"{str(path)!r} not found: is {str(run)!r} a run directory written by nmt train? "
                        "(training appends to metrics.jsonl every train.log_every steps)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 (byte 0x{data[exc.start]:02x})") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                warnings.warn(f"{path}, line {number}: incomplete last line skipped (still being written?)",
                              stacklevel=2)
                continue
            raise DataError(f"{path}, line {number}: corrupt record, not JSON ({exc.msg} at column "
                            f"{exc.colno}): {line[:80]!r}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {line[:80]!r}")
        for key in _NUMERIC_FIELDS:
            value = record.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"{path}, line {number}: {key!r} must be a number, got {value!r}")
        grad = record.get("grad_norm")
        if grad is not None and (not isinstance(grad, dict) or any(
                v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))
                for v in grad.values())):
            raise DataError(f"{path}, line {number}: 'grad_norm' must map part names to numbers, "
                            f"got {grad!r}")
        records.append(record)
    if not records:
        raise DataError(f"{str(path)!r} has no records yet (the run logs every train.log_every steps)")
    return records


def _run_labels(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    names = [Path(r).resolve().name or str(r) for r in run_dirs]
    if len(set(names)) < len(names):
        names = [str(r) for r in run_dirs]
    return names


def _series(records: Iterable[dict], kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted((r["step"], r[key]) for r in records
                   if r.get("kind") == kind and r.get("step") is not None and r.get(key) is not None)
    if not pairs:
        return np.empty(0), np.empty(0)
    steps, values = zip(*pairs)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def colour(i: int) -> str:
    return f"C{i % 10}"


def plot_curves(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike | None) -> Figure:
    """Train loss, valid loss and valid BLEU over steps (three panels); one colour per run."""
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if not run_dirs:
        raise NmtError("no run directory given")
    runs = [read_metrics(r) for r in run_dirs]
    labels = _run_labels(run_dirs)
    fig = new_figure(15.0, 4.6)
    panels = [("train", "loss", "training loss"), ("valid", "loss", "validation loss"),
              ("valid", "bleu", "validation BLEU")]
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    for ax, (kind, key, name) in zip(axes, panels):
        drawn = False
        for i, (records, label) in enumerate(zip(runs, labels)):
            steps, values = _series(records, kind, key)
            if len(steps):
                ax.plot(steps, values, color=colour(i), label=label,
                        marker="o" if kind == "valid" else None, markersize=3,
                        linewidth=1.0 if kind == "train" else 1.4)
                drawn = True
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(key if key != "bleu" else "BLEU")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {kind} records with {key!r}", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_bars(labels: Sequence[str], means: Sequence[float], stds: Sequence[float],
              path: str | os.PathLike | None, ylabel: str = "", title: str = "") -> Figure:
    """Bars with error bars (e.g. mean ± std test BLEU over seeds), one per label, value on top."""
    if not (len(labels) == len(means) == len(stds)) or not labels:
        raise NmtError("plot_bars needs equally many labels, means and stds (at least one)")
    fig = new_figure(max(5.0, 0.9 * len(labels) + 2.0), 4.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=stds, capsize=4, color=[colour(i) for i in range(len(labels))], alpha=0.85)
    for xi, mean in zip(x, means):
        if mean == mean:  # not NaN
            ax.text(xi, mean, f"{mean:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_grad_norms(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike | None) -> Figure:
    """Gradient norm of each model part (embeddings, encoder, attention, decoder, output) over
    steps, one panel per part, log scale, runs overlaid."""
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if not run_dirs:
        raise NmtError("no run directory given")
    runs = [read_metrics(r) for r in run_dirs]
    labels = _run_labels(run_dirs)
    parts: list[str] = [p for p in GRAD_PARTS]
    found: set[str] = set()
    for records in runs:
        for r in records:
            if r.get("kind") == "train" and isinstance(r.get("grad_norm"), dict):
                for part in r["grad_norm"]:
                    found.add(part)
                    if part not in parts:
                        parts.append(part)
    parts = [p for p in parts if p in found]
    if not parts:
        raise DataError(f"no gradient norms in {', '.join(str(Path(r) / 'metrics.jsonl') for r in run_dirs)} "
                        "(train records have no 'grad_norm')")
    ncols = min(len(parts), 3)
    nrows = math.ceil(len(parts) / ncols)
    fig = new_figure(4.4 * ncols, 3.2 * nrows)
    for j, part in enumerate(parts):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        for i, (records, label) in enumerate(zip(runs, labels)):
            pairs = sorted((r["step"], r["grad_norm"][part]) for r in records
                           if r.get("kind") == "train" and r.get("step") is not None
                           and isinstance(r.get("grad_norm"), dict)
                           and r["grad_norm"].get(part) is not None)
            if pairs:
                steps, values = zip(*pairs)
                values = np.asarray(values, dtype=float)
                values[values <= 0] = np.nan  # log scale
                ax.plot(steps, values, color=colour(i), label=label, linewidth=1.0)
        ax.set_yscale("log")
        ax.set_title(f"gradient norm: {part}")
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig

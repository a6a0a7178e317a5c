"""Plots: attention heatmaps, training curves, gradient norms and activation functions; ``nmt plot``.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, no global state,
no display needed) and saved by extension: ``.png`` (the default when there is none), ``.svg``,
``.pdf`` or any other format matplotlib writes. Files are written to a temporary name in the target
directory and renamed into place, so a reader never sees half an image. Every function returns the
figure, which stays inspectable after saving; ``path=None`` only builds it.

Library functions:

- :func:`plot_attention` -- a (target x source) heatmap, optional local-p centres, or one panel per
  head of a multi-head self-attention;
- :func:`plot_curves` -- train loss, valid loss and valid BLEU over steps, runs overlaid;
- :func:`plot_grad_norms` -- per-part gradient norms over steps (log scale), runs overlaid;
- :func:`plot_activations` -- activation functions and their derivatives, plus learned
  AReLU / PReLU / Swish parameters of a trained run;
- :func:`read_metrics` -- the records of ``RUN_DIR/metrics.jsonl``.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .errors import DataError, NmtError

__all__ = ["DPI", "plot_attention", "plot_curves", "plot_grad_norms", "plot_activations",
           "read_metrics", "parse_line_range", "save_figure", "plot_cli"]

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


def _new_figure(width: float, height: float) -> Figure:
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
    fig = _new_figure(width, height)
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


def _colour(i: int) -> str:
    return f"C{i % 10}"


def plot_curves(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike | None) -> Figure:
    """Train loss, valid loss and valid BLEU over steps (three panels); one colour per run."""
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if not run_dirs:
        raise NmtError("no run directory given")
    runs = [read_metrics(r) for r in run_dirs]
    labels = _run_labels(run_dirs)
    fig = _new_figure(15.0, 4.6)
    panels = [("train", "loss", "training loss"), ("valid", "loss", "validation loss"),
              ("valid", "bleu", "validation BLEU")]
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    for ax, (kind, key, name) in zip(axes, panels):
        drawn = False
        for i, (records, label) in enumerate(zip(runs, labels)):
            steps, values = _series(records, kind, key)
            if len(steps):
                ax.plot(steps, values, color=_colour(i), label=label,
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
    fig = _new_figure(max(5.0, 0.9 * len(labels) + 2.0), 4.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=stds, capsize=4, color=[_colour(i) for i in range(len(labels))], alpha=0.85)
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
    fig = _new_figure(4.4 * ncols, 3.2 * nrows)
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
                ax.plot(steps, values, color=_colour(i), label=label, linewidth=1.0)
        ax.set_yscale("log")
        ax.set_title(f"gradient norm: {part}")
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


# ---------------------------------------------------------------------------------- activations

_X_RANGE = (-4.0, 4.0)
_X_POINTS = 801


def _curve(module, x):
    """(values, derivatives) of ``module`` on the column ``x`` (N, 1), derivative by autograd."""
    import torch

    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    return y.detach().reshape(-1).numpy(), grad.reshape(-1).numpy()


def _maxout_curve(module, x):
    """Maxout is not a function of one scalar: plot max_j(w_j x + b_j) for fixed random pieces."""
    import torch

    k = int(getattr(module, "pieces", 2))
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(k, generator=gen, dtype=torch.float64)
    b = 0.5 * torch.randn(k, generator=gen, dtype=torch.float64)
    xs = x.detach().clone().requires_grad_(True)
    y = module(xs * w + b)  # (N, k) -> (N, 1)
    (grad,) = torch.autograd.grad(y.sum(), xs)
    return y.detach().reshape(-1).numpy(), grad.reshape(-1).numpy(), k


def _learned_entries(learned: Mapping[str, Any]) -> tuple[list, list, list]:
    """Split a run's learned parameters into curves to draw, slope samples to histogram, and notes."""
    from .activations import get_activation

    curves, hists, notes = [], [], []
    for layer, value in learned.items():
        layer = str(layer) or "(model)"
        if isinstance(value, Mapping):
            kind = value.get("kind")
            if kind is None and "alpha" in value and "beta" in value:
                kind = "arelu"
            try:
                if kind == "arelu":
                    a, b = float(value["alpha"]), float(value["beta"])
                    curves.append((f"{layer}: arelu α={a:.3g} β={b:.3g}",
                                   get_activation("arelu", alpha=a, beta=b)))
                elif kind == "swish":
                    b = float(value["beta"])
                    curves.append((f"{layer}: swish β={b:.3g}", get_activation("swish", beta=b)))
                elif kind == "prelu" or (kind is None and "slope" in value):
                    slopes = np.atleast_1d(np.asarray(value["slope"], dtype=float))
                    if slopes.size == 1:
                        curves.append((f"{layer}: prelu a={slopes[0]:.3g}",
                                       get_activation("prelu", init=float(slopes[0]))))
                    else:
                        hists.append((f"{layer}: prelu per-channel slopes", slopes))
                elif kind == "aprelu" or (kind is None and "slopes" in value):
                    hists.append((f"{layer}: aprelu per-sample slopes",
                                  np.asarray(value["slopes"], dtype=float).reshape(-1)))
                else:
                    notes.append(f"{layer}: unrecognised parameters {sorted(value)}")
            except (KeyError, TypeError, ValueError, NmtError) as exc:
                notes.append(f"{layer}: unusable parameters ({exc})")
        elif isinstance(value, (list, tuple, np.ndarray)) or hasattr(value, "detach"):
            try:
                samples = (value.detach().to("cpu").float().numpy() if hasattr(value, "detach")
                           else np.asarray(value, dtype=float))
                hists.append((f"{layer}: aprelu per-sample slopes", samples.reshape(-1)))
            except (TypeError, ValueError) as exc:
                notes.append(f"{layer}: unusable slopes ({exc})")
        else:
            notes.append(f"{layer}: unrecognised value {value!r}")
    return curves, hists, notes


def plot_activations(names: Sequence[str], path: str | os.PathLike | None,
                     learned: Mapping[str, Any] | None = None) -> Figure:
    """Each activation and its derivative (autograd) on x in [-4, 4]: a values and a derivatives panel.

    Activations with per-channel parameters are drawn at their initialisation with ``channels=1``;
    maxout, which maps k inputs to one output, is drawn as max_j(w_j x + b_j) with fixed random
    pieces (the label says so). ``learned`` -- a trained run's learned parameters
    (``Translator.learned_activation_parameters()``): ``{"layer": {"alpha": a, "beta": b}}``
    (AReLU; also ``{"kind": "prelu", "slope": [...]}`` and ``{"kind": "swish", "beta": b}``) adds a
    panel of the learned curves; a list of per-sample slopes (APReLU) a histogram panel.
    """
    import torch

    from .activations import available_activations

    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names and not learned:
        raise NmtError("no activation names given; available: " + ", ".join(available_activations()))
    registry = available_activations()
    for name in names:
        if name not in registry:
            import difflib

            hint = difflib.get_close_matches(str(name), list(registry), n=1)
            extra = f"did you mean {hint[0]!r}? " if hint else ""
            raise NmtError(f"unknown activation {name!r}; {extra}available: {', '.join(registry)}")

    x = torch.linspace(*_X_RANGE, _X_POINTS, dtype=torch.float64).reshape(-1, 1)
    xs = x.reshape(-1).numpy()
    drawn = []
    for name in dict.fromkeys(names):
        module = registry[name].example().double().eval()
        if name == "maxout" or module.__class__.__name__ == "Maxout":
            values, grads, k = _maxout_curve(module, x)
            label = f"maxout (k={k}, fixed random pieces)"
        else:
            values, grads = _curve(module, x)
            label = name
        drawn.append((label, values, grads))

    curves, hists, notes = _learned_entries(learned) if learned else ([], [], [])
    n_panels = (2 if drawn else 0) + (1 if curves else 0) + (1 if hists else 0)
    if n_panels == 0:
        raise NmtError("nothing to plot: " + ("; ".join(notes) if notes else "no learned parameters"))
    fig = _new_figure(5.2 * n_panels, 4.4 + 0.25 * len(notes))
    col = 0

    def panel(title: str, ylabel: str):
        nonlocal col
        col += 1
        ax = fig.add_subplot(1, n_panels, col)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.axvline(0, color="0.6", linewidth=0.6)
        ax.grid(True, alpha=0.3)
        return ax

    if drawn:
        ax_v = panel("activation f(x)", "f(x)")
        ax_d = panel("derivative f'(x) (autograd)", "f'(x)")
        for i, (label, values, grads) in enumerate(drawn):
            ax_v.plot(xs, values, color=_colour(i), label=label, linewidth=1.4)
            ax_d.plot(xs, grads, color=_colour(i), label=label, linewidth=1.4)
        for ax in (ax_v, ax_d):
            ax.set_xlabel("x")
            ax.set_xlim(*_X_RANGE)
            ax.legend(fontsize=8)
    if curves:
        ax = panel("learned activations", "f(x)")
        for i, (label, module) in enumerate(curves):
            values, _ = _curve(module.double().eval(), x)
            ax.plot(xs, values, color=_colour(i), label=label, linewidth=1.4)
        ax.set_xlabel("x")
        ax.set_xlim(*_X_RANGE)
        ax.legend(fontsize=7)
    if hists:
        ax = panel("learned negative slopes", "count")
        for i, (label, samples) in enumerate(hists):
            ax.hist(samples[np.isfinite(samples)], bins=30, alpha=0.6, color=_colour(i), label=label)
        ax.set_xlabel("slope")
        ax.legend(fontsize=7)
    if notes:
        fig.supxlabel("skipped: " + "; ".join(notes), fontsize=8, color="0.35")
    if path is not None:
        save_figure(fig, path)
    return fig


# ------------------------------------------------------------------------------------------ CLI

def parse_line_range(text: str, total: int | None = None, source: str = "the input") -> range:
    """``"1-10"`` -> lines 1..10 (1-based, inclusive); ``"7"`` -> line 7. Returned as a 1-based range.

    With ``total`` (the file's line count) a range beyond the file is an error.
    """
    spec = str(text).strip()
    m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", spec)
    if not m:
        raise NmtError(f"--lines {text!r}: expected a 1-based inclusive range such as 1-10, or one "
                       "line number such as 7")
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) is not None else start
    if start < 1:
        raise NmtError(f"--lines {text!r}: line numbers start at 1")
    if end < start:
        raise NmtError(f"--lines {text!r}: the range is backwards (write {end}-{start})")
    if total is not None and end > total:
        raise NmtError(f"--lines {text!r}: {source} has only {total} line{'s' if total != 1 else ''}")
    return range(start, end + 1)


def _attention_cli(args) -> int:
    from .evaluation import read_lines

    source, input_path = getattr(args, "source", None), getattr(args, "input", None)
    output, out_dir = getattr(args, "output", None), getattr(args, "out_dir", None)
    lines_spec = getattr(args, "lines", None)
    beam = getattr(args, "beam", 1)
    beam = 1 if beam is None else beam
    if source is not None and input_path:
        raise NmtError("give either --source TEXT or --input FILE, not both")
    if source is None and not input_path:
        raise NmtError("what should be translated? give --source \"a sentence\" (with -o FILE) or "
                       "--input FILE --lines 1-10 --out-dir DIR")
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise NmtError(f"--beam: got {beam!r}, must be a positive integer (1 = greedy)")
    if source is not None:
        if out_dir or lines_spec:
            raise NmtError("--out-dir and --lines go with --input FILE; for --source use -o FILE")
        if not source.strip():
            raise NmtError("--source is empty; give a sentence to translate")
        jobs = [(Path(output or "attention.png"), source)]
    else:
        if output:
            raise NmtError("-o names the image for --source; with --input every line gets its own "
                           "image in --out-dir DIR")
        if not out_dir:
            raise NmtError("--input needs --out-dir DIR (one image per line is written there)")
        lines = read_lines(input_path, "input file")
        if not lines:
            raise DataError(f"input file {str(input_path)!r} is empty")
        numbers = (parse_line_range(lines_spec, len(lines), f"input file {str(input_path)!r}")
                   if lines_spec else range(1, len(lines) + 1))
        width = len(str(numbers[-1]))
        jobs = []
        for n in numbers:
            if not lines[n - 1].strip():
                print(f"line {n} of {input_path} is empty: skipped", file=sys.stderr)
                continue
            jobs.append((Path(out_dir) / f"line{n:0{width}d}.png", lines[n - 1]))
        if not jobs:
            raise DataError(f"--lines {lines_spec}: only empty lines selected in {str(input_path)!r}")

    from nmt.translate import Translator

    translator = Translator.load(args.run_dir, checkpoint=getattr(args, "checkpoint", "best"))
    kind = getattr(translator, "attention_kind", "") or ""
    results = translator.translate([src for _, src in jobs], beam=beam, return_attention=True)
    for (out, src), result in zip(jobs, results):
        hyp = result.hypotheses[0]
        if getattr(hyp, "attention", None) is None:
            raise NmtError(f"the model returned no attention weights for {src!r}")
        plot_attention(hyp.attention, hyp.src_tokens, hyp.tokens, out,
                       title=f"{kind} attention".strip(), positions=getattr(hyp, "positions", None))
        print(out)
        self_attention = getattr(translator, "encoder_self_attention", None)
        layers = self_attention(src) if callable(self_attention) else None
        if layers is not None:
            for i, heads in enumerate(layers, 1):
                sa_out = out.with_name(f"{out.stem}.self-attention-layer{i}{out.suffix}")
                plot_attention(None, hyp.src_tokens, hyp.src_tokens, sa_out,
                               title=f"encoder self-attention, layer {i}", head_weights=heads)
                print(sa_out)
    return 0


def plot_cli(args) -> int:
    """``nmt plot attention|curves|activations``; returns the exit code."""
    what = getattr(args, "what", None)
    if what == "attention":
        return _attention_cli(args)
    if what == "curves":
        output = Path(args.output or "curves.png")
        plot_curves(args.run_dirs, output)
        print(output)
        try:
            grad_out = output.with_name(f"{output.stem}.grad-norms{output.suffix}")
            plot_grad_norms(args.run_dirs, grad_out)
            print(grad_out)
        except DataError as exc:
            if "no gradient norms" not in str(exc):
                raise
        return 0
    if what == "activations":
        learned = None
        if getattr(args, "run", None):
            from nmt.translate import Translator

            learned = Translator.load(args.run).learned_activation_parameters()
            if not learned:
                print(f"{args.run} has no learned activation parameters (its activations are fixed)",
                      file=sys.stderr)
        output = Path(args.output or "activations.png")
        plot_activations(args.names, output, learned)
        print(output)
        return 0
    raise NmtError(f"unknown plot {what!r}; choose attention, curves or activations")

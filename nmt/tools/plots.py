"""``nmt plot``: attention of a trained run, training curves, activation functions.

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

import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from nmt.config import decode_arguments
from nmt.errors import DataError, NmtError
from nmt.figures import (
    DPI,
    colour,
    new_figure,
    plot_attention,
    plot_curves,
    plot_grad_norms,
    read_metrics,
    save_figure,
)

__all__ = ["DPI", "plot_attention", "plot_curves", "plot_grad_norms", "plot_activations",
           "read_metrics", "parse_line_range", "save_figure", "plot_cli"]


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
    from nmt.model.activations import get_activation

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

    from nmt.model.activations import available_activations

    if isinstance(names, str):
        names = [names]
    names = list(names)
    registry = available_activations()
    _check_activation_names(names, learned, registry)
    x = torch.linspace(*_X_RANGE, _X_POINTS, dtype=torch.float64).reshape(-1, 1)
    xs = x.reshape(-1).numpy()
    drawn = _example_curves(names, registry, x)
    curves, hists, notes = _learned_entries(learned) if learned else ([], [], [])
    n_panels = (2 if drawn else 0) + (1 if curves else 0) + (1 if hists else 0)
    if n_panels == 0:
        raise NmtError("nothing to plot: " + ("; ".join(notes) if notes else "no learned parameters"))
    fig = new_figure(5.2 * n_panels, 4.4 + 0.25 * len(notes))
    panel = _panels(fig, n_panels)
    if drawn:
        _draw_examples(panel, xs, drawn)
    if curves:
        ax = panel("learned activations", "f(x)")
        for i, (label, module) in enumerate(curves):
            values, _ = _curve(module.double().eval(), x)
            ax.plot(xs, values, color=colour(i), label=label, linewidth=1.4)
        ax.set_xlabel("x")
        ax.set_xlim(*_X_RANGE)
        ax.legend(fontsize=7)
    if hists:
        ax = panel("learned negative slopes", "count")
        for i, (label, samples) in enumerate(hists):
            ax.hist(samples[np.isfinite(samples)], bins=30, alpha=0.6, color=colour(i), label=label)
        ax.set_xlabel("slope")
        ax.legend(fontsize=7)
    if notes:
        fig.supxlabel("skipped: " + "; ".join(notes), fontsize=8, color="0.35")
    if path is not None:
        save_figure(fig, path)
    return fig


def _check_activation_names(names: list[str], learned, registry: Mapping[str, Any]) -> None:
    """Refuse an empty request and unknown names (with a suggestion)."""
    if not names and not learned:
        raise NmtError("no activation names given; available: " + ", ".join(registry))
    for name in names:
        if name not in registry:
            import difflib

            hint = difflib.get_close_matches(str(name), list(registry), n=1)
            extra = f"did you mean {hint[0]!r}? " if hint else ""
            raise NmtError(f"unknown activation {name!r}; {extra}available: {', '.join(registry)}")


def _example_curves(names: list[str], registry: Mapping[str, Any], x) -> list[tuple[str, Any, Any]]:
    """``(label, values, derivatives)`` of each named activation at its defaults, over ``x (N, 1)``."""
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
    return drawn


def _panels(fig, n_panels: int) -> Callable[[str, str], Any]:
    """``panel(title, ylabel)``: the next of ``n_panels`` side by side, with axes through 0."""
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

    return panel


def _draw_examples(panel, xs, drawn: list[tuple[str, Any, Any]]) -> None:
    """The values and the derivatives panels."""
    ax_v = panel("activation f(x)", "f(x)")
    ax_d = panel("derivative f'(x) (autograd)", "f'(x)")
    for i, (label, values, grads) in enumerate(drawn):
        ax_v.plot(xs, values, color=colour(i), label=label, linewidth=1.4)
        ax_d.plot(xs, grads, color=colour(i), label=label, linewidth=1.4)
    for ax in (ax_v, ax_d):
        ax.set_xlabel("x")
        ax.set_xlim(*_X_RANGE)
        ax.legend(fontsize=8)


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
    from nmt.tools.evaluate import read_lines

    source, input_path, output, out_dir = args.source, args.input, args.output, args.out_dir
    lines_spec = args.lines
    if source is not None and input_path:
        raise NmtError("give either --source TEXT or --input FILE, not both")
    if source is None and not input_path:
        raise NmtError("what should be translated? give --source \"a sentence\" (with -o FILE) or "
                       "--input FILE --lines 1-10 --out-dir DIR")
    decode = decode_arguments(args)
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

    from nmt.inference.translator import Translator

    translator = Translator.load(args.run_dir, checkpoint=args.checkpoint, precision=decode.get("precision"))
    kind = translator.attention_kind
    results = translator.translate([src for _, src in jobs], return_attention=True, **decode)
    for (out, src), result in zip(jobs, results):
        hyp = result.hypotheses[0]
        if hyp.attention is None:
            raise NmtError(f"the model returned no attention weights for {src!r}")
        plot_attention(hyp.attention, hyp.src_tokens, hyp.tokens, out,
                       title=f"{kind} attention".strip(), positions=hyp.positions)
        print(out)
        layers = translator.encoder_self_attention(src)
        if layers is not None:
            for i, heads in enumerate(layers, 1):
                sa_out = out.with_name(f"{out.stem}.self-attention-layer{i}{out.suffix}")
                plot_attention(None, hyp.src_tokens, hyp.src_tokens, sa_out,
                               title=f"encoder self-attention, layer {i}", head_weights=heads)
                print(sa_out)
    return 0


def plot_cli(args) -> int:
    """``nmt plot attention|curves|activations``; returns the exit code."""
    what = args.what
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
        if args.run:
            from nmt.inference.translator import Translator

            learned = Translator.load(args.run).learned_activation_parameters()
            if not learned:
                print(f"{args.run} has no learned activation parameters (its activations are fixed)",
                      file=sys.stderr)
        output = Path(args.output or "activations.png")
        plot_activations(args.names, output, learned)
        print(output)
        return 0
    raise NmtError(f"unknown plot {what!r}; choose attention, curves or activations")

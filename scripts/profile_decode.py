#!/usr/bin/env python3
"""Where decoding time goes: wall time per phase of greedy and beam search on a run's model.

    python scripts/profile_decode.py RUN_DIR -i test.fr [--sentences 500] [--beams 1 5]
        [--precision float32|bf16] [--shortlist K] [--threads N] [--trace DIR]

For each beam size it translates the first ``--sentences`` lines once to warm up, then once
timed, with the library's functions wrapped (here, at run time: nmt itself is unchanged) in timers
and ``torch.profiler.record_function`` labels. A phase's time is *exclusive*: the time inside its
functions minus the time of the other phases they call, so the phases add up to the total:

    encoder              TorchEngine.begin: encoder, decoder start, attention keys, context folding
    shortlist            OutputShortlist.of: each batch's output rows (with --shortlist)
    attention            the attention score of each step
    step GEMMs           nmt.kernels.search_step: the GRU, context and readout products
    decoder step, other  the rest of the decoder's search step (softmax, readout activation)
    output layer         TorchEngine.scores (an ensemble's Seq2Seq.step_logits): the output (or shortlist) GEMM
    log-normaliser       log-softmax of the kept scores
    search ops           the search's tensor operations (top-k, gathers, masks: TorchOps)
    state reorder        selecting the surviving beams' states and memories
    Python, other        the rest: the search loop in Python, batching, tokenizing, detokenizing

Timers are taken with the wrappers in place, which add a few microseconds per call: compare
phases within one profile, not with ``nmt bench translate``. ``--trace DIR`` also records a
torch.profiler trace (open in chrome://tracing or Perfetto) and prints its top operators.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import record_function


class PhaseTimer:
    """Exclusive wall time and call counts per label of the functions it wraps."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._children: list[float] = []  # time of wrapped callees, per open wrapped call
        self._originals: list[tuple[object, str, object]] = []

    def wrap(self, label: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with record_function(label):
                self._children.append(0.0)
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent = time.perf_counter() - start
                    self.seconds[label] += spent - self._children.pop()
                    self.calls[label] += 1
                    if self._children:
                        self._children[-1] += spent
        return timed

    def patch(self, owner, name: str, label: str) -> None:
        """Wrap ``owner.name`` (a module function, or a method, static or class method)."""
        raw = inspect.getattr_static(owner, name)
        self._originals.append((owner, name, vars(owner)[name]))
        if isinstance(raw, staticmethod):
            setattr(owner, name, staticmethod(self.wrap(label, raw.__func__)))
        elif isinstance(raw, classmethod):
            setattr(owner, name, classmethod(self.wrap(label, raw.__func__)))
        else:
            setattr(owner, name, self.wrap(label, raw))

    def restore(self) -> None:
        """Put back every attribute :meth:`patch` wrapped."""
        while self._originals:
            owner, name, original = self._originals.pop()
            setattr(owner, name, original)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def instrument(timer: PhaseTimer, translator) -> None:
    """Wrap the phases of :mod:`nmt.inference` search and of the translator's model."""
    import nmt.kernels
    import nmt.model.seq2seq as seq2seq
    from nmt.inference import torch_engine
    from nmt.inference.ops_torch import TorchOps

    timer.patch(torch_engine.TorchEngine, "begin", "encoder")
    timer.patch(torch_engine.OutputShortlist, "of", "shortlist")
    timer.patch(torch_engine.TorchEngine, "select_state", "state reorder")
    timer.patch(torch_engine.TorchEngine, "select_memory", "state reorder")
    timer.patch(torch_engine.LogNormaliser, "__call__", "log-normaliser")
    timer.patch(torch_engine.TorchEngine, "scores", "output layer")  # a single model's
    timer.patch(seq2seq.Seq2Seq, "step_logits", "output layer")  # an ensemble member's
    timer.patch(nmt.kernels, "search_step", "step GEMMs")
    done = set()
    for model in getattr(translator.model, "members", [translator.model]):
        for obj, names, label in ((model.decoder, ("search_step", "step"), "decoder step, other"),
                                  (model.decoder.attention, ("score",), "attention")):
            for name in names:
                owner = next((c for c in type(obj).__mro__ if name in vars(c)), None)
                if owner is not None and (owner, name) not in done:  # once per defining class
                    timer.patch(owner, name, label)
                    done.add((owner, name))
    for name, member in vars(TorchOps).items():
        if not name.startswith("_") and callable(getattr(TorchOps, name)) and not isinstance(member, type):
            timer.patch(TorchOps, name, "search ops")


PHASES = ("encoder", "shortlist", "attention", "step GEMMs", "decoder step, other", "output layer",
          "log-normaliser", "search ops", "state reorder")


def report(beam: int, total: float, sentences: int, timer: PhaseTimer) -> str:
    lines = [f"beam {beam}: {sentences} sentences in {total:.3f} s ({sentences / total:.1f} sentences/s)",
             f"  {'phase':<22}{'ms':>10}{'share':>8}{'calls':>9}"]
    for phase in PHASES:
        if phase in timer.seconds:
            s = timer.seconds[phase]
            lines.append(f"  {phase:<22}{s * 1e3:>10.1f}{s / total:>8.1%}{timer.calls[phase]:>9}")
    rest = total - sum(timer.seconds.values())
    lines.append(f"  {'Python, other':<22}{rest * 1e3:>10.1f}{rest / total:>8.1%}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("-i", "--input", required=True, help="source sentences, one per line")
    ap.add_argument("--sentences", type=int, default=500, help="the first N lines (default 500)")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="beam sizes (default: 1 5)")
    ap.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    ap.add_argument("--shortlist", type=int, default=None, help="default: the recipe's decode.shortlist")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--trace", metavar="DIR", help="also write a torch.profiler trace per beam size here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from nmt.inference.translator import Translator

    lines = Path(args.input).read_text(encoding="utf-8").splitlines()[: args.sentences]
    translator = Translator.load(args.run_dir, precision=args.precision)
    timer = PhaseTimer()
    instrument(timer, translator)
    print(f"{args.run_dir}: precision {args.precision}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}", file=sys.stderr)
    for beam in args.beams:
        options = {"beam": beam, **({"shortlist": args.shortlist} if args.shortlist is not None else {})}
        translator.translate(lines[:32], **options)  # warm-up: search tables, lexicon, allocator
        timer.reset()
        profiler = None
        if args.trace:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profiler.__enter__()
        start = time.perf_counter()
        translator.translate(lines, **options)
        total = time.perf_counter() - start
        if profiler is not None:
            profiler.__exit__(None, None, None)
            Path(args.trace).mkdir(parents=True, exist_ok=True)
            profiler.export_chrome_trace(str(Path(args.trace) / f"beam{beam}.json"))
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        print(report(beam, total, len(lines), timer))
    return 0


if __name__ == "__main__":
    sys.exit(main())

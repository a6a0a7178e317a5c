#!/usr/bin/env python3
"""The fixed CPU cost of one ``translate`` call: process CPU time per sentence when a file is
translated in small calls (as ``nmt serve`` batches concurrent requests) and in one call.

    python scripts/call_cost.py RUN_DIR -i test.fr [--chunk 27] [--repeats 3]
        [--modes 5:float32 1:bf16 5:bf16:0 ...] [--profile cprofile|ops] [--dump FILE]

Each mode ``BEAM:PRECISION`` loads ``Translator.load(RUN_DIR, precision=...)`` once, sets
``torch.set_num_threads(1)``, warms up, then translates the lines in calls of ``--chunk``
consecutive sentences and in one call, each ``--repeats`` times, and reports the best process CPU
time (``time.process_time``) per sentence of both and their difference per call: the cost a call
pays whatever its size. CPU time at one thread is what a shared machine disturbs least.

Each mode is ``BEAM:PRECISION[:SHORTLIST]`` (the shortlist replaces the recipe's
``decode.shortlist``; 0 turns it off). ``--profile cprofile`` prints the functions that take the
most time in the small calls (cumulative and own); ``--profile ops`` counts the ATen operators of
the small calls (``torch.profiler``). ``--dump FILE`` appends every result of both ways of calling
(text, scores, per-token log-probabilities, the attention's bytes as a hash) and says whether they
are equal: compare the dumps of two versions with ``cmp``.
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import hashlib
import io
import pstats
import sys
import time
from collections import Counter
from pathlib import Path

import torch


def chunks(lines: list[str], size: int) -> list[list[str]]:
    return [lines[k: k + size] for k in range(0, len(lines), size)]


def cpu_seconds(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return times


def describe(results) -> list[str]:
    """One line per hypothesis: its text, scores, log-probabilities (repr: every bit) and attention hash."""
    out = []
    for k, result in enumerate(results):
        for h in result.hypotheses:
            att = "" if h.attention is None else hashlib.sha1(h.attention.float().numpy().tobytes()).hexdigest()
            out.append(f"{k}\t{h.text}\t{h.score!r}\t{h.raw_score!r}\t{[repr(x) for x in h.token_log_probs]}\t{att}")
    return out


def op_counts(translator, calls: list[list[str]], beam: int) -> None:
    """ATen operators of the small calls: how many per call, and the 30 that take the most time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for chunk in calls:
            translator.translate(chunk, beam=beam)
    counts: Counter = Counter()
    cpu: Counter = Counter()
    for event in prof.events():
        if event.name.startswith("aten::"):
            counts[event.name] += 1
            cpu[event.name] += event.self_cpu_time_total
    top = sorted(counts.items(), key=lambda kv: -cpu[kv[0]])[:30]
    print(f"  ATen ops (nested ones included): {sum(counts.values())} in {len(calls)} calls "
          f"({sum(counts.values()) / len(calls):.0f} per call)")
    for name, n in top:
        print(f"    {name:<36}{n:>8}{n / len(calls):>9.0f}/call{cpu[name] / 1e3:>10.1f} ms self")


def run_mode(args, lines: list[str], beam: int, precision: str, overrides: dict) -> None:
    from nmt.inference.translator import Translator

    translator = Translator.load(args.run_dir, precision=precision)
    translator.decode = dataclasses.replace(translator.decode, **overrides)
    calls = chunks(lines, args.chunk)
    for chunk in calls[:3]:  # warm-up: tables, lexicon, allocator, oneDNN kernels
        translator.translate(chunk, beam=beam)
    translator.translate(lines, beam=beam)
    label = f"beam {beam} {precision}" + "".join(f" {k} {v}" for k, v in overrides.items())
    if args.dump:
        small = [r for chunk in calls for r in translator.translate(chunk, beam=beam, return_scores=True,
                                                                     return_attention=True)]
        one = translator.translate(lines, beam=beam, return_scores=True, return_attention=True)
        small_text, one_text = describe(small), describe(one)
        print(f"{label}: calls of {args.chunk} {'equal' if small_text == one_text else 'DIFFER from'} one call",
              flush=True)
        with open(args.dump, "a", encoding="utf-8") as f:
            f.write(f"# {label}, calls of {args.chunk}\n" + "\n".join(small_text) + "\n")
            f.write(f"# {label}, one call\n" + "\n".join(one_text) + "\n")
        return
    if args.profile == "cprofile":
        prof = cProfile.Profile()
        prof.enable()
        for chunk in calls:
            translator.translate(chunk, beam=beam)
        prof.disable()
        for key in ("cumulative", "tottime"):
            stream = io.StringIO()
            pstats.Stats(prof, stream=stream).sort_stats(key).print_stats(35)
            print(f"--- {label}, by {key}\n" + stream.getvalue())
        return
    if args.profile == "ops":
        print(label)
        op_counts(translator, calls, beam)
        return
    n = len(lines)
    small = cpu_seconds(lambda: [translator.translate(chunk, beam=beam) for chunk in calls], args.repeats)
    one = cpu_seconds(lambda: translator.translate(lines, beam=beam), args.repeats)
    per_small, per_one = min(small) / n * 1e3, min(one) / n * 1e3
    fixed = (min(small) - min(one)) / len(calls) * 1e3
    print(f"{label}: calls of {args.chunk}: {per_small:.3f} ms/sentence "
          f"(runs {', '.join(f'{t / n * 1e3:.3f}' for t in small)}); one call: {per_one:.3f} ms/sentence "
          f"(runs {', '.join(f'{t / n * 1e3:.3f}' for t in one)}); ratio {per_one / per_small:.3f}; "
          f"{fixed:.1f} ms more per call of {args.chunk}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("-i", "--input", required=True, help="source sentences, one per line")
    ap.add_argument("--sentences", type=int, default=None, help="the first N lines (default: all)")
    ap.add_argument("--chunk", type=int, default=27, help="sentences per small call (default 27)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts (default 3)")
    ap.add_argument("--modes", nargs="+", default=["5:float32", "1:bf16"],
                    help="BEAM:PRECISION[:SHORTLIST] (default: 5:float32 1:bf16, what precision auto "
                         "picks, with the recipe's shortlist)")
    ap.add_argument("--profile", choices=("cprofile", "ops"), help="profile the small calls instead of timing")
    ap.add_argument("--dump", metavar="FILE", help="write every result (appended) instead of timing")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lines = Path(args.input).read_text(encoding="utf-8").splitlines()[: args.sentences]
    print(f"{args.run_dir}: {len(lines)} lines, 1 thread, torch {torch.__version__}", file=sys.stderr)
    for mode in args.modes:
        beam, precision, *shortlist = mode.split(":")
        run_mode(args, lines, int(beam), precision, {"shortlist": int(shortlist[0])} if shortlist else {})
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Where a training step's time goes: the operators' self CPU time, by kind.

    python scripts/profile_train.py RECIPE [--warmup 30] [--steps 30] [--threads 1] [--set KEY=VALUE ...]

Trains RECIPE in a temporary run directory for ``--warmup`` + ``--steps`` updates and records the
last ``--steps`` with torch.profiler (the trainer's ``step`` is wrapped here, at run time; nmt
itself is unchanged). Prints the wall time of the recorded updates and the operators' self CPU
time grouped by kind, then the top operators:

    matrix products     mm, addmm, bmm, baddbmm (the oneDNN / MKL kernels run inside them)
    optimizer           the fused Adam update
    copies and casts    copy_, _to_copy, cat, clone, fill_, zero_, index and gather copies
    reductions          sum, mean, max, cumsum, softmax, log_softmax
    elementwise         the rest of the aten operators: gates, activations, masks, losses
    autograd and other  what the profiler books to autograd nodes and non-aten events

With one thread, the wall time minus the operators' self time is Python and dispatch. The share of
matrix products is what a faster GEMM can act on: at most that share of the step gets faster.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

KINDS = {
    "matrix products": ("mm", "addmm", "bmm", "baddbmm", "addbmm", "addmv", "mv", "dot"),
    "copies and casts": ("copy_", "_to_copy", "cat", "clone", "fill_", "zero_", "index_select",
                         "index_copy_", "gather", "scatter_", "index", "index_put_", "masked_fill_",
                         "contiguous", "stack", "constant_pad_nd", "zeros", "empty", "new_zeros"),
    "reductions": ("sum", "mean", "max", "amax", "cumsum", "softmax", "_softmax", "log_softmax",
                   "_log_softmax", "logsumexp", "norm", "linalg_vector_norm", "_softmax_backward_data",
                   "_log_softmax_backward_data"),
}


def kind_of(name: str) -> str:
    if "adam" in name.lower():
        return "optimizer"
    if not name.startswith("aten::"):
        return "autograd and other"
    op = name[len("aten::"):]
    for kind, ops in KINDS.items():
        if op in ops:
            return kind
    return "elementwise"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--warmup", type=int, default=30, help="updates before the recorded ones")
    ap.add_argument("--steps", type=int, default=30, help="recorded updates")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    args = ap.parse_args(argv)

    from nmt.heap import keep_freed_memory_for_reuse
    from nmt.training import trainer as trainer_module

    keep_freed_memory_for_reuse()  # as the CLI does at start-up: heap blocks reused, not re-faulted
    torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    overrides = [*args.set, f"train.max_steps={total}", "train.budget_minutes=null",
                 f"train.valid_every={10 * total + 1}", f"train.num_threads={args.threads}",
                 "train.valid_max_sentences=10"]
    recipe = trainer_module.load_training_recipe(args.recipe, overrides)
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    seen, wall = [0], [0.0]
    step = trainer_module.Trainer.step

    def recorded_step(self):
        seen[0] += 1
        if seen[0] == args.warmup + 1:
            profiler.__enter__()
        start = time.perf_counter()
        result = step(self)
        if seen[0] > args.warmup:
            wall[0] += time.perf_counter() - start
        if seen[0] == total:
            profiler.__exit__(None, None, None)
        return result

    trainer_module.Trainer.step = recorded_step
    with tempfile.TemporaryDirectory() as tmp:
        trainer_module.train(recipe, run_dir=Path(tmp) / "run")
    events = profiler.key_averages()
    by_kind: dict[str, float] = defaultdict(float)
    for e in events:
        by_kind[kind_of(e.key)] += e.self_cpu_time_total / 1e6
    ops = sum(by_kind.values())
    print(f"{args.recipe}: {args.steps} updates after {args.warmup}, {args.threads} thread(s): "
          f"{wall[0]:.2f} s wall, {wall[0] / args.steps * 1e3:.1f} ms per update")
    print(f"  {'kind':<20s} {'self CPU s':>10s} {'share of wall':>14s}")
    for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<20s} {seconds:10.2f} {seconds / wall[0]:13.1%}")
    rest = wall[0] - ops
    print(f"  {'wall minus operators':<20s} {rest:10.2f} {rest / wall[0]:13.1%}  (Python and dispatch, at 1 thread)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``nmt bench train | translate``, with the options only a measurement needs (busy processes
beside it, fixed sentence batches)."""
from __future__ import annotations

import argparse

from nmt.commands.common import add_checkpoint, add_kernels, add_removed_quantize, add_set, formatter
from nmt.config import add_decode_arguments

NAME = "bench"
HELP = "measure training and translation speed"
EXAMPLES = """
    nmt bench train recipes/bench-joeynmt.yaml --steps 200 --flops
    nmt bench translate runs/fr-en --beam 5 --split test --json
    nmt bench translate --engine onnx export/fr-en --beam 5     an nmt export on onnxruntime
    nmt bench train recipes/bench-joeynmt.yaml --beside-busy 1        beside a CPU-bound process
    """


def _add_busy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beside-busy", type=int, default=0, metavar="K",
                   help="measure beside K busy processes (one CPU-bound thread each), started before "
                        "and stopped after the measurement (default 0)")
    p.add_argument("--busy-kind", choices=["spin", "matmul"], default="spin",
                   help="spin: pure-Python arithmetic (needs a core, nothing else); matmul: 256x256 "
                        "matrix products on one torch thread (also competes for caches and memory)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT")
    sub.required = True
    bt = sub.add_parser("train", help="training throughput (target tokens/s)", formatter_class=formatter)
    bt.add_argument("recipe")
    add_set(bt)
    add_kernels(bt)
    bt.add_argument("--steps", type=int, default=200)
    bt.add_argument("--warmup", type=int, default=20)
    bt.add_argument("--flops", action="store_true",
                    help="also count GEMM FLOPs per token and report them against the measured GEMM peak")
    _add_busy(bt)
    bt.add_argument("--json", action="store_true")
    btr = sub.add_parser("translate", help="decoding throughput and BLEU", formatter_class=formatter)
    btr.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                     help="run directory; several: their ensemble; --engine onnx: one export directory")
    btr.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                     help="torch: the run's PyTorch model (default); onnx: an nmt export on onnxruntime "
                          "(its float32 or int8 graphs)")
    btr.add_argument("--split", default="test")
    btr.add_argument("--batch-sentences", type=int, help="fixed sentence batches, e.g. 64 as JoeyNMT")
    add_checkpoint(btr)
    add_removed_quantize(btr)
    add_kernels(btr)
    add_decode_arguments(btr, exclude=("n_best",))
    _add_busy(btr)
    btr.add_argument("--json", action="store_true")


def run(args) -> int:
    from nmt.tools.bench import bench_cli

    return bench_cli(args)

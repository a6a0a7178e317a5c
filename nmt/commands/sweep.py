"""``nmt sweep``."""
from __future__ import annotations

import argparse

from nmt.commands.common import add_set

NAME = "sweep"
HELP = ("train a grid of recipe variants (x seeds), then report test BLEU mean and std, curves and plots; "
        "says how long it may take before it starts; re-running the same command resumes it")
EXAMPLES = """
    nmt sweep recipes/sweep-activations.yaml \\
        --grid model.activation=relu,gelu,arelu --grid model.attention.kind=bahdanau,local-p \\
        --steps 500 --seeds 1,2 --jobs 2
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    add_set(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a recipe key and the values it takes (repeatable; the sweep trains every "
                        "combination of the grids, once per seed)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="train each run for M minutes of wall time (train.budget_minutes)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="train each run for N updates (train.max_steps; no time budget)")
    p.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="comma list of seeds, one run per seed and grid point (default: the recipe's train.seed)")
    p.add_argument("--out-dir", help="sweep directory (default: runs/sweep-<recipe name>)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each with cores/jobs threads (default 1); pair with --steps")


def run(args) -> int:
    from nmt.tools.sweep import sweep_cli

    return sweep_cli(args)

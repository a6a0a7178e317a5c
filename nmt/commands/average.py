"""``nmt average``."""
from __future__ import annotations

import argparse

NAME = "average"
HELP = "average the weights of a run's last or best checkpoints into checkpoints/avg"
EXAMPLES = """
    nmt average runs/fr-en --last 5        the 5 newest kept checkpoints (train.keep_last: 5 or more)
    nmt average runs/fr-en --best 3        the 3 with the best validation
    nmt translate runs/fr-en --checkpoint avg -i test.fr
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by nmt train")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, metavar="N", help="average the N newest kept checkpoints")
    which.add_argument("--best", type=int, metavar="N",
                       help="average the N kept checkpoints with the best validation (the run's "
                            "train.early_stopping_metric)")


def run(args) -> int:
    from nmt.tools.average import average_cli

    return average_cli(args)

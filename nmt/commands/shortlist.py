"""``nmt shortlist``."""
from __future__ import annotations

import argparse

NAME = "shortlist"
HELP = ("build a run's lexicon for shortlist decoding (IBM Model 1 on its training data) and its "
        "table of names (decode.names)")
EXAMPLES = """
    nmt shortlist runs/fr-en
    nmt translate runs/fr-en -i test.fr --shortlist 20     decode over the batch's shortlist
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by nmt train")
    p.add_argument("--keep", type=int, default=100, help="translations kept per source subword (default 100)")
    p.add_argument("--iterations", type=int, default=5, help="EM iterations (default 5)")
    p.add_argument("--max-pairs", type=int, default=None,
                   help="train on an evenly spaced sample of at most this many pairs (default: the run "
                        "recipe's data.lexicon_sample, 200,000 unless set; memory grows with pairs × source "
                        "length × target length)")


def run(args) -> int:
    from nmt.errors import NmtError
    from nmt.inference.shortlist import build_for_run

    from nmt.inference.checkpoint import load_run_recipe

    for flag, value in (("--keep", args.keep), ("--iterations", args.iterations), ("--max-pairs", args.max_pairs)):
        if value is not None and value < 1:
            raise NmtError(f"{flag} must be >= 1, got {value}")
    recipe = load_run_recipe(args.run_dir)
    max_pairs = recipe.data.lexicon_sample if args.max_pairs is None else args.max_pairs
    path = build_for_run(args.run_dir, iterations=args.iterations, keep=args.keep, max_pairs=max_pairs,
                         recipe=recipe)
    from nmt.inference.names import NAMES_FILE

    print(f"wrote {path} and {path.parent / NAMES_FILE}")
    return 0

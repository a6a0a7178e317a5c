"""``nmt shortlist``."""
from __future__ import annotations

import argparse

NAME = "shortlist"
HELP = "build a run's lexicon for shortlist decoding (IBM Model 1 on its training data)"
EXAMPLES = """
    nmt shortlist runs/fr-en
    nmt translate runs/fr-en -i test.fr --shortlist 20     decode over the batch's shortlist
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by nmt train")
    p.add_argument("--keep", type=int, default=100, help="translations kept per source subword (default 100)")
    p.add_argument("--iterations", type=int, default=5, help="EM iterations (default 5)")
    p.add_argument("--max-pairs", type=int, default=200_000,
                   help="train on an evenly spaced sample of at most this many pairs (default 200,000; "
                        "memory grows with pairs × source length × target length)")


def run(args) -> int:
    from nmt.errors import NmtError
    from nmt.inference.shortlist import build_for_run

    for flag, value in (("--keep", args.keep), ("--iterations", args.iterations), ("--max-pairs", args.max_pairs)):
        if value < 1:
            raise NmtError(f"{flag} must be >= 1, got {value}")
    path = build_for_run(args.run_dir, iterations=args.iterations, keep=args.keep, max_pairs=args.max_pairs)
    print(f"wrote {path}")
    return 0

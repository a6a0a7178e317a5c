"""``nmt data check``."""
from __future__ import annotations

import argparse
import json

from nmt.commands.common import add_set

NAME = "data"
HELP = "check a recipe's corpus before a long run: counts, lengths, duplicates, overlap, languages"
EXAMPLES = """
    nmt data check recipes/my-corpus.yaml              the report; exit 2 when training would refuse
    nmt data check recipes/fr-en.yaml --json           the same as one JSON object
    nmt data check recipes/my.yaml --set data.columns.src=0 --set data.columns.tgt=1
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check"])
    p.add_argument("recipe")
    add_set(p)
    p.add_argument("--sample", type=int, default=300, metavar="N",
                   help="training pairs, spread over the split, whose language is identified (default 300)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from nmt.config import load_recipe
    from nmt.data.check import check_corpus, format_report
    from nmt.errors import ConfigError

    if args.sample < 20:
        raise ConfigError(f"--sample {args.sample}: must be at least 20 (the language check needs "
                          "20 judged lines for a verdict)")
    report = check_corpus(load_recipe(args.recipe, args.overrides), sample=args.sample)
    print(json.dumps(report.to_dict(), ensure_ascii=False, indent=1) if args.json else format_report(report))
    return 0 if report.ok else 2

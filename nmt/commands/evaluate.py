"""``nmt evaluate``."""
from __future__ import annotations

import argparse

from nmt.commands.common import add_checkpoint
from nmt.config import add_decode_arguments

NAME = "evaluate"
HELP = "score translations with sacrebleu (BLEU, chrF, TER)"
EXAMPLES = """
    nmt evaluate --hyp out.en --ref test.en
    nmt evaluate --hyp out.en --ref ref1.en --ref ref2.en --metrics bleu,chrf,ter --json
    nmt evaluate runs/fr-en --split test --beam 5          translate the split, then score it
    nmt evaluate runs/fr-en runs/fr-en-seed2 --split test   ... with the ensemble of two runs
    nmt evaluate runs/fr-en --src flores.fr --ref flores.en   a test set of your own
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="*", metavar="RUN_DIR",
                   help="run directory (translate a split, then score it); several: their ensemble")
    p.add_argument("--hyp", help="hypothesis file (detokenized)")
    p.add_argument("--ref", action="append", default=[], help="reference file (repeatable)")
    p.add_argument("--metrics", default=None, help="comma list of bleu,chrf,ter (default: all)")
    p.add_argument("--split", default="test", help="split of the run's corpus (default: test)")
    p.add_argument("--src", metavar="FILE",
                   help="with RUN_DIR: translate this source file instead of a split and score it "
                        "against --ref (a test set of your own)")
    add_checkpoint(p)
    add_decode_arguments(p, exclude=("n_best",))
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args) -> int:
    from nmt.tools.evaluate import evaluate_cli

    return evaluate_cli(args)

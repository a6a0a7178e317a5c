"""``nmt plot attention | curves | activations``."""
from __future__ import annotations

import argparse

from nmt.commands.common import add_checkpoint, formatter
from nmt.config import add_decode_arguments

NAME = "plot"
HELP = "plot attention weights, training curves or activation functions"
EXAMPLES = """
    nmt plot attention runs/fr-en --source "Je suis fatigué." -o att.png
    nmt plot attention runs/fr-en --input test.fr --lines 1-10 --out-dir plots/
    nmt plot curves runs/fr-en runs/fr-en-luong -o curves.png
    nmt plot activations relu gelu arelu -o act.png
    nmt plot activations arelu aprelu --run runs/fr-en-arelu -o learned.png
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT")
    sub.required = True
    pa = sub.add_parser("attention", help="attention heatmaps of translations", formatter_class=formatter)
    pa.add_argument("run_dir")
    pa.add_argument("--source", help="one source sentence")
    pa.add_argument("--input", help="file of source sentences")
    pa.add_argument("--lines", help="line range of --input, e.g. 1-10 (1-based, inclusive)")
    pa.add_argument("-o", "--output", help="image file for --source (png, svg or pdf)")
    pa.add_argument("--out-dir", help="directory for --input plots")
    add_checkpoint(pa)
    add_decode_arguments(pa, exclude=("n_best",), defaults={"beam": 1})
    pc = sub.add_parser("curves", help="loss and valid BLEU over steps, runs overlaid", formatter_class=formatter)
    pc.add_argument("run_dirs", nargs="+")
    pc.add_argument("-o", "--output", default="curves.png")
    pv = sub.add_parser("activations", help="activation functions and their derivatives", formatter_class=formatter)
    pv.add_argument("names", nargs="+")
    pv.add_argument("--run", help="a trained run: also show learned AReLU/APReLU parameters")
    pv.add_argument("-o", "--output", default="activations.png")


def run(args) -> int:
    from nmt.tools.plots import plot_cli

    return plot_cli(args)

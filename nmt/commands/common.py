"""Options shared by several subcommands, each declared once here."""
from __future__ import annotations

import argparse

from nmt.config import KERNELS

CHECKPOINT_HELP = "best | last | avg | a checkpoint file (default: best)"


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.lr=3e-4 (repeatable)")


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", help=CHECKPOINT_HELP)


def add_precision(p: argparse.ArgumentParser, help: str = "search under bf16 autocast") -> None:
    p.add_argument("--precision", choices=["float32", "bf16"], default="float32", help=help)


def add_kernels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", choices=KERNELS,
                   help="auto: CPU fast paths where they apply; reference: the plain equations only, "
                        "as a GPU runs them (default: the recipe's model.kernels)")

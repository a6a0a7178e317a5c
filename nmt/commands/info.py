"""``nmt info``."""
from __future__ import annotations

import argparse

NAME = "info"
HELP = "versions, threads and devices"
EXAMPLES = "nmt info"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``nmt info`` takes no arguments."""


def run(args) -> int:
    from nmt.tools.info import info_text

    print(info_text())
    return 0

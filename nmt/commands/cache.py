"""``nmt cache``."""
from __future__ import annotations

import argparse

NAME = "cache"
HELP = "the encoded cache: where it is, what it holds, clearing it"
EXAMPLES = """
    nmt cache                 the directory, its entries (newest use first) and their sizes
    nmt cache --clear         delete every entry (the next nmt train encodes its corpus again)
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clear", action="store_true", help="delete every entry of the encoded cache")


def run(args) -> int:
    from nmt.data.encoded_cache import cache_root, clear, describe

    if args.clear:
        print(f"{cache_root()}: deleted, {clear() / 1e6:.1f} MB freed")
    else:
        print(describe())
    return 0

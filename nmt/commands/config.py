"""``nmt config show | validate``."""
from __future__ import annotations

import argparse
import sys

from nmt.commands.common import add_set
from nmt.errors import NmtError

NAME = "config"
HELP = "show a recipe resolved (base: applied, defaults filled in) or validate it"
EXAMPLES = """
    nmt config show recipes/fr-en-luong.yaml             fr-en.yaml with the Luong keys over it
    nmt config show recipes/fr-en.yaml --set train.lr=5e-4
    nmt config validate recipes/fr-en.yaml               also checks that training stops by itself
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show", "validate"])
    p.add_argument("recipe")
    add_set(p)


def run(args) -> int:
    from nmt.training.loop import load_training_recipe

    # show prints any recipe (a base fragment too); validate also asks that training stops
    recipe = load_training_recipe(args.recipe, args.overrides, require_stop=args.action == "validate")
    if args.action == "show":
        if sys.stdout is None:
            raise NmtError("standard output is closed; nothing can be shown")
        sys.stdout.write(recipe.to_yaml())
    else:
        print(f"{args.recipe}: OK")
    return 0

"""``nmt train``."""
from __future__ import annotations

import argparse
import dataclasses

from nmt.commands.common import add_set

NAME = "train"
HELP = "train a model from a recipe (resumable, distributed through accelerate)"
EXAMPLES = """
    nmt train recipes/fr-en.yaml
    nmt train recipes/fr-en.yaml --run-dir runs/exp1 --set train.precision=bf16
    nmt train recipes/fr-en.yaml --resume                 continue the last checkpoint
    nmt train recipes/my-domain.yaml --init-from runs/fr-en   continue a trained run's weights on new data
    torchrun --nproc_per_node 2 -m nmt train recipes/tiny.yaml   2 CPU processes
    accelerate launch --num_processes 4 -m nmt train recipes/fr-en.yaml   (GPUs)
    torchrun --nnodes 2 --node_rank R --master_addr HOST0 --master_port 29500 -m nmt train recipes/fr-en.yaml
                                                          on each of 2 machines (docs/training.md)
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    add_set(p)
    p.add_argument("--run-dir", help="output directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--init-from", metavar="RUN_DIR",
                   help="start from the weights and tokenizer models of this trained run, with the "
                        "recipe's data, schedule and a fresh optimizer (continued training, fine-tuning; "
                        "recipe key train.init_from)")
    p.add_argument("--init-checkpoint", choices=["best", "last", "avg"],
                   help="which weights of --init-from (default: the recipe's train.init_checkpoint, best)")


def run(args) -> int:
    from nmt.config import load_recipe
    from nmt.training.threads import prepare

    recipe = load_recipe(args.recipe, args.overrides)
    # before torch is loaded: train.num_threads auto may choose OpenMP's wait policy
    prepare(recipe.train.num_threads)
    from nmt.training.loop import train  # train() checks the model section and the stop criteria

    given = {"init_from": args.init_from, "init_checkpoint": args.init_checkpoint}
    given = {key: value for key, value in given.items() if value is not None}
    if given:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **given))
    from nmt.inference.devices import close_process_group

    try:
        summary = train(recipe, run_dir=args.run_dir, resume=args.resume, recipe_path=args.recipe)
    finally:
        close_process_group()
    if summary["stopped"].startswith("signal "):
        # the checkpoint is written and --resume continues, but the training did not finish:
        # say so to the shell (128 + signal number, as for a process killed by it)
        import signal

        return 128 + signal.Signals[summary["stopped"].split()[1]].value
    return 0

"""The learning rate of each update: the schedule's factor, with a plateau's reductions kept on top."""
import pytest
import torch

from nmt.training.schedule import build_optimizer, build_plateau, plateau_step, set_lr


def test_plateau_reductions_survive_the_per_update_learning_rate(tiny_recipe):
    recipe = tiny_recipe("train.schedule=plateau", "train.warmup_steps=0", "train.lr=0.01",
                         "train.plateau_patience=0", "train.plateau_factor=0.5", "train.early_stopping_metric=bleu")
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, recipe)
    plateau = build_plateau(optimizer, recipe)
    set_lr(optimizer, 1, recipe, 0.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    plateau_step(plateau, optimizer, 10.0)  # the first validation: the best so far
    plateau_step(plateau, optimizer, 9.0)  # worse, patience 0: halved
    set_lr(optimizer, 2, recipe, 0.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    plateau_step(plateau, optimizer, 8.0)
    set_lr(optimizer, 3, recipe, 0.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)


def test_only_the_plateau_schedule_has_a_plateau_scheduler(tiny_recipe):
    recipe = tiny_recipe("train.schedule=cosine")
    assert build_plateau(build_optimizer(torch.nn.Linear(3, 2), recipe), recipe) is None

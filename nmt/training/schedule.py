"""The optimizer and its learning rate: warmup, then constant, inverse square root, cosine (over
``max_steps`` or the time budget) or reductions on a validation plateau."""
from __future__ import annotations

import math

import torch

from nmt.config import Recipe


def build_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    t = recipe.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    kwargs = dict(lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    try:
        # the fused kernel: one pass per parameter instead of a dozen;
        # same update up to float rounding
        return cls(model.parameters(), fused=True, **kwargs)
    except RuntimeError:  # torch < 2.4 has no fused kernel for CPU parameters
        return cls(model.parameters(), **kwargs)


def build_plateau(optimizer: torch.optim.Optimizer, recipe: Recipe):
    """The ``ReduceLROnPlateau`` of ``train.schedule: plateau`` (None for the other schedules)."""
    t = recipe.train
    if t.schedule != "plateau":
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max" if t.early_stopping_metric == "bleu" else "min",
        factor=t.plateau_factor, patience=t.plateau_patience, min_lr=t.min_lr)


def lr_factor(step: int, recipe: Recipe, elapsed_seconds: float | None = None) -> float:
    """Multiplier of ``train.lr`` at update ``step`` (1-based).

    ``cosine`` decays to ``min_lr`` over ``max_steps``, or, when training is limited by
    ``budget_minutes`` instead, over the time budget (``elapsed_seconds`` of it spent): a
    time-budgeted run then ends with a fully decayed learning rate whatever its speed.
    """
    t = recipe.train
    warm = t.warmup_steps
    if warm and step <= warm:
        return step / warm
    if t.schedule == "inverse_sqrt":
        return math.sqrt(max(warm, 1) / step)
    if t.schedule == "cosine":
        if t.max_steps:
            progress = min(1.0, (step - warm) / max(1, t.max_steps - warm))
        elif t.budget_minutes and elapsed_seconds is not None:
            progress = min(1.0, elapsed_seconds / (t.budget_minutes * 60))
        else:
            return 1.0
        floor = t.min_lr / t.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0  # constant, and plateau (whose reductions are applied on top at validation)


def set_lr(optimizer: torch.optim.Optimizer, step: int, recipe: Recipe, elapsed_seconds: float) -> None:
    """The learning rate of update ``step``: ``train.lr`` × :func:`lr_factor` × the plateau's reductions."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", recipe.train.lr) * lr_factor(step, recipe, elapsed_seconds) * \
            group.get("plateau_scale", 1.0)


def plateau_step(plateau, optimizer: torch.optim.Optimizer, metric: float) -> None:
    """Let the plateau scheduler see a validation ``metric``, and keep the reduction it makes as
    ``plateau_scale`` (:func:`set_lr` rewrites ``lr`` at every update)."""
    before = optimizer.param_groups[0]["lr"]
    plateau.step(metric)
    after = optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups:
        group["plateau_scale"] = group.get("plateau_scale", 1.0) * (after / before if before else 1.0)

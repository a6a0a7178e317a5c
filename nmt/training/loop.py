"""The names ``nmt.training.loop`` has always offered, now defined in the modules beside it:
:mod:`~nmt.training.trainer` (``train``), :mod:`~nmt.training.rundir`, :mod:`~nmt.training.schedule`,
:mod:`~nmt.training.progress`, :mod:`~nmt.training.validator` and :mod:`~nmt.training.checkpoints`."""
from nmt.training.checkpoints import restore, save_checkpoint, truncate_metrics
from nmt.training.progress import Progress, eta_seconds, progress_disabled, progress_text, run_fraction
from nmt.training.rundir import InitSource, init_source, make_run_dir, preflight_run_dir
from nmt.training.schedule import build_optimizer, lr_factor
from nmt.training.state import TrainerState
from nmt.training.trainer import Trainer, load_training_recipe, recipe_vocab_sizes, train
from nmt.training.validator import Validator, is_improvement

__all__ = [
    "InitSource", "Progress", "Trainer", "TrainerState", "Validator", "build_optimizer", "eta_seconds",
    "init_source", "is_improvement", "load_training_recipe", "lr_factor", "make_run_dir", "preflight_run_dir",
    "progress_disabled", "progress_text", "recipe_vocab_sizes", "restore", "run_fraction", "save_checkpoint",
    "train", "truncate_metrics",
]

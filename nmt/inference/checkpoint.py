"""Run directories and checkpoints: atomic writes, safetensors weights, no pickled code on load.

Layout of a run directory (everything translation needs)::

    recipe.yaml                 the resolved recipe the run was trained with
    spm.src.model spm.tgt.model sentencepiece models (see nmt.data.tokenizer)
    checkpoints/best.safetensors, best.json   weights + metadata of the best validation
    checkpoints/last.safetensors, last.json   weights of the last checkpoint
    checkpoints/last.state.pt   optimizer, scheduler, RNG and data-position state (resume only)
    metrics.jsonl               one JSON record per log/validation event
    plots/                      attention plots written at validation

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed, so a
crash (even ``kill -9``) leaves either the previous complete file or the new complete file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from nmt.atomic import atomic_path
from nmt.config import KERNELS
from nmt.errors import CheckpointError, NmtError

CHECKPOINT_DIR = "checkpoints"


def save_weights(model: "torch.nn.Module", path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Model weights as safetensors (tied parameters stored once), written atomically."""
    from safetensors.torch import save_model

    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=meta)


def load_weights(model: "torch.nn.Module", path: str | os.PathLike) -> dict[str, Any]:
    """Load safetensors weights into ``model``; returns the stored metadata.

    Corrupt or truncated files and weights of a different architecture give a CheckpointError.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        missing, unexpected = load_model(model, str(path), strict=False, device="cpu")
    except CheckpointError:
        raise
    except RuntimeError as exc:
        text = str(exc)
        if "size mismatch" in text or "shape" in text:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model (shapes differ); was it trained with a "
                f"different recipe (model sizes, vocabulary)? Details: {text.splitlines()[0]}") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {text.splitlines()[0]}") from None
    except Exception as exc:  # safetensors raises SafetensorError for truncated headers / data
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); "
                              "use another checkpoint (--checkpoint last) or retrain") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}; was it written by a run with a different recipe?")
    out = {}
    for key, value in metadata.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Trainer state (optimizer, scheduler, RNG, data position): tensors and plain containers only."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"trainer state {path} not found; cannot resume (start without --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as exc:
        raise CheckpointError(f"trainer state {path} is corrupt or truncated ({type(exc).__name__}); "
                              "delete the run directory's checkpoints/last.* to restart") from None


def checkpoint_path(run_dir: str | os.PathLike, which: str) -> Path:
    """``best`` | ``last`` | an explicit file path -> the weights file."""
    run_dir = Path(run_dir)
    if which in ("best", "last"):
        path = run_dir / CHECKPOINT_DIR / f"{which}.safetensors"
        if not path.is_file() and which == "best":
            last = run_dir / CHECKPOINT_DIR / "last.safetensors"
            if last.is_file():
                return last
        if not path.is_file():
            raise CheckpointError(f"run directory {run_dir} has no {which} checkpoint ({path}); "
                                  "is it a run directory written by `nmt train`?")
        return path
    path = Path(which)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {which} not found (use best, last or a path)")
    return path


def load_run_recipe(run_dir: str | os.PathLike):
    """The resolved recipe a run directory was trained with (``recipe.yaml``)."""
    import yaml

    from nmt.config import recipe_from_dict

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found (train one with `nmt train RECIPE`)")
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise CheckpointError(f"run directory {run_dir} has no recipe.yaml; was it written by `nmt train`?")
    return recipe_from_dict(yaml.safe_load(recipe_file.read_text(encoding="utf-8")), source=str(recipe_file))


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best",
             map_fn: Callable[["torch.nn.Module"], "torch.nn.Module"] | None = None,
             kernels: str | None = None):
    """Load ``(recipe, tokenizers, model, metadata)`` from a run directory (model in eval mode, CPU).

    ``kernels`` replaces the recipe's ``model.kernels`` (``auto`` or ``reference``).
    """
    from nmt.data.tokenizer import SubwordTokenizers
    from nmt.model.seq2seq import build_model

    if kernels is not None and kernels not in KERNELS:
        raise NmtError(f"kernels {kernels!r}: choose {' or '.join(KERNELS)}")
    run_dir = Path(run_dir)
    recipe = load_run_recipe(run_dir)
    if kernels is not None:
        recipe.model.kernels = kernels
    tokenizers = SubwordTokenizers.load(run_dir)
    model = build_model(recipe.model, tokenizers.src_vocab_size, tokenizers.tgt_vocab_size)
    weights = checkpoint_path(run_dir, checkpoint)
    metadata = load_weights(model, weights)
    model.eval()
    if map_fn is not None:
        model = map_fn(model)
    return recipe, tokenizers, model, metadata

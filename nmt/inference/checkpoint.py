"""Run directories and checkpoints: atomic writes, safetensors weights, no pickled code on load.

Layout of a run directory (everything translation needs)::

    recipe.yaml                 the resolved recipe the run was trained with (first line marks it)
    spm.src.model spm.tgt.model sentencepiece models (see nmt.data.tokenizer), spm.json their origin
    checkpoints/best.safetensors, best.json   weights + metadata of the best validation
    checkpoints/stepNNNNNNNN.safetensors      weights of the last checkpoint (and of the ones
                                              before it that ``train.keep_last`` keeps)
    checkpoints/stepNNNNNNNN.state.pt         optimizer, scheduler, RNG and data-position state
    checkpoints/last.json       names the last complete pair of the two files above (+ metadata)
    checkpoints/avg.safetensors weights averaged by ``nmt average`` (metadata: which steps)
    metrics.jsonl               one JSON record per log/validation event
    plots/                      attention plots written at validation
    train.lock                  while ``nmt train`` writes the directory: its pid and host

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed, so a
crash (even ``kill -9``) leaves either the previous complete file or the new complete file. The last
checkpoint is two files that must belong together, so a new pair is written under new names and
``last.json`` is pointed at it only once both are complete; the previous pair is deleted after that.
A crash at any moment thus leaves ``last.json`` naming a complete pair. With ``train.keep_last`` N > 1
the weights of the N - 1 checkpoints before the last stay (their trainer state goes): they never form
a pair, so resuming only ever sees the last pair and the older complete ones a crash left.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import torch

from nmt.atomic import atomic_path, atomic_write_json
from nmt.config import KERNELS
from nmt.errors import CheckpointError, NmtError


CHECKPOINT_DIR = "checkpoints"
LAST_POINTER = "last.json"
#: the single-file pair of runs written before checkpoints were step-numbered (still read)
LEGACY_WEIGHTS, LEGACY_STATE = "last.safetensors", "last.state.pt"
#: the weights ``nmt average`` writes (``--checkpoint avg``)
AVERAGE_WEIGHTS = "avg.safetensors"
#: first line of the recipe.yaml ``nmt train`` writes: a recipe.yaml without it is the user's own
RECIPE_HEADER = "# written by `nmt train`: the resolved recipe of this run directory\n"
_PAIR = re.compile(r"^step(\d{8})\.(safetensors|state\.pt)$")


def save_weights(model: "torch.nn.Module", path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Model weights as safetensors (tied parameters stored once), written atomically."""
    from safetensors.torch import save_model

    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        try:
            save_model(model, str(tmp), metadata=meta)
        except Exception as exc:  # safetensors reports a full disk as its own error type
            code = re.search(r"os error (\d+)", str(exc))
            if code:
                raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
            raise


def load_weights(model: "torch.nn.Module", path: str | os.PathLike) -> dict[str, Any]:
    """Load safetensors weights into ``model``; returns the stored metadata.

    Corrupt or truncated files and weights of a different architecture give a CheckpointError.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a weights file")
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
    return _decoded(metadata)


def _decoded(metadata: dict[str, str]) -> dict[str, Any]:
    out = {}
    for key, value in metadata.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def read_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a weights file (its header only: the tensors are not read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return _decoded(handle.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); "
                              "delete it or retrain") from None


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """All tensors of a weights file by name, and its metadata (no model needed)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); "
                              "delete it or retrain") from None
    return tensors, _decoded(metadata)


def write_tensors(path: str | os.PathLike, tensors: dict[str, "torch.Tensor"],
                  metadata: dict[str, Any] | None = None) -> None:
    """Tensors by name as a safetensors file, written atomically (the layout :func:`save_weights`
    writes when the names are a model's)."""
    from safetensors.torch import save_file

    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Trainer state (optimizer, scheduler, RNG, data position): tensors and plain containers only."""
    import torch

    import io

    buffer = io.BytesIO()  # serialised first: torch.save reports a full disk as a RuntimeError
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"trainer state {path} is a directory, not a file")
    if not path.is_file():
        raise CheckpointError(f"trainer state {path} not found; cannot resume (start without --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            raise CheckpointError(
                f"trainer state {path} was refused as unsafe: it holds pickled objects that are not "
                f"plain tensors and containers{f' ({found.group(1)})' if found else ''}, which could "
                "run code when loaded; `nmt train` never writes such a file. Do not use this run "
                "directory's state from an untrusted source; delete it to restart") from None
        raise CheckpointError(f"trainer state {path} is corrupt or truncated ({type(exc).__name__}); "
                              "delete the run directory's checkpoints to restart") from None
    except Exception as exc:
        raise CheckpointError(f"trainer state {path} is corrupt or truncated ({type(exc).__name__}); "
                              "delete the run directory's checkpoints to restart") from None


# ------------------------------------------------------------------------- the last checkpoint

def pair_names(step: int) -> tuple[str, str]:
    """File names of the weights and trainer state of the checkpoint at ``step``."""
    return f"step{step:08d}.safetensors", f"step{step:08d}.state.pt"


def save_last(checkpoint_dir: str | os.PathLike, model: "torch.nn.Module", state: dict[str, Any],
              metadata: dict[str, Any], keep_last: int = 1) -> None:
    """Write the last checkpoint (weights + trainer state) so that a crash at any moment leaves a
    complete pair named by ``last.json``: new files first, then the pointer, then old pairs go,
    except the weights of the ``keep_last - 1`` newest checkpoints before this one."""
    ckpt = Path(checkpoint_dir)
    step = int(metadata["step"])
    weights, state_name = pair_names(step)
    save_state(state, ckpt / state_name)
    save_weights(model, ckpt / weights, metadata)
    atomic_write_json(ckpt / LAST_POINTER, {**metadata, "weights": weights, "state": state_name})
    # weights of later steps are left by an attempt that a resume from an older pair replaces
    earlier = [path.name for older, path in kept_weights(ckpt.parent) if older < step]
    keep = {weights, state_name, *earlier[max(0, len(earlier) - (keep_last - 1)):]} if keep_last > 1 \
        else {weights, state_name}
    for path in ckpt.iterdir():  # earlier pairs, and temporary files of a write a crash cut short
        stale = (_PAIR.match(path.name) and path.name not in keep) or \
            path.name in (LEGACY_WEIGHTS, LEGACY_STATE) or \
            (path.name.startswith(".") and path.name.endswith(".tmp"))
        if stale:
            try:
                path.unlink()
            except OSError:
                pass


def kept_weights(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, file)`` of every step-numbered weights file of a run, oldest first: the last
    checkpoint's and those ``train.keep_last`` keeps before it."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    if not ckpt.is_dir():
        return []
    found = []
    for path in ckpt.iterdir():
        match = _PAIR.match(path.name)
        if match and match.group(2) == "safetensors":
            found.append((int(match.group(1)), path))
    return sorted(found)


def _read_pointer(ckpt: Path) -> dict[str, Any] | None:
    try:
        pointer = json.loads((ckpt / LAST_POINTER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return pointer if isinstance(pointer, dict) else None


def last_candidates(run_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """The (weights, trainer state) pairs to resume from, best first: the pair ``last.json`` names,
    then any other step-numbered pair (newest first), then the single pair of older runs."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    out: list[tuple[Path, Path]] = []
    pointer = _read_pointer(ckpt)
    if pointer and isinstance(pointer.get("weights"), str) and isinstance(pointer.get("state"), str):
        out.append((ckpt / Path(pointer["weights"]).name, ckpt / Path(pointer["state"]).name))
    steps = set()
    if ckpt.is_dir():
        for path in ckpt.iterdir():
            match = _PAIR.match(path.name)
            if match:
                steps.add(int(match.group(1)))
    for step in sorted(steps, reverse=True):
        weights, state = pair_names(step)
        pair = (ckpt / weights, ckpt / state)
        if pair not in out and pair[0].is_file() and pair[1].is_file():
            out.append(pair)
    legacy = (ckpt / LEGACY_WEIGHTS, ckpt / LEGACY_STATE)
    if legacy[0].is_file() and legacy not in out:
        out.append(legacy)
    return out


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether a run directory holds a last checkpoint (complete or not): training was started."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    if (ckpt / LAST_POINTER).exists() or (ckpt / LEGACY_WEIGHTS).exists():
        return True
    return ckpt.is_dir() and any(_PAIR.match(p.name) for p in ckpt.iterdir())


def _last_weights(run_dir: Path) -> Path | None:
    ckpt = run_dir / CHECKPOINT_DIR
    pointer = _read_pointer(ckpt)
    if pointer and isinstance(pointer.get("weights"), str) and (ckpt / Path(pointer["weights"]).name).is_file():
        return ckpt / Path(pointer["weights"]).name
    newest = sorted((p for p in ckpt.glob("step*.safetensors") if _PAIR.match(p.name)), reverse=True) \
        if ckpt.is_dir() else []
    if newest:
        return newest[0]
    return ckpt / LEGACY_WEIGHTS if (ckpt / LEGACY_WEIGHTS).is_file() else None


def checkpoint_path(run_dir: str | os.PathLike, which: str) -> Path:
    """``best`` | ``last`` | ``avg`` | an explicit file path -> the weights file."""
    run_dir = Path(run_dir)
    if which == "avg":
        path = run_dir / CHECKPOINT_DIR / AVERAGE_WEIGHTS
        if not path.is_file():
            raise CheckpointError(f"run directory {run_dir} has no averaged checkpoint ({path}); write "
                                  f"one with `nmt average {run_dir} --last N` (or --best N)")
        return path
    if which in ("best", "last"):
        best = run_dir / CHECKPOINT_DIR / "best.safetensors"
        path = best if which == "best" and best.is_file() else _last_weights(run_dir)
        if path is None:
            raise CheckpointError(f"run directory {run_dir} has no {which} checkpoint (in "
                                  f"{run_dir / CHECKPOINT_DIR}); is it a run directory written by `nmt train`?")
        return path
    path = Path(which)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {which} is a directory, not a weights file; give best, last, "
                              "avg or a .safetensors file (a run's are in RUN/checkpoints/)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {which} not found (use best, last, avg or a path)")
    return path


def as_run_dirs(run_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    """One run directory or several (an ensemble) as a list: a path alone is one run."""
    return [run_dir] if isinstance(run_dir, (str, os.PathLike)) else list(run_dir)


def load_run_recipe(run_dir: str | os.PathLike):
    """The resolved recipe a run directory was trained with (``recipe.yaml``)."""
    from nmt.config import read_yaml_file, recipe_from_dict

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} is a file, not a directory; give the directory "
                              "`nmt train` wrote (e.g. runs/NAME)")
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found (train one with `nmt train RECIPE`)")
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        if (run_dir / "export.json").is_file():
            raise CheckpointError(f"{run_dir} is an export directory (`nmt export`), not a run directory: "
                                  f"translate it with `nmt translate --engine onnx {run_dir}`")
        raise CheckpointError(f"run directory {run_dir} has no recipe.yaml; was it written by `nmt train`?")
    return recipe_from_dict(read_yaml_file(recipe_file), source=str(recipe_file))


def check_tokenizer_record(tokenizers, run_dir: Path) -> None:
    """The run's tokenizer models are the ones its ``spm.json`` records (by sha256): a model copied
    in from another run would otherwise be blamed on the checkpoint (its shapes differ)."""
    from nmt.data.tokenizer import RECORD

    try:
        recorded = json.loads((run_dir / RECORD).read_text(encoding="utf-8")).get("models")
    except (OSError, ValueError, AttributeError):
        return  # no record (older runs): the checkpoint's own record is compared later
    if not isinstance(recorded, dict):
        return
    for name, digest in tokenizers.file_hashes.items():
        if isinstance(recorded.get(name), str) and recorded[name] != digest:
            raise CheckpointError(
                f"{run_dir / name} is not the tokenizer model this run was trained with (its sha256 "
                f"{digest[:12]}... differs from {recorded[name][:12]}... that {run_dir / RECORD} records): "
                "was it copied from another run? Restore the run directory's original spm models")


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
    check_tokenizer_record(tokenizers, run_dir)  # a swapped model is named, not the checkpoint
    model = build_model(recipe.model, tokenizers.src_vocab_size, tokenizers.tgt_vocab_size)
    for attempt in range(3):
        weights = checkpoint_path(run_dir, checkpoint)
        try:
            metadata = load_weights(model, weights)
            break
        except CheckpointError:
            # a training that writes the run replaces the last pair: look up the new one
            if attempt == 2 or weights.exists() or checkpoint not in ("best", "last"):
                raise
    tokenizers.check_checkpoint(metadata, weights, run_dir)
    model.eval()
    if map_fn is not None:
        model = map_fn(model)
    return recipe, tokenizers, model, metadata

"""The training state on disk: a checkpoint holds the weights, optimizer, plateau scheduler, RNG
states and the data position (epoch and batch index of the sampler), so ``--resume`` continues the
batch stream where it stopped and ends with the same weights as an uninterrupted run.

Writing goes through :func:`nmt.inference.checkpoint.save_last` (a new pair of files, then
``last.json`` names it), so a crash at any point leaves the previous complete pair usable.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import torch

from nmt.atomic import atomic_write_json
from nmt.errors import CheckpointError, NmtError
from nmt.inference.checkpoint import CHECKPOINT_DIR, last_candidates, load_state, load_weights, save_last, save_weights
from nmt.training.distributed import check_world_size, gather, share
from nmt.training.state import TrainerState

log = logging.getLogger("nmt.train")


def save_checkpoint(state: TrainerState, core, optimizer, plateau, sampler, run_dir: Path, accelerator,
                    best: bool, keep_last: int = 1, valid: dict[str, float] | None = None) -> None:
    """Write ``last`` (weights + trainer state) and, if ``best``, the best weights. Main process only.

    ``valid``: the validation of these weights (recorded in their metadata: ``nmt average --best``
    ranks kept checkpoints by it).
    """
    accelerator.wait_for_everyone()
    # each process draws its own dropout masks: every one's random state is kept, in rank order
    rank_rng = gather(accelerator, [torch.get_rng_state(), json.dumps(random.getstate())])
    if not accelerator.is_main_process:
        return
    ckpt = run_dir / CHECKPOINT_DIR
    meta = {"step": state.step, "tokens": state.tokens, "best_metric": state.best_metric,
            "best_step": state.best_step, "tokenizers": state.tokenizers}
    if valid is not None:
        meta["valid"] = valid
    trainer = {k: v for k, v in state.__dict__.items()}
    payload = {
        "trainer": json.dumps(trainer),
        "optimizer": optimizer.state_dict(),
        "plateau": plateau.state_dict() if plateau is not None else None,
        "sampler": sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": json.dumps(random.getstate()),
        "world_size": accelerator.num_processes,
        "rank_rng": rank_rng,
    }
    save_last(ckpt, core, payload, meta, keep_last)  # a new pair, then last.json names it
    if best:
        save_weights(core, ckpt / "best.safetensors", meta)
        atomic_write_json(ckpt / "best.json", meta)


def _load_pair(model, weights: Path, state_file: Path, tokenizers) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the weights into ``model``; the trainer payload and record of the same step."""
    meta = load_weights(model, weights)
    tokenizers.check_checkpoint(meta, weights, weights.parent.parent)
    payload = load_state(state_file)
    try:
        trainer = json.loads(payload["trainer"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"trainer state {state_file} holds no trainer record; was it written by "
                              "nmt train?") from None
    if trainer.get("step") != meta.get("step"):
        raise CheckpointError(f"{weights.name} (step {meta.get('step')}) and {state_file.name} (step "
                              f"{trainer.get('step')}) in {weights.parent} do not belong together")
    return payload, trainer


def _load_newest_pair(run_dir: Path, model, tokenizers) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pair ``last.json`` names or, if it cannot be read, the newest older complete pair."""
    ckpt = run_dir / CHECKPOINT_DIR
    first_error: CheckpointError | None = None
    for weights, state_file in last_candidates(run_dir):
        try:
            found = _load_pair(model, weights, state_file, tokenizers)
        except CheckpointError as exc:
            log.warning("cannot resume from %s: %s", weights.name, exc)
            first_error = first_error or exc
            continue
        if first_error is not None:
            log.warning("resuming from the older complete checkpoint %s instead", weights.name)
        return found
    if first_error is not None:
        raise CheckpointError(f"--resume: no checkpoint in {ckpt} can be loaded; the first: "
                              f"{first_error}") from None
    raise CheckpointError(f"--resume: {ckpt} holds no checkpoint; run without --resume to start training")


def _shared_pair(accelerator, run_dir: Path, model, tokenizers) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`_load_newest_pair` on rank 0, its weights, payload and record sent to every process
    (and its refusal too: every process then stops with the same message)."""
    found: Any = None
    refused: NmtError | None = None
    if accelerator.is_main_process:
        try:
            found = (*_load_newest_pair(run_dir, model, tokenizers), model.state_dict())
        except NmtError as exc:
            refused, found = exc, str(exc)
    found = share(accelerator, found)
    if refused is not None:
        raise refused
    if isinstance(found, str):
        raise CheckpointError(found)
    payload, trainer, weights = found
    if not accelerator.is_main_process:
        model.load_state_dict(weights)
    return payload, trainer


def restore(run_dir: Path, model, optimizer, plateau, sampler, tokenizers, accelerator=None) -> TrainerState:
    """Load the newest loadable checkpoint: weights into ``model``, and the optimizer, plateau,
    sampler position and RNG states; returns the trainer state it was written with.

    Under several processes (``accelerator``) rank 0 reads the checkpoint and sends it to the
    others (a node needs no copy of the run directory); the checkpoint must have been written by
    as many processes, and each process takes back its own random state."""
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    if world == 1:
        payload, trainer = _load_newest_pair(run_dir, model, tokenizers)
    else:
        payload, trainer = _shared_pair(accelerator, run_dir, model, tokenizers)
    saved_world = payload.get("world_size", (payload.get("sampler") or {}).get("num_replicas"))
    check_world_size(saved_world, world, run_dir / CHECKPOINT_DIR)
    optimizer.load_state_dict(payload["optimizer"])
    if plateau is not None and payload.get("plateau"):
        plateau.load_state_dict(payload["plateau"])
    sampler.load_state_dict(payload["sampler"])
    torch_rng, python_rng = payload["rank_rng"][rank] if payload.get("rank_rng") else \
        (payload["torch_rng"], payload["python_rng"])
    torch.set_rng_state(torch_rng)
    py_state = json.loads(python_rng)
    random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
    state = TrainerState(**trainer)
    log.info("resumed from step %d (%s)", state.step, run_dir / CHECKPOINT_DIR)
    return state


def truncate_metrics(path: Path, step: int) -> None:
    """Cut ``metrics.jsonl`` before its first record past ``step`` or its first incomplete line.

    After a crash the file can hold records of steps the resumed run trains again (they would be
    written twice) and, from an older version or another writer, a line cut short.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    keep = 0
    for line in data.splitlines(keepends=True):
        try:
            record = json.loads(line)
            complete = line.endswith(b"\n") and isinstance(record, dict)
        except ValueError:
            complete = False
        if not complete or (isinstance(record.get("step"), int) and record["step"] > step):
            break
        keep += len(line)
    if keep < len(data):
        log.warning("%s: dropping %d bytes after step %d (records of steps trained again, or an "
                    "incomplete last line)", path, len(data) - keep, step)
        os.truncate(path, keep)


def weights_checksum(model: torch.nn.Module) -> str:
    """A short sha256 of the weights: replicas of a multi-process run must all show the same."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]

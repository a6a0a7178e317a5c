"""``nmt average``: the element-wise mean of a run's kept checkpoints (checkpoint averaging).

The weights of several checkpoints near the end of a run are averaged into one model, which often
translates better than any of them (Junczys-Dowmunt et al. 2016; Vaswani et al. 2017 average the
last 5 or 20). Training keeps the weights of its last ``train.keep_last`` checkpoints in
``RUN/checkpoints/stepNNNNNNNN.safetensors``; this tool reads them:

- ``--last N``: the N newest of them;
- ``--best N``: the N with the best validation (``train.early_stopping_metric`` of the run: the
  highest BLEU, a lower valid loss breaking ties; or the lowest loss), among the kept ones and
  ``best.safetensors``. The validation is read from each file's metadata, else from
  ``metrics.jsonl``.

Every floating-point tensor is the arithmetic mean, accumulated in float32 and stored in the
checkpoints' own dtype; other tensors (none in today's models) are taken from the newest checkpoint.
The result, ``RUN/checkpoints/avg.safetensors``, is written atomically; its metadata records the
averaged steps and files. ``--checkpoint avg`` loads it everywhere a checkpoint is chosen.
Checkpoints of different architectures or tokenizer models are refused before anything is written.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmt.atomic import refuse_link
from nmt.errors import CheckpointError, NmtError

log = logging.getLogger("nmt.average")


@dataclass
class Candidate:
    step: int
    path: Path
    valid: dict[str, Any] | None = None  #: the validation of these weights (loss, bleu, ...)
    metadata: dict[str, Any] = field(default_factory=dict)


def candidates(run_dir: str | os.PathLike) -> list[Candidate]:
    """The run's kept checkpoints (step-numbered weights), oldest first, with their validations."""
    from nmt.inference.checkpoint import kept_weights, read_weights_metadata

    run_dir = Path(run_dir)
    records = _valid_records(run_dir)
    out = []
    for step, path in kept_weights(run_dir):
        meta = read_weights_metadata(path)
        valid = meta.get("valid") if isinstance(meta.get("valid"), dict) else records.get(step)
        out.append(Candidate(step, path, valid, meta))
    return out


def _valid_records(run_dir: Path) -> dict[int, dict[str, Any]]:
    from nmt.figures import read_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return {}
    try:
        records = read_metrics(run_dir)
    except NmtError:
        return {}
    return {r["step"]: r for r in records if r.get("kind") == "valid" and isinstance(r.get("step"), int)}


def select(run_dir: str | os.PathLike, last: int | None = None, best: int | None = None) -> list[Candidate]:
    """The checkpoints ``--last N`` or ``--best N`` picks, oldest first; CheckpointError if the run
    has fewer."""
    from nmt.inference.checkpoint import CHECKPOINT_DIR, load_run_recipe, read_weights_metadata

    if (last is None) == (best is None):
        raise NmtError("give one of --last N or --best N")
    count = last if last is not None else best
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise NmtError(f"--{'last' if last is not None else 'best'} must be >= 1, got {count}")
    run_dir = Path(run_dir)
    recipe = load_run_recipe(run_dir)  # a missing run is named here
    found = candidates(run_dir)
    flag = f"--last {count}" if last is not None else f"--best {count}"
    if last is not None:
        pool = found
        what = "checkpoint"
    else:
        records = _valid_records(run_dir)
        best_file = run_dir / CHECKPOINT_DIR / "best.safetensors"
        pool = [c for c in found if c.valid is not None]
        if best_file.is_file():
            meta = read_weights_metadata(best_file)
            step = meta.get("step")
            if isinstance(step, int) and step not in {c.step for c in pool}:
                valid = meta.get("valid") if isinstance(meta.get("valid"), dict) else records.get(step)
                if valid is not None:
                    pool.append(Candidate(step, best_file, valid, meta))
        what = "validated checkpoint"
    if len(pool) < count:
        steps = ", ".join(str(c.step) for c in sorted(pool, key=lambda c: c.step)) or "none"
        raise CheckpointError(
            f"{flag}: {run_dir / CHECKPOINT_DIR} holds the weights of {len(pool)} {what}"
            f"{'s' if len(pool) != 1 else ''} (steps: {steps}), fewer than {count}. Training keeps the "
            f"last train.keep_last checkpoints (this run: {recipe.train.keep_last}); train with "
            f"--set train.keep_last={count} (a run still training: resume it with that setting) "
            "to keep more, or average fewer")
    if last is not None:
        chosen = pool[-count:]
    else:
        metric = recipe.train.early_stopping_metric

        def rank(c: Candidate):
            loss = float(c.valid.get("loss", float("inf")))
            if metric == "loss":
                return (loss, -c.step)
            return (-float(c.valid.get("bleu", float("-inf"))), loss, -c.step)
        chosen = sorted(pool, key=rank)[:count]
    return sorted(chosen, key=lambda c: c.step)


def average_tensors(paths: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The element-wise mean of the weights files ``paths`` (float32 accumulation, stored in the
    files' dtype) and the first file's metadata. CheckpointError naming the two files and the key
    when their tensors differ in names or shapes (other architectures), or their tokenizers."""
    import torch

    from nmt.inference.checkpoint import read_tensors

    if not paths:
        raise NmtError("no checkpoints to average")
    first, first_meta = read_tensors(paths[0])
    sums = {k: v.to(torch.float32).clone() if v.is_floating_point() else v for k, v in first.items()}
    for path in paths[1:]:
        tensors, meta = read_tensors(path)
        _check_same(paths[0], first, first_meta, path, tensors, meta)
        for key, value in tensors.items():
            if value.is_floating_point():
                sums[key] += value.to(torch.float32)
            else:
                sums[key] = value  # the newest (paths are oldest first)
    n = len(paths)
    out = {k: (v / n).to(first[k].dtype) if first[k].is_floating_point() else v for k, v in sums.items()}
    return out, first_meta


def _check_same(path_a: Path, a: dict, meta_a: dict, path_b: Path, b: dict, meta_b: dict) -> None:
    def refuse(detail: str) -> None:
        raise CheckpointError(f"cannot average {path_a} and {path_b}: {detail}; they are not checkpoints "
                              "of one model (was a file of another run copied in?)")

    for key in sorted(set(a) | set(b)):
        if key not in b:
            refuse(f"different architectures: key {key!r} is in {path_a.name} but not in {path_b.name}")
        if key not in a:
            refuse(f"different architectures: key {key!r} is in {path_b.name} but not in {path_a.name}")
        if a[key].shape != b[key].shape:
            refuse(f"different architectures: key {key!r} has shape {list(a[key].shape)} in {path_a.name} "
                   f"and {list(b[key].shape)} in {path_b.name}")
    tok_a, tok_b = meta_a.get("tokenizers"), meta_b.get("tokenizers")
    if isinstance(tok_a, dict) and isinstance(tok_b, dict) and tok_a != tok_b:
        refuse("they were trained with different tokenizer models (the sha256 their metadata records "
               "differ)")


def average_run(run_dir: str | os.PathLike, last: int | None = None, best: int | None = None) -> Path:
    """Average the checkpoints ``--last N`` / ``--best N`` selects into ``RUN/checkpoints/avg.safetensors``."""
    from nmt.inference.checkpoint import AVERAGE_WEIGHTS, CHECKPOINT_DIR, load_run_recipe, write_tensors

    run_dir = Path(run_dir)
    chosen, tensors, meta = _average_snapshot(run_dir, last, best)
    by = "last" if last is not None else "best"
    record = {
        "step": chosen[-1].step,
        "tokenizers": meta.get("tokenizers"),
        "averaged": {"by": by, "count": len(chosen), "steps": [c.step for c in chosen],
                     "files": [c.path.name for c in chosen],
                     **({"metric": load_run_recipe(run_dir).train.early_stopping_metric} if by == "best" else {})},
    }
    path = run_dir / CHECKPOINT_DIR / AVERAGE_WEIGHTS
    refuse_link(path.parent)  # never written through a link planted in the run
    write_tensors(path, tensors, record)
    return path


#: times the checkpoints are listed again when a training rotated one away while it was read
SNAPSHOT_TRIES = 3


def _average_snapshot(run_dir: Path, last: int | None, best: int | None):
    """Select and average the checkpoints. A run still training deletes its oldest kept weights
    when it writes new ones: a chosen file that vanished while it was read was rotated away, not
    corrupted, so the checkpoints are listed again (and the user told)."""
    from nmt.training.lock import lock_holder

    for attempt in range(SNAPSHOT_TRIES):
        chosen = select(run_dir, last=last, best=best)
        try:
            tensors, meta = average_tensors([c.path for c in chosen])
            return chosen, tensors, meta
        except CheckpointError:
            gone = [c.path.name for c in chosen if not c.path.exists()]
            if not gone:
                raise  # the file is there: it is corrupt
        holder = lock_holder(run_dir)
        training = (f"the run is being trained (train.lock held by pid {holder.get('pid')})" if holder
                    else "it was deleted")
        if attempt + 1 < SNAPSHOT_TRIES:
            print(f"nmt average: {', '.join(gone)} vanished while being read ({training}); "
                  "listing the checkpoints again", file=sys.stderr)
    raise NmtError(f"nmt average: the checkpoints of {run_dir} keep changing while they are read "
                   f"({training}); average once the training has stopped, or average fewer")


def _previous_average(path: Path) -> str | None:
    """What the average about to be replaced held (``None`` when there is none), for the user."""
    from nmt.inference.checkpoint import read_weights_metadata

    if not path.is_file():
        return None
    try:
        steps = read_weights_metadata(path)["averaged"]["steps"]
    except (CheckpointError, KeyError, TypeError):  # replaced all the same; said without its steps
        return "unreadable"
    return f"steps {', '.join(map(str, steps))}"


def average_cli(args) -> int:
    from nmt.inference.checkpoint import AVERAGE_WEIGHTS, CHECKPOINT_DIR, read_weights_metadata

    previous = _previous_average(Path(args.run_dir) / CHECKPOINT_DIR / AVERAGE_WEIGHTS)
    path = average_run(args.run_dir, last=args.last, best=args.best)
    steps = read_weights_metadata(path)["averaged"]["steps"]
    if previous:
        print(f"replaced the earlier {path.name} ({previous})")
    print(f"wrote {path}: the mean of {len(steps)} checkpoint{'s' if len(steps) != 1 else ''} "
          f"(steps {', '.join(map(str, steps))}); use it with --checkpoint avg")
    return 0

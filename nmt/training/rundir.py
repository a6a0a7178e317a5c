"""The run directory a training writes: created and checked before any work, its lock taken, the
recipe of a resumed run compared with the run's own, and the run a continued training starts from
(``train.init_from``) checked.

A run directory has one writer (:mod:`nmt.training.lock`); a failed read or write (a full disk, a
quota) becomes an :class:`NmtError` naming the file and the last complete checkpoint.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmt.atomic import open_nofollow, refuse_link
from nmt.config import Recipe, TrainConfig, read_yaml_file, recipe_from_dict
from nmt.errors import CheckpointError, NmtError
from nmt.inference.checkpoint import CHECKPOINT_DIR, LAST_POINTER, RECIPE_HEADER, has_checkpoint, last_candidates
from nmt.training.lock import RunLock

#: recipe sections that must not change when resuming (they define the model and its data)
FROZEN_ON_RESUME = ("model", "tokenizer", "data")

#: model keys a continued training may change: they do not shape or give meaning to the weights
FREE_ON_INIT = ("model.kernels", "model.init", "model.dropout", "model.encoder.dropout",
                "model.decoder.dropout")

#: the directories training writes inside a run directory (never through a link)
RUN_SUBDIRS = (CHECKPOINT_DIR, "plots", "eval")

#: free space a run directory needs before training starts (checkpoints of the largest recipes)
NEED_BYTES = 256 * 2**20


# ------------------------------------------------------------------------------------ preflight

def make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or fail clearly if it cannot be one."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NmtError(f"run directory {run_dir} is a file, not a directory; choose another with --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_SUBDIRS:  # where training writes; the run directory itself may be a link
            refuse_link(run_dir / name)
        probe = run_dir / ".write-test"
        fd = open_nofollow(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise NmtError(f"run directory {run_dir} is not writable ({exc.strerror}); "
                       "choose another with --run-dir") from None


def lock_run_dir(run_dir: Path) -> RunLock:
    """Create ``run_dir`` and take its lock, before looking at its files: a second writer is
    named, not misdiagnosed."""
    make_run_dir(run_dir)
    lock = RunLock(run_dir)
    lock.acquire()
    return lock


def preflight_run_dir(run_dir: Path, resume: bool, need_bytes: int) -> None:
    """Fail before any training if the run directory is unusable (not after an hour)."""
    make_run_dir(run_dir)
    started = has_checkpoint(run_dir)
    if resume and not last_candidates(run_dir):
        raise CheckpointError(f"--resume: {run_dir} has no checkpoint to resume from (no complete pair in "
                              f"{run_dir / CHECKPOINT_DIR}); run without --resume to start training")
    if not resume and started:
        raise NmtError(f"run directory {run_dir} already holds a trained run; continue it with --resume, "
                       "or choose a new one with --run-dir (nothing was overwritten)")
    recipe_file = run_dir / "recipe.yaml"
    if recipe_file.exists() and not started and not _written_by_train(recipe_file):
        raise NmtError(f"{recipe_file} is not a recipe `nmt train` wrote (its first line is not "
                       f"{RECIPE_HEADER.strip()!r}): training would replace it with the resolved recipe, "
                       "losing its comments and ${VAR} references. Choose another --run-dir, e.g. runs/NAME "
                       "(or delete it if an older version of nmt wrote it)")
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise NmtError(f"not enough free disk space in {run_dir}: {free / 2**20:.0f} MiB free, checkpoints "
                       f"need about {need_bytes / 2**20:.0f} MiB; free some space or use --run-dir")


def check_run_dir(run_dir: Path, recipe: Recipe, resume: bool) -> str | None:
    """The locked run directory can take this training: :func:`preflight_run_dir`, and on
    ``resume`` the recipe agrees with the run's saved one (``train.init_from`` taken from it).
    Returns what a resume changes in the other sections (for the log), after keeping the previous
    recipe.yaml (:func:`keep_changed_recipe`); None if nothing changed."""
    preflight_run_dir(run_dir, resume, need_bytes=NEED_BYTES)
    saved = saved_recipe(run_dir) if resume else None
    if saved is None:
        return None
    check_resume_recipe(saved, recipe)
    resume_init_from(run_dir, saved.train, recipe)
    return keep_changed_recipe(run_dir, saved, recipe)


#: recipe sections a resumed run may change (the log says what changed)
FREE_ON_RESUME = ("train", "decode", "eval")


def keep_changed_recipe(run_dir: Path, saved: Recipe, recipe: Recipe) -> str | None:
    """When ``recipe`` changes settings of :data:`FREE_ON_RESUME` against the run's ``saved`` one
    (a learning rate, a schedule, more steps), copy the run's recipe.yaml to the first free
    ``recipe.prev-N.yaml`` (training then writes the new one) and return what changed."""
    from nmt.atomic import atomic_write_bytes

    diffs = []
    for section in FREE_ON_RESUME:
        diffs += _differences(dataclasses.asdict(getattr(saved, section)),
                              dataclasses.asdict(getattr(recipe, section)), section)
    if not diffs:
        return None
    n = 1
    while (run_dir / f"recipe.prev-{n}.yaml").exists() or (run_dir / f"recipe.prev-{n}.yaml").is_symlink():
        n += 1
    kept = run_dir / f"recipe.prev-{n}.yaml"
    atomic_write_bytes(kept, (run_dir / "recipe.yaml").read_bytes())
    listed = "; ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in diffs)
    return f"--resume with changed settings ({listed}); the run's previous recipe is kept as {kept.name}"


def _written_by_train(recipe_file: Path) -> bool:
    try:
        with open(recipe_file, "rb") as handle:
            return handle.read(len(RECIPE_HEADER.encode())) == RECIPE_HEADER.encode()
    except OSError:
        return False


def io_error(exc: OSError, run_dir: Path) -> NmtError:
    """A failed read or write (full disk, quota, permissions) as a message without a traceback."""
    where = exc.filename or run_dir
    what = exc.strerror or str(exc) or type(exc).__name__
    kept = checkpoint_note(run_dir, full=exc.errno in (errno.ENOSPC, errno.EDQUOT))
    return NmtError(f"training stopped: {what}: {where}. {kept}")


def checkpoint_note(run_dir: Path, full: bool = False) -> str:
    """Where a stopped training can continue from: its last complete checkpoint, if any (``full``:
    the disk is full)."""
    try:
        step = json.loads((run_dir / CHECKPOINT_DIR / LAST_POINTER).read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        step = None
    if step is not None:
        return (f"The last complete checkpoint (step {step}) in {run_dir / CHECKPOINT_DIR} is intact: "
                f"continue with --resume{' once space is freed' if full else ''}")
    return "No checkpoint was written yet" + ("; free some space or choose another --run-dir" if full else "")


# ------------------------------------------------------------------------------------- resume

def saved_recipe(run_dir: Path) -> Recipe | None:
    """The recipe a run directory was trained with (its recipe.yaml), if it has one."""
    saved_file = run_dir / "recipe.yaml"
    if not saved_file.is_file():
        return None
    return recipe_from_dict(read_yaml_file(saved_file), str(saved_file))


def saved_train(run_dir: Path) -> TrainConfig | None:
    """The ``train`` section of the run in ``run_dir`` (its recipe.yaml), or None when it has none or
    it cannot be read (resume reports that itself): what ``auto`` settings chose when it started."""
    try:
        saved = saved_recipe(Path(run_dir))
    except (NmtError, OSError, ValueError):
        return None
    return None if saved is None else saved.train


def check_resume_recipe(saved: Recipe, recipe: Recipe) -> None:
    """``--resume`` with a recipe whose frozen sections equal the run's ``saved`` recipe."""
    # model.kernels picks implementations, not weights: a run may resume under the other setting
    saved.model.kernels = recipe.model.kernels
    for section in FROZEN_ON_RESUME:
        old, new = getattr(saved, section), getattr(recipe, section)
        if old != new:
            diffs = [f"{key}: {a!r} -> {b!r}" for key, a, b in
                     _differences(dataclasses.asdict(old), dataclasses.asdict(new), section)]
            raise NmtError(f"--resume: the recipe's {section} section differs from the run's "
                           f"({'; '.join(diffs[:5])}); resuming would load incompatible weights. "
                           "Restore the recipe or start a new run directory")


def resume_init_from(run_dir: Path, saved: TrainConfig, recipe: Recipe) -> None:
    """On ``--resume`` the run continues from its own checkpoint: ``train.init_from`` is what it was
    started from (``saved``, the train section of its recipe.yaml, when the recipe given now does
    not say), never re-applied."""
    given = recipe.train.init_from
    if given is None:
        recipe.train.init_from, recipe.train.init_checkpoint = saved.init_from, saved.init_checkpoint
        return
    if saved.init_from is None or Path(given).resolve() != Path(saved.init_from).resolve():
        started = f"from {saved.init_from}" if saved.init_from else "without --init-from"
        raise NmtError(f"--resume: the run in {run_dir} was started {started}, not from {given}; "
                       "--resume continues its own last checkpoint (leave out --init-from), or start "
                       "a new run directory to continue another run")
    recipe.train.init_from, recipe.train.init_checkpoint = saved.init_from, saved.init_checkpoint


def _differences(a: dict, b: dict, prefix: str) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every key whose values differ, nested dicts walked."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}.{key}")
        elif va != vb:
            out.append((f"{prefix}.{key}", va, vb))
    return out


# ------------------------------------------------------------------------------------ init-from

@dataclass
class InitSource:
    """The trained run a continued training starts from (``train.init_from``)."""

    run_dir: Path
    checkpoint: str  #: best | last | avg
    weights: Path  #: the weights file that ``checkpoint`` named when the run was checked
    record: dict[str, Any]  #: what the new run records about it (spm.json, train_summary.json)


def init_source(recipe: Recipe, run_dir: Path) -> InitSource:
    """Check that ``recipe`` can continue the run ``train.init_from`` names: the run exists, has the
    checkpoint ``train.init_checkpoint``, and the same model and tokenizer sections (so the same
    weight shapes and vocabularies). Reads the run, never writes it; raises :class:`NmtError`."""
    import hashlib

    from nmt.data.tokenizer import SubwordTokenizers
    from nmt.inference.checkpoint import checkpoint_path, load_run_recipe, read_weights_metadata

    t = recipe.train
    flag = f"--init-from {t.init_from}"
    source = Path(t.init_from)
    if source.resolve() == Path(run_dir).resolve():
        raise NmtError(f"{flag}: that is this run's own directory; continued training writes a new run "
                       "directory (choose another with --run-dir)")
    try:
        old = load_run_recipe(source)
        weights = checkpoint_path(source, t.init_checkpoint)
        models = SubwordTokenizers.load(source)
        metadata = read_weights_metadata(weights)
        models.check_checkpoint(metadata, weights, source)
    except CheckpointError as exc:
        raise CheckpointError(f"{flag}: {exc}") from None
    _check_same_model(flag, source, old, recipe)
    _check_vocab_sizes(flag, source, models, recipe)
    record = {"run_dir": str(source.resolve()), "checkpoint": t.init_checkpoint, "weights": weights.name,
              "step": metadata.get("step"),
              "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    return InitSource(source.resolve(), t.init_checkpoint, weights, record)


def _check_same_model(flag: str, source: Path, old: Recipe, recipe: Recipe) -> None:
    """The model and tokenizer sections of the run (``old``) and of ``recipe`` agree, but for keys
    that do not shape the weights (:data:`FREE_ON_INIT`)."""
    where = f"{source / 'recipe.yaml'}"
    differ = [d for d in _differences(dataclasses.asdict(old.model), dataclasses.asdict(recipe.model), "model")
              if d[0] not in FREE_ON_INIT]
    differ += [d for d in _differences(dataclasses.asdict(old.tokenizer), dataclasses.asdict(recipe.tokenizer),
                                       "tokenizer")
               if d[0] != "tokenizer.num_threads"]
    if differ:
        listed = "; ".join(f"{key}: {a!r} in {where}, {b!r} in this recipe" for key, a, b in differ)
        raise NmtError(f"{flag}: the recipe's model or tokenizer differs from the run's ({listed}). "
                       "Continued training keeps the run's weights and vocabularies, so these must be "
                       "equal (dropout, init and kernels may differ): start the recipe with `base:` "
                       "the run's recipe, or copy these keys")


def _check_vocab_sizes(flag: str, source: Path, models, recipe: Recipe) -> None:
    """The run's tokenizer ``models`` have the vocabulary sizes ``recipe`` asks for."""
    sizes = [("tokenizer.src_vocab_size", models.src_vocab_size, recipe.tokenizer.src_vocab_size)]
    if not models.joint:
        sizes.append(("tokenizer.tgt_vocab_size", models.tgt_vocab_size, recipe.tokenizer.tgt_vocab_size))
    wrong = [f"{key}: {have} pieces in {source}'s models, {want} in this recipe" for key, have, want in sizes
             if have != want]
    if wrong:
        raise CheckpointError(f"{flag}: the run's tokenizer models do not have the recipe's vocabulary "
                              f"sizes ({'; '.join(wrong)}); was its recipe.yaml edited after training?")


def init_record(run_dir: Path) -> dict[str, Any] | None:
    """What a run directory's tokenizer record says it was initialised from (None: trained afresh)."""
    from nmt.data.tokenizer import RECORD

    try:
        record = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = record.get("init_from") if isinstance(record, dict) else None
    return found if isinstance(found, dict) else None

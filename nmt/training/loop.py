"""Training with accelerate: recipe → data → tokenizers → batches → model → checkpoints.

``train(recipe)`` is the whole job behind ``nmt train``. Devices, processes and mixed precision come
from :class:`accelerate.Accelerator` only, so the same code runs on one CPU, on several CPU processes
(``torchrun``, gloo) and on GPUs (``accelerate launch``).

Exact resume: a checkpoint holds the weights, optimizer, scheduler, RNG states and the data position
(epoch and batch index of the sampler), so ``--resume`` continues the batch stream where it stopped
and ends with the same weights as an uninterrupted run on CPU (tests check it).

A run directory has one writer: ``train`` holds its lock (:mod:`nmt.training.lock`) throughout. A
failed write (a full disk, a quota) stops training with an :class:`NmtError` naming the file; the
last complete checkpoint stays intact and metrics.jsonl holds only complete records.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nmt.atomic import append_line, atomic_write_json, atomic_write_text
from nmt.config import (
    Recipe,
    TrainConfig,
    check_stops,
    load_recipe,
    read_yaml_file,
    recipe_from_dict,
    resolved_run_dir,
)
from nmt.errors import CheckpointError, NmtError
from nmt.inference.checkpoint import (
    CHECKPOINT_DIR,
    LAST_POINTER,
    RECIPE_HEADER,
    has_checkpoint,
    last_candidates,
    load_state,
    load_weights,
    save_last,
    save_weights,
)
from nmt.inference.devices import force_cpu
from nmt.model.seq2seq import (
    PARTS,
    Seq2Seq,
    build_model,
    check_model_config,
    perplexity,
)
from nmt.training.threads import prepare as prepare_threads

log = logging.getLogger("nmt.train")

#: recipe sections that must not change when resuming (they define the model and its data)
_FROZEN_ON_RESUME = ("model", "tokenizer", "data")


@dataclass
class TrainerState:
    step: int = 0  #: optimizer updates done
    tokens: int = 0  #: target tokens trained on (all processes)
    train_seconds: float = 0.0  #: time in training steps (validation excluded)
    wall_seconds: float = 0.0  #: loop time including validation (the budget counts this)
    best_metric: float | None = None
    best_loss: float | None = None  #: valid loss of the best checkpoint (breaks ties of the metric)
    best_step: int = 0
    bad_validations: int = 0
    nan_skips: int = 0  #: consecutive non-finite losses
    total_nan_skips: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  #: validation results
    tokenizers: dict[str, str] = field(default_factory=dict)  #: sha256 of the spm models trained with


class _StopSignal:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a notebook worker)
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: finishing this step, writing a checkpoint, then stopping",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------ preflight

def make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or fail clearly if it cannot be one."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NmtError(f"run directory {run_dir} is a file, not a directory; choose another with --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise NmtError(f"run directory {run_dir} is not writable ({exc.strerror}); "
                       "choose another with --run-dir") from None


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


def _written_by_train(recipe_file: Path) -> bool:
    try:
        with open(recipe_file, "rb") as handle:
            return handle.read(len(RECIPE_HEADER.encode())) == RECIPE_HEADER.encode()
    except OSError:
        return False


def _io_error(exc: OSError, run_dir: Path) -> NmtError:
    """A failed read or write (full disk, quota, permissions) as a message without a traceback."""
    where = exc.filename or run_dir
    what = exc.strerror or str(exc) or type(exc).__name__
    try:
        step = json.loads((run_dir / CHECKPOINT_DIR / LAST_POINTER).read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        step = None
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if step is not None:
        kept = (f"The last complete checkpoint (step {step}) in {run_dir / CHECKPOINT_DIR} is intact: "
                f"continue with --resume{' once space is freed' if full else ''}")
    else:
        kept = "No checkpoint was written yet" + ("; free some space or choose another --run-dir" if full else "")
    return NmtError(f"training stopped: {what}: {where}. {kept}")


def _saved_recipe(run_dir: Path) -> Recipe | None:
    """The recipe a run directory was trained with (its recipe.yaml), if it has one."""
    saved_file = run_dir / "recipe.yaml"
    if not saved_file.is_file():
        return None
    return recipe_from_dict(read_yaml_file(saved_file), str(saved_file))


def _check_resume_recipe(saved: Recipe, recipe: Recipe) -> None:
    """``--resume`` with a recipe whose frozen sections equal the run's ``saved`` recipe."""
    # model.kernels picks implementations, not weights: a run may resume under the other setting
    saved.model.kernels = recipe.model.kernels
    for section in _FROZEN_ON_RESUME:
        old, new = getattr(saved, section), getattr(recipe, section)
        if old != new:
            diffs = _diff(_asdict(old), _asdict(new), section)
            raise NmtError(f"--resume: the recipe's {section} section differs from the run's "
                           f"({'; '.join(diffs[:5])}); resuming would load incompatible weights. "
                           "Restore the recipe or start a new run directory")


#: model keys a continued training may change: they do not shape or give meaning to the weights
_FREE_ON_INIT = ("model.kernels", "model.init", "model.dropout", "model.encoder.dropout",
                 "model.decoder.dropout")


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
    where = f"{source / 'recipe.yaml'}"
    differ = [d for d in _differences(_asdict(old.model), _asdict(recipe.model), "model")
              if d[0] not in _FREE_ON_INIT]
    differ += [d for d in _differences(_asdict(old.tokenizer), _asdict(recipe.tokenizer), "tokenizer")
               if d[0] != "tokenizer.num_threads"]
    if differ:
        listed = "; ".join(f"{key}: {a!r} in {where}, {b!r} in this recipe" for key, a, b in differ)
        raise NmtError(f"{flag}: the recipe's model or tokenizer differs from the run's ({listed}). "
                       "Continued training keeps the run's weights and vocabularies, so these must be "
                       "equal (dropout, init and kernels may differ): start the recipe with `base:` "
                       "the run's recipe, or copy these keys")
    sizes = [("tokenizer.src_vocab_size", models.src_vocab_size, recipe.tokenizer.src_vocab_size)]
    if not models.joint:
        sizes.append(("tokenizer.tgt_vocab_size", models.tgt_vocab_size, recipe.tokenizer.tgt_vocab_size))
    wrong = [f"{key}: {have} pieces in {source}'s models, {want} in this recipe" for key, have, want in sizes
             if have != want]
    if wrong:
        raise CheckpointError(f"{flag}: the run's tokenizer models do not have the recipe's vocabulary "
                              f"sizes ({'; '.join(wrong)}); was its recipe.yaml edited after training?")
    record = {"run_dir": str(source.resolve()), "checkpoint": t.init_checkpoint, "weights": weights.name,
              "step": metadata.get("step"),
              "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    return InitSource(source.resolve(), t.init_checkpoint, weights, record)


def _resume_init_from(run_dir: Path, saved: TrainConfig, recipe: Recipe) -> None:
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


def _init_record(run_dir: Path) -> dict[str, Any] | None:
    """What a run directory's tokenizer record says it was initialised from (None: trained afresh)."""
    from nmt.data.tokenizer import RECORD

    try:
        record = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = record.get("init_from") if isinstance(record, dict) else None
    return found if isinstance(found, dict) else None


def _differences(a: dict, b: dict, prefix: str) -> list[tuple[str, Any, Any]]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}.{key}")
        elif va != vb:
            out.append((f"{prefix}.{key}", va, vb))
    return out


def _asdict(obj):
    import dataclasses
    return dataclasses.asdict(obj)


def _diff(a: dict, b: dict, prefix: str) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}.{key}")
        elif va != vb:
            out.append(f"{prefix}.{key}: {va!r} -> {vb!r}")
    return out


# ----------------------------------------------------------------------------------- schedules

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


# ---------------------------------------------------------------------------------------- train

def recipe_vocab_sizes(recipe: Recipe) -> tuple[int, int]:
    """The vocabulary sizes the recipe asks sentencepiece for (the model's, at most)."""
    tok = recipe.tokenizer
    return (tok.src_vocab_size, tok.src_vocab_size) if tok.joint else (tok.src_vocab_size, tok.tgt_vocab_size)


def load_training_recipe(path: str | os.PathLike, overrides: list[str] | None = None,
                         require_stop: bool = True) -> Recipe:
    """A recipe file read, overridden and validated, its model section included (can it be built?),
    and, unless ``require_stop`` is false, its training bounded (:func:`nmt.config.check_stops`)."""
    recipe = load_recipe(path, overrides)
    check_model_config(recipe.model, str(path), vocab_sizes=recipe_vocab_sizes(recipe))
    if require_stop:
        check_stops(recipe, str(path))
    return recipe


def train(recipe: Recipe, run_dir: str | os.PathLike | None = None, resume: bool = False,
          recipe_path: str | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by ``recipe``; returns a summary dict."""
    from accelerate import Accelerator

    from nmt.training.lock import RunLock

    check_model_config(recipe.model, recipe_path, vocab_sizes=recipe_vocab_sizes(recipe))
    check_stops(recipe, recipe_path)
    t = recipe.train
    run_dir = resolved_run_dir(recipe, run_dir)
    init = None
    if t.init_from is not None and not resume:
        # checked before the run directory is created: a refused source leaves nothing behind
        init = init_source(recipe, run_dir)
        t.init_from = str(init.run_dir)
    threads = prepare_threads(t.num_threads).threads  # nmt train decided before loading torch
    if threads:
        torch.set_num_threads(threads)
    trackers = "tensorboard" if recipe.output.tensorboard else None
    accelerator = Accelerator(mixed_precision=t.precision, log_with=trackers, project_dir=str(run_dir),
                              cpu=force_cpu())
    main = accelerator.is_main_process
    lock = None
    if main:
        make_run_dir(run_dir)
        lock = RunLock(run_dir)
        lock.acquire()  # before looking at its files: a second writer is named, not misdiagnosed
    try:
        if main:
            preflight_run_dir(run_dir, resume, need_bytes=256 * 2**20)
            saved = _saved_recipe(run_dir) if resume else None
            if saved is not None:
                _check_resume_recipe(saved, recipe)
                _resume_init_from(run_dir, saved.train, recipe)
        return _train(recipe, run_dir, resume, accelerator, trackers, init)
    except OSError as exc:
        raise _io_error(exc, run_dir) from None
    finally:
        _close_run_log()
        if lock is not None:
            lock.release()


def _train(recipe: Recipe, run_dir: Path, resume: bool, accelerator, trackers,
           init: InitSource | None = None) -> dict[str, Any]:
    from accelerate.utils import set_seed

    from nmt.data.batching import TokenBatchSampler, encode_dataset, lengths_of
    from nmt.data.corpus import load_corpus
    from nmt.data.tokenizer import SubwordTokenizers

    t = recipe.train
    main = accelerator.is_main_process
    accelerator.wait_for_everyone()
    _setup_logging(run_dir if main else None)
    if prepare_threads(t.num_threads).note:
        log.info(prepare_threads(t.num_threads).note)
    set_seed(t.seed)

    # -- data and tokenizers: the main process prepares, the others read what it wrote ----------
    with accelerator.main_process_first():
        corpus = load_corpus(recipe.data, splits=("train", "valid"))
        if init is not None:  # continued training: the trained run's models, copied
            tokenizers = SubwordTokenizers.adopt(init.run_dir, run_dir, init.record) if main \
                else SubwordTokenizers.load(run_dir)
        elif resume and _init_record(run_dir) is not None:  # the checkpoint checks their sha256
            tokenizers = SubwordTokenizers.load(run_dir)
        else:
            tokenizers = SubwordTokenizers.load_or_train(recipe.tokenizer, corpus["train"], run_dir,
                                                         resume=resume)
        f = recipe.data.filter
        train_ds = encode_dataset(corpus["train"], tokenizers, max_len=f.max_len, max_ratio=f.max_ratio,
                                  min_len=f.min_len)
        valid_ds = encode_dataset(corpus["valid"], tokenizers)
    if main:
        atomic_write_text(run_dir / "recipe.yaml", RECIPE_HEADER + recipe.to_yaml())
    if len(train_ds) == 0:
        raise NmtError("the training split is empty after filtering; relax data.filter (max_len, max_ratio)")
    lexicon = _lexicon(run_dir, recipe, tokenizers, train_ds, accelerator, resume,
                       None if init is None else init.run_dir) if recipe.decode.shortlist else None

    src_lens, tgt_lens = lengths_of(train_ds)
    sampler = TokenBatchSampler(
        src_lens, tgt_lens, batch_tokens=t.batch_tokens,
        max_sentences=t.max_sentences, bucket_width=t.bucket_width, seed=t.seed,
        num_replicas=accelerator.num_processes, rank=accelerator.process_index)

    model = build_model(recipe.model, tokenizers.src_vocab_size, tokenizers.tgt_vocab_size)
    if init is not None:
        load_weights(model, init.weights)
        if main:
            log.info("initialised from %s (%s checkpoint, step %s): %s", init.run_dir, init.checkpoint,
                     init.record["step"], init.weights.name)
    optimizer = build_optimizer(model, recipe)
    plateau = None
    if t.schedule == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if t.early_stopping_metric == "bleu" else "min",
            factor=t.plateau_factor, patience=t.plateau_patience, min_lr=t.min_lr)
    state = TrainerState()
    if resume:
        state = _restore(run_dir, model, optimizer, plateau, sampler, tokenizers)
        if main:  # records past the checkpoint are trained again: keep them once
            _truncate_metrics(run_dir / "metrics.jsonl", state.step)
    state.tokenizers = tokenizers.file_hashes
    model, optimizer = accelerator.prepare(model, optimizer)
    core: Seq2Seq = accelerator.unwrap_model(model)
    if main:
        log.info("model: %s parameters; %d training pairs, %d batches per epoch per process; device %s, "
                 "%d process(es), precision %s", f"{core.num_parameters():,}", len(train_ds), len(sampler),
                 accelerator.device, accelerator.num_processes, t.precision)
    if trackers:
        accelerator.init_trackers(recipe.output.name or "nmt")

    validator = _Validator(recipe, core, tokenizers, corpus["valid"], valid_ds, accelerator, run_dir, lexicon)
    metrics_file = run_dir / "metrics.jsonl"
    loader = _batches(train_ds, sampler)
    reason = "max_steps"
    progress = _progress(recipe, state, main)
    window_tokens, window_time, window_loss, window_nll = 0, 0.0, 0.0, 0.0
    loop_start = time.perf_counter() - state.wall_seconds

    with _StopSignal() as stop:
        while True:
            if t.max_steps and state.step >= t.max_steps:
                reason = "max_steps"
                break
            if t.max_epochs and sampler.epoch >= t.max_epochs:
                reason = "max_epochs"
                break
            if t.budget_minutes and (time.perf_counter() - loop_start) >= t.budget_minutes * 60:
                reason = "budget"
                break
            if stop.received is not None:
                reason = f"signal {signal.Signals(stop.received).name}"
                break

            step_start = time.perf_counter()
            model.train()
            step_tokens, step_loss, step_nll = 0, 0.0, 0.0
            finite = True
            for micro in range(t.accumulate):
                batch = next(loader).to(accelerator.device)
                sync = nullcontext() if micro == t.accumulate - 1 else accelerator.no_sync(model)
                with sync:
                    with accelerator.autocast():
                        loss_sum, nll_sum = model(batch.src, batch.src_lengths, batch.src_mask,
                                                  batch.tgt_in, batch.tgt_out, batch.tgt_mask,
                                                  t.label_smoothing)
                    loss = loss_sum / batch.n_tgt_tokens / t.accumulate
                    finite = finite and bool(torch.isfinite(loss))
                    accelerator.backward(loss)  # always: DDP expects every rank to run backward
                step_tokens += batch.n_tgt_tokens
                step_loss += float(loss_sum.detach())
                step_nll += float(nll_sum)
            # all ranks must agree on skipping, or their weights would diverge
            bad = accelerator.reduce(torch.tensor([0.0 if finite else 1.0], device=accelerator.device), "sum")
            if float(bad) > 0:
                optimizer.zero_grad(set_to_none=True)
                state.nan_skips += 1
                state.total_nan_skips += 1
                log.warning("step %d: non-finite loss; update skipped (%d in a row)", state.step + 1,
                            state.nan_skips)
                if state.nan_skips >= t.max_nan_skips:
                    raise NmtError(
                        f"{state.nan_skips} consecutive non-finite losses at step {state.step + 1}: training "
                        "diverged. Lower train.lr, enable train.clip_norm or use train.precision=no; "
                        f"the last good checkpoint in {run_dir / CHECKPOINT_DIR} is untouched")
                continue
            state.nan_skips = 0

            log_now = (state.step + 1) % t.log_every == 0
            part_norms = _part_grad_norms(core) if (log_now and main) else None
            grad_norm = (accelerator.clip_grad_norm_(model.parameters(), t.clip_norm)
                         if t.clip_norm > 0 else None)
            state.step += 1
            for group in optimizer.param_groups:
                group["lr"] = group.setdefault("base_lr", t.lr) * lr_factor(state.step, recipe, state.wall_seconds) * \
                    group.get("plateau_scale", 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            elapsed = time.perf_counter() - step_start
            state.train_seconds += elapsed
            global_tokens = step_tokens * accelerator.num_processes  # equal-sized shards on average
            state.tokens += global_tokens
            window_tokens += global_tokens
            window_time += elapsed
            window_loss += step_loss
            window_nll += step_nll
            state.wall_seconds = time.perf_counter() - loop_start
            if progress is not None:  # loss and speed averaged since the last log line
                progress.step(state, _epoch_progress(sampler),
                              window_loss * accelerator.num_processes / window_tokens,
                              window_tokens / window_time, log_now)
            if log_now and main:
                local_tokens = window_tokens / accelerator.num_processes
                record = {
                    "kind": "train", "step": state.step, "epoch": round(_epoch_progress(sampler), 4),
                    "time": round(state.wall_seconds, 2), "loss": window_loss / local_tokens,
                    "ppl": perplexity(window_nll / local_tokens),
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens_per_s": window_tokens / window_time,
                    "tokens": window_tokens, "seconds": round(window_time, 4),
                    "grad_norm": {"total": float(grad_norm) if grad_norm is not None else None,
                                  **(part_norms or {})},
                }
                _append_jsonl(metrics_file, record)
                if trackers:
                    accelerator.log({"train/loss": record["loss"], "train/tokens_per_s": record["tokens_per_s"],
                                     "train/lr": record["lr"]}, step=state.step)
                window_tokens, window_time, window_loss, window_nll = 0, 0.0, 0.0, 0.0

            if state.step % t.valid_every == 0:
                stop_early = _validate_and_checkpoint(validator, state, recipe, core, optimizer, plateau,
                                                      sampler, run_dir, accelerator, metrics_file)
                state.wall_seconds = time.perf_counter() - loop_start
                if stop_early:
                    reason = "early_stopping"
                    break

        if progress is not None:
            progress.close()
        state.wall_seconds = time.perf_counter() - loop_start
        interrupted = reason.startswith("signal")
        # the final state is validated (unless interrupted) and always checkpointed as "last"
        if state.step > 0 and (not state.history or state.history[-1]["step"] != state.step):
            if interrupted:
                _checkpoint(state, core, optimizer, plateau, sampler, run_dir, accelerator, best=False,
                            keep_last=t.keep_last)
            else:
                _validate_and_checkpoint(validator, state, recipe, core, optimizer, plateau, sampler,
                                         run_dir, accelerator, metrics_file)
    summary = {
        "run_dir": str(run_dir), "stopped": reason, "steps": state.step, "target_tokens": state.tokens,
        "train_seconds": round(state.train_seconds, 1), "wall_seconds": round(state.wall_seconds, 1),
        "train_tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1),
        "best_step": state.best_step, "best_metric": state.best_metric,
        "metric": t.early_stopping_metric, "nan_skips": state.total_nan_skips,
        "parameters": core.num_parameters(), "init_from": _init_record(run_dir),
    }
    # replicas must hold identical weights; record each process's checksum to show it
    checksums = [_weights_checksum(core)]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object
        checksums = gather_object(checksums)
    summary["replica_checksums"] = checksums
    if main:
        atomic_write_json(run_dir / "train_summary.json", summary)
        log.info("finished (%s): %s", reason, json.dumps(summary))
    if trackers:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return summary


# ------------------------------------------------------------------------------ loop helpers

def _lexicon(run_dir: Path, recipe: Recipe, tokenizers, train_ds, accelerator, resume: bool = False,
             init_from: Path | None = None):
    """The lexicon of a recipe that decodes with a shortlist (``decode.shortlist``): built from the
    training data before training (IBM Model 1 does not depend on the model), kept on resume.

    A continued training's lexicon is built from its own data and then given the translations of
    the lexicon of the run it starts from, if that has one (:meth:`Lexicon.merged`): the model
    still translates what it learnt there, and a small in-domain set alone would leave most of the
    vocabulary without candidates."""
    from nmt.inference.shortlist import LEXICON_FILE, Lexicon, build_for_run

    path = run_dir / LEXICON_FILE
    if accelerator.is_main_process and not resume:  # one left by a failed attempt may fit other tokenizers
        path.unlink(missing_ok=True)
    if accelerator.is_main_process and not path.is_file():
        build_for_run(run_dir, recipe=recipe, tokenizers=tokenizers, train_ds=train_ds)
        if init_from is not None and (init_from / LEXICON_FILE).is_file():
            Lexicon.load(path).merged(Lexicon.load(init_from / LEXICON_FILE)).save(path)
    accelerator.wait_for_everyone()
    return Lexicon.load(path)


def _batches(dataset, sampler):
    """Endless stream of collated batches; the sampler advances epochs and remembers its position.

    No DataLoader: its iterators draw seeds from the global RNG, which would make a resumed run
    diverge from an uninterrupted one; and the sampler's position is then exactly the batches trained.
    """
    from nmt.data.batching import collate

    columns = dataset.select_columns(["src_ids", "tgt_ids"])
    while True:
        for indices in sampler:
            rows = columns[indices]
            yield collate([{"src_ids": s, "tgt_ids": t} for s, t in zip(rows["src_ids"], rows["tgt_ids"])])


def _epoch_progress(sampler) -> float:
    return sampler.epoch + sampler.position / max(1, len(sampler))


def _weights_checksum(model: torch.nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _part_grad_norms(model: Seq2Seq) -> dict[str, float]:
    sums = {part: 0.0 for part in PARTS}
    for name, param in model.named_parameters():
        if param.grad is not None:
            sums[model.part_of(name)] += float(param.grad.detach().float().pow(2).sum())
    return {part: math.sqrt(v) for part, v in sums.items()}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    append_line(path, json.dumps(record))  # one write of a whole line: never a partial record


def _truncate_metrics(path: Path, step: int) -> None:
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


def _clock(seconds: float) -> str:
    """``1:02:03`` / ``2:03``."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def run_fraction(recipe: Recipe, step: int, elapsed: float, epochs: float) -> float | None:
    """How far the run is towards its first stop criterion (0..1); None if only ``patience`` bounds it."""
    t = recipe.train
    parts = []
    if t.max_steps:
        parts.append(step / t.max_steps)
    if t.budget_minutes:
        parts.append(elapsed / (t.budget_minutes * 60))
    if t.max_epochs:
        parts.append(epochs / t.max_epochs)
    return min(1.0, max(parts)) if parts else None


def eta_seconds(recipe: Recipe, step: int, elapsed: float, epochs: float) -> float | None:
    """Seconds until the first stop criterion ends the run, at the pace so far (validations
    included); None when only ``patience`` (or nothing yet measured) bounds it."""
    t = recipe.train
    left = []
    if t.budget_minutes:
        left.append(t.budget_minutes * 60 - elapsed)
    if t.max_steps and step > 0:
        left.append((t.max_steps - step) * elapsed / step)
    if t.max_epochs and epochs > 0:
        left.append((t.max_epochs - epochs) * elapsed / epochs)
    return max(0.0, min(left)) if left else None


def progress_text(recipe: Recipe, state: TrainerState, epochs: float, loss: float | None = None,
                  tokens_per_s: float | None = None) -> str:
    """One line on where a run is: step (of max_steps), time (of the budget), ETA, the current
    training loss and speed, and the last validation BLEU."""
    t = recipe.train
    elapsed = state.wall_seconds
    parts = [f"step {state.step:,}" + (f"/{t.max_steps:,}" if t.max_steps else "")]
    if t.max_epochs:
        parts.append(f"epoch {epochs:.2f}/{t.max_epochs}")
    parts.append(_clock(elapsed) + (f" of {_clock(t.budget_minutes * 60)}" if t.budget_minutes else ""))
    eta = eta_seconds(recipe, state.step, elapsed, epochs)
    parts.append(f"ETA {_clock(eta)}" if eta is not None else "ETA ? (until patience stops it)")
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:,.0f} tok/s")
    if state.history:
        last = state.history[-1]
        parts.append(f"valid BLEU {last['bleu']:.2f} @{last['step']:,}")
    else:
        parts.append("valid BLEU -")
    return " | ".join(parts)


def progress_disabled() -> bool:
    """``NMT_NO_PROGRESS`` set to anything but empty or 0."""
    return os.environ.get("NMT_NO_PROGRESS", "") not in ("", "0")


class _Progress:
    """Where a run is, for whoever watches it.

    On a terminal: one tqdm line, refreshed, with a bar towards the first stop criterion and
    :func:`progress_text`. Without one (a log file, CI, a pipe) or with ``NMT_NO_PROGRESS`` set:
    :func:`progress_text` as a plain log line every ``train.log_every`` steps.
    """

    def __init__(self, recipe: Recipe, state: TrainerState, stream=None, interactive: bool | None = None):
        import sys

        self.recipe = recipe
        stream = sys.stderr if stream is None else stream
        if interactive is None:
            interactive = not progress_disabled() and bool(getattr(stream, "isatty", lambda: False)())
        self.bar = None
        if interactive:
            from tqdm.auto import tqdm

            known = run_fraction(recipe, state.step, state.wall_seconds, 0.0) is not None
            fmt = "train {percentage:3.0f}%|{bar:12}| {desc}" if known else "train {desc}"
            self.bar = tqdm(total=100 if known else None, initial=0, file=stream, dynamic_ncols=True,
                            bar_format=fmt)
        self._shown = 0.0

    def step(self, state: TrainerState, epochs: float, loss: float, tokens_per_s: float, log_now: bool) -> None:
        if self.bar is None:
            if log_now:
                log.info("%s", progress_text(self.recipe, state, epochs, loss, tokens_per_s))
            return
        now = time.monotonic()
        if now - self._shown < 1.0:  # redraw at most once a second
            return
        self._shown = now
        fraction = run_fraction(self.recipe, state.step, state.wall_seconds, epochs)
        if fraction is not None:
            self.bar.n = round(100 * fraction, 1)
        self.bar.set_description_str(progress_text(self.recipe, state, epochs, loss, tokens_per_s))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(recipe: Recipe, state: TrainerState, main: bool) -> _Progress | None:
    return _Progress(recipe, state) if main else None


class _RunLog(logging.FileHandler):
    """``RUN/train.log``: the log of the run being trained."""


def _setup_logging(run_dir: Path | None) -> None:
    """Log to the console (once per process) and to this run's train.log: a second training in the
    same process (the Python API, a notebook) logs into its own run directory, not the first's."""
    root = logging.getLogger("nmt")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    _close_run_log()
    if not root.handlers:
        root.setLevel(logging.INFO)
        console = logging.StreamHandler()
        console.setFormatter(fmt)
        root.addHandler(console)
    if run_dir is not None:
        handler = _RunLog(run_dir / "train.log", encoding="utf-8")
        handler.setFormatter(fmt)
        root.addHandler(handler)


def _close_run_log() -> None:
    root = logging.getLogger("nmt")
    for handler in [h for h in root.handlers if isinstance(h, _RunLog)]:
        root.removeHandler(handler)
        handler.close()


# ------------------------------------------------------------------------- validate/checkpoint

def is_improvement(metric_name: str, metric: float, loss: float, best_metric: float | None,
                   best_loss: float | None) -> bool:
    """Is a validation better than the best so far (see ``TrainConfig.early_stopping_metric``)?

    ``bleu``: a higher BLEU, or the same BLEU with a lower loss; ``loss``: a lower loss. The first
    validation is always the best so far.
    """
    if best_metric is None:
        return True
    if metric_name == "loss":
        return metric < best_metric
    if metric != best_metric:
        return metric > best_metric
    return best_loss is None or loss < best_loss


def _validate_and_checkpoint(validator, state, recipe, core, optimizer, plateau, sampler, run_dir,
                             accelerator, metrics_file) -> bool:
    """Validate, write checkpoints, update early stopping. Returns True to stop training."""
    t = recipe.train
    start = time.perf_counter()
    result = validator.run(state.step)
    result["time"] = round(state.wall_seconds, 2)
    result["seconds"] = round(time.perf_counter() - start, 2)
    state.history.append(result)
    metric = result["bleu"] if t.early_stopping_metric == "bleu" else result["loss"]
    better = is_improvement(t.early_stopping_metric, metric, result["loss"], state.best_metric,
                            state.best_loss)
    if better:
        state.best_metric, state.best_loss, state.best_step = metric, result["loss"], state.step
        state.bad_validations = 0
    else:
        state.bad_validations += 1
    if plateau is not None:
        before = optimizer.param_groups[0]["lr"]
        plateau.step(metric)
        after = optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:  # keep the reduction when lr_factor rewrites lr
            group["plateau_scale"] = group.get("plateau_scale", 1.0) * (after / before if before else 1.0)
    result["best"] = better
    if accelerator.is_main_process:
        _append_jsonl(metrics_file, {"kind": "valid", **result})
        log.info("validation @ %d: loss %.4f ppl %.2f BLEU %.2f chrF %.2f (%.1fs)%s", state.step,
                 result["loss"], result["ppl"], result["bleu"], result["chrf"], result["seconds"],
                 " *best*" if better else "")
        if recipe.output.tensorboard:
            accelerator.log({f"valid/{k}": result[k] for k in ("loss", "ppl", "bleu", "chrf")}, step=state.step)
    _checkpoint(state, core, optimizer, None if plateau is None else plateau, sampler, run_dir,
                accelerator, best=better, keep_last=t.keep_last,
                valid={k: result[k] for k in ("loss", "ppl", "bleu", "chrf")})
    return t.patience is not None and state.bad_validations >= t.patience


def _checkpoint(state, core, optimizer, plateau, sampler, run_dir: Path, accelerator, best: bool,
                keep_last: int = 1, valid: dict[str, float] | None = None) -> None:
    """Write ``last`` (weights + trainer state) and, if ``best``, the best weights. Main process only.

    ``valid``: the validation of these weights (recorded in their metadata: ``nmt average --best``
    ranks kept checkpoints by it).
    """
    accelerator.wait_for_everyone()
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
    }
    save_last(ckpt, core, payload, meta, keep_last)  # a new pair, then last.json names it
    if best:
        save_weights(core, ckpt / "best.safetensors", meta)
        atomic_write_json(ckpt / "best.json", meta)


def _load_pair(model, weights: Path, state_file: Path, tokenizers) -> tuple[dict[str, Any], dict[str, Any]]:
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


def _restore(run_dir: Path, model, optimizer, plateau, sampler, tokenizers) -> TrainerState:
    """Load the pair ``last.json`` names or, if it cannot be read, the newest older complete pair."""
    ckpt = run_dir / CHECKPOINT_DIR
    candidates = last_candidates(run_dir)
    first_error: CheckpointError | None = None
    for weights, state_file in candidates:
        try:
            payload, trainer = _load_pair(model, weights, state_file, tokenizers)
        except CheckpointError as exc:
            log.warning("cannot resume from %s: %s", weights.name, exc)
            first_error = first_error or exc
            continue
        if first_error is not None:
            log.warning("resuming from the older complete checkpoint %s instead", weights.name)
        break
    else:
        if first_error is not None:
            raise CheckpointError(f"--resume: no checkpoint in {ckpt} can be loaded; the first: "
                                  f"{first_error}") from None
        raise CheckpointError(f"--resume: {ckpt} holds no checkpoint; run without --resume to start training")
    optimizer.load_state_dict(payload["optimizer"])
    if plateau is not None and payload.get("plateau"):
        plateau.load_state_dict(payload["plateau"])
    sampler.load_state_dict(payload["sampler"])
    torch.set_rng_state(payload["torch_rng"])
    py_state = json.loads(payload["python_rng"])
    random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
    state = TrainerState(**trainer)
    log.info("resumed from step %d (%s)", state.step, ckpt)
    return state


class _Validator:
    """Valid loss/perplexity over the whole valid split and BLEU/chrF of decoded valid sentences."""

    def __init__(self, recipe: Recipe, model: Seq2Seq, tokenizers, raw_valid, valid_ds, accelerator, run_dir,
                 lexicon=None):
        self.recipe = recipe
        self.lexicon = lexicon  # validation decodes as translation will: with the recipe's shortlist
        self.model = model
        self.tokenizers = tokenizers
        self.accelerator = accelerator
        self.run_dir = run_dir
        limit = recipe.train.valid_max_sentences or len(valid_ds)
        self.valid_ds = valid_ds
        self.sources = list(raw_valid["src"][:limit])
        self.references = list(raw_valid["tgt"][:limit])

    def run(self, step: int) -> dict[str, Any]:
        from nmt.data.batching import collate, inference_batches
        from nmt.metrics import score_corpus

        acc = self.accelerator
        model = self.model
        was_training = model.training
        model.eval()
        rank, world = acc.process_index, acc.num_processes
        nll, tokens = 0.0, 0
        batches = inference_batches(self.valid_ds["tgt_len"], 8000, 512)
        with torch.inference_mode(), acc.autocast():
            for indices in batches[rank::world]:
                rows = self.valid_ds[indices]
                batch = collate([{"src_ids": s, "tgt_ids": t} for s, t in
                                 zip(rows["src_ids"], rows["tgt_ids"])]).to(acc.device)
                _, nll_sum = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in,
                                   batch.tgt_out, batch.tgt_mask, 0.0)
                nll += float(nll_sum)
                tokens += batch.n_tgt_tokens
        totals = acc.reduce(torch.tensor([nll, float(tokens)], dtype=torch.float64, device=acc.device), "sum")
        loss = float(totals[0] / totals[1])
        # BLEU: decoded as `nmt translate` decodes (the same batches, dealt round-robin to the
        # processes); the main process scores the gathered output
        beam = self.recipe.train.valid_beam
        translator = self._translator()
        with acc.autocast():
            # validation searches even when the recipe decodes by sampling: BLEU of a fixed output
            texts = translator.translate(self.sources, beam=beam, shard=(rank, world), sample=False)
        pairs = [(i, text) for i, text in enumerate(texts) if text is not None]
        if world > 1:
            from accelerate.utils import gather_object
            pairs = gather_object(pairs)
        ordered = [text for _, text in sorted(pairs)]
        scores = score_corpus(ordered, [self.references], metrics=("bleu", "chrf"),
                              bleu_tokenize=self.recipe.eval.bleu_tokenize)
        if acc.is_main_process:
            self._plots(step)
        if was_training:
            model.train()
        return {"step": step, "loss": loss, "ppl": perplexity(loss), "bleu": scores["bleu"]["score"],
                "chrf": scores["chrf"]["score"], "beam": beam, "sentences": len(ordered),
                "samples": [{"src": s, "hyp": h, "ref": r} for s, h, r in
                            zip(self.sources[:3], ordered[:3], self.references[:3])]}

    def _plots(self, step: int) -> None:
        """Attention heatmaps of a few fixed valid sentences, so alignments can be watched forming."""
        count = self.recipe.train.plot_sentences
        if not count:
            return
        from nmt.figures import plot_attention

        translator = self._translator()
        results = translator.translate(self.sources[:count], beam=1, return_attention=True, sample=False)
        out_dir = self.run_dir / "plots" / f"step{step:07d}"
        kind = self.recipe.model.attention.kind
        for i, result in enumerate(results):
            hyp = result.hypotheses[0]
            if hyp.attention is None:  # an empty source: nothing was decoded
                continue
            plot_attention(hyp.attention.float().cpu().numpy(), hyp.src_tokens, hyp.tokens,
                           out_dir / f"valid{i}.png", title=f"{kind} attention, step {step}",
                           positions=None if hyp.positions is None else hyp.positions.float().cpu().numpy())

    def _translator(self):
        """The model being trained as a :class:`~nmt.inference.translator.Translator` (eval mode;
        :meth:`run` puts it back into training mode)."""
        from nmt.inference.translator import Translator

        translator = Translator(self.recipe, self.tokenizers, self.model, device=self.accelerator.device,
                                lexicon=self.lexicon)
        translator.warn.prefix = "validation"
        return translator

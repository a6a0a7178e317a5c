"""Training with accelerate: recipe → data → tokenizers → batches → model → checkpoints.

``train(recipe)`` is the whole job behind ``nmt train``. Devices, processes and mixed precision come
from :class:`accelerate.Accelerator` only, so the same code runs on one CPU, on several CPU processes
(``torchrun``, gloo) and on GPUs (``accelerate launch``).

:class:`Trainer` runs the loop in named phases: :meth:`~Trainer.step` (one update),
:meth:`~Trainer.log`, :meth:`~Trainer.maybe_validate` and :meth:`~Trainer.checkpoint`. The pieces
live beside it: the run directory (:mod:`~nmt.training.rundir`, :mod:`~nmt.training.lock`), the data
(:mod:`~nmt.training.inputs`), the learning rate (:mod:`~nmt.training.schedule`), validation
(:mod:`~nmt.training.validator`), checkpoints and exact resume (:mod:`~nmt.training.checkpoints`)
and what the user sees (:mod:`~nmt.training.progress`).

A run directory has one writer: ``train`` holds its lock throughout. A failed write (a full disk, a
quota) stops training with an :class:`NmtError` naming the file; the last complete checkpoint stays
intact and metrics.jsonl holds only complete records.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt.atomic import atomic_write_json
from nmt.config import Recipe, check_stops, load_recipe, resolved_run_dir
from nmt.errors import NmtError
from nmt import heap
from nmt.inference.checkpoint import CHECKPOINT_DIR, load_weights
from nmt.inference.devices import force_cpu
from nmt.model.seq2seq import PARTS, Seq2Seq, build_model, check_model_config, perplexity
from nmt.training.batch_vocab import BatchVocabulary
from nmt.training.checkpoints import restore, save_checkpoint, truncate_metrics, weights_checksum
from nmt.training.distributed import is_peer_failure, peer_failure, process_group_kwargs
from nmt.training.inputs import RunInputs, batch_stream, epoch_progress, prepare_inputs
from nmt.training.precision import resolve_precision, resolve_softmax, softmax_hint
from nmt.training.progress import Progress, Window, append_jsonl, close_run_log, setup_logging
from nmt.training.rundir import (InitSource, check_run_dir, init_record, init_source, io_error, lock_run_dir,
                                 saved_train)
from nmt.training.schedule import build_optimizer, build_plateau, plateau_step, set_lr
from nmt.training.state import StopSignal, TrainerState
from nmt.training.threads import ThreadFollower
from nmt.training.threads import prepare as prepare_threads
from nmt.training.validator import Validator, record_validation

log = logging.getLogger("nmt.train")

#: the validation numbers kept in checkpoint metadata and sent to trackers
VALID_KEYS = ("loss", "ppl", "bleu", "chrf")


# ------------------------------------------------------------------------------- entry points

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

    check_model_config(recipe.model, recipe_path, vocab_sizes=recipe_vocab_sizes(recipe))
    check_stops(recipe, recipe_path)
    t = recipe.train
    run_dir = resolved_run_dir(recipe, run_dir)
    init = None
    if t.init_from is not None and not resume:
        # checked before the run directory is created: a refused source leaves nothing behind
        init = init_source(recipe, run_dir)
        t.init_from = str(init.run_dir)
    threads = prepare_threads(t.num_threads)  # nmt train decided before loading torch
    if threads.threads:
        torch.set_num_threads(threads.threads)
    trackers = "tensorboard" if recipe.output.tensorboard else None
    cpu = force_cpu()
    device = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    saved = saved_train(run_dir) if resume else None
    precision = resolve_precision(t.precision, device, saved and saved.precision)
    softmax = resolve_softmax(t.softmax, precision.mode, device, saved and saved.softmax)
    # the run's recipe.yaml records what it trains with
    t.precision, t.softmax = precision.mode, softmax.mode
    accelerator = Accelerator(mixed_precision=t.precision, log_with=trackers, project_dir=str(run_dir),
                              cpu=cpu, kwargs_handlers=process_group_kwargs(t.dist_timeout))
    lock = lock_run_dir(run_dir) if accelerator.is_main_process else None
    try:
        changed = check_run_dir(run_dir, recipe, resume) if lock is not None else None
        accelerator.wait_for_everyone()
        setup_logging(run_dir if accelerator.is_main_process else None)
        if changed:
            log.warning(changed)
        if threads.note:
            log.info(threads.note)
        if precision.note:
            log.info(precision.note)
        if precision.warning:
            log.warning(precision.warning)
        if softmax.note:
            log.info(softmax.note)
        if hint := softmax_hint(precision.mode, t.softmax, device):
            log.info(hint)
        trainer = Trainer.build(recipe, run_dir, resume, accelerator, trackers, init)
        if t.num_threads == "auto" and threads.threads:
            trainer.follower = ThreadFollower.for_choice(threads)
        return trainer.run()
    except OSError as exc:
        raise io_error(exc, run_dir) from None
    except RuntimeError as exc:
        if not is_peer_failure(exc, accelerator.num_processes):
            raise
        raise peer_failure(exc, run_dir, t.dist_timeout, accelerator.process_index) from None
    finally:
        close_run_log()
        if lock is not None:
            lock.release()


# -------------------------------------------------------------------------------------- trainer

@dataclass
class StepResult:
    """One update, as the log sees it."""

    tokens: int  #: target tokens of this process
    loss: float  #: summed training loss (label smoothing included) of this process
    nll: float  #: summed negative log-likelihood of this process
    seconds: float
    grad_norm: torch.Tensor | None  #: before clipping (None without ``train.clip_norm``)
    part_norms: dict[str, float] | None  #: per model part, on log steps of the main process
    log_now: bool  #: a ``train.log_every`` step


class Trainer:
    """The training loop over a prepared model, optimizer and data: :meth:`run` repeats
    :meth:`step`, :meth:`log` and :meth:`maybe_validate` until a stop criterion holds."""

    follower: ThreadFollower | None = None  #: ``train.num_threads: auto`` re-decided as load changes

    def __init__(self, recipe: Recipe, run_dir: Path, accelerator, inputs: RunInputs, model, optimizer,
                 plateau, state: TrainerState, trackers: str | None):
        self.recipe, self.run_dir, self.accelerator = recipe, run_dir, accelerator
        self.inputs, self.sampler = inputs, inputs.sampler
        self.model, self.optimizer, self.plateau, self.state = model, optimizer, plateau, state
        self.trackers = trackers
        self.main = accelerator.is_main_process
        self.core: Seq2Seq = accelerator.unwrap_model(model)
        self.metrics_file = run_dir / "metrics.jsonl"
        self.validator = Validator(recipe, self.core, inputs.tokenizers, inputs.corpus["valid"], inputs.valid_ds,
                                   accelerator, run_dir, inputs.lexicon)
        self.loader = batch_stream(inputs.train_ds, self.sampler, inputs.examples)
        #: ``train.softmax: batch``: the output rows of each batch's softmax (None: the full softmax)
        self.batch_vocab = BatchVocabulary.for_training(recipe.train, inputs.train_ds,
                                                        inputs.tokenizers.tgt_vocab_size)
        self.progress: Progress | None = None  #: the main process's, from :meth:`run` on
        self.stop: StopSignal | None = None  #: the signals this process received, from :meth:`run` on
        #: several processes: why all of them stop, agreed in the last update (None: go on)
        self.agreed_stop: str | None = None
        self.window = Window()
        self.loop_start = 0.0

    @classmethod
    def build(cls, recipe: Recipe, run_dir: Path, resume: bool, accelerator, trackers: str | None,
              init: InitSource | None = None) -> "Trainer":
        """Seed, prepare the data, build the model and optimizer, and restore them on ``resume``."""
        from accelerate.utils import set_seed

        set_seed(recipe.train.seed)
        inputs = prepare_inputs(recipe, run_dir, resume, accelerator, init)
        model = build_model(recipe.model, inputs.tokenizers.src_vocab_size, inputs.tokenizers.tgt_vocab_size)
        if init is not None:
            load_weights(model, init.weights)
            if accelerator.is_main_process:
                log.info("initialised from %s (%s checkpoint, step %s): %s", init.run_dir, init.checkpoint,
                         init.record["step"], init.weights.name)
        optimizer = build_optimizer(model, recipe)
        plateau = build_plateau(optimizer, recipe)
        state = TrainerState()
        if resume:
            state = restore(run_dir, model, optimizer, plateau, inputs.sampler, inputs.tokenizers, accelerator)
            if accelerator.is_main_process:  # records past the checkpoint are trained again: keep them once
                truncate_metrics(run_dir / "metrics.jsonl", state.step)
        state.tokenizers = inputs.tokenizers.file_hashes
        model, optimizer = accelerator.prepare(model, optimizer)
        return cls(recipe, run_dir, accelerator, inputs, model, optimizer, plateau, state, trackers)

    # ---------------------------------------------------------------------------------- the loop

    def run(self) -> dict[str, Any]:
        """Train until a stop criterion holds; validate and checkpoint the end. Returns the summary."""
        self._start()
        with StopSignal() as stop:
            self.stop = stop
            reason = self._loop(stop)
            self._finish(reason)
        return self._summary(reason)

    def _start(self) -> None:
        """Say what is trained, start the trackers, the progress line and the clock."""
        t, acc = self.recipe.train, self.accelerator
        if self.main:
            log.info("model: %s parameters; %d training pairs, %d batches per epoch per process; device %s, "
                     "%d process(es), precision %s", f"{self.core.num_parameters():,}", len(self.inputs.train_ds),
                     len(self.sampler), acc.device, acc.num_processes, t.precision)
        if self.trackers:
            acc.init_trackers(self.recipe.output.name or "nmt")
        self.progress = Progress(self.recipe, self.state) if self.main else None
        self.loop_start = time.perf_counter() - self.state.wall_seconds

    def _loop(self, stop: StopSignal) -> str:
        """Steps until a stop criterion holds; returns which."""
        while True:
            reason = self._stop_reason(stop)
            if reason is not None:
                return reason
            result = self.step()
            if result is None:  # a non-finite loss: no update
                continue
            if self.state.step % heap.TRIM_EVERY == 0:
                heap.return_free_memory()  # what the steps' blocks of many sizes left free in the heap
            self.log(result)
            if self.maybe_validate():
                return "early_stopping"

    def _stop_reason(self, stop: StopSignal) -> str | None:
        t = self.recipe.train
        if t.max_steps and self.state.step >= t.max_steps:
            return "max_steps"
        if t.max_epochs and self.sampler.epoch >= t.max_epochs:
            return "max_epochs"
        if self.accelerator.num_processes > 1:  # a signal or a clock of one process stops them all
            return self.agreed_stop
        if self._over_budget():
            return "budget"
        return stop.reason

    def _over_budget(self) -> bool:
        t = self.recipe.train
        return bool(t.budget_minutes) and (time.perf_counter() - self.loop_start) >= t.budget_minutes * 60

    def _finish(self, reason: str) -> None:
        """The final state is validated (unless interrupted) and always checkpointed as ``last``."""
        if self.progress is not None:
            self.progress.close()
        state = self.state
        state.wall_seconds = time.perf_counter() - self.loop_start
        if state.step > 0 and (not state.history or state.history[-1]["step"] != state.step):
            if reason.startswith("signal"):
                self.checkpoint(best=False)
            else:
                self.validate()

    # ---------------------------------------------------------------------------------- one step

    def step(self) -> StepResult | None:
        """One update over ``train.accumulate`` batches; None if a non-finite loss skipped it."""
        t = self.recipe.train
        start = time.perf_counter()
        self.model.train()
        tokens, loss, nll, finite = self._forward_backward()
        if not self._all_finite(finite):
            self._skip_update()
            return None
        self.state.nan_skips = 0
        log_now = (self.state.step + 1) % t.log_every == 0
        part_norms = part_grad_norms(self.core) if (log_now and self.main) else None
        grad_norm = (self.accelerator.clip_grad_norm_(self.model.parameters(), t.clip_norm)
                     if t.clip_norm > 0 else None)
        self.state.step += 1
        set_lr(self.optimizer, self.state.step, self.recipe, self.state.wall_seconds)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        result = StepResult(tokens, loss, nll, time.perf_counter() - start, grad_norm, part_norms, log_now)
        self._count(result)
        return result

    def _forward_backward(self) -> tuple[int, float, float, bool]:
        """Gradients of the next ``train.accumulate`` batches; ``(tokens, loss, nll, finite)``."""
        t, acc, model = self.recipe.train, self.accelerator, self.model
        tokens, loss_total, nll_total = 0, 0.0, 0.0
        finite = True
        for micro in range(t.accumulate):
            batch = next(self.loader).to(acc.device)
            subset = None if self.batch_vocab is None else self.batch_vocab.subset(
                batch.tgt_out, batch.tgt_mask, (self.state.step, micro, acc.process_index))
            sync = nullcontext() if micro == t.accumulate - 1 else acc.no_sync(model)
            with sync:
                with acc.autocast():
                    loss_sum, nll_sum = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in,
                                              batch.tgt_out, batch.tgt_mask, t.label_smoothing, subset)
                loss = loss_sum / batch.n_tgt_tokens / t.accumulate
                finite = finite and bool(torch.isfinite(loss))
                acc.backward(loss)  # always: DDP expects every rank to run backward
            tokens += batch.n_tgt_tokens
            loss_total += float(loss_sum.detach())
            nll_total += float(nll_sum)
        return tokens, loss_total, nll_total, finite

    def _all_finite(self, finite: bool) -> bool:
        """Whether every process saw finite losses: all must agree on skipping, or their weights
        would diverge. The same reduction agrees on stopping (:attr:`agreed_stop`): a process that
        stopped alone would leave the others waiting in their next collective operation."""
        acc = self.accelerator
        received = None if self.stop is None else self.stop.received
        wishes = [0.0 if finite else 1.0, float(received == signal.SIGINT), float(received == signal.SIGTERM),
                  float(self._over_budget())]
        bad, sigint, sigterm, budget = acc.reduce(torch.tensor(wishes, device=acc.device), "sum").tolist()
        if received is not None:
            self.agreed_stop = self.stop.reason
        elif (sigint or sigterm) and self.agreed_stop is None:  # the same reason (and exit status) everywhere
            self.agreed_stop = f"signal {'SIGTERM' if sigterm else 'SIGINT'} (received by another process)"
            log.warning("%s: writing a checkpoint, then stopping", self.agreed_stop)
        elif budget > 0:
            self.agreed_stop = "budget"
        return not bad > 0

    def _skip_update(self) -> None:
        state, t = self.state, self.recipe.train
        self.optimizer.zero_grad(set_to_none=True)
        state.nan_skips += 1
        state.total_nan_skips += 1
        log.warning("step %d: non-finite loss; update skipped (%d in a row)", state.step + 1, state.nan_skips)
        if state.nan_skips >= t.max_nan_skips:
            raise NmtError(
                f"{state.nan_skips} consecutive non-finite losses at step {state.step + 1}: training "
                "diverged. Lower train.lr, enable train.clip_norm or use train.precision=no; "
                f"the last good checkpoint in {self.run_dir / CHECKPOINT_DIR} is untouched")

    def _count(self, result: StepResult) -> None:
        """Add an update to the run's totals and to the log window."""
        global_tokens = result.tokens * self.accelerator.num_processes  # equal-sized shards on average
        self.state.train_seconds += result.seconds
        self.state.tokens += global_tokens
        self.window.add(global_tokens, result.seconds, result.loss, result.nll)
        self.state.wall_seconds = time.perf_counter() - self.loop_start

    # ------------------------------------------------------------------------ log, validate, save

    def log(self, result: StepResult) -> None:
        """The progress line; on ``train.log_every`` steps a metrics.jsonl record of the window."""
        window, world = self.window, self.accelerator.num_processes
        if result.log_now and self.follower is not None:
            self._follow_load()
        if self.progress is not None:  # loss and speed averaged since the last log line
            self.progress.step(self.state, epoch_progress(self.sampler), window.loss * world / window.tokens,
                               window.tokens / window.seconds, result.log_now)
        if not (result.log_now and self.main):
            return
        record = self._train_record(result)
        append_jsonl(self.metrics_file, record)
        if self.trackers:
            self.accelerator.log({"train/loss": record["loss"], "train/tokens_per_s": record["tokens_per_s"],
                                  "train/lr": record["lr"]}, step=self.state.step)
        self.window = Window()

    def _follow_load(self) -> None:
        """``train.num_threads: auto``: the thread count follows load that started or ended."""
        threads = self.follower.observe()
        if threads is not None:
            torch.set_num_threads(threads)
            log.info("train.num_threads auto: %.1f of %d CPUs busy with other work over the last %d "
                     "steps; now %d thread(s)", self.follower.busy, self.follower.cpus,
                     self.recipe.train.log_every, threads)

    def _train_record(self, result: StepResult) -> dict[str, Any]:
        window = self.window
        local_tokens = window.tokens / self.accelerator.num_processes
        grad_norm = result.grad_norm
        return {
            "kind": "train", "step": self.state.step, "epoch": round(epoch_progress(self.sampler), 4),
            "time": round(self.state.wall_seconds, 2), "loss": window.loss / local_tokens,
            "ppl": perplexity(window.nll / local_tokens),
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens_per_s": window.tokens / window.seconds,
            "tokens": window.tokens, "seconds": round(window.seconds, 4),
            "grad_norm": {"total": float(grad_norm) if grad_norm is not None else None,
                          **(result.part_norms or {})},
        }

    def maybe_validate(self) -> bool:
        """Validate and checkpoint every ``train.valid_every`` updates; True to stop early."""
        if self.state.step % self.recipe.train.valid_every != 0:
            return False
        stop_early = self.validate()
        self.state.wall_seconds = time.perf_counter() - self.loop_start
        return stop_early

    def validate(self) -> bool:
        """Validate, write checkpoints, update early stopping. Returns True to stop training."""
        t, state = self.recipe.train, self.state
        start = time.perf_counter()
        result = self.validator.run(state.step)
        result["time"] = round(state.wall_seconds, 2)
        result["seconds"] = round(time.perf_counter() - start, 2)
        metric, better = record_validation(state, result, t.early_stopping_metric)
        if self.plateau is not None:
            plateau_step(self.plateau, self.optimizer, metric)
        result["best"] = better  # the history holds this same record
        if self.main:
            self._report_validation(result, better)
        self.checkpoint(best=better, valid={k: result[k] for k in VALID_KEYS})
        return t.patience is not None and state.bad_validations >= t.patience

    def _report_validation(self, result: dict[str, Any], better: bool) -> None:
        append_jsonl(self.metrics_file, {"kind": "valid", **result})
        log.info("validation @ %d: loss %.4f ppl %.2f BLEU %.2f chrF %.2f (%.1fs)%s", self.state.step,
                 result["loss"], result["ppl"], result["bleu"], result["chrf"], result["seconds"],
                 " *best*" if better else "")
        if self.recipe.output.tensorboard:
            self.accelerator.log({f"valid/{k}": result[k] for k in VALID_KEYS}, step=self.state.step)

    def checkpoint(self, best: bool, valid: dict[str, float] | None = None) -> None:
        """Write ``last`` and, if ``best``, the best weights (:func:`save_checkpoint`)."""
        save_checkpoint(self.state, self.core, self.optimizer, self.plateau, self.sampler, self.run_dir,
                        self.accelerator, best=best, keep_last=self.recipe.train.keep_last, valid=valid)

    # ----------------------------------------------------------------------------------- the end

    def _summary(self, reason: str) -> dict[str, Any]:
        """``train_summary.json``, written by the main process; every process returns it."""
        state, acc = self.state, self.accelerator
        summary = {
            "run_dir": str(self.run_dir), "stopped": reason, "steps": state.step, "target_tokens": state.tokens,
            "train_seconds": round(state.train_seconds, 1), "wall_seconds": round(state.wall_seconds, 1),
            "train_tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1),
            "best_step": state.best_step, "best_metric": state.best_metric,
            "metric": self.recipe.train.early_stopping_metric, "nan_skips": state.total_nan_skips,
            "parameters": self.core.num_parameters(), "init_from": init_record(self.run_dir),
        }
        # replicas must hold identical weights; record each process's checksum to show it
        checksums = [weights_checksum(self.core)]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object
            checksums = gather_object(checksums)
        summary["replica_checksums"] = checksums
        if self.main:
            atomic_write_json(self.run_dir / "train_summary.json", summary)
            log.info("finished (%s): %s", reason, json.dumps(summary))
        if self.trackers:
            acc.end_training()
        acc.wait_for_everyone()
        return summary


def part_grad_norms(model: Seq2Seq) -> dict[str, float]:
    """The gradient norm of each model part (:data:`~nmt.model.seq2seq.PARTS`)."""
    sums = {part: 0.0 for part in PARTS}
    for name, param in model.named_parameters():
        if param.grad is not None:
            sums[model.part_of(name)] += float(param.grad.detach().float().pow(2).sum())
    return {part: math.sqrt(v) for part, v in sums.items()}

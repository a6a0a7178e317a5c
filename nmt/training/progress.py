"""Where a run is, for whoever watches it: the progress line (step, time, ETA, loss, speed, last
BLEU), the run's log (console and ``RUN/train.log``) and its records (``RUN/metrics.jsonl``)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmt.atomic import append_line, open_nofollow
from nmt.config import Recipe
from nmt.training.state import TrainerState

log = logging.getLogger("nmt.train")


# ------------------------------------------------------------------------------ where a run is

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


@dataclass
class Window:
    """The training since the last log line: its loss and speed are what the log shows."""

    tokens: int = 0  #: target tokens of all processes
    seconds: float = 0.0
    loss: float = 0.0  #: summed training loss of this process
    nll: float = 0.0  #: summed negative log-likelihood of this process

    def add(self, tokens: int, seconds: float, loss: float, nll: float) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.loss += loss
        self.nll += nll


class Progress:
    """Where a run is, for whoever watches it.

    On a terminal: one tqdm line, refreshed, with a bar towards the first stop criterion and
    :func:`progress_text`. Without one (a log file, CI, a pipe) or with ``NMT_NO_PROGRESS`` set:
    :func:`progress_text` as a plain log line every ``train.log_every`` steps.
    """

    def __init__(self, recipe: Recipe, state: TrainerState, stream=None, interactive: bool | None = None):
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


# ---------------------------------------------------------------------------- log and records

class _RunLog(logging.FileHandler):
    """``RUN/train.log``: the log of the run being trained (never appended through a link)."""

    def _open(self):
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                    opener=lambda path, flags: open_nofollow(path, flags))


class _Console(logging.StreamHandler):
    """The console: whatever ``sys.stderr`` is when a record is written, not when the handler was
    made (a redirected or replaced stderr, e.g. in a notebook or a test, is not written after it
    was closed)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stderr


def setup_logging(run_dir: Path | None) -> None:
    """Log to the console (once per process) and to this run's train.log: a second training in the
    same process (the Python API, a notebook) logs into its own run directory, not the first's."""
    root = logging.getLogger("nmt")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    close_run_log()
    if not root.handlers:
        root.setLevel(logging.INFO)
        console = _Console()
        console.setFormatter(fmt)
        root.addHandler(console)
    if run_dir is not None:
        handler = _RunLog(run_dir / "train.log", encoding="utf-8")
        handler.setFormatter(fmt)
        root.addHandler(handler)


def close_run_log() -> None:
    """Stop logging into the run's train.log (the console stays)."""
    root = logging.getLogger("nmt")
    for handler in [h for h in root.handlers if isinstance(h, _RunLog)]:
        root.removeHandler(handler)
        handler.close()


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Add ``record`` to a JSON-lines file (``metrics.jsonl``)."""
    append_line(path, json.dumps(record))  # one write of a whole line: never a partial record

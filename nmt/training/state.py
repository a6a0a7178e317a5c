"""What a training run carries from step to step (checkpointed), and the stop signal it listens to."""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("nmt.train")


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


class StopSignal:
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

    @property
    def reason(self) -> str | None:
        """``signal SIGTERM`` once a signal was received, else None."""
        return None if self.received is None else f"signal {signal.Signals(self.received).name}"

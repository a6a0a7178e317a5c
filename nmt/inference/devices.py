"""Devices and processes, from accelerate only: one place decides where the model runs."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def force_cpu() -> bool:
    """The ``cpu=`` flag for accelerate: True for a multi-process launch on a machine without CUDA.

    accelerate picks multi-process CPU (MULTI_CPU, gloo) only when asked for the CPU, so a torchrun
    launch without CUDA asks for it; otherwise accelerate chooses the device (CUDA, MPS or CPU).
    """
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    return launched and not torch.cuda.is_available()


@dataclass
class _OneCpuProcess:
    """What ``distributed_state`` needs of ``PartialState``, for one process on a CPU-only machine."""

    num_processes: int = 1
    process_index: int = 0
    is_main_process: bool = True
    device: torch.device = torch.device("cpu")


def distributed_state():
    """accelerate's ``PartialState``, with the device choice of :func:`force_cpu`.

    One process on a machine with no accelerator needs none of it: that case skips accelerate,
    whose ``PartialState()`` is a noticeable part of the start-up of ``nmt translate``.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    if not launched and torch.accelerator.current_accelerator() is None:
        return _OneCpuProcess()
    from accelerate import PartialState

    return PartialState(cpu=force_cpu())


def close_process_group() -> None:
    """Tear the process group down before the interpreter exits (else gloo may abort at exit, after
    the job's work is done, and the launcher reports the process as failed)."""
    try:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except Exception:  # pragma: no cover - best effort at shutdown
        pass

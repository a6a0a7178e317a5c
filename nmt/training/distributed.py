"""What the processes of a distributed training share, and how the run stops when one of them fails.

Only global rank 0 reads and writes the run directory. The other processes, on this machine or on
other nodes, read only the corpus (at the same path, or the same hub or URL, on every node) and
receive from rank 0 what it trained or loaded there: the sentencepiece models, the shortlist
lexicon and, on ``--resume``, the checkpoint (:func:`share`). A node therefore needs no shared
file system with the node of rank 0.

A process that dies (a killed node) makes the others' next collective operation fail; one that
hangs makes it time out after ``train.dist_timeout`` seconds. Either becomes an :class:`NmtError`
(:func:`peer_failure`) instead of a traceback, and the job ends instead of waiting.
"""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from nmt.errors import CheckpointError, NmtError

#: words of the errors torch's gloo and NCCL backends raise when a peer is gone or silent
_PEER_ERRORS = ("gloo", "nccl", "connection reset", "connection closed", "timed out", "timeout",
                "broken pipe", "socket")


def process_group_kwargs(timeout_seconds: float) -> list:
    """accelerate's ``kwargs_handlers`` that give the process group ``timeout_seconds``: how long a
    collective operation (a gradient all-reduce, a barrier) waits for a silent process."""
    from accelerate.utils import InitProcessGroupKwargs

    return [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_seconds))]


def share(accelerator, value: Any) -> Any:
    """Rank 0's ``value`` on every process (others pass anything, e.g. None). One process: ``value``."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value if accelerator.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def gather(accelerator, value: Any) -> list[Any]:
    """Every process's ``value``, in rank order, on every process."""
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def is_peer_failure(exc: BaseException, num_processes: int) -> bool:
    """Whether ``exc`` is a collective operation failing because another process died or hung."""
    if num_processes < 2 or not isinstance(exc, RuntimeError):
        return False
    try:
        from torch.distributed import DistError
        if isinstance(exc, DistError):
            return True
    except ImportError:  # pragma: no cover - torch without distributed support
        pass
    text = str(exc).lower()
    return any(word in text for word in _PEER_ERRORS)


def peer_failure(exc: BaseException, run_dir: Path, timeout_seconds: float, rank: int) -> NmtError:
    """The message of a distributed run that lost a process (``exc``, seen by ``rank``)."""
    from nmt.training.rundir import checkpoint_note

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's source location
    first_line = text.split(". ")[0].rstrip(".")
    kept = checkpoint_note(run_dir) if rank == 0 else (
        f"The checkpoints are in {run_dir} on the node of rank 0: continue with --resume on every node")
    return NmtError(f"distributed training stopped on rank {rank}: another process of the run ended, or "
                    f"did not answer within train.dist_timeout={timeout_seconds:g} s ({first_line[:300]}); "
                    f"the other nodes' logs say which. {kept}")


def check_world_size(saved: int | None, current: int, where: Path) -> None:
    """``--resume`` with the number of processes the run was trained with: the batch order and
    each process's random state depend on it, so another count could not continue exactly."""
    if saved is not None and saved != current:
        raise CheckpointError(
            f"--resume: the checkpoint in {where} was trained by {saved} process(es), this launch has "
            f"{current}; the batches each process trains and their random states depend on the number "
            f"of processes, so the run cannot continue exactly. Resume with {saved} process(es) (e.g. "
            f"torchrun --nproc_per_node {saved}, or as many nodes x processes), or start a new run "
            "directory with --init-from")

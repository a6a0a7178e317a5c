"""glibc's malloc in a long-running process: freed blocks kept for reuse between training steps,
and the free pages among them handed back to the kernel now and then.

glibc serves a block above its mmap threshold from a mapping of its own, unmapped when freed, and
smaller blocks from a heap. :func:`keep_freed_memory_for_reuse` raises the threshold to 32 MiB, so
the activation and gradient buffers of a training step are reused instead of being mapped and
page-faulted in again at every step (PyTorch's CPU tuning guide suggests jemalloc or tcmalloc for
the same reason). A heap only shrinks from its top, though: blocks of many sizes freed beneath a
few small ones that stay allocated (a compiled oneDNN kernel of bf16 training, kept in its cache
of 1,024) leave free pages the process keeps. :func:`return_free_memory` (``malloc_trim``) hands
every free page inside the heap back; training calls it every :data:`TRIM_EVERY` updates (the
steps after it fault those pages in again, so not at every step) (docs/performance.md, "Freed
memory kept for reuse, free pages handed back").

Both do nothing when the user set a ``MALLOC_*`` variable, or on another C library.
"""
from __future__ import annotations

import ctypes
import os
import sys

#: training hands the heap's free pages back every this many updates
TRIM_EVERY = 100

#: ``mallopt`` options of <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def _glibc():
    """glibc, unless the user tunes malloc (a ``MALLOC_*`` variable) or the platform is not Linux."""
    if any(name.startswith("MALLOC_") for name in os.environ) or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory_for_reuse() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB for reuse (``mallopt``), trimming the
    heap's top above 512 MiB. Returns whether it was applied."""
    libc = _glibc()
    try:
        return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, 512 * 2**20))
    except AttributeError:
        return False


def return_free_memory() -> bool:
    """Hand the free pages inside glibc's heap back to the kernel (``malloc_trim(0)``): the memory
    blocks of many sizes leave behind between blocks still in use. Returns whether any was."""
    libc = _glibc()
    try:
        return libc is not None and bool(libc.malloc_trim(0))
    except AttributeError:
        return False

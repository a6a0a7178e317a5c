"""Worker processes that end with their parent.

A parent killed with ``kill -9`` cannot stop its workers; without help they would run on, each
holding a model in memory. :func:`die_with_parent` asks Linux to send the worker ``SIGKILL`` when
its parent ends (``prctl(PR_SET_PDEATHSIG)``) and, everywhere, starts a thread that ends the worker
once its parent process is gone (it is then re-parented, so ``os.getppid()`` changes).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

#: ``prctl`` option: the signal a process gets when its parent ends (linux/prctl.h)
PR_SET_PDEATHSIG = 1

#: seconds between two looks at the parent by the portable watch
WATCH_EVERY = 1.0


def die_with_parent(parent: int) -> None:
    """End this process when the process ``parent`` ends (call it first thing in a worker)."""
    if sys.platform.startswith("linux"):
        _linux_death_signal()
    if os.getppid() != parent:  # the parent ended before we could ask
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()


def _linux_death_signal() -> None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the watch below still ends the worker


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_EVERY)
    os._exit(1)

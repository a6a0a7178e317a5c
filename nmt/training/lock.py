"""One writer per run directory: ``nmt train`` holds ``RUN/train.lock`` while it runs.

Two trainings writing one directory would interleave their metrics and overwrite each other's
checkpoints. The lock is an ``fcntl.flock`` on ``train.lock``, which the kernel releases when its
process ends however it ends (``kill -9`` included), so a lock can never outlive its owner on a
local file system. The file holds the owner's pid and host for the error message. Where ``flock``
is not supported (some network file systems), the recorded pid decides: a lock of a process that
no longer runs on this host is stale and is taken over with a warning.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from nmt.atomic import open_nofollow, process_alive
from nmt.errors import NmtError

log = logging.getLogger("nmt.train")

LOCK_FILE = "train.lock"


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        owner = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def lock_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The owner record (pid, host, started) of the ``nmt train`` holding ``run_dir``'s lock, or
    None when no training holds it. Reads only; a link at train.lock is not followed."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read_owner(fd) or {"pid": "?"}
            owner = _read_owner(fd)  # flock unsupported: the recorded pid decides
            pid = owner.get("pid")
            return owner if isinstance(pid, int) and owner.get("host") == socket.gethostname() and process_alive(pid) \
                else None
        return None
    finally:
        os.close(fd)


class RunLock:
    """``with RunLock(run_dir):`` -- refuse (NmtError) if another process trains into ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        import fcntl

        host = socket.gethostname()
        for _ in range(20):  # the file can be removed by its owner between our open and our lock
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)  # a planted link is refused
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    owner = _read_owner(fd)
                    os.close(fd)
                    raise NmtError(self._busy_message(owner)) from None
                locked = False  # flock unsupported here: the recorded pid decides
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            owner = _read_owner(fd)
            pid = owner.get("pid")
            if isinstance(pid, int) and pid != os.getpid():
                if not locked and (owner.get("host") != host or process_alive(pid)):
                    os.close(fd)
                    raise NmtError(self._busy_message(owner) + f" (if no such process runs any more, "
                                                               f"delete {self.path})")
                log.warning("%s: taking over the lock of process %d on %s, which ended without "
                            "releasing it", self.path, pid, owner.get("host", "?"))
            record = json.dumps({"pid": os.getpid(), "host": host,
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n"
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, record.encode("utf-8"))
            self.fd = fd
            return
        raise NmtError(f"could not lock {self.path}: it keeps being replaced; is another `nmt train` "
                       "starting in this run directory?")

    def _busy_message(self, owner: dict[str, Any]) -> str:
        who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
        if owner.get("started"):
            who += f", started {owner['started']}"
        return (f"run directory {self.path.parent} is in use by another `nmt train` ({who}); two "
                "trainings in one directory would overwrite each other's checkpoints. Wait for it to "
                "finish or stop it, or choose another --run-dir")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            # unlink while still holding the lock: a process that opened the old file sees it
            # replaced (inode check above) and retries on a fresh file
            self.path.unlink()
        except OSError:
            pass
        try:
            os.close(self.fd)
        finally:
            self.fd = None

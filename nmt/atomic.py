"""Atomic file writes: a crash (even ``kill -9``) leaves the previous complete file or the new one.

Each write goes to a temporary name in the same directory, is flushed, fsynced and renamed over the
target, and the directory is fsynced so that the rename itself survives a power cut. New files get
the permissions of any file the user creates (0666 less the umask, so usually 0644) and a replaced
file keeps its own, so a shared run directory stays readable by the team.

:func:`append_line` appends one complete record to a log such as ``metrics.jsonl``: one ``write()``
of the whole line, cut back to the previous end if it did not fit, so a full disk never leaves a
half-written line.

Nothing here writes through a symbolic link: a link planted in a run or export directory (a
``train.lock`` or ``train.log`` pointing at another file, an ``eval`` directory pointing elsewhere)
could make a command overwrite any file its user may write. :func:`refuse_link`,
:func:`open_nofollow` and :func:`safe_dir` refuse such a link with an :class:`NmtError` naming it.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from nmt.errors import NmtError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    tmp_path = _create_temporary(path)
    mode = stat.S_IMODE(os.stat(tmp_path).st_mode)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
            if stat.S_IMODE(os.fstat(handle.fileno()).st_mode) != mode:  # a writer that recreated it
                os.fchmod(handle.fileno(), mode)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        if exc.filename is None or exc.filename == str(tmp_path):  # name the file the user knows
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class LinkRefused(NmtError):
    """A file or directory a command would write is a symbolic link."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        super().__init__(f"{path} is a symbolic link; nmt does not write through links in a run or "
                         "export directory (it could point at any file). Remove the link (or put the "
                         "real file or directory there) and run again")


def refuse_link(path: str | os.PathLike) -> None:
    """Raise :class:`LinkRefused` if ``path`` is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise LinkRefused(path)


def safe_dir(path: str | os.PathLike) -> Path:
    """Create the directory ``path`` (with its parents) that a command writes into, refusing it if it
    is a symbolic link."""
    path = Path(path)
    refuse_link(path)
    path.mkdir(parents=True, exist_ok=True)
    refuse_link(path)  # planted between the check and mkdir
    return path


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that never follows a link at ``path`` (``O_NOFOLLOW``): a link is refused."""
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise LinkRefused(path) from None
        raise


def _create_temporary(path: Path) -> Path:
    """An empty new file beside ``path``, created with the mode a plain ``open()`` would give
    (``tempfile.mkstemp`` always uses 0600), or the mode of the file it will replace."""
    try:
        existing = os.stat(path)
        mode = stat.S_IMODE(existing.st_mode) if stat.S_ISREG(existing.st_mode) else None
    except OSError:
        mode = None
    for _ in range(100):
        # the writer's pid in the name: a later run can tell a dead writer's leftover
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        except FileExistsError:
            continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        except OSError:
            pass
        finally:
            os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files beside ``path`` that a writer on this machine left when it was
    killed (``kill -9``, a power cut: its pid, in the name, no longer runs); return them."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid, _, tail = name[len(prefix):-len(".tmp")].partition("-")
        if not (pid.isdigit() and len(tail) == 8) or process_alive(int(pid)):
            continue
        try:
            os.unlink(path.parent / name)
            removed.append(path.parent / name)
        except OSError:
            pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (a newline is added) as one ``write()``; on failure the file is cut back.

    A full disk (``ENOSPC``) can make a write store only part of its bytes; the part is removed
    again, so the file only ever holds complete lines. Raises the ``OSError``.
    """
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        end = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        except OSError as exc:
            try:
                os.ftruncate(fd, end)
            except OSError:
                pass
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    finally:
        os.close(fd)

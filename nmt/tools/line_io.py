"""Line-oriented input and output of ``nmt translate``: input read as bytes in chunks of
:data:`CHUNK_LINES` lines, each line bounded (:func:`line_limit`), output written atomically
(:class:`Output`), and SIGTERM unwinding like Ctrl-C (:func:`raise_on_sigterm`).

See :mod:`nmt.tools.translate` for the formats these implement.
"""
from __future__ import annotations

import math
import os
import signal
import sys
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Iterator

from nmt.errors import NmtError
from nmt.inference.sources import WarningCounter

#: lines read, translated and written at a time by ``nmt translate``
CHUNK_LINES = 10_000

#: bytes read of one input line per subword of ``decode.max_input_len`` (a sentencepiece piece
#: has at most 16 characters of at most 4 bytes); a longer line is cut, with a warning
BYTES_PER_SUBWORD = 64
#: the least a line may hold, whatever ``decode.max_input_len`` (runs of spaces or control
#: characters produce no subwords)
MIN_LINE_BYTES = 1 << 16


def line_limit(max_input_len: int) -> int:
    """Bytes read of one input line: enough for ``max_input_len`` subwords, so that memory stays
    bounded whatever the input (a file without newlines is one line)."""
    return max(BYTES_PER_SUBWORD * max_input_len, MIN_LINE_BYTES)


def iter_lines(stream: BinaryIO, name: str, warn: WarningCounter,
                limit: int = MIN_LINE_BYTES) -> Iterator[str]:
    """Decoded lines of a binary stream, split on b"\\n" only; bad UTF-8 replaced with a warning.
    At most ``limit`` bytes of a line are kept (the rest is read and dropped, with a warning)."""
    number = 0
    while True:
        raw = stream.readline(limit)
        if not raw:
            return
        number += 1
        if len(raw) == limit and not raw.endswith(b"\n"):
            dropped = 0
            while True:  # skip the rest of the line, a block at a time
                rest = stream.readline(limit)
                dropped += len(rest)
                if not rest or rest.endswith(b"\n"):
                    dropped -= rest.endswith(b"\n")
                    break
            if dropped:
                raw = _cut_at_character(raw)
                warn("an over-long line", f"{name} line {number}: {limit + dropped:,} bytes; only the "
                     f"first {len(raw):,} are read (longer input is truncated to decode.max_input_len "
                     "subwords anyway)")
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            warn("invalid UTF-8", f"{name} line {number}: not valid UTF-8 ({exc.reason} at byte "
                 f"{exc.start}); undecodable bytes replaced by U+FFFD")
            yield raw.decode("utf-8", errors="replace")


def _cut_at_character(raw: bytes) -> bytes:
    """``raw`` without a UTF-8 character cut in two at its end."""
    for back in range(1, min(4, len(raw)) + 1):
        byte = raw[-back]
        if byte < 0x80:
            return raw
        if byte >= 0xC0:  # the lead byte of the last character: is the character complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return raw if back >= need else raw[:-back]
    return raw


def _count_lines(path: str) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _stdin() -> BinaryIO:
    if sys.stdin is None:
        raise NmtError("standard input is closed; give the input file with -i FILE")
    return sys.stdin.buffer


def _open_input(path: str | None, what: str) -> BinaryIO:
    """The input stream: stdin, or any file that can be read (a regular file, a pipe such as
    /dev/stdin or a shell's <(command), a device)."""
    if path is None or path == "-":
        return _stdin()
    if os.path.isdir(path):
        raise NmtError(f"{what} {path} is a directory; give a text file")
    if not os.path.exists(path):
        raise NmtError(f"{what} {path} not found")
    try:
        return open(path, "rb")
    except OSError as exc:
        raise NmtError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def format_score(score: float) -> str:
    return f"{score:.4f}" if math.isfinite(score) else ("-inf" if score < 0 else "inf")


class Output:
    """Where the output goes: stdout; a regular file (new or existing, also behind a symlink),
    written to a temporary file beside it and renamed over it at :meth:`commit`; or any other
    existing file (a device such as /dev/null, a FIFO), opened and written directly, since
    renaming over it would replace the device or pipe with a regular file."""

    def __init__(self, path: str | None):
        self.path = path
        self.name = "standard output" if path in (None, "-") else str(path)
        self._atomic = None
        self.stdout = path in (None, "-")
        if self.stdout:
            if sys.stdout is None:
                raise NmtError("standard output is closed; give an output file with -o FILE")
            self.handle = sys.stdout.buffer
            return
        target = Path(os.path.realpath(path))  # a symlink's target is written, the link stays
        if target.is_dir():
            raise NmtError(f"output {path} is a directory; give a file name")
        try:
            if target.exists() and not target.is_file():
                self.handle = open(target, "wb")
                return
            from contextlib import ExitStack

            from nmt.atomic import atomic_path, remove_stale_temporaries

            for stale in remove_stale_temporaries(target):
                print(f"nmt: removed {stale}, the unfinished output of an interrupted run (its "
                      "process no longer runs)", file=sys.stderr)
            self._atomic = ExitStack()
            tmp = self._atomic.enter_context(atomic_path(target))
            self.handle = open(tmp, "wb")
        except OSError as exc:
            if self._atomic is not None:
                self._atomic.close()
            raise NmtError(f"cannot write the output file {path}: {exc.strerror or exc}") from None

    def _failed(self, exc: OSError) -> NmtError:
        if self.stdout:
            # what could not be written stays buffered: send it nowhere, or Python's final flush of
            # stdout fails again at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        else:
            self.abort()
        return NmtError(f"cannot write the output to {self.name}: {exc.strerror or exc}")

    def write_lines(self, lines: list[str]) -> None:
        try:
            if lines:
                self.handle.write(("\n".join(lines) + "\n").encode("utf-8", errors="replace"))
            self.handle.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def commit(self) -> None:
        if self.stdout:
            return
        try:
            self.handle.close()
            if self._atomic is not None:
                self._atomic.close()  # fsync, rename over the target
                self._atomic = None
        except OSError as exc:
            raise self._failed(exc) from None

    def abort(self) -> None:
        if not self.stdout:
            try:
                self.handle.close()
            except OSError:
                pass
        if self._atomic is not None:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes the temporary file
            self._atomic = None


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like Ctrl-C (the partial output is removed), exit 128 + 15."""


def raise_on_sigterm():
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns the previous handler
    (None when not in the main thread, where signals cannot be handled)."""

    def handler(signum, frame):
        raise Terminated(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def abandon(output: "Output | None", exc: BaseException, path: str | None) -> None:
    """A failed or stopped translation leaves no output file; a SIGTERM says so."""
    if output is not None:
        output.abort()
    if isinstance(exc, Terminated):
        print(f"nmt translate: terminated{' (no output file written)' if path else ''}", file=sys.stderr)


def close_inputs(*streams: BinaryIO | None) -> None:
    """Close the opened input files (standard input stays open; it may be closed already)."""
    stdin = getattr(sys.stdin, "buffer", None)
    for stream in streams:
        if stream is not None and stream is not stdin:
            stream.close()


def open_inputs(path: str | None, reference: str | None) -> tuple[BinaryIO, BinaryIO | None]:
    """Open the input (and reference) streams; line counts of two regular files are compared up
    front (pipes are compared while they are read)."""
    if reference and path not in (None, "-") and os.path.isfile(path) and os.path.isfile(reference):
        n_src, n_ref = _count_lines(path), _count_lines(reference)
        if n_src != n_ref:
            raise NmtError(f"--score-reference: {path} has {n_src} lines but {reference} has "
                           f"{n_ref}; the files must be line-aligned")
    src = _open_input(path, "input file")
    try:
        ref = _open_input(reference, "reference file") if reference else None
    except NmtError:
        if path not in (None, "-"):
            src.close()
        raise
    return src, ref


def read_chunk(src_lines: Iterator[str], ref_lines: Iterator[str] | None, first: int,
                input_name: str, reference: str | None) -> dict[str, list[str]] | None:
    """The next CHUNK_LINES input lines (and as many reference lines), or None at the end."""
    srcs = list(islice(src_lines, CHUNK_LINES))
    refs = None
    if ref_lines is not None:
        refs = list(islice(ref_lines, len(srcs)))
        if len(refs) < len(srcs):
            raise NmtError(f"--score-reference: {reference} has only {first + len(refs)} lines but "
                           f"{input_name} has more ({first + len(srcs)} or more); the two must be "
                           "line-aligned")
        if not srcs and next(ref_lines, None) is not None:
            raise NmtError(f"--score-reference: {input_name} has {first} lines but {reference} has "
                           "more; the two must be line-aligned")
    if not srcs:
        return None
    return {"src": srcs, "ref": refs} if refs is not None else {"src": srcs}

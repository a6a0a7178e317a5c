"""Streaming validation of local corpus files: good error messages (file, line, column), no
whole-file lists.

A TSV or JSONL file is checked here, block by block, before ``datasets`` reads it, so that a bad
line is reported with its number instead of as a parser error.
"""
from __future__ import annotations

import codecs
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from nmt.errors import DataError

logger = logging.getLogger("nmt.data.corpus")

ColumnSpec = tuple[str, Optional[str]]  #: (column name, key inside a ``translation`` dict or None)


_SCAN_CHUNK = 8 << 20  #: bytes per block of the streaming validation pass


def _utf8_error(path: Path, chunk: bytes, pos: int, first_line: int, offset: int) -> DataError:
    line = first_line + chunk.count(b"\n", 0, pos) + 1
    column = pos - (chunk.rfind(b"\n", 0, pos) + 1) + 1
    return DataError(
        f"{path}:{line}: not valid UTF-8 (byte 0x{chunk[pos]:02x} at byte offset {offset + pos} of "
        f"the file, column {column} of the line). Convert the file to UTF-8, e.g. "
        f"iconv -f latin1 -t utf-8 {path} > fixed")


def _cr_error(path: Path, line: int) -> DataError:
    return DataError(
        f"{path}:{line}: a carriage return (\\r) inside the line; readers would split the line "
        f"there. Remove stray carriage returns, e.g. tr -d '\\r' < {path} > fixed")


#: file name endings read through a decompressor (the ``csv``/``json``/``text`` builders of
#: ``datasets`` infer the same compressions from the name)
_COMPRESSED = {".gz": "gzip", ".xz": "lzma", ".bz2": "bz2"}


def open_maybe_compressed(path: Path):
    """Open a local file for binary reading, decompressing ``.gz``, ``.xz`` and ``.bz2`` files."""
    module = _COMPRESSED.get(Path(path).suffix.lower())
    if module is None:
        return open(path, "rb")
    import importlib

    return importlib.import_module(module).open(path, "rb")


def _read_lines_block(f, path: Path) -> bytes:
    """About :data:`_SCAN_CHUNK` bytes ending at a line break (or at the end of the file)."""
    import lzma

    try:
        chunk = f.read(_SCAN_CHUNK)
        if chunk and not chunk.endswith(b"\n"):
            chunk += f.readline()  # finish the last line (\n never occurs inside a UTF-8 sequence)
    except (OSError, EOFError, lzma.LZMAError) as exc:  # a truncated or corrupt compressed file
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); if it is compressed, "
                        "check that the download or copy is complete (e.g. xz -t / gzip -t)") from None
    return chunk


def _scan_blocks(path: Path) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Stream a file in blocks of whole lines; check UTF-8 and stray carriage returns.

    Compressed files (:data:`_COMPRESSED`) are checked on their decompressed bytes.
    Yields ``(lines before the block, line starts, line ends, bytes as uint8 array)`` per block;
    a line runs from start to end (exclusive), without its ``\\n`` / ``\\r\\n`` and without a
    leading byte-order mark. Vectorised with numpy: no per-line Python work, memory bounded by
    the block size.
    """
    lines_before = offset = 0
    with open_maybe_compressed(path) as f:
        while True:
            chunk = _read_lines_block(f, path)
            if not chunk:
                return
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _utf8_error(path, chunk, exc.start, lines_before, offset) from None
            data = np.frombuffer(chunk, dtype=np.uint8)
            ends = np.flatnonzero(data == 10)
            if not chunk.endswith(b"\n"):
                ends = np.append(ends, len(chunk))
            starts = np.empty_like(ends)
            starts[0] = 3 if offset == 0 and chunk.startswith(codecs.BOM_UTF8) else 0
            starts[1:] = ends[:-1] + 1
            crlf = (ends > starts) & (data[np.maximum(ends - 1, 0)] == 13)
            ends = ends - crlf
            cr = np.flatnonzero(data == 13)
            if len(cr):
                per_line = np.searchsorted(cr, ends) - np.searchsorted(cr, starts)
                if per_line.any():
                    raise _cr_error(path, lines_before + int(np.argmax(per_line > 0)) + 1)
            yield lines_before, starts, ends, data
            lines_before += len(ends)
            offset += len(chunk)


def _iter_raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, line without line break) after the checks of :func:`_scan_blocks`."""
    for lines_before, starts, ends, data in _scan_blocks(path):
        raw = data.tobytes()
        for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            yield lines_before + i + 1, raw[a:b]


def check_tsv(path: Path, columns: Iterable[int], columns_key: str = "data.columns") -> int:
    """Stream through a TSV file; return its number of columns or raise :class:`DataError`.

    Checks UTF-8, stray carriage returns, that every non-blank line has the same number of tab-
    separated columns and that the recipe's column indices exist. Blank lines are skipped (as the
    reader does).
    """
    needed = max(columns) + 1
    ncols = first = None
    blank = 0
    for lines_before, starts, ends, data in _scan_blocks(path):
        tabs = np.flatnonzero(data == 9)
        counts = np.searchsorted(tabs, ends) - np.searchsorted(tabs, starts) + 1
        nonblank = ends > starts
        blank += int((~nonblank).sum())
        if ncols is None and nonblank.any():
            i = int(np.argmax(nonblank))
            ncols, first = int(counts[i]), lines_before + i + 1
            if ncols < needed:
                raise DataError(
                    f"{path}:{first}: {columns_key} asks for column index {needed - 1} (0-based) but "
                    f"the file has only {ncols} tab-separated column(s) (found on line {first}). Fix "
                    f"{columns_key} (e.g. {{src: 1, tgt: 0}} for English<TAB>French) or the file.")
        if ncols is not None:
            bad = nonblank & (counts != ncols)
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(
                    f"{path}:{lines_before + i + 1}: found {int(counts[i])} tab-separated column(s), "
                    f"but line {first} has {ncols} and {columns_key} needs at least {needed}. Every "
                    "line must have the same number of columns: check for a missing or extra tab on "
                    "that line.")
    if blank:
        logger.info("%s: skipped %d blank line(s)", path, blank)
    return ncols or 0


def count_lines(path: Path) -> int:
    """Count lines (streaming), checking UTF-8 and stray carriage returns."""
    return sum(len(ends) for _, _, ends, _ in _scan_blocks(path))


def check_jsonl(path: Path, specs: dict[str, ColumnSpec], columns_key: str = "data.columns") -> int:
    """Stream through a JSON-lines file: valid JSON objects holding the recipe's fields."""
    n = 0
    for lineno, line in _iter_raw_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}). "
                            "Each line must be one JSON object.") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        for role, (name, sub) in specs.items():
            value = obj.get(name)
            if name not in obj or (sub is not None and not (isinstance(value, dict) and sub in value)):
                where = f"{name}.{sub}" if sub else name
                raise DataError(
                    f"{path}:{lineno}: no field {where!r} for the {role} side ({columns_key}.{role}); "
                    f"fields on this line: {', '.join(sorted(obj)) or 'none'}")
        n += 1
    return n

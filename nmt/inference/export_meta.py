"""``export.json``, checked before anything it names is opened.

An export directory is copied between machines and edited by hand; its description must not make
the ONNX engine fail with a traceback, open a file outside the directory, or decode with graphs or
tokenizer models from another export (a smaller vocabulary fails inside onnxruntime, a larger one
translates into garbage). :func:`check_meta` checks every field's type, and that the files it names
are plain names inside the directory (not absolute, no ``..``, no link leading out);
:func:`check_fingerprints` compares the files with the sha256 ``nmt export`` recorded of them.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from nmt.errors import CheckpointError

__all__ = ["check_meta", "check_fingerprints", "file_sha256", "FILE_KEYS"]

REEXPORT = "re-export the run with `nmt export RUN_DIR -o EXPORT_DIR`"

#: the keys that name a file of the export directory
FILE_KEYS = ("encoder", "decoder_step", "decoder_step_shortlist", "src_tokenizer", "tgt_tokenizer", "lexicon",
             "names")

#: key -> (what it must be, check)
_TYPES: dict[str, tuple[str, Any]] = {
    "state": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "memory": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "positions": ("true or false", lambda v: isinstance(v, bool)),
    "recipe": ("a mapping", lambda v: isinstance(v, dict)),
    "src_vocab_size": ("a positive integer", lambda v: _positive_int(v)),
    "tgt_vocab_size": ("a positive integer", lambda v: _positive_int(v)),
    "opset": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "sha256": ("a mapping of file names to sha256 digests",
               lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str)
                                                     for k, x in v.items())),
}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_meta(meta: dict[str, Any], path: Path) -> None:
    """Every field of ``meta`` (read from ``path``) that the engine reads has its type, and the
    files it names stay inside ``path``'s directory; raises :class:`CheckpointError`."""
    root = path.parent
    problems = []
    for key, (what, ok) in _TYPES.items():
        if key in meta and not (key in ("positions", "opset", "sha256") and meta[key] is None) \
                and not ok(meta[key]):
            problems.append(f"{key} must be {what}, not {meta[key]!r}")
    for key in FILE_KEYS:
        if key in meta and not (key in ("lexicon", "decoder_step_shortlist") and meta[key] is None):
            problem = _file_problem(root, meta[key])
            if problem:
                problems.append(f"{key}: {problem}")
    if problems:
        raise CheckpointError(f"{path} is not a valid export description: {'; '.join(problems)}; "
                              f"{REEXPORT}")


def _file_problem(root: Path, name: Any) -> str | None:
    """Why ``name`` cannot be a file of the export directory ``root`` (None: it can)."""
    if not isinstance(name, str) or not name:
        return f"must be a file name, not {name!r}"
    if os.path.isabs(name) or "/" in name or "\\" in name or name in (".", ".."):
        return f"{name!r} is not a plain file name in the export directory (absolute paths, '..' and " \
               "sub-directories are refused)"
    target = root / name
    if target.is_symlink():
        try:
            target.resolve(strict=True).relative_to(root.resolve())
        except (OSError, ValueError):
            return f"{target} is a symbolic link leading out of the export directory"
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_fingerprints(meta: dict[str, Any], root: Path) -> None:
    """The files the export recorded a sha256 of are the files it wrote (an export written before
    fingerprints were recorded has none to compare)."""
    recorded = meta.get("sha256") or {}
    for key in FILE_KEYS:
        name = meta.get(key)
        if not isinstance(name, str) or name not in recorded:
            continue
        if file_sha256(root / name) != recorded[name]:
            raise CheckpointError(
                f"{root / name} is not the file this export was written with (its sha256 differs from "
                f"the one export.json records): was it copied from another export or run? Copy the whole "
                f"export directory again, or {REEXPORT}")

"""The cleaned splits of a TSV corpus, kept on disk as the only copy of it.

Reading a TSV goes through three Arrow tables: the file as ``datasets`` reads it, the cleaned
pairs with their hash buckets, and each split. ``datasets`` would keep all of them in its cache
(about three times the size of the file) so that a later run finds each step by its fingerprint.
Here only the final splits are kept, in ``<data.cache_dir or the datasets cache>/nmt-splits/KEY/``,
one Arrow file per split, and the tables before them are deleted once the splits are written. KEY
is the sha256 of the corpus file (path, size, modification time) and of the settings that decide
which cleaned pairs a split holds; a later run with the same key maps the files without reading
the TSV. Any other change makes a new entry; an old one stays until its folder is deleted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

from nmt.config import DataConfig

logger = logging.getLogger("nmt.data.corpus")

#: bumped whenever cleaning or splitting changes what a split holds
SPLITS_VERSION = "splits-v1"
_DONE = "nmt-splits.json"


def splits_root(cfg: DataConfig) -> Path:
    """``<data.cache_dir>/nmt-splits``, else the same folder in the ``datasets`` cache."""
    import datasets

    return Path(cfg.cache_dir or datasets.config.HF_DATASETS_CACHE).expanduser() / "nmt-splits"


def entry_key(cfg: DataConfig, files: Sequence[Path], split: Optional[str]) -> str:
    """The name of the entry of ``files`` read with ``cfg`` (``split``: the split a file holds;
    None for one file that is split deterministically)."""
    identity: dict[str, Any] = {
        "files": [{"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
                  for p in files],
        "columns": dict(cfg.columns), "normalize": cfg.filter.normalize, "split": split,
        "version": SPLITS_VERSION}
    if split is None:
        identity.update(split_permille=dict(cfg.split_permille), split_salt=cfg.split_salt)
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load(root: Path, key: str, splits: Sequence[str]) -> Optional[dict[str, Any]]:
    """The splits of a complete entry, mapped from their Arrow files, or None."""
    import datasets

    entry = root / key
    try:
        done = json.loads((entry / _DONE).read_text())
    except (OSError, ValueError):
        return None
    if done.get("version") != SPLITS_VERSION or not set(splits) <= set(done.get("splits", [])):
        return None
    return {s: datasets.Dataset.from_file(str(entry / f"{s}.arrow")) for s in splits}


def staging(root: Path, key: str) -> Path:
    """A new folder to write an entry's Arrow files into before :func:`commit` names it."""
    tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, root: Path, key: str, splits: Sequence[str]) -> dict[str, Any]:
    """Name the staged entry ``key`` (atomically) and return its splits mapped from there."""
    (tmp / _DONE).write_text(json.dumps({"version": SPLITS_VERSION, "splits": list(splits)}) + "\n")
    shutil.rmtree(root / key, ignore_errors=True)  # an incomplete entry of that name
    try:
        os.rename(tmp, root / key)
    except OSError:  # another process committed the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
    out = load(root, key, splits)
    assert out is not None, root / key
    return out


def drop_intermediates(*datasets_: Any) -> None:
    """Delete the ``datasets`` cache folders that hold these datasets' Arrow files (the TSV as
    read and the cleaned table): the committed splits are all that later runs read."""
    folders = {Path(f["filename"]).parent for ds in datasets_ for f in ds.cache_files}
    for folder in folders:
        if (folder / "dataset_info.json").is_file():  # a builder's folder, never anything else
            shutil.rmtree(folder, ignore_errors=True)
            logger.debug("removed the intermediate tables in %s", folder)


def _read_cleaned(cfg: DataConfig, path: Path, with_bucket: bool):
    """The TSV ``path`` as ``datasets`` reads it and cleaned (``num_proc`` processes for a long
    file, like encoding); both tables are intermediates."""
    from nmt.data import corpus as C
    from nmt.data.encoded_cache import AUTO_PARALLEL_ROWS, auto_num_proc

    specs = C._specs(cfg, "index")
    names = C._tsv_names(path, [int(name[1:]) for name, _ in specs.values()])
    raw = C._read_tsv(str(path), names, cfg.cache_dir)
    # starting processes costs more than cleaning a short file
    num_proc = (cfg.num_proc or auto_num_proc(len(raw))) if len(raw) >= AUTO_PARALLEL_ROWS else 1
    return raw, C._clean(raw, specs, cfg, with_bucket, str(path), num_proc=num_proc)


def _written(cfg: DataConfig, key: str, splits: Sequence[str], path: Path, write) -> dict[str, Any]:
    """The entry ``key`` of ``splits``: loaded, or written by ``write(folder)`` (which returns
    the intermediate datasets, deleted afterwards)."""
    root = splits_root(cfg)
    found = load(root, key, splits)
    if found is not None:
        logger.info("%s: read from %s", path, root / key)
        return found
    tmp = staging(root, key)
    try:
        intermediates = write(tmp)
        out = commit(tmp, root, key, splits)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    drop_intermediates(*intermediates)
    return out


def one_file_splits(cfg: DataConfig, path: Path, splits: Sequence[str]) -> dict[str, Any]:
    """``splits`` of one TSV file, split deterministically by hash bucket (all three are kept)."""
    from nmt.data.corpus import SPLITS, _bucket_range, keep_rows

    def write(folder: Path):
        raw, cleaned = _read_cleaned(cfg, path, with_bucket=True)
        for split in SPLITS:
            lo, hi = _bucket_range(split, cfg.split_permille)
            keep_rows(cleaned, "bucket", f"splitting off {split}", drop=["_bucket"], lo=lo, hi=hi,
                      cache_file_name=str(folder / f"{split}.arrow"))
        logger.info("%s: %d pairs split deterministically by target sentence", path, len(cleaned))
        return raw, cleaned

    parts = _written(cfg, entry_key(cfg, [path], None), SPLITS, path, write)
    return {s: parts[s] for s in splits}


def split_file(cfg: DataConfig, path: Path, split: str):
    """The cleaned pairs of the TSV ``path`` that holds ``split``."""
    from nmt.data.corpus import keep_rows

    def write(folder: Path):
        raw, cleaned = _read_cleaned(cfg, path, with_bucket=False)
        keep_rows(cleaned, "all", f"writing {split}", cache_file_name=str(folder / f"{split}.arrow"))
        return raw, cleaned

    return _written(cfg, entry_key(cfg, [path], split), [split], path, write)[split]

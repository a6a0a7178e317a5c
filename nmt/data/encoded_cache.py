"""The cache of encoded splits: a corpus tokenised once, memory-mapped by every later run.

Encoding (sentencepiece over every pair, then the length filters) is the slowest step before
training on a large corpus. Its result, the Arrow table of :func:`nmt.data.batching.encode_dataset`,
is stored once per corpus, tokenizer and filter under :func:`cache_root` and read back memory-mapped
(``datasets.load_from_disk``): a second ``nmt train`` of the same corpus with the same tokenizer
models skips encoding, and the token ids of the training batches are read from the mapped files,
so memory does not grow with the corpus.

An entry's name is a sha256 (:func:`entry_key`) of

- the corpus files' identity: each file's absolute path, size and modification time (a hub
  dataset or a URL: the fingerprint ``datasets`` gives the download);
- the data section of the recipe that decides which pairs a split holds (format, columns,
  languages, splits, split salt and permille, ``max_train_pairs``, Unicode normalisation);
- the sha256 of the two sentencepiece models;
- the length filter (``data.filter`` ``min_len``, ``max_len``, ``max_ratio``) and the split name.

Any change gives a new entry; none gives a stale one. The cache is bounded: after an entry is
written, the least recently used entries are deleted until the cache holds at most
``NMT_ENCODED_CACHE_GB`` GB (default :data:`DEFAULT_MAX_GB`); ``NMT_ENCODED_CACHE_GB=0`` turns the
cache off (splits are then encoded by every run, into the ``datasets`` cache). Entries are written
to a temporary directory and renamed, so processes encoding the same corpus at the same time (the
processes of one node in a multi-node run) never see half an entry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

from nmt.config import DataConfig

logger = logging.getLogger("nmt.data.corpus")

#: bumped whenever the encoded layout or the encoding rules change
ENCODE_VERSION = "encoded-v1"
DEFAULT_MAX_GB = 20.0
_MANIFEST = "nmt-encoded.json"
#: recipe keys of ``data`` that do not change which pairs a split holds
_NOT_CONTENT = ("cache_dir", "num_proc", "lexicon_sample", "check_languages")
#: splits at least this long are encoded by several processes when ``data.num_proc`` is null
AUTO_PARALLEL_ROWS = 100_000
_AUTO_MAX_PROC = 8


def cache_root() -> Path:
    """``$NMT_CACHE_DIR/encoded``, else ``$XDG_CACHE_HOME/nmt/encoded``, else ``~/.cache/nmt/encoded``."""
    root = os.environ.get("NMT_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nmt")
    return Path(root) / "encoded"


def max_bytes() -> int:
    """The cache's size limit in bytes (``NMT_ENCODED_CACHE_GB``; 0: no cache)."""
    raw = os.environ.get("NMT_ENCODED_CACHE_GB", "")
    try:
        gb = float(raw) if raw.strip() else DEFAULT_MAX_GB
    except ValueError:
        logger.warning("NMT_ENCODED_CACHE_GB=%r is not a number; using %g", raw, DEFAULT_MAX_GB)
        gb = DEFAULT_MAX_GB
    return max(0, int(gb * 1e9))


def auto_num_proc(rows: int, local_processes: int = 1) -> int:
    """Processes for encoding ``rows`` pairs when ``data.num_proc`` is null: 1 for a small split
    (starting processes costs more than it saves), else this process's share of the CPUs it may
    use (at most 8)."""
    if rows < AUTO_PARALLEL_ROWS:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(_AUTO_MAX_PROC, cpus // max(1, local_processes)))


# ---------------------------------------------------------------------------------- identity


def _file_identity(path: Path) -> Optional[dict[str, Any]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def corpus_files(cfg: DataConfig) -> list[Path]:
    """The local files a corpus is read from (empty for ``hub`` and ``url``)."""
    from nmt.data.corpus import SPLITS, existing_variant

    if cfg.format not in ("tsv", "text", "jsonl") or not cfg.path:
        return []
    root = Path(cfg.path).expanduser()
    if cfg.format == "text":
        prefix = [Path(f"{root}.{lang}") for lang in (cfg.src_lang, cfg.tgt_lang)]
        if not root.is_dir() and prefix[0].is_file():
            return prefix
        return [root / f"{split}.{lang}" for split in SPLITS for lang in (cfg.src_lang, cfg.tgt_lang)]
    if root.is_file():
        return [root]
    return [existing_variant(root / cfg.splits[split]) for split in SPLITS if split in cfg.splits]


def corpus_identity(cfg: DataConfig, ds=None) -> Optional[dict[str, Any]]:
    """What identifies the pairs of a corpus: its files (or ``ds``'s ``datasets`` fingerprint for a
    hub dataset or a URL) and the data settings that select and clean them. None when unknown
    (then nothing is cached)."""
    content = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_CONTENT}
    files = corpus_files(cfg)
    if files:
        identities = [_file_identity(path) for path in files]
        return {"data": content, "files": [i for i in identities if i is not None]}
    fingerprint = getattr(ds, "_fingerprint", None)
    return None if fingerprint is None else {"data": content, "datasets_fingerprint": fingerprint}


def entry_key(identity: dict[str, Any], tokenizer_sha256: dict[str, str], split: str,
              settings: dict[str, Any]) -> str:
    """The name of a cache entry: sha256 of everything the encoded split depends on."""
    blob = json.dumps({"corpus": identity, "tokenizers": tokenizer_sha256, "split": split,
                       "settings": settings, "version": ENCODE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------- the entries


def load_entry(key: str, input_rows: int, root: Optional[Path] = None):
    """The cached encoded split ``key`` (memory-mapped), or None. An entry made from another number
    of input pairs (a corpus file replaced within its modification time) is ignored."""
    import datasets

    entry = (root or cache_root()) / key
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("input_rows") != input_rows or manifest.get("version") != ENCODE_VERSION:
        return None
    try:
        ds = datasets.load_from_disk(str(entry))
    except Exception as exc:  # a damaged entry: encode again (and replace it)
        logger.warning("%s: unreadable encoded cache entry (%s); encoding again", entry, exc)
        return None
    os.utime(entry / _MANIFEST)  # least recently used goes first when the cache is full
    return ds


def store_entry(ds, key: str, input_rows: int, root: Optional[Path] = None, describe: str = ""):
    """Write ``ds`` as entry ``key`` (atomically), prune the cache, return the entry memory-mapped."""
    import datasets

    from nmt.data.corpus import quiet_datasets

    root = root or cache_root()
    entry = root / key
    tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True, exist_ok=True)
    with quiet_datasets():
        ds.save_to_disk(str(tmp))
    manifest = {"version": ENCODE_VERSION, "input_rows": input_rows, "rows": len(ds),
                "what": describe, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if entry.exists() and load_entry(key, input_rows, root) is None:
        shutil.rmtree(entry, ignore_errors=True)  # a damaged or outdated entry of the same name
    try:
        os.rename(tmp, entry)
    except OSError:  # another process stored the same entry first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    prune(root, max_bytes(), keep=key)
    return datasets.load_from_disk(str(entry))


def file_entry_key(kind: str, identity: dict[str, Any]) -> str:
    """The name of a cache entry of files (``kind``: ``spm``, ``lexicon``): ``kind-`` + sha256."""
    blob = json.dumps({"kind": kind, "identity": identity, "version": ENCODE_VERSION}, sort_keys=True,
                      default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def load_files(key: str, names: Sequence[str], root: Optional[Path] = None) -> Optional[dict[str, bytes]]:
    """The files ``names`` of the cache entry ``key`` (written by :func:`store_files`), or None
    (no entry, an incomplete one, or the cache is off)."""
    if max_bytes() == 0:
        return None
    entry = (root or cache_root()) / key
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        if manifest.get("version") != ENCODE_VERSION:
            return None
        files = {name: (entry / name).read_bytes() for name in names}
    except (OSError, ValueError):
        return None
    if any(hashlib.sha256(data).hexdigest() != manifest.get("sha256", {}).get(name)
           for name, data in files.items()):
        logger.warning("%s: damaged cache entry (a file does not match its sha256); building again", entry)
        return None
    os.utime(entry / _MANIFEST)  # least recently used goes first when the cache is full
    return files


def store_files(key: str, files: dict[str, bytes], rows: int, describe: str = "",
                root: Optional[Path] = None) -> None:
    """Keep ``files`` as the cache entry ``key`` (atomically) and prune the cache; a cache that
    cannot be written is only logged (the run goes on without it)."""
    root = root or cache_root()
    limit = max_bytes()
    if limit == 0:
        return
    tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        manifest = {"version": ENCODE_VERSION, "rows": rows, "what": describe,
                    "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.rmtree(root / key, ignore_errors=True)  # an outdated or damaged entry of that name
        os.rename(tmp, root / key)
    except OSError as exc:  # read-only, full, or another process stored the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / key).is_dir():
            logger.warning("cache %s cannot be written (%s); going on without it", root, exc)
        return
    prune(root, limit, keep=key)


def _size(path: Path) -> int:
    total = 0
    for f in path.rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except OSError:  # deleted meanwhile by another process pruning the cache
            pass
    return total


def cache_size(root: Optional[Path] = None) -> int:
    """Bytes held by the cache."""
    root = root or cache_root()
    return _size(root) if root.is_dir() else 0


def prune(root: Path, limit: int, keep: str = "") -> list[str]:
    """Delete the least recently used entries (never ``keep``) until the cache holds at most
    ``limit`` bytes; also leftovers of interrupted writes older than a day. Returns the deleted names."""
    entries, removed = [], []
    for path in root.iterdir() if root.is_dir() else []:
        if path.name.startswith(".tmp-"):
            if time.time() - path.stat().st_mtime > 86400:
                shutil.rmtree(path, ignore_errors=True)
            continue
        manifest = path / _MANIFEST
        used = manifest.stat().st_mtime if manifest.is_file() else 0.0
        entries.append((used, path.name, _size(path)))
    total = sum(size for _, _, size in entries)
    for _, name, size in sorted(entries):
        if total <= limit:
            break
        if name == keep:
            continue
        shutil.rmtree(root / name, ignore_errors=True)
        total -= size
        removed.append(name)
    if removed:
        logger.info("encoded cache %s: deleted %d least recently used entr%s to stay under %.1f GB",
                    root, len(removed), "y" if len(removed) == 1 else "ies", limit / 1e9)
    return removed


def describe(root: Optional[Path] = None) -> str:
    """What ``nmt cache`` prints: the directory, its limit and its entries, last used first."""
    root = root or cache_root()
    limit = max_bytes()
    lines = [f"encoded cache: {root} (limit NMT_ENCODED_CACHE_GB={limit / 1e9:g}"
             f"{': off' if limit == 0 else ''})"]
    rows = []
    for entry in root.iterdir() if root.is_dir() else []:
        try:
            manifest = json.loads((entry / _MANIFEST).read_text())
            used = (entry / _MANIFEST).stat().st_mtime
        except (OSError, ValueError):
            continue
        rows.append((used, f"  {entry.name}  {_size(entry) / 1e6:9.1f} MB  {manifest.get('rows', '?'):>10} pairs  "
                           f"last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(used))}  "
                           f"{manifest.get('what', '')}"))
    lines += [text for _, text in sorted(rows, reverse=True)]
    lines.append(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, {cache_size(root) / 1e6:.1f} MB; "
                 "nmt cache --clear deletes them")
    return "\n".join(lines)


def clear(root: Optional[Path] = None) -> int:
    """Delete every entry; return the bytes freed."""
    root = root or cache_root()
    freed = cache_size(root)
    shutil.rmtree(root, ignore_errors=True)
    return freed


# ---------------------------------------------------------------------------------- encoding


def encode_split(ds, tokenizers, cfg: DataConfig, split: str, filtered: bool,
                 local_processes: int = 1, keep_text: bool = False):
    """``ds`` (a cleaned split of the corpus ``cfg``) encoded by
    :func:`~nmt.data.batching.encode_dataset`, with ``data.filter``'s length filters when
    ``filtered`` (and the text columns kept beside the ids when ``keep_text``), read from the cache
    when an earlier run encoded it, else encoded by ``data.num_proc`` processes (null:
    :func:`auto_num_proc`) and stored there."""
    from nmt.data.batching import encode_dataset

    f = cfg.filter
    limits = {"max_len": f.max_len, "max_ratio": f.max_ratio, "min_len": f.min_len} if filtered else {}
    if keep_text:  # other columns: another entry (a key without it stays what it was)
        limits["keep_text"] = True
    num_proc = cfg.num_proc or auto_num_proc(len(ds), local_processes)
    identity = corpus_identity(cfg, ds)
    if identity is None or max_bytes() == 0:
        return encode_dataset(ds, tokenizers, num_proc=num_proc, desc=split, **limits)
    key = entry_key(identity, tokenizers.file_hashes, split, limits)
    cached = load_entry(key, len(ds))
    if cached is not None:
        logger.info("%s: %d encoded pairs read from the cache %s (encoding skipped)", split,
                    len(cached), cache_root() / key)
        return cached
    started = time.time()
    work = cache_root() / f".tmp-work-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        work.mkdir(parents=True)
    except OSError as exc:  # e.g. a read-only home directory: encode without keeping the result
        logger.warning("encoded cache %s cannot be written (%s); encoding without it (set "
                       "NMT_CACHE_DIR to a writable directory)", cache_root(), exc)
        return encode_dataset(ds, tokenizers, num_proc=num_proc, desc=split, **limits)
    try:
        encoded = encode_dataset(ds, tokenizers, num_proc=num_proc, desc=split, cache_dir=str(work),
                                 **limits)
        stored = store_entry(encoded, key, len(ds), describe=f"{split} of {cfg.path or cfg.hub_id or cfg.url}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("%s: %d pairs encoded (%d kept) in %.1f s by %d process(es), cached in %s (%.1f MB)",
                split, len(ds), len(stored), time.time() - started, num_proc, cache_root() / key,
                _size(cache_root() / key) / 1e6)
    return stored

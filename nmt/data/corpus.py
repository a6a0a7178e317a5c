"""Parallel corpora: every source goes through HuggingFace ``datasets``.

:func:`load_corpus` turns a :class:`~nmt.config.DataConfig` into one ``datasets.Dataset`` per split,
each with two string columns, ``src`` and ``tgt``, cleaned as translation cleans its input
(:func:`nmt.data.text.clean_text`: control characters, Unicode normalisation
``data.filter.normalize``, surrounding whitespace). The datasets are memory-mapped Arrow tables in the ``datasets`` cache
(``data.cache_dir`` or ``HF_DATASETS_CACHE``), and every transformation is a batched ``.map`` /
``.filter`` that writes Arrow again, so a corpus larger than RAM works: nothing here builds a Python
list of the whole corpus.

Formats (``data.format``):

``tsv``
    ``data.path`` is a directory holding one file per split (``data.splits``), or a single file
    (then split deterministically, see below). ``data.columns`` are 0-based column indices. Files
    are read by the ``csv`` builder with a tab delimiter, ``quoting=QUOTE_NONE`` (quotes are text),
    no header, no NA detection (``NA``/``null``/``nan`` stay strings) and all-string features.
    Files may be compressed (``.gz``, ``.xz``, ``.bz2``; e.g. ``data.splits.train: train.tsv.xz``),
    as the Tatoeba corpus shipped in ``data/tatoeba-fra-eng`` is. A split file named in
    ``data.splits`` that does not exist is looked for decompressed (``train.tsv``) or compressed
    (``train.tsv.gz``, ...) as well, so that one recipe reads either form of a corpus.
``text``
    ``{path}/{split}.{src_lang}`` and ``{path}/{split}.{tgt_lang}``, one sentence per line (the
    ``text`` builder). If ``data.path`` is a prefix such that ``{path}.{src_lang}`` exists, that one
    pair of files is split deterministically.
``jsonl``
    One JSON object per line; ``data.columns`` are field names; ``translation`` means the nested
    ``{"translation": {src_lang: ..., tgt_lang: ...}}`` layout. Directory + ``data.splits``, or
    one file (split deterministically).
``hub``
    ``load_dataset(hub_id, hub_config)``. Our split ``valid`` is looked up as the Hub split named in
    ``data.splits`` if the Hub has it, else ``valid``, ``validation`` or ``dev``. If the Hub dataset
    only has ``train``, valid/test are carved off deterministically. Needs the network (or the
    ``datasets`` cache); not exercised by the offline tests.
``url``
    A remote TSV (``data.url``; ``zip://member::https://...`` reaches inside an archive) read by the
    ``csv`` builder (same options as ``tsv``), downloaded and cached by ``datasets``; always split
    deterministically. Local paths work too (this is how the tests exercise it).

Deterministic split of an unsplit corpus: ``bucket = int(sha256(split_salt + tgt.lower()), 16) %
1000`` (on the cleaned target sentence); ``test`` = ``bucket < split_permille["test"]``, ``valid``
= the next ``split_permille["valid"]`` buckets, ``train`` = the rest. Pairs are thus grouped by
target sentence: one sentence never lands in two splits. With the fr-en recipe's salt this
reproduces the splits of the Tatoeba copy in data/tatoeba-fra-eng (grouped by English = the target side).

Cleaning: valid/test are only normalised; training pairs with an empty side are dropped (the
subword length filters of ``data.filter`` need the tokenizer and live in
:func:`nmt.data.batching.encode_dataset`). ``max_train_pairs`` keeps the first N remaining training pairs.
What is dropped is logged on the ``nmt.data.corpus`` logger.

Local files are checked by a fast streaming pass before ``datasets`` reads them, so that a bad line
is reported as ``file:line: problem. fix`` (:class:`~nmt.errors.DataError`) rather than as a parser
traceback; reading local files never touches the network (``datasets`` runs in offline mode for them).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from nmt.config import DataConfig
from nmt.data.line_check import (  # noqa: F401  (public here since before)
    _COMPRESSED, check_jsonl, check_tsv, count_lines, open_maybe_compressed)
from nmt.data.text import clean_texts
from nmt.errors import ConfigError, DataError

logger = logging.getLogger("nmt.data.corpus")

SPLITS = ("train", "valid", "test")
_TSV_FIX_HINT = ("The fr-en recipes read the copy shipped in the repository (data/tatoeba-fra-eng); "
                 "NMT_TATOEBA_DIR replaces it by a directory holding the files named in data.splits.")
_MAP_BATCH = 10_000  #: rows per batched ``.map`` call

ColumnSpec = tuple[str, Optional[str]]  #: (column name, key inside a ``translation`` dict or None)


# --------------------------------------------------------------------------------------------------
# Deterministic splits
# --------------------------------------------------------------------------------------------------


def split_bucket(tgt: str, salt: str) -> int:
    """The hash bucket (0..999) of a pair, from its target sentence: the SHA-256 of the salted,
    lower-cased target as a big-endian number, modulo 1000."""
    return int.from_bytes(hashlib.sha256((salt + tgt.lower()).encode("utf-8")).digest(), "big") % 1000


def split_buckets(tgts: Iterable[str], salt: str) -> list[int]:
    """:func:`split_bucket` of each target sentence (one loop, no call per sentence)."""
    sha256, from_bytes = hashlib.sha256, int.from_bytes
    return [from_bytes(sha256((salt + tgt.lower()).encode("utf-8")).digest(), "big") % 1000
            for tgt in tgts]


def split_of_bucket(bucket: int, permille: dict[str, int]) -> str:
    """``test`` for the first ``permille['test']`` buckets, then ``valid``, else ``train``."""
    n_test = permille.get("test", 0)
    if bucket < n_test:
        return "test"
    if bucket < n_test + permille.get("valid", 0):
        return "valid"
    return "train"


def _bucket_range(split: str, permille: dict[str, int]) -> tuple[int, int]:
    n_test, n_valid = permille.get("test", 0), permille.get("valid", 0)
    return {"test": (0, n_test), "valid": (n_test, n_test + n_valid),
            "train": (n_test + n_valid, 1000)}[split]


# --------------------------------------------------------------------------------------------------
# datasets plumbing
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_datasets(verbose: bool = False) -> Iterator[None]:
    """Silence ``datasets`` progress bars and info logs inside the block (unless ``verbose``)."""
    import datasets

    if verbose:
        yield
        return
    bars_were_off = datasets.are_progress_bars_disabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(level)


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Run ``datasets`` in offline mode (as with ``HF_DATASETS_OFFLINE=1``) for local files."""
    import datasets

    if not enabled:
        yield
        return
    before = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = before


def _string_features(names: Sequence[str]):
    import datasets

    return datasets.Features({name: datasets.Value("string") for name in names})


def _read_tsv(files: Union[str, list[str]], names: list[str], cache_dir: Optional[str]):
    """One local TSV file (or several, concatenated) -> Dataset with string columns ``names``."""
    import datasets

    try:
        return datasets.load_dataset(
            "csv", data_files={"train": files}, split="train", cache_dir=cache_dir,
            delimiter="\t", quoting=csv.QUOTE_NONE, header=None, column_names=names,
            keep_default_na=False, na_filter=False, features=_string_features(names),
        )
    except Exception as exc:  # a parser error the validation pass did not foresee
        raise DataError(f"{files}: could not be read as a tab-separated file: {_root_cause(exc)}") from exc


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------------
# Column selection and cleaning
# --------------------------------------------------------------------------------------------------


def _specs(cfg: DataConfig, kind: str) -> dict[str, ColumnSpec]:
    """Where ``src``/``tgt`` live: column names (``kind='name'``) or TSV indices (``kind='index'``)."""
    specs: dict[str, ColumnSpec] = {}
    for role in ("src", "tgt"):
        if role not in cfg.columns:
            raise ConfigError(f"data.columns.{role}: missing (which column holds the {role} side?)")
        col = cfg.columns[role]
        lang = cfg.src_lang if role == "src" else cfg.tgt_lang
        if kind == "index":
            if isinstance(col, str) and col.isdigit():
                col = int(col)
            if isinstance(col, bool) or not isinstance(col, int) or col < 0:
                raise ConfigError(f"data.columns.{role}: got {col!r}; format {cfg.format!r} needs a "
                                  "0-based column index (e.g. {src: 1, tgt: 0})")
            specs[role] = (f"c{col}", None)
        else:
            if not isinstance(col, str):
                raise ConfigError(f"data.columns.{role}: got {col!r}; format {cfg.format!r} needs a "
                                  "field name (or 'translation')")
            specs[role] = (col, lang) if col == "translation" else (col, None)
    return specs


def _clean_table(table, specs: dict[str, ColumnSpec], form: str, salt: Optional[str]):
    """Cleaning of one Arrow batch: pick the columns, clean every sentence with
    :func:`~nmt.data.text.clean_text` (the cleaning translation applies to its input: control
    characters, Unicode normalisation, surrounding whitespace), hash buckets."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    for role, (name, sub) in specs.items():
        col = table.column(name)
        if sub is not None:
            col = pc.struct_field(col, sub)
        if not pa.types.is_string(col.type):
            col = pc.cast(col, pa.string())
        texts = pc.fill_null(col, "").to_pylist()
        out[role] = pa.array(clean_texts(texts, form), type=pa.string())
    if salt is not None:
        buckets = split_buckets(out["tgt"].to_pylist(), salt)
        out["_bucket"] = pa.array(buckets, type=pa.int16())
    return pa.table(out)


def _clean(ds, specs: dict[str, ColumnSpec], cfg: DataConfig, with_bucket: bool, desc: str,
           num_proc: Optional[int] = None):
    import datasets

    features = {"src": datasets.Value("string"), "tgt": datasets.Value("string")}
    if with_bucket:
        features["_bucket"] = datasets.Value("int16")
    missing = sorted({name for name, _ in specs.values()} - set(ds.column_names))
    if missing:
        raise DataError(f"{desc}: no column(s) {', '.join(map(repr, missing))} (data.columns); "
                        f"available: {', '.join(ds.column_names)}")
    try:
        cleaned = ds.with_format("arrow").map(
            _clean_table, batched=True, batch_size=_MAP_BATCH, writer_batch_size=_MAP_BATCH,
            remove_columns=ds.column_names, features=datasets.Features(features),
            desc=f"cleaning {desc}", num_proc=num_proc if num_proc and num_proc > 1 else None,
            fn_kwargs={"specs": specs, "form": cfg.filter.normalize,
                       "salt": cfg.split_salt if with_bucket else None},
        )
    except (KeyError, TypeError) as exc:  # e.g. 'translation' is not a struct with that language
        raise DataError(f"{desc}: cannot read the columns {dict(cfg.columns)} (data.columns, "
                        f"src_lang={cfg.src_lang!r}, tgt_lang={cfg.tgt_lang!r}): {exc}") from exc
    return cleaned.with_format(None)


def _row_mask(table, kind: str, lo: int = 0, hi: int = 1000):
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "bucket":
        return pc.and_(pc.greater_equal(table["_bucket"], lo), pc.less(table["_bucket"], hi))
    if kind == "nonempty":
        return pc.and_(pc.greater(pc.utf8_length(table["src"]), 0),
                       pc.greater(pc.utf8_length(table["tgt"]), 0))
    if kind == "keep":
        return pc.equal(table["_drop"], 0)
    if kind == "all":
        return pa.array(np.ones(table.num_rows, dtype=bool))
    raise ValueError(kind)


def _select_rows(table, kind: str, drop: list[str], lo: int = 0, hi: int = 1000):
    out = table.filter(_row_mask(table, kind, lo, hi))
    return out.drop_columns([c for c in drop if c in out.column_names])


def _count_rows(ds, kind: str, columns: list[str], **kwargs) -> int:
    """How many rows the rule keeps (reads only ``columns``, writes nothing)."""
    kept = 0
    for table in ds.select_columns(columns).with_format("arrow").iter(batch_size=100_000):
        kept += table.filter(_row_mask(table, kind, **kwargs)).num_rows
    return kept


_RULE_COLUMNS = {"bucket": ["_bucket"], "nonempty": ["src", "tgt"], "keep": ["_drop"], "all": []}


def keep_rows(ds, kind: str, desc: str, drop: Sequence[str] = (), cache_file_name: Optional[str] = None,
              **kwargs):
    """Keep the rows selected by a vectorised (pyarrow) rule, writing a new Arrow table.

    Unlike ``Dataset.filter`` this leaves no indices mapping behind, so later sequential and
    random reads (encoding, batching) stay as fast as on the original table. ``kind``: ``bucket``
    (``lo <= _bucket < hi``), ``nonempty`` (both ``src`` and ``tgt`` non-empty) or ``keep``
    (``_drop == 0``) or ``all``. Columns in ``drop`` are removed. When every row is kept nothing
    is rewritten, unless ``cache_file_name`` names the file to write.
    """
    if cache_file_name is None and _count_rows(ds, kind, _RULE_COLUMNS[kind], **kwargs) == len(ds):
        return ds.remove_columns([c for c in drop if c in ds.column_names])
    out = ds.with_format("arrow").map(
        _select_rows, batched=True, batch_size=_MAP_BATCH, writer_batch_size=_MAP_BATCH,
        remove_columns=list(drop) or None, cache_file_name=cache_file_name,
        desc=desc, fn_kwargs={"kind": kind, "drop": list(drop), **kwargs})
    return out.with_format(None)


def split_deterministically(ds, permille: dict[str, int], splits: Sequence[str]) -> dict[str, Any]:
    """Carve ``splits`` out of a cleaned dataset that has a ``_bucket`` column (then dropped)."""
    out = {}
    for split in splits:
        lo, hi = _bucket_range(split, permille)
        out[split] = keep_rows(ds, "bucket", f"splitting off {split}", drop=["_bucket"], lo=lo, hi=hi)
    return out


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def _missing_path(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what} not found (recipe key data.path). Set data.path to the corpus "
                     f"location, e.g. --set data.path=/path/to/corpus. {_TSV_FIX_HINT}")


def existing_variant(path: Path) -> Path:
    """``path``, or if it does not exist the same file compressed or decompressed (``train.tsv`` <->
    ``train.tsv.xz``/``.gz``/``.bz2``), so that a directory of plain or of compressed splits works
    with the same ``data.splits``."""
    if path.is_file():
        return path
    if path.suffix.lower() in _COMPRESSED:
        candidates = [path.with_suffix("")]
    else:
        candidates = [path.with_name(path.name + suffix) for suffix in _COMPRESSED]
    found = next((c for c in candidates if c.is_file()), None)
    if found is not None:
        logger.info("%s not found; reading %s", path, found.name)
        return found
    return path


def _split_files(cfg: DataConfig, root: Path, splits: Sequence[str]) -> dict[str, Path]:
    files = {}
    for split in splits:
        if split not in cfg.splits:
            raise DataError(f"{root}: data.splits has no file for split {split!r}; "
                            f"known: {', '.join(cfg.splits) or 'none'}")
        path = existing_variant(root / cfg.splits[split])
        if not path.is_file():
            raise DataError(f"{path}: split file for {split!r} not found (data.path={root}, "
                            f"data.splits.{split}={cfg.splits[split]!r}). {_TSV_FIX_HINT}")
        files[split] = path
    return files


def _checked_tsv(path: Path, indices: list[int]) -> int:
    """:func:`check_tsv`, remembered: a file that passed (the same path, size and modification
    time, the same columns) is not read again by a later run (a marker in ``$NMT_CACHE_DIR``,
    beside the encoded cache; none when that cache is off)."""
    from nmt.data.encoded_cache import cache_root, file_entry_key, max_bytes

    st = path.stat()
    key = file_entry_key("tsv", {"path": str(path.resolve()), "size": st.st_size,
                                 "mtime_ns": st.st_mtime_ns, "columns": sorted(indices)})
    marker = cache_root().parent / "checked" / key
    with contextlib.suppress(OSError, ValueError):
        return int(marker.read_text())
    ncols = check_tsv(path, indices)
    if max_bytes() > 0:
        with contextlib.suppress(OSError):  # only a speed-up: a cache that cannot be written is skipped
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_name(f".{key}.{os.getpid()}")
            tmp.write_text(str(ncols))
            os.replace(tmp, marker)
    return ncols


def _tsv_names(path: Path, indices: list[int]) -> list[str]:
    ncols = _checked_tsv(path, indices)
    if ncols == 0:
        raise DataError(f"{path}: the file is empty (no sentence pairs); expected lines of "
                        "tab-separated columns")
    return [f"c{i}" for i in range(ncols)]


def _tsv_sources(cfg: DataConfig, splits: Sequence[str]) -> tuple[dict[str, tuple], bool]:
    root = Path(cfg.path).expanduser()
    specs = _specs(cfg, "index")
    indices = [int(name[1:]) for name, _ in specs.values()]
    if root.is_file():
        names = _tsv_names(root, indices)
        return {"all": (_read_tsv(str(root), names, cfg.cache_dir), specs, str(root))}, True
    if not root.is_dir():
        raise _missing_path(root, "corpus directory or file")
    out = {}
    for split, path in _split_files(cfg, root, splits).items():
        names = _tsv_names(path, indices)
        out[split] = (_read_tsv(str(path), names, cfg.cache_dir), specs, str(path))
    return out, False


def _text_hint(src: Path, tgt: Path) -> str:
    """What the directory does hold: file pairs ``NAME.{src}``/``NAME.{tgt}`` that data.path could name."""
    folder, src_ext, tgt_ext = src.parent, src.suffix, tgt.suffix
    if not folder.is_dir():
        return ""
    pairs = sorted(p.with_suffix("") for p in folder.glob(f"*{src_ext}") if p.with_suffix(tgt_ext).is_file())
    if not pairs:
        return ""
    shown = ", ".join(f"{p.name}{src_ext}/{p.name}{tgt_ext}" for p in pairs[:5])
    return (f". {folder} holds {shown}: for one unsplit pair set data.path to its prefix, e.g. "
            f"--set data.path={pairs[0]} (valid and test are then split off deterministically), or "
            f"name the files train/valid/test")


def _read_text_pair(src: Path, tgt: Path, cache_dir: Optional[str]):
    import datasets

    for path in (src, tgt):
        if not path.is_file():
            raise DataError(f"{path}: parallel text file not found (format 'text' reads "
                            f"{{data.path}}/{{split}}.{{lang}}; recipe key data.path){_text_hint(src, tgt)}")
    n_src, n_tgt = count_lines(src), count_lines(tgt)
    if n_src != n_tgt:
        raise DataError(f"{src} has {n_src} lines but {tgt} has {n_tgt}: parallel files must have one "
                        "sentence per line, aligned line by line. Fix the shorter/longer file.")

    def read(path: Path, name: str):
        try:
            ds = datasets.load_dataset("text", data_files={"train": str(path)}, split="train",
                                       cache_dir=cache_dir, features=_string_features([name]))
        except Exception as exc:
            raise DataError(f"{path}: could not be read as text: {_root_cause(exc)}") from exc
        return ds

    ds_src, ds_tgt = read(src, "s"), read(tgt, "t")
    if len(ds_src) != len(ds_tgt):  # cannot happen after the line count check; be explicit anyway
        raise DataError(f"{src} has {len(ds_src)} lines but {tgt} has {len(ds_tgt)}")
    return datasets.concatenate_datasets([ds_src, ds_tgt], axis=1)


def _text_sources(cfg: DataConfig, splits: Sequence[str]) -> tuple[dict[str, tuple], bool]:
    root = Path(cfg.path).expanduser()
    specs = {"src": ("s", None), "tgt": ("t", None)}
    prefix_src = Path(f"{root}.{cfg.src_lang}")
    if not root.is_dir() and prefix_src.is_file():
        prefix_tgt = Path(f"{root}.{cfg.tgt_lang}")
        return {"all": (_read_text_pair(prefix_src, prefix_tgt, cfg.cache_dir), specs, str(root))}, True
    if not root.is_dir():
        raise _missing_path(root, f"directory of {{split}}.{cfg.src_lang}/.{cfg.tgt_lang} files")
    out = {}
    for split in splits:
        src, tgt = root / f"{split}.{cfg.src_lang}", root / f"{split}.{cfg.tgt_lang}"
        out[split] = (_read_text_pair(src, tgt, cfg.cache_dir), specs, str(src))
    return out, False


def _read_jsonl(path: Path, specs: dict[str, ColumnSpec], cache_dir: Optional[str]):
    import datasets

    check_jsonl(path, specs)
    try:
        return datasets.load_dataset("json", data_files={"train": str(path)}, split="train",
                                     cache_dir=cache_dir)
    except Exception as exc:
        raise DataError(f"{path}: could not be read as JSON lines: {_root_cause(exc)}") from exc


def _jsonl_sources(cfg: DataConfig, splits: Sequence[str]) -> tuple[dict[str, tuple], bool]:
    root = Path(cfg.path).expanduser()
    specs = _specs(cfg, "name")
    if root.is_file():
        return {"all": (_read_jsonl(root, specs, cfg.cache_dir), specs, str(root))}, True
    if not root.is_dir():
        raise _missing_path(root, "corpus directory or file")
    return {split: (_read_jsonl(path, specs, cfg.cache_dir), specs, str(path))
            for split, path in _split_files(cfg, root, splits).items()}, False


def _hub_sources(cfg: DataConfig, splits: Sequence[str]) -> tuple[dict[str, tuple], bool]:
    """Thin wrapper over ``load_dataset(hub_id, hub_config)`` (network or the datasets cache)."""
    import datasets

    specs = _specs(cfg, "name")
    try:
        dd = datasets.load_dataset(cfg.hub_id, cfg.hub_config, cache_dir=cfg.cache_dir)
    except Exception as exc:
        raise DataError(f"data.hub_id={cfg.hub_id!r} (config {cfg.hub_config!r}) could not be loaded: "
                        f"{_root_cause(exc)}") from exc
    available = list(dd.keys())
    out = {}
    for split in splits:
        candidates = [cfg.splits.get(split), split] + {"valid": ["validation", "dev"],
                                                       "test": ["testing"]}.get(split, [])
        found = next((c for c in candidates if c in available), None)
        if found is None:
            if available == ["train"]:
                return {"all": (dd["train"], specs, f"{cfg.hub_id}[train]")}, True
            raise DataError(f"{cfg.hub_id}: no split for {split!r} (tried {candidates[1:]}; the Hub "
                            f"dataset has {available}). Map it with data.splits.{split}: <hub split>")
        out[split] = (dd[found], specs, f"{cfg.hub_id}[{found}]")
    return out, False


def _url_sources(cfg: DataConfig, splits: Sequence[str]) -> tuple[dict[str, tuple], bool]:
    """A remote (or local) TSV through the ``csv`` builder; always split deterministically."""
    import datasets

    specs = _specs(cfg, "index")
    indices = sorted({int(name[1:]) for name, _ in specs.values()})
    try:
        ds = datasets.load_dataset(
            "csv", data_files={"train": cfg.url}, split="train", cache_dir=cfg.cache_dir,
            delimiter="\t", quoting=csv.QUOTE_NONE, header=None, usecols=indices,
            converters={i: str for i in indices}, keep_default_na=False, na_filter=False,
        )
    except Exception as exc:
        raise DataError(f"data.url={cfg.url!r} could not be read as a tab-separated file: "
                        f"{_root_cause(exc)}") from exc
    ds = ds.rename_columns({str(i): f"c{i}" for i in indices})
    return {"all": (ds, specs, cfg.url)}, True


_SOURCES = {"tsv": _tsv_sources, "text": _text_sources, "jsonl": _jsonl_sources,
            "hub": _hub_sources, "url": _url_sources}


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def load_corpus(cfg: DataConfig, splits: Sequence[str] = SPLITS, verbose: bool = False) -> dict[str, Any]:
    """Load, clean and (if needed) split the corpus; return ``{split: datasets.Dataset}``.

    Each dataset has string columns ``src`` and ``tgt``. Raises :class:`DataError` for missing files,
    malformed lines (with file and line number) and splits that are empty after filtering.
    """
    parts, described = load_cleaned_splits(cfg, splits, verbose)
    out = {}
    with quiet_datasets(verbose):
        for split in splits:
            ds = parts[split]
            if split == "train":
                ds, _ = filter_train(ds, cfg, described[split])
            if len(ds) == 0:
                raise DataError(f"{described[split]}: the {split} split is empty"
                                f"{' after filtering' if split == 'train' else ''}; check the file "
                                "(and data.columns, data.split_permille, data.max_train_pairs)")
            out[split] = ds
    return out


def load_cleaned_splits(cfg: DataConfig, splits: Sequence[str] = SPLITS,
                        verbose: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """The splits cleaned and (if needed) split, before the training filter of :func:`load_corpus`.

    Returns ``({split: Dataset}, {split: description})``; a description names the file (and says
    ``deterministic split`` for an unsplit corpus). ``nmt data check`` reads this to count what the
    training filter drops.
    """
    if cfg.format not in _SOURCES:
        raise ConfigError(f"data.format: got {cfg.format!r}, expected one of {', '.join(_SOURCES)}")
    if cfg.format in ("tsv", "text", "jsonl") and not cfg.path:
        raise ConfigError(f"data.path: format {cfg.format!r} reads local files; set data.path")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected some of {SPLITS}")
    if cfg.cache_dir:
        os.makedirs(cfg.cache_dir, exist_ok=True)
    local = cfg.format in ("tsv", "text", "jsonl")
    with quiet_datasets(verbose), _offline(local):
        if cfg.format == "tsv":
            return _tsv_splits(cfg, splits)
        sources, unsplit = _SOURCES[cfg.format](cfg, splits)
        if unsplit:
            ds, specs, desc = sources["all"]
            cleaned = _clean(ds, specs, cfg, with_bucket=True, desc=desc)
            parts = split_deterministically(cleaned, cfg.split_permille, splits)
            logger.info("%s: %d pairs split deterministically by target sentence into %s", desc,
                        len(cleaned), ", ".join(f"{s} {len(parts[s])}" for s in splits))
            described = {s: f"{desc} (deterministic split {s!r})" for s in splits}
        else:
            parts = {s: _clean(ds, specs, cfg, with_bucket=False, desc=desc)
                     for s, (ds, specs, desc) in sources.items()}
            described = {s: desc for s, (_, _, desc) in sources.items()}
    return parts, described


def _tsv_splits(cfg: DataConfig, splits: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The cleaned splits of a TSV corpus, kept as their final Arrow files only (``read_cache``)."""
    from nmt.data import read_cache

    root = Path(cfg.path).expanduser()
    if root.is_file():
        parts = read_cache.one_file_splits(cfg, root, splits)
        return parts, {s: f"{root} (deterministic split {s!r})" for s in splits}
    if not root.is_dir():
        raise _missing_path(root, "corpus directory or file")
    files = _split_files(cfg, root, splits)
    return ({s: read_cache.split_file(cfg, path, s) for s, path in files.items()},
            {s: str(path) for s, path in files.items()})


def filter_train(ds, cfg: DataConfig, desc: str) -> tuple[Any, dict[str, int]]:
    """The training filter of :func:`load_corpus`: drop pairs with an empty side, then keep the
    first ``data.max_train_pairs``. Returns the dataset and ``{rule: pairs dropped}``."""
    before = len(ds)
    ds = keep_rows(ds, "nonempty", "dropping empty pairs")
    dropped = {"empty side": before - len(ds)}
    if dropped["empty side"]:
        logger.info("%s: dropped %d of %d training pairs with an empty side", desc,
                    dropped["empty side"], before)
    if cfg.max_train_pairs is not None and len(ds) > cfg.max_train_pairs:
        logger.info("%s: keeping the first %d of %d training pairs (data.max_train_pairs)", desc,
                    cfg.max_train_pairs, len(ds))
        dropped["data.max_train_pairs"] = len(ds) - cfg.max_train_pairs
        ds = ds.select(range(cfg.max_train_pairs))
    return ds, dropped

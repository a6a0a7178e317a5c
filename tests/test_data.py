"""nmt.data.corpus: loading through datasets, validation errors, deterministic splits, offline use."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import socket
import unicodedata
import zipfile
from collections import Counter
from pathlib import Path

import datasets  # noqa: F401  (imported at collection: the first test should not pay for it)
import pandas  # noqa: F401
import pytest

from nmt.config import DataConfig, FilterConfig
from nmt.data.corpus import SPLITS, load_corpus, split_bucket, split_of_bucket
from nmt.errors import DataError

REPO = Path(__file__).resolve().parents[1]
TATOEBA = REPO / "data" / "tatoeba-fra-eng"
SALT = "tatoeba-fra-eng-split|"
#: the fixed splits of the shipped corpus: pairs and sha256 of the decompressed file
TATOEBA_SPLITS = {
    "train": (163_022, "eb7f167e5950f4dc9d80db95ce8fdfaed07e8a674bf414bc90e147bfcdf9909e"),
    "valid": (2_020, "c196a3a0811aa7c4d67333b63244e7b62f8b65e5b454e104b0cc0de8855d09d7"),
    "test": (2_088, "609e67b4fb9bc9abffae4f5d29349b3265ca1dfc081b2c3d88635428a2bf890f"),
}

# Lines a naive reader would mangle: quotes (csv quoting), NA-like strings (pandas NaN), '#', spaces,
# a decomposed é (NFC), commas and semicolons, a non-breaking space, an empty side.
TRICKY = [
    'He said "hello".\tIl a dit « bonjour ».',
    '"Quoted at start\t"Entre guillemets',
    "NA\tnull",
    "nan\tNaN",
    "None\tN/A",
    "#hashtag\t# pas un commentaire",
    "  leading and trailing  \t  espaces autour  ",
    "Cafe\u0301 time.\tL'heure du cafe\u0301.",
    "a, b; c\td, e; f",
    "Go!\tVa\u00a0!",
    "1\t2",
    "TRUE\tfalse",
]


def _parse(line: str, form: str = "NFC") -> tuple[str, str]:
    """What load_corpus must produce for a line (src = column 1, tgt = column 0)."""
    cols = line.split("\t")

    def clean(s: str) -> str:
        s = s.strip()
        return unicodedata.normalize(form, s).strip() if form != "none" else s

    return clean(cols[1]), clean(cols[0])


def _write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
    return path


def _cfg(tmp_path: Path, **kw) -> DataConfig:
    kw.setdefault("cache_dir", str(tmp_path / "hf-cache"))
    return DataConfig(**kw)


def _rows(ds) -> list[tuple[str, str]]:
    return list(zip(ds["src"], ds["tgt"]))


def _corpus_dir(tmp_path: Path, train: list[str], valid: list[str] | None = None,
                test: list[str] | None = None) -> Path:
    root = tmp_path / "corpus"
    _write(root / "train.tsv", train)
    _write(root / "valid.tsv", valid if valid is not None else ["Hello.\tBonjour."])
    _write(root / "test.tsv", test if test is not None else ["Bye.\tAu revoir."])
    return root


# ------------------------------------------------------------------------------------ TSV content


def test_tsv_equals_line_by_line_parse(tmp_path):
    root = _corpus_dir(tmp_path, TRICKY, valid=TRICKY + ["\tempty English side"])
    corpus = load_corpus(_cfg(tmp_path, path=str(root)))
    assert set(corpus) == set(SPLITS)
    expected = [_parse(line) for line in TRICKY]
    assert _rows(corpus["train"]) == expected
    # valid/test are only normalised: the pair with an empty side is kept
    assert _rows(corpus["valid"]) == expected + [("empty English side", "")]
    assert _rows(corpus["test"]) == [("Au revoir.", "Bye.")]
    train = dict((t, s) for s, t in _rows(corpus["train"]))
    assert train["NA"] == "null" and train["nan"] == "NaN" and train["None"] == "N/A"
    assert train['He said "hello".'] == "Il a dit « bonjour »."
    assert train['"Quoted at start'] == '"Entre guillemets'
    assert train["leading and trailing"] == "espaces autour"
    assert train["Café time."] == "L'heure du café."  # composed
    assert len("Café") == 4 and all(isinstance(x, str) for pair in _rows(corpus["train"]) for x in pair)


def test_training_text_is_cleaned_as_translation_input_is(tmp_path):
    """NUL, escape sequences, vertical tabs, non-characters and lone combining marks: a corpus
    sentence reaches the tokenizer exactly as the same sentence given to nmt translate does."""
    from nmt.data.text import clean_text
    from nmt.inference.sources import clean_source

    assert clean_source is clean_text
    dirty = ["a\x00b\x1b[0mc\x0bd\tYes.", "\x7fe\u0301\ufdd0 x\x1c\x85 \tOui\x00.", "\x01\x02\tOnly controls"]
    root = _corpus_dir(tmp_path, dirty, valid=dirty)
    corpus = load_corpus(_cfg(tmp_path, path=str(root)), splits=("train", "valid"))
    expected = [(clean_text(line.split("\t")[1]), clean_text(line.split("\t")[0])) for line in dirty]
    assert expected[0] == ("Yes.", "ab[0mc d") and expected[1] == ("Oui.", "\u00e9 x")
    assert _rows(corpus["valid"]) == expected
    assert _rows(corpus["train"]) == expected[:2]  # a side with nothing left is dropped
    assert not any(ch in "".join(corpus["train"]["tgt"]) for ch in "\x00\x1b\x0b\x7f")


def test_crlf_bom_blank_lines_and_nfkc(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "train.tsv").write_bytes("\ufeffOne.\tUn.\r\n\r\nTwo\u00a0!\tDeux\u00a0!\r\n".encode())
    _write(root / "valid.tsv", ["x\ty"])
    _write(root / "test.tsv", ["x\ty"])
    cfg = _cfg(tmp_path, path=str(root), filter=FilterConfig(normalize="NFKC"))
    corpus = load_corpus(cfg, splits=("train",))
    assert list(corpus) == ["train"]
    assert _rows(corpus["train"]) == [("Un.", "One."), ("Deux !", "Two !")]  # NBSP folded by NFKC


def test_train_drops_empty_sides_and_logs(tmp_path, caplog):
    lines = ["A.\tUn.", "\tvide", "B.\t   ", "C.\tTrois."]
    root = _corpus_dir(tmp_path, lines)
    with caplog.at_level(logging.INFO, logger="nmt.data.corpus"):
        corpus = load_corpus(_cfg(tmp_path, path=str(root)))
    assert _rows(corpus["train"]) == [("Un.", "A."), ("Trois.", "C.")]
    assert any("dropped 2 of 4" in r.getMessage() for r in caplog.records)


def test_max_train_pairs_keeps_first(tmp_path):
    lines = [f"S{i}.\tP{i}." for i in range(50)]
    root = _corpus_dir(tmp_path, lines)
    corpus = load_corpus(_cfg(tmp_path, path=str(root), max_train_pairs=7), splits=("train",))
    assert corpus["train"]["tgt"] == [f"S{i}." for i in range(7)]


def test_tiny_corpus():
    corpus = load_corpus(DataConfig(path=str(REPO / "data" / "tiny")))
    sizes = {s: len(d) for s, d in corpus.items()}
    assert sizes["train"] >= 250 and 30 <= sizes["valid"] <= 60 and 30 <= sizes["test"] <= 60
    english = {s: {t.lower() for t in d["tgt"]} for s, d in corpus.items()}
    assert not english["train"] & english["valid"] and not english["train"] & english["test"]
    assert not english["valid"] & english["test"]
    assert all(s and t for d in corpus.values() for s, t in _rows(d))
    assert ("Je suis fatigué.", "I am tired.") in _rows(corpus["train"])


# ------------------------------------------------------------------------------------ errors


def test_missing_directory(tmp_path):
    with pytest.raises(DataError) as err:
        load_corpus(_cfg(tmp_path, path=str(tmp_path / "nowhere")))
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "data.path" in msg and "NMT_TATOEBA_DIR" in msg


def test_missing_split_file(tmp_path):
    root = _corpus_dir(tmp_path, ["a\tb"])
    (root / "test.tsv").unlink()
    with pytest.raises(DataError, match=r"test\.tsv.*not found"):
        load_corpus(_cfg(tmp_path, path=str(root)))


def test_wrong_column_count_names_line(tmp_path):
    root = _corpus_dir(tmp_path, ["a\tb", "c\td", "only one column", "e\tf"])
    with pytest.raises(DataError) as err:
        load_corpus(_cfg(tmp_path, path=str(root)))
    msg = str(err.value)
    assert "train.tsv:3:" in msg and "found 1" in msg and "line 1 has 2" in msg


def test_extra_column_names_line(tmp_path):
    root = _corpus_dir(tmp_path, ["a\tb", "c\td\te"])
    with pytest.raises(DataError, match=r"train\.tsv:2: found 3"):
        load_corpus(_cfg(tmp_path, path=str(root)))


def test_non_utf8_names_line_and_iconv(tmp_path):
    root = _corpus_dir(tmp_path, ["a\tb"])
    (root / "train.tsv").write_bytes(b"ok\tbien\nbad\tcaf\xe9\n")
    with pytest.raises(DataError) as err:
        load_corpus(_cfg(tmp_path, path=str(root)))
    msg = str(err.value)
    assert "train.tsv:2:" in msg and "UTF-8" in msg and "iconv" in msg and "offset 15" in msg


def test_stray_carriage_return(tmp_path):
    root = _corpus_dir(tmp_path, ["a\tb"])
    (root / "train.tsv").write_bytes(b"a\tb\nc\rx\td\n")
    with pytest.raises(DataError, match=r"train\.tsv:2: a carriage return"):
        load_corpus(_cfg(tmp_path, path=str(root)))


def test_validation_blocks_keep_line_numbers(tmp_path, monkeypatch):
    """The streaming check reads in blocks; line numbers and offsets must not depend on them."""
    import nmt.data.corpus
    import nmt.data.line_check

    monkeypatch.setattr(nmt.data.line_check, "_SCAN_CHUNK", 7)
    good = "\ufeffOne.\tUn.\r\n" + "".join(f"Line {i}.\tLigne {i}.\r\n" for i in range(2, 9))
    path = tmp_path / "x.tsv"
    path.write_bytes(good.encode() + b"\n" + "Eleven\tOnze\textra\n".encode())
    with pytest.raises(DataError, match=r"x\.tsv:10: found 3 tab-separated column\(s\), but line 1 has 2"):
        nmt.data.corpus.check_tsv(path, [0, 1])
    prefix = good.encode() + b"ok\tbien\n"
    path.write_bytes(prefix + b"caf\xe9\tx\n")
    with pytest.raises(DataError, match=rf"x\.tsv:10: not valid UTF-8 \(byte 0xe9 at byte offset "
                                        rf"{len(prefix) + 3} of the file, column 4"):
        nmt.data.corpus.check_tsv(path, [0, 1])
    path.write_bytes(good.encode() + b"a\rb\tc")
    with pytest.raises(DataError, match=r"x\.tsv:9: a carriage return"):
        nmt.data.corpus.check_tsv(path, [0, 1])
    path.write_bytes(good.encode() + b"last\tno newline")
    assert nmt.data.corpus.check_tsv(path, [0, 1]) == 2 and nmt.data.corpus.count_lines(path) == 9


def test_bad_column_index(tmp_path):
    root = _corpus_dir(tmp_path, ["a\tb"])
    with pytest.raises(DataError) as err:
        load_corpus(_cfg(tmp_path, path=str(root), columns={"src": 5, "tgt": 0}))
    assert "data.columns" in str(err.value) and "index 5" in str(err.value) and ":1:" in str(err.value)


def test_empty_split_after_filtering(tmp_path):
    root = _corpus_dir(tmp_path, ["\tx", "y\t"])
    with pytest.raises(DataError, match=r"train split is empty after filtering"):
        load_corpus(_cfg(tmp_path, path=str(root)))


def test_empty_file(tmp_path):
    root = _corpus_dir(tmp_path, [], valid=["a\tb"])
    with pytest.raises(DataError, match=r"train\.tsv: the file is empty"):
        load_corpus(_cfg(tmp_path, path=str(root)))


# ------------------------------------------------------------------------------------ other formats


def test_text_format(tmp_path):
    root = tmp_path / "txt"
    for split in SPLITS:
        _write(root / f"{split}.fr", [f"Bonjour {split}.", "  Cafe\u0301  ", "NA"])
        _write(root / f"{split}.en", [f"Hello {split}.", "Coffee", "null"])
    corpus = load_corpus(_cfg(tmp_path, format="text", path=str(root)))
    assert _rows(corpus["valid"]) == [("Bonjour valid.", "Hello valid."), ("Café", "Coffee"),
                                      ("NA", "null")]


def test_text_line_counts_differ(tmp_path):
    root = tmp_path / "txt"
    for split in SPLITS:
        _write(root / f"{split}.fr", ["a", "b", "c"])
        _write(root / f"{split}.en", ["a", "b"] if split == "train" else ["a", "b", "c"])
    with pytest.raises(DataError) as err:
        load_corpus(_cfg(tmp_path, format="text", path=str(root)))
    msg = str(err.value)
    assert "train.fr has 3 lines" in msg and "train.en has 2" in msg


def test_text_directory_without_split_files_names_the_pairs_it_holds(tmp_path):
    """data.path pointing at a directory of one unsplit pair: the error names the pair and the fix."""
    root = tmp_path / "txt"
    _write(root / "all.fr", ["Bonjour.", "Merci."])
    _write(root / "all.en", ["Hello.", "Thanks."])
    _write(root / "notes.fr", ["pas de paire"])
    with pytest.raises(DataError) as err:
        load_corpus(_cfg(tmp_path, format="text", path=str(root)))
    msg = str(err.value)
    assert "train.fr: parallel text file not found" in msg
    assert "all.fr/all.en" in msg and f"--set data.path={root / 'all'}" in msg and "notes" not in msg


def test_jsonl_format_and_bad_field(tmp_path):
    root = tmp_path / "js"
    splits = {s: f"{s}.jsonl" for s in SPLITS}
    for split in SPLITS:
        _write(root / f"{split}.jsonl", [json.dumps({"translation": {"fr": "Oui", "en": "Yes"}}),
                                         json.dumps({"translation": {"fr": "NA", "en": " null "}})])
    cfg = _cfg(tmp_path, format="jsonl", path=str(root), splits=splits,
               columns={"src": "translation", "tgt": "translation"})
    corpus = load_corpus(cfg)
    assert _rows(corpus["test"]) == [("Oui", "Yes"), ("NA", "null")]
    _write(root / "train.jsonl", [json.dumps({"fr": "a", "en": "b"}), json.dumps({"fr": "c"})])
    cfg = _cfg(tmp_path, format="jsonl", path=str(root), splits=splits,
               columns={"src": "fr", "tgt": "en"})
    with pytest.raises(DataError, match=r"train\.jsonl:2: no field 'en'.*data\.columns\.tgt"):
        load_corpus(cfg)


# ------------------------------------------------------------------------------------ splits


def _unsplit_corpus(path: Path, n_targets: int = 1500, per_target: int = 2) -> list[str]:
    lines = []
    for i in range(n_targets):
        for j in range(per_target):
            lines.append(f"Sentence number {i}.\tPhrase {i} variante {j}.")
    _write(path, lines)
    return lines


def test_deterministic_split_grouped_and_proportional(tmp_path):
    path = tmp_path / "all.tsv"
    lines = _unsplit_corpus(path, n_targets=1000, per_target=3)
    permille = {"test": 100, "valid": 150}
    corpus = load_corpus(_cfg(tmp_path, path=str(path), split_permille=permille))
    # same input, same split: every pair is where the documented (pure) rule puts it, in file order
    for split in SPLITS:
        expected = [_parse(line) for line in lines
                    if split_of_bucket(split_bucket(line.split("\t")[0], SALT), permille) == split]
        assert _rows(corpus[split]) == expected
    targets = {s: set(corpus[s]["tgt"]) for s in SPLITS}
    assert not targets["train"] & targets["valid"] and not targets["train"] & targets["test"]
    assert not targets["valid"] & targets["test"]
    assert all(n == 3 for d in corpus.values() for n in Counter(d["tgt"]).values())  # groups intact
    n = len(lines)
    assert abs(len(corpus["test"]) / n - 0.10) < 0.03
    assert abs(len(corpus["valid"]) / n - 0.15) < 0.03
    assert sum(len(corpus[s]) for s in SPLITS) == n


def test_split_salt_changes_split(tmp_path):
    path = tmp_path / "all.tsv"
    _unsplit_corpus(path, n_targets=300, per_target=1)
    permille = {"test": 200, "valid": 200}
    a = load_corpus(_cfg(tmp_path, path=str(path), split_permille=permille), splits=("test",))
    b = load_corpus(_cfg(tmp_path, path=str(path), split_permille=permille, split_salt="other|"),
                    splits=("test",))
    assert a["test"]["tgt"] != b["test"]["tgt"]


def test_deterministic_split_of_text_prefix(tmp_path):
    _write(tmp_path / "pairs.fr", [f"Phrase {i}." for i in range(300)])
    _write(tmp_path / "pairs.en", [f"Sentence {i}." for i in range(300)])
    cfg = _cfg(tmp_path, format="text", path=str(tmp_path / "pairs"),
               split_permille={"test": 200, "valid": 200})
    corpus = load_corpus(cfg)
    assert sum(len(d) for d in corpus.values()) == 300
    assert all(len(d) > 20 for d in corpus.values())


def test_split_rule_reproduces_the_shipped_tatoeba_split(tmp_path):
    """The rule on the union of (a sample of) the shipped files gives back each file's split."""
    sample: list[tuple[str, str]] = []
    for split in SPLITS:
        with lzma.open(TATOEBA / f"{split}.tsv.xz", "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= 700:
                    break
                sample.append((split, line.rstrip("\n")))
    for split, line in sample:  # the rule by itself
        assert split_of_bucket(split_bucket(line.split("\t")[0], SALT), {"test": 12, "valid": 12}) == split
    union = _write(tmp_path / "union.tsv", [line for _, line in sample])
    corpus = load_corpus(_cfg(tmp_path, path=str(union)))  # recipe defaults: salt, 12/12 permille
    for split in SPLITS:
        expected = [_parse(line) for s, line in sample if s == split]
        assert _rows(corpus[split]) == expected


# ------------------------------------------------------------------------- the shipped corpus


def test_shipped_tatoeba_splits_are_the_fixed_ones():
    """Exactly the published splits: pair counts and checksums of the decompressed files."""
    for split, (pairs, digest) in TATOEBA_SPLITS.items():
        with lzma.open(TATOEBA / f"{split}.tsv.xz", "rb") as f:
            data = f.read()
        assert hashlib.sha256(data).hexdigest() == digest, split
        assert data.endswith(b"\n") and data.count(b"\n") == pairs, split
        assert b"\n\n" not in data and b"\r" not in data
        assert data.count(b"\t") == pairs, split  # two columns on every line
    readme = (TATOEBA / "README.md").read_text(encoding="utf-8")
    for needle in ("CC-BY 2.0", "manythings.org/anki", "2019-04-07", "bucket < 12", "163,022"):
        assert needle in readme


def test_fr_en_recipe_reads_the_shipped_corpus(repo, monkeypatch):
    from nmt.config import load_recipe

    monkeypatch.delenv("NMT_TATOEBA_DIR", raising=False)
    cfg = load_recipe(repo / "recipes/fr-en.yaml").data
    assert Path(cfg.path) == TATOEBA.resolve()
    corpus = load_corpus(cfg, splits=("valid", "test"))
    assert {s: len(d) for s, d in corpus.items()} == {"valid": 2_020, "test": 2_088}
    with lzma.open(TATOEBA / "test.tsv.xz", "rt", encoding="utf-8") as f:
        first = f.readline().rstrip("\n")
    assert _rows(corpus["test"])[0] == _parse(first)
    # NMT_TATOEBA_DIR and --set data.path replace it
    monkeypatch.setenv("NMT_TATOEBA_DIR", "/some/where")
    assert load_recipe(repo / "recipes/fr-en.yaml").data.path == "/some/where"
    monkeypatch.delenv("NMT_TATOEBA_DIR")
    assert load_recipe(repo / "recipes/fr-en.yaml", ["data.path=/else"]).data.path == "/else"


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".xz", lzma.open), (".bz2", bz2.open)])
def test_compressed_split_files(tmp_path, suffix, opener):
    lines = TRICKY + ["Plain.\tSimple."]
    root = tmp_path / "c"
    root.mkdir()
    for split, rows in (("train", lines), ("valid", lines[:2]), ("test", lines[2:4])):
        with opener(root / f"{split}.tsv{suffix}", "wb") as f:
            f.write("".join(line + "\n" for line in rows).encode("utf-8"))
    splits = {s: f"{s}.tsv{suffix}" for s in SPLITS}
    corpus = load_corpus(_cfg(tmp_path, path=str(root), splits=splits))
    assert _rows(corpus["valid"]) == [_parse(line) for line in lines[:2]]
    assert _rows(corpus["test"]) == [_parse(line) for line in lines[2:4]]
    assert len(corpus["train"]) == len(lines)
    # the default names (train.tsv, ...) find the compressed files
    assert _rows(load_corpus(_cfg(tmp_path, path=str(root)))["test"]) == _rows(corpus["test"])


def test_compressed_names_find_plain_files_and_bad_archives_are_data_errors(tmp_path):
    root = _corpus_dir(tmp_path, ["A.\tUn."])
    splits = {s: f"{s}.tsv.xz" for s in SPLITS}
    assert _rows(load_corpus(_cfg(tmp_path, path=str(root), splits=splits))["train"]) == [("Un.", "A.")]
    # a file cut short (an interrupted download) is reported with its name, not as a traceback
    broken = tmp_path / "broken"
    broken.mkdir()
    for split in SPLITS:
        whole = lzma.compress(("Hello.\tBonjour.\n" * 2000).encode("utf-8"))
        (broken / f"{split}.tsv.xz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as err:
        load_corpus(_cfg(tmp_path, path=str(broken), splits=splits))
    assert "train.tsv.xz" in str(err.value)
    # a malformed line inside a compressed file is found with its line number
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in SPLITS:
        with gzip.open(bad / f"{split}.tsv.gz", "wb") as f:
            f.write(b"A.\tUn.\nB.\tDeux.\tTrois.\n")
    with pytest.raises(DataError, match=r"train\.tsv\.gz:2: found 3 tab-separated column"):
        load_corpus(_cfg(tmp_path, path=str(bad), splits={s: f"{s}.tsv.gz" for s in SPLITS}))


# ------------------------------------------------------------------------------------ url + offline


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_local_formats_work_offline(tmp_path, monkeypatch, no_network):
    """As with HF_DATASETS_OFFLINE=1 (read by datasets at import: set its config flag directly)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    root = _corpus_dir(tmp_path, ["A.\tUn.", "B.\tDeux."])
    corpus = load_corpus(_cfg(tmp_path, path=str(root)))
    assert _rows(corpus["train"]) == [("Un.", "A."), ("Deux.", "B.")]
    text = tmp_path / "txt"
    for split in SPLITS:
        _write(text / f"{split}.fr", ["Un."])
        _write(text / f"{split}.en", ["One."])
    assert _rows(load_corpus(_cfg(tmp_path, format="text", path=str(text)))["test"]) == [("Un.", "One.")]
    assert datasets.config.HF_HUB_OFFLINE is True  # restored to the value it had


def test_url_format_reads_chained_zip_path(tmp_path, monkeypatch, no_network):
    """The url path is the csv builder on a (here local) fsspec URL inside a zip archive.

    datasets' offline mode refuses chained URLs even to local files, so it is off here; the socket
    guard proves that nothing goes to the network.
    """
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    tsv = _write(tmp_path / "fra.txt", [f"Hello {i}.\tBonjour {i}.\tCC-BY attribution #{i}"
                                        for i in range(400)] + ["NA\tnull\tx"])
    archive = tmp_path / "fra-eng.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tsv, "fra.txt")
    cfg = _cfg(tmp_path, format="url", url=f"zip://fra.txt::{archive}",
               split_permille={"test": 100, "valid": 100})
    corpus = load_corpus(cfg)
    rows = [r for s in SPLITS for r in _rows(corpus[s])]
    assert sorted(rows) == sorted([(f"Bonjour {i}.", f"Hello {i}.") for i in range(400)]
                                  + [("null", "NA")])
    assert Counter(len(corpus[s]) > 10 for s in SPLITS)[True] == 3

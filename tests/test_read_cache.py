"""The read TSV corpus is kept as its final splits only, with the pairs of the datasets chain."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from nmt.config import DataConfig
from nmt.data import corpus as C
from nmt.data import encoded_cache, read_cache
from nmt.data.text import clean_text, clean_texts

# sides that exercise every branch of the cleaning: controls, surrogate-free oddities, NFC/NFKC,
# non-characters, non-ASCII spaces, plain ASCII with and without surrounding spaces, empty
SIDES = ["Hello.", "  padded  ", "", "Cafe\u0301", "ﬁne", "x\x00y\x7f", "a\x1fb", "\ufdd0odd\uffff",
         "Va\u00a0!", "\u3000wide\u3000", "tab\x0bvt", "é", "naïve café", "~!@#$%^&*()", " ", "A\u2028B"]


def _corpus(path: Path, n: int, seed: int = 0) -> None:
    rnd = random.Random(seed)
    lines = [f"{rnd.choice(SIDES)} {i % 97}{rnd.choice(SIDES)}\t{rnd.choice(SIDES)}{i}" for i in range(n)]
    lines += ["\tempty source", "empty target\t"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _rows(ds) -> list[tuple[str, str]]:
    return list(zip(ds["src"], ds["tgt"]))


@pytest.mark.parametrize("form", ["NFC", "NFKC", "none"])
def test_clean_texts_is_clean_text_of_each(form):
    texts = [a + b for a in SIDES for b in SIDES]
    assert clean_texts(texts, form) == [clean_text(t, form) for t in texts]


def test_split_buckets_are_split_bucket_of_each():
    tgts = [f"{s}{i}" for i, s in enumerate(SIDES * 20)]
    assert C.split_buckets(tgts, "salt|") == [C.split_bucket(t, "salt|") for t in tgts]


def _chain(cfg: DataConfig, splits):
    """What the datasets chain (read, clean, split, every table in the datasets cache) gives."""
    with C.quiet_datasets():
        (ds, specs, desc), = C._tsv_sources(cfg, splits)[0].values()
        return C.split_deterministically(C._clean(ds, specs, cfg, True, desc), cfg.split_permille, splits)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_one_file_keeps_only_its_splits_with_the_same_pairs(tmp_path, monkeypatch, num_proc):
    monkeypatch.setattr(encoded_cache, "AUTO_PARALLEL_ROWS", 100)  # the cleaning in 2 processes too
    tsv = tmp_path / "corpus.tsv"
    _corpus(tsv, 3_000)
    cfg = DataConfig(path=str(tsv), cache_dir=str(tmp_path / "hf"), num_proc=num_proc,
                     split_permille={"valid": 100, "test": 50})
    splits = ("train", "valid", "test")
    got = C.load_corpus(cfg, splits)
    reference = _chain(DataConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path / "ref")}), splits)
    for split in splits:
        want = [(s, t) for s, t in _rows(reference[split]) if split != "train" or (s and t)]
        assert _rows(got[split]) == want, split
    arrows = sorted(p.relative_to(tmp_path / "hf") for p in (tmp_path / "hf").rglob("*.arrow"))
    assert all(p.parts[0] == "nmt-splits" for p in arrows), arrows  # no intermediate table left
    # the splits, and the training split without its two pairs with an empty side
    assert sorted(p.name for p in arrows if not p.name.startswith("cache-")) == [
        "test.arrow", "train.arrow", "valid.arrow"] and len(arrows) == 4

    def no_reading(*args, **kwargs):
        raise AssertionError("the TSV was read again")

    monkeypatch.setattr(C, "_read_tsv", no_reading)
    again = C.load_corpus(cfg, ("train", "valid"))
    assert _rows(again["train"]) == _rows(got["train"]) and _rows(again["valid"]) == _rows(got["valid"])


def test_a_changed_file_or_setting_is_read_again(tmp_path):
    tsv = tmp_path / "corpus.tsv"
    _corpus(tsv, 500)
    cfg = DataConfig(path=str(tsv), cache_dir=str(tmp_path / "hf"), split_permille={"valid": 100, "test": 0})
    first = _rows(C.load_corpus(cfg, ("valid",))["valid"])
    salted = DataConfig(**{**cfg.__dict__, "split_salt": "another|"})
    assert _rows(C.load_corpus(salted, ("valid",))["valid"]) != first
    _corpus(tsv, 500, seed=1)
    assert _rows(C.load_corpus(cfg, ("valid",))["valid"]) != first
    assert len(list((tmp_path / "hf" / "nmt-splits").iterdir())) == 3


def test_split_files_keep_only_their_cleaned_pairs(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        _corpus(folder / f"{split}.tsv", 300, seed)
    cfg = DataConfig(path=str(folder), cache_dir=str(tmp_path / "hf"))
    got = C.load_corpus(cfg, ("train", "valid"))
    for split in ("train", "valid"):
        lines = (folder / f"{split}.tsv").read_text(encoding="utf-8").rstrip("\n").split("\n")
        want = [(clean_text(line.split("\t")[1]), clean_text(line.split("\t")[0])) for line in lines]
        assert _rows(got[split]) == [p for p in want if split != "train" or all(p)]
    arrows = list((tmp_path / "hf").rglob("*.arrow"))
    assert all("nmt-splits" in p.parts for p in arrows), arrows
    assert sorted(p.name for p in arrows if not p.name.startswith("cache-")) == ["train.arrow", "valid.arrow"]
    assert read_cache.splits_root(cfg) == tmp_path / "hf" / "nmt-splits"

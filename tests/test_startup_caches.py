"""What a run does before its first update, on a large corpus: sentencepiece on a bounded,
evenly spaced sample; IBM Model 1 in bounded memory; the tokenizer models and the lexicon kept in
the cache beside the encoded splits, so that a second run of the same corpus and settings trains
and builds nothing."""
from __future__ import annotations

import logging
import os
import shutil
import tracemalloc
from pathlib import Path

import datasets
import numpy as np
import pytest

from nmt.config import TokenizerConfig
from nmt.data.encoded_cache import file_entry_key, load_files, store_files
from nmt.data.tokenizer import SRC_MODEL, TGT_MODEL, SubwordTokenizers, training_identity, training_sample
from nmt.inference.names import NAMES_FILE
from nmt.inference.shortlist import LEXICON_FILE, Lexicon, ibm_model1, id_list_chunks

REPO = Path(__file__).resolve().parents[1]
WORDS = ("chat chien maison arbre rouge vert bleu petit grand vieux pont rue ville mer ciel "
         "soleil lune livre table porte").split()


def _pairs_ds(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    src = [" ".join(rng.choice(WORDS, size=rng.integers(2, 8))) + f" {i % 97}" for i in range(n)]
    tgt = [" ".join(rng.choice(WORDS, size=rng.integers(2, 8)))[::-1] + f" {i % 89}" for i in range(n)]
    return datasets.Dataset.from_dict({"src": src, "tgt": tgt})


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NMT_CACHE_DIR", str(tmp_path / "nmt-cache"))
    monkeypatch.delenv("NMT_ENCODED_CACHE_GB", raising=False)
    return tmp_path / "nmt-cache" / "encoded"


# ------------------------------------------------------------------------------ sentencepiece


def test_sentencepiece_learns_from_an_evenly_spaced_sample_of_a_larger_split(tmp_path, cache):
    ds = _pairs_ds(400)
    cfg = TokenizerConfig(src_vocab_size=40, tgt_vocab_size=40, num_threads=1, input_sentence_size=100)
    sample = training_sample(cfg, ds)
    assert len(sample) == 100 and sample[0] == ds[0] and sample[99] == ds[399]
    sampled = SubwordTokenizers.train(cfg, ds, tmp_path / "a")
    by_hand = SubwordTokenizers.train(cfg, ds.select(np.linspace(0, 399, 100).astype(np.int64)), tmp_path / "b")
    assert sampled.file_hashes == by_hand.file_hashes
    identity = training_identity(cfg, ds)
    assert identity["train_data"]["pairs"] == 400 and identity["train_data"]["sample"] == 100


def test_a_split_not_larger_than_the_sample_is_read_whole_as_before(tmp_path, cache):
    """The models and their record do not depend on input_sentence_size while it is at least the
    split's size (so the fr-en corpus, below the default, trains the same models as before)."""
    ds = _pairs_ds(300)
    runs = []
    for size in (300, 2_000_000):
        cfg = TokenizerConfig(src_vocab_size=40, tgt_vocab_size=40, num_threads=1, input_sentence_size=size)
        assert training_sample(cfg, ds) is ds
        runs.append((SubwordTokenizers.train(cfg, ds, tmp_path / str(size)).file_hashes,
                     training_identity(cfg, ds)["train_data"]))
    assert runs[0] == runs[1] and "sample" not in runs[0][1]
    assert TokenizerConfig().input_sentence_size >= 163_022  # the fr-en corpus is read whole


def test_sentencepiece_models_are_read_from_the_cache_by_a_new_run_directory(tmp_path, cache, caplog):
    ds = _pairs_ds(300)
    cfg = TokenizerConfig(src_vocab_size=40, tgt_vocab_size=40, num_threads=1)
    caplog.set_level(logging.INFO, "nmt.data.tokenizer")
    first = SubwordTokenizers.load_or_train(cfg, ds, tmp_path / "one")
    assert "trained sentencepiece" in caplog.text and "training skipped" not in caplog.text
    caplog.clear()
    second = SubwordTokenizers.load_or_train(cfg, ds, tmp_path / "two")
    assert "training skipped" in caplog.text and "trained sentencepiece" not in caplog.text
    assert second.file_hashes == first.file_hashes
    assert (tmp_path / "two" / "spm.json").is_file()  # the run directory holds its own copy
    shutil.rmtree(cache)  # and needs the cache no more: a resume reads its own models
    caplog.clear()
    assert SubwordTokenizers.load_or_train(cfg, ds, tmp_path / "two", resume=True).file_hashes == first.file_hashes
    assert "trained sentencepiece" not in caplog.text


@pytest.mark.parametrize("change", ["setting", "data", "cache off"])
def test_other_settings_or_data_train_new_models(tmp_path, cache, caplog, monkeypatch, change):
    ds = _pairs_ds(300)
    cfg = TokenizerConfig(src_vocab_size=40, tgt_vocab_size=40, num_threads=1)
    SubwordTokenizers.load_or_train(cfg, ds, tmp_path / "one")
    if change == "setting":
        cfg = TokenizerConfig(src_vocab_size=41, tgt_vocab_size=40, num_threads=1)
    elif change == "data":
        ds = _pairs_ds(300, seed=1)
    else:
        monkeypatch.setenv("NMT_ENCODED_CACHE_GB", "0")
    caplog.set_level(logging.INFO, "nmt.data.tokenizer")
    SubwordTokenizers.load_or_train(cfg, ds, tmp_path / "two")
    assert "trained sentencepiece" in caplog.text and "training skipped" not in caplog.text


def test_file_entries_are_keyed_by_kind_and_identity_and_checked(tmp_path, cache):
    identity = {"a": 1, "b": [1, 2]}
    key = file_entry_key("spm", identity)
    assert key == file_entry_key("spm", {"b": [1, 2], "a": 1})  # key order does not matter
    assert key != file_entry_key("lexicon", identity) and key != file_entry_key("spm", {"a": 2, "b": [1, 2]})
    assert load_files(key, ["x"]) is None
    store_files(key, {"x": b"model bytes"}, rows=3, describe="test")
    assert load_files(key, ["x"]) == {"x": b"model bytes"}
    (cache / key / "x").write_bytes(b"damaged")
    assert load_files(key, ["x"]) is None  # a file that does not match its recorded sha256


# ------------------------------------------------------------------------------ the lexicon


def _long_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    src = [list(rng.integers(4, 60, size=rng.integers(1, 30))) + [3] for _ in range(n)]
    tgt = [list(rng.integers(4, 50, size=rng.integers(1, 30))) + [3] for _ in range(n)]
    return src, tgt


def test_bounded_memory_ibm_model1_equals_the_kept_links_exactly():
    src, tgt = _long_pairs(300)
    chunks = id_list_chunks(src[:170], tgt[:170]) + id_list_chunks(src[170:], tgt[170:])
    kept = ibm_model1(chunks, 60, 50, 4)
    for piece_links in (1, 97, 5000):
        bounded = ibm_model1(chunks, 60, 50, 4, keep_bytes=0, piece_links=piece_links)
        assert np.array_equal(kept[0], bounded[0]) and np.array_equal(kept[1], bounded[1])


def test_bounded_memory_ibm_model1_uses_less_memory():
    src, tgt = _long_pairs(3000)
    chunks = [chunk for a in range(0, 3000, 100) for chunk in id_list_chunks(src[a:a + 100], tgt[a:a + 100])]

    def peak(**kwargs) -> int:
        tracemalloc.start()
        ibm_model1(chunks, 60, 50, 1, **kwargs)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    assert peak(keep_bytes=0, piece_links=20_000) * 3 < peak()


def _train(tiny_recipe, run: Path, *overrides: str):
    from nmt.training.loop import train

    train(tiny_recipe("train.max_steps=1", "train.valid_every=1", "decode.shortlist=3", *overrides),
          run_dir=run)


def _what_ran(text: str) -> dict[str, bool]:
    return {"sentencepiece": "trained sentencepiece" in text, "encoding": "pairs encoded (" in text,
            "lexicon": "lexicon (IBM Model 1" in text}


@pytest.mark.parametrize("change, redone", [
    ("data.lexicon_sample=50", {"sentencepiece": False, "encoding": False, "lexicon": True}),
    ("tokenizer.src_vocab_size=90", {"sentencepiece": True, "encoding": True, "lexicon": True}),
    ("corpus", {"sentencepiece": True, "encoding": True, "lexicon": True}),
])
def test_a_second_run_hits_every_cache_and_a_change_misses(tiny_recipe, tmp_path, cache, caplog, change, redone):
    corpus = tmp_path / "tiny"
    shutil.copytree(REPO / "data" / "tiny", corpus)
    data = f"data.path={corpus}"
    caplog.set_level(logging.INFO)
    _train(tiny_recipe, tmp_path / "cold", data)
    assert _what_ran(caplog.text) == dict.fromkeys(redone, True)
    caplog.clear()
    _train(tiny_recipe, tmp_path / "warm", data)
    assert _what_ran(caplog.text) == dict.fromkeys(redone, False)
    assert "training skipped" in caplog.text and "building skipped" in caplog.text
    for name in (SRC_MODEL, TGT_MODEL, LEXICON_FILE, NAMES_FILE):  # each run directory holds its own copy
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes()
    caplog.clear()
    if change == "corpus":
        train_file = corpus / "train.tsv"
        train_file.write_text(train_file.read_text(encoding="utf-8") + "Hello.\tBonjour.\n", encoding="utf-8")
        _train(tiny_recipe, tmp_path / "changed", data)
    else:
        _train(tiny_recipe, tmp_path / "changed", data, change)
    assert _what_ran(caplog.text) == redone
    if change == "data.lexicon_sample=50":
        assert Lexicon.load(tmp_path / "changed" / LEXICON_FILE).metadata["pairs"] == "50"


@pytest.mark.parametrize("setting, message", [
    ("tokenizer.input_sentence_size=0", "tokenizer.input_sentence_size: got 0, must be > 0"),
    ("tokenizer.input_sentence_size=1.5", "tokenizer.input_sentence_size: got 1.5, expected an integer"),
    ("data.lexicon_sample=-5", "data.lexicon_sample: got -5, must be > 0"),
    ("data.lexicon_sample=many", "data.lexicon_sample: got 'many', expected an integer or null"),
])
def test_bad_sample_sizes_are_refused_with_the_key(tmp_path, capsys, setting, message):
    from nmt.cli import main

    assert main(["train", str(REPO / "recipes" / "tiny.yaml"), "--run-dir", str(tmp_path / "run"),
                 "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "run" / SRC_MODEL)


def test_a_checked_tsv_file_is_not_read_again_until_it_changes(tmp_path, cache, monkeypatch):
    from nmt.config import DataConfig
    from nmt.data import corpus as corpus_module
    from nmt.errors import DataError

    root = tmp_path / "tiny"
    shutil.copytree(REPO / "data" / "tiny", root)
    cfg = DataConfig(path=str(root), cache_dir=str(tmp_path / "hf"))
    checked = []
    real = corpus_module.check_tsv
    monkeypatch.setattr(corpus_module, "check_tsv", lambda path, *a, **k: checked.append(path.name) or real(path, *a, **k))
    first = corpus_module.load_corpus(cfg, splits=("train", "valid"))
    assert sorted(checked) == ["train.tsv", "valid.tsv"]
    checked.clear()
    again = corpus_module.load_corpus(cfg, splits=("train", "valid"))
    assert checked == [] and again["train"]["src"] == first["train"]["src"]
    with open(root / "train.tsv", "a", encoding="utf-8") as f:
        f.write("one column only\n")
    with pytest.raises(DataError, match=r"train\.tsv:\d+: found 1 tab-separated column"):
        corpus_module.load_corpus(cfg, splits=("train", "valid"))
    assert checked == ["train.tsv"]

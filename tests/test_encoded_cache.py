"""nmt.data.encoded_cache: encoded splits stored once per corpus, tokenizers and filter; the same
result for any number of encoding processes; a bounded cache."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import pytest

from nmt.config import DataConfig, TokenizerConfig
from nmt.data import encoded_cache
from nmt.data.batching import encode_dataset
from nmt.data.corpus import load_corpus
from nmt.data.encoded_cache import corpus_identity, encode_split, entry_key, prune
from nmt.data.tokenizer import train

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A copy of the tiny corpus (its files' times may be changed), its splits and tokenizers."""
    root = tmp_path_factory.mktemp("corpus") / "tiny"
    shutil.copytree(TINY, root)
    cfg = DataConfig(path=str(root), cache_dir=str(tmp_path_factory.mktemp("hf")))
    corpus = load_corpus(cfg, splits=("train", "valid"))
    tok = train(TokenizerConfig(src_vocab_size=300, tgt_vocab_size=250, num_threads=1),
                corpus["train"], tmp_path_factory.mktemp("run"))
    return cfg, corpus, tok


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NMT_CACHE_DIR", str(tmp_path / "nmt-cache"))
    monkeypatch.delenv("NMT_ENCODED_CACHE_GB", raising=False)
    return tmp_path / "nmt-cache" / "encoded"


def _rows(ds) -> list[tuple]:
    return list(zip(ds["src_ids"], ds["tgt_ids"], ds["src_len"], ds["tgt_len"]))


def test_second_encoding_is_read_from_the_cache(tiny, cache, caplog):
    cfg, corpus, tok = tiny
    caplog.set_level(logging.INFO, "nmt.data.corpus")
    first = encode_split(corpus["train"], tok, cfg, "train", filtered=True)
    assert "pairs encoded (" in caplog.text and "encoding skipped" not in caplog.text
    assert [p.name for p in cache.iterdir()] == [os.listdir(cache)[0]]  # one entry, no leftovers
    caplog.clear()
    again = encode_split(corpus["train"], tok, cfg, "train", filtered=True)
    assert "encoding skipped" in caplog.text and "pairs encoded (" not in caplog.text
    expected = encode_dataset(corpus["train"], tok, max_len=cfg.filter.max_len,
                              max_ratio=cfg.filter.max_ratio, min_len=cfg.filter.min_len)
    assert _rows(first) == _rows(again) == _rows(expected)
    assert again.cache_files and all(str(cache) in f["filename"] for f in again.cache_files)  # mapped


def test_any_number_of_processes_gives_the_same_table(tiny, cache):
    cfg, corpus, tok = tiny
    one = encode_split(corpus["train"], tok, dataclasses.replace(cfg, num_proc=1), "train", filtered=True)
    shutil.rmtree(cache)
    two = encode_split(corpus["train"], tok, dataclasses.replace(cfg, num_proc=2), "train", filtered=True)
    assert _rows(one) == _rows(two)
    (a,), (b,) = one.cache_files, two.cache_files
    assert Path(a["filename"]).read_bytes() == Path(b["filename"]).read_bytes()


def test_the_key_changes_with_what_the_encoding_depends_on(tiny, cache):
    cfg, corpus, tok = tiny
    identity = corpus_identity(cfg)
    base = entry_key(identity, tok.file_hashes, "train", {"max_len": 100})
    assert entry_key(identity, tok.file_hashes, "train", {"max_len": 100}) == base
    assert entry_key(corpus_identity(dataclasses.replace(cfg, num_proc=4)), tok.file_hashes, "train",
                     {"max_len": 100}) == base  # not a content setting
    assert entry_key(identity, tok.file_hashes, "train", {"max_len": 90}) != base
    assert entry_key(identity, tok.file_hashes, "valid", {"max_len": 100}) != base
    other_tok = {name: "0" * 64 for name in tok.file_hashes}
    assert entry_key(identity, other_tok, "train", {"max_len": 100}) != base
    normalised = dataclasses.replace(cfg, filter=dataclasses.replace(cfg.filter, normalize="NFKC"))
    assert entry_key(corpus_identity(normalised), tok.file_hashes, "train", {"max_len": 100}) != base
    train_file = Path(cfg.path) / "train.tsv"
    st = train_file.stat()
    os.utime(train_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file was rewritten
    assert entry_key(corpus_identity(cfg), tok.file_hashes, "train", {"max_len": 100}) != base


def test_an_entry_of_another_size_is_not_used(tiny, cache):
    cfg, corpus, tok = tiny
    encode_split(corpus["valid"], tok, cfg, "valid", filtered=False)
    (entry,) = cache.iterdir()
    assert encoded_cache.load_entry(entry.name, len(corpus["valid"])) is not None
    assert encoded_cache.load_entry(entry.name, len(corpus["valid"]) + 1) is None
    # an outdated entry of the same name is replaced, not read
    (entry / "nmt-encoded.json").write_text('{"version": "encoded-v0", "input_rows": 1}')
    again = encode_split(corpus["valid"], tok, cfg, "valid", filtered=False)
    assert len(again) == len(corpus["valid"])
    assert encoded_cache.load_entry(entry.name, len(corpus["valid"])) is not None


def test_zero_gb_turns_the_cache_off(tiny, cache, monkeypatch):
    cfg, corpus, tok = tiny
    monkeypatch.setenv("NMT_ENCODED_CACHE_GB", "0")
    encode_split(corpus["valid"], tok, cfg, "valid", filtered=False)
    assert not cache.exists()


def test_prune_deletes_the_least_recently_used(tmp_path):
    for i, name in enumerate(["old", "mid", "new"]):
        entry = tmp_path / name
        entry.mkdir()
        (entry / "data.arrow").write_bytes(b"x" * 1000)
        (entry / "nmt-encoded.json").write_text("{}")
        os.utime(entry / "nmt-encoded.json", (1000 + i, 1000 + i))
    assert prune(tmp_path, limit=2100, keep="old") == ["mid"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]
    assert prune(tmp_path, limit=10**6) == []
    assert encoded_cache.clear(tmp_path) > 2000 and not tmp_path.exists()


def test_nmt_cache_lists_and_clears(tiny, cache, capsys):
    from nmt.cli import main

    cfg, corpus, tok = tiny
    encode_split(corpus["valid"], tok, cfg, "valid", filtered=False)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out and f"{len(corpus['valid'])} pairs" in out and "1 entry" in out
    assert main(["cache", "--clear"]) == 0
    assert "freed" in capsys.readouterr().out and not cache.exists()
    assert main(["cache"]) == 0 and "0 entries" in capsys.readouterr().out


def test_an_unwritable_cache_directory_only_costs_the_reuse(tiny, tmp_path, monkeypatch, caplog):
    cfg, corpus, tok = tiny
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NMT_CACHE_DIR", str(blocker))
    caplog.set_level(logging.WARNING, "nmt.data.corpus")
    encoded = encode_split(corpus["valid"], tok, cfg, "valid", filtered=False)
    assert len(encoded) == len(corpus["valid"]) and "cannot be written" in caplog.text

"""The vectorised encoder gives exactly what encoding each sentence on its own gives."""
from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from nmt.config import DataConfig, TokenizerConfig
from nmt.data import batching
from nmt.data.batching import _encode_batch, encode_dataset
from nmt.data.corpus import load_corpus
from nmt.data.id_columns import drop_reasons, with_eos
from nmt.data.tokenizer import train
from nmt.data.vocab import EOS_ID

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny"
SETTINGS = [  # (max_len, max_ratio, min_len)
    (12, 1.5, 1), (None, 2.0, 1), (20, None, 0), (8, 1.2, 3), (None, None, 2), (30, 3.0, 0),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    corpus = load_corpus(DataConfig(path=str(TINY), cache_dir=str(tmp_path_factory.mktemp("hf"))))
    tok = train(TokenizerConfig(src_vocab_size=300, tgt_vocab_size=250, num_threads=1),
                corpus["train"], tmp_path_factory.mktemp("run"))
    return corpus, tok


def _pairs(corpus) -> dict[str, list[str]]:
    """Real pairs, pairs joined into long ones (1 to 8 sentences a side, so many lengths and
    ratios), empty sides and text outside the models' alphabet."""
    src, tgt = corpus["train"]["src"][:], corpus["train"]["tgt"][:]
    rng = np.random.default_rng(0)
    pairs = list(zip(src, tgt))
    for _ in range(300):
        a, b = rng.integers(1, 9, size=2)
        pairs.append((" ".join(src[i] for i in rng.integers(0, len(src), size=a)),
                      " ".join(tgt[i] for i in rng.integers(0, len(tgt), size=b))))
    odd = [("", "Empty."), ("Vide.", ""), ("", ""), ("Ça coûte 5 €, déjà ?", "Übermäßig größer"),
           ("日本語の文です。", "中文句子。"), ("emoji 🙂🙂 ok", "ok 🙂"), ("   ", "  spaces  "), ("a", "b c")]
    for k, pair in enumerate(odd):
        pairs.insert(37 * k + 5, pair)
    return {"src": [p[0] for p in pairs], "tgt": [p[1] for p in pairs]}


def _reference(src_texts, tgt_texts, tok, max_len, max_ratio, min_len, with_drop) -> dict[str, list]:
    """Each sentence on its own: the ids plus EOS, their lengths and the first rule that drops it."""
    out = {"src_ids": [], "tgt_ids": [], "src_len": [], "tgt_len": [], "_drop": []}
    for s_text, t_text in zip(src_texts, tgt_texts):
        s, t = tok.src.encode(s_text, out_type=int), tok.tgt.encode(t_text, out_type=int)
        out["src_ids"].append(s + [EOS_ID])
        out["tgt_ids"].append(t + [EOS_ID])
        out["src_len"].append(len(s) + 1)
        out["tgt_len"].append(len(t) + 1)
        ls, lt = len(s), len(t)
        if ls == 0 or lt == 0:
            reason = 1 if min_len > 0 else 0
        elif ls < min_len or lt < min_len:
            reason = 2
        elif max_len is not None and (ls > max_len or lt > max_len):
            reason = 3
        elif max_ratio is not None and max(ls, lt) / min(ls, lt) > max_ratio:
            reason = 4
        else:
            reason = 0
        out["_drop"].append(reason)
    if not with_drop:
        del out["_drop"]
    return out


@pytest.mark.parametrize("max_len,max_ratio,min_len", SETTINGS)
def test_batch_columns_equal_the_per_sentence_reference(tiny, max_len, max_ratio, min_len):
    corpus, tok = tiny
    pairs = _pairs(corpus)
    table = _encode_batch(pairs, tok, max_len, max_ratio, min_len, with_drop=True)
    expected = _reference(pairs["src"], pairs["tgt"], tok, max_len, max_ratio, min_len, True)
    assert table.to_pydict() == expected
    assert table.schema == pa.schema([("src_ids", pa.list_(pa.int32())), ("tgt_ids", pa.list_(pa.int32())),
                                      ("src_len", pa.int32()), ("tgt_len", pa.int32()), ("_drop", pa.int8())])
    assert len(set(expected["_drop"])) >= 2  # something is dropped, something kept


def test_the_settings_exercise_every_rule(tiny):
    corpus, tok = tiny
    pairs = _pairs(corpus)
    seen = set()
    for max_len, max_ratio, min_len in SETTINGS:
        seen |= set(_reference(pairs["src"], pairs["tgt"], tok, max_len, max_ratio, min_len, True)["_drop"])
    assert seen == {0, 1, 2, 3, 4}


def test_drop_reasons_take_the_first_rule_that_applies():
    src = np.array([0, 0, 1, 5, 50, 50, 4, 10, 9])
    tgt = np.array([0, 60, 9, 1, 60, 10, 4, 20, 3])
    assert drop_reasons(src, tgt, max_len=40, max_ratio=2.0, min_len=2).tolist() == \
        [1, 1, 2, 2, 3, 3, 0, 0, 4]
    assert drop_reasons(src, tgt, max_len=40, max_ratio=2.0, min_len=0).tolist() == \
        [0, 0, 4, 4, 3, 3, 0, 0, 4]
    assert drop_reasons(src, tgt, max_len=None, max_ratio=None, min_len=1).tolist() == [1, 1] + [0] * 7


def test_with_eos_handles_empty_batches_and_empty_rows():
    assert with_eos([], np.zeros(0, dtype=np.int64)).to_pylist() == []
    ids = [[], [5, 6], [], [7]]
    assert with_eos(ids, np.array([0, 2, 0, 1])).to_pylist() == [[EOS_ID], [5, 6, EOS_ID], [EOS_ID], [7, EOS_ID]]


@pytest.mark.parametrize("num_proc,map_batch", [(None, None), (None, 97), (2, None)])
def test_encoded_dataset_equals_the_reference(tiny, tmp_path, monkeypatch, num_proc, map_batch):
    corpus, tok = tiny
    if map_batch:  # many batches, the last one short
        monkeypatch.setattr(batching, "_MAP_BATCH", map_batch)
    pairs = _pairs(corpus)
    ds = datasets.Dataset.from_dict({**pairs, "n": list(range(len(pairs["src"])))})
    max_len, max_ratio, min_len = 12, 1.5, 1
    enc = encode_dataset(ds, tok, max_len=max_len, max_ratio=max_ratio, min_len=min_len, num_proc=num_proc,
                         keep_text=True, cache_dir=str(tmp_path))
    ref = _reference(pairs["src"], pairs["tgt"], tok, max_len, max_ratio, min_len, True)
    keep = [i for i, r in enumerate(ref["_drop"]) if r == 0]
    assert 0 < len(keep) < len(ds)
    assert enc["n"][:] == keep  # same rows, same order; other columns pass through
    assert enc["src"][:] == [pairs["src"][i] for i in keep]
    for column in ("src_ids", "tgt_ids", "src_len", "tgt_len"):
        assert enc[column][:] == [ref[column][i] for i in keep], column
    assert enc.features["src_ids"] == datasets.List(datasets.Value("int32"))
    assert enc.features["src_len"] == datasets.Value("int32")
    unfiltered = encode_dataset(ds, tok, num_proc=num_proc)
    assert unfiltered["tgt_ids"][:] == ref["tgt_ids"] and unfiltered["src_len"][:] == ref["src_len"]


def test_batching_does_not_load_pyarrow():
    """Translation batches with nmt.data.batching; loading pyarrow there would add its import
    (about 1.7 MB of Python objects) to what `nmt translate` holds (the flat-memory test)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    code = ("import sys, nmt.data.batching, nmt.data.id_columns; "
            "print('pyarrow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

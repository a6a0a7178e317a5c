"""nmt.data.batching: encoding + length filters, the token batch sampler, collation, inference batches."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from nmt.config import DataConfig, TokenizerConfig
from nmt.data.batching import (
    Batch,
    TokenBatchSampler,
    collate,
    encode_dataset,
    inference_batches,
    lengths_of,
)
from nmt.data.corpus import load_corpus
from nmt.data.tokenizer import train
from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID
from nmt.errors import CheckpointError

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf")
    corpus = load_corpus(DataConfig(path=str(TINY), cache_dir=str(cache)))
    tok = train(TokenizerConfig(src_vocab_size=300, tgt_vocab_size=250, num_threads=1),
                corpus["train"], tmp_path_factory.mktemp("run"))
    return corpus, tok


def _random_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tgt = rng.integers(2, 60, size=n)
    src = np.clip((tgt * rng.uniform(0.8, 1.4, size=n)).astype(int), 2, None)
    return src, tgt


def _flat(batches) -> list[int]:
    return [i for b in batches for i in b]


# ------------------------------------------------------------------------------------ encoding


def test_encode_appends_eos_and_counts_it(tiny):
    corpus, tok = tiny
    assert set(encode_dataset(corpus["valid"], tok).column_names) == {"src_ids", "tgt_ids", "src_len",
                                                                       "tgt_len"}
    enc = encode_dataset(corpus["valid"], tok, keep_text=True)
    assert len(enc) == len(corpus["valid"])
    assert enc["tgt"][:] == corpus["valid"]["tgt"][:]  # same order
    assert {"src", "tgt", "src_ids", "tgt_ids", "src_len", "tgt_len"} <= set(enc.column_names)
    row = enc[0]
    assert row["src_ids"] == tok.encode_src([row["src"]])[0] + [EOS_ID]
    assert row["tgt_ids"] == tok.encode_tgt([row["tgt"]])[0] + [EOS_ID]
    assert row["src_len"] == len(row["src_ids"]) and row["tgt_len"] == len(row["tgt_ids"])
    assert tok.decode_tgt([row["tgt_ids"]]) == [row["tgt"]]
    assert enc.features["src_ids"].feature.dtype == "int32"
    src_len, tgt_len = lengths_of(enc)
    assert src_len.tolist() == enc["src_len"][:] and tgt_len.sum() == sum(map(len, enc["tgt_ids"]))


def test_encode_filters_by_subword_length_and_ratio(tiny, caplog):
    _, tok = tiny
    pairs = {"src": ["Je suis fatigué.", "Oui.", " ".join(["Je suis prêt."] * 12), "Non.", ""],
             "tgt": ["I am tired.", " ".join(["Yes, I am."] * 4), "I am ready.", "No.", "Empty."]}
    ds = datasets.Dataset.from_dict(pairs)
    n_src = [len(x) for x in tok.encode_src(pairs["src"])]
    n_tgt = [len(x) for x in tok.encode_tgt(pairs["tgt"])]
    max_len = max(n_src[0], n_tgt[0], n_src[3], n_tgt[3], n_tgt[1]) + 1
    assert n_src[2] > max_len  # the long one is too long; the others are not
    with caplog.at_level(logging.INFO, logger="nmt.data.corpus"):
        enc = encode_dataset(ds, tok, max_len=max_len, max_ratio=3.0, min_len=1, desc="toy",
                             keep_text=True)
    assert enc["tgt"][:] == ["I am tired.", "No."]  # long, bad ratio and empty dropped
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 3 of 5" in message and "1 with an empty side" in message
    assert "1 with more than max_len" in message and "1 with a length ratio" in message
    kept = encode_dataset(ds, tok)  # valid/test: nothing dropped, empty source = just EOS
    assert len(kept) == 5 and kept[4]["src_ids"] == [EOS_ID]


def test_encode_is_cached_per_input_tokenizer_and_settings(tiny):
    corpus, tok = tiny
    first = encode_dataset(corpus["train"], tok, max_len=50)
    again = encode_dataset(corpus["train"], tok, max_len=50)
    assert first.cache_files and again._fingerprint == first._fingerprint  # reused on resume
    assert encode_dataset(corpus["train"], tok, max_len=40)._fingerprint != first._fingerprint
    assert encode_dataset(corpus["train"], tok, max_len=50, keep_text=True)._fingerprint != first._fingerprint
    assert encode_dataset(corpus["valid"], tok, max_len=50)._fingerprint != first._fingerprint


# ------------------------------------------------------------------------------------ sampler


def test_every_example_once_and_budget_respected():
    src, tgt = _random_lengths(6000)
    sampler = TokenBatchSampler(src, tgt, batch_tokens=800, max_sentences=40, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(_flat(batches)) == list(range(6000))
    for b in batches:
        assert len(b) <= 40
        assert len(b) * tgt[b].max() <= 800
        assert tgt[b].sum() <= 800
    long_one = TokenBatchSampler([5, 900, 7], [4, 1000, 6], batch_tokens=100, bucket_width=10)
    assert sorted(map(sorted, long_one.batches())) == [[0, 2], [1]]  # too long: alone, not dropped
    exact = TokenBatchSampler([5, 900, 7], [4, 1000, 6], batch_tokens=100)
    assert sorted(exact.batches()) == [[0], [1], [2]]  # bucket_width=1 never mixes target lengths


def test_padding_efficiency_is_high():
    src, tgt = _random_lengths(6000)
    sampler = TokenBatchSampler(src, tgt, batch_tokens=1000, bucket_width=1, seed=3)
    stats = sampler.stats()
    assert stats["tgt_efficiency"] == 1.0  # exact-length buckets: no target padding
    assert sampler.padding_efficiency() > 0.9
    wide = TokenBatchSampler(src, tgt, batch_tokens=1000, bucket_width=8, seed=3)
    assert wide.padding_efficiency() < sampler.padding_efficiency()
    assert sorted(_flat(wide.batches())) == list(range(6000))
    unsorted = [list(range(i, min(i + 16, 6000))) for i in range(0, 6000, 16)]
    real = sum(src[b].sum() + tgt[b].sum() for b in map(np.array, unsorted))
    padded = sum(len(b) * (src[b].max() + tgt[b].max()) for b in map(np.array, unsorted))
    assert real / padded < 0.75  # what bucketing saves


def test_deterministic_order_per_seed_and_epoch():
    src, tgt = _random_lengths(3000)
    make = lambda seed: TokenBatchSampler(src, tgt, batch_tokens=600, seed=seed)  # noqa: E731
    a, b = make(7), make(7)
    assert a.batches(0) == b.batches(0)
    assert a.batches(1) == b.batches(1)
    assert a.batches(0) != a.batches(1)
    assert make(8).batches(0) != a.batches(0)
    # equal-length examples are regrouped between epochs (not only the batch order changes)
    groups = lambda bs: {frozenset(x) for x in bs}  # noqa: E731
    assert groups(a.batches(0)) != groups(a.batches(1))
    assert len(a.batches(0)) == len(a.batches(1)) == len(a)
    fixed = TokenBatchSampler(src, tgt, batch_tokens=600, shuffle=False)
    assert fixed.batches(0) == fixed.batches(5)


def test_iteration_moves_to_next_epoch():
    src, tgt = _random_lengths(500)
    sampler = TokenBatchSampler(src, tgt, batch_tokens=300, seed=2)
    first, second = list(sampler), list(sampler)
    assert first == sampler.batches(0) and second == sampler.batches(1)
    assert sampler.state_dict()["epoch"] == 2
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_resume_mid_epoch_yields_exactly_the_rest():
    src, tgt = _random_lengths(2000)
    sampler = TokenBatchSampler(src, tgt, batch_tokens=500, seed=5)
    list(sampler)  # finish epoch 0
    it = iter(sampler)
    seen = [next(it) for _ in range(7)]
    state = sampler.state_dict()
    assert state["epoch"] == 1 and state["position"] == 7
    rest = list(it)
    resumed = TokenBatchSampler(src, tgt, batch_tokens=500, seed=5)
    resumed.load_state_dict(state)
    assert list(resumed) == rest
    assert seen + rest == sampler.batches(1)
    assert list(resumed) == sampler.batches(2)  # and carries on with the next epoch
    # with prefetching DataLoader workers the trainer passes what it really consumed
    resumed.load_state_dict(sampler.state_dict(position=3) | {"epoch": 1})
    assert list(resumed) == sampler.batches(1)[3:]
    with pytest.raises(CheckpointError, match="num_examples"):
        TokenBatchSampler(src[:-1], tgt[:-1], batch_tokens=500, seed=5).load_state_dict(state)


@pytest.mark.parametrize("remainder", ["pad", "drop"])
def test_distributed_ranks(remainder):
    src, tgt = _random_lengths(3001, seed=4)
    world = 3
    ranks = [TokenBatchSampler(src, tgt, batch_tokens=700, seed=9, num_replicas=world, rank=r,
                               remainder=remainder) for r in range(world)]
    single = TokenBatchSampler(src, tgt, batch_tokens=700, seed=9)
    total = len(single)
    assert total % world != 0  # the remainder policy matters here
    per_rank = [r.batches(0) for r in ranks]
    assert len({len(b) for b in per_rank}) == 1 and all(len(b) == len(r) for b, r in zip(per_rank, ranks))
    all_batches = [b for bs in per_rank for b in bs]
    counts = Counter(_flat(all_batches))
    global_batches = single.batches(0)
    if remainder == "pad":
        assert len(ranks[0]) == -(-total // world)
        assert set(counts) == set(range(3001))  # nobody is lost
        repeated = {i for i, c in counts.items() if c > 1}
        assert repeated == set(_flat(global_batches[: world - total % world]))
        assert all(c <= 2 for c in counts.values())
    else:
        assert len(ranks[0]) == total // world
        assert all(c == 1 for c in counts.values())  # nobody twice
        missing = set(range(3001)) - set(counts)
        assert missing == set(_flat(global_batches[total - total % world:]))
    # the ranks deal the same global order: rank r gets global batches r, r + world, ...
    assert per_rank[1][0] == global_batches[1]
    with pytest.raises(ValueError):
        TokenBatchSampler(src, tgt, batch_tokens=700, num_replicas=2, rank=2)
    # fewer batches than ranks: padding still gives every rank one batch
    few = [TokenBatchSampler([3, 4], [3, 3], batch_tokens=100, num_replicas=4, rank=r) for r in range(4)]
    assert [len(f) for f in few] == [1] * 4 and all(f.batches(0) == [[0, 1]] or f.batches(0) == [[1, 0]]
                                                    for f in few)


@pytest.mark.parametrize("n", [1, 7, 1001, 3333])
def test_two_ranks_train_as_many_batches_every_epoch(n):
    """An odd number of batches (or a single pair): both ranks still iterate the same number of
    batches in every epoch, so neither waits for the other's gradient all-reduce forever."""
    src, tgt = _random_lengths(n, seed=n)
    ranks = [TokenBatchSampler(src, tgt, batch_tokens=300, seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) >= 1
    for _ in range(3):  # iterating an epoch moves to the next one
        counts = [sum(1 for _ in sampler) for sampler in ranks]
        assert counts[0] == counts[1] == len(ranks[0])


def test_the_batch_plan_is_kept_in_int32_and_unchanged_by_it(monkeypatch):
    """Lengths and example indices are int32 (half the memory of a large corpus's plan); the
    batches are those int64 arrays give."""
    import nmt.data.batching as batching

    src, tgt = _random_lengths(5003, seed=8)
    narrow = TokenBatchSampler(src, tgt, batch_tokens=600, seed=3, num_replicas=2, rank=1)
    assert narrow.tgt_lens.dtype == np.int32 and narrow._rank_batches(0)[0].dtype == np.int32
    with pytest.raises(ValueError, match="2\\*\\*31"):
        TokenBatchSampler([2**31], [3], batch_tokens=600)
    monkeypatch.setattr(batching, "_int32", lambda values: values)
    wide = TokenBatchSampler(src, tgt, batch_tokens=600, seed=3, num_replicas=2, rank=1)
    assert wide.tgt_lens.dtype == np.int64
    for epoch in (0, 1):
        assert narrow.batches(epoch) == wide.batches(epoch)


# ------------------------------------------------------------------------------------ inference


def test_inference_batches():
    lengths = [5, 50, 3, 17, 17, 1, 60, 8, 0]
    batches = inference_batches(lengths, batch_tokens=64, max_sentences=3)
    assert sorted(_flat(batches)) == list(range(len(lengths)))
    flat = _flat(batches)
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        assert len(b) <= 3
        assert len(b) * max(max(lengths[i] for i in b), 1) <= 64 or len(b) == 1
    assert inference_batches([], 100) == []


# ------------------------------------------------------------------------------------ collation


def test_collate_shapes_bos_eos_masks():
    examples = [{"src_ids": [10, 11, 12, EOS_ID], "tgt_ids": [20, 21, EOS_ID]},
                {"src_ids": [13, EOS_ID], "tgt_ids": [22, 23, 24, 25, EOS_ID]}]
    batch = collate(examples)
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.src.tolist() == [[10, 11, 12, EOS_ID], [13, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.src.dtype == torch.long and batch.src_lengths.tolist() == [4, 2]
    assert batch.src_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.tgt_out.tolist() == [[20, 21, EOS_ID, PAD_ID, PAD_ID], [22, 23, 24, 25, EOS_ID]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 20, 21, PAD_ID, PAD_ID], [BOS_ID, 22, 23, 24, 25]]
    assert batch.tgt_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch.tgt_mask.dtype == torch.bool and batch.n_tgt_tokens == 8 and batch.n_src_tokens == 6
    moved = batch.to("cpu")
    assert torch.equal(moved.tgt_in, batch.tgt_in) and moved.n_tgt_tokens == 8
    columns = {"src_ids": [e["src_ids"] for e in examples], "tgt_ids": [e["tgt_ids"] for e in examples]}
    by_columns = collate(columns)  # what dataset[indices] returns
    assert all(torch.equal(getattr(by_columns, k), getattr(batch, k))
               for k in ("src", "src_mask", "tgt_in", "tgt_out", "tgt_mask"))
    src_only = collate([{"src_ids": [7, EOS_ID]}, {"src_ids": [EOS_ID]}])
    assert src_only.tgt_in is None and src_only.src.tolist() == [[7, EOS_ID], [EOS_ID, PAD_ID]]


def test_sampler_and_collate_end_to_end(tiny):
    """What training does: the sampler's index batches of the encoded dataset, collated."""
    corpus, tok = tiny
    enc = encode_dataset(corpus["train"], tok, max_len=50, max_ratio=3.0, min_len=1)
    sampler = TokenBatchSampler.from_dataset(enc, batch_tokens=120, max_sentences=16, seed=0)
    columns = enc.select_columns(["src_ids", "tgt_ids"])
    seen, tokens, n_batches = 0, 0, 0
    for indices in sampler.batches(0):
        batch = collate(columns[indices])
        n_batches += 1
        assert batch.tgt_in.shape == batch.tgt_out.shape == batch.tgt_mask.shape
        assert batch.tgt_out.numel() <= 120 or len(batch) == 1
        assert (batch.tgt_in[:, 0] == BOS_ID).all()
        assert (batch.tgt_out.gather(1, (batch.tgt_mask.sum(1, keepdim=True) - 1)) == EOS_ID).all()
        seen += len(batch)
        tokens += batch.n_tgt_tokens
    assert seen == len(enc) and tokens == sum(enc["tgt_len"][:])
    assert n_batches == len(sampler)
    # lengths may be given as datasets columns (read through Arrow, not element by element)
    by_column = TokenBatchSampler(enc["src_len"], enc["tgt_len"], batch_tokens=120, max_sentences=16)
    assert by_column.batches(0) == sampler.batches(0)
    assert inference_batches(enc["tgt_len"], 100) == inference_batches(enc["tgt_len"][:], 100)
    batch = collate(enc[sampler.batches(0)[0]])
    assert len(batch) == len(sampler.batches(0)[0])

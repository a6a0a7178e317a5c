"""The output layer per chunk of rows (:mod:`nmt.kernels.shortlist_chunks`) against the product over
the batch's union of shortlists: the same bits at every row's own columns, -inf elsewhere, before and
after rows leave; and search over it against search over the union product."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nmt.config import Recipe
from nmt.data.vocab import N_SPECIAL
from nmt.inference import torch_engine
from nmt.inference.torch_engine import own_columns
from nmt.inference.translator import Translator
from nmt.kernels import CHUNK_ROWS, ShortlistChunks, batch_invariant, shortlist_chunks
from tests.test_shortlist import SOURCES, make_lexicon


def random_batch(batch: int, width: int = 300, dim: int = 24, seed: int = 0, full_row: bool = False):
    """A union of ``width`` columns, each row owning the special ids, a shared block and a few of
    its own: as sentences of one batch do. ``full_row``: row 0 owns every column."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(width, dim, generator=g)
    bias = torch.randn(width, generator=g)
    outside = torch.rand(batch, width, generator=g) > 0.01
    outside[:, :N_SPECIAL + 20] = False
    if full_row:
        outside[0, :] = False
    return weight, bias, outside


@pytest.fixture
def always_chunks(monkeypatch):
    """The chunks used however wide they are."""
    monkeypatch.setattr(shortlist_chunks, "PAYS_FRACTION", math.inf)
    monkeypatch.setattr(shortlist_chunks, "MAX_GATHERED_BYTES", math.inf)


def union_own_logits(weight, bias, outside, readout, per_row, own=None):
    """The plain path: the union product, -inf outside, read at each row's own columns."""
    own = (own_columns(outside) if own is None else own).repeat_interleave(per_row, 0)
    penalty = torch.zeros(outside.shape).masked_fill(outside, -math.inf).repeat_interleave(per_row, 0)
    union = batch_invariant.linear(readout, weight, bias) + penalty
    return union, union.gather(1, own), own


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch,per_row,full_row", [
    (3, 1, False), (70, 1, False), (9, 5, False), (40, 4, False), (70, 1, True), (3, 1, True)])
def test_chunks_give_the_union_products_bits_at_each_rows_own_columns(batch, per_row, full_row, threads,
                                                                     monkeypatch):
    if full_row:  # a row without padding in its own columns; its chunk is the whole union
        monkeypatch.setattr(shortlist_chunks, "PAYS_FRACTION", math.inf)
    weight, bias, outside = random_batch(batch, full_row=full_row)
    readout = torch.randn(batch * per_row, weight.size(1), generator=torch.Generator().manual_seed(1))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        chunks = ShortlistChunks(weight, bias, outside, own_columns(outside), per_row)
        got = chunks.own_logits(readout)
        union, want, own = union_own_logits(weight, bias, outside, readout, per_row)
        scores = chunks.scores(got, own, outside.size(1))
    finally:
        torch.set_num_threads(previous)
    assert chunks.pays
    assert torch.equal(got, want)
    assert torch.equal(scores, union)  # -inf wherever a row's sentence does not own the column
    assert chunks.slots >= batch_invariant.MIN_ROWS
    if batch * per_row > 2 * CHUNK_ROWS:  # the chunks (but a full row's) are narrower than the union
        assert (chunks.bias[int(full_row):] > -math.inf).sum(-1).max() < outside.size(1) // 2


def test_rows_that_stay_keep_their_slots_and_their_bits():
    batch, per_row = 60, 2
    weight, bias, outside = random_batch(batch, seed=3)
    own = own_columns(outside)
    chunks = ShortlistChunks(weight, bias, outside, own, per_row)
    readout = torch.randn(batch * per_row, weight.size(1))
    chunks.own_logits(readout)
    keep = torch.randperm(batch, generator=torch.Generator().manual_seed(4))[:40]  # in any order
    kept = chunks.select(keep)
    assert kept is not None and kept.weight is chunks.weight  # nothing gathered again
    rows = (keep[:, None] * per_row + torch.arange(per_row)).reshape(-1)
    sub = torch.randn(rows.numel(), weight.size(1))
    # own columns selected as search selects them (their width stays the batch's)
    _, want, _ = union_own_logits(weight, bias, outside[keep], sub, per_row, own[keep])
    assert torch.equal(kept.own_logits(sub), want)
    assert chunks.select(keep[:10]) is None  # a layout mostly idle: built anew


def test_search_over_chunks_equals_search_over_the_union_product(tiny_model, monkeypatch, always_chunks):
    """Greedy, beam and n-best translations of a batch with a shortlist, through the whole engine:
    the same tokens and the same scores with the chunks as with the union product (the tiny
    vocabulary's chunks are nearly the union: used anyway)."""
    model = tiny_model("bahdanau", tgt_vocab=40, src_vocab=10, weight_scale=3.0, eos_bias=0.5)
    lexicon = make_lexicon(10, 40, keep=3, seed=2)
    translator = Translator(Recipe(), None, model, device="cpu", lexicon=lexicon)
    sources = SOURCES * 12 + [[9, 9, 4], [8, 7, 6, 5, 4]]  # several chunks, rows leaving as they end
    settings = [dict(beam=1, max_len_b=6), dict(beam=4, n_best=3, max_len_b=6), dict(beam=2, no_repeat_ngram=2)]
    calls = []
    real = ShortlistChunks.own_logits

    def counted(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(ShortlistChunks, "own_logits", counted)
    for options in settings:
        options = dict(options, shortlist=2, shortlist_frequent=3)
        with monkeypatch.context() as m:
            m.setattr(torch_engine, "shortlist_chunks_apply", lambda weight: False)
            plain = translator.search_ids(sources, **options)
        assert not calls
        fast = translator.search_ids(sources, **options)
        assert calls
        calls.clear()
        for p, f in zip(plain, fast):
            assert [h.tokens for h in f] == [h.tokens for h in p]
            assert [h.score for h in f] == [h.score for h in p]
            assert [h.log_probs for h in f] == [h.log_probs for h in p]


def test_chunks_that_would_not_pay_leave_the_union_product_and_gather_nothing():
    """Every row owning the whole union: the chunks would compute all its terms."""
    weight, bias, outside = random_batch(100, full_row=True)
    outside[:] = False
    chunks = ShortlistChunks(weight, bias, outside, own_columns(outside), 1)
    assert not chunks.pays and not hasattr(chunks, "weight")
    assert chunks.select(torch.arange(10)) is chunks
    weight, bias, outside = random_batch(100)
    assert ShortlistChunks(weight, bias, outside, own_columns(outside), 1).pays


def test_chunks_apply_to_float32_products_only():
    from nmt.kernels import shortlist_chunks_apply

    assert shortlist_chunks_apply(torch.zeros(4, 4))
    assert not shortlist_chunks_apply(torch.zeros(4, 4, dtype=torch.bfloat16))

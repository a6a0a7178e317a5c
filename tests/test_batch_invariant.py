"""A sentence's numbers in search do not depend on the rest of its batch (``kernels="auto"``,
float32, CPU): nmt.kernels.batch_invariant and the fast search path built on it.

MKL rounds a row of a product by the number of rows (1, 2–15, 16+) and a sum by the padding of
the row, so these tests need the sizes of a real model (hidden sizes 256): the tiny models of the
other tests multiply matrices too small to show it. They compare with ``torch.equal``.
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nmt.config import AttentionConfig, DecodeConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.data.vocab import BOS_ID, EOS_ID
from nmt.inference.search import pad_sources, search
from nmt.inference.shortlist import Lexicon
from nmt.inference.torch_engine import LogNormaliser
from nmt.kernels import batch_invariant
from nmt.model.attention import BahdanauAttention, dot_product, masked_softmax
from nmt.model.seq2seq import build_model

SRC_VOCAB, TGT_VOCAB = 300, 400
BATCH_SIZES = (2, 7, 8, 33)


@pytest.fixture(scope="module")
def model():
    """The fr-en recipe's sizes (embeddings, GRUs and readout 256, bidirectional encoder,
    Bahdanau attention, arelu) with random weights and small vocabularies."""
    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=256, dropout=0.0, activation="arelu", kernels="auto",
                      encoder=EncoderConfig(hidden_size=256, dropout=0.0),
                      decoder=DecoderConfig(hidden_size=256, dropout=0.0),
                      attention=AttentionConfig(kind="bahdanau"))
    return build_model(cfg, SRC_VOCAB, TGT_VOCAB).eval()


def _sources(n: int = 33, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 26, (n,), generator=g).tolist()
    return [torch.randint(4, SRC_VOCAB, (k,), generator=g).tolist() + [EOS_ID] for k in lengths]


SOURCES = _sources()
PROBE = SOURCES[5]  # 22 tokens: shorter than the longest of the batches of 7 and more


def _batches():
    """The probe alone, then in batches of BATCH_SIZES at different positions: ``(sources, row)``."""
    yield [PROBE], 0
    others = [s for s in SOURCES if s is not PROBE]
    for n in BATCH_SIZES:
        row = n // 2
        batch = others[:n - 1]
        yield batch[:row] + [PROBE] + batch[row:], row


def _start(model, sources, fold_context):
    src, lengths, mask = pad_sources(sources)
    tables = model.search_tables()
    enc = model.encode(src, lengths, mask, tables=tables)
    state, memory = model.start(enc, tables, fold_context=fold_context)
    return enc, state, memory, tables


def test_products_round_a_row_the_same_whatever_the_rows():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(40, 256), torch.randn(768, 256) * 0.05, torch.randn(768)
    alone = batch_invariant.linear(x[1:2], weight, bias)
    for rows in (2, 7, 15, 16, 33, 40):
        assert torch.equal(batch_invariant.linear(x[:rows], weight, bias)[1:2], alone)
    out, scratch = torch.empty(40, 768), torch.randn(40, 256)
    scratch[0] = x[1]
    assert torch.equal(batch_invariant.addmm_(out, bias, scratch, weight.t(), 1), alone)
    assert batch_invariant.linear(x[:3].view(3, 1, 256), weight).shape == (3, 1, 768)
    u, v = torch.rand(8, 5, 20, 256), torch.randn(256)
    scores = batch_invariant.dot(u, v, torch.tensor([0.5]))
    assert scores.shape == (8, 5, 20)
    torch.testing.assert_close(scores, u @ v + 0.5)
    assert torch.equal(batch_invariant.dot(u[3:4, :, :9], v, torch.tensor([0.5])), scores[3:4, :, :9])


def test_bf16_products_run_on_few_row_counts_and_round_a_row_the_same():
    """Under bf16 autocast a product runs on a rounded row count (oneDNN compiles a kernel per
    shape): multiples of 16 up to 128, then 8 counts per power of two; a row's result is the same
    whatever the rows, and float32 products keep their own count."""
    torch.manual_seed(0)
    x, weight, bias = torch.randn(700, 256), torch.randn(768, 256) * 0.05, torch.randn(768)
    assert [batch_invariant.product_rows(n, x) for n in (1, 16, 17, 300, 700)] == [16, 16, 17, 300, 700]
    seen = []
    real_linear = F.linear

    def spy(a, *rest):
        seen.append(a.size(0))
        return real_linear(a, *rest)

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        assert [batch_invariant.product_rows(n, x) for n in (1, 17, 100, 129, 300, 700)] == \
            [16, 32, 112, 144, 320, 704]
        alone = batch_invariant.linear(x[1:2], weight, bias)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(batch_invariant.F, "linear", spy)
            for rows in (2, 17, 33, 100, 129, 300, 700):
                got = batch_invariant.linear(x[:rows], weight, bias)
                assert got.shape == (rows, 768) and torch.equal(got[1:2], alone), rows
    assert seen == [16, 32, 48, 112, 144, 320, 704]


def test_bf16_products_without_a_bias_run_with_a_zero_one_and_a_room_is_padded_in_place():
    """oneDNN compiles a kernel with a bias apart from one without: a bf16 search product without
    one runs with a zero bias (same bits), so the query's and the readout's products of the same
    shape share kernels; float32 products keep theirs. A tensor made by ``room`` holds the rounded
    rows already: the product runs on it without a copy, and its scratch rows (NaN here) change
    no real row."""
    torch.manual_seed(0)
    x, weight = torch.randn(37, 256), torch.randn(256, 256) * 0.05
    calls = []
    real_linear = F.linear

    def spy(a, w, b=None):
        calls.append((a.data_ptr(), a.size(0), b))
        return real_linear(a, w, b)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batch_invariant.F, "linear", spy)
        batch_invariant.linear(x, weight)
        assert calls[-1][2] is None  # float32: no bias added
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
            got = batch_invariant.linear(x, weight)
            b = calls[-1][2]
            assert b is not None and not b.any() and calls[-1][1] == 48
            assert torch.equal(got, real_linear(F.pad(x, (0, 0, 0, 11)), weight)[:37])
            for shape, run in (((3, 5, 256), 16), ((3, 7, 256), 32)):
                u = batch_invariant.room(shape, x.bfloat16())
                assert u.untyped_storage().nbytes() == run * 256 * 2  # product_rows(rows) rows
                torch.empty(0, dtype=torch.bfloat16).set_(u.untyped_storage()).fill_(float("nan"))
                u.copy_(torch.randn(shape))
                calls.clear()
                out = batch_invariant.linear(u, weight, torch.ones(256))
                assert calls[0][0] == u.data_ptr() and calls[0][1] == run
                assert torch.isfinite(out).all() and out.shape == shape
            assert torch.equal(out, batch_invariant.linear(u.clone(), weight, torch.ones(256)))


def test_coarse_counts_round_up_by_at_most_an_eighth_or_one_step():
    from nmt.kernels.rows import coarse_count

    counts = [coarse_count(n) for n in range(1, 5000)]
    assert all(n <= c <= max(n + 15, n * 1.125) for n, c in zip(range(1, 5000), counts))
    assert len(set(counts)) == 8 + 8 * 5 + 2  # 16..128 by 16, 8 per octave to 4096, then 4608, 5120
    assert coarse_count(2041) == 2048 and coarse_count(1926) == 2048 and coarse_count(1025) == 1152


def test_the_invariant_attention_score_follows_its_v_weight():
    """The score's padded v operands are kept between steps, and built again when v changes."""
    from torch import nn

    from nmt.kernels import additive_tanh_score

    torch.manual_seed(5)
    v = nn.Linear(256, 1, bias=False)
    query_proj, keys2 = torch.randn(3, 2, 256), torch.randn(3, 7, 256)

    def fresh():
        weight = v.weight.detach()
        u = torch.add((query_proj * 2).unsqueeze(2), keys2.unsqueeze(1)).sigmoid_()
        return batch_invariant.dot(u, weight[0], -0.5 * weight.sum(dim=1)) * 2

    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(additive_tanh_score(query_proj, keys2, v, dot=batch_invariant.dot), fresh())
            v.weight.mul_(-0.5)  # an update in place, as an optimiser step or load_state_dict
    with torch.inference_mode():
        assert torch.equal(additive_tanh_score(query_proj, keys2, v, dot=batch_invariant.dot), fresh())


def test_the_fast_attention_score_runs_the_product_it_is_given():
    """``dot=`` is the v product: any product runs as given, and batch_invariant.dot from its kept
    operands gives the bits of the same product built afresh."""
    from torch import nn

    from nmt.kernels import additive_tanh_score

    torch.manual_seed(6)
    v = nn.Linear(64, 1, bias=False)
    query_proj, keys2 = torch.randn(3, 2, 64), torch.randn(3, 7, 64)
    calls = []

    def recorded(u, weight, bias):
        calls.append((tuple(u.shape), tuple(weight.shape), tuple(bias.shape)))
        return batch_invariant.dot(u, weight, bias)

    with torch.no_grad():
        assert torch.equal(additive_tanh_score(query_proj, keys2, v, dot=recorded),
                           additive_tanh_score(query_proj, keys2, v, dot=batch_invariant.dot))
        assert calls == [((3, 2, 7, 64), (1, 64), (1,))]
        doubled = additive_tanh_score(query_proj, keys2, v, dot=lambda u, weight, bias: 2 * (u @ weight[0] + bias))
        torch.testing.assert_close(doubled, 2 * additive_tanh_score(query_proj, keys2, v, dot=dot_product))


def test_padding_changes_no_sum_softmax_or_one_row_product():
    torch.manual_seed(1)
    scores = torch.randn(5, 9)
    weights = masked_softmax(scores, torch.ones(9, dtype=torch.bool), total=batch_invariant.ordered_sum)
    torch.testing.assert_close(weights, torch.softmax(scores, -1))
    keys = torch.randn(1, 9, 512)
    context = batch_invariant.bmm(weights[:1, None], keys)
    for width in (10, 16, 20, 33, 64):
        padded = torch.cat([scores, torch.randn(5, width - 9)], dim=1)
        allowed = torch.arange(width) < 9
        got = masked_softmax(padded, allowed, total=batch_invariant.ordered_sum)
        assert torch.equal(got[:, :9], weights) and got[:, 9:].abs().max() == 0
        padded_keys = torch.cat([keys, torch.randn(1, width - 9, 512)], dim=1)
        assert torch.equal(batch_invariant.bmm(got[:1, None], padded_keys), context)
        spread = torch.zeros(5, 2 * width)
        spread[:, ::2][:, :9] = scores.exp()  # the terms apart, zeros between and after them
        assert torch.equal(batch_invariant.ordered_sum(spread), batch_invariant.ordered_sum(scores.exp()))
    none = masked_softmax(scores, torch.zeros(9, dtype=torch.bool), total=batch_invariant.ordered_sum)
    assert none.abs().max() == 0  # a row with no allowed position: zeros, not NaN


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_attention_scores_with_the_invariant_products_are_the_same_alone_and_in_any_batch(activation):
    """The additive score given batch_invariant's ``linear`` and ``dot`` (search's fast step), in
    both of its forms: tanh through the sigmoid kernel, and any other scorer activation as written."""
    torch.manual_seed(3)
    att = BahdanauAttention(256, 512, activation=activation)
    keys, query = torch.randn(33, 20, 512), torch.randn(33, 5, 256)
    mask = torch.arange(20) < torch.randint(10, 21, (33, 1))
    products = {"linear": batch_invariant.linear, "dot": batch_invariant.dot}

    def scores(rows):
        proj = att.precompute(keys[:rows], batch_invariant.linear)
        return att.score(query[:rows], keys[:rows], proj, mask[:rows], **products)

    with torch.inference_mode():
        want = scores(33)
        torch.testing.assert_close(want, att.score(query, keys, att.precompute(keys), mask))
        for rows in (1, 2, 7):
            assert torch.equal(scores(rows)[0], want[0]), f"the first row differs among {rows}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_ordered_sum_ignores_zeros_anywhere_and_the_other_rows_and_is_the_float64_sum(dtype):
    """Zeros inserted between a row's terms (their order kept) and appended, rows of another batch
    around it: the same bits (a vectorised sum groups a row's terms by their positions, in float64
    too); the float64 sequential sum rounded once."""
    torch.manual_seed(4)
    terms = (torch.randn(6, 700, dtype=dtype) * 4).exp()
    want = batch_invariant.ordered_sum(terms)
    assert torch.equal(want, terms.double().cumsum(dim=1)[:, -1].to(dtype))
    for width in (700, 701, 1024, 3001):
        spread = torch.rand(9, width, dtype=dtype)
        for row in range(6):
            at = torch.randperm(width)[:700].sort().values
            spread[row + 3] = 0
            spread[row + 3, at] = terms[row]
        assert torch.equal(batch_invariant.ordered_sum(spread[3:]), want)
        assert torch.equal(batch_invariant.ordered_sum(spread)[3:], want)
    half = terms.to(torch.bfloat16)
    assert torch.equal(batch_invariant.ordered_sum(half), half.double().cumsum(dim=1)[:, -1].to(torch.bfloat16))


def test_an_ordered_log_normaliser_ignores_the_columns_between_a_rows_own():
    torch.manual_seed(2)
    logits = torch.randn(3, 300) * 4
    own = LogNormaliser(ordered=True)(logits)
    torch.testing.assert_close(own, torch.logsumexp(logits, dim=1))
    union = torch.full((3, 900), float("-inf"))
    union[:, 1::3] = logits
    assert torch.equal(LogNormaliser(ordered=True)(union), own)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_ordered_log_normaliser_over_a_rows_own_columns_only_gives_the_same_bits(dtype):
    """Each row reads only its own columns (the others -inf): the same bits as the whole union."""
    from nmt.inference.torch_engine import own_columns

    torch.manual_seed(3)
    outside = torch.rand(5, 900) > 0.2
    outside[0] = True
    outside[0, ::7] = False  # rows with different numbers of own columns
    outside[:, :4] = False
    union = (torch.randn(5, 900) * 4).to(dtype).masked_fill(outside, float("-inf"))
    columns = own_columns(outside)
    assert columns.shape == (5, int((~outside).sum(1).max()))
    for row in range(5):
        own = (~outside[row]).nonzero().squeeze(1)
        assert torch.equal(columns[row, :own.numel()], own), "own columns first, ascending"
        assert outside[row, columns[row, own.numel():]].all(), "then outside columns"
    whole = LogNormaliser(ordered=True)(union)
    assert torch.equal(LogNormaliser(ordered=True)(union, columns), whole)


def test_the_arg_max_over_a_rows_own_columns_is_the_arg_max_of_the_row_ties_included():
    from nmt.inference.torch_engine import own_argmax, own_columns

    torch.manual_seed(5)
    outside = torch.rand(6, 400) > 0.3
    outside[:, :4] = False
    scores = torch.randint(-3, 3, (6, 400)).float().masked_fill(outside, float("-inf"))  # many ties
    scores[1] = float("-inf")  # a row with every column forbidden
    values, columns = own_argmax(scores, own_columns(outside))
    want_values, want_columns = scores.max(dim=-1)
    assert torch.equal(values, want_values) and torch.equal(columns, want_columns)


@pytest.mark.parametrize("bf16", [False, True])
def test_a_sentence_is_encoded_the_same_alone_and_in_any_batch(model, bf16):
    """float32, and bf16 autocast (the encoder's hidden products in bf16)."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        want = None
        for sources, row in _batches():
            enc, state, memory, _ = _start(model, sources, fold_context=True)
            n = len(PROBE)
            got = (enc.states[row, :n], enc.final[row], state.hidden[row], memory.proj_keys[row, :n],
                   memory.folded[row, :n])
            if want is None:
                want = got
                continue
            for name, a, b in zip(("states", "final", "bridge", "proj_keys", "folded"), got, want):
                assert torch.equal(a, b), f"{name} differs in a batch of {len(sources)}"


@pytest.mark.parametrize("bf16", [False, True])
def test_the_memorys_products_run_on_the_real_positions_only(model, bf16, monkeypatch):
    """In a batch of mixed lengths the keys' projection and the folded context multiply the real
    source positions, not the B·S padded ones; at those positions the memory is what the product
    of every position gives, bit for bit, and zero at padding (which the attention weighs 0)."""
    sources = SOURCES[:9]
    real = sum(len(s) for s in sources)
    assert real < 0.75 * len(sources) * max(len(s) for s in sources)
    rows = []
    plain = batch_invariant.linear

    def spy(x, weight, bias=None):
        rows.append(x.reshape(-1, x.size(-1)).size(0))
        return plain(x, weight, bias)

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        src, lengths, mask = pad_sources(sources)
        tables = model.search_tables()
        enc = model.encode(src, lengths, mask, tables=tables)
        monkeypatch.setattr(batch_invariant, "linear", spy)
        _, memory = model.start(enc, tables, fold_context=True)
        monkeypatch.setattr(batch_invariant, "linear", plain)
        keys = enc.states.to(torch.bfloat16) if bf16 else enc.states
        proj = model.decoder.attention.precompute(keys, plain)
        folded = plain(keys.to(tables.context_weight.dtype), tables.context_weight)
    assert rows.count(real) == 2 and src.numel() not in rows, rows
    for name, got, full in (("proj_keys", memory.proj_keys, proj), ("folded", memory.folded, folded)):
        assert torch.equal(got[mask], full[mask]), name
        assert not got[~mask].any(), name


@pytest.mark.parametrize("beam", [1, 5])
def test_a_sentences_step_logits_are_the_same_alone_and_in_any_batch(model, beam):
    """Three steps from the same tokens, all of the vocabulary and a shortlist of some columns."""
    columns = torch.arange(0, TGT_VOCAB, 3)
    tokens = [BOS_ID, 17, 230]
    with torch.inference_mode():
        want = None
        for sources, row in _batches():
            _, state, memory, tables = _start(model, sources, fold_context=beam > 1)
            rows = torch.arange(len(sources)).repeat_interleave(beam)
            state = state.select(rows)
            mine = slice(row * beam, (row + 1) * beam)
            got = []
            for token in tokens:
                prev = torch.full((len(rows),), token)
                logits, out = model.step_logits(prev, state, memory, tables=tables)
                short, _ = model.step_logits(prev, state, memory, tables=tables,
                                             output=(model.output.weight[columns], model.output.bias[columns]))
                got += [logits[mine], short[mine], out.attention[mine, :len(PROBE)], out.state.hidden[mine]]
                state = out.state
            if want is None:
                want = got
                continue
            for k, (a, b) in enumerate(zip(got, want)):
                assert torch.equal(a, b), f"step {k // 4}, value {k % 4} differs in a batch of {len(sources)}"


def test_a_lone_batched_product_rounds_as_in_any_batch_with_several_threads():
    """torch splits a lone product of ``bmm`` between its threads by columns, whose pieces round
    otherwise than the whole products a batch's threads get: a sentence alone (its beams' context
    from its folded memory) would differ from the same sentence in a batch."""
    torch.manual_seed(0)
    a, b = torch.randn(9, 5, 23), torch.randn(9, 23, 1024)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        in_batch, one_row = batch_invariant.bmm(a, b), batch_invariant.bmm(a[:, :1], b)
        for k in (0, 4):
            assert torch.equal(batch_invariant.bmm(a[k:k + 1], b[k:k + 1])[0], in_batch[k])
            assert torch.equal(batch_invariant.bmm(a[k:k + 1, :1], b[k:k + 1])[0], one_row[k])
    finally:
        torch.set_num_threads(threads)


def _lexicon(keep: int = 12, seed: int = 3) -> Lexicon:
    g = torch.Generator().manual_seed(seed)
    top_ids = torch.stack([torch.randperm(TGT_VOCAB - 4, generator=g)[:keep] + 4 for _ in range(SRC_VOCAB)])
    probs = torch.linspace(0.5, 0.1, keep).expand(SRC_VOCAB, keep).clone()
    return Lexicon(top_ids, probs, torch.randperm(TGT_VOCAB, generator=g))


@pytest.mark.parametrize("beam,shortlist,bf16", [(5, 10, False), (1, 10, False), (5, 0, False),
                                                 (5, 10, True), (1, 10, True)])
def test_a_sentences_hypotheses_and_scores_are_the_same_alone_and_in_any_batch(model, beam, shortlist, bf16):
    """Search end to end, scores compared exactly: the output layer over the batch's shortlist
    union (in bf16 widened to a rounded count of columns), each row normalised over its own."""
    options = DecodeConfig(beam=beam, n_best=min(beam, 3), max_len_a=0.0, max_len_b=6, shortlist=shortlist,
                           shortlist_frequent=20)
    lexicon = _lexicon()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tables = model.search_tables()
        want = None
        for sources, row in _batches():
            src, lengths, mask = pad_sources(sources)
            hyps = search(model, src, lengths, mask, options, lexicon, tables=tables)[row]
            got = [(h.tokens, h.score, h.log_probs) for h in hyps]
            if want is None:
                want = got
            assert got == want, f"a batch of {len(sources)}"


def test_fast_search_stays_within_rounding_of_the_reference(model):
    """The batch-invariant products are the same equations: logits close to the plain step's."""
    reference = build_model(dataclasses.replace(model.cfg, kernels="reference"), SRC_VOCAB, TGT_VOCAB).eval()
    reference.load_state_dict(model.state_dict())
    sources = SOURCES[:7]
    with torch.inference_mode():
        _, state, memory, tables = _start(model, sources, fold_context=True)
        src, lengths, mask = pad_sources(sources)
        ref_state, ref_memory = reference.start(reference.encode(src, lengths, mask))
        prev = torch.full((len(sources),), BOS_ID)
        got, _ = model.step_logits(prev, state, memory, tables=tables)
        want, _ = reference.step_logits(prev, ref_state, ref_memory)
    torch.testing.assert_close(F.log_softmax(got, -1), F.log_softmax(want, -1), rtol=0, atol=1e-4)

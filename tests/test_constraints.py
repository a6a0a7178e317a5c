"""Lexically constrained beam search (nmt/inference/constraints.py, ConstrainedBeamSearch) on tiny
random models: every complete output contains each constraint exactly once, a beam that sees every
continuation equals exhaustive search over the outputs that contain the constraints, no constraint
means the unconstrained search, and both engines agree. Also the glossary of ``nmt translate``."""
from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.config import DecodeConfig
from nmt.data.vocab import EOS_ID
from nmt.errors import NmtError
from nmt.inference.beam import BeamSearch, ConstrainedBeamSearch
from nmt.inference.constraints import Constraints, allocate, check_constraints, occurrences
from nmt.inference.ops_numpy import numpy_ops
from nmt.inference.search import beam_search, pad_sources, search
from nmt.inference.search import _engine as torch_engine
from test_search import enumerate_outputs, exhaustive_scores, sources

pytestmark = pytest.mark.usefixtures("one_thread")

GENERABLE = [1] + list(range(4, 12))  # a 12-word target vocabulary: UNK and 4..11


@pytest.fixture
def tiny_model(tiny_model):
    return functools.partial(tiny_model, src_vocab=10, tgt_vocab=12, weight_scale=3.0, eos_bias=1.0)


def run(model, srcs, constraints, **opts):
    src, lengths, mask = pad_sources(srcs)
    return beam_search(model, src, lengths, mask, DecodeConfig(**opts), constraints=constraints)


# --------------------------------------------------------------------------- the bookkeeping

@pytest.mark.parametrize("constraint,tokens", [
    ([5, 6], [5, 5, 6, 7, 5, 6]), ([5, 5], [5, 5, 5]), ([5, 6, 5], [5, 6, 5, 6, 5]),
    ([4, 4, 5], [4, 4, 4, 5, 4, 4, 5]), ([7], [7, 1, 7, 7]), ([5, 6], [6, 5, 1, 6])])
def test_automaton_counts_occurrences_as_a_scan_does(constraint, tokens):
    """The constraint states follow every prefix: broken-off, restarted and overlapping matches."""
    cons = Constraints(numpy_ops, [[constraint, [9, 9, 9]]])
    sent = numpy_ops.as_array([0], numpy_ops.long)
    state, count = cons.start(sent)
    for i, t in enumerate(tokens):
        state, count = cons.advance(sent, state, count, numpy_ops.as_array([t], numpy_ops.long))
        assert int(count[0, 0]) == occurrences(tokens[: i + 1], constraint)
        assert int(count[0, 1]) == occurrences(tokens[: i + 1], [9, 9, 9])


def test_allocation_gives_every_bank_a_share_best_first():
    val = numpy_ops.as_array([[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, float("-inf")]], numpy_ops.float32)
    bank = numpy_ops.as_array([[0, 0, 0, 1, 1, 2, 2]], numpy_ops.long)
    # the best of bank 2, 1, 0, then the second best of 1 and 0 (bank 2's other one is -inf)
    assert allocate(numpy_ops, val, bank, 3, 2).tolist() == [[0, 3, 5]]
    assert allocate(numpy_ops, val, bank, 5, 2).tolist() == [[0, 1, 3, 4, 5]]


def test_bad_constraints_are_refused_and_repeats_kept_once():
    assert check_constraints([[5, 6], [], [5, 6], [7]]) == [[5, 6], [7]]
    for bad in ([[EOS_ID]], [[0, 5]], [[2]], [[-1]]):
        with pytest.raises(NmtError):
            check_constraints(bad)


# --------------------------------------------------------------------------- the search

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 50), beam=st.integers(1, 4), data=st.data())
def test_complete_outputs_contain_each_constraint_exactly_once(seed, beam, data, tiny_model):
    model = tiny_model(seed=seed, eos_bias=data.draw(st.floats(-1.0, 2.0)))
    srcs = sources(3, seed=seed)
    terms = st.lists(st.sampled_from(GENERABLE), min_size=1, max_size=3)
    constraints = [data.draw(st.lists(terms, max_size=2)) for _ in srcs]
    n_best = data.draw(st.integers(1, beam))
    results = run(model, srcs, constraints, beam=beam, n_best=n_best, max_len_b=data.draw(st.integers(2, 8)),
                  length_penalty=data.draw(st.sampled_from([0.0, 1.0])))
    for cs, hyps in zip(constraints, results):
        assert 1 <= len(hyps) <= n_best
        cs = check_constraints(cs)
        for h in hyps:
            counts = [occurrences(h.tokens, c) for c in cs]
            assert all(n <= 1 for n in counts), (cs, h.tokens)  # never twice
            # None: no sentence of the batch had constraints (the unconstrained search ran)
            assert (h.constraints_met is not False) == all(n == 1 for n in counts)
            if h.finished:  # EOS only once every constraint occurred
                assert h.constraints_met is not False
        met = [h.constraints_met is not False for h in hyps]
        assert met == sorted(met, reverse=True)  # those that meet them rank first


def _compare(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [h.tokens for h in g] == [h.tokens for h in w]
        assert [h.score for h in g] == [h.score for h in w]  # exactly
        assert [h.raw_score for h in g] == [h.raw_score for h in w]
        assert [h.log_probs for h in g] == [h.log_probs for h in w]
        assert [h.finished for h in g] == [h.finished for h in w]


@pytest.mark.parametrize("opts", [dict(beam=1), dict(beam=4, n_best=3), dict(beam=5, n_best=2, length_penalty=1.0,
                                  coverage_penalty=0.3, no_repeat_ngram=2, min_len=1)])
def test_no_constraints_is_the_unconstrained_search(opts, tiny_model, kernels):
    """No constraint anywhere: the unconstrained search runs (byte for byte); the constrained
    search itself, given sentences without constraints, finds the same hypotheses and scores."""
    model = tiny_model(seed=4, kernels=kernels)
    srcs = sources(8, seed=5)
    src, lengths, mask = pad_sources(srcs)
    options = DecodeConfig(**opts)
    plain = search(model, src, lengths, mask, options)
    _compare(search(model, src, lengths, mask, options, constraints=[[] for _ in srcs]), plain)
    _compare(search(model, src, lengths, mask, options, constraints=None), plain)
    with torch.inference_mode():
        engine = torch_engine(model, src, None, None)
        unconstrained = BeamSearch(engine, src, lengths, mask, options).run()
        empty = ConstrainedBeamSearch(engine, src, lengths, mask, options, constraints=[[] for _ in srcs]).run()
    if opts["beam"] > 1:
        _compare(unconstrained, plain)
    _compare(empty, unconstrained)
    assert all(h.constraints_met for hyps in empty for h in hyps)


def test_unconstrained_sentences_of_a_constrained_batch_are_searched_as_alone(tiny_model):
    model = tiny_model(seed=6)
    srcs = sources(6, seed=2)
    constraints = [[[5, 6]], [], [[7]], [], [[4], [9, 1]], []]
    mixed = run(model, srcs, constraints, beam=4, n_best=2)
    plain = run(model, srcs, None, beam=4, n_best=2)
    for cs, m, p in zip(constraints, mixed, plain):
        if not cs:
            assert [h.tokens for h in m] == [h.tokens for h in p]
            assert [h.score for h in m] == pytest.approx([h.score for h in p], abs=1e-6)


@pytest.mark.parametrize("constraints,alpha,beta,max_len,n_best", [
    ([[5]], 0.0, 0.0, 3, 4), ([[4, 5]], 0.0, 0.0, 4, 5), ([[5], [4]], 1.0, 0.0, 4, 4),
    ([[1, 1]], 0.0, 0.4, 3, 3), ([[5, 4, 5]], 2.0, 0.3, 4, 2)])
def test_large_beam_equals_exhaustive_search_over_outputs_with_the_constraints(
        constraints, alpha, beta, max_len, n_best, tiny_model, kernels):
    vocab = 6  # generable: UNK, EOS, 4, 5
    model = tiny_model("bahdanau", tgt_vocab=vocab, eos_bias=0.5, out_scale=3.0, seed=3, kernels=kernels)
    src = [4, 7, 5, 9, EOS_ID]
    candidates = [c for c in enumerate_outputs(max_len, vocab)
                  if all(occurrences(c, k) == 1 for k in constraints)]
    ranked = sorted(zip(exhaustive_scores(model, src, candidates, alpha, beta), map(tuple, candidates)),
                    reverse=True)
    assert len(ranked) >= n_best
    n = vocab - 3
    (hyps,) = run(model, [src], [constraints], beam=n ** (max_len - 1) * (n + 1), n_best=n_best,
                  max_len_a=0.0, max_len_b=max_len, length_penalty=alpha, coverage_penalty=beta)
    assert [tuple(h.tokens) for h in hyps] == [c for _, c in ranked[:n_best]]
    assert [h.score for h in hyps] == pytest.approx([s for s, _ in ranked[:n_best]], rel=1e-5, abs=1e-4)
    assert all(h.constraints_met for h in hyps)
    # the unconstrained optimum does not contain them (the constraints change the answer)
    (free,) = run(model, [src], None, beam=n ** (max_len - 1) * (n + 1), max_len_a=0.0, max_len_b=max_len,
                  length_penalty=alpha, coverage_penalty=beta)
    assert tuple(free[0].tokens) != ranked[0][1]


def test_large_beam_over_an_ensemble_equals_exhaustive_search(tiny_model):
    from nmt.inference.ensemble import Ensemble

    vocab, max_len, constraints = 6, 3, [[4, 4]]
    models = [tiny_model(kind, tgt_vocab=vocab, eos_bias=0.5, out_scale=3.0, seed=3 + i)
              for i, kind in enumerate(("bahdanau", "luong-general"))]
    src = [4, 7, 5, 9, EOS_ID]
    candidates = [c for c in enumerate_outputs(max_len, vocab) if occurrences(c, [4, 4]) == 1]
    ranked = sorted(zip(exhaustive_scores(models, src, candidates, 1.0), map(tuple, candidates)), reverse=True)
    (hyps,) = run(Ensemble(models), [src], [constraints], beam=36, n_best=3, max_len_a=0.0, max_len_b=max_len,
                  length_penalty=1.0)
    assert [tuple(h.tokens) for h in hyps] == [c for _, c in ranked[:3]]


def test_max_length_grows_to_fit_the_constraints_and_an_unmeetable_one_says_so(tiny_model):
    model = tiny_model(seed=2)
    long_term = [5, 6, 7, 8, 9, 10]
    (hyps,) = run(model, [[4, 5, EOS_ID]], [[long_term]], beam=3, max_len_a=0.0, max_len_b=2)
    assert occurrences(hyps[0].tokens, long_term) == 1 and hyps[0].constraints_met
    # a term the n-gram blocking forbids cannot be met: the output is closed and says so
    (blocked,) = run(model, [[4, 5, EOS_ID]], [[[5, 5]]], beam=3, max_len_a=0.0, max_len_b=4, no_repeat_ngram=1)
    assert blocked[0].constraints_met is False and not blocked[0].finished


def test_sampling_with_constraints_is_refused(tiny_model):
    src, lengths, mask = pad_sources(sources(2))
    with pytest.raises(NmtError, match="beam search"):
        search(tiny_model(), src, lengths, mask, DecodeConfig(beam=1, sample=True), constraints=[[[5]], []])

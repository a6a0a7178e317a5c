"""Sampling (``decode.sample``): the first token's empirical frequencies against the model's
probabilities from a direct forward pass (plain, temperature, top-k, top-p), reproducibility by
seed and line, the search rules it shares with greedy search, and the option errors."""
from __future__ import annotations

import math

import pytest
import torch

from nmt.config import ConfigError, DecodeConfig
from nmt.inference.search import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    nucleus,
    pad_sources,
    sample_search,
    score_targets,
    search,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = [5, 7, 4, 6, EOS_ID]
VOCAB = 12


@pytest.fixture(scope="module")
def model():
    from conftest import make_tiny_model

    return make_tiny_model(src_vocab=10, tgt_vocab=VOCAB, weight_scale=1.5, seed=3)


def first_token_probs(model) -> torch.Tensor:
    """P(first token = v | SRC) for every v, by teacher forcing each one-token target (float64)."""
    src, lengths, mask = pad_sources([SRC] * VOCAB)
    sums, _ = score_targets(model, src, lengths, mask, [[v] for v in range(VOCAB)], add_eos=False)
    return torch.tensor(sums, dtype=torch.float64).exp()


def expected(p: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """The sampling distribution written out: PAD and BOS never generated; p^(1/T) renormalised;
    the k most probable, renormalised; of those, the smallest most-probable set of mass >= top_p,
    renormalised."""
    q = [float(x) for x in p]
    q[PAD_ID] = q[BOS_ID] = 0.0
    q = [x ** (1.0 / temperature) for x in q]
    order = sorted(range(len(q)), key=lambda v: -q[v])
    keep = set(order[:top_k] if top_k else order)
    q = [x if v in keep else 0.0 for v, x in enumerate(q)]
    q = [x / sum(q) for x in q]
    mass, nucleus = 0.0, set()
    for v in order:
        if mass >= top_p:
            break
        nucleus.add(v)
        mass += q[v]
    q = [x if v in nucleus else 0.0 for v, x in enumerate(q)]
    return torch.tensor([x / sum(q) for x in q], dtype=torch.float64)


def first_tokens(model, n: int, **opts) -> torch.Tensor:
    """Counts of the first token over n samples (max length 1: every sample is one token)."""
    src, lengths, mask = pad_sources([SRC])
    options = DecodeConfig(beam=1, sample=True, n_best=n, max_len_a=0.0, max_len_b=1, **opts)
    (hyps,) = sample_search(model, src, lengths, mask, options)
    return torch.bincount(torch.tensor([h.tokens[0] for h in hyps]), minlength=VOCAB).double()


@pytest.mark.parametrize("opts", [
    {}, {"temperature": 0.5}, {"temperature": 2.0}, {"top_k": 3}, {"top_p": 0.6},
    {"temperature": 0.7, "top_k": 6, "top_p": 0.8}, {"top_k": 1}, {"top_p": 1e-6},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_first_token_frequencies_match_the_distribution(model, opts):
    n = 6000
    p = first_token_probs(model)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    q = expected(p, **opts)
    assert (q > 0.01).sum() >= (1 if opts.get("top_k") == 1 or opts.get("top_p", 1) < 0.01 else 3)
    counts = first_tokens(model, n, seed=11, **opts)
    assert int(counts.sum()) == n
    for v in range(VOCAB):
        if q[v] == 0:
            assert counts[v] == 0, (v, counts.tolist())  # outside top-k / the nucleus: never drawn
        else:
            sigma = math.sqrt(n * q[v] * (1 - q[v]))
            assert abs(counts[v] - n * q[v]) <= 4 * sigma + 1, (v, counts[v].item(), n * float(q[v]))


def test_second_token_frequencies_given_the_first(model):
    """Every step draws afresh: among samples that start with the most probable token v, the
    second token follows P(w | v, SRC)."""
    n = 6000
    v = int(first_token_probs(model).argmax())
    src, lengths, mask = pad_sources([SRC] * VOCAB)
    first, _ = score_targets(model, src, lengths, mask, [[v]] * VOCAB, add_eos=False)
    both, _ = score_targets(model, src, lengths, mask, [[v, w] for w in range(VOCAB)], add_eos=False)
    p = (torch.tensor(both, dtype=torch.float64) - torch.tensor(first, dtype=torch.float64)).exp()
    q = expected(p)
    src, lengths, mask = pad_sources([SRC])
    options = DecodeConfig(beam=1, sample=True, n_best=n, max_len_a=0.0, max_len_b=2, min_len=1, seed=4)
    (hyps,) = sample_search(model, src, lengths, mask, options)
    seconds = [h.tokens[1] for h in hyps if h.tokens[0] == v]
    m = len(seconds)
    assert m > n / 4
    counts = torch.bincount(torch.tensor(seconds), minlength=VOCAB).double()
    for w in range(VOCAB):
        sigma = math.sqrt(m * q[w] * (1 - q[w]))
        assert abs(counts[w] - m * q[w]) <= 4 * sigma + 1, (w, counts[w].item(), m * float(q[w]))


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_nucleus_from_candidates_equals_the_whole_sort(top_p):
    """Rows whose nucleus lies within the candidates and rows sorted whole give the set that
    sorting every row gives (random rows from peaked to flat, with impossible tokens)."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 300, generator=gen) * torch.linspace(0.1, 12.0, 64).unsqueeze(1)
    logits[::5, :7] = -math.inf
    probs = torch.softmax(logits, dim=1)
    values, order = probs.sort(dim=1, descending=True)
    want = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, values.cumsum(1) - values < top_p)
    got = nucleus(probs, top_p, candidates=8)
    assert torch.equal(got, want)
    within = probs.topk(8, dim=1).values.sum(1) >= top_p
    assert 0 < int(within.sum()) < 64 or top_p == 0.999  # both ways taken
    assert torch.equal(nucleus(probs, top_p), want)  # the default number of candidates
    assert bool((got.sum(1) >= 1).all())


def test_temperature_changes_the_frequencies_measurably(model):
    """The binomial bound is tight enough to tell the tempered distributions apart."""
    n = 6000
    p = first_token_probs(model)
    top = int(expected(p).argmax())
    cold = first_tokens(model, n, seed=2, temperature=0.5)
    warm = first_tokens(model, n, seed=2, temperature=2.0)
    assert cold[top] > n * float(expected(p)[top]) + 8 * math.sqrt(n) / 2
    assert warm[top] < n * float(expected(p)[top]) - 4 * math.sqrt(n) / 2


def sources(n: int, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 10, (int(torch.randint(1, 8, (1,), generator=gen)),), generator=gen).tolist()
            + [EOS_ID] for _ in range(n)]


def sample(model, srcs, keys=None, **opts):
    src, lengths, mask = pad_sources(srcs)
    options = DecodeConfig(beam=1, sample=True, **opts)
    return [[h.tokens for h in hyps] for hyps in search(model, src, lengths, mask, options, keys=keys)]


def test_same_seed_same_samples_independent_of_the_batch(model):
    srcs = sources(6)
    first = sample(model, srcs, seed=5, n_best=3)
    assert sample(model, srcs, seed=5, n_best=3) == first
    # each sentence alone, keyed by its position: the same samples as in the batch
    alone = [sample(model, [s], keys=[k], seed=5, n_best=3)[0] for k, s in enumerate(srcs)]
    assert alone == first
    # another batch order with the same keys
    order = [3, 0, 5, 1, 4, 2]
    shuffled = sample(model, [srcs[i] for i in order], keys=order, seed=5, n_best=3)
    assert shuffled == [first[i] for i in order]
    # the samples of one sentence are not all the same, and another seed (or key) gives others
    assert any(len({tuple(t) for t in hyps}) > 1 for hyps in first)
    assert sample(model, srcs, seed=6, n_best=3) != first
    assert sample(model, srcs, keys=[10, 11, 12, 13, 14, 15], seed=5, n_best=3) != first


def test_samples_score_as_forced_decoding_and_keep_the_search_rules(model):
    """Scores are the model's log-probabilities of the sampled tokens (temperature does not change
    them); min length, no-repeat n-grams and max length hold for every sample."""
    srcs = sources(5, seed=4)
    src, lengths, mask = pad_sources(srcs)
    options = DecodeConfig(beam=1, sample=True, n_best=4, temperature=1.7, seed=3,
                           min_len=2, no_repeat_ngram=2, max_len_a=1.0, max_len_b=3)
    results = sample_search(model, src, lengths, mask, options)
    for s, hyps in zip(srcs, results):
        assert len(hyps) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert len(h.tokens) <= len(s) + 3
            assert EOS_ID not in h.tokens[:2] and PAD_ID not in h.tokens and BOS_ID not in h.tokens
            grams = [tuple(h.tokens[i: i + 2]) for i in range(len(h.tokens) - 1)]
            assert len(grams) == len(set(grams))
            assert h.finished == (h.tokens[-1] == EOS_ID)
            (forced,), _ = score_targets(model, *pad_sources([s]), [h.tokens], add_eos=False)
            assert h.raw_score == pytest.approx(forced, abs=1e-4)
            assert h.raw_score == pytest.approx(sum(h.log_probs), abs=1e-5)


def test_sampling_with_attention_has_one_row_per_token(model):
    srcs = sources(3, seed=8)
    src, lengths, mask = pad_sources(srcs)
    options = DecodeConfig(beam=1, sample=True, n_best=2)
    for s, hyps in zip(srcs, sample_search(model, src, lengths, mask, options, return_attention=True)):
        for h in hyps:
            assert h.attention.shape == (len(h.tokens), len(s))
            assert torch.allclose(h.attention.sum(1), torch.ones(len(h.tokens)), atol=1e-5)


@pytest.mark.parametrize("changes,flag", [
    ({"sample": True, "beam": 4}, "sample"),
    ({"sample": True, "top_p": 0.0}, "top_p"),
    ({"sample": True, "top_p": 1.5}, "top_p"),
    ({"sample": True, "temperature": 0.0}, "temperature"),
    ({"sample": True, "temperature": -1.0}, "temperature"),
    ({"sample": True, "top_k": -1}, "top_k"),
    ({"sample": True, "seed": -3}, "seed"),
])
def test_bad_sampling_options(changes, flag):
    with pytest.raises(ConfigError, match=flag):
        DecodeConfig().updated(changes)


def test_sampling_sets_the_beam_and_n_best_counts_samples():
    options = DecodeConfig(beam=5).updated({"sample": True, "n_best": 8})
    assert options.beam == 1 and options.n_best == 8
    assert DecodeConfig(beam=5).updated({"n_best": 8}).beam == 8  # searching: n-best widens the beam


@pytest.mark.parametrize("temperature", ["1e-45", "1e-300", "1e300", "0.0009", "101"])
def test_temperatures_that_overflow_float32_are_refused(tiny_run, tmp_path, capsys, temperature):
    """``logits / T`` overflowed to inf/NaN in float32 and wrote "IIIIIIII" with exit 0."""
    from nmt.cli import main

    source = tmp_path / "in.fr"
    source.write_text("Je suis fatigué.\n", encoding="utf-8")
    assert main(["translate", str(tiny_run), "-i", str(source), "--checkpoint", "last", "--sample",
                 "--temperature", temperature]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--temperature" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("temperature", [0.001, 100.0])
def test_the_temperature_range_ends_sample(model, temperature):
    src, lengths, mask = pad_sources([SRC, SRC[:2] + [EOS_ID]])
    options = DecodeConfig().updated({"sample": True, "temperature": temperature, "n_best": 3})
    for hyps in search(model, src, lengths, mask, options):
        assert all(math.isfinite(h.score) for h in hyps)


def test_the_sampler_never_draws_from_nan_probabilities():
    import numpy as np

    from nmt.errors import NmtError
    from nmt.inference.ops_numpy import numpy_ops
    from nmt.inference.sampling import Sampler

    options = DecodeConfig().updated({"sample": True})
    sampler = Sampler(numpy_ops, options, [(0, 0, 0), (0, 1, 0)], np.array([3, 3]))
    logits = np.array([[0.0, 1.0, 2.0], [np.nan, np.nan, np.nan]], dtype=np.float32)
    with pytest.raises(NmtError, match="not finite numbers"):
        sampler(logits, np.array([0, 1]), 0)


@pytest.mark.parametrize("flags", [["--temperature", "0.5"], ["--top-k", "5"], ["--top-p", "0.9"],
                                   ["--seed", "3"]])
def test_sampling_options_without_sample_are_refused(tiny_run, tmp_path, capsys, flags):
    from nmt.cli import main

    source = tmp_path / "in.fr"
    source.write_text("Je suis fatigué.\n", encoding="utf-8")
    assert main(["translate", str(tiny_run), "-i", str(source), "--checkpoint", "last", *flags]) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "add --sample" in err and "Traceback" not in err
    assert main(["translate", str(tiny_run), "-i", str(source), "--checkpoint", "last", "--sample", *flags]) == 0

"""Search with the PyTorch engine: greedy search, batched beam search, sampling and forced decoding
over a :class:`~nmt.model.seq2seq.Seq2Seq` or an :class:`~nmt.inference.ensemble.Ensemble`.

The searches themselves are written once for every engine: :mod:`nmt.inference.greedy` (greedy
search and sampling) and :mod:`nmt.inference.beam` (beam search), with the rules of
:mod:`nmt.inference.rules` (hypotheses, scores, penalties, max lengths, forbidden tokens). This
module runs them on :class:`~nmt.inference.torch_engine.TorchEngine`; the ONNX engine
(:mod:`nmt.inference.onnx_translator`) runs the same code on numpy.

Everything here works on token ids (no tokenizers). The only Python loop is over time steps:
sentences and beams are rows of tensors, the attention memory is projected once per batch
(``model.start``), and a sentence that is done leaves the active batch (its rows of the decoder
state and memory are dropped with ``select``), so each step costs less as sentences finish.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID
from nmt.errors import NmtError
from nmt.inference.beam import beam_search_on
from nmt.inference.forced import targets_with_eos
from nmt.inference.greedy import one_token_per_step
from nmt.inference.ops_torch import TorchOps
from nmt.inference.rules import COVERAGE_FLOOR, Hypothesis
from nmt.inference.rules import coverage_penalty as _coverage_penalty
from nmt.inference.rules import length_penalty as _length_penalty
from nmt.inference.rules import max_lengths as _max_lengths
from nmt.inference.sampling import NUCLEUS_CANDIDATES, sample
from nmt.inference.sampling import nucleus as _nucleus
from nmt.inference.torch_engine import LogNormaliser, OutputShortlist, TorchEngine, check_eval, search_model

__all__ = [
    "Hypothesis", "max_lengths", "COVERAGE_FLOOR", "BOS_ID", "EOS_ID", "PAD_ID",
    "search", "greedy_search", "beam_search", "sample_search", "nucleus", "score_targets", "pad_sources",
    "length_penalty", "coverage_penalty", "LogNormaliser", "OutputShortlist",
]


def max_lengths(options: DecodeConfig, src_lengths: Tensor) -> Tensor:
    """Per-sentence max output length (generated tokens incl. EOS) as a long tensor."""
    return _max_lengths(TorchOps(src_lengths.device), options, src_lengths)


def length_penalty(lengths: Tensor | int, alpha: float) -> Tensor | float:
    """GNMT ``lp(n) = ((5 + n) / 6) ** alpha``."""
    return _length_penalty(TorchOps, lengths, alpha)


def coverage_penalty(coverage: Tensor, mask: Tensor, beta: float) -> Tensor:
    """GNMT ``beta * Σ_i log(min(coverage_i, 1))`` over ``mask``-ed source positions, ``(..., S) -> (...)``."""
    return _coverage_penalty(TorchOps, coverage, mask, beta)


# ------------------------------------------------------------------------------------- utilities

def pad_sources(sources: Sequence[Sequence[int]], device: torch.device | str | None = None):
    """Id lists (each non-empty, EOS already appended) -> ``(src (B, S), lengths (B,), mask (B, S))``."""
    if not sources or any(len(s) == 0 for s in sources):
        raise ValueError("pad_sources needs a non-empty list of non-empty id lists")
    width = max(len(s) for s in sources)
    # one tensor from Python lists: a row-by-row copy costs a few tensor operations per sentence
    src = torch.tensor([[int(i) for i in ids] + [PAD_ID] * (width - len(ids)) for ids in sources],
                       dtype=torch.long)
    lengths = torch.tensor([len(s) for s in sources], dtype=torch.long)
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    if device is not None:
        src, lengths, mask = src.to(device), lengths.to(device), mask.to(device)
    return src, lengths, mask


def search(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None = None,
           options: DecodeConfig | None = None, lexicon=None,
           return_attention: bool = False, tables=None, keys: Sequence[int] | None = None,
           constraints: Sequence[Sequence[Sequence[int]]] | None = None) -> list[list[Hypothesis]]:
    """Sampling when ``options.sample``, greedy search when ``options.beam == 1``, else beam
    search. One list per sentence; ``keys``: see :func:`sample_search`. ``constraints[b]``: target
    id lists that sentence b's outputs must contain (:mod:`nmt.inference.constraints`); any
    constraint makes the search a constrained beam search of ``options.beam`` beams, also for beam 1.

    ``options`` are the recipe's ``decode`` settings (checked here); ``return_attention`` keeps
    each hypothesis's attention weights (and local-p positions).

    With ``options.shortlist > 0`` the output layer is restricted to the batch's lexical shortlist
    (:mod:`nmt.inference.shortlist`; ``lexicon`` is the run's :class:`~nmt.inference.shortlist.Lexicon`).
    ``tables``: the model's :meth:`~nmt.model.seq2seq.Seq2Seq.search_tables`, built by a caller that
    searches many batches with unchanged weights; by default they are built for this search.
    """
    options = (options or DecodeConfig()).check()
    shortlist = None
    if options.shortlist:
        if lexicon is None:
            raise NmtError("a shortlist search needs the run's lexicon (nmt.inference.shortlist.Lexicon); "
                           "build it with `nmt shortlist RUN_DIR`")
        src_mask = _source_mask(src, src_lengths, src_mask)
        shortlist = OutputShortlist.of(model, lexicon, src, src_mask, options, constraints)
    if constraints is not None and any(constraints):
        if options.sample:
            raise NmtError("lexical constraints need beam search; sampling cannot follow them")
        return beam_search(model, src, src_lengths, src_mask, options, shortlist=shortlist,
                           return_attention=return_attention, tables=tables, constraints=constraints)
    if options.sample:
        return sample_search(model, src, src_lengths, src_mask, options, shortlist=shortlist,
                             return_attention=return_attention, tables=tables, keys=keys)
    search_fn = greedy_search if options.beam == 1 else beam_search
    return search_fn(model, src, src_lengths, src_mask, options, shortlist=shortlist,
                     return_attention=return_attention, tables=tables)


def _source_mask(src: Tensor, src_lengths: Tensor, src_mask: Tensor | None) -> Tensor:
    if src_mask is None:
        src_mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < src_lengths.unsqueeze(1)
    return src_mask


def _engine(model, src: Tensor, shortlist: OutputShortlist | None, tables) -> TorchEngine:
    """The engine of one search; ``tables`` are built when None (None again for the plain step)."""
    if tables is None and not model.training:
        tables = model.search_tables()
    return TorchEngine(model, tables, shortlist, src.device)


@torch.inference_mode()
def greedy_search(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None = None,
                  options: DecodeConfig | None = None, shortlist: OutputShortlist | None = None,
                  return_attention: bool = False, tables=None) -> list[list[Hypothesis]]:
    """Arg-max decoding; returns one hypothesis per sentence (``options.beam`` is ignored).
    ``tables``: see :func:`search`."""
    engine = _engine(model, src, shortlist, tables)
    hyps = one_token_per_step(engine, src, src_lengths.to(src.device), _source_mask(src, src_lengths, src_mask),
                              options or DecodeConfig(beam=1), return_attention)
    return [[h] for h in hyps]


@torch.inference_mode()
def beam_search(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None = None,
                options: DecodeConfig | None = None, shortlist: OutputShortlist | None = None,
                return_attention: bool = False, tables=None, constraints=None) -> list[list[Hypothesis]]:
    """Batched beam search (:mod:`nmt.inference.beam` gives the exact rules); lexically
    constrained with ``constraints`` (see :func:`search`).

    Returns, per sentence, up to ``n_best`` distinct hypotheses sorted by penalised score, best
    first (fewer only if fewer than ``n_best`` sequences are possible at all). ``tables``: see
    :func:`search`.
    """
    engine = _engine(model, src, shortlist, tables)
    return beam_search_on(engine, src, src_lengths.to(src.device), _source_mask(src, src_lengths, src_mask),
                          options or DecodeConfig(), return_attention, constraints)


@torch.inference_mode()
def sample_search(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None = None,
                  options: DecodeConfig | None = None, shortlist: OutputShortlist | None = None,
                  return_attention: bool = False, tables=None, keys: Sequence[int] | None = None
                  ) -> list[list[Hypothesis]]:
    """Ancestral sampling: ``options.n_best`` independent samples per sentence, sorted by score
    (best first; two samples may be equal). ``options.beam`` is ignored.

    At each step the token is drawn from the model's distribution over the tokens greedy search
    may choose (forbidden ones as in greedy search), changed by ``options.temperature``
    (``p^(1/T)``, renormalised), restricted to the ``top_k`` most probable tokens (renormalised),
    then to the nucleus of ``top_p`` of that distribution (the smallest set of most probable tokens
    whose probability is at least ``top_p``), renormalised. The reported log-probabilities are the
    model's (temperature 1, no restriction), so scores mean what they mean for the other searches.

    Randomness: sample j of the sentence with key k (``keys``, default 0, 1, ...; the translators
    pass :func:`~nmt.inference.sampling.sentence_key` of each sentence's source ids) uses its own random stream, seeded from ``(options.seed, k, j)``:
    the result depends neither on the batch nor on the other sentences in it.
    """
    opts = options or DecodeConfig(beam=1, sample=True)
    engine = _engine(model, src, shortlist, tables)
    return sample(engine, src, src_lengths.to(src.device), _source_mask(src, src_lengths, src_mask), opts,
                  return_attention, keys)


def nucleus(probs: Tensor, top_p: float, candidates: int = NUCLEUS_CANDIDATES) -> Tensor:
    """``(N, V)`` probabilities -> ``(N, V)`` bool: the nucleus of each row (see
    :func:`nmt.inference.sampling.nucleus`)."""
    return _nucleus(TorchOps(probs.device), probs, top_p, candidates)


# ------------------------------------------------------------------------------ forced decoding

@torch.inference_mode()
def score_targets(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None,
                  targets: Sequence[Sequence[int]], add_eos: bool = True
                  ) -> tuple[list[float], list[list[float]]]:
    """Log-probability of given target ids by teacher forcing (one pass for the batch).

    ``targets[b]`` are target ids without BOS; with ``add_eos`` EOS is appended unless it is
    already the last id. Returns ``(scores, token_log_probs)``: per sentence the sum of the
    token log-probabilities (EOS included when present) and the list of them. No penalties: the
    sum equals the raw score search reports for the same tokens.
    """
    check_eval(model)
    if len(targets) != src.size(0):
        raise ValueError(f"{len(targets)} targets for {src.size(0)} sources")
    src_mask = _source_mask(src, src_lengths, src_mask)
    device = src.device
    tgts = targets_with_eos(targets, add_eos)
    width = max(1, max(len(t) for t in tgts))
    tgt_in = torch.full((len(tgts), width), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((len(tgts), width), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(tgts):
        if ids:
            tgt_in[row, 0] = BOS_ID
            tgt_in[row, 1: len(ids)] = torch.tensor(ids[:-1], dtype=torch.long)
            tgt_out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        else:
            tgt_in[row, 0] = BOS_ID  # nothing to score; the row still needs a valid input
    tgt_in, tgt_out = tgt_in.to(device), tgt_out.to(device)
    log_probs = search_model(model).teacher_forced_log_probs(src, src_lengths, src_mask, tgt_in)
    token_lp = log_probs.gather(2, tgt_out.unsqueeze(2)).squeeze(2).cpu()
    per_token = [token_lp[row, : len(ids)].tolist() for row, ids in enumerate(tgts)]
    return [float(sum(t)) if t else 0.0 for t in per_token], per_token

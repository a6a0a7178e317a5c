"""The rules every search follows, written once for every engine (no torch here).

Search (:mod:`nmt.inference.greedy`, :mod:`nmt.inference.beam`) runs on an engine
(:mod:`nmt.inference.engine`): the PyTorch model or an ONNX export. Arrays are the engine's
(tensors or numpy arrays); the functions below reach them through the engine's array operations
``ops`` (:mod:`nmt.inference.ops_torch`, :mod:`nmt.inference.ops_numpy`).

Definitions (shared by greedy search, sampling and beam search)
----------------------------------------------------------------
- A hypothesis is the list of generated target ids, without BOS; it ends with EOS unless it was
  *closed* at the maximum length (``Hypothesis.finished`` tells which).
- Its **raw score** is the sum of the log-probabilities of its tokens, EOS included. It equals
  ``score_targets`` of the same tokens (teacher forcing); PAD and BOS are never generated and
  masked choices (min length, no-repeat n-grams) are not renormalised, so the numbers agree.
  With a lexical shortlist (``DecodeConfig.shortlist``) the log-probabilities are normalised over
  the batch's shortlist instead: they equal those of the full model with every logit outside it
  at -inf (see :mod:`nmt.inference.shortlist`).
- Its **score** is the raw score with the GNMT penalties (Wu et al. 2016, eq. 14)::

      score = raw / lp(|Y|) + cp,   lp(n) = ((5 + n) / 6) ** alpha,
      cp = beta * Σ_i log(min(Σ_t a_{t,i}, 1))     over the real source tokens i (EOS included)

  where ``|Y|`` counts the generated tokens including EOS and ``a_{t,i}`` is the attention of
  output step t (EOS's step included) on source token i. Coverage below 1e-6 is clamped to 1e-6
  so that a never-attended source token costs ``beta * log(1e-6)`` instead of minus infinity.
  ``alpha = beta = 0`` (the defaults) makes ``score == raw``.
- **Max length** of sentence i is ``max(floor(a · S_i + b), min_len + 1, 1)`` generated tokens
  (EOS included), where ``S_i`` is the number of real source ids the model sees (EOS included).
  A hypothesis that reaches it without EOS is closed there and *does* count as a hypothesis
  (``finished=False``, its tokens have no EOS).
- **Min length** ``min_len`` counts tokens before EOS: EOS is forbidden while fewer than
  ``min_len`` tokens were generated.
- **No-repeat n-gram** ``n``: a token is forbidden if it would complete an n-gram that already
  occurs in the hypothesis (n = 1: no token twice).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nmt.config import DecodeConfig
from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID

#: coverage below this is clamped before the log of the coverage penalty
COVERAGE_FLOOR = 1e-6

__all__ = ["COVERAGE_FLOOR", "Hypothesis", "max_lengths", "length_penalty", "penalised", "coverage_penalty",
           "forbid_", "hypothesis"]


@dataclass
class Hypothesis:
    tokens: list[int]  #: target ids without BOS; ends with EOS unless closed at max length
    score: float  #: penalised score (ranking); equals ``raw_score`` without penalties
    log_probs: list[float]  #: per token (same length as ``tokens``)
    #: (len(tokens), real source length) attention weights, when requested (the engine's array type)
    attention: Any = None
    positions: Any = None  #: (len(tokens),) local-p predicted centres, when requested
    raw_score: float = 0.0  #: sum of the token log-probs (EOS included)
    finished: bool = True  #: ended with EOS (False: closed at the max length)
    #: with lexical constraints (:mod:`nmt.inference.constraints`): each occurs exactly once; else None
    constraints_met: bool | None = None


def hypothesis(tokens: list[int], score: float, log_probs: list[float], raw_score: float,
               attention: Any = None, positions: Any = None, constraints_met: bool | None = None) -> Hypothesis:
    """A hypothesis of ``tokens``; it is finished when its last token is EOS."""
    return Hypothesis(tokens=tokens, score=score, log_probs=log_probs, attention=attention,
                      positions=positions, raw_score=raw_score,
                      finished=bool(tokens and tokens[-1] == EOS_ID), constraints_met=constraints_met)


def max_lengths(ops, options: DecodeConfig, src_lengths):
    """Per-sentence max output length (generated tokens incl. EOS), ``(B,)`` long."""
    return ops.max_lengths(src_lengths, options.max_len_a, options.max_len_b, max(1, options.min_len + 1))


def length_penalty(ops, lengths, alpha: float):
    """GNMT ``lp(n) = ((5 + n) / 6) ** alpha`` of an int or an array of lengths."""
    return ops.length_penalty(lengths, alpha)


def penalised(ops, raw, lengths, alpha: float):
    """``raw / lp(lengths)``: ``raw`` itself for ``alpha = 0`` (``lp = 1`` exactly and ``x / 1 == x``,
    so the division, a few array operations per search step, is left out)."""
    if alpha == 0:
        return raw
    return raw / length_penalty(ops, lengths, alpha)


def coverage_penalty(ops, coverage, mask, beta: float):
    """GNMT ``beta * Σ_i log(min(coverage_i, 1))`` over ``mask``-ed source positions, ``(..., S) -> (...)``."""
    return ops.masked_sum(ops.clamped_log(coverage, COVERAGE_FLOOR, 1.0), mask, beta)


def forbid_(ops, out, history, step: int, opts: DecodeConfig):
    """Set forbidden tokens of ``out (N, V)`` (logits or log-probs) to -inf, in place; returns ``out``.

    ``history (N, step)`` holds the tokens generated so far. Forbidden: PAD and BOS always, EOS
    before ``min_len`` tokens, and tokens that would repeat an n-gram (``no_repeat_ngram``).
    The log-normaliser is taken before this: forbidden choices are not renormalised.
    """
    ops.fill_columns_(out, (PAD_ID, BOS_ID), -math.inf)
    if step < opts.min_len:
        ops.fill_column_(out, EOS_ID, -math.inf)
    n = opts.no_repeat_ngram
    if n > 0 and step >= n:
        windows = ops.windows(history, n)  # (N, step - n + 1, n): every n-gram so far
        if n > 1:
            last = history[:, step - n + 1:]  # (N, n - 1): the prefix the next token would extend
            match = (windows[:, :, : n - 1] == last[:, None, :]).all(-1)  # (N, W)
        else:
            match = ops.ones_bool(windows.shape[:2])
        # the n-gram's last token where the prefix matches; PAD (always forbidden) elsewhere
        banned = ops.where(match, windows[:, :, n - 1], PAD_ID)
        ops.scatter_(out, banned, -math.inf)
    return out

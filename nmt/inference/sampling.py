"""Sampling's token choice, for every engine: ancestral sampling with temperature, top-k and
nucleus (top-p) restriction, each sample from a random stream of its own. Greedy search's loop
(:mod:`nmt.inference.greedy`) runs it; nothing here imports torch.

Each row's uniform numbers come from its engine's generator, seeded from ``(seed, key, j)``: the
torch engine's ``torch.Generator`` and the ONNX engine's numpy generator give different numbers,
so the two engines draw different (each reproducible) samples.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

from nmt.config import DecodeConfig
from nmt.errors import NmtError
from nmt.inference.greedy import one_token_per_step
from nmt.inference.rules import Hypothesis

__all__ = ["Sampler", "sample", "nucleus", "stream_seed", "sentence_key", "NUCLEUS_CANDIDATES"]


def stream_seed(key: tuple[int, ...]) -> int:
    """A 63-bit generator seed of a tuple of ints, the same on every machine and Python version."""
    digest = hashlib.blake2b(repr(tuple(int(k) for k in key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sentence_key(ids: Sequence[int]) -> int:
    """The sampling key of a sentence: a 63-bit number of its source ids (as searched: truncated,
    EOS included). The translators key every sentence by it, so a sentence's samples depend on the
    seed and the sentence only, not on its line, its batch or what else is translated with it."""
    return stream_seed(tuple(ids))


def sample(engine, src, src_lengths, src_mask, opts: DecodeConfig, return_attention: bool = False,
           keys: Sequence[int] | None = None) -> list[list[Hypothesis]]:
    """``opts.n_best`` independent samples per sentence, sorted by score (best first); sample j of
    the sentence with key k (``keys``, default 0, 1, ...) draws from the stream ``(opts.seed, k, j)``."""
    copies = opts.n_best
    keys = list(range(src.shape[0])) if keys is None else [int(k) for k in keys]
    if len(keys) != src.shape[0]:
        raise ValueError(f"{len(keys)} keys for {src.shape[0]} sentences")
    streams = [(opts.seed, key, j) for key in keys for j in range(copies)]
    hyps = one_token_per_step(engine, src, src_lengths, src_mask, opts, return_attention,
                              choose=lambda max_lens: Sampler(engine.ops, opts, streams, max_lens),
                              copies=copies)
    return [sorted(hyps[b * copies: (b + 1) * copies], key=lambda h: -h.score) for b in range(len(keys))]


class Sampler:
    """Draws one token per row and step by inverting the cumulative distribution at a uniform
    number of the row's own stream."""

    def __init__(self, ops, opts: DecodeConfig, streams: Sequence[tuple[int, ...]], max_lens):
        self.ops = ops
        self.temperature, self.top_k, self.top_p = opts.temperature, opts.top_k, opts.top_p
        # a row's numbers depend on its stream and its own max length only
        self.uniforms = ops.stream_uniforms([stream_seed(s) for s in streams], ops.to_list(max_lens),
                                            int(max_lens.max()))

    def __call__(self, logits, rows, step: int):
        """``logits (N, C)`` with forbidden tokens at -inf, of batch rows ``rows (N,)``
        -> ``(N,)`` the chosen columns."""
        ops = self.ops
        x = ops.to_float(logits)
        if self.temperature != 1.0:
            x = x / self.temperature  # softmax(x / T) = p^(1/T) renormalised
        self._check_numbers(x, step)
        if 0 < self.top_k < x.shape[1]:
            x = ops.keep_columns(x, ops.topk(x, self.top_k)[1], -math.inf)
        if self.top_p < 1.0:
            x = ops.masked_fill(x, ~nucleus(ops, ops.softmax(x), self.top_p), -math.inf)
        # the running sum in float64: over a large vocabulary float32 would drift by ~1e-4
        cdf = ops.cumulative(ops.softmax(x))  # a row of -inf only: all 0
        u = self.uniforms[rows, step][:, None] * cdf[:, -1:]
        # the first token whose cumulative probability exceeds u (tokens of probability 0 never are)
        return ops.first_above(cdf, u)


    def _check_numbers(self, x, step: int) -> None:
        """Scores that are NaN or +inf (overflowing, or NaN weights) would make NaN probabilities,
        read as 0, and token 0 drawn at every step: refused instead (-inf is a forbidden token)."""
        ops = self.ops
        if ops.size(ops.nonzero((~ops.isfinite(x) & (x != -math.inf)).any(1))):
            raise NmtError(f"sampling: the scores of step {step} are not finite numbers (divided by the "
                           f"temperature {self.temperature:g} they overflow, or the weights hold NaN); use "
                           "another --temperature or check the checkpoint")


#: tokens looked at first for a nucleus; rows whose nucleus is larger sort their whole distribution
NUCLEUS_CANDIDATES = 64


def nucleus(ops, probs, top_p: float, candidates: int = NUCLEUS_CANDIDATES):
    """``(N, V)`` probabilities -> ``(N, V)`` bool: the nucleus of each row, the smallest set of
    most probable tokens whose probability is at least ``top_p`` (a row whose total stays below
    ``top_p`` keeps every token).

    Sorting whole rows costs more than a decoder step, and a translation model's nucleus is
    usually a few tokens: the ``candidates`` most probable tokens are sorted first, and only the
    rows whose nucleus reaches beyond them are sorted whole.
    """
    def kept(values, order):  # values sorted descending, found at order
        before = ops.cumsum(values) - values  # probability of the more probable tokens
        return ops.scatter_values_(ops.zeros((values.shape[0], probs.shape[1]), ops.boolean), order,
                                   before < top_p)

    top, order = ops.topk(probs, min(candidates, probs.shape[1]))
    mask = kept(top, order)
    wider = ops.nonzero(top.sum(1) < top_p)
    if ops.size(wider):
        mask[wider] = kept(*ops.sort_descending(probs[wider]))
    return mask

"""Sampling's token choice (torch engine): ancestral sampling with temperature, top-k and nucleus
(top-p) restriction, from one random stream per sample (see :func:`nmt.inference.search.sample_search`)."""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch
from torch import Tensor

from nmt.config import DecodeConfig

__all__ = ["Sampler", "nucleus", "stream_seed", "NUCLEUS_CANDIDATES"]


def stream_seed(key: tuple[int, ...]) -> int:
    """A 63-bit generator seed of a tuple of ints, the same on every machine and Python version."""
    digest = hashlib.blake2b(repr(tuple(int(k) for k in key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Sampler:
    """Draws one token per row and step (see :func:`sample_search`) by inverting the cumulative
    distribution at a uniform number of the row's own stream."""

    def __init__(self, opts: DecodeConfig, streams: Sequence[tuple[int, ...]], max_lens: Tensor):
        self.temperature, self.top_k, self.top_p = opts.temperature, opts.top_k, opts.top_p
        # a row's numbers depend on its stream and its own max length only
        uniforms = torch.zeros(len(streams), int(max_lens.max()), dtype=torch.float64)
        for row, (stream, n) in enumerate(zip(streams, max_lens.tolist())):
            generator = torch.Generator().manual_seed(stream_seed(stream))
            uniforms[row, :n] = torch.rand(n, generator=generator, dtype=torch.float64)
        self.uniforms = uniforms.to(max_lens.device)

    def __call__(self, logits: Tensor, rows: Tensor, step: int) -> Tensor:
        """``logits (N, C)`` with forbidden tokens at -inf, of batch rows ``rows (N,)``
        -> ``(N,)`` the chosen columns."""
        x = logits.float()
        if self.temperature != 1.0:
            x = x / self.temperature  # softmax(x / T) = p^(1/T) renormalised
        if 0 < self.top_k < x.size(1):
            kept = x.topk(self.top_k, dim=1).indices
            x = torch.full_like(x, -math.inf).scatter_(1, kept, x.gather(1, kept))
        if self.top_p < 1.0:
            x = x.masked_fill(~nucleus(torch.softmax(x, dim=1), self.top_p), -math.inf)
        # the running sum in float64: over a large vocabulary float32 would drift by ~1e-4
        cdf = torch.softmax(x, dim=1).nan_to_num_(0.0).double().cumsum(dim=1)  # a row of -inf only: all 0
        u = self.uniforms[rows, step].unsqueeze(1) * cdf[:, -1:]
        # the first token whose cumulative probability exceeds u (tokens of probability 0 never are)
        return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=x.size(1) - 1)


#: tokens looked at first for a nucleus; rows whose nucleus is larger sort their whole distribution
NUCLEUS_CANDIDATES = 64


def nucleus(probs: Tensor, top_p: float, candidates: int = NUCLEUS_CANDIDATES) -> Tensor:
    """``(N, V)`` probabilities -> ``(N, V)`` bool: the nucleus of each row, the smallest set of
    most probable tokens whose probability is at least ``top_p`` (a row whose total stays below
    ``top_p`` keeps every token).

    Sorting whole rows costs more than a decoder step, and a translation model's nucleus is
    usually a few tokens: the ``candidates`` most probable tokens are sorted first, and only the
    rows whose nucleus reaches beyond them are sorted whole.
    """
    def kept(values: Tensor, order: Tensor) -> Tensor:  # values sorted descending, found at order
        before = values.cumsum(dim=1) - values  # probability of the more probable tokens
        mask = torch.zeros(values.size(0), probs.size(1), dtype=torch.bool, device=probs.device)
        return mask.scatter_(1, order, before < top_p)

    top, order = probs.topk(min(candidates, probs.size(1)), dim=1)
    mask = kept(top, order)
    wider = (top.sum(dim=1) < top_p).nonzero().squeeze(1)
    if wider.numel():
        mask[wider] = kept(*probs[wider].sort(dim=1, descending=True))
    return mask

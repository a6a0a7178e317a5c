"""The additive attention score with tanh computed through the sigmoid: the fast twin of
``nmt.model.attention.AdditiveAttention.score`` for its default activation.

    vᵀ tanh(a) = 2 vᵀ σ(2a) − Σv,   since tanh(a) = 2σ(2a) − 1

torch's CPU sigmoid is several times faster than its tanh, and the (B, T, S, H) activation is the
largest elementwise work of a decoder step (measurements: docs/performance.md). The factor
2 inside is applied to the small query projection at each step and to the key side once per source
(:func:`additive_tanh_keys`, which the attention's ``precompute`` returns on this path), so that the
per-step pass over (B, T, S, H) is one plain add; the constant Σv goes in as the bias of the v GEMM, so that it is
subtracted before a bf16 result is rounded (vᵀσ alone can be much larger than the score and would
lose its low bits). Tested against the plain score in float64 and under bf16: tests/test_attention.py.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import Tensor, nn

from nmt.kernels import batch_invariant


def tanh_by_sigmoid_applies(activation: str, x: Tensor) -> bool:
    """The tanh scorer (the rewrite holds for it only) on the CPU (``x`` the query); elsewhere
    tanh costs what the sigmoid does."""
    return activation == "tanh" and x.device.type == "cpu"


def additive_tanh_keys(proj_keys: Tensor) -> Tensor:
    """The key side of the rewrite, once per source: ``2P`` for ``proj_keys = P = W_k k + b`` (B, S, H).
    Exact in any float format (a power of two)."""
    return proj_keys * 2


def additive_tanh_score(query_proj: Tensor, keys2: Tensor, v: nn.Module, dot: Callable) -> Tensor:
    """``vᵀ tanh(W_q q + P)`` for ``query_proj = W_q q`` (B, T, H), ``keys2 = 2P`` from
    :func:`additive_tanh_keys` (B, S, H) and ``v`` an ``nn.Linear(H, 1, bias=False)`` -> scores (B, T, S).

    ``dot(u, v.weight, bias)`` takes the v product (the model's plain one is
    :func:`nmt.model.attention.dot_product`). Search passes
    :func:`nmt.kernels.batch_invariant.dot`, so that a score does not depend on the other rows of
    the batch; its padded operands are the same at every step, so they are kept (:func:`_invariant_v`)."""
    q2, k2 = (query_proj * 2).unsqueeze(2), keys2.unsqueeze(1)
    if dot is batch_invariant.dot and not torch.is_grad_enabled():
        # made with the rows the v product runs on, so that it pads them without a copy
        # not torch.broadcast_shapes, which runs Python reference code and caches the shapes it meets
        shape = tuple(max(q, k) for q, k in zip(q2.shape, k2.shape))
        u = batch_invariant.room(shape, query_proj, torch.result_type(q2, k2))
        torch.add(q2, k2, out=u).sigmoid_()  # σ(2a)
        return batch_invariant.dot_padded(u, *_invariant_v(v)) * 2
    u = torch.add(q2, k2).sigmoid_()
    weight = v.weight
    return dot(u, weight, -0.5 * weight.sum(dim=1)) * 2


#: per v module: its weight's stamp (version, address, dtype) and the operands of the invariant
#: score's v product built from it (search runs the same v at every step)
_INVARIANT_V: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _invariant_v(v: nn.Module) -> tuple[Tensor, Tensor | None]:
    """:func:`nmt.kernels.batch_invariant.dot_weight` of ``v``'s weight (1, H) and the bias
    ``-Σv / 2``; without autograd built again only when the weight changed (an update in place
    bumps its version; an inference tensor counts none, so it is not kept)."""
    weight = v.weight
    if torch.is_grad_enabled() or weight.is_inference():
        return batch_invariant.dot_weight(weight[0], -0.5 * weight.sum(dim=1))
    stamp = (weight._version, weight.data_ptr(), weight.dtype)
    cached = _INVARIANT_V.get(v)
    if cached is None or cached[0] != stamp:
        # plain tensors, usable outside inference mode too, with no autograd history
        with torch.inference_mode(False), torch.no_grad():
            cached = _INVARIANT_V[v] = (stamp, batch_invariant.dot_weight(weight[0], -0.5 * weight.sum(dim=1)))
    return cached[1]

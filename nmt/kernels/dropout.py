"""Inverted dropout on the CPU with a cheaper mask: the fast twin of ``nn.Dropout`` in training.

``bernoulli_`` draws one 32-bit random number per element, a noticeable part of a training step
on a CPU (docs/performance.md). Here every 64-bit draw of the generator gives
four 16-bit uniforms, compared with ``p`` quantised to 1/65536. The torch generator is the source,
so seeding and checkpointed RNG states reproduce the masks. The plain layer is
``nmt.model.activations.Dropout`` (``F.dropout``). Tested in tests/test_activations.py (keep rate,
scaling, reproducibility).
"""
from __future__ import annotations

import torch
from torch import Tensor


def dropout_applies(x: Tensor, training: bool, p: float) -> bool:
    """Training on the CPU with 0 < p < 1 (other devices: ``F.dropout``'s fused kernel)."""
    return training and 0.0 < p < 1.0 and x.device.type == "cpu"


def dropout_mask(x: Tensor, p: float) -> Tensor:
    """``(1 - m) / (1 - p)`` with ``m ~ Bernoulli(p)`` elementwise, shaped and typed like ``x``;
    P(keep) = 1 - round(65536 p) / 65536."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    words.random_(torch.iinfo(torch.int64).min, None)  # all 64 bits random
    uniform16 = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    threshold = round(p * 65536) - 32768
    keep = uniform16 >= threshold
    return keep.to(x.dtype) * (1.0 / (1.0 - p))


def dropout(x: Tensor, p: float) -> Tensor:
    """``x`` with each element zeroed with probability ``p`` and the rest scaled by ``1 / (1 - p)``."""
    return x * dropout_mask(x, p)

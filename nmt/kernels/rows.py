"""Row counts rounded up, so that bf16 training on the CPU runs few distinct matrix shapes.

Under bf16 autocast a CPU matrix product runs a oneDNN kernel compiled for its exact shape and
kept in a cache of 1,024 kernels (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``). Every batch has its own
sentence count and lengths, so a product over all positions of a batch (``B·T`` rows) and the
weight gradient summed over them (``K = B·T``) would each compile a kernel per batch, evicted again
a few hundred batches later: a compilation costs about ten such products (docs/performance.md).
Rounding those row counts up to a multiple of :data:`ROW_MULTIPLE`, with zero rows that are sliced
off again, leaves at most one shape per 32 rows. A zero row adds nothing to a weight gradient and
its output is dropped, so values and gradients equal the plain product's up to rounding (another
GEMM blocking). float32 and float64 products (MKL, no compiled kernels) are left alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: row counts of sequence-wide bf16 products are rounded up to a multiple of this
ROW_MULTIPLE = 32
#: long sums (K in the tens of thousands) are rounded to one of this many row counts per power of two
COUNTS_PER_OCTAVE = 8


def _gemm_dtype(x: Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and x.is_floating_point():
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def row_multiple(x: Tensor) -> int:
    """:data:`ROW_MULTIPLE` where a product of ``x`` runs a compiled oneDNN kernel (16-bit on the
    CPU, ``x`` itself or under autocast), else 1 (no padding)."""
    if x.device.type == "cpu" and _gemm_dtype(x) in (torch.bfloat16, torch.float16):
        return ROW_MULTIPLE
    return 1


def row_padding_applies(x: Tensor) -> bool:
    """Where :func:`padded_linear` pads: training (grad mode on) with 16-bit products of ``x`` on the
    CPU. Search rounds its own counts (:func:`coarse_count`, :mod:`nmt.kernels.batch_invariant`)."""
    return torch.is_grad_enabled() and row_multiple(x) > 1


def padded_rows(rows: int, multiple: int) -> int:
    """``rows`` rounded up to a multiple of ``multiple``."""
    return -(-rows // multiple) * multiple


def coarse_multiple(rows: int, least: int = ROW_MULTIPLE) -> int:
    """The multiple to round a long sum's ``rows`` up to: ``least``, or an eighth
    (:data:`COUNTS_PER_OCTAVE`) of the power of two below ``rows`` when that is larger, so at most
    12.5% rows are added and each octave has 8 row counts.

    A compiled oneDNN kernel holds a buffer the size of its K × N operand: a product summed over
    tens of thousands of rows keeps ~10 MB per row count, and a multiple of 32 leaves a new count
    almost every batch, so the kernel cache held gigabytes of them (docs/performance.md; the
    attention's ``v`` gradient was such a sum over T·B·S rows until it was summed per step)."""
    below = 1 << max(0, rows.bit_length() - 1)  # the power of two at or below rows
    return max(least, below // COUNTS_PER_OCTAVE)


def coarse_count(count: int, step: int = 16) -> int:
    """``count`` rounded up to a multiple of ``step``, or of an eighth (:data:`COUNTS_PER_OCTAVE`)
    of the power of two below it when that is larger: the row and column counts of search's 16-bit
    products (at most ``step`` or 12.5% more), so that a search compiles a few dozen kernels, reused
    by the next batches, instead of one for nearly every step."""
    return padded_rows(max(count, 1), coarse_multiple(count, step))


def pad_rows(x: Tensor, multiple: int) -> Tensor:
    """``x (N, ...)`` with zero rows appended up to a multiple of ``multiple`` rows: ``x`` itself
    when N already is one, else a copy."""
    rows = x.size(0)
    extra = padded_rows(rows, multiple) - rows
    if extra == 0:
        return x
    return torch.cat([x, x.new_zeros(extra, *x.shape[1:])])


def padded_mm(a_t: Tensor, b: Tensor, multiple: int) -> Tensor:
    """``a_tᵀ b`` for ``a_t (K, M)`` and ``b (K, N)`` (a weight gradient summed over K rows), with K
    rounded up by zero rows of both."""
    return torch.mm(pad_rows(a_t, multiple).t(), pad_rows(b, multiple))


def padded_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, multiple: int | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for ``x (..., in)``, computed on the rows of ``x`` (all leading
    dims flattened) rounded up to a multiple of ``multiple`` (default: :func:`row_multiple` with
    grad mode on, else 1): zero
    rows, sliced off again. Autograd then runs the backward's products on the same padded rows: the
    input gradient with the rounded row count, the weight gradient with the rounded K."""
    if multiple is None:
        multiple = row_multiple(x) if row_padding_applies(x) else 1
    flat = x.reshape(-1, x.size(-1))
    rows = flat.size(0)
    if multiple == 1 or rows % multiple == 0:
        return F.linear(x, weight, bias)
    out = F.linear(pad_rows(flat, multiple), weight, bias)[:rows]
    return out.view(*x.shape[:-1], out.size(-1))

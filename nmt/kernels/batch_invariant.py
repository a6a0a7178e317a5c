"""Products and sums whose value for one row does not depend on the other rows of the call: what
search needs so that a sentence's translation does not depend on the rest of its batch.

A batch changes two things a row does not see in the equations, and CPU kernels round by both:

- **the number of rows.** MKL's float32 GEMM picks its kernel by the row count M: one row runs
  as a matrix-vector product, 2 to 15 rows through a small-matrix kernel, 16 rows or more through
  the blocked kernel, and each rounds a row's dot products differently. From 16 rows on, a row's
  result is the same for any M and any position of the row (measured on AVX-512, MKL 2024.2,
  tests/test_batch_invariant.py). A product with a single output column (``vᵀ u``) runs as a
  matrix-vector product whose rounding depends on the row's position.
- **padding.** A sum over a row whose tail is padding (exp(-inf) = 0: a softmax over a batch's
  padded source positions, a log-normaliser over the union of a batch's shortlists) groups the
  real terms by their positions in vector lanes, so the same terms are added in another order
  when the row is longer; a one-row product (``bmm`` of one query) over a padded source length
  likewise.

So search's fast path runs every product with at least :data:`MIN_ROWS` rows (:func:`linear`,
:func:`bmm`, :func:`dot`: the few padded rows cost little, batches of 16 rows and more pay
nothing; 16-bit products on the CPU, which compile a oneDNN kernel per shape, on a row count
rounded up to a few per power of two, :func:`product_rows`) and adds the terms of a softmax or a
log-normaliser one after the other (:func:`ordered_sum`, a float32 ``cumsum`` that accumulates in
float64), where zeros of padding change nothing. What does not change between steps is kept: the
score's padded v (:func:`dot_weight`), the buffers a few rows are padded in. Costs:
docs/performance.md.
"""
from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.kernels.rows import coarse_count, row_multiple

#: the fewest rows of a product for which MKL's float32 GEMM rounds a row the same whatever the
#: number of rows (below: a matrix-vector product for 1 row, a small-matrix kernel for 2 to 15)
MIN_ROWS = 16


def product_rows(rows: int, x: Tensor) -> int:
    """The rows a search product of ``x`` with ``rows`` rows runs on: at least :data:`MIN_ROWS`;
    16-bit products on the CPU (``x``'s dtype or autocast's) on :func:`~nmt.kernels.rows.coarse_count`
    rows, since oneDNN compiles a kernel for each new shape, at the cost of tens of products
    (docs/performance.md). A row's result does not depend on the rows added."""
    if row_multiple(x) > 1:
        return coarse_count(rows, MIN_ROWS)  # multiples of 16 up to 128, then 8 counts per octave
    return max(rows, MIN_ROWS)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, ``x (..., in)`` -> ``(..., out)``, computed on
    :func:`product_rows` rows (padding rows added, then dropped): each row is rounded as in any batch."""
    # a search step makes several of these products: no view is taken that would change nothing
    flat = x if x.dim() == 2 else x.reshape(x.numel() // max(1, x.size(-1)), x.size(-1))  # one 2-d GEMM
    rows = flat.size(0)
    run = product_rows(rows, flat) if rows else 0
    if bias is None and row_multiple(flat) > 1:
        bias = _zero_bias(weight)
    if run == rows:
        out = F.linear(flat, weight, bias)
    else:
        out = F.linear(_with_rows(flat, run), weight, bias)[:rows]
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], -1)


def real_rows(mask: Tensor) -> Tensor | None:
    """The flat indices (into B·S) of the real positions of ``mask (B, S)`` when at least a quarter
    of its positions are padding, else None: the rows :func:`masked_linear` multiplies. A source's
    padded positions are never read (the attention masks them), and in a batch of mixed lengths,
    as a server's, they are about half of its B·S rows; below a quarter, gathering the real rows
    costs more than it saves (docs/performance.md)."""
    where = mask.reshape(-1).nonzero().squeeze(1)
    return None if 4 * where.numel() > 3 * mask.numel() else where


def masked_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, real: Tensor | None) -> Tensor:
    """:func:`linear` of ``x (B, S, in)`` at its rows ``real`` (:func:`real_rows`), zeros at the
    others: ``(B, S, out)``; every row when ``real`` is None. The rows multiplied are the same bits
    either way (a row does not depend on the others)."""
    if real is None:
        return linear(x, weight, bias)
    flat = x.reshape(-1, x.size(-1))
    rows = linear(flat.index_select(0, real), weight, bias)
    out = rows.new_zeros(flat.size(0), rows.size(1))
    return out.index_copy_(0, real, rows).view(*x.shape[:-1], -1)


def _zero_bias(weight: Tensor) -> Tensor:
    """A zero bias for a rounded 16-bit product without one: oneDNN compiles a kernel with a bias
    apart from one without, and search multiplies states of the same shape with and without one
    (the attention's query, the readout), so each rounded count compiled two kernels."""
    return weight.new_zeros(weight.size(0))


def _with_rows(flat: Tensor, run: int) -> Tensor:
    """``flat (rows, in)`` as the first rows of a ``(run, in)`` tensor: a view when its storage
    already holds ``run`` rows from where it starts (:func:`room`), else a copy into a kept buffer
    (:data:`MIN_ROWS` rows) or an uninitialised tensor. The rows past ``rows`` are never zeroed: a
    product's row depends on that row of its input only, and they are sliced off."""
    width = flat.size(1)
    start = flat.storage_offset()
    if flat.is_contiguous() and flat.untyped_storage().nbytes() >= (start + run * width) * flat.element_size():
        return flat.as_strided((run, width), (width, 1), start)
    if run == MIN_ROWS:
        return _padded_rows(flat)
    out = flat.new_empty(run, width)
    out[:flat.size(0)].copy_(flat)
    return out


def room(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised tensor of ``shape`` (``dtype``, default ``like``'s, on ``like``'s device)
    whose storage holds the :func:`product_rows` rows of a product of it with ``like``'s
    precision: :func:`linear` over it pads without a copy. The rows past ``shape`` are scratch."""
    rows = math.prod(shape[:-1])
    spare = like.new_empty(max(rows, product_rows(rows, like)) * shape[-1], dtype=dtype)
    return spare[:rows * shape[-1]].view(shape)


#: per thread, the (MIN_ROWS, in) buffers a few rows are padded in, by (in, dtype, device, mode)
_ROW_BUFFERS = threading.local()


def _padded_rows(flat: Tensor) -> Tensor:
    """``flat (rows, in)``, rows < :data:`MIN_ROWS`, as the first rows of a ``(MIN_ROWS, in)``
    tensor. Without autograd it is a buffer kept per thread and shape (a search step pads the same
    few shapes every time), the rows past ``rows`` left from earlier calls: a product's row
    depends on that row of its input only, so they need not be zeros."""
    if torch.is_grad_enabled():
        return torch.cat([flat, flat.new_zeros(MIN_ROWS - flat.size(0), flat.size(1))])
    buffers = getattr(_ROW_BUFFERS, "by_key", None)
    if buffers is None:
        buffers = _ROW_BUFFERS.by_key = {}
    key = (flat.size(1), flat.dtype, flat.device, torch.is_inference_mode_enabled())
    buffer = buffers.get(key)
    if buffer is None:
        buffer = buffers[key] = flat.new_zeros(MIN_ROWS, flat.size(1))
    buffer[:flat.size(0)].copy_(flat)
    return buffer


def addmm_(out: Tensor, bias: Tensor, x: Tensor, weight_t: Tensor, rows: int) -> Tensor:
    """``out[:rows] = bias + x[:rows] @ weight_t`` where ``x`` and ``out`` have at least
    :func:`product_rows` rows: the product runs on that many of them (the rows past ``rows`` must
    be finite; their results are scratch). ``x (N, in)``, ``weight_t (in, out)``."""
    n = min(product_rows(rows, x), x.size(0))
    torch.addmm(bias, x[:n], weight_t, out=out[:n])
    return out[:rows]


def dot_weight(v: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The GEMM operands of :func:`dot`: ``v (H,)`` as row 0 of a ``(MIN_ROWS, H)`` weight and a
    scalar ``bias (1,)`` as entry 0 of a ``(MIN_ROWS,)`` bias, zeros elsewhere. Build them once
    where ``v`` does not change and pass them to :func:`dot_padded`."""
    weight = v.new_zeros(MIN_ROWS, v.numel())
    weight[0] = v.reshape(-1)
    full_bias = None
    if bias is not None:
        full_bias = bias.new_zeros(MIN_ROWS)
        full_bias[:1] = bias
    return weight, full_bias


def dot_padded(u: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """:func:`dot` from the operands :func:`dot_weight` built: ``u (..., H)`` -> ``(...)``."""
    return linear(u, weight, bias)[..., 0]


def dot(u: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """``vᵀ u`` over the last dim, ``u (..., H)``, ``v (H,)``, plus a scalar ``bias (1,)`` ->
    ``(...)``: as a GEMM with ``v`` padded to :data:`MIN_ROWS` output columns, so that each row is
    rounded the same at any position and in any number of rows (a matrix-vector product is not)."""
    return dot_padded(u, *dot_weight(v, bias))


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """``torch.bmm(a, b)`` for ``a (B, M, S)``, ``b (B, S, N)`` with ``S`` possibly padded by zero
    columns of ``a``: a one-row product (``M == 1``) runs on two rows (the row twice), whose kernel
    rounds the same for any ``S``, where the matrix-vector product does not. With several intra-op
    threads a batch of one product runs as two (the product twice): torch hands the products of a
    batch to its threads whole, but splits a lone product's columns between them, and the kernels
    of the pieces round some columns otherwise."""
    rows, batch = a.size(1), a.size(0)
    if rows == 1:  # a copy: torch's bmm runs a stride-0 operand through a slow path (the same bits)
        a = a.expand(-1, 2, -1).contiguous()
    if batch == 1 and torch.get_num_threads() > 1:
        a, b = a.expand(2, -1, -1), b.expand(2, -1, -1)
    return torch.bmm(a, b)[:batch, :rows]


def ordered_sum(x: Tensor) -> Tensor:
    """``x (..., N)`` summed over the last dim one term after the other, rounded to ``x``'s dtype:
    the same for a row and for the row with zeros inserted anywhere or appended, whatever the
    other rows.

    A sequential sum adds each term to the running total, so a zero changes nothing (``s + 0 ==
    s``) and the real terms meet in the same order whatever the zeros between and after them; a
    vectorised ``sum`` groups a row's terms by their positions in vector lanes and splits the row by
    its width, which padding moves. ``cumsum`` over the last dim is that sequential sum; on a CPU it
    accumulates float32 in float64 (the value each position stores is the float64 running total
    rounded), so its last value is the float64 sum rounded once, without a float64 copy of ``x``:
    half the time of the float64 ``cumsum`` and the same bits (tests/test_batch_invariant.py).
    """
    # float16 and bfloat16 through float64, rounded once as before (search passes float32)
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float64
    total = x.cumsum(-1, dtype=dtype)[..., -1]
    return total if dtype == x.dtype else total.to(x.dtype)


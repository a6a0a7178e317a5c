"""The output layer and the token cross-entropy as one operation (forward and backward): the fast
twin of ``F.linear`` followed by the plain loss ``nmt.model.seq2seq.cross_entropy``, on the CPU.

For a target vocabulary of 8k and ~4k target tokens per batch, the (tokens, vocabulary) matrix is
the largest tensor of a training step, and autograd passes over it about seven times: the output
GEMM, log-softmax, the loss's zero-filled gradient, the scatter of the targets, log-softmax's
backward, a dtype copy, and the bias gradient. On a CPU each pass costs about as much as a small
GEMM.

Here the gradient of the loss with respect to the logits,

    dL/dz_v = p_v - (1 - eps) [v = y] - eps / V    (p = softmax(z); eps = label smoothing),

is formed in the forward pass, in place of the softmax, with its column sum (the bias gradient) while
each chunk is in cache; the backward pass is the two GEMMs alone, scaled by the incoming gradient.
The loss is PyTorch's ``F.cross_entropy(z, y, label_smoothing=eps, reduction="sum")``:

    L = sum_tokens [ (1 - eps) (-log p_y) + eps * mean_v(-log p_v) ]
      = sum_tokens [ lse - (1 - eps) z_y - eps * mean_v z_v ]    (lse = log sum_v exp z_v)

and the plain negative log-likelihood ``sum_tokens -log p_y`` comes with it for reporting. The
log-normaliser is read off the softmax at the target, ``lse = z_y - log p_y``, so that the
(tokens, vocabulary) matrix is passed over once for the softmax, not for log-softmax and then its
exponential; a row whose ``p_y`` is too small to take the log of (below :data:`TINY`) gets
``logsumexp`` instead. In bf16 ``p_y`` carries a relative error of 2^-9, so a token's loss is off
by at most 0.002 nats (a log-softmax rounded to bf16 is off by up to 2^-9 times the loss).
Under bf16 autocast the GEMMs and the (tokens, vocabulary) buffer are bfloat16; the per-token
losses are summed in float32 (float64 for float64 inputs). Tested against ``F.cross_entropy`` of
``F.linear`` (values and gradients in float64 to 1e-10, gradcheck, bf16): tests/test_loss.py.
"""
from __future__ import annotations

import torch

from nmt.kernels.rows import pad_rows, row_multiple


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    device_type = weight.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bfloat16/float16/float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


#: below this target probability (a token loss above 69 nats), or below the dtype's smallest normal
#: number (float16), the log-normaliser is not read off the softmax, whose subnormal values lose
#: their relative precision
TINY = 2.0 ** -100


def _losses(logits: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor,
            label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (smoothed loss, nll) from ``logits (N, V)`` and ``probs = softmax(logits)``,
    accumulated in float32 at least."""
    acc = _accumulation_dtype(logits.dtype)
    picked = targets.unsqueeze(1)
    target_logit = logits.gather(1, picked).squeeze(1).to(acc)
    target_prob = probs.gather(1, picked).squeeze(1).to(acc)
    lse = target_logit - target_prob.log()
    low = (target_prob < max(TINY, torch.finfo(probs.dtype).tiny)).nonzero().squeeze(1)
    if low.numel():
        lse[low] = torch.logsumexp(logits.index_select(0, low).to(acc), dim=1)
    nll = (lse - target_logit).sum()
    if label_smoothing == 0:
        return nll, nll
    # a row sum in the input dtype (PyTorch accumulates it in float32 anyway): sum(dtype=float32)
    # would first copy the whole (N, V) matrix
    uniform = (lse - logits.sum(dim=1).to(acc) / logits.size(1)).sum()
    return (1 - label_smoothing) * nll + label_smoothing * uniform, nll


def _logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h wᵀ + b``, the bias added in place (``addmm`` takes longer over it on the CPU)."""
    logits = torch.mm(h, w.t())
    return logits if b is None else logits.add_(b)


#: bytes of one chunk of (rows, vocabulary) logits. Below glibc's largest mmap threshold (32 MiB),
#: so the buffers are reused from the heap at every step instead of being mapped afresh and
#: page-faulted in (docs/performance.md).
CHUNK_BYTES = 16 * 2**20


def _chunk_rows(vocab_size: int, dtype: torch.dtype, chunk_bytes: int, multiple: int = 1) -> int:
    rows = chunk_bytes // (vocab_size * torch.empty((), dtype=dtype).element_size())
    return max(multiple, rows // multiple * multiple)


def linear_cross_entropy_applies(hidden: torch.Tensor) -> bool:
    """On the CPU, where each pass over the (tokens, vocabulary) matrix costs what a GEMM does."""
    return hidden.device.type == "cpu"


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, label_smoothing: float, dtype: torch.dtype,
                chunk_bytes: int, multiple: int):
        # rows rounded up to ``multiple`` (nmt.kernels.rows): zero rows, their logits' gradient zero
        tokens = hidden.size(0)
        h, w = pad_rows(hidden.to(dtype), multiple), weight.to(dtype)
        targets = pad_rows(targets, multiple)
        b = None if bias is None else bias.to(dtype)
        rows = _chunk_rows(w.size(0), dtype, chunk_bytes, multiple)
        grads = []
        loss = nll = h.new_zeros((), dtype=_accumulation_dtype(dtype))
        # the bias gradient is the column sum of dL/dz, taken while each chunk is still in cache
        grad_bias = (torch.zeros(w.size(0), dtype=loss.dtype, device=w.device)
                     if bias is not None and ctx.needs_input_grad[2] else None)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, h.size(0), rows):
                chunk_targets = targets[start: start + rows]
                logits = _logits(h[start: start + rows], w, b)
                grad_logits = torch.softmax(logits, dim=-1)  # becomes dL/dz
                real = min(grad_logits.size(0), tokens - start)  # the rest are padding rows
                chunk_loss, chunk_nll = _losses(logits[:real], grad_logits[:real], chunk_targets[:real],
                                                label_smoothing)
                del logits
                loss, nll = loss + chunk_loss, nll + chunk_nll
                if label_smoothing:
                    grad_logits.sub_(label_smoothing / grad_logits.size(1))
                picked = torch.arange(chunk_targets.numel(), device=targets.device)
                grad_logits[picked, chunk_targets] -= 1 - label_smoothing
                grad_logits[real:] = 0
                if grad_bias is not None:
                    # sum(dtype=float32) would first copy the chunk to float32
                    grad_bias += grad_logits.sum(0)
                grads.append(grad_logits)
        if nll is loss:  # no tokens
            nll = nll.clone()  # the returned loss must stay differentiable
        ctx.save_for_backward(h, w, *grads)
        ctx.grad_bias = grad_bias
        ctx.tokens = tokens
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        h, w, *grads = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        acc = _accumulation_dtype(h.dtype)
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(h) if need_hidden else None
        grad_weight = torch.zeros(w.shape, dtype=acc, device=w.device) if need_weight else None
        grad_bias = ctx.grad_bias
        start = 0
        with torch.autocast(h.device.type, enabled=False):
            for grad_logits in grads:
                end = start + grad_logits.size(0)
                if need_hidden:
                    torch.mm(grad_logits, w, out=grad_hidden[start:end])
                if need_weight:
                    grad_weight += grad_logits.t() @ h[start:end]
                start = end
        scale = grad_loss.to(acc)
        if grad_hidden is not None:
            grad_hidden = grad_hidden[:ctx.tokens].mul_(scale.to(h.dtype)).to(hidden_dtype)
        return (grad_hidden,
                None if grad_weight is None else grad_weight.mul_(scale).to(weight_dtype),
                None if grad_bias is None else (grad_bias * scale).to(bias_dtype),
                None, None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, label_smoothing: float = 0.0,
                         chunk_bytes: int = CHUNK_BYTES,
                         multiple: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.cross_entropy(F.linear(hidden, weight, bias), targets, label_smoothing, reduction="sum")``
    and the summed plain NLL, as float32 scalars (float64 for float64 inputs); the NLL carries no
    gradient.

    ``hidden (N, D)``, ``weight (V, D)``, ``bias (V,)`` or None, ``targets (N,)`` ids in ``[0, V)``.
    Uses autocast's dtype for the GEMMs when autocast is on (as ``nn.Linear`` would). The logits
    are formed ``chunk_bytes`` at a time. In training, the rows are rounded up to a multiple of
    ``multiple`` (default :func:`nmt.kernels.rows.row_multiple`: 32 for a 16-bit GEMM on the CPU,
    else 1) with zero rows that add nothing, and the chunks hold a multiple of it.
    """
    dtype = _compute_dtype(weight)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if needs_grad:
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, label_smoothing, dtype, chunk_bytes,
                                         row_multiple(hidden) if multiple is None else multiple)
    with torch.autocast(hidden.device.type, enabled=False):
        logits = _logits(hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
        return _losses(logits, torch.softmax(logits, dim=-1), targets, label_smoothing)

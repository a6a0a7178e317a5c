"""A GRU layer with a hand-written backward pass, for training on CPU: the fast twin of ``nn.GRU``.

``nn.GRU`` on CPU runs its time loop as separate ATen ops, and autograd records every one of them:
a backward pass walks about twenty graph nodes per time step and does one small weight-gradient
GEMM per step. :class:`GRUScan` keeps the same equations (Cho et al. 2014, in PyTorch's gate order
r, z, n; the plain cell is ``nmt.model.decoder.gru_cell``) but saves what the backward needs in
preallocated ``(T, batch, ...)`` buffers, runs the reverse time loop itself (one
``(rows, 3H) x (3H, H)`` GEMM plus elementwise work per step) and forms the hidden-weight gradient
with **one** GEMM over all steps afterwards. Input projections of all time steps are one GEMM
before the loop (left to autograd).

:func:`run_gru` takes an ``nn.GRU`` module (its parameters, so checkpoints are unchanged),
batch-first input and per-row lengths, and returns what ``nn.GRU`` returns for the packed input:
outputs zero at padded positions and each row's final state at its own last token. Rows are
sorted by length once, so step ``t`` works on the contiguous leading ``n_t`` rows still running
(the layout of a packed sequence). :func:`gru_scan_applies` says where it pays: CPU training.

The in-place step helpers below are shared with the Bahdanau decoder's loop (``nmt.kernels.bahdanau``).
Tested against ``nn.GRU`` in float64 (values and gradients to 1e-12) and by gradcheck: tests/test_gru.py.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from nmt.kernels.layout import gru_gates
from nmt.kernels.rows import padded_linear, padded_mm, row_multiple


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Hidden states and gate activations stay in float32 when the GEMMs run in 16 bits."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _gru_step(x_t: Tensor, h_t: Tensor, w_t: Tensor, bias: Tensor, gates_h_t: Tensor, rz_t: Tensor,
              new_t: Tensor, h_gemm: Tensor | None = None) -> None:
    """One GRU step on ``rows`` rows, in place: ``h_t (rows, H)`` becomes h'.

    ``x_t`` input gates (rows, 3H, :func:`gru_gates` layout); ``w_t = W_hhᵀ`` and ``bias`` in the
    GEMM dtype; the outputs ``gates_h_t = W_h h + b_h`` (rows, 3H), ``rz_t = [r, z]`` (rows, 2H) and
    ``new_t = n`` (rows, H) are what the backward step needs. ``h_gemm``: ``h_t`` already in the
    GEMM dtype, if the caller has it.
    """
    gates = gru_gates(h_t.size(1))
    rz, n = gates.span("r", "z"), gates.block("n")
    h_gemm = h_t.to(w_t.dtype) if h_gemm is None else h_gemm
    g_h = torch.addmm(bias, h_gemm, w_t, out=gates_h_t)
    torch.add(x_t[:, rz], g_h[:, rz], out=rz_t).sigmoid_()
    torch.addcmul(x_t[:, n], rz_t[:, gates.block("r")], g_h[:, n], out=new_t).tanh_()
    h_t.sub_(new_t).mul_(rz_t[:, gates.block("z")]).add_(new_t)  # h' = n + z (h - n)


def _gru_step_backward(dh: Tensor, h_prev_t: Tensor, rz_t: Tensor, new_t: Tensor, gates_h_t: Tensor,
                       weight_hh: Tensor, grad_x_t: Tensor, grad_hn_t: Tensor, grad_gates_h_t: Tensor) -> None:
    """The backward of :func:`_gru_step`, in place: ``dh`` (rows, H) = dL/dh' becomes dL/dh.

    Writes dL/d x_t = [d r_pre, d z_pre, d n_pre] into ``grad_x_t`` (rows, 3H), d(W_hn h + b_hn)
    into ``grad_hn_t`` (rows, H), and dL/d gates_h = [d r_pre, d z_pre, d h_n] into
    ``grad_gates_h_t`` (rows, 3H, GEMM dtype) for the weight gradient.
    """
    gates = gru_gates(dh.size(1))
    rz, n = gates.span("r", "z"), gates.block("n")
    r, z = rz_t[:, gates.block("r")], rz_t[:, gates.block("z")]
    g_r, g_z, g_n = grad_x_t[:, gates.block("r")], grad_x_t[:, gates.block("z")], grad_x_t[:, n]
    slopes = torch.addcmul(rz_t, rz_t, rz_t, value=-1)  # [r (1 - r), z (1 - z)]
    torch.addcmul(dh, dh, z, value=-1, out=g_n)  # dh (1 - z)
    g_n.addcmul_(g_n * new_t, new_t, value=-1)  # dh (1 - z) (1 - n^2)
    torch.sub(h_prev_t, new_t, out=g_z).mul_(dh).mul_(slopes[:, gates.block("z")])  # dh (h - n) z (1 - z)
    torch.mul(g_n, gates_h_t[:, n], out=g_r).mul_(slopes[:, gates.block("r")])  # d n_pre h_n r (1 - r)
    torch.mul(g_n, r, out=grad_hn_t)
    grad_gates_h_t[:, rz] = grad_x_t[:, rz]
    grad_gates_h_t[:, n] = grad_hn_t
    dh.mul_(z).add_(torch.mm(grad_gates_h_t, weight_hh))  # dh z + d gates_h W_hh


def _gru_weight_grads(grad_gates_h: Tensor, grad_x: Tensor, grad_hn: Tensor,
                      h_prev: Tensor) -> tuple[Tensor, Tensor]:
    """dL/dW_hh and dL/db_hh from all steps' buffers of :func:`_gru_step_backward` and the states
    before each step (T, B, H): one GEMM over T·B rows (rounded up for a 16-bit GEMM,
    :mod:`nmt.kernels.rows`) and one sum. Rows a step did not run are zero."""
    hidden = h_prev.size(2)
    gates = gru_gates(hidden)
    grad_weight_hh = padded_mm(grad_gates_h.view(-1, gates.width), h_prev.view(-1, hidden).to(grad_gates_h.dtype),
                               row_multiple(grad_gates_h))
    grad_bias_hh = torch.cat([grad_x[..., gates.span("r", "z")].sum((0, 1)), grad_hn.sum((0, 1))])
    return grad_weight_hh, grad_bias_hh


class GRUScan(torch.autograd.Function):
    """One GRU layer in one direction over time-major input gates.

    forward(gates_x (T, B, 3H), h0 (B, H), weight_hh (3H, H), bias_hh (3H,), active (T,) ints, reverse)
    -> outputs (T, B, H) (zero where a row is not running), h_last (B, H).

    ``gates_x = W_ih x + b_ih`` (in the GEMM dtype: bfloat16 under autocast); ``weight_hh`` is in
    the same dtype; ``active[t]`` is the number of leading rows running at step t (non-increasing in
    t; rows are sorted by length, longest first). ``reverse`` reads time backwards: a row starts from
    ``h0`` at its own last step, as the backward direction of a packed bidirectional GRU does.
    Gate equations (``nn.GRU``): r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r ⊙ h_n),
    h' = n + z ⊙ (h − n), with ``h_* = W_h* h + b_h*``.
    """

    @staticmethod
    def forward(ctx, gates_x: Tensor, h0: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                active: list[int], reverse: bool):
        steps, batch, _ = gates_x.shape
        hidden = weight_hh.size(1)
        gates = gru_gates(hidden)
        gemm_dtype = weight_hh.dtype
        dtype = _state_dtype(gemm_dtype)
        with torch.autocast(gates_x.device.type, enabled=False):
            w_t = weight_hh.t()
            bias = bias_hh.to(gemm_dtype)
            h = h0.to(dtype).clone()
            # only rows a step runs are written; the rest must read as zero where they are used
            outputs = gates_x.new_empty(steps, batch, hidden, dtype=dtype)
            h_prev = gates_x.new_empty(steps, batch, hidden, dtype=dtype)  # state before each step
            rz = gates_x.new_empty(steps, batch, gates.size("r", "z"), dtype=dtype)  # r and z
            new = gates_x.new_empty(steps, batch, hidden, dtype=dtype)  # n
            gates_h = gates_x.new_empty(steps, batch, gates.width, dtype=gemm_dtype)  # W_h h + b_h
            order = range(steps - 1, -1, -1) if reverse else range(steps)
            for t in order:
                n_rows = active[t]
                if n_rows < batch:
                    outputs[t, n_rows:].zero_()
                    h_prev[t, n_rows:].zero_()
                if n_rows == 0:
                    continue
                h_t = h[:n_rows]
                h_prev[t, :n_rows] = h_t
                _gru_step(gates_x[t, :n_rows], h_t, w_t, bias, gates_h[t, :n_rows], rz[t, :n_rows],
                          new[t, :n_rows])
                outputs[t, :n_rows] = h_t
        ctx.save_for_backward(weight_hh, h_prev, rz, new, gates_h)
        ctx.active, ctx.reverse = active, reverse
        ctx.bias_dtype = bias_hh.dtype
        ctx.h0_dtype = h0.dtype
        return outputs, h

    @staticmethod
    def backward(ctx, grad_outputs: Tensor | None, grad_h_last: Tensor | None):
        weight_hh, h_prev, rz, new, gates_h = ctx.saved_tensors
        active, reverse = ctx.active, ctx.reverse
        steps, batch, hidden = h_prev.shape
        gemm_dtype = weight_hh.dtype
        dtype = h_prev.dtype
        width = gru_gates(hidden).width
        with torch.autocast(h_prev.device.type, enabled=False):
            grad_h = (grad_h_last.to(dtype).clone() if grad_h_last is not None
                      else h_prev.new_zeros(batch, hidden))
            # d gates_x = [d r_pre, d z_pre, d n_pre]; d gates_h = [d r_pre, d z_pre, d h_n] (GEMM dtype)
            grad_gates_x = h_prev.new_empty(steps, batch, width)
            grad_hn = h_prev.new_empty(steps, batch, hidden)
            grad_gates_h = h_prev.new_empty(steps, batch, width, dtype=gemm_dtype)
            order = range(steps) if reverse else range(steps - 1, -1, -1)
            for t in order:
                n_rows = active[t]
                if n_rows < batch:
                    grad_gates_x[t, n_rows:].zero_()
                    grad_hn[t, n_rows:].zero_()
                    grad_gates_h[t, n_rows:].zero_()
                if n_rows == 0:
                    continue
                dh = grad_h[:n_rows]
                if grad_outputs is not None:
                    dh.add_(grad_outputs[t, :n_rows])
                _gru_step_backward(dh, h_prev[t, :n_rows], rz[t, :n_rows], new[t, :n_rows],
                                   gates_h[t, :n_rows], weight_hh, grad_gates_x[t, :n_rows],
                                   grad_hn[t, :n_rows], grad_gates_h[t, :n_rows])
            grad_weight_hh, grad_bias_hh = _gru_weight_grads(grad_gates_h, grad_gates_x, grad_hn, h_prev)
        return (grad_gates_x.to(gemm_dtype) if ctx.needs_input_grad[0] else None,
                grad_h.to(ctx.h0_dtype) if ctx.needs_input_grad[1] else None,
                grad_weight_hh.to(weight_hh.dtype) if ctx.needs_input_grad[2] else None,
                grad_bias_hh.to(ctx.bias_dtype) if ctx.needs_input_grad[3] else None,
                None, None)


def gru_scan_applies(x: Tensor) -> bool:
    """Where :func:`run_gru` pays off: autograd records the time loop (grad mode on) of a GRU on the CPU.
    ``x`` is the GRU's input; elsewhere ``nn.GRU`` (cuDNN on a GPU) is as fast."""
    return x.device.type == "cpu" and torch.is_grad_enabled()


def run_gru(rnn: nn.GRU, x: Tensor, lengths: Tensor | None = None, h0: Tensor | None = None,
            dropout: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``nn.GRU``'s result for batch-first ``x (B, T, in)`` with :class:`GRUScan`.

    ``lengths (B,)``: rows end there (as with a packed sequence; None: all run T steps).
    ``h0 (layers * directions, B, H)`` or None for zeros. ``dropout`` is applied to the input of
    every layer after the first (``nn.GRU``'s ``dropout`` argument), in training.
    Returns ``outputs (B, T, directions * H)`` (zero at padded positions) and
    ``h_n (layers * directions, B, H)``: each row's state after its last token, per direction.
    """
    batch, steps, _ = x.shape
    hidden = rnn.hidden_size
    directions = 2 if rnn.bidirectional else 1
    device = x.device
    if lengths is None:
        order = inverse = None
        active = [batch] * steps
        layer_input = x.transpose(0, 1)
    else:
        lengths = lengths.to("cpu", torch.long)
        sorted_lengths, order_cpu = lengths.sort(descending=True, stable=True)
        order = order_cpu.to(device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch, device=device)
        # rows still running at step t: those longer than t
        active = torch.searchsorted(-sorted_lengths, -torch.arange(steps)).tolist()
        layer_input = x.index_select(0, order).transpose(0, 1)
    if h0 is not None and order is not None:
        h0 = h0.index_select(1, order)
    finals = []
    for layer in range(rnn.num_layers):
        if layer and dropout is not None:
            layer_input = dropout(layer_input)
        outs = []
        for direction in range(directions):
            index = layer * directions + direction
            w_ih, w_hh, b_ih, b_hh = rnn.all_weights[index]  # nn.GRU's order: layers, then directions
            gates_x = padded_linear(layer_input, w_ih, b_ih)  # (T, B, 3H), autocast dtype
            start = h0[index] if h0 is not None else x.new_zeros(batch, hidden, dtype=_state_dtype(gates_x.dtype))
            out, last = GRUScan.apply(gates_x.contiguous(), start, w_hh.to(gates_x.dtype), b_hh,
                                      active, bool(direction))
            outs.append(out)
            finals.append(last)
        layer_input = outs[0] if directions == 1 else torch.cat(outs, dim=2)
    outputs = layer_input.transpose(0, 1)  # (B, T, directions * H)
    h_n = torch.stack(finals)
    if inverse is not None:
        outputs = outputs.index_select(0, inverse)
        h_n = h_n.index_select(1, inverse)
    return outputs, h_n

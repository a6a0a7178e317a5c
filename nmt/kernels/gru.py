"""Recurrent time loops with hand-written backward passes, for training on CPU: a GRU layer, and
the Bahdanau decoder's loop (attention + GRU).

``nn.GRU`` on CPU runs its time loop as separate ATen ops, and autograd records every one of them:
a backward pass walks about twenty graph nodes per time step and does one small weight-gradient
GEMM per step. :class:`GRUScan` keeps the same equations (Cho et al. 2014, in PyTorch's gate order
r, z, n) but saves what the backward needs in preallocated ``(T, batch, ...)`` buffers, runs the
reverse time loop itself (one ``(rows, 3H) x (3H, H)`` GEMM plus elementwise work per step) and
forms the hidden-weight gradient with **one** GEMM over all steps afterwards. Input projections
of all time steps are one GEMM before the loop (left to autograd).

:func:`run_gru` takes an ``nn.GRU`` module (its parameters, so checkpoints are unchanged),
batch-first input and per-row lengths, and returns what ``nn.GRU`` returns for the packed input:
outputs zero at padded positions and each row's final state at its own last token. Rows are
sorted by length once, so step ``t`` works on the contiguous leading ``n_t`` rows still running
(the layout of a packed sequence). Outside CPU training the callers keep ``nn.GRU`` (cuDNN on GPU).

:class:`BahdanauRecurrence` applies the same idea to the Bahdanau decoder, whose attention sits
inside the recurrence (the context of step t depends on s_{t-1}), so ``nn.GRU`` cannot run it:
the GRU step helpers below are shared by both loops.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Hidden states and gate activations stay in float32 when the GEMMs run in 16 bits."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _gru_step(x_t: Tensor, h_t: Tensor, w_t: Tensor, bias: Tensor, gates_h_t: Tensor, rz_t: Tensor,
              new_t: Tensor) -> None:
    """One GRU step on ``rows`` rows, in place: ``h_t (rows, H)`` becomes h'.

    ``x_t`` input gates (rows, 3H); ``w_t = W_hhᵀ`` and ``bias`` in the GEMM dtype; the outputs
    ``gates_h_t = W_h h + b_h`` (rows, 3H), ``rz_t = [r, z]`` (rows, 2H) and ``new_t = n`` (rows, H)
    are what the backward step needs.
    """
    hidden = h_t.size(1)
    g_h = torch.addmm(bias, h_t.to(w_t.dtype), w_t, out=gates_h_t)
    torch.add(x_t[:, : 2 * hidden], g_h[:, : 2 * hidden], out=rz_t).sigmoid_()
    torch.addcmul(x_t[:, 2 * hidden:], rz_t[:, :hidden], g_h[:, 2 * hidden:], out=new_t).tanh_()
    h_t.sub_(new_t).mul_(rz_t[:, hidden:]).add_(new_t)  # h' = n + z (h - n)


def _gru_step_backward(dh: Tensor, h_prev_t: Tensor, rz_t: Tensor, new_t: Tensor, gates_h_t: Tensor,
                       weight_hh: Tensor, grad_x_t: Tensor, grad_hn_t: Tensor, grad_gates_h_t: Tensor) -> None:
    """The backward of :func:`_gru_step`, in place: ``dh`` (rows, H) = dL/dh' becomes dL/dh.

    Writes dL/d x_t = [d r_pre, d z_pre, d n_pre] into ``grad_x_t`` (rows, 3H), d(W_hn h + b_hn)
    into ``grad_hn_t`` (rows, H), and dL/d gates_h = [d r_pre, d z_pre, d h_n] into
    ``grad_gates_h_t`` (rows, 3H, GEMM dtype) for the weight gradient.
    """
    hidden = dh.size(1)
    r, z = rz_t[:, :hidden], rz_t[:, hidden:]
    g_r, g_z, g_n = grad_x_t[:, :hidden], grad_x_t[:, hidden: 2 * hidden], grad_x_t[:, 2 * hidden:]
    torch.mul(dh, 1 - z, out=g_n).mul_(1 - new_t * new_t)  # dh (1 - z) (1 - n^2)
    torch.sub(h_prev_t, new_t, out=g_z).mul_(dh).mul_(z * (1 - z))  # dh (h - n) z (1 - z)
    torch.mul(g_n, gates_h_t[:, 2 * hidden:], out=g_r).mul_(r * (1 - r))  # d n_pre h_n r (1 - r)
    torch.mul(g_n, r, out=grad_hn_t)
    grad_gates_h_t[:, : 2 * hidden] = grad_x_t[:, : 2 * hidden]
    grad_gates_h_t[:, 2 * hidden:] = grad_hn_t
    dh.mul_(z).add_(torch.mm(grad_gates_h_t, weight_hh))  # dh z + d gates_h W_hh


def _gru_weight_grads(grad_gates_h: Tensor, grad_x: Tensor, grad_hn: Tensor,
                      h_prev: Tensor) -> tuple[Tensor, Tensor]:
    """dL/dW_hh and dL/db_hh from all steps' buffers of :func:`_gru_step_backward` and the states
    before each step (T, B, H): one GEMM over T·B rows and one sum. Rows a step did not run are zero."""
    hidden = h_prev.size(2)
    grad_weight_hh = torch.mm(grad_gates_h.view(-1, 3 * hidden).t(), h_prev.view(-1, hidden).to(grad_gates_h.dtype))
    grad_bias_hh = torch.cat([grad_x[..., : 2 * hidden].sum((0, 1)), grad_hn.sum((0, 1))])
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
        steps, batch, three_h = gates_x.shape
        hidden = three_h // 3
        gemm_dtype = weight_hh.dtype
        dtype = _state_dtype(gemm_dtype)
        with torch.autocast(gates_x.device.type, enabled=False):
            w_t = weight_hh.t()
            bias = bias_hh.to(gemm_dtype)
            h = h0.to(dtype).clone()
            # only rows a step runs are written; the rest must read as zero where they are used
            outputs = gates_x.new_empty(steps, batch, hidden, dtype=dtype)
            h_prev = gates_x.new_empty(steps, batch, hidden, dtype=dtype)  # state before each step
            rz = gates_x.new_empty(steps, batch, 2 * hidden, dtype=dtype)  # r and z
            new = gates_x.new_empty(steps, batch, hidden, dtype=dtype)  # n
            gates_h = gates_x.new_empty(steps, batch, 3 * hidden, dtype=gemm_dtype)  # W_h h + b_h
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
        with torch.autocast(h_prev.device.type, enabled=False):
            grad_h = (grad_h_last.to(dtype).clone() if grad_h_last is not None
                      else h_prev.new_zeros(batch, hidden))
            # d gates_x = [d r_pre, d z_pre, d n_pre]; d gates_h = [d r_pre, d z_pre, d h_n] (GEMM dtype)
            grad_gates_x = h_prev.new_empty(steps, batch, 3 * hidden)
            grad_hn = h_prev.new_empty(steps, batch, hidden)
            grad_gates_h = h_prev.new_empty(steps, batch, 3 * hidden, dtype=gemm_dtype)
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


def use_gru_scan(x: Tensor) -> bool:
    """The hand-written GRU pays off where autograd records the ``nn.GRU`` time loop: CPU training."""
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
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(rnn, "weight_ih" + suffix), getattr(rnn, "weight_hh" + suffix)
            b_ih, b_hh = getattr(rnn, "bias_ih" + suffix), getattr(rnn, "bias_hh" + suffix)
            gates_x = F.linear(layer_input, w_ih, b_ih)  # (T, B, 3H), autocast dtype
            index = layer * directions + direction
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


class BahdanauRecurrence(torch.autograd.Function):
    """The Bahdanau decoder's time loop (additive attention before a one-layer GRU), with a
    hand-written backward pass. Teacher forcing on CPU; every row runs all T steps.

    Per step, with query s = s_{t-1} (Bahdanau et al. 2015, App. A.1.2, tanh written as 2σ(2a) − 1):
    u = σ(2 W_q s + P2) with P2 = 2 (W_k k + b) precomputed, e = 2 uᵀv − Σv (= vᵀ tanh(W_q s + W_k k + b)),
    a = masked softmax(e), c = Σ_j a_j k_j, x = E_t + W_ic c, s_t = GRU(x, s_{t-1}).

    forward(emb_gates (T, B, 3H), h0 (B, H), proj_keys2 (B, S, A), keys (B, S, K), mask (B, S) bool,
            w_query (A, H), v (1, A), w_context (3H, K), weight_hh (3H, H), bias_hh (3H,))
    -> states s_1..s_T (T, B, H), contexts (T, B, K), attention weights (T, B, S) (not differentiable).

    The weights and ``emb_gates``, ``proj_keys2``, ``keys`` are in the GEMM dtype (bfloat16 under
    autocast); states and attention weights are float32 then. The backward saves per step only what
    it reads again (σ outputs, attention weights, contexts, GRU gates); weight gradients, the keys'
    gradient through the contexts and v's gradient are one GEMM each over all steps.
    """

    @staticmethod
    def forward(ctx, emb_gates: Tensor, h0: Tensor, proj_keys2: Tensor, keys: Tensor, mask: Tensor,
                w_query: Tensor, v: Tensor, w_context: Tensor, weight_hh: Tensor, bias_hh: Tensor):
        steps, batch, three_h = emb_gates.shape
        hidden = three_h // 3
        src_len, att_dim = proj_keys2.shape[1:]
        gemm_dtype = weight_hh.dtype
        dtype = _state_dtype(gemm_dtype)
        with torch.autocast(emb_gates.device.type, enabled=False):
            w_q2 = (w_query * 2).t()  # (H, A): the query side of 2a
            v_col = v.t()  # (A, 1)
            v_sum = float(v.float().sum())
            w_c = w_context.t()
            w_hh = weight_hh.t()
            bias = bias_hh.to(gemm_dtype)
            blocked = ~mask
            h = h0.to(dtype).clone()
            h_prev = h.new_empty(steps, batch, hidden)
            sig = proj_keys2.new_empty(steps, batch, src_len, att_dim)  # u, GEMM dtype
            weights = h.new_empty(steps, batch, src_len)
            contexts = keys.new_empty(steps, batch, keys.size(2))
            gates_x = h.new_empty(steps, batch, three_h, dtype=gemm_dtype)
            rz = h.new_empty(steps, batch, 2 * hidden)
            new = h.new_empty(steps, batch, hidden)
            gates_h = proj_keys2.new_empty(steps, batch, three_h, dtype=gemm_dtype)
            states = h.new_empty(steps, batch, hidden)
            for t in range(steps):
                h_prev[t] = h
                q2 = torch.mm(h.to(gemm_dtype), w_q2)  # (B, A)
                u = torch.add(proj_keys2, q2.unsqueeze(1), out=sig[t]).sigmoid_()
                scores = torch.matmul(u, v_col).squeeze(2).to(dtype).mul_(2).sub_(v_sum)  # (B, S)
                a = torch.softmax(scores.masked_fill_(blocked, float("-inf")), dim=1)
                a = weights[t].copy_(a.masked_fill_(blocked, 0.0))
                c = torch.bmm(a.to(keys.dtype).unsqueeze(1), keys, out=contexts[t].unsqueeze(1)).squeeze(1)
                torch.addmm(emb_gates[t], c.to(gemm_dtype), w_c, out=gates_x[t])
                _gru_step(gates_x[t], h, w_hh, bias, gates_h[t], rz[t], new[t])
                states[t] = h
        ctx.save_for_backward(proj_keys2, keys, mask, w_query, v, w_context, weight_hh,
                              h_prev, sig, weights, contexts, rz, new, gates_h)
        ctx.dtypes = (emb_gates.dtype, h0.dtype, bias_hh.dtype)
        ctx.mark_non_differentiable(weights)
        return states, contexts, weights

    @staticmethod
    def backward(ctx, grad_states: Tensor | None, grad_contexts: Tensor | None, _grad_weights):
        (proj_keys2, keys, mask, w_query, v, w_context, weight_hh,
         h_prev, sig, weights, contexts, rz, new, gates_h) = ctx.saved_tensors
        steps, batch, hidden = h_prev.shape
        gemm_dtype = weight_hh.dtype
        dtype = h_prev.dtype
        emb_dtype, h0_dtype, bias_dtype = ctx.dtypes
        with torch.autocast(h_prev.device.type, enabled=False):
            v_row = (v * 2).to(sig.dtype)  # (1, A): d e / d u = 2 v
            w_q2 = (w_query * 2)  # (A, H)
            grad_h = h_prev.new_zeros(batch, hidden)
            grad_x = h_prev.new_empty(steps, batch, 3 * hidden)  # = d emb_gates
            grad_hn = h_prev.new_empty(steps, batch, hidden)
            grad_gates_h = h_prev.new_empty(steps, batch, 3 * hidden, dtype=gemm_dtype)
            grad_c = h_prev.new_empty(steps, batch, keys.size(2))
            grad_scores = h_prev.new_empty(steps, batch, proj_keys2.size(1))
            grad_q2 = h_prev.new_empty(steps, batch, proj_keys2.size(2))
            grad_proj = torch.zeros_like(proj_keys2, dtype=dtype)
            for t in range(steps - 1, -1, -1):
                if grad_states is not None:
                    grad_h.add_(grad_states[t])
                _gru_step_backward(grad_h, h_prev[t], rz[t], new[t], gates_h[t], weight_hh,
                                   grad_x[t], grad_hn[t], grad_gates_h[t])
                # context: x = E + W_ic c
                dc = torch.mm(grad_x[t].to(gemm_dtype), w_context).to(dtype)
                if grad_contexts is not None:
                    dc.add_(grad_contexts[t])
                grad_c[t] = dc
                # c = Σ a k  ->  d a = k · dc; softmax: d e = a (d a − Σ a d a)
                da = torch.bmm(keys, dc.to(keys.dtype).unsqueeze(2)).squeeze(2).to(dtype)
                a = weights[t]
                de = grad_scores[t]
                torch.mul(a, da - (a * da).sum(1, keepdim=True), out=de)
                # e = 2 uᵀv − Σv, u = σ(pre): d pre = d e · 2v · u (1 − u)
                u = sig[t]
                d_pre = u * (1 - u)
                d_pre.mul_(v_row).mul_(de.to(u.dtype).unsqueeze(2))
                grad_proj.add_(d_pre)
                dq2 = grad_q2[t]
                torch.sum(d_pre, dim=1, dtype=dtype, out=dq2)
                grad_h.add_(torch.mm(dq2.to(gemm_dtype), w_q2))  # q2 = 2 W_q s
            grad_weight_hh, grad_bias_hh = _gru_weight_grads(grad_gates_h, grad_x, grad_hn, h_prev)
            flat_h = h_prev.view(-1, hidden).to(gemm_dtype)
            grad_w_context = torch.mm(grad_x.view(-1, 3 * hidden).t().to(gemm_dtype),
                                      contexts.view(-1, contexts.size(2)).to(gemm_dtype))
            grad_w_query = 2 * torch.mm(grad_q2.view(-1, grad_q2.size(2)).t().to(gemm_dtype), flat_h)
            # d v = Σ d e (2u − 1) over steps, rows and source positions
            de_flat = grad_scores.view(1, -1)
            grad_v = 2 * torch.mm(de_flat.to(sig.dtype), sig.view(-1, sig.size(3))).to(dtype) - de_flat.sum()
            # keys through the contexts: d k_j = Σ_t a_tj dc_t, one batched GEMM over steps
            grad_keys = torch.bmm(weights.permute(1, 2, 0).to(gemm_dtype), grad_c.transpose(0, 1).to(gemm_dtype))
        return (grad_x.to(emb_dtype), grad_h.to(h0_dtype), grad_proj.to(proj_keys2.dtype),
                grad_keys.to(keys.dtype), None, grad_w_query.to(w_query.dtype), grad_v.to(v.dtype),
                grad_w_context.to(w_context.dtype), grad_weight_hh.to(weight_hh.dtype),
                grad_bias_hh.to(bias_dtype))

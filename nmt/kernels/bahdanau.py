"""The Bahdanau decoder's teacher-forced time loop (additive attention before a one-layer GRU) as one
autograd Function with a hand-written backward pass: the fast twin of the step loop of
``nmt.model.decoder.BahdanauDecoder.forward``, for training on CPU.

The attention sits inside the recurrence (the context of step t depends on s_{t-1}), so ``nn.GRU``
cannot run it, and autograd would record every small op of every step. Here the forward pass saves
per step only what the backward reads again, and the weight gradients and the keys' gradient
through the contexts are one GEMM each over all steps. tanh is computed as 2σ(2a) − 1 (see
``nmt.kernels.attention``). :func:`bahdanau_recurrence_applies` says where it runs.

The (batch, source, attention) tensors of a step are the largest the loop touches, so the backward
passes over them three times per step: ``w = u (1 − u)`` once, then ``Σ_s d e_s w_s`` and
``Σ_s d e_s u_s`` as batched products, and ``d e ⊙ w`` added into the keys' projection gradient.
The factor 2v of every one of these gradients is applied once after the loop. The contexts and
their gradient through the keys are batched products of one row with a matrix in float32 (in bf16,
or as a matrix times a column, they take two to eight times longer on the CPU).

Tested against the step loop in float64 (values and gradients to 1e-12) and by gradcheck:
tests/test_gru.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from nmt.kernels.gru import _gru_step, _gru_step_backward, _gru_weight_grads, _state_dtype
from nmt.kernels.layout import gru_gates
from nmt.kernels.rows import padded_mm, row_multiple


def bahdanau_recurrence_applies(x: Tensor, layers: int, score_activation: str) -> bool:
    """CPU training (grad mode on, ``x`` the target embeddings on the CPU) of the usual configuration:
    one GRU layer and the tanh additive score (any other scorer activation keeps the step loop)."""
    return x.device.type == "cpu" and torch.is_grad_enabled() and layers == 1 and score_activation == "tanh"


class BahdanauRecurrence(torch.autograd.Function):
    """The Bahdanau decoder's time loop (additive attention before a one-layer GRU), with a
    hand-written backward pass. Teacher forcing on CPU; every row runs all T steps.

    Per step, with query s = s_{t-1} (Bahdanau et al. 2015, App. A.1.2, tanh written as 2σ(2a) − 1):
    u = σ(2 W_q s + 2P) with 2P = 2 (W_k k + b) precomputed (``proj_keys``, as the attention's fast
    ``precompute`` returns it), e = 2 uᵀv − Σv (= vᵀ tanh(W_q s + W_k k + b)),
    a = masked softmax(e), c = Σ_j a_j k_j, x = E_t + W_ic c, s_t = GRU(x, s_{t-1}).
    Backward through the score: d pre = d e · 2v · u (1 − u) (pre = 2 W_q s + 2P),
    d v = Σ d e (2u − 1) = 2 Σ d e u (Σ_j d e_j = 0 in each row, as Σ_j a_j = 1).

    forward(emb_gates (T, B, 3H), h0 (B, H), proj_keys (B, S, A), keys (B, S, K), mask (B, S) bool,
            w_query (A, H), v (1, A), w_context (3H, K), weight_hh (3H, H), bias_hh (3H,))
    -> states s_1..s_T (T, B, H), contexts (T, B, K), attention weights (T, B, S) (not differentiable).

    The weights and ``emb_gates``, ``proj_keys`` are in the GEMM dtype (bfloat16 under autocast);
    states, attention weights and contexts are float32 then (``keys`` is taken in that dtype). The
    forward saves per step only what the backward reads again (σ outputs, attention weights,
    contexts, GRU gates); weight gradients and the keys' gradient through the contexts are one GEMM
    each over all steps.
    """

    @staticmethod
    def forward(ctx, emb_gates: Tensor, h0: Tensor, proj_keys: Tensor, keys: Tensor, mask: Tensor,
                w_query: Tensor, v: Tensor, w_context: Tensor, weight_hh: Tensor, bias_hh: Tensor):
        steps, batch, _ = emb_gates.shape
        hidden = weight_hh.size(1)
        gates = gru_gates(hidden)
        src_len, att_dim = proj_keys.shape[1:]
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
            keys_dtype = keys.dtype
            keys = keys.to(dtype)
            h = h0.to(dtype).clone()
            h_prev = h.new_empty(steps, batch, hidden)
            sig = proj_keys.new_empty(steps, batch, src_len, att_dim)  # u, GEMM dtype
            weights = h.new_empty(steps, batch, src_len)
            contexts = h.new_empty(steps, batch, keys.size(2))
            gates_x = h.new_empty(steps, batch, gates.width, dtype=gemm_dtype)
            rz = h.new_empty(steps, batch, gates.size("r", "z"))
            new = h.new_empty(steps, batch, hidden)
            gates_h = proj_keys.new_empty(steps, batch, gates.width, dtype=gemm_dtype)
            states = h.new_empty(steps, batch, hidden)
            for t in range(steps):
                h_prev[t] = h
                h_gemm = h.to(gemm_dtype)
                q2 = torch.mm(h_gemm, w_q2)  # (B, A)
                u = torch.add(q2.unsqueeze(1), proj_keys, out=sig[t]).sigmoid_()  # σ(2 W_q s + 2P)
                scores = torch.matmul(u, v_col).squeeze(2).to(dtype).mul_(2).sub_(v_sum)  # (B, S)
                a = torch.softmax(scores.masked_fill_(blocked, float("-inf")), dim=1)
                a = weights[t].copy_(a.masked_fill_(blocked, 0.0))
                c = torch.bmm(a.unsqueeze(1), keys, out=contexts[t].unsqueeze(1)).squeeze(1)
                torch.addmm(emb_gates[t], c.to(gemm_dtype), w_c, out=gates_x[t])
                _gru_step(gates_x[t], h, w_hh, bias, gates_h[t], rz[t], new[t], h_gemm=h_gemm)
                states[t] = h
        ctx.save_for_backward(proj_keys, keys, mask, w_query, v, w_context, weight_hh,
                              h_prev, sig, weights, contexts, rz, new, gates_h)
        ctx.dtypes = (emb_gates.dtype, h0.dtype, bias_hh.dtype, keys_dtype)
        ctx.mark_non_differentiable(weights)
        return states, contexts, weights

    @staticmethod
    def backward(ctx, grad_states: Tensor | None, grad_contexts: Tensor | None, _grad_weights):
        (proj_keys, keys, mask, w_query, v, w_context, weight_hh,
         h_prev, sig, weights, contexts, rz, new, gates_h) = ctx.saved_tensors
        steps, batch, hidden = h_prev.shape
        att_dim = proj_keys.size(2)
        gemm_dtype = weight_hh.dtype
        dtype = h_prev.dtype
        emb_dtype, h0_dtype, bias_dtype, keys_dtype = ctx.dtypes
        width = gru_gates(hidden).width
        with torch.autocast(h_prev.device.type, enabled=False):
            v2 = (v * 2).to(dtype).squeeze(0)  # (A,): d e / d u = 2v
            # d q2 = 2v ⊙ Σ_s d e u (1 − u) and q2 = 2 W_q s: 2v folded into the weight read back
            w_back = (v2.unsqueeze(1) * (w_query.to(dtype) * 2)).to(gemm_dtype)  # (A, H)
            grad_h = h_prev.new_zeros(batch, hidden)
            grad_x = h_prev.new_empty(steps, batch, width)  # = d emb_gates
            grad_hn = h_prev.new_empty(steps, batch, hidden)
            grad_gates_h = h_prev.new_empty(steps, batch, width, dtype=gemm_dtype)
            grad_c = h_prev.new_empty(steps, batch, keys.size(2))
            grad_q2 = h_prev.new_empty(steps, batch, att_dim, dtype=gemm_dtype)  # d q2 / 2v
            grad_proj = torch.zeros_like(proj_keys, dtype=dtype)  # d L / d (2P), / 2v until the end
            grad_v = h_prev.new_zeros(att_dim)  # Σ d e u
            keys_t = keys.transpose(1, 2).contiguous()  # (B, K, S): d a as a product of two matrices
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
                da = torch.bmm(dc.unsqueeze(1), keys_t).squeeze(1)  # (B, S)
                a = weights[t]
                de = a * (da - (a * da).sum(1, keepdim=True))
                # e = 2 uᵀv − Σv, u = σ(pre): d pre = d e · 2v · u (1 − u)
                u = sig[t]
                w = torch.addcmul(u, u, u, value=-1)  # u (1 − u)
                de_rows = de.to(gemm_dtype).unsqueeze(1)  # (B, 1, S)
                dq2 = torch.bmm(de_rows, w, out=grad_q2[t].unsqueeze(1)).squeeze(1)  # Σ_s d e w
                grad_v += torch.bmm(de_rows, u).sum((0, 1), dtype=dtype)
                grad_proj.addcmul_(w, de.unsqueeze(2))
                grad_h.add_(torch.mm(dq2, w_back))  # q2 = 2 W_q s
            grad_proj.mul_(v2)
            grad_weight_hh, grad_bias_hh = _gru_weight_grads(grad_gates_h, grad_x, grad_hn, h_prev)
            # sums over all T·B rows, their count rounded up for a 16-bit GEMM (nmt.kernels.rows)
            multiple = row_multiple(weight_hh)
            flat_h = h_prev.view(-1, hidden).to(gemm_dtype)
            grad_w_context = padded_mm(grad_x.view(-1, width).to(gemm_dtype),
                                       contexts.view(-1, contexts.size(2)).to(gemm_dtype), multiple)
            grad_w_query = (2 * v2).unsqueeze(1) * padded_mm(grad_q2.view(-1, att_dim), flat_h, multiple)
            # d v = Σ d e (2u − 1) = 2 Σ d e u: a row's d e sums to zero (its weights sum to one)
            grad_v = (2 * grad_v).unsqueeze(0)
            # keys through the contexts: d k_j = Σ_t a_tj dc_t, one batched GEMM over steps
            grad_keys = torch.bmm(weights.permute(1, 2, 0), grad_c.transpose(0, 1))
        return (grad_x.to(emb_dtype), grad_h.to(h0_dtype), grad_proj.to(proj_keys.dtype),
                grad_keys.to(keys_dtype), None, grad_w_query.to(w_query.dtype), grad_v.to(v.dtype),
                grad_w_context.to(w_context.dtype), grad_weight_hh.to(weight_hh.dtype),
                grad_bias_hh.to(bias_dtype))

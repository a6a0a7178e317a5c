"""Attention mechanisms for the GRU decoder (and the optional self-attention encoder blocks).

Every kind has the same interface, so the decoder never needs to know which one it holds::

    proj = attn.precompute(keys)                      # once per source batch
    context, weights = attn(query, keys, values, mask, proj_keys=proj)

=========  =====================================  ==============================================
tensor     shape                                  meaning
=========  =====================================  ==============================================
query      (batch, tgt_len, q_dim)                decoder state(s); tgt_len = 1 for one step
keys       (batch, src_len, k_dim)                encoder outputs
values     (batch, src_len, k_dim)                usually the same tensor as ``keys``
mask       (batch, src_len) bool                  True on real source tokens, False on padding
proj_keys  (batch, src_len, *) tensor or None     ``precompute(keys)``: key projection, once per source
context    (batch, tgt_len, k_dim)                Σ_s weights[.., s] · values[.., s, :]
weights    (batch, tgt_len, src_len)              alignment; sums to 1 over real tokens, exactly 0
                                                  on padding (local-p: sums to <= 1, see there)
=========  =====================================  ==============================================

Every score is a function of one query position only, so running a whole target sequence at once
(teacher forcing) and running it one step at a time (greedy / beam search) give the same numbers.

Kinds (``build_attention(kind, ...)``):

- ``bahdanau``      additive, Bahdanau et al. 2015: ``score = vᵀ act(W_q q + W_k k + b)``
- ``luong-dot``     Luong et al. 2015 §3.1: ``score = qᵀ k``
- ``luong-general`` Luong et al. 2015 §3.1: ``score = qᵀ W k``
- ``luong-concat``  Luong et al. 2015 §3.1: ``score = vᵀ act(W [q; k]) = vᵀ act(W_q q + W_k k + b)``
- ``local-p``       Luong et al. 2015 §3.2: one of the three Luong scores inside a Gaussian window
                    around a predicted source position

:class:`MultiHeadAttention` (Vaswani et al. 2017) serves the encoder's self-attention blocks.

Numerics: scores may be computed in bf16 under CPU autocast, but the masked softmax (and local-p's
position / Gaussian arithmetic) always runs in at least float32; returned ``weights`` are float32
(float64 if the module runs in float64), ``context`` has the dtype the matmul produced.

Fast path: with ``kernels="auto"`` the tanh additive score runs as
:func:`nmt.kernels.additive_tanh_score` (tanh through the sigmoid, on the CPU); ``reference`` runs
the equation as written. Search's fast step passes the products and the softmax's sum of
:mod:`nmt.kernels.batch_invariant` into the same equations (``linear=``, ``dot=``, ``total=``).

Scorer activations: ``act`` (additive / concat scores) is any registry activation, tanh by default.
Width-changing activations are supported by asking the registry for the width factor: with
maxout (k = 2 pieces), ``W_q`` and ``W_k`` project to ``k·H`` channels and maxout reduces them to
the ``H`` that ``v`` scores. Per-channel activations get ``channels=H``. ``score`` passes the source mask to the activation: APReLU pools, for each query,
over the real source positions (each query on its own, so step-wise decoding still equals batched).
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt import kernels
from nmt.errors import NmtError
from nmt.kernels import Layout
from nmt.model.activations import (
    ActivatedLinear,
    Dropout,
    available_activations,
    get_activation,
    make_dropout,
)

__all__ = [
    "ATTENTION_KINDS",
    "LOCAL_SCORES",
    "AttentionError",
    "Attention",
    "AdditiveAttention",
    "BahdanauAttention",
    "LuongConcatAttention",
    "LuongDotAttention",
    "LuongGeneralAttention",
    "LocalPAttention",
    "MultiHeadAttention",
    "SelfAttentionLayer",
    "build_attention",
    "dot_product",
    "masked_softmax",
]

ATTENTION_KINDS = ("bahdanau", "luong-dot", "luong-general", "luong-concat", "local-p")
LOCAL_SCORES = ("dot", "general", "concat")


class AttentionError(NmtError, ValueError):
    """An impossible attention configuration (unknown kind, missing window, mismatched sizes).

    Also a ``ValueError`` so library callers can catch it without knowing about :mod:`nmt.errors`.
    """


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _softmax_dtype(t: Tensor) -> torch.dtype:
    # At least float32: bf16 has 8 mantissa bits, too few for exp/sum over long sources.
    return torch.promote_types(t.dtype, torch.float32)


def masked_softmax(scores: Tensor, allowed: Tensor, total: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Softmax over the last dim restricted to ``allowed`` positions; exactly 0 elsewhere::

        a_s = exp(x_s - m) / Σ_{s' allowed} exp(x_s' - m),   m = max_{s allowed} x_s

    ``scores`` (..., src_len); ``allowed`` bool, broadcastable to ``scores``. Computed in at least
    float32. A row with no allowed position (never expected: every source has >= 1 token) comes out
    as all zeros instead of NaN, so one bad row cannot poison a whole batch.

    ``total`` sums Σ, ``(..., src_len) -> (...)``; None: ``torch.softmax``'s own sum.
    """
    dtype = _softmax_dtype(scores)
    blocked = ~allowed
    x = scores.to(dtype).masked_fill(blocked, float("-inf"))
    if total is None:
        weights = torch.softmax(x, dim=-1)
    else:
        top = x.amax(dim=-1, keepdim=True)
        # a row with no allowed position has m = -inf: subtract 0 instead (its exp is 0 everywhere)
        exp = (x - top.masked_fill(top == float("-inf"), 0.0)).exp()
        weights = exp / total(exp).unsqueeze(-1)
    # exp(-inf) is already exactly 0; this second fill only turns all-masked NaN rows into zeros.
    return weights.masked_fill(blocked, 0.0)


def dot_product(u: Tensor, v: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``vᵀ u + bias`` over the last dim, as :func:`nmt.kernels.batch_invariant.dot`: ``u (..., H)``,
    ``v (1, H)`` an ``nn.Linear(H, 1)``'s weight itself (autocast caches its cast of a leaf only),
    ``bias (1,)`` or None -> ``(...)``."""
    return F.linear(u, v, bias).squeeze(-1)


def _check_inputs(query: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> None:
    if query.dim() != 3 or keys.dim() != 3 or values.dim() != 3:
        raise ValueError(f"attention expects 3-d query/keys/values (batch, len, dim), got "
                         f"{tuple(query.shape)}, {tuple(keys.shape)}, {tuple(values.shape)}")
    if mask.shape != keys.shape[:2] or values.shape[:2] != keys.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} / values {tuple(values.shape)} do not match keys "
                         f"{tuple(keys.shape)} in (batch, src_len)")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (True on real tokens), got {mask.dtype}")


def _scorer_activation(name: Optional[str], channels: int) -> tuple[nn.Module, int]:
    """The scorer non-linearity from the shared registry (default tanh, default options) and its
    width factor.

    Returns ``(act, factor)``: the pre-activation must be ``factor * channels`` wide (maxout: its
    pieces; every other activation: 1). Per-channel activations (PReLU, APReLU) get
    ``channels=channels``; the others do not take that option.
    """
    name = name or "tanh"
    spec = available_activations().get(name)
    if spec is None:
        return get_activation(name), 1  # raises the registry's ConfigError with its suggestion
    options = {"channels": channels} if spec.per_channel else {}
    return get_activation(name, **options), int(spec.width_factor(**options))


# --------------------------------------------------------------------------------------------------
# Global (content-based) attention
# --------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Base class: ``score`` gives raw scores, ``forward`` masks, normalises and mixes the values.

    Subclasses implement :meth:`score` and, when part of the score depends on the keys only,
    :meth:`precompute` (which is then computed once per source, not once per decoder step).
    """

    def precompute(self, keys: Tensor, linear: Callable = F.linear) -> Any:
        """Key-only part of the score, ``keys (batch, src_len, k_dim)`` -> kind-specific; or None.
        ``linear`` (``F.linear``'s signature) multiplies a key projection."""
        return None

    def score(self, query: Tensor, keys: Tensor, proj_keys: Any, mask: Optional[Tensor] = None) -> Tensor:
        """Raw scores ``(batch, tgt_len, src_len)`` before masking; see the subclass equation.

        ``mask (batch, src_len)`` only reaches a scorer activation that pools over the source (APReLU).
        """
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor,
                proj_keys: Any = None) -> tuple[Tensor, Tensor]:
        """``a = softmax_{real s}(score(q_t, k_s))``, ``c_t = Σ_s a_ts v_s``.

        Returns ``context (batch, tgt_len, k_dim)`` and ``weights (batch, tgt_len, src_len)``.
        """
        _check_inputs(query, keys, values, mask)
        if proj_keys is None:
            proj_keys = self.precompute(keys)
        scores = self.score(query, keys, proj_keys, mask)               # (B, T, S)
        weights = masked_softmax(scores, mask.unsqueeze(1))             # (B, T, S), mask -> (B, 1, S)
        context = torch.bmm(weights.to(values.dtype), values)           # (B, T, S) @ (B, S, k) -> (B, T, k)
        return context, weights

    def attend(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor,
               proj_keys: Any = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """:meth:`forward` and the source positions the kind predicts, ``(batch, tgt_len)``
        (detached; local-p's window centres), or None for kinds without them."""
        context, weights = self(query, keys, values, mask, proj_keys=proj_keys)
        return context, weights, None


class AdditiveAttention(Attention):
    """Additive / MLP score: ``score(q, k) = vᵀ act(W_q q + W_k k + b)``.

    Shapes: ``W_q q`` (B, T, 1, f·H) + ``W_k k + b`` (B, 1, S, f·H) -> act -> (B, T, S, H) -> ``vᵀ``
    -> (B, T, S), where f is the activation's width factor (maxout: pieces, else 1). ``W_k k + b``
    is the precomputed part. This is Bahdanau et al. 2015 (eq. in App. A.1.2,
    ``vₐᵀ tanh(Wₐ s_{i-1} + Uₐ h_j)``) and equally Luong et al. 2015's ``concat`` score
    ``vₐᵀ tanh(Wₐ[h_t; h̄_s])``, because ``W [q; k] = W_q q + W_k k``. A bias ``b`` is added on the key
    side: it is free there (precomputed) and lets the non-linearity work off-centre.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_size: Optional[int] = None,
                 activation: Optional[str] = None, kernels: str = "auto"):
        super().__init__()
        hidden = hidden_size or query_dim
        self.activation_name = activation or "tanh"
        self.act, factor = _scorer_activation(self.activation_name, hidden)
        # maxout: k pieces per scorer unit, so both projections are k times wider (factor = k)
        self.query_proj = nn.Linear(query_dim, hidden * factor, bias=False)     # W_q
        self.key_proj = nn.Linear(key_dim, hidden * factor, bias=True)          # W_k, b
        self.v = nn.Linear(hidden, 1, bias=False)                               # v
        self.fast = kernels == "auto"

    def precompute(self, keys: Tensor, linear: Callable = F.linear) -> Tensor:
        proj = linear(keys, self.key_proj.weight, self.key_proj.bias)          # W_k k + b: (B, S, f·H)
        if self.fast and kernels.tanh_by_sigmoid_applies(self.activation_name, keys):
            return kernels.additive_tanh_keys(proj)  # the fast score's form of it: 2 (W_k k + b)
        return proj

    def score(self, query: Tensor, keys: Tensor, proj_keys: Tensor, mask: Optional[Tensor] = None, *,
              linear: Callable = F.linear, dot: Callable = dot_product) -> Tensor:
        """Scores ``(B, T, S)`` of ``query (B, T, q_dim)``; ``linear`` multiplies ``W_q q`` and ``dot``
        takes ``vᵀ`` (the signatures of ``F.linear`` and :func:`dot_product`)."""
        query_proj = linear(query, self.query_proj.weight)                    # W_q q: (B, T, f·H)
        if self.fast and kernels.tanh_by_sigmoid_applies(self.activation_name, query):
            return kernels.additive_tanh_score(query_proj, proj_keys, self.v, dot=dot)
        # Broadcast (B, T, 1, f·H) + (B, 1, S, f·H): every query position meets every key independently.
        hidden = self.act(query_proj.unsqueeze(2) + proj_keys.unsqueeze(1),
                          mask=None if mask is None else mask.unsqueeze(1))  # APReLU: pool over real s
        return dot(hidden, self.v.weight)                              # (B, T, S, H) -> (B, T, S)


class BahdanauAttention(AdditiveAttention):
    """Bahdanau et al. 2015 additive attention (the decoder applies it *before* its GRU step)."""


class LuongConcatAttention(AdditiveAttention):
    """Luong et al. 2015 ``concat`` score ``vᵀ act(W [q; k])`` (applied *after* the GRU step)."""


class LuongDotAttention(Attention):
    """Luong et al. 2015 ``dot`` score: ``score(q, k) = qᵀ k``, (B, T, d) @ (B, d, S) -> (B, T, S).

    No parameters; needs ``q_dim == k_dim``.
    """

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        if query_dim != key_dim:
            raise AttentionError(
                f"luong-dot attention needs query and key sizes to match, got decoder state size "
                f"{query_dim} vs encoder output size {key_dim}; use luong-general (qᵀ W k) instead, "
                "or make the decoder hidden size equal the encoder output size")

    def score(self, query: Tensor, keys: Tensor, proj_keys: Any, mask: Optional[Tensor] = None) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


class LuongGeneralAttention(Attention):
    """Luong et al. 2015 ``general`` score: ``score(q, k) = qᵀ (W k)``.

    ``W k`` (B, S, q_dim) is precomputed; then (B, T, q) @ (B, q, S) -> (B, T, S).
    """

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.key_proj = nn.Linear(key_dim, query_dim, bias=False)      # W

    def precompute(self, keys: Tensor, linear: Callable = F.linear) -> Tensor:
        return linear(keys, self.key_proj.weight)                      # W k: (B, S, q_dim)

    def score(self, query: Tensor, keys: Tensor, proj_keys: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return torch.bmm(query, proj_keys.transpose(1, 2))


# --------------------------------------------------------------------------------------------------
# Local attention, predictive alignment (local-p)
# --------------------------------------------------------------------------------------------------


class LocalPAttention(Attention):
    """Luong et al. 2015 §3.2 local-p: content score inside a Gaussian window at a predicted position.

    Per query position t of sentence b (true source length ``S_b = mask[b].sum()``)::

        p_t   = (S_b - 1) · σ(v_pᵀ tanh(W_p h_t))                      (B, T)     eq. (9), see below
        W_t   = {s : |s - p_t| <= D} ∩ {real tokens}                   (B, T, S)  bool
        a_t(s) = softmax_{s ∈ W_t}(score(h_t, h̄_s)) · exp(-(s - p_t)² / (2σ²)),  σ = D / 2     eq. (10)

    and ``a_t(s) = 0`` outside ``W_t`` (so exactly 0 on padding). Positions are **0-based** and the
    scale is ``S - 1`` rather than the paper's ``S``: with 0-based positions ``S · σ(·)`` could point
    past the last real token, while ``(S - 1) · σ(·) ∈ [0, S - 1]`` reaches exactly the first and last
    real tokens. ``S`` is each sentence's own length, not the padded batch width, so padding never
    shifts the prediction.

    Because ``|s - p_t| <= D`` with ``D >= 1`` always contains the integer nearest to ``p_t``, the window
    is never empty.

    **Weights do not sum to 1**: as in the paper the Gaussian-scaled weights are not renormalised, so
    ``Σ_s a_t(s) <= 1``: the one exception to this module's sum-to-1 rule. The Gaussian factor is what
    makes ``p_t`` trainable (the window membership itself has no gradient).

    ``score`` is one of ``dot``, ``general``, ``concat`` (built from the global classes above). The
    predicted positions of the last call are kept in ``self.last_positions`` (B, T), detached, for
    plotting; :meth:`predict_positions` computes them directly.
    """

    def __init__(self, query_dim: int, key_dim: int, window: int, score: str = "general",
                 hidden_size: Optional[int] = None, activation: Optional[str] = None, kernels: str = "auto"):
        super().__init__()
        if window is None or int(window) != window or window < 1:
            raise AttentionError(f"local-p attention needs a window half-width D >= 1 (an integer), "
                                 f"got {window!r}; set model.attention.window (e.g. 10)")
        if score not in LOCAL_SCORES:
            raise AttentionError(f"local-p score {score!r} is unknown{_did_you_mean(score, LOCAL_SCORES)}; "
                                 f"choose from {', '.join(LOCAL_SCORES)}")
        self.window = int(window)
        self.sigma = self.window / 2.0                                 # paper: σ = D / 2
        self.score_kind = score
        if score == "dot":
            self.scorer: Attention = LuongDotAttention(query_dim, key_dim)
        elif score == "general":
            self.scorer = LuongGeneralAttention(query_dim, key_dim)
        else:
            self.scorer = LuongConcatAttention(query_dim, key_dim, hidden_size, activation, kernels)
        hidden = hidden_size or query_dim
        self.position_proj = nn.Linear(query_dim, hidden, bias=False)  # W_p
        self.position_v = nn.Linear(hidden, 1, bias=False)             # v_p
        self.last_positions: Optional[Tensor] = None

    def precompute(self, keys: Tensor, linear: Callable = F.linear) -> Any:
        return self.scorer.precompute(keys, linear)

    def score(self, query: Tensor, keys: Tensor, proj_keys: Any, mask: Optional[Tensor] = None) -> Tensor:
        return self.scorer.score(query, keys, proj_keys, mask)

    def predict_positions(self, query: Tensor, mask: Tensor) -> Tensor:
        """``p_t = (S - 1) · σ(v_pᵀ tanh(W_p h_t))``: query (B, T, q), mask (B, S) -> (B, T), 0-based.

        Computed in at least float32: in bf16 positions above 256 could not even be represented
        exactly.
        """
        logits = self.position_v(torch.tanh(self.position_proj(query))).squeeze(-1)   # (B, T)
        logits = logits.to(_softmax_dtype(logits))
        last = (mask.sum(-1) - 1).to(logits.dtype).unsqueeze(-1)                      # (B, 1) = S - 1
        return last * torch.sigmoid(logits)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor,
                proj_keys: Any = None) -> tuple[Tensor, Tensor]:
        """Returns ``context (B, T, k)`` and ``weights (B, T, S)`` with ``Σ_s weights <= 1``."""
        context, weights, _ = self.attend(query, keys, values, mask, proj_keys)
        return context, weights

    def attend(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor,
               proj_keys: Any = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """:meth:`forward` and the predicted positions ``p_t`` (B, T), detached."""
        _check_inputs(query, keys, values, mask)
        if proj_keys is None:
            proj_keys = self.precompute(keys)
        scores = self.scorer.score(query, keys, proj_keys, mask)                       # (B, T, S)
        positions = self.predict_positions(query, mask)                                # (B, T)
        self.last_positions = detached = positions.detach()
        src = torch.arange(keys.shape[1], device=keys.device, dtype=positions.dtype)   # (S,)
        offset = src - positions.unsqueeze(-1)                                         # (B, T, S): s - p_t
        in_window = (offset.abs() <= self.window) & mask.unsqueeze(1)                  # (B, T, S)
        align = masked_softmax(scores, in_window)                                      # softmax over W_t
        gauss = torch.exp(-offset.square() / (2.0 * self.sigma ** 2))                  # (B, T, S)
        weights = align * gauss.to(align.dtype)                                        # still 0 outside W_t
        context = torch.bmm(weights.to(values.dtype), values)                          # (B, T, k)
        return context, weights, detached


# --------------------------------------------------------------------------------------------------
# Multi-head attention and the self-attention encoder block
# --------------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head self-attention, Vaswani et al. 2017 §3.2 (the encoder's
    :class:`SelfAttentionLayer`; the decoder's attention is one of :data:`ATTENTION_KINDS`).

    With ``d_k = d_model / heads`` and per-head slices of the projections of ``x (B, T, d_model)``::

        Q = W_q x + b_q   (B, h, T, d_k)      K = W_k x + b_k   (B, h, T, d_k)      V = W_v x + b_v
        A = softmax(Q Kᵀ / √d_k  masked)      (B, h, T, T)
        out = W_o concat_h(A V) + b_o         (B, T, h·d_k) -> (B, T, d_model)

    ``forward(x, mask)`` returns ``out`` and the weights averaged over heads (B, T, T), or per head
    (B, h, T, T) when ``need_head_weights=True``; ``mask (B, T)`` is True on real tokens, and padded
    keys get weight 0. Dropout (training only) is applied to the attention probabilities before
    mixing the values; the returned weights are the un-dropped ones.
    """

    def __init__(self, d_model: int, heads: int = 1, dropout: float = 0.0, *, kernels: str = "auto"):
        super().__init__()
        if heads < 1 or d_model % heads:
            raise AttentionError(f"multi-head attention: heads ({heads}) must be >= 1 and divide "
                                 f"d_model ({d_model})")
        self.d_model, self.heads, self.head_dim = d_model, heads, d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout, kernels)
        #: the channels of the joint key-value projection ``[K; V]`` (B, T, 2·d_model)
        self.kv_layout = Layout(keys=d_model, values=d_model)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape                                     # (B, L, h·d_k) -> (B, h, L, d_k)
        return x.reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor, *, need_head_weights: bool = False) -> tuple[Tensor, Tensor]:
        batch, length, _ = x.shape
        # K and V as views of one [K; V] buffer: their gradients are then strided views too, whose
        # sums (the bias gradients) round as they always have, so training stays bit-identical
        kv = self.kv_layout.cat({"keys": self.k_proj(x), "values": self.v_proj(x)})   # (B, T, 2·d_model)
        k, v = self.kv_layout.unpack(kv)
        k_heads, v_heads = self._split(k), self._split(v)              # (B, h, T, d_k)
        q_heads = self._split(self.q_proj(x))                          # (B, h, T, d_k)
        scores = torch.matmul(q_heads, k_heads.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, h, T, T)
        allowed = mask[:, None, None, :]                               # (B, 1, 1, T)
        weights = masked_softmax(scores, allowed)                      # (B, h, T, T)
        mixed = torch.matmul(self.dropout(weights).to(v_heads.dtype), v_heads)       # (B, h, T, d_k)
        mixed = mixed.transpose(1, 2).reshape(batch, length, self.d_model)           # (B, T, h·d_k)
        return self.out_proj(mixed), (weights if need_head_weights else weights.mean(1))


class SelfAttentionLayer(nn.Module):
    """One pre-norm Transformer encoder block, stacked on top of the encoder GRU.

    ::

        x = x + Dropout(MHA(LN(x), mask))                         (B, T, d_model)
        x = x + Dropout(W_2 · drop(act(W_1 · LN(x) + b_1)) + b_2)  W_1: d_model -> ff_size -> d_model

    Pre-norm (Xiong et al. 2020) rather than the original post-norm: the residual path stays an
    identity, which trains stably without learning-rate warm-up next to a GRU. ``act`` is any
    registry activation (``ActivatedLinear`` handles maxout's wider projection and per-channel
    parameters; it gets the mask, so APReLU pools over the real source positions and padding
    cannot leak through its pooling); the dropout after it comes from ``make_dropout`` so e.g. SELU
    gets alpha dropout.

    Padding: keys at padded positions are masked out of the attention and LN/FFN work per position,
    so padded positions never influence real ones; outputs at padded positions are set to 0.
    ``forward(x, mask) -> (y (B, T, d_model), head_weights (B, heads, T, T))``.
    """

    def __init__(self, d_model: int, heads: int, ff_size: int, dropout: float = 0.0,
                 activation: str = "relu", kernels: str = "auto", **activation_options: Any):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, heads, dropout, kernels=kernels)
        self.ff_norm = nn.LayerNorm(d_model)
        self.ff_in = ActivatedLinear(d_model, ff_size, activation, **activation_options)
        self.ff_dropout = make_dropout(activation, dropout, kernels)
        self.ff_out = nn.Linear(ff_size, d_model)
        self.residual_dropout = Dropout(dropout, kernels)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.attn_norm(x)
        attended, head_weights = self.attn(h, mask, need_head_weights=True)
        x = x + self.residual_dropout(attended)
        h = self.ff_out(self.ff_dropout(self.ff_in(self.ff_norm(x), mask)))
        x = x + self.residual_dropout(h)
        return x.masked_fill(~mask.unsqueeze(-1), 0.0), head_weights


# --------------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------------


def _did_you_mean(name: str, choices: tuple[str, ...]) -> str:
    hint = difflib.get_close_matches(str(name), choices, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def build_attention(kind: str, query_dim: int, key_dim: int, hidden_size: Optional[int] = None,
                    activation: Optional[str] = None, score: str = "general",
                    window: Optional[int] = None, kernels: str = "auto") -> Attention:
    """The attention module for ``model.attention``; ``query_dim`` = decoder state size,
    ``key_dim`` = encoder output size.

    ``hidden_size`` is the additive/concat scorer (and local-p position predictor) size, default
    ``query_dim``. ``activation`` (default tanh, any registry name with its default options)
    applies to the additive/concat scorers only. ``score`` and
    ``window`` are local-p's. ``kernels`` is the recipe's ``model.kernels``. Raises
    :class:`AttentionError` for unknown kinds,
    local-p without a window, and ``dot`` with mismatched sizes.
    """
    if kind == "bahdanau":
        return BahdanauAttention(query_dim, key_dim, hidden_size, activation, kernels)
    if kind == "luong-dot":
        return LuongDotAttention(query_dim, key_dim)
    if kind == "luong-general":
        return LuongGeneralAttention(query_dim, key_dim)
    if kind == "luong-concat":
        return LuongConcatAttention(query_dim, key_dim, hidden_size, activation, kernels)
    if kind == "local-p":
        if window is None:
            raise AttentionError("local-p attention needs a window half-width D; set "
                                 "model.attention.window (e.g. 10)")
        return LocalPAttention(query_dim, key_dim, window, score, hidden_size, activation, kernels)
    raise AttentionError(f"unknown attention kind {kind!r}{_did_you_mean(kind, ATTENTION_KINDS)}; "
                         f"choose from {', '.join(ATTENTION_KINDS)}")

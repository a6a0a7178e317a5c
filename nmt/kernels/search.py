"""The Bahdanau decoder step rewritten for search: the fast twin of
``nmt.model.decoder.BahdanauDecoder.step`` (no autograd, eval mode).

Plain step (Bahdanau et al. 2015): c_t = Σ_s a_ts h_s;  s_t = GRU(W_i [E y_{t-1}; c_t] + b_i, s_{t-1});
o_t = act(W_o [s_t; c_t; E y_{t-1}] + b_o). The same numbers are computed with less work:

- **Context folding.** c_t is only ever multiplied by weights (the GRU input's context columns
  W_ic and the readout's context columns W_oc), so W c_t = Σ_s a_ts (W h_s). With W H computed once
  per source (:func:`fold_context`; S × K × (3H + R) multiply-adds per sentence), each step and beam
  pays a (1 × S) @ (S × (3H + R)) product instead of (1 × K) @ (K × (3H + R)). It pays with several
  beams per sentence; greedy search keeps the context and multiplies it by ``[W_ic; W_oc]`` (one GEMM).
- **Embedding tables.** The embedding's GRU gates W_iy E_v + b_i and readout columns W_oy E_v
  are looked up per target id in (V, 3H) and (V, R) tables instead of multiplied at every step.
- **Shared memory.** The memory holds one row per sentence while the state holds
  ``rows = sentences × K`` (beams, sentence-major): a sentence's K beams attend as K query positions
  of one (K × S) attention, and its memory is neither copied K times nor reordered with the beams.

Together they remove a large share of the multiply-adds of a beam-search step (counted in
docs/performance.md).
:class:`SearchTables` are derived from the weights once per search (``Seq2Seq.search_tables``),
so they are only valid while the weights do not change: whoever builds them holds them for one
search, or for a translator that owns a frozen copy of its model. Tested against the plain step:
tests/test_model.py and tests/test_search.py (same translations under ``auto`` and ``reference``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class SearchTables:
    """What search derives once from the decoder's weights, in the dtype its GEMMs run in."""

    gates_y: Tensor  #: (V, 3H) W_iy E_v + b_i: first-layer GRU input gates of each target id's embedding
    read_y: Tensor  #: (V, R) W_oy E_v: the readout's embedding term of each target id
    context_weight: Tensor  #: (3H + R, K) [W_ic; W_oc]: every weight that reads the context
    read_h: Tensor  #: (R, H) W_oh, contiguous: the readout's state columns
    read_bias: Tensor | None  #: (R,) b_o


def search_tables_apply(readout_weight: Tensor, training: bool) -> bool:
    """Search: eval mode, no autograd, and plain weight tensors (an int8 dynamically quantized
    readout holds a packed weight: the plain step)."""
    return not training and not torch.is_grad_enabled() and isinstance(readout_weight, Tensor)


def _gemm_dtype(weight: Tensor) -> torch.dtype:
    """The dtype GEMMs with ``weight`` run in: autocast's when it is on."""
    device_type = weight.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype


def build_search_tables(embedding: Tensor, weight_ih: Tensor, bias_ih: Tensor, readout_weight: Tensor,
                        readout_bias: Tensor | None, hidden_size: int) -> SearchTables:
    """From the target embedding (V, E), the first GRU layer's input weights ``weight_ih``
    (3H, E + K) and ``bias_ih`` (the input is [E y; c]), and the readout's weight (R, H + K + E)
    (its input is [s; c; E y]) and bias."""
    emb_dim = embedding.size(1)
    dtype = _gemm_dtype(weight_ih)
    # contiguous copies in the GEMM dtype: a slice is cast again at every use under autocast, and
    # a GEMM copies a strided operand to a contiguous one first
    w_iy = weight_ih[:, :emb_dim].to(dtype).contiguous()
    w_ic = weight_ih[:, emb_dim:].to(dtype).contiguous()
    key_dim = w_ic.size(1)
    w_oh = readout_weight[:, :hidden_size]
    w_oc = readout_weight[:, hidden_size: hidden_size + key_dim]
    w_oy = readout_weight[:, hidden_size + key_dim:]
    return SearchTables(
        gates_y=F.linear(embedding, w_iy, bias_ih),
        read_y=F.linear(embedding, w_oy.to(_gemm_dtype(w_oy))),
        context_weight=torch.cat([w_ic, w_oc.to(dtype)], 0),
        read_h=w_oh.to(_gemm_dtype(readout_weight)).contiguous(),
        read_bias=readout_bias)


def fold_context(keys: Tensor, tables: SearchTables) -> Tensor:
    """``keys (B, S, K)`` -> ``[W_ic; W_oc] keys``, (B, S, 3H + R): once per source."""
    weight = tables.context_weight
    return F.linear(keys.to(weight.dtype), weight)


def search_step(tables: SearchTables, weights: Tensor, keys: Tensor, folded: Tensor | None,
                prev_tokens: Tensor, hidden: Tensor,
                gru: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """One step after the attention: the readout's pre-activation (rows, R) and the new state.

    ``weights (sentences, K, S)`` attention of each sentence's K beams; ``keys (sentences, S, K)``
    and ``folded`` (:func:`fold_context` of them, or None to multiply the context instead) one row
    per sentence; ``prev_tokens (rows,)`` ids of y_{t-1}; ``hidden (rows, layers, H)``;
    ``gru(gates_x, hidden)`` the decoder's GRU step from first-layer input gates.
    """
    rows = prev_tokens.size(0)
    if folded is not None:
        proj = torch.bmm(weights.to(folded.dtype), folded).reshape(rows, -1)
    else:
        context = torch.bmm(weights.to(keys.dtype), keys).reshape(rows, -1)
        proj = F.linear(context, tables.context_weight)
    gates_c, read_c = proj.split([tables.gates_y.size(1), tables.read_y.size(1)], dim=1)
    gates_y = tables.gates_y.index_select(0, prev_tokens)
    read_y = tables.read_y.index_select(0, prev_tokens)
    hidden = gru(gates_y + gates_c, hidden)
    pre = F.linear(hidden[:, -1], tables.read_h, tables.read_bias) + read_c + read_y
    return pre, hidden

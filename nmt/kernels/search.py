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
tests/test_model.py and tests/test_search.py (same translations under ``auto`` and ``reference``);
the weights arrive as the decoder's named parts (tests/test_layout.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.kernels import batch_invariant
from nmt.kernels.layout import Layout


@dataclass(frozen=True)
class SearchTables:
    """What search derives once from the decoder's weights, in the dtype its GEMMs run in."""

    gates_y: Tensor  #: (V, 3H) W_iy E_v + b_i: first-layer GRU input gates of each target id's embedding
    read_y: Tensor  #: (V, R) W_oy E_v: the readout's embedding term of each target id
    #: (3H + R, K) [W_ic; W_oc]: every weight that reads the context, rows in ``context_layout``
    context_weight: Tensor
    read_h: Tensor  #: (R, H) W_oh, contiguous: the readout's state columns
    read_bias: Tensor | None  #: (R,) b_o
    #: the rows of ``context_weight`` (the channels of its product with a context): ``gates`` (3H),
    #: the GRU input gates' context term, then ``readout`` (R), the readout's
    context_layout: Layout
    #: (V_src, directions * 3H) the encoder GRU's first-layer input gates of each source id
    #: (:func:`nmt.kernels.input_gate_table`), float32; None where the encoder runs ``nn.GRU``
    source_gates: Tensor | None = None


def search_tables_apply(readout_weight: Tensor, training: bool) -> bool:
    """Search: eval mode, no autograd, and a plain weight tensor (not a packed one: the plain step)."""
    return not training and not torch.is_grad_enabled() and isinstance(readout_weight, Tensor)


def _gemm_dtype(weight: Tensor) -> torch.dtype:
    """The dtype GEMMs with ``weight`` run in: autocast's when it is on."""
    device_type = weight.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype


def build_search_tables(embedding: Tensor, gru_input: Mapping[str, Tensor], bias_ih: Tensor,
                        readout: Mapping[str, Tensor], readout_bias: Tensor | None) -> SearchTables:
    """From the target embedding (V, E), the decoder's weights by name as its layouts split them
    (``BahdanauDecoder.gru_input_parts`` and ``readout_parts``) and the biases:

    - ``gru_input``: the first GRU layer's input weight W_i (its input is [E y; c]) as
      ``embedding`` W_iy (3H, E) and ``context`` W_ic (3H, K), and ``bias_ih`` b_i (3H,);
    - ``readout``: the readout's weight W_o (its input is [s; c; E y]) as ``state`` W_oh (R, H),
      ``context`` W_oc (R, K) and ``embedding`` W_oy (R, E), and ``readout_bias`` b_o (R,) or None.
    """
    dtype = _gemm_dtype(gru_input["embedding"])
    # contiguous copies in the GEMM dtype: a slice is cast again at every use under autocast, and
    # a GEMM copies a strided operand to a contiguous one first
    w_iy = gru_input["embedding"].to(dtype).contiguous()
    w_ic = gru_input["context"].to(dtype).contiguous()
    w_oh, w_oc, w_oy = readout["state"], readout["context"], readout["embedding"]
    layout = Layout(gates=w_ic.size(0), readout=w_oc.size(0))
    return SearchTables(
        gates_y=F.linear(embedding, w_iy, bias_ih),
        read_y=F.linear(embedding, w_oy.to(_gemm_dtype(w_oy))),
        context_weight=layout.cat({"gates": w_ic, "readout": w_oc.to(dtype)}, dim=0),
        read_h=w_oh.to(_gemm_dtype(w_oh)).contiguous(),
        read_bias=readout_bias,
        context_layout=layout)


def fold_context(keys: Tensor, tables: SearchTables, real: Tensor | None) -> Tensor:
    """``keys (B, S, K)`` -> ``[W_ic; W_oc] keys``, (B, S, 3H + R): once per source, at the rows
    ``real`` (:func:`~nmt.kernels.batch_invariant.real_rows`; zeros at padding, which the attention
    gives weight 0)."""
    weight = tables.context_weight
    return batch_invariant.masked_linear(keys.to(weight.dtype), weight, real=real)


def search_step(tables: SearchTables, weights: Tensor, keys: Tensor, folded: Tensor | None,
                prev_tokens: Tensor, hidden: Tensor,
                gru: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """One step after the attention: the readout's pre-activation (rows, R) and the new state.

    ``weights (sentences, K, S)`` attention of each sentence's K beams; ``keys (sentences, S, K)``
    and ``folded`` (:func:`fold_context` of them, or None to multiply the context instead) one row
    per sentence; ``prev_tokens (rows,)`` ids of y_{t-1}; ``hidden (rows, layers, H)``;
    ``gru(gates_x, hidden)`` the decoder's GRU step from first-layer input gates.

    Every product is rounded the same for a row whatever the rest of the batch
    (:mod:`nmt.kernels.batch_invariant`); ``gru`` should be too.
    """
    rows = prev_tokens.size(0)
    if folded is not None:
        proj = batch_invariant.bmm(weights.to(folded.dtype), folded).reshape(rows, -1)
    else:
        context = batch_invariant.bmm(weights.to(keys.dtype), keys).reshape(rows, -1)
        proj = batch_invariant.linear(context, tables.context_weight)
    gates_c, read_c = tables.context_layout.unpack(proj, dim=1)  # (rows, 3H), (rows, R)
    gates_y = tables.gates_y.index_select(0, prev_tokens)
    read_y = tables.read_y.index_select(0, prev_tokens)
    hidden = gru(gates_y + gates_c, hidden)
    pre = batch_invariant.linear(hidden[:, -1], tables.read_h, tables.read_bias) + read_c + read_y
    return pre, hidden

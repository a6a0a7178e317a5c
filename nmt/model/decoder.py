"""GRU decoders with attention before the RNN (Bahdanau) or after it (Luong).

Both decoders expose the same two entry points:

- ``forward(embedded, state, memory)`` runs teacher forcing over a whole target and returns the
  readout vectors of every step (the output projection is applied afterwards in one GEMM);
- ``step(embedded, state, memory)`` advances one step for search.

They compute the same numbers (tests check it). Plain algebra that keeps the equations and saves
work, because the decoder dominates training:

- the encoder keys are projected once per source (``memory.proj_keys``);
- the GRU input projection of all target embeddings is one GEMM before the time loop;
- the readout and the vocabulary projection are one GEMM each after the loop;
- Luong attention without input feeding has no step-to-step dependency besides the GRU itself,
  so it runs ``nn.GRU`` over the whole target and attends to all steps at once.

Fast twins (``kernels="auto"``, see :mod:`nmt.kernels`): CPU training runs the Bahdanau time loop
as :class:`nmt.kernels.BahdanauRecurrence` and the Luong decoder's GRU without input feeding as
:func:`nmt.kernels.run_gru`; search runs :meth:`BahdanauDecoder.search_step`, the step rewritten by
:mod:`nmt.kernels.search` (context folding, embedding tables, memory shared by a sentence's beams).

Bahdanau, Cho & Bengio 2015 (attention before the RNN):
    c_t = attend(s_{t-1}, H);  s_t = GRU([y_{t-1}; c_t], s_{t-1});  o_t = act(W_o [s_t; c_t; y_{t-1}])
Luong, Pham & Manning 2015 (attention after the RNN, §3, input feeding §3.3):
    s_t = GRU([y_{t-1}; h̃_{t-1}], s_{t-1});  c_t = attend(s_t, H);  h̃_t = act(W_c [c_t; s_t])

Fused weights (the GRU's input columns ``[E y; c]`` or ``[E y; h̃]``, its gate rows ``r, z, n``,
the readout's columns ``[s; c; E y]``, Luong's ``[c; s]``) are split and assembled only through the
named layouts each decoder declares (:class:`nmt.kernels.Layout`; ``gru_input_parts``,
``readout_parts``, ``combine_parts``); the kernels receive the parts by name.

``act`` is position-wise except APReLU, which pools over the steps 1..t so far: teacher forcing
applies it with ``forward_causal`` and a step with ``forward_step`` (its running sums live in
``DecoderState.pool``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from nmt import kernels
from nmt.config import AttentionConfig, DecoderConfig
from nmt.kernels import Layout, gru_gates
from nmt.model.activations import ActivatedLinear, Dropout, make_dropout
from nmt.model.attention import build_attention, masked_softmax


@dataclass
class Memory:
    """What the decoder attends to; fixed for a source sentence during decoding."""

    keys: torch.Tensor  #: (batch, src_len, key_dim) encoder states
    mask: torch.Tensor  #: (batch, src_len) bool
    proj_keys: torch.Tensor | None = None  #: precomputed key projection of the attention
    #: search with context folding only (:func:`nmt.kernels.fold_context`): the keys through every
    #: weight that reads the context, (batch, src_len, 3H + readout width)
    folded: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> "Memory":
        """Rows ``index`` (batch reordering for beams / dropping finished sentences)."""
        def rows(x):
            return None if x is None else x.index_select(0, index)

        return Memory(rows(self.keys), rows(self.mask), rows(self.proj_keys), rows(self.folded))

    @staticmethod
    def cat(memories: list["Memory"]) -> "Memory":
        """The rows of ``memories`` one after the other, each padded to the longest source (zeros,
        masked out: padding gets zero attention, as in any batch of sentences of several lengths)."""
        width = max(m.mask.size(1) for m in memories)

        def joined(parts):
            if parts[0] is None:
                return None
            return torch.cat([F.pad(x, (0, 0) * (x.dim() - 2) + (0, width - x.size(1))) for x in parts])

        return Memory(*(joined([getattr(m, f) for m in memories]) for f in ("keys", "mask", "proj_keys", "folded")))


@dataclass
class DecoderState:
    hidden: torch.Tensor  #: (batch, layers, hidden) batch first, so beams reorder with index_select
    feed: torch.Tensor | None = None  #: (batch, readout) previous attentional vector (input feeding)
    #: the readout activation's running pool over the steps so far (APReLU: (batch, 2 readout + 1)),
    #: None for position-wise activations; see ``Activation.forward_step``
    pool: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> "DecoderState":
        def rows(x):
            return None if x is None else x.index_select(0, index)

        return DecoderState(rows(self.hidden), rows(self.feed), rows(self.pool))

    @staticmethod
    def cat(states: list["DecoderState"]) -> "DecoderState":
        """The rows of ``states`` one after the other."""
        def joined(parts):
            return None if parts[0] is None else torch.cat(parts)

        return DecoderState(joined([s.hidden for s in states]), joined([s.feed for s in states]),
                            joined([s.pool for s in states]))


@dataclass
class StepOutput:
    readout: torch.Tensor  #: (batch, readout_dim) vector fed to the output projection
    state: DecoderState
    attention: torch.Tensor  #: (batch, src_len)
    positions: torch.Tensor | None = None  #: (batch,) local-p predicted centre, else None


def gru_cell(gates_x: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
             bias_hh: torch.Tensor, linear=F.linear) -> torch.Tensor:
    """One GRU step (Cho et al. 2014) given the *precomputed* input gates ``gates_x = W_ih x + b_ih``.

    Same equations and gate order (r, z, n) as ``torch.nn.GRU``::

        r = σ(x_r + h_r),  z = σ(x_z + h_z),  n = tanh(x_n + r ⊙ h_n),  h' = (1 − z) ⊙ n + z ⊙ h

    with ``h_* = W_h* h + b_h*``. ``gates_x (batch, 3H)``, ``h (batch, H)`` -> ``h' (batch, H)``;
    the 3H channels are the gates of :func:`nmt.kernels.gru_gates`. ``linear``: how ``W_h h + b_h``
    is multiplied (``F.linear``'s signature).
    """
    gates = gru_gates(h.size(-1))
    gates_h = linear(h, weight_hh, bias_hh)
    x_r, x_z, x_n = gates.unpack(gates_x)
    h_r, h_z, h_n = gates.unpack(gates_h)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n)


class _GRUDecoderBase(nn.Module):
    """Shared parts: the stacked GRU (as ``nn.GRU`` parameters), attention, readout, dropout.

    Weight layouts (:class:`nmt.kernels.Layout`), named here once; the plain equations (and so the
    ONNX graphs traced from them) and the fast twins in :mod:`nmt.kernels` read the weights' parts
    by these names only (tests/test_layout.py reorders them and gets the same function):

    - ``input_layout``: the first GRU layer reads ``x = [E y_{t-1}; extra]``, so the columns of its
      input weight ``W_ih`` are ``embedding`` (E) and the extra input (Bahdanau: ``context`` (K),
      Luong with input feeding: ``feed`` (R), else none); :meth:`gru_input_parts`.
    - :func:`nmt.kernels.gru_gates`: the rows of every GRU weight and bias and the channels of the
      gate pre-activations, ``r, z, n`` (H each, ``nn.GRU``'s order), for every GRU of the model.
    """

    attention_before_rnn: bool

    def __init__(self, embedding_dim: int, key_dim: int, readout_dim: int, cfg: DecoderConfig,
                 att: AttentionConfig, activation: str, activation_options: dict,
                 extra_input: dict[str, int], kernels: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.fast = kernels == "auto"
        self.embedding_dim = embedding_dim
        self.key_dim = key_dim
        self.readout_dim = readout_dim
        self.hidden_size = cfg.hidden_size
        self.input_layout = Layout(embedding=embedding_dim, **extra_input)
        self.rnn = nn.GRU(self.input_layout.width, cfg.hidden_size, num_layers=cfg.layers,
                          batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.attention = build_attention(
            att.kind, query_dim=cfg.hidden_size, key_dim=key_dim,
            hidden_size=att.hidden_size or cfg.hidden_size,
            activation=att.activation or "tanh", score=att.score, window=att.window, kernels=kernels)
        self.readout_dropout = make_dropout(activation, cfg.dropout, kernels)
        self.layer_dropout = Dropout(cfg.dropout if cfg.layers > 1 else 0.0, kernels)

    # -- weight parts by name ------------------------------------------------------------------------
    def gru_input_parts(self) -> dict[str, torch.Tensor]:
        """The first GRU layer's input weight ``W_ih`` (3H, width of ``input_layout``) by input
        block, as views: ``embedding`` W_iy (3H, E) and the extra input's block (Bahdanau:
        ``context`` W_ic (3H, K); Luong with input feeding: ``feed`` W_if (3H, R))."""
        return self.input_layout.split(self.rnn.weight_ih_l0, dim=1)

    def _gemm_input_parts(self) -> dict[str, torch.Tensor]:
        """:meth:`gru_input_parts` for teacher forcing: the embedding block runs as one GEMM over all
        target positions before the time loop, the other block once per step.

        Contiguous and in the autocast dtype, taken once per sequence: slices are not leaves, so
        autocast would cast them again at every step, and a GEMM copies a strided operand first.
        """
        parts = self.gru_input_parts()
        weight = parts["embedding"]
        device_type = weight.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        return {name: part.to(dtype).contiguous() for name, part in parts.items()}

    # -- the GRU, layer by layer, for step-wise decoding --------------------------------------------
    def gru(self, gates_x: torch.Tensor, hidden: torch.Tensor, linear=F.linear) -> torch.Tensor:
        """Advance the stacked GRU one step from the first layer's input gates ``gates_x = W_ih x + b_ih``
        (batch, 3H). ``hidden (batch, layers, H)`` -> same shape. ``linear``: how every product is
        multiplied (``F.linear``'s signature; search's fast step: the batch-invariant one)."""
        weights = self.rnn.all_weights  # per layer: W_ih, W_hh, b_ih, b_hh
        _, w_hh, _, b_hh = weights[0]
        h = gru_cell(gates_x, hidden[:, 0], w_hh, b_hh, linear)
        new = [h]
        for layer in range(1, self.cfg.layers):
            w_ih, w_hh, b_ih, b_hh = weights[layer]
            h = gru_cell(linear(self.layer_dropout(h), w_ih, b_ih), hidden[:, layer], w_hh, b_hh, linear)
            new.append(h)
        return new[0].unsqueeze(1) if len(new) == 1 else torch.stack(new, dim=1)  # one layer: a view, no copy

    def input_gates(self, **inputs: torch.Tensor) -> torch.Tensor:
        """First-layer input gates of one step, ``W_ih x + b_ih``: (batch, 3H), from the blocks of
        ``x`` by their ``input_layout`` names (``embedding=``, ``context=`` or ``feed=``)."""
        return F.linear(self.input_layout.cat(inputs), self.rnn.weight_ih_l0, self.rnn.bias_ih_l0)

    def _attend(self, query: torch.Tensor, memory: Memory):
        """``query (batch, T, H)`` -> context (batch, T, key_dim), weights (batch, T, S), positions
        (batch, T) for local-p, else None."""
        return self.attention.attend(query, memory.keys, memory.keys, memory.mask, proj_keys=memory.proj_keys)

    def precompute(self, memory: Memory, linear=F.linear) -> Memory:
        """``memory`` with the attention's key projection (``proj_keys``), once per source;
        ``linear``: how it is multiplied (``F.linear``'s signature; search's fast path: the
        batch-invariant one)."""
        return replace(memory, proj_keys=self.attention.precompute(memory.keys, linear))


class BahdanauDecoder(_GRUDecoderBase):
    """Attention before the RNN: the context of step t is computed from s_{t-1} and fed to the GRU.

    ``input_layout`` is ``[embedding; context]``; ``readout_layout`` names the readout's input
    ``[s_t; c_t; E y_{t-1}]``: the columns ``state`` (H), ``context`` (K), ``embedding`` (E) of W_o.
    """

    attention_before_rnn = True

    def __init__(self, embedding_dim, key_dim, readout_dim, cfg, att, activation, activation_options,
                 kernels: str = "auto"):
        super().__init__(embedding_dim, key_dim, readout_dim, cfg, att, activation,
                         activation_options, extra_input={"context": key_dim}, kernels=kernels)
        # o_t = act(W_o [s_t; c_t; y_{t-1}]) (Bahdanau et al. 2015, appendix A.2.2, "deep output")
        self.readout_layout = Layout(state=cfg.hidden_size, context=key_dim, embedding=embedding_dim)
        self.readout = ActivatedLinear(self.readout_layout.width, readout_dim, activation, **activation_options)

    def readout_parts(self) -> dict[str, torch.Tensor]:
        """The readout weight W_o (R, H + K + E) by input block, as views: ``state`` W_oh (R, H),
        ``context`` W_oc (R, K), ``embedding`` W_oy (R, E)."""
        return self.readout_layout.split(self.readout.linear.weight, dim=1)

    def search_tables(self, embedding: torch.Tensor) -> kernels.SearchTables:
        """What the fast search step derives from the weights (:func:`nmt.kernels.build_search_tables`),
        given the target embedding weight (V, E)."""
        return kernels.build_search_tables(embedding, self.gru_input_parts(), self.rnn.bias_ih_l0,
                                           self.readout_parts(), self.readout.linear.bias)

    def init_state(self, hidden: torch.Tensor) -> DecoderState:
        return DecoderState(hidden=hidden)

    def forward(self, embedded: torch.Tensor, state: DecoderState, memory: Memory):
        """Teacher forcing. ``embedded (batch, T, emb)`` -> readout (batch, T, D), attention (batch, T, S)."""
        parts = self._gemm_input_parts()
        w_iy, w_ic = parts["embedding"], parts["context"]
        # sequence-wide products: rows rounded up in bf16 CPU training (nmt.kernels.rows)
        linear = kernels.padded_linear if self.fast and kernels.row_padding_applies(embedded) else F.linear
        emb_gates = linear(embedded, w_iy, self.rnn.bias_ih_l0)  # W_iy E y + b_i: (batch, T, 3H), one GEMM
        if self.fast and kernels.bahdanau_recurrence_applies(embedded, self.cfg.layers,
                                                             self.attention.activation_name):
            dtype = emb_gates.dtype
            att = self.attention
            states, contexts, weights = kernels.BahdanauRecurrence.apply(
                emb_gates.transpose(0, 1).contiguous(), state.hidden[:, 0], memory.proj_keys.to(dtype),
                memory.keys, memory.mask, att.query_proj.weight.to(dtype), att.v.weight.to(dtype),
                w_ic, self.rnn.weight_hh_l0.to(dtype), self.rnn.bias_hh_l0)
            top, ctx, weights = states.transpose(0, 1), contexts.transpose(0, 1), weights.transpose(0, 1)
        else:
            hidden = state.hidden
            tops, contexts, weights = [], [], []
            # unbind, not indexing: its backward is one stack instead of a zero-filled full-size
            # gradient per step
            for gates_t in emb_gates.unbind(1):
                context, w, _ = self._attend(hidden[:, -1:], memory)  # c_t from the query s_{t-1}
                hidden = self.gru(gates_t + F.linear(context[:, 0], w_ic), hidden)  # W_i [E y; c_t] + b_i
                tops.append(hidden[:, -1])
                contexts.append(context[:, 0])
                weights.append(w[:, 0])
            top = torch.stack(tops, dim=1)  # (batch, T, H)
            ctx = torch.stack(contexts, dim=1)  # (batch, T, K)
            weights = torch.stack(weights, dim=1)  # (batch, T, S)
        readout = self.readout.forward_causal(  # one GEMM for all steps
            self.readout_layout.cat({"state": top, "context": ctx, "embedding": embedded}), linear)
        return self.readout_dropout(readout), weights

    def step(self, embedded: torch.Tensor, state: DecoderState, memory: Memory) -> StepOutput:
        """``embedded (batch, emb)`` of y_{t-1} -> :class:`StepOutput`."""
        context, w, pos = self._attend(state.hidden[:, -1:], memory)  # c_t from the query s_{t-1}
        context = context[:, 0]
        hidden = self.gru(self.input_gates(embedding=embedded, context=context), state.hidden)
        readout, pool = self.readout.forward_step(
            self.readout_layout.cat({"state": hidden[:, -1], "context": context, "embedding": embedded}),
            state.pool)
        return StepOutput(self.readout_dropout(readout), DecoderState(hidden=hidden, pool=pool), w[:, 0],
                          None if pos is None else pos[:, 0])

    def search_step(self, tables: kernels.SearchTables, prev_tokens: torch.Tensor, state: DecoderState,
                    memory: Memory) -> StepOutput:
        """:meth:`step` for search (eval mode), its linear terms from :func:`nmt.kernels.search_step`:
        ``tables`` from :meth:`nmt.model.seq2seq.Seq2Seq.search_tables`, ``prev_tokens (rows,)`` the
        ids of y_{t-1}.

        The memory holds one row per sentence while the state holds ``rows = sentences × K``
        (beams, sentence-major): a sentence's K beams attend as K query positions of one attention.
        A row's values do not depend on the other rows (:mod:`nmt.kernels.batch_invariant`); the
        memory comes from :meth:`precompute` with its ``linear``.
        """
        sentences, src_len = memory.mask.shape
        rows = state.hidden.size(0)
        invariant = kernels.batch_invariant
        query = state.hidden[:, -1].reshape(sentences, rows // sentences, -1)  # (sentences, K, H)
        scores = self.attention.score(query, memory.keys, memory.proj_keys, memory.mask,
                                      linear=invariant.linear, dot=invariant.dot)  # (sentences, K, S)
        weights = masked_softmax(scores, memory.mask.unsqueeze(1), total=invariant.ordered_sum)
        pre, hidden = kernels.search_step(tables, weights, memory.keys, memory.folded, prev_tokens,
                                          state.hidden, partial(self.gru, linear=invariant.linear))
        readout, pool = self.readout.activation.forward_step(pre, state.pool)
        return StepOutput(readout, DecoderState(hidden=hidden, pool=pool), weights.reshape(rows, src_len), None)


class LuongDecoder(_GRUDecoderBase):
    """Attention after the RNN; attentional hidden state h̃_t = act(W_c [c_t; s_t]) (Luong eq. 5).

    ``input_layout`` is ``[embedding; feed]`` with input feeding, else ``[embedding]``;
    ``combine_layout`` names the columns of W_c: ``context`` (K), ``state`` (H).
    """

    attention_before_rnn = False

    def __init__(self, embedding_dim, key_dim, readout_dim, cfg, att, activation, activation_options,
                 kernels: str = "auto"):
        feed = {"feed": readout_dim} if cfg.input_feeding else {}
        super().__init__(embedding_dim, key_dim, readout_dim, cfg, att, activation,
                         activation_options, extra_input=feed, kernels=kernels)
        self.input_feeding = cfg.input_feeding
        self.combine_layout = Layout(context=key_dim, state=cfg.hidden_size)
        self.combine = ActivatedLinear(self.combine_layout.width, readout_dim, activation, **activation_options)

    def combine_parts(self) -> dict[str, torch.Tensor]:
        """The combination weight W_c (R, K + H) by input block, as views: ``context`` W_cc (R, K),
        ``state`` W_cs (R, H)."""
        return self.combine_layout.split(self.combine.linear.weight, dim=1)

    def _attentional_input(self, context: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """``[c_t; s_t]`` in ``combine_layout``: (..., K + H)."""
        return self.combine_layout.cat({"context": context, "state": top})

    def _step_inputs(self, embedded: torch.Tensor, feed: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The first GRU layer's input blocks of one step by ``input_layout`` name."""
        return {"embedding": embedded, "feed": feed} if self.input_feeding else {"embedding": embedded}

    def init_state(self, hidden: torch.Tensor) -> DecoderState:
        feed = hidden.new_zeros(hidden.size(0), self.readout_dim) if self.input_feeding else None
        return DecoderState(hidden=hidden, feed=feed)

    def forward(self, embedded: torch.Tensor, state: DecoderState, memory: Memory):
        if not self.input_feeding:
            # No step-to-step dependency outside the GRU: one GRU call over the target, then
            # attention and the combination for all steps at once.
            h0 = state.hidden.transpose(0, 1).contiguous()  # (layers, batch, H)
            if self.fast and kernels.gru_scan_applies(embedded):
                top, _ = kernels.run_gru(self.rnn, embedded, h0=h0, dropout=self.layer_dropout)
            else:
                top, _ = self.rnn(embedded, h0)  # (batch, T, H)
            context, weights, _ = self._attend(top, memory)
            attentional = self.combine.forward_causal(self._attentional_input(context, top))
            return self.readout_dropout(attentional), weights
        parts = self._gemm_input_parts()
        w_iy, w_if = parts["embedding"], parts["feed"]
        # sequence-wide products: rows rounded up in bf16 CPU training (nmt.kernels.rows)
        linear = kernels.padded_linear if self.fast and kernels.row_padding_applies(embedded) else F.linear
        emb_gates = linear(embedded, w_iy, self.rnn.bias_ih_l0)  # W_iy E y + b_i: (batch, T, 3H), one GEMM
        hidden, feed, pool = state.hidden, state.feed, state.pool
        outputs, weights = [], []
        for gates_t in emb_gates.unbind(1):
            hidden = self.gru(gates_t + F.linear(feed, w_if), hidden)  # W_i [E y; h̃_{t-1}] + b_i
            context, w, _ = self._attend(hidden[:, -1:], memory)
            feed, pool = self.combine.forward_step(self._attentional_input(context[:, 0], hidden[:, -1]), pool)
            feed = self.readout_dropout(feed)
            outputs.append(feed)
            weights.append(w[:, 0])
        return torch.stack(outputs, dim=1), torch.stack(weights, dim=1)

    def step(self, embedded: torch.Tensor, state: DecoderState, memory: Memory) -> StepOutput:
        hidden = self.gru(self.input_gates(**self._step_inputs(embedded, state.feed)), state.hidden)
        context, w, pos = self._attend(hidden[:, -1:], memory)
        attentional, pool = self.combine.forward_step(self._attentional_input(context[:, 0], hidden[:, -1]),
                                                      state.pool)
        attentional = self.readout_dropout(attentional)
        new_state = DecoderState(hidden=hidden, feed=attentional if self.input_feeding else None, pool=pool)
        return StepOutput(attentional, new_state, w[:, 0], None if pos is None else pos[:, 0])


def build_decoder(embedding_dim: int, key_dim: int, readout_dim: int, cfg: DecoderConfig,
                  att: AttentionConfig, activation: str, activation_options: dict,
                  kernels: str = "auto") -> _GRUDecoderBase:
    cls = BahdanauDecoder if att.kind == "bahdanau" else LuongDecoder
    return cls(embedding_dim, key_dim, readout_dim, cfg, att, activation, activation_options, kernels)

"""GRU decoders with attention before the RNN (Bahdanau) or after it (Luong).

Both decoders expose the same two entry points:

- ``forward(embedded, state, memory)`` runs teacher forcing over a whole target and returns the
  readout vectors of every step (the output projection is applied afterwards in one GEMM);
- ``step(embedded, state, memory)`` advances one step for search.

They compute the same numbers (tests check it). Speed notes, because the decoder dominates training:

- the encoder keys are projected once per source (``memory.proj_keys``);
- the GRU input projection of all target embeddings is one GEMM before the time loop;
- the readout and the vocabulary projection are one GEMM each after the loop;
- Luong attention without input feeding has no step-to-step dependency besides the GRU itself,
  so it runs ``nn.GRU`` over the whole target and attends to all steps at once.

Bahdanau, Cho & Bengio 2015 (attention before the RNN):
    c_t = attend(s_{t-1}, H);  s_t = GRU([y_{t-1}; c_t], s_{t-1});  o_t = act(W_o [s_t; c_t; y_{t-1}])
Luong, Pham & Manning 2015 (attention after the RNN, §3, input feeding §3.3):
    s_t = GRU([y_{t-1}; h̃_{t-1}], s_{t-1});  c_t = attend(s_t, H);  h̃_t = act(W_c [c_t; s_t])

``act`` is position-wise except APReLU, which pools over the steps 1..t so far: teacher forcing
applies it with ``forward_causal`` and a step with ``forward_step`` (its running sums live in
``DecoderState.pool``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import AttentionConfig, DecoderConfig
from nmt.kernels.gru import BahdanauRecurrence, run_gru, use_gru_scan
from nmt.model.activations import ActivatedLinear, Dropout, make_dropout
from nmt.model.attention import AdditiveAttention, build_attention, masked_softmax


@dataclass
class Memory:
    """What the decoder attends to; fixed for a source sentence during decoding."""

    keys: torch.Tensor  #: (batch, src_len, key_dim) encoder states
    mask: torch.Tensor  #: (batch, src_len) bool
    proj_keys: torch.Tensor | None = None  #: precomputed key projection of the attention
    #: search only (BahdanauDecoder.prepare_search): the keys through every weight that reads the
    #: context, (batch, src_len, 3H + readout width)
    context_proj: torch.Tensor | None = None
    #: search without folding: those weights themselves, (3H + readout width, key_dim), shared by all rows
    context_weight: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> "Memory":
        """Rows ``index`` (batch reordering for beams / dropping finished sentences)."""
        def rows(x):
            return None if x is None else x.index_select(0, index)

        return Memory(rows(self.keys), rows(self.mask), rows(self.proj_keys), rows(self.context_proj),
                      self.context_weight)

    @property
    def for_search(self) -> bool:
        """Prepared by ``prepare_search``: the decoder's ``search_step`` applies."""
        return self.context_proj is not None or self.context_weight is not None


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


@dataclass
class StepOutput:
    readout: torch.Tensor  #: (batch, readout_dim) vector fed to the output projection
    state: DecoderState
    attention: torch.Tensor  #: (batch, src_len)
    positions: torch.Tensor | None = None  #: (batch,) local-p predicted centre, else None


def gru_cell(gates_x: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
             bias_hh: torch.Tensor) -> torch.Tensor:
    """One GRU step given the *precomputed* input gates ``gates_x = W_ih x + b_ih`` (batch, 3H).

    Same equations and gate order (r, z, n) as ``torch.nn.GRU``:
    r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r ⊙ h_n), h' = (1 − z) ⊙ n + z ⊙ h.
    """
    gates_h = F.linear(h, weight_hh, bias_hh)
    x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
    h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n)


class _GRUDecoderBase(nn.Module):
    """Shared parts: the stacked GRU (as ``nn.GRU`` parameters), attention, readout, dropout."""

    attention_before_rnn: bool

    def __init__(self, embedding_dim: int, key_dim: int, readout_dim: int, cfg: DecoderConfig,
                 att: AttentionConfig, activation: str, activation_options: dict,
                 rnn_extra_input: int):
        super().__init__()
        self.cfg = cfg
        self.embedding_dim = embedding_dim
        self.key_dim = key_dim
        self.readout_dim = readout_dim
        self.hidden_size = cfg.hidden_size
        self.rnn_extra_input = rnn_extra_input
        self.rnn = nn.GRU(embedding_dim + rnn_extra_input, cfg.hidden_size, num_layers=cfg.layers,
                          batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.attention_kind = att.kind
        self.attention = build_attention(
            att.kind, query_dim=cfg.hidden_size, key_dim=key_dim,
            hidden_size=att.hidden_size or cfg.hidden_size,
            activation=att.activation or "tanh", score=att.score, window=att.window)
        self.readout_dropout = make_dropout(activation, cfg.dropout)
        self.layer_dropout = Dropout(cfg.dropout if cfg.layers > 1 else 0.0)
        self._search_cache: dict = {}  # see _cached

    # -- the GRU, layer by layer, for step-wise decoding --------------------------------------------
    def _layer_weights(self, layer: int):
        rnn = self.rnn
        return (getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}"),
                getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}"))

    def _input_weight_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer's input weights split into ``(embedding part (3H, emb), extra part (3H, extra))``,
        contiguous and in the autocast dtype.

        Slices are not leaves, so autocast would cast them again at every step, and the bf16 GEMM
        copies a strided slice to a contiguous one first (both seen in the profile of search).
        Without autograd (search, validation) the parts are kept until the weight changes (``_cached``).
        """
        weight = self.rnn.weight_ih_l0
        dtype = self._search_dtype(weight)
        return self._cached("input_weight_parts", (weight,),
                            lambda: (weight[:, : self.embedding_dim].to(dtype).contiguous(),
                                     weight[:, self.embedding_dim:].to(dtype).contiguous()))

    def embedding_gates(self, embedded: torch.Tensor) -> torch.Tensor:
        """First-layer input gates from the embeddings alone: ``(..., emb) -> (..., 3H)``.

        For teacher forcing this is one GEMM over all target positions before the time loop.
        """
        return F.linear(embedded, self._input_weight_parts()[0], self.rnn.bias_ih_l0)

    def extra_input_weight(self) -> torch.Tensor:
        """First-layer input weights of the per-step input (context or input feed), (3H, extra);
        sequence-level callers fetch it once per sequence."""
        return self._input_weight_parts()[1]

    def rnn_step(self, emb_gates: torch.Tensor, extra: torch.Tensor | None,
                 hidden: torch.Tensor, extra_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Advance the stacked GRU one step. ``hidden (batch, layers, H)`` -> same shape.

        ``extra_weight``: :meth:`extra_input_weight`, precomputed by sequence-level callers.
        """
        w_ih, w_hh, _, b_hh = self._layer_weights(0)
        gates = emb_gates
        if extra is not None:
            if extra_weight is None:
                extra_weight = self.extra_input_weight()
            gates = gates + F.linear(extra, extra_weight)
        h = gru_cell(gates, hidden[:, 0], w_hh, b_hh)
        new = [h]
        for layer in range(1, self.cfg.layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_weights(layer)
            h = gru_cell(F.linear(self.layer_dropout(h), w_ih, b_ih), hidden[:, layer], w_hh, b_hh)
            new.append(h)
        return torch.stack(new, dim=1)

    def _attend(self, query: torch.Tensor, memory: Memory):
        """``query (batch, T, H)`` -> context (batch, T, key_dim), weights (batch, T, S), positions."""
        context, weights = self.attention(query, memory.keys, memory.keys, memory.mask,
                                          proj_keys=memory.proj_keys)
        positions = getattr(self.attention, "last_positions", None) if self.attention_kind == "local-p" else None
        return context, weights, positions

    def precompute(self, memory: Memory) -> Memory:
        return replace(memory, proj_keys=self.attention.precompute(memory.keys))

    def prepare_search(self, memory: Memory, fold_context: bool = True) -> Memory:
        """Extra per-source precomputation for step-by-step search (none by default)."""
        return memory

    @staticmethod
    def _search_dtype(weight: torch.Tensor) -> torch.dtype:
        """The dtype GEMMs with ``weight`` run in: autocast's when it is on."""
        device_type = weight.device.type
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype

    def _cached(self, name: str, weights: tuple[torch.Tensor, ...], build):
        """``build()`` cached under ``name`` while no gradient is recorded and ``weights`` are unchanged
        (same storage and version counter: an optimizer step invalidates it)."""
        key = tuple((w.data_ptr(), w._version) for w in weights) + (self._search_dtype(weights[0]),)
        if torch.is_grad_enabled():
            return build()
        hit = self._search_cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, build())
            self._search_cache[name] = hit
        return hit[1]


class BahdanauDecoder(_GRUDecoderBase):
    """Attention before the RNN: the context of step t is computed from s_{t-1} and fed to the GRU."""

    attention_before_rnn = True

    def __init__(self, embedding_dim, key_dim, readout_dim, cfg, att, activation, activation_options):
        super().__init__(embedding_dim, key_dim, readout_dim, cfg, att, activation,
                         activation_options, rnn_extra_input=key_dim)
        # o_t = act(W_o [s_t; c_t; y_{t-1}]) (Bahdanau et al. 2015, appendix A.2.2, "deep output")
        self.readout = ActivatedLinear(cfg.hidden_size + key_dim + embedding_dim, readout_dim,
                                       activation, **activation_options)

    def init_state(self, hidden: torch.Tensor) -> DecoderState:
        return DecoderState(hidden=hidden)

    def forward(self, embedded: torch.Tensor, state: DecoderState, memory: Memory):
        """Teacher forcing. ``embedded (batch, T, emb)`` -> readout (batch, T, D), attention (batch, T, S)."""
        if self._fused_recurrence(embedded, memory):
            return self._forward_fused(embedded, state, memory)
        # (batch, T, 3H) in one GEMM; unbind, not indexing: its backward is one stack instead of a
        # zero-filled full-size gradient per step
        emb_gates = self.embedding_gates(embedded).unbind(1)
        hidden = state.hidden
        extra_weight = self.extra_input_weight()
        tops, contexts, weights = [], [], []
        for gates_t in emb_gates:
            context, w, pos = self._attend(hidden[:, -1:], memory)  # query s_{t-1}
            hidden = self.rnn_step(gates_t, context[:, 0], hidden, extra_weight)
            tops.append(hidden[:, -1])
            contexts.append(context[:, 0])
            weights.append(w[:, 0])
        top = torch.stack(tops, dim=1)  # (batch, T, H)
        ctx = torch.stack(contexts, dim=1)  # (batch, T, K)
        readout = self.readout.forward_causal(torch.cat([top, ctx, embedded], dim=-1))  # one GEMM for all steps
        return self.readout_dropout(readout), torch.stack(weights, dim=1)

    def _fused_recurrence(self, embedded: torch.Tensor, memory: Memory) -> bool:
        """CPU training of the usual configuration (one layer, tanh additive attention) runs the
        time loop as :class:`nmt.kernels.gru.BahdanauRecurrence`; anything else keeps the step loop."""
        att = self.attention
        return (use_gru_scan(embedded) and self.cfg.layers == 1 and memory.proj_keys is not None
                and isinstance(att, AdditiveAttention)
                and att.tanh_by_sigmoid and att.v.in_features == att.query_proj.out_features)

    def _forward_fused(self, embedded: torch.Tensor, state: DecoderState, memory: Memory):
        emb_gates = self.embedding_gates(embedded)  # (batch, T, 3H), GEMM dtype
        dtype = emb_gates.dtype
        att = self.attention
        states, contexts, weights = BahdanauRecurrence.apply(
            emb_gates.transpose(0, 1).contiguous(), state.hidden[:, 0], memory.proj_keys.to(dtype),
            memory.keys.to(dtype), memory.mask, att.query_proj.weight.to(dtype), att.v.weight.to(dtype),
            self.extra_input_weight(), self.rnn.weight_hh_l0.to(dtype), self.rnn.bias_hh_l0)
        top, ctx = states.transpose(0, 1), contexts.transpose(0, 1)
        readout = self.readout.forward_causal(torch.cat([top, ctx.to(top.dtype), embedded.to(top.dtype)], dim=-1))
        return self.readout_dropout(readout), weights.transpose(0, 1)

    # -- search: everything linear in the context is applied to the keys once per source ----------
    # c_t = Σ_s a_ts h_s is only ever multiplied by weights (the GRU input's context columns W_c and
    # the readout's context columns W_oc), so W c_t = Σ_s a_ts (W h_s): with W H precomputed per
    # source (S × 512 × 1024 multiply-adds, once per sentence), each step and beam pays a
    # (1 × S) @ (S × 1024) product instead of (1 × 512) @ (512 × 1024). The embedding's gates and
    # readout columns are looked up in per-vocabulary tables instead of multiplied. Same equations,
    # 40-50% fewer multiply-adds per step of beam search (JoeyNMT-sized model, 8k vocabulary).
    def _readout_columns(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The readout weight's columns for [s_t | c_t | y_{t-1}]."""
        weight = self.readout.linear.weight
        h, k = self.hidden_size, self.key_dim
        return weight[:, :h], weight[:, h: h + k], weight[:, h + k:]

    def prepare_search(self, memory: Memory, fold_context: bool = True) -> Memory:
        """``fold_context``: apply the context weights to the keys now (pays with several beams per
        sentence); otherwise each step multiplies the context by them (one GEMM for both)."""
        if not isinstance(self.readout.linear.weight, torch.Tensor):
            return memory  # int8 dynamic quantization (a packed weight): the plain step
        gru_c = self._input_weight_parts()[1]  # (3H, key_dim)
        read_c = self._readout_columns()[1]
        dtype = gru_c.dtype
        weight = self._cached("context_weight", (self.rnn.weight_ih_l0, self.readout.linear.weight),
                              lambda: torch.cat([gru_c, read_c.to(dtype)], 0))
        if not fold_context:
            return replace(memory, context_weight=weight)
        return replace(memory, context_proj=F.linear(memory.keys.to(dtype), weight))

    def embedding_tables(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per target id: first-layer GRU input gates and readout columns of its embedding,
        ``(V, 3H)`` and ``(V, R)`` (cached until the weights change)."""
        def build():
            gates = self.embedding_gates(embedding)
            read_y = self._readout_columns()[2]
            return gates, F.linear(embedding, read_y.to(self._search_dtype(read_y)))

        return self._cached("embedding_tables", (embedding, self.rnn.weight_ih_l0, self.rnn.bias_ih_l0,
                                                 self.readout.linear.weight), build)

    def search_step(self, tables: tuple[torch.Tensor, torch.Tensor], prev_tokens: torch.Tensor,
                    state: DecoderState, memory: Memory) -> StepOutput:
        """:meth:`step` for search (eval mode, no dropout) from ``prepare_search``'s memory and
        ``embedding_tables``; ``prev_tokens (rows,)`` are the ids of y_{t-1}.

        The memory may hold one row per sentence while the state holds ``rows = sentences × K``
        (beams, sentence-major): a sentence's K beams then attend as K query positions of one
        (K × S) attention, and its memory is neither copied K times nor reordered with the beams.
        """
        sentences, src_len = memory.mask.shape
        rows = state.hidden.size(0)
        query = state.hidden[:, -1].reshape(sentences, rows // sentences, -1)  # (sentences, K, H)
        scores = self.attention.score(query, memory.keys, memory.proj_keys, memory.mask)  # (sentences, K, S)
        weights = masked_softmax(scores, memory.mask.unsqueeze(1))
        if memory.context_proj is not None:
            proj = torch.bmm(weights.to(memory.context_proj.dtype), memory.context_proj).reshape(rows, -1)
        else:
            context = torch.bmm(weights.to(memory.keys.dtype), memory.keys).reshape(rows, -1)
            proj = F.linear(context, memory.context_weight)
        weights = weights.reshape(rows, src_len)
        gates_c, read_c = proj.split([3 * self.hidden_size, proj.size(1) - 3 * self.hidden_size], dim=1)
        gates_y, read_y = (table.index_select(0, prev_tokens) for table in tables)
        hidden = self.rnn_step(gates_y + gates_c, None, state.hidden)
        read_h = self._cached("readout_hidden", (self.readout.linear.weight,),
                              lambda: self._readout_columns()[0].to(self._search_dtype(self.readout.linear.weight))
                              .contiguous())
        pre = F.linear(hidden[:, -1], read_h, self.readout.linear.bias) + read_c + read_y
        readout, pool = self.readout.activation.forward_step(pre, state.pool)
        return StepOutput(readout, DecoderState(hidden=hidden, pool=pool), weights, None)

    def step(self, embedded: torch.Tensor, state: DecoderState, memory: Memory) -> StepOutput:
        """``embedded (batch, emb)`` of y_{t-1} -> :class:`StepOutput`."""
        context, w, pos = self._attend(state.hidden[:, -1:], memory)
        hidden = self.rnn_step(self.embedding_gates(embedded), context[:, 0], state.hidden)
        readout, pool = self.readout.forward_step(torch.cat([hidden[:, -1], context[:, 0], embedded], dim=-1),
                                                  state.pool)
        return StepOutput(self.readout_dropout(readout), DecoderState(hidden=hidden, pool=pool), w[:, 0],
                          None if pos is None else pos[:, 0])


class LuongDecoder(_GRUDecoderBase):
    """Attention after the RNN; attentional hidden state h̃_t = act(W_c [c_t; s_t]) (Luong eq. 5)."""

    attention_before_rnn = False

    def __init__(self, embedding_dim, key_dim, readout_dim, cfg, att, activation, activation_options):
        feed = readout_dim if cfg.input_feeding else 0
        super().__init__(embedding_dim, key_dim, readout_dim, cfg, att, activation,
                         activation_options, rnn_extra_input=feed)
        self.input_feeding = cfg.input_feeding
        self.combine = ActivatedLinear(key_dim + cfg.hidden_size, readout_dim, activation,
                                       **activation_options)

    def init_state(self, hidden: torch.Tensor) -> DecoderState:
        feed = hidden.new_zeros(hidden.size(0), self.readout_dim) if self.input_feeding else None
        return DecoderState(hidden=hidden, feed=feed)

    def forward(self, embedded: torch.Tensor, state: DecoderState, memory: Memory):
        if not self.input_feeding:
            # No step-to-step dependency outside the GRU: one cuDNN/MKL GRU call over the target,
            # then attention and the combination for all steps at once.
            h0 = state.hidden.transpose(0, 1).contiguous()  # (layers, batch, H)
            if use_gru_scan(embedded):
                top, _ = run_gru(self.rnn, embedded, h0=h0, dropout=self.layer_dropout)
            else:
                top, _ = self.rnn(embedded, h0)  # (batch, T, H)
            context, weights, _ = self._attend(top, memory)
            attentional = self.combine.forward_causal(torch.cat([context, top], dim=-1))
            return self.readout_dropout(attentional), weights
        emb_gates = self.embedding_gates(embedded).unbind(1)
        hidden, feed, pool = state.hidden, state.feed, state.pool
        extra_weight = self.extra_input_weight()
        outputs, weights = [], []
        for gates_t in emb_gates:
            hidden = self.rnn_step(gates_t, feed, hidden, extra_weight)
            context, w, _ = self._attend(hidden[:, -1:], memory)
            feed, pool = self.combine.forward_step(torch.cat([context[:, 0], hidden[:, -1]], dim=-1), pool)
            feed = self.readout_dropout(feed)
            outputs.append(feed)
            weights.append(w[:, 0])
        return torch.stack(outputs, dim=1), torch.stack(weights, dim=1)

    def step(self, embedded: torch.Tensor, state: DecoderState, memory: Memory) -> StepOutput:
        hidden = self.rnn_step(self.embedding_gates(embedded), state.feed, state.hidden)
        context, w, pos = self._attend(hidden[:, -1:], memory)
        attentional, pool = self.combine.forward_step(torch.cat([context[:, 0], hidden[:, -1]], dim=-1),
                                                      state.pool)
        attentional = self.readout_dropout(attentional)
        new_state = DecoderState(hidden=hidden, feed=attentional if self.input_feeding else None, pool=pool)
        return StepOutput(attentional, new_state, w[:, 0], None if pos is None else pos[:, 0])


def build_decoder(embedding_dim: int, key_dim: int, readout_dim: int, cfg: DecoderConfig,
                  att: AttentionConfig, activation: str, activation_options: dict) -> _GRUDecoderBase:
    cls = BahdanauDecoder if att.kind == "bahdanau" else LuongDecoder
    return cls(embedding_dim, key_dim, readout_dim, cfg, att, activation, activation_options)

"""Bidirectional multi-layer GRU encoder over packed sequences, with optional self-attention on top.

The GRU reads the source in both directions (Bahdanau et al. 2015 §3.2); packing makes padding
invisible to it, so a sentence's encoding does not depend on how much padding its batch has.
With ``kernels="auto"``, CPU training runs the same GRU as :func:`nmt.kernels.run_gru` (a
hand-written backward pass), and CPU search, given the search tables' input gates per source id,
:func:`nmt.kernels.run_gru_inference` (both directions in one loop); ``reference`` always runs
``nn.GRU``. Optional multi-head self-attention blocks (Vaswani et al. 2017) then refine the annotations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt import kernels
from nmt.config import EncoderConfig
from nmt.model.activations import Dropout
from nmt.model.attention import SelfAttentionLayer


@dataclass
class EncoderOutput:
    states: torch.Tensor  #: (batch, src_len, out_dim); zero at padded positions
    final: torch.Tensor  #: (batch, final_dim) last layer's final state(s), both directions concatenated
    mask: torch.Tensor  #: (batch, src_len) bool, True on real tokens
    self_attention: list[torch.Tensor] | None = None  #: per layer (batch, heads, src_len, src_len)


class Encoder(nn.Module):
    """Embedded source ``(batch, src_len, emb)`` -> :class:`EncoderOutput`."""

    def __init__(self, embedding_dim: int, cfg: EncoderConfig, activation: str = "relu",
                 activation_options: dict | None = None, kernels: str = "auto"):
        super().__init__()
        self.fast = kernels == "auto"
        self.cfg = cfg
        self.num_directions = 2 if cfg.bidirectional else 1
        self.rnn = nn.GRU(embedding_dim, cfg.hidden_size, num_layers=cfg.layers, batch_first=True,
                          bidirectional=cfg.bidirectional,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.output_dim = cfg.hidden_size * self.num_directions
        self.final_dim = self.output_dim
        self.dropout = Dropout(cfg.dropout, kernels)
        self.self_attention = nn.ModuleList(
            SelfAttentionLayer(self.output_dim, cfg.self_attention_heads, cfg.self_attention_ff_size,
                               cfg.dropout, activation, kernels, **(activation_options or {}))
            for _ in range(cfg.self_attention_layers)
        )
        self.final_norm = nn.LayerNorm(self.output_dim) if cfg.self_attention_layers else None

    def forward(self, embedded: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor,
                need_attention: bool = False, gate_lookup: tuple | None = None) -> EncoderOutput:
        """``embedded (batch, src_len, emb)``, ``lengths (batch,)``, ``mask (batch, src_len)``.
        ``gate_lookup = (table, ids)``: search's GRU looks the first layer's input gates of the
        source ``ids (batch, src_len)`` up in ``table`` (``SearchTables.source_gates``) instead;
        ``embedded`` is then None."""
        src_len = mask.size(1)
        if gate_lookup is not None:
            table, ids = gate_lookup
            states, h_n = kernels.run_gru_inference(self.rnn, None, lengths, gate_table=table, ids=ids)
        elif self.fast and kernels.gru_scan_applies(embedded):
            states, h_n = kernels.run_gru(self.rnn, embedded, lengths, dropout=self.dropout)
        else:
            packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_out, h_n = self.rnn(packed)
            states, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=src_len)
        # h_n: (layers * directions, batch, hidden) -> last layer, directions concatenated
        last = h_n.view(self.cfg.layers, self.num_directions, h_n.size(1), h_n.size(2))[-1]
        final = torch.cat(list(last), dim=-1)  # (batch, directions * hidden)
        states = self.dropout(states)
        maps = [] if need_attention else None
        for layer in self.self_attention:
            states, head_weights = layer(states, mask)
            if maps is not None:
                maps.append(head_weights)
        if self.final_norm is not None:
            states = self.final_norm(states) * mask.unsqueeze(-1).to(states.dtype)
        return EncoderOutput(states=states, final=final, mask=mask, self_attention=maps)

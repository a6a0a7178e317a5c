"""A GRU layer for inference on CPU that steps both directions together: the fast twin of
``nn.GRU`` over a packed sequence when nothing needs a gradient (translation's encoder).

``nn.GRU`` on a packed bidirectional sequence runs the two directions one after the other, each
with a (rows, H) x (H, 3H) product per time step for the few rows still running. Here the input
projections of both directions and all time steps are **one** GEMM before the loop, and each time
step is **one** batched product ``(2, rows, H) x (2, H, 3H)`` for both directions plus the
elementwise gate work on both at once. This works because the backward direction reads each row
reversed within its own length: at step t both directions run exactly the rows longer than t
(the leading ``active[t]`` rows once rows are sorted by length, as a packed sequence lays them out).

Same equations and gate order as ``nn.GRU`` (the plain cell is ``nmt.model.decoder.gru_cell``),
with ATen's operand order in the elementwise terms. Outputs are zero at padded positions and each
row's final state is the one after its own last token, as ``nn.GRU`` returns them for a packed
input. Tested against ``nn.GRU`` on random weights and lengths: tests/test_gru_inference.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.kernels.layout import gru_gates


def gru_inference_applies(x: Tensor, rnn: nn.GRU) -> bool:
    """Where :func:`run_gru_inference` pays: a CPU GRU in eval mode with autograd off (search).
    ``x`` is the GRU's input."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and not rnn.training


def _reversal(lengths: Tensor, steps: int) -> Tensor:
    """``(B, T)`` index that reverses each row within its length and leaves padding in place."""
    pos = torch.arange(steps, device=lengths.device)
    return torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)


def _layer_weights(rnn: nn.GRU, layer: int, directions: int, dtype: torch.dtype):
    """One layer's weights of all directions, stacked: ``W_ih (D·3H, in)``, ``b_ih (D·3H,)``,
    ``W_hhᵀ (D, H, 3H)``, ``b_hh (D, 1, 3H)``, in the GEMM ``dtype``."""
    weights = [rnn.all_weights[layer * directions + d] for d in range(directions)]
    w_ih = torch.cat([w[0] for w in weights]).to(dtype)
    b_ih = torch.cat([w[2] for w in weights]).to(dtype)
    w_hh = torch.stack([w[1].t() for w in weights]).to(dtype)
    b_hh = torch.stack([w[3] for w in weights]).unsqueeze(1).to(dtype)
    return w_ih, b_ih, w_hh, b_hh


def _scan(gates_x: Tensor, w_hh: Tensor, b_hh: Tensor, active: list[int]) -> tuple[Tensor, Tensor]:
    """The time loop of all directions at once.

    ``gates_x (T, D, B, 3H)`` input gates in reading order (the backward direction's already
    reversed per row); ``w_hh (D, H, 3H)`` = W_hhᵀ; ``b_hh (D, 1, 3H)``; ``active[t]`` leading
    rows running at step t (rows sorted by length, longest first).
    Returns outputs ``(T, D, B, H)`` in reading order (zero where a row does not run) and the final
    states ``(D, B, H)``.
    """
    steps, directions, batch, _ = gates_x.shape
    hidden = w_hh.size(1)
    gates = gru_gates(hidden)
    rz, n_gate, r_gate, z_gate = gates.span("r", "z"), gates.block("n"), gates.block("r"), gates.block("z")
    h = gates_x.new_zeros(directions, batch, hidden)
    outputs = gates_x.new_zeros(steps, directions, batch, hidden)
    for t in range(steps):
        rows = active[t]
        if rows == 0:
            break
        h_t = h[:, :rows]
        x_t = gates_x[t, :, :rows]
        g_h = torch.baddbmm(b_hh, h_t, w_hh)  # (D, rows, 3H) = W_h h + b_h
        gate_rz = g_h[..., rz].add_(x_t[..., rz]).sigmoid_()
        new = torch.add(x_t[..., n_gate], g_h[..., n_gate].mul_(gate_rz[..., r_gate])).tanh_()
        h_new = (h_t - new).mul_(gate_rz[..., z_gate]).add_(new)  # h' = n + z (h - n)
        h[:, :rows] = h_new
        outputs[t, :, :rows] = h_new
    return outputs, h


def input_gate_table(rnn: nn.GRU, embedding: Tensor) -> Tensor:
    """The first layer's input gates of every embedding row, all directions: ``embedding (V, E)``
    -> ``(V, directions * 3H)`` = ``[W_ih E_v + b_ih]`` per direction (``nn.GRU``'s order).

    When the GRU reads embeddings directly (no dropout: eval mode), a lookup in this table replaces
    the first layer's input GEMM, half of a one-layer GRU's products. Float32 under autocast, as
    ``nn.GRU`` runs."""
    directions = 2 if rnn.bidirectional else 1
    with torch.autocast(embedding.device.type, enabled=False):
        w_ih, b_ih, _, _ = _layer_weights(rnn, 0, directions, embedding.dtype)
        return F.linear(embedding, w_ih, b_ih)


def run_gru_inference(rnn: nn.GRU, x: Tensor, lengths: Tensor, input_gates: bool = False
                      ) -> tuple[Tensor, Tensor]:
    """``nn.GRU``'s result for batch-first ``x (B, T, in)`` packed with ``lengths (B,)`` (each at
    least 1), without autograd, in eval mode (no dropout between layers). ``input_gates``: ``x``
    is the first layer's input gates instead, ``(B, T, directions * 3H)`` (rows of
    :func:`input_gate_table`).

    Returns ``outputs (B, T, directions * H)`` (zero at padded positions) and
    ``h_n (layers * directions, B, H)``: each row's state after its last token, per direction.
    """
    with torch.autocast(x.device.type, enabled=False):  # nn.GRU runs in float32 under autocast too
        return _run(rnn, x, lengths, input_gates)


def _run(rnn: nn.GRU, x: Tensor, lengths: Tensor, input_gates: bool) -> tuple[Tensor, Tensor]:
    batch, steps, _ = x.shape
    directions = 2 if rnn.bidirectional else 1
    gates = gru_gates(rnn.hidden_size).width
    lengths = lengths.to("cpu", torch.long)
    sorted_lengths, order = lengths.sort(descending=True, stable=True)
    active = torch.searchsorted(-sorted_lengths, -torch.arange(steps)).tolist()  # rows longer than t
    order = order.to(x.device)
    reverse = _reversal(sorted_lengths.to(x.device), steps)  # (B, T); its own inverse
    layer_input = x.index_select(0, order)
    finals = []
    for layer in range(rnn.num_layers):
        w_ih, b_ih, w_hh, b_hh = _layer_weights(rnn, layer, directions, layer_input.dtype)
        if layer == 0 and input_gates:
            gates_x = layer_input.view(batch, steps, directions, gates)
        else:
            gates_x = F.linear(layer_input, w_ih, b_ih).view(batch, steps, directions, gates)
        reading = [gates_x[:, :, 0]]
        if directions == 2:
            reading.append(gates_x[:, :, 1].gather(1, reverse[:, :, None].expand(-1, -1, gates)))
        outputs, last = _scan(torch.stack(reading).permute(2, 0, 1, 3).contiguous(), w_hh, b_hh, active)
        per_direction = [outputs[:, 0].transpose(0, 1)]  # (B, T, H)
        if directions == 2:
            per_direction.append(outputs[:, 1].transpose(0, 1).gather(
                1, reverse[:, :, None].expand(-1, -1, rnn.hidden_size)))
        layer_input = torch.cat(per_direction, dim=2)
        finals.append(last)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(batch, device=x.device)
    return layer_input.index_select(0, inverse), torch.cat(finals).index_select(1, inverse)

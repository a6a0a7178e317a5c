"""A GRU layer for search on CPU that steps both directions together and looks its first layer's
input gates up per source id: the fast twin of ``nn.GRU`` over a packed sequence in translation's
encoder (eval mode, no autograd).

``nn.GRU`` on a packed bidirectional sequence runs the two directions one after the other; each
time step multiplies the running rows' inputs by W_ih and their states by W_hh. Here:

- the first layer's input gates ``W_ih E_v + b_ih`` of every source id are a table, built once
  per search's weights (:func:`input_gate_table`, held in ``SearchTables.source_gates``): half of
  a one-layer GRU's products become a row lookup;
- each time step does the elementwise gate work of both directions at once, on their hidden
  products written side by side. This works because the backward direction reads each row
  reversed within its own length: at step t both directions run exactly the rows longer than t
  (the leading ``active[t]`` rows once rows are sorted by length, as a packed sequence lays them
  out);
- no (batch, time, gates) array is reordered or copied: each step gathers its rows' input gates by
  index and writes its states straight to their places in the output. Such whole-array copies cost
  more than the products they would feed (docs/performance.md); without the table, the input GEMM
  over the batch makes the loop slower than ``nn.GRU`` (:func:`gru_inference_applies`).

Same equations and gate order as ``nn.GRU`` (the plain cell is ``nmt.model.decoder.gru_cell``),
with ATen's operand order in the elementwise terms and its own ``addmm`` for the hidden products.
Under bf16 autocast the hidden products run in bf16, as the decoder's do (a CPU with AMX runs
them about five times faster than float32 at a search batch's few hundred rows), while the states,
the input gates and the gate sums stay float32; ``nn.GRU`` itself keeps float32 under CPU
autocast, so there the two agree to bf16 rounding (docs/performance.md).
Those products run on at least 16 rows (:mod:`nmt.kernels.batch_invariant`), so that a sentence's
encoding is the same alone and in any batch; ``nn.GRU`` multiplies only the running rows, which
MKL rounds differently for 1, 2–15 and 16+ rows. So the float32 encoding equals ``nn.GRU``'s to
the bit where at least 16 rows run at every step, and to float rounding elsewhere. Outputs are zero
at padded positions and each row's final state is the one after its own last token, as ``nn.GRU``
returns them for a packed input. Tested against ``nn.GRU`` on random weights and lengths:
tests/test_gru_inference.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.kernels import batch_invariant
from nmt.kernels.layout import gru_gates


def gru_inference_applies(x: Tensor, rnn: nn.GRU) -> bool:
    """Where :func:`run_gru_inference` with :func:`input_gate_table` pays: a CPU GRU in eval mode
    with autograd off (search). ``x`` is the GRU's input (or its embedding table). Without the
    table (the first layer's input GEMM in the loop's own layout) it is slower than ``nn.GRU``."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and not rnn.training


def _input_weights(rnn: nn.GRU, layer: int, directions: int, dtype: torch.dtype):
    """One layer's input weights of all directions, stacked: ``W_ih (D·3H, in)`` and ``b_ih
    (D·3H,)``, in ``dtype``."""
    weights = [rnn.all_weights[layer * directions + d] for d in range(directions)]
    return torch.cat([w[0] for w in weights]).to(dtype), torch.cat([w[2] for w in weights]).to(dtype)


def _hidden_weights(rnn: nn.GRU, layer: int, directions: int, dtype: torch.dtype):
    """One layer's hidden weights per direction: ``W_hh (3H, H)`` and ``b_hh (3H,)``, in ``dtype``."""
    weights = [rnn.all_weights[layer * directions + d] for d in range(directions)]
    return [w[1].to(dtype) for w in weights], [w[3].to(dtype) for w in weights]


def input_gate_table(rnn: nn.GRU, embedding: Tensor) -> Tensor:
    """The first layer's input gates of every embedding row, all directions: ``embedding (V, E)``
    -> ``(V, directions * 3H)`` = ``[W_ih E_v + b_ih]`` per direction (``nn.GRU``'s order).

    When the GRU reads embeddings directly (no dropout: eval mode), a lookup in this table replaces
    the first layer's input GEMM, half of a one-layer GRU's products. Float32 under autocast, as
    ``nn.GRU`` runs."""
    directions = 2 if rnn.bidirectional else 1
    with torch.autocast(embedding.device.type, enabled=False):
        w_ih, b_ih = _input_weights(rnn, 0, directions, embedding.dtype)
        return F.linear(embedding, w_ih, b_ih)


class _Reading:
    """Where each step of each direction reads and writes, for rows sorted by length.

    ``active[t]``: rows running at step t (the leading ones); ``cells (T, D, B)``: the flat position
    ``row * T + time`` (original row order) that direction d reads at step t, the backward
    direction reversed within each row's length (entries of rows not running are unused).
    """

    def __init__(self, lengths: Tensor, steps: int, directions: int, device: torch.device):
        lengths = lengths.to("cpu", torch.long)
        sorted_lengths, order = lengths.sort(descending=True, stable=True)
        self.active = torch.searchsorted(-sorted_lengths, -torch.arange(steps)).tolist()  # rows longer than t
        self.order = order.to(device)
        time = torch.arange(steps, device=device)[:, None]  # (T, 1)
        forward = self.order[None, :] * steps + time  # (T, B)
        times = [forward]
        if directions == 2:
            last = sorted_lengths.to(device)[None, :] - 1
            times.append(self.order[None, :] * steps + (last - time).clamp_min(0))
        self.cells = torch.stack(times, dim=1)  # (T, D, B)


def _scan(source: Tensor, index: Tensor, reading: _Reading, w_hh: list[Tensor], b_hh: list[Tensor],
          out: Tensor, product_dtype: torch.dtype | None = None) -> Tensor:
    """The time loop of all directions at once.

    ``source (N, 3H)`` input gate rows and ``index (T, D, B)`` the row of ``source`` that direction
    d of sorted row b reads at step t; ``w_hh``, ``b_hh`` per direction. Each state is written to
    ``out (B·T, D·H)`` at its cell (``reading.cells``), direction d in columns ``d·H:(d+1)·H``.
    Returns the final states of sorted rows, ``(D, B, H)``.

    The hidden products are ``nn.GRU``'s own (``addmm`` per direction, W_hh transposed as
    ``F.linear`` passes it), written side by side, on at least ``MIN_ROWS`` rows
    (:func:`nmt.kernels.batch_invariant.addmm_`; the states past the running rows are zeros or
    finished rows' last ones): so a sentence's encoding does not depend on its batch. With
    ``product_dtype`` (bf16) they run on the states and weights cast to it; their results are
    added to the float32 input gates in float32.
    """
    directions, hidden = len(w_hh), w_hh[0].size(1)
    gates = gru_gates(hidden)
    rz, n_gate, r_gate, z_gate = gates.span("r", "z"), gates.block("n"), gates.block("r"), gates.block("z")
    batch = index.size(2)
    cast = product_dtype not in (None, source.dtype)
    product_dtype = product_dtype if cast else source.dtype
    # the per-step operands taken once: the loop's cost is mostly its number of tensor operations
    w_hh_t = [w.to(product_dtype).t() for w in w_hh]
    b_hh = [b.to(product_dtype) for b in b_hh]
    room = batch_invariant.product_rows(batch, w_hh_t[0])  # the rows every step's product may run on
    h = source.new_zeros(directions, room, hidden)
    h_in = h.to(product_dtype) if cast else h  # the products' copy of the states
    g_h_rows = source.new_empty(directions, room, gates.width, dtype=product_dtype)
    h_of, g_h_of = h_in.unbind(0), g_h_rows.unbind(0)
    reads, writes = _step_rows(index, reading, directions)
    out_rows = out.view(-1, hidden)  # row cell·D + d: direction d's columns of cell
    start = 0
    for rows in reading.active:
        if rows == 0:
            break
        end = start + directions * rows
        h_t = h[:, :rows]
        x_t = source.index_select(0, reads[start:end]).view(directions, rows, -1)
        if cast:
            h_in[:, :rows].copy_(h_t)
        for d in range(directions):  # (D, rows, 3H) = W_h h + b_h
            batch_invariant.addmm_(g_h_of[d], b_hh[d], h_of[d], w_hh_t[d], rows)
        g_h = g_h_rows[:, :rows]
        if cast:  # out of place: the sums in the input gates' float32
            gate_rz = torch.add(g_h[..., rz], x_t[..., rz]).sigmoid_()
            new = torch.add(x_t[..., n_gate], g_h[..., n_gate] * gate_rz[..., r_gate]).tanh_()
        else:
            gate_rz = g_h[..., rz].add_(x_t[..., rz]).sigmoid_()
            new = torch.add(x_t[..., n_gate], g_h[..., n_gate].mul_(gate_rz[..., r_gate])).tanh_()
        h_new = (h_t - new).mul_(gate_rz[..., z_gate]).add_(new)  # h' = n + z (h - n)
        h[:, :rows] = h_new
        out_rows.index_copy_(0, writes[start:end], h_new.reshape(-1, hidden))
        start = end
    return h[:, :batch]


def _step_rows(index: Tensor, reading: _Reading, directions: int) -> tuple[Tensor, Tensor]:
    """Every step's rows laid end to end, step after step, each step's ``D × active[t]`` entries
    direction-major: the row of the input gates each reads (from ``index (T, D, B)``) and the row
    of ``out`` seen as ``(B·T·D, H)`` each writes. A step then takes a slice of each."""
    steps = index.size(0)
    running = torch.arange(index.size(2), device=index.device)[None, None, :] \
        < torch.tensor(reading.active, device=index.device)[:steps, None, None]  # (T, 1, B)
    running = running.expand_as(index)
    direction = torch.arange(directions, device=index.device)[None, :, None]
    return index.masked_select(running), (reading.cells * directions + direction).masked_select(running)


def run_gru_inference(rnn: nn.GRU, x: Tensor | None, lengths: Tensor, gate_table: Tensor | None = None,
                      ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``nn.GRU``'s result for batch-first ``x (B, T, in)`` packed with ``lengths (B,)`` (each at
    least 1), without autograd, in eval mode (no dropout between layers).

    With ``gate_table`` (:func:`input_gate_table` of the embedding) and the ids ``(B, T)`` that
    ``x`` embeds, the first layer's input gates are looked up and ``x`` is not needed (None).
    Under autocast the hidden products run in its dtype (the module's docstring).
    Returns ``outputs (B, T, directions * H)`` (zero at padded positions) and
    ``h_n (layers * directions, B, H)``: each row's state after its last token, per direction.
    """
    device = (x if x is not None else ids).device
    # the hidden products in autocast's dtype; the rest in float32, as nn.GRU runs under autocast
    product_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    with torch.autocast(device.type, enabled=False):
        batch, steps = (x if x is not None else ids).shape[:2]
        directions = 2 if rnn.bidirectional else 1
        hidden = rnn.hidden_size
        reading = _Reading(lengths, steps, directions, device)
        offsets = torch.arange(directions, device=device)[None, :, None]  # (1, D, 1)
        finals = []
        for layer in range(rnn.num_layers):
            dtype = gate_table.dtype if x is None else x.dtype
            w_hh, b_hh = _hidden_weights(rnn, layer, directions, dtype)
            if layer == 0 and gate_table is not None:  # row (id, d) of the table seen as (V·D, 3H)
                # the input weights are not read: stacking them would copy them at every call
                source = gate_table.reshape(-1, w_hh[0].size(0))
                index = ids.reshape(-1)[reading.cells] * directions + offsets
            else:  # row (cell, d) of the input's gates seen as (B·T·D, 3H)
                w_ih, b_ih = _input_weights(rnn, layer, directions, dtype)
                source = batch_invariant.linear(x.reshape(batch * steps, -1), w_ih, b_ih).view(-1, w_hh[0].size(0))
                index = reading.cells * directions + offsets
            out = source.new_zeros(batch * steps, directions * hidden)
            finals.append(_scan(source, index, reading, w_hh, b_hh, out, product_dtype))
            x = out.view(batch, steps, -1)
    inverse = torch.empty_like(reading.order)
    inverse[reading.order] = torch.arange(batch, device=device)
    return x, torch.cat(finals).index_select(1, inverse)

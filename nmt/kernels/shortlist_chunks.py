"""Search's output layer over a batch's shortlists, one product per chunk of sentences: the fast
twin of one product over the union of the batch's shortlists
(:class:`nmt.inference.torch_engine.OutputShortlist`).

A row of a step reads its own sentence's shortlist only (about 140 of the union's 2,100–2,900
columns in a batch of the fr-en test set), yet the union product computes every column for every
row. Neighbouring sentences share most of their shortlists (the special and frequent ids), so a
chunk of :data:`CHUNK_ROWS` rows has a union of a few hundred columns: one batched product, each
chunk over its own columns, computes about a fifth of the union product's terms, and each row's
logits are bit for bit the union product's (a float32 GEMM rounds a row of at least
:data:`~nmt.kernels.batch_invariant.MIN_ROWS` rows the same whatever the other rows and columns;
tests/test_shortlist_chunks.py).

The layout is built from the batch's memory rows (sentences, or sampled copies): memory row ``m``
has ``per_row`` step rows (its beams) in consecutive slots of its chunk. When rows leave the search
(:meth:`ShortlistChunks.select`) the others keep their slots, so the chunks' weights are gathered
once; a layout whose slots are less than half in use is rebuilt. Costs: docs/performance.md.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from nmt.kernels.batch_invariant import MIN_ROWS
from nmt.kernels.rows import row_multiple

__all__ = ["ShortlistChunks", "shortlist_chunks_apply", "CHUNK_ROWS"]

#: step rows per chunk (rounded to whole memory rows, at least MIN_ROWS): 16–32 rows measured
#: alike, and fewer rows per chunk gather more weight columns in all
CHUNK_ROWS = 32
#: the chunks are used when their products have at most this fraction of the union product's terms
#: (the fr-en test set: 0.19); wider ones, as when every sentence owns most of the union, gain
#: less than the layout, the gathers and the scatter cost
PAYS_FRACTION = 0.5
#: nor when the chunks' gathered weight rows would take more memory than this
MAX_GATHERED_BYTES = 256 * 2 ** 20


def shortlist_chunks_apply(weight: Tensor) -> bool:
    """Products per chunk where the output layer runs float32 or float64 GEMMs (MKL's on the CPU):
    a 16-bit product on the CPU compiles a oneDNN kernel per shape, and each layout has its own."""
    return row_multiple(weight) == 1


class ShortlistChunks:
    """The output layer restricted to each chunk's union of its rows' own columns.

    ``weight (L, D)`` and ``bias (L,)``: the output layer's rows of the batch's union of
    shortlists; ``outside (B, L)``: each memory row's columns not in its own shortlist; ``own (B,
    K)``: its own columns (:func:`nmt.inference.torch_engine.own_columns`: ascending, padded with an
    outside column); ``per_row``: step rows per memory row. :meth:`own_logits` gives each step
    row's logits at its own columns, :meth:`scores` the same over the union. :attr:`pays` is False
    (and nothing is gathered) when the chunks are too wide to gain (:data:`PAYS_FRACTION`,
    :data:`MAX_GATHERED_BYTES`): the caller then runs the union product.
    """

    def __init__(self, weight: Tensor, bias: Tensor, outside: Tensor, own: Tensor, per_row: int):
        batch, width = outside.shape
        dim = weight.size(1)
        self.per_row = per_row
        group = min(batch, max(1, round(CHUNK_ROWS / per_row)))  # memory rows per chunk
        self.slots = max(group * per_row, MIN_ROWS)  # GEMM rows per chunk
        chunks = -(-batch // group)
        owned = torch.zeros(chunks * group, width, dtype=torch.bool, device=outside.device)
        owned[:batch] = ~outside
        owned = owned.view(chunks, group, width).any(1)  # (chunks, L)
        counts = owned.sum(1)
        spread = int(counts.max()) + 1  # at least one dump column: a zero weight and a -inf bias
        union_rows = max(batch * per_row, MIN_ROWS)  # what the union product runs on
        self.pays = (chunks * self.slots * spread <= PAYS_FRACTION * union_rows * width
                     and chunks * spread * dim * weight.element_size() <= MAX_GATHERED_BYTES)
        if not self.pays:
            return
        index = torch.full((chunks, spread), width, dtype=torch.long, device=outside.device)
        chunk, column = owned.nonzero(as_tuple=True)  # row-major: each chunk's columns ascending
        place = torch.arange(chunk.numel(), device=outside.device) - (counts.cumsum(0) - counts)[chunk]
        index[chunk, place] = column
        self.weight = torch.cat([weight, weight.new_zeros(1, dim)])[index]  # (chunks, spread, D)
        self.bias = torch.cat([bias, bias.new_full((1,), -math.inf)])[index].unsqueeze(1)
        # each memory row's own columns as positions in its chunk; padding at the dump column
        position = torch.full((chunks, width), spread - 1, dtype=torch.long, device=outside.device)
        position[chunk, column] = place
        memory_chunk = torch.arange(batch, device=outside.device) // group
        local = position.view(-1)[memory_chunk[:, None] * width + own]  # (B, K), not a (B, L) copy
        local.masked_fill_(outside.gather(1, own), spread - 1)
        self.local = local  # (B, K)
        self.base = memory_chunk * self.slots + (torch.arange(batch, device=outside.device) % group) * per_row
        self.inputs = weight.new_zeros(chunks * self.slots, dim)  # finite in every slot, used or not
        self._take: Tensor | None = None  # per step row, where its own logits lie in a product's output
        self._step_slots: Tensor | None = None
        self._scores: Tensor | None = None

    @property
    def chunks(self) -> int:
        return self.weight.size(0)

    def select(self, index: Tensor) -> "ShortlistChunks | None":
        """The layout of memory rows ``index``, their slots and the gathered weights kept; None when
        fewer than half of the slots would be in use (a new layout then costs less than the idle
        rows)."""
        if not self.pays:
            return self  # the union product, whatever the rows
        if 2 * index.numel() * self.per_row < self.chunks * self.slots:
            return None
        kept = copy.copy(self)  # the gathered weights and the inputs' buffer shared
        kept.local, kept.base = self.local[index], self.base[index]
        kept._take = kept._step_slots = kept._scores = None  # per rows: built at the next step
        return kept

    def own_logits(self, readout: Tensor) -> Tensor:
        """``readout (N, D)``, N = memory rows × ``per_row`` -> ``(N, K)`` each row's logits at its
        own columns (-inf at the padding of :attr:`local`)."""
        if self._take is None:
            beams = torch.arange(self.per_row, device=readout.device)
            self._step_slots = (self.base[:, None] + beams).reshape(-1)
            spread = self.weight.size(1)
            local = self.local.repeat_interleave(self.per_row, 0) if self.per_row > 1 else self.local
            self._take = self._step_slots[:, None] * spread + local
        self.inputs.index_copy_(0, self._step_slots, readout)
        chunks, spread, dim = self.weight.shape
        a = self.inputs.view(chunks, self.slots, dim)
        b, bias = self.weight.transpose(1, 2), self.bias
        # threads split a lone product's columns, whose pieces round otherwise: it runs twice
        if chunks == 1 and torch.get_num_threads() > 1:
            a, b, bias = a.expand(2, -1, -1), b.expand(2, -1, -1), bias.expand(2, -1, -1)
        out = torch.baddbmm(bias, a, b)
        return out.take(self._take)

    def scores(self, own_logits: Tensor, own: Tensor, width: int) -> Tensor:
        """``(N, width)`` logits over the batch's union: ``own_logits (N, K)`` at the rows' ``own (N, K)``
        columns, -inf elsewhere. One buffer per layout, written at the own columns at every step:
        its other columns stay -inf, and search writes only -inf into a step's scores."""
        if self._scores is None or self._scores.shape != (own.size(0), width):
            self._scores = own_logits.new_full((own.size(0), width), -math.inf)
        return self._scores.scatter_(1, own, own_logits)

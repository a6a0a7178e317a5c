"""Named blocks of fused tensors: which columns (or rows) of a weight, or which channels of an
activation, hold which term.

A fused weight serves several terms in one GEMM: the decoder GRU's input weight ``W_ih`` reads
``[E y; c]`` (columns ``embedding``, ``context``), its rows are the gates ``r, z, n``, the Bahdanau
readout ``W_o`` reads ``[s; c; E y]``. The plain equations, the fast twins in this package and the
exporter must agree on these offsets; a :class:`Layout` names them once, where the layer is built
(``nmt.model.decoder``), and every implementation splits or assembles through it.

It lives here rather than in ``nmt.model`` because the kernels import nothing from the model: the
model builds its layouts from this class and hands the kernels named parts.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import torch
from torch import Tensor


class Layout:
    """Consecutive named blocks along one axis, in order: ``Layout(state=H, context=K, embedding=E)``.

    ``split`` gives views (no copy) by name, ``unpack`` the same views in order, ``cat`` assembles parts in the layout's order; ``block`` and
    ``span`` give the ``slice`` of one block or of consecutive blocks, for indexing in hot loops.
    """

    def __init__(self, **widths: int):
        if not widths:
            raise ValueError("a layout needs at least one block")
        self.widths: dict[str, int] = {name: int(width) for name, width in widths.items()}
        self._slices: dict[str, slice] = {}
        start = 0
        for name, width in self.widths.items():
            self._slices[name] = slice(start, start + width)
            start += width
        self.width = start  #: the fused axis' size
        self._sizes = tuple(self.widths.values())
        self._equal = len(set(self._sizes)) == 1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.widths)

    def block(self, name: str) -> slice:
        """The indices of block ``name``."""
        return self._slices[name]

    def span(self, first: str, last: str) -> slice:
        """The indices from block ``first`` through block ``last`` (consecutive blocks)."""
        return slice(self._slices[first].start, self._slices[last].stop)

    def size(self, *names: str) -> int:
        """The summed width of blocks ``names``."""
        return sum(self.widths[name] for name in names)

    def split(self, tensor: Tensor, dim: int = -1) -> dict[str, Tensor]:
        """``tensor``'s blocks along ``dim`` by name, as views: ``{name: (..., width, ...)}``."""
        if tensor.size(dim) != self.width:
            raise ValueError(f"layout {self} spans {self.width} along dim {dim}, the tensor has "
                             f"{tensor.size(dim)} (shape {tuple(tensor.shape)})")
        return {name: tensor.narrow(dim, s.start, s.stop - s.start) for name, s in self._slices.items()}

    def unpack(self, tensor: Tensor, dim: int = -1) -> tuple[Tensor, ...]:
        """``tensor``'s blocks along ``dim`` as views in the order of :attr:`names`: the per-step
        form of :meth:`split` (one ``chunk``/``split`` call, no dictionary)."""
        if self._equal:
            return tensor.chunk(len(self._sizes), dim=dim)
        return tensor.split(self._sizes, dim=dim)

    def cat(self, parts: Mapping[str, Tensor], dim: int = -1) -> Tensor:
        """The fused tensor of ``parts`` (one per block, in any order), concatenated in layout order
        along ``dim``. A layout of one block returns its part itself (no copy)."""
        if set(parts) != set(self.widths):
            raise ValueError(f"layout {self} needs parts {', '.join(self.names)}, got {', '.join(parts)}")
        if len(self.widths) == 1:
            return parts[self.names[0]]
        return torch.cat([parts[name] for name in self.widths], dim=dim)

    def __repr__(self) -> str:
        return "Layout(" + ", ".join(f"{name}={width}" for name, width in self.widths.items()) + ")"

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self.widths == other.widths and self.names == other.names

    def __hash__(self) -> int:
        return hash(tuple(self.widths.items()))


@lru_cache(maxsize=None)
def gru_gates(hidden: int) -> Layout:
    """The gate layout of ``torch.nn.GRU``'s fused weights, biases and gate pre-activations:
    rows (or channels) ``r, z, n`` of width ``hidden`` each (reset, update, new)."""
    return Layout(r=hidden, z=hidden, n=hidden)

"""The array operations search needs, on PyTorch tensors: the twin of :mod:`nmt.inference.ops_numpy`
(see there). Only the torch engine imports this module."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class TorchOps:
    """Search's array operations on tensors of one ``device``."""

    long, float32, boolean = torch.long, torch.float32, torch.bool

    def __init__(self, device: torch.device | str):
        self.device = device
        self._columns: dict[tuple[int, ...], Tensor] = {}  # fill_columns_'s index tensors

    # ----------------------------------------------------------------------------- creation
    def full(self, shape, value, dtype=torch.float32) -> Tensor:
        return torch.full(shape, value, dtype=dtype, device=self.device)

    def zeros(self, shape, dtype=torch.float32) -> Tensor:
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def arange(self, n: int) -> Tensor:
        return torch.arange(n, device=self.device)

    @staticmethod
    def repeat_each(x: Tensor, times: int) -> Tensor:
        return x.repeat_interleave(times)

    def repeat_steps(self, steps: int, counts: list[int]) -> Tensor:
        """``[0] * counts[0] + [1] * counts[1] + ...`` for ``steps`` steps."""
        return torch.repeat_interleave(torch.arange(steps, device=self.device),
                                       torch.tensor(counts, device=self.device))

    def as_array(self, values, dtype) -> Tensor:
        return torch.as_tensor(values, dtype=dtype, device=self.device)

    @staticmethod
    def stack(parts: Sequence[Tensor], dim: int) -> Tensor:
        return torch.stack(list(parts), dim)

    # ----------------------------------------------------------------------------- reading
    @staticmethod
    def size(x: Tensor) -> int:
        return x.numel()

    @staticmethod
    def to_list(x: Tensor) -> list:
        return x.tolist()

    @staticmethod
    def copy(x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def isfinite(x: Tensor) -> Tensor:
        return torch.isfinite(x)

    @staticmethod
    def nonzero(x: Tensor) -> Tensor:
        return x.nonzero().squeeze(1)

    @staticmethod
    def as_long(x: Tensor) -> Tensor:
        return x.long()

    @staticmethod
    def to_float(x: Tensor) -> Tensor:
        return x.float()

    # ----------------------------------------------------------------------------- shaping
    @staticmethod
    def cat(parts: Sequence[Tensor], dim: int) -> Tensor:
        return torch.cat(list(parts), dim)

    @staticmethod
    def pad_steps(x: Tensor, pad: int, value=0) -> Tensor:
        return F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad), value=value)

    @staticmethod
    def gather(x: Tensor, index: Tensor) -> Tensor:
        if x.dim() == 2:
            return x.gather(1, index)
        shape = index.shape + x.shape[2:]
        return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(shape))

    @staticmethod
    def rows(x: Tensor, index: Tensor) -> Tensor:
        """``x[index]`` for a 1-d long ``index``: ``index_select``, a fraction of the cost of
        indexing's general path on the small arrays of a search step."""
        return x.index_select(0, index)

    @staticmethod
    def put_rows_(x: Tensor, index: Tensor, values: Tensor) -> None:
        """``x[index] = values`` for a 1-d long ``index`` of distinct rows."""
        x.index_copy_(0, index, values)

    @staticmethod
    def where(cond: Tensor, x: Tensor, y) -> Tensor:
        if not isinstance(y, Tensor):
            y = torch.full_like(x, y)
        return torch.where(cond, x, y)

    @staticmethod
    def select(cond: Tensor, x, y) -> Tensor:
        return torch.where(cond, x, y)

    @staticmethod
    def masked_fill(x: Tensor, mask: Tensor, value: float) -> Tensor:
        return x.masked_fill(mask, value)

    # ----------------------------------------------------------------------------- ranking
    @staticmethod
    def topk(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return values.topk(k, dim=1)

    @staticmethod
    def best_first(values: Tensor, k: int) -> Tensor:
        return values.topk(k, dim=1).indices

    @staticmethod
    def false_first(flags: Tensor, k: int) -> Tensor:
        return torch.sort(flags.to(torch.uint8), dim=1, stable=True).indices[:, :k]

    @staticmethod
    def argmax(x: Tensor) -> tuple[Tensor, Tensor]:
        return x.max(dim=-1)

    @staticmethod
    def amax(x: Tensor) -> Tensor:
        return x.amax(dim=-1)

    @staticmethod
    def pick(x: Tensor, columns: Tensor) -> Tensor:
        return x.gather(1, columns.unsqueeze(1)).squeeze(1)

    # ----------------------------------------------------------------------------- numerics
    @staticmethod
    def top_log_probs(values: Tensor, log_norm: Tensor) -> Tensor:
        return values.float() - log_norm.unsqueeze(1)

    @staticmethod
    def chosen_log_probs(values: Tensor, log_norm: Tensor) -> Tensor:
        return values - log_norm

    @staticmethod
    def length_penalty(lengths: Tensor | int, alpha: float) -> Tensor | float:
        if isinstance(lengths, Tensor):
            return ((5.0 + lengths.double()) / 6.0).pow(alpha).float()
        return ((5.0 + lengths) / 6.0) ** alpha

    @staticmethod
    def clamped_log(x: Tensor, low: float, high: float) -> Tensor:
        return x.float().clamp(min=low, max=high).log()

    @staticmethod
    def masked_sum(x: Tensor, mask: Tensor, beta: float) -> Tensor:
        return beta * (x * mask.to(x.dtype)).sum(-1)

    @staticmethod
    def max_lengths(src_lengths: Tensor, a: float, b: float, low: int) -> Tensor:
        return torch.floor(a * src_lengths.double() + b).long().clamp(min=low)

    @staticmethod
    def clamp_min(x: Tensor, low) -> Tensor:
        return x.clamp(min=low)

    @staticmethod
    def sum_steps(x: Tensor, horizon: int) -> Tensor:
        return x.sum(1)

    # ----------------------------------------------------------------------------- sampling
    float64 = torch.float64

    def stream_uniforms(self, seeds: list[int], lengths: list[int], width: int) -> Tensor:
        """``(rows, width)`` float64: row r holds ``lengths[r]`` uniform numbers of a
        ``torch.Generator`` seeded with ``seeds[r]``, then zeros."""
        uniforms = torch.zeros(len(seeds), width, dtype=torch.float64)
        for row, (seed, n) in enumerate(zip(seeds, lengths)):
            generator = torch.Generator().manual_seed(seed)
            uniforms[row, :n] = torch.rand(n, generator=generator, dtype=torch.float64)
        return uniforms.to(self.device)

    @staticmethod
    def softmax(x: Tensor) -> Tensor:
        return torch.softmax(x, dim=1)

    @staticmethod
    def keep_columns(x: Tensor, index: Tensor, fill: float) -> Tensor:
        return torch.full_like(x, fill).scatter_(1, index, x.gather(1, index))

    @staticmethod
    def cumsum(x: Tensor) -> Tensor:
        return x.cumsum(dim=1)

    @staticmethod
    def cumulative(probs: Tensor) -> Tensor:
        return probs.nan_to_num_(0.0).double().cumsum(dim=1)

    @staticmethod
    def first_above(cdf: Tensor, u: Tensor) -> Tensor:
        return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.size(1) - 1)

    @staticmethod
    def scatter_values_(x: Tensor, index: Tensor, values: Tensor) -> Tensor:
        return x.scatter_(1, index, values)

    @staticmethod
    def sort_descending(x: Tensor) -> tuple[Tensor, Tensor]:
        return x.sort(dim=1, descending=True)

    # ----------------------------------------------------------------------------- in place
    @staticmethod
    def fill_column_(x: Tensor, column: int, value: float) -> None:
        x[:, column] = value

    def fill_columns_(self, x: Tensor, columns: tuple[int, ...], value: float) -> None:
        """``x[:, c] = value`` for every c of ``columns``, in one operation (every search step)."""
        index = self._columns.get(columns)
        if index is None:
            index = self._columns[columns] = torch.tensor(columns, device=self.device)
        x.index_fill_(1, index, value)

    @staticmethod
    def scatter_(x: Tensor, index: Tensor, value: float) -> None:
        x.scatter_(1, index, value)

    @staticmethod
    def windows(x: Tensor, n: int) -> Tensor:
        return x.unfold(1, n, 1)

    def ones_bool(self, shape) -> Tensor:
        return torch.ones(shape, dtype=torch.bool, device=self.device)


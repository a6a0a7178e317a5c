"""The array operations search needs (:mod:`nmt.inference.beam`, :mod:`nmt.inference.greedy`), on numpy.

Search is written once against this small namespace; :mod:`nmt.inference.ops_torch` is its PyTorch
twin. Each function names what search does with it, so where the two libraries differ (the tie
order of a top-k, the summation order of a reduction) each engine keeps its own, fixed, choice.
Nothing here imports torch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

long = np.int64
float32 = np.float32
boolean = np.bool_


class NumpyOps:
    """Search's array operations on numpy arrays (the ONNX engine)."""

    long, float32, boolean = long, float32, boolean

    # ----------------------------------------------------------------------------- creation
    @staticmethod
    def full(shape, value, dtype=float32) -> np.ndarray:
        return np.full(shape, value, dtype=dtype)

    @staticmethod
    def zeros(shape, dtype=float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    @staticmethod
    def arange(n: int) -> np.ndarray:
        return np.arange(n)

    @staticmethod
    def repeat_each(x: np.ndarray, times: int) -> np.ndarray:
        """``[a, b] -> [a, a, b, b]`` for ``times = 2``."""
        return np.repeat(x, times)

    @staticmethod
    def repeat_steps(steps: int, counts: list[int]) -> np.ndarray:
        """``[0] * counts[0] + [1] * counts[1] + ...`` for ``steps`` steps."""
        return np.repeat(np.arange(steps), counts)

    @staticmethod
    def as_array(values, dtype) -> np.ndarray:
        return np.asarray(values, dtype=dtype)

    @staticmethod
    def stack(parts: Sequence[np.ndarray], dim: int) -> np.ndarray:
        return np.stack(parts, dim)

    # ----------------------------------------------------------------------------- reading
    @staticmethod
    def size(x: np.ndarray) -> int:
        return x.size

    @staticmethod
    def to_list(x: np.ndarray) -> list:
        return x.tolist()

    @staticmethod
    def copy(x: np.ndarray) -> np.ndarray:
        return x.copy()

    @staticmethod
    def isfinite(x: np.ndarray) -> np.ndarray:
        return np.isfinite(x)

    @staticmethod
    def nonzero(x: np.ndarray) -> np.ndarray:
        """Indices of the true entries of a 1-d ``x``."""
        return np.flatnonzero(x)

    @staticmethod
    def as_long(x: np.ndarray) -> np.ndarray:
        return x.astype(np.int64)

    @staticmethod
    def to_float(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32, copy=False)

    # ----------------------------------------------------------------------------- shaping
    @staticmethod
    def cat(parts: Sequence[np.ndarray], dim: int) -> np.ndarray:
        return np.concatenate(parts, dim)

    @staticmethod
    def pad_steps(x: np.ndarray, pad: int, value=0) -> np.ndarray:
        """``x (N, T, ...)`` -> ``(N, T + pad, ...)``, the new steps filled with ``value``."""
        widths = [(0, 0)] * x.ndim
        widths[1] = (0, pad)
        return np.pad(x, widths, constant_values=value)

    @staticmethod
    def gather(x: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``x (A, M, ...)``, ``index (A, P)`` -> ``x[a, index[a, p], ...]`` of shape ``(A, P, ...)``."""
        return np.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), 1)

    @staticmethod
    def rows(x: np.ndarray, index: np.ndarray) -> np.ndarray:
        return x[index]

    @staticmethod
    def put_rows_(x: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
        x[index] = values

    @staticmethod
    def where(cond: np.ndarray, x, y) -> np.ndarray:
        return np.where(cond, x, np.float32(y) if isinstance(y, float) else y)

    @staticmethod
    def select(cond: np.ndarray, x, y) -> np.ndarray:
        return np.where(cond, x, y)

    @staticmethod
    def masked_fill(x: np.ndarray, mask: np.ndarray, value: float) -> np.ndarray:
        return np.where(mask, np.float32(value), x)

    # ----------------------------------------------------------------------------- ranking
    @staticmethod
    def topk(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` largest values of each row, largest first, and their column indices (the
        candidates are found with a partition, then ordered by a stable sort)."""
        if k < values.shape[1]:
            part = np.argpartition(-values, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(values.shape[1]), values.shape)
        order = np.argsort(-np.take_along_axis(values, part, 1), axis=1, kind="stable")
        index = np.take_along_axis(part, order, 1)
        return np.take_along_axis(values, index, 1), index

    @staticmethod
    def best_first(values: np.ndarray, k: int) -> np.ndarray:
        """Column indices of the ``k`` largest values of each row; ties keep their column order."""
        return np.argsort(-values, axis=1, kind="stable")[:, :k]

    @staticmethod
    def false_first(flags: np.ndarray, k: int) -> np.ndarray:
        """Column indices of each row's first ``k`` false entries, then its true ones, order kept."""
        return np.argsort(flags, axis=1, kind="stable")[:, :k]

    @staticmethod
    def argmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row-wise ``(max value, its column)``."""
        tok = x.argmax(1)
        return x[np.arange(tok.size), tok], tok

    @staticmethod
    def amax(x: np.ndarray) -> np.ndarray:
        """The largest entry along the last axis."""
        return x.max(-1)

    @staticmethod
    def pick(x: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """``x[n, columns[n]]`` for every row ``n``."""
        return x[np.arange(columns.size), columns]

    # ----------------------------------------------------------------------------- numerics
    @staticmethod
    def top_log_probs(values: np.ndarray, log_norm: np.ndarray | None) -> np.ndarray:
        """``(N, k)`` values kept from a step's scores -> log-probabilities (``log_norm (N,)`` or
        None when the scores are log-probabilities already)."""
        return values if log_norm is None else values - log_norm[:, None]

    @staticmethod
    def chosen_log_probs(values: np.ndarray, log_norm: np.ndarray | None) -> np.ndarray:
        """``(N,)`` chosen scores -> log-probabilities (see :meth:`top_log_probs`)."""
        return values if log_norm is None else values - log_norm

    @staticmethod
    def length_penalty(lengths, alpha: float):
        """GNMT ``lp(n) = ((5 + n) / 6) ** alpha`` in float64, as float32."""
        return np.float32(((5.0 + np.asarray(lengths, dtype=np.float64)) / 6.0) ** alpha)

    @staticmethod
    def clamped_log(x: np.ndarray, low: float, high: float) -> np.ndarray:
        return np.log(np.clip(x.astype(np.float32), low, high))

    @staticmethod
    def masked_sum(x: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
        """``beta * Σ_i x_i mask_i`` over the last axis."""
        return np.float32(beta) * (x * mask.astype(np.float32)).sum(-1)

    @staticmethod
    def max_lengths(src_lengths: np.ndarray, a: float, b: float, low: int) -> np.ndarray:
        limit = np.floor(a * src_lengths.astype(np.float64) + b).astype(np.int64)
        return np.maximum(limit, low)

    @staticmethod
    def clamp_min(x: np.ndarray, low) -> np.ndarray:
        return np.maximum(x, low)

    @staticmethod
    def sum_steps(x: np.ndarray, horizon: int) -> np.ndarray:
        """``(N, T)`` per-step values -> ``(N,)`` sums, over rows padded with zeros to ``horizon``
        steps (numpy's pairwise summation depends on the row width)."""
        if x.shape[1] < horizon:
            x = np.pad(x, ((0, 0), (0, horizon - x.shape[1])))
        return x.sum(1, dtype=np.float32)

    # ----------------------------------------------------------------------------- sampling
    float64 = np.float64

    @staticmethod
    def stream_uniforms(seeds: list[int], lengths: list[int], width: int) -> np.ndarray:
        """``(rows, width)`` float64: row r holds ``lengths[r]`` uniform numbers of numpy's
        generator seeded with ``seeds[r]``, then zeros."""
        out = np.zeros((len(seeds), width), dtype=np.float64)
        for row, (seed, n) in enumerate(zip(seeds, lengths)):
            out[row, :n] = np.random.Generator(np.random.PCG64(seed)).random(n)
        return out

    @staticmethod
    def softmax(x: np.ndarray) -> np.ndarray:
        """Row-wise softmax of float32 ``x`` (a row of -inf only gives NaN)."""
        with np.errstate(invalid="ignore"):
            e = np.exp(x - x.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

    @staticmethod
    def keep_columns(x: np.ndarray, index: np.ndarray, fill: float) -> np.ndarray:
        """``x`` at ``index`` (per row), ``fill`` elsewhere."""
        out = np.full_like(x, fill)
        np.put_along_axis(out, index, np.take_along_axis(x, index, 1), axis=1)
        return out

    @staticmethod
    def cumsum(x: np.ndarray) -> np.ndarray:
        return x.cumsum(1)

    @staticmethod
    def cumulative(probs: np.ndarray) -> np.ndarray:
        """Row-wise float64 running sum of probabilities, NaN read as 0."""
        return np.nan_to_num(probs, nan=0.0).astype(np.float64).cumsum(1)

    @staticmethod
    def first_above(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Per row, the first column whose ``cdf`` exceeds ``u (N, 1)`` (the last column at most)."""
        return np.minimum((cdf <= u).sum(1), cdf.shape[1] - 1)

    @staticmethod
    def scatter_values_(x: np.ndarray, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        np.put_along_axis(x, index, values, axis=1)
        return x

    @staticmethod
    def sort_descending(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-x, axis=1, kind="stable")
        return np.take_along_axis(x, order, 1), order

    # ----------------------------------------------------------------------------- in place
    @staticmethod
    def fill_column_(x: np.ndarray, column: int, value: float) -> None:
        x[:, column] = value

    @staticmethod
    def fill_columns_(x: np.ndarray, columns: tuple[int, ...], value: float) -> None:
        x[:, list(columns)] = value

    @staticmethod
    def scatter_(x: np.ndarray, index: np.ndarray, value: float) -> None:
        np.put_along_axis(x, index, value, axis=1)

    @staticmethod
    def windows(x: np.ndarray, n: int) -> np.ndarray:
        """``(N, T)`` -> ``(N, T - n + 1, n)``: every window of ``n`` consecutive entries."""
        return np.lib.stride_tricks.sliding_window_view(x, n, axis=1)

    @staticmethod
    def ones_bool(shape) -> np.ndarray:
        return np.ones(shape, dtype=bool)


numpy_ops = NumpyOps()

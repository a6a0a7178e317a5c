"""Arrow columns of subword ids built from flat numpy arrays.

Encoding a corpus turns each batch of sentencepiece ids (Python lists) into ``list<int32>``
columns that end in EOS, their lengths and the drop reasons of the training filter. Doing that
per sentence in Python and letting ``datasets`` convert lists of lists costs about as much as
sentencepiece itself; here each batch is one flat values array plus offsets, and the filters are
array operations. The columns are the same values and Arrow types as the per-sentence way.

``pyarrow`` is imported inside the functions that build columns: ``nmt.data.batching`` imports
this module, and translation (which batches with it but never encodes a corpus) should not load
pyarrow: its import holds about 1.7 MB of Python objects that the memory of ``nmt translate`` is
measured against.
"""
from __future__ import annotations

from itertools import chain
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from nmt.data.vocab import EOS_ID

if TYPE_CHECKING:
    import pyarrow as pa

# reasons for dropping a training pair (column ``_drop`` during encoding)
KEEP, EMPTY, TOO_SHORT, TOO_LONG, RATIO = 0, 1, 2, 3, 4


def lengths(ids: Sequence[Sequence[int]]) -> np.ndarray:
    """(N,) int64: the number of ids of each sequence."""
    return np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))


def with_eos(ids: Sequence[Sequence[int]], lens: np.ndarray) -> "pa.ListArray":
    """``ids`` with ``EOS_ID`` appended to each sequence, as an Arrow ``list<int32>`` array.

    ``lens``: (N,) the lengths of ``ids`` (without EOS). Values are one flat int32 array and the
    offsets the running sum of ``lens + 1``, so no Python list is built per sentence.
    """
    import pyarrow as pa

    ends = np.cumsum(lens + 1)
    offsets = np.zeros(len(lens) + 1, dtype=np.int32)
    offsets[1:] = ends
    total = int(ends[-1]) if len(lens) else 0
    values = np.full(total, EOS_ID, dtype=np.int32)
    is_id = np.ones(total, dtype=bool)
    is_id[ends - 1] = False  # the last slot of each row holds EOS
    values[is_id] = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=total - len(lens))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def drop_reasons(src_lens: np.ndarray, tgt_lens: np.ndarray, max_len: Optional[int],
                 max_ratio: Optional[float], min_len: int) -> np.ndarray:
    """(N,) int8 reason to drop each pair (``KEEP`` = 0 keeps it), from lengths without EOS.

    The first rule that applies wins: an empty side (kept when ``min_len`` is 0, whatever else),
    fewer than ``min_len`` subwords on a side, more than ``max_len``, longer/shorter above
    ``max_ratio``. Rules are written from last to first so that earlier ones overwrite.
    """
    shorter, longer = np.minimum(src_lens, tgt_lens), np.maximum(src_lens, tgt_lens)
    reasons = np.full(len(shorter), KEEP, dtype=np.int8)
    if max_ratio is not None:
        ratio = np.divide(longer, shorter, out=np.zeros(len(shorter)), where=shorter > 0)
        reasons[ratio > max_ratio] = RATIO
    if max_len is not None:
        reasons[longer > max_len] = TOO_LONG
    reasons[shorter < min_len] = TOO_SHORT
    reasons[shorter == 0] = EMPTY if min_len > 0 else KEEP
    return reasons


def encoded_columns(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]],
                    drop: Optional[dict]) -> "dict[str, pa.Array]":
    """``src_ids``, ``tgt_ids`` (ending in EOS), ``src_len``, ``tgt_len`` (counting it) and, when
    ``drop`` holds the filter settings (``max_len``, ``max_ratio``, ``min_len``), ``_drop``."""
    import pyarrow as pa

    src_lens, tgt_lens = lengths(src), lengths(tgt)
    out = {"src_ids": with_eos(src, src_lens), "tgt_ids": with_eos(tgt, tgt_lens),
           "src_len": pa.array((src_lens + 1).astype(np.int32)),
           "tgt_len": pa.array((tgt_lens + 1).astype(np.int32))}
    if drop is not None:
        out["_drop"] = pa.array(drop_reasons(src_lens, tgt_lens, **drop))
    return out

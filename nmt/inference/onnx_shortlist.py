"""A lexical shortlist for the ONNX engine, without torch: the lexicon an export holds beside its
graphs (``nmt export`` copies the run's ``lexicon.safetensors``) read with numpy, and the batch's
shortlist computed as :meth:`nmt.inference.shortlist.Lexicon.columns` computes it.

The step graph gives log-probabilities over the whole target vocabulary; the engine keeps the
batch's shortlist columns, sets those outside each sentence's own shortlist to -inf and normalises
each row again over what is left, so a token outside a sentence's shortlist has probability 0, as
with the torch engine (whose output layer computes the shortlist's logits only).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nmt.data.vocab import N_SPECIAL
from nmt.errors import NmtError
from nmt.inference.ops_numpy import numpy_ops
from nmt.inference.constraints import constraint_ids
from nmt.inference.sentence_shortlist import allow_constraints, outside_own_shortlist

__all__ = ["LexiconTable", "log_normaliser", "check_lexicon_sizes"]


class LexiconTable:
    """``top_ids (src_vocab, keep)`` best translations per source id (-1 = none) and
    ``by_frequency (tgt_vocab,)`` target ids, most frequent first."""

    def __init__(self, top_ids: np.ndarray, by_frequency: np.ndarray):
        self.top_ids = top_ids.astype(np.int64)
        self.by_frequency = by_frequency.astype(np.int64)

    @property
    def tgt_vocab_size(self) -> int:
        return self.by_frequency.size

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LexiconTable":
        from safetensors.numpy import load_file

        path = Path(path)
        try:
            arrays = load_file(str(path))
            return cls(arrays["top_ids"], arrays["by_frequency"])
        except Exception as exc:
            raise NmtError(f"lexicon {path} is corrupt or incomplete ({type(exc).__name__}: {exc}); "
                           "copy the run's lexicon.safetensors into the export directory again") from None

    def columns(self, src: np.ndarray, src_mask: np.ndarray, per_source: int, frequent: int) -> np.ndarray:
        """The shortlist of a batch: sorted target ids ``(L,)``, ids 0..3 first (at columns 0..3)."""
        if per_source > self.top_ids.shape[1]:
            raise NmtError(f"shortlist of {per_source} translations per source subword, but the "
                           f"lexicon keeps {self.top_ids.shape[1]}; rebuild it with `nmt shortlist RUN_DIR "
                           f"--keep {per_source}`, export again, or use a smaller shortlist")
        candidates = self.top_ids[src[src_mask]][:, :per_source].reshape(-1)
        return np.unique(np.concatenate([np.arange(N_SPECIAL), self.by_frequency[:frequent],
                                         candidates[candidates >= 0]]))

    def shortlist(self, src: np.ndarray, src_mask: np.ndarray, per_source: int, frequent: int,
                  constraints=None) -> tuple[np.ndarray, np.ndarray]:
        """The batch's shortlist ``columns (L,)`` (:meth:`columns`) and ``outside (B, L)`` bool, True
        where a column is not in sentence b's own (:mod:`nmt.inference.sentence_shortlist`); each
        sentence's ``constraints`` (its terms' target ids) join its own."""
        columns = self.columns(src, src_mask, per_source, frequent)
        columns = np.union1d(columns, np.asarray(constraint_ids(constraints), dtype=columns.dtype))
        outside = outside_own_shortlist(numpy_ops, self.top_ids, self.by_frequency, columns, src, src_mask,
                                        per_source, frequent)
        allow_constraints(outside, lambda ids: np.searchsorted(columns, ids), constraints)
        return columns, outside


def check_lexicon_sizes(path: str | os.PathLike, table_shape: tuple[int, ...], tgt_entries: int,
                        largest_id: int, src_vocab: int, tgt_vocab: int) -> None:
    """A lexicon's table ``(source entries, keep)``, its ``tgt_entries`` frequency-ordered target
    ids and its ``largest_id`` fit a model of ``src_vocab`` / ``tgt_vocab`` pieces; raises NmtError."""
    if table_shape[0] == src_vocab and tgt_entries == tgt_vocab and largest_id < tgt_vocab:
        return
    run = Path(path).parent
    raise NmtError(f"lexicon {path} was built for {table_shape[0]} source and {tgt_entries} target pieces, "
                   f"but the model has {src_vocab} and {tgt_vocab}: it belongs to another run. Rebuild it "
                   f"with `nmt shortlist {run}` (or decode without --shortlist)")


def log_normaliser(values: np.ndarray) -> np.ndarray:
    """Row-wise ``log Σ exp(values)`` of ``(N, L)`` float32 values: ``(N,)`` float32."""
    top = values.max(axis=1, keepdims=True)
    return (np.log(np.exp(values - top).sum(axis=1, dtype=np.float32)) + top[:, 0]).astype(np.float32)

"""Each sentence of a batch decodes over its own lexical shortlist, for both engines: a sentence's
translation and scores do not depend on the other sentences in its batch. Nothing here imports torch.

The output layer is computed once for the batch, over the union of the sentences' shortlists
(one GEMM, ``(rows, L)``). Each row then sets the columns outside its own sentence's shortlist to
-inf *before* the log-normaliser, so its log-probabilities are normalised over its own shortlist:

    log p(t | ...) = logit_t - log Σ_{c in own(sentence)} exp(logit_c)

``own(sentence)`` is what :meth:`nmt.inference.shortlist.Lexicon.columns` gives for that sentence
alone (the special ids, the ``frequent`` most frequent target ids, and the ``per_source`` best
translations of each of its source ids). The union's columns outside it are exactly zero in the sum,
so a row's values are those of its sentence decoded alone up to float rounding.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from nmt.data.vocab import N_SPECIAL

__all__ = ["outside_own_shortlist", "allow_constraints", "outside_penalty", "mask_outside", "ShortlistMemory"]


def outside_own_shortlist(ops, top_ids, by_frequency, columns, src, src_mask, per_source: int,
                          frequent: int):
    """``(B, L)`` bool: True where column ``c`` (target id ``columns[c]``) of the batch's shortlist
    is not in sentence ``b``'s own.

    ``top_ids (src_vocab, keep)`` best translations per source id (-1 = none), ``by_frequency
    (tgt_vocab,)``, ``columns (L,)`` the batch's sorted shortlist, ``src (B, S)`` with ``src_mask``
    (padding contributes nothing). Works on torch tensors and numpy arrays (``ops``).
    """
    batch, width = src.shape[0], src.shape[1]
    n_columns = ops.size(columns)
    column_of = ops.zeros((ops.size(by_frequency),), ops.long)  # target id -> column
    column_of[columns] = ops.arange(n_columns)
    own = ops.zeros((batch, n_columns), ops.boolean)
    own[:, :N_SPECIAL] = True
    own[:, column_of[by_frequency[:frequent]]] = True
    sentence = ops.repeat_each(ops.arange(batch), width).reshape(batch, width)[src_mask]  # (n,)
    candidates = ops.rows(top_ids[:, :per_source], src[src_mask])  # (n, per_source)
    sentence = ops.repeat_each(sentence, candidates.shape[1])
    candidates = candidates.reshape(-1)
    found = candidates >= 0
    own[sentence[found], column_of[candidates[found]]] = True
    return ~own


def allow_constraints(outside, columns_of_ids: Callable[[list[int]], Any], constraints) -> None:
    """Put each sentence's constraint tokens into its own shortlist (in place on ``outside (B, L)``):
    a sentence's terms must be reachable however its batch is made up, and no other sentence's are.

    ``constraints``: per sentence, its terms as target-id sequences (or None); ``columns_of_ids``
    maps target ids (all in the batch's columns) to their columns."""
    for b, terms in enumerate(constraints or []):
        ids = sorted({int(i) for term in terms or [] for i in term})
        if ids:
            outside[b, columns_of_ids(ids)] = False


def outside_penalty(ops, outside, dtype):
    """``(B, L)`` of ``dtype``: 0 in a sentence's own columns, -inf outside (``outside`` bool).

    Adding it to the scores is exact (``x + 0 == x``) and, on a CPU, an order of magnitude cheaper
    than writing -inf through a boolean mask (``masked_fill``) at every step."""
    return ops.masked_fill(ops.zeros(tuple(outside.shape), dtype), outside, -math.inf)


def mask_outside(scores, penalty):
    """``scores (N, L)`` with the columns outside each row's own shortlist at -inf (``penalty``:
    :func:`outside_penalty` of the rows): applied before the log-normaliser, it normalises each
    row over its own shortlist."""
    return scores + penalty


class ShortlistMemory:
    """An engine's attention memory with each memory row's ``penalty`` (:func:`outside_penalty`)
    and, optionally, ``own (B, K)``: each row's own columns (an engine that normalises a row over
    those only); search only passes it back and selects its rows. ``chunks``: what an engine
    computes the output layer by, set at its first step (an object with ``select(index)``, which
    gives None when the engine should build a new one).

    The memory holds one row per sentence or one per beam; a step's ``rows`` are beams, each
    sentence's side by side, so :meth:`penalty_rows` and :meth:`own_rows` repeat each memory row's.
    """

    def __init__(self, memory: Any, penalty: Any, own: Any = None, chunks: Any = None):
        self.memory, self.penalty, self.own, self.chunks = memory, penalty, own, chunks
        self._rows: tuple[int, Any, Any] | None = None  # the last repeat, reused while rows do not change

    def select(self, select_rows: Callable[[Any, Any], Any], index,
               take: Callable[[Any, Any], Any]) -> "ShortlistMemory":
        """Rows ``index`` of the memory (``select_rows``: the engine's), of the penalties and own
        columns (``take(array, index)``: the engine's ``ops.rows``)."""
        return ShortlistMemory(select_rows(self.memory, index), take(self.penalty, index),
                               None if self.own is None else take(self.own, index),
                               None if self.chunks is None else self.chunks.select(index))

    def penalty_rows(self, ops, rows: int):
        """``(rows, L)``: the penalty of each step row."""
        return self._repeated(ops, rows)[0]

    def own_rows(self, ops, rows: int):
        """``(rows, K)``: the own columns of each step row (None if not given)."""
        return self._repeated(ops, rows)[1]

    def _repeated(self, ops, rows: int):
        have = self.penalty.shape[0]
        if rows == have:
            return self.penalty, self.own
        if self._rows is None or self._rows[0] != rows:
            if rows % have:
                raise ValueError(f"{rows} step rows for {have} memory rows")
            index = ops.repeat_each(ops.arange(have), rows // have)
            own = None if self.own is None else ops.rows(self.own, index)
            self._rows = (rows, ops.rows(self.penalty, index), own)
        return self._rows[1], self._rows[2]

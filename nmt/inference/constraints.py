"""Lexical constraints of beam search (:class:`nmt.inference.beam.ConstrainedBeamSearch`): target
token sequences that every output of a sentence must contain, each exactly once and contiguously.
Nothing here imports torch: the arrays are the engine's, reached through its ``ops``.

Bookkeeping
-----------
Each hypothesis keeps, for each constraint ``c`` of its sentence (``n = len(c)`` tokens):

- ``state``: the length of the longest prefix of ``c`` that is a suffix of the hypothesis (the
  automaton of Knuth, Morris and Pratt), so a constraint that is started, broken off and started
  again, or that overlaps itself, is followed exactly;
- ``count``: how many times ``c`` occurs in the hypothesis (contiguously; overlapping occurrences
  count). A token that would make it occur a second time is forbidden, and EOS is forbidden while
  some constraint has not occurred.

The automaton needs, per constraint, ``border[s, j]``: whether the first ``j - 1`` tokens of ``c``
are the last ``j - 1`` of its first ``s``. From state ``s`` token ``t`` leads to the largest ``j``
with ``border[s, j]`` and ``c[j - 1] == t`` (0 if none); ``j == n`` is an occurrence.

Beam allocation
---------------
Dynamic beam allocation (Post & Vilar 2018, *Fast Lexically Constrained Decoding with Dynamic Beam
Allocation for Neural Machine Translation*), in the vectorised form of Hu et al. 2019 (*Improved
Lexically Constrained Decoding for Translation and Monolingual Rewriting*): a hypothesis's *bank*
is the number of constraint tokens it has met: all the tokens of the constraints that occurred,
plus the longest match in progress (``state``) among the others. Only one partial match counts,
so that following a constraint always climbs a bank, also when several constraints begin alike.
The candidates are ranked within their bank by score, and the beam takes the best of every bank,
highest bank first, then the second best of every bank, and so on (:func:`allocate`): each bank
gets an equal share, and the share of an empty bank goes to the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID
from nmt.errors import NmtError
from nmt.inference.alignment import word_indices

__all__ = ["ConstraintSpan", "Constraints", "allocate", "check_constraints", "constraint_ids",
           "constraint_spans", "occurrences"]


def occurrences(tokens: Sequence[int], constraint: Sequence[int]) -> int:
    """How many times ``constraint`` occurs contiguously in ``tokens`` (overlaps count)."""
    n = len(constraint)
    return sum(1 for i in range(len(tokens) - n + 1) if list(tokens[i: i + n]) == list(constraint))


@dataclass(frozen=True)
class ConstraintSpan:
    """Where one constraint is in a hypothesis: ``term`` as given, ``tokens`` the ``[start, end)``
    target pieces of its first occurrence (None when it does not occur), ``words`` the 0-based
    indices of the whitespace-separated words of the translation those pieces belong to."""

    term: str
    tokens: tuple[int, int] | None
    words: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"term": self.term, "tokens": None if self.tokens is None else list(self.tokens),
                "words": list(self.words)}


def constraint_spans(tokens: Sequence[int], pieces: Sequence[str], terms: Sequence[str],
                     ids: Sequence[Sequence[int]]) -> list[ConstraintSpan]:
    """Each term's :class:`ConstraintSpan` in a hypothesis of target ``tokens`` (ids) and ``pieces``;
    ``ids[k]``: the target ids of ``terms[k]``."""
    words = word_indices(pieces)
    out = []
    for term, c in zip(terms, ids):
        n, at = len(c), None
        for i in range(len(tokens) - n + 1 if n else 0):
            if list(tokens[i: i + n]) == list(c):
                at = (i, i + n)
                break
        found = () if at is None else tuple(sorted({w for w in words[at[0]: at[1]] if w is not None}))
        out.append(ConstraintSpan(term, at, found))
    return out


def check_constraints(constraints: Sequence[Sequence[int]], vocab_size: int | None = None) -> list[list[int]]:
    """One sentence's constraints as lists of target ids: empty ones dropped, repeated ones kept
    once (a term cannot occur exactly once twice). PAD, BOS and EOS are refused."""
    out: list[list[int]] = []
    for c in constraints:
        ids = [int(i) for i in c]
        bad = [i for i in ids
               if i in (PAD_ID, BOS_ID, EOS_ID) or i < 0 or (vocab_size is not None and i >= vocab_size)]
        if bad:
            raise NmtError(f"constraint {ids}: target ids {bad} cannot be generated")
        if ids and ids not in out:
            out.append(ids)
    return out


def constraint_ids(per_sentence: Sequence[Sequence[Sequence[int]] | None] | None) -> list[int]:
    """Every target id of the constraints, sorted (they join a lexical shortlist)."""
    return sorted({i for cs in per_sentence or [] for c in cs or [] for i in c})


def _borders(c: list[int], width: int) -> list[list[bool]]:
    """``border[s][j]`` for states ``s`` in 0..width-2 and ``j`` in 0..width-1 (see the module)."""
    n = len(c)
    table = [[False] * width for _ in range(width - 1)]
    for s in range(n + 1):
        for j in range(1, n + 1):
            table[s][j] = j - 1 <= s and c[: j - 1] == c[s - j + 1: s]
    return table


class Constraints:
    """The constraints of a batch's sentences as arrays: ``C`` constraints of at most ``L`` tokens
    per sentence (``per_sentence[b]``: lists of target ids; fewer are padded with constraints that
    count as met and never match).

    ``tok (B, C, L)`` their ids (PAD after the end), ``length (B, C)`` (``L + 1`` for padding),
    ``valid (B, C)``, ``border (B, C, L + 1, L + 2)`` and ``total`` the largest number of
    constraint tokens of a sentence (the highest bank).
    """

    def __init__(self, ops, per_sentence: Sequence[Sequence[Sequence[int]]]):
        sentences = [check_constraints(cs or []) for cs in per_sentence]
        self.ops = ops
        self.C = C = max(1, max(len(cs) for cs in sentences))
        self.L = L = max(1, max((len(c) for cs in sentences for c in cs), default=1))
        pad_c: list[int] = []
        tok, length, valid, border = [], [], [], []
        for cs in sentences:
            padded = cs + [pad_c] * (C - len(cs))
            tok.append([c + [PAD_ID] * (L - len(c)) for c in padded])
            length.append([len(c) if c else L + 1 for c in padded])
            valid.append([bool(c) for c in padded])
            border.append([_borders(c, L + 2) for c in padded])
        self.tok = ops.as_array(tok, ops.long)
        self.length = ops.as_array(length, ops.long)
        self.valid = ops.as_array(valid, ops.boolean)
        self.border = ops.as_array(border, ops.boolean)
        self.needed = ops.as_array([sum(len(c) for c in cs) for cs in sentences], ops.long)
        self.total = int(max(sum(len(c) for c in cs) for cs in sentences))
        self.cidx = ops.arange(C)
        self.jidx = ops.as_array(list(range(1, L + 1)), ops.long)

    def start(self, sentences):
        """``(state, count)`` of a fresh hypothesis of each of ``sentences (N,)``: ``(N, C)`` each."""
        ops = self.ops
        state = ops.zeros((ops.size(sentences), self.C), ops.long)
        count = ops.as_long(~self.valid[sentences])  # padding counts as met
        return state, count

    def forbid_(self, engine, scores, sentences, state, count) -> None:
        """Set to -inf in ``scores (N, cols)``: EOS of rows with a constraint not met yet, and each
        token that would make a met constraint occur again (rows of ``sentences (N,)``)."""
        ops = self.ops
        unmet = (count == 0).any(1)
        ops.scatter_(scores, (ops.as_long(unmet) * EOS_ID + PAD_ID)[:, None], -math.inf)  # PAD: never generated
        length = self.length[sentences]  # (N, C)
        closes = self.border[sentences[:, None], self.cidx[None, :], state, length]  # (N, C)
        last = self.tok[sentences[:, None], self.cidx[None, :], ops.clamp_min(length - 1, 0) % self.L]
        again = closes & (count >= 1)
        ops.scatter_(scores, engine.to_columns(ops.where(again, last, PAD_ID)), -math.inf)

    def next_tokens(self, sentences, state, count):
        """``(N, C)`` target ids: the token that advances each constraint not met yet (PAD for the others)."""
        ops = self.ops
        ahead = self.tok[sentences[:, None], self.cidx[None, :], ops.clamp_min(state, 0) % self.L]
        return ops.where((count == 0) & self.valid[sentences], ahead, PAD_ID)

    def advance(self, sentences, state, count, tokens):
        """States and counts ``(N, C)`` after ``tokens (N,)``."""
        ops = self.ops
        rows = self.border[sentences[:, None], self.cidx[None, :], state]  # (N, C, L + 2)
        hit = rows[:, :, 1: self.L + 1] & (self.tok[sentences] == tokens[:, None, None])  # (N, C, L)
        new_state = ops.amax(ops.as_long(hit) * self.jidx)
        return new_state, count + ops.as_long(new_state == self.length[sentences])

    def progress(self, sentences, state, count):
        """``(N,)`` the bank: the tokens of the constraints that occurred, plus the longest match in
        progress of one that has not (the others' partial matches share their tokens with it or
        are given up by it, so they do not count)."""
        ops = self.ops
        valid = self.valid[sentences]
        met = ops.where(count >= 1, self.length[sentences], 0) * ops.as_long(valid)
        going = ops.where((count == 0) & valid, state, 0)
        return met.sum(-1) + ops.amax(going)


def allocate(ops, val, bank, k: int, banks: int):
    """Dynamic beam allocation: ``(n, M)`` candidate scores and banks (0..``banks``) -> ``(n, k)``
    column indices of the chosen ones, best score first.

    Candidates are ranked within their bank by score; the order is (rank, bank from the highest)
    and the first ``k`` are chosen. Candidates of score -inf come last.
    """
    M = val.shape[1]
    sorted_val, order = ops.sort_descending(val)
    sorted_bank = ops.gather(bank, order)
    ar = ops.arange(M)
    earlier = ar[None, :] < ar[:, None]  # (M, M): j before i
    rank = ((sorted_bank[:, :, None] == sorted_bank[:, None, :]) & earlier[None]).sum(-1)
    key = ops.to_float(rank * (banks + 1) + (banks - sorted_bank))
    key = ops.masked_fill(key, ~ops.isfinite(sorted_val), math.inf)
    _, pos = ops.topk(-key, min(k, M))  # positions in score order
    pos_sorted, _ = ops.sort_descending(-pos)
    return ops.gather(order, -pos_sorted)

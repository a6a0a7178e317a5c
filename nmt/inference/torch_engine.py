"""The PyTorch engine of search (:mod:`nmt.inference.engine`): a :class:`~nmt.model.seq2seq.Seq2Seq`
or an :class:`~nmt.inference.ensemble.Ensemble`, with its search tables and an optional lexical
shortlist of the output layer.

Sentences and beams are rows of tensors; the attention memory is projected once per batch
(``model.start``). The step returns the model's logits as they are and the float32 log-normaliser
of their rows: search ranks and masks the logits and normalises only the few values it keeps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.data.vocab import N_SPECIAL
from nmt.errors import NmtError
from nmt.inference.constraints import constraint_ids
from nmt.inference.ensemble import Ensemble
from nmt.inference.ops_torch import TorchOps
from nmt.inference.sentence_shortlist import (
    ShortlistMemory,
    allow_constraints,
    mask_outside,
    outside_own_shortlist,
    outside_penalty,
)
from nmt.inference.shortlist import padded_columns
from nmt.kernels import ShortlistChunks, batch_invariant, shortlist_chunks_apply
from nmt.kernels.rows import coarse_count, row_multiple

__all__ = ["TorchEngine", "check_eval", "LogNormaliser", "OutputShortlist", "SingleModel", "search_model"]


class LogNormaliser:
    """Row-wise ``log Σ_v exp(logits[:, v])`` of ``(N, V)`` logits, in float32: ``(N, V) -> (N,)``.

    ``log_probs = logits - log_norm[:, None]`` without writing that matrix: search needs the
    log-probabilities of the few tokens it keeps only. One float32 scratch matrix is reused for
    every step of a search (a fresh (N, V) allocation per step makes ``torch.logsumexp``
    much slower on CPU); bfloat16 logits are widened on the way into it.

    ``ordered``: sum each row's terms one after the other
    (:func:`nmt.kernels.batch_invariant.ordered_sum`), so that a row's normaliser does not depend
    on the columns between its own (a batch's shortlist is the union of its sentences').

    ``columns (N, K)``: each row's own columns (:func:`own_columns`), the others of the row being
    -inf: only those are read. The sum is the same, since the columns left out add exact zeros to
    the ordered sum, and K is a few times smaller than a batch's union of shortlists.
    """

    def __init__(self, ordered: bool = False) -> None:
        self.scratch: Tensor | None = None
        self.ordered = ordered

    def __call__(self, logits: Tensor, columns: Tensor | None = None) -> Tensor:
        if columns is not None:
            logits = logits.gather(1, columns)
        rows, vocab = logits.shape
        if self.scratch is None or self.scratch.size(0) < rows or self.scratch.size(1) != vocab \
                or self.scratch.device != logits.device:
            self.scratch = torch.empty(rows, vocab, dtype=torch.float32, device=logits.device)
        shifted = self.scratch[:rows]
        top = logits.amax(dim=1, keepdim=True).float()
        torch.sub(logits, top, out=shifted)
        exp = shifted.exp_()
        total = batch_invariant.ordered_sum(exp) if self.ordered else exp.sum(dim=1)
        return total.log_().add_(top.squeeze(1))


def own_columns(outside: Tensor) -> Tensor:
    """``outside (B, L)`` bool -> ``(B, K)`` long: each row's own columns (False in ``outside``)
    in ascending order, K the most own columns of a row; a row with fewer is filled up with its
    first outside column (-inf in the scores, so its terms are zeros)."""
    own = ~outside
    counts = own.sum(1)
    rows, cols = own.nonzero(as_tuple=True)  # row-major: each row's columns ascending
    place = torch.arange(rows.numel(), device=outside.device) - (counts.cumsum(0) - counts)[rows]
    index = outside.to(torch.uint8).argmax(1, keepdim=True).expand(-1, int(counts.max())).contiguous()
    index[rows, place] = cols
    return index


def own_argmax(scores: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
    """``scores (N, L)``, -inf outside each row's ``own (N, K)`` columns (:func:`own_columns`) ->
    ``scores.max(dim=-1)``: each row's largest score and its first column, reading K columns."""
    values, at = scores.gather(1, own).max(dim=-1)
    return values, own.gather(1, at.unsqueeze(1)).squeeze(1)


class SingleModel:
    """A :class:`~nmt.model.seq2seq.Seq2Seq` with what search asks of a model beyond its step
    interface; an :class:`~nmt.inference.ensemble.Ensemble` offers the same itself."""

    def __init__(self, model):
        self.model = model
        #: local-p attention predicts a source position per step
        self.reports_positions = model.cfg.attention.kind == "local-p"

    @staticmethod
    def log_normaliser(ordered: bool = False):
        return LogNormaliser(ordered)

    def shortlist_output(self, columns: Tensor) -> tuple[Tensor, Tensor]:
        from nmt.inference.shortlist import shortlist_output

        return shortlist_output(self.model, columns)

    def teacher_forced_log_probs(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor,
                                 tgt_in: Tensor) -> Tensor:
        """``(batch, tgt_len, V)`` float32 log-probabilities of every target token."""
        readout, _ = self.model.teacher_force(src, src_lengths, src_mask, tgt_in)
        return F.log_softmax(self.model.output(readout).float(), dim=-1)


def search_model(model) -> SingleModel | Ensemble:
    """``model`` with the search interface of :class:`SingleModel`."""
    if isinstance(model, Ensemble):
        return model
    return SingleModel(model)


@dataclass
class OutputShortlist:
    """The output layer restricted to ``columns``, the union of the batch's sentences' own
    shortlists: search scores ``(rows, L)`` logits instead of ``(rows, V)`` and maps a chosen column
    ``c`` back to the target id ``columns[c]``. Each sentence's rows set the columns ``outside``
    its own shortlist to -inf before normalising (:mod:`nmt.inference.sentence_shortlist`), so a
    sentence's output does not depend on the rest of its batch.

    ``columns`` are sorted target ids that start with 0..3 (PAD, UNK, BOS, EOS), so the special
    tokens keep their ids as column indices; ``column_of`` maps any target id to its column (ids
    outside the shortlist to column 0, PAD, which is never generated).
    """

    columns: Tensor  #: (L,) target ids
    weight: Tensor  #: (L, D) rows of the output layer (an ensemble: a list, one per member)
    bias: Tensor  #: (L,)
    column_of: Tensor  #: (V,) target id -> column
    outside: Tensor  #: (B, L) bool, True where a column is not in sentence b's own shortlist

    @classmethod
    def of(cls, model, lexicon, src: Tensor, src_mask: Tensor, options: DecodeConfig,
           constraints=None) -> "OutputShortlist":
        """``constraints``: per sentence, its terms' target ids, which join its own shortlist."""
        columns = lexicon.columns(src, src_mask, options.shortlist, options.shortlist_frequent)
        columns = torch.unique(torch.cat([columns, columns.new_tensor(constraint_ids(constraints))]))
        if row_multiple(next(model.parameters())) > 1:  # bf16 on the CPU: a kernel per width
            columns = padded_columns(columns, lexicon.by_frequency, coarse_count(columns.numel()))
        vocab = model.tgt_vocab_size
        if lexicon.tgt_vocab_size != vocab or int(columns[-1]) >= vocab:
            raise NmtError(f"the lexicon is for a target vocabulary of {lexicon.tgt_vocab_size}, the model "
                           f"has {vocab}; rebuild it with `nmt shortlist RUN_DIR`")
        assert columns[:N_SPECIAL].tolist() == list(range(N_SPECIAL))
        weight, bias = search_model(model).shortlist_output(columns)
        column_of = torch.zeros(vocab, dtype=torch.long, device=src.device)
        column_of[columns] = torch.arange(columns.numel(), device=src.device)
        outside = outside_own_shortlist(TorchOps(src.device), lexicon.top_ids.to(src.device),
                                        lexicon.by_frequency.to(src.device), columns, src, src_mask,
                                        options.shortlist, options.shortlist_frequent)
        allow_constraints(outside, lambda ids: column_of[ids], constraints)
        return cls(columns, weight, bias, column_of, outside)


def check_eval(model) -> None:
    if model.training:
        raise ValueError("search needs the model in eval mode (call model.eval() first): "
                         "dropout would make the search random")


class TorchEngine:
    """``model`` (eval mode) as a search engine: see :mod:`nmt.inference.engine` for the methods.

    ``tables``: the model's :meth:`~nmt.model.seq2seq.Seq2Seq.search_tables` (None: the plain
    step). The fast step (with tables) shares a sentence's memory row between its beams; the plain
    step gives every beam row its own copy.
    """

    def __init__(self, model, tables, shortlist: OutputShortlist | None, device):
        check_eval(model)
        self.model, self.tables, self.shortlist = model, tables, shortlist
        self.ops = TorchOps(device)
        self.shares_memory = tables is not None
        adapted = self.adapted = search_model(model)
        self.with_positions = adapted.reports_positions
        # the fast step's rows do not depend on their batch; with a shortlist, neither must the sum
        # over a row's own columns, which the batch's other sentences spread apart
        ordered = tables is not None and shortlist is not None
        self.normaliser = adapted.log_normaliser(ordered=ordered)
        # an ordered sum adds a row's outside columns as exact zeros: it may read its own columns only
        self.own_only = ordered and isinstance(adapted, SingleModel)
        self.output = None if shortlist is None else (shortlist.weight, shortlist.bias)
        # a row's own columns are all it reads: products per chunk of rows over their columns only
        self.chunked = self.own_only and shortlist_chunks_apply(shortlist.weight)

    def begin(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor, fold_context: bool):
        enc = self.model.encode(src, src_lengths, src_mask, tables=self.tables)
        state, memory = self.model.start(enc, self.tables, fold_context=fold_context)
        return state, self.with_shortlist(memory)

    def with_shortlist(self, memory):
        """The model's ``memory`` (one row per sentence of the shortlist) as the step reads it:
        with a shortlist, each row carries its sentence's own columns."""
        if self.shortlist is None:
            return memory
        weight = self.shortlist.weight
        dtype = (weight[0] if isinstance(weight, list) else weight).dtype  # the logits'
        outside = self.shortlist.outside
        return ShortlistMemory(memory, outside_penalty(self.ops, outside, dtype),
                               own_columns(outside) if self.own_only else None)

    def step(self, prev_tokens: Tensor, state, memory):
        model_memory = memory if self.shortlist is None else memory.memory
        if not isinstance(self.adapted, SingleModel):  # an ensemble's step gives its mean log-probabilities
            rows = prev_tokens.size(0)
            penalty = None if self.shortlist is None else memory.penalty_rows(self.ops, rows)
            logits, out = self.adapted.step_logits(prev_tokens, state, model_memory, self.output, self.tables,
                                                   penalty)
            return logits, self.normaliser(logits), out
        out = self.model.step_readout(prev_tokens, state, model_memory, self.tables)
        return (*self.scores(out.readout, memory), out)

    def scores(self, readout: Tensor, memory) -> tuple[Tensor, Tensor]:
        """A single model's ``(logits, log_norm)`` of a step from its ``readout (rows, D)``;
        ``memory``: the step's (with a shortlist, a :class:`ShortlistMemory` of these rows'
        sentences; its model memory is not read)."""
        if self.chunked:
            own = memory.own_rows(self.ops, readout.size(0))  # checks the rows against the memory's
            chunks = self.chunks_of(memory, own.size(0))
            if chunks.pays:
                own_logits = chunks.own_logits(readout)
                scores = chunks.scores(own_logits, own, self.shortlist.columns.numel())
                return scores, self.normaliser(own_logits)
        logits = self.model.logits(readout, self.output, self.tables)
        if self.shortlist is None:
            return logits, self.normaliser(logits)
        rows = readout.size(0)
        logits = mask_outside(logits, memory.penalty_rows(self.ops, rows).to(logits.dtype))
        if self.own_only:
            return logits, self.normaliser(logits, memory.own_rows(self.ops, rows))
        return logits, self.normaliser(logits)  # the normaliser before search's masking: no renormalisation

    def chunks_of(self, memory: ShortlistMemory, rows: int) -> ShortlistChunks:
        """The :class:`~nmt.kernels.shortlist_chunks.ShortlistChunks` of ``memory`` for a step of
        ``rows`` rows: built at its first step, selected with its rows after that."""
        memory_rows = memory.penalty.size(0)  # dividing ``rows`` (ShortlistMemory.own_rows checks)
        chunks = memory.chunks
        if chunks is None or chunks.per_row * memory_rows != rows:
            outside = memory.penalty != 0  # the penalty is -inf outside a row's own columns, 0 in them
            chunks = memory.chunks = ShortlistChunks(
                self.shortlist.weight, self.shortlist.bias, outside, memory.own, rows // memory_rows)
        return chunks

    def best(self, scores: Tensor, memory) -> tuple[Tensor, Tensor]:
        """With each row's own columns known, only those are searched (the others are -inf): a
        batch's union of shortlists is many times wider, and ``max`` over it costs more than the
        output layer's bf16 GEMM. Own columns are ascending, so a tie goes to the same column."""
        if not self.own_only:
            return self.ops.argmax(scores)
        return own_argmax(scores, memory.own_rows(self.ops, scores.size(0)))

    @staticmethod
    def next_state(out):
        return out.state

    @staticmethod
    def attention(out) -> Tensor:
        return out.attention.float()

    @staticmethod
    def positions(out) -> Tensor:
        if out.positions is None:
            return torch.zeros(out.attention.size(0), device=out.attention.device)
        return out.positions.float()

    @staticmethod
    def select_state(state, index: Tensor):
        return state.select(index)

    @staticmethod
    def select_memory(memory, index: Tensor):
        if isinstance(memory, ShortlistMemory):
            return memory.select(lambda m, i: m.select(i), index, TorchOps.rows)
        return memory.select(index)

    def to_target(self, columns: Tensor) -> Tensor:
        return columns if self.shortlist is None else self.shortlist.columns.take(columns)

    def to_columns(self, ids: Tensor) -> Tensor:
        return ids if self.shortlist is None else self.shortlist.column_of.take(ids)

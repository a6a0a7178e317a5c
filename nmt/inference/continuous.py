"""Continuous batching: sentences join a beam search that is under way, and leave it when done.

A served model gets sentences one request at a time. Searched in separate calls, each call pays
the encoder's loop over its source positions and its own decoder steps, and the last steps of a
call run for its one or two longest sentences. Here every sentence that arrives joins the search
under way at its next step: the sentences that arrived together form a *cohort* (a
:class:`~nmt.inference.beam.BeamSearch` of their own, with their own step count, beams and pool),
and one decoder step runs the rows of every cohort together. A sentence's hypotheses are final
the step it is done, whatever the others do.

What is shared is the model's part of the step: the decoder state and attention memory of all
rows (the memory padded to the longest source, as in any batch). The output layer is each
cohort's own, over the union of its sentences' shortlists, each row normalised over its own
sentence's; and the fast step's rows do not depend on their batch
(:mod:`nmt.kernels.batch_invariant`). So a sentence gets the hypotheses and scores it gets
searched alone (tested); with ``kernels: reference`` a row's numbers depend on its batch as they
do offline. Joining costs an encoder call for the joining sentences and a copy of the memory.

:class:`JoiningSearch` works on token ids; :class:`ContinuousTranslation` on texts, as
:meth:`~nmt.inference.translator.Translator.translate` does (cleaning, truncation, sentence
splitting, detokenization), for the searches it can join (:func:`joinable`): beam search
(beam >= 2) of a single model without sampling, constraints, coverage penalty, attention,
alignments or markup.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import torch
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.inference.beam import BeamSearch
from nmt.inference.rules import Hypothesis
from nmt.inference.sentences import joined_result, split_sentences
from nmt.inference.sources import TranslationResult
from nmt.inference.torch_engine import OutputShortlist, TorchEngine

__all__ = ["JoiningSearch", "ContinuousTranslation", "joinable"]


def joinable(options: DecodeConfig, *, attention: bool = False, alignment: bool = False,
             constraints: bool = False, markup: bool = False) -> bool:
    """Whether a search with ``options`` can join others under way (see the module's docstring)."""
    return (options.beam >= 2 and not options.sample and not options.coverage_penalty
            and not (attention or alignment or constraints or markup))


class _CohortEngine:
    """The engine a cohort's :class:`BeamSearch` runs on: the model's part of the step is shared
    by every cohort (:class:`JoiningSearch` sets this cohort's rows of its output before each
    step); the output layer, the shortlist and its column mapping are the cohort's own
    (``own``, the engine of a batch of its sentences). The reorderings the search asks for are
    recorded, and the shared state and memory are reordered once for all cohorts."""

    def __init__(self, shared: "JoiningSearch", own: TorchEngine):
        self.shared, self.own = shared, own
        self.ops = own.ops
        self.shares_memory = own.shares_memory
        self.with_positions = own.with_positions
        self.begun: tuple[Any, Any] | None = None  #: the real first state and memory of the cohort
        self.shortlist_memory = None  #: each memory row's own columns (with a shortlist)
        self.state_index: Tensor | None = None  #: the rows the search keeps, as it asked last
        self.memory_index: Tensor | None = None
        self.rows = slice(0, 0)  #: the cohort's rows of the shared step

    def begin(self, src, src_lengths, src_mask, fold_context: bool):
        self.begun = self.shared.plain.begin(src, src_lengths, src_mask, fold_context)
        self.shortlist_memory = self.own.with_shortlist(None)
        return "state", "memory"

    def step(self, prev_tokens, state, memory):
        scores, log_norm = self.own.scores(self.shared.out.readout[self.rows], self.shortlist_memory)
        return scores, log_norm, "out"

    def attention(self, out) -> Tensor:
        return self.shared.out.attention[self.rows].float()

    def positions(self, out) -> Tensor:
        return self.own.positions(self.shared.out)[self.rows]

    @staticmethod
    def next_state(out):
        return out

    def select_state(self, state, index: Tensor):
        self.state_index = index
        return state

    def select_memory(self, memory, index: Tensor):
        self.memory_index = index
        if self.shortlist_memory is not None:
            self.shortlist_memory = self.shortlist_memory.select(lambda m, i: m, index, self.ops.rows)
        return memory

    def to_target(self, columns: Tensor) -> Tensor:
        return self.own.to_target(columns)

    def to_columns(self, ids: Tensor) -> Tensor:
        return self.own.to_columns(ids)


@dataclass
class _Cohort:
    search: BeamSearch
    engine: _CohortEngine
    tickets: list[Hashable]  #: what the caller calls each sentence


class JoiningSearch:
    """Beam search that sentences join at any step (see the module's docstring): :meth:`add`
    source id lists, then :meth:`step` until :attr:`running` is False; each step returns the
    sentences done at it with their hypotheses (best first, as :func:`~nmt.inference.search.search`
    gives them). Run under ``torch.inference_mode()`` (and the translator's autocast)."""

    def __init__(self, model, tables, lexicon, options: DecodeConfig, device: torch.device):
        if not joinable(options):
            raise ValueError("only beam search (beam >= 2, no sampling or coverage penalty) can join sentences")
        if options.shortlist and lexicon is None:
            raise ValueError("a shortlist search needs the run's lexicon")
        if not hasattr(model, "step_readout"):
            raise ValueError("sentences join the search of a single model, not of an ensemble")
        self.model, self.tables, self.lexicon, self.options = model, tables, lexicon, options
        self.device = torch.device(device)
        self.plain = TorchEngine(model, tables, None, device)  #: encodes, and reorders states and memories
        self.cohorts: list[_Cohort] = []
        self.state = self.memory = None  #: of every row
        self.out = None  #: the last step's output

    @property
    def running(self) -> bool:
        return bool(self.cohorts)

    @property
    def sentences(self) -> int:
        """Sentences under way."""
        return sum(int(c.search.active.numel()) for c in self.cohorts)

    def add(self, sources: Sequence[Sequence[int]], tickets: Sequence[Hashable]) -> None:
        """Sentences (source ids with EOS, as :func:`~nmt.inference.search.pad_sources` takes them)
        that join at the next step, each named by its ticket."""
        from nmt.inference.search import pad_sources

        src, lengths, mask = pad_sources(sources, self.device)
        shortlist = None
        if self.options.shortlist:
            shortlist = OutputShortlist.of(self.model, self.lexicon, src, mask, self.options)
        engine = _CohortEngine(self, TorchEngine(self.model, self.tables, shortlist, self.device))
        search = BeamSearch(engine, src, lengths, mask, self.options)
        state, memory = engine.begun
        state = state.select(engine.state_index)
        if engine.memory_index is not None:  # a memory row per beam
            memory = memory.select(engine.memory_index)
        engine.state_index = engine.memory_index = engine.begun = None
        if self.state is not None:
            state = type(state).cat([self.state, state])
            memory = type(memory).cat([self.memory, memory])
        self.state, self.memory = state, memory
        self.cohorts.append(_Cohort(search, engine, list(tickets)))

    def step(self) -> list[tuple[Hashable, list[Hypothesis]]]:
        """One step of every sentence under way: ``(ticket, hypotheses)`` of those done at it."""
        prev = torch.cat([c.search.prev for c in self.cohorts])
        self.out = self.model.step_readout(prev, self.state, self.memory, self.tables)
        at = 0
        for c in self.cohorts:
            rows = c.search.prev.numel()
            c.engine.rows = slice(at, at + rows)
            at += rows
        done: list[tuple[Hashable, list[Hypothesis]]] = []
        keep_rows, keep_memory, memory_at, memory_changed = [], [], 0, False
        for c in self.cohorts:
            rows = c.engine.rows
            memory_rows = (rows.stop - rows.start) // (self.options.beam if self.plain.shares_memory else 1)
            finished = c.search.next_step()
            if finished.numel():
                done += zip([c.tickets[i] for i in finished.tolist()], c.search.hypotheses_of(finished))
            if c.search.running:
                keep_rows.append(c.engine.state_index + rows.start)
                if c.engine.memory_index is not None:
                    keep_memory.append(c.engine.memory_index + memory_at)
                    memory_changed = True
                else:
                    keep_memory.append(torch.arange(memory_at, memory_at + memory_rows, device=self.device))
            else:
                memory_changed = True
            c.engine.state_index = c.engine.memory_index = None
            memory_at += memory_rows
        self.cohorts = [c for c in self.cohorts if c.search.running]
        if not self.cohorts:
            self.state = self.memory = self.out = None
            return done
        self.state = self.plain.select_state(self.plain.next_state(self.out), torch.cat(keep_rows))
        if memory_changed:
            self.memory = self.plain.select_memory(self.memory, torch.cat(keep_memory))
        return done


# ------------------------------------------------------------------------------------ on texts

@dataclass
class _Text:
    ticket: Hashable
    text: str
    parts: list[tuple[str, bool]]  #: its sentences, each with whether whitespace precedes it
    items: list[Any]  #: each sentence's Source
    found: dict[int, list[Hypothesis]] = field(default_factory=dict)
    given: list[Any] = field(default_factory=list)  #: each sentence's surrogate names (nmt.inference.names)


class ContinuousTranslation:
    """:class:`JoiningSearch` on texts, with a :class:`~nmt.inference.translator.Translator`'s
    cleaning, truncation, sentence splitting and detokenization: :meth:`add` texts, then
    :meth:`step` until :attr:`running` is False. Each text's result is the
    :class:`~nmt.inference.sources.TranslationResult` of ``translator.translate([text],
    return_scores=True, **options)``.

    ``options``: the search settings (``translator.decode_options(...)``); they must be
    :func:`joinable`."""

    def __init__(self, translator, options: DecodeConfig):
        self.translator, self.options = translator, options
        translator.resolve_precision(options)
        lexicon = translator._lexicon_for(options)
        with torch.inference_mode(), translator._autocast():
            self.search = JoiningSearch(translator.model, translator.search_tables(), lexicon, options,
                                        translator.device)
        self.texts: dict[Hashable, _Text] = {}
        self.language = translator.recipe.data.src_lang

    @property
    def running(self) -> bool:
        return self.search.running

    @property
    def sentences(self) -> int:
        """Sentences under way."""
        return self.search.sentences

    def add(self, texts: Sequence[str], tickets: Sequence[Hashable]) -> list[tuple[Hashable, TranslationResult]]:
        """Texts that join at the next step, each named by its ticket; returns the results of
        those with nothing to search (empty ones)."""
        entries = []
        for text, ticket in zip(texts, tickets):
            parts = split_sentences(text, self.language) if self.options.split_sentences else [(text, True)]
            entries.append(_Text(ticket, text, parts, []))
        protected, given = self.translator.protect_names([p for e in entries for p, _ in e.parts], self.options)
        items = self.translator.encode(protected, warn=True)
        at, sources, names, ready = 0, [], [], []
        for e in entries:
            e.items, e.given = items[at: at + len(e.parts)], given[at: at + len(e.parts)]
            at += len(e.parts)
            for k, item in enumerate(e.items):
                if item.ids is None:
                    e.found[k] = []
                else:
                    sources.append(item.ids)
                    names.append((e.ticket, k))
            if len(e.found) == len(e.parts):
                ready.append((e.ticket, self._result(e)))
            else:
                self.texts[e.ticket] = e
        if sources:
            with torch.inference_mode(), self.translator._autocast():
                self.search.add(sources, names)
        return ready

    def step(self) -> list[tuple[Hashable, TranslationResult]]:
        """One step of every sentence under way; the results of the texts done at it."""
        with torch.inference_mode(), self.translator._autocast():
            done = self.search.step()
        out = []
        for (ticket, k), hyps in done:
            e = self.texts[ticket]
            e.found[k] = hyps
            if len(e.found) == len(e.parts):
                del self.texts[ticket]
                out.append((ticket, self._result(e)))
        return out

    def _result(self, e: _Text) -> TranslationResult:
        tr = self.translator
        parts = []
        for k, ((text, at_space), item) in enumerate(zip(e.parts, e.items)):
            hyps = e.found[k]
            parts.append((tr._result(text, item, hyps or None, iter(tr.detokenize(hyps)), False, False,
                                     given=e.given[k]), at_space))
        return joined_result(tr, e.text, parts)

"""Input sentences and translation results, shared by every translation engine.

The PyTorch :class:`~nmt.inference.translator.Translator` and the onnxruntime
:class:`~nmt.inference.onnx_translator.OnnxTranslator` clean, encode, truncate and report input the
same way with these helpers, and return the same result types. Nothing here imports torch.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from nmt.data.text import clean_text
from nmt.data.vocab import EOS_ID
from nmt.errors import NmtError

if TYPE_CHECKING:
    from torch import Tensor

#: warnings of one kind printed before the rest are only counted
MAX_WARNINGS = 20

__all__ = ["TranslatedHypothesis", "TranslationResult", "Source", "WarningCounter", "clean_source",
           "make_sources", "warn_truncated", "shard_of", "checked_shard", "MAX_WARNINGS"]


# ------------------------------------------------------------------------------------- results

@dataclass
class TranslatedHypothesis:
    text: str  #: detokenized translation
    score: float  #: penalised search score (== log-probability without penalties)
    tokens: list[str]  #: target pieces, ending with "</s>" unless closed at the max length
    src_tokens: list[str]  #: source pieces the model saw (after truncation), ending with "</s>"
    attention: "Tensor | None" = None  #: (len(tokens), len(src_tokens)) when requested
    positions: "Tensor | None" = None  #: (len(tokens),) local-p predicted source positions
    token_log_probs: list[float] = field(default_factory=list)
    raw_score: float = 0.0  #: log-probability (sum of token_log_probs)
    #: (source word, target word) pairs from the attention (nmt.inference.alignment), when requested
    alignment: list[tuple[int, int]] | None = None
    #: with constraints (``translate(..., constraints=...)``): each occurs exactly once; else None
    constraints_met: bool | None = None
    #: with constraints: where each term is (nmt.inference.constraints.ConstraintSpan), else None
    constraint_spans: list | None = None


@dataclass
class TranslationResult:
    source: str  #: the input as given
    hypotheses: list[TranslatedHypothesis]  #: best first

    @property
    def text(self) -> str:
        return self.hypotheses[0].text if self.hypotheses else ""


@dataclass
class Source:
    """One input sentence after cleaning and encoding."""

    index: int  #: position in the caller's list
    line: int  #: 1-based line number for messages
    text: str  #: cleaned text
    ids: list[int] | None  #: source ids ending in EOS; None for an empty input
    n_pieces: int = 0  #: subwords before truncation


# ------------------------------------------------------------------------------------ cleaning

#: the one cleaning of text, shared with the training corpus (:mod:`nmt.data.text`)
clean_source = clean_text


class WarningCounter:
    """Warnings on stderr, at most MAX_WARNINGS per kind (then a count at :meth:`summary`)."""

    def __init__(self, prefix: str = "nmt translate"):
        self.prefix = prefix
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n <= MAX_WARNINGS:
            print(f"{self.prefix}: warning: {message}", file=sys.stderr, flush=True)
        if n == MAX_WARNINGS:
            print(f"{self.prefix}: warning: further {kind} warnings are only counted",
                  file=sys.stderr, flush=True)

    def summary(self) -> None:
        for kind, n in self.counts.items():
            if n > MAX_WARNINGS:
                print(f"{self.prefix}: warning: {n} lines in total had {kind}", file=sys.stderr,
                      flush=True)


# ------------------------------------------------------------------------------------ encoding

def make_sources(texts: Sequence[str], ids: Sequence[Sequence[int]], lines: Sequence[int],
                 max_input_len: int, keep_empty_as_eos: bool = False) -> list[Source]:
    """:class:`Source` records of cleaned ``texts`` and their subword ``ids`` (no EOS): truncated to
    ``max_input_len`` subwords, EOS appended; an empty input has ``ids=None`` (or the bare EOS
    with ``keep_empty_as_eos``)."""
    items = []
    for i, (text, row) in enumerate(zip(texts, ids)):
        row = [int(x) for x in row]
        n_pieces = len(row)
        row = row[:max_input_len]
        if row or keep_empty_as_eos:
            items.append(Source(i, lines[i], text, row + [EOS_ID], n_pieces))
        else:
            items.append(Source(i, lines[i], text, None, n_pieces))
    return items


def warn_truncated(warn: Any, items: Sequence[Source], max_input_len: int) -> None:
    """One warning per input longer than ``max_input_len`` subwords, by line number."""
    for it in sorted(items, key=lambda it: it.line):
        if it.n_pieces > max_input_len:
            warn("truncated input", f"line {it.line}: {it.n_pieces} subwords, truncated to "
                 f"the first {max_input_len} (decode.max_input_len)")


def shard_of(batches: list[list[Source]], shard: tuple[int, int] | None) -> list[list[Source]]:
    """The batches of process ``rank`` of ``world`` (``shard=(rank, world)``): the length-sorted
    batches dealt round-robin, so each sentence is searched in the batch one process would use."""
    if shard is None:
        return batches
    rank, world = checked_shard(shard)
    return batches[rank::world]


def checked_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard = (rank, world)`` of a process of a distributed job, checked."""
    rank, world = shard
    if not (isinstance(rank, int) and isinstance(world, int) and 0 <= rank < world):
        raise NmtError(f"shard {shard!r}: expected (rank, world) with 0 <= rank < world")
    return rank, world

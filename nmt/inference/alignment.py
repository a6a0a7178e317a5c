"""Word alignments from attention, in the Pharaoh format (``0-0 1-2 2-1``).

Each target piece is aligned to the source piece it attends to most (the arg-max of its attention
row; the first one on a tie), and both pieces are mapped to the whitespace-separated words they
belong to. ``i-j`` pairs (source word i, target word j, both 0-based) are deduplicated and sorted.
The end-of-sentence token is no word on either side: a target EOS aligns nothing, and a target
piece that attends most to the source EOS stays unaligned.

Words are read from sentencepiece pieces: a piece starting with ``▁`` starts a word, the others
continue the current one; ``<unk>`` is a word of its own (sentencepiece decodes it as `` ⁇ ``,
spaced); a ``▁`` with nothing after it before the next word makes no word. The words are then
those of the detokenized text split on whitespace (a test checks this against sentencepiece).
Nothing here imports torch: attention may be a tensor, an array or nested lists.
"""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["word_alignment", "word_indices", "format_alignment", "WORD_START", "EOS_PIECE", "UNK_PIECE"]

WORD_START = "\u2581"  #: sentencepiece's whitespace marker "▁"
EOS_PIECE = "</s>"
UNK_PIECE = "<unk>"
_NOT_WORDS = {EOS_PIECE, "<s>", "<pad>"}


def word_indices(pieces: Sequence[str]) -> list[int | None]:
    """The 0-based word index of each piece, ``None`` for pieces that belong to no word (EOS, BOS,
    PAD, a ``▁`` that only separates)."""
    groups: list[int | None] = []  # group (candidate word) of each piece
    text_of: list[str] = []  # the text each group has gathered, without ▁
    fresh = True  # the next piece starts a group even without ▁ (start, after <unk>)
    for piece in pieces:
        if piece in _NOT_WORDS:
            groups.append(None)
            fresh = True
            continue
        unk = piece == UNK_PIECE
        if fresh or unk or piece.startswith(WORD_START):
            text_of.append("")
        groups.append(len(text_of) - 1)
        text_of[-1] += "\u2047" if unk else piece.replace(WORD_START, "")
        fresh = unk
    # groups that gathered no text (a lone ▁) are no words; the rest are numbered in order
    number: dict[int, int] = {}
    for group, text in enumerate(text_of):
        if text:
            number[group] = len(number)
    return [None if g is None else number.get(g) for g in groups]


def word_alignment(attention: Any, src_pieces: Sequence[str], tgt_pieces: Sequence[str]
                   ) -> list[tuple[int, int]]:
    """Sorted, distinct ``(source word, target word)`` pairs of one hypothesis.

    ``attention``: ``(len(tgt_pieces), len(src_pieces))`` weights, row t the attention of target
    piece t over the source pieces.
    """
    rows = attention.tolist() if hasattr(attention, "tolist") else [list(r) for r in attention]
    if len(rows) != len(tgt_pieces) or any(len(r) != len(src_pieces) for r in rows):
        raise ValueError(f"attention of shape ({len(rows)}, {len(rows[0]) if rows else 0}) for "
                         f"{len(tgt_pieces)} target and {len(src_pieces)} source pieces")
    src_word, tgt_word = word_indices(src_pieces), word_indices(tgt_pieces)
    pairs = set()
    for t, row in enumerate(rows):
        if tgt_word[t] is None or not row:
            continue
        s = max(range(len(row)), key=row.__getitem__)  # the first of equal maxima
        if src_word[s] is not None:
            pairs.add((src_word[s], tgt_word[t]))
    return sorted(pairs)


def format_alignment(pairs: Sequence[tuple[int, int]]) -> str:
    """Pharaoh format: ``"0-0 1-2 2-1"`` (empty for no pairs)."""
    return " ".join(f"{i}-{j}" for i, j in pairs)

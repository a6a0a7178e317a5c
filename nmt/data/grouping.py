"""Sentences to translate grouped by length (plain Python: the onnxruntime engine uses it without torch)."""
from __future__ import annotations

from typing import Optional, Sequence


def length_groups(lengths: Sequence[int], batch_tokens: int,
                  max_sentences: Optional[int] = None) -> list[list[int]]:
    """Group indices of sentences to translate, longest first, at most ``batch_tokens`` padded tokens.

    A batch costs sentences × its longest length; a sentence longer than the budget is alone. The
    caller restores the input order from the returned indices.
    """
    lengths = [int(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = max(lengths[i], 1)
        new_longest = max(longest, length)
        full = max_sentences is not None and len(current) >= max_sentences
        if current and (full or (len(current) + 1) * new_longest > batch_tokens):
            batches.append(current)
            current, new_longest = [], length
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches

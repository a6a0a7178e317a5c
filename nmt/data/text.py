"""Cleaning of text, the same for the training corpus and for the input of translation.

A sentence from a corpus file and the same sentence given to ``nmt translate`` must reach the
tokenizer as the same characters; :func:`clean_text` is the one definition both use.
"""
from __future__ import annotations

import unicodedata

__all__ = ["clean_text", "clean_texts"]

_SPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85"}


def clean_text(text: str, normalize: str = "NFC") -> str:
    """Make arbitrary text safe for the tokenizer: every training sentence and every input to
    translate goes through this one function, so both sides see the same characters.

    Whitespace controls become spaces, other control characters (category Cc), lone surrogates
    (Cs) and non-characters are dropped; then Unicode normalisation ``normalize`` (``NFC``,
    ``NFKC`` or ``none``) and ``strip``.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a str sentence, got {type(text).__name__}")
    if not text.isprintable():  # fast path: most lines have nothing to clean
        chars = []
        for ch in text:
            if ch in _SPACE_CONTROLS:
                chars.append(" ")
                continue
            cat = unicodedata.category(ch)
            if cat in ("Cc", "Cs") or (cat == "Cn" and _is_noncharacter(ch)):
                continue
            chars.append(ch)
        text = "".join(chars)
    text = text.strip()
    if normalize != "none" and text and not unicodedata.is_normalized(normalize, text):
        text = unicodedata.normalize(normalize, text).strip()
    return text


def _is_noncharacter(ch: str) -> bool:
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def clean_texts(texts: list[str], normalize: str = "NFC") -> list[str]:
    """:func:`clean_text` of each of ``texts``, faster on a corpus.

    A line of printable ASCII has nothing to drop and is already in every normal form, so only
    ``strip`` applies to it; the per-character path runs for the other lines alone.
    """
    return [text.strip() if text.isascii() and text.isprintable() else clean_text(text, normalize)
            for text in texts]

"""Names the training data never showed the model, carried into the translation through surrogates.

A model of a small corpus drops a name it has never seen ("Il m'appela Ichiro." -> "He called
me."), while it carries over the few names its corpus is full of ("Tom" -> "Tom"). So before a
sentence is searched, each capitalised source word that no training source holds is replaced by
a *surrogate*: a name that the training pairs hold unchanged on both sides, the most frequent first
(``Tom``, ``Mary``, ``Boston``, ``Tokyo`` for the fr-en corpus), one not already in the sentence,
the same surrogate for every occurrence of a word. After the search, every whole-word occurrence
of a surrogate in the translation, and its subword in the pieces a result shows, is given back
its original word. A word is one run of letters and digits, compared lower-cased; a surrogate is
one subword in both vocabularies, so a hypothesis keeps its pieces, scores and attention, and only
what they display changes.

The table (:class:`NameTable`, ``RUN_DIR/names.json``) is built from the training pairs the run's
lexicon reads (``nmt train``, ``nmt shortlist``): an evenly spaced sample of
``data.lexicon_sample`` pairs, so on a larger corpus a word outside the sample counts as unseen.
``decode.names: false`` turns it off. Measured on held-out Tatoeba sentences in docs/results.md.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Sequence

from nmt.atomic import atomic_write_text

__all__ = ["NAMES_FILE", "NameTable", "Surrogates", "words_of", "capitalised"]

NAMES_FILE = "names.json"
#: surrogates kept: a sentence with more unseen names keeps the others as they are
MOST_SURROGATES = 4

_WORD = re.compile(r"[^\W_]+")  # letters and digits


def words_of(text: str) -> list[str]:
    """The words of a text: runs of letters and digits ("l'Algérie" is "l", "Algérie")."""
    return _WORD.findall(text)


def capitalised(word: str) -> bool:
    """A word written with a capital: a name, where it does not start the sentence."""
    return word[0].isupper()


@dataclass(frozen=True)
class Surrogates:
    """What one sentence's search saw in place of its unseen names: ``(surrogate, word)`` pairs."""

    pairs: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def restore(self, text: str) -> str:
        """``text`` with each whole-word surrogate given back its word ("Tom's" -> "Ichiro's")."""
        for surrogate, word in self.pairs:
            text = re.sub(rf"(?<![^\W_]){re.escape(surrogate)}(?![^\W_])", word, text)
        return text

    def restore_pieces(self, pieces: Sequence[str]) -> list[str]:
        """Subword pieces with each surrogate's piece (``▁Tom``) shown as its word (``▁Ichiro``)."""
        shown = {"\u2581" + s: "\u2581" + w for s, w in self.pairs}
        return [shown.get(p, p) for p in pieces]


@dataclass(frozen=True)
class NameTable:
    """The source words of the training pairs (lower-cased) and the surrogate names, best first."""

    known: frozenset[str]
    surrogates: tuple[str, ...]

    @classmethod
    def build(cls, pairs: Iterable[tuple[str, str]], single_piece: Callable[[str], bool],
              most: int = MOST_SURROGATES) -> "NameTable":
        """From ``(source, target)`` texts: every source word, and as surrogates the capitalised
        words held by both sides of a pair, not as the source's first word (a name, not a word
        capitalised to start a sentence), most often first, among those ``single_piece`` accepts
        (one subword on each side)."""
        known: set[str] = set()
        held = Counter()
        for src, tgt in pairs:
            words = words_of(src)
            known.update(w.lower() for w in words)
            target = set(words_of(tgt))
            held.update({w for w in words[1:] if capitalised(w) and len(w) > 1 and w.isalpha() and w in target})
        surrogates = islice((w for w, _ in held.most_common() if single_piece(w)), most)
        return cls(frozenset(known), tuple(surrogates))

    def protect(self, text: str) -> tuple[str, Surrogates]:
        """``text`` with each capitalised word the training sources lack replaced by a surrogate
        not in ``text`` (while any is left), and the replacements made."""
        words = words_of(text)
        if not any(capitalised(w) and w.lower() not in self.known for w in words):
            return text, Surrogates()  # most sentences: a third of the cost of replacing
        present = set(words)
        free = [s for s in self.surrogates if s not in present]
        given: dict[str, str] = {}

        def replace(match: re.Match) -> str:
            word = match.group(0)
            if not capitalised(word) or word.lower() in self.known:
                return word
            if word not in given and free:
                given[word] = free.pop(0)
            return given.get(word, word)

        protected = _WORD.sub(replace, text)
        return protected, Surrogates(tuple((s, w) for w, s in given.items()))

    def merged(self, parent: "NameTable") -> "NameTable":
        """The table of a run continued from ``parent``'s: the words of both, this run's surrogates
        (the parent's when it has none)."""
        return NameTable(self.known | parent.known, self.surrogates or parent.surrogates)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(
            {"surrogates": list(self.surrogates), "known": sorted(self.known)}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "NameTable":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(frozenset(data["known"]), tuple(data["surrogates"]))

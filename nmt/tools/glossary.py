"""``nmt translate --glossary FILE``: terminology that every translation must use.

The file has one term per line, ``SOURCE TERM<TAB>TARGET TERM`` (UTF-8; several words allowed on
either side; blank lines are skipped). For each input line, the terms whose source term occurs in
the line become its constraints (:meth:`Glossary.constraints`): lexically constrained beam search
then puts each target term into the translation exactly once (docs/decoding.md).

Matching: on the line as the translator cleans it (and the terms cleaned the same way), a source
term matches where it occurs as written, case-sensitively, with whole words at both ends (no
letter, digit or underscore just before or after it); the spaces inside a term match any run of
whitespace. Where matches overlap, the longest (then the leftmost) wins, so "chat noir" is used
instead of "chat" inside it. Each target term is a constraint once per line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nmt.errors import NmtError
from nmt.inference.sources import clean_source

__all__ = ["Glossary", "read_glossary"]


@dataclass(frozen=True)
class Glossary:
    """``terms``: ``(source term, target term)`` pairs in file order; ``form``: the Unicode
    normalisation the translator applies to its input (the recipe's ``data.filter.normalize``)."""

    terms: tuple[tuple[str, str], ...]
    form: str = "NFC"

    def patterns(self) -> list[re.Pattern]:
        return [re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, src.split())) + r"(?!\w)")
                for src, _ in self.terms]

    def matches(self, line: str) -> list[tuple[str, str]]:
        """The terms of one input line, in the order they occur in it."""
        text = clean_source(line, self.form)
        found = []  # (start, end, term index)
        for k, pattern in enumerate(self.patterns()):
            found += [(m.start(), m.end(), k) for m in pattern.finditer(text)]
        found.sort(key=lambda f: (-(f[1] - f[0]), f[0]))
        taken: list[tuple[int, int, int]] = []
        for start, end, k in found:
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, k))
        out: list[tuple[str, str]] = []
        for _, _, k in sorted(taken):
            if self.terms[k][1] not in [t for _, t in out]:
                out.append(self.terms[k])
        return out

    def constraints(self, lines: list[str]) -> list[list[tuple[str, str]]]:
        """The ``constraints`` argument of ``Translator.translate`` for ``lines``."""
        return [self.matches(line) for line in lines]


def read_glossary(path: str | Path, form: str = "NFC") -> Glossary:
    """Read a glossary file; a line that is not ``SOURCE<TAB>TARGET`` (both non-empty), a source
    term given two different target terms, or bytes that are not UTF-8 stop with the file and line."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise NmtError(f"--glossary {path}: cannot read it ({exc.strerror or exc})") from None
    terms: dict[str, str] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise NmtError(f"{where}: not UTF-8") from None
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise NmtError(f"{where}: expected SOURCE TERM<TAB>TARGET TERM, found {len(parts) - 1} tabs")
        src, tgt = (clean_source(p, form) for p in parts)
        if not src or not tgt:
            raise NmtError(f"{where}: the {'source' if not src else 'target'} term is empty")
        if terms.get(src, tgt) != tgt:
            raise NmtError(f"{where}: source term {src!r} has two target terms, {terms[src]!r} and {tgt!r}")
        terms[src] = tgt
    if not terms:
        raise NmtError(f"--glossary {path}: no terms (expected lines SOURCE TERM<TAB>TARGET TERM)")
    return Glossary(tuple(terms.items()), form)

"""Inline markup through translation: ``translate(..., markup="html")``.

The input is HTML text with inline tags (``<b>``, ``<i>``, ``<a href=…>``, ``<br>``, ``<img …/>``)
and character references (``&amp;``, ``&eacute;``). :func:`parse_markup` reads it with the
standard library's :class:`html.parser.HTMLParser`: the text between the tags, with references
unescaped, is what the model translates, and each tag is remembered with the character range of
that plain text it encloses (a void or self-closing tag with the point where it stands). The plain
text is translated with word alignments from the attention (:mod:`nmt.inference.alignment`), and
:func:`restore_markup` puts every tag back into the translation:

- A tag around source words encloses the target words aligned to them, from the first to the
  last (the words in between come along: tags enclose one contiguous range). A tag around every
  source word encloses the whole translation. Words are whitespace-separated, so a tag ends
  after a word's punctuation, except where the source tag ended before punctuation attached to
  its last word (``<b>fenêtre</b>.``): then the target's trailing punctuation stays outside too.
- A tag around words that align to nothing, a tag around no words, and a void tag (``<br>``,
  ``<br/>``, ``<img …/>``) stand at a point: just after the target words of the source word it
  is written against (``fin<br>``: no space between them), else just before those of the nearest
  source word after it that is aligned, else just after those of the nearest aligned word before
  it, else at the start (when it stood before every source word) or the end.
- Tags nest as they did in the source: a tag's target range is clipped to its parent's, and of
  two sibling tags whose ranges would overlap the later one starts where the earlier ends (an
  empty range if nothing is left). So every tag appears exactly once, opened and closed in order.
- Tags are written as they were given (attributes included); end tags as ``</name>``. The
  translated text is escaped (``&``, ``<``, ``>``), so it cannot form markup; a translation
  without tags is the plain translation with those three characters escaped.

Markup that does not nest (``<b><i>x</b></i>``), an end tag without its start tag, a tag left
open, an end tag of a void element and comments or declarations are refused with
:class:`MarkupError`, naming the tag. Nothing here imports torch.
"""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from typing import Any, Sequence

from nmt.errors import NmtError

__all__ = ["MARKUP_KINDS", "MarkupError", "Markup", "Tag", "parse_markup", "restore_markup",
           "translate_markup"]

MARKUP_KINDS = ("html",)  #: the ``markup`` values :meth:`TranslatorBase.translate` accepts

#: HTML elements that never have content or an end tag
VOID_ELEMENTS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                           "param", "source", "track", "wbr"})

_WORD = re.compile(r"\S+")


class MarkupError(NmtError):
    """Markup that cannot be carried through a translation (tags that do not nest, ...)."""


@dataclass
class Tag:
    """One element: ``start_text`` as written (``<a href="x">``), ``end_text`` (``</a>``; None for a
    void or self-closing tag), and the range ``[start, end)`` of the plain text it encloses."""

    start_text: str
    end_text: str | None
    start: int
    end: int
    children: list[Tag] = field(default_factory=list)


@dataclass
class Markup:
    """A marked-up sentence: its plain ``text`` and its top-level ``tags`` (each with its children)."""

    text: str
    tags: list[Tag]


class _Reader(HTMLParser):
    """Collects the plain text and the tag tree; refuses what does not nest."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.length = 0
        self.top: list[Tag] = []
        self.open: list[tuple[str, Tag]] = []

    def _add(self, tag: Tag) -> None:
        (self.open[-1][1].children if self.open else self.top).append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        self.length += len(data)

    def handle_starttag(self, name: str, attrs: Any) -> None:
        raw = self.get_starttag_text() or f"<{name}>"
        if name in VOID_ELEMENTS:
            self._add(Tag(raw, None, self.length, self.length))
            return
        tag = Tag(raw, f"</{raw[1:1 + len(name)]}>", self.length, self.length)
        self._add(tag)
        self.open.append((name, tag))

    def handle_startendtag(self, name: str, attrs: Any) -> None:
        self._add(Tag(self.get_starttag_text() or f"<{name}/>", None, self.length, self.length))

    def handle_endtag(self, name: str) -> None:
        if name in VOID_ELEMENTS:
            raise MarkupError(f"</{name}>: <{name}> is a void element and has no end tag")
        if not self.open:
            raise MarkupError(f"</{name}> closes no open tag")
        if self.open[-1][0] != name:
            opened = self.open[-1][0]
            raise MarkupError(f"</{name}> closes <{opened}>: tags must nest, e.g. "
                              f"<{opened}><{name}>…</{name}></{opened}> or close <{opened}> first")
        self.open.pop()[1].end = self.length

    def handle_comment(self, data: str) -> None:
        raise MarkupError("comments (<!-- … -->) are not inline markup; remove them")

    def handle_decl(self, decl: str) -> None:
        raise MarkupError(f"<!{decl}> is not inline markup; give the text of one sentence")

    def handle_pi(self, data: str) -> None:
        raise MarkupError(f"<?{data}> is not inline markup; remove it")

    def unknown_decl(self, data: str) -> None:
        raise MarkupError(f"<![{data}]> is not inline markup; remove it")


def parse_markup(text: str) -> Markup:
    """The plain text and tag tree of ``text``; :class:`MarkupError` for markup that does not nest."""
    reader = _Reader()
    reader.feed(text)
    reader.close()
    if reader.open:
        name = reader.open[-1][0]
        raise MarkupError(f"<{name}> is not closed; add </{name}>")
    return Markup("".join(reader.text), reader.top)


# --------------------------------------------------------------------------- placement

def word_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of the whitespace-separated words of ``text``."""
    return [m.span() for m in _WORD.finditer(text)]


@dataclass
class _Projection:
    """What placing a tag needs: the source words, the target words, and per source word the
    target words aligned to it."""

    src: list[tuple[int, int]]
    tgt: list[tuple[int, int]]
    targets: dict[int, list[int]]
    text: str  #: the source's plain text
    translation: str

    def anchor(self, point: int) -> int:
        """The target offset of a tag standing at source offset ``point`` (module docstring)."""
        touching = [i for i, (_, e) in enumerate(self.src) if e == point and i in self.targets]
        if touching:  # written against the word before it, as in "fin<br>"
            return self.tgt[max(self.targets[touching[0]])][1]
        after = [i for i, (s, _) in enumerate(self.src) if s >= point]
        for i in after:
            if i in self.targets:
                return self.tgt[min(self.targets[i])][0]
        for i in reversed([i for i, (_, e) in enumerate(self.src) if e <= point]):
            if i in self.targets:
                return self.tgt[max(self.targets[i])][1]
        return 0 if not self.src or point <= self.src[0][0] else len(self.translation)

    def interval(self, tag: Tag) -> tuple[int, int]:
        """The target range ``[a, b)`` of ``tag`` before nesting is enforced (``a == b``: a point)."""
        if tag.end_text is None or tag.start == tag.end:
            at = self.anchor(tag.start)
            return at, at
        covered = [i for i, (s, e) in enumerate(self.src) if s < tag.end and e > tag.start]
        if self.tgt and covered and len(covered) == len(self.src):
            words = [0, len(self.tgt) - 1]
        else:
            words = sorted(j for i in covered for j in self.targets.get(i, ()))
        if not words:
            at = self.anchor(tag.start)
            return at, at
        start, end = self.tgt[words[0]][0], self.tgt[words[-1]][1]
        if _punctuation(self.text[tag.end:self.src[covered[-1]][1]]):  # "<b>fenêtre</b>." ends before the "."
            while end > start + 1 and _punctuation(self.translation[end - 1]):
                end -= 1
        return start, end


def _punctuation(text: str) -> bool:
    """Whether ``text`` is punctuation only (and not empty)."""
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)


@dataclass
class _Placed:
    """A tag with its final target range ``[start, end)`` (character offsets) and its children's."""

    tag: Tag
    start: int
    end: int
    children: list[_Placed]


def _place(tags: Sequence[Tag], low: int, high: int, proj: _Projection) -> list[_Placed]:
    """Sibling ``tags`` placed inside the parent's target range ``[low, high)``: clipped to it,
    then, in target order, each starting no earlier than the previous one ends."""
    raw = []
    for order, tag in enumerate(tags):
        a, b = proj.interval(tag)
        a = min(max(a, low), high)
        raw.append((a, min(max(b, a), high), order, tag))
    placed, cursor = [], low
    for a, b, _, tag in sorted(raw, key=lambda r: r[:3]):
        a = max(a, cursor)
        b = max(b, a)
        placed.append(_Placed(tag, a, b, _place(tag.children, a, b, proj)))
        cursor = b
    return placed


def _render(text: str, nodes: Sequence[_Placed], low: int, high: int) -> str:
    """``text[low:high]`` escaped, with ``nodes`` (placed inside it) written in."""
    out, cursor = [], low
    for node in nodes:
        out.append(html.escape(text[cursor:node.start], quote=False))
        out.append(node.tag.start_text)
        out.append(_render(text, node.children, node.start, node.end))
        if node.tag.end_text is not None:
            out.append(node.tag.end_text)
        cursor = node.end
    out.append(html.escape(text[cursor:high], quote=False))
    return "".join(out)


def restore_markup(markup: Markup, translation: str, alignment: Sequence[tuple[int, int]]) -> str:
    """``translation`` (of ``markup.text``) with the tags of ``markup`` put back (module docstring).

    ``alignment``: ``(source word, target word)`` pairs over the whitespace-separated words of
    ``markup.text`` and of ``translation``.
    """
    targets: dict[int, list[int]] = {}
    tgt = word_spans(translation)
    for i, j in alignment:
        if j < len(tgt):
            targets.setdefault(i, []).append(j)
    proj = _Projection(word_spans(markup.text), tgt, targets, markup.text, translation)
    return _render(translation, _place(markup.tags, 0, len(translation), proj), 0, len(translation))


# --------------------------------------------------------------------------- translation

def parse_all(sources: Sequence[str], kind: str, lines: Sequence[int] | None = None) -> list[Markup]:
    """Every source parsed; an error names the line (``lines``: their numbers, default 1, 2, ...)."""
    if kind not in MARKUP_KINDS:
        raise NmtError(f"markup {kind!r} is not known; choose one of: {', '.join(MARKUP_KINDS)}")
    numbers = list(lines) if lines is not None else list(range(1, len(sources) + 1))
    parsed = []
    for number, source in zip(numbers, sources):
        try:
            parsed.append(parse_markup(source))
        except MarkupError as exc:
            raise MarkupError(f"line {number}: markup: {exc}") from None
    return parsed


def translate_markup(translator: Any, sources: Sequence[str], kind: str, *, n_best: int = 1,
                     return_scores: bool = False, return_attention: bool = False,
                     return_alignment: bool = False, lines: Sequence[int] | None = None,
                     **options: Any) -> list[Any]:
    """``translator.translate(sources, ..., markup=kind)``: the plain texts translated with word
    alignments, the tags restored into every hypothesis's text. The other fields of a result
    (tokens, attention, the ``alignment`` when asked for) are those of the plain texts."""
    if isinstance(sources, str):
        raise TypeError("translate takes a list of sentences, not a single string")
    parsed = parse_all(sources, kind, lines)
    results = translator.translate([m.text for m in parsed], n_best=n_best, return_scores=True,
                                   return_attention=return_attention, return_alignment=True,
                                   lines=lines, **options)
    simple = not (n_best > 1 or return_scores or return_attention or return_alignment)
    out: list[Any] = []
    for source, markup, result in zip(sources, parsed, results):
        if result is None:  # another process's share
            out.append(None)
            continue
        hyps = [replace(h, text=restore_markup(markup, h.text, h.alignment or []),
                        alignment=h.alignment if return_alignment else None) for h in result.hypotheses]
        out.append(hyps[0].text if simple else replace(result, source=source, hypotheses=hyps))
    return out

#!/usr/bin/env python
"""Tag placement accuracy of ``--markup html`` on hand-aligned sentences (not part of the tests).

The data file has one sentence a line, ``TAGGED SOURCE<TAB>TAGGED REFERENCE``, the reference's
tags placed by hand (data/markup/fr-en.tsv). Each source is translated with ``markup="html"``;
a tag is placed correctly when its target span in the translation equals the one in the
reference: for a tag with content, the words it encloses; for a void tag (``<br>``), the words
just before and after it. Words are compared lowercased, without surrounding punctuation. Tags
are matched by their start tag as written and its occurrence in the sentence.

A translation whose words differ from the reference's loses the tags around those words, so the
script also reports the accuracy over the sentences whose plain translation equals the
reference's text (the placement alone).

    python scripts/markup_accuracy.py runs/fr-en [--data data/markup/fr-en.tsv] [--beam 5] [--show]
"""
from __future__ import annotations

import argparse
import json
import string
import sys
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
        "track", "wbr"}


def norm(text: str) -> tuple[str, ...]:
    """The words of ``text``, lowercased, without surrounding punctuation (empty ones dropped)."""
    words = (w.strip(string.punctuation + "«»¿¡…").lower() for w in text.split())
    return tuple(w for w in words if w)


class Spans(HTMLParser):
    """Each tag's target span: ``{(start tag, occurrence): span}`` and the plain text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text = ""
        self.open: list[tuple[tuple[str, int], int]] = []
        self.spans: dict[tuple[str, int], tuple] = {}
        self.voids: list[tuple[tuple[str, int], int]] = []
        self.seen: dict[str, int] = {}

    def _key(self) -> tuple[str, int]:
        raw = self.get_starttag_text() or ""
        self.seen[raw] = self.seen.get(raw, 0) + 1
        return raw, self.seen[raw]

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            self.voids.append((self._key(), len(self.text)))
        else:
            self.open.append((self._key(), len(self.text)))

    def handle_startendtag(self, tag, attrs):
        self.voids.append((self._key(), len(self.text)))

    def handle_endtag(self, tag):
        key, start = self.open.pop()
        self.spans[key] = ("content", norm(self.text[start:]))

    def handle_data(self, data):
        self.text += data

    def result(self) -> dict[tuple[str, int], tuple]:
        for key, at in self.voids:  # the words just before and after a void tag
            before, after = norm(self.text[:at]), norm(self.text[at:])
            self.spans[key] = ("void", before[-1:], after[:1])
        return self.spans


def spans(markup: str) -> tuple[dict, str]:
    parser = Spans()
    parser.feed(markup)
    parser.close()
    return parser.result(), parser.text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--data", default=str(REPO / "data/markup/fr-en.tsv"))
    p.add_argument("--beam", type=int, default=None, help="default: the run's recipe")
    p.add_argument("--show", action="store_true", help="print every sentence and its misplaced tags")
    args = p.parse_args()

    from nmt.inference.translator import Translator

    pairs = [line.split("\t") for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    translator = Translator.load(args.run_dir, device="cpu")
    outputs = translator.translate([src for src, _ in pairs], beam=args.beam, markup="html")
    total = right = same_total = same_right = 0
    for (src, ref), out in zip(pairs, outputs):
        want, ref_text = spans(ref)
        have, out_text = spans(out)
        same = norm(ref_text) == norm(out_text)
        wrong = [key[0] for key in want if have.get(key) != want[key]]
        total += len(want)
        right += len(want) - len(wrong)
        if same:
            same_total += len(want)
            same_right += len(want) - len(wrong)
        if args.show:
            print(f"{src}\n  reference: {ref}\n  output:    {out}" + (f"\n  misplaced: {' '.join(wrong)}" if wrong else ""))
    report = {"sentences": len(pairs), "tags": total, "placed_as_reference": right,
              "accuracy": round(right / total, 4) if total else None,
              "tags_in_sentences_translated_as_reference": same_total,
              "accuracy_in_those": round(same_right / same_total, 4) if same_total else None}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

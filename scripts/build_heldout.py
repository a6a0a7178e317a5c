#!/usr/bin/env python3
"""Build the held-out French→English evaluation sets of ``data/heldout/`` from downloaded files.

    python scripts/build_heldout.py \\
        --tatoeba-fra tatoeba-test-v2021-08-07.fra --tatoeba-eng tatoeba-test-v2021-08-07.eng \\
        --flores-fra flores200-devtest.fra --flores-eng flores200-devtest.eng \\
        [--corpus data/tatoeba-fra-eng] [--out data/heldout]

It never downloads: give it the files of a public release (data/heldout/README.md says where they
come from). It writes

* ``tatoeba-unseen-{dev,test}.{fr,en}``: the pairs of the Tatoeba release whose French side and
  whose English side both occur in neither the train nor the valid split of the shipped corpus
  (compared after :func:`nmt.data.text.clean_text`, the cleaning nmt applies to every sentence),
  split in two halves by a hash of the lower-cased English side, so that all French renderings of
  one English sentence stay in the same half;
* ``flores200-devtest.{fr,en}``: the FLORES-200 pairs as they are (cleaned the same way);
* ``counts.json``: the counts printed at the end.

Every sentence is written cleaned with ``clean_text`` (NFC, control characters removed, stripped).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
from pathlib import Path
from typing import Iterable, Sequence

from nmt.data.text import clean_text

SPLIT_SALT = "tatoeba-unseen-split|"  #: salt of the dev/test hash (differs from the corpus split's)
SEEN_SPLITS = ("train.tsv.xz", "valid.tsv.xz")  #: the splits a model sees while it is built

Pair = tuple[str, str]  # (French, English)


def read_parallel(fra: Path, eng: Path) -> list[Pair]:
    """Two line-aligned text files -> cleaned (French, English) pairs."""
    fr_lines = fra.read_text(encoding="utf-8").split("\n")
    en_lines = eng.read_text(encoding="utf-8").split("\n")
    for lines in (fr_lines, en_lines):
        if lines and lines[-1] == "":
            lines.pop()
    if len(fr_lines) != len(en_lines):
        raise SystemExit(f"{fra} has {len(fr_lines)} lines but {eng} has {len(en_lines)}")
    return [(clean_text(f), clean_text(e)) for f, e in zip(fr_lines, en_lines)]


def read_corpus_sides(corpus: Path, splits: Sequence[str] = SEEN_SPLITS) -> tuple[set[str], set[str]]:
    """The cleaned French and English sentences of the shipped splits (``English<TAB>French``)."""
    french, english = set(), set()
    for name in splits:
        with lzma.open(corpus / name, "rt", encoding="utf-8") as f:
            for line in f:
                en, fr = line.rstrip("\n").split("\t")
                english.add(clean_text(en))
                french.add(clean_text(fr))
    return french, english


def remove_seen(pairs: Iterable[Pair], seen_fr: set[str], seen_en: set[str]) -> tuple[list[Pair], dict]:
    """Drop every pair whose French or English side is in the seen sets.

    A pair with both sides seen counts under ``removed_french_seen`` only, so the three counts
    add up to the pairs read.
    """
    kept, by_fr, by_en = [], 0, 0
    for fr, en in pairs:
        if fr in seen_fr:
            by_fr += 1
        elif en in seen_en:
            by_en += 1
        else:
            kept.append((fr, en))
    return kept, {"removed_french_seen": by_fr, "removed_english_seen_only": by_en}


def half_of(english: str) -> str:
    """``dev`` or ``test``: a fixed hash of the lower-cased English side, so paraphrases of one
    English sentence (its several French renderings) fall into the same half."""
    digest = hashlib.sha256((SPLIT_SALT + english.lower()).encode("utf-8")).hexdigest()
    return "dev" if int(digest, 16) % 2 == 0 else "test"


def split_halves(pairs: Iterable[Pair]) -> dict[str, list[Pair]]:
    """{"dev": [...], "test": [...]} in the input order."""
    halves: dict[str, list[Pair]] = {"dev": [], "test": []}
    for pair in pairs:
        halves[half_of(pair[1])].append(pair)
    return halves


def write_pairs(pairs: Sequence[Pair], out: Path, stem: str) -> None:
    """``out/stem.fr`` and ``out/stem.en``, one sentence a line."""
    for side, suffix in ((0, "fr"), (1, "en")):
        text = "".join(pair[side] + "\n" for pair in pairs)
        (out / f"{stem}.{suffix}").write_text(text, encoding="utf-8")


def build(args: argparse.Namespace) -> dict:
    """Read, filter, split and write; return the counts."""
    seen_fr, seen_en = read_corpus_sides(args.corpus)
    tatoeba = read_parallel(args.tatoeba_fra, args.tatoeba_eng)
    kept, removed = remove_seen(tatoeba, seen_fr, seen_en)
    halves = split_halves(kept)
    flores = read_parallel(args.flores_fra, args.flores_eng)
    args.out.mkdir(parents=True, exist_ok=True)
    write_pairs(halves["dev"], args.out, "tatoeba-unseen-dev")
    write_pairs(halves["test"], args.out, "tatoeba-unseen-test")
    write_pairs(flores, args.out, "flores200-devtest")
    counts = {
        "tatoeba_pairs_read": len(tatoeba), **removed, "tatoeba_kept": len(kept),
        "tatoeba_unseen_dev": len(halves["dev"]), "tatoeba_unseen_test": len(halves["test"]),
        "flores_pairs": len(flores),
        "flores_french_in_train_or_valid": sum(fr in seen_fr for fr, _ in flores),
        "flores_english_in_train_or_valid": sum(en in seen_en for _, en in flores),
    }
    (args.out / "counts.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    return counts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tatoeba-fra", type=Path, required=True, help="French side of the Tatoeba release")
    p.add_argument("--tatoeba-eng", type=Path, required=True, help="English side of the Tatoeba release")
    p.add_argument("--flores-fra", type=Path, required=True, help="FLORES-200 French (fra_Latn)")
    p.add_argument("--flores-eng", type=Path, required=True, help="FLORES-200 English (eng_Latn)")
    p.add_argument("--corpus", type=Path, default=Path("data/tatoeba-fra-eng"),
                   help="the shipped corpus (train.tsv.xz, valid.tsv.xz)")
    p.add_argument("--out", type=Path, default=Path("data/heldout"), help="output directory")
    return p.parse_args(argv)


def main(argv=None) -> int:
    counts = build(parse_args(argv))
    for key, value in counts.items():
        print(f"{key:34s} {value:7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

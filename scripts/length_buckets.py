#!/usr/bin/env python3
"""BLEU and chrF of one hypothesis file by source length bucket.

    python scripts/length_buckets.py --src test.fr --ref test.en --hyp out.en [--json]

A pair falls into a bucket by the number of whitespace-separated words of its source sentence
(1–6, 7–10, 11–15, 16+). Each bucket is scored as a corpus of its own with sacrebleu (BLEU with
the 13a tokenizer, chrF), the scores ``nmt evaluate`` reports.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BUCKETS = ((1, 6), (7, 10), (11, 15), (16, None))  #: inclusive word ranges; None = no upper bound


def bucket_label(low: int, high: int | None) -> str:
    return f"{low}-{high}" if high is not None else f"{low}+"


def bucket_of(source: str) -> str:
    """The label of the bucket a source sentence falls into (an empty line counts as 1 word)."""
    words = max(1, len(source.split()))
    for low, high in BUCKETS:
        if high is None or words <= high:
            return bucket_label(low, high)
    raise AssertionError("unreachable: the last bucket has no upper bound")


def score_buckets(sources: list[str], refs: list[str], hyps: list[str]) -> list[dict]:
    """One record per bucket: label, pairs, BLEU, chrF and the sacrebleu signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    if not len(sources) == len(refs) == len(hyps):
        raise SystemExit(f"line counts differ: {len(sources)} sources, {len(refs)} references, "
                         f"{len(hyps)} hypotheses")
    records = []
    for low, high in BUCKETS:
        label = bucket_label(low, high)
        index = [i for i, s in enumerate(sources) if bucket_of(s) == label]
        if not index:
            records.append({"bucket": label, "pairs": 0})
            continue
        h, r = [hyps[i] for i in index], [[refs[i] for i in index]]
        bleu, chrf = BLEU(tokenize="13a"), CHRF()
        records.append({"bucket": label, "pairs": len(index),
                        "bleu": round(bleu.corpus_score(h, r).score, 2),
                        "chrf": round(chrf.corpus_score(h, r).score, 2),
                        "bleu_signature": str(bleu.get_signature()),
                        "chrf_signature": str(chrf.get_signature())})
    return records


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True, help="source sentences (bucketed by length)")
    p.add_argument("--ref", type=Path, required=True, help="reference translations")
    p.add_argument("--hyp", type=Path, required=True, help="hypotheses (detokenized)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    records = score_buckets(_lines(args.src), _lines(args.ref), _lines(args.hyp))
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(f"{'words':>6} {'pairs':>6} {'BLEU':>6} {'chrF':>6}")
    for r in records:
        print(f"{r['bucket']:>6} {r['pairs']:>6} {r.get('bleu', float('nan')):6.2f} "
              f"{r.get('chrf', float('nan')):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

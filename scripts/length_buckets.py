#!/usr/bin/env python3
"""BLEU and chrF of one hypothesis file by source length bucket, and by unseen source words.

    python scripts/length_buckets.py --src test.fr --ref test.en --hyp out.en [--json]
    python scripts/length_buckets.py ... --train-src train.fr     # also by words unseen in training

A pair falls into a bucket by the number of whitespace-separated words of its source sentence
(1–6, 7–10, 11–15, 16+). With ``--train-src`` (the training sources, one per line) the pairs are
also split by whether their source holds a word that no training source holds (words: runs of
letters and digits, compared lower-cased): ``seen`` (every word occurs in training), ``unseen``
(at least one does not) and, among those, ``unseen-capitalised`` (an unseen word written with a
capital: mostly names). No subword model, regularisation or search setting can teach what such
a word means. Each bucket is scored as a corpus of its own with sacrebleu (BLEU with the 13a
tokenizer, chrF), the scores ``nmt evaluate`` reports. It also estimates the whole set's BLEU had
the unseen-capitalised pairs been translated as well as the seen ones (:func:`as_seen_estimates`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nmt.inference.names import capitalised, words_of  # the words decode.names compares

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


def known_words(sentences) -> set[str]:
    """Every word of ``sentences``, lower-cased."""
    return {w.lower() for s in sentences for w in words_of(s)}


def unseen_bucket_of(source: str, known: set[str]) -> list[str]:
    """The unseen-word buckets a source falls into: ``["seen"]``, ``["unseen"]`` or ``["unseen",
    "unseen-capitalised"]``."""
    unseen = [w for w in words_of(source) if w.lower() not in known]
    if not unseen:
        return ["seen"]
    return ["unseen", "unseen-capitalised"] if any(capitalised(w) for w in unseen) else ["unseen"]


UNSEEN_BUCKETS = ("seen", "unseen", "unseen-capitalised")


def _check_counts(sources, refs, hyps) -> None:
    if not len(sources) == len(refs) == len(hyps):
        raise SystemExit(f"line counts differ: {len(sources)} sources, {len(refs)} references, "
                         f"{len(hyps)} hypotheses")


def _score(label: str, index: list[int], refs: list[str], hyps: list[str]) -> dict:
    """The record of the pairs ``index`` scored as one corpus."""
    from sacrebleu.metrics import BLEU, CHRF

    if not index:
        return {"bucket": label, "pairs": 0}
    h, r = [hyps[i] for i in index], [[refs[i] for i in index]]
    bleu, chrf = BLEU(tokenize="13a"), CHRF()
    return {"bucket": label, "pairs": len(index),
            "bleu": round(bleu.corpus_score(h, r).score, 2),
            "chrf": round(chrf.corpus_score(h, r).score, 2),
            "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def _statistics(hyps: list[str], refs: list[str]):
    """sacrebleu's sufficient statistics of a corpus: n-gram matches and totals, lengths."""
    from sacrebleu.metrics import BLEU

    score = BLEU(tokenize="13a").corpus_score(hyps, [refs])
    return list(score.counts), list(score.totals), score.sys_len, score.ref_len


def _like(group, model):
    """``group``'s statistics had its hypotheses the length ratio and n-gram precisions of
    ``model``'s: its reference length kept, its n-gram totals scaled with its hypothesis length
    (counts rounded: sacrebleu takes integers)."""
    counts, totals, sys_len, ref_len = group
    m_counts, m_totals, m_sys, m_ref = model
    new_sys = ref_len * m_sys / m_ref
    new_totals = [t * new_sys / sys_len if sys_len else new_sys for t in totals]
    new_counts = [c / t * n if t else 0 for c, t, n in zip(m_counts, m_totals, new_totals)]
    return [round(c) for c in new_counts], [round(t) for t in new_totals], round(new_sys), ref_len


def _bleu_of(parts) -> float:
    """BLEU of the pooled statistics of ``parts`` (sacrebleu's default smoothing)."""
    from sacrebleu.metrics import BLEU

    counts = [sum(x) for x in zip(*(p[0] for p in parts))]
    totals = [sum(x) for x in zip(*(p[1] for p in parts))]
    sys_len, ref_len = sum(p[2] for p in parts), sum(p[3] for p in parts)
    return round(BLEU.compute_bleu(counts, totals, sys_len, ref_len, smooth_method="exp").score, 2)


def as_seen_estimates(sources: list[str], refs: list[str], hyps: list[str], known: set[str]) -> dict:
    """The set's BLEU as it is (``set``), and estimated had its ``unseen-capitalised`` pairs been
    translated as well as its ``seen`` pairs (``names_as_seen``): those pairs keep their
    references and get the seen pairs' length ratio and n-gram precisions, and BLEU is computed
    from the pooled statistics, as sacrebleu does. (Had every unseen-word pair been translated so,
    the set would score what its seen pairs do.)"""
    _check_counts(sources, refs, hyps)
    labels = [unseen_bucket_of(s, known) for s in sources]
    kinds = {"seen": lambda b: b == ["seen"], "names": lambda b: "unseen-capitalised" in b,
             "words": lambda b: b == ["unseen"]}
    groups = {}
    for kind, test in kinds.items():
        index = [i for i, b in enumerate(labels) if test(b)]
        if index:
            groups[kind] = _statistics([hyps[i] for i in index], [refs[i] for i in index])
    if "seen" not in groups:  # nothing to take the seen pairs' quality from
        return {"set": _bleu_of(list(groups.values()))}
    seen = groups["seen"]
    names = {k: (_like(g, seen) if k == "names" else g) for k, g in groups.items()}
    return {"set": _bleu_of(list(groups.values())), "names_as_seen": _bleu_of(list(names.values()))}


def score_buckets(sources: list[str], refs: list[str], hyps: list[str]) -> list[dict]:
    """One record per length bucket: label, pairs, BLEU, chrF and the sacrebleu signatures."""
    _check_counts(sources, refs, hyps)
    labels = [bucket_of(s) for s in sources]
    return [_score(label, [i for i, b in enumerate(labels) if b == label], refs, hyps)
            for label in (bucket_label(low, high) for low, high in BUCKETS)]


def score_unseen(sources: list[str], refs: list[str], hyps: list[str], known: set[str]) -> list[dict]:
    """One record per unseen-word bucket (:data:`UNSEEN_BUCKETS`), as :func:`score_buckets`;
    ``known``: the training sources' words (:func:`known_words`)."""
    _check_counts(sources, refs, hyps)
    labels = [unseen_bucket_of(s, known) for s in sources]
    return [_score(label, [i for i, b in enumerate(labels) if label in b], refs, hyps)
            for label in UNSEEN_BUCKETS]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True, help="source sentences (bucketed by length)")
    p.add_argument("--ref", type=Path, required=True, help="reference translations")
    p.add_argument("--hyp", type=Path, required=True, help="hypotheses (detokenized)")
    p.add_argument("--train-src", type=Path, help="training sources, one per line: also score by "
                                                   "words unseen in training")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (a list of "
                                                      "length buckets; with --train-src an object "
                                                      "with by_source_length, by_unseen_words and "
                                                      "estimates)")
    args = p.parse_args(argv)
    sources, refs, hyps = _lines(args.src), _lines(args.ref), _lines(args.hyp)
    records = score_buckets(sources, refs, hyps)
    unseen = estimates = None
    if args.train_src is not None:
        known = known_words(_lines(args.train_src))
        unseen = score_unseen(sources, refs, hyps, known)
        estimates = as_seen_estimates(sources, refs, hyps, known)
    if args.json:
        print(json.dumps(records if unseen is None else
                         {"by_source_length": records, "by_unseen_words": unseen,
                          "estimates": estimates}, indent=2))
        return 0
    for title, rows in (("words", records), ("training words", unseen or [])):
        width = max(len(title), *(len(r["bucket"]) for r in rows)) if rows else 0
        if rows:
            print(f"{title:>{width}} {'pairs':>6} {'BLEU':>6} {'chrF':>6}")
        for r in rows:
            print(f"{r['bucket']:>{width}} {r['pairs']:>6} {r.get('bleu', float('nan')):6.2f} "
                  f"{r.get('chrf', float('nan')):6.2f}")
    if estimates and "names_as_seen" in estimates:
        print(f"BLEU of the set {estimates['set']:.2f}; with its unseen-capitalised pairs translated "
              f"as well as its seen pairs, about {estimates['names_as_seen']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Corpus scores with sacrebleu (BLEU, chrF, TER), equal to what the ``sacrebleu`` command line prints.

Input is *detokenized* text, one segment per line; the scores carry sacrebleu's signatures.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence

from nmt.errors import DataError, NmtError

METRICS: tuple[str, ...] = ("bleu", "chrf", "ter")


# --------------------------------------------------------------------------------------- metrics

def parse_metrics(metrics: str | Iterable[str] | None) -> list[str]:
    """``"bleu,chrf"`` or ``["BLEU", "chrf"]`` -> ``["bleu", "chrf"]``; ``None`` -> all metrics.

    Unknown names raise :class:`NmtError` (with a suggestion); duplicates are dropped.
    """
    if metrics is None:
        return list(METRICS)
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise NmtError(f"metric names must be strings, got {item!r}; choose from {', '.join(METRICS)}")
        name = item.strip().lower()
        if not name:
            continue
        if name not in METRICS:
            hint = difflib.get_close_matches(name, METRICS, n=1, cutoff=0.5)
            extra = f"did you mean {hint[0]!r}? " if hint else ""
            raise NmtError(f"unknown metric {item.strip()!r}; {extra}choose from {', '.join(METRICS)} "
                           "(e.g. --metrics bleu,chrf)")
        if name not in names:
            names.append(name)
    if not names:
        raise NmtError(f"no metric given; choose from {', '.join(METRICS)} (e.g. --metrics bleu,chrf)")
    return names


def _metric(name: str, bleu_tokenize: str):
    from sacrebleu.metrics import BLEU, CHRF, TER

    if name == "bleu":
        if bleu_tokenize not in BLEU.TOKENIZERS:
            raise NmtError(f"unknown BLEU tokenizer {bleu_tokenize!r}; sacrebleu knows "
                           f"{', '.join(BLEU.TOKENIZERS)} (the usual one is '13a')")
        return BLEU(tokenize=bleu_tokenize)
    if name == "chrf":
        return CHRF()
    return TER()


def score_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                 metrics: Iterable[str] | str | None = METRICS,
                 bleu_tokenize: str = "13a") -> dict[str, dict[str, Any]]:
    """Corpus scores of detokenized ``hypotheses`` against one or more reference sets.

    ``references`` holds one list per reference set, each as long as ``hypotheses``
    (``[refs]`` for a single reference). Returns, per metric name (``bleu``, ``chrf``, ``ter``)::

        {"name": "BLEU", "score": 42.48, "signature": "nrefs:1|case:mixed|...",
         "line": "BLEU = 42.48 88.9/57.1/40.0/25.0 (BP = ...)"}

    ``signature`` is sacrebleu's ``metric.get_signature()`` and ``line`` is ``str(score)``.
    """
    names = parse_metrics(metrics)
    hyps = list(hypotheses)
    if isinstance(hypotheses, str) or any(not isinstance(h, str) for h in hyps):
        raise NmtError("hypotheses must be a list of strings (one detokenized segment each)")
    if isinstance(references, str) or not references:
        raise NmtError("references must be a non-empty list of reference sets, e.g. [refs]")
    ref_sets = [list(r) for r in references]
    if any(isinstance(r, str) for r in references):
        raise NmtError("references must be a list of reference *sets* (lists of strings); "
                       "for a single reference write score_corpus(hyps, [refs])")
    for i, refs in enumerate(ref_sets, 1):
        if any(not isinstance(r, str) for r in refs):
            raise NmtError(f"reference set {i} must contain only strings")
        if len(refs) != len(hyps):
            raise DataError(f"reference set {i} has {len(refs)} segments but there are "
                            f"{len(hyps)} hypotheses; every set needs one segment per hypothesis")
    if not hyps:
        raise DataError("nothing to score: there are no hypotheses")

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        metric = _metric(name, bleu_tokenize)
        score = metric.corpus_score(hyps, ref_sets)
        results[name] = {
            "name": score.name,
            "score": float(score.score),
            "signature": str(metric.get_signature()),
            "line": str(score),
        }
    return results


def format_scores(scores: dict[str, dict[str, Any]]) -> str:
    """One line per metric, as sacrebleu prints it: ``BLEU|nrefs:1|... = 42.48 88.9/...``."""
    lines = []
    for result in scores.values():
        line = result["line"]
        head = f"{result['name']} = "
        rest = line[len(head):] if line.startswith(head) else line
        lines.append(f"{result['name']}|{result['signature']} = {rest}")
    return "\n".join(lines)

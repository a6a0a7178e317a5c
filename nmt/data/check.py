"""What to check in a corpus before a long training run (``nmt data check RECIPE``).

:func:`check_corpus` reads the corpus exactly as training does (:mod:`nmt.data.corpus`: the same
columns, cleaning and splits) and reports:

- pairs per split, and how many training pairs the filter drops (empty side, ``data.max_train_pairs``;
  the subword filters ``data.filter.*`` need the tokenizer, so only a lower bound is given for
  ``max_len``, from word counts: a pair with more words than ``max_len`` has more subwords too);
- length statistics per side in whitespace-separated words (mean, median, 95th percentile, max)
  and length-ratio outliers: pairs whose longer side has at least :data:`RATIO_MIN_WORDS` words
  and more than ``data.filter.max_ratio`` times the words of the shorter (often misaligned lines);
- exact duplicate pairs within train;
- contamination: valid/test pairs whose source, target or whole pair also occurs in train
  (exact match after cleaning);
- suspicious lines: an empty side, source identical to target, a side with no letters (numbers,
  punctuation, markup only), URLs or markup, replacement characters or double-encoded UTF-8
  (mojibake), invisible format characters; control characters are already removed by cleaning;
- a suggested vocabulary size per side (:func:`suggested_vocab_size`), compared with the recipe's
  ``tokenizer`` sizes;
- the language of each side on a sample (:mod:`nmt.data.language`).

:func:`format_report` renders a :class:`CorpusReport` for the terminal; ``report.to_dict()`` is
the same as JSON-ready data.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from nmt.config import Recipe
from nmt.data.corpus import SPLITS, filter_train, load_cleaned_splits, quiet_datasets
from nmt.data.language import (DEFAULT_SAMPLE, LanguageCheck, check_languages, detect_languages,
                               sample_pairs)

__all__ = ["CorpusReport", "check_corpus", "check_languages", "format_report", "suggested_vocab_size"]

RATIO_MIN_WORDS = 4  #: a length-ratio outlier's longer side has at least this many words
MIN_EVAL_PAIRS = 200  #: fewer valid/test pairs than this give noisy BLEU: warn
MAX_EXAMPLES = 3  #: examples kept per kind of finding
_BATCH = 50_000

_URL = re.compile(r"https?://|www\.\w|<[a-zA-Z/][^>]*>|&(?:[a-z]+|#\d+);")
_MOJIBAKE = re.compile("[\u00c2\u00c3][\u0080-\u00bf]|\ufffd")
_INVISIBLE = {"Cf", "Co"}  #: format (zero-width, bidi marks) and private-use characters

#: kinds of suspicious line, in report order, with their label
LINE_KINDS = {
    "empty": "an empty side",
    "identical": "source identical to target",
    "no_letters": "a side without letters (numbers, punctuation or markup only)",
    "url_markup": "a URL, HTML tag or entity",
    "mojibake": "replacement characters or double-encoded UTF-8",
    "invisible": "invisible format or private-use characters",
    "ratio": "length-ratio outliers",
}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass
class Lengths:
    """Sentence lengths of one side, in whitespace-separated words."""

    mean: float = 0.0
    p50: int = 0
    p95: int = 0
    max: int = 0

    @classmethod
    def of(cls, words: np.ndarray) -> "Lengths":
        if not len(words):
            return cls()
        return cls(mean=round(float(words.mean()), 2), p50=int(np.percentile(words, 50)),
                   p95=int(np.percentile(words, 95)), max=int(words.max()))


@dataclass
class SplitReport:
    """One split: where it comes from, its size, lengths and suspicious lines."""

    split: str
    source: str  #: the file (or Hub split) it is read from
    pairs: int  #: pairs training (or evaluation) will use
    dropped: dict[str, int] = field(default_factory=dict)  #: rule -> training pairs dropped
    src_words: Lengths = field(default_factory=Lengths)
    tgt_words: Lengths = field(default_factory=Lengths)
    lines: dict[str, int] = field(default_factory=dict)  #: kind (LINE_KINDS) -> pairs
    examples: dict[str, list[str]] = field(default_factory=dict)  #: kind -> a few examples


@dataclass
class Overlap:
    """Pairs of an evaluation split (valid/test) that also occur in train."""

    split: str
    pairs: int  #: pairs in the evaluation split
    same_pair: int = 0  #: source and target both equal to one training pair
    same_src: int = 0  #: source sentence occurs as a training source
    same_tgt: int = 0  #: target sentence occurs as a training target
    examples: list[str] = field(default_factory=list)


@dataclass
class VocabAdvice:
    key: str  #: e.g. ``tokenizer.src_vocab_size``
    recipe: int
    suggested: int
    words: int  #: distinct words in the training text of that vocabulary
    words_twice: int  #: distinct words seen at least twice
    chars: int  #: distinct characters
    verdict: str = "ok"  #: ``ok``, ``large`` (note) or ``too large`` (warning)


@dataclass
class CorpusReport:
    """Everything :func:`check_corpus` found; ``findings`` are (level, message), level being
    ``error`` (training refuses), ``warning`` or ``note``."""

    format: str
    src_lang: str
    tgt_lang: str
    columns: dict[str, Any]
    deterministic_split: bool
    splits: list[SplitReport] = field(default_factory=list)
    duplicates: int = 0  #: training pairs that repeat an earlier training pair
    duplicate_examples: list[str] = field(default_factory=list)
    overlaps: list[Overlap] = field(default_factory=list)
    vocab: list[VocabAdvice] = field(default_factory=list)
    languages: Optional[LanguageCheck] = None
    findings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No finding of level ``error``."""
        return not any(level == "error" for level, _ in self.findings)

    def split(self, name: str) -> SplitReport:
        return next(s for s in self.splits if s.split == name)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["findings"] = [{"level": level, "message": msg} for level, msg in self.findings]
        out["ok"] = self.ok
        return out


# --------------------------------------------------------------------------------------------------
# Vocabulary size
# --------------------------------------------------------------------------------------------------


def _round2(n: float) -> int:
    """``n`` rounded to two significant digits (8,538 -> 8,500; 137 -> 140)."""
    if n <= 0:
        return 0
    step = 10 ** max(0, int(math.floor(math.log10(n))) - 1)
    return int(round(n / step) * step)


def suggested_vocab_size(words_twice: int, chars: int) -> int:
    """A subword vocabulary size for a training text.

    Rule: half the distinct words seen at least twice, but at least the distinct characters plus
    the 4 special pieces (sentencepiece needs one piece per character), rounded to two significant
    digits, at most 32,000. Small corpora want small vocabularies: a piece seen a handful of times
    gets no useful embedding (Sennrich & Zhang 2019). Examples: the fr-en Tatoeba training split
    (about 17,000 English words seen twice) -> 8,500; 300 short pairs (150 words) -> 75.
    """
    return min(32_000, _round2(max(words_twice // 2, chars + 4)))


#: sentencepiece's unigram trainer refuses a vocabulary above roughly this share of the distinct
#: words (it keeps no more pieces than it can justify); measured on small corpora at 0.8-0.9
TOO_LARGE_SHARE = 0.75


def _vocab_advice(key: str, size: int, words: Counter, chars: set) -> VocabAdvice:
    twice = sum(1 for n in words.values() if n >= 2)
    advice = VocabAdvice(key=key, recipe=size, suggested=suggested_vocab_size(twice, len(chars)),
                         words=len(words), words_twice=twice, chars=len(chars))
    if size > TOO_LARGE_SHARE * len(words):
        advice.verdict = "too large"
    elif size > 2 * advice.suggested:
        advice.verdict = "large"
    return advice


def _vocab_findings(advice: VocabAdvice) -> list[tuple[str, str]]:
    if advice.verdict == "too large":
        return [("warning", f"{advice.key}={advice.recipe} is too large for this corpus: the training "
                 f"text has {advice.words} distinct words, and sentencepiece cannot build much more "
                 f"than {int(TOO_LARGE_SHARE * advice.words)} pieces from it (it will refuse, or "
                 f"learn whole words only); suggested: --set {advice.key}={advice.suggested}")]
    if advice.verdict == "large":
        return [("note", f"{advice.key}={advice.recipe} is more than twice the suggested "
                 f"{advice.suggested} for this corpus ({advice.words_twice} words seen at least "
                 "twice): rare pieces will be learned from few examples")]
    return []


# --------------------------------------------------------------------------------------------------
# Per-split statistics
# --------------------------------------------------------------------------------------------------


def _line_kinds(src: str, tgt: str, src_n: int, tgt_n: int, max_ratio: float) -> Iterator[str]:
    """The suspicious-line kinds (:data:`LINE_KINDS`) one pair has."""
    if not src or not tgt:
        yield "empty"
        return
    if src == tgt:
        yield "identical"
    if not any(ch.isalpha() for ch in src) or not any(ch.isalpha() for ch in tgt):
        yield "no_letters"
    if _URL.search(src) or _URL.search(tgt):
        yield "url_markup"
    if _MOJIBAKE.search(src) or _MOJIBAKE.search(tgt):
        yield "mojibake"
    if not (src + tgt).isprintable() and any(
            unicodedata.category(ch) in _INVISIBLE for ch in src + tgt):
        yield "invisible"
    longer, shorter = max(src_n, tgt_n), max(1, min(src_n, tgt_n))
    if longer >= RATIO_MIN_WORDS and longer > max_ratio * shorter:
        yield "ratio"


def _example(index: int, src: str, tgt: str, width: int = 70) -> str:
    def cut(text: str) -> str:
        return text if len(text) <= width else text[:width - 1] + "…"
    return f"#{index + 1}: {cut(src)!r} -> {cut(tgt)!r}"


def _iter_batches(ds) -> Iterator[tuple[int, list[str], list[str]]]:
    """``(first row, sources, targets)`` per batch of a dataset with ``src``/``tgt`` columns."""
    start = 0
    for table in ds.select_columns(["src", "tgt"]).with_format("arrow").iter(batch_size=_BATCH):
        src, tgt = table.column("src").to_pylist(), table.column("tgt").to_pylist()
        yield start, src, tgt
        start += len(src)


@dataclass
class _Scan:
    """What one pass over a split collects (word counters only for train)."""

    report: SplitReport
    src_words: Counter = field(default_factory=Counter)
    tgt_words: Counter = field(default_factory=Counter)
    src_chars: set = field(default_factory=set)
    tgt_chars: set = field(default_factory=set)
    hashes: list = field(default_factory=list)  #: one int64 array of pair hashes per batch


def _scan_split(ds, split: str, source: str, recipe: Recipe, vocabulary: bool) -> _Scan:
    """One pass: lengths, suspicious lines, pair hashes and (for train) word and character counts."""
    scan = _Scan(SplitReport(split=split, source=source, pairs=len(ds)))
    lines, examples = Counter(), {}
    src_lens, tgt_lens = [], []
    max_ratio = recipe.data.filter.max_ratio
    for start, sources, targets in _iter_batches(ds):
        for i, (s, t) in enumerate(zip(sources, targets)):
            s_words, t_words = s.split(), t.split()
            src_lens.append(len(s_words))
            tgt_lens.append(len(t_words))
            for kind in _line_kinds(s, t, len(s_words), len(t_words), max_ratio):
                lines[kind] += 1
                found = examples.setdefault(kind, [])
                if len(found) < MAX_EXAMPLES:
                    found.append(_example(start + i, s, t))
            if vocabulary:
                scan.src_words.update(s_words)
                scan.tgt_words.update(t_words)
        scan.hashes.append(np.fromiter((hash(pair) for pair in zip(sources, targets)), np.int64,
                                       count=len(sources)))
        if vocabulary:
            scan.src_chars.update(*(set(x) for x in sources))
            scan.tgt_chars.update(*(set(x) for x in targets))
    for chars in (scan.src_chars, scan.tgt_chars):
        chars.discard(" ")
    report = scan.report
    report.src_words = Lengths.of(np.asarray(src_lens))
    report.tgt_words = Lengths.of(np.asarray(tgt_lens))
    report.lines = {kind: lines[kind] for kind in LINE_KINDS if lines[kind]}
    report.examples = {kind: examples[kind] for kind in report.lines}
    return scan


def _duplicates(ds, hashes: list) -> tuple[int, list[str]]:
    """Training pairs that repeat an earlier one (exact), and the most repeated as examples.

    Pairs are compared by a 64-bit hash (8 bytes per pair in memory), so a collision could in
    principle count two different pairs as one: about one in 10^10 for a million pairs."""
    if not hashes:
        return 0, []
    values = np.concatenate(hashes)
    _, first, counts = np.unique(values, return_index=True, return_counts=True)
    repeated = np.flatnonzero(counts > 1)
    top = repeated[np.argsort(-counts[repeated], kind="stable")][:MAX_EXAMPLES]
    examples = []
    for j in top:
        row = ds[int(first[j])]
        examples.append(f"{_example(int(first[j]), row['src'], row['tgt'])} ({int(counts[j])} times)")
    return int(len(values) - len(first)), examples


def _overlap(train, name: str, ds) -> Overlap:
    """Count the pairs of ``ds`` whose source, target or pair also occurs in ``train`` (exact)."""
    rows = list(zip(ds["src"], ds["tgt"]))
    by_src, by_tgt, by_pair = {}, {}, {}
    for i, (s, t) in enumerate(rows):
        by_src.setdefault(s, []).append(i)
        by_tgt.setdefault(t, []).append(i)
        by_pair.setdefault((s, t), []).append(i)
    hit_src, hit_tgt, hit_pair = set(), set(), set()
    for _, sources, targets in _iter_batches(train):
        for s, t in zip(sources, targets):
            if s in by_src:
                hit_src.update(by_src[s])
                if (s, t) in by_pair:
                    hit_pair.update(by_pair[(s, t)])
            if t in by_tgt:
                hit_tgt.update(by_tgt[t])
    shown = sorted(hit_pair) or sorted(hit_src | hit_tgt)
    return Overlap(split=name, pairs=len(rows), same_pair=len(hit_pair), same_src=len(hit_src),
                   same_tgt=len(hit_tgt),
                   examples=[_example(i, *rows[i]) for i in shown[:MAX_EXAMPLES]])


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def check_corpus(recipe: Recipe, *, sample: int = DEFAULT_SAMPLE, verbose: bool = False) -> CorpusReport:
    """Read the recipe's corpus as training would and report what to fix before a long run.

    ``sample``: training pairs (spread over the split) on which the languages are identified.
    Raises :class:`~nmt.errors.DataError` / :class:`~nmt.errors.ConfigError` only when the corpus
    cannot be read at all; everything else, including swapped languages, is a finding in the
    report (``report.ok`` is false when training would refuse the corpus).
    """
    data = recipe.data
    parts, described = load_cleaned_splits(data, SPLITS, verbose)
    report = CorpusReport(format=data.format, src_lang=data.src_lang, tgt_lang=data.tgt_lang,
                          columns=dict(data.columns),
                          deterministic_split=any("deterministic split" in d for d in described.values()))
    with quiet_datasets(verbose):
        train, dropped = filter_train(parts["train"], data, described["train"])
        scans = {name: _scan_split(train if name == "train" else parts[name], name,
                                   described[name], recipe, vocabulary=name == "train")
                 for name in SPLITS}
        report.splits = [scans[name].report for name in SPLITS]
        _note_dropped(report.split("train"), dropped)
        report.duplicates, report.duplicate_examples = _duplicates(train, scans["train"].hashes)
        report.overlaps = [_overlap(train, name, parts[name]) for name in ("valid", "test")]
        pairs = sample_pairs(train, sample)
    report.vocab = _vocab_report(recipe, scans["train"])
    report.languages = detect_languages(recipe, pairs)
    report.findings = _findings(recipe, report)
    return report


def _note_dropped(train: SplitReport, dropped: dict[str, int]) -> None:
    """Record the training filter's drops; empty pairs count among the suspicious lines too."""
    train.dropped = {rule: n for rule, n in dropped.items() if n}
    if dropped.get("empty side"):
        train.lines = {"empty": dropped["empty side"], **train.lines}


def _vocab_report(recipe: Recipe, scan: _Scan) -> list[VocabAdvice]:
    tok = recipe.tokenizer
    if tok.joint:
        return [_vocab_advice("tokenizer.src_vocab_size", tok.src_vocab_size,
                              scan.src_words + scan.tgt_words, scan.src_chars | scan.tgt_chars)]
    return [_vocab_advice("tokenizer.src_vocab_size", tok.src_vocab_size, scan.src_words, scan.src_chars),
            _vocab_advice("tokenizer.tgt_vocab_size", tok.tgt_vocab_size, scan.tgt_words, scan.tgt_chars)]


# --------------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------------


def _findings(recipe: Recipe, report: CorpusReport) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    languages = report.languages
    if languages is not None and languages.swapped:
        level = "error" if recipe.data.check_languages else "warning"
        out.append((level, languages.problem + ("" if recipe.data.check_languages else
                                                " (data.check_languages is false: not refused)")))
    out += [("warning", w) for w in (languages.warnings if languages else [])]
    out += _split_findings(recipe, report)
    if report.duplicates:
        train = report.split("train").pairs
        out.append(("note", f"train: {report.duplicates} of {train} pairs repeat an earlier pair "
                    f"exactly ({100 * report.duplicates / train:.1f}%)"))
    for o in report.overlaps:
        if o.same_pair:
            out.append(("warning", f"{o.split}: {o.same_pair} of {o.pairs} pairs also occur in train: "
                        f"{o.split} scores will be too optimistic; remove them from one side"))
        if o.same_src > o.same_pair or o.same_tgt > o.same_pair:
            out.append(("note", f"{o.split}: {o.same_src} of {o.pairs} pairs share their source "
                        f"sentence with a training pair and {o.same_tgt} their target sentence"))
    for advice in report.vocab:
        out += _vocab_findings(advice)
    out += [("note", f"language check: {n}") for n in (languages.notes if languages else [])]
    return out


def _split_findings(recipe: Recipe, report: CorpusReport) -> list[tuple[str, str]]:
    out = []
    for s in report.splits:
        if s.pairs == 0:
            out.append(("error", f"{s.split}: no pairs{' after filtering' if s.split == 'train' else ''}"
                        f" ({s.source}); training refuses an empty split"))
        elif s.split != "train" and s.pairs < MIN_EVAL_PAIRS:
            fix = ("raise data.split_permille (e.g. --set data.split_permille.valid=50 --set "
                   "data.split_permille.test=50 for 5% each)" if report.deterministic_split
                   else f"add pairs to {s.source}")
            out.append(("warning", f"{s.split}: only {s.pairs} pairs; BLEU on so few sentences "
                        f"moves by several points between checkpoints by chance; {fix}"))
        for kind, n in s.lines.items():
            if kind == "empty" and s.split == "train":
                continue  # reported as dropped
            level = "warning" if kind in ("empty", "mojibake") or n > 0.01 * max(1, s.pairs) else "note"
            out.append((level, f"{s.split}: {n} pair(s) with {LINE_KINDS[kind]}"))
    train = report.split("train")
    for rule, n in train.dropped.items():
        out.append(("note", f"train: {n} pair(s) dropped ({rule})"))
    max_len = recipe.data.filter.max_len
    if max(train.src_words.max, train.tgt_words.max) > max_len:
        out.append(("note", f"train: some pairs have more than data.filter.max_len={max_len} words; "
                    "training drops them (subwords are never fewer than words)"))
    return out


# --------------------------------------------------------------------------------------------------
# Text report
# --------------------------------------------------------------------------------------------------


def format_report(report: CorpusReport) -> str:
    """The report as plain text for a terminal (no colours, lines under 100 characters)."""
    cols = "{" + ", ".join(f"{k}: {v}" for k, v in report.columns.items()) + "}"
    lines = [f"corpus: format {report.format}, {report.src_lang} -> {report.tgt_lang}, "
             f"columns {cols}" + (" (one file, split deterministically)" if report.deterministic_split
                                  else ""), ""]
    lines += _format_splits(report)
    lines += ["", f"duplicates in train: {report.duplicates}"]
    lines += [f"  {e}" for e in report.duplicate_examples]
    for o in report.overlaps:
        lines.append(f"{o.split} pairs also in train: {o.same_pair} of {o.pairs} (same source "
                     f"{o.same_src}, same target {o.same_tgt})")
        lines += [f"  {e}" for e in o.examples]
    lines += ["", "vocabulary (suggested: half the words seen twice, at least the characters):"]
    for v in report.vocab:
        lines.append(f"  {v.key}: recipe {v.recipe}, suggested {v.suggested} ({v.words} words, "
                     f"{v.words_twice} seen twice, {v.chars} characters): {v.verdict}")
    if report.languages is not None:
        lang = report.languages
        lines += ["", "languages (sample of train):",
                  f"  source, expected {lang.src.expected}: {lang.src.summary()}",
                  f"  target, expected {lang.tgt.expected}: {lang.tgt.summary()}"]
    lines += ["", "findings:" if report.findings else "findings: none"]
    lines += [f"  {level.upper()}: {msg}" for level, msg in report.findings]
    lines.append("")
    lines.append("ok" if report.ok else "training would refuse this corpus (see ERROR above)")
    return "\n".join(lines)


def _format_splits(report: CorpusReport) -> list[str]:
    lines = [f"{'split':<6} {'pairs':>9}  {'src words mean/p50/p95/max':<28} {'tgt words mean/p50/p95/max':<28}"]
    for s in report.splits:
        def lengths(x: Lengths) -> str:
            return f"{x.mean:.1f}/{x.p50}/{x.p95}/{x.max}"
        lines.append(f"{s.split:<6} {s.pairs:>9}  {lengths(s.src_words):<28} {lengths(s.tgt_words):<28}")
        lines.append(f"       from {s.source}")
        for rule, n in s.dropped.items():
            lines.append(f"       dropped {n} ({rule})")
        for kind, n in s.lines.items():
            lines.append(f"       {n} with {LINE_KINDS[kind]}")
            lines += [f"         {e}" for e in s.examples.get(kind, [])]
    return lines

"""Which language each side of a corpus is in, judged on a sample of sentence pairs.

A TSV whose French column comes first, read with ``data.columns: {src: 1, tgt: 0}``, would train
English -> French without any error; :func:`check_languages` refuses it before training starts.
Identification uses ``py3langid`` (a naive Bayes model over byte n-grams for about 140 languages,
shipped inside the package: nothing is downloaded). Loading its model takes a fraction of a second
once per process; judging a few hundred lines takes a few hundredths of a second.

Rule: a line is judged only when it has at least :data:`MIN_LETTERS` letters (shorter lines are
too ambiguous); a side *looks like* language L when L is the language detected most often and on
at least :data:`MAJORITY` of the judged lines, with at least :data:`MIN_JUDGED` lines judged.
:func:`check_languages` refuses when the source side looks like ``data.tgt_lang`` or the target
side looks like ``data.src_lang`` (swapped columns or files); a side that looks like a third
language only gives a warning, since related languages (e.g. hr/sr/bs, da/no, id/ms) are often
confused. Languages the identifier does not know are skipped with a note.
"""
from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from nmt.config import Recipe
from nmt.errors import DataError

logger = logging.getLogger("nmt.data.language")

MIN_LETTERS = 10  #: letters a line needs to be judged
MIN_JUDGED = 20  #: judged lines a side needs for a verdict
MAJORITY = 0.5  #: share of the judged lines the most frequent language needs
DEFAULT_SAMPLE = 300  #: pairs sampled by default

#: three-letter (ISO 639-2/3) and other common codes -> the identifier's two-letter codes
_ALIASES = {
    "ara": "ar", "bul": "bg", "cat": "ca", "ces": "cs", "cze": "cs", "chi": "zh", "zho": "zh",
    "cmn": "zh", "dan": "da", "deu": "de", "ger": "de", "ell": "el", "gre": "el", "eng": "en",
    "est": "et", "eus": "eu", "baq": "eu", "fas": "fa", "per": "fa", "fin": "fi", "fra": "fr",
    "fre": "fr", "gle": "ga", "glg": "gl", "heb": "he", "iw": "he", "hin": "hi", "hrv": "hr",
    "hun": "hu", "hye": "hy", "arm": "hy", "ind": "id", "in": "id", "isl": "is", "ice": "is",
    "ita": "it", "jpn": "ja", "kat": "ka", "geo": "ka", "kor": "ko", "lat": "la", "lit": "lt",
    "lav": "lv", "mkd": "mk", "mac": "mk", "msa": "ms", "may": "ms", "zsm": "ms", "nld": "nl",
    "dut": "nl", "nor": "no", "nob": "no", "nb": "no", "nno": "nn", "pol": "pl", "por": "pt",
    "ron": "ro", "rum": "ro", "rus": "ru", "slk": "sk", "slo": "sk", "slv": "sl", "spa": "es",
    "sqi": "sq", "alb": "sq", "srp": "sr", "swe": "sv", "swa": "sw", "tha": "th", "tur": "tr",
    "ukr": "uk", "urd": "ur", "vie": "vi", "cym": "cy", "wel": "cy", "afr": "af", "bel": "be",
    "ben": "bn", "bos": "bs", "epo": "eo", "tgl": "tl", "fil": "tl",
}


def identifier_code(lang: str) -> str:
    """``data.src_lang`` as the identifier's code: ``fr`` stays, ``fra``/``fr-CA``/``fr_FR`` -> ``fr``."""
    code = lang.strip().lower().replace("_", "-").split("-")[0]
    return _ALIASES.get(code, code)


@functools.lru_cache(maxsize=1)
def _identifier():
    """The py3langid model, loaded once per process (about half a second)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> frozenset[str]:
    """The language codes the identifier knows."""
    return frozenset(_identifier().labels)


@dataclass
class SideLanguage:
    """What was detected on one side of the sample."""

    side: str  #: ``src`` or ``tgt``
    expected: str  #: the recipe's language (as written there)
    sampled: int = 0  #: lines looked at
    judged: int = 0  #: lines long enough to judge
    detected: dict[str, int] = field(default_factory=dict)  #: language -> judged lines, most first
    looks_like: Optional[str] = None  #: the majority language, if there is one

    def share(self, code: str) -> int:
        return self.detected.get(code, 0)

    def summary(self) -> str:
        if not self.judged:
            return f"no line long enough to judge ({self.sampled} sampled)"
        top = ", ".join(f"{lang} {n}" for lang, n in list(self.detected.items())[:3])
        return f"{top} of {self.judged} judged lines ({self.sampled} sampled)"


@dataclass
class LanguageCheck:
    """The result of :func:`detect_languages`: what each side looks like, and the verdict."""

    src: SideLanguage
    tgt: SideLanguage
    swapped: bool = False  #: the source looks like tgt_lang or the target like src_lang
    problem: Optional[str] = None  #: the refusal message when ``swapped``
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _judge_side(side: str, expected: str, lines: Sequence[str]) -> SideLanguage:
    ident = _identifier()
    out = SideLanguage(side=side, expected=expected, sampled=len(lines))
    counts: Counter[str] = Counter()
    for line in lines:
        if sum(ch.isalpha() for ch in line) < MIN_LETTERS:
            continue
        counts[ident.classify(line)[0]] += 1
    out.judged = sum(counts.values())
    out.detected = dict(counts.most_common())
    if out.judged >= MIN_JUDGED:
        lang, n = counts.most_common(1)[0]
        if n >= MAJORITY * out.judged:
            out.looks_like = lang
    return out


def detect_languages(recipe: Recipe, pairs: Sequence[tuple[str, str]]) -> LanguageCheck:
    """Judge both sides of ``pairs`` (``(src, tgt)`` strings) against ``data.src_lang``/``tgt_lang``."""
    data = recipe.data
    src_code, tgt_code = identifier_code(data.src_lang), identifier_code(data.tgt_lang)
    result = LanguageCheck(src=_judge_side("src", data.src_lang, [p[0] for p in pairs]),
                           tgt=_judge_side("tgt", data.tgt_lang, [p[1] for p in pairs]))
    known = known_languages()
    for key, lang, code in (("src_lang", data.src_lang, src_code), ("tgt_lang", data.tgt_lang, tgt_code)):
        if code not in known:
            result.notes.append(f"data.{key}={lang!r}: not a language the identifier knows; that "
                                "language is not checked")
    for side in (result.src, result.tgt):
        if side.looks_like is None:
            result.notes.append(f"{_SIDE_NAME[side.side]} side: no clear majority language "
                                f"({side.summary()}); not judged")
    if src_code == tgt_code:
        result.notes.append(f"data.src_lang and data.tgt_lang are the same language ({src_code}); "
                            "the sides cannot be told apart")
        return result
    wrong_src = result.src.looks_like == tgt_code
    wrong_tgt = result.tgt.looks_like == src_code and src_code in known
    if wrong_src or wrong_tgt:
        result.swapped = True
        result.problem = _refusal(recipe, result, wrong_src, wrong_tgt)
    for side, code in ((result.src, src_code), (result.tgt, tgt_code)):
        if side.looks_like not in (None, code, src_code, tgt_code) and code in known:
            result.warnings.append(
                f"{_SIDE_NAME[side.side]} side looks like {side.looks_like!r}, not "
                f"{side.expected!r} (data.{side.side}_lang): {side.summary()}")
    return result


_SIDE_NAME = {"src": "source", "tgt": "target"}


def check_languages(recipe: Recipe, pairs_sample: Sequence[tuple[str, str]]) -> None:
    """Refuse (:class:`~nmt.errors.DataError`, an ``NmtError``) a corpus whose source side looks like
    ``data.tgt_lang`` or whose target side looks like ``data.src_lang``.

    ``pairs_sample`` are a few hundred ``(src, tgt)`` training pairs (:func:`sample_pairs`). Does
    nothing when ``data.check_languages`` is false. Other findings (a third language, languages the
    identifier does not know, too few judgeable lines) are logged, never refused.
    """
    if not recipe.data.check_languages:
        return
    result = detect_languages(recipe, pairs_sample)
    for message in result.warnings:
        logger.warning("%s", message)
    for message in result.notes:
        logger.info("language check: %s", message)
    if result.swapped:
        raise DataError(result.problem)


def sample_pairs(ds, n: int = DEFAULT_SAMPLE) -> list[tuple[str, str]]:
    """Up to ``n`` pairs spread evenly over a dataset with ``src``/``tgt`` columns (cheap: reads
    only those rows), so that a corpus sorted by length or by source is sampled throughout."""
    total = len(ds)
    if total == 0 or n <= 0:
        return []
    k = min(n, total)
    indices = sorted({(i * total) // k for i in range(k)})
    rows = ds.select(indices)
    return list(zip(rows["src"], rows["tgt"]))


# --------------------------------------------------------------------------------------------------
# The refusal message
# --------------------------------------------------------------------------------------------------


def _refusal(recipe: Recipe, result: LanguageCheck, wrong_src: bool, wrong_tgt: bool) -> str:
    data = recipe.data
    src, tgt = data.src_lang, data.tgt_lang
    seen = (f"detected on a sample of training pairs: source side {result.src.summary()}; "
            f"target side {result.tgt.summary()}")
    if wrong_src and wrong_tgt:
        what = f"the source side looks like {tgt!r} and the target side like {src!r}"
    elif wrong_src:
        what = f"the source side looks like {tgt!r}, the target language (data.tgt_lang)"
    else:
        what = f"the target side looks like {src!r}, the source language (data.src_lang)"
    off = ("To skip this check (e.g. for code-switched data), set data.check_languages: false "
           "(--set data.check_languages=false).")
    return f"{_where(recipe)}: {what}, so training would not learn {src} -> {tgt} ({seen}). " \
           f"{_fix(recipe, wrong_src and wrong_tgt)} {off}"


def _where(recipe: Recipe) -> str:
    data = recipe.data
    if data.format == "text":
        return (f"{data.path}: the files {{split}}.{data.src_lang} (source) and "
                f"{{split}}.{data.tgt_lang} (target)")
    columns = "{" + ", ".join(f"{k}: {v}" for k, v in data.columns.items()) + "}"
    return f"data.columns is {columns} (data.src_lang={data.src_lang}, data.tgt_lang={data.tgt_lang})"


def _fix(recipe: Recipe, both: bool) -> str:
    data = recipe.data
    src, tgt = data.src_lang, data.tgt_lang
    if data.format == "text":  # the languages name the files: only renaming them helps
        if not both:
            return "Check that each file holds the language its name says."
        return (f"The files seem to be named the wrong way round: swap the names of {{split}}.{src} "
                f"and {{split}}.{tgt} (e.g. for s in train valid test; do mv $s.{src} tmp; "
                f"mv $s.{tgt} $s.{src}; mv tmp $s.{tgt}; done).")
    col_src, col_tgt = data.columns.get("src"), data.columns.get("tgt")
    if col_src == col_tgt == "translation":
        return (f"The dataset's translation entries seem to be labelled the other way round: check "
                f"which key ({src!r} or {tgt!r}) holds which language.")
    if col_src == col_tgt:
        return (f"data.columns.src and data.columns.tgt name the same column ({col_src!r}); point "
                f"data.columns.src to the column that holds {src} text.")
    other_way = (f"To translate {tgt} -> {src} instead, keep the columns and swap the languages: "
                 f"--set data.src_lang={tgt} --set data.tgt_lang={src}.")
    if not both:
        return (f"Check which column holds which language; if the columns are swapped: "
                f"{_swap_columns(col_src, col_tgt)}. {other_way}")
    return f"Swap the columns: {_swap_columns(col_src, col_tgt)}. {other_way}"


def _swap_columns(col_src: Any, col_tgt: Any) -> str:
    return (f"--set data.columns.src={col_tgt} --set data.columns.tgt={col_src} (in the recipe: "
            f"columns: {{src: {col_tgt}, tgt: {col_src}}})")

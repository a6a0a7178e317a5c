"""Inputs of several sentences translated one sentence at a time: ``decode.split_sentences``.

A translation model trained on single sentences (Tatoeba's are 6–8 words) translates a
paragraph badly: it has seldom seen a second sentence follow a first, and long inputs fall
apart. So an input is cut into sentences (sentencex, the segmenter of Wikimedia's machine
translation service: rules and abbreviations for some 250 languages, with fallbacks), each is
searched as an input of its own (in the same batches as every other), and the translations of an
input's sentences are joined again. Measured on unseen Tatoeba pairs: docs/decoding.md.

A joined hypothesis is what the model did, sentence after sentence: its text is the sentences'
texts joined by a space (by nothing for a target language written without spaces); its target
pieces are theirs one after the other, each sentence's ending with ``</s>``; its source pieces
likewise; its scores are the sums of theirs (the model's log-probability of the whole output
given each sentence); its attention is block-diagonal (a sentence attends to its own source);
its word alignment is theirs, shifted to the words of the whole input and output. With
``n_best`` > 1, hypothesis k joins each sentence's k-th (or its last, when it has fewer).

An input with lexical constraints is not cut (a term cannot be assigned to one of its sentences).
Nothing here imports torch.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from nmt.inference.sources import TranslatedHypothesis, TranslationResult, checked_shard, clean_source

__all__ = ["split_sentences", "translate_by_sentence", "joiner", "joined_result"]

#: a sentence mark with text after it: only such inputs are given to the segmenter
_MAYBE_SEVERAL = re.compile(r"[.!?…。！？؟।]\S*\s*\S")
#: target languages written without spaces between words (ISO 639-1 and -3 codes)
_NO_SPACES = {"zh", "ja", "th", "lo", "km", "my", "bo", "zho", "jpn", "tha", "lao", "khm", "mya", "bod"}


def joiner(language: str | None) -> str:
    """What joins the translations of an input's sentences in ``language``: a space, or nothing."""
    code = re.split(r"[-_]", (language or "").lower())[0]
    return "" if code in _NO_SPACES else " "


def split_sentences(text: str, language: str | None) -> list[tuple[str, bool]]:
    """``text``'s sentences (stripped, non-empty; ``[(text, True)]`` when it has one): each with
    whether whitespace separates it from the one before (``True`` for the first). A cut inside a
    run of letters ("Bonjour.Merci") is not made, except after a full stop written without spaces
    (Chinese, Japanese), nor after a single letter and a full stop (an initial)."""
    if not _MAYBE_SEVERAL.search(text.strip()):
        return [(text, True)]
    from sentencex import segment

    out: list[tuple[str, bool]] = []
    current, spaced = "", True
    for part in segment(language or "en", text):
        at_space = not current or current[-1].isspace() or part[:1].isspace()
        if current.strip() and (at_space or current.rstrip()[-1] in "。！？") and not _ends_in_initial(current):
            out.append((current.strip(), spaced))
            current, spaced = part, at_space
        else:
            current += part
    if current.strip():
        out.append((current.strip(), spaced))
    return out or [(text, True)]


def _ends_in_initial(piece: str) -> bool:
    """Whether ``piece`` ends in a capital letter and a full stop: an initial or an abbreviation
    ("M. Brown", "J. R. R. Tolkien"), after which some languages' rules of the segmenter cut."""
    last = piece.rstrip().rsplit(None, 1)[-1].lstrip("(«\"'")
    return len(last) == 2 and last[0].isupper() and last[1] == "."


def translate_by_sentence(translator, sources: Sequence[str], *, n_best: int, return_scores: bool,
                          return_attention: bool, return_alignment: bool, lines: Sequence[int] | None,
                          shard: tuple[int, int] | None, constraints, **options: Any) -> list[Any]:
    """``translator.translate(sources, ...)`` with each input cut into sentences (see the module's
    docstring), searched by ``translator.translate_inputs``; ``options`` are the other arguments of
    ``translate``. With ``shard=(rank, world)``
    this process translates the inputs ``rank, rank + world, ...`` (a sentence's translation does
    not depend on its batch) and the other entries are None."""
    if isinstance(sources, str):
        raise TypeError("translate/score take a list of sentences, not a single string")
    n = len(sources)
    if constraints is not None and (isinstance(constraints, str) or len(constraints) != n):
        return translator.translate_inputs(sources, n_best=n_best, return_scores=return_scores,
                                           return_attention=return_attention, return_alignment=return_alignment,
                                           lines=lines, shard=shard, constraints=constraints,
                                           **options)  # its own error
    rank, world = (0, 1) if shard is None else checked_shard(shard)
    mine = range(rank, n, world)
    lines = list(lines) if lines is not None else list(range(1, n + 1))
    language = translator.recipe.data.src_lang
    pieces, owner, spaced, piece_lines, piece_terms = [], [], [], [], []
    for i in mine:
        terms = constraints[i] if constraints is not None else None
        parts = [(sources[i], True)] if terms else split_sentences(sources[i], language)
        for text, at_space in parts:
            pieces.append(text)
            owner.append(i)
            spaced.append(at_space)
            piece_lines.append(lines[i])
            piece_terms.append(terms)
    detailed = n_best > 1 or return_scores or return_attention or return_alignment
    found = translator.translate_inputs(pieces, n_best=n_best, return_scores=return_scores,
                                        return_attention=return_attention, return_alignment=return_alignment,
                                        lines=piece_lines, constraints=piece_terms if constraints is not None else None,
                                        **options)
    by_input: dict[int, list[tuple[Any, bool]]] = {}
    for i, out, at_space in zip(owner, found, spaced):
        by_input.setdefault(i, []).append((out, at_space))
    glue = joiner(translator.recipe.data.tgt_lang)
    results: list[Any] = [None] * n
    for i, parts in by_input.items():
        if not detailed:
            results[i] = glue.join(text for text, _ in parts if text)
        else:
            results[i] = joined_result(translator, sources[i], parts)
    return results


def joined_result(translator, source: str, parts: list[tuple[TranslationResult, bool]]) -> TranslationResult:
    """The result of input ``source`` from the results of its sentences, each with whether
    whitespace separates it from the one before (see the module's docstring)."""
    if len(parts) == 1:
        return TranslationResult(source, parts[0][0].hypotheses)
    data = translator.recipe.data
    return _joined_result(source, parts, joiner(data.tgt_lang), data.filter.normalize)


def _joined_result(source: str, parts: list[tuple[TranslationResult, bool]], glue: str,
                   form: str) -> TranslationResult:
    """One result from the results of an input's sentences, each with whether whitespace
    separates it from the one before in the input; ``form``: the Unicode normal form of cleaning."""
    count = max(len(result.hypotheses) for result, _ in parts)
    # each sentence's words as the alignment counts them: those of its cleaned text
    sources = [(at_space, len(clean_source(result.source, form).split())) for result, at_space in parts]
    hypotheses = []
    for k in range(count):
        chosen = [result.hypotheses[min(k, len(result.hypotheses) - 1)] for result, _ in parts]
        hypotheses.append(_joined_hypothesis(chosen, sources, glue))
    return TranslationResult(source, hypotheses)


def _joined_hypothesis(hyps: list[TranslatedHypothesis], sources: list[tuple[bool, int]],
                       glue: str) -> TranslatedHypothesis:
    text = glue.join(h.text for h in hyps if h.text)
    alignment = None
    if all(h.alignment is not None for h in hyps):
        alignment, src_at, tgt_at, tgt_text = [], 0, 0, ""
        for h, (at_space, words) in zip(hyps, sources):
            # a sentence not cut from the one before at whitespace shares its first word with it
            shift_src = src_at - (0 if src_at == 0 or at_space else 1)
            shift_tgt = tgt_at - (1 if tgt_text and h.text and not glue else 0)
            alignment += [(s + shift_src, t + shift_tgt) for s, t in h.alignment]
            src_at = shift_src + words
            tgt_text = glue.join(x for x in (tgt_text, h.text) if x)
            tgt_at = len(tgt_text.split())
        alignment = sorted(set(alignment))
    met = [h.constraints_met for h in hyps]
    return TranslatedHypothesis(
        text=text, score=sum(h.score for h in hyps), raw_score=sum(h.raw_score for h in hyps),
        tokens=[t for h in hyps for t in h.tokens], src_tokens=[t for h in hyps for t in h.src_tokens],
        token_log_probs=[x for h in hyps for x in h.token_log_probs],
        attention=_block_diagonal([h.attention for h in hyps]),
        positions=_concatenated([h.positions for h in hyps]),
        alignment=alignment, constraints_met=None if all(m is None for m in met) else all(m is not False for m in met))


def _block_diagonal(blocks: list[Any]) -> Any:
    """The matrices ``blocks`` (torch tensors or numpy arrays) on the diagonal of one, zeros elsewhere;
    None if any is None."""
    if any(b is None for b in blocks):
        return None
    if type(blocks[0]).__module__.startswith("torch"):
        import torch

        return torch.block_diag(*blocks)
    import numpy as np

    out = np.zeros((sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)), dtype=blocks[0].dtype)
    row = col = 0
    for b in blocks:
        out[row:row + b.shape[0], col:col + b.shape[1]] = b
        row, col = row + b.shape[0], col + b.shape[1]
    return out


def _concatenated(vectors: list[Any]) -> Any:
    if any(v is None for v in vectors):
        return None
    if type(vectors[0]).__module__.startswith("torch"):
        import torch

        return torch.cat(vectors)
    import numpy as np

    return np.concatenate(vectors)

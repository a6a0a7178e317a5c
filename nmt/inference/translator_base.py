"""What both translators share (:class:`~nmt.inference.translator.Translator` on PyTorch,
:class:`~nmt.inference.onnx_translator.OnnxTranslator` on onnxruntime): cleaning and encoding the
input, sharing the batches between processes, and assembling the results in input order. Each
engine supplies its decode settings, batching and search. Nothing here imports torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from nmt.config import DecodeConfig
from nmt.errors import NmtError
from nmt.inference.alignment import word_alignment
from nmt.inference.constraints import constraint_spans
from nmt.inference.markup import translate_markup
from nmt.inference.names import NAMES_FILE, NameTable, Surrogates
from nmt.inference.rules import Hypothesis
from nmt.inference.sentences import translate_by_sentence
from nmt.inference.sources import (
    Source,
    TranslatedHypothesis,
    TranslationResult,
    clean_source,
    make_sources,
    shard_of,
    warn_truncated,
)

__all__ = ["TranslatorBase"]


class TranslatorBase:
    """The translation driver over an engine. A subclass sets ``recipe``, ``tokenizers`` and
    ``warn``, and implements :meth:`decode_options`, :meth:`batches` and :meth:`search_batches`.
    The recipe is never changed: other settings of the search are given as a
    :class:`~nmt.config.DecodeConfig` (:attr:`decode`) or per call."""

    recipe: Any
    tokenizers: Any
    warn: Any
    _decode: DecodeConfig | None = None
    #: the directory whose ``names.json`` the translator reads (a run's, an export's); None: none
    names_dir: Path | None = None
    _names: NameTable | None | bool = False  #: False until read

    @property
    def decode(self) -> DecodeConfig:
        """The default search settings: those given (to the constructor or by assignment), else
        the recipe's ``decode`` section."""
        return self._default_decode() if self._decode is None else self._decode

    @decode.setter
    def decode(self, value: DecodeConfig | None) -> None:
        self._decode = value

    def _default_decode(self) -> DecodeConfig:
        return self.recipe.decode

    # ------------------------------------------------------------------------ engine's part
    def decode_options(self, beam: int | None = None, n_best: int = 1, **overrides: Any) -> DecodeConfig:
        raise NotImplementedError

    def batches(self, items: Sequence[Source], *, beam: int = 1, batch_tokens: int | None = None,
                max_sentences: int | None = None) -> list[list[Source]]:
        raise NotImplementedError

    def search_batches(self, batches: Sequence[Sequence[Source]], options: DecodeConfig,
                       return_attention: bool = False, constraints: dict[int, list[list[int]]] | None = None
                       ) -> dict[int, list[Hypothesis]]:
        raise NotImplementedError

    def score_batches(self, batches: Sequence[Sequence[Source]], tgt_ids: Sequence[Sequence[int]]
                      ) -> dict[int, tuple[float, list[float]]]:
        """Forced decoding of ``tgt_ids[item.index]`` (EOS appended) for every item of ``batches``:
        ``(sum, per-token log-probabilities)`` by :attr:`Source.index`."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- the steps
    def encode(self, sources: Sequence[str], lines: Sequence[int] | None = None, *,
               keep_empty_as_eos: bool = False, warn: bool = True) -> list[Source]:
        """Clean, encode, truncate to ``decode.max_input_len`` and append EOS.

        ``lines``: the line numbers named in warnings (default 1, 2, ...). ``keep_empty_as_eos``:
        an empty input becomes the bare EOS (for scoring) instead of ``ids=None``. ``warn``: report
        truncated lines now (else the caller reports them with :meth:`warn_truncated`).
        """
        if isinstance(sources, str):
            raise TypeError("translate/score take a list of sentences, not a single string")
        form = self.recipe.data.filter.normalize
        texts = [clean_source(s, form) for s in sources]
        lines = list(lines) if lines is not None else list(range(1, len(texts) + 1))
        todo = [i for i, t in enumerate(texts) if t]
        encoded = self.tokenizers.encode_src([texts[i] for i in todo]) if todo else []
        ids_of: dict[int, list[int]] = dict(zip(todo, encoded))
        return self._sources(texts, [ids_of.get(i, []) for i in range(len(texts))], lines,
                             keep_empty_as_eos, warn)

    def _sources(self, texts: Sequence[str], ids: Sequence[Sequence[int]], lines: Sequence[int],
                 keep_empty_as_eos: bool, warn: bool) -> list[Source]:
        items = make_sources(texts, ids, lines, self.decode.max_input_len, keep_empty_as_eos)
        if warn:
            self.warn_truncated(items)
        return items

    def warn_truncated(self, items: Sequence[Source]) -> None:
        """One warning per input longer than ``decode.max_input_len`` subwords, by line number."""
        warn_truncated(self.warn, items, self.decode.max_input_len)

    def name_table(self) -> NameTable | None:
        """The table of :mod:`nmt.inference.names` (``names.json``), read once; None without one."""
        if self._names is False:
            path = None if self.names_dir is None else Path(self.names_dir) / NAMES_FILE
            self._names = NameTable.load(path) if path is not None and path.is_file() else None
        return self._names

    def protect_names(self, sources: Sequence[str], options: DecodeConfig,
                      keep: Sequence[bool] | None = None) -> tuple[list[str], list[Surrogates]]:
        """``sources`` with their unseen names replaced by surrogates (``decode.names``), and each
        one's replacements; ``keep[i]``: leave source i as it is (its constraints may name a word)."""
        if isinstance(sources, str):  # encode() refuses it, saying why
            return sources, []
        table = self.name_table() if options.names else None
        if table is None:
            return list(sources), [Surrogates()] * len(sources)
        out = [(s, Surrogates()) if keep and keep[i] else table.protect(s) for i, s in enumerate(sources)]
        return [text for text, _ in out], [given for _, given in out]

    def detokenize(self, hyps: Sequence[Hypothesis]) -> list[str]:
        """Detokenized text of each hypothesis."""
        if not hyps:
            return []
        return self.tokenizers.decode_tgt([h.tokens for h in hyps])

    def encode_targets(self, targets: Sequence[str]) -> list[list[int]]:
        """Target ids (no EOS) of target sentences, cleaned like sources (not truncated)."""
        form = self.recipe.data.filter.normalize
        texts = [clean_source(t, form) for t in targets]
        nonempty = [i for i, t in enumerate(texts) if t]
        ids: list[list[int]] = [[] for _ in texts]
        if nonempty:
            for i, row in zip(nonempty, self.tokenizers.encode_tgt([texts[i] for i in nonempty])):
                ids[i] = list(row)
        return ids

    def _share(self, items: list[Source], shard: tuple[int, int] | None, **batching: Any
               ) -> tuple[list[list[Source]], list[Source]]:
        """This process's batches and items (empty inputs go to rank 0, which needs no model for
        them); truncation warnings come from the process that translates the line."""
        batches = shard_of(self.batches(items, **batching), shard)
        mine = [it for group in batches for it in group]
        self.warn_truncated(mine)
        if shard is None or shard[0] == 0:
            mine += [it for it in items if it.ids is None]
        return batches, mine

    # -------------------------------------------------------------------------------- public
    def translate(self, sources: Sequence[str], beam: int | None = None, n_best: int = 1,
                  return_scores: bool = False, return_attention: bool = False, *,
                  return_alignment: bool = False,
                  batch_tokens: int | None = None, max_sentences: int | None = None,
                  lines: Sequence[int] | None = None, shard: tuple[int, int] | None = None,
                  constraints: Sequence[Sequence[Any] | None] | None = None,
                  markup: str | None = None, **overrides: Any):
        """Translate sentences, returned in input order.

        Returns ``list[str]`` (the best translation of each) by default; with ``n_best > 1``,
        ``return_scores``, ``return_attention`` or ``return_alignment`` a list of
        :class:`TranslationResult`. ``return_alignment`` gives each hypothesis its word alignment
        (:func:`~nmt.inference.alignment.word_alignment`: sorted ``(source word, target word)``
        pairs, 0-based over the whitespace words of the cleaned input and of the translation).
        ``beam`` defaults to the recipe's ``decode.beam`` (at least ``n_best``; 1 = greedy, which
        ignores the length and coverage penalties). ``overrides`` are other ``decode`` settings
        (``length_penalty``, ``coverage_penalty``, ``max_len_a``, ``max_len_b``, ``min_len``,
        ``no_repeat_ngram``, ``shortlist``, ``sample``, ``temperature``, ``top_k``, ``top_p``,
        ``seed``, ...); with ``sample=True``, ``n_best`` is the number of independent samples per
        sentence (best first), each sentence sampled from random streams of its own, of ``(seed, its
        source ids)``: the same sentence gets the same samples wherever it stands and whatever is
        translated with it. ``lines`` are the line numbers used in warnings (default 1, 2, ...). With
        ``shard=(rank, world)`` only this process's share is translated and the other entries are
        ``None`` (the caller gathers them).

        ``constraints``: terminology, one list per sentence (or None) of target terms, each a string
        or a ``(source term, target term)`` pair (the source term is not looked at): every output
        contains each term's subwords exactly once, contiguously (lexically constrained beam
        search, :mod:`nmt.inference.constraints`; docs/decoding.md). A term is tokenized as target
        text is. With ``return_scores`` each hypothesis says whether it met them
        (``constraints_met``) and where each term is (``constraint_spans``); a best translation
        that could not meet them is reported as a warning.

        ``split_sentences`` (default: ``decode.split_sentences``): an input of several sentences is
        translated one sentence at a time and the translations joined (:mod:`nmt.inference.sentences`).

        ``markup="html"``: the sources are HTML text with inline tags; the tags are carried into
        the translations by the word alignments (:mod:`nmt.inference.markup`), the other fields
        of a result are those of the plain text. Markup that does not nest is refused.
        """
        if markup is not None:  # its plain texts are translated by this method, split_sentences included
            return translate_markup(self, sources, markup, beam=beam, n_best=n_best, return_scores=return_scores,
                                    return_attention=return_attention, return_alignment=return_alignment,
                                    batch_tokens=batch_tokens, max_sentences=max_sentences, lines=lines,
                                    shard=shard, constraints=constraints, **overrides)
        split = overrides.pop("split_sentences", None)
        if self.decode.split_sentences if split is None else split:
            return translate_by_sentence(self, sources, beam=beam, n_best=n_best, return_scores=return_scores,
                                         return_attention=return_attention, return_alignment=return_alignment,
                                         batch_tokens=batch_tokens, max_sentences=max_sentences, lines=lines,
                                         shard=shard, constraints=constraints, **overrides)
        return self.translate_inputs(sources, beam, n_best, return_scores, return_attention,
                                     return_alignment=return_alignment, batch_tokens=batch_tokens,
                                     max_sentences=max_sentences, lines=lines, shard=shard,
                                     constraints=constraints, **overrides)

    def translate_inputs(self, sources: Sequence[str], beam: int | None = None, n_best: int = 1,
                         return_scores: bool = False, return_attention: bool = False, *,
                         return_alignment: bool = False,
                         batch_tokens: int | None = None, max_sentences: int | None = None,
                         lines: Sequence[int] | None = None, shard: tuple[int, int] | None = None,
                         constraints: Sequence[Sequence[Any] | None] | None = None, **overrides: Any):
        """:meth:`translate` of plain text with each input searched whole, as one sentence."""
        options = self.decode_options(beam, n_best, batch_tokens=batch_tokens, **overrides)
        terms = self._constraint_terms(constraints, len(sources))
        protected, given = self.protect_names(sources, options, [i in terms for i in range(len(sources))])
        items = self.encode(protected, lines, warn=False)
        by_index = self._term_ids(terms)
        batches, mine = self._share(items, shard, beam=options.beam, batch_tokens=options.batch_tokens,
                                    max_sentences=max_sentences)
        found = self.search_batches(batches, options, return_attention or return_alignment,
                                    **({"constraints": by_index} if by_index else {}))
        if by_index:
            self._warn_unmet(mine, found)
        out: list[Any] = [None] * len(items)
        if not (n_best > 1 or return_scores or return_attention or return_alignment):
            best = [found[it.index][0] for it in mine if found.get(it.index)]
            texts = iter(self.detokenize(best))
            for it in mine:
                out[it.index] = given[it.index].restore(next(texts)) if found.get(it.index) else ""
            return out
        texts = iter(self.detokenize([h for it in mine for h in found.get(it.index, [])]))
        for it in mine:
            out[it.index] = self._result(sources[it.index], it, found.get(it.index), texts,
                                         return_attention, return_alignment,
                                         (terms[it.index], by_index[it.index]) if it.index in terms else None,
                                         given[it.index])
        return out

    def constraint_ids(self, constraints: Sequence[Sequence[Any] | None] | None, n: int
                       ) -> dict[int, list[list[int]]]:
        """The target ids of each sentence's terms (see :meth:`translate`), by sentence index."""
        return self._term_ids(self._constraint_terms(constraints, n))

    def _constraint_terms(self, constraints: Sequence[Sequence[Any] | None] | None, n: int
                          ) -> dict[int, list[str]]:
        """The target terms of each sentence that has some, by sentence index."""
        if constraints is None:
            return {}
        if isinstance(constraints, str) or len(constraints) != n:
            raise NmtError(f"constraints: one list of terms per sentence ({n}), got "
                           f"{'a string' if isinstance(constraints, str) else len(constraints)}")
        terms = {}
        for index, entry in enumerate(constraints):
            for term in entry or []:
                target = term[1] if isinstance(term, (tuple, list)) else term
                if not isinstance(target, str) or not target.strip():
                    raise NmtError(f"constraints of sentence {index + 1}: {term!r} is not a non-empty target term")
                terms.setdefault(index, []).append(target)
        return terms

    def _term_ids(self, terms: dict[int, list[str]]) -> dict[int, list[list[int]]]:
        flat = [t for ts in terms.values() for t in ts]
        ids = iter(self.encode_targets(flat))
        return {index: [next(ids) for _ in ts] for index, ts in terms.items()}

    def _warn_unmet(self, mine: Sequence[Source], found: dict[int, list[Hypothesis]]) -> None:
        for it in mine:
            hyps = found.get(it.index)
            if hyps and hyps[0].constraints_met is False:
                self.warn("unmet constraints", f"line {it.line}: the translation does not contain every "
                          "constraint exactly once (they did not fit in the maximum output length)")

    def _result(self, source: str, item: Source, hyps: list[Hypothesis] | None, texts,
                return_attention: bool, return_alignment: bool,
                terms: tuple[list[str], list[list[int]]] | None = None,
                given: Surrogates = Surrogates()) -> TranslationResult:
        """The result of one input: its hypotheses with their texts (taken from ``texts`` in order);
        ``terms``: its constraints, as strings and as target ids; ``given``: the surrogates its
        search saw, shown as the words they stand for."""
        if item.ids is None or not hyps:
            return TranslationResult(source, [TranslatedHypothesis(
                text="", score=0.0, tokens=[], src_tokens=[], token_log_probs=[],
                alignment=[] if return_alignment else None)])
        src_tokens = given.restore_pieces(self._src_tokens(item))
        results = []
        for h in hyps:
            pieces = given.restore_pieces(self.tokenizers.tgt_pieces_from_ids(h.tokens))
            results.append(TranslatedHypothesis(
                text=given.restore(next(texts)), score=h.score, tokens=pieces, src_tokens=src_tokens,
                attention=h.attention if return_attention else None,
                positions=h.positions if return_attention else None, token_log_probs=h.log_probs,
                raw_score=h.raw_score, constraints_met=h.constraints_met,
                constraint_spans=None if terms is None else constraint_spans(h.tokens, pieces, *terms),
                alignment=word_alignment(h.attention, src_tokens, pieces) if return_alignment else None))
        return TranslationResult(source, results)

    def _src_tokens(self, item: Source) -> list[str]:
        pieces = self.tokenizers.src_pieces(item.text) if item.text else []
        return pieces[: len(item.ids) - 1] + ["</s>"]

    def score(self, sources: Sequence[str], targets: Sequence[str], *,
              batch_tokens: int | None = None, return_token_log_probs: bool = False,
              lines: Sequence[int] | None = None, shard: tuple[int, int] | None = None):
        """``log P(target | source)`` per pair: the sum of the target's token log-probabilities,
        EOS included (forced decoding; no penalties). Sources are cleaned/truncated as for
        :meth:`translate`; an empty source is scored as the bare EOS. With
        ``return_token_log_probs`` also the list of per-token log-probabilities per pair.
        ``shard`` as for :meth:`translate`.
        """
        if isinstance(targets, str):
            raise TypeError("score takes a list of target sentences, not a single string")
        if len(sources) != len(targets):
            raise NmtError(f"score: {len(sources)} sources but {len(targets)} targets")
        items = self.encode(sources, lines, keep_empty_as_eos=True, warn=False)
        batches, mine = self._share(items, shard, batch_tokens=batch_tokens)
        found = self.score_batches(batches, self.encode_targets(targets))
        scores: list[Any] = [None] * len(items)
        per_token: list[Any] = [None] * len(items)
        for it in mine:
            scores[it.index], per_token[it.index] = found[it.index]
        return (scores, per_token) if return_token_log_probs else scores

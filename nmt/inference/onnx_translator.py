"""Translate with an exported model (``nmt export``) on onnxruntime and numpy: no PyTorch.

Python API::

    from nmt.inference.onnx_translator import OnnxTranslator
    t = OnnxTranslator.load("export/fr-en")             # the directory `nmt export` wrote
    t.translate(["Je suis fatigué.", "Merci !"])        # -> ["I am tired.", "Thank you!"]
    t.translate(srcs, beam=5, n_best=3)                 # -> [TranslationResult, ...]

Command line: ``nmt translate --engine onnx EXPORT_DIR -i IN -o OUT`` (same input and output
formats as with a run directory).

Importing this module imports no torch: it needs numpy, onnxruntime and sentencepiece only.
Search is the one the torch engine runs (:mod:`nmt.inference.greedy`, :mod:`nmt.inference.beam`,
with the rules of :mod:`nmt.inference.rules`), on the export's graphs
(:mod:`nmt.inference.onnx_engine`) and numpy arrays. The graphs give float32 log-probabilities of
every target token, so results match PyTorch float32 decoding up to float rounding (the parity
tests check tokens and scores). Attention weights and word alignments come from the step graph's
attention output; reference scores (``score``) feed the reference's tokens to the step graph.
A lexical shortlist needs the run's lexicon in the export (``nmt export`` copies it). Sampling
draws from numpy's generator: reproducible with a seed, but other samples than the torch engine's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nmt.config import DecodeConfig, Recipe, recipe_from_dict
from nmt.data.grouping import length_groups
from nmt.data.tokenizer import SubwordTokenizers
from nmt.errors import CheckpointError, NmtError
from nmt.inference.export_meta import check_fingerprints, check_meta
from nmt.inference.forced import forced_scores
from nmt.inference.inter_threads import resolve_inter_threads, search_in_parts
from nmt.inference.onnx_engine import (
    DECODER_FILE,
    DECODER_SHORTLIST_FILE,
    ENCODER_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    META_FILE,
    OnnxEngine,
    OnnxModel,
    _REEXPORT,
    beam_search,
    greedy_search,
    pad_sources,
    search,
)
from nmt.inference.onnx_shortlist import LexiconTable, check_lexicon_sizes
from nmt.inference.ops_numpy import numpy_ops
from nmt.inference.rules import COVERAGE_FLOOR, Hypothesis
from nmt.inference.rules import max_lengths as _max_lengths
from nmt.inference.sampling import sentence_key
from nmt.inference.sources import WarningCounter
from nmt.inference.translator_base import TranslatorBase

__all__ = ["OnnxTranslator", "OnnxModel", "Hypothesis", "search", "greedy_search", "beam_search",
           "pad_sources", "max_lengths", "read_export", "COVERAGE_FLOOR", "EXPORT_FORMAT", "EXPORT_VERSION",
           "ENCODER_FILE", "DECODER_FILE", "DECODER_SHORTLIST_FILE", "META_FILE"]


def max_lengths(options: DecodeConfig, src_lengths: np.ndarray) -> np.ndarray:
    """``max(floor(a · S + b), min_len + 1, 1)`` generated tokens (EOS included) per sentence."""
    return _max_lengths(numpy_ops, options, src_lengths)


# ------------------------------------------------------------------------------------ translator

def read_export(export_dir: str | os.PathLike) -> dict[str, Any]:
    """``export.json`` of an export directory, checked: every file it names must be there."""
    root = Path(export_dir)
    if not root.is_dir():
        raise CheckpointError(f"export directory {root} not found; write one with "
                              "`nmt export RUN_DIR -o EXPORT_DIR`")
    path = root / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {root} is not an export directory (a run directory "
                              f"translates with --engine torch); {_REEXPORT}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); {_REEXPORT}") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not an nmt export description (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected "
                              f"{EXPORT_FORMAT!r}); {_REEXPORT}")
    if meta.get("version") != EXPORT_VERSION:
        raise CheckpointError(f"{path}: export format version {meta.get('version')!r}, this nmt reads "
                              f"version {EXPORT_VERSION}; {_REEXPORT}")
    missing = [key for key in ("encoder", "decoder_step", "src_tokenizer", "tgt_tokenizer", "state",
                               "memory", "recipe") if key not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; {_REEXPORT}")
    check_meta(meta, path)  # types, and file names that stay inside the directory
    # decoder_step_shortlist: exports of earlier versions have none (they slice decoder_step's output)
    for key in ("src_tokenizer", "tgt_tokenizer", "encoder", "decoder_step", "decoder_step_shortlist"):
        if key == "decoder_step_shortlist" and not meta.get(key):
            continue
        if not (root / meta[key]).is_file():
            what = "tokenizer model" if key.endswith("tokenizer") else "ONNX graph"
            raise CheckpointError(f"{root / meta[key]} not found: the export directory is missing its "
                                  f"{what}; copy it from the run directory or {_REEXPORT}")
    return meta


class OnnxTranslator(TranslatorBase):
    """An exported model with its tokenizers: the API of :class:`~nmt.inference.translator.Translator`
    (``translate``, ``score``, ``decode_options``, ``encode``, ``batches``, ``search_batches``,
    ``score_batches``, ``detokenize``) on onnxruntime. ``threads``: onnxruntime's intra-op threads
    (default: its own choice); ``decode.inter_threads`` above 1 searches each batch as parts side
    by side, on sessions of their share of the threads (:meth:`search_batches`).

    A session's thread count is fixed when it is made, so the graphs are loaded once per count a
    search runs with: at load, the count of the default settings (:attr:`model`; with ``auto`` on
    a CPU, one thread per part), another only when a call asks for it."""

    def __init__(self, export_dir: str | os.PathLike, threads: int | None = None,
                 decode: DecodeConfig | None = None):
        self.decode = decode  # None: the export's recipe's decode section
        self.export_dir = Path(export_dir)
        self.meta = read_export(self.export_dir)
        src = (self.export_dir / self.meta["src_tokenizer"]).read_bytes()
        tgt = (self.export_dir / self.meta["tgt_tokenizer"]).read_bytes()
        try:
            tokenizers = SubwordTokenizers(src, tgt, self.export_dir)
        except CheckpointError as exc:
            raise CheckpointError(f"{str(exc).split(';')[0]}; copy the run directory's tokenizer "
                                  f"models into {self.export_dir} or {_REEXPORT}") from None
        self.tokenizers = tokenizers
        for side, size in (("src", tokenizers.src_vocab_size), ("tgt", tokenizers.tgt_vocab_size)):
            expected = self.meta.get(f"{side}_vocab_size")
            if expected is not None and expected != size:
                raise CheckpointError(
                    f"{self.export_dir / self.meta[side + '_tokenizer']} has {size} pieces but the "
                    f"exported model was trained with {expected}; {_REEXPORT}")
        #: the run's recipe: its ``decode`` section gives the default settings (as a run's would)
        self.recipe: Recipe = recipe_from_dict(self.meta["recipe"], source=str(self.export_dir / META_FILE))
        self.threads = threads
        self._models: dict[int | None, OnnxModel] = {}  # the graphs' sessions by intra-op thread count
        #: the sessions the default settings search and score with (made here: a bad graph fails at load)
        self.model = self._sessions(self._parts(self.decode.inter_threads)[1])
        check_fingerprints(self.meta, self.export_dir)  # graphs and models of this export, not another's
        #: the run's lexicon when the export holds one (a shortlist decodes over it)
        self.lexicon = LexiconTable.load(self.export_dir / self.meta["lexicon"]) if self.meta.get("lexicon") else None
        if self.lexicon is not None:
            table = self.lexicon.top_ids
            check_lexicon_sizes(self.export_dir / self.meta["lexicon"], table.shape, self.lexicon.tgt_vocab_size,
                                int(table.max()) if table.size else -1, tokenizers.src_vocab_size,
                                tokenizers.tgt_vocab_size)
        self.names_dir = self.export_dir if self.meta.get("names") else None  # nmt.inference.names
        self.warn = WarningCounter()

    @classmethod
    def load(cls, export_dir: str | os.PathLike, threads: int | None = None,
             decode: DecodeConfig | None = None) -> "OnnxTranslator":
        return cls(export_dir, threads, decode)

    # ------------------------------------------------------------------------------ settings
    def decode_options(self, beam: int | None = None, n_best: int = 1, **overrides: Any) -> DecodeConfig:
        """The search settings of one call: :attr:`decode` (default: the export's ``decode`` section)
        with these values (``None`` keeps the default; a larger ``n_best`` without ``beam`` widens
        the beam), checked."""
        options = self.decode.updated(overrides, beam=beam, n_best=n_best)
        if options.shortlist and self.lexicon is None:
            raise NmtError(f"a lexical shortlist (--shortlist {options.shortlist}) needs a lexicon in the "
                           f"export: {self.export_dir} has none (build the run's with `nmt shortlist RUN_DIR` "
                           "and export it again); give --shortlist 0 or translate the run directory")
        return options

    # ---------------------------------------------------------------------------- the steps
    def batches(self, items, *, beam: int = 1, batch_tokens: int | None = None,
                max_sentences: int | None = None):
        """Length-sorted batches of the non-empty ``items``: at most ``batch_tokens`` (default the
        export's ``decode.batch_tokens``) padded source tokens × ``beam`` rows each."""
        todo = [it for it in items if it.ids is not None]
        budget = max(1, (batch_tokens or self.decode.batch_tokens) // max(1, beam))
        return [[todo[k] for k in group]
                for group in length_groups([len(it.ids) for it in todo], budget, max_sentences)]

    def search_batches(self, batches, options: DecodeConfig, return_attention: bool = False,
                       constraints: dict[int, list[list[int]]] | None = None) -> dict[int, list[Hypothesis]]:
        """Search every batch; hypotheses (best first) by ``Source.index``; ``constraints``: target
        id lists by ``Source.index`` (lexically constrained beam search)."""
        threads, per_part = self._parts(options.inter_threads)
        model = self._sessions(per_part)

        def search_part(group) -> list[list[Hypothesis]]:
            src, lengths = pad_sources([it.ids for it in group])
            # a sentence samples from streams of its own: (seed, its source ids)
            return search(model, src, lengths, options, return_attention, self.lexicon,
                          keys=[sentence_key(it.ids) for it in group],
                          constraints=[constraints.get(it.index, []) for it in group] if constraints else None)

        return search_in_parts(batches, threads, search_part)

    def cpu_threads(self) -> int:
        """The intra-op threads of the translator's sessions: ``threads`` as loaded, else the CPUs
        this process may run on (onnxruntime's own choice is of that order)."""
        if self.threads:
            return self.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def _parts(self, setting: int | str) -> tuple[int, int | None]:
        """``(parts, threads of each part's sessions)`` for ``decode.inter_threads = setting``: one
        part on the translator's threads (None: onnxruntime's choice), or parts side by side on
        their share of :meth:`cpu_threads`."""
        total = self.cpu_threads()
        parts = resolve_inter_threads(setting, total)
        return parts, (self.threads if parts == 1 else max(1, total // parts))

    def _sessions(self, threads: int | None) -> OnnxModel:
        """The export's graphs on sessions of ``threads`` intra-op threads, made once per count."""
        if threads not in self._models:
            self._models[threads] = OnnxModel(self.export_dir, self.meta, threads)
        return self._models[threads]

    def score_batches(self, batches, tgt_ids: Sequence[Sequence[int]]) -> dict[int, tuple[float, list[float]]]:
        """Forced decoding of ``tgt_ids[item.index]`` (EOS appended) for every item of ``batches``,
        step by step through the decoder-step graph: ``(sum, per-token log-probabilities)`` by
        ``Source.index``. In parts side by side as the default settings search (:attr:`model`)."""
        threads, per_part = self._parts(self.decode.inter_threads)
        model = self._sessions(per_part)

        def score_part(group) -> list[tuple[float, list[float]]]:
            src, lengths = pad_sources([it.ids for it in group])
            mask = np.arange(src.shape[1])[None, :] < lengths[:, None]
            sums, toks = forced_scores(OnnxEngine(model), src, lengths, mask, [tgt_ids[it.index] for it in group])
            return list(zip(sums, toks))

        return search_in_parts(batches, threads, score_part)

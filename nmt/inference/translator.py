"""The inference driver: :class:`Translator` turns sentences (or source ids) into translations.

Every user of a trained model goes through it: ``nmt translate`` (:mod:`nmt.tools.translate`),
``nmt evaluate``, ``nmt bench translate``, the attention plots, sweeps, and validation during
training, so all of them clean, truncate, batch and search a sentence the same way.

Python API::

    from nmt import Translator
    t = Translator.load("runs/fr-en")                   # best checkpoint, device from accelerate
    t.translate(["Je suis fatigué.", "Merci !"])        # -> ["I am tired.", "Thank you!"]
    t.translate(srcs, beam=5, n_best=3)                 # -> [TranslationResult, ...]
    t.translate(srcs, return_attention=True)            # attention (tgt_len × src_len) per hypothesis
    t.translate(srcs, sample=True, temperature=0.8, seed=1)   # a random translation (reproducible)
    t.translate(srcs, return_alignment=True)            # word alignments (source, target) from attention
    t.score(srcs, refs)                                 # log P(ref | src) per pair (sum, EOS included)
    Translator.load(["runs/a", "runs/b"])               # an ensemble: mean of the runs' log-probabilities
    Translator(recipe, tokenizers, model)               # an in-memory model (validation does this)

Input handling:

- Sentences are batched by length (``decode.batch_tokens`` padded source tokens × beam per
  batch) and the results are put back in input order. On a CPU each batch is searched as parts
  side by side, one per torch thread (``decode.inter_threads``).
- Text is cleaned the way the training data was: control characters (NUL, escape, ...; tabs and
  other whitespace become spaces), lone surrogates and non-characters are dropped, the recipe's
  ``data.filter.normalize`` Unicode normalisation is applied, and the result is stripped.
- An empty line (after cleaning) translates to an empty line; the model is not run on it.
- A line of more than ``decode.max_input_len`` subwords is truncated to its first
  ``max_input_len`` subwords (EOS is then appended), with a warning on stderr naming the line;
  it is never dropped.
- ``shard=(rank, world)`` splits the work between processes: the length-sorted batches are dealt
  round-robin, so every sentence is searched in exactly the batch a single process would use and
  the output does not depend on the number of processes. Each process gets results for its share
  (``None`` elsewhere); the caller gathers them.

The steps behind :meth:`Translator.translate` are public too, for callers that time or share the
work themselves: :meth:`~Translator.decode_options`, :meth:`~Translator.encode`,
:meth:`~Translator.batches`, :meth:`~Translator.search_batches`, :meth:`~Translator.detokenize`.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.errors import NmtError
from nmt.inference.devices import distributed_state
from nmt.inference.ensemble import Ensemble, check_compatible, shared_lexicon
from nmt.inference.inter_threads import resolve_inter_threads, search_in_parts
from nmt.inference.precision import check_precision, for_inference
from nmt.inference.precision_auto import PrecisionChoice
from nmt.inference.sampling import sentence_key
from nmt.inference.search import Hypothesis, pad_sources, score_targets, search
from nmt.inference.sources import Source, TranslatedHypothesis, TranslationResult, WarningCounter, clean_source
from nmt.inference.translator_base import TranslatorBase

__all__ = ["Translator", "TranslationResult", "TranslatedHypothesis", "Source", "WarningCounter",
           "clean_source"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- translator

class Translator(TranslatorBase):
    """A trained model with its tokenizers, ready to translate (eval mode, inference only).

    ``tokenizers`` may be None for a translator that only searches ids (:meth:`search_ids`).
    ``decode``: the default search settings (:attr:`decode`; default: the recipe's ``decode``
    section). The translator never changes the recipe.

    The translator works on its own copy of the model (``copy_model=False`` hands the model over
    instead: nothing else may change its weights), with the weights frozen: what search derives
    from them once (:meth:`~nmt.model.seq2seq.Seq2Seq.search_tables`) stays valid for its lifetime,
    and training the caller's model afterwards never reaches it.
    """

    def __init__(self, recipe, tokenizers, model: torch.nn.Module, device: Any = None,
                 metadata: dict | None = None, quantize: bool = False, precision: str | None = "float32",
                 run_dir: str | os.PathLike | None = None, lexicon=None, *, copy_model: bool = True,
                 decode: DecodeConfig | None = None):
        self.device = torch.device(device) if device is not None else distributed_state().device
        if precision is None:
            precision = (decode or recipe.decode).precision
        check_precision(precision, quantize)  # quantize=True: the error saying where int8 went
        #: "float32" or "bf16"; "auto" until :meth:`resolve_precision` has chosen (before the first search)
        self.precision = precision
        #: how ``auto`` chose (None: precision given explicitly, or not chosen yet)
        self.precision_choice: PrecisionChoice | None = None
        #: the weights files (:meth:`load`): the key of ``auto``'s cached choice
        self.weights_files: list[Path] = []
        self.recipe = recipe
        self.decode = decode
        self._recipe_shortlist_off = False  # an ensemble without a shared lexicon
        self.tokenizers = tokenizers
        if copy_model:
            model = copy.deepcopy(model)
        if isinstance(model, Ensemble):  # each member as inference runs a single model
            model = Ensemble([for_inference(m, self.precision) for m in model.members])
        else:
            model = for_inference(model, self.precision)
        self.model = model.requires_grad_(False).to(self.device).eval()
        self.metadata = metadata or {}
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.names_dir = self.run_dir  # an ensemble reads its first run's table of names
        #: the run directories of an ensemble's members (:meth:`load` with several runs)
        self.run_dirs = [] if run_dir is None else [self.run_dir]
        self.lexicon = lexicon  #: nmt.inference.shortlist.Lexicon, loaded from run_dir when a shortlist is asked for
        self.attention_kind = recipe.model.attention.kind
        self.warn = WarningCounter()
        self._tables: dict[Any, Any] = {}  # search tables by the autocast dtype they were built under

    @classmethod
    def load(cls, run_dir: str | os.PathLike | Sequence[str | os.PathLike], checkpoint: str = "best",
             device: Any = None, quantize: bool = False, precision: str | None = None,
             kernels: str | None = None, decode: DecodeConfig | None = None) -> "Translator":
        """Load a run directory (``checkpoint``: ``best``, ``last``, ``avg`` (written by
        ``nmt average``) or a weights file).

        A list of several run directories loads an ensemble (:mod:`nmt.inference.ensemble`): search
        and scores use the mean of the runs' log-probabilities; the runs must share the source and
        target tokenizers, and ``checkpoint`` (``best``, ``last`` or ``avg``) applies to each. Text
        handling and the decode settings come from the first run's recipe.

        ``precision="bf16"`` runs search under bf16 autocast (Linear weights held in bf16; attention
        softmax and log-probabilities stay float32): faster on CPUs with AVX-512 BF16 and on GPUs.
        ``"auto"`` measures which of the two is faster before the first search
        (:meth:`resolve_precision`); ``None``: ``decode.precision`` of ``decode`` or of the recipe.
        ``kernels`` (``auto`` | ``reference``) replaces the recipe's ``model.kernels``: ``reference``
        searches with the plain equations only. ``decode``: the default search settings instead of
        the recipe's ``decode`` section (:attr:`decode`). ``quantize=True`` is refused: int8 runs on
        the ONNX engine (``nmt export --quantize int8``).
        """
        from nmt.inference.checkpoint import as_run_dirs, checkpoint_path, load_run

        check_precision(precision or "float32", quantize)  # before reading any weights
        runs = as_run_dirs(run_dir)
        if not runs:
            raise NmtError("Translator.load: no run directory given")
        if precision is None and decode is not None:
            precision = decode.precision
        if len(runs) > 1:
            translator = cls._load_ensemble(runs, checkpoint, device, quantize, precision, kernels)
            translator.decode = decode
        else:
            recipe, tokenizers, model, metadata = load_run(runs[0], checkpoint, kernels=kernels)
            translator = cls(recipe, tokenizers, model, device=device, metadata=metadata, quantize=quantize,
                             precision=precision, run_dir=runs[0], copy_model=False, decode=decode)
        translator.weights_files = [checkpoint_path(run, checkpoint) for run in runs]
        return translator

    @classmethod
    def _load_ensemble(cls, runs, checkpoint, device, quantize, precision, kernels) -> "Translator":
        from nmt.data.tokenizer import SubwordTokenizers
        from nmt.inference.checkpoint import load_run, load_run_recipe

        if str(checkpoint).endswith(".safetensors") or os.sep in str(checkpoint):
            raise NmtError(f"checkpoint {checkpoint}: one weights file cannot serve {len(runs)} runs; "
                           "an ensemble loads each run's best, last or avg checkpoint")
        # every run's tokenizers are compared before any weights are read
        check_compatible([(run, load_run_recipe(run), SubwordTokenizers.load(run)) for run in runs])
        loaded = [load_run(run, checkpoint, kernels=kernels) for run in runs]
        recipe, tokenizers = loaded[0][0], loaded[0][1]
        run_dirs = [Path(run) for run in runs]
        lexicon, why = shared_lexicon(run_dirs) if recipe.decode.shortlist else (None, "")
        translator = cls(recipe, tokenizers, Ensemble([model for _, _, model, _ in loaded]), device=device,
                         metadata={"members": [meta for *_, meta in loaded]}, quantize=quantize,
                         precision=precision, run_dir=runs[0], lexicon=lexicon, copy_model=False)
        translator.run_dirs = run_dirs
        if recipe.decode.shortlist and lexicon is None:
            # the first run's recipe asked for it, not the user: decode without
            translator._recipe_shortlist_off = True
            translator.warn("ensemble shortlist", f"decoding without the shortlist of {runs[0]}'s "
                            f"recipe: {why}; an ensemble's shortlist needs one lexicon in every run")
        return translator

    # ----------------------------------------------------------------------------- precision
    def resolve_precision(self, options: DecodeConfig | None = None,
                          choice: PrecisionChoice | None = None, *,
                          batch_sentences: int | Sequence[int] | None = None) -> PrecisionChoice | None:
        """Make ``precision="auto"`` a mode: the cached or measured faster one for searches with
        ``options`` (default :attr:`decode`; :mod:`nmt.inference.precision_auto`) in batches of
        ``batch_sentences`` sentences (None: those ``options.batch_tokens`` makes; several sizes, as
        a server's calls have: bf16 only where it wins at each), or ``choice`` (made by another
        process of the same job), logged with its figures. Runs once, before the first search
        (searches call it); a no-op afterwards and for an explicit precision. Returns
        :attr:`precision_choice`."""
        if self.precision != "auto":
            return self.precision_choice
        from nmt.inference.precision_auto import choose_precision

        self.precision = "float32"  # the calibration's float32 searches run on this translator
        twin = None
        if choice is None:
            sizes = batch_sentences if isinstance(batch_sentences, Sequence) else [batch_sentences]
            for size in sizes:
                choice, twin = choose_precision(self, options or self.decode, size, twin)
                if choice.mode != "bf16":  # float32 at one size: the searches would be slower there
                    break
        if choice.mode == "bf16":
            twin = twin or self.twin("bf16")
            self.model, self._tables, self.precision = twin.model, twin._tables, "bf16"
        self.precision_choice = choice
        logger.info("%s", choice.describe())
        return choice

    def twin(self, precision: str) -> "Translator":
        """A translator of the same model, run dirs and lexicon in another (explicit) precision."""
        twin = Translator(self.recipe, self.tokenizers, self.model, device=self.device, metadata=self.metadata,
                          precision=precision, run_dir=self.run_dir, lexicon=self.lexicon, decode=self._decode)
        twin.run_dirs, twin._recipe_shortlist_off = self.run_dirs, self._recipe_shortlist_off
        return twin

    # ------------------------------------------------------------------------------ settings
    def _default_decode(self) -> DecodeConfig:
        """The recipe's ``decode`` section, without its shortlist for an ensemble whose runs share no lexicon."""
        if self._recipe_shortlist_off:
            return dataclasses.replace(self.recipe.decode, shortlist=0)
        return self.recipe.decode

    def decode_options(self, beam: int | None = None, n_best: int = 1, **overrides: Any) -> DecodeConfig:
        """The search settings of one call: :attr:`decode` with these values (``None`` keeps the
        default; a larger ``n_best`` without ``beam`` widens the beam), checked. A shortlist's lexicon is loaded here, so a missing one fails early."""
        options = self.decode.updated(overrides, beam=beam, n_best=n_best)
        self._lexicon_for(options)
        return options

    def _lexicon_for(self, options: DecodeConfig):
        """The run's lexicon when ``options`` ask for a shortlist (loaded once), else None."""
        if not options.shortlist:
            return None
        if self.lexicon is None:
            from nmt.inference.shortlist import LEXICON_FILE, Lexicon

            if self.run_dir is None:
                raise NmtError("a shortlist needs a lexicon: pass Translator(..., lexicon=...) or load "
                               "the translator from its run directory")
            if len(self.run_dirs) > 1:
                self.lexicon, why = shared_lexicon(self.run_dirs)
                if self.lexicon is None:
                    raise NmtError(f"--shortlist with an ensemble needs the same lexicon in every run: {why}; "
                                   f"copy one run's {LEXICON_FILE} into the others (the runs share their "
                                   "tokenizers) or decode without --shortlist")
            else:
                self.lexicon = Lexicon.load(self.run_dir / LEXICON_FILE)
            if self.tokenizers is not None:  # a lexicon of another run would index outside the model
                self.lexicon.check_vocabulary(Path(self.run_dir) / LEXICON_FILE, self.tokenizers.src_vocab_size,
                                              self.tokenizers.tgt_vocab_size)
        return self.lexicon

    # ---------------------------------------------------------------------------- the steps
    def batches(self, items: Sequence[Source], *, beam: int = 1, batch_tokens: int | None = None,
                max_sentences: int | None = None, batch_sentences: int | None = None
                ) -> list[list[Source]]:
        """Length-sorted batches of the non-empty ``items``: at most ``batch_tokens`` (default
        ``decode.batch_tokens``) padded source tokens × ``beam`` rows each, or, with
        ``batch_sentences``, fixed batches of that many sentences, longest first.

        The budget counts the rows the search carries (sentences × beam): beam search over
        sentences × beam × vocabulary scores is fastest when that matrix stays in the CPU caches
        (docs/performance.md).
        """
        todo = [it for it in items if it.ids is not None]
        if not todo:
            return []
        if batch_sentences:
            order = sorted(range(len(todo)), key=lambda k: -len(todo[k].ids))
            groups = [order[k: k + batch_sentences] for k in range(0, len(order), batch_sentences)]
        else:
            from nmt.data.batching import inference_batches

            budget = max(1, (batch_tokens or self.decode.batch_tokens) // max(1, beam))
            groups = inference_batches([len(it.ids) for it in todo], budget, max_sentences)
        return [[todo[k] for k in group] for group in groups]

    def _autocast(self):
        """bf16 autocast for ``precision="bf16"``; otherwise whatever the caller runs under (an
        enclosing ``accelerator.autocast()`` during validation stays in force)."""
        self.resolve_precision()
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def search_tables(self):
        """The model's search tables (:meth:`~nmt.model.seq2seq.Seq2Seq.search_tables`), built on first
        use and kept: the translator's weights never change. They take the dtype of the autocast in
        force (an enclosing one too), so they are kept per autocast dtype."""
        with torch.inference_mode(), self._autocast():
            device_type = self.device.type
            key = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
            if key not in self._tables:
                self._tables[key] = self.model.search_tables()
        return self._tables[key]

    def search_batches(self, batches: Sequence[Sequence[Source]], options: DecodeConfig,
                       return_attention: bool = False, constraints: dict[int, list[list[int]]] | None = None
                       ) -> dict[int, list[Hypothesis]]:
        """Search every batch; hypotheses (best first) by :attr:`Source.index`. ``constraints``:
        target id lists by :attr:`Source.index` (lexically constrained beam search). With
        ``options.inter_threads`` above 1 each batch is searched as that many parts side by side
        (:mod:`nmt.inference.inter_threads`)."""
        # a first search not settled beforehand calibrates on its own largest batch
        batches = list(batches)
        self.resolve_precision(options, batch_sentences=max(map(len, batches), default=None))
        lexicon = self._lexicon_for(options)
        tables = self.search_tables()
        device_type = self.device.type
        with self._autocast():  # the recipe's, or the caller's (validation under bf16 training)
            cast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None

        def search_part(group: Sequence[Source]) -> list[list[Hypothesis]]:
            # entered here: inference mode and autocast are settings of the thread that searches
            autocast = torch.autocast(device_type, dtype=cast) if cast is not None else nullcontext()
            with torch.inference_mode(), autocast:
                src, lengths, mask = pad_sources([it.ids for it in group], self.device)
                # a sentence samples from streams of its own: (seed, its source ids)
                return search(self.model, src, lengths, mask, options, lexicon, return_attention,
                              tables=tables, keys=[sentence_key(it.ids) for it in group],
                              constraints=[constraints.get(it.index, []) for it in group] if constraints else None)

        return search_in_parts(batches, self.search_parts(options), search_part,
                               (torch.get_num_threads, torch.set_num_threads))

    def search_parts(self, options: DecodeConfig) -> int:
        """The parts each batch is searched in side by side with ``options``: ``decode.inter_threads``
        for this translator's device and the calling thread's torch threads."""
        return resolve_inter_threads(options.inter_threads, torch.get_num_threads(), self.device.type == "cpu")

    def score_batches(self, batches: Sequence[Sequence[Source]], tgt_ids: Sequence[Sequence[int]]
                      ) -> dict[int, tuple[float, list[float]]]:
        """Forced decoding of ``tgt_ids[item.index]`` (EOS appended) for every item of ``batches``:
        ``(sum, per-token log-probabilities)`` by :attr:`Source.index`."""
        out: dict[int, tuple[float, list[float]]] = {}
        with torch.inference_mode(), self._autocast():  # bf16 weights compute under bf16 autocast
            for group in batches:
                src, lengths, mask = pad_sources([it.ids for it in group], self.device)
                sums, toks = score_targets(self.model, src, lengths, mask,
                                           [tgt_ids[it.index] for it in group])
                for it, total, per_token in zip(group, sums, toks):
                    out[it.index] = (total, per_token)
        return out

    # -------------------------------------------------------------------------------- public
    def search_ids(self, sources: Sequence[Sequence[int]], beam: int | None = None, n_best: int = 1,
                   return_attention: bool = False, *, batch_tokens: int | None = None,
                   **overrides: Any) -> list[list[Hypothesis]]:
        """Search source ids (*without* EOS, as ``SubwordTokenizers.encode_src`` returns them),
        batched and truncated as :meth:`translate` does; hypotheses in input order.

        An empty source is not searched: it gets one empty hypothesis (``tokens == []``, score 0,
        ``finished=False``; attention of shape (0, 1) when requested).
        """
        options = self.decode_options(beam, n_best, batch_tokens=batch_tokens, **overrides)
        items = self._sources([""] * len(sources), sources, range(1, len(sources) + 1), False, True)
        found = self.search_batches(
            self.batches(items, beam=options.beam, batch_tokens=options.batch_tokens), options,
            return_attention)
        empty = Hypothesis(tokens=[], score=0.0, log_probs=[], raw_score=0.0, finished=False,
                           attention=torch.zeros(0, 1) if return_attention else None)
        return [found.get(it.index) or [empty] for it in items]

    def encoder_self_attention(self, src: str) -> Tensor | None:
        """Encoder self-attention maps ``(layers, heads, S, S)`` of one sentence (S includes EOS),
        or None when the encoder has no self-attention layers (or the sentence is empty)."""
        if not self.recipe.model.encoder.self_attention_layers:
            return None
        (item,) = self.encode([src])
        if item.ids is None:
            return None
        with torch.inference_mode(), self._autocast():
            source, lengths, mask = pad_sources([item.ids], self.device)
            enc = self.model.encode(source, lengths, mask, need_attention=True)
        if not enc.self_attention:
            return None
        return torch.stack([layer[0] for layer in enc.self_attention]).float().cpu()

    def learned_activation_parameters(self) -> dict[str, dict[str, Any]]:
        """Learned activation parameters (AReLU alpha/beta, PReLU slopes, ...) by module path."""
        from nmt.model.activations import activation_parameters

        return activation_parameters(self.model)

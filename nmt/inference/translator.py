"""Translate text with a trained run: the :class:`Translator` API and the ``nmt translate`` command.

Python API::

    from nmt import Translator
    t = Translator.load("runs/fr-en")                   # best checkpoint, device from accelerate
    t.translate(["Je suis fatigué.", "Merci !"])        # -> ["I am tired.", "Thank you!"]
    t.translate(srcs, beam=5, n_best=3)                 # -> [TranslationResult, ...]
    t.translate(srcs, return_attention=True)            # attention (tgt_len × src_len) per hypothesis
    t.score(srcs, refs)                                 # log P(ref | src) per pair (sum, EOS included)

Input handling (API and command line alike):

- Sentences are batched by length (``decode.batch_tokens`` padded source tokens per batch) and
  the results are put back in input order.
- Text is cleaned the way the training data was: control characters (NUL, escape, ...; tabs and
  other whitespace become spaces), lone surrogates and non-characters are dropped, the recipe's
  ``data.filter.normalize`` Unicode normalisation is applied, and the result is stripped.
- An empty line (after cleaning) translates to an empty line; the model is not run on it.
- A line of more than ``decode.max_input_len`` subwords is truncated to its first
  ``max_input_len`` subwords (EOS is then appended), with a warning on stderr naming the line;
  it is never dropped.

``nmt translate`` reads ``-i FILE`` or stdin and writes ``-o FILE`` or stdout, exactly one line per
input line (``--n-best K``: exactly K lines per input line) in input order:

- Input is read as bytes and split on ``\\n`` only (a final line without newline counts; a
  trailing ``\\r`` is removed). Bytes that are not UTF-8 are replaced by U+FFFD with a warning on
  stderr naming the line (the line is still translated).
- Large inputs are streamed: :data:`CHUNK_LINES` lines are read, translated and written before
  the next chunk is read, so memory does not grow with the input.
- ``-o FILE`` is written to a temporary file in the same directory and renamed to FILE only when
  everything was translated, so an interrupted run never leaves a complete-looking FILE (it
  leaves no FILE at all, or the previous one untouched).
- ``--n-best K`` writes K lines per input line: ``INDEX<TAB>SCORE<TAB>TEXT`` where INDEX is the
  0-based input line number, SCORE the penalised search score (best first); without ``--beam``
  the beam is at least K. When fewer than K
  distinct hypotheses exist (an empty input has exactly one: the empty text with score 0), the
  remaining lines have SCORE ``-inf`` and an empty TEXT.
- ``--score-reference REF`` prints, instead of translations, one log-probability per line: the
  sum of the token log-probabilities (EOS included) of REF's line given the input line. The two
  files must have the same number of lines.
- Distributed: under ``torchrun --nproc_per_node N -m nmt translate ...`` (or ``accelerate
  launch``) the main process reads each chunk and shares it, every process translates an
  interleaved share of its sentences, the results are gathered and the main process writes them
  in input order; the output is the same as a single process's.
"""
from __future__ import annotations

import math
import os
import sys
import time
import unicodedata
import warnings
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import torch
from torch import Tensor

from nmt.data.vocab import EOS_ID
from nmt.errors import NmtError
from nmt.inference.devices import distributed_state
from nmt.inference.search import (
    Hypothesis,
    SearchOptions,
    pad_sources,
    score_targets,
    search,
)

#: lines read, translated and written at a time by ``nmt translate``
CHUNK_LINES = 10_000
#: warnings of one kind printed before the rest are only counted
MAX_WARNINGS = 20

__all__ = ["Translator", "TranslationResult", "TranslatedHypothesis", "clean_source",
           "translate_cli", "decode_split_timed", "CHUNK_LINES"]


# ------------------------------------------------------------------------------------- results

@dataclass
class TranslatedHypothesis:
    text: str  #: detokenized translation
    score: float  #: penalised search score (== log-probability without penalties)
    tokens: list[str]  #: target pieces, ending with "</s>" unless closed at the max length
    src_tokens: list[str]  #: source pieces the model saw (after truncation), ending with "</s>"
    attention: Tensor | None = None  #: (len(tokens), len(src_tokens)) when requested
    positions: Tensor | None = None  #: (len(tokens),) local-p predicted source positions
    token_log_probs: list[float] = field(default_factory=list)
    raw_score: float = 0.0  #: log-probability (sum of token_log_probs)


@dataclass
class TranslationResult:
    source: str  #: the input as given
    hypotheses: list[TranslatedHypothesis]  #: best first

    @property
    def text(self) -> str:
        return self.hypotheses[0].text if self.hypotheses else ""


@dataclass
class _Item:
    """One input sentence after cleaning and encoding."""

    index: int  #: position in the caller's list
    line: int  #: 1-based line number for messages
    text: str  #: cleaned text
    ids: list[int] | None  #: source ids ending in EOS; None for an empty input
    n_pieces: int = 0  #: subwords before truncation


# ------------------------------------------------------------------------------------ cleaning

_SPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85"}


def clean_source(text: str, normalize: str = "NFC") -> str:
    """Make arbitrary text safe for the tokenizer, like the training data was cleaned.

    Whitespace controls become spaces, other control characters (category Cc), lone surrogates
    (Cs) and non-characters are dropped; then Unicode normalisation ``normalize`` (``NFC``,
    ``NFKC`` or ``none``) and ``strip``.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a str sentence, got {type(text).__name__}")
    if not text.isprintable():  # fast path: most lines have nothing to clean
        chars = []
        for ch in text:
            if ch in _SPACE_CONTROLS:
                chars.append(" ")
                continue
            cat = unicodedata.category(ch)
            if cat in ("Cc", "Cs") or (cat == "Cn" and _is_noncharacter(ch)):
                continue
            chars.append(ch)
        text = "".join(chars)
    text = text.strip()
    if normalize != "none" and text and not unicodedata.is_normalized(normalize, text):
        text = unicodedata.normalize(normalize, text).strip()
    return text


def _is_noncharacter(ch: str) -> bool:
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


class _Warnings:
    """Warnings on stderr, at most MAX_WARNINGS per kind (then a count at :meth:`summary`)."""

    def __init__(self, prefix: str = "nmt translate"):
        self.prefix = prefix
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n <= MAX_WARNINGS:
            print(f"{self.prefix}: warning: {message}", file=sys.stderr, flush=True)
        if n == MAX_WARNINGS:
            print(f"{self.prefix}: warning: further {kind} warnings are only counted",
                  file=sys.stderr, flush=True)

    def summary(self) -> None:
        for kind, n in self.counts.items():
            if n > MAX_WARNINGS:
                print(f"{self.prefix}: warning: {n} lines in total had {kind}", file=sys.stderr,
                      flush=True)


# ---------------------------------------------------------------------------------- translator

def _resolve_device(device: Any, quantize: bool) -> torch.device:
    if device is not None:
        device = torch.device(device)
    else:
        device = distributed_state().device
    if quantize and device.type != "cpu":
        raise NmtError(f"--quantize (int8 dynamic quantization) runs on the CPU only, not on {device}")
    return device


def _linear_weights_to_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose Linear layers hold bfloat16 weights, for search under bf16 autocast.

    Autocast caches the bf16 copies of weights only while autograd records (leaf tensors that
    require grad); under ``torch.inference_mode`` it casts every Linear weight again at every call.
    In search that is the output layer (vocabulary × hidden) once per step: 19% of the CPU time of
    beam search (torch profiler, 8k vocabulary). Autocast would cast these weights to bfloat16 for
    the GEMM anyway, so the search computes the same numbers.
    """
    import copy

    from torch import nn

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.dtype == torch.float32:
            module.to(torch.bfloat16)
    # the decoder's GRU weights too: search runs them through F.linear (nmt.model.decoder.gru_cell), and
    # nn.GRU under CPU autocast accepts bf16 weights for teacher forcing (it computes in float32)
    model.decoder.rnn.to(torch.bfloat16)
    return model


class Translator:
    """A trained model with its tokenizers, ready to translate (eval mode, inference only)."""

    def __init__(self, recipe, tokenizers, model: torch.nn.Module, device: Any = None,
                 metadata: dict | None = None, quantize: bool = False, precision: str = "float32",
                 run_dir: str | os.PathLike | None = None, lexicon=None):
        if precision not in ("float32", "bf16"):
            raise NmtError(f"precision {precision!r}: choose float32 or bf16")
        if precision == "bf16" and quantize:
            raise NmtError("--precision bf16 and --quantize do not combine; choose one")
        self.precision = precision
        self.recipe = recipe
        self.tokenizers = tokenizers
        self.device = _resolve_device(device, quantize)
        model = model.eval()
        if quantize:
            from torch import nn
            from torch.ao.quantization import quantize_dynamic

            # Linear layers become int8; the GRU weights (used by the decoder's own cell) stay float.
            # torch.ao.quantization is deprecated in favour of torchao, but still works and needs
            # nothing else installed.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
                model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        if precision == "bf16":
            model = _linear_weights_to_bf16(model)
        self.model = model.to(self.device).eval()
        self.quantized = quantize
        self.metadata = metadata or {}
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.lexicon = lexicon  #: nmt.inference.shortlist.Lexicon, loaded from run_dir when a shortlist is asked for
        self.attention_kind = recipe.model.attention.kind
        self.warn = _Warnings()

    @classmethod
    def load(cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: Any = None,
             quantize: bool = False, precision: str = "float32") -> "Translator":
        """Load a run directory (``checkpoint``: ``best``, ``last`` or a weights file).

        ``precision="bf16"`` runs search under bf16 autocast (Linear weights held in bf16; attention
        softmax and log-probabilities stay float32): faster on CPUs with AVX-512 BF16 and on GPUs.
        """
        from nmt.inference.checkpoint import load_run

        recipe, tokenizers, model, metadata = load_run(run_dir, checkpoint)
        return cls(recipe, tokenizers, model, device=device, metadata=metadata, quantize=quantize,
                   precision=precision, run_dir=run_dir)

    # ---------------------------------------------------------------------------- preparation
    def _normalize_form(self) -> str:
        return getattr(getattr(getattr(self.recipe, "data", None), "filter", None), "normalize", "NFC")

    def _prepare(self, sources: Sequence[str], lines: Sequence[int] | None = None,
                 keep_empty_as_eos: bool = False, warn: bool = True) -> list[_Item]:
        """Clean, encode, truncate to ``decode.max_input_len`` and append EOS.

        ``warn``: report truncated lines now (else the caller reports them, see
        :meth:`_warn_truncated`).
        """
        if isinstance(sources, str):
            raise TypeError("translate/score take a list of sentences, not a single string")
        form = self._normalize_form()
        texts = [clean_source(s, form) for s in sources]
        lines = list(lines) if lines is not None else list(range(1, len(texts) + 1))
        todo = [i for i, t in enumerate(texts) if t]
        encoded = self.tokenizers.encode_src([texts[i] for i in todo]) if todo else []
        ids_of: dict[int, list[int]] = dict(zip(todo, encoded))
        limit = self.recipe.decode.max_input_len
        items = []
        for i, text in enumerate(texts):
            ids = list(ids_of.get(i, []))
            n_pieces = len(ids)
            ids = ids[:limit]
            if ids or keep_empty_as_eos:
                items.append(_Item(i, lines[i], text, ids + [EOS_ID], n_pieces))
            else:
                items.append(_Item(i, lines[i], text, None, n_pieces))
        if warn:
            self._warn_truncated(items)
        return items

    def _warn_truncated(self, items: Sequence[_Item]) -> None:
        limit = self.recipe.decode.max_input_len
        for it in sorted(items, key=lambda it: it.line):
            if it.n_pieces > limit:
                self.warn("truncated input", f"line {it.line}: {it.n_pieces} subwords, truncated to "
                          f"the first {limit} (decode.max_input_len)")

    def _batches(self, items: list[_Item], batch_tokens: int | None = None,
                 max_sentences: int | None = None, batch_sentences: int | None = None,
                 beam: int = 1) -> list[list[_Item]]:
        """Length-sorted batches of at most ``batch_tokens`` source tokens × ``beam`` rows.

        The budget counts the rows the search carries (sentences × beam): beam search over
        sentences × beam × vocabulary scores is fastest when that matrix stays in the CPU caches
        (measured: beam 5 at 1,600 source tokens per batch ran 39% faster than at 8,000).
        """
        todo = [it for it in items if it.ids is not None]
        if not todo:
            return []
        if batch_sentences:
            order = sorted(range(len(todo)), key=lambda k: -len(todo[k].ids))
            groups = [order[k: k + batch_sentences] for k in range(0, len(order), batch_sentences)]
        else:
            from nmt.data.batching import inference_batches

            budget = max(1, (batch_tokens or self.recipe.decode.batch_tokens) // max(1, beam))
            groups = inference_batches([len(it.ids) for it in todo], budget, max_sentences)
        return [[todo[k] for k in group] for group in groups]

    def _lexicon_for(self, options: SearchOptions):
        """The run's lexicon when ``options`` ask for a shortlist (loaded once), else None."""
        if not options.shortlist:
            return None
        if self.lexicon is None:
            from nmt.inference.shortlist import LEXICON_FILE, Lexicon

            if self.run_dir is None:
                raise NmtError("a shortlist needs a lexicon: pass Translator(..., lexicon=...) or load "
                               "the translator from its run directory")
            self.lexicon = Lexicon.load(self.run_dir / LEXICON_FILE)
        return self.lexicon

    def _search(self, batches: list[list[_Item]], options: SearchOptions) -> dict[int, list[Hypothesis]]:
        out: dict[int, list[Hypothesis]] = {}
        lexicon = self._lexicon_for(options)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), autocast:
            for group in batches:
                src, lengths, mask = pad_sources([it.ids for it in group], self.device)
                for it, hyps in zip(group, search(self.model, src, lengths, mask, options, lexicon=lexicon)):
                    out[it.index] = hyps
        return out

    def _options(self, beam: int | None, n_best: int, return_attention: bool,
                 overrides: dict[str, Any]) -> SearchOptions:
        """Search options: the recipe's ``decode`` section, then these values. Without an explicit
        ``beam`` the recipe's beam is widened to ``n_best`` if needed."""
        if beam is None and isinstance(n_best, int):
            beam = max(self.recipe.decode.beam, n_best)
        return SearchOptions.from_config(self.recipe.decode, beam=beam, n_best=n_best,
                                         return_attention=return_attention, **overrides)

    def _detok(self, hyps: Sequence[Hypothesis]) -> list[str]:
        if not hyps:
            return []
        return self.tokenizers.decode_tgt([h.tokens for h in hyps])

    # -------------------------------------------------------------------------------- public
    def translate(self, sources: Sequence[str], beam: int | None = None, n_best: int = 1,
                  return_scores: bool = False, return_attention: bool = False, *,
                  batch_tokens: int | None = None, max_sentences: int | None = None,
                  lines: Sequence[int] | None = None, **overrides: Any):
        """Translate sentences, returned in input order.

        Returns ``list[str]`` (the best translation of each) by default; with ``n_best > 1``,
        ``return_scores`` or ``return_attention`` a list of :class:`TranslationResult`.
        ``beam`` defaults to the recipe's ``decode.beam`` (at least ``n_best``; 1 = greedy, which
        ignores the length and coverage penalties). ``overrides`` are
        :class:`~nmt.inference.search.SearchOptions` fields (``length_penalty``, ``coverage_penalty``,
        ``max_len_a``, ``max_len_b``, ``min_len``, ``no_repeat_ngram``); ``lines`` are the
        line numbers used in warnings (default 1, 2, ...).
        """
        options = self._options(beam, n_best, return_attention, overrides)
        items = self._prepare(sources, lines)
        found = self._search(self._batches(items, batch_tokens, max_sentences, beam=options.beam), options)
        rich = n_best > 1 or return_scores or return_attention
        if not rich:
            best = [found[it.index][0] if found.get(it.index) else None for it in items]
            texts = self._detok([h for h in best if h is not None])
            it_texts = iter(texts)
            return [next(it_texts) if h is not None else "" for h in best]
        all_hyps = [h for it in items for h in found.get(it.index, [])]
        it_texts = iter(self._detok(all_hyps))
        results = []
        for it in items:
            hyps = found.get(it.index)
            if it.ids is None or not hyps:
                results.append(TranslationResult(sources[it.index], [TranslatedHypothesis(
                    text="", score=0.0, tokens=[], src_tokens=[], token_log_probs=[])]))
                continue
            src_tokens = self._src_tokens(it)
            out = []
            for h in hyps:
                out.append(TranslatedHypothesis(
                    text=next(it_texts), score=h.score,
                    tokens=self.tokenizers.tgt_pieces_from_ids(h.tokens), src_tokens=src_tokens,
                    attention=h.attention, positions=h.positions, token_log_probs=h.log_probs,
                    raw_score=h.raw_score))
            results.append(TranslationResult(sources[it.index], out))
        return results

    def _src_tokens(self, item: _Item) -> list[str]:
        pieces = self.tokenizers.src_pieces(item.text) if item.text else []
        return pieces[: len(item.ids) - 1] + ["</s>"]

    def score(self, sources: Sequence[str], targets: Sequence[str], *,
              batch_tokens: int | None = None, return_token_log_probs: bool = False):
        """``log P(target | source)`` per pair: the sum of the target's token log-probabilities,
        EOS included (forced decoding; no penalties). Sources are cleaned/truncated as for
        :meth:`translate`; an empty source is scored as the bare EOS. With
        ``return_token_log_probs`` also the list of per-token log-probabilities per pair.
        """
        if isinstance(targets, str):
            raise TypeError("score takes a list of target sentences, not a single string")
        if len(sources) != len(targets):
            raise NmtError(f"score: {len(sources)} sources but {len(targets)} targets")
        items = self._prepare(sources, keep_empty_as_eos=True)
        found = self._score(self._batches(items, batch_tokens), self._target_ids(targets))
        scores = [found[it.index][0] for it in items]
        per_token = [found[it.index][1] for it in items]
        return (scores, per_token) if return_token_log_probs else scores

    def _target_ids(self, targets: Sequence[str]) -> list[list[int]]:
        form = self._normalize_form()
        texts = [clean_source(t, form) for t in targets]
        nonempty = [i for i, t in enumerate(texts) if t]
        ids: list[list[int]] = [[] for _ in texts]
        if nonempty:
            for i, row in zip(nonempty, self.tokenizers.encode_tgt([texts[i] for i in nonempty])):
                ids[i] = list(row)
        return ids

    def _score(self, batches: list[list[_Item]], tgt_ids: Sequence[Sequence[int]]
               ) -> dict[int, tuple[float, list[float]]]:
        """Forced decoding of ``tgt_ids[item.index]`` (EOS appended) for every item of ``batches``."""
        out: dict[int, tuple[float, list[float]]] = {}
        with torch.inference_mode():
            for group in batches:
                src, lengths, mask = pad_sources([it.ids for it in group], self.device)
                sums, toks = score_targets(self.model, src, lengths, mask,
                                           [tgt_ids[it.index] for it in group])
                for it, total, per_token in zip(group, sums, toks):
                    out[it.index] = (total, per_token)
        return out

    def encoder_self_attention(self, src: str) -> Tensor | None:
        """Encoder self-attention maps ``(layers, heads, S, S)`` of one sentence (S includes EOS),
        or None when the encoder has no self-attention layers (or the sentence is empty)."""
        if not getattr(self.recipe.model.encoder, "self_attention_layers", 0):
            return None
        (item,) = self._prepare([src])
        if item.ids is None:
            return None
        with torch.inference_mode():
            source, lengths, mask = pad_sources([item.ids], self.device)
            enc = self.model.encode(source, lengths, mask, need_attention=True)
        if not enc.self_attention:
            return None
        return torch.stack([layer[0] for layer in enc.self_attention]).float().cpu()

    def learned_activation_parameters(self) -> dict[str, dict[str, Any]]:
        """Learned activation parameters (AReLU alpha/beta, PReLU slopes, ...) by module path."""
        try:
            from nmt.model.activations import activation_parameters
        except ImportError:  # pragma: no cover - the registry always provides it
            return {}
        return activation_parameters(self.model)


# ----------------------------------------------------------------------------- bench helper

def decode_split_timed(translator: Translator, sources: Sequence[str], beam: int,
                       batch_tokens: int | None = None, batch_sentences: int | None = None,
                       shortlist: int | None = None) -> tuple[list[str], float, int]:
    """Translate ``sources`` timing only the search and detokenization (not loading/encoding).

    ``batch_sentences`` makes fixed batches of that many sentences (longest first) instead of
    token batches. Returns ``(translations, seconds, n_target_tokens)``, the last counting the
    generated target subwords including EOS.
    """
    options = translator._options(beam, 1, False, {"shortlist": shortlist})
    translator._lexicon_for(options)  # loaded before the clock starts, as the model is
    items = translator._prepare(sources)
    batches = translator._batches(items, batch_tokens, None, batch_sentences, beam=options.beam)
    start = time.perf_counter()
    found = translator._search(batches, options)
    best = [found[it.index][0] if found.get(it.index) else None for it in items]
    texts = iter(translator._detok([h for h in best if h is not None]))
    out = [next(texts) if h is not None else "" for h in best]
    seconds = time.perf_counter() - start
    n_tokens = sum(len(h.tokens) for h in best if h is not None)
    return out, seconds, n_tokens


# ----------------------------------------------------------------------------------------- CLI

def _iter_lines(stream: BinaryIO, name: str, warn: _Warnings) -> Iterator[str]:
    """Decoded lines of a binary stream, split on b"\\n" only; bad UTF-8 replaced with a warning."""
    for number, raw in enumerate(stream, start=1):
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            warn("invalid UTF-8", f"{name} line {number}: not valid UTF-8 ({exc.reason} at byte "
                 f"{exc.start}); undecodable bytes replaced by U+FFFD")
            yield raw.decode("utf-8", errors="replace")


def _count_lines(path: str) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _open_input(path: str | None, what: str) -> BinaryIO:
    if path is None or path == "-":
        return sys.stdin.buffer
    if not Path(path).is_file():
        raise NmtError(f"{what} {path} not found")
    return open(path, "rb")


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def _format_score(score: float) -> str:
    return f"{score:.4f}" if math.isfinite(score) else ("-inf" if score < 0 else "inf")


class _Output:
    """stdout, or a file written to a temporary name and renamed at :meth:`commit`."""

    def __init__(self, path: str | None):
        self.path = path
        self.tmp: Path | None = None
        if path is None or path == "-":
            self.handle = sys.stdout.buffer
        else:
            import tempfile

            target = Path(path)
            if target.is_dir():
                raise NmtError(f"output {path} is a directory; give a file name")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                           dir=target.parent)
            except OSError as exc:
                raise NmtError(f"cannot write the output file {path}: {exc.strerror or exc}") from None
            self.tmp = Path(tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual mode
            self.handle = os.fdopen(fd, "wb")

    def write_lines(self, lines: list[str]) -> None:
        if lines:
            self.handle.write(("\n".join(lines) + "\n").encode("utf-8", errors="replace"))
        self.handle.flush()

    def commit(self) -> None:
        if self.tmp is None:
            return
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)
        self.tmp = None

    def abort(self) -> None:
        if self.tmp is not None:
            self.handle.close()
            self.tmp.unlink(missing_ok=True)
            self.tmp = None


def _cli_options(args) -> tuple[int | None, int, dict[str, Any]]:
    beam = getattr(args, "beam", None)
    if getattr(args, "greedy", False):
        if beam not in (None, 1):
            raise NmtError(f"--greedy and --beam {beam} contradict each other; give one of them")
        beam = 1
    n_best = getattr(args, "n_best", None) or 1
    if n_best < 1:
        raise NmtError(f"--n-best must be >= 1, got {n_best}")
    if beam is not None and beam < 1:
        raise NmtError(f"--beam must be >= 1, got {beam}")
    overrides = {name: getattr(args, name, None) for name in
                 ("length_penalty", "coverage_penalty", "max_len_a", "max_len_b", "min_len",
                  "no_repeat_ngram", "shortlist")}
    return beam, n_best, {k: v for k, v in overrides.items() if v is not None}


def translate_cli(args) -> int:
    """``nmt translate RUN_DIR [-i IN] [-o OUT] ...`` (see the module docstring for the formats)."""
    state = distributed_state()
    world, rank, main = state.num_processes, state.process_index, state.is_main_process
    beam, n_best, overrides = _cli_options(args)
    reference = getattr(args, "score_reference", None)
    if reference and getattr(args, "n_best", None):
        raise NmtError("--score-reference and --n-best exclude each other")
    batch_tokens = getattr(args, "batch_tokens", None)
    if batch_tokens is not None and batch_tokens < 1:
        raise NmtError(f"--batch-tokens must be >= 1, got {batch_tokens}")
    translator = Translator.load(args.run_dir, getattr(args, "checkpoint", "best") or "best",
                                 quantize=getattr(args, "quantize", False),
                                 precision=getattr(args, "precision", None) or "float32")
    if not main:
        translator.warn.prefix = f"nmt translate [rank {rank}]"
    options = translator._options(beam, n_best, False, overrides)  # validate before reading input
    translator._lexicon_for(options)
    nbest_format = getattr(args, "n_best", None) is not None
    input_name = args.input or "stdin"
    output = src_stream = ref_stream = None
    try:
        problem = None
        if main:  # the main process alone reads the input: check and open it, then tell the others
            try:
                src_stream, ref_stream = _open_inputs(args.input, reference)
                output = _Output(args.output)
            except NmtError as exc:
                problem = str(exc)
        if world > 1:
            from accelerate.utils import broadcast_object_list

            box = [problem]
            broadcast_object_list(box, from_process=0)
            problem = box[0]
        if problem is not None:
            raise NmtError(problem)
        if main:
            src_lines = _iter_lines(src_stream, input_name, translator.warn)
            ref_lines = _iter_lines(ref_stream, reference, translator.warn) if reference else None
        first = 0  # 0-based index of the chunk's first line
        while True:
            payload: Any = None
            if main:
                try:
                    payload = _read_chunk(src_lines, ref_lines, first, input_name, reference)
                except NmtError as exc:
                    payload = ("error", str(exc))
            if world > 1:
                from accelerate.utils import broadcast_object_list

                box = [payload]
                broadcast_object_list(box, from_process=0)
                payload = box[0]
            if isinstance(payload, tuple):
                raise NmtError(payload[1])
            if payload is None:
                break
            srcs, refs = payload["src"], payload.get("ref")
            if refs is not None:
                done = _score_share(translator, srcs, refs, first, rank, world, batch_tokens)
            else:
                done = _translate_share(translator, srcs, first, rank, world, options, batch_tokens,
                                        nbest_format)
            if world > 1:
                from accelerate.utils import gather_object

                done = gather_object(done)
            if main:
                done.sort(key=lambda pair: pair[0])
                output.write_lines([text for _, texts in done for text in texts])
            first += len(srcs)
        if main:
            translator.warn.summary()
            output.commit()
        if world > 1:
            state.wait_for_everyone()  # leave together: a rank exiting early breaks the others' gloo
    except BaseException:
        if output is not None:
            output.abort()
        raise
    finally:
        for stream in (src_stream, ref_stream):
            if stream is not None and stream is not sys.stdin.buffer:
                stream.close()
        if world > 1:
            _close_process_group()
    return 0


def _close_process_group() -> None:
    """Tear the process group down before the interpreter exits (else gloo may abort at exit)."""
    try:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except Exception:  # pragma: no cover - best effort at shutdown
        pass


def _open_inputs(path: str | None, reference: str | None) -> tuple[BinaryIO, BinaryIO | None]:
    """Open the input (and reference) streams; line counts of two files are compared up front."""
    if reference and path not in (None, "-"):
        for name, what in ((path, "input file"), (reference, "reference file")):
            if not Path(name).is_file():
                raise NmtError(f"{what} {name} not found")
        n_src, n_ref = _count_lines(path), _count_lines(reference)
        if n_src != n_ref:
            raise NmtError(f"--score-reference: {path} has {n_src} lines but {reference} has "
                           f"{n_ref}; the files must be line-aligned")
    src = _open_input(path, "input file")
    try:
        ref = _open_input(reference, "reference file") if reference else None
    except NmtError:
        if src is not sys.stdin.buffer:
            src.close()
        raise
    return src, ref


def _read_chunk(src_lines: Iterator[str], ref_lines: Iterator[str] | None, first: int,
                input_name: str, reference: str | None) -> dict[str, list[str]] | None:
    """The next CHUNK_LINES input lines (and as many reference lines), or None at the end."""
    srcs = list(islice(src_lines, CHUNK_LINES))
    refs = None
    if ref_lines is not None:
        refs = list(islice(ref_lines, len(srcs)))
        if len(refs) < len(srcs):
            raise NmtError(f"--score-reference: {reference} has only {first + len(refs)} lines but "
                           f"{input_name} has more ({first + len(srcs)} or more); the two must be "
                           "line-aligned")
        if not srcs and next(ref_lines, None) is not None:
            raise NmtError(f"--score-reference: {input_name} has {first} lines but {reference} has "
                           "more; the two must be line-aligned")
    if not srcs:
        return None
    return {"src": srcs, "ref": refs} if refs is not None else {"src": srcs}


def _share(translator: Translator, srcs: list[str], first: int, rank: int, world: int,
           batch_tokens: int | None, keep_empty_as_eos: bool = False, beam: int = 1):
    """This process's share of a chunk: whole batches, round-robin over the length-sorted batches.

    Every process prepares the whole chunk and cuts the same batches as a single process would, so
    each sentence is computed in exactly the same batch (same shapes, same arithmetic) whatever the
    number of processes: the output does not depend on it. Truncation warnings come from the
    process that translates the line.
    """
    lines = [first + i + 1 for i in range(len(srcs))]
    items = translator._prepare(srcs, lines, keep_empty_as_eos=keep_empty_as_eos, warn=False)
    batches = translator._batches(items, batch_tokens, beam=beam)[rank::world]
    mine = [it for group in batches for it in group]
    translator._warn_truncated(mine)
    if rank == 0:  # empty inputs need no model: the main process answers them
        mine += [it for it in items if it.ids is None]
    return batches, mine


def _score_share(translator: Translator, srcs: list[str], refs: list[str], first: int, rank: int,
                 world: int, batch_tokens: int | None) -> list[tuple[int, list[str]]]:
    batches, mine = _share(translator, srcs, first, rank, world, batch_tokens, keep_empty_as_eos=True)
    found = translator._score(batches, translator._target_ids(refs))
    return [(it.index, [f"{found[it.index][0]:.6f}"]) for it in mine]


def _translate_share(translator: Translator, srcs: list[str], first: int, rank: int, world: int,
                     options: SearchOptions, batch_tokens: int | None, nbest_format: bool
                     ) -> list[tuple[int, list[str]]]:
    """This process's output lines: ``(chunk index, lines)`` pairs."""
    batches, mine = _share(translator, srcs, first, rank, world, batch_tokens, beam=options.beam)
    found = translator._search(batches, options)
    hyps = [h for it in mine for h in found.get(it.index, [])]
    texts = iter(translator._detok(hyps))
    out = []
    for it in mine:
        pairs = [(h.score, _one_line(next(texts))) for h in found.get(it.index, [])]
        if not nbest_format:
            out.append((it.index, [pairs[0][1] if pairs else ""]))
            continue
        if it.ids is None:
            pairs = [(0.0, "")]
        pairs += [(-math.inf, "")] * (options.n_best - len(pairs))
        out.append((it.index, [f"{first + it.index}\t{_format_score(sc)}\t{t}" for sc, t in pairs]))
    return out

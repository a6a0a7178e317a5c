"""Translate with an exported model (``nmt export``) on onnxruntime and numpy: no PyTorch.

Python API::

    from nmt.inference.onnx_translator import OnnxTranslator
    t = OnnxTranslator.load("export/fr-en")             # the directory `nmt export` wrote
    t.translate(["Je suis fatigué.", "Merci !"])        # -> ["I am tired.", "Thank you!"]
    t.translate(srcs, beam=5, n_best=3)                 # -> [TranslationResult, ...]

Command line: ``nmt translate --engine onnx EXPORT_DIR -i IN -o OUT`` (same input and output
formats as with a run directory).

Importing this module imports no torch: it needs numpy, onnxruntime and sentencepiece only.
Search is a numpy port of :mod:`nmt.inference.search` with the same rules (see that module's
docstring): greedy and beam search, GNMT length and coverage penalties, ``max_len_a · S +
max_len_b`` maximum lengths (closed hypotheses count), ``min_len``, ``no_repeat_ngram``, PAD and
BOS never generated, n-best pools and the exact stopping rule. The graphs give float32
log-probabilities of every target token, so results match PyTorch float32 decoding up to
float rounding (the parity tests check tokens and scores). Not supported here: a lexical shortlist
(the full vocabulary is scored), attention in the results, reference scoring.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nmt.config import DecodeConfig, Recipe, recipe_from_dict
from nmt.data.grouping import length_groups
from nmt.data.tokenizer import SubwordTokenizers
from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID
from nmt.errors import CheckpointError, NmtError
from nmt.inference.sources import (
    TranslatedHypothesis,
    TranslationResult,
    WarningCounter,
    clean_source,
    make_sources,
    shard_of,
    warn_truncated,
)

EXPORT_FORMAT = "nmt-onnx"
EXPORT_VERSION = 1
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
META_FILE = "export.json"
#: coverage below this is clamped before the log of the coverage penalty (as in nmt.inference.search)
COVERAGE_FLOOR = 1e-6

__all__ = ["OnnxTranslator", "OnnxModel", "Hypothesis", "search", "greedy_search", "beam_search",
           "pad_sources", "max_lengths", "read_export"]

_REEXPORT = "re-export the run with `nmt export RUN_DIR -o EXPORT_DIR`"


# --------------------------------------------------------------------------------------- search

def max_lengths(options: DecodeConfig, src_lengths: np.ndarray) -> np.ndarray:
    """``max(floor(a · S + b), min_len + 1, 1)`` generated tokens (EOS included) per sentence."""
    limit = np.floor(options.max_len_a * src_lengths.astype(np.float64) + options.max_len_b).astype(np.int64)
    return np.maximum(limit, max(1, options.min_len + 1))


@dataclass
class Hypothesis:
    tokens: list[int]  #: target ids without BOS; ends with EOS unless closed at the max length
    score: float  #: penalised score (ranking); equals ``raw_score`` without penalties
    log_probs: list[float]  #: per token
    raw_score: float = 0.0  #: sum of the token log-probs (EOS included)
    finished: bool = True  #: ended with EOS (False: closed at the max length)


def _length_penalty(lengths, alpha: float):
    """GNMT ``lp(n) = ((5 + n) / 6) ** alpha`` in float64, returned as float32 (as search does)."""
    return np.float32(((5.0 + np.asarray(lengths, dtype=np.float64)) / 6.0) ** alpha)


def _coverage_penalty(coverage: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    logs = np.log(np.clip(coverage.astype(np.float32), COVERAGE_FLOOR, 1.0))
    return np.float32(beta) * (logs * mask.astype(np.float32)).sum(-1)


def pad_sources(sources: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Id lists (each non-empty, EOS appended) -> ``src (B, S)`` int64 padded with PAD, ``lengths (B,)``."""
    if not sources or any(len(s) == 0 for s in sources):
        raise ValueError("pad_sources needs a non-empty list of non-empty id lists")
    lengths = np.array([len(s) for s in sources], dtype=np.int64)
    src = np.full((len(sources), int(lengths.max())), PAD_ID, dtype=np.int64)
    for row, ids in enumerate(sources):
        src[row, : len(ids)] = ids
    return src, lengths


def _topk(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest values of each row, largest first."""
    if k < values.shape[1]:
        part = np.argpartition(-values, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    order = np.argsort(-np.take_along_axis(values, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def _forbid_(log_probs: np.ndarray, history: np.ndarray | None, step: int, opts: DecodeConfig) -> None:
    """PAD and BOS always, EOS before ``min_len`` tokens, repeated n-grams: -inf, in place."""
    log_probs[:, PAD_ID] = -np.inf
    log_probs[:, BOS_ID] = -np.inf
    if step < opts.min_len:
        log_probs[:, EOS_ID] = -np.inf
    n = opts.no_repeat_ngram
    if n > 0 and step >= n:
        windows = np.lib.stride_tricks.sliding_window_view(history[:, :step], n, axis=1)  # (N, W, n)
        if n > 1:
            last = history[:, step - n + 1: step]
            match = (windows[:, :, : n - 1] == last[:, None, :]).all(-1)
        else:
            match = np.ones(windows.shape[:2], dtype=bool)
        banned = np.where(match, windows[:, :, n - 1], PAD_ID)
        np.put_along_axis(log_probs, banned, -np.inf, axis=1)


# ----------------------------------------------------------------------------------------- model

def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise NmtError("the ONNX engine needs onnxruntime: pip install 'nmt[onnx]'") from None
    return onnxruntime


class OnnxModel:
    """The two graphs of an export: :meth:`encode` and :meth:`step` on numpy arrays."""

    def __init__(self, export_dir: str | os.PathLike, meta: dict[str, Any], threads: int | None = None):
        ort = _onnxruntime()
        self.dir = Path(export_dir)
        self.state_names = list(meta["state"])
        self.memory_names = list(meta["memory"])
        self.with_positions = bool(meta.get("positions", False))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        state_in = [f"state.{n}" for n in self.state_names]
        memory_in = [f"memory.{n}" for n in self.memory_names]
        self.encoder = self._session(ort, meta["encoder"], opts, ["src", "src_lengths"], state_in + memory_in)
        outputs = ["log_probs"] + [f"next.{n}" for n in self.state_names] + ["attention"] \
            + (["positions"] if self.with_positions else [])
        self.decoder = self._session(ort, meta["decoder_step"], opts,
                                     ["prev_tokens"] + state_in + memory_in, outputs)
        self._step_outputs = outputs

    def _session(self, ort, name: str, opts, inputs: list[str], outputs: list[str]):
        path = self.dir / name
        if not path.is_file():
            raise CheckpointError(f"{path} not found; {_REEXPORT}")
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path} is not a readable ONNX model (truncated or corrupt?): "
                                  f"{first[:300]}; {_REEXPORT}") from None
        have_in = [i.name for i in session.get_inputs()]
        have_out = [o.name for o in session.get_outputs()]
        if have_in != inputs or have_out != outputs:
            raise CheckpointError(
                f"{path} is not the graph {META_FILE} describes (inputs {have_in}, outputs {have_out}; "
                f"expected inputs {inputs}, outputs {outputs}); {_REEXPORT}")
        return session

    def encode(self, src: np.ndarray, lengths: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``src (B, S)``, ``lengths (B,)`` -> initial decoder state and attention memory (by field)."""
        out = self.encoder.run(None, {"src": src, "src_lengths": lengths})
        n = len(self.state_names)
        return dict(zip(self.state_names, out[:n])), dict(zip(self.memory_names, out[n:]))

    def step(self, prev: np.ndarray, state: dict[str, np.ndarray], memory: dict[str, np.ndarray]):
        """One decoder step: ``(log_probs (N, V) float32, next state, attention (N, S), positions or None)``."""
        feed = {"prev_tokens": prev}
        feed.update((f"state.{n}", state[n]) for n in self.state_names)
        feed.update((f"memory.{n}", memory[n]) for n in self.memory_names)
        out = self.decoder.run(None, feed)
        n = len(self.state_names)
        new_state = dict(zip(self.state_names, out[1: 1 + n]))
        positions = out[2 + n] if self.with_positions else None
        return out[0], new_state, out[1 + n], positions


def _rows(tensors: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {name: value[index] for name, value in tensors.items()}


# ---------------------------------------------------------------------------------------- search

def search(model: OnnxModel, src: np.ndarray, lengths: np.ndarray, opts: DecodeConfig
           ) -> list[list[Hypothesis]]:
    """Greedy search when ``opts.beam == 1``, else beam search. One list per sentence."""
    opts.check()
    if opts.beam == 1:
        return greedy_search(model, src, lengths, opts)
    return beam_search(model, src, lengths, opts)


#: greedy search drops ended rows once this fraction of its rows has ended (as nmt.inference.search)
_DROP_FINISHED_FRACTION = 0.25


def greedy_search(model: OnnxModel, src: np.ndarray, lengths: np.ndarray, opts: DecodeConfig
                  ) -> list[list[Hypothesis]]:
    """Arg-max decoding; one hypothesis per sentence (``opts.beam`` is ignored)."""
    batch, src_len = src.shape
    src_mask = np.arange(src_len)[None, :] < lengths[:, None]
    state, memory = model.encode(src, lengths)
    max_lens = max_lengths(opts, lengths)
    horizon = int(max_lens.max())
    beta = opts.coverage_penalty
    tokens = np.full((batch, horizon), PAD_ID, dtype=np.int64)  # also the n-gram history
    tok_lps = np.zeros((batch, horizon), dtype=np.float32)
    coverage = np.zeros((batch, src_len), dtype=np.float32) if beta else None
    out_len = np.zeros(batch, dtype=np.int64)
    active = np.arange(batch)  # sentence of each row
    running = np.ones(batch, dtype=bool)
    row_len = np.zeros(batch, dtype=np.int64)
    act_max = max_lens
    prev = np.full(batch, BOS_ID, dtype=np.int64)
    for step in range(horizon):
        log_probs, new_state, attention, _ = model.step(prev, state, memory)
        seen = tokens[active] if opts.no_repeat_ngram else None
        _forbid_(log_probs, seen, step, opts)
        tok = log_probs.argmax(1)
        best = log_probs[np.arange(tok.size), tok]
        tokens[active, step] = tok
        tok_lps[active, step] = best
        ended = (tok == EOS_ID) | (act_max <= step + 1)
        end_len = np.full(tok.size, step + 1, dtype=np.int64)
        counted = running
        if opts.no_repeat_ngram:
            blocked = ~np.isfinite(best)  # every token forbidden: the row ends without one
            ended |= blocked
            end_len -= blocked
            counted = running & ~blocked
        if beta:  # the attention of the steps that are part of the output
            coverage[active[counted]] += attention[counted]
        ended &= running
        row_len = np.where(ended, end_len, row_len)
        running &= ~ended
        n_running = int(running.sum())
        if n_running == 0:
            break
        rows = running.size
        if rows - n_running >= max(1, int(rows * _DROP_FINISHED_FRACTION)):
            done = np.flatnonzero(~running)
            out_len[active[done]] = row_len[done]
            keep = np.flatnonzero(running)
            state, memory = _rows(new_state, keep), _rows(memory, keep)
            active, act_max, prev, row_len = active[keep], act_max[keep], tok[keep], row_len[keep]
            running = running[keep]
        else:
            state, prev = new_state, tok
    out_len[active] = row_len
    valid = np.arange(horizon)[None, :] < out_len[:, None]
    tok_lps = np.where(valid, tok_lps, np.float32(0.0))
    raw = tok_lps.sum(1, dtype=np.float32)
    scores = raw / _length_penalty(np.maximum(out_len, 1), opts.length_penalty)
    if beta:
        scores = scores + _coverage_penalty(coverage, src_mask, beta)
    results = []
    for b in range(batch):
        n = int(out_len[b])
        toks = tokens[b, :n].tolist()
        results.append([Hypothesis(tokens=toks, score=float(scores[b]), log_probs=tok_lps[b, :n].tolist(),
                                   raw_score=float(raw[b]), finished=bool(n > 0 and toks[-1] == EOS_ID))])
    return results


def beam_search(model: OnnxModel, src: np.ndarray, lengths: np.ndarray, opts: DecodeConfig
                ) -> list[list[Hypothesis]]:
    """Batched beam search: up to ``n_best`` hypotheses per sentence, best first."""
    batch, src_len = src.shape
    K, P = opts.beam, opts.n_best
    alpha, beta = opts.length_penalty, opts.coverage_penalty
    src_mask = np.arange(src_len)[None, :] < lengths[:, None]
    state, memory = model.encode(src, lengths)
    max_lens = max_lengths(opts, lengths)
    horizon = int(max_lens.max())
    rows0 = np.repeat(np.arange(batch), K)
    # a beam's parent is always a beam of the same sentence, so the memory rows (K copies per
    # sentence) only change when sentences leave the batch
    state, memory = _rows(state, rows0), _rows(memory, rows0)
    beam_scores = np.full((batch, K), -np.inf, dtype=np.float32)
    beam_scores[:, 0] = 0.0  # only beam 0 is live at first
    beam_scores = beam_scores.reshape(-1)
    seqs = np.zeros((batch * K, 0), dtype=np.int64)
    hist_lp = np.zeros((batch * K, 0), dtype=np.float32)
    coverage = np.zeros((batch * K, src_len), dtype=np.float32) if beta else None
    active = np.arange(batch)
    act_max = max_lens
    prev = np.full(batch * K, BOS_ID, dtype=np.int64)
    pool_score = np.full((batch, P), -np.inf, dtype=np.float32)
    pool_raw = np.zeros((batch, P), dtype=np.float32)
    pool_len = np.zeros((batch, P), dtype=np.int64)
    pool_tok = np.full((batch, P, horizon), PAD_ID, dtype=np.int64)
    pool_lp = np.zeros((batch, P, horizon), dtype=np.float32)

    for step in range(horizon):
        n_act = active.size
        log_probs, new_state, attention, _ = model.step(prev, state, memory)  # (n_act*K, V)
        vocab = log_probs.shape[1]
        _forbid_(log_probs, seqs, step, opts)
        at_max = act_max <= step + 1
        new_cov = coverage + attention if beta else None
        # the K best non-EOS continuations are among the 2K best (each beam has one EOS
        # continuation), and a sentence's 2K best are among its beams' own 2K best
        per_row = min(2 * K, vocab)
        row_tok = _topk(log_probs, per_row)
        row_lp = np.take_along_axis(log_probs, row_tok, 1)
        cand = (beam_scores.reshape(n_act, K, 1) + row_lp.reshape(n_act, K, per_row)).reshape(n_act, -1)
        best_pos = _topk(cand, 2 * K)
        best_val = np.take_along_axis(cand, best_pos, 1)
        best_lp = np.take_along_axis(row_lp.reshape(n_act, -1), best_pos, 1)
        best_tok = np.take_along_axis(row_tok.reshape(n_act, -1), best_pos, 1)
        best_par = best_pos // per_row
        # 1. the top K continuations overall: EOS ones (and all of them at max length) are pooled
        top_val, top_tok, top_par = best_val[:, :K], best_tok[:, :K], best_par[:, :K]
        admit = ((top_tok == EOS_ID) | at_max[:, None]) & np.isfinite(top_val)
        if admit.any():
            pen = top_val / _length_penalty(step + 1, alpha)
            if beta:
                cand_rows = np.arange(n_act)[:, None] * K + top_par
                pen = pen + _coverage_penalty(new_cov[cand_rows], src_mask[active][:, None, :], beta)
            pen = np.where(admit, pen, np.float32(-np.inf))
            worst = pool_score[active, P - 1]
            sub = np.flatnonzero((pen > worst[:, None]).any(1))
            if sub.size:
                ids = active[sub]
                flat = (sub[:, None] * K + top_par[sub]).reshape(-1)  # parents of the candidates
                pad = horizon - step - 1
                c_tok = np.concatenate([seqs[flat], top_tok[sub].reshape(-1, 1)], 1)
                c_lp = np.concatenate([hist_lp[flat], best_lp[sub, :K].reshape(-1, 1)], 1)
                c_tok = np.pad(c_tok, ((0, 0), (0, pad)), constant_values=PAD_ID).reshape(sub.size, K, horizon)
                c_lp = np.pad(c_lp, ((0, 0), (0, pad))).reshape(sub.size, K, horizon)
                merged = np.concatenate([pool_score[ids], pen[sub]], 1)  # (s, P + K)
                sel = np.argsort(-merged, axis=1, kind="stable")[:, :P]

                def merge(pool: np.ndarray, cand_x: np.ndarray) -> None:
                    both = np.concatenate([pool[ids], cand_x], 1)
                    index = sel.reshape(sel.shape + (1,) * (both.ndim - 2))
                    pool[ids] = np.take_along_axis(both, index, 1)

                merge(pool_tok, c_tok)
                merge(pool_lp, c_lp)
                merge(pool_raw, top_val[sub])
                merge(pool_len, np.full((sub.size, K), step + 1, dtype=np.int64))
                pool_score[ids] = np.take_along_axis(merged, sel, 1)
        if at_max.all():
            break
        # 2. the next beams: the top K continuations that do not end in EOS (order kept)
        order = np.argsort(best_tok == EOS_ID, axis=1, kind="stable")[:, :K]
        cont_val = np.take_along_axis(best_val, order, 1)
        cont_tok = np.take_along_axis(best_tok, order, 1)
        cont_par = np.take_along_axis(best_par, order, 1)
        cont_lp = np.take_along_axis(best_lp, order, 1)
        # 4. a sentence is done at its max length, without finite beams, or when no beam can
        # still beat its pool's worst entry (log-probs <= 0: raw / lp(max_len) bounds the future)
        bound = cont_val[:, 0] / _length_penalty(act_max, alpha)
        worst = pool_score[active, P - 1]
        done = at_max | ~np.isfinite(cont_val[:, 0]) | (worst >= bound)
        if done.all():
            break
        keep = np.flatnonzero(~done)
        parents = (keep[:, None] * K + cont_par[keep]).reshape(-1)
        tok = cont_tok[keep].reshape(-1)
        state = _rows(new_state, parents)
        if keep.size < n_act:
            memory = _rows(memory, (keep[:, None] * K + np.arange(K)).reshape(-1))
            active, act_max = active[keep], act_max[keep]
        beam_scores = cont_val[keep].reshape(-1)
        seqs = np.concatenate([seqs[parents], tok[:, None]], 1)
        hist_lp = np.concatenate([hist_lp[parents], cont_lp[keep].reshape(-1, 1)], 1)
        if beta:
            coverage = new_cov[parents]
        prev = tok

    results = []
    for b in range(batch):
        hyps = []
        for p in range(P):
            score = float(pool_score[b, p])
            if not math.isfinite(score):
                continue
            n = int(pool_len[b, p])
            toks = pool_tok[b, p, :n].tolist()
            hyps.append(Hypothesis(tokens=toks, score=score, log_probs=pool_lp[b, p, :n].tolist(),
                                   raw_score=float(pool_raw[b, p]), finished=bool(n > 0 and toks[-1] == EOS_ID)))
        results.append(hyps)
    return results


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
    for key in ("src_tokenizer", "tgt_tokenizer", "encoder", "decoder_step"):
        if not (root / meta[key]).is_file():
            what = "tokenizer model" if key.endswith("tokenizer") else "ONNX graph"
            raise CheckpointError(f"{root / meta[key]} not found: the export directory is missing its "
                                  f"{what}; copy it from the run directory or {_REEXPORT}")
    return meta


class OnnxTranslator:
    """An exported model with its tokenizers: the API of :class:`~nmt.inference.translator.Translator`
    (``translate``, ``decode_options``, ``encode``, ``batches``, ``search_batches``, ``detokenize``)
    on onnxruntime. ``threads``: onnxruntime's intra-op threads (default: its own choice)."""

    def __init__(self, export_dir: str | os.PathLike, threads: int | None = None):
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
        self.model = OnnxModel(self.export_dir, self.meta, threads)
        self.warn = WarningCounter()

    @classmethod
    def load(cls, export_dir: str | os.PathLike, threads: int | None = None) -> "OnnxTranslator":
        return cls(export_dir, threads)

    # ------------------------------------------------------------------------------ settings
    def decode_options(self, beam: int | None = None, n_best: int = 1, **overrides: Any) -> DecodeConfig:
        """The search settings of one call: the export's ``decode`` section with these values
        (``None`` keeps the export's; a larger ``n_best`` without ``beam`` widens the beam), checked."""
        options = self.recipe.decode.updated(overrides, beam=beam, n_best=n_best)
        if options.shortlist:
            raise NmtError(f"the ONNX engine scores the full target vocabulary: a lexical shortlist "
                           f"(--shortlist {options.shortlist}) is not supported; give --shortlist 0 or "
                           "translate the run directory with --engine torch")
        if options.sample:
            raise NmtError("the ONNX engine searches only (greedy or beam): sampling (--sample) is not "
                           "supported; translate the run directory with --engine torch")
        return options

    # ---------------------------------------------------------------------------- the steps
    def encode(self, sources: Sequence[str], lines: Sequence[int] | None = None, *, warn: bool = True):
        """Clean, encode, truncate to ``decode.max_input_len`` and append EOS (as the torch engine)."""
        if isinstance(sources, str):
            raise TypeError("translate takes a list of sentences, not a single string")
        form = self.recipe.data.filter.normalize
        texts = [clean_source(s, form) for s in sources]
        lines = list(lines) if lines is not None else list(range(1, len(texts) + 1))
        todo = [i for i, t in enumerate(texts) if t]
        encoded = dict(zip(todo, self.tokenizers.encode_src([texts[i] for i in todo]) if todo else []))
        limit = self.recipe.decode.max_input_len
        items = make_sources(texts, [encoded.get(i, []) for i in range(len(texts))], lines, limit)
        if warn:
            warn_truncated(self.warn, items, limit)
        return items

    def batches(self, items, *, beam: int = 1, batch_tokens: int | None = None,
                max_sentences: int | None = None):
        """Length-sorted batches of the non-empty ``items``: at most ``batch_tokens`` (default the
        export's ``decode.batch_tokens``) padded source tokens × ``beam`` rows each."""
        todo = [it for it in items if it.ids is not None]
        budget = max(1, (batch_tokens or self.recipe.decode.batch_tokens) // max(1, beam))
        return [[todo[k] for k in group]
                for group in length_groups([len(it.ids) for it in todo], budget, max_sentences)]

    def search_batches(self, batches, options: DecodeConfig) -> dict[int, list[Hypothesis]]:
        """Search every batch; hypotheses (best first) by ``Source.index``."""
        out: dict[int, list[Hypothesis]] = {}
        for group in batches:
            src, lengths = pad_sources([it.ids for it in group])
            for it, hyps in zip(group, search(self.model, src, lengths, options)):
                out[it.index] = hyps
        return out

    def detokenize(self, hyps: Sequence[Hypothesis]) -> list[str]:
        return self.tokenizers.decode_tgt([h.tokens for h in hyps]) if hyps else []

    # -------------------------------------------------------------------------------- public
    def translate(self, sources: Sequence[str], beam: int | None = None, n_best: int = 1,
                  return_scores: bool = False, return_attention: bool = False, *,
                  return_alignment: bool = False, batch_tokens: int | None = None,
                  max_sentences: int | None = None, lines: Sequence[int] | None = None,
                  shard: tuple[int, int] | None = None, **overrides: Any):
        """Translate sentences, returned in input order: ``list[str]``, or with ``n_best > 1`` or
        ``return_scores`` a list of :class:`~nmt.inference.sources.TranslationResult`. An empty
        line (after cleaning) translates to an empty line. ``shard=(rank, world)`` translates only
        this process's share, as :meth:`nmt.inference.translator.Translator.translate` does (the
        other entries are ``None``)."""
        if return_attention or return_alignment:
            raise NmtError("the ONNX engine does not return attention weights, nor the word alignments "
                           "made from them; use the torch engine")
        options = self.decode_options(beam, n_best, batch_tokens=batch_tokens, **overrides)
        items = self.encode(sources, lines, warn=False)
        batches = shard_of(self.batches(items, beam=options.beam, batch_tokens=options.batch_tokens,
                                        max_sentences=max_sentences), shard)
        mine = [it for group in batches for it in group]
        warn_truncated(self.warn, mine, self.recipe.decode.max_input_len)
        if shard is None or shard[0] == 0:  # empty inputs need no model: the first process has them
            mine += [it for it in items if it.ids is None]
        found = self.search_batches(batches, options)
        out: list[Any] = [None] * len(items)
        if not (n_best > 1 or return_scores):
            best = [found[it.index][0] for it in mine if found.get(it.index)]
            texts = iter(self.detokenize(best))
            for it in mine:
                out[it.index] = next(texts) if found.get(it.index) else ""
            return out
        texts = iter(self.detokenize([h for it in mine for h in found.get(it.index, [])]))
        for it in mine:
            hyps = found.get(it.index)
            if it.ids is None or not hyps:
                out[it.index] = TranslationResult(sources[it.index], [TranslatedHypothesis(
                    text="", score=0.0, tokens=[], src_tokens=[], token_log_probs=[])])
                continue
            pieces = self.tokenizers.src_pieces(it.text)[: len(it.ids) - 1] + ["</s>"]
            out[it.index] = TranslationResult(sources[it.index], [TranslatedHypothesis(
                text=next(texts), score=h.score, tokens=self.tokenizers.tgt_pieces_from_ids(h.tokens),
                src_tokens=pieces, token_log_probs=h.log_probs, raw_score=h.raw_score) for h in hyps])
        return out

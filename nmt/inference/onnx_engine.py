"""The ONNX engine of search (:mod:`nmt.inference.engine`): the two graphs of an ``nmt export``
(encoder, decoder step) on onnxruntime, with numpy arrays. Importing this module imports no torch.

The decoder-step graph gives float32 log-probabilities of every target token, so the step's
log-normaliser is None; the memory holds one row per beam. With a lexical shortlist the
shortlist step graph scores only the shortlist's target ids (logits, normalised here over each
sentence's own shortlist); an export without that graph (made by an earlier version) scores the
whole vocabulary and keeps the shortlist's columns.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nmt.config import DecodeConfig
from nmt.data.vocab import PAD_ID
from nmt.errors import CheckpointError, NmtError
from nmt.inference.beam import beam_search_on
from nmt.inference.greedy import one_token_per_step
from nmt.inference.onnx_shortlist import LexiconTable, log_normaliser
from nmt.inference.ops_numpy import NumpyOps, numpy_ops
from nmt.inference.rules import Hypothesis
from nmt.inference.sampling import sample
from nmt.inference.sentence_shortlist import ShortlistMemory, mask_outside, outside_penalty

__all__ = ["OnnxModel", "OnnxEngine", "search", "greedy_search", "beam_search", "pad_sources",
           "EXPORT_FORMAT", "EXPORT_VERSION", "ENCODER_FILE", "DECODER_FILE", "DECODER_SHORTLIST_FILE",
           "META_FILE"]

EXPORT_FORMAT = "nmt-onnx"
EXPORT_VERSION = 1
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
DECODER_SHORTLIST_FILE = "decoder_step_shortlist.onnx"
META_FILE = "export.json"

_REEXPORT = "re-export the run with `nmt export RUN_DIR -o EXPORT_DIR`"


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
        self.encoder_file, self.decoder_file = meta["encoder"], meta["decoder_step"]
        self.encoder = self._session(ort, meta["encoder"], opts, ["src", "src_lengths"], state_in + memory_in)
        outputs = ["log_probs"] + [f"next.{n}" for n in self.state_names] + ["attention"] \
            + (["positions"] if self.with_positions else [])
        self.decoder = self._session(ort, meta["decoder_step"], opts,
                                     ["prev_tokens"] + state_in + memory_in, outputs)
        self._step_outputs = outputs
        #: the shortlist step (None: an export of an earlier version, which has none)
        self.shortlist_file = meta.get("decoder_step_shortlist") or None
        self.shortlist_decoder = None if self.shortlist_file is None else self._session(
            ort, self.shortlist_file, opts, ["prev_tokens", "columns"] + state_in + memory_in, ["logits"] + outputs[1:])
        self._check_vocabulary(meta.get("tgt_vocab_size"))

    def _check_vocabulary(self, tgt_vocab_size: Any) -> None:
        """The step graph scores the target vocabulary export.json names (a graph of another run
        scores another one)."""
        width = self.decoder.get_outputs()[0].shape[-1]
        if isinstance(width, int) and isinstance(tgt_vocab_size, int) and width != tgt_vocab_size:
            raise CheckpointError(f"{self.dir / self.decoder_file} scores {width} target pieces but "
                                  f"{META_FILE} says the model has {tgt_vocab_size}: the graph is from "
                                  f"another run; {_REEXPORT}")

    def _run(self, session, name: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``session.run``; onnxruntime's failure (a graph that does not fit the others) names the file."""
        try:
            return session.run(None, feed)
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{self.dir / name} failed in onnxruntime ({first[:300]}): the export's "
                                  f"graphs do not belong together; {_REEXPORT}") from None

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
        out = self._run(self.encoder, self.encoder_file, {"src": src, "src_lengths": lengths})
        n = len(self.state_names)
        return dict(zip(self.state_names, out[:n])), dict(zip(self.memory_names, out[n:]))

    def step(self, prev: np.ndarray, state: dict[str, np.ndarray], memory: dict[str, np.ndarray]):
        """One decoder step: ``(log_probs (N, V) float32, next state, attention (N, S), positions or None)``."""
        return self._step(self.decoder, self.decoder_file, {"prev_tokens": prev}, state, memory)

    def step_columns(self, prev: np.ndarray, columns: np.ndarray, state: dict[str, np.ndarray],
                     memory: dict[str, np.ndarray]):
        """The shortlist step: ``(logits (N, L) float32 of target ids columns (L,), next state,
        attention (N, S), positions or None)``."""
        return self._step(self.shortlist_decoder, self.shortlist_file, {"prev_tokens": prev, "columns": columns},
                          state, memory)

    def _step(self, session, name: str, feed: dict[str, np.ndarray], state: dict[str, np.ndarray],
              memory: dict[str, np.ndarray]):
        feed.update((f"state.{n}", state[n]) for n in self.state_names)
        feed.update((f"memory.{n}", memory[n]) for n in self.memory_names)
        out = self._run(session, name, feed)
        n = len(self.state_names)
        new_state = dict(zip(self.state_names, out[1: 1 + n]))
        positions = out[2 + n] if self.with_positions else None
        return out[0], new_state, out[1 + n], positions


def _rows(tensors: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {name: value[index] for name, value in tensors.items()}


class OnnxEngine:
    """An :class:`OnnxModel` as a search engine (see :mod:`nmt.inference.engine` for the methods).

    ``columns``: a lexical shortlist (sorted target ids, 0..3 first; :mod:`nmt.inference.onnx_shortlist`)
    with ``outside (B, L)``, the columns outside each sentence's own shortlist: the step's scores
    are then the log-probabilities of these columns, each row normalised over its sentence's own.
    """

    ops = numpy_ops
    shares_memory = False

    def __init__(self, model: OnnxModel, columns: np.ndarray | None = None, outside: np.ndarray | None = None):
        self.model = model
        self.with_positions = model.with_positions
        # int64: the shortlist step graph's input
        self.columns = None if columns is None else np.ascontiguousarray(columns, dtype=np.int64)
        self.outside = outside
        if columns is not None:
            self.column_of = np.zeros(int(columns.max()) + 1, dtype=np.int64)
            self.column_of[columns] = np.arange(columns.size)

    def begin(self, src: np.ndarray, src_lengths: np.ndarray, src_mask: np.ndarray, fold_context: bool):
        state, memory = self.model.encode(src, src_lengths)
        if self.columns is not None:  # each memory row carries its sentence's own shortlist
            outside = self.outside if self.outside is not None else np.zeros((src.shape[0], self.columns.size), bool)
            memory = ShortlistMemory(memory, outside_penalty(self.ops, outside, np.float32))
        return state, memory

    def step(self, prev_tokens: np.ndarray, state, memory):
        if self.columns is None:
            log_probs, new_state, attention, positions = self.model.step(prev_tokens, state, memory)
            return log_probs, None, (new_state, attention, positions)
        if self.model.shortlist_decoder is not None:
            scores, new_state, attention, positions = self.model.step_columns(
                prev_tokens, self.columns, state, memory.memory)
        else:  # the whole vocabulary's log-probabilities, of which the shortlist's columns are kept
            log_probs, new_state, attention, positions = self.model.step(prev_tokens, state, memory.memory)
            scores = log_probs[:, self.columns]
        # (N, L): each row normalised over its own sentence's shortlist
        kept = mask_outside(scores, memory.penalty_rows(self.ops, prev_tokens.shape[0]))
        return kept, log_normaliser(kept), (new_state, attention, positions)

    @staticmethod
    def next_state(out):
        return out[0]

    @staticmethod
    def attention(out) -> np.ndarray:
        return out[1].astype(np.float32, copy=False)

    @staticmethod
    def positions(out) -> np.ndarray:
        if out[2] is None:
            return np.zeros(out[1].shape[0], dtype=np.float32)
        return out[2].astype(np.float32, copy=False)

    @staticmethod
    def select_state(state, index: np.ndarray):
        return _rows(state, index)

    @staticmethod
    def select_memory(memory, index: np.ndarray):
        if isinstance(memory, ShortlistMemory):
            return memory.select(_rows, index, NumpyOps.rows)
        return _rows(memory, index)

    def best(self, scores: np.ndarray, memory) -> tuple[np.ndarray, np.ndarray]:
        return self.ops.argmax(scores)

    def to_target(self, columns: np.ndarray) -> np.ndarray:
        return columns if self.columns is None else self.columns[columns]

    def to_columns(self, ids: np.ndarray) -> np.ndarray:
        return ids if self.columns is None else self.column_of[ids]


# ---------------------------------------------------------------------------------------- search

def pad_sources(sources: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Id lists (each non-empty, EOS appended) -> ``src (B, S)`` int64 padded with PAD, ``lengths (B,)``."""
    if not sources or any(len(s) == 0 for s in sources):
        raise ValueError("pad_sources needs a non-empty list of non-empty id lists")
    lengths = np.array([len(s) for s in sources], dtype=np.int64)
    src = np.full((len(sources), int(lengths.max())), PAD_ID, dtype=np.int64)
    for row, ids in enumerate(sources):
        src[row, : len(ids)] = ids
    return src, lengths


def _source_mask(src: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return np.arange(src.shape[1])[None, :] < lengths[:, None]


def search(model: OnnxModel, src: np.ndarray, lengths: np.ndarray, opts: DecodeConfig,
           return_attention: bool = False, lexicon: LexiconTable | None = None,
           keys: Sequence[int] | None = None, constraints=None) -> list[list[Hypothesis]]:
    """Sampling when ``opts.sample`` (``keys``: see :func:`nmt.inference.sampling.sample`), greedy
    search when ``opts.beam == 1``, else beam search; lexically constrained beam search with
    ``constraints`` (as :func:`nmt.inference.search.search`). One list per sentence. With
    ``opts.shortlist``, ``lexicon`` gives the batch's shortlist (and the constraints' tokens)."""
    opts.check()
    shortlist = (None, None)
    if opts.shortlist:
        if lexicon is None:
            raise NmtError("a shortlist search needs the export's lexicon (export a run that has one)")
        shortlist = lexicon.shortlist(src, _source_mask(src, lengths), opts.shortlist, opts.shortlist_frequent,
                                      constraints)
    if constraints is not None and any(constraints):
        if opts.sample:
            raise NmtError("lexical constraints need beam search; sampling cannot follow them")
        return beam_search(model, src, lengths, opts, return_attention, *shortlist, constraints=constraints)
    if opts.sample:
        return sample(OnnxEngine(model, *shortlist), src, lengths, _source_mask(src, lengths), opts,
                      return_attention, keys)
    if opts.beam == 1:
        return greedy_search(model, src, lengths, opts, return_attention, *shortlist)
    return beam_search(model, src, lengths, opts, return_attention, *shortlist)


def greedy_search(model: OnnxModel, src: np.ndarray, lengths: np.ndarray, opts: DecodeConfig,
                  return_attention: bool = False, columns: np.ndarray | None = None,
                  outside: np.ndarray | None = None) -> list[list[Hypothesis]]:
    """Arg-max decoding; one hypothesis per sentence (``opts.beam`` is ignored). ``columns``,
    ``outside``: a shortlist (:meth:`nmt.inference.onnx_shortlist.LexiconTable.shortlist`)."""
    hyps = one_token_per_step(OnnxEngine(model, columns, outside), src, lengths, _source_mask(src, lengths), opts,
                              return_attention)
    return [[h] for h in hyps]


def beam_search(model: OnnxModel, src: np.ndarray, lengths: np.ndarray, opts: DecodeConfig,
                return_attention: bool = False, columns: np.ndarray | None = None,
                outside: np.ndarray | None = None, constraints=None) -> list[list[Hypothesis]]:
    """Batched beam search: up to ``n_best`` hypotheses per sentence, best first."""
    return beam_search_on(OnnxEngine(model, columns, outside), src, lengths, _source_mask(src, lengths), opts,
                          return_attention, constraints)

"""The step interface search runs on: what greedy search, sampling and beam search
(:mod:`nmt.inference.greedy`, :mod:`nmt.inference.beam`) ask of a model, and nothing more.

Two engines implement it: :class:`nmt.inference.torch_engine.TorchEngine` (a PyTorch model or an
ensemble) and :class:`nmt.inference.onnx_engine.OnnxEngine` (an ``nmt export`` on onnxruntime,
without torch). Rows of the decoder state are hypotheses (sentences × beams); ``state`` and
``memory`` are the engine's own objects, which search only passes back or reorders.
"""
from __future__ import annotations

from typing import Any, Protocol


class SearchEngine(Protocol):
    ops: Any  #: the array operations of the engine's arrays (:mod:`nmt.inference.ops_numpy`)
    #: beam search: the memory holds one row per sentence, shared by its beams (else one per beam)
    shares_memory: bool
    #: the step reports local-p predicted positions (kept with the attention when asked for)
    with_positions: bool

    def begin(self, src, src_lengths, src_mask, fold_context: bool) -> tuple[Any, Any]:
        """Encode ``src (B, S)``: the first decoder state and the attention memory (one row per sentence)."""

    def step(self, prev_tokens, state, memory) -> tuple[Any, Any, Any]:
        """One decoder step for ``prev_tokens (N,)``: ``(scores (N, C), log_norm, out)``.

        ``scores`` are logits or log-probabilities of C columns (the target vocabulary, or a
        shortlist of it: :meth:`to_target` names their ids); search writes -inf into forbidden
        columns in place. ``log_norm (N,)`` is the float32 log-normaliser of the rows (None when
        ``scores`` are log-probabilities already). ``out`` goes to :meth:`next_state`,
        :meth:`attention` and :meth:`positions`."""

    def best(self, scores, memory) -> tuple[Any, Any]:
        """``(values (N,), columns (N,))``: each row's largest score of a step and its column (the
        first of equal ones), ``memory`` the step's."""

    def next_state(self, out) -> Any:
        """The decoder state after the step (rows as the step's)."""

    def attention(self, out) -> Any:
        """``(N, S)`` float32 attention weights of the step."""

    def positions(self, out) -> Any:
        """``(N,)`` float32 local-p predicted positions of the step (zeros for other attention)."""

    def select_state(self, state, index) -> Any:
        """Rows ``index`` of a decoder state (reordering beams, dropping finished rows)."""

    def select_memory(self, memory, index) -> Any:
        """Rows ``index`` of the memory."""

    def to_target(self, columns) -> Any:
        """Columns of ``scores`` -> target ids."""

    def to_columns(self, ids) -> Any:
        """Target ids (generated ones) -> columns of ``scores``."""

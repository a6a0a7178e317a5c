"""Forced decoding step by step on any engine (:mod:`nmt.inference.engine`): the log-probability
of given target ids, for an engine that has a decoder step but no teacher-forcing pass (the ONNX
engine; the torch engine scores a whole batch in one pass, :func:`nmt.inference.search.score_targets`).
Nothing here imports torch."""
from __future__ import annotations

from typing import Sequence

from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID

__all__ = ["targets_with_eos", "forced_scores"]


def targets_with_eos(targets: Sequence[Sequence[int]], add_eos: bool = True) -> list[list[int]]:
    """Target ids as lists of ints, EOS appended (with ``add_eos``) unless it is already last."""
    out = []
    for ids in targets:
        ids = [int(i) for i in ids]
        if add_eos and (not ids or ids[-1] != EOS_ID):
            ids.append(EOS_ID)
        out.append(ids)
    return out


def forced_scores(engine, src, src_lengths, src_mask, targets: Sequence[Sequence[int]], add_eos: bool = True
                  ) -> tuple[list[float], list[list[float]]]:
    """``(scores, token_log_probs)``: per sentence the sum of the log-probabilities of ``targets[b]``
    (target ids without BOS; EOS appended with ``add_eos`` unless already last) and the list of
    them, by feeding each target token to the next step. No penalties, nothing forbidden."""
    ops = engine.ops
    if len(targets) != src.shape[0]:
        raise ValueError(f"{len(targets)} targets for {src.shape[0]} sources")
    tgts = targets_with_eos(targets, add_eos)
    width = max(1, max(len(t) for t in tgts))
    tgt_out = ops.full((len(tgts), width), PAD_ID, ops.long)
    for row, ids in enumerate(tgts):
        if ids:
            tgt_out[row, : len(ids)] = ops.as_array(ids, ops.long)
    state, memory = engine.begin(src, src_lengths, src_mask, fold_context=False)
    prev = ops.full((len(tgts),), BOS_ID, ops.long)
    steps = []
    for t in range(width):
        scores, log_norm, out = engine.step(prev, state, memory)
        steps.append(ops.chosen_log_probs(ops.to_float(ops.pick(scores, tgt_out[:, t])), log_norm))
        state, prev = engine.next_state(out), tgt_out[:, t]
    token_lp = ops.to_list(ops.stack(steps, 1))
    per_token = [token_lp[row][: len(ids)] for row, ids in enumerate(tgts)]
    return [float(sum(t)) if t else 0.0 for t in per_token], per_token

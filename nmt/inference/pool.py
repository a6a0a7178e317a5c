"""The pool of beam search (:mod:`nmt.inference.beam`): each sentence's P best finished hypotheses,
sorted best first, as arrays of the engine (no torch here)."""
from __future__ import annotations

import math

from nmt.data.vocab import PAD_ID
from nmt.inference.rules import Hypothesis, hypothesis


class Pool:
    """``P`` slots per sentence of ``batch`` (score -inf: an empty slot), each a hypothesis of at
    most ``horizon`` tokens; with ``keep_att`` also its attention ``(horizon, src_len)`` and
    local-p positions. ``constrained``: each slot also records whether its hypothesis meets its
    sentence's constraints, and those that do rank before those that do not (each part by score)."""

    def __init__(self, ops, batch: int, P: int, horizon: int, src_len: int, keep_att: bool,
                 constrained: bool = False):
        self.ops, self.P, self.horizon = ops, P, horizon
        self.score = ops.full((batch, P), -math.inf)
        self.raw = ops.zeros((batch, P))
        self.len = ops.zeros((batch, P), ops.long)
        self.tok = ops.full((batch, P, horizon), PAD_ID, ops.long)
        self.lp = ops.zeros((batch, P, horizon))
        self.att = ops.zeros((batch, P, horizon, src_len)) if keep_att else None
        self.pos = ops.zeros((batch, P, horizon)) if keep_att else None
        self.met = ops.full((batch, P), False, ops.boolean) if constrained else None

    def worst(self, sentences):
        """``(n,)`` the score of the worst slot of each of ``sentences`` (-inf while one is empty,
        or, constrained, while the worst does not meet its constraints: any hypothesis that meets
        them outranks it)."""
        worst = self.ops.rows(self.score, sentences)[:, self.P - 1]
        if self.met is None:
            return worst
        return self.ops.masked_fill(worst, ~self.ops.rows(self.met, sentences)[:, self.P - 1], -math.inf)

    def merge(self, ids, step: int, pen, raw, c_tok, c_lp, c_att=None, c_pos=None, met=None) -> None:
        """Merge K candidates of each sentence ``ids (s,)`` (their penalised scores ``pen (s, K)``,
        raw scores ``raw (s, K)``, tokens ``c_tok (s * K, step + 1)``, token log-probs ``c_lp``,
        attention ``c_att (s * K, step + 1, src_len)``, positions ``c_pos``) into the pool: the
        P best of the P + K stay, best first."""
        ops = self.ops
        s, K = pen.shape
        pad = self.horizon - step - 1
        merged_score = ops.cat([ops.rows(self.score, ids), pen], 1)  # (s, P + K)
        if self.met is None:
            sel = ops.best_first(merged_score, self.P)
        else:  # by score, then those that meet their constraints first (a stable reordering)
            by_score = ops.best_first(merged_score, merged_score.shape[1])
            merged_met = ops.cat([ops.rows(self.met, ids), met], 1)
            sel = ops.gather(by_score, ops.false_first(~ops.gather(merged_met, by_score), self.P))

        def merge(pool, cand):
            ops.put_rows_(pool, ids, ops.gather(ops.cat([ops.rows(pool, ids), cand], 1), sel))

        if self.met is not None:
            merge(self.met, met)

        merge(self.tok, ops.pad_steps(c_tok, pad, PAD_ID).reshape(s, K, self.horizon))
        merge(self.lp, ops.pad_steps(c_lp, pad).reshape(s, K, self.horizon))
        merge(self.raw, raw)
        merge(self.len, ops.full((s, K), step + 1, ops.long))
        if self.att is not None:
            merge(self.att, ops.pad_steps(c_att, pad).reshape(s, K, self.horizon, c_att.shape[2]))
            merge(self.pos, ops.pad_steps(c_pos, pad).reshape(s, K, self.horizon))
        ops.put_rows_(self.score, ids, ops.gather(merged_score, sel))

    def hypotheses(self, src_lengths, with_positions: bool, sentences=None) -> list[list[Hypothesis]]:
        """The pool as hypotheses per sentence, best first (empty slots left out); ``sentences``:
        those of these sentences only (default: all)."""
        ops = self.ops

        def listed(x):  # once, not per hypothesis
            return ops.to_list(x if sentences is None else ops.rows(x, sentences))

        scores, raws, lens = listed(self.score), listed(self.raw), listed(self.len)
        all_tokens, all_log_probs = listed(self.tok), listed(self.lp)
        mets = None if self.met is None else listed(self.met)
        src_lens = listed(src_lengths)
        rows = range(len(scores)) if sentences is None else ops.to_list(sentences)
        results = []
        for i, b in enumerate(rows):
            hyps = []
            for p, score in enumerate(scores[i]):
                if not math.isfinite(score):
                    continue
                n = lens[i][p]
                hyps.append(hypothesis(
                    all_tokens[i][p][:n], score, all_log_probs[i][p][:n], raws[i][p],
                    attention=None if self.att is None else ops.copy(self.att[b, p, :n, : src_lens[i]]),
                    positions=None if self.pos is None or not with_positions else ops.copy(self.pos[b, p, :n]),
                    constraints_met=None if mets is None else bool(mets[i][p])))
            results.append(hyps)
        return results

"""Batched beam search on any engine (:mod:`nmt.inference.engine`), with the rules of
:mod:`nmt.inference.rules`. Nothing here imports torch.

Beam search (beam K, n-best P <= K)
-----------------------------------
At each step, each active sentence has K beams; their K·V continuations are scored.

1. The top K continuations *overall* are looked at: those that end in EOS are finished hypotheses
   and go to the sentence's pool (they are not extended). At a sentence's max length, the
   non-EOS ones among them are closed and go to the pool as well.
2. The K beams of the next step are the top K continuations that do not end in EOS (the beam is
   refilled, so it stays K wide).
3. The pool keeps the P best hypotheses by penalised score, sorted best first. Hypotheses are
   distinct by construction (distinct parents × distinct tokens; EOS-ended and closed differ).
4. A sentence is done when it reached its max length, when no beam has a finite score left, or
   when its pool is full and no active beam can still beat the pool's worst entry. Log-probs are
   <= 0, so a beam's raw score only falls; with ``lp`` growing in length and ``cp <= 0``, an upper
   bound of any future score of a beam with raw score r is ``r / lp(max_len)``. With
   ``alpha = 0`` this is the usual "best finished beats all active beams" rule. The rule is exact:
   search never stops a sentence that could still improve its pool.

With K = 1 this is exactly greedy search (the arg-max continuation either ends in EOS, which is
then the best possible, or is the single beam that goes on).

Exhaustive search: let N be the number of tokens search can generate besides EOS and L the
sentence's max length. At step t (t = 1..L) up to N^(t-1) beams are alive and have N^(t-1) · (N + 1)
continuations, and rule 1 above looks at only the top K of them. With K >= N^(L-1) · (N + 1) every
continuation of every step is looked at and every non-EOS one goes on: nothing is pruned, and the
result equals exhaustive enumeration. K = N^(L-1), the number of prefixes that can be alive, is not
enough, because the continuations ending in EOS compete with the others for the top K: with N = 3
tokens of probability 0.26 and EOS 0.2 at every step, L = 2 and K = 3, the best output (EOS alone,
0.2) is never looked at, and search returns a two-token output (0.26² ≈ 0.068).

Lexically constrained beam search (:class:`ConstrainedBeamSearch`, :mod:`nmt.inference.constraints`)
changes rules 1, 2 and 3 as its docstring says; with a beam that sees every continuation it equals
exhaustive enumeration of the outputs that contain each constraint exactly once.
"""
from __future__ import annotations

import math

from nmt.config import DecodeConfig
from nmt.data.vocab import BOS_ID, EOS_ID
from nmt.inference.constraints import Constraints, allocate
from nmt.inference.pool import Pool
from nmt.inference.rules import Hypothesis, coverage_penalty, forbid_, max_lengths, penalised

__all__ = ["BeamSearch", "ConstrainedBeamSearch", "beam_search_on"]


class _Candidates:
    """A step's best continuations per active sentence, best first: ``(n_act, 2K)`` each."""

    def __init__(self, val, lp, tok, par):
        self.val, self.lp, self.tok, self.par = val, lp, tok, par  # score, token log-prob, id, parent beam


class BeamSearch:
    """The search state of one batch: the active beams (rows sentence-major, K per active
    sentence) and the pool of finished hypotheses; :meth:`run` steps it to the end.

    Each step has four phases: :meth:`expand` (run the step, find the best continuations),
    :meth:`pool_finished` (rules 1 and 3), :meth:`done_sentences` (rule 4) and :meth:`advance`
    (rule 2: the next beams of the sentences that go on).
    """

    def __init__(self, engine, src, src_lengths, src_mask, opts: DecodeConfig, return_attention: bool = False):
        ops = self.ops = engine.ops
        self.engine, self.opts = engine, opts
        self.K, batch, src_len = opts.beam, src.shape[0], src.shape[1]
        self.keep_att = return_attention
        self.src_lengths, self.src_mask = src_lengths, src_mask
        state, memory = engine.begin(src, src_lengths, src_mask, fold_context=True)
        self.max_lens = max_lengths(ops, opts, src_lengths)
        self.horizon = int(self.max_lens.max())
        rows0 = ops.repeat_each(ops.arange(batch), self.K)
        self.state = engine.select_state(state, rows0)
        # a beam's parent is a beam of its own sentence: memory rows only change when sentences
        # leave the batch; an engine that shares a sentence's memory row between its beams keeps one
        self.memory = memory if engine.shares_memory else engine.select_memory(memory, rows0)
        rows = batch * self.K
        beam_scores = ops.full((batch, self.K), -math.inf)
        beam_scores[:, 0] = 0.0  # only beam 0 is live at first
        self.beam_scores = beam_scores.reshape(-1)
        self.seqs = ops.zeros((rows, 0), ops.long)
        self.hist_lp = ops.zeros((rows, 0))
        self.hist_att = ops.zeros((rows, 0, src_len)) if self.keep_att else None
        self.hist_pos = ops.zeros((rows, 0)) if self.keep_att else None
        self.coverage = ops.zeros((rows, src_len)) if opts.coverage_penalty else None
        self.active = ops.arange(batch)
        self.step = 0  #: the step :meth:`next_step` runs: each active hypothesis has this many tokens
        self.act_max = self.max_lens
        self.prev = ops.full((rows,), BOS_ID, ops.long)
        self.pool = Pool(ops, batch, opts.n_best, self.horizon, src_len, self.keep_att)

    def run(self) -> list[list[Hypothesis]]:
        """Up to ``n_best`` hypotheses per sentence, best first."""
        while self.running:
            self.next_step()
        return self.pool.hypotheses(self.src_lengths, self.engine.with_positions)

    @property
    def running(self) -> bool:
        """Some sentence is still searched."""
        return self.ops.size(self.active) > 0

    def next_step(self):
        """One step of every active sentence; returns the sentences (indices of the batch) that
        are done after it, whose pool entries are then final (:meth:`hypotheses_of`)."""
        step = self.step
        cands, out, step_att, new_cov = self.expand(step)
        at_max = self.act_max <= step + 1  # (n_act,)
        self.pool_finished(step, cands, at_max, out, step_att, new_cov)
        if not bool(at_max.all()):
            nexts = self.next_beams(cands)
            done = self.done_sentences(nexts, at_max)
            if not bool(done.all()):
                finished = self.ops.rows(self.active, self.ops.nonzero(done))
                self.advance(nexts, done, out, step_att, new_cov)
                self.step += 1
                return finished
        finished, self.active = self.active, self.active[:0]
        return finished

    def hypotheses_of(self, sentences) -> list[list[Hypothesis]]:
        """The final hypotheses of ``sentences`` (done ones: :meth:`next_step`), best first."""
        return self.pool.hypotheses(self.src_lengths, self.engine.with_positions, sentences)

    def expand(self, step: int):
        """Run the step for every beam: the 2K best continuations of each sentence, the step's
        output, its attention and the coverage after it (with a coverage penalty)."""
        ops, engine, K = self.ops, self.engine, self.K
        n_act = ops.size(self.active)
        scores, log_norm, out = engine.step(self.prev, self.state, self.memory)  # (n_act*K, C)
        history = engine.to_columns(self.seqs) if self.opts.no_repeat_ngram else self.seqs
        forbid_(ops, scores, history, step, self.opts)  # after log_norm: no renormalisation
        step_att = engine.attention(out)
        new_cov = self.coverage + step_att if self.opts.coverage_penalty else None
        # One top-2K serves both selections: each beam has one EOS continuation, so at most K of
        # the 2K best end in EOS and the K best non-EOS continuations are among them. The
        # sentence's top 2K over its K x C continuations are among its beams' own top 2K, so the
        # (rows, C) matrix is read once by a per-row top-k and never copied or added to.
        per_row = min(2 * K, scores.shape[1])
        row_val, row_tok = ops.topk(scores, per_row)  # (n_act*K, per_row)
        row_tok = engine.to_target(row_tok)
        row_lp = ops.top_log_probs(row_val, log_norm).reshape(n_act, K * per_row)  # token log-probs
        cand = (self.beam_scores.reshape(n_act, K, 1) + row_lp.reshape(n_act, K, per_row)).reshape(n_act, K * per_row)
        best_val, best_pos = ops.topk(cand, 2 * K)
        cands = _Candidates(best_val, ops.gather(row_lp, best_pos),
                            ops.gather(row_tok.reshape(n_act, K * per_row), best_pos), best_pos // per_row)
        return cands, out, step_att, new_cov

    def next_beams(self, cands: _Candidates) -> _Candidates:
        """Rule 2: the K best continuations that do not end in EOS, ``(n_act, K)`` each."""
        order = self.ops.false_first(cands.tok == EOS_ID, self.K)
        return _Candidates(*(self.ops.gather(x, order) for x in (cands.val, cands.lp, cands.tok, cands.par)))

    def pool_finished(self, step: int, cands: _Candidates, at_max, out, step_att, new_cov) -> None:
        """Rules 1 and 3: the top K continuations that end in EOS (all of them at the max length)
        enter their sentence's pool if they beat its worst entry."""
        K = self.K
        top = _Candidates(cands.val[:, :K], cands.lp[:, :K], cands.tok[:, :K], cands.par[:, :K])
        self.pool_looked_at(step, top, at_max, out, step_att, new_cov)

    def pool_looked_at(self, step: int, top: _Candidates, at_max, out, step_att, new_cov, met=None) -> None:
        """The continuations ``top (n_act, K)`` that end in EOS (all of them at the max length)
        enter their sentence's pool if they can rank in it; ``met (n_act, K)``: whether each meets
        its constraints (constrained search)."""
        ops, K = self.ops, self.K
        top_val, top_tok, top_par = top.val, top.tok, top.par
        admit = ((top_tok == EOS_ID) | at_max[:, None]) & ops.isfinite(top_val)
        if not bool(admit.any()):
            return
        alpha, beta = self.opts.length_penalty, self.opts.coverage_penalty
        pen = penalised(ops, top_val, step + 1, alpha)
        if beta:
            cand_rows = ops.arange(ops.size(self.active))[:, None] * K + top_par
            pen = pen + coverage_penalty(ops, new_cov[cand_rows], self.src_mask[self.active][:, None, :], beta)
        pen = ops.masked_fill(pen, ~admit, -math.inf)
        if met is None:
            worst = self.pool.worst(self.active)
            sub = ops.nonzero((pen > worst[:, None]).any(1))
        else:  # a candidate that meets its constraints outranks one that does not, whatever the scores
            sub = ops.nonzero(admit.any(1))
        if not ops.size(sub):
            return
        rows = ops.rows
        flat = (sub[:, None] * K + rows(top_par, sub)).reshape(-1)  # (s * K,) rows of the parents
        c_tok = ops.cat([rows(self.seqs, flat), rows(top_tok, sub).reshape(-1, 1)], 1)
        c_lp = ops.cat([rows(self.hist_lp, flat), rows(top.lp, sub).reshape(-1, 1)], 1)
        c_att = c_pos = None
        if self.keep_att:
            c_att = ops.cat([rows(self.hist_att, flat), rows(step_att, flat)[:, None]], 1)
            c_pos = ops.cat([rows(self.hist_pos, flat), rows(self.engine.positions(out), flat)[:, None]], 1)
        self.pool.merge(rows(self.active, sub), step, rows(pen, sub), rows(top_val, sub), c_tok, c_lp,
                        c_att, c_pos, None if met is None else rows(met, sub))

    def done_sentences(self, nexts: _Candidates, at_max):
        """Rule 4: ``(n_act,)`` bool, the sentences whose pool no beam can still improve."""
        ops = self.ops
        bound = penalised(ops, nexts.val[:, 0], self.act_max, self.opts.length_penalty)
        worst = self.pool.worst(self.active)
        return at_max | ~ops.isfinite(nexts.val[:, 0]) | (worst >= bound)

    def advance(self, nexts: _Candidates, done, out, step_att, new_cov) -> None:
        """Rule 2: the next beams of the sentences that are not done; done sentences leave the batch."""
        ops, engine, K = self.ops, self.engine, self.K
        rows = ops.rows
        keep = ops.nonzero(~done)
        parents = (keep[:, None] * K + rows(nexts.par, keep)).reshape(-1)
        tok = rows(nexts.tok, keep).reshape(-1)
        self.state = engine.select_state(engine.next_state(out), parents)
        if ops.size(keep) < ops.size(self.active):
            self.memory = engine.select_memory(
                self.memory, keep if engine.shares_memory else (keep[:, None] * K + ops.arange(K)).reshape(-1))
            self.active, self.act_max = rows(self.active, keep), rows(self.act_max, keep)
        self.beam_scores = rows(nexts.val, keep).reshape(-1)
        self.seqs = ops.cat([rows(self.seqs, parents), tok[:, None]], 1)
        self.hist_lp = ops.cat([rows(self.hist_lp, parents), rows(nexts.lp, keep).reshape(-1, 1)], 1)
        if self.keep_att:
            self.hist_att = ops.cat([rows(self.hist_att, parents), rows(step_att, parents)[:, None]], 1)
            positions = rows(engine.positions(out), parents)
            self.hist_pos = ops.cat([rows(self.hist_pos, parents), positions[:, None]], 1)
        if new_cov is not None:
            self.coverage = rows(new_cov, parents)
        self.prev = tok


class ConstrainedBeamSearch(BeamSearch):
    """Beam search whose outputs contain given target token sequences (:mod:`nmt.inference.constraints`).

    ``constraints[b]``: the target id lists of sentence b (none: an unconstrained sentence of the
    batch). The rules of :class:`BeamSearch` change as follows:

    - A sentence's max length is at least its constraints' tokens + 1 (EOS).
    - A hypothesis may end in EOS only when each of its constraints occurs in it; a token that
      would make a constraint occur a second time is never chosen.
    - Each step looks at every beam's 2K best continuations and, for every constraint not met yet,
      its next token. Rule 1 looks at the K continuations chosen by dynamic beam allocation over
      all of them (EOS ones included), rule 2 takes the next beams by dynamic beam allocation
      over those that do not end in EOS (:func:`~nmt.inference.constraints.allocate`).
    - The pool ranks the hypotheses that meet their constraints first (each group by score): a
      hypothesis closed at the max length without them is returned only when fewer than
      ``n_best`` that meet them were found, and says so (``Hypothesis.constraints_met``).
    """

    def __init__(self, engine, src, src_lengths, src_mask, opts: DecodeConfig, return_attention: bool = False,
                 constraints=None):
        super().__init__(engine, src, src_lengths, src_mask, opts, return_attention)
        ops, batch = self.ops, src.shape[0]
        self.cons = Constraints(ops, constraints or [[]] * batch)
        self.max_lens = ops.clamp_min(self.max_lens, self.cons.needed + 1)
        self.act_max, self.horizon = self.max_lens, int(self.max_lens.max())
        self.pool = Pool(ops, batch, opts.n_best, self.horizon, src.shape[1], self.keep_att, constrained=True)
        self.cstate, self.count = self.cons.start(ops.repeat_each(ops.arange(batch), self.K))

    def expand(self, step: int):
        """Run the step: every beam's 2K best continuations and the next tokens of its constraints,
        ``(n_act, K * W)`` candidates (with their constraint states, banks and whether they meet
        every constraint), the step's output, attention and coverage."""
        ops, engine, K, C = self.ops, self.engine, self.K, self.cons.C
        n_act = ops.size(self.active)
        sent = ops.repeat_each(self.active, K)  # (rows,) the sentence of each beam
        scores, log_norm, out = engine.step(self.prev, self.state, self.memory)  # (rows, cols)
        history = engine.to_columns(self.seqs) if self.opts.no_repeat_ngram else self.seqs
        forbid_(ops, scores, history, step, self.opts)
        self.cons.forbid_(engine, scores, sent, self.cstate, self.count)
        step_att = engine.attention(out)
        new_cov = self.coverage + step_att if self.opts.coverage_penalty else None
        row_val, row_col = ops.topk(scores, min(2 * K, scores.shape[1]))
        row_tok = engine.to_target(row_col)
        c_tok = self.cons.next_tokens(sent, self.cstate, self.count)  # (rows, C)
        c_lp = ops.top_log_probs(ops.gather(scores, engine.to_columns(c_tok)), log_norm)
        ar = ops.arange(C)
        seen = (c_tok[:, :, None] == row_tok[:, None, :]).any(2) \
            | ((c_tok[:, :, None] == c_tok[:, None, :]) & (ar[None, :] < ar[:, None])[None]).any(2)
        lp = ops.cat([ops.top_log_probs(row_val, log_norm), ops.masked_fill(c_lp, seen, -math.inf)], 1)
        tok = ops.cat([row_tok, c_tok], 1)  # (rows, W)
        W = tok.shape[1]
        parent = ops.repeat_each(ops.arange(n_act * K), W)  # the beam row of each candidate
        state, count = self.cons.advance(sent[parent], self.cstate[parent], self.count[parent], tok.reshape(-1))
        cands = _Candidates((self.beam_scores[:, None] + lp).reshape(n_act, K * W), lp.reshape(n_act, K * W),
                            tok.reshape(n_act, K * W), (parent % K).reshape(n_act, K * W))
        cands.state, cands.count = state.reshape(n_act, K * W, C), count.reshape(n_act, K * W, C)
        cands.bank = self.cons.progress(sent[parent], state, count).reshape(n_act, K * W)
        cands.met = (count >= 1).all(-1).reshape(n_act, K * W)
        return cands, out, step_att, new_cov

    def _chosen(self, cands: _Candidates, val) -> _Candidates:
        """The K candidates that dynamic beam allocation chooses by ``val``, with their states."""
        ops = self.ops
        sel = allocate(ops, val, cands.bank, self.K, self.cons.total)
        chosen = _Candidates(*(ops.gather(x, sel) for x in (val, cands.lp, cands.tok, cands.par)))
        chosen.state, chosen.count = ops.gather(cands.state, sel), ops.gather(cands.count, sel)
        chosen.met = ops.gather(cands.met, sel)
        return chosen

    def pool_finished(self, step: int, cands: _Candidates, at_max, out, step_att, new_cov) -> None:
        top = self._chosen(cands, cands.val)
        self.pool_looked_at(step, top, at_max, out, step_att, new_cov, met=top.met)

    def next_beams(self, cands: _Candidates) -> _Candidates:
        return self._chosen(cands, self.ops.masked_fill(cands.val, cands.tok == EOS_ID, -math.inf))

    def advance(self, nexts: _Candidates, done, out, step_att, new_cov) -> None:
        keep = self.ops.nonzero(~done)
        super().advance(nexts, done, out, step_att, new_cov)
        C = self.cons.C
        self.cstate, self.count = nexts.state[keep].reshape(-1, C), nexts.count[keep].reshape(-1, C)


def beam_search_on(engine, src, src_lengths, src_mask, opts: DecodeConfig, return_attention: bool = False,
                   constraints=None) -> list[list[Hypothesis]]:
    """Beam search of a batch: constrained when some sentence of ``constraints`` has any."""
    if constraints is not None and any(constraints):
        return ConstrainedBeamSearch(engine, src, src_lengths, src_mask, opts, return_attention, constraints).run()
    return BeamSearch(engine, src, src_lengths, src_mask, opts, return_attention).run()

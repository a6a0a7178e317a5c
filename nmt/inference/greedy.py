"""Greedy search and sampling: one token per hypothesis and step, on any engine
(:mod:`nmt.inference.engine`); the rules are :mod:`nmt.inference.rules`'.

Greedy search takes the arg-max at every step; the penalties do not influence it (they are only
reported in ``score``). Sampling runs the same loop, drawing each token with a chooser instead
(:mod:`nmt.inference.sampling`). Nothing here imports torch.

Each step's choices are recorded for the rows it ran (``active`` holds their sentence ids) and
laid out by sentence once at the end. A row that ends keeps running until enough rows have ended
to pay for dropping them: dropping gathers the memory (keys and their projection, the largest
arrays of the search), which costs about as much as a decoder step.
"""
from __future__ import annotations

from typing import Any, Callable

from nmt.config import DecodeConfig
from nmt.data.vocab import BOS_ID, EOS_ID, PAD_ID
from nmt.inference.rules import Hypothesis, coverage_penalty, forbid_, hypothesis, max_lengths, penalised

__all__ = ["one_token_per_step", "DROP_FINISHED_FRACTION"]

#: greedy search drops ended rows from the batch once this fraction of its rows has ended
DROP_FINISHED_FRACTION = 0.25


def one_token_per_step(engine, src, src_lengths, src_mask, opts: DecodeConfig, return_attention: bool,
                       choose: Callable[[Any], Any] | None = None, copies: int = 1) -> list[Hypothesis]:
    """Greedy search (``choose=None``: the arg-max) or sampling (``choose(max_lens)`` builds the
    chooser of the rows' tokens: ``chooser(scores (N, C), rows (N,), step) -> columns (N,)``);
    ``copies`` rows per sentence. One hypothesis per row, rows sentence-major."""
    return _OneTokenSearch(engine, src, src_lengths, src_mask, opts, return_attention, choose, copies,
                           DROP_FINISHED_FRACTION).run()


class _OneTokenSearch:
    def __init__(self, engine, src, src_lengths, src_mask, opts, return_attention, choose, copies,
                 drop_fraction):
        ops = self.ops = engine.ops
        self.engine, self.opts, self.drop_fraction = engine, opts, drop_fraction
        # no context folding: with one hypothesis per sentence it costs about what it saves
        # (S x 512 x 1024 once vs 512 x 1024 per step); the embedding tables still pay
        self.state, self.memory = engine.begin(src, src_lengths, src_mask, fold_context=False)
        max_lens = max_lengths(ops, opts, src_lengths)
        if copies > 1:  # each sentence's rows side by side: sentence b has rows b * copies + j
            rows = ops.repeat_each(ops.arange(src.shape[0]), copies)
            self.state = engine.select_state(self.state, rows)
            self.memory = engine.select_memory(self.memory, rows)
            src_lengths, src_mask, max_lens = src_lengths[rows], src_mask[rows], max_lens[rows]
        self.src_lengths, self.src_mask, self.max_lens = src_lengths, src_mask, max_lens
        self.choose = None if choose is None else choose(max_lens)
        self.batch = batch = ops.size(max_lens)
        self.horizon = int(max_lens.max())
        self.keep_att = return_attention
        self.need_att = return_attention or bool(opts.coverage_penalty)
        self.with_positions = return_attention and engine.with_positions
        self.recorded: list[tuple] = []
        self.history = ops.full((batch, self.horizon), PAD_ID, ops.long) if opts.no_repeat_ngram else None
        self.lengths = ops.zeros((batch,), ops.long)
        self.active = ops.arange(batch)  # sentence id of each row
        self.running = ops.full((batch,), True, ops.boolean)
        self.row_len = ops.zeros((batch,), ops.long)
        self.act_max = max_lens
        self.prev = ops.full((batch,), BOS_ID, ops.long)

    def run(self) -> list[Hypothesis]:
        for step in range(self.horizon):
            tok, best, out = self.choose_tokens(step)
            if not self.end_rows(step, tok, best, out):
                break
        self.ops.put_rows_(self.lengths, self.active, self.row_len)
        return self.hypotheses()

    def choose_tokens(self, step: int):
        """Run the step, choose each row's token and record it: ``(token ids, scores, out)``."""
        ops, engine = self.ops, self.engine
        scores, log_norm, out = engine.step(self.prev, self.state, self.memory)
        seen = None
        if self.history is not None:
            seen = engine.to_columns(self.history[self.active][:, :step])
        allowed = forbid_(ops, scores, seen, step, self.opts)
        if self.choose is None:
            best, tok = engine.best(allowed, self.memory)
        else:
            tok = self.choose(allowed, self.active, step)
            best = ops.pick(allowed, tok)
        tok = engine.to_target(tok)
        best = ops.to_float(best)
        record = [self.active, tok, ops.chosen_log_probs(best, log_norm)]
        if self.need_att:
            record.append(engine.attention(out))
        if self.with_positions:
            record.append(engine.positions(out))
        self.recorded.append(tuple(record))
        if self.history is not None:
            self.history[self.active, step] = tok
        return tok, best, out

    def end_rows(self, step: int, tok, best, out) -> bool:
        """Rows that chose EOS or reached their max length end; enough ended rows leave the batch.
        False when every row has ended."""
        ops = self.ops
        ended = (tok == EOS_ID) | (self.act_max <= step + 1)
        end_len = step + 1
        if self.history is not None:
            # every token forbidden (only n-gram blocking can do that): the row ends without one
            blocked = ~ops.isfinite(best)
            ended = ended | blocked
            end_len = step + 1 - ops.as_long(blocked)
        ended &= self.running
        self.row_len = ops.select(ended, end_len, self.row_len)
        self.running &= ~ended
        n_running = int(self.running.sum())
        if n_running == 0:
            return False
        rows = ops.size(self.running)
        if rows - n_running >= max(1, int(rows * self.drop_fraction)):
            rows_of = ops.rows
            done = ops.nonzero(~self.running)
            ops.put_rows_(self.lengths, rows_of(self.active, done), rows_of(self.row_len, done))
            keep = ops.nonzero(self.running)
            self.state = self.engine.select_state(self.engine.next_state(out), keep)
            self.memory = self.engine.select_memory(self.memory, keep)
            self.active, self.act_max = rows_of(self.active, keep), rows_of(self.act_max, keep)
            self.prev = rows_of(tok, keep)
            self.row_len, self.running = rows_of(self.row_len, keep), rows_of(self.running, keep)
        else:
            self.state, self.prev = self.engine.next_state(out), tok
        return True

    def hypotheses(self) -> list[Hypothesis]:
        """The recorded steps laid out by sentence, scored: one hypothesis per row."""
        ops, opts = self.ops, self.opts
        steps_run = len(self.recorded)
        columns = list(zip(*self.recorded))
        sentence = ops.cat(columns[0], 0)
        position = ops.repeat_steps(steps_run, [ops.size(r) for r in columns[0]])

        def by_sentence(values, fill):  # per-step records -> (batch, steps, ...), fill elsewhere
            flat = ops.cat(values, 0)
            laid = ops.full((self.batch, steps_run) + tuple(flat.shape[1:]), fill, flat.dtype)
            laid[sentence, position] = flat
            return laid

        tokens = by_sentence(columns[1], PAD_ID)
        valid = ops.arange(steps_run)[None, :] < self.lengths[:, None]
        tok_lps = ops.masked_fill(by_sentence(columns[2], 0.0), ~valid, 0.0)
        att = ops.masked_fill(by_sentence(columns[3], 0.0), ~valid[:, :, None], 0.0) if self.need_att else None
        pos = by_sentence(columns[4], 0.0) if self.with_positions else None
        raw = ops.sum_steps(tok_lps, self.horizon)
        scores = penalised(ops, raw, ops.clamp_min(self.lengths, 1), opts.length_penalty)
        if opts.coverage_penalty:
            scores = scores + coverage_penalty(ops, att.sum(1), self.src_mask, opts.coverage_penalty)
        # whole arrays to Python lists once: per-sentence indexing is slow
        all_tokens, all_log_probs = ops.to_list(tokens), ops.to_list(tok_lps)
        scores, raw_scores = ops.to_list(scores), ops.to_list(raw)
        results = []
        for b, (n, src_n) in enumerate(zip(ops.to_list(self.lengths), ops.to_list(self.src_lengths))):
            results.append(hypothesis(
                all_tokens[b][:n], scores[b], all_log_probs[b][:n], raw_scores[b],
                attention=ops.copy(att[b, :n, :src_n]) if self.keep_att else None,
                positions=ops.copy(pos[b, :n]) if self.with_positions else None))
        return results

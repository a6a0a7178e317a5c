"""Greedy and beam search over a :class:`~nmt.model.seq2seq.Seq2Seq`, batched over sentences × beams.

``model`` is a :class:`~nmt.model.seq2seq.Seq2Seq` or an :class:`~nmt.inference.ensemble.Ensemble`
(the same step interface; its step returns the mean of its members' log-probabilities).

Everything here works on token ids (no tokenizers). The only Python loop is over time steps:
sentences and beams are rows of tensors, the attention memory is projected once per batch
(``model.start``), and a sentence that is done leaves the active batch (its rows of the decoder
state and memory are dropped with ``select``), so each step costs less as sentences finish.

Definitions (shared by greedy and beam search)
----------------------------------------------
- A hypothesis is the list of generated target ids, without BOS; it ends with EOS unless it was
  *closed* at the maximum length (``Hypothesis.finished`` tells which).
- Its **raw score** is the sum of the log-probabilities of its tokens, EOS included. It equals
  :func:`score_targets` of the same tokens (teacher forcing); PAD and BOS are never generated and
  masked choices (min length, no-repeat n-grams) are not renormalised, so the numbers agree.
  With a lexical shortlist (``DecodeConfig.shortlist``) the log-probabilities are normalised over
  the batch's shortlist instead: they equal those of the full model with every logit outside it
  at -inf (see :mod:`nmt.inference.shortlist`).
- Its **score** is the raw score with the GNMT penalties (Wu et al. 2016, eq. 14)::

      score = raw / lp(|Y|) + cp,   lp(n) = ((5 + n) / 6) ** alpha,
      cp = beta * Σ_i log(min(Σ_t a_{t,i}, 1))     over the real source tokens i (EOS included)

  where ``|Y|`` counts the generated tokens including EOS and ``a_{t,i}`` is the attention of
  output step t (EOS's step included) on source token i. Coverage below 1e-6 is clamped to 1e-6
  so that a never-attended source token costs ``beta * log(1e-6)`` instead of minus infinity.
  ``alpha = beta = 0`` (the defaults) makes ``score == raw``.
- **Max length** of sentence i is ``max(floor(a · S_i + b), min_len + 1, 1)`` generated tokens
  (EOS included), where ``S_i`` is the number of real source ids the model sees (EOS included).
  A hypothesis that reaches it without EOS is closed there and *does* count as a hypothesis
  (``finished=False``, its tokens have no EOS).
- **Min length** ``min_len`` counts tokens before EOS: EOS is forbidden while fewer than
  ``min_len`` tokens were generated.
- **No-repeat n-gram** ``n``: a token is forbidden if it would complete an n-gram that already
  occurs in the hypothesis (n = 1: no token twice).

Greedy search takes the arg-max at every step; the penalties do not influence it (they are only
reported in ``score``).
Sampling (:func:`sample_search`) runs greedy search's loop, drawing each token at random instead
of taking the arg-max; its hypotheses follow the definitions above.

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
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.data.vocab import BOS_ID, EOS_ID, N_SPECIAL, PAD_ID
from nmt.errors import NmtError

#: coverage below this is clamped before the log of the coverage penalty
COVERAGE_FLOOR = 1e-6

__all__ = [
    "Hypothesis", "max_lengths",
    "search", "greedy_search", "beam_search", "sample_search", "nucleus", "score_targets", "pad_sources",
    "length_penalty", "coverage_penalty",
]


# --------------------------------------------------------------------------------------- options

def max_lengths(options: DecodeConfig, src_lengths: Tensor) -> Tensor:
    """Per-sentence max output length (generated tokens incl. EOS) as a long tensor."""
    limit = torch.floor(options.max_len_a * src_lengths.double() + options.max_len_b).long()
    return limit.clamp(min=max(1, options.min_len + 1))


@dataclass
class Hypothesis:
    tokens: list[int]  #: target ids without BOS; ends with EOS unless closed at max length
    score: float  #: penalised score (ranking); equals ``raw_score`` without penalties
    log_probs: list[float]  #: per token (same length as ``tokens``)
    attention: Tensor | None = None  #: (len(tokens), real source length), when requested
    positions: Tensor | None = None  #: (len(tokens),) local-p predicted centres, when requested
    raw_score: float = 0.0  #: sum of the token log-probs (EOS included)
    finished: bool = True  #: ended with EOS (False: closed at the max length)


# ------------------------------------------------------------------------------------- penalties

def length_penalty(lengths: Tensor | int, alpha: float) -> Tensor | float:
    """GNMT ``lp(n) = ((5 + n) / 6) ** alpha``."""
    if isinstance(lengths, Tensor):
        return ((5.0 + lengths.double()) / 6.0).pow(alpha).float()
    return ((5.0 + lengths) / 6.0) ** alpha


def coverage_penalty(coverage: Tensor, mask: Tensor, beta: float) -> Tensor:
    """GNMT ``beta * Σ_i log(min(coverage_i, 1))`` over ``mask``-ed source positions, ``(..., S) -> (...)``."""
    logs = coverage.float().clamp(min=COVERAGE_FLOOR, max=1.0).log()
    return beta * (logs * mask.to(logs.dtype)).sum(-1)


# ------------------------------------------------------------------------------------- utilities

def pad_sources(sources: Sequence[Sequence[int]], device: torch.device | str | None = None):
    """Id lists (each non-empty, EOS already appended) -> ``(src (B, S), lengths (B,), mask (B, S))``."""
    if not sources or any(len(s) == 0 for s in sources):
        raise ValueError("pad_sources needs a non-empty list of non-empty id lists")
    width = max(len(s) for s in sources)
    src = torch.full((len(sources), width), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(sources):
        src[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    lengths = torch.tensor([len(s) for s in sources], dtype=torch.long)
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    if device is not None:
        src, lengths, mask = src.to(device), lengths.to(device), mask.to(device)
    return src, lengths, mask


def _check_model(model) -> None:
    if model.training:
        raise ValueError("search needs the model in eval mode (call model.eval() first): "
                         "dropout would make the search random")


def _forbid_(out: Tensor, history: Tensor | None, step: int, opts: DecodeConfig) -> Tensor:
    """Set forbidden tokens of ``out (N, V)`` (logits or log-probs) to -inf, in place.

    ``history (N, step)`` holds the tokens generated so far. Forbidden: PAD and BOS always, EOS
    before ``min_len`` tokens, and tokens that would repeat an n-gram (``no_repeat_ngram``).
    The log-normaliser is taken before this: forbidden choices are not renormalised.
    """
    out[:, PAD_ID] = -math.inf
    out[:, BOS_ID] = -math.inf
    if step < opts.min_len:
        out[:, EOS_ID] = -math.inf
    n = opts.no_repeat_ngram
    if n > 0 and step >= n:
        windows = history.unfold(1, n, 1)  # (N, step - n + 1, n): every n-gram so far
        if n > 1:
            last = history[:, step - n + 1:]  # (N, n - 1): the prefix the next token would extend
            match = (windows[:, :, : n - 1] == last.unsqueeze(1)).all(-1)  # (N, W)
        else:
            match = torch.ones(windows.shape[:2], dtype=torch.bool, device=history.device)
        # the n-gram's last token where the prefix matches; PAD (always forbidden) elsewhere
        banned = torch.where(match, windows[:, :, n - 1], torch.full_like(windows[:, :, n - 1], PAD_ID))
        out.scatter_(1, banned, -math.inf)
    return out


class LogNormaliser:
    """Row-wise ``log Σ_v exp(logits[:, v])`` of ``(N, V)`` logits, in float32: ``(N, V) -> (N,)``.

    ``log_probs = logits - log_norm[:, None]`` without writing that matrix: search needs the
    log-probabilities of the few tokens it keeps only. One float32 scratch matrix is reused for
    every step of a search (a fresh (N, V) allocation per step makes ``torch.logsumexp``
    much slower on CPU); bfloat16 logits are widened on the way into it.
    """

    def __init__(self) -> None:
        self.scratch: Tensor | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        rows, vocab = logits.shape
        if self.scratch is None or self.scratch.size(0) < rows or self.scratch.size(1) != vocab \
                or self.scratch.device != logits.device:
            self.scratch = torch.empty(rows, vocab, dtype=torch.float32, device=logits.device)
        shifted = self.scratch[:rows]
        top = logits.amax(dim=1, keepdim=True).float()
        torch.sub(logits, top, out=shifted)
        return shifted.exp_().sum(dim=1).log_().add_(top.squeeze(1))


def _normaliser(model):
    """The log-normaliser of ``model``'s step logits; none for a step that returns log-probabilities
    already (an ensemble's mean of log-probabilities, :mod:`nmt.inference.ensemble`)."""
    if getattr(model, "step_returns_log_probs", False):
        return lambda log_probs: log_probs.new_zeros(log_probs.size(0), dtype=torch.float32)
    return LogNormaliser()


def _positions_or_zero(out, rows: int, device) -> Tensor:
    if out.positions is None:
        return torch.zeros(rows, device=device)
    return out.positions.float()


@dataclass
class OutputShortlist:
    """The output layer restricted to ``columns``: search scores ``(rows, L)`` logits instead of
    ``(rows, V)`` and maps a chosen column ``c`` back to the target id ``columns[c]``.

    ``columns`` are sorted target ids that start with 0..3 (PAD, UNK, BOS, EOS), so the special
    tokens keep their ids as column indices; ``column_of`` maps any target id to its column (ids
    outside the shortlist to column 0, PAD, which is never generated).
    """

    columns: Tensor  #: (L,) target ids
    weight: Tensor  #: (L, D) rows of the output layer
    bias: Tensor  #: (L,)
    column_of: Tensor  #: (V,) target id -> column

    @classmethod
    def of(cls, model, lexicon, src: Tensor, src_mask: Tensor, options: DecodeConfig) -> "OutputShortlist":
        from nmt.inference.shortlist import shortlist_output

        columns = lexicon.columns(src, src_mask, options.shortlist, options.shortlist_frequent)
        vocab = model.tgt_vocab_size
        if lexicon.tgt_vocab_size != vocab or int(columns[-1]) >= vocab:
            raise NmtError(f"the lexicon is for a target vocabulary of {lexicon.tgt_vocab_size}, the model "
                           f"has {vocab}; rebuild it with `nmt shortlist RUN_DIR`")
        assert columns[:N_SPECIAL].tolist() == list(range(N_SPECIAL))
        # an ensemble gives each member's rows (nmt.inference.ensemble)
        member_rows = getattr(model, "shortlist_output", None)
        weight, bias = member_rows(columns) if member_rows else shortlist_output(model, columns)
        column_of = torch.zeros(vocab, dtype=torch.long, device=src.device)
        column_of[columns] = torch.arange(columns.numel(), device=src.device)
        return cls(columns, weight, bias, column_of)


def search(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None = None,
           options: DecodeConfig | None = None, lexicon=None,
           return_attention: bool = False, tables=None, keys: Sequence[int] | None = None
           ) -> list[list[Hypothesis]]:
    """Sampling when ``options.sample``, greedy search when ``options.beam == 1``, else beam
    search. One list per sentence; ``keys``: see :func:`sample_search`.

    ``options`` are the recipe's ``decode`` settings (checked here); ``return_attention`` keeps
    each hypothesis's attention weights (and local-p positions).

    With ``options.shortlist > 0`` the output layer is restricted to the batch's lexical shortlist
    (:mod:`nmt.inference.shortlist`; ``lexicon`` is the run's :class:`~nmt.inference.shortlist.Lexicon`).
    ``tables``: the model's :meth:`~nmt.model.seq2seq.Seq2Seq.search_tables`, built by a caller that
    searches many batches with unchanged weights; by default they are built for this search.
    """
    options = (options or DecodeConfig()).check()
    shortlist = None
    if options.shortlist:
        if lexicon is None:
            raise NmtError("a shortlist search needs the run's lexicon (nmt.inference.shortlist.Lexicon); "
                           "build it with `nmt shortlist RUN_DIR`")
        if src_mask is None:
            src_mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < src_lengths.unsqueeze(1)
        shortlist = OutputShortlist.of(model, lexicon, src, src_mask, options)
    if options.sample:
        return sample_search(model, src, src_lengths, src_mask, options, shortlist=shortlist,
                             return_attention=return_attention, tables=tables, keys=keys)
    search_fn = greedy_search if options.beam == 1 else beam_search
    return search_fn(model, src, src_lengths, src_mask, options, shortlist=shortlist,
                     return_attention=return_attention, tables=tables)


def _begin(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None, opts: DecodeConfig,
           tables, fold_context: bool):
    """What every search starts with: the source mask (built when None), the search tables (built
    when None; None again for the plain step), the encoded source as the first decoder state and
    the attention memory, and each sentence's max length. Returns
    ``(src_mask, tables, state, memory, max_lens)``."""
    if src_mask is None:
        src_mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < src_lengths.unsqueeze(1)
    if tables is None:
        tables = model.search_tables()  # None: the plain step
    enc = model.encode(src, src_lengths, src_mask)
    state, memory = model.start(enc, tables, fold_context=fold_context)
    return src_mask, tables, state, memory, max_lengths(opts, src_lengths.to(src.device))


def _step_logits(model, prev: Tensor, state, memory, shortlist: OutputShortlist | None, tables):
    output = None if shortlist is None else (shortlist.weight, shortlist.bias)
    return model.step_logits(prev, state, memory, output=output, tables=tables)


# ---------------------------------------------------------------------------------------- greedy

#: greedy search drops ended rows from the batch once this fraction of its rows has ended
_DROP_FINISHED_FRACTION = 0.25


@torch.inference_mode()
def greedy_search(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None = None,
                  options: DecodeConfig | None = None, shortlist: OutputShortlist | None = None,
                  return_attention: bool = False, tables=None) -> list[list[Hypothesis]]:
    """Arg-max decoding; returns one hypothesis per sentence (``options.beam`` is ignored).
    ``tables``: see :func:`search`."""
    hyps = _one_token_per_step(model, src, src_lengths, src_mask, options or DecodeConfig(beam=1),
                               shortlist, return_attention, tables)
    return [[h] for h in hyps]


@torch.inference_mode()
def sample_search(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None = None,
                  options: DecodeConfig | None = None, shortlist: OutputShortlist | None = None,
                  return_attention: bool = False, tables=None, keys: Sequence[int] | None = None
                  ) -> list[list[Hypothesis]]:
    """Ancestral sampling: ``options.n_best`` independent samples per sentence, sorted by score
    (best first; two samples may be equal). ``options.beam`` is ignored.

    At each step the token is drawn from the model's distribution over the tokens greedy search
    may choose (forbidden ones as in greedy search), changed by ``options.temperature``
    (``p^(1/T)``, renormalised), restricted to the ``top_k`` most probable tokens (renormalised),
    then to the nucleus of ``top_p`` of that distribution (the smallest set of most probable tokens
    whose probability is at least ``top_p``), renormalised. The reported log-probabilities are the
    model's (temperature 1, no restriction), so scores mean what they mean for the other searches.

    Randomness: sample j of the sentence with key k (``keys``, default 0, 1, ...; the translator
    passes input line numbers) uses its own random stream, seeded from ``(options.seed, k, j)``:
    the result depends neither on the batch nor on the other sentences in it.
    """
    opts = options or DecodeConfig(beam=1, sample=True)
    copies = opts.n_best
    keys = list(range(src.size(0))) if keys is None else [int(k) for k in keys]
    if len(keys) != src.size(0):
        raise ValueError(f"{len(keys)} keys for {src.size(0)} sentences")
    streams = [(opts.seed, key, j) for key in keys for j in range(copies)]
    hyps = _one_token_per_step(model, src, src_lengths, src_mask, opts, shortlist, return_attention, tables,
                               choose=lambda max_lens: _Sampler(opts, streams, max_lens), copies=copies)
    return [sorted(hyps[b * copies: (b + 1) * copies], key=lambda h: -h.score) for b in range(len(keys))]


def _stream_seed(key: tuple[int, ...]) -> int:
    """A 63-bit generator seed of a tuple of ints, the same on every machine and Python version."""
    digest = hashlib.blake2b(repr(tuple(int(k) for k in key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _Sampler:
    """Draws one token per row and step (see :func:`sample_search`) by inverting the cumulative
    distribution at a uniform number of the row's own stream."""

    def __init__(self, opts: DecodeConfig, streams: Sequence[tuple[int, ...]], max_lens: Tensor):
        self.temperature, self.top_k, self.top_p = opts.temperature, opts.top_k, opts.top_p
        # a row's numbers depend on its stream and its own max length only
        uniforms = torch.zeros(len(streams), int(max_lens.max()), dtype=torch.float64)
        for row, (stream, n) in enumerate(zip(streams, max_lens.tolist())):
            generator = torch.Generator().manual_seed(_stream_seed(stream))
            uniforms[row, :n] = torch.rand(n, generator=generator, dtype=torch.float64)
        self.uniforms = uniforms.to(max_lens.device)

    def __call__(self, logits: Tensor, rows: Tensor, step: int) -> Tensor:
        """``logits (N, C)`` with forbidden tokens at -inf, of batch rows ``rows (N,)``
        -> ``(N,)`` the chosen columns."""
        x = logits.float()
        if self.temperature != 1.0:
            x = x / self.temperature  # softmax(x / T) = p^(1/T) renormalised
        if 0 < self.top_k < x.size(1):
            kept = x.topk(self.top_k, dim=1).indices
            x = torch.full_like(x, -math.inf).scatter_(1, kept, x.gather(1, kept))
        if self.top_p < 1.0:
            x = x.masked_fill(~nucleus(torch.softmax(x, dim=1), self.top_p), -math.inf)
        # the running sum in float64: over a large vocabulary float32 would drift by ~1e-4
        cdf = torch.softmax(x, dim=1).nan_to_num_(0.0).double().cumsum(dim=1)  # a row of -inf only: all 0
        u = self.uniforms[rows, step].unsqueeze(1) * cdf[:, -1:]
        # the first token whose cumulative probability exceeds u (tokens of probability 0 never are)
        return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=x.size(1) - 1)


#: tokens looked at first for a nucleus; rows whose nucleus is larger sort their whole distribution
NUCLEUS_CANDIDATES = 64


def nucleus(probs: Tensor, top_p: float, candidates: int = NUCLEUS_CANDIDATES) -> Tensor:
    """``(N, V)`` probabilities -> ``(N, V)`` bool: the nucleus of each row, the smallest set of
    most probable tokens whose probability is at least ``top_p`` (a row whose total stays below
    ``top_p`` keeps every token).

    Sorting whole rows costs more than a decoder step, and a translation model's nucleus is
    usually a few tokens: the ``candidates`` most probable tokens are sorted first, and only the
    rows whose nucleus reaches beyond them are sorted whole.
    """
    def kept(values: Tensor, order: Tensor) -> Tensor:  # values sorted descending, found at order
        before = values.cumsum(dim=1) - values  # probability of the more probable tokens
        mask = torch.zeros(values.size(0), probs.size(1), dtype=torch.bool, device=probs.device)
        return mask.scatter_(1, order, before < top_p)

    top, order = probs.topk(min(candidates, probs.size(1)), dim=1)
    mask = kept(top, order)
    wider = (top.sum(dim=1) < top_p).nonzero().squeeze(1)
    if wider.numel():
        mask[wider] = kept(*probs[wider].sort(dim=1, descending=True))
    return mask


def _one_token_per_step(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None,
                        opts: DecodeConfig, shortlist: OutputShortlist | None, return_attention: bool,
                        tables, choose=None, copies: int = 1) -> list[Hypothesis]:
    """Greedy search (``choose=None``: the arg-max) or sampling (``choose(max_lens)`` builds the
    chooser of the rows' tokens); ``copies`` rows per sentence. One hypothesis per row."""
    _check_model(model)
    device = src.device
    # no context folding: with one hypothesis per sentence it costs about what it saves
    # (S x 512 x 1024 once vs 512 x 1024 per step); the embedding tables still pay
    src_mask, tables, state, memory, max_lens = _begin(model, src, src_lengths, src_mask, opts, tables,
                                                       fold_context=False)
    if copies > 1:  # each sentence's rows side by side: sentence b has rows b * copies + j
        rows = torch.arange(src.size(0), device=device).repeat_interleave(copies)
        state, memory = state.select(rows), memory.select(rows)
        src_lengths, src_mask, max_lens = src_lengths[rows], src_mask[rows], max_lens[rows]
    if choose is not None:
        choose = choose(max_lens)
    batch = max_lens.numel()
    horizon = int(max_lens.max())
    keep_att = return_attention
    need_att = keep_att or bool(opts.coverage_penalty)
    with_positions = keep_att and _has_positions(model)
    # Each step's choices are recorded for the rows it ran (``active`` holds their sentence ids) and
    # laid out by sentence once at the end. A row that ends keeps running until enough rows have
    # ended to pay for dropping them: dropping gathers the memory (keys and their projection, the
    # largest tensors of the search), which costs about as much as a decoder step.
    recorded: list[tuple[Tensor, ...]] = []
    history = torch.full((batch, horizon), PAD_ID, dtype=torch.long, device=device) \
        if opts.no_repeat_ngram else None
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)  # sentence id of each row
    running = torch.ones(batch, dtype=torch.bool, device=device)
    row_len = torch.zeros(batch, dtype=torch.long, device=device)
    act_max = max_lens
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    log_normaliser = _normaliser(model)
    for step in range(horizon):
        logits, out = _step_logits(model, prev, state, memory, shortlist, tables)
        log_norm = log_normaliser(logits)  # before _forbid_: forbidden tokens are not renormalised
        seen = None
        if history is not None:
            seen = history.index_select(0, active)[:, :step]
            if shortlist is not None:
                seen = shortlist.column_of[seen]
        allowed = _forbid_(logits, seen, step, opts)
        if choose is None:
            best, tok = allowed.max(dim=-1)
        else:
            tok = choose(allowed, active, step)
            best = allowed.gather(1, tok.unsqueeze(1)).squeeze(1)
        if shortlist is not None:
            tok = shortlist.columns[tok]
        best = best.float()
        record = [active, tok, best - log_norm]
        if need_att:
            record.append(out.attention.float())
        if with_positions:
            record.append(_positions_or_zero(out, tok.size(0), device))
        recorded.append(tuple(record))
        if history is not None:
            history[active, step] = tok
        ended = (tok == EOS_ID) | (act_max <= step + 1)
        end_len = step + 1
        if history is not None:
            # every token forbidden (only n-gram blocking can do that): the row ends without one
            blocked = ~torch.isfinite(best)
            ended = ended | blocked
            end_len = step + 1 - blocked.long()
        ended &= running
        row_len = torch.where(ended, end_len, row_len)
        running &= ~ended
        n_running = int(running.sum())
        if n_running == 0:
            break
        rows = running.numel()
        if rows - n_running >= max(1, int(rows * _DROP_FINISHED_FRACTION)):
            done = (~running).nonzero().squeeze(1)
            lengths[active[done]] = row_len[done]
            keep = running.nonzero().squeeze(1)
            state, memory = out.state.select(keep), memory.select(keep)
            active, act_max, prev, row_len = active[keep], act_max[keep], tok[keep], row_len[keep]
            running = running[keep]
        else:
            state, prev = out.state, tok
    lengths[active] = row_len

    steps_run = len(recorded)
    columns = list(zip(*recorded))
    sentence = torch.cat(columns[0])
    position = torch.repeat_interleave(torch.arange(steps_run, device=device),
                                       torch.tensor([r.numel() for r in columns[0]], device=device))

    def by_sentence(values, fill):
        flat = torch.cat(values)
        laid = flat.new_full((batch, steps_run) + tuple(flat.shape[1:]), fill)
        laid[sentence, position] = flat
        return laid

    tokens = by_sentence(columns[1], PAD_ID)
    valid = torch.arange(steps_run, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    tok_lps = by_sentence(columns[2], 0.0).masked_fill_(~valid, 0.0)
    att = by_sentence(columns[3], 0.0).masked_fill_(~valid.unsqueeze(2), 0.0) if need_att else None
    pos = by_sentence(columns[4], 0.0) if with_positions else None
    raw = tok_lps.sum(1)
    penalised = raw / length_penalty(lengths.clamp(min=1), opts.length_penalty)
    if opts.coverage_penalty:
        penalised = penalised + coverage_penalty(att.sum(1), src_mask, opts.coverage_penalty)
    # whole tensors to Python lists once: per-sentence tensor indexing is slow
    all_tokens, all_log_probs = tokens.tolist(), tok_lps.tolist()
    scores, raw_scores = penalised.tolist(), raw.tolist()
    results = []
    for b, (n, src_n) in enumerate(zip(lengths.tolist(), src_lengths.tolist())):
        toks = all_tokens[b][:n]
        results.append(Hypothesis(
            tokens=toks, score=scores[b], log_probs=all_log_probs[b][:n],
            attention=att[b, :n, :src_n].clone() if keep_att else None,
            positions=pos[b, :n].clone() if with_positions else None,
            raw_score=raw_scores[b], finished=bool(n > 0 and toks[-1] == EOS_ID)))
    return results


def _has_positions(model) -> bool:
    attention = getattr(getattr(model, "cfg", None), "attention", None)
    return getattr(attention, "kind", None) == "local-p"


# ------------------------------------------------------------------------------------------ beam

def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x (A, M, ...)``, ``index (A, P)`` -> ``x[a, index[a, p], ...]`` of shape ``(A, P, ...)``."""
    shape = index.shape + x.shape[2:]
    idx = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(shape)
    return x.gather(1, idx)


@torch.inference_mode()
def beam_search(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None = None,
                options: DecodeConfig | None = None, shortlist: OutputShortlist | None = None,
                return_attention: bool = False, tables=None) -> list[list[Hypothesis]]:
    """Batched beam search (see the module docstring for the exact rules).

    Returns, per sentence, up to ``n_best`` distinct hypotheses sorted by penalised score, best
    first (fewer only if fewer than ``n_best`` sequences are possible at all). ``tables``: see
    :func:`search`.
    """
    _check_model(model)
    opts = options or DecodeConfig()
    K, P = opts.beam, opts.n_best
    alpha, beta = opts.length_penalty, opts.coverage_penalty
    keep_att = return_attention
    device = src.device
    batch, src_len = src.shape

    src_mask, tables, state, memory, max_lens = _begin(model, src, src_lengths, src_mask, opts, tables,
                                                       fold_context=True)
    horizon = int(max_lens.max())
    rows0 = torch.arange(batch, device=device).repeat_interleave(K)
    state = state.select(rows0)
    # the fast search step (with tables) shares a sentence's memory row between its K beams;
    # the plain step gives every beam row its own copy
    shared_memory = tables is not None
    if not shared_memory:
        memory = memory.select(rows0)

    # active beams: rows are (sentence, beam) pairs, sentence-major; only beam 0 is live at first
    beam_scores = torch.full((batch, K), -math.inf, device=device)
    beam_scores[:, 0] = 0.0
    beam_scores = beam_scores.view(-1)
    seqs = torch.zeros(batch * K, 0, dtype=torch.long, device=device)
    hist_lp = torch.zeros(batch * K, 0, device=device)
    hist_att = torch.zeros(batch * K, 0, src_len, device=device) if keep_att else None
    hist_pos = torch.zeros(batch * K, 0, device=device) if keep_att else None
    coverage = torch.zeros(batch * K, src_len, device=device) if beta else None
    active = torch.arange(batch, device=device)
    act_max = max_lens
    prev = torch.full((batch * K,), BOS_ID, dtype=torch.long, device=device)

    # per-sentence pool of the P best hypotheses (sorted, -inf = empty slot)
    pool_score = torch.full((batch, P), -math.inf, device=device)
    pool_raw = torch.zeros(batch, P, device=device)
    pool_len = torch.zeros(batch, P, dtype=torch.long, device=device)
    pool_tok = torch.full((batch, P, horizon), PAD_ID, dtype=torch.long, device=device)
    pool_lp = torch.zeros(batch, P, horizon, device=device)
    pool_att = torch.zeros(batch, P, horizon, src_len, device=device) if keep_att else None
    pool_pos = torch.zeros(batch, P, horizon, device=device) if keep_att else None

    log_normaliser = _normaliser(model)
    for step in range(horizon):
        n_act = active.numel()
        logits, out = _step_logits(model, prev, state, memory, shortlist, tables)  # (n_act*K, V or L)
        vocab = model.tgt_vocab_size  # continuations are numbered k * vocab + target id
        log_norm = log_normaliser(logits)  # (n_act*K,), before _forbid_: no renormalisation
        if shortlist is not None and opts.no_repeat_ngram:
            _forbid_(logits, shortlist.column_of[seqs], step, opts)
        else:
            _forbid_(logits, seqs, step, opts)
        at_max = act_max <= step + 1  # (n_act,)
        step_att = out.attention.float()
        new_cov = coverage + step_att if beta else None

        # One top-2K serves both selections below: each beam has one EOS continuation, so at most
        # K of the 2K best end in EOS and the K best non-EOS continuations are among them. The
        # sentence's top 2K over its K x V continuations are among its beams' own top 2K, so the
        # (rows, V) matrix is read once by a per-row top-k and never copied or added to.
        per_row = min(2 * K, logits.size(1))
        row_val, row_tok = logits.topk(per_row, dim=1)  # (n_act*K, per_row)
        if shortlist is not None:
            row_tok = shortlist.columns[row_tok]  # columns -> target ids
        row_lp = (row_val.float() - log_norm.unsqueeze(1)).view(n_act, K * per_row)  # token log-probs
        cand = (beam_scores.view(n_act, K, 1) + row_lp.view(n_act, K, per_row)).view(n_act, K * per_row)
        best_val, best_pos = cand.topk(2 * K, dim=1)
        best_lp = row_lp.gather(1, best_pos)
        # continuation (parent beam k, token v) as k * V + v, as if ranked over (K x V) directly
        best_idx = (best_pos // per_row) * vocab + row_tok.view(n_act, K * per_row).gather(1, best_pos)
        # 1. the top K continuations overall: EOS ones (and all of them at max length) are pooled
        top_val, top_idx = best_val[:, :K], best_idx[:, :K]
        top_tok, top_par = top_idx % vocab, top_idx // vocab
        admit = ((top_tok == EOS_ID) | at_max.unsqueeze(1)) & torch.isfinite(top_val)
        if bool(admit.any()):
            pen = top_val / length_penalty(step + 1, alpha)
            if beta:
                cand_rows = torch.arange(n_act, device=device).unsqueeze(1) * K + top_par
                mask_rows = cand_rows // K if shared_memory else cand_rows
                pen = pen + coverage_penalty(new_cov[cand_rows], memory.mask[mask_rows], beta)
            pen = pen.masked_fill(~admit, -math.inf)
            worst = pool_score.index_select(0, active)[:, P - 1]
            sub = ((pen > worst.unsqueeze(1)).any(1)).nonzero().squeeze(1)
            if sub.numel():
                ids = active[sub]
                rows = sub.unsqueeze(1) * K + top_par[sub]  # (s, K) rows of the parents
                toks = top_tok[sub]
                flat = rows.view(-1)
                pad = horizon - step - 1
                c_tok = torch.cat([seqs[flat], toks.view(-1, 1)], 1)
                c_lp = torch.cat([hist_lp[flat], best_lp[sub, :K].reshape(-1, 1)], 1)
                shape = rows.shape
                merged_score = torch.cat([pool_score[ids], pen[sub]], 1)  # (s, P + K)
                sel = merged_score.topk(P, dim=1).indices

                def merge(pool: Tensor, cand_x: Tensor) -> None:
                    both = torch.cat([pool[ids], cand_x], 1)
                    pool[ids] = _gather_rows(both, sel)

                merge(pool_tok, F.pad(c_tok, (0, pad), value=PAD_ID).view(*shape, horizon))
                merge(pool_lp, F.pad(c_lp, (0, pad)).view(*shape, horizon))
                merge(pool_raw, top_val[sub])
                merge(pool_len, torch.full(shape, step + 1, dtype=torch.long, device=device))
                if keep_att:
                    c_att = torch.cat([hist_att[flat], step_att[flat].unsqueeze(1)], 1)
                    merge(pool_att, F.pad(c_att, (0, 0, 0, pad)).view(*shape, horizon, src_len))
                    c_pos = torch.cat([hist_pos[flat], _positions_or_zero(out, step_att.size(0), device)[flat]
                                       .unsqueeze(1)], 1)
                    merge(pool_pos, F.pad(c_pos, (0, pad)).view(*shape, horizon))
                pool_score[ids] = _gather_rows(merged_score, sel)
        if bool(at_max.all()):
            break

        # 2. the next beams: the top K continuations that do not end in EOS
        # (stable sort on "is EOS" moves the non-EOS ones first, keeping their order)
        order = torch.sort((best_idx % vocab == EOS_ID).to(torch.uint8), dim=1, stable=True).indices[:, :K]
        cont_val, cont_idx = best_val.gather(1, order), best_idx.gather(1, order)
        cont_lp = best_lp.gather(1, order)
        # 4. done sentences leave the batch
        bound = cont_val[:, 0] / length_penalty(act_max, alpha)
        worst = pool_score.index_select(0, active)[:, P - 1]
        done = at_max | ~torch.isfinite(cont_val[:, 0]) | (worst >= bound)
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)
        cont_tok = cont_idx[keep] % vocab
        parents = (keep.unsqueeze(1) * K + cont_idx[keep] // vocab).view(-1)
        tok = cont_tok.view(-1)
        state = out.state.select(parents)
        if keep.numel() < n_act:
            memory = memory.select(keep if shared_memory else
                                   (keep.unsqueeze(1) * K + torch.arange(K, device=device)).view(-1))
            active, act_max = active[keep], act_max[keep]
        beam_scores = cont_val[keep].view(-1)
        seqs = torch.cat([seqs[parents], tok.unsqueeze(1)], 1)
        hist_lp = torch.cat([hist_lp[parents], cont_lp[keep].view(-1, 1)], 1)
        if keep_att:
            hist_att = torch.cat([hist_att[parents], step_att[parents].unsqueeze(1)], 1)
            hist_pos = torch.cat([hist_pos[parents],
                                  _positions_or_zero(out, step_att.size(0), device)[parents].unsqueeze(1)], 1)
        if beta:
            coverage = new_cov[parents]
        prev = tok

    return _collect_pool(model, src_lengths, pool_score, pool_raw, pool_len, pool_tok, pool_lp,
                         pool_att, pool_pos)


def _collect_pool(model, src_lengths, pool_score, pool_raw, pool_len, pool_tok, pool_lp,
                  pool_att, pool_pos) -> list[list[Hypothesis]]:
    scores, raws, lens = pool_score.tolist(), pool_raw.tolist(), pool_len.tolist()
    all_tokens, all_log_probs = pool_tok.tolist(), pool_lp.tolist()  # once, not per hypothesis
    src_lens = src_lengths.tolist()
    with_pos = _has_positions(model)
    results = []
    for b in range(len(scores)):
        hyps = []
        for p, score in enumerate(scores[b]):
            if not math.isfinite(score):
                continue
            n = lens[b][p]
            toks = all_tokens[b][p][:n]
            hyps.append(Hypothesis(
                tokens=toks, score=score, log_probs=all_log_probs[b][p][:n],
                attention=None if pool_att is None else pool_att[b, p, :n, : src_lens[b]].clone(),
                positions=None if pool_pos is None or not with_pos else pool_pos[b, p, :n].clone(),
                raw_score=raws[b][p], finished=bool(n > 0 and toks[-1] == EOS_ID)))
        results.append(hyps)
    return results


# ------------------------------------------------------------------------------ forced decoding

@torch.inference_mode()
def score_targets(model, src: Tensor, src_lengths: Tensor, src_mask: Tensor | None,
                  targets: Sequence[Sequence[int]], add_eos: bool = True
                  ) -> tuple[list[float], list[list[float]]]:
    """Log-probability of given target ids by teacher forcing (one pass for the batch).

    ``targets[b]`` are target ids without BOS; with ``add_eos`` EOS is appended unless it is
    already the last id. Returns ``(scores, token_log_probs)``: per sentence the sum of the
    token log-probabilities (EOS included when present) and the list of them. No penalties: the
    sum equals the raw score search reports for the same tokens.
    """
    _check_model(model)
    if len(targets) != src.size(0):
        raise ValueError(f"{len(targets)} targets for {src.size(0)} sources")
    if src_mask is None:
        src_mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < src_lengths.unsqueeze(1)
    device = src.device
    tgts = []
    for ids in targets:
        ids = [int(i) for i in ids]
        if add_eos and (not ids or ids[-1] != EOS_ID):
            ids.append(EOS_ID)
        tgts.append(ids)
    width = max(1, max(len(t) for t in tgts))
    tgt_in = torch.full((len(tgts), width), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((len(tgts), width), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(tgts):
        if ids:
            tgt_in[row, 0] = BOS_ID
            tgt_in[row, 1: len(ids)] = torch.tensor(ids[:-1], dtype=torch.long)
            tgt_out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        else:
            tgt_in[row, 0] = BOS_ID  # nothing to score; the row still needs a valid input
    tgt_in, tgt_out = tgt_in.to(device), tgt_out.to(device)
    ensemble_log_probs = getattr(model, "teacher_forced_log_probs", None)  # nmt.inference.ensemble
    if ensemble_log_probs is not None:
        log_probs = ensemble_log_probs(src, src_lengths, src_mask, tgt_in)
    else:
        readout, _ = model.teacher_force(src, src_lengths, src_mask, tgt_in)
        log_probs = F.log_softmax(model.output(readout).float(), dim=-1)
    token_lp = log_probs.gather(2, tgt_out.unsqueeze(2)).squeeze(2).cpu()
    per_token = [token_lp[row, : len(ids)].tolist() for row, ids in enumerate(tgts)]
    return [float(sum(t)) if t else 0.0 for t in per_token], per_token

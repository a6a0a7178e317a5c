"""Ensemble decoding: several trained models searched as one.

:class:`Ensemble` offers the step interface search uses (:mod:`nmt.inference.search`: ``encode``,
``search_tables``, ``start``, ``step_logits``, and ``select`` on its state and memory), so greedy
search, beam search, n-best lists, the penalties and the lexical shortlist run unchanged over it.

The ensemble's distribution of the next token is the **mean of the members' log-probabilities**::

    log p_ens(y | y_<t, x) = (1 / M) Σ_m log p_m(y | y_<t, x)

(the log of the members' normalised geometric mean, *not* renormalised, as OpenNMT-py and Marian
combine models; fairseq's log of the mean probability is the other common choice). A hypothesis's
raw score is then the mean of the members' raw scores, which is what forced decoding of the same
tokens gives (:func:`nmt.inference.search.score_targets` and ``Translator.score`` take the mean of
the members' log-probabilities too). ``step_logits`` returns these log-probabilities already
normalised (its ``log_normaliser`` gives zeros).

- Each member keeps its own ``model.kernels`` path: a member with search tables runs its fast step,
  the others the plain equations. When some members have tables and others not, search shares a
  sentence's memory row between its beams (the fast step's layout), and the plain members
  expand their memory to one row per beam at each step.
- Attention (plots, alignments, the coverage penalty) is the mean of the members' attention
  weights; local-p's predicted positions are not reported for an ensemble.
- With a lexical shortlist each member's log-probabilities are normalised over the shortlist (as a
  single model's are), then averaged.
- The members see the same source ids, so their sources must be encoded by the same tokenizer, and
  they must share the target vocabulary (:func:`check_compatible` names the runs that do not).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor, nn

from nmt.errors import NmtError
from nmt.model.decoder import DecoderState, Memory
from nmt.model.encoder import EncoderOutput

if TYPE_CHECKING:
    from nmt.inference.shortlist import Lexicon

__all__ = ["Ensemble", "check_compatible"]


@dataclass
class EnsembleEncoding:
    members: list[EncoderOutput]
    self_attention: None = None  #: encoder self-attention maps are a single model's

    @property
    def mask(self) -> Tensor:
        return self.members[0].mask


@dataclass
class EnsembleState:
    members: list[DecoderState]

    def select(self, index: Tensor) -> "EnsembleState":
        return EnsembleState([state.select(index) for state in self.members])


@dataclass
class EnsembleMemory:
    members: list[Memory]

    @property
    def mask(self) -> Tensor:
        """(rows, src_len): the members share the source, hence the mask."""
        return self.members[0].mask

    def select(self, index: Tensor) -> "EnsembleMemory":
        return EnsembleMemory([memory.select(index) for memory in self.members])


@dataclass
class EnsembleStep:
    """One ensemble step for search: the members' next states and their mean attention."""

    state: EnsembleState
    attention: Tensor  #: (rows, src_len) mean of the members' attention weights
    positions: None = None


class Ensemble(nn.Module):
    """Models with one target vocabulary, searched as one (see the module docstring)."""

    #: local-p's predicted positions are a single model's
    reports_positions = False

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        vocabs = {m.tgt_vocab_size for m in models}
        if len(vocabs) != 1:
            raise NmtError(f"ensemble members have different target vocabulary sizes {sorted(vocabs)}; "
                           "they must share the target vocabulary")
        self.members = nn.ModuleList(models)
        self.tgt_vocab_size = models[0].tgt_vocab_size
        self.src_vocab_size = models[0].src_vocab_size
        self.training = any(m.training for m in models)  # in eval mode when its members are

    def __len__(self) -> int:
        return len(self.members)

    # --------------------------------------------------------------------- the search interface
    @staticmethod
    def log_normaliser(ordered: bool = False):
        """``step_logits`` returns normalised log-probabilities: their log-normaliser is zero."""
        return lambda log_probs: log_probs.new_zeros(log_probs.size(0), dtype=torch.float32)

    def search_tables(self) -> list | None:
        """Each member's search tables (None for a member on the plain step); None if no member has any."""
        tables = [m.search_tables() for m in self.members]
        return None if all(t is None for t in tables) else tables

    def encode(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor,
               need_attention: bool = False, tables: list | None = None) -> EnsembleEncoding:
        return EnsembleEncoding([m.encode(src, src_lengths, src_mask, tables=self._tables_of(tables, i))
                                 for i, m in enumerate(self.members)])

    def start(self, enc: EnsembleEncoding, tables: list | None = None,
              fold_context: bool = False) -> tuple[EnsembleState, EnsembleMemory]:
        starts = [m.start(e, self._tables_of(tables, i), fold_context)
                  for i, (m, e) in enumerate(zip(self.members, enc.members))]
        return EnsembleState([s for s, _ in starts]), EnsembleMemory([mem for _, mem in starts])

    def step_logits(self, prev_tokens: Tensor, state: EnsembleState, memory: EnsembleMemory,
                    output: tuple[list[Tensor], list[Tensor]] | None = None,
                    tables: list | None = None, penalty: Tensor | None = None) -> tuple[Tensor, EnsembleStep]:
        """Mean of the members' log-probabilities ``(rows, V)`` (or ``(rows, L)`` over a shortlist,
        ``output`` then holding each member's rows of its output layer), float32, and the step.
        ``penalty (rows, L)``: -inf in the columns outside each row's own shortlist, added to every
        member's logits before its normalisation (:mod:`nmt.inference.sentence_shortlist`)."""
        total = attention = None
        states = []
        rows = prev_tokens.size(0)
        for i, model in enumerate(self.members):
            member_tables = self._tables_of(tables, i)
            mem = memory.members[i]
            if tables is not None and member_tables is None and mem.mask.size(0) != rows:
                # search shares a sentence's memory row between its beams; the plain step needs a row per beam
                sentences = mem.mask.size(0)
                mem = mem.select(torch.arange(sentences, device=prev_tokens.device)
                                 .repeat_interleave(rows // sentences))
            rows_out = None if output is None else (output[0][i], output[1][i])
            logits, out = model.step_logits(prev_tokens, state.members[i], mem, output=rows_out,
                                            tables=member_tables)
            if penalty is not None:
                logits = logits + penalty.to(logits.dtype)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            total = log_probs if total is None else total.add_(log_probs)
            att = out.attention.float()
            attention = att if attention is None else attention + att
            states.append(out.state)
        scale = 1.0 / len(self.members)
        return total.mul_(scale), EnsembleStep(EnsembleState(states), attention * scale)

    def shortlist_output(self, columns: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Each member's output-layer rows for ``columns`` (see :func:`nmt.inference.shortlist.shortlist_output`)."""
        from nmt.inference.shortlist import shortlist_output

        rows = [shortlist_output(m, columns) for m in self.members]
        return [w for w, _ in rows], [b for _, b in rows]

    def teacher_forced_log_probs(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor,
                                 tgt_in: Tensor) -> Tensor:
        """Mean of the members' teacher-forced log-probabilities, ``(batch, tgt_len, V)`` float32."""
        total = None
        for model in self.members:
            readout, _ = model.teacher_force(src, src_lengths, src_mask, tgt_in)
            log_probs = torch.log_softmax(model.output(readout).float(), dim=-1)
            total = log_probs if total is None else total.add_(log_probs)
        return total.mul_(1.0 / len(self.members))

    @staticmethod
    def _tables_of(tables: list | None, i: int):
        return None if tables is None else tables[i]


# ---------------------------------------------------------------------------------- run checks

def check_compatible(runs: Sequence[tuple[str | os.PathLike, object, object]]) -> None:
    """Refuse runs that cannot be ensembled: ``runs`` are ``(run_dir, recipe, tokenizers)``.

    The members must share the target sentencepiece model (one vocabulary: the same id means the
    same subword), and the source side must be processed identically (the same source model and the
    same ``data.filter.normalize``), because every member reads the same source ids.
    """
    from nmt.data.tokenizer import SRC_MODEL, TGT_MODEL

    first_dir, first_recipe, first_tok = runs[0]
    first_hashes = first_tok.file_hashes
    fix = ("train the members with the same tokenizer: the same data and tokenizer settings, e.g. "
           "the same recipe with another train.seed, each run directory starting from a copy of the "
           "first run's spm.src.model, spm.tgt.model and spm.json")
    for run_dir, recipe, tok in runs[1:]:
        hashes = tok.file_hashes
        for name, side in ((TGT_MODEL, "target vocabularies"), (SRC_MODEL, "source tokenizers")):
            if hashes[name] != first_hashes[name]:
                raise NmtError(
                    f"cannot ensemble {first_dir} and {run_dir}: their {side} differ ({name} sha256 "
                    f"{first_hashes[name][:12]}... vs {hashes[name][:12]}...); {fix}")
        a, b = first_recipe.data.filter.normalize, recipe.data.filter.normalize
        if a != b:
            raise NmtError(f"cannot ensemble {first_dir} and {run_dir}: their sources are normalised "
                           f"differently (data.filter.normalize {a!r} vs {b!r}); an ensemble's members "
                           "read the same source ids")


def shared_lexicon(run_dirs: Sequence[str | os.PathLike]) -> tuple[Lexicon | None, str]:
    """The lexicon every run holds, or ``(None, why not)``: a shortlist
    needs one lexicon for the ensemble's one target vocabulary.

    The tables are compared, not the files: runs trained on the same data build the same tables, but
    each file records its own build time."""
    from nmt.inference.shortlist import LEXICON_FILE, Lexicon

    first = None
    for run_dir in run_dirs:
        path = Path(run_dir) / LEXICON_FILE
        if not path.is_file():
            return None, f"{run_dir} has no {LEXICON_FILE} (`nmt shortlist {run_dir}` builds one)"
        lexicon = Lexicon.load(path)
        if first is None:
            first = (run_dir, lexicon)
        elif not lexicon.same_tables(first[1]):
            return None, (f"the {LEXICON_FILE} tables of {first[0]} and {run_dir} differ (built from "
                          "other data or settings)")
    return first[1], ""

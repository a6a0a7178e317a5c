"""Training examples with the regularisation that helps small corpora (docs/training.md,
"Regularisation for small corpora"), each off by default:

- **concatenated pairs** (Nguyen et al. 2021; Kondo et al. 2021): ``ratio × N`` extra examples,
  each ``k`` training pairs joined, sources with sources and targets with targets, so the model
  also learns from inputs longer than the corpus's sentences. The pairs are drawn once per run
  from the seed (:func:`concat_plan`): the batch sampler sees a fixed set of examples.
- **subword sampling** (Kudo 2018; BPE-dropout, Provilkov et al. 2020): every epoch, each training
  sentence gets a new sentencepiece segmentation, drawn from ``(seed, epoch, pair)``.
- **word dropout** (Gal & Ghahramani 2016; Sennrich et al. 2016): source subwords replaced by
  ``<unk>`` (or removed), decoder input subwords replaced by ``<unk>``, drawn from
  ``(seed, epoch, rank, batch position)``.

No draw comes from a global generator: a run resumed from a checkpoint (which restores the
sampler's epoch and position) builds exactly the batches the uninterrupted run builds. Validation
and translation never come through here.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any, Sequence

import numpy as np
import torch

from nmt.data.batching import Batch, collate, lengths_of
from nmt.data.vocab import EOS_ID, N_SPECIAL, UNK_ID

#: ``train.subword_alpha`` when the recipe leaves it unset: Kudo 2018's setting for sampling from
#: all segmentations (0.1 there splits words into 1.6x as many pieces on fr-en), and BPE-dropout's
DEFAULT_ALPHA = {"unigram": 0.2, "bpe": 0.1}

# stream names, so that the draws of the three techniques never share a random stream
_CONCAT, _SAMPLE, _DROPOUT = 0x636F6E63, 0x73706D73, 0x776F7264


@dataclass(frozen=True)
class Augmentation:
    """The recipe's regularisation settings (``train.*``, see :class:`nmt.config.TrainConfig`)."""

    seed: int = 0
    src_word_dropout: float = 0.0
    tgt_word_dropout: float = 0.0
    word_dropout_mode: str = "unk"
    subword_sampling: bool = False
    subword_alpha: float = 0.2
    subword_nbest: int = -1  #: -1 for BPE models (sentencepiece ignores it there)
    concat_ratio: float = 0.0
    concat_pairs: int = 2
    concat_mode: str = "random"

    @classmethod
    def from_recipe(cls, recipe: Any) -> "Augmentation":
        t = recipe.train
        unigram = recipe.tokenizer.model_type == "unigram"
        alpha = t.subword_alpha if t.subword_alpha is not None else DEFAULT_ALPHA[recipe.tokenizer.model_type]
        return cls(seed=t.seed, src_word_dropout=t.src_word_dropout, tgt_word_dropout=t.tgt_word_dropout,
                   word_dropout_mode=t.word_dropout_mode, subword_sampling=t.subword_sampling,
                   subword_alpha=alpha, subword_nbest=t.subword_nbest if unigram else -1,
                   concat_ratio=t.concat_ratio, concat_pairs=t.concat_pairs, concat_mode=t.concat_mode)

    @property
    def active(self) -> bool:
        """Whether any technique is on (off: training reads the encoded corpus as it is)."""
        return bool(self.src_word_dropout or self.tgt_word_dropout or self.subword_sampling
                    or self.concat_ratio)


def concat_plan(n: int, ratio: float, k: int, mode: str, seed: int) -> np.ndarray:
    """The pairs joined into each concatenated example: ``(M, k)`` int64 indices into the ``n``
    training pairs, ``M = round(ratio · n)``.

    ``random``: each of the ``k`` parts drawn uniformly; ``consecutive``: ``k`` pairs that follow
    each other in the corpus, from a uniform start. Drawn from ``seed`` alone.
    """
    m = int(round(ratio * n))
    if m == 0 or n == 0 or (mode == "consecutive" and n < k):
        return np.zeros((0, k), dtype=np.int64)
    rng = np.random.default_rng([seed, _CONCAT])
    if mode == "consecutive":
        return rng.integers(0, n - k + 1, size=m)[:, None] + np.arange(k, dtype=np.int64)
    return rng.integers(0, n, size=(m, k), dtype=np.int64)


def join(parts: Sequence[Sequence[int]]) -> list[int]:
    """Id sequences each ending in EOS, joined into one that ends in a single EOS."""
    out: list[int] = []
    for seq in parts[:-1]:
        out.extend(seq[:-1] if seq and seq[-1] == EOS_ID else seq)
    out.extend(parts[-1])
    return out


def word_dropout(seqs: Sequence[Sequence[int]], p: float, rng: np.random.Generator,
                 drop: bool = False) -> list[list[int]]:
    """Each subword of ``seqs`` replaced by ``UNK_ID`` (``drop``: removed) with probability ``p``.

    Special tokens (ids below ``N_SPECIAL``: PAD, UNK, BOS, EOS) are never touched, so every
    sequence keeps its EOS. One uniform draw per token, in order, from ``rng``.
    """
    lengths = [len(s) for s in seqs]
    flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=sum(lengths))
    hit = (rng.random(flat.size) < p) & (flat >= N_SPECIAL)
    bounds = np.cumsum(lengths)[:-1]
    if drop:
        return [seq[~h].tolist() for seq, h in zip(np.split(flat, bounds), np.split(hit, bounds))]
    return [seq.tolist() for seq in np.split(np.where(hit, UNK_ID, flat), bounds)]


def input_word_dropout(tgt_in: torch.Tensor, p: float, rng: np.random.Generator) -> torch.Tensor:
    """The decoder input ``tgt_in (B, T)`` with each subword (not PAD, BOS or another special
    token) replaced by ``UNK_ID`` with probability ``p``; the loss targets stay as they are."""
    hit = torch.from_numpy(rng.random(tuple(tgt_in.shape)) < p) & (tgt_in >= N_SPECIAL)
    return tgt_in.masked_fill(hit, UNK_ID)


class TrainingExamples:
    """The encoded training split as training batches see it: its ``n`` pairs (indices ``0..n-1``),
    then the concatenated examples (``n..n+M-1``), with subword sampling and word dropout applied
    when a batch is built (:meth:`batch`).

    ``src_lens`` / ``tgt_lens`` (EOS included) are what the batch sampler groups by: the
    deterministic segmentation's lengths (a sampled segmentation is usually a little longer).
    """

    def __init__(self, ds, tokenizers, aug: Augmentation):
        self.aug, self.tokenizers = aug, tokenizers
        # sampling segments the text again: the ids are then not read
        self.columns = ds.select_columns(["src", "tgt"] if aug.subword_sampling else ["src_ids", "tgt_ids"])
        self.n_pairs = len(ds)
        self.parts = concat_plan(self.n_pairs, aug.concat_ratio, aug.concat_pairs, aug.concat_mode, aug.seed)
        src, tgt = lengths_of(ds)
        joins = self.parts.shape[1] - 1
        self.src_lens = np.concatenate([src, src[self.parts].sum(axis=1) - joins])
        self.tgt_lens = np.concatenate([tgt, tgt[self.parts].sum(axis=1) - joins])
        self._seeds: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n_pairs + len(self.parts)

    def _sampling_seeds(self, epoch: int) -> np.ndarray:
        """``(n, 2)``: the seed of each pair's source and target segmentation in ``epoch``."""
        if self._seeds is None or self._seeds[0] != epoch:
            rng = np.random.default_rng([self.aug.seed, epoch, _SAMPLE])
            self._seeds = (epoch, rng.integers(1, 2**31 - 1, size=(self.n_pairs, 2)))
        return self._seeds[1]

    def _pairs(self, wanted: np.ndarray, epoch: int) -> dict[int, tuple[list[int], list[int]]]:
        """Pair index -> ``(src_ids, tgt_ids)`` ending in EOS, sampled in ``epoch`` if sampling is on."""
        unique = np.unique(wanted).tolist()
        rows = self.columns[unique]
        a = self.aug
        if a.subword_sampling:
            seeds = self._sampling_seeds(epoch)[unique]
            encode = self.tokenizers.encode_sampled
            src = [ids + [EOS_ID] for ids in encode("src", rows["src"], seeds[:, 0], a.subword_alpha, a.subword_nbest)]
            tgt = [ids + [EOS_ID] for ids in encode("tgt", rows["tgt"], seeds[:, 1], a.subword_alpha, a.subword_nbest)]
        else:
            src, tgt = rows["src_ids"], rows["tgt_ids"]
        return dict(zip(unique, zip(src, tgt)))

    def examples(self, indices: Sequence[int], epoch: int) -> tuple[list[list[int]], list[list[int]]]:
        """The source and target ids (each ending in EOS) of examples ``indices`` in ``epoch``."""
        idx = np.asarray(indices, dtype=np.int64)
        joined = idx >= self.n_pairs
        pairs = self._pairs(np.concatenate([idx[~joined], self.parts[idx[joined] - self.n_pairs].ravel()]),
                            epoch)
        sources, targets = [], []
        for i in idx.tolist():
            if i < self.n_pairs:
                src, tgt = pairs[i]
            else:
                parts = [pairs[j] for j in self.parts[i - self.n_pairs].tolist()]
                src, tgt = join([p[0] for p in parts]), join([p[1] for p in parts])
            sources.append(src)
            targets.append(tgt)
        return sources, targets

    def batch(self, indices: Sequence[int], epoch: int, position: int, rank: int = 0) -> Batch:
        """The padded batch of examples ``indices``, the ``position``-th batch of ``rank`` in ``epoch``
        (word dropout is drawn from those and the seed)."""
        a = self.aug
        src, tgt = self.examples(indices, epoch)
        rng = np.random.default_rng([a.seed, epoch, rank, position, _DROPOUT])
        if a.src_word_dropout:
            src = word_dropout(src, a.src_word_dropout, rng, drop=a.word_dropout_mode == "drop")
        batch = collate({"src_ids": src, "tgt_ids": tgt})
        if a.tgt_word_dropout:
            batch.tgt_in = input_word_dropout(batch.tgt_in, a.tgt_word_dropout, rng)
        return batch

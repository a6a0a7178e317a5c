"""``train.softmax: batch``: the training loss's softmax over a subset of the target vocabulary.

With a full softmax the output layer is the largest part of a training step: three products of
(tokens × D) by (D × V) per batch, half of the fr-en model's multiply-adds at V = 8,000. A batch of
4,096 target tokens holds ~800 distinct target subwords, one of 1,200 ~370.

The subset of a batch (Jean et al. 2015, "On Using Very Large Target Vocabulary for Neural Machine
Translation"; Bengio and Senécal 2008 for the sampled part):

- always: the batch's targets and the ``frequent`` most frequent target subwords of the training
  split (inclusion probability 1);
- sampled: ``sampled`` ids drawn uniformly without replacement from the R ids not already in, each
  included with probability π = sampled / R. Its logit gets ``+log(1/π)``, so that
  ``Σ_{v ∈ subset} exp(z_v) / π_v`` is an unbiased (Horvitz–Thompson) estimate of the full
  normaliser ``Σ_v exp(z_v)``. Without these, ids outside every batch's targets are never pushed
  down, and the full softmax that validation and search use gives them mass (a 3,000-update fr-en
  model without them lost 6 valid BLEU searching the whole vocabulary, docs/training.md).

The width is then rounded up to a multiple of :data:`WIDTH_MULTIPLE` with more sampled ids, so the
product has few distinct widths (oneDNN compiles a kernel per bf16 shape, docs/performance.md).
The sample of a batch is drawn from (seed, update, micro-batch, process): a resumed run draws what
the uninterrupted one drew. Validation, evaluation and translation use the whole vocabulary.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: the subset's width is rounded up to a multiple of this (with more sampled ids)
WIDTH_MULTIPLE = 64


class BatchVocabulary:
    """The output layer's rows each training batch's softmax runs over, with their logit offsets."""

    def __init__(self, by_frequency: Tensor, frequent: int, sampled: int, seed: int = 0):
        self.by_frequency = by_frequency.long()  # (V,) target ids, most frequent first
        self.frequent, self.sampled, self.seed = frequent, sampled, seed

    @property
    def vocab_size(self) -> int:
        return self.by_frequency.numel()

    @classmethod
    def for_training(cls, train, ds, vocab_size: int) -> "BatchVocabulary | None":
        """The subsets of ``train`` (the recipe's ``train`` section) over the encoded training split
        ``ds``; None for ``train.softmax: full``."""
        if train.softmax != "batch":
            return None
        return cls.from_dataset(ds, vocab_size, train.softmax_frequent, train.softmax_sampled, train.seed)

    @classmethod
    def from_dataset(cls, ds, vocab_size: int, frequent: int, sampled: int, seed: int = 0) -> "BatchVocabulary":
        """Frequencies from the ``tgt_ids`` of an encoded training split (read through Arrow)."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        for table in ds.select_columns(["tgt_ids"]).with_format("arrow").iter(batch_size=200_000):
            ids = table.column("tgt_ids").combine_chunks().flatten().to_numpy()
            counts += np.bincount(ids.astype(np.int64), minlength=vocab_size)[:vocab_size]
        # stable: equally frequent ids keep id order
        return cls(torch.from_numpy(np.argsort(-counts, kind="stable")), frequent, sampled, seed)

    def subset(self, tgt_out: Tensor, tgt_mask: Tensor, draw: tuple[int, ...] = ()) -> tuple[Tensor, Tensor] | None:
        """``(columns (C,), offsets (C,))`` for a batch's ``tgt_out``/``tgt_mask (batch, tgt_len)``:
        sorted target ids and the amount added to each one's logit (0, or ``log(R / n)`` for the n
        ids sampled from R); None when the subset would be the whole vocabulary (then the full
        softmax runs). ``draw``: integers that pick the sample (with the seed)."""
        V = self.vocab_size
        kept = torch.zeros(V, dtype=torch.bool)
        kept[tgt_out[tgt_mask].cpu()] = True
        kept[self.by_frequency[:self.frequent]] = True
        n_kept = int(kept.sum())
        width = -(-(n_kept + self.sampled) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
        if width >= V:
            return None
        rest = (~kept).nonzero().squeeze(1)  # (R,) in id order
        n = width - n_kept
        offsets = torch.zeros(V)
        if n:
            g = torch.Generator().manual_seed(_seed(self.seed, draw))
            sampled = rest[torch.randperm(rest.numel(), generator=g)[:n]]
            offsets[sampled] = math.log(rest.numel() / n)
            kept[sampled] = True
        columns = kept.nonzero().squeeze(1)
        return columns.to(tgt_out.device), offsets[columns].to(tgt_out.device)


def _seed(seed: int, draw: tuple[int, ...]) -> int:
    """One 63-bit seed from the run's seed and the batch's position."""
    return int(np.random.SeedSequence([seed, *draw]).generate_state(1, np.uint64)[0]) % 2**63

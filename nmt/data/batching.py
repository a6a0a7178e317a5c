"""From text pairs to padded tensor batches.

1. :func:`encode_dataset` adds subword ids to a ``src``/``tgt`` dataset (batched ``.map``: Arrow in,
   Arrow out) and applies the subword length filters of ``data.filter`` to training data.
   ``src_ids`` and ``tgt_ids`` both end in ``EOS``; ``src_len``/``tgt_len`` count that EOS. The
   decoder input's ``BOS`` is added by :func:`collate`.
2. :class:`TokenBatchSampler` groups example indices into length-bucketed batches with a token budget,
   shuffled deterministically per (seed, epoch), split evenly across distributed ranks, with an exact
   mid-epoch resume (``state_dict``).
3. :func:`collate` pads a list of examples into a :class:`Batch` (training feeds it the sampler's
   batches of the encoded dataset).
4. :func:`inference_batches` groups sentences to translate by length.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, fields
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from nmt.data.grouping import length_groups
from nmt.data.id_columns import EMPTY, KEEP, RATIO, TOO_LONG, TOO_SHORT, encoded_columns
from nmt.data.vocab import BOS_ID, PAD_ID
from nmt.errors import CheckpointError

logger = logging.getLogger("nmt.data.corpus")

_MAP_BATCH = 10_000

# reasons for dropping a training pair (column ``_drop`` during encoding)
_KEEP, _EMPTY, _TOO_SHORT, _TOO_LONG, _RATIO = KEEP, EMPTY, TOO_SHORT, TOO_LONG, RATIO
_REASONS = {_EMPTY: "an empty side", _TOO_SHORT: "fewer than min_len subwords on a side",
            _TOO_LONG: "more than max_len subwords on a side",
            _RATIO: "a length ratio above max_ratio"}


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def _encode_batch(batch: dict[str, list], tokenizers, max_len: Optional[int],
                  max_ratio: Optional[float], min_len: int, with_drop: bool, kept: Sequence[str] = ()):
    """One batch of ``src``/``tgt`` texts to the encoded columns, as a ``pyarrow.Table``.

    The id columns are built from flat arrays (:mod:`nmt.data.id_columns`), not per sentence;
    ``datasets`` writes a returned table as it is, so the ``kept`` input columns are added here.
    """
    import pyarrow as pa

    src = tokenizers.encode_src(batch["src"])
    tgt = tokenizers.encode_tgt(batch["tgt"])
    drop = {"max_len": max_len, "max_ratio": max_ratio, "min_len": min_len} if with_drop else None
    columns = {c: batch[c] for c in kept}
    columns.update(encoded_columns(src, tgt, drop))
    return pa.table(columns)


def encode_dataset(ds, tokenizers, max_len: Optional[int] = None, max_ratio: Optional[float] = None,
                   min_len: int = 0, num_proc: Optional[int] = None, desc: str = "corpus",
                   keep_text: bool = False, cache_dir: Optional[str] = None):
    """Columns ``src_ids``, ``tgt_ids`` (int32 lists ending in EOS), ``src_len``, ``tgt_len`` (with EOS).

    The text columns ``src``/``tgt`` are dropped unless ``keep_text`` (they would double the
    Arrow file and be read with every batch); the row order is that of ``ds`` minus dropped pairs.

    Filtering (training data): lengths here are subwords *without* EOS. A pair is dropped if a side
    has fewer than ``min_len`` subwords (``min_len=0``, the default, keeps everything, including
    empty sides), more than ``max_len``, or if longer/shorter > ``max_ratio``. Counts of dropped pairs
    per reason are logged on ``nmt.data.corpus``. Without any filter argument nothing is dropped
    (valid/test). The result is cached by ``datasets`` under a fingerprint of the input dataset, the
    tokenizers and the filter settings, so a resumed run reuses it; ``cache_dir`` puts the Arrow
    files there instead (:mod:`nmt.data.encoded_cache` encodes into a scratch directory).
    ``num_proc`` processes encode contiguous shards of ``ds``: the rows and their order, and so the
    result, are the same for any number.
    """
    import datasets

    from nmt.data.corpus import keep_rows, quiet_datasets

    with_drop = max_len is not None or max_ratio is not None or min_len > 0
    features = {"src_ids": datasets.List(datasets.Value("int32")),
                "tgt_ids": datasets.List(datasets.Value("int32")),
                "src_len": datasets.Value("int32"), "tgt_len": datasets.Value("int32")}
    if with_drop:
        features["_drop"] = datasets.Value("int8")
    kept = [c for c in ds.column_names if c not in features and (keep_text or c not in ("src", "tgt"))]
    features = datasets.Features({**{c: ds.features[c] for c in kept}, **features})
    removed = [c for c in ds.column_names if c not in kept]
    # The tokenizer objects do not hash reproducibly, so name the result ourselves: input dataset
    # fingerprint + tokenizer models + settings. Then a resumed run reuses the cached Arrow file.
    parent = getattr(ds, "_fingerprint", None)
    fingerprint = None
    if parent:
        settings = (f"{parent}|{tokenizers.fingerprint}|{max_len}|{max_ratio}|{min_len}|"
                    f"{keep_text}|encode-v1")
        fingerprint = hashlib.sha256(settings.encode()).hexdigest()[:16]
    with quiet_datasets():
        encoded = ds.map(
            _encode_batch, batched=True, batch_size=_MAP_BATCH, writer_batch_size=_MAP_BATCH,
            num_proc=num_proc, remove_columns=removed, features=features,
            desc=f"encoding {desc}", new_fingerprint=fingerprint,
            cache_file_name=None if cache_dir is None else os.path.join(cache_dir, "encoded.arrow"),
            fn_kwargs={"tokenizers": tokenizers, "max_len": max_len, "max_ratio": max_ratio,
                       "min_len": min_len, "with_drop": with_drop, "kept": kept},
        )
        if not with_drop:
            return encoded
        counts = _value_counts(encoded, "_drop")
        dropped = sum(n for reason, n in counts.items() if reason != _KEEP)
        if dropped:
            details = ", ".join(f"{n} with {_REASONS[r]}" for r, n in sorted(counts.items()) if r != _KEEP)
            logger.info("%s: dropped %d of %d pairs (%s; min_len=%s, max_len=%s, max_ratio=%s)",
                        desc, dropped, len(encoded), details, min_len, max_len, max_ratio)
            return keep_rows(encoded, "keep", f"filtering {desc}", drop=["_drop"])
        return encoded.remove_columns("_drop")


def _value_counts(ds, column: str) -> dict[int, int]:
    """Counts of the values of an integer column, streaming over batches."""
    counts: dict[int, int] = {}
    for table in ds.select_columns([column]).with_format("arrow").iter(batch_size=1_000_000):
        values, n = np.unique(table.column(column).to_numpy(), return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[v] = counts.get(v, 0) + c
    return counts


def _int32(values: np.ndarray) -> np.ndarray:
    """``values`` as int32 (lengths and example indices; refused if one does not fit)."""
    if values.size and (int(values.max()) >= 2**31 or int(values.min()) < -2**31):
        raise ValueError("lengths and example counts must be below 2**31")
    return values.astype(np.int32, copy=False)


def int_column(ds, name: str) -> np.ndarray:
    """An integer column of a dataset as a numpy array (through Arrow, not Python objects)."""
    table = ds.select_columns([name]).with_format("arrow")[:]
    return table.column(name).to_numpy().astype(np.int64, copy=False)


def lengths_of(ds) -> tuple[np.ndarray, np.ndarray]:
    """The ``src_len`` and ``tgt_len`` columns of an encoded dataset as numpy arrays."""
    return int_column(ds, "src_len"), int_column(ds, "tgt_len")


def as_int_array(values) -> np.ndarray:
    """Lengths given as a numpy array, a list, a tensor or a ``datasets`` column (``ds["tgt_len"]``).

    ``np.asarray`` on a ``datasets`` Column converts element by element (seconds per 100k rows), so
    columns are read through Arrow instead.
    """
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False)
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy().astype(np.int64, copy=False)
    source, name = getattr(values, "source", None), getattr(values, "column_name", None)
    if name is not None and hasattr(source, "select_columns"):
        return int_column(source, name)
    return np.asarray(values, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Training batches
# --------------------------------------------------------------------------------------------------


class TokenBatchSampler:
    """Length-bucketed batches under a token budget; deterministic, resumable and distributed.

    Batch composition. Examples are sorted by ``(tgt_len // bucket_width, src_len // bucket_width)``;
    ties are broken by a random permutation drawn from ``(seed, epoch)``, so equal-length examples
    are regrouped every epoch. Each run of equal target bucket is cut into as few batches as the
    limits allow, of near-equal size: a batch holds at most ``max_sentences`` sentences and at most
    ``batch_tokens`` *padded* target tokens (sentences × longest target in the batch, EOS included).
    That bounds the real target tokens by ``batch_tokens`` too (with ``bucket_width=1`` the two are
    equal). Source padding is kept small by the secondary sort but not budgeted. A single example
    longer than the budget still forms a batch of one. Batches never mix target buckets, so with
    ``bucket_width=1`` there is no target padding at all. The number of batches does not depend on
    the epoch.

    Order. The batch order is a permutation drawn from ``(seed, epoch)``: same seed and epoch, same
    batches in the same order; a new epoch, a new order. ``shuffle=False``: one fixed order, by
    length, for every epoch.

    Distributed. The epoch's batch list is dealt round-robin to ``num_replicas`` ranks and every rank
    gets the same number of batches (``len(sampler)``). ``remainder="pad"`` (default) repeats the
    first batches of the (shuffled) epoch to fill the last round, so every example is seen at least
    once per epoch; ``remainder="drop"`` drops the last incomplete round (< ``num_replicas``
    batches, different ones each epoch).

    Resume. Iterating yields the current epoch's batches from the current position and then moves
    to the next epoch (so ``for epoch ...: for batch in loader`` just works); :meth:`set_epoch` jumps
    to the start of an epoch. :meth:`state_dict` is ``{"epoch", "position"}`` (+ checks), where
    position counts the batches handed out in this epoch; loading it makes the next iteration yield
    exactly the remaining batches. A ``DataLoader`` with workers pulls batches ahead of training:
    then save ``state_dict(position=batches_trained_this_epoch)``.
    """

    def __init__(self, src_lens: Sequence[int], tgt_lens: Sequence[int], batch_tokens: int,
                 max_sentences: Optional[int] = None, bucket_width: int = 1, shuffle: bool = True,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0, remainder: str = "pad",
                 epoch: int = 0):
        # int32 lengths and example indices: a corpus of tens of millions of pairs keeps its batch
        # plan in half the memory of int64 (the plan is the same: only the integers' width changes)
        self.src_lens = _int32(as_int_array(src_lens))
        self.tgt_lens = _int32(as_int_array(tgt_lens))
        if self.src_lens.shape != self.tgt_lens.shape or self.src_lens.ndim != 1:
            raise ValueError("src_lens and tgt_lens must be 1-D and of equal length")
        if batch_tokens <= 0 or bucket_width <= 0 or (max_sentences is not None and max_sentences <= 0):
            raise ValueError("batch_tokens, bucket_width and max_sentences must be positive")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        if remainder not in ("pad", "drop"):
            raise ValueError("remainder must be 'pad' or 'drop'")
        self.batch_tokens, self.max_sentences = int(batch_tokens), max_sentences
        self.bucket_width, self.shuffle, self.seed = int(bucket_width), shuffle, int(seed)
        self.num_replicas, self.rank, self.remainder = int(num_replicas), int(rank), remainder
        self.epoch, self.position = int(epoch), 0
        self._cache: tuple[int, list[np.ndarray]] | None = None
        self._n_global = 0  # batches per epoch before the split across ranks (epoch-independent)
        self._rank_batches(self.epoch)

    @classmethod
    def from_dataset(cls, ds, **kwargs) -> "TokenBatchSampler":
        """Build from an encoded dataset's ``src_len``/``tgt_len`` columns."""
        src, tgt = lengths_of(ds)
        return cls(src, tgt, **kwargs)

    # ------------------------------------------------------------------------------ composition

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def _global_batches(self, epoch: int) -> list[np.ndarray]:
        """All batches of an epoch (before the split across ranks), in their shuffled order."""
        n = len(self.tgt_lens)
        if n == 0:
            return []
        rng = self._rng(epoch)
        perm = _int32(rng.permutation(n) if self.shuffle else np.arange(n))
        tkey = self.tgt_lens[perm] // self.bucket_width
        skey = self.src_lens[perm] // self.bucket_width
        order = perm[np.lexsort((skey, tkey))]  # lexsort is stable: ties keep the random order
        sorted_tkey = self.tgt_lens[order] // self.bucket_width
        starts = np.flatnonzero(np.diff(sorted_tkey, prepend=-1))
        ends = np.append(starts[1:], n)
        batches: list[np.ndarray] = []
        for start, end in zip(starts.tolist(), ends.tolist()):
            longest = max(int(self.tgt_lens[order[start:end]].max()), 1)
            per_batch = max(1, self.batch_tokens // longest)
            if self.max_sentences is not None:
                per_batch = min(per_batch, self.max_sentences)
            n_chunks = -(-(end - start) // per_batch)
            batches.extend(np.array_split(order[start:end], n_chunks))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _rank_batches(self, epoch: int) -> list[np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self._global_batches(epoch)
        self._n_global = len(batches)
        r = self.num_replicas
        if r > 1:
            missing = -len(batches) % r
            if self.remainder == "pad" and missing and batches:
                batches = batches + [batches[i % len(batches)] for i in range(missing)]
            per_rank = len(batches) // r
            batches = batches[self.rank::r][:per_rank]
        self._cache = (epoch, batches)
        return batches

    def batches(self, epoch: Optional[int] = None) -> list[list[int]]:
        """This rank's batches of an epoch (default: the current one), as lists of indices."""
        return [b.tolist() for b in self._rank_batches(self.epoch if epoch is None else epoch)]

    def __len__(self) -> int:
        n, r = self._n_global, self.num_replicas
        return -(-n // r) if self.remainder == "pad" else n // r

    # ------------------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch.tolist()
        self.epoch += 1
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (like ``DistributedSampler.set_epoch``)."""
        self.epoch, self.position = int(epoch), 0

    def state_dict(self, position: Optional[int] = None) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position if position is None else int(position),
                "seed": self.seed, "num_examples": int(len(self.tgt_lens)),
                "batch_tokens": self.batch_tokens, "num_replicas": self.num_replicas,
                "batches_per_epoch": len(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        current = self.state_dict()
        for key in ("num_examples", "batch_tokens", "num_replicas", "seed"):
            if key in state and state[key] != current[key]:
                raise CheckpointError(
                    f"cannot resume the batch order exactly: the checkpoint's sampler had {key}="
                    f"{state[key]}, now {current[key]} (the corpus, its filters, train.batch_tokens, "
                    "train.seed, train.concat_ratio or the number of processes changed); restore them "
                    "or start a new run")
        if not 0 <= int(state["position"]) <= len(self):
            raise CheckpointError(f"sampler position {state['position']} is outside the epoch "
                                  f"(0..{len(self)} batches)")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # ------------------------------------------------------------------------------ statistics

    def stats(self, epoch: Optional[int] = None) -> dict[str, float]:
        """Padding statistics of this rank's batches of an epoch.

        ``efficiency`` = real tokens / padded tokens over both sides (``src_efficiency`` and
        ``tgt_efficiency`` per side), plus batch counts and mean sizes.
        """
        batches = self._rank_batches(self.epoch if epoch is None else epoch)
        real_s = real_t = pad_s = pad_t = sentences = 0
        for b in batches:
            s, t = self.src_lens[b], self.tgt_lens[b]
            real_s += int(s.sum())
            real_t += int(t.sum())
            pad_s += len(b) * int(s.max())
            pad_t += len(b) * int(t.max())
            sentences += len(b)
        nb = max(len(batches), 1)
        return {"batches": len(batches), "sentences": sentences,
                "mean_sentences": sentences / nb, "mean_tgt_tokens": real_t / nb,
                "src_efficiency": real_s / max(pad_s, 1), "tgt_efficiency": real_t / max(pad_t, 1),
                "efficiency": (real_s + real_t) / max(pad_s + pad_t, 1)}

    def padding_efficiency(self, epoch: Optional[int] = None) -> float:
        """Real tokens / padded tokens (both sides) of an epoch's batches."""
        return self.stats(epoch)["efficiency"]


# --------------------------------------------------------------------------------------------------
# Inference batches
# --------------------------------------------------------------------------------------------------


def inference_batches(lengths: Sequence[int], batch_tokens: int,
                      max_sentences: Optional[int] = None) -> list[list[int]]:
    """Group indices of sentences to translate, longest first, at most ``batch_tokens`` padded tokens
    (:func:`nmt.data.grouping.length_groups`; ``lengths`` may also be a tensor or a dataset column)."""
    return length_groups(as_int_array(lengths).tolist(), batch_tokens, max_sentences)


# --------------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Padded tensors of one batch (batch-first; ``PAD_ID`` = 0 in padded positions).

    ``src``: (B, S) source ids ending in EOS; ``src_lengths``: (B,) int64, kept on the CPU by
    :meth:`to` (``pack_padded_sequence`` wants CPU lengths); ``src_mask``: (B, S) bool, True on
    real tokens. ``tgt_in`` = BOS + target without its final EOS; ``tgt_out`` = target ending in
    EOS; both (B, T) with ``tgt_mask`` (B, T) True on real tokens; ``n_tgt_tokens`` = real target
    tokens incl. EOS (the loss normaliser). Target fields are None for source-only batches.
    """

    src: torch.Tensor
    src_lengths: torch.Tensor
    src_mask: torch.Tensor
    tgt_in: Optional[torch.Tensor] = None
    tgt_out: Optional[torch.Tensor] = None
    tgt_mask: Optional[torch.Tensor] = None
    tgt_lengths: Optional[torch.Tensor] = None
    n_tgt_tokens: int = 0

    def __len__(self) -> int:
        return self.src.size(0)

    @property
    def n_src_tokens(self) -> int:
        return int(self.src_lengths.sum())

    def to(self, device, non_blocking: bool = False) -> "Batch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and f.name not in ("src_lengths", "tgt_lengths"):
                value = value.to(device, non_blocking=non_blocking)
            moved[f.name] = value
        return Batch(**moved)


def _pad(seqs: Sequence[Sequence[int]], prefix: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(s) for s in seqs]
    width = max(lengths, default=0)
    out = np.full((len(seqs), width), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(seqs):
        if prefix is None:
            out[row, : len(seq)] = seq
        elif len(seq):
            out[row, 0] = prefix
            out[row, 1: len(seq)] = seq[:-1]
    return torch.from_numpy(out), torch.tensor(lengths, dtype=torch.int64)


def collate(examples: Sequence[dict[str, Any]] | Mapping[str, Sequence]) -> Batch:
    """Pad examples with ``src_ids``/``tgt_ids`` (each ending in EOS) into a :class:`Batch`.

    ``examples`` is a list of rows (what a DataLoader hands over) or one mapping of columns (what
    ``dataset[indices]`` returns). Without ``tgt_ids`` the target fields stay None.
    """
    if isinstance(examples, Mapping):
        src_seqs, tgt_seqs = examples["src_ids"], examples.get("tgt_ids")
    else:
        src_seqs = [ex["src_ids"] for ex in examples]
        has_tgt = bool(examples) and examples[0].get("tgt_ids") is not None
        tgt_seqs = [ex["tgt_ids"] for ex in examples] if has_tgt else None
    src, src_lengths = _pad(src_seqs)
    batch = Batch(src=src, src_lengths=src_lengths, src_mask=_mask(src_lengths, src.size(1)))
    if tgt_seqs is not None:
        tgt_out, tgt_lengths = _pad(tgt_seqs)
        tgt_in, _ = _pad(tgt_seqs, prefix=BOS_ID)
        batch.tgt_in, batch.tgt_out, batch.tgt_lengths = tgt_in, tgt_out, tgt_lengths
        batch.tgt_mask = _mask(tgt_lengths, tgt_out.size(1))
        batch.n_tgt_tokens = int(tgt_lengths.sum())
    return batch


def _mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)

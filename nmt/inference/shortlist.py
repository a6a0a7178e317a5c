"""Lexical shortlists: decode over the target subwords a batch of sources can plausibly produce.

The output projection is the largest matrix of a decoder step (hidden × vocabulary: 256 × 8000 is
2.0M of the 3.2M multiply-adds per hypothesis and step of the JoeyNMT-sized recipe), and search
reads the (rows, vocabulary) scores two more times (log-normaliser, top-k). A shortlist restricts
all three to the union, over the batch, of

- the ``frequent`` most frequent target subwords of the training corpus,
- for each source subword in the batch, its ``per_source`` most probable translations under
  IBM Model 1 (Brown et al. 1993, §4), trained by EM on the training pairs,
- the special tokens (PAD, UNK, BOS, EOS; PAD and BOS are still never generated),

as Marian's ``--shortlist`` and CTranslate2's vocabulary map do. Search then normalises the
log-probabilities over the shortlist (a token outside it has probability 0), which is what makes the
hypotheses' scores equal to those of the full model with every other output logit set to -inf (the
tests check exactly that). Whether it costs BLEU is measured, not assumed (docs/results.md).

IBM Model 1 with a NULL source word (PAD's id stands for it; it never occurs in a real source):
    p(t | s) ∝ Σ_pairs Σ_{j: t_j = t} Σ_{i: s_i = s} p(t_j | s_i) / Σ_{i'} p(t_j | s_{i'})
(E-step: the posterior of aligning target position j to source position i; M-step: normalise the
expected counts per source word). Only co-occurring (s, t) pairs have a parameter, so memory grows
with the corpus, not with src_vocab × tgt_vocab.

Files: ``lexicon.safetensors`` in the run directory (``nmt shortlist RUN_DIR`` writes it; ``nmt
train`` writes it after training) holds ``top_ids (src_vocab, keep)`` (-1 = no entry),
``top_probs`` and ``by_frequency (tgt_vocab,)``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from nmt.data.vocab import (  # the special ids are always in a shortlist, at columns 0..3
    N_SPECIAL,
    PAD_ID,
)
from nmt.errors import NmtError
from nmt.inference.names import NAMES_FILE, NameTable
from nmt.inference.onnx_shortlist import check_lexicon_sizes

logger = logging.getLogger("nmt.inference.shortlist")

LEXICON_FILE = "lexicon.safetensors"
NULL_ID = PAD_ID  #: PAD's id stands for IBM Model 1's NULL source word

#: one chunk of pairs as flat arrays: (src_values, src_offsets, tgt_values, tgt_offsets)
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ------------------------------------------------------------------------------- IBM Model 1

def _chunk_links(chunk: Chunk, tgt_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (source position incl. NULL, target position) link of a chunk of pairs.

    Returns ``(link (n,), tgt_pos (n,))``: the link as ``s * tgt_vocab + t`` and the index of its
    target position within the chunk (the E-step normalises over the links of one target position).
    """
    src_values, src_offsets, tgt_values, tgt_offsets = chunk
    src_len = np.diff(src_offsets) + 1  # + NULL
    tgt_len = np.diff(tgt_offsets)
    per_pair = src_len * tgt_len
    total = int(per_pair.sum())
    pair = np.repeat(np.arange(len(src_len)), per_pair)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(per_pair) - per_pair, per_pair)
    n_tgt = tgt_len[pair]
    i, j = within // n_tgt, within % n_tgt  # source position (0 = NULL), target position
    src_pos = src_offsets[:-1][pair] + i - 1
    s = np.where(i == 0, NULL_ID, src_values[np.maximum(src_pos, 0)]).astype(np.int64)
    tgt_pos = tgt_offsets[:-1][pair] + j - tgt_offsets[0]
    t = tgt_values[tgt_offsets[0] + tgt_pos].astype(np.int64)
    return s * tgt_vocab + t, tgt_pos


#: EM keeps the links of its pairs between iterations (8 bytes each) up to this many bytes; a
#: sample with more links is linked again at every iteration instead (same result, bounded memory)
KEEP_LINKS_BYTES = 1 << 30
#: links made at once: linking takes about 80 bytes of temporaries per link
PIECE_LINKS = 2_000_000


def _pieces(chunk: Chunk, max_links: int) -> Iterator[tuple[Chunk, int]]:
    """Consecutive pairs of ``chunk`` with at most ``max_links`` links each (a longer pair alone),
    with the offset of each piece's first target position within the chunk."""
    src_values, src_offsets, tgt_values, tgt_offsets = chunk
    per_pair = (np.diff(src_offsets) + 1) * np.diff(tgt_offsets)
    ends = np.cumsum(per_pair)
    a = 0
    while a < len(per_pair):
        before = ends[a - 1] if a else 0
        b = max(a + 1, int(np.searchsorted(ends, before + max_links, side="right")))
        yield ((src_values, src_offsets[a:b + 1], tgt_values, tgt_offsets[a:b + 1]),
               int(tgt_offsets[a] - tgt_offsets[0]))
        a = b


def _links(chunk: Chunk, tgt_vocab: int, piece_links: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_chunk_links` of a chunk, made ``piece_links`` links at a time (equal results)."""
    if len(chunk[1]) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    parts = [(link, (pos + shift).astype(np.int32))
             for piece, shift in _pieces(chunk, piece_links)
             for link, pos in [_chunk_links(piece, tgt_vocab)]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if values.size else values


def _distinct_links(chunk: Chunk, tgt_vocab: int, piece_links: int
                    ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The links of a chunk as ``((distinct links, index of each link among them), tgt_pos)``:
    looking the few distinct links up in the corpus's is much faster than every link."""
    link, pos = _links(chunk, tgt_vocab, piece_links)
    local, inverse = np.unique(link, return_inverse=True)
    return (local, inverse.astype(np.int32)), pos


def _link_count(chunks: list[Chunk]) -> int:
    return sum(int(((np.diff(c[1]) + 1) * np.diff(c[3])).sum()) for c in chunks)


def ibm_model1(chunks: Iterable[Chunk], src_vocab: int, tgt_vocab: int, iterations: int = 5,
               keep_bytes: int = KEEP_LINKS_BYTES, piece_links: int = PIECE_LINKS
               ) -> tuple[np.ndarray, np.ndarray]:
    """Train IBM Model 1 by EM; returns the co-occurring ``links`` (sorted ``s * tgt_vocab + t``)
    and their probabilities ``p(t | s)`` (each source word's probabilities sum to 1).

    ``chunks``: the training pairs in chunks (flat id arrays with offsets, EOS included on both
    sides, as the encoded corpus holds them). Starts from uniform ``p(t | s)``. The links of all
    pairs are kept between iterations when they take at most ``keep_bytes``, else made again per
    chunk at every iteration: memory is then bounded by the largest chunk, and the arithmetic (and
    so the result) is the same.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    chunks = list(chunks)
    keep = _link_count(chunks) * 8 <= keep_bytes
    linked, distinct = [], []
    for chunk in chunks:
        local, pos = _distinct_links(chunk, tgt_vocab, piece_links)
        if local[0].size:
            distinct.append(local[0])
            linked.append((local, pos) if keep else chunk)
    if not distinct:
        raise NmtError("no training pairs to build a lexicon from")
    links = _sorted_unique(np.concatenate(distinct))
    del distinct

    def indexed(item):  # each link becomes an index into `links`; int32 halves the memory
        (local, inverse), pos = item if keep else _distinct_links(item, tgt_vocab, piece_links)
        return np.searchsorted(links, local).astype(np.int32)[inverse], pos

    if keep:
        linked = [indexed(item) for item in linked]
    source_of = links // tgt_vocab
    prob = np.full(links.size, 1.0 / tgt_vocab)
    for _ in range(iterations):
        counts = np.zeros(links.size)
        for item in linked:
            index, tgt_pos = item if keep else indexed(item)
            p = prob[index]
            norm = np.bincount(tgt_pos, weights=p)  # Σ_i p(t_j | s_i) per target position
            counts += np.bincount(index, weights=p / norm[tgt_pos], minlength=links.size)
        totals = np.bincount(source_of, weights=counts, minlength=src_vocab)
        prob = counts / totals[source_of]
    return links, prob


def top_translations(links: np.ndarray, prob: np.ndarray, src_vocab: int, tgt_vocab: int,
                     keep: int) -> tuple[Tensor, Tensor]:
    """The ``keep`` most probable targets of every source id: ``(ids, probs)`` of shape
    ``(src_vocab, keep)``, best first; ``-1`` / ``0.0`` where a source word has fewer."""
    source, target = links // tgt_vocab, links % tgt_vocab
    order = np.lexsort((-prob, source))  # by source, then by falling probability
    source, target, prob = source[order], target[order], prob[order]
    first = np.searchsorted(source, np.arange(src_vocab))
    rank = np.arange(source.size) - first[source]
    kept = rank < keep
    ids = np.full((src_vocab, keep), -1, dtype=np.int32)
    probs = np.zeros((src_vocab, keep), dtype=np.float32)
    ids[source[kept], rank[kept]] = target[kept]
    probs[source[kept], rank[kept]] = prob[kept]
    return torch.from_numpy(ids), torch.from_numpy(probs)


def lexicon_pairs(ds, max_pairs: int | None = None):
    """The pairs of an encoded corpus a lexicon (and the table of names) is built from: all, or
    with ``max_pairs`` an evenly spaced sample of that many (deterministic)."""
    if max_pairs is not None and len(ds) > max_pairs:
        return ds.select(np.linspace(0, len(ds) - 1, max_pairs).astype(np.int64))
    return ds


def dataset_chunks(ds, max_pairs: int | None = None, chunk_pairs: int = 50_000) -> Iterator[Chunk]:
    """Chunks of an encoded corpus (``src_ids``/``tgt_ids`` columns, see ``nmt.data.batching``),
    of :func:`lexicon_pairs` ``(ds, max_pairs)``."""
    ds = lexicon_pairs(ds, max_pairs)
    table_iter = ds.select_columns(["src_ids", "tgt_ids"]).with_format("arrow").iter(batch_size=chunk_pairs)
    for table in table_iter:
        columns = []
        for name in ("src_ids", "tgt_ids"):
            array = table.column(name).combine_chunks()
            offsets = array.offsets.to_numpy().astype(np.int64)
            columns += [array.values.to_numpy(zero_copy_only=False), offsets]
        yield columns[0], columns[1], columns[2], columns[3]


def id_list_chunks(src: Iterable[Iterable[int]], tgt: Iterable[Iterable[int]]) -> list[Chunk]:
    """One chunk from Python id lists (tests, small corpora)."""
    src, tgt = [list(s) for s in src], [list(t) for t in tgt]
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} sources for {len(tgt)} targets")

    def flat(seqs):
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in seqs])
        values = np.array([i for s in seqs for i in s], dtype=np.int64)
        return values, offsets

    return [(*flat(src), *flat(tgt))]


# ---------------------------------------------------------------------------------- lexicon

class Lexicon:
    """The lexical table of a run: best translations per source id and target frequency order."""

    def __init__(self, top_ids: Tensor, top_probs: Tensor, by_frequency: Tensor,
                 metadata: dict[str, str] | None = None):
        self.top_ids = top_ids.long()  # (src_vocab, keep), -1 = none
        self.top_probs = top_probs.float()
        self.by_frequency = by_frequency.long()  # (tgt_vocab,) most frequent first
        self.metadata = dict(metadata or {})

    @property
    def keep(self) -> int:
        return self.top_ids.size(1)

    @property
    def tgt_vocab_size(self) -> int:
        return self.by_frequency.numel()

    @classmethod
    def build(cls, chunks: Iterable[Chunk], src_vocab: int, tgt_vocab: int, iterations: int = 5,
              keep: int = 100) -> "Lexicon":
        chunks = list(chunks)
        start = time.perf_counter()
        links, prob = ibm_model1(chunks, src_vocab, tgt_vocab, iterations)
        top_ids, top_probs = top_translations(links, prob, src_vocab, tgt_vocab, keep)
        counts = np.zeros(tgt_vocab, dtype=np.int64)
        pairs = 0
        for _, src_offsets, tgt_values, tgt_offsets in chunks:
            counts += np.bincount(tgt_values[tgt_offsets[0]: tgt_offsets[-1]].astype(np.int64),
                                  minlength=tgt_vocab)
            pairs += len(src_offsets) - 1
        # stable: equally frequent ids keep id order
        by_frequency = torch.from_numpy(np.argsort(-counts, kind="stable"))
        seconds = time.perf_counter() - start
        meta = {"method": "ibm-model-1", "iterations": str(iterations), "pairs": str(pairs),
                "links": str(links.size), "seconds": f"{seconds:.1f}"}
        return cls(top_ids, top_probs, by_frequency, meta)

    def same_tables(self, other: "Lexicon") -> bool:
        """The same translations, probabilities and frequency order (the metadata may differ)."""
        return all(a.shape == b.shape and torch.equal(a, b) for a, b in (
            (self.top_ids, other.top_ids), (self.top_probs, other.top_probs),
            (self.by_frequency, other.by_frequency)))

    def merged(self, other: "Lexicon") -> "Lexicon":
        """This lexicon's translations of each source id, then ``other``'s that it lacks (up to the
        larger ``keep``); the frequency order alternates between the two, each id at its first
        place. For a continued training: its own data's lexicon with the earlier run's."""
        if other.top_ids.shape[0] != self.top_ids.shape[0] or other.tgt_vocab_size != self.tgt_vocab_size:
            raise NmtError(f"cannot merge lexicons of different vocabularies ({tuple(self.top_ids.shape)} "
                           f"and {tuple(other.top_ids.shape)} source entries)")
        keep = max(self.keep, other.keep)
        ids = torch.full((self.top_ids.shape[0], keep), -1, dtype=torch.long)
        probs = torch.zeros(ids.shape)
        for row, (mine, theirs) in enumerate(zip(torch.cat([self.top_ids, other.top_ids], 1).tolist(),
                                                 torch.cat([self.top_probs, other.top_probs], 1).tolist())):
            seen: dict[int, float] = {}
            for target, prob in zip(mine, theirs):
                if target >= 0 and target not in seen:
                    seen[target] = prob
            chosen = list(seen.items())[:keep]
            if chosen:
                ids[row, :len(chosen)] = torch.tensor([t for t, _ in chosen])
                probs[row, :len(chosen)] = torch.tensor([p for _, p in chosen])
        order = torch.stack([self.by_frequency, other.by_frequency], 1).reshape(-1).tolist()
        by_frequency = torch.tensor(list(dict.fromkeys(order)))
        meta = {**self.metadata, "merged_with": other.metadata.get("pairs", "?") + " pairs"}
        return Lexicon(ids, probs, by_frequency, meta)

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        from nmt.atomic import atomic_path

        tensors = {"top_ids": self.top_ids.int().contiguous(), "top_probs": self.top_probs.contiguous(),
                   "by_frequency": self.by_frequency.int().contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Lexicon":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise NmtError(f"no lexicon at {path}: a shortlist needs one; build it with "
                           f"`nmt shortlist {path.parent}` (or decode without --shortlist)")
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
                metadata = handle.metadata() or {}
            return cls(tensors["top_ids"], tensors["top_probs"], tensors["by_frequency"], metadata)
        except Exception as exc:
            raise NmtError(f"lexicon {path} is corrupt or incomplete ({type(exc).__name__}: {exc}); "
                           f"rebuild it with `nmt shortlist {path.parent}`") from None

    def check_vocabulary(self, path: str | os.PathLike, src_vocab: int, tgt_vocab: int) -> None:
        """This lexicon (read from ``path``) was built for a model of ``src_vocab`` source and
        ``tgt_vocab`` target pieces: a lexicon of another run would index outside the model."""
        check_lexicon_sizes(path, tuple(self.top_ids.shape), self.tgt_vocab_size,
                            int(self.top_ids.max()) if self.top_ids.numel() else -1, src_vocab, tgt_vocab)

    def columns(self, src: Tensor, src_mask: Tensor, per_source: int, frequent: int) -> Tensor:
        """The shortlist of a batch: sorted target ids ``(L,)``, ids 0..3 first (at columns 0..3).

        ``src (batch, src_len)`` with ``src_mask``: padding contributes nothing.
        """
        if per_source > self.keep:
            raise NmtError(f"shortlist of {per_source} translations per source subword, but the "
                           f"lexicon keeps {self.keep}; rebuild it with `nmt shortlist RUN_DIR "
                           f"--keep {per_source}` or use a smaller shortlist")
        table = self.top_ids.to(src.device)
        # the kept columns' rows only, by index_select: a fraction of indexing's cost on the table
        candidates = table[:, :per_source].index_select(0, src[src_mask]).reshape(-1)
        parts = [torch.arange(N_SPECIAL, device=src.device), self.by_frequency[:frequent].to(src.device),
                 candidates[candidates >= 0]]
        return torch.unique(torch.cat(parts))  # sorted: ids 0..3 are columns 0..3


def padded_columns(columns: Tensor, by_frequency: Tensor, count: int) -> Tensor:
    """``columns`` (a batch's sorted shortlist) with the most frequent target ids it lacks added
    up to ``count`` ids (or the whole vocabulary), still sorted. The added ids are in no
    sentence's own shortlist, so every row sets them to -inf: they change no sentence's output, only
    the width of the output layer's product (:func:`nmt.kernels.rows.coarse_count`)."""
    extra = count - columns.numel()
    if extra <= 0:
        return columns
    taken = torch.zeros(by_frequency.numel(), dtype=torch.bool, device=columns.device)
    taken[columns] = True
    order = by_frequency.to(columns.device)
    free = order[~taken[order]][:extra]
    return torch.unique(torch.cat([columns, free]))


def build_for_run(run_dir: str | os.PathLike, iterations: int = 5, keep: int = 100,
                  max_pairs: int | None = 200_000, recipe=None, tokenizers=None, train_ds=None) -> Path:
    """Build and write ``RUN_DIR/lexicon.safetensors`` from the run's training corpus.

    EM keeps every (source position, target position) link of the pairs it uses in memory (8 bytes
    each: about 20M links, 160 MB, for the 163k Tatoeba pairs) up to :data:`KEEP_LINKS_BYTES`, and
    links them again at every iteration beyond; ``max_pairs`` bounds the time for large corpora
    with an evenly spaced sample.

    ``recipe``/``tokenizers``/``train_ds`` (the encoded, filtered training split) may be passed by a
    caller that has them (``nmt train``); otherwise they are loaded from the run directory.
    """
    run_dir = Path(run_dir)
    if train_ds is None:
        from nmt.data.batching import encode_dataset
        from nmt.data.corpus import load_corpus
        from nmt.data.tokenizer import SubwordTokenizers
        from nmt.inference.checkpoint import load_run_recipe

        recipe = recipe or load_run_recipe(run_dir)
        tokenizers = tokenizers or SubwordTokenizers.load(run_dir)
        f = recipe.data.filter
        corpus = load_corpus(recipe.data, splits=("train",))
        train_ds = encode_dataset(corpus["train"], tokenizers, max_len=f.max_len, max_ratio=f.max_ratio,
                                  min_len=f.min_len)
    lexicon = Lexicon.build(dataset_chunks(train_ds, max_pairs), tokenizers.src_vocab_size,
                            tokenizers.tgt_vocab_size, iterations=iterations, keep=keep)
    path = run_dir / LEXICON_FILE
    lexicon.save(path)
    logger.info("lexicon (IBM Model 1, %s iterations, %s pairs, %s s) -> %s", lexicon.metadata["iterations"],
                lexicon.metadata["pairs"], lexicon.metadata["seconds"], path)
    name_table(train_ds, tokenizers, max_pairs).save(run_dir / NAMES_FILE)
    return path


def name_table(train_ds, tokenizers, max_pairs: int | None) -> NameTable:
    """The run's :class:`~nmt.inference.names.NameTable`, from the texts of the pairs the lexicon
    is built from (``max_pairs``: the same evenly spaced sample)."""
    columns = lexicon_pairs(train_ds, max_pairs).select_columns(["src_ids", "tgt_ids"])
    src = tokenizers.decode_src(columns["src_ids"])
    tgt = tokenizers.decode_tgt(columns["tgt_ids"])

    def single_piece(word: str) -> bool:
        return all(len(ids) == 1 for ids in (*tokenizers.encode_src([word]), *tokenizers.encode_tgt([word])))

    table = NameTable.build(zip(src, tgt), single_piece)
    logger.info("names: %d source words, surrogates %s", len(table.known), ", ".join(table.surrogates) or "none")
    return table


def shortlist_output(model, columns: Tensor) -> tuple[Tensor, Tensor]:
    """The output layer's rows for ``columns``: ``(weight (L, D), bias (L,))``.

    Under autocast they are cast once here (per batch), not in every step's GEMM.
    """
    output = model.output
    weight, bias = output.weight, output.bias
    weight = weight.index_select(0, columns)
    bias = bias.index_select(0, columns) if bias is not None else torch.zeros(columns.numel(), device=weight.device)
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        weight, bias = weight.to(dtype), bias.to(dtype)
    return weight, bias


#!/usr/bin/env python
"""Large-corpus demonstration of the data pipeline (not part of the tests).

Generates a synthetic multi-million-pair TSV (``English<TAB>French``-shaped, random words), then runs
``load_corpus`` (one unsplit file -> deterministic split) -> sentencepiece training on a sample ->
``encode_dataset`` with the length filters -> ``TokenBatchSampler`` -> the first DataLoader batch,
printing the time of each stage and the peak resident memory (``resource.getrusage``).

Peak RSS includes file-backed pages of the memory-mapped Arrow files that were touched; those are
page cache, reclaimable, not heap; so the peak of anonymous memory (RssAnon, sampled) is printed too.

    python scripts/bench_data_scale.py --pairs 3000000 --workdir /tmp/nmt-scale
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


class AnonPeak(threading.Thread):
    """Samples RssAnon (heap, not file-backed mmap pages) from /proc/self/status every 0.1 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mb = 0.0

    @staticmethod
    def current_mb() -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def run(self):
        while True:
            self.peak_mb = max(self.peak_mb, self.current_mb())
            time.sleep(0.1)


def generate(path: Path, pairs: int, seed: int = 0, chunk: int = 100_000) -> None:
    """Random sentences over two synthetic vocabularies, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    accents = np.array(list("abcdeéèfghijklmnopqrstuvwxyzàç"))

    def vocab(alphabet, n):
        lens = rng.integers(2, 9, size=n)
        return [("".join(rng.choice(alphabet, size=k))) for k in lens]

    en_words, fr_words = vocab(letters, 20_000), vocab(accents, 25_000)
    # Zipf-like word frequencies, like natural text
    def probs(n):
        p = 1.0 / np.arange(1, n + 1)
        return p / p.sum()

    p_en, p_fr = probs(len(en_words)), probs(len(fr_words))
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, pairs, chunk):
            n = min(chunk, pairs - start)
            en_len = rng.integers(2, 25, size=n)
            fr_len = np.maximum(1, (en_len * rng.uniform(0.9, 1.4, size=n)).astype(int))
            en_ids = rng.choice(len(en_words), size=int(en_len.sum()), p=p_en)
            fr_ids = rng.choice(len(fr_words), size=int(fr_len.sum()), p=p_fr)
            lines, ei, fi = [], 0, 0
            for a, b in zip(en_len.tolist(), fr_len.tolist()):
                en = " ".join(en_words[i] for i in en_ids[ei:ei + a])
                fr = " ".join(fr_words[i] for i in fr_ids[fi:fi + b])
                ei, fi = ei + a, fi + b
                lines.append(f"{en.capitalize()}.\t{fr.capitalize()}.\n")
            f.writelines(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3_000_000)
    ap.add_argument("--workdir", default="/tmp/nmt-bench-scale")
    ap.add_argument("--sample", type=int, default=300_000, help="sentences sampled for sentencepiece")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the generated corpus and caches")
    args = ap.parse_args()

    from nmt.data.batching import TokenBatchSampler, encode_dataset, make_dataloader
    from nmt.config import DataConfig, FilterConfig, TokenizerConfig
    from nmt.data.corpus import load_corpus
    from nmt.data.tokenizer import SubwordTokenizers

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"synthetic-{args.pairs}.tsv"
    if not corpus.is_file():
        t = time.time()
        generate(corpus, args.pairs)
        print(f"generated {args.pairs:,} pairs ({corpus.stat().st_size / 2**20:.0f} MiB) "
              f"in {time.time() - t:.0f} s", flush=True)
    print(f"corpus: {corpus} ({corpus.stat().st_size / 2**20:.0f} MiB); peak RSS before: "
          f"{peak_rss_mb():.0f} MiB", flush=True)

    anon = AnonPeak()
    anon.start()
    t0 = time.time()

    def stage(name: str, since: float) -> float:
        now = time.time()
        print(f"  {name:<36} {now - since:8.1f} s   peak RSS {peak_rss_mb():6.0f} MiB, peak anon "
              f"{anon.peak_mb:6.0f} MiB", flush=True)
        return now

    cache = work / "hf-cache"
    cfg = DataConfig(path=str(corpus), columns={"src": 1, "tgt": 0}, cache_dir=str(cache),
                     filter=FilterConfig(max_len=100, max_ratio=3.0, min_len=1))
    t = time.time()
    splits = load_corpus(cfg)
    t = stage("load_corpus (+ split)", t)
    print("   ", {k: len(v) for k, v in splits.items()}, flush=True)
    tok_cfg = TokenizerConfig(src_vocab_size=args.vocab, tgt_vocab_size=args.vocab,
                              input_sentence_size=args.sample, num_threads=args.threads)
    tok = SubwordTokenizers.train(tok_cfg, splits["train"], work / "run")
    t = stage(f"sentencepiece x2 (sample {args.sample:,})", t)
    enc = encode_dataset(splits["train"], tok, max_len=cfg.filter.max_len,
                         max_ratio=cfg.filter.max_ratio, min_len=cfg.filter.min_len, desc="train")
    t = stage("encode_dataset (train)", t)
    sampler = TokenBatchSampler.from_dataset(enc, batch_tokens=args.batch_tokens, max_sentences=512,
                                             seed=1)
    t = stage("TokenBatchSampler (1 epoch)", t)
    batch = next(iter(make_dataloader(enc, sampler)))
    t = stage("first batch", t)
    total = time.time() - t0
    arrow = sum(f.stat().st_size for f in cache.rglob("*.arrow")) / 2**20
    print(f"time to first batch: {total:.1f} s; peak RSS {peak_rss_mb():.0f} MiB (anonymous "
          f"{anon.peak_mb:.0f} MiB, the rest is page cache of memory-mapped Arrow files); "
          f"{len(enc):,} training pairs, {len(sampler):,} batches/epoch, first batch "
          f"{tuple(batch.tgt_out.shape)}; padding efficiency {sampler.padding_efficiency():.3f}; "
          f"Arrow cache {arrow:.0f} MiB", flush=True)
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / "run", ignore_errors=True)
        os.remove(corpus)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Time the encoding of a training corpus (`encode_dataset`: sentencepiece ids into Arrow) alone.

Generates N pairs like scripts/bench_data_scale.py (recombined Tatoeba pairs), trains the
sentencepiece models once on a sample (cached in the workdir), then encodes the corpus `--rounds`
times with `data.filter`'s default length filters into a fresh directory each time. Prints the
wall and CPU seconds (this process and its encoding processes) of each round and a sha256 of the
encoded Arrow file, so two versions of the code can be compared for speed and for identical bytes:

    python scripts/bench_encode.py --pairs 300000 --num-proc 2 --workdir /tmp/nmt-encode

Put another checkout of `nmt` first on PYTHONPATH to time that one with the same script. This is a
benchmark: a quiet machine gives comparable numbers.
"""
from __future__ import annotations

import argparse
import hashlib
import resource
import shutil
import sys
import time
from pathlib import Path

import datasets

from nmt.config import TokenizerConfig
from nmt.data.batching import encode_dataset
from nmt.data.tokenizer import SubwordTokenizers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_scale import REPO, generate  # noqa: E402


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _corpus(work: Path, pairs: int):
    tsv = work / f"corpus-{pairs}.tsv"
    if not tsv.exists():
        generate(tsv, pairs, REPO / "data" / "tatoeba-fra-eng")
    src, tgt = [], []
    with open(tsv, encoding="utf-8") as f:
        for line in f:
            s, t = line.rstrip("\n").split("\t")
            src.append(s)
            tgt.append(t)
    return datasets.Dataset.from_dict({"src": src, "tgt": tgt})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300_000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/nmt-encode")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()
    ds = _corpus(work, args.pairs)
    models = work / "models"
    if SubwordTokenizers.exists(models):
        tok = SubwordTokenizers.load(models)
    else:
        cfg = TokenizerConfig(src_vocab_size=8000, tgt_vocab_size=8000, input_sentence_size=100_000)
        tok = SubwordTokenizers.train(cfg, ds, models)
    for round_ in range(args.rounds):
        out = work / f"encoded-{round_}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        cpu, wall = _cpu(), time.perf_counter()
        enc = encode_dataset(ds, tok, max_len=100, max_ratio=3.0, min_len=1,
                             num_proc=args.num_proc if args.num_proc > 1 else None, cache_dir=str(out))
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        enc.save_to_disk(str(out / "saved"))
        digest = hashlib.sha256()
        for arrow in sorted((out / "saved").glob("*.arrow")):
            digest.update(arrow.read_bytes())
        print(f"round {round_ + 1}: {args.pairs} pairs, {len(enc)} kept, {args.num_proc} process(es): "
              f"{wall:.1f} s wall, {cpu:.1f} s CPU, sha256 {digest.hexdigest()[:16]}", flush=True)
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Where the time before the first update goes, step by step, and what it would be at 30M pairs.

Runs the data path of `nmt train` one step at a time in one process, on the generated corpus of
scripts/bench_data_scale.py (N recombined Tatoeba pairs, one TSV, valid and test split off), with
empty caches first ("cold") and then again ("warm"):

- reading: the validation pass over the file, the `datasets` CSV reader, cleaning and hash buckets
  (`--num-proc` processes), the split, the training filter, each on its own; then `load_corpus`,
  which does all of them and keeps only the splits on disk, and `load_corpus` again, which maps
  the kept splits;
- sentencepiece: the identity of its training sample, training (cold), the cached models (warm);
- encoding into the encoded cache (`--num-proc` processes) and reading the entry back (warm);
- the shortlist lexicon over `data.lexicon_sample` pairs (cold) and its cache entry (warm).

For each step: seconds and the peak anonymous memory (RssAnon, sampled every 0.1 s). Then each
step extrapolated to `--target` pairs: steps that read every pair are scaled linearly, those over
a bounded sample (sentencepiece, the lexicon) are kept as they are.

    python scripts/bench_data_steps.py --pairs 1000000 --workdir /tmp/nmt-steps

The workdir is deleted afterwards unless --keep. This is a benchmark: a quiet machine gives
comparable numbers.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_data_scale import generate  # noqa: E402


class Peak(threading.Thread):
    """The highest RssAnon of this process while a step runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = 0, True

    def run(self) -> None:
        while self.running:
            with open("/proc/self/status") as f:
                kib = int(f.read().split("RssAnon:")[1].split()[0])
            self.peak = max(self.peak, kib // 1024)
            time.sleep(0.1)


ROWS: list[tuple[str, float, int, bool]] = []


def step(name: str, linear: bool, fn):
    peak = Peak()
    peak.start()
    started = time.time()
    out = fn()
    seconds = time.time() - started
    peak.running = False
    peak.join()
    ROWS.append((name, seconds, peak.peak, linear))
    print(f"{name:<52} {seconds:8.1f} s  {peak.peak:6d} MiB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--target", type=int, default=30_000_000, help="pairs to extrapolate to")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nmt-bench-steps"))
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "fr-en.yaml"))
    ap.add_argument("--num-proc", type=int, default=2, help="cleaning and encoding processes")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    os.environ["NMT_CACHE_DIR"] = str(work / "nmt-cache")
    corpus = work / f"synthetic-{args.pairs}.tsv"
    if not corpus.is_file():
        generate(corpus, args.pairs, REPO / "data" / "tatoeba-fra-eng")
    for cache in (work / "nmt-cache", work / "hf", work / "runs"):
        shutil.rmtree(cache, ignore_errors=True)
    logging.basicConfig(level=logging.WARNING)
    try:
        run(args, corpus, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    scale = args.target / args.pairs
    print(f"\nextrapolated to {args.target:,} pairs (linear steps x{scale:g}, sampled steps as measured):")
    for name, seconds, _, linear in ROWS:
        print(f"  {name:<52} {seconds * (scale if linear else 1):8.0f} s{'' if linear else '  (bounded)'}")


def run(args, corpus: Path, work: Path) -> None:
    from nmt.config import load_recipe
    from nmt.data import corpus as C
    from nmt.data.encoded_cache import encode_split, file_entry_key, load_files
    from nmt.data.tokenizer import SubwordTokenizers, training_identity
    from nmt.inference.shortlist import LEXICON_FILE, build_for_run
    from nmt.training.inputs import lexicon_identity

    recipe = load_recipe(args.recipe, [f"data.path={corpus}", f"data.cache_dir={work / 'hf'}",
                                       "data.split_permille.valid=1", "data.split_permille.test=1",
                                       f"data.num_proc={args.num_proc}"])
    cfg = recipe.data
    with C.quiet_datasets():
        step("read: validation pass (check_tsv)", True, lambda: C.check_tsv(corpus, [0, 1]))
        raw = step("read: datasets CSV reader", True, lambda: C._read_tsv(str(corpus), ["c0", "c1"], cfg.cache_dir))
        cleaned = step(f"read: cleaning, hash buckets, {args.num_proc} processes", True,
                       lambda: C._clean(raw, C._specs(cfg, "index"), cfg, True, "corpus",
                                        num_proc=args.num_proc))
        parts = step("read: split", True, lambda: C.split_deterministically(cleaned, cfg.split_permille,
                                                                            ("train", "valid")))
        step("read: training filter", True, lambda: C.filter_train(parts["train"], cfg, "corpus"))
    step("read: load_corpus (all of the above, its splits kept)", True,
         lambda: C.load_corpus(cfg, ("train", "valid")))
    data = step("read: load_corpus again (the kept splits)", True, lambda: C.load_corpus(cfg, ("train", "valid")))
    train = data["train"]
    tok_cfg = recipe.tokenizer
    step(f"sentencepiece: sample identity ({tok_cfg.input_sentence_size} pairs)", False,
         lambda: training_identity(tok_cfg, train))
    tok = step("sentencepiece: training (cold)", False,
               lambda: SubwordTokenizers.load_or_train(tok_cfg, train, work / "runs" / "cold"))
    step("sentencepiece: from the cache (warm, incl. identity)", False,
         lambda: SubwordTokenizers.load_or_train(tok_cfg, train, work / "runs" / "warm"))
    encoded = step(f"encoding: train + valid, {args.num_proc} processes (cold)", True,
                   lambda: [encode_split(data[s], tok, cfg, s, filtered=s == "train") for s in ("train", "valid")])
    step("encoding: read from the encoded cache (warm)", True,
         lambda: [encode_split(data[s], tok, cfg, s, filtered=s == "train") for s in ("train", "valid")])
    step(f"lexicon: IBM Model 1 over {cfg.lexicon_sample} pairs (cold)", False,
         lambda: build_for_run(work / "runs" / "cold", recipe=recipe, tokenizers=tok, train_ds=encoded[0],
                               max_pairs=cfg.lexicon_sample))
    key = file_entry_key("lexicon", lexicon_identity(recipe, tok, train))
    from nmt.data.encoded_cache import store_files

    store_files(key, {LEXICON_FILE: (work / "runs" / "cold" / LEXICON_FILE).read_bytes()}, len(encoded[0]))
    step("lexicon: from the cache (warm, incl. identity)", False,
         lambda: load_files(file_entry_key("lexicon", lexicon_identity(recipe, tok, train)), [LEXICON_FILE]))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Time reading a TSV corpus into its splits (`load_corpus`: CSV to Arrow, cleaning, split) alone.

Generates N pairs like scripts/bench_data_scale.py (one TSV, valid and test split off), then runs
`load_corpus` with an empty `datasets` cache (cold) and once more (warm). Prints the wall and CPU
seconds (this process and its cleaning processes), what the cache folder holds afterwards, and a
sha256 of the pairs, so two versions of the code can be compared for speed, disk and identical
pairs:

    python scripts/bench_read.py --pairs 1000000 --workdir /tmp/nmt-read

Put another checkout of `nmt` first on PYTHONPATH to time that one with the same script. This is a
benchmark: a quiet machine gives comparable numbers.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from nmt.config import load_recipe
from nmt.data.corpus import check_tsv, load_corpus

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_data_scale import generate  # noqa: E402  (after nmt: it puts this checkout first)


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _digest(data: dict) -> str:
    h = hashlib.sha256()
    for split, ds in data.items():
        for table in ds.with_format("arrow").iter(100_000):
            h.update(repr((split, table["src"].to_pylist(), table["tgt"].to_pylist())).encode())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nmt-bench-read"))
    ap.add_argument("--num-proc", type=int, default=None, help="data.num_proc (default: null)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tsv = args.workdir / f"synthetic-{args.pairs}.tsv"
    if not tsv.is_file():
        generate(tsv, args.pairs, REPO / "data" / "tatoeba-fra-eng")
    hf = args.workdir / "hf"
    shutil.rmtree(hf, ignore_errors=True)
    os.environ["NMT_CACHE_DIR"] = str(args.workdir / "nmt-cache")
    shutil.rmtree(args.workdir / "nmt-cache", ignore_errors=True)

    recipe = load_recipe(str(REPO / "recipes" / "fr-en.yaml"), [
        f"data.path={tsv}", f"data.cache_dir={hf}", "data.split_permille.valid=1",
        "data.split_permille.test=1", f"data.num_proc={args.num_proc or 'null'}"])
    check_tsv(tsv, [0, 1])  # the validation pass, also remembered by nmt train: not timed
    for label in ("cold", "warm"):
        wall, cpu = time.time(), _cpu()
        data = load_corpus(recipe.data, ("train", "valid"))
        print(f"{label}: {time.time() - wall:.1f} s wall, {_cpu() - cpu:.1f} s CPU", flush=True)
    print("pairs:", {s: len(ds) for s, ds in data.items()}, "sha256:", _digest(data))
    files = [p for p in hf.rglob("*") if p.is_file() and p.stat().st_size > 1 << 20]
    for path in sorted(files):
        print(f"  {path.stat().st_size / 1e6:9.1f} MB  {path.relative_to(hf)}")
    print(f"cache: {sum(p.stat().st_size for p in files) / 1e6:.1f} MB for a "
          f"{tsv.stat().st_size / 1e6:.1f} MB TSV")


if __name__ == "__main__":
    main()

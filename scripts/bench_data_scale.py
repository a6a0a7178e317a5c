#!/usr/bin/env python
"""How `nmt train` scales with the corpus: a generated corpus of N pairs, 1 and 2 processes.

The corpus. Each generated pair joins 1 to 3 pairs of the shipped Tatoeba training split
(data/tatoeba-fra-eng), drawn with a seeded RNG, side by side: English sentences joined with a
space, their French translations in the same order. The sentences are real and so is the
vocabulary; the pairs are longer and more varied than Tatoeba's. The TSV (English<TAB>French) is
written 100,000 lines at a time, so generating 30M pairs needs no more memory than 300k; the script
prints its size on disk (27 MiB for 200k pairs, about 140 bytes per pair: about 4 GiB for 30M).
One file: `nmt train` splits valid and test off deterministically (here 1/1000 each).

What is measured, for each number of processes (`--processes`, default 1 and 2), with the recipe
(default recipes/fr-en.yaml) trained for `--steps` updates:

- cold: empty caches (the `datasets` cache of `data.cache_dir` and the encoded cache of
  `$NMT_CACHE_DIR`), a new run directory: loading, sentencepiece, encoding, lexicon, first update;
- warm: the same again in another new run directory, caches kept (the sentencepiece models, the
  encoded splits and the lexicon come from the cache; the report says whether encoding was skipped);
- for both: seconds from the launch to the first update (the first `train` record of
  metrics.jsonl, logged at every update), the peak anonymous memory (RssAnon of /proc/PID/status,
  sampled every 0.2 s: heap, not the page cache of memory-mapped Arrow files) of each training
  process, over the run and before its first update (the data path: corpus, sentencepiece,
  encoding, lexicon, batch plan), with the time of the peak (compare it with the run's log), and
  of the encoding processes they start (forked: pages they share with their parent count in
  both); the encoded cache's size on disk; the training tokens/s after `--warmup-steps` updates;
- the same tokens/s on the first `--small-pairs` pairs of the corpus, for comparison.

    python scripts/bench_data_scale.py --pairs 200000 --workdir /tmp/nmt-scale   # a check (minutes)
    python scripts/bench_data_scale.py --workdir /data/nmt-scale                 # 30M pairs

The workdir holds the corpus, the caches and the run directories; it is deleted afterwards unless
`--keep`. This is a benchmark: run it on a machine with nothing else to do.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------------------------- corpus


def tatoeba_pairs(directory: Path) -> tuple[list[str], list[str]]:
    """English and French sentences of the shipped training split."""
    from nmt.data.corpus import existing_variant, open_maybe_compressed

    en, fr = [], []
    with open_maybe_compressed(existing_variant(directory / "train.tsv.xz")) as f:
        for raw in f:
            cols = raw.decode("utf-8").rstrip("\n").split("\t")
            if len(cols) >= 2 and cols[0] and cols[1]:
                en.append(cols[0])
                fr.append(cols[1])
    return en, fr


def generate(path: Path, pairs: int, tatoeba: Path, seed: int = 0, chunk: int = 100_000) -> None:
    """``pairs`` lines ``English<TAB>French``, each 1-3 Tatoeba pairs side by side (streamed)."""
    en, fr = tatoeba_pairs(tatoeba)
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as out:
        for start in range(0, pairs, chunk):
            n = min(chunk, pairs - start)
            parts = rng.integers(1, 4, size=n)
            picks = rng.integers(0, len(en), size=int(parts.sum())).tolist()
            lines, at = [], 0
            for k in parts.tolist():
                chosen = picks[at:at + k]
                at += k
                lines.append(" ".join(en[i] for i in chosen) + "\t" + " ".join(fr[i] for i in chosen) + "\n")
            out.writelines(lines)
    tmp.rename(path)


def head(src: Path, dst: Path, lines: int) -> None:
    with open(src, "rb") as f, open(dst, "wb") as out:
        for i, line in enumerate(f):
            if i >= lines:
                break
            out.write(line)


# ------------------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss_anon_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """Peak RssAnon of the training processes and of their children (encoding workers); the time
    of the first update (the first ``train`` record in ``metrics``)."""

    def __init__(self, launcher: subprocess.Popen, processes: int, metrics: Path):
        super().__init__(daemon=True)
        self.launcher, self.processes, self.metrics = launcher, processes, metrics
        self.started = time.time()
        self.first_update: float | None = None
        self.trainers: dict[int, float] = {}
        self.before_first_update: dict[int, float] = {}  # the data path's share: before training
        self.helpers = 0.0
        self.peak_at = ""

    def _sample(self) -> None:
        tree = _children()
        root = self.launcher.pid
        trainers = [root] if self.processes == 1 else tree.get(root, [])
        for pid in trainers:
            anon = _rss_anon_mib(pid)
            if anon > max(self.trainers.values(), default=0.0):  # when: which step it was (the log)
                self.peak_at = time.strftime("%H:%M:%S")
            self.trainers[pid] = max(self.trainers.get(pid, 0.0), anon)
            if self.first_update is None:
                self.before_first_update[pid] = max(self.before_first_update.get(pid, 0.0), anon)
            for child in tree.get(pid, []):
                self.helpers = max(self.helpers, _rss_anon_mib(child))

    def _check_first_update(self) -> None:
        if self.first_update is None and self.metrics.is_file():
            if '"kind": "train"' in self.metrics.read_text():
                self.first_update = time.time() - self.started

    def run(self) -> None:
        while self.launcher.poll() is None:
            self._sample()
            self._check_first_update()
            time.sleep(0.2)
        self._check_first_update()


# ------------------------------------------------------------------------------------- runs


def train(args, corpus: Path, run_dir: Path, processes: int, hf_cache: Path) -> dict:
    """One ``nmt train`` (or torchrun of it); its timings, memory and throughput."""
    command = [sys.executable, "-m", "nmt", "train"]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), "-m", "nmt", "train"]
    overrides = [f"data.path={corpus}", f"data.cache_dir={hf_cache}",
                 "data.split_permille.valid=1", "data.split_permille.test=1",
                 "train.budget_minutes=null", f"train.max_steps={args.steps}", "train.log_every=1",
                 "train.valid_every=100000", "train.valid_max_sentences=100", "train.num_threads=1",
                 *args.set]
    command += [args.recipe, "--run-dir", str(run_dir)] + [x for o in overrides for x in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NMT_CACHE_DIR": str(args.nmt_cache), "NMT_NO_PROGRESS": "1"}
    log = run_dir.with_suffix(".log")
    shutil.rmtree(run_dir, ignore_errors=True)  # a run kept (--keep) by an earlier measurement
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = Sampler(launcher, processes, run_dir / "metrics.jsonl")
        sampler.start()
        code = launcher.wait()
        sampler.join()
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}); see {log}")
    return {"first_update_s": sampler.first_update, "peak_anon_mib": sorted(sampler.trainers.values()),
            "peak_anon_before_first_update_mib": sorted(sampler.before_first_update.values()),
            "peak_anon_at": sampler.peak_at,
            "encoder_workers_peak_anon_mib": sampler.helpers, "tokens_per_s": tokens_per_s(run_dir, args.warmup_steps),
            # with 2 processes the second reads what rank 0 encoded: skipped only if nobody encoded
            "encoding_skipped": "encoding skipped" in log.read_text() and "pairs encoded (" not in log.read_text(),
            "encoded_cache_mib": du(args.nmt_cache / "encoded"), "datasets_cache_mib": du(hf_cache)}


def tokens_per_s(run_dir: Path, warmup: int) -> float:
    tokens = seconds = 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train" and record["step"] > warmup:
            tokens += record["tokens"]
            seconds += record["seconds"]
    return tokens / seconds if seconds else float("nan")


def du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def summary(results: dict) -> None:
    print(f"{'run':<26} {'first update s':>14} {'peak anon MiB/process':>22} {'before 1st update':>18} "
          f"{'encoders MiB':>12} {'encoded cache MiB':>17} {'skipped':>7} {'tokens/s':>9}")
    for name, r in results.items():
        peaks = ", ".join(f"{m:.0f}" for m in r["peak_anon_mib"])
        data = ", ".join(f"{m:.0f}" for m in r["peak_anon_before_first_update_mib"])
        first = "n/a" if r["first_update_s"] is None else f"{r['first_update_s']:.1f}"
        print(f"{name:<26} {first:>14} {peaks:>22} {data:>18} {r['encoder_workers_peak_anon_mib']:>12.0f} "
              f"{r['encoded_cache_mib']:>17.1f} {str(r['encoding_skipped']):>7} {r['tokens_per_s']:>9.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=30_000_000)
    ap.add_argument("--small-pairs", type=int, default=100_000, help="the small corpus of the comparison")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nmt-bench-scale"))
    ap.add_argument("--tatoeba", type=Path, default=REPO / "data" / "tatoeba-fra-eng")
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "fr-en.yaml"))
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup-steps", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more recipe overrides")
    ap.add_argument("--keep", action="store_true", help="keep the corpus, caches and runs")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    args.nmt_cache = work / "nmt-cache"
    corpus, small = work / f"synthetic-{args.pairs}.tsv", work / f"synthetic-{args.small_pairs}.tsv"
    if not corpus.is_file():
        started = time.time()
        generate(corpus, args.pairs, args.tatoeba)
        print(f"generated {args.pairs:,} pairs in {time.time() - started:.0f} s", flush=True)
    head(corpus, small, args.small_pairs)
    print(f"corpus {corpus}: {corpus.stat().st_size / 2**20:,.0f} MiB; small corpus {args.small_pairs:,} pairs",
          flush=True)
    results = {}
    for processes in [int(p) for p in args.processes.split(",")]:
        hf_cache = work / "hf-cache"
        for cache in (args.nmt_cache, hf_cache):
            shutil.rmtree(cache, ignore_errors=True)
        for name, path in (("cold", corpus), ("warm", corpus), ("small", small)):
            result = train(args, path, work / "runs" / f"{name}-{processes}p", processes, hf_cache)
            results[f"{name}, {processes} process(es)"] = result
            print(f"{name}, {processes} process(es): {json.dumps(result)}", flush=True)
    summary(results)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`nmt bench`: measured speed, never guessed.

- ``bench train RECIPE``: trains ``--warmup + --steps`` updates in a scratch run directory and
  reports target tokens/s (real target tokens incl. EOS, no padding, validation excluded — counted
  as JoeyNMT counts them) over the steps after the warm-up, plus peak resident memory.
- ``bench translate RUN_DIR``: decodes a split of the run's corpus, timing search and
  detokenization only (as the JoeyNMT reference does), and reports sentences/s, target tokens/s
  and the BLEU/chrF of what was decoded, so no speed is quoted without its quality.
"""
from __future__ import annotations

import json
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import NmtError


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _machine() -> dict[str, Any]:
    import os

    import torch
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability()}


def bench_train(recipe_path: str, overrides: list[str], steps: int, warmup: int) -> dict[str, Any]:
    from .config import load_recipe
    from .training import train

    if steps <= 0 or warmup < 0:
        raise NmtError("--steps must be > 0 and --warmup >= 0")
    total = steps + warmup
    recipe = load_recipe(recipe_path, list(overrides) + [
        f"train.max_steps={total}", "train.log_every=1", f"train.valid_every={10 * total + 1}",
        "train.valid_max_sentences=16", "train.plot_sentences=0", "train.budget_minutes=null",
        "train.max_epochs=null", "train.patience=null"])
    with tempfile.TemporaryDirectory(prefix="nmt-bench-") as tmp:
        start = time.perf_counter()
        summary = train(recipe, run_dir=Path(tmp) / "run")
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r.get("kind") == "train" and r["step"] > warmup]
    tokens = sum(r["tokens"] for r in timed)
    seconds = sum(r["seconds"] for r in timed)
    return {
        "what": "train", "recipe": recipe_path, "overrides": overrides, "precision": recipe.train.precision,
        "steps_timed": len(timed), "warmup_steps": warmup, "target_tokens": tokens,
        "seconds": round(seconds, 3), "target_tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "steps_per_s": round(len(timed) / seconds, 3) if seconds else None,
        "peak_rss_mib": round(peak_rss_mib(), 1), "command_wall_seconds": round(wall, 1),
        "machine": _machine(), "train_summary": summary,
    }


def bench_translate(run_dir: str, beam: int, split: str, batch_tokens: int | None,
                    batch_sentences: int | None, checkpoint: str, quantize: bool,
                    precision: str = "float32") -> dict[str, Any]:
    from .data import load_corpus
    from .evaluation import score_corpus
    from .translate import Translator, decode_split_timed

    load_start = time.perf_counter()
    translator = Translator.load(run_dir, checkpoint=checkpoint, quantize=quantize, precision=precision)
    load_seconds = time.perf_counter() - load_start
    corpus = load_corpus(translator.recipe.data, splits=(split,))[split]
    sources, references = list(corpus["src"]), list(corpus["tgt"])
    decode_split_timed(translator, sources[:32], beam, batch_tokens, batch_sentences)  # warm-up
    hyps, seconds, n_tokens = decode_split_timed(translator, sources, beam, batch_tokens, batch_sentences)
    scores = score_corpus(hyps, [references], metrics=("bleu", "chrf"),
                          bleu_tokenize=translator.recipe.eval.bleu_tokenize)
    return {
        "what": "translate", "run_dir": str(run_dir), "checkpoint": checkpoint, "split": split,
        "beam": beam, "batch_tokens": batch_tokens, "batch_sentences": batch_sentences,
        "quantize": quantize, "precision": precision, "sentences": len(sources), "seconds": round(seconds, 3),
        "sentences_per_s": round(len(sources) / seconds, 1),
        "target_tokens_per_s": round(n_tokens / seconds, 1), "target_tokens_incl_eos": n_tokens,
        "bleu": round(scores["bleu"]["score"], 2), "chrf": round(scores["chrf"]["score"], 2),
        "bleu_signature": scores["bleu"]["signature"], "load_seconds": round(load_seconds, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1), "machine": _machine(),
    }


def bench_cli(args) -> int:
    if args.what == "train":
        result = bench_train(args.recipe, args.overrides, args.steps, args.warmup)
        line = (f"train {args.recipe}: {result['target_tokens_per_s']:,} target tokens/s "
                f"({result['steps_per_s']} steps/s over {result['steps_timed']} steps after "
                f"{result['warmup_steps']} warm-up; precision {result['precision']}), "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB")
    else:
        beam = 1 if args.greedy else args.beam
        result = bench_translate(args.run_dir, beam, args.split, args.batch_tokens, args.batch_sentences,
                                 args.checkpoint, args.quantize, args.precision)
        line = (f"translate {args.run_dir} [{args.split}, beam {beam}, {args.precision}]: {result['sentences_per_s']:,} "
                f"sentences/s, {result['target_tokens_per_s']:,} target tokens/s "
                f"({result['sentences']} sentences in {result['seconds']} s); BLEU {result['bleu']} "
                f"chrF {result['chrf']}; peak RSS {result['peak_rss_mib']:.0f} MiB")
    print(json.dumps(result, indent=2) if args.json else line)
    return 0

#!/usr/bin/env python3
"""Valid BLEU over training wall time: an nmt run beside JoeyNMT 2.3.0's 60-minute run.

    python scripts/plot_vs_joeynmt.py RUN_DIR OUT.png

JoeyNMT's figures are those its RESULTS.md lists (in the JoeyNMT peer directory, 60-minute
run of config-sent64.yaml on this machine: greedy dev BLEU every 1,000 updates, 9,037 updates in
60 minutes, so about 0.398 s per update including its validations). nmt's come from RUN_DIR's
metrics.jsonl (greedy BLEU on the recipe's validation sentences, at the loop time it was taken).
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

JOEY_STEPS = [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000]
JOEY_BLEU = [3.1, 19.9, 30.4, 35.7, 38.3, 40.3, 42.4, 44.7, 43.9]
JOEY_SECONDS_PER_STEP = 3600 / 9037


def main(run_dir: str, out: str) -> None:
    records = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines() if line.strip()]
    valid = [r for r in records if r.get("kind") == "valid"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([s * JOEY_SECONDS_PER_STEP / 60 for s in JOEY_STEPS], JOEY_BLEU, "o-", color="0.5",
            label="JoeyNMT 2.3.0, its RESULTS.md (dev, greedy, all 2,020 sentences)")
    ax.plot([r["time"] / 60 for r in valid], [r["bleu"] for r in valid], "o-", color="tab:blue",
            label=f"nmt {Path(run_dir).name} (valid, greedy, {valid[0]['sentences'] if valid else '?'} sentences)")
    ax.set_xlabel("training wall time (minutes, validation included)")
    ax.set_ylabel("BLEU")
    ax.set_title("Tatoeba fr→en, GRU + Bahdanau attention, 2-core CPUs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

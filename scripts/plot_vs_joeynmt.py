#!/usr/bin/env python3
"""Valid BLEU over training wall time: an nmt run beside JoeyNMT 2.3.0's 60-minute run.

    python scripts/plot_vs_joeynmt.py RUN_DIR [RUN_DIR ...] OUT.png

Several runs (e.g. a 10-minute and a 30-minute one) give one curve each.

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


def main(run_dirs: list[str], out: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([s * JOEY_SECONDS_PER_STEP / 60 for s in JOEY_STEPS], JOEY_BLEU, "o-", color="0.5",
            label="JoeyNMT 2.3.0, its RESULTS.md (dev, greedy, all 2,020 sentences)")
    for run_dir in run_dirs:
        lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
        valid = [r for r in map(json.loads, filter(str.strip, lines)) if r.get("kind") == "valid"]
        sentences = valid[0].get("sentences", "?") if valid else "?"
        ax.plot([r["time"] / 60 for r in valid], [r["bleu"] for r in valid], "o-",
                label=f"nmt {Path(run_dir).name} (valid, greedy, {sentences} sentences)")
    ax.set_xlabel("training wall time (minutes, validation included)")
    ax.set_ylabel("BLEU")
    ax.set_title("Tatoeba fr→en, GRU + Bahdanau attention, 2-core CPUs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: plot_vs_joeynmt.py RUN_DIR [RUN_DIR ...] OUT.png")
    main(sys.argv[1:-1], sys.argv[-1])

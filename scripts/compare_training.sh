#!/usr/bin/env bash
# Training speed of nmt and JoeyNMT 2.3.0, measured in alternating rounds.
#
#   scripts/compare_training.sh [ROUNDS] [OUT_JSON]
#
# The machine's speed drifts by tens of percent over minutes (shared host), so one JoeyNMT run
# followed by nmt turns the drift into noise in the ratio. Every round here trains JoeyNMT's
# 64-sentence configuration for TRAIN_SEC seconds (its target tokens/s from its own log, validation
# excluded) and then runs `nmt bench train recipes/bench-joeynmt.yaml` (the same architecture and
# sizes, 4,096-token batches) once per word of RUNS. Each nmt figure is divided by the JoeyNMT run
# of its own round; the table gives every round, and the best and median ratios.
# Env: JOEY_VENV, PEERS, DATA_DIR as for scripts/compare_joeynmt.sh; TRAIN_SEC (default 150),
# STEPS (timed nmt steps, default 80), RUNS (default "auto,train.softmax=auto no": the choices
# recipes/fr-en.yaml makes on this host, then float32 with the full softmax). A word of RUNS is a
# train.precision value, optionally followed by comma-separated recipe overrides:
# RUNS="auto auto,train.softmax=batch" times the host's own precision with the full softmax and
# with the softmax over part of the vocabulary.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${1:-2}"
OUT_JSON="${2:-compare-training.json}"
PEERS="$(cd "${PEERS:?set PEERS to the JoeyNMT peer directory (setup.sh, prep_data.py, config-sent64.yaml)}" && pwd)"
TRAIN_SEC="${TRAIN_SEC:-150}"
STEPS="${STEPS:-80}"
RUNS="${RUNS:-auto,train.softmax=auto no}"
. "$HERE/scripts/joeynmt_peer.sh"
export NMT_TATOEBA_DIR="$DATA_DIR" NMT_NO_PROGRESS=1

( . "$JOEY_VENV/bin/activate"
  mkdir -p "$WORK/joey-data" && cd "$WORK/joey-data"
  python "$PEERS/prep_data.py" "$DATA_DIR" . 8000 > prep.log 2>&1 )

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS: JoeyNMT ${TRAIN_SEC}s, then nmt ($RUNS)" >&2
  ( . "$JOEY_VENV/bin/activate"
    cp -r "$WORK/joey-data" "$WORK/joey.r$round" && cd "$WORK/joey.r$round"
    cp "$PEERS/config-sent64.yaml" config.yaml
    timeout -s INT -k 60 "$TRAIN_SEC" python -m joeynmt train config.yaml --skip-test > train.stdout 2>&1 || true
    python "$PEERS/train_summary.py" . > summary.json )
  for run in $RUNS; do
    IFS=, read -r precision overrides <<< "$run"
    sets=(--set train.precision="$precision")
    for override in ${overrides//,/ }; do sets+=(--set "$override"); done
    "$NMT" bench train "$HERE/recipes/bench-joeynmt.yaml" --steps "$STEPS" --flops "${sets[@]}" --json \
        2> "$WORK/nmt-$run.r$round.log" > "$WORK/nmt-$run.r$round.json"
  done
done

python3 - "$WORK" "$OUT_JSON" "$ROUNDS" "$RUNS" <<'PY'
import json, statistics, sys
from pathlib import Path
work, out, rounds, names = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
joey = [json.loads((work / f"joey.r{r}" / "summary.json").read_text())["trg_tok_per_s_train_only"]
        for r in range(1, rounds + 1)]
table = {"joeynmt": {"target_tokens_per_s": joey}}
width = max([24] + [len(name) + 5 for name in names])
print(f"{'target tokens/s':{width}} " + " ".join(f"{'round ' + str(r):>16}" for r in range(1, rounds + 1))
      + f" {'ratio best':>11} {'median':>7}")
print(f"{'joeynmt':{width}} " + " ".join(f"{j:>16,.0f}" for j in joey))
for name in names:
    runs = [json.loads((work / f"nmt-{name}.r{r}.json").read_text()) for r in range(1, rounds + 1)]
    speeds = [run["target_tokens_per_s"] for run in runs]
    ratios = [s / j for s, j in zip(speeds, joey)]
    table[f"nmt {name}"] = {"target_tokens_per_s": speeds, "ratio_to_joeynmt": ratios,
                            "fraction_of_gemm_peak": [run.get("fraction_of_peak") for run in runs],
                            "runs": runs}
    cells = " ".join(f"{s:>8,.0f} ({r:.2f}x)" for s, r in zip(speeds, ratios))
    print(f"{'nmt ' + name:{width}} {cells} {max(ratios):>10.2f}x {statistics.median(ratios):>6.2f}x")
Path(out).write_text(json.dumps(table, indent=2))
PY

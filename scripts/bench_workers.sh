#!/usr/bin/env bash
# `nmt translate --workers N` (N one-thread processes) against one process with N threads, on a
# large file, in alternating rounds.
#
#   scripts/bench_workers.sh RUN_DIR [N] [ROUNDS] [LINES] [-- DECODE OPTIONS...]
#
# The input is the first LINES (default 40,000) source sentences of the run's training split.
# Each round translates it with one process (OMP_NUM_THREADS=N) and with --workers N, both to a
# file, timing the whole command (start-up and model loading included, as a user waits for it),
# and checks that the two outputs are the same bytes. Prints sentences/s, best and median.
# Example: scripts/bench_workers.sh runs/fr-en 2 3 40000 -- --precision bf16 --shortlist 10
set -euo pipefail
POS=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do POS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
RUN_DIR="${POS[0]:?usage: bench_workers.sh RUN_DIR [N] [ROUNDS] [LINES] [-- DECODE OPTIONS...]}"
N="${POS[1]:-2}"; ROUNDS="${POS[2]:-3}"; LINES="${POS[3]:-40000}"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
export NMT_NO_PROGRESS=1
python3 - "$RUN_DIR" "$LINES" "$WORK/input.txt" <<'PY'
import sys
from pathlib import Path

import yaml

from nmt.config import recipe_from_dict
from nmt.data.corpus import load_corpus

recipe = recipe_from_dict(yaml.safe_load(Path(sys.argv[1], "recipe.yaml").read_text()))
src = load_corpus(recipe.data, splits=("train",))["train"]["src"][: int(sys.argv[2])]
Path(sys.argv[3]).write_text("".join(line + "\n" for line in src), encoding="utf-8")
PY
lines=$(wc -l < "$WORK/input.txt")
echo "input: $lines lines; N = $N; decode options: ${*:-none}" >&2
for round in $(seq 1 "$ROUNDS"); do
  for mode in threads workers; do
    if [ "$mode" = threads ]; then
      cmd=(env OMP_NUM_THREADS="$N" nmt translate "$RUN_DIR" -i "$WORK/input.txt" -o "$WORK/$mode.out" "$@")
    else
      cmd=(nmt translate "$RUN_DIR" -i "$WORK/input.txt" -o "$WORK/$mode.out" --workers "$N" "$@")
    fi
    start=$(date +%s.%N); "${cmd[@]}" 2> "$WORK/$mode.r$round.log"; end=$(date +%s.%N)
    python3 -c "print('$mode', $round, round($lines / ($end - $start), 1))" >> "$WORK/results"
  done
  cmp -s "$WORK/threads.out" "$WORK/workers.out" || { echo "round $round: the outputs differ" >&2; exit 1; }
done
python3 - "$WORK/results" "$N" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for mode, label in (("threads", f"1 process x {sys.argv[2]} threads"), ("workers", f"--workers {sys.argv[2]}")):
    speeds = [float(r[2]) for r in rows if r[0] == mode]
    print(f"{label:24} best {max(speeds):9,.1f}  median {statistics.median(speeds):9,.1f} sentences/s  "
          f"(rounds: {', '.join(f'{s:,.1f}' for s in speeds)})")
PY

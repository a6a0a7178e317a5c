#!/usr/bin/env bash
# Training speed on a quiet machine and beside K busy processes, for the thread settings that
# matter under load, measured in alternating rounds.
#
#   scripts/bench_under_load.sh [RECIPE] [ROUNDS] [OUT_DIR] [-- EXTRA nmt bench train OPTIONS...]
#
# RECIPE defaults to recipes/bench-joeynmt.yaml with train.precision=bf16. Every round runs each
# setting below quiet and then beside BUSY (default 1) busy processes of kind BUSY_KIND (default
# spin; see `nmt bench train --help`), `nmt bench train --steps STEPS (default 200)`:
#   torch        torch's threads (train.num_threads=null), OpenMP's default wait policy
#   threads1     train.num_threads=1
#   passive      torch's threads with OMP_WAIT_POLICY=PASSIVE in the environment
#   auto         train.num_threads=auto, the default (counts busy CPUs at start-up; see
#                docs/performance.md)
#   2x1          torchrun --standalone --nproc_per_node 2, one thread each, train.batch_tokens
#                halved so that the global batch is the recipe's (skipped when torchrun is missing)
# SETTINGS="torch auto" runs some of them only (torch must be one: the others are given as shares
# of its quiet speed).
# Run it on an otherwise idle machine: other load adds to the busy processes. The JSON of every
# run goes to OUT_DIR (default: a new temporary directory); the summary gives target tokens/s
# (best and median) and, beside the busy processes, the share of the quiet torch setting's best.
set -euo pipefail
POS=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do POS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
RECIPE="${POS[0]:-recipes/bench-joeynmt.yaml}"; ROUNDS="${POS[1]:-3}"; OUT="${POS[2]:-$(mktemp -d)}"
STEPS="${STEPS:-200}"; BUSY="${BUSY:-1}"; BUSY_KIND="${BUSY_KIND:-spin}"
mkdir -p "$OUT"; echo "JSON of every run: $OUT" >&2
export NMT_NO_PROGRESS=1
unset OMP_WAIT_POLICY GOMP_SPINCOUNT OMP_NUM_THREADS
EXTRA=(--set train.precision=bf16 "$@")
SETS=(); for (( i = 0; i < ${#EXTRA[@]}; i++ )); do  # the --set options, for nmt config show
  [ "${EXTRA[$i]}" = --set ] && SETS+=(--set "${EXTRA[$(( i + 1 ))]}"); done
BATCH=$(nmt config show "$RECIPE" "${SETS[@]}" | python3 -c "import sys, yaml; print(yaml.safe_load(sys.stdin)['train']['batch_tokens'])")
TORCHRUN="$(command -v torchrun || true)"
ALL="torch threads1 passive auto"; [ -n "$TORCHRUN" ] && ALL="$ALL 2x1"
SETTINGS="${SETTINGS:-$ALL}"

run() {  # run SETTING LOAD ROUND
  local setting=$1 load=$2 round=$3 bench=(bench train "$RECIPE" --steps "$STEPS" --json "${EXTRA[@]}")
  [ "$load" = busy ] && bench+=(--beside-busy "$BUSY" --busy-kind "$BUSY_KIND")
  local out="$OUT/$setting-$load.r$round.json"
  case $setting in
    torch)    nmt "${bench[@]}" --set train.num_threads=null ;;
    threads1) nmt "${bench[@]}" --set train.num_threads=1 ;;
    passive)  OMP_WAIT_POLICY=PASSIVE nmt "${bench[@]}" --set train.num_threads=null ;;
    auto)     nmt "${bench[@]}" --set train.num_threads=auto ;;
    2x1)      "$TORCHRUN" --standalone --nproc_per_node 2 -m nmt "${bench[@]}" \
                  --set train.num_threads=1 --set train.batch_tokens=$(( BATCH / 2 )) ;;
  esac > "$out" 2> "${out%.json}.log"
}

for round in $(seq 1 "$ROUNDS"); do
  for setting in $SETTINGS; do
    for load in quiet busy; do
      echo "round $round: $setting, $load" >&2
      run "$setting" "$load" "$round"
    done
  done
done

python3 - "$OUT" "$SETTINGS" <<'PY'
import json, statistics, sys
from pathlib import Path
out, settings = Path(sys.argv[1]), sys.argv[2].split()
speeds = {}
for setting in settings:
    for load in ("quiet", "busy"):
        runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"{setting}-{load}.r*.json"))]
        speeds[setting, load] = [r["target_tokens_per_s"] for r in runs]
        if load == "busy" and runs:
            print(f"{setting}: busy processes got {[r.get('busy_cpu_share') for r in runs]} of a CPU; "
                  f"threads {[r['machine']['threads'] for r in runs]}", file=sys.stderr)
reference = max(speeds["torch", "quiet"])
print(f"{'setting':10} {'quiet best':>11} {'median':>9} {'busy best':>10} {'median':>9}  busy best / quiet torch best")
for setting in settings:
    quiet, busy = speeds[setting, "quiet"], speeds[setting, "busy"]
    print(f"{setting:10} {max(quiet):>11,.0f} {statistics.median(quiet):>9,.0f} {max(busy):>10,.0f} "
          f"{statistics.median(busy):>9,.0f}  {100 * max(busy) / reference:.0f}%")
(out / "summary.json").write_text(json.dumps({f"{s} {l}": v for (s, l), v in speeds.items()}, indent=2))
PY

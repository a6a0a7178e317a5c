#!/usr/bin/env bash
# Resident memory of `nmt translate` on a large input: flat, because input is streamed in chunks.
#   scripts/bench_translate_memory.sh RUN_DIR [LINES] [WORKERS]
# Builds LINES input lines (default 1,000,000) by repeating the run's test sources, translates them
# greedily to a file, and prints the time and the peak RSS (GNU time: the largest process of the
# tree) for 1% and for 100% of the input. With WORKERS > 1 the whole input is translated again by
# `--workers WORKERS` processes and the two outputs are compared byte for byte.
# Env: OPTIONS (default "--greedy") for nmt translate; NMT (default "nmt").
set -euo pipefail
RUN_DIR="${1:?usage: bench_translate_memory.sh RUN_DIR [LINES] [WORKERS]}"
LINES="${2:-1000000}"
WORKERS="${3:-1}"
OPTIONS="${OPTIONS:---greedy}"
NMT="${NMT:-nmt}"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
python3 - "$RUN_DIR" "$LINES" "$WORK/input.txt" <<'PY'
import sys, itertools
from nmt.data.corpus import load_corpus
import yaml
from nmt.config import recipe_from_dict
from pathlib import Path
recipe = recipe_from_dict(yaml.safe_load(Path(sys.argv[1], "recipe.yaml").read_text()))
src = list(load_corpus(recipe.data, splits=("test",))["test"]["src"])
with open(sys.argv[3], "w", encoding="utf-8") as out:
    for line in itertools.islice(itertools.cycle(src), int(sys.argv[2])):
        out.write(line + "\n")
PY
head -n $(( LINES / 100 )) "$WORK/input.txt" > "$WORK/small.txt"
run() {  # NAME INPUT [nmt translate options...]
  local name="$1" input="$2"; shift 2
  local start end
  start=$(date +%s.%N)
  # shellcheck disable=SC2086  # NMT and OPTIONS may hold several words
  /usr/bin/time -f "%M" -o "$WORK/rss" $NMT translate "$RUN_DIR" $OPTIONS -i "$WORK/$input.txt" \
    -o "$WORK/$name.out" "$@" 2> "$WORK/$name.log"
  end=$(date +%s.%N)
  echo "$name: $(wc -l < "$WORK/$input.txt") lines in, $(wc -l < "$WORK/$name.out") lines out," \
       "$(python3 -c "print(round($end-$start,1))") s, peak RSS $(( $(tail -n 1 "$WORK/rss") / 1024 )) MiB"
}
run small small
run input input
if (( WORKERS > 1 )); then
  run "workers-$WORKERS" input --workers "$WORKERS"
  if cmp -s "$WORK/input.out" "$WORK/workers-$WORKERS.out"; then
    echo "workers-$WORKERS: output byte-identical to one process ($(wc -c < "$WORK/input.out") bytes)"
  else
    echo "workers-$WORKERS: output DIFFERS from one process"; cmp "$WORK/input.out" "$WORK/workers-$WORKERS.out" || true
    exit 1
  fi
fi

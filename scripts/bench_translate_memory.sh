#!/usr/bin/env bash
# Resident memory of `nmt translate` on a large input: flat, because input is streamed in chunks.
#   scripts/bench_translate_memory.sh RUN_DIR [LINES]
# Builds LINES input lines (default 1,000,000) by repeating the run's test sources, translates them
# greedily to a file, and prints the peak RSS (GNU time) for 1% and for 100% of the input.
set -euo pipefail
RUN_DIR="${1:?usage: bench_translate_memory.sh RUN_DIR [LINES]}"
LINES="${2:-1000000}"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
python3 - "$RUN_DIR" "$LINES" "$WORK/input.txt" <<'PY'
import sys, itertools
from nmt.inference.checkpoint import load_run
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
for input in small input; do
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$WORK/rss" nmt translate "$RUN_DIR" --greedy -i "$WORK/$input.txt" -o "$WORK/$input.out" 2> /dev/null
  end=$(date +%s.%N)
  lines=$(wc -l < "$WORK/$input.txt"); outl=$(wc -l < "$WORK/$input.out")
  echo "$input: $lines lines in, $outl lines out, $(python3 -c "print(round($end-$start,1))") s, peak RSS $(( $(cat "$WORK/rss") / 1024 )) MiB"
done

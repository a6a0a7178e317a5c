#!/usr/bin/env bash
# Decoding speed of nmt and JoeyNMT 2.3.0 on the test split, measured in alternating rounds.
#
#   scripts/compare_decoding.sh RUN_DIR [ROUNDS] [OUT_JSON]
#
# This machine's speed drifts by tens of percent over minutes (shared host), which a single run of
# each toolkit turns into noise in the ratio. Here every round decodes with JoeyNMT's 60-minute
# model and then with nmt (float32 and bf16, each with and without a lexical shortlist of SHORTLIST
# translations per source subword, "default": the recipe's own settings with --precision auto, and
# "default-inter1": the same searching one batch at a time on all threads, --inter-threads 1),
# beam 5 and greedy, so both toolkits see the same conditions;
# the best and the median round of each are reported, with the ratios of each.
# Env: JOEY_VENV, PEERS, DATA_DIR as for scripts/compare_joeynmt.sh; SHORTLIST (default 10);
# EXPORTS: export directories of RUN_DIR (`nmt export RUN_DIR -o DIR [--quantize int8]`), each
# decoded in every round too (onnxruntime, the export's own settings), as "onnx-<directory name>".
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$(cd "${1:?usage: compare_decoding.sh RUN_DIR [ROUNDS] [OUT_JSON]}" && pwd)"
ROUNDS="${2:-3}"
OUT_JSON="${3:-compare-decoding.json}"
PEERS="$(cd "${PEERS:?set PEERS to the JoeyNMT peer directory (setup.sh, prep_data.py, model-60min)}" && pwd)"
. "$HERE/scripts/joeynmt_peer.sh"
SHORTLIST="${SHORTLIST:-10}"
EXPORTS="${EXPORTS:-}"
export NMT_TATOEBA_DIR="$DATA_DIR" NMT_NO_PROGRESS=1
[ -f "$RUN_DIR/lexicon.safetensors" ] || "$NMT" shortlist "$RUN_DIR" >&2

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS" >&2
  for beam in 5 1; do
    ( . "$JOEY_VENV/bin/activate"
      DATA_DIR="$DATA_DIR" JOEY_VENV="$JOEY_VENV" "$PEERS/model-60min/decode.sh" "$beam" 64 \
          > "$WORK/joey-beam$beam.r$round.txt" )
    for mode in "float32 --precision float32 --shortlist 0" "bf16 --precision bf16 --shortlist 0" \
                "float32-shortlist --precision float32 --shortlist $SHORTLIST" \
                "bf16-shortlist --precision bf16 --shortlist $SHORTLIST" "default --precision auto" \
                "default-inter1 --precision auto --inter-threads 1"; do
      set -- $mode; name=$1; shift
      "$NMT" bench translate "$RUN_DIR" --beam "$beam" "$@" --json \
          2> "$WORK/nmt-beam$beam-$name.r$round.log" > "$WORK/nmt-beam$beam-$name.r$round.json"
    done
    for export in $EXPORTS; do
      name="onnx-$(basename "$export")"
      "$NMT" bench translate --engine onnx "$export" --beam "$beam" --json \
          2> "$WORK/nmt-beam$beam-$name.r$round.log" > "$WORK/nmt-beam$beam-$name.r$round.json"
    done
  done
done

python3 - "$WORK" "$OUT_JSON" "$HERE/scripts" $(for e in $EXPORTS; do echo "onnx-$(basename "$e")"; done) <<'PY'
import json, statistics, sys
from pathlib import Path
work, out = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, sys.argv[3])
import joeynmt_result

MODES = ("float32", "bf16", "float32-shortlist", "bf16-shortlist", "default", "default-inter1", *sys.argv[4:])
table = {}
for beam in (5, 1):
    joey_runs = [joeynmt_result.read(p) for p in sorted(work.glob(f"joey-beam{beam}.r*.txt"))]
    table[f"joeynmt beam {beam}"] = {"sent_per_s": [r[0] for r in joey_runs], "bleu": joey_runs[0][1]}
    for name in MODES:
        runs = [json.loads(p.read_text()) for p in sorted(work.glob(f"nmt-beam{beam}-{name}.r*.json"))]
        table[f"nmt beam {beam} {name}"] = {"sent_per_s": [r["sentences_per_s"] for r in runs],
                                            "bleu": runs[0]["bleu"]}
print(f"{'':32} {'best':>9} {'median':>9} {'BLEU':>6}  ratio (best / median)")
for beam in (5, 1):
    ref = table[f"joeynmt beam {beam}"]["sent_per_s"]
    for key in [f"joeynmt beam {beam}"] + [f"nmt beam {beam} {n}" for n in MODES]:
        runs = table[key]["sent_per_s"]
        best, med = max(runs), statistics.median(runs)
        ratio = "" if key.startswith("joeynmt") else f"{best / max(ref):.2f}x / {med / statistics.median(ref):.2f}x"
        print(f"{key:32} {best:>9,.1f} {med:>9,.1f} {table[key]['bleu']:>6}  {ratio}")
Path(out).write_text(json.dumps(table, indent=2))
PY

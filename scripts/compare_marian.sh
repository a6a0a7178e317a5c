#!/usr/bin/env bash
# Decoding speed of Marian (pymarian 1.12.42) and nmt on the test split, in alternating rounds,
# with BLEU beside each speed.
#
#   scripts/compare_marian.sh MARIAN_MODEL_DIR NMT_RUN_DIR [ROUNDS] [OUT_JSON]
#
# MARIAN_MODEL_DIR  the model directory of scripts/marian_train.sh (WORKDIR/model: model.npz and
#                   the vocabularies); its lexical shortlist (lex.s2t) is built there if missing
# NMT_RUN_DIR       a trained nmt run of recipes/fr-en.yaml; its lexicon is built if missing
# ROUNDS            default 3. Each round decodes, beam 5 then greedy, with Marian in each mode and
#                   then with nmt, so both see the same machine; the best and median round are reported.
# Env: MARIAN_VENV        made by scripts/marian_setup.sh if missing (default $HOME/venvs/marian)
#      MARIAN_CHECKPOINT  final (model.npz, the default) or best (model.npz.best-bleu.npz: best greedy
#                         valid BLEU among Marian's validations)
#      THREADS            Marian's --cpu-threads (default 2: one worker per core; nmt runs torch's
#                         default threads, 2 on a 2-core machine)
#      MARIAN_BATCH       Marian's batching (default "--mini-batch 16 --maxi-batch 100 --maxi-batch-sort src":
#                         the fastest of 8-256 sentences and 1,000 words on a 2-core CPU, docs/results.md)
#      SHORTLIST          translations per source subword in both toolkits' shortlists (default 10)
#      FREQUENT           most frequent target subwords always in them (default 100, nmt's default)
#      LINES              decode only the first LINES test pairs (a smoke test; default all 2,088)
#      PEERS              the JoeyNMT peer directory (setup.sh, model-60min): when set, each round
#                         also decodes with JoeyNMT 2.3.0's 60-minute model (batches of 64), so the three
#                         toolkits see the same machine; JOEY_VENV as for scripts/compare_joeynmt.sh
#
# Marian's modes: float32 over the full vocabulary; float32 with its lexical shortlist
# (--shortlist lex.s2t FREQUENT SHORTLIST 0); the same with int8 matrix products, FBGEMM's on-the-fly
# packing (--gemm-type packed8avx512, or packed8avx2 without AVX-512). Greedy adds --skip-cost.
# (A model converted to intgemm int8, `pymarian convert --gemm-type intgemm8`, crashed in greedy search
# with a shortlist, and one converted to packed8avx512 in any search, with pymarian 1.12.42.) A mode
# that fails is reported as failed, with its log in the work directory. Marian's lexicon
# is IBM Model 1 over its own vocabularies, trained on the training pairs by nmt's code
# (scripts/marian_lexicon.py), as nmt's. nmt's modes: float32 over the full vocabulary
# (--shortlist 0) and bf16 with the shortlist (--precision bf16 --shortlist SHORTLIST).
# Both are timed alike: model loading excluded, a warm-up on 32 sentences, then the whole split
# (scripts/marian_bench.py for Marian, `nmt bench translate` for nmt).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USAGE="usage: compare_marian.sh MARIAN_MODEL_DIR NMT_RUN_DIR [ROUNDS] [OUT_JSON]"
MODEL_DIR="$(cd "${1:?$USAGE}" && pwd)"
RUN_DIR="$(cd "${2:?$USAGE}" && pwd)"
ROUNDS="${3:-3}"
OUT_JSON="${4:-compare-marian.json}"
MARIAN_VENV="${MARIAN_VENV:-$HOME/venvs/marian}"
THREADS="${THREADS:-2}"
MARIAN_BATCH="${MARIAN_BATCH:---mini-batch 16 --maxi-batch 100 --maxi-batch-sort src}"
SHORTLIST="${SHORTLIST:-10}"
FREQUENT="${FREQUENT:-100}"
case "${MARIAN_CHECKPOINT:-final}" in
  final) MODEL="$MODEL_DIR/model.npz";;
  best) MODEL="$MODEL_DIR/model.npz.best-bleu.npz";;
  *) echo "compare_marian.sh: MARIAN_CHECKPOINT is final or best, not '$MARIAN_CHECKPOINT'" >&2; exit 2;;
esac
for f in "$MODEL" "$MODEL_DIR/vocab.fr.spm" "$MODEL_DIR/vocab.en.spm"; do
  [ -f "$f" ] || { echo "compare_marian.sh: $f not found; train with scripts/marian_train.sh and give its WORKDIR/model" >&2; exit 2; }
done
NMT="$(command -v nmt)" || { echo "compare_marian.sh: no nmt command; activate nmt's virtualenv" >&2; exit 2; }
NMT_PYTHON="$(dirname "$NMT")/python"
WORK="$(mktemp -d)"; echo "work directory (logs): $WORK" >&2
[ -x "$MARIAN_VENV/bin/pymarian" ] || MARIAN_VENV="$MARIAN_VENV" "$HERE/scripts/marian_setup.sh" > "$WORK/setup.log" 2>&1
if [ -n "${PEERS:-}" ]; then
  PEERS="$(cd "$PEERS" && pwd)"; JOEY_VENV="${JOEY_VENV:-$HOME/venvs/joeynmt}"
  [ -x "$JOEY_VENV/bin/python" ] || JOEY_VENV="$JOEY_VENV" "$PEERS/setup.sh" > "$WORK/joey-setup.log" 2>&1
fi

# The test split both toolkits decode (the first LINES pairs if given); the training pairs for the lexicon.
mkdir -p "$WORK/data"
xz -dc "$HERE/data/tatoeba-fra-eng/test.tsv.xz" > "$WORK/data/test-all.tsv"
head -n "${LINES:--0}" "$WORK/data/test-all.tsv" > "$WORK/data/test.tsv"
cut -f2 "$WORK/data/test.tsv" > "$WORK/data/test.fr"
cut -f1 "$WORK/data/test.tsv" > "$WORK/data/test.en"

if [ ! -s "$MODEL_DIR/lex.s2t" ]; then
  echo "== Marian: lexicon for its shortlist (IBM Model 1 on the training pairs) -> $MODEL_DIR/lex.s2t" >&2
  xz -dc "$HERE/data/tatoeba-fra-eng/train.tsv.xz" > "$WORK/data/train.tsv"
  cut -f2 "$WORK/data/train.tsv" > "$WORK/data/train.fr"
  cut -f1 "$WORK/data/train.tsv" > "$WORK/data/train.en"
  PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$NMT_PYTHON" "$HERE/scripts/marian_lexicon.py" \
      "$MODEL_DIR/vocab.fr.spm" "$MODEL_DIR/vocab.en.spm" "$WORK/data/train.fr" "$WORK/data/train.en" \
      "$MODEL_DIR/lex.s2t.tmp" && mv "$MODEL_DIR/lex.s2t.tmp" "$MODEL_DIR/lex.s2t"
fi
PACKED8=packed8avx2; grep -q avx512bw /proc/cpuinfo && PACKED8=packed8avx512

export NMT_NO_PROGRESS=1
[ -f "$RUN_DIR/lexicon.safetensors" ] || "$NMT" shortlist "$RUN_DIR" >&2
# nmt reads the same test file: a view of the run whose recipe points at the work directory's split.
mkdir -p "$WORK/nmt-run"
for f in "$RUN_DIR"/*; do [ "$(basename "$f")" = recipe.yaml ] || ln -s "$f" "$WORK/nmt-run/"; done
"$NMT_PYTHON" - "$RUN_DIR/recipe.yaml" "$WORK/nmt-run/recipe.yaml" "$WORK/data" <<'PY'
import sys, yaml
recipe = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
recipe["data"]["path"] = sys.argv[3]
recipe["data"]["splits"]["test"] = "test.tsv"
yaml.safe_dump(recipe, open(sys.argv[2], "w", encoding="utf-8"), sort_keys=False)
PY

VOCABS="-v $MODEL_DIR/vocab.fr.spm $MODEL_DIR/vocab.en.spm"
SL="--shortlist $MODEL_DIR/lex.s2t $FREQUENT $SHORTLIST 0"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS" >&2
  for beam in 5 1; do
    COMMON="$VOCABS --cpu-threads $THREADS $MARIAN_BATCH --beam-size $beam --normalize 0"
    [ "$beam" = 1 ] && COMMON="$COMMON --skip-cost"
    if [ -n "${PEERS:-}" ]; then
      ( DATA_DIR="$WORK/data" JOEY_VENV="$JOEY_VENV" "$PEERS/model-60min/decode.sh" "$beam" 64 \
          > "$WORK/joey-beam$beam.r$round.txt" 2> "$WORK/joey-beam$beam.r$round.log" ) \
        || echo "JoeyNMT failed (beam $beam); see $WORK/joey-beam$beam.r$round.log" >&2
    fi
    for mode in "float32|-m $MODEL" "float32-shortlist|-m $MODEL $SL" \
                "int8-shortlist|-m $MODEL --gemm-type $PACKED8 $SL"; do
      name="${mode%%|*}"
      "$MARIAN_VENV/bin/python" "$HERE/scripts/marian_bench.py" "$WORK/data/test.fr" "$WORK/data/test.en" \
          --options "${mode#*|} $COMMON" --json "$WORK/marian-beam$beam-$name.r$round.json" \
          --output "$WORK/marian-beam$beam-$name.hyp" 2> "$WORK/marian-beam$beam-$name.r$round.log" \
        || echo "Marian failed (beam $beam, $name); see $WORK/marian-beam$beam-$name.r$round.log" >&2
    done
    for mode in "float32 --shortlist 0" "bf16-shortlist --precision bf16 --shortlist $SHORTLIST"; do
      set -- $mode; name=$1; shift
      "$NMT" bench translate "$WORK/nmt-run" --beam "$beam" --shortlist-frequent "$FREQUENT" "$@" --json \
          2> "$WORK/nmt-beam$beam-$name.r$round.log" > "$WORK/nmt-beam$beam-$name.r$round.json"
    done
  done
done

python3 - "$WORK" "$OUT_JSON" "$MODEL" "$RUN_DIR" "$HERE/scripts" <<'PY'
import json, statistics, sys, time
from pathlib import Path
work, out, model, run_dir = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sys.path.insert(0, sys.argv[5])
import joeynmt_result
MARIAN = ("float32", "float32-shortlist", "int8-shortlist")
NMT = ("float32", "bf16-shortlist")
table = {}

for beam in (5, 1):
    joey_runs = [joeynmt_result.read(p) for p in sorted(work.glob(f"joey-beam{beam}.r*.txt")) if p.stat().st_size]
    if joey_runs:
        table[f"joeynmt beam {beam}"] = {"sent_per_s": [r[0] for r in joey_runs], "bleu": joey_runs[0][1],
                                          "chrf": joey_runs[0][2], "sentences": None, "cpu_per_wall": None}
    for tool, modes in (("marian", MARIAN), ("nmt", NMT)):
        for name in modes:
            runs = [json.loads(p.read_text()) for p in sorted(work.glob(f"{tool}-beam{beam}-{name}.r*.json"))]
            if not runs:
                continue
            table[f"{tool} beam {beam} {name}"] = {
                "sent_per_s": [r["sentences_per_s"] for r in runs], "bleu": runs[0]["bleu"],
                "chrf": runs[0]["chrf"], "sentences": runs[0]["sentences"],
                "cpu_per_wall": [round(r["cpu_seconds"] / r["seconds"], 2) for r in runs] if tool == "marian" else None}
summary = Path(model).parent.parent / "summary.json"
print(f"{'sentences/s':36} {'best':>9} {'median':>9} {'BLEU':>6} {'chrF':>6}  vs Marian's fastest (best / median)")
for beam in (5, 1):
    marian = [table[f"marian beam {beam} {n}"]["sent_per_s"] for n in MARIAN if f"marian beam {beam} {n}" in table]
    fastest_best = max((max(r) for r in marian), default=float("nan"))
    fastest_median = max((statistics.median(r) for r in marian), default=float("nan"))
    keys = [f"marian beam {beam} {n}" for n in MARIAN] + [f"nmt beam {beam} {n}" for n in NMT]
    for key in ([f"joeynmt beam {beam}"] if f"joeynmt beam {beam}" in table else []) + keys:
        if key not in table:
            print(f"{key:36} failed (logs in {work})")
            continue
        runs = table[key]["sent_per_s"]
        best, med = max(runs), statistics.median(runs)
        print(f"{key:36} {best:>9,.1f} {med:>9,.1f} {table[key]['bleu']:>6} {table[key]['chrf']:>6}  "
              f"{best / fastest_best:.2f}x / {med / fastest_median:.2f}x")
Path(out).write_text(json.dumps({
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "marian_model": model, "nmt_run": run_dir,
    "marian_training": json.loads(summary.read_text()) if summary.is_file() else None,
    "rounds": len(next(iter(table.values()))["sent_per_s"]), "table": table}, indent=2))
PY

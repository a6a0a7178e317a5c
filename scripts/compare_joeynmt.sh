#!/usr/bin/env bash
# Side-by-side speed of nmt and JoeyNMT 2.3.0: same data, same architecture, same machine, one go.
#
#   scripts/compare_joeynmt.sh RUN_DIR [OUT_JSON]
#
# RUN_DIR  a trained nmt run of recipes/fr-en.yaml (the sizes of JoeyNMT's config-sent64.yaml),
#          decoded against JoeyNMT's 60-minute model ($PEERS/model-60min).
# Env:     JOEY_VENV  JoeyNMT virtualenv (default $HOME/venvs/joeynmt; made by its setup.sh if missing)
#          PEERS      required: a JoeyNMT peer directory (its setup.sh, prep_data.py, model-60min);
#                     not part of this repository
#          DATA_DIR   plain train/valid/test.tsv Tatoeba splits (optional; default: the copy in
#                     data/tatoeba-fra-eng, decompressed into the work directory)
#          TRAIN_SEC  seconds of JoeyNMT training to time (default 150)
#          STEPS      timed nmt training steps per precision (default 200)
#          SHORTLIST  translations per source subword of the shortlist rows (default 10; the lexicon
#                     is built with `nmt shortlist RUN_DIR` if the run has none)
# nmt's training rows also give the achieved GEMM FLOP/s as a fraction of the measured GEMM peak of
# the precision used (`nmt bench train --flops`).
# Prints one table with both toolkits' figures and the ratios; writes them as JSON to OUT_JSON.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$(cd "${1:?usage: compare_joeynmt.sh RUN_DIR [OUT_JSON]}" && pwd)"
OUT_JSON="${2:-compare-joeynmt.json}"
PEERS="$(cd "${PEERS:?set PEERS to the JoeyNMT peer directory (setup.sh, prep_data.py, model-60min)}" && pwd)"
TRAIN_SEC="${TRAIN_SEC:-150}"
STEPS="${STEPS:-200}"
. "$HERE/scripts/joeynmt_peer.sh"

echo "== JoeyNMT: ${TRAIN_SEC}s of training (config-sent64.yaml), throughput from its own log" >&2
( . "$JOEY_VENV/bin/activate"
  mkdir -p "$WORK/joey" && cd "$WORK/joey"
  python "$PEERS/prep_data.py" "$DATA_DIR" . 8000 > prep.log 2>&1
  cp "$PEERS/config-sent64.yaml" config.yaml
  timeout -s INT -k 60 "$TRAIN_SEC" python -m joeynmt train config.yaml --skip-test > train.stdout 2>&1 || true
  python "$PEERS/train_summary.py" . > summary.json )

echo "== JoeyNMT: decoding the test split with its 60-minute model (batches of 64)" >&2
( . "$JOEY_VENV/bin/activate"
  DATA_DIR="$DATA_DIR" JOEY_VENV="$JOEY_VENV" "$PEERS/model-60min/decode.sh" 5 64 > "$WORK/joey-beam5.txt"
  DATA_DIR="$DATA_DIR" JOEY_VENV="$JOEY_VENV" "$PEERS/model-60min/decode.sh" 1 64 > "$WORK/joey-greedy.txt" )

echo "== nmt: training throughput (recipes/bench-joeynmt.yaml): bf16, float32, Luong without feeding" >&2
export NMT_TATOEBA_DIR="$DATA_DIR" NMT_NO_PROGRESS=1
for mode in "bf16 --set train.precision=bf16" "fp32 --set train.precision=no" \
            "luong-bf16 --set train.precision=bf16 --set model.attention.kind=luong-general --set model.decoder.input_feeding=false"; do
  set -- $mode; name=$1; shift
  "$NMT" bench train "$HERE/recipes/bench-joeynmt.yaml" --steps "$STEPS" --flops "$@" --json \
      2> "$WORK/nmt-train-$name.log" > "$WORK/nmt-train-$name.json"
done

echo "== nmt: decoding the test split with $RUN_DIR" >&2
[ -f "$RUN_DIR/lexicon.safetensors" ] || "$NMT" shortlist "$RUN_DIR" >&2
for mode in "beam5 --beam 5 --precision float32 --shortlist 0" "greedy --greedy --precision float32 --shortlist 0" \
            "beam5-bf16 --beam 5 --precision bf16 --shortlist 0" "greedy-bf16 --greedy --precision bf16 --shortlist 0" \
            "beam5-b64 --beam 5 --precision float32 --batch-sentences 64 --shortlist 0" "greedy-b64 --greedy --precision float32 --batch-sentences 64 --shortlist 0" \
            "beam5-bf16-sl --beam 5 --precision bf16 --shortlist ${SHORTLIST:-10}" \
            "greedy-bf16-sl --greedy --precision bf16 --shortlist ${SHORTLIST:-10}"; do
  set -- $mode; name=$1; shift
  "$NMT" bench translate "$RUN_DIR" "$@" --json 2> "$WORK/nmt-$name.log" > "$WORK/nmt-$name.json"
done

python3 - "$WORK" "$OUT_JSON" <<'PY'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), sys.argv[2]
joey_train = json.loads((work / "joey" / "summary.json").read_text())
def joey_decode(name):
    lines = (work / f"joey-{name}.txt").read_text().split("\n")
    info = json.loads(next(l for l in lines if l.startswith("{")))
    # `sacrebleu -b` prints the two scores, one per line (newer versions inside [ ... ])
    numbers = [l.strip().rstrip(",") for l in lines
               if l.strip() and not l.startswith("{") and l.strip() not in ("[", "]")]
    return {"sent_per_s": info["sent_per_s"], "bleu": float(numbers[0]), "chrf": float(numbers[1])}
nmt = {p.stem[4:]: json.loads(p.read_text()) for p in work.glob("nmt-*.json")}
rows = []
jt = joey_train["trg_tok_per_s_train_only"]
for name, label in (("bf16", "bf16 autocast"), ("fp32", "float32"),
                    ("luong-bf16", "Luong general, no input feeding, bf16")):
    r = nmt[f"train-{name}"]
    rows.append((f"training, target tokens/s ({label}); {100 * r['fraction_of_peak']:.0f}% of "
                 f"{r['gemm_peak']['gflops']:.0f} GFLOP/s GEMM peak", jt, r["target_tokens_per_s"],
                 r["target_tokens_per_s"] / jt))
for name, joey in (("beam5", joey_decode("beam5")), ("greedy", joey_decode("greedy"))):
    for suffix, label in (("", "token batches, float32"), ("-bf16", "token batches, bf16"),
                          ("-b64", "64-sentence batches, float32"),
                          ("-bf16-sl", "token batches, bf16, lexical shortlist")):
        ours = nmt[name + suffix]
        rows.append((f"decode test {name}, sentences/s ({label}); BLEU {joey['bleu']} vs {ours['bleu']}",
                     joey["sent_per_s"], ours["sentences_per_s"], ours["sentences_per_s"] / joey["sent_per_s"]))
width = max(len(r[0]) for r in rows)
print(f"{'':{width}}  {'JoeyNMT':>10}  {'nmt':>10}  ratio")
for label, j, n, ratio in rows:
    print(f"{label:{width}}  {j:>10,.1f}  {n:>10,.1f}  {ratio:5.2f}x")
Path(out).write_text(json.dumps({"joeynmt_train": joey_train, "nmt": nmt,
                                 "rows": [dict(zip(("what", "joeynmt", "nmt", "ratio"), r)) for r in rows]}, indent=2))
PY

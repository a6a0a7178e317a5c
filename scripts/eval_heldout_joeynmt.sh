#!/usr/bin/env bash
# The JoeyNMT 2.3.0 reference model on the sets of scripts/eval_heldout.sh, scored the same way.
#
#   PEERS=DIR JOEY_VENV=DIR scripts/eval_heldout_joeynmt.sh [OUT_DIR]
#
# PEERS is the JoeyNMT peer directory (decode.py and model-60min/, see scripts/compare_joeynmt.sh);
# JOEY_VENV the virtualenv its setup.sh made. The model decodes with its own settings: beam 5, no
# length penalty (alpha -1), max_output_length 100, batches of 64 sentences; JoeyNMT applies its
# sentencepiece models to the raw French and detokenizes its output itself. The hypotheses are
# then scored by nmt evaluate --hyp (sacrebleu, the signatures of nmt's own figures) and by
# scripts/length_buckets.py. Writes OUT_DIR/{set}.hyp, {set}.json, buckets.json (default
# ./joeynmt-heldout).
# Env: NMT (default "python -m nmt"), PYTHON (default python): the nmt environment.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$(cd "${PEERS:?set PEERS to the JoeyNMT peer directory (decode.py, model-60min)}" && pwd)"
JOEY_VENV="${JOEY_VENV:?set JOEY_VENV to the venv made by the peers setup.sh}"
OUT="$(mkdir -p "${1:-joeynmt-heldout}" && cd "${1:-joeynmt-heldout}" && pwd)"
NMT="${NMT:-python -m nmt}"
PYTHON="${PYTHON:-python}"
HELDOUT="$HERE/data/heldout"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT

# a copy of the model directory: its config reads spm/ relative to the working directory
cp -r "$PEERS/model-60min" "$WORK/model"
xz -dc "$HERE/data/tatoeba-fra-eng/test.tsv.xz" | cut -f2 > "$WORK/shipped-test.fr"
xz -dc "$HERE/data/tatoeba-fra-eng/test.tsv.xz" | cut -f1 > "$WORK/shipped-test.en"
for set in tatoeba-unseen-test flores200-devtest; do
  cp "$HELDOUT/$set.fr" "$HELDOUT/$set.en" "$WORK/"
done

for set in shipped-test tatoeba-unseen-test flores200-devtest; do
  echo "== $set: JoeyNMT decode" >&2
  (cd "$WORK/model" && "$JOEY_VENV/bin/python" "$PEERS/decode.py" config.yaml latest.ckpt \
      "$WORK/$set.fr" "$OUT/$set.hyp" 5 -1 64 2> "$OUT/$set.decode.log" > "$OUT/$set.decode.json")
  # shellcheck disable=SC2086  # NMT may be a command with arguments
  $NMT evaluate --hyp "$OUT/$set.hyp" --ref "$WORK/$set.en" --metrics bleu,chrf,ter --json \
      > "$OUT/$set.json"
done
"$PYTHON" "$HERE/scripts/length_buckets.py" --json --src "$WORK/tatoeba-unseen-test.fr" \
    --ref "$WORK/tatoeba-unseen-test.en" --hyp "$OUT/tatoeba-unseen-test.hyp" > "$OUT/buckets.json"
cat "$OUT"/*.json >&2
echo "written: $OUT" >&2

#!/usr/bin/env bash
# Quality of a French→English run beyond the shipped test split, in one command.
#
#   scripts/eval_heldout.sh RUN_DIR [nmt evaluate options, e.g. --checkpoint last --greedy]
#
# Evaluates RUN_DIR (beam and the other decoding settings from its recipe unless given) on
#   1. the shipped test split (nmt evaluate --split test),
#   2. data/heldout/tatoeba-unseen-test (Tatoeba sentences in neither train nor valid),
#   3. data/heldout/flores200-devtest (FLORES-200, out of domain),
# then scores set 2 by source length and by words unseen in the shipped training split
# (scripts/length_buckets.py --train-src). The hypotheses and the score
# records go to RUN_DIR/eval/ as for any nmt evaluate; a summary is printed at the end and written
# to RUN_DIR/eval/heldout-summary.json.
#
# With HALF=dev it evaluates what a choice is made on instead: the shipped valid split and
# data/heldout/tatoeba-unseen-dev (length buckets on the latter), summary in
# RUN_DIR/eval/heldout-dev-summary.json; the test sets are left untouched.
# Env: NMT (default "python -m nmt"), PYTHON (default python), HALF (test or dev; default test).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${1:?usage: eval_heldout.sh RUN_DIR [nmt evaluate options]}"; shift
NMT="${NMT:-python -m nmt}"
PYTHON="${PYTHON:-python}"
HELDOUT="$HERE/data/heldout"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT

evaluate() {  # name, then nmt evaluate arguments after RUN_DIR
  local name="$1"; shift
  echo "== $name: $NMT evaluate $RUN_DIR $* $EXTRA" >&2
  # shellcheck disable=SC2086  # NMT may be a command with arguments
  $NMT evaluate "$RUN_DIR" "$@" "${OPTIONS[@]}" --json > "$WORK/$name.json"
}
OPTIONS=("$@"); EXTRA="$*"
HALF="${HALF:-test}"

case "$HALF" in
  test)
    SETS="shipped-test tatoeba-unseen-test flores200-devtest"; SUMMARY=heldout-summary.json
    evaluate shipped-test --split test
    evaluate tatoeba-unseen-test \
        --src "$HELDOUT/tatoeba-unseen-test.fr" --ref "$HELDOUT/tatoeba-unseen-test.en"
    evaluate flores200-devtest \
        --src "$HELDOUT/flores200-devtest.fr" --ref "$HELDOUT/flores200-devtest.en" ;;
  dev)
    SETS="shipped-valid tatoeba-unseen-dev"; SUMMARY=heldout-dev-summary.json
    evaluate shipped-valid --split valid
    evaluate tatoeba-unseen-dev \
        --src "$HELDOUT/tatoeba-unseen-dev.fr" --ref "$HELDOUT/tatoeba-unseen-dev.en" ;;
  *) echo "eval_heldout.sh: HALF must be test or dev, not '$HALF'" >&2; exit 2 ;;
esac

HYP="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["hypotheses"])' \
    "$WORK/tatoeba-unseen-$HALF.json")"
xz -dc "$HERE/data/tatoeba-fra-eng/train.tsv.xz" | cut -f2 > "$WORK/train.fr"  # the French side
"$PYTHON" "$HERE/scripts/length_buckets.py" --json --src "$HELDOUT/tatoeba-unseen-$HALF.fr" \
    --ref "$HELDOUT/tatoeba-unseen-$HALF.en" --hyp "$HYP" --train-src "$WORK/train.fr" > "$WORK/buckets.json"

"$PYTHON" - "$WORK" "$RUN_DIR/eval/$SUMMARY" "$HALF" $SETS <<'PY'
import json, sys
from pathlib import Path

work, out, half, sets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
buckets = json.loads((work / "buckets.json").read_text())
summary = {"sets": {}, f"tatoeba_unseen_{half}_by_source_length": buckets["by_source_length"],
           f"tatoeba_unseen_{half}_by_unseen_words": buckets["by_unseen_words"],
           f"tatoeba_unseen_{half}_estimates": buckets["estimates"]}
for name in sets:
    summary["sets"][name] = json.loads((work / f"{name}.json").read_text())
out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
print(f"{'set':22s} {'pairs':>6s} {'BLEU':>6s} {'chrF':>6s}")
for name, rec in summary["sets"].items():
    s = rec["scores"]
    print(f"{name:22s} {rec['sentences']:6d} {s['bleu']['score']:6.2f} {s['chrf']['score']:6.2f}")
for key, title in (("by_source_length", "source words"), ("by_unseen_words", "words unseen in training")):
    print(f"tatoeba-unseen-{half} by {title}:")
    for b in summary[f"tatoeba_unseen_{half}_{key}"]:
        print(f"  {b['bucket']:>18s} {b['pairs']:6d} {b.get('bleu', float('nan')):6.2f} {b.get('chrf', float('nan')):6.2f}")
estimate = summary[f"tatoeba_unseen_{half}_estimates"].get("names_as_seen")
if estimate is not None:
    print(f"  its unseen-capitalised pairs translated as well as its seen ones: about {estimate:.2f} BLEU")
print(f"written: {out}")
PY

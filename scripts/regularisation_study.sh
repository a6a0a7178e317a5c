#!/usr/bin/env bash
# Which regularisation for small corpora helps the fr-en model on sentences it has never seen:
# one recipe option at a time against the recipe as it is, at a fixed number of updates, for a
# few seeds, each run scored on what choices are made on (HALF=dev scripts/eval_heldout.sh: the
# shipped valid split and the unseen Tatoeba dev half, by source length); the test sets are left
# for the recipe that takes the winners. docs/training.md, "Regularisation for small corpora", describes the
# options.
#
#   scripts/regularisation_study.sh                        # every option below, seeds 1 and 2
#   scripts/regularisation_study.sh baseline word-dropout  # only these (names from the list below)
#   scripts/regularisation_study.sh baseline 'sampling-a0.3:train.subword_sampling=true,train.subword_alpha=0.3'
#                                                          # NAME:KEY=VALUE,KEY=VALUE defines one
#
# Env:
#   RECIPE   recipe to start from (default recipes/fr-en.yaml)
#   STEPS    updates per run (default 4000); the time budget is switched off so that every run
#            gets the same number of updates whatever the load of the machine
#   SEEDS    train.seed values (default "1 2")
#   OUT      where the runs go (default runs/regularisation-study; OUT/NAME-seedS)
#   EXTRA    more KEY=VALUE overrides for every run, space-separated (e.g. "train.valid_every=500")
#   EVAL     options for nmt evaluate through eval_heldout.sh (e.g. "--checkpoint last --beam 1")
#   NMT      (default "python -m nmt"), PYTHON (default python)
# A run that finished before (train_summary.json) is not trained again, a run already scored
# (eval/heldout-dev-summary.json) not scored again: an interrupted study continues where it stopped.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECIPE="${RECIPE:-$HERE/recipes/fr-en.yaml}"
STEPS="${STEPS:-4000}"
SEEDS="${SEEDS:-1 2}"
OUT="${OUT:-runs/regularisation-study}"
EXTRA="${EXTRA:-}"
EVAL="${EVAL:-}"
NMT="${NMT:-python -m nmt}"
PYTHON="${PYTHON:-python}"

# NAME:overrides (comma-separated); one technique each, its usual setting from the papers
declare -A KNOWN=(
  [baseline]=""
  [word-dropout]="train.src_word_dropout=0.1,train.tgt_word_dropout=0.1"
  [subword-sampling]="train.subword_sampling=true,train.subword_alpha=0.2,train.subword_nbest=-1"
  [bpe-dropout]="tokenizer.model_type=bpe,train.subword_sampling=true,train.subword_alpha=0.1"
  [bpe]="tokenizer.model_type=bpe"
  [tied]="model.tied_embeddings=true"
  [concat]="train.concat_ratio=0.5,train.concat_pairs=2"
  [vocab-4k]="tokenizer.src_vocab_size=4000,tokenizer.tgt_vocab_size=4000"
  [dropout-0.3]="model.dropout=0.3,model.encoder.dropout=0.3,model.decoder.dropout=0.3"
)
ORDER=(baseline word-dropout subword-sampling bpe bpe-dropout tied concat vocab-4k dropout-0.3)

NAMES=() ; declare -A SETS=()
for arg in "${@:-${ORDER[@]}}"; do
  if [[ "$arg" == *:* ]]; then
    name="${arg%%:*}"; SETS[$name]="${arg#*:}"
  elif [[ -v "KNOWN[$arg]" ]]; then
    name="$arg"; SETS[$name]="${KNOWN[$arg]}"
  else
    echo "regularisation_study.sh: unknown option '$arg'; known: ${ORDER[*]} (or NAME:KEY=VALUE,...)" >&2
    exit 2
  fi
  NAMES+=("$name")
done

mkdir -p "$OUT"
for name in "${NAMES[@]}"; do
  for seed in $SEEDS; do
    run="$OUT/$name-seed$seed"
    overrides=(--set "train.max_steps=$STEPS" --set train.budget_minutes=null --set "train.seed=$seed")
    for kv in ${EXTRA} ${SETS[$name]//,/ }; do overrides+=(--set "$kv"); done
    if [[ ! -f "$run/train_summary.json" ]]; then
      echo "== train $name seed $seed: ${overrides[*]}" >&2
      resume=(); [[ -f "$run/checkpoints/last.json" ]] && resume=(--resume)
      # shellcheck disable=SC2086  # NMT may be a command with arguments
      $NMT train "$RECIPE" --run-dir "$run" "${overrides[@]}" "${resume[@]}" > "$OUT/$name-seed$seed.log" 2>&1 \
        || { echo "training failed: $OUT/$name-seed$seed.log" >&2; tail -5 "$OUT/$name-seed$seed.log" >&2; exit 1; }
    fi
    if [[ ! -f "$run/eval/heldout-dev-summary.json" ]]; then
      echo "== evaluate $name seed $seed" >&2
      # shellcheck disable=SC2086  # EVAL holds several options
      HALF=dev NMT="$NMT" PYTHON="$PYTHON" "$HERE/scripts/eval_heldout.sh" "$run" $EVAL > "$run/heldout.txt" 2>&1 \
        || { echo "evaluation failed: $run/heldout.txt" >&2; tail -5 "$run/heldout.txt" >&2; exit 1; }
    fi
  done
done

"$PYTHON" - "$OUT" "$SEEDS" "${NAMES[@]}" <<'PY'
"""The table: BLEU (chrF) of every run on each set, the mean over seeds, and the change of the
mean against the baseline when it was run."""
import json
import statistics
import sys
from pathlib import Path

out, seeds, names = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3:]
SETS = ("shipped-valid", "tatoeba-unseen-dev", "unseen-dev-16+")
scores = {}
for name in names:
    for seed in seeds:
        summary = json.loads((out / f"{name}-seed{seed}" / "eval" / "heldout-dev-summary.json").read_text())
        for s in SETS[:2]:
            rec = summary["sets"][s]["scores"]
            scores.setdefault((name, s), []).append((rec["bleu"]["score"], rec["chrf"]["score"]))
        long = summary["tatoeba_unseen_dev_by_source_length"][-1]
        scores.setdefault((name, SETS[2]), []).append((long["bleu"], long["chrf"]))
width = max(len(n) for n in names) + 2
print(f"BLEU / chrF, mean over seeds {' '.join(seeds)} (per seed in brackets)")
print(f"{'option':{width}s}" + "".join(f"{s:>34s}" for s in SETS))
base = {s: statistics.mean(b for b, _ in scores[("baseline", s)]) for s in SETS} if "baseline" in names else None
for name in names:
    row = f"{name:{width}s}"
    for s in SETS:
        bleu = [b for b, _ in scores[(name, s)]]
        chrf = statistics.mean(c for _, c in scores[(name, s)])
        delta = f" {statistics.mean(bleu) - base[s]:+5.2f}" if base and name != "baseline" else "      "
        per_seed = "/".join(f"{b:.1f}" for b in bleu)
        row += f"{statistics.mean(bleu):7.2f}{delta} {chrf:6.2f} [{per_seed}]".rjust(34)
    print(row)
table = {f"{n}|{s}": v for (n, s), v in scores.items()}
(out / "study.json").write_text(json.dumps({"seeds": seeds, "options": names, "bleu_chrf": table}, indent=1) + "\n")
print(f"written: {out / 'study.json'}")
PY

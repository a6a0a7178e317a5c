#!/usr/bin/env bash
# Train Marian's RNN encoder-decoder on the shipped Tatoeba splits (French -> English) for a
# wall-clock budget, with the sizes of recipes/bench-joeynmt.yaml and the batches of recipes/fr-en.yaml.
#
#   scripts/marian_train.sh [MINUTES] [WORKDIR] [EXTRA MARIAN OPTIONS...]
#
# MINUTES  training budget in minutes (default 30; decimals allowed). Like nmt's train.budget_minutes
#          it is the wall time of the training loop, validation included: the clock starts when
#          Marian logs that training started (after it has trained its sentencepiece vocabularies),
#          and at the end Marian is sent SIGTERM, on which it saves the model and exits.
# WORKDIR  where the data, vocabularies, model and logs go (default $HOME/marian-fr-en); keep it
#          outside the repository. An existing model there is continued by Marian; remove it first
#          for a fresh run.
# Extra options go to Marian's command line and override the settings below, which the script writes
# to WORKDIR/model/config.yml (e.g. --learn-rate 0.001).
# Env: MARIAN_VENV  made by scripts/marian_setup.sh if missing (default $HOME/venvs/marian)
#      THREADS      Marian's --cpu-threads (default 2)
#      BATCH_WORDS  subwords per update, Marian's --mini-batch-words (default 1200, as recipes/fr-en.yaml)
#      VALID_FREQ   validation (and save) interval in updates (default 250: Marian makes about one
#                   update per second on 2 cores, so its validations come about as often in time as
#                   those of recipes/fr-en.yaml, every 1,000 of nmt's faster updates)
#      DISP_FREQ    interval of Marian's progress lines (words/s) in updates (default 100)
#
# The model: 256-dim embeddings, a 1-layer bidirectional GRU encoder of 256, Marian's s2s GRU decoder
# of 256 (its conditional GRU: two GRU transitions per step around the attention), separate 8k
# sentencepiece vocabularies that Marian trains itself, dropout 0.2 between RNN steps; Adam 0.002 with
# 300 warm-up updates, gradient clipping 1.0, label smoothing 0.1, per-word mean cross-entropy.
# With several threads Marian runs one worker per thread; with --sync-sgd each update's batch is split
# over them and their gradients summed, so an update is one batch of BATCH_WORDS whatever THREADS is.
# Validation: Marian's BLEU (on detokenized output) on the first 1,000 valid pairs, greedy, as nmt
# validates. Marian keeps the final model (model.npz, overwritten at each save and on exit) and the
# best by valid BLEU (model.npz.best-bleu.npz).
#
# Writes WORKDIR/summary.json: updates, minutes, Marian's target words/s (the mean of its log lines
# after the first), the valid BLEU curve.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MINUTES="${1:-30}"
WORK="${2:-$HOME/marian-fr-en}"
shift $(( $# < 2 ? $# : 2 ))
MARIAN_VENV="${MARIAN_VENV:-$HOME/venvs/marian}"
THREADS="${THREADS:-2}"
BATCH_WORDS="${BATCH_WORDS:-1200}"
VALID_FREQ="${VALID_FREQ:-250}"
DISP_FREQ="${DISP_FREQ:-100}"
BUDGET_SEC="$(python3 -c "import sys; print(round(float(sys.argv[1]) * 60))" "$MINUTES")"
mkdir -p "$WORK/data" "$WORK/model"
WORK="$(cd "$WORK" && pwd)"
case "$WORK/" in "$HERE/"*) echo "marian_train.sh: WORKDIR $WORK is inside the repository; choose one outside it" >&2; exit 2;; esac

[ -x "$MARIAN_VENV/bin/pymarian" ] || MARIAN_VENV="$MARIAN_VENV" "$HERE/scripts/marian_setup.sh" >&2
. "$MARIAN_VENV/bin/activate"

# Plain one-sentence-per-line files: column 1 (French) is the source, column 0 (English) the target.
for split in train valid test; do
  if [ ! -s "$WORK/data/$split.en" ]; then
    xz -dc "$HERE/data/tatoeba-fra-eng/$split.tsv.xz" > "$WORK/data/$split.tsv"
    cut -f2 "$WORK/data/$split.tsv" > "$WORK/data/$split.fr"
    cut -f1 "$WORK/data/$split.tsv" > "$WORK/data/$split.en"
  fi
done
head -n 1000 "$WORK/data/valid.fr" > "$WORK/data/valid1000.fr"
head -n 1000 "$WORK/data/valid.en" > "$WORK/data/valid1000.en"

M="$WORK/model"
# The settings as a Marian configuration file: options given on the command line override its keys
# (Marian refuses an option given twice on the command line).
cat > "$M/config.yml" <<EOF
type: s2s
model: $M/model.npz
seed: 42
train-sets: [$WORK/data/train.fr, $WORK/data/train.en]
vocabs: [$M/vocab.fr.spm, $M/vocab.en.spm]
dim-vocabs: [8000, 8000]
dim-emb: 256
dim-rnn: 256
enc-type: bidirectional
enc-cell: gru
enc-depth: 1
dec-cell: gru
dec-depth: 1
dropout-rnn: 0.2
max-length: 100
cpu-threads: $THREADS
sync-sgd: true
workspace: 1024
mini-batch-words: $BATCH_WORDS
maxi-batch: 100
shuffle-in-ram: true
cost-type: ce-mean-words
label-smoothing: 0.1
optimizer: adam
learn-rate: 0.002
lr-warmup: 300
clip-norm: 1
disp-freq: ${DISP_FREQ}u
save-freq: ${VALID_FREQ}u
overwrite: true
valid-sets: [$WORK/data/valid1000.fr, $WORK/data/valid1000.en]
valid-metrics: [bleu]
valid-freq: ${VALID_FREQ}u
valid-mini-batch: 64
beam-size: 1
normalize: 0
early-stopping: 0
keep-best: true
quiet-translation: true
log: $M/train.log
valid-log: $M/valid.log
EOF
ARGS=(-c "$M/config.yml" "$@")
echo "pymarian ${ARGS[*]}" > "$M/command.txt"
echo "== Marian: $MINUTES min of training in $WORK ($THREADS threads, $BATCH_WORDS subwords per update)" >&2

START_LINES=$( [ -f "$M/train.log" ] && wc -l < "$M/train.log" || echo 0 )
START_LABELS=$( sed -n 's/^labels-total: //p' "$M/model.npz.progress.yml" 2> /dev/null || true )
pymarian "${ARGS[@]}" > "$M/stdout.log" 2>&1 &
PID=$!
trap 'kill -TERM "$PID" 2> /dev/null || true' INT TERM
# The budget starts with the training loop: Marian first trains its vocabularies and builds the graph.
while kill -0 "$PID" 2> /dev/null && ! tail -n +"$((START_LINES + 1))" "$M/train.log" 2> /dev/null | grep -q "Training started"; do
  sleep 1
done
if ! kill -0 "$PID" 2> /dev/null; then
  wait "$PID" || true
  echo "marian_train.sh: Marian stopped before training started; its log: $M/stdout.log" >&2
  tail -n 20 "$M/stdout.log" >&2
  exit 1
fi
STARTED=$(date +%s)
while kill -0 "$PID" 2> /dev/null && [ $(( $(date +%s) - STARTED )) -lt "$BUDGET_SEC" ]; do sleep 1; done
ELAPSED=$(( $(date +%s) - STARTED ))
if kill -0 "$PID" 2> /dev/null; then
  kill -TERM "$PID"          # Marian's --sigterm default: save-and-exit
  for _ in $(seq 300); do kill -0 "$PID" 2> /dev/null || break; sleep 1; done
  kill -0 "$PID" 2> /dev/null && { echo "marian_train.sh: Marian did not exit 300 s after SIGTERM" >&2; kill -KILL "$PID"; }
fi
wait "$PID" || true
trap - INT TERM
[ -f "$M/model.npz" ] || { echo "marian_train.sh: no model was saved; see $M/train.log" >&2; exit 1; }

python3 - "$M" "$ELAPSED" "$START_LINES" "${START_LABELS:-0}" "$THREADS" "$BATCH_WORDS" <<'PY' | tee "$WORK/summary.json"
import json, re, sys
from pathlib import Path
model = Path(sys.argv[1])
elapsed, start_lines, start_labels, threads, batch_words = map(int, sys.argv[2:])
lines = (model / "train.log").read_text(errors="replace").splitlines()[start_lines:]
# progress lines: "... Ep. 1 : Up. 100 : Sen. 6,400 : Cost 5.1 : Time 12.3s : 885.2 words/s ..."
progress = [(int(m["up"].replace(",", "")), float(m["wps"].replace(",", "")))
            for m in (re.search(r"Up\. (?P<up>[\d,]+) .*?(?P<wps>[\d,.]+) words/s", l) for l in lines) if m]
valid = [{"update": int(m["up"].replace(",", "")), "bleu": float(m["bleu"])}
         for m in (re.search(r"Up\. (?P<up>[\d,]+) : bleu : (?P<bleu>[\d.]+)", l) for l in lines) if m]
# the state Marian saved on exit: updates and target labels since the start of the model's training
state = dict(re.findall(r"^([a-z-]+): (\S+)$", (model / "model.npz.progress.yml").read_text(), re.M))
speeds = [wps for _, wps in progress[1:]] or [wps for _, wps in progress]
summary = {
    "toolkit": "marian (pymarian 1.12.42)", "threads": threads, "mini_batch_words": batch_words,
    "training_seconds": elapsed, "updates": int(state["batches"]), "target_words": int(state["labels-total"]),
    # Marian's own figure: target words/s of its training steps (the mean of its progress lines
    # after the first), and the whole budget's, validation and start-up included
    "target_words_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None,
    "target_words_per_s_overall": round((int(state["labels-total"]) - start_labels) / max(elapsed, 1), 1),
    "valid_bleu_greedy_first_1000": valid,
    "best_valid_bleu": max((v["bleu"] for v in valid), default=None),
    "model": str(model / "model.npz"),
}
print(json.dumps(summary, indent=2))
PY

# Sourced by the scripts that run JoeyNMT 2.3.0 beside nmt (compare_joeynmt.sh, compare_decoding.sh,
# compare_training.sh): a work directory for their logs, the shipped splits as the plain files
# JoeyNMT reads, and its virtualenv (made by the peer's setup.sh if missing).
# Reads HERE (the repository), PEERS, and optionally JOEY_VENV and DATA_DIR;
# sets WORK, DATA_DIR (absolute), NMT (the nmt command) and JOEY_VENV.
JOEY_VENV="${JOEY_VENV:-$HOME/venvs/joeynmt}"
WORK="$(mktemp -d)"; echo "work directory (logs): $WORK" >&2
if [ -z "${DATA_DIR:-}" ]; then  # JoeyNMT reads plain files: decompress the shipped splits
  DATA_DIR="$WORK/tatoeba-fra-eng"; mkdir -p "$DATA_DIR"
  for split in train valid test; do xz -dc "$HERE/data/tatoeba-fra-eng/$split.tsv.xz" > "$DATA_DIR/$split.tsv"; done
fi
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
NMT="$(command -v nmt)"
[ -x "$JOEY_VENV/bin/python" ] || JOEY_VENV="$JOEY_VENV" "$PEERS/setup.sh" > "$WORK/setup.log" 2>&1

#!/usr/bin/env bash
# Create the Marian baseline virtualenv (CPU): pymarian from PyPI, whose wheel carries Marian's
# trainer and decoder (the `pymarian` command runs Marian's own command line: `pymarian train`,
# `pymarian decode`, ...), plus sacrebleu to score its output. Nothing else; no torch.
#
#   scripts/marian_setup.sh
#
# Env: MARIAN_VENV  where to create it (default $HOME/venvs/marian)
#      PYTHON       the interpreter to build it from (default python3; the wheels are built per
#                   CPython version, among them 3.11)
set -euo pipefail
MARIAN_VENV="${MARIAN_VENV:-$HOME/venvs/marian}"
PY="${PYTHON:-python3}"

"$PY" -m venv "$MARIAN_VENV"
. "$MARIAN_VENV/bin/activate"
# The wheel is about 600 MB (Marian's CPU and CUDA code in one extension module).
pip install pymarian==1.12.42 sacrebleu==2.6.0
if python -c "import torch" 2> /dev/null; then
  echo "marian_setup.sh: torch ended up in $MARIAN_VENV; this virtualenv must not have it" >&2
  exit 1
fi
python -c "import pymarian, sacrebleu; print('pymarian', pymarian.__version__, '| sacrebleu', sacrebleu.__version__)"
pymarian --version 2>&1 | tail -n 1

"""The result of one JoeyNMT decoding round, as the peers' ``model-60min/decode.sh`` prints it.

decode.sh prints decode.py's JSON line (with ``sent_per_s``), then sacrebleu's BLEU and chrF
scores, one number per line, possibly inside a JSON list. The comparison scripts
(compare_decoding.sh, compare_marian.sh) import this to read their JoeyNMT rounds.
"""
from __future__ import annotations

import json
from pathlib import Path


def read(path: str | Path) -> tuple[float, float, float | None]:
    """(sentences/s, BLEU, chrF or None) of one round's output file."""
    lines = [line.strip().rstrip(",") for line in Path(path).read_text().split("\n")]
    info = json.loads(next(line for line in lines if line.startswith("{")))
    scores = [float(line) for line in lines if line and not line.startswith("{") and line not in ("[", "]")]
    return info["sent_per_s"], scores[0], scores[1] if len(scores) > 1 else None

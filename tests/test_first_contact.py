"""A new user's first contact: a fresh clone, nothing beside it, trains fr-en, translates, evaluates.

The repository is cloned (committed files only, as a user gets them) into an empty directory, so
any path that leads outside the clone fails here. The clone's own code runs, with the packages of
the current environment (no reinstall of torch).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Keep the run short on two shared cores: a 0.3-minute budget, validation on 50 sentences, one
# thread (a second one only waits on a loaded machine), smaller subword vocabularies learnt from
# fewer sentences, no shortlist lexicon, no attention plots. The rest is the recipe as shipped.
SHORT = ["train.budget_minutes=0.3", "train.valid_every=50", "train.valid_max_sentences=50",
         "train.num_threads=1", "train.plot_sentences=0", "decode.shortlist=0",
         "tokenizer.input_sentence_size=30000", "tokenizer.src_vocab_size=2000",
         "tokenizer.tgt_vocab_size=2000"]


def _run(args: list[str], cwd: Path, env: dict[str, str], stdin: str | None = None, timeout: int = 300):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, input=stdin, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} -> {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_fresh_clone_trains_translates_and_evaluates_fr_en(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    home = tmp_path / "empty"
    home.mkdir()
    clone = home / "nmt"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("NMT_TATOEBA_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(clone), NMT_NO_PROGRESS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"))
    where = _run(["-c", "import nmt; print(nmt.__file__)"], clone, env).stdout.strip()
    assert Path(where).resolve().is_relative_to(clone.resolve()), where

    shown = _run(["-m", "nmt", "config", "show", "recipes/fr-en.yaml"], clone, env).stdout
    assert f"path: {(clone / 'data' / 'tatoeba-fra-eng').resolve()}" in shown

    sets = sum((["--set", item] for item in SHORT), [])
    _run(["-m", "nmt", "train", "recipes/fr-en.yaml", *sets], clone, env, timeout=600)
    run = clone / "runs" / "fr-en"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stopped"] == "budget" and summary["steps"] > 0
    assert (run / "checkpoints" / "best.safetensors").is_file()

    out = _run(["-m", "nmt", "translate", "runs/fr-en", "--greedy"], clone, env,
               stdin="Je suis fatigué.\n").stdout
    assert len(out.splitlines()) == 1  # a model this young may still say nothing; it must answer

    _run(["-m", "nmt", "evaluate", "runs/fr-en", "--split", "test", "--greedy", "--json"], clone, env, timeout=600)
    # precision auto may pick bf16 on this CPU; the report's name then says so (test.best.beam1.bf16.*)
    [report] = sorted((run / "eval").glob("test.best.beam1*.json"))
    scores = json.loads(report.read_text())
    hyps = report.with_suffix(".hyp").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 2_088  # every test sentence translated
    assert "bleu" in json.dumps(scores).lower()
    assert sorted(os.listdir(home)) == ["nmt"]  # the clone is all there is in its directory

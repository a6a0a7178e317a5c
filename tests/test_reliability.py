"""Faults and untrusted files: signals, kill -9, corrupt checkpoints, missing pieces, full disks."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nmt.errors import CheckpointError, NmtError
from nmt.inference.checkpoint import checkpoint_path, load_run


def train_cmd(repo, fast, run, *overrides, resume=False):
    """``nmt train recipes/tiny.yaml`` with the ``fast`` overrides and ``overrides``."""
    sets = sum((["--set", o] for o in fast + list(overrides)), [])
    return [sys.executable, "-m", "nmt", "train", str(repo / "recipes/tiny.yaml"), "--run-dir", str(run),
            *sets, *(["--resume"] if resume else [])]


ENV = {**os.environ, "NMT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def wait_for(path: Path, timeout: float = 120.0) -> None:
    start = time.time()
    while not path.exists():
        if time.time() - start > timeout:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_a_final_checkpoint_and_resume_continues(repo, fast, tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(repo, fast, run, "train.max_steps=100000", "train.valid_every=20"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run / "checkpoints" / "last.json")  # first validation done: training is under way
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig.value, err[-2000:]  # stopped, not finished: as the shell says it
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stopped"] == f"signal {sig.name}"
    last = json.loads((run / "checkpoints/last.json").read_text())
    assert last["step"] == summary["steps"], "the final checkpoint holds the last step"
    resumed = subprocess.run(train_cmd(repo, fast, run, f"train.max_steps={summary['steps'] + 3}",
                                       "train.valid_every=20", resume=True),
                             env=ENV, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "train_summary.json").read_text())["steps"] == summary["steps"] + 3


@pytest.mark.slow
def test_kill_9_leaves_the_last_complete_checkpoint_and_resume_matches(repo, fast, tmp_path, kernels):
    """kill -9 in the middle of training; --resume finishes with the weights of an uninterrupted run.

    The killed run has no end in sight when it is killed (as soon as its first checkpoint exists),
    and both runs are then trained to the same step a little past the checkpoint it left, however
    far the killed run had got on this machine."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    # constant learning rate: max_steps changes nothing
    args = ["train.valid_every=4", "model.dropout=0.2", f"model.kernels={kernels}"]
    proc = subprocess.Popen(train_cmd(repo, fast, killed, "train.max_steps=100000", *args), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(killed / "checkpoints" / "last.json")
    proc.kill()  # SIGKILL: no handler runs
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # what is there must load: last.json names a complete pair of weights + state
    step = json.loads((killed / "checkpoints/last.json").read_text())["step"]
    assert step >= 4 and step % 4 == 0
    end = f"train.max_steps={step + 6}"
    resumed = subprocess.run(train_cmd(repo, fast, killed, end, *args, resume=True), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = subprocess.run(train_cmd(repo, fast, full, end, *args), env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(checkpoint_path(full, "last"))
    b = load_file(checkpoint_path(killed, "last"))
    assert json.loads((killed / "train_summary.json").read_text())["steps"] == step + 6
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_truncated_weights_file_is_a_clear_error(tiny_run, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    weights = run / "checkpoints/best.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_run(run, "best")


def test_garbage_weights_file_is_a_clear_error(tiny_run, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "checkpoints/best.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError):
        load_run(run, "best")


def test_pickle_payload_is_never_executed(tiny_run, tmp_path):
    """A trainer state that carries a pickled callable is refused by weights_only loading."""
    import pickle

    from nmt.inference.checkpoint import load_state

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "state.pt"
    with open(path, "wb") as handle:
        pickle.dump({"x": Evil()}, handle)
    with pytest.raises(CheckpointError, match="refused as unsafe"):
        load_state(path)
    assert not (tmp_path / "pwned").exists()


def test_run_dir_missing_its_tokenizer(tiny_run, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "spm.src.model").unlink()
    with pytest.raises(CheckpointError, match="spm.src.model"):
        load_run(run, "best")


def test_checkpoint_from_an_incompatible_recipe(tiny_run, tmp_path):
    import shutil

    import yaml
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"]["decoder"]["hidden_size"] = 24
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_run(run, "best")


def test_not_a_run_directory(tmp_path):
    with pytest.raises(CheckpointError, match="recipe.yaml"):
        load_run(tmp_path, "best")
    with pytest.raises(CheckpointError, match="not found"):
        load_run(tmp_path / "nope", "best")


def test_full_disk_is_reported_before_training(tiny_recipe, tmp_path, monkeypatch):
    import shutil

    from nmt.training.trainer import train

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(NmtError, match="not enough free disk space"):
        train(tiny_recipe(), run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "spm.src.model").exists(), "failed before any work"


def test_cli_reports_checkpoint_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nmt", "translate", str(tmp_path / "nope")], input="Bonjour\n",
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_a_swapped_tokenizer_model_is_named_not_the_checkpoint(tiny_run, tmp_path):
    """A tokenizer model of another vocabulary copied into a run: the model file is named (spm.json
    records its sha256), not the checkpoint whose shapes then differ."""
    import io
    import shutil

    import sentencepiece as spm

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    model = io.BytesIO()
    words = "le la chat chien maison rouge bleu petit grand mange dort voit un une et".split()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([" ".join(words[i:] + words[:i]) for i in range(15)] * 20),
                                   model_writer=model, vocab_size=30, model_type="unigram",
                                   pad_id=0, unk_id=1, bos_id=2, eos_id=3, num_threads=1,
                                   minloglevel=2)
    (run / "spm.src.model").write_bytes(model.getvalue())
    with pytest.raises(CheckpointError, match="spm.src.model is not the tokenizer model") as info:
        load_run(run, "last")
    assert "spm.json" in str(info.value) and "does not fit" not in str(info.value)

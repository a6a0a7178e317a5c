"""Symbolic links planted in a run or export directory are refused (exit 2, the link named), never
written through: the files they point at stay as they were."""
import os
import shutil
import subprocess
import sys

import pytest

from nmt.atomic import LinkRefused, append_line, atomic_write_text
from nmt.errors import NmtError

ENV = {**os.environ, "NMT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def nmt(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "nmt", *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=ENV, timeout=300)


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


@pytest.fixture
def run(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def test_a_write_test_link_is_refused_by_train(run, victim, repo, fast):
    os.symlink(victim, run / ".write-test")
    sets = sum((["--set", o] for o in fast + ["train.max_steps=6"]), [])
    proc = nmt("train", repo / "recipes/tiny.yaml", "--run-dir", run, *sets, "--resume")
    assert proc.returncode == 2, proc.stderr
    assert ".write-test" in proc.stderr and "symbolic link" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n"


def test_a_lock_link_is_refused(run, victim):
    from nmt.training.lock import RunLock

    os.symlink(victim, run / "train.lock")
    with pytest.raises(LinkRefused, match="train.lock"):
        RunLock(run).acquire()
    assert victim.read_text() == "precious\n"


def test_a_dangling_lock_link_creates_nothing(run, tmp_path):
    from nmt.training.lock import RunLock

    os.symlink(tmp_path / "created-elsewhere", run / "train.lock")
    with pytest.raises(LinkRefused):
        RunLock(run).acquire()
    assert not (tmp_path / "created-elsewhere").exists()


def test_a_train_log_link_is_refused(run, victim):
    from nmt.training.progress import close_run_log, setup_logging

    (run / "train.log").unlink(missing_ok=True)
    os.symlink(victim, run / "train.log")
    try:
        with pytest.raises(NmtError, match="train.log"):
            setup_logging(run)
    finally:
        close_run_log()
    assert victim.read_text() == "precious\n"


def test_appends_and_atomic_writes_refuse_links(tmp_path, victim):
    os.symlink(victim, tmp_path / "metrics.jsonl")
    with pytest.raises(LinkRefused, match="metrics.jsonl"):
        append_line(tmp_path / "metrics.jsonl", "{}")
    os.symlink(victim, tmp_path / "recipe.yaml")
    with pytest.raises(LinkRefused, match="recipe.yaml"):
        atomic_write_text(tmp_path / "recipe.yaml", "x")
    assert victim.read_text() == "precious\n"
    assert os.path.islink(tmp_path / "recipe.yaml"), "the link is named, not replaced"


def test_a_checkpoints_directory_link_is_refused_before_training(run, tmp_path):
    from nmt.training.rundir import make_run_dir

    elsewhere = tmp_path / "elsewhere"
    shutil.move(run / "checkpoints", elsewhere)
    os.symlink(elsewhere, run / "checkpoints")
    with pytest.raises(LinkRefused, match="checkpoints"):
        make_run_dir(run)


def test_an_eval_directory_link_is_refused_by_evaluate(run, tmp_path, repo):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, run / "eval")
    (tmp_path / "src.txt").write_text("Je suis fatigué.\n")
    (tmp_path / "ref.txt").write_text("I am tired.\n")
    proc = nmt("evaluate", run, "--src", tmp_path / "src.txt", "--ref", tmp_path / "ref.txt", "--greedy",
               "--checkpoint", "last")
    assert proc.returncode == 2, proc.stderr
    assert "eval" in proc.stderr and "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert list(outside.iterdir()) == []

"""A run directory under faults: crashes between checkpoint files, two writers, a full disk, stale
tokenizers, a user's own recipe.yaml in the way, file permissions."""
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nmt.config import load_recipe
from nmt.errors import CheckpointError, DataError, NmtError
from nmt.inference.checkpoint import checkpoint_path, load_run

REPO = Path(__file__).resolve().parent.parent
FAST = ["model.embedding_dim=16", "model.encoder.hidden_size=16", "model.decoder.hidden_size=16",
        "train.plot_sentences=0", "train.valid_max_sentences=4", "tokenizer.src_vocab_size=80",
        "tokenizer.tgt_vocab_size=80", "train.log_every=2"]
ENV = {**os.environ, "NMT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def tiny(*overrides):
    return load_recipe(REPO / "recipes/tiny.yaml", FAST + list(overrides))


def train_cmd(run, *overrides, resume=False):
    sets = sum((["--set", o] for o in FAST + list(overrides)), [])
    return [sys.executable, "-m", "nmt", "train", str(REPO / "recipes/tiny.yaml"), "--run-dir", str(run),
            *sets, *(["--resume"] if resume else [])]


def wait_for(path: Path, proc=None, timeout: float = 180.0) -> None:
    start = time.time()
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{path} did not appear; the process ended with {proc.returncode}")
        if time.time() - start > timeout:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def assert_same_weights(a_run, b_run):
    a, b = load_file(checkpoint_path(a_run, "last")), load_file(checkpoint_path(b_run, "last"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def metrics_lines(run):
    data = (run / "metrics.jsonl").read_bytes()
    assert data.endswith(b"\n"), "metrics.jsonl ends with a complete line"
    return [json.loads(line) for line in data.decode().splitlines()]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from nmt.training.trainer import train

    run = tmp_path_factory.mktemp("safety") / "run"
    train(tiny("train.max_steps=4", "train.valid_every=4"), run_dir=run)
    return run


# --------------------------------------------------------------- item: the checkpoint pair

class _Crash(BaseException):
    """Stands for the process dying: nothing catches it."""


@pytest.mark.slow
def test_a_crash_between_the_two_checkpoint_files_resumes_from_the_previous_pair(tmp_path, monkeypatch):
    import nmt.inference.checkpoint as checkpoint_module
    import nmt.training.checkpoints as training_checkpoints
    from nmt.training.trainer import train

    args = ["train.max_steps=8", "train.valid_every=4", "model.dropout=0.3"]
    full, run = tmp_path / "full", tmp_path / "run"
    train(tiny(*args), run_dir=full)
    train(tiny("train.max_steps=4", "train.valid_every=4", "model.dropout=0.3"), run_dir=run)
    step4 = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}

    # the trainer state of step 8 is written, then the process dies before the weights are
    original = checkpoint_module.save_weights

    def dies_at_last_weights(model, path, metadata=None):
        if not Path(path).name.startswith("best"):
            raise _Crash()
        return original(model, path, metadata)

    for module in (checkpoint_module, training_checkpoints):
        if hasattr(module, "save_weights"):
            monkeypatch.setattr(module, "save_weights", dies_at_last_weights)
    with pytest.raises(_Crash):
        train(tiny(*args), run_dir=run, resume=True)
    monkeypatch.undo()

    # --resume continues from the complete pair of step 4 and ends where the uninterrupted run did
    summary = train(tiny(*args), run_dir=run, resume=True)
    assert summary["steps"] == 8
    assert_same_weights(full, run)
    assert [r["step"] for r in metrics_lines(run)] == [r["step"] for r in metrics_lines(full)], \
        "records of the steps trained again are not kept twice"

    # a pointer whose pair cannot be read: the newest older complete pair is used instead
    for name, data in step4.items():
        if name.startswith("step"):
            (run / "checkpoints" / name).write_bytes(data)
    newest = run / "checkpoints" / "step00000008.state.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    summary = train(tiny(*args), run_dir=run, resume=True)
    assert summary["steps"] == 8
    assert_same_weights(full, run)


def test_checkpoint_last_reads_the_pair_last_json_names(trained_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    assert checkpoint_path(run, "last") == run / "checkpoints/step00000004.safetensors"
    # an orphan newer weights file (its write was never acknowledged by last.json) is not used
    shutil.copy(run / "checkpoints/step00000004.safetensors", run / "checkpoints/step00000008.safetensors")
    assert checkpoint_path(run, "last") == run / "checkpoints/step00000004.safetensors"
    _, _, _, meta = load_run(run, "last")
    assert meta["step"] == 4


def test_a_run_written_with_the_single_pair_layout_resumes(trained_run, tmp_path):
    """Runs trained before checkpoints were step-numbered: last.safetensors + last.state.pt."""
    from nmt.training.trainer import train

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    ckpt = run / "checkpoints"
    (ckpt / "step00000004.safetensors").rename(ckpt / "last.safetensors")
    (ckpt / "step00000004.state.pt").rename(ckpt / "last.state.pt")
    meta = json.loads((ckpt / "last.json").read_text())
    (ckpt / "last.json").write_text(json.dumps({k: meta[k] for k in ("step", "tokens", "best_metric", "best_step")}))
    (run / "spm.json").unlink()
    assert checkpoint_path(run, "last") == ckpt / "last.safetensors"
    assert train(tiny("train.max_steps=6", "train.valid_every=4"), run_dir=run, resume=True)["steps"] == 6
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith(("last", "step"))) == [
        "last.json", "step00000006.safetensors", "step00000006.state.pt"]


# ------------------------------------------------------------------ item: one writer per run

@pytest.mark.slow
def test_a_second_training_into_a_running_run_directory_exits_2_naming_the_pid(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(train_cmd(run, "train.max_steps=100000", "train.valid_every=4"), env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(run / "checkpoints" / "last.json", first)  # running, with a checkpoint to resume from
        for resume in (True, False):
            second = subprocess.run(train_cmd(run, "train.max_steps=100000", resume=resume), env=ENV,
                                    capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr[-2000:]
            assert f"process {first.pid}" in second.stderr and "in use" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first training was left alone"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM
    assert not (run / "train.lock").exists(), "the lock is released at the end"


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    from nmt.training.lock import LOCK_FILE, RunLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with caplog.at_level("WARNING", logger="nmt.train"):
        with RunLock(tmp_path):
            owner = json.loads((tmp_path / LOCK_FILE).read_text())
            assert owner["pid"] == os.getpid()
            with pytest.raises(NmtError, match=f"process {os.getpid()}"):
                RunLock(tmp_path).acquire()  # a second writer, even in the same process
    assert f"taking over the lock of process {dead.pid}" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _gone(pid: int, timeout: float) -> bool:
    start = time.time()
    while time.time() - start < timeout:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return True
        if fields[0] == "Z":  # ended, waiting to be reaped
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_to_a_sweep_stops_its_training_processes(tmp_path):
    out = tmp_path / "sweep"
    sets = sum((["--set", o] for o in FAST + ["train.valid_every=4"]), [])
    sweep = subprocess.Popen([sys.executable, "-m", "nmt", "sweep", str(REPO / "recipes/tiny.yaml"), *sets,
                              "--grid", "model.activation=relu", "--steps", "100000", "--out-dir", str(out)],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = []
    try:
        wait_for(out / "runs" / "activation=relu-seed1" / "metrics.jsonl", sweep)  # training under way
        children = _children_of(sweep.pid)
        assert children, "the sweep runs nmt train in a child process"
        sweep.send_signal(signal.SIGTERM)
        _, err = sweep.communicate(timeout=300)
        assert sweep.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert "SIGTERM" in err and "Traceback" not in err, err[-2000:]
        assert all(_gone(pid, 10) for pid in children), "no training outlives the sweep"
        summary = json.loads((out / "runs" / "activation=relu-seed1" / "train_summary.json").read_text())
        assert summary["stopped"] == "signal SIGTERM", "the training wrote its checkpoint and stopped"
    finally:
        for pid in children:  # an orphan of an unfixed sweep must not keep the machine busy
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()


# ----------------------------------------------------------------------- item: tokenizers

def test_tokenizers_left_by_another_attempt_are_retrained_or_refused(trained_run, tmp_path):
    import datasets

    from nmt.data.corpus import load_corpus
    from nmt.data.tokenizer import SubwordTokenizers

    recipe = tiny()
    train_ds = load_corpus(recipe.data, splits=("train",))["train"]
    run = tmp_path / "run"
    run.mkdir()
    for name in ("spm.src.model", "spm.tgt.model", "spm.json"):
        shutil.copy(trained_run / name, run / name)
    same = SubwordTokenizers.load_or_train(recipe.tokenizer, train_ds, run)
    assert same.src_vocab_size == 80 and (run / "spm.src.model").read_bytes() == \
        (trained_run / "spm.src.model").read_bytes(), "the same settings and data: reused"

    other_size = tiny("tokenizer.src_vocab_size=70", "tokenizer.tgt_vocab_size=70").tokenizer
    with pytest.raises(CheckpointError, match="tokenizer.src_vocab_size 80"):
        SubwordTokenizers.load_or_train(other_size, train_ds, run, resume=True)
    assert SubwordTokenizers.load_or_train(other_size, train_ds, run).src_vocab_size == 70

    other_data = datasets.Dataset.from_dict({"src": list(reversed(train_ds["src"])),
                                             "tgt": list(reversed(train_ds["tgt"]))})
    with pytest.raises(CheckpointError, match="other training data"):
        SubwordTokenizers.load_or_train(other_size, other_data, run, resume=True)
    before = (run / "spm.json").read_text()
    SubwordTokenizers.load_or_train(other_size, other_data, run)
    assert (run / "spm.json").read_text() != before, "retrained on the other corpus"

    (run / "spm.json").unlink()  # models of unknown origin
    SubwordTokenizers.load_or_train(recipe.tokenizer, train_ds, run)
    assert (run / "spm.src.model").read_bytes() == (trained_run / "spm.src.model").read_bytes()


def test_a_checkpoint_refuses_swapped_tokenizer_models(trained_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    src, tgt = (run / "spm.src.model").read_bytes(), (run / "spm.tgt.model").read_bytes()
    (run / "spm.src.model").write_bytes(tgt)  # same vocabulary size: the weights would fit
    (run / "spm.tgt.model").write_bytes(src)
    with pytest.raises(CheckpointError, match="spm.src.model is not the tokenizer model"):
        load_run(run, "best")
    with pytest.raises(CheckpointError, match="different files"):
        from nmt.training.trainer import train
        train(tiny("train.max_steps=6", "train.valid_every=4"), run_dir=run, resume=True)


# -------------------------------------------------------------------- item: recipe.yaml

def test_a_users_own_recipe_yaml_in_the_run_directory_is_never_replaced(tmp_path):
    text = (REPO / "recipes/tiny.yaml").read_text().replace("../data/tiny", "${TINY_DATA}/tiny")
    (tmp_path / "recipe.yaml").write_text("# my own recipe\n" + text)
    sets = sum((["--set", o] for o in FAST + ["train.max_steps=2"]), [])
    proc = subprocess.run([sys.executable, "-m", "nmt", "train", "recipe.yaml", "--run-dir", ".", *sets],
                          cwd=tmp_path, env={**ENV, "TINY_DATA": str(REPO / "data")}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "recipe.yaml is not a recipe `nmt train` wrote" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "recipe.yaml").read_text() == "# my own recipe\n" + text
    assert not (tmp_path / "spm.src.model").exists(), "refused before any work"


def test_the_written_recipe_is_marked_and_loads(trained_run):
    text = (trained_run / "recipe.yaml").read_text()
    assert text.startswith("# written by `nmt train`")
    recipe, *_ = load_run(trained_run, "best")
    assert recipe.train.max_steps == 4


# -------------------------------------------------------------------------- item: full disk

def test_append_line_never_leaves_a_partial_line(tmp_path, monkeypatch):
    import nmt.atomic as atomic
    from nmt.atomic import append_line

    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"step": 1}')
    real_write = os.write

    def half_then_full(fd, data):  # what a file system with a few bytes left does
        return real_write(fd, bytes(data)[: len(data) // 2])

    monkeypatch.setattr(atomic.os, "write", half_then_full)
    with pytest.raises(OSError) as err:
        append_line(path, '{"step": 2, "loss": 1.5}')
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b'{"step": 1}\n'


def test_a_full_disk_while_writing_a_checkpoint_is_an_oserror(tmp_path, monkeypatch):
    """Both serialisers report a full disk in their own way; the loop needs an OSError to explain it."""
    import safetensors.torch

    import nmt.inference.checkpoint as checkpoint_module

    def full(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                          "(os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    with pytest.raises(OSError) as err:
        checkpoint_module.save_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors", {"step": 1})
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == [], "no temporary file left"


def test_truncate_metrics_keeps_complete_records_up_to_the_checkpoint(tmp_path):
    from nmt.training.checkpoints import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 2}\n{"kind": "valid", "step": 4}\n'
                    '{"kind": "train", "step": 6}\n{"kind": "tra')
    truncate_metrics(path, 6)
    assert path.read_text() == '{"kind": "train", "step": 2}\n{"kind": "valid", "step": 4}\n' \
                               '{"kind": "train", "step": 6}\n'
    truncate_metrics(path, 4)
    assert path.read_text() == '{"kind": "train", "step": 2}\n{"kind": "valid", "step": 4}\n'


def test_sweep_reads_a_corrupt_metrics_record_as_a_clear_error(tmp_path):
    from nmt.tools.sweep import _summarise_run

    (tmp_path / "train_summary.json").write_text(json.dumps({"steps": 4, "train_tokens_per_s": 1.0}))
    (tmp_path / "metrics.jsonl").write_text('{"kind": "valid", "step": 2, "loss": 1.0}\n{"kind": "val\n'
                                            '{"kind": "valid", "step": 4, "loss": 0.5}\n')
    with pytest.raises(DataError, match="metrics.jsonl, line 2"):
        _summarise_run({"name": "x", "point": {}, "seed": 1}, tmp_path)


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A tmpfs under tmp_path (root only): a disk that really fills up. 300 MiB: training checks
    for 256 MiB free before it starts; the test fills it once the first checkpoint is written."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_disk_filling_up_during_training_stops_cleanly_and_resume_continues(tiny_filesystem):
    run = tiny_filesystem / "run"
    args = ["train.max_steps=100000", "train.valid_every=4", "train.log_every=1"]
    proc = subprocess.Popen(train_cmd(run, *args), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    filler = tiny_filesystem / "filler"
    try:
        wait_for(run / "checkpoints" / "last.json", proc)
        with open(filler, "wb") as handle:  # take every byte that is left
            free = os.statvfs(tiny_filesystem)
            try:
                os.posix_fallocate(handle.fileno(), 0, max(1, free.f_bavail * free.f_frsize - 2**16))
            except OSError:  # training took some of it meanwhile: the writes below take the rest
                pass
            handle.seek(0, os.SEEK_END)
            try:
                while True:
                    os.write(handle.fileno(), b"\0" * 512)
            except OSError:
                pass
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err[-3000:]
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err, err[-3000:]
    records = metrics_lines(run)  # every line complete
    filler.unlink()
    step = json.loads((run / "checkpoints/last.json").read_text())["step"]
    resumed = subprocess.run(train_cmd(run, *args[1:], f"train.max_steps={step + 2}", resume=True), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [r["step"] for r in metrics_lines(run) if r["kind"] == "train"]
    assert steps == list(range(1, step + 3)), "no record lost, none twice"
    assert len(records) >= step


# ------------------------------------------------------------------------- small items

def test_n_best_0_is_an_error(trained_run, capsys):
    from nmt.cli import main

    source = trained_run.parent / "in.fr"
    source.write_text("Bonjour.\n")
    assert main(["translate", str(trained_run), "-i", str(source), "--n-best", "0"]) == 2
    err = capsys.readouterr().err
    assert "--n-best" in err and "must be >= 1" in err


def test_files_of_a_run_directory_are_readable_by_the_group_and_others(tmp_path):
    from nmt.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        (tmp_path / "a.txt").chmod(0o640)
        atomic_write_text(tmp_path / "a.txt", "y")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640, "a replaced file keeps its mode"
    finally:
        os.umask(old)


def test_every_file_of_a_trained_run_is_readable_by_others(trained_run):
    umask = os.umask(0o022)
    os.umask(umask)
    if umask & 0o044:
        pytest.skip("this umask keeps files private")
    for path in trained_run.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path


def test_what_a_path_is_when_it_is_not_the_expected_kind(trained_run, tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a directory"):
        load_run(a_file, "best")
    with pytest.raises(CheckpointError, match="is a directory, not a weights file"):
        load_run(trained_run, str(trained_run / "checkpoints"))
    from nmt.training.trainer import train
    with pytest.raises(NmtError, match="is a file, not a directory"):
        train(tiny(), run_dir=a_file)


def test_resume_with_changed_settings_says_so_and_keeps_the_previous_recipe(trained_run, tmp_path):
    from nmt.training.trainer import train

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "recipe.yaml").read_bytes()
    train(tiny("train.max_steps=6", "train.valid_every=4", "train.lr=0.02"), run_dir=run, resume=True)
    assert (run / "recipe.prev-1.yaml").read_bytes() == before
    assert "lr: 0.02" in (run / "recipe.yaml").read_text()
    log = (run / "train.log").read_text()
    assert "--resume with changed settings" in log and "train.lr: 0.01 -> 0.02" in log
    assert "train.max_steps: 4 -> 6" in log and "recipe.prev-1.yaml" in log
    # resuming again with the same recipe changes nothing and keeps no copy
    train(tiny("train.max_steps=6", "train.valid_every=4", "train.lr=0.02"), run_dir=run, resume=True)
    assert not (run / "recipe.prev-2.yaml").exists()

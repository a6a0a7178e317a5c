"""Training on several nodes (torchrun, c10d rendezvous on loopback, gloo): the same weights as one
node, a non-zero node that never touches the run directory, a lost node that ends the job with a
message, and exact resume at two processes (refused at another count)."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, free_port
from safetensors.torch import load_file

from nmt.inference.checkpoint import checkpoint_path
from nmt.training.lock import lock_holder

pytestmark = pytest.mark.slow

RECIPE = str(REPO / "recipes/tiny.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NMT_NO_PROGRESS": "1", "PYTHONPATH": os.pathsep.join(
    [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def sets(*overrides: str) -> list[str]:
    """``--set`` options: the fast tiny model, 300 target tokens per process and batch, ``overrides``."""
    return sum((["--set", o] for o in FAST + ["train.batch_tokens=300", *overrides]), [])


def one_node(run: Path, *options: str, processes: int = 2) -> subprocess.CompletedProcess:
    """``nmt train`` on one node: ``processes`` torchrun processes, or a plain process for 1."""
    launch = TORCHRUN + ["--standalone", "--nproc_per_node", str(processes), "-m"] if processes > 1 \
        else [sys.executable, "-m"]
    return subprocess.run(launch + ["nmt", "train", RECIPE, "--run-dir", str(run), *options], env=ENV,
                          capture_output=True, text=True, timeout=180)


def node_command(port: int, rank: int, run: Path, *options: str) -> list[str]:
    return TORCHRUN + ["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank), "--rdzv-backend",
                       "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "nmt", "train", RECIPE,
                       "--run-dir", str(run), *options]


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has ended
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def two_nodes(tmp_path: Path, runs: tuple[Path, Path], *options: str):
    """Node 0 and node 1 started (each a torchrun with one process); yields ``(processes, logs)``.
    Whatever still runs at the end is killed, workers first."""
    port = free_port()
    logs = [tmp_path / f"node{rank}-{port}.log" for rank in (0, 1)]
    procs = []
    try:
        for rank in (0, 1):
            with open(logs[rank], "wb") as out:
                procs.append(subprocess.Popen(node_command(port, rank, runs[rank], *options), env=ENV,
                                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        yield procs, logs
    finally:
        for proc in procs:
            if proc.poll() is None:
                for pid in children(proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                        os.kill(pid, signal.SIGKILL)
                proc.kill()
            proc.wait(timeout=30)


def finished(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc in procs]


def wait_for_checkpoint(run: Path, procs, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "checkpoints/last.json").is_file():
        assert all(p.poll() is None for p in procs), "a node ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.1)


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(checkpoint_path(a, "last")), load_file(checkpoint_path(b, "last"))
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), key


#: a few updates with validation decoding over the shortlist (the lexicon is sent to every process)
FEW_UPDATES = sets("train.max_steps=6", "train.valid_every=3", "decode.shortlist=3")


@pytest.fixture(scope="module")
def one_node_run(tmp_path_factory) -> Path:
    """:data:`FEW_UPDATES` trained by one node with two processes."""
    run = tmp_path_factory.mktemp("one-node") / "run"
    proc = one_node(run, *FEW_UPDATES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_two_nodes_train_the_weights_of_one_node_with_two_processes(tmp_path, one_node_run):
    """Both nodes given one run directory on a shared file system: one writer, the lock released."""
    shared = tmp_path / "shared"
    with two_nodes(tmp_path, (shared, shared), *FEW_UPDATES) as (procs, logs):
        assert finished(procs, 180) == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    assert_same_weights(one_node_run, shared)
    assert not (shared / "train.lock").exists()


def test_a_node_without_the_run_directory_trains_the_same_weights(tmp_path, one_node_run):
    """One run directory per node, as without a shared file system: the node of rank 0 writes its
    own, the other creates nothing (it receives the tokenizers and the lexicon)."""
    apart = (tmp_path / "node0", tmp_path / "node1")
    with two_nodes(tmp_path, apart, *FEW_UPDATES) as (procs, logs):
        assert finished(procs, 180) == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    written = [run for run in apart if run.exists()]
    assert len(written) == 1, "only the node of rank 0 creates its run directory"
    assert_same_weights(one_node_run, written[0])


def test_accelerate_launch_on_two_machines_trains_the_weights_of_one_node(tmp_path, one_node_run):
    """``accelerate launch --multi_gpu --num_machines 2`` runs torchrun underneath, which works on
    CPUs too (``--cpu`` would start one independent process per machine unless mpirun runs it)."""
    run, port = tmp_path / "run", free_port()
    procs, logs = [], [tmp_path / f"machine{rank}.log" for rank in (0, 1)]
    try:
        for rank in (0, 1):
            with open(logs[rank], "wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                     "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                     "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
                     "-m", "nmt", "train", RECIPE, "--run-dir", str(run), *FEW_UPDATES],
                    env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        assert finished(procs, 180) == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    assert_same_weights(one_node_run, run)


#: dropout high enough that every process's random draws shape the weights
RESUMED = ("model.dropout=0.3", "train.valid_every=6")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """Two processes stopped mid-epoch (step 6 of 15 batches per epoch and process)."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    proc = one_node(run, *sets("train.max_steps=6", *RESUMED))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_two_processes_resume_mid_epoch_to_the_uninterrupted_weights(tmp_path, interrupted_run):
    """Dropout draws differ between the processes: each one's random state is checkpointed."""
    full, part = tmp_path / "full", tmp_path / "part"
    shutil.copytree(interrupted_run, part)
    proc = one_node(full, *sets("train.max_steps=12", *RESUMED))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = one_node(part, "--resume", *sets("train.max_steps=12", *RESUMED))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((part / "train_summary.json").read_text())["steps"] == 12
    assert_same_weights(full, part)


def test_resuming_with_another_number_of_processes_is_refused(tmp_path, interrupted_run):
    """Exit 2 and one message naming the saved and the current count; nothing trained."""
    part = tmp_path / "part"
    shutil.copytree(interrupted_run, part)
    proc = one_node(part, "--resume", *sets("train.max_steps=12", *RESUMED), processes=1)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "trained by 2 process(es), this launch has 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((part / "checkpoints/last.json").read_text())["step"] == 6


def test_a_killed_node_ends_the_job_with_a_message_and_the_run_resumes(tmp_path):
    """kill -9 of one node's worker: the other node stops within seconds with an error naming
    the lost process and --resume (no traceback, no process left, the lock released); both nodes
    then continue the run from its last checkpoint."""
    run = tmp_path / "run"
    options = sets("train.max_steps=2000", "train.valid_every=10")
    with two_nodes(tmp_path, (run, run), *options) as (procs, logs):
        wait_for_checkpoint(run, procs)
        workers = [pid for proc in procs for pid in children(proc.pid)]
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        start = time.monotonic()
        codes = finished(procs, 60)
        assert time.monotonic() - start < 60
    assert codes[0] != 0 and codes[1] != 0
    survivor = logs[0].read_text()
    assert "distributed training stopped on rank" in survivor and "--resume" in survivor, survivor[-3000:]
    assert "nmt/training/" not in survivor, "a message, not a traceback"
    assert not any(alive(pid) for pid in workers), "no worker outlives the job"
    assert lock_holder(run) is None

    step = json.loads((run / "checkpoints/last.json").read_text())["step"]
    with two_nodes(tmp_path, (run, run), "--resume", *sets(f"train.max_steps={step + 4}",
                                                           "train.valid_every=10")) as (procs, logs):
        assert finished(procs, 180) == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    assert json.loads((run / "train_summary.json").read_text())["steps"] == step + 4


def test_a_node_that_stops_answering_ends_the_job_after_dist_timeout(tmp_path):
    """A hung process (SIGSTOP) is not waited for longer than train.dist_timeout."""
    run = tmp_path / "run"
    options = sets("train.max_steps=2000", "train.valid_every=10", "train.dist_timeout=10")
    with two_nodes(tmp_path, (run, run), *options) as (procs, logs):
        wait_for_checkpoint(run, procs)
        workers = [pid for proc in procs for pid in children(proc.pid)]
        os.kill(workers[1], signal.SIGSTOP)
        start = time.monotonic()
        assert procs[0].wait(timeout=60) != 0
        assert time.monotonic() - start < 50
    survivor = logs[0].read_text()
    assert "train.dist_timeout=10 s" in survivor, survivor[-3000:]
    assert lock_holder(run) is None


def test_a_terminated_node_stops_the_job_at_one_step_with_a_checkpoint(tmp_path):
    """SIGTERM to one node's torchrun: its worker tells the other processes in the next update,
    and all of them write the checkpoint of the same step and end (no collective left waiting)."""
    run = tmp_path / "run"
    options = sets("train.max_steps=2000", "train.valid_every=10")
    with two_nodes(tmp_path, (run, run), *options) as (procs, logs):
        wait_for_checkpoint(run, procs)
        procs[1].send_signal(signal.SIGTERM)
        finished(procs, 60)
    assert "(received by another process)" in logs[0].read_text() + logs[1].read_text()
    assert "nmt/training/" not in logs[0].read_text() + logs[1].read_text(), "no traceback"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stopped"].startswith("signal"), summary
    assert json.loads((run / "checkpoints/last.json").read_text())["step"] == summary["steps"]
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]

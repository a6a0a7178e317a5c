"""Speed under load: ``train.num_threads: auto`` (nmt.training.threads) and the busy processes of
``nmt bench ... --beside-busy K`` (nmt.tools.bench.BusyProcesses)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nmt.errors import ConfigError, NmtError
from nmt.tools.bench import BusyProcesses
from nmt.training import threads

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the thread choice

def test_auto_uses_the_cpus_other_work_leaves_free():
    assert threads.choose("auto", busy=0.0, cpus=2, default_threads=2) == 2
    assert threads.choose("auto", busy=0.3, cpus=2, default_threads=2) == 2  # noise is not a process
    assert threads.choose("auto", busy=1.0, cpus=2, default_threads=2) == 1
    assert threads.choose("auto", busy=0.6, cpus=2, default_threads=2) == 1
    assert threads.choose("auto", busy=7.0, cpus=2, default_threads=2) == 1  # never 0
    assert threads.choose("auto", busy=1.0, cpus=16, default_threads=8) == 8  # at most torch's default
    assert threads.choose("auto", busy=None, cpus=2, default_threads=2) is None  # unknown: torch decides
    assert threads.choose(3, busy=1.0, cpus=2, default_threads=2) == 3  # a number is kept
    assert threads.choose(None, busy=1.0, cpus=2, default_threads=2) is None


class FakeStat:
    """/proc/stat read twice: before and after the sampling interval."""

    def __init__(self, *texts: str):
        self.texts = list(texts)

    def read_text(self) -> str:
        return self.texts.pop(0)


def test_busy_cpus_is_the_non_idle_share_of_this_process_cpus():
    mine = sorted(os.sched_getaffinity(0))[:2]
    other = max(os.sched_getaffinity(0)) + 1  # not ours: ignored
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = "\n".join(["cpu  1 1 1 1 1 1 1 1 0 0"] + [f"cpu{c} 100 0 0 100 0 0 0 0 50 0" for c in mine]
                       + [f"cpu{other} 0 0 0 0 0 0 0 0 0 0", "intr 1 2 3"])
    # over the interval: the first CPU 90 of 100 jiffies busy (guest time inside user), the second
    # 10 busy and 5 waiting for I/O (idle); the foreign CPU fully busy
    after_rows = [f"cpu{mine[0]} 180 0 10 110 0 0 0 0 90 0"]
    if len(mine) > 1:
        after_rows.append(f"cpu{mine[1]} 105 0 5 185 5 0 0 0 50 0")
    after = "\n".join(["cpu  9 9 9 9 9 9 9 9 0 0"] + after_rows + [f"cpu{other} 500 0 0 0 0 0 0 0 0 0"])
    got = threads.busy_cpus(0.0, stat=FakeStat(before, after))
    expected = 0.9 if len(mine) == 1 else 2 * (90 + 10) / 200
    assert got == pytest.approx(expected)


def _prepare_in_a_fresh_process(busy: float, env_extra: dict[str, str]) -> dict:
    """prepare('auto') with ``busy`` CPUs seen, in a Python that has not loaded torch."""
    code = ("import json, os, sys\n"
            "import nmt.training.threads as t\n"
            f"t.busy_cpus = lambda seconds: {busy}\n"
            "choice = t.prepare('auto')\n"
            "print(json.dumps([choice.as_dict(), os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env={**env, **env_extra}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    choice, policy, torch_loaded = json.loads(out.stdout)
    assert not torch_loaded
    return {"choice": choice, "policy": policy}


def test_auto_waits_passively_beside_other_work_unless_told_otherwise():
    busy = _prepare_in_a_fresh_process(1.0, {})
    assert busy["policy"] == "PASSIVE" and busy["choice"]["wait_policy"] == "PASSIVE"
    assert busy["choice"]["busy_cpus"] == 1.0 and "PASSIVE" in busy["choice"]["note"]
    quiet = _prepare_in_a_fresh_process(0.1, {})
    assert quiet["policy"] is None and quiet["choice"]["wait_policy"] is None
    told = _prepare_in_a_fresh_process(1.0, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert told["policy"] == "ACTIVE" and told["choice"]["wait_policy"] is None
    assert "left as set (ACTIVE)" in told["choice"]["note"]


def test_auto_after_torch_is_loaded_chooses_threads_only(monkeypatch):
    import torch  # noqa: F401  (loaded, as through the Python API)

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(threads, "_CHOICE", {})
    monkeypatch.setattr(threads, "busy_cpus", lambda seconds: 50.0)
    choice = threads.prepare("auto")
    assert choice.threads == 1 and choice.wait_policy is None and "OMP_WAIT_POLICY" not in os.environ
    assert "torch was loaded before" in choice.note
    assert threads.prepare("auto") is choice  # decided once per process


def test_num_threads_setting_is_checked(tiny_recipe):
    from nmt.config import load_recipe

    assert load_recipe(REPO / "recipes/fr-en.yaml").train.num_threads == "auto", "the default"
    assert tiny_recipe("train.num_threads=null").train.num_threads is None  # torch's own choice
    assert tiny_recipe("train.num_threads=auto").train.num_threads == "auto"
    assert tiny_recipe("train.num_threads=2").train.num_threads == 2
    with pytest.raises(ConfigError, match="train.num_threads"):
        tiny_recipe("train.num_threads=fast")
    with pytest.raises(ConfigError, match="train.num_threads"):
        tiny_recipe("train.num_threads=0")


# ----------------------------------------------------------------------------- busy processes

def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_busy_processes_burn_cpu_and_are_stopped_in_all_cases():
    with BusyProcesses(2) as busy:
        pids = [p.pid for p in busy.procs]
        time.sleep(0.5)
        assert all(_alive(pid) for pid in pids)
        assert sum(_cpu_seconds(pid) for pid in pids) > 0.05
    assert not any(_alive(pid) for pid in pids)
    report = busy.report()
    assert report["busy_kind"] == "spin" and len(report["busy_cpu_share"]) == 2
    assert all(share is not None and share > 0 for share in report["busy_cpu_share"])

    with pytest.raises(RuntimeError, match="the measurement failed"):
        with BusyProcesses(1) as busy:
            pids = [p.pid for p in busy.procs]
            raise RuntimeError("the measurement failed")
    assert not any(_alive(pid) for pid in pids)
    assert BusyProcesses(0).report() == {}
    with pytest.raises(NmtError, match="--beside-busy"):
        BusyProcesses(-1)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_busy_processes_end_when_the_benchmark_is_killed():
    """A benchmark killed outright (no finally runs) leaves no busy process behind."""
    code = ("import os\n"
            "from nmt.tools.bench import BusyProcesses\n"
            "busy = BusyProcesses(1).__enter__()\n"
            "print(busy.procs[0].pid, flush=True)\n"
            "os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


@pytest.mark.slow
def test_bench_train_beside_a_busy_process_with_auto_threads(tmp_path, fast):
    """The whole route: the busy process runs before auto looks, auto sees it and sets the wait
    policy before torch loads, the JSON records all of it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "WORLD_SIZE")}
    overrides = [arg for o in fast + ["train.num_threads=auto"] for arg in ("--set", o)]
    out = subprocess.run([sys.executable, "-m", "nmt", "bench", "train", str(REPO / "recipes/tiny.yaml"),
                          "--steps", "2", "--warmup", "1", "--beside-busy", "1", "--json", *overrides],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["beside_busy"] == 1 and result["busy_kind"] == "spin"
    assert result["busy_cpu_share"][0] > 0
    choice = result["num_threads"]
    assert choice["setting"] == "auto" and choice["busy_cpus"] >= 0.5  # the busy process was seen
    assert choice["wait_policy"] == "PASSIVE" and result["machine"]["omp_wait_policy"] == "PASSIVE"
    assert result["machine"]["threads"] == choice["threads"]
    assert "train.num_threads auto:" in out.stderr


def test_auto_threads_follow_load_that_starts_and_ends(tmp_path):
    """During training the thread count follows the machine: the machine's busy time over a window,
    less this process's own CPU time, is other work (no sampling pause)."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    stat, tick = tmp_path / "stat", os.sysconf("SC_CLK_TCK")
    clock, own, busy_jiffies = [0.0], [0.0], [0.0]

    def write():  # all busy jiffies on the first CPU; 'user' field only
        rows = [f"cpu{c} {int(busy_jiffies[0]) if i == 0 else 0} 0 0 1000000 0 0 0 0 0 0"
                for i, c in enumerate(cpus)]
        stat.write_text("\n".join(["cpu  0 0 0 0 0 0 0 0 0 0", *rows]) + "\n")

    def window(seconds: float, own_cpu: float, others: float):
        clock[0] += seconds
        own[0] += own_cpu * seconds
        busy_jiffies[0] += (own_cpu + others) * seconds * tick
        write()

    write()
    follower = threads.ThreadFollower(2, cpus=2, default_threads=2, stat=stat, clock=lambda: clock[0],
                                      own_cpu_seconds=lambda: own[0])
    window(20, own_cpu=1.9, others=0.0)      # quiet: keep 2
    assert follower.observe() is None
    window(20, own_cpu=1.1, others=0.9)      # another process took a CPU: 1 thread
    assert follower.observe() == 1 and follower.current == 1
    assert follower.busy == pytest.approx(0.9)
    window(20, own_cpu=1.0, others=1.0)      # still busy: no change
    assert follower.observe() is None
    window(20, own_cpu=1.0, others=0.05)     # it ended: both threads again
    assert follower.observe() == 2
    window(0.1, own_cpu=1.0, others=2.0)     # too short a window to judge
    assert follower.observe() is None


def test_a_training_started_beside_busy_work_uses_every_thread_once_it_ends(tmp_path, monkeypatch):
    """The trainer's follower of a start-up choice of 1 thread (another process was busy): once
    the work ends, it goes back to torch's default, read before the 1 thread was applied."""
    import torch

    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs")
    stat, tick = tmp_path / "stat", os.sysconf("SC_CLK_TCK")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "busy_cpus", lambda seconds=0: 1.0)
    monkeypatch.setattr(threads, "_CHOICE", {})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        choice = threads.prepare("auto")
        assert choice.threads == 1 and choice.max_threads == 2
        torch.set_num_threads(choice.threads)  # what the trainer does with it
        clock, own, busy = [0.0], [0.0], [0]

        def write():
            stat.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + "".join(
                f"cpu{c} {busy[0] if i == 0 else 0} 0 0 1000000 0 0 0 0 0 0\n" for i, c in enumerate(cpus)))

        write()
        follower = threads.ThreadFollower.for_choice(choice, stat=stat, clock=lambda: clock[0],
                                                     own_cpu_seconds=lambda: own[0])
        clock[0], own[0], busy[0] = 20.0, 20.0, int(20 * 1.0 * tick)  # alone: own work only
        write()
        assert follower.observe() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_threads_follower_without_proc_stat_changes_nothing(tmp_path):
    follower = threads.ThreadFollower(2, cpus=2, default_threads=2, stat=tmp_path / "missing")
    assert follower.others_busy() is None and follower.observe() is None

"""CPU threads for training on a machine other work may be using (``train.num_threads: auto``).

On a CPU, torch runs each operation's parallel regions on its intra-op threads (one per physical
core by default) and waits at the end of each region for the slowest thread. When another
CPU-bound process holds a core, the thread that shares it runs a fraction of the time and every
region waits for it; meanwhile OpenMP's waiting threads spin (``OMP_WAIT_POLICY`` ACTIVE, the
default of GNU OpenMP for a while after each region) and take CPU time the other process would
have used. ``auto`` counts, at start-up, the CPUs that other processes keep busy and:

- uses one thread per CPU left free (at least one, at most torch's default);
- when it saw other work, asks OpenMP to wait passively (``OMP_WAIT_POLICY=PASSIVE``: waiting
  threads sleep instead of spinning), unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``.

OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads it, so the policy can only be chosen
before ``import torch``: ``nmt train`` and ``nmt bench train`` call :func:`prepare` first thing.
Through the Python API (torch already imported) ``auto`` chooses the thread count only.

During training, :class:`ThreadFollower` looks again at every ``train.log_every`` step: from the
machine's busy time over the window less this process's own CPU time (no sampling pause, so a quiet
machine loses nothing), it sees load that started or ended since, and changes the thread count
when the choice changes; each change is logged. The wait policy stays what start-up chose.
Nothing here imports torch.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: how long :func:`busy_cpus` watches the machine
SAMPLE_SECONDS = 0.5

__all__ = ["ThreadChoice", "ThreadFollower", "busy_cpus", "choose", "prepare", "usable_cpus"]


@dataclass
class ThreadChoice:
    setting: str | int | None  #: train.num_threads as given
    threads: int | None  #: the intra-op threads to use (None: torch's default)
    busy_cpus: float | None = None  #: CPUs other processes kept busy while sampled
    cpus: int | None = None  #: CPUs this process may run on
    wait_policy: str | None = None  #: OMP_WAIT_POLICY set by auto (None: left alone)
    note: str = ""  #: what was decided, for the log
    #: the most threads auto may use: torch's default, read before the choice was applied
    max_threads: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times(stat: Path, cpus: set[int] | None) -> tuple[float, float]:
    """(busy, total) jiffies summed over ``cpus`` (all when None) from a /proc/stat file."""
    busy = total = 0.0
    for line in stat.read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        fields = [float(x) for x in rest.split()]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        used = sum(fields[:8])  # guest time is already counted in user and nice
        busy += used - idle
        total += used
    return busy, total


def busy_cpus(seconds: float = SAMPLE_SECONDS, stat: Path = Path("/proc/stat")) -> float | None:
    """How many of this process's CPUs other processes kept busy over ``seconds`` (this process
    sleeps meanwhile): the non-idle share of their time in /proc/stat, times their number. On
    systems without /proc/stat: the 1-minute load average, capped at the CPU count (None when
    that is unknown too)."""
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    try:
        busy0, total0 = _cpu_times(stat, cpus)
        time.sleep(seconds)
        busy1, total1 = _cpu_times(stat, cpus)
    except (OSError, ValueError, IndexError):
        try:
            return min(os.getloadavg()[0], float(usable_cpus()))
        except (AttributeError, OSError):
            return None
    if total1 <= total0:
        return 0.0
    n = len(cpus) if cpus is not None else usable_cpus()
    return n * (busy1 - busy0) / (total1 - total0)


def choose(setting: str | int | None, busy: float | None, cpus: int, default_threads: int) -> int | None:
    """The intra-op threads for ``train.num_threads`` = ``setting``: an integer is kept, None
    keeps torch's default (returns None), ``auto`` gives one thread per CPU that ``busy`` leaves
    free (a CPU counts as busy from half its time), between 1 and ``default_threads``."""
    if setting != "auto":
        return setting if isinstance(setting, int) else None
    if busy is None:
        return None
    free = int(cpus - busy + 0.5)
    return max(1, min(default_threads, free))


def _default_threads(cpus: int) -> int:
    """torch's default intra-op threads when torch is loaded, else its rule: the physical cores
    (hyper-threads on Linux counted once), at most the usable CPUs."""
    torch = sys.modules.get("torch")
    if torch is not None and os.environ.get("OMP_NUM_THREADS") is None:
        return int(torch.get_num_threads())
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = set()
    try:
        for cpu in os.sched_getaffinity(0):
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
    except (AttributeError, OSError):
        return cpus
    return max(1, min(cpus, len(cores) or cpus))


_CHOICE: dict[str, ThreadChoice] = {}


def prepare(setting: str | int | None, *, seconds: float = SAMPLE_SECONDS) -> ThreadChoice:
    """Decide ``train.num_threads`` once per process (later calls return the first decision).

    For ``auto``: counts busy CPUs (:func:`busy_cpus`), chooses the threads (:func:`choose`)
    and, when other work was seen and torch is not loaded yet, sets ``OMP_WAIT_POLICY=PASSIVE``
    (unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set). The caller applies the threads
    with ``torch.set_num_threads``.
    """
    key = str(setting)
    if key in _CHOICE:
        return _CHOICE[key]
    if setting != "auto":
        choice = ThreadChoice(setting, choose(setting, None, 0, 0))
        _CHOICE[key] = choice
        return choice
    cpus = usable_cpus()
    busy = busy_cpus(seconds)
    most = _default_threads(cpus)
    threads = choose("auto", busy, cpus, most)
    choice = ThreadChoice("auto", threads, None if busy is None else round(busy, 2), cpus, max_threads=most)
    seen = f"{busy:.1f} of {cpus} CPUs busy with other work" if busy is not None else "CPU load unknown"
    if busy is not None and busy >= 0.5:
        if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
            policy = f"OMP_WAIT_POLICY left as set ({os.environ.get('OMP_WAIT_POLICY', 'unset')})"
        elif "torch" in sys.modules:
            policy = "OMP_WAIT_POLICY not changed (torch was loaded before: set it in the environment)"
        else:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            choice.wait_policy = "PASSIVE"
            policy = "OMP_WAIT_POLICY=PASSIVE"
    else:
        policy = "OpenMP wait policy unchanged"
    choice.note = (f"train.num_threads auto: {seen}; "
                   f"{'torch default threads' if threads is None else f'{threads} thread(s)'}, {policy}")
    _CHOICE[key] = choice
    return choice


class ThreadFollower:
    """Re-decides ``auto`` threads as the machine's load changes (see the module docstring).

    ``observe()`` is called at the end of each window (a ``train.log_every`` step); it returns the
    new thread count when it differs from ``current``, else None. ``set_threads`` applies it."""

    def __init__(self, current: int, cpus: int | None = None, default_threads: int | None = None,
                 stat: Path = Path("/proc/stat"), clock=time.monotonic, own_cpu_seconds=None):
        self.current = current
        self.cpus = cpus or usable_cpus()
        self.default_threads = default_threads or _default_threads(self.cpus)
        self.stat, self.clock = stat, clock
        self.own_cpu_seconds = own_cpu_seconds or (lambda: sum(os.times()[:2]))
        try:
            self.affinity: set[int] | None = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.affinity = None
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.busy: float | None = None  #: other work's CPUs in the window that changed the choice
        self._last = self._sample()

    @classmethod
    def for_choice(cls, choice: ThreadChoice, **kwargs) -> "ThreadFollower":
        """The follower of a start-up ``auto`` choice. Its ceiling is the one read at start-up:
        once the choice is applied, torch's thread count is the choice, not the default."""
        return cls(choice.threads, choice.cpus, choice.max_threads, **kwargs)

    def _sample(self) -> tuple[float, float, float] | None:
        """(machine busy CPU-seconds, own CPU-seconds, wall seconds), or None without /proc/stat."""
        try:
            busy, _ = _cpu_times(self.stat, self.affinity)
        except (OSError, ValueError, IndexError):
            return None
        return busy / self.tick, self.own_cpu_seconds(), self.clock()

    def others_busy(self) -> float | None:
        """CPUs that other processes kept busy since the last call (None when unknown)."""
        now, last = self._sample(), self._last
        self._last = now
        if now is None or last is None or now[2] - last[2] <= 0.5:
            return None
        busy = (now[0] - last[0]) - (now[1] - last[1])
        return min(float(self.cpus), max(0.0, busy / (now[2] - last[2])))

    def observe(self) -> int | None:
        busy = self.others_busy()
        if busy is None:
            return None
        threads = choose("auto", busy, self.cpus, self.default_threads)
        if threads == self.current:
            return None
        self.busy, self.current = busy, threads
        return threads

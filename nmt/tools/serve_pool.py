"""Where ``nmt serve`` runs its model calls: a thread of the HTTP process (:class:`ModelThread`,
``--workers 0``) or model worker processes (:class:`WorkerPool`, ``--workers N``).

Both offer the same steps to the batcher (:mod:`nmt.tools.serve_batcher`): ``start()``,
``acquire()`` (wait for a runner with room for a call, idle ones first, and reserve it; None when
none is left), ``in_flight(runner)`` (its calls under way or queued, the reservation included),
``changed()`` (wait until a call ends or a worker comes or goes), ``run(runner, groups)`` (one
batch, see :mod:`nmt.tools.serve_worker`) and ``release(runner)``. The thread runs one call at a
time. A worker process takes a second call into its pipe while it computes one (``depth`` 2):
the next batch is then ready the moment the current one ends, instead of the worker waiting while
the HTTP process answers the finished batch's requests and reads their clients' next ones (with
many concurrent clients on few CPUs, that turnaround was about a third of the time). The batcher
decides when a second call is worth queueing.

Worker processes start with ``spawn`` and load every served run once. They hear from the HTTP
process through a pipe of plain data (the batch's sentences and search options; the answers), so
the HTTP and JSON work of the server never shares an interpreter with the model. A worker ends
with the server however the server ends (the parent-death check and the pipe's end). A worker that
dies is replaced: the batch it was running is answered 503 (retry), the others wait for an idle
worker; when a worker cannot be started again the pool has one worker fewer, and with none left
every request is answered 503.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

from nmt.errors import NmtError
from nmt.tools.serve_worker import run_groups, set_threads, worker_main

__all__ = ["ModelThread", "WorkerPool", "WorkerLost", "default_workers", "worker_threads",
           "workers_and_threads", "model_runner", "describe_runners"]

#: seconds a worker may take to load the served runs
START_TIMEOUT_S = 600.0
#: seconds between two looks at a busy worker's liveness
POLL_S = 0.2
#: starts a replacement worker gets before its slot is given up
START_ATTEMPTS = 2
#: seconds between two looks at the idle workers' liveness
WATCH_S = 0.5
#: calls a worker process holds at once: the one it computes and the next one, already in its pipe
DEPTH = 2


class WorkerLost(Exception):
    """The worker process running a batch ended before answering it."""


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(cpus: int | None = None) -> int:
    """``--workers`` by default: 1 worker up to 4 CPUs, then one per 4 CPUs, at most 8."""
    cpus = cpus or cpu_count()
    return max(1, min(8, cpus // 4))


def worker_threads(workers: int, cpus: int | None = None) -> int:
    """Torch threads of each worker by default: the CPUs but one (left to the HTTP process),
    shared between the workers, at least 1."""
    cpus = cpus or cpu_count()
    return max(1, (cpus - 1) // max(1, workers))


def workers_and_threads(workers: int | None, threads: int | None) -> tuple[int, int | None]:
    """``nmt serve``'s ``--workers`` (default: :func:`default_workers`) and each worker's
    ``--threads`` (default: :func:`worker_threads`; torch's choice for the thread of
    ``--workers 0``)."""
    workers = default_workers() if workers is None else workers
    if threads is None and workers:
        threads = worker_threads(workers)
    return workers, threads


def describe_runners(workers: int, threads: int | None) -> str:
    where = f"{workers} worker process{'es' if workers > 1 else ''}" if workers else "a thread of the server"
    return f"the model runs in {where}" + (f", {threads} torch threads each" if threads else "")


def model_runner(served, workers: int, threads: int | None):
    """Where the model calls of ``served`` (:class:`~nmt.tools.serve.ServedModel` list) run:
    ``workers`` processes, or a thread of this process (0)."""
    if not workers:
        return ModelThread({m.name: m.translator for m in served}, threads)
    missing = [m.name for m in served if m.options is None]
    if missing:
        raise NmtError(f"model workers load runs from their options; {', '.join(missing)} has none "
                       "(serve it with workers=0)")
    return WorkerPool([(m.name, m.options) for m in served], workers, threads)


# ------------------------------------------------------------------------------- thread mode

class ModelThread:
    """One model thread in the HTTP process (``--workers 0``): simplest, and what tests that
    replace a translator's methods need."""

    def __init__(self, translators: Mapping[str, Any], threads: int | None = None):
        self.translators = translators
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmt-serve-model",
                                           initializer=set_threads, initargs=(threads,))
        self.stats: dict[str, int] = {}
        self.calls = 0  #: 1 while a call is reserved or under way
        self._change: asyncio.Event | None = None

    async def start(self) -> None:
        self._change = asyncio.Event()

    async def acquire(self):
        while self.calls:
            await self.changed()
        self.calls = 1
        return self

    def in_flight(self, runner) -> int:
        return self.calls

    async def changed(self) -> None:
        self._change.clear()
        await self._change.wait()

    def alive(self) -> bool:
        return True

    def release(self, runner, lost: bool = False) -> None:
        self.calls = 0
        self._change.set()

    async def run(self, runner, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, run_groups, self.translators, groups)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------ process mode

class _Worker:
    """One worker process and the HTTP process's end of its pipe."""

    def __init__(self, slot: int, process, conn):
        self.slot, self.process, self.conn = slot, process, conn
        self.ready = False  #: it has loaded the runs
        self.calls = 0  #: calls reserved, queued or under way
        self.running = 0  #: calls sent or being sent (their end tells whether it died)
        self.replaced = False  #: found dead: another is (being) started in its slot
        # one thread writes the calls into the pipe and another reads the answers, each in call
        # order, so a second call can wait in the pipe while the worker computes the first
        self.sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"nmt-serve-send-{slot}")
        self.receiver = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"nmt-serve-recv-{slot}")

    def alive(self) -> bool:
        return self.process.is_alive()

    def wait_message(self, timeout: float | None = None):
        """The worker's next message (blocking); :class:`WorkerLost` if it ends first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if self.conn.poll(POLL_S):
                    return self.conn.recv()
            except (EOFError, OSError):
                raise WorkerLost(self.describe()) from None
            if not self.process.is_alive():
                raise WorkerLost(self.describe())
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerLost(f"model worker {self.process.pid} did not start within {timeout:g} s")

    def send(self, groups: list[dict[str, Any]]) -> None:
        try:
            self.conn.send(groups)
        except (OSError, ValueError):
            raise WorkerLost(self.describe()) from None

    async def call(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The worker's answer to ``groups``; the next call may be sent before it comes."""
        loop = asyncio.get_running_loop()
        self.running += 1
        try:
            sent = loop.run_in_executor(self.sender, self.send, groups)
            answer = loop.run_in_executor(self.receiver, self.wait_message)  # answers come in call order
            outcomes = await asyncio.gather(sent, answer, return_exceptions=True)
        finally:
            self.running -= 1
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes[1]

    def describe(self) -> str:
        self.process.join(0.5)
        code = self.process.exitcode
        how = "is running" if code is None else (f"was killed by signal {-code}" if code < 0
                                                 else f"exited with status {code}")
        return f"model worker {self.process.pid} {how}"

    def stop(self, timeout: float = 5.0) -> None:
        """Close the pipe (the worker reads its end and exits); kill it if it does not."""
        try:
            self.conn.close()
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.sender.shutdown(wait=False, cancel_futures=True)
        self.receiver.shutdown(wait=False, cancel_futures=True)


class WorkerPool:
    """``workers`` model worker processes, each with every served run (see the module's docstring).

    ``models``: ``(name, options)`` pairs of :func:`nmt.tools.serve_model.build_translator`;
    ``threads``: torch threads of each worker; ``target``: the worker's main function (tests give
    another); ``depth``: calls a worker holds at once."""

    def __init__(self, models: list[tuple[str, dict[str, Any]]], workers: int, threads: int | None = None,
                 *, target=worker_main, start_timeout_s: float = START_TIMEOUT_S, depth: int = DEPTH):
        if workers < 1:
            raise NmtError(f"a worker pool needs at least 1 worker, got {workers}")
        self.models, self.size, self.threads = models, workers, threads
        self.target, self.start_timeout_s, self.depth = target, start_timeout_s, depth
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, _Worker] = {}  #: the current worker of each slot
        self.stats = {"workers": 0, "worker_restarts": 0, "workers_lost": 0}
        self.broken = False  #: no worker left: every request is answered 503
        self._change: asyncio.Event | None = None
        self._io = ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix="nmt-serve-start")
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the runs; NmtError if one cannot."""
        self._change = asyncio.Event()
        started = [self._spawn(slot) for slot in range(self.size)]
        outcomes = await asyncio.gather(*(self._ready(w) for w in started), return_exceptions=True)
        for outcome in outcomes:
            if outcome is not True:
                self.close()
                raise NmtError(f"nmt serve: a model worker could not load the runs: {outcome}")
        self.stats["workers"] = self.size
        self._keep(asyncio.get_running_loop().create_task(self._watch()))

    def _spawn(self, slot: int) -> _Worker:
        # on the event loop's thread, which lives as long as the server: Linux's parent-death
        # signal follows the thread that started the process
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=self.target, name=f"nmt-serve-worker-{slot}", daemon=True,
                                       args=(theirs, self.models, self.threads, os.getpid()))
        process.start()
        theirs.close()  # ours alone in this process: the worker's end reads end-of-file with us gone
        worker = _Worker(slot, process, ours)
        self.workers[slot] = worker
        return worker

    async def _ready(self, worker: _Worker):
        """True once ``worker`` says it is ready, else what went wrong."""
        loop = asyncio.get_running_loop()
        try:
            kind, detail = await loop.run_in_executor(self._io, worker.wait_message, self.start_timeout_s)
        except WorkerLost as exc:
            worker.stop(0)
            return str(exc)
        if kind != "ready":
            worker.stop()
            return detail
        worker.ready = True
        return True

    async def _watch(self) -> None:
        """Replace a worker that dies while idle as soon as it does, not when a request finds it
        (``GET /health`` then tells at once when none is left)."""
        while True:
            await asyncio.sleep(WATCH_S)
            for worker in list(self.workers.values()):
                if worker.ready and not worker.running and not worker.replaced and not worker.alive():
                    self._replace(worker)

    async def acquire(self) -> _Worker | None:
        """A live worker with room for a call (the least busy, idle ones first), reserved for
        the caller; None when no worker is left."""
        while not self.broken:
            for worker in [w for w in self.workers.values() if w.ready and not w.running and not w.replaced]:
                if not worker.alive():
                    self._replace(worker)  # died while idle: no batch lost
            ready = [w for w in self.workers.values()
                     if w.ready and not w.replaced and w.calls < self.depth]
            if ready:
                worker = min(ready, key=lambda w: (w.calls, w.slot))
                worker.calls += 1
                return worker
            await self.changed()
        return None

    def in_flight(self, worker: _Worker) -> int:
        return worker.calls

    async def changed(self) -> None:
        """Until a call ends or a worker comes or goes."""
        self._change.clear()
        await self._change.wait()

    async def run(self, worker: _Worker, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await worker.call(groups)

    def release(self, worker: _Worker, lost: bool = False) -> None:
        """A call of ``worker`` ended (or its reservation was given back); ``lost``: the worker
        failed it (it is replaced)."""
        worker.calls -= 1
        if lost or worker.replaced or not worker.alive():
            self._replace(worker)
        self._change.set()

    def _replace(self, worker: _Worker) -> None:
        """Start another worker in the slot of ``worker`` (dead, or failed its batch); once."""
        if worker.replaced:
            return
        worker.replaced = True
        self.stats["workers_lost"] += 1
        self.stats["workers"] -= 1
        if worker.alive():
            worker.process.kill()
        print(f"nmt serve: {worker.describe()}; starting another", file=sys.stderr, flush=True)
        worker.stop(0)
        self._keep(asyncio.get_running_loop().create_task(self._restart(worker.slot)))

    def _keep(self, task: asyncio.Task) -> None:
        """Hold a background task (the loop keeps only weak references); cancelled by close()."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, slot: int) -> None:
        for _ in range(START_ATTEMPTS):
            worker = self._spawn(slot)
            outcome = await self._ready(worker)
            if outcome is True:
                self.stats["worker_restarts"] += 1
                self.stats["workers"] += 1
                self._change.set()
                return
            print(f"nmt serve: a replacement model worker failed: {outcome}", file=sys.stderr, flush=True)
        self.workers.pop(slot, None)
        if not self.workers:
            self.broken = True
            self._change.set()

    def close(self) -> None:
        """Stop every worker (each exits when its pipe closes; killed if it does not)."""
        for task in list(self._tasks):
            task.cancel()
        for worker in list(self.workers.values()):
            worker.stop()
        self.workers.clear()
        self.stats["workers"] = 0
        self._io.shutdown(wait=False, cancel_futures=True)

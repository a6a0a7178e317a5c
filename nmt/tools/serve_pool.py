"""Where ``nmt serve`` runs its model calls: a thread of the HTTP process (:class:`ModelThread`,
``--workers 0``) or model worker processes (:class:`WorkerPool`, ``--workers N``).

Both offer the same steps to the batcher (:mod:`nmt.tools.serve_batcher`): ``start()``,
``acquire()`` (wait for an idle runner; None when none is left), ``chain(runner, groups,
take_next)`` (one batch, see :mod:`nmt.tools.serve_worker`, then at once the next one
``take_next()`` gives: a future of :func:`chain_calls`) and ``release(runner)``. A runner is what
:func:`chain_calls` needs: ``send(groups)`` starts a call, ``receive()`` waits for its outcomes;
the pool runs :func:`chain_calls` on a thread of its own (the model thread itself for
:class:`ModelThread`, a pipe thread for a worker process). The batcher takes the next batch from
its queue only once a runner is idle, so under load the queue fills while every runner works and
the next batch is large, while a lone request on an idle server starts at once.

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

__all__ = ["ModelThread", "WorkerPool", "WorkerLost", "chain_calls", "default_workers", "worker_threads",
           "workers_and_threads", "model_runner", "describe_runners"]

#: seconds a worker may take to load the served runs
START_TIMEOUT_S = 600.0
#: seconds between two looks at a busy worker's liveness
POLL_S = 0.2
#: starts a replacement worker gets before its slot is given up
START_ATTEMPTS = 2
#: seconds between two looks at the idle workers' liveness
WATCH_S = 0.5


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


def chain_calls(runner, groups: list[dict[str, Any]] | None, take_next) -> tuple[list, Any, Exception | None]:
    """One call on ``runner`` and the start of the next, on the thread that waits for the call:
    send ``groups`` (None: they were sent already), wait for their outcomes, then at once
    ``take_next()`` (None, or the next batch with its groups second) and send that, so the
    runner's next call starts without waiting for the event loop. Returns ``(outcomes, next
    batch or None, the error of sending it or None)``."""
    if groups is not None:
        runner.send(groups)
    outcomes = runner.receive()
    following = take_next()
    error = None
    if following is not None:
        try:
            runner.send(following[1])
        except WorkerLost as exc:
            error = exc
    return outcomes, following, error


# ------------------------------------------------------------------------------- thread mode

class ModelThread:
    """One model thread in the HTTP process (``--workers 0``): simplest, and what tests that
    replace a translator's methods need."""

    def __init__(self, translators: Mapping[str, Any], threads: int | None = None):
        self.translators = translators
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmt-serve-model",
                                           initializer=set_threads, initargs=(threads,))
        self.stats: dict[str, int] = {}
        self._idle: asyncio.Queue | None = None
        self._sent: list[dict[str, Any]] | None = None  #: the call :meth:`receive` computes

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        self._idle.put_nowait(self)

    async def acquire(self):
        return await self._idle.get()

    def alive(self) -> bool:
        return True

    def release(self, runner, lost: bool = False) -> None:
        self._idle.put_nowait(runner)

    def send(self, groups: list[dict[str, Any]]) -> None:
        self._sent = groups

    def receive(self) -> list[dict[str, Any]]:
        """The outcomes of the groups sent, computed now, on the calling (model) thread."""
        groups, self._sent = self._sent, None
        return run_groups(self.translators, groups)

    def chain(self, runner, groups: list[dict[str, Any]] | None, take_next) -> asyncio.Future:
        """:func:`chain_calls` on the model thread (a future of its outcome)."""
        return asyncio.get_running_loop().run_in_executor(self.executor, chain_calls, self, groups, take_next)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------ process mode

class _Worker:
    """One worker process and the HTTP process's end of its pipe."""

    def __init__(self, slot: int, process, conn):
        self.slot, self.process, self.conn = slot, process, conn
        self.ready = False  #: it has loaded the runs
        self.busy = False  #: a batch is under way (its end tells whether it died)
        self.replaced = False  #: found dead: another is (being) started in its slot

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

    def receive(self) -> list[dict[str, Any]]:
        """The outcomes of the call sent (:class:`WorkerLost` if the worker ends first)."""
        return self.wait_message()

    def send(self, groups: list[dict[str, Any]]) -> None:
        try:
            self.conn.send(groups)
        except (OSError, ValueError):
            raise WorkerLost(self.describe()) from None

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


class WorkerPool:
    """``workers`` model worker processes, each with every served run (see the module's docstring).

    ``models``: ``(name, options)`` pairs of :func:`nmt.tools.serve_model.build_translator`;
    ``threads``: torch threads of each worker; ``target``: the worker's main function (tests give
    another)."""

    def __init__(self, models: list[tuple[str, dict[str, Any]]], workers: int, threads: int | None = None,
                 *, target=worker_main, start_timeout_s: float = START_TIMEOUT_S):
        if workers < 1:
            raise NmtError(f"a worker pool needs at least 1 worker, got {workers}")
        self.models, self.size, self.threads = models, workers, threads
        self.target, self.start_timeout_s = target, start_timeout_s
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, _Worker] = {}  #: the current worker of each slot
        self.stats = {"workers": 0, "worker_restarts": 0, "workers_lost": 0}
        self.broken = False  #: no worker left: every request is answered 503
        self._idle: asyncio.Queue | None = None
        self._io = ThreadPoolExecutor(max_workers=2 * workers + 1, thread_name_prefix="nmt-serve-pipe")
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the runs; NmtError if one cannot."""
        self._idle = asyncio.Queue()
        started = [self._spawn(slot) for slot in range(self.size)]
        outcomes = await asyncio.gather(*(self._ready(w) for w in started), return_exceptions=True)
        for w, outcome in zip(started, outcomes):
            if outcome is not True:
                self.close()
                raise NmtError(f"nmt serve: a model worker could not load the runs: {outcome}")
            self._idle.put_nowait(w)
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
                if worker.ready and not worker.busy and not worker.replaced and not worker.alive():
                    self._replace(worker)

    async def acquire(self) -> _Worker | None:
        """An idle live worker; None when no worker is left."""
        while True:
            worker = await self._idle.get()
            if worker is None:  # broken: keep the mark for the next caller
                self._idle.put_nowait(None)
                return None
            if worker.alive() and not worker.replaced:
                return worker
            self._replace(worker)  # died while idle: no batch lost

    def chain(self, worker: _Worker, groups: list[dict[str, Any]] | None, take_next) -> asyncio.Future:
        """:func:`chain_calls` on a pipe thread (a future of its outcome): ``groups`` sent now
        (None: the worker has them already) and, as soon as their outcomes are back, the batch
        ``take_next()`` gives (called on that thread), before the event loop hears of them."""
        worker.busy = True
        future = asyncio.get_running_loop().run_in_executor(self._io, chain_calls, worker, groups, take_next)

        def done(f):
            worker.busy = not f.cancelled() and f.exception() is None and f.result()[1] is not None

        future.add_done_callback(done)
        return future

    def release(self, worker: _Worker, lost: bool = False) -> None:
        """``worker`` is idle again; ``lost``: it failed its batch (it is replaced)."""
        if worker.alive() and not lost and not worker.replaced:
            self._idle.put_nowait(worker)
        else:
            self._replace(worker)

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
                self._idle.put_nowait(worker)
                return
            print(f"nmt serve: a replacement model worker failed: {outcome}", file=sys.stderr, flush=True)
        self.workers.pop(slot, None)
        if not self.workers:
            self.broken = True
            self._idle.put_nowait(None)

    def close(self) -> None:
        """Stop every worker (each exits when its pipe closes; killed if it does not)."""
        for task in list(self._tasks):
            task.cancel()
        for worker in list(self.workers.values()):
            worker.stop()
        self.workers.clear()
        self.stats["workers"] = 0
        self._io.shutdown(wait=False, cancel_futures=True)

"""Where ``nmt serve`` runs its model calls: a thread of the HTTP process (:class:`ModelThread`,
``--workers 0``) or model worker processes (:class:`WorkerPool`, ``--workers N``).

Both offer the same steps to the batcher (:mod:`nmt.tools.serve_batcher`): ``start()``,
``acquire()`` (wait for an idle runner; None when none is left), ``pump(runner, first, take_next,
deliver, wake)`` (the runner's calls from ``first`` on, until none is under way and none waits: a
future of :func:`pump_calls`) and ``release(runner)``. A runner is what :func:`pump_calls`
needs: ``send(groups)`` starts a call and returns its id, ``receive(timeout, wake)`` gives the
next ``(id, outcomes)`` (None when ``wake``, a :class:`Doorbell`, rang first), and ``depth`` says
how many calls it takes at once. The pool runs
:func:`pump_calls` on a thread of its own (the model thread itself for :class:`ModelThread`, a
pipe thread for a worker process). The batcher takes a batch from its queue for an idle runner,
and the pump gives a runner that takes several calls the requests that arrive while it computes
(a worker process: its sentences join the search under way, :mod:`nmt.tools.serve_worker`), so
a lone request on an idle server starts at once and, under load, no request waits for a call to
end.

Worker processes start with ``spawn`` and load every served run once. They hear from the HTTP
process through a pipe of plain data (the batch's sentences and search options; the answers), so
the HTTP and JSON work of the server never shares an interpreter with the model. A worker ends
with the server however the server ends (the parent-death check and the pipe's end). A worker that
dies is replaced: the calls it was running are answered 503 (retry), the others wait for an idle
worker; when a worker cannot be started again the pool has one worker fewer, and with none left
every request is answered 503.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Mapping

from nmt.errors import NmtError
from nmt.tools.serve_worker import run_groups, set_threads, worker_main

__all__ = ["ModelThread", "WorkerPool", "WorkerLost", "Doorbell", "pump_calls", "default_workers", "worker_threads",
           "workers_and_threads", "model_runner", "describe_runners"]

#: seconds a worker may take to load the served runs
START_TIMEOUT_S = 600.0
#: seconds between two looks at a busy worker's liveness
POLL_S = 0.2
#: starts a replacement worker gets before its slot is given up
START_ATTEMPTS = 2
#: seconds between two looks at the idle workers' liveness
WATCH_S = 0.5
#: calls a worker whose sentences join the search under way is given at once
JOIN_DEPTH = 8


class Doorbell:
    """Wakes the threads that wait for a runner's answers when a request is queued (a pipe whose
    read end they wait on beside the runner's): a runner that can take another call takes it
    then, not at its next answer, and no thread looks at the queue while nothing comes."""

    def __init__(self):
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:  # rung many times already and not heard yet: once is enough
            pass

    def hush(self) -> None:
        """Forget the rings so far (called by a thread that heard them)."""
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass


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


def model_runner(served, workers: int, threads: int | None, continuous: bool = False):
    """Where the model calls of ``served`` (:class:`~nmt.tools.serve.ServedModel` list) run:
    ``workers`` processes, or a thread of this process (0). ``continuous``: the workers' sentences
    join the search under way (:class:`~nmt.tools.serve_worker.WorkerLoop`)."""
    if not workers:
        return ModelThread({m.name: m.translator for m in served}, threads)
    missing = [m.name for m in served if m.options is None]
    if missing:
        raise NmtError(f"model workers load runs from their options; {', '.join(missing)} has none "
                       "(serve it with workers=0)")
    target = partial(worker_main, joins=True) if continuous else worker_main
    return WorkerPool([(m.name, m.options) for m in served], workers, threads, target=target)


def pump_calls(runner, first: tuple, take_next, deliver, wake: Doorbell | None = None) -> Exception | None:
    """The calls of ``runner``, on the thread that waits for them: ``first`` (a batch, its groups
    second) is sent, then, while fewer than ``runner.depth`` calls are under way, each batch
    ``take_next()`` gives (None: nothing waits), looked for again whenever ``wake`` rings (a
    request was queued) or an answer comes; each call's outcomes go to ``deliver(batch,
    outcomes)`` as they come back, in any order, and the sentences a runner answers before its
    call ends (``("sentences", [(call id, group, index, answer), ...])``) to ``deliver(batch,
    {(group, index): answer})``. Returns when no call is under way and none
    waits: None, or the error that ended it (its calls under way get an error outcome: 503 when
    the runner is lost, a :class:`WorkerLost`, else 500)."""
    under_way: dict[Any, tuple] = {}

    def send(batch) -> None:
        under_way[runner.send(batch[1])] = batch

    try:
        send(first)
        while True:
            while len(under_way) < runner.depth and (batch := take_next()) is not None:
                send(batch)
            if not under_way:
                break
            room = len(under_way) < runner.depth  # then a queued request wakes this thread
            message = runner.receive(None, wake if room else None)
            if message is None:
                continue
            if message[0] == "sentences":  # one delivery per call
                answers: dict[Any, dict] = {}
                for ident, g, k, answer in message[1]:
                    answers.setdefault(ident, {})[(g, k)] = answer
                for ident, by_sentence in answers.items():
                    deliver(under_way[ident], by_sentence)
                continue
            ident, outcomes = message
            deliver(under_way.pop(ident), outcomes)
    except Exception as exc:  # noqa: BLE001 - the calls under way must be answered
        if isinstance(exc, WorkerLost):  # their requests may be retried; the pool starts another worker
            outcome = {"status": 503, "error": f"{exc} while translating this request; retry"}
        else:  # the runner itself failed: its requests fail, the server goes on
            outcome = {"status": 500, "error": repr(exc)}
        for batch in under_way.values():
            deliver(batch, [outcome] * len(batch[1]))
        return exc
    return None


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
        self._calls = 0

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        self._idle.put_nowait(self)

    async def acquire(self):
        return await self._idle.get()

    def alive(self) -> bool:
        return True

    def release(self, runner, lost: bool = False) -> None:
        self._idle.put_nowait(runner)

    depth = 1  #: one call at a time, computed when received

    def send(self, groups: list[dict[str, Any]]) -> int:
        self._sent = groups
        self._calls += 1
        return self._calls

    def receive(self, timeout: float | None = None, wake: Doorbell | None = None) -> tuple[int, list[dict[str, Any]]]:
        """The outcomes of the call sent, computed now, on the calling (model) thread."""
        groups, self._sent = self._sent, None
        return self._calls, run_groups(self.translators, groups)

    def pump(self, runner, first: tuple, take_next, deliver, wake: Doorbell | None = None) -> asyncio.Future:
        """:func:`pump_calls` on the model thread (a future of its outcome)."""
        return asyncio.get_running_loop().run_in_executor(self.executor, pump_calls, self, first, take_next,
                                                          deliver, wake)

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
        self.depth = 1  #: calls it takes at once (:data:`JOIN_DEPTH` when its sentences join)
        self._calls = 0

    def alive(self) -> bool:
        return self.process.is_alive()

    def wait_message(self, timeout: float):
        """The worker's first message (its start); :class:`WorkerLost` if it ends first or says
        nothing within ``timeout`` seconds."""
        message = self.receive(timeout)
        if message is None:
            raise WorkerLost(f"model worker {self.process.pid} did not start within {timeout:g} s")
        return message

    def receive(self, timeout: float | None = None, wake: Doorbell | None = None):
        """The worker's next message (a call's ``(call id, outcomes)``, or sentences answered),
        or None when none came within ``timeout`` seconds or ``wake`` rang first
        (:class:`WorkerLost` if the worker ends first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = [self.conn] if wake is None else [self.conn, wake]
        while True:
            wait = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            try:
                ready = multiprocessing.connection.wait(waited, wait)
                if self.conn in ready:
                    return self.conn.recv()
            except (EOFError, OSError):
                raise WorkerLost(self.describe()) from None
            if ready:  # the doorbell
                wake.hush()
                return None
            if not self.process.is_alive():
                raise WorkerLost(self.describe())
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def send(self, groups: list[dict[str, Any]]) -> int:
        """Start a call; its id."""
        self._calls += 1
        try:
            self.conn.send((self._calls, groups))
        except (OSError, ValueError):
            raise WorkerLost(self.describe()) from None
        return self._calls

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
            kind, detail, *more = await loop.run_in_executor(self._io, worker.wait_message, self.start_timeout_s)
        except WorkerLost as exc:
            worker.stop(0)
            return str(exc)
        if kind != "ready":
            worker.stop()
            return detail
        worker.ready = True
        if more and more[0].get("joins"):
            worker.depth = JOIN_DEPTH
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

    def pump(self, worker: _Worker, first: tuple, take_next, deliver, wake: Doorbell | None = None) -> asyncio.Future:
        """:func:`pump_calls` on a pipe thread (a future of its outcome)."""
        worker.busy = True
        future = asyncio.get_running_loop().run_in_executor(self._io, pump_calls, worker, first, take_next,
                                                            deliver, wake)

        def done(f):
            worker.busy = False

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
                print(f"nmt serve: model worker {worker.process.pid} started in slot {slot}", file=sys.stderr,
                      flush=True)
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

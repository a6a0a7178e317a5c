"""How ``nmt serve`` shares its model runners (a thread, or worker processes) between requests.

A request is split into its sentences. The collector builds each model call from the waiting
requests in turn, one sentence of each per round (arrival order), up to ``max_batch_texts``
sentences and ``max_batch_work`` units of work (source pieces × beam × n-best), so a one-word
request that arrives behind a large one waits for at most the model call under way, not for the
whole large request. Sentences with the same model and search options share one
``Translator.translate`` call. A request whose client went away or whose time ran out is dropped
between model calls: its sentences that have not started are never computed.

The collector waits ``batch_window_ms`` for more requests only when others are already waiting
(a burst is under way); a request on an idle server starts at once. It takes the next batch only
once a runner is idle (:mod:`nmt.tools.serve_pool`): while every runner works, the requests that
arrive wait in the queue and make the next batch large. A runner that ends a call while requests
wait takes them at once, before its answers are delivered (no window: they waited for the call),
so it does not sit idle while the event loop answers the clients: the thread that waits for the
runner's answers (the model thread itself, or the thread reading a worker process's pipe) takes
them and sends them, without waiting for the event loop at all.

A runner starting from idle while many sentences wait (at least ``2 * SPLIT_FROM``) takes half of
them; the other half is its next call, taken the moment the first ends. Otherwise, when every
client is in the call under way, nothing waits as it ends and the runner waits for the server to
answer all of them and read their next requests; split, the clients form two groups, one
answered while the other is computed. A request left for the second half waits for the first
half's call and its own, less than for one call of both. With several worker processes, a small
request waits for at most the first of the calls under way to end, and its own.

A worker whose sentences join the search under way (``nmt serve --continuous``) takes calls while
it computes: the thread reading its pipe sends it the waiting requests as they come, up to
:data:`~nmt.tools.serve_pool.JOIN_DEPTH` calls at once, and delivers each sentence's answer as
the worker sends it, so a small request waits for no other request's call.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nmt.tools.serve_metrics import metrics_or_none
from nmt.tools.serve_pool import Doorbell, WorkerLost
from nmt.tools.serve_requests import ApiError, ServeLimits
from nmt.tools.serve_worker import result_json  # noqa: F401 - its home before the worker module

__all__ = ["Job", "Batcher", "plan"]

#: a runner starting from idle takes half of the waiting sentences once this many would be in
#: each half (:meth:`Batcher._first_share`). An extra call costs the worker 13-17 ms (its
#: encoder and search steps, what 8 sentences cost); the server spends about 0.6 ms answering a
#: request and reading the next, so waiting for 32 or more clients costs more (docs/performance.md)
SPLIT_FROM = 16


@dataclass
class Job:
    """One request: its sentences, the work of each, and the answers gathered so far."""

    model: Any  #: nmt.tools.serve.ServedModel
    texts: list[str]
    options: dict[str, Any]  #: keyword arguments of Translator.translate
    attention: bool
    scores: bool
    work: list[int] = field(default_factory=list)  #: per sentence (see check_request); 1 when not given
    constraints: list | None = None  #: per sentence, its target terms (None: no constraints)
    alignment: bool = False  #: word alignments in the answer
    future: asyncio.Future = field(repr=False, default=None)
    taken: int = 0  #: sentences handed to a model runner so far
    results: list = field(repr=False, default_factory=list)
    left: int = 0  #: sentences not answered yet

    @property
    def gone(self) -> bool:
        """Answered, failed, timed out or abandoned by its client: nothing more to compute."""
        return self.future is None or self.future.done()

    def key(self) -> tuple:
        return (self.model.name, self.attention, self.alignment, tuple(sorted(self.options.items())))


class Batcher:
    """The queue of waiting requests and the collector that hands batches to the model runners
    (see the module's docstring). ``runner``: a :class:`~nmt.tools.serve_pool.ModelThread` or a
    :class:`~nmt.tools.serve_pool.WorkerPool`."""

    def __init__(self, limits: ServeLimits, runner):
        self.limits = limits
        self.runner = runner
        self.pending: deque[Job] = deque()
        self.stats = {"requests": 0, "texts": 0, "batches": 0, "model_calls": 0, "rejected": 0,
                      "timed_out": 0, "abandoned": 0, "dropped_texts": 0, **runner.stats}
        runner.stats = self.stats  # the runner's own counts (workers, restarts) in the same report
        self._wakeup: asyncio.Event | None = None
        #: the queue is also taken from on a runner's pipe thread (:meth:`_take_next`)
        self._lock = threading.Lock()
        self._calls: set[asyncio.Task] = set()
        #: rung for each queued request: wakes a runner's thread that can take another call
        self.doorbell = Doorbell()
        #: Prometheus metrics (:mod:`nmt.tools.serve_metrics`), None without prometheus-client
        self.metrics = metrics_or_none(lambda: len(self.pending), self.waiting_texts, self.stats)

    @property
    def broken(self) -> bool:
        """No model runner is left: every request is answered 503."""
        return bool(getattr(self.runner, "broken", False))

    async def start(self) -> None:
        """Start the runners (worker processes load the runs); then :meth:`run` collects."""
        self._wakeup = asyncio.Event()
        await self.runner.start()

    def close(self) -> None:
        for task in list(self._calls):
            task.cancel()
        self.runner.close()
        self.doorbell.close()

    def submit(self, job: Job) -> asyncio.Future:
        if self.broken:
            raise ApiError(503, "no model worker is running (see the server's log)",
                           headers={"Retry-After": str(self.limits.retry_after_s)})
        if len(self.pending) >= self.limits.queue_limit:
            self.stats["rejected"] += 1
            raise ApiError(503, f"the server is busy: {len(self.pending)} requests are waiting "
                                f"(queue limit {self.limits.queue_limit}); retry in "
                                f"{self.limits.retry_after_s} s",
                           headers={"Retry-After": str(self.limits.retry_after_s)})
        job.future = asyncio.get_running_loop().create_future()
        job.work = job.work or [1] * len(job.texts)
        job.results, job.left, job.taken = [None] * len(job.texts), len(job.texts), 0
        with self._lock:
            self.pending.append(job)
            self._wakeup.set()
        self.doorbell.ring()
        return job.future

    def waiting_texts(self) -> int:
        with self._lock:
            return sum(len(j.texts) - j.taken for j in self.pending if not j.gone)

    def _drop_gone(self) -> None:
        with self._lock:
            for job in [j for j in self.pending if j.gone]:
                self.stats["dropped_texts"] += len(job.texts) - job.taken
                self.pending.remove(job)

    def take(self, most: int | None = None) -> list[tuple[Job, int]]:
        """The next model call: ``(job, sentence index)`` pairs, one sentence per waiting request
        per round (round robin in arrival order), within ``max_batch_texts`` sentences (and
        ``most``) and ``max_batch_work`` work (at least one sentence)."""
        self._drop_gone()
        batch: list[tuple[Job, int]] = []
        with self._lock:
            self._fill(batch, min(most or self.limits.max_batch_texts, self.limits.max_batch_texts))
        return batch

    def _fill(self, batch: list[tuple[Job, int]], most: int) -> None:
        work = 0
        while self.pending and len(batch) < most:
            job = self.pending[0]
            w = job.work[job.taken]
            if batch and work + w > self.limits.max_batch_work:
                break
            self.pending.popleft()
            batch.append((job, job.taken))
            job.taken += 1
            work += w
            if job.taken < len(job.texts):
                self.pending.append(job)  # its next sentence after the others' (round robin)

    async def run(self) -> None:
        """Collect: for each idle runner, the next batch (see the module's docstring)."""
        window = self.limits.batch_window_ms / 1000.0
        while True:
            runner = await self.runner.acquire()
            if runner is None:  # no runner left: the waiting requests are answered 503
                self._fail_pending()
                return
            await self._wakeup.wait()
            if not runner.alive():  # a worker that died while idle: replaced, no batch lost
                self.runner.release(runner, True)
                continue
            self._drop_gone()
            if window and len(self.pending) > 1 and self.waiting_texts() < self.limits.max_batch_texts:
                await asyncio.sleep(window)  # others are waiting: a burst, gather it
            batch = self._take_batch(self._first_share())
            if not batch:
                self.runner.release(runner)
                continue
            task = asyncio.get_running_loop().create_task(self._serve(runner, batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    def _first_share(self) -> int | None:
        """At most how many of the waiting sentences a runner starting from idle takes: half of
        them when many wait (None: all). The other half is the runner's next call, taken the
        moment this one ends, and the first half's clients send their next requests while it runs:
        the runner then goes from one half to the other without waiting for the server to answer
        a whole call's clients and read their next requests."""
        waiting = self.waiting_texts()
        return -(-waiting // 2) if waiting >= 2 * SPLIT_FROM else None

    def _take_batch(self, most: int | None = None) -> list[tuple[Job, int]]:
        """:meth:`take`, counted; the collector sleeps once the queue is empty."""
        batch = self.take(most)
        with self._lock:
            if not self.pending:
                self._wakeup.clear()
        if batch and self.metrics is not None:
            self.metrics.batch(len(batch))
        return batch

    async def _serve(self, runner, batch: list[tuple[Job, int]]) -> None:
        """``batch`` on ``runner``, then, while requests wait, the next batches on the same runner:
        the thread that waits for the runner's answers takes them from the queue and sends them
        (:func:`~nmt.tools.serve_pool.pump_calls`), as soon as the runner takes another call (a
        worker process: at once, its sentences join the search under way; a model thread: when its
        call ends, before the answers are delivered), without waiting for the event loop, busy
        answering clients. Answers are delivered on the event loop as each call's come back. A
        runner with nothing under way and nothing waiting goes back to the collector."""
        groups, members = plan(batch)
        if not groups:  # the batch's requests are all gone
            self.runner.release(runner)
            return
        loop = asyncio.get_running_loop()

        def deliver(call, outcomes) -> None:  # on the runner's thread
            if isinstance(outcomes, dict):  # sentences answered before their call ends
                loop.call_soon_threadsafe(self._deliver_sentences, *call, outcomes)
            else:
                loop.call_soon_threadsafe(self._deliver_batch, *call, outcomes)

        error = await self.runner.pump(runner, (batch, groups, members), self._take_next(runner), deliver,
                                       self.doorbell)
        self.runner.release(runner, isinstance(error, WorkerLost))

    def _take_next(self, runner):
        """What a runner's thread calls once a batch's answers are back: the next batch as
        ``(batch, groups, members)``, taken from the queue at once; None when nothing waits."""
        def take_next():
            if not self.pending or not runner.alive():
                return None
            batch = self._take_batch()
            groups, members = plan(batch)
            return (batch, groups, members) if groups else None

        return take_next

    def _deliver_batch(self, batch, groups, members, outcomes) -> None:
        """Each sentence's answer (or error) into its request."""
        self.stats["batches"] += 1
        for group, ks, outcome in zip(groups, members, outcomes):
            if "results" in outcome:
                self.stats["model_calls"] += 1
                self.stats["texts"] += len(ks)
            for j, k in enumerate(ks):
                job, index = batch[k]
                _deliver(job, index, outcome["results"][j] if "results" in outcome else self._error(outcome))

    @staticmethod
    def _deliver_sentences(batch, groups, members, answers: dict[tuple[int, int], Any]) -> None:
        """Answers of single sentences (``(group, index in it)``) of a call still under way."""
        for (g, k), answer in answers.items():
            job, index = batch[members[g][k]]
            _deliver(job, index, answer)

    def _error(self, outcome: dict[str, Any]) -> BaseException:
        status = outcome["status"]
        if status == 500:
            return RuntimeError(f"the model call failed:\n{outcome['error']}")
        headers = {"Retry-After": str(self.limits.retry_after_s)} if status == 503 else None
        return ApiError(status, outcome["error"], headers=headers)

    def _fail_pending(self) -> None:
        error = {"status": 503, "error": "no model worker is running (see the server's log)"}
        with self._lock:
            for job in self.pending:
                _deliver(job, 0, self._error(error))
            self.pending.clear()


def plan(batch: list[tuple[Job, int]]) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """The batch as groups of plain data, one ``translate`` call each (same model and options;
    :mod:`nmt.tools.serve_worker`), and each group's positions in the batch. Requests already
    answered, timed out or abandoned are left out."""
    by_key: dict[tuple, list[int]] = {}
    for k, (job, _) in enumerate(batch):
        if not job.gone:
            by_key.setdefault(job.key(), []).append(k)
    groups = []
    for members in by_key.values():
        pairs = [batch[k] for k in members]
        first = pairs[0][0]
        # each sentence keeps its own terms; sentences without any search as if unconstrained
        terms = [None if job.constraints is None else job.constraints[i] or None for job, i in pairs]
        groups.append({"model": first.model.name, "texts": [job.texts[i] for job, i in pairs],
                       "options": dict(first.options), "attention": first.attention,
                       "alignment": first.alignment, "scores": [job.scores for job, _ in pairs],
                       "constraints": terms if any(terms) else None})
    return groups, list(by_key.values())


def _deliver(job: Job, index: int, outcome: Any) -> None:
    """One sentence's answer into its request; the request is answered with its last sentence."""
    if job.gone or outcome is None:
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
        return
    job.results[index] = outcome
    job.left -= 1
    if job.left == 0:
        job.future.set_result(job.results)

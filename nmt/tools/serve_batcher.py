"""How ``nmt serve`` shares its one model thread between requests.

A request is split into its sentences. The collector builds each model call from the waiting
requests in turn, one sentence of each per round (arrival order), up to ``max_batch_texts``
sentences and ``max_batch_work`` units of work (source pieces × beam × n-best), so a one-word
request that arrives behind a large one waits for at most the model call under way, not for the
whole large request. Sentences with the same model and search options share one
``Translator.translate`` call. A request whose client went away or whose time ran out is dropped
between model calls: its sentences that have not started are never computed.

The collector waits ``batch_window_ms`` for more requests only when others are already waiting
(a burst is under way); a request on an idle server starts at once.
"""
from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from nmt.errors import NmtError
from nmt.tools.serve_metrics import metrics_or_none
from nmt.tools.serve_requests import ApiError, ServeLimits

__all__ = ["Job", "Batcher"]


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
    taken: int = 0  #: sentences handed to the model thread so far
    results: list = field(repr=False, default_factory=list)
    left: int = 0  #: sentences not answered yet

    @property
    def gone(self) -> bool:
        """Answered, failed, timed out or abandoned by its client: nothing more to compute."""
        return self.future is None or self.future.done()

    def key(self) -> tuple:
        return (self.model.name, self.attention, self.alignment, tuple(sorted(self.options.items())))


class Batcher:
    """The queue of waiting requests and the single model thread (see the module's docstring)."""

    def __init__(self, limits: ServeLimits, threads: int | None = None):
        self.limits = limits
        self.pending: deque[Job] = deque()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmt-serve-model",
                                           initializer=_set_threads, initargs=(threads,))
        self.stats = {"requests": 0, "texts": 0, "batches": 0, "model_calls": 0, "rejected": 0,
                      "timed_out": 0, "abandoned": 0, "dropped_texts": 0}
        self._wakeup: asyncio.Event | None = None
        #: Prometheus metrics (:mod:`nmt.tools.serve_metrics`), None without prometheus-client
        self.metrics = metrics_or_none(lambda: len(self.pending), self.waiting_texts)

    def submit(self, job: Job) -> asyncio.Future:
        if len(self.pending) >= self.limits.queue_limit:
            self.stats["rejected"] += 1
            raise ApiError(503, f"the server is busy: {len(self.pending)} requests are waiting "
                                f"(queue limit {self.limits.queue_limit}); retry in "
                                f"{self.limits.retry_after_s} s",
                           headers={"Retry-After": str(self.limits.retry_after_s)})
        job.future = asyncio.get_running_loop().create_future()
        job.work = job.work or [1] * len(job.texts)
        job.results, job.left, job.taken = [None] * len(job.texts), len(job.texts), 0
        self.pending.append(job)
        self._wakeup.set()
        return job.future

    def waiting_texts(self) -> int:
        return sum(len(j.texts) - j.taken for j in self.pending if not j.gone)

    def _drop_gone(self) -> None:
        for job in [j for j in self.pending if j.gone]:
            self.stats["dropped_texts"] += len(job.texts) - job.taken
            self.pending.remove(job)

    def take(self) -> list[tuple[Job, int]]:
        """The next model call: ``(job, sentence index)`` pairs, one sentence per waiting request
        per round (round robin in arrival order), within ``max_batch_texts`` sentences and
        ``max_batch_work`` work (at least one sentence)."""
        self._drop_gone()
        batch: list[tuple[Job, int]] = []
        work = 0
        while self.pending and len(batch) < self.limits.max_batch_texts:
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
        return batch

    async def run(self) -> None:
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        window = self.limits.batch_window_ms / 1000.0
        while True:
            await self._wakeup.wait()
            self._drop_gone()
            if window and len(self.pending) > 1 and self.waiting_texts() < self.limits.max_batch_texts:
                await asyncio.sleep(window)  # others are waiting: a burst, gather it
            batch = self.take()
            if not self.pending:
                self._wakeup.clear()
            if not batch:
                continue
            if self.metrics is not None:
                self.metrics.batch(len(batch))
            try:
                outcomes = await loop.run_in_executor(self.executor, self._run_batch, batch)
            except Exception as exc:  # the worker itself failed: its requests fail, the loop goes on
                outcomes = [exc] * len(batch)
            self.stats["batches"] += 1
            for (job, index), outcome in zip(batch, outcomes):
                _deliver(job, index, outcome)

    def _run_batch(self, batch: list[tuple[Job, int]]) -> list[Any]:
        """On the worker thread: one translate call per (model, options) group of the batch."""
        groups: dict[tuple, list[int]] = {}
        for k, (job, _) in enumerate(batch):
            if not job.gone:  # dropped while it waited for the thread
                groups.setdefault(job.key(), []).append(k)
        outcomes: list[Any] = [None] * len(batch)
        for members in groups.values():
            first = batch[members[0]][0]
            texts = [batch[k][0].texts[batch[k][1]] for k in members]
            # each sentence keeps its own terms; sentences without any search as if unconstrained
            terms = [None if job.constraints is None else job.constraints[i] or None
                     for job, i in (batch[k] for k in members)]
            extra = {"constraints": terms} if any(terms) else {}
            try:
                results = first.model.translator.translate(
                    texts, return_scores=True, return_attention=first.attention,
                    return_alignment=first.alignment, **first.options, **extra)
                self_att = [None] * len(texts)
                if first.attention and first.model.self_attention:
                    self_att = [first.model.translator.encoder_self_attention(t) for t in texts]
                self.stats["model_calls"] += 1
                self.stats["texts"] += len(texts)
                for k, r, sa in zip(members, results, self_att):
                    outcomes[k] = result_json(r, sa, batch[k][0])
            except NmtError as exc:  # options the translator refuses: the caller's to fix
                for k in members:
                    outcomes[k] = ApiError(422, str(exc))
            except Exception as exc:  # a bug: logged by the caller's 500 handler
                for k in members:
                    outcomes[k] = exc
        return outcomes


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


def _set_threads(threads: int | None) -> None:
    """The model thread's torch intra-op threads (OpenMP settings are per calling thread)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _floats(values, digits: int | None = None) -> list:
    if values is None:
        return None
    data = values.tolist() if hasattr(values, "tolist") else list(values)
    if digits is None:
        return data

    def rnd(x):
        return [rnd(v) for v in x] if isinstance(x, list) else round(float(x), digits)

    return rnd(data)


def result_json(result, self_attention, job: Job) -> dict[str, Any]:
    """One text's answer: JSON-ready (tensors become nested lists)."""
    hyps = []
    src_tokens: list[str] = []
    for h in result.hypotheses:
        src_tokens = src_tokens or list(h.src_tokens)
        entry: dict[str, Any] = {"text": h.text, "tokens": list(h.tokens)}
        if job.scores:
            entry["score"] = float(h.score)
            entry["log_prob"] = float(h.raw_score)
            entry["token_log_probs"] = [float(x) for x in h.token_log_probs]
        if job.attention:
            entry["attention"] = _floats(h.attention, 5)
            entry["positions"] = _floats(h.positions, 4)
        if job.alignment:
            entry["alignment"] = [list(pair) for pair in h.alignment]
        if h.constraints_met is not None:
            entry["constraints_met"] = bool(h.constraints_met)
        if getattr(h, "constraint_spans", None) is not None:
            entry["constraint_spans"] = [span.as_json() for span in h.constraint_spans]
        hyps.append(entry)
    out: dict[str, Any] = {"source": result.source, "text": result.text, "hypotheses": hyps}
    if job.attention:
        out["src_tokens"] = src_tokens
        out["self_attention"] = _floats(self_attention, 5)
    return out

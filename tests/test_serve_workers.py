"""``nmt serve --workers N``: the model in worker processes.

The same answers as offline translation; a worker that dies is replaced (its batch answered 503)
or, when none can be started, every request is answered 503, never left waiting; and no worker
outlives a server killed with ``kill -9``. At most one server, one worker and multiprocessing's
resource tracker run at once.
"""
import asyncio
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from nmt.errors import NmtError
from nmt.tools.serve_batcher import SPLIT_FROM, Batcher, Job
from nmt.tools.serve_pool import (Doorbell, WorkerPool, _Worker, default_workers, pump_calls, worker_threads,
                                  workers_and_threads)
from nmt.tools.serve_requests import ApiError, ServeLimits

SENTENCES = ["Je suis fatigué.", "Tu es belle.", "Il fait froid.", "Nous sommes en retard.",
             "Elle lit un livre.", "Je suis malade."]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import train_served_run

    return train_served_run(tmp_path_factory.mktemp("workers") / "tiny")


def test_default_workers_and_threads_follow_the_cpus():
    assert [default_workers(c) for c in (1, 2, 4, 7, 8, 16, 64)] == [1, 1, 1, 1, 2, 4, 8]
    assert [worker_threads(1, c) for c in (1, 2, 4)] == [1, 1, 3]
    assert worker_threads(2, 8) == 3 and worker_threads(4, 4) == 1
    assert workers_and_threads(0, None) == (0, None)  # the server's thread: torch's choice
    assert workers_and_threads(2, 3) == (2, 3)
    assert workers_and_threads(None, None) == (default_workers(), worker_threads(default_workers()))


@pytest.mark.parametrize("continuous", [False, True])
def test_workers_answer_what_offline_translation_gives(run, continuous):
    """Concurrent requests with different settings, batched together in one worker process (or
    joining its searches under way, ``continuous``): each sentence gets the text, scores and
    attention of ``Translator.translate`` in this process."""
    from fastapi.testclient import TestClient

    from nmt.inference.translator import Translator
    from nmt.tools.serve import create_app

    translator = Translator.load(run, device="cpu")
    texts = SENTENCES + ["Je suis fatigué. Il fait froid.", "Tu es belle. Je suis malade."]  # cut in two
    bodies = [{"texts": [s], "beam": 2 + k % 3, "n_best": 1 + k % 2, "return_attention": k % 2 == 0}
              for k, s in enumerate(texts)]
    app = create_app([run], ServeLimits(batch_window_ms=200, continuous=continuous), workers=1, threads=1)
    with TestClient(app) as c, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: c.post("/api/translate", json=b), bodies))
        health = c.get("/health").json()
        metrics = c.get("/metrics").text
    assert health["workers"] == 1 and health["model_calls"] >= 1
    assert "nmt_serve_workers 1.0" in metrics and "nmt_serve_worker_restarts 0.0" in metrics
    assert f"nmt_serve_batch_sentences_sum {len(bodies)}.0" in metrics
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        (served,) = answer.json()["translations"]
        (direct,) = translator.translate(body["texts"], beam=body["beam"], n_best=body["n_best"],
                                         return_scores=True, return_attention=body["return_attention"])
        assert served["text"] == direct.text
        for h, ref in zip(served["hypotheses"], direct.hypotheses, strict=True):
            assert (h["text"], h["tokens"], h["score"]) == (ref.text, ref.tokens, ref.score)
            assert h["token_log_probs"] == ref.token_log_probs
            if body["return_attention"]:
                assert h["attention"] == [[round(x, 5) for x in row] for row in ref.attention.tolist()]


# --------------------------------------------------------------- workers that fail (stand-ins)

def dies_on_its_first_batch(conn, models, threads, parent):
    """A stand-in worker: the first ever dies on its first batch; a replacement answers every
    text with its upper case, or fails to start when ``models`` says so."""
    ((_, options),) = models
    marker = Path(options["marker"])
    if marker.exists() and options["restart"] == "fails":
        conn.send(("failed", "cannot load"))
        return
    conn.send(("ready", os.getpid()))
    first = not marker.exists()
    marker.touch()
    while (call := conn.recv()) is not None:
        if first:
            os._exit(3)
        ident, groups = call
        conn.send((ident, [{"results": [{"text": t.upper()} for t in g["texts"]]} for g in groups]))


def slow_upper(conn, models, threads, parent):
    """A stand-in worker whose every batch takes ``seconds``: answers each text in upper case."""
    ((_, options),) = models
    conn.send(("ready", os.getpid()))
    while (call := conn.recv()) is not None:
        time.sleep(options["seconds"])
        ident, groups = call
        conn.send((ident, [{"results": [{"text": t.upper()} for t in g["texts"]]} for g in groups]))


def timed_upper(conn, models, threads, parent):
    """A stand-in worker whose every batch takes ``seconds``; each answer tells when its batch
    was received (``time.monotonic``, the same clock in every process)."""
    ((_, options),) = models
    conn.send(("ready", os.getpid()))
    while (call := conn.recv()) is not None:
        received = time.monotonic()
        time.sleep(options["seconds"])
        ident, groups = call
        conn.send((ident, [{"results": [{"text": t.upper(), "received": received} for t in g["texts"]]}
                           for g in groups]))


def test_a_worker_gets_its_next_batch_while_the_event_loop_is_busy():
    """The requests that arrived during a worker's call are sent to it by the thread that reads
    its answers, as soon as they are back: not once the event loop, busy answering clients (here:
    blocked for 0.6 s), gets to them. The worker starts the next call without waiting for it."""
    async def scenario():
        pool = WorkerPool([("m", {"seconds": 0.3})], 1, target=timed_upper)
        batcher = Batcher(ServeLimits(batch_window_ms=0), pool)
        await batcher.start()
        collector = asyncio.create_task(batcher.run())
        loop = asyncio.get_running_loop()
        try:
            first = batcher.submit(_job("a"))
            await asyncio.sleep(0.1)  # its call is under way
            second = batcher.submit(_job("b"))
            await asyncio.sleep(0.1)
            start = time.monotonic()
            loop.call_soon(time.sleep, 0.6)  # the loop is busy while the first call ends
            answers = [await asyncio.wait_for(f, 10) for f in (first, second)]
            return start, answers
        finally:
            collector.cancel()
            batcher.close()

    start, (first, second) = asyncio.run(scenario())
    assert [first[0]["text"], second[0]["text"]] == ["A", "B"]
    assert second[0]["received"] - start < 0.45, second[0]["received"] - start  # not after 0.6 s


def _job(*texts: str) -> Job:
    return Job(SimpleNamespace(name="m"), list(texts), {}, attention=False, scores=True)


def test_in_a_worker_a_small_request_waits_for_one_call_and_a_gone_one_is_dropped():
    """The batcher's guarantees hold with a worker process: a one-sentence request sent while an
    8-sentence request runs (one sentence per call of 0.3 s) waits for the call under way and its
    own; a request whose future is cancelled (client gone, time out) sends no more sentences."""
    async def scenario():
        pool = WorkerPool([("m", {"seconds": 0.3})], 1, target=slow_upper)
        batcher = Batcher(ServeLimits(max_texts=8, max_batch_texts=1, batch_window_ms=0), pool)
        await batcher.start()
        collector = asyncio.create_task(batcher.run())
        loop = asyncio.get_running_loop()
        try:
            large = batcher.submit(_job(*(f"s{k}" for k in range(8))))
            await asyncio.sleep(0.1)  # its first call is under way
            sent = loop.time()
            small = await asyncio.wait_for(batcher.submit(_job("x")), 30)
            waited = loop.time() - sent
            assert small == [{"text": "X"}] and not large.done()
            assert [r["text"] for r in await asyncio.wait_for(large, 30)] == [f"S{k}" for k in range(8)]
            gone = batcher.submit(_job("a", "b", "c", "d"))
            await asyncio.sleep(0.1)
            gone.cancel()
            await asyncio.sleep(1.0)  # the call under way ends; nothing else is sent
            return waited, dict(batcher.stats)
        finally:
            collector.cancel()
            batcher.close()

    waited, stats = asyncio.run(scenario())
    assert waited < 1.5, waited  # two calls of 0.3 s and the pipe; the large request took 8
    assert stats["texts"] == 8 + 1 + 1 and stats["dropped_texts"] == 3, stats


async def _serve(pool: WorkerPool, texts: list[str]) -> tuple[list, dict]:
    """Each text as a request, one after the other: its answer or the error it got."""
    batcher = Batcher(ServeLimits(batch_window_ms=0), pool)
    await batcher.start()
    collector = asyncio.create_task(batcher.run())
    outcomes = []
    try:
        for text in texts:
            try:
                outcomes.append(await asyncio.wait_for(batcher.submit(_job(text)), 60))
            except ApiError as exc:
                outcomes.append(exc)
    finally:
        collector.cancel()
        batcher.close()
    return outcomes, dict(batcher.stats)


def test_a_worker_dying_mid_batch_gets_503_and_is_replaced(tmp_path):
    pool = WorkerPool([("m", {"marker": str(tmp_path / "m"), "restart": "works"})], 1,
                      target=dies_on_its_first_batch)
    (first, second), stats = asyncio.run(_serve(pool, ["a", "b"]))
    assert isinstance(first, ApiError) and first.status == 503, first
    assert "killed" in first.message or "exited with status 3" in first.message, first.message
    assert first.headers == {"Retry-After": "1"}
    assert second == [{"text": "B"}]
    assert stats["worker_restarts"] == 1 and stats["workers_lost"] == 1 and stats["workers"] == 0  # closed
    assert not pool.workers


def test_no_worker_left_answers_503_at_once(tmp_path):
    pool = WorkerPool([("m", {"marker": str(tmp_path / "m"), "restart": "fails"})], 1,
                      target=dies_on_its_first_batch)
    start = time.monotonic()
    outcomes, stats = asyncio.run(_serve(pool, ["a", "b", "c"]))
    assert [getattr(o, "status", None) for o in outcomes] == [503, 503, 503], outcomes
    assert "no model worker is running" in outcomes[-1].message
    assert pool.broken and stats["worker_restarts"] == 0 and time.monotonic() - start < 60


def test_a_worker_that_cannot_load_stops_the_start(tmp_path):
    (tmp_path / "m").touch()  # "restart fails": already the first start fails
    pool = WorkerPool([("m", {"marker": str(tmp_path / "m"), "restart": "fails"})], 1,
                      target=dies_on_its_first_batch)
    with pytest.raises(NmtError, match="could not load the runs: cannot load"):
        asyncio.run(pool.start())
    assert not pool.workers


# ---------------------------------------------------------------------- a real server process

def _children(pid: int) -> list:
    """The processes ``pid`` started that still run (a zombie has ended: it only waits to be reaped)."""
    return [p for p in __import__("psutil").Process(pid).children(recursive=True) if _running(p)]


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _worker_of(pid: int, deadline_s: float = 30.0):
    """The model worker process of the server ``pid`` (not multiprocessing's resource tracker)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        workers = [p for p in _children(pid) if "resource_tracker" not in " ".join(p.cmdline())]
        if len(workers) == 1:
            return workers[0]
        time.sleep(0.1)
    raise AssertionError(f"no single worker among {_children(pid)}")


def test_a_killed_worker_is_replaced_and_no_worker_outlives_the_server(run, tmp_path):
    import httpx
    from conftest import serving

    log = tmp_path / "serve.log"
    with serving([run], log, "--workers", "1", "--threads", "1", "--log-level", "warning") as (base, proc):
        def translate():
            return httpx.post(base + "/api/translate", json={"text": SENTENCES[0]}, timeout=60)

        expected = translate().json()["translations"][0]["text"]
        worker = _worker_of(proc.pid)
        worker.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 120
        while (answer := translate()).status_code != 200:  # 503 while the new worker loads
            assert answer.status_code == 503 and time.monotonic() < deadline, (answer.text, log.read_text())
            time.sleep(0.2)
        assert answer.json()["translations"][0]["text"] == expected
        health = httpx.get(base + "/health").json()
        assert (health["workers"], health["worker_restarts"], health["workers_lost"]) == (1, 1, 1), health
        assert "was killed by signal 9; starting another" in log.read_text()
        assert f"model worker {_worker_of(proc.pid).pid} started in slot 0" in log.read_text()

        survivors = _children(proc.pid)
        replacement = _worker_of(proc.pid)
        proc.send_signal(signal.SIGKILL)  # no clean-up in the server: its workers must end themselves
        proc.wait(10)
        assert replacement in survivors
        deadline = time.monotonic() + 15
        while any(_running(p) for p in survivors):
            assert time.monotonic() < deadline, f"still running after the server was killed: {survivors}"
            time.sleep(0.1)


@pytest.mark.slow
def test_a_server_whose_workers_cannot_start_again_answers_503(run, tmp_path):
    """The run's weights disappear after the start: the killed worker's replacements cannot load
    them, and every request (and /health) is answered 503 at once instead of waiting."""
    import shutil

    import httpx
    from conftest import serving

    copy = tmp_path / "tiny"
    shutil.copytree(run, copy)
    log = tmp_path / "serve.log"
    with serving([copy], log, "--workers", "1", "--threads", "1", "--log-level", "warning") as (base, proc):
        shutil.rmtree(copy / "checkpoints")
        _worker_of(proc.pid).send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 120
        while httpx.get(base + "/health", timeout=10).status_code == 200:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        start = time.monotonic()
        answer = httpx.post(base + "/api/translate", json={"text": SENTENCES[0]}, timeout=60)
        assert answer.status_code == 503 and time.monotonic() - start < 5, answer.text
        assert "no model worker is running" in answer.json()["error"]
        assert answer.headers["retry-after"] == "1"
        assert "a replacement model worker failed" in log.read_text()
        assert proc.poll() is None


class _CountingRunner:
    """A model runner without processes: each batch takes ``seconds``; counts what it is asked."""

    def __init__(self, seconds: float):
        self.seconds, self.stats, self.batches, self.releases = seconds, {}, [], 0

    async def start(self):
        self._idle = asyncio.Queue()
        self._idle.put_nowait(self)

    async def acquire(self):
        return await self._idle.get()

    def alive(self):
        return True

    def release(self, runner, lost=False):
        self.releases += 1
        self._idle.put_nowait(runner)

    depth = 1

    def send(self, groups):
        self.batches.append([t for g in groups for t in g["texts"]])
        self._sent = groups
        return len(self.batches)

    def receive(self, timeout=None, wake=None):
        time.sleep(self.seconds)
        return len(self.batches), [{"results": [{"text": t.upper()} for t in g["texts"]]} for g in self._sent]

    def pump(self, runner, first, take_next, deliver, wake=None):
        return asyncio.get_running_loop().run_in_executor(None, pump_calls, self, first, take_next, deliver, wake)

    def close(self):
        pass


def test_a_joining_workers_thread_sleeps_until_a_request_is_queued_then_sends_it_at_once():
    """A worker that takes several calls at once (``--continuous``) has one under way and none
    queued: the thread reading its pipe looks at the queue when the doorbell rings, not in a loop
    (a loop of looks would take the CPU the HTTP side needs), and sends the queued call at once."""
    import multiprocessing

    ours, theirs = multiprocessing.Pipe()
    worker = _Worker(0, SimpleNamespace(is_alive=lambda: True, pid=0), ours)
    worker.depth = 2
    queued, looks, delivered = [], [], []
    bell = Doorbell()

    def take_next():
        looks.append(time.monotonic())
        return queued.pop() if queued else None

    with ThreadPoolExecutor(1) as pool:
        pumped = pool.submit(pump_calls, worker, ("first", [{"texts": ["a"]}]), take_next,
                             lambda batch, outcomes: delivered.append((batch, outcomes)), bell)
        assert theirs.poll(5) and theirs.recv() == (1, [{"texts": ["a"]}])
        time.sleep(0.3)
        idle_looks = len(looks)
        queued.append(("second", [{"texts": ["b"]}]))
        rung = time.monotonic()
        bell.ring()
        assert theirs.poll(5) and theirs.recv() == (2, [{"texts": ["b"]}])
        sent_after = time.monotonic() - rung
        theirs.send((2, ["B"]))
        theirs.send((1, ["A"]))
        assert pumped.result(5) is None
    bell.close()
    assert idle_looks <= 2, f"{idle_looks} looks at the queue in 0.3 s with nothing queued"
    assert sent_after < 0.15, sent_after
    assert delivered == [(("second", [{"texts": ["b"]}]), ["B"]), (("first", [{"texts": ["a"]}]), ["A"])]


def test_a_runner_that_ends_a_batch_while_requests_wait_takes_them_at_once():
    """The requests that arrived during a model call are the runner's next batch, sent before the
    answers are delivered and without going back to the collector; an idle runner goes back."""
    async def scenario():
        runner = _CountingRunner(0.2)
        batcher = Batcher(ServeLimits(batch_window_ms=0), runner)
        await batcher.start()
        collector = asyncio.create_task(batcher.run())
        try:
            first = batcher.submit(_job("a"))
            await asyncio.sleep(0.05)  # its call is under way
            later = [batcher.submit(_job(t)) for t in ("b", "c")]
            answers = [await asyncio.wait_for(f, 10) for f in (first, *later)]
            await asyncio.sleep(0.05)
            return answers, runner
        finally:
            collector.cancel()
            batcher.close()

    answers, runner = asyncio.run(scenario())
    assert answers == [[{"text": "A"}], [{"text": "B"}], [{"text": "C"}]]
    assert runner.batches == [["a"], ["b", "c"]]
    assert runner.releases == 1, runner.releases  # once, after the second batch


def test_a_runner_starting_from_idle_takes_half_of_many_waiting_requests():
    """Many requests waiting for an idle runner are split into two calls, the second taken the
    moment the first ends: the first half's clients can send their next requests while the second
    half is computed. A few waiting requests make one call."""
    async def scenario(count):
        runner = _CountingRunner(0.1)
        batcher = Batcher(ServeLimits(batch_window_ms=0), runner)
        await batcher.start()
        collector = asyncio.create_task(batcher.run())
        try:
            futures = [batcher.submit(_job(f"s{k}")) for k in range(count)]
            answers = [await asyncio.wait_for(f, 10) for f in futures]
            return answers, runner
        finally:
            collector.cancel()
            batcher.close()

    answers, runner = asyncio.run(scenario(2 * SPLIT_FROM + 1))
    assert answers == [[{"text": f"S{k}"}] for k in range(2 * SPLIT_FROM + 1)]
    assert [len(b) for b in runner.batches] == [SPLIT_FROM + 1, SPLIT_FROM], runner.batches
    assert runner.releases == 1  # the second half went to the runner without the collector
    answers, runner = asyncio.run(scenario(2 * SPLIT_FROM - 1))
    assert [len(b) for b in runner.batches] == [2 * SPLIT_FROM - 1], runner.batches


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_bench_serve_finds_the_workers_and_reads_their_cpu_time():
    """scripts/bench_serve.py reports CPU time per sentence of the server and of its workers."""
    import multiprocessing

    from conftest import load_script

    bench = load_script("bench_serve")
    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(30,))
    child.start()
    try:
        deadline = time.monotonic() + 20
        while child.pid not in bench.worker_pids(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert child.pid in bench.worker_pids(os.getpid())
        sum(range(3_000_000))  # some CPU time of this process
        assert bench.cpu_seconds(os.getpid()) > 0 and bench.cpu_of([child.pid]) is not None
        assert bench.cpu_of([]) is None and bench.cpu_seconds(2 ** 22 + 7) is None
    finally:
        child.terminate()
        child.join(10)

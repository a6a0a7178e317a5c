"""Served against offline throughput: ``nmt serve`` under 1, 16 and 64 concurrent clients.

    python scripts/bench_serve.py runs/fr-en test.fr --lines 640
    python scripts/bench_serve.py runs/fr-en test.fr --workers 0 --threads 1 --beam 5
    python scripts/bench_serve.py runs/fr-en test.fr -- --precision bf16   # options of nmt serve

In one run, on this machine's loopback interface:

1. offline: ``Translator.translate`` on the whole list of sentences, in this process, with the
   server's settings (precision, torch threads of one worker, beam), after a warm-up call, called
   ``--offline-calls`` times, half before and half after the served levels; the median is the
   reference of served / offline;
2. ``nmt serve RUN_DIR`` started on a free loopback port (``--workers``, ``--threads``), and for
   each ``--clients`` level every sentence sent once as its own request (``{"text": ...}``), each
   client sending its next request when the last is answered: sentences/s, p50/p95/p99 latency,
   the sentences per model call the server batched (its ``/health`` counts), and the CPU time per
   sentence of the server process and of its model workers with the workers' busy fraction (from
   ``/proc``, Linux): on a machine shared with other work these vary less than sentences/s do;
   and how often the workers were seen with a batch (running or waiting for a CPU, sampled every
   5 ms), which, unlike the busy fraction, other work on the machine does not lower.

Prints a markdown table with the CPU (``lscpu`` Model name) and served / offline. With
``--rounds N`` every level is served N times, an offline call between rounds, and a level's row
is its round of median served / offline, each round taken against the offline calls on either
side of it, with the range of the rounds. Stops by itself:
the server is stopped at the end, on an error and past ``--max-seconds`` (levels not finished by
then are reported as such).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's nmt, as the server it starts


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("source", help="one sentence per line")
    ap.add_argument("--lines", type=int, default=640, help="sentences (the first lines of SOURCE)")
    ap.add_argument("--clients", default="1,16,64", help="comma-separated concurrency levels")
    ap.add_argument("--workers", type=int, help="nmt serve --workers (default: the server's choice)")
    ap.add_argument("--threads", type=int, help="nmt serve --threads, and the offline torch threads "
                                                "(default: the server's choice for one worker)")
    ap.add_argument("--beam", type=int, help="beam of every request and of the offline call "
                                             "(default: the run's recipe)")
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--max-seconds", type=float, default=900.0, help="stop everything after this long")
    ap.add_argument("--offline-calls", type=int, default=4,
                    help="offline calls, half before and half after the served levels; their median is the reference")
    ap.add_argument("--rounds", type=int, default=1,
                    help="serve every level this many times, with an offline call after each round: each "
                         "round's served / offline is taken against the offline calls on either side of it, "
                         "and the table gives their median and range (the speed of a shared host drifts "
                         "within minutes)")
    ap.epilog = "Options of nmt serve for the measured server go after --, e.g. -- --max-batch-texts 32."
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.serve_options = argv[cut + 1:]
    return args


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown CPU"


def server_settings(args) -> tuple[int, int]:
    """The workers and threads the server will use (its own defaults when not given)."""
    from nmt.tools.serve_pool import workers_and_threads

    return workers_and_threads(args.workers, args.threads)


def offline_translator(args, sentences: list[str], threads: int | None):
    """The offline side: a ``Translator`` in this process with the server's settings, warmed up."""
    import torch

    from nmt.inference.translator import Translator

    if threads:
        torch.set_num_threads(threads)
    translator = Translator.load(args.run_dir, device="cpu", precision=args.precision)
    translator.translate(sentences[:8], beam=args.beam, return_scores=True)  # warm-up
    return translator


def offline(args, translator, sentences: list[str], calls: int) -> list[tuple[float, float]]:
    """For each of ``calls`` ``Translator.translate`` calls on the whole list: sentences/s and CPU
    seconds per sentence (this process: the torch threads included)."""
    out = []
    for _ in range(calls):
        start, cpu = time.perf_counter(), time.process_time()
        translator.translate(sentences, beam=args.beam, return_scores=True)
        out.append((len(sentences) / (time.perf_counter() - start), (time.process_time() - cpu) / len(sentences)))
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads) so far; None where ``/proc``
    does not tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(server: int) -> list[int]:
    """The model worker processes of the server ``server`` (its children started by
    multiprocessing's ``spawn``)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except (OSError, IndexError, ValueError):
            continue
        if parent == server and b"spawn_main" in command:
            found.append(int(entry))
    return found


class StateSampler:
    """How often the processes ``pids`` were running or waiting for a CPU (state ``R``), rather
    than waiting for work: sampled from ``/proc`` every ``every`` seconds on a thread. Unlike CPU
    time over wall time this does not drop when other work on the machine takes the CPU: it tells
    whether a worker had a batch to compute."""

    def __init__(self, pids: list[int], every: float = 0.005):
        self.pids, self.every = pids, every
        self.samples = self.running = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        if self.pids:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            for pid in self.pids:
                state = process_state(pid)
                if state is not None:
                    self.samples += 1
                    self.running += state == "R"

    @property
    def fraction(self) -> float | None:
        return self.running / self.samples if self.samples else None


def process_state(pid: int) -> str | None:
    """The scheduler state of process ``pid`` (``R`` running or runnable, ``S`` sleeping, ...)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def cpu_of(pids: list[int]) -> float | None:
    times = [cpu_seconds(pid) for pid in pids]
    return None if not pids or None in times else sum(times)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_arguments(args, workers: int, threads: int | None) -> list[str]:
    """``nmt serve`` arguments of the measured server (after ``serve``; host and port are added)."""
    return [args.run_dir, "--workers", str(workers), "--precision", args.precision, "--log-level", "warning",
            "--queue-limit", "1000", *(["--threads", str(threads)] if threads else []), *args.serve_options]


@contextlib.contextmanager
def running_server(serve_args: list[str], log, deadline: float):
    """``nmt serve SERVE_ARGS`` of this checkout on a free loopback port, output to ``log`` (None:
    this process's); yields its base URL and process id once ``/health`` answers, and stops it
    afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "nmt", "serve", *serve_args, "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log is not None else None, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, base, deadline)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_up(proc: subprocess.Popen, base: str, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"nmt serve exited with status {proc.returncode} (see its log)")
        if time.monotonic() > deadline:
            raise SystemExit("nmt serve did not start in time")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol to POST JSON and read
    the answer: the load generator shares the 2 CPUs with the server, and a full HTTP client costs
    several times more CPU per request (with 64 connections in one pool, enough to starve the
    server of requests)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                          + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        answer = await self.reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            self.writer.close()
            self.reader = self.writer = None
        return status, answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(base: str, sentences: list[str], clients: int, beam: int | None) -> tuple[float, list[float]]:
    """Every sentence once, ``clients`` at a time, each client on its own connection; (seconds,
    latency of each request)."""
    latencies: list[float] = []
    extra = {"beam": beam} if beam else {}
    host, port = base.split("//", 1)[1].rsplit(":", 1)

    async def client(k: int, share: list[str]) -> None:
        conn = Connection(host, int(port))
        try:
            for text in share:
                start = time.perf_counter()
                status, answer = await conn.post("/api/translate", json.dumps({"text": text, **extra}).encode())
                if status != 200:
                    raise RuntimeError(f"the server answered {status}: {answer[:200]!r}")
                latencies.append(time.perf_counter() - start)
        finally:
            conn.close()

    await asyncio.gather(*(client(k, sentences[k:8:4]) for k in range(min(clients, 4))))  # warm-up
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(client(k, sentences[k::clients]) for k in range(clients)))
    return time.perf_counter() - start, latencies


def level(base: str, sentences: list[str], clients: int, beam: int | None, left: float,
          server: int | None = None) -> dict | None:
    """One concurrency level's figures; None when it did not finish within ``left`` seconds.
    ``server``: the server's process id, for the CPU time of it and of its workers."""
    before = httpx.get(base + "/health", timeout=10).json()
    workers = worker_pids(server) if server else []
    cpu_before = cpu_seconds(server) if server else None, cpu_of(workers)
    try:
        with StateSampler(workers) as states:
            seconds, latencies = asyncio.run(asyncio.wait_for(load(base, sentences, clients, beam), left))
    except asyncio.TimeoutError:
        return None
    cpu_after = cpu_seconds(server) if server else None, cpu_of(workers)
    after = httpx.get(base + "/health", timeout=10).json()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    calls = after["model_calls"] - before["model_calls"]
    n = len(latencies)
    spent = [None if a is None or b is None else b - a for a, b in zip(cpu_before, cpu_after)]
    return {"rate": n / seconds, "p50": q[49], "p95": q[94], "p99": q[98],
            "per_call": (after["texts"] - before["texts"]) / max(1, calls),
            "server_cpu": None if spent[0] is None else spent[0] / n,
            "worker_cpu": None if spent[1] is None else spent[1] / n,
            "worker_busy": None if spent[1] is None else spent[1] / seconds / len(workers),
            "worker_running": states.fraction}


def _pct(fraction: float | None) -> str:
    return "?" if fraction is None else format(fraction, ".0%")


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1e3:.2f}"


def report(args, workers: int, threads: int | None, offline_rate: float, rows: dict,
           offline_cpu: float | None = None, spread: tuple[float, float, int] | None = None) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"{when}, {cpu_model()} ({os.cpu_count()} CPUs), {args.lines} sentences of {args.source}, "
             f"run {args.run_dir}, beam {args.beam or 'of the recipe'}, {args.precision}, "
             f"--workers {workers}, --threads {threads or 'default'} (offline: the same torch threads, "
             "in this process)", "",
             "| clients | sentences/s | p50 / p95 / p99 latency (ms) | sentences per model call | served / offline "
             "| CPU ms per sentence: server / workers | workers busy | workers with a batch |",
             "|---|---|---|---|---|---|---|---|"]
    for clients, r in rows.items():
        if clients > args.lines:  # a client per sentence at most
            clients = f"{clients} ({args.lines} with a sentence)"
        if r is None:
            lines.append(f"| {clients} | not finished within --max-seconds | | | | | | |")
            continue
        rate, ratio = f"{r['rate']:,.1f}", f"{r['rate'] / offline_rate:.2f}"
        if "ratio" in r:  # the median of several rounds, each against its own offline reference
            rate += f" ({r['rate_range'][0]:,.1f}–{r['rate_range'][1]:,.1f}, {r['rounds']} rounds)"
            ratio = f"{r['ratio']:.2f} ({r['ratio_range'][0]:.2f}–{r['ratio_range'][1]:.2f})"
        lines.append(f"| {clients} | {rate} | {r['p50'] * 1e3:.0f} / {r['p95'] * 1e3:.0f} / "
                     f"{r['p99'] * 1e3:.0f} | {r['per_call']:.1f} | {ratio} | "
                     f"{_ms(r['server_cpu'])} / {_ms(r['worker_cpu'])} | "
                     f"{_pct(r['worker_busy'])} | {_pct(r.get('worker_running'))} |")
    what = "one `Translator.translate` call"
    if spread and spread[2] > 1:
        what = f"median of {spread[2]} `Translator.translate` calls ({spread[0]:,.1f}–{spread[1]:,.1f})"
    lines.append(f"| offline: {what} | {offline_rate:,.1f} | | | 1 | "
                 f"{_ms(offline_cpu)} (this process) | | |")
    return "\n".join(lines)


def main() -> None:
    args = _args()
    deadline = time.monotonic() + args.max_seconds
    with open(args.source, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for _, line in zip(range(args.lines), f) if line.strip()]
    args.lines = len(sentences)
    levels = [int(c) for c in args.clients.split(",")]
    workers, threads = server_settings(args)
    translator = offline_translator(args, sentences, threads)
    # offline calls before and after the served levels, their median the reference: one call of a
    # few hundred sentences varies by a quarter from one minute to the next on a shared host
    calls = offline(args, translator, sentences, (args.offline_calls + 1) // 2)
    with tempfile.NamedTemporaryFile("w+b", prefix="bench-serve-", suffix=".log") as log:
        try:
            with running_server(server_arguments(args, workers, threads), log,
                                min(deadline, time.monotonic() + 300)) as (base, server):
                rounds = []  # per round: its rows and the offline rate on either side of it
                for r in range(max(1, args.rounds)):
                    rows = {}
                    for clients in levels:
                        left = deadline - time.monotonic()
                        rows[clients] = level(base, sentences, clients, args.beam, left, server) if left > 0 else None
                    if r < args.rounds - 1:  # between two rounds (the server idle)
                        calls += offline(args, translator, sentences, 1)
                    rounds.append((rows, calls[-1][0]))
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode("utf-8", "replace")[-4000:])
            raise
    calls += offline(args, translator, sentences, args.offline_calls // 2)
    rates = sorted(rate for rate, _ in calls)
    offline_rate = statistics.median(rates)
    offline_cpu = statistics.median(cpu for _, cpu in calls)
    if len(rounds) == 1:
        print(report(args, workers, threads, offline_rate, rounds[0][0], offline_cpu, (rates[0], rates[-1], len(rates))))
        return
    # each round against the offline calls on either side of it
    references = [(before + after) / 2 for (_, before), after in zip(rounds, [r for _, r in rounds[1:]] + [calls[-1][0]])]
    print(report(args, workers, threads, offline_rate, median_rows(rounds, references), offline_cpu,
                 (rates[0], rates[-1], len(rates))))


def median_rows(rounds: list[tuple[dict, float]], references: list[float]) -> dict:
    """Per level, the round of median served / offline (its own offline reference; the lower middle
    one of an even count), with the
    range of the rounds' rates and ratios in ``rate_range`` and ``ratio_range``."""
    out = {}
    for clients in rounds[0][0]:
        done = [(rows[clients], ref) for (rows, _), ref in zip(rounds, references) if rows.get(clients)]
        if not done:
            out[clients] = None
            continue
        done.sort(key=lambda pair: pair[0]["rate"] / pair[1])
        row, ref = done[(len(done) - 1) // 2]  # the lower of the middle two for an even count
        ratios = [r["rate"] / f for r, f in done]
        out[clients] = {**row, "ratio": row["rate"] / ref, "ratio_range": (min(ratios), max(ratios)),
                        "rate_range": (min(r["rate"] for r, _ in done), max(r["rate"] for r, _ in done)),
                        "rounds": len(done)}
    return out


if __name__ == "__main__":
    main()

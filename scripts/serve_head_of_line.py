"""How long a one-word request waits behind a large one: ``nmt serve`` with and without ``--continuous``.

    python scripts/serve_head_of_line.py runs/fr-en test.fr
    python scripts/serve_head_of_line.py runs/fr-en test.fr --texts 20 --beam 8 --n-best 2 --rounds 3

For each mode (calls, then ``--continuous``) a server is started on a free loopback port; in each
round a large request (``--texts`` inputs of SOURCE of at least ``--min-chars`` characters, each
repeated ``--repeat`` times and not split into sentences, ``--beam``, ``--n-best``) is sent, and
``--after`` seconds later ``{"text": "Merci"}``; both latencies are printed. Stops by itself: the
servers are stopped at the end, on an error and past ``--max-seconds``.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("source", help="one sentence per line")
    ap.add_argument("--texts", type=int, default=20, help="inputs of the large request")
    ap.add_argument("--min-chars", type=int, default=60, help="its inputs: lines at least this long")
    ap.add_argument("--repeat", type=int, default=3, help="each input is its line this many times")
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--n-best", type=int, default=2)
    ap.add_argument("--after", type=float, default=0.2, help="seconds between the large and the small request")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    return ap.parse_args()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(run_dir: str, extra: list[str], deadline: float):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nmt", "serve", run_dir, "--port", str(port),
                             "--log-level", "warning", *extra], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(base + "/health", timeout=5).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read().decode('utf-8', 'replace')[-2000:]}")


def main() -> None:
    args = _args()
    deadline = time.monotonic() + args.max_seconds
    with open(args.source, encoding="utf-8") as f:
        lines = [line.strip() for line in f if len(line.strip()) >= args.min_chars][: args.texts]
    large = {"texts": [" ".join([line] * args.repeat) for line in lines], "beam": args.beam,
             "n_best": args.n_best, "split_sentences": False}
    for mode, extra in (("calls", []), ("continuous", ["--continuous"])):
        proc, base = _serve(args.run_dir, extra, deadline)
        try:
            httpx.post(base + "/api/translate", json={"text": "Bonjour"}, timeout=60)  # warm-up
            for r in range(args.rounds):
                timing: dict[str, tuple[float, int]] = {}

                def send_large():
                    start = time.perf_counter()
                    answer = httpx.post(base + "/api/translate", json=large, timeout=max(1.0, deadline - time.monotonic()))
                    timing["large"] = (time.perf_counter() - start, answer.status_code)

                thread = threading.Thread(target=send_large)
                thread.start()
                time.sleep(args.after)
                start = time.perf_counter()
                small = httpx.post(base + "/api/translate", json={"text": "Merci"}, timeout=max(1.0, deadline - time.monotonic()))
                waited = time.perf_counter() - start
                thread.join()
                print(f"{mode}, round {r + 1}: one word {waited:.2f} s ({small.status_code}), "
                      f"large request {timing['large'][0]:.2f} s ({timing['large'][1]})", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()

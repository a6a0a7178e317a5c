"""``nmt serve``."""
from __future__ import annotations

import argparse
import math

from nmt.commands.common import add_checkpoint, add_precision

NAME = "serve"
HELP = "a translation web page showing attention, and a JSON API"
EXAMPLES = """
    nmt serve runs/fr-en                                page at http://127.0.0.1:8000/, API at /docs
    nmt serve runs/fr-en runs/fr-en-local-p --port 8080   two runs side by side
    nmt serve --ensemble runs/fr-en runs/fr-en-seed2     one model: the two runs' ensemble
    nmt serve --engine onnx export/fr-en                 an nmt export on onnxruntime (no PyTorch)
    nmt serve runs/fr-en --host 0.0.0.0 --token-file token.txt   other machines, with a token
    curl -s localhost:8000/api/translate -H 'content-type: application/json' \\
         -d '{"text": "Je suis fatigué.", "n_best": 3, "beam": 5}'
    """


def bounded(kind: type, low: float, high: float, above: bool = False):
    """An argparse type: a ``kind`` (int or float) in ``[low, high]`` (``(low, high]`` with
    ``above``); anything else exits 2 naming the range."""
    words = f"{'above' if above else 'at least'} {low:g} and at most {high:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if not math.isfinite(value) or value < low or value > high or (above and value == low):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {words}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories written by nmt train (with --engine onnx: export directories "
                        "written by nmt export); each is one model, side by side")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="torch: run directories on PyTorch (default); onnx: nmt export directories on "
                        "onnxruntime and numpy, without PyTorch")
    p.add_argument("--ensemble", action="store_true",
                   help="serve the RUN_DIRs as one model, their ensemble (the mean of their "
                        "log-probabilities, as nmt translate RUN_A RUN_B decodes); torch engine")
    p.add_argument("--token-file", metavar="FILE",
                   help="a file holding a secret token: the API and /metrics then answer only requests "
                        "sending 'Authorization: Bearer TOKEN' (401 otherwise; /health, the page and /docs "
                        "stay open). Read once at start, never logged; required when --host is not loopback")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other "
                        "address needs --token-file)")
    p.add_argument("--port", type=bounded(int, 0, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--allowed-hosts", metavar="NAMES",
                   help="comma-separated Host names the server answers to, '*' for any (default: the "
                        "--host name and the loopback names; with --host 0.0.0.0 also this machine's "
                        "names and any address); guards against DNS rebinding")
    add_checkpoint(p)
    add_precision(p)
    p.add_argument("--max-texts", type=bounded(int, 1, 10_000), default=32,
                   help="sentences per request (default 32)")
    p.add_argument("--max-chars", type=bounded(int, 1, 100_000), default=1000,
                   help="characters per sentence (default 1000)")
    p.add_argument("--max-beam", type=bounded(int, 1, 256), default=16,
                   help="largest beam a request may ask for (default 16)")
    p.add_argument("--queue-limit", type=bounded(int, 1, 100_000), default=64,
                   help="requests waiting for the model before answering 503 (default 64)")
    p.add_argument("--batch-window-ms", type=bounded(float, 0, 1000), default=2.0,
                   help="how long waiting requests wait for others to batch with, when several wait "
                        "(default 2)")
    p.add_argument("--max-batch-texts", type=bounded(int, 1, 10_000), default=64,
                   help="sentences per model call (default 64)")
    p.add_argument("--max-batch-work", type=bounded(int, 1, 10**9), default=20_000,
                   help="work (source pieces x beam x n-best) per model call: what a small request "
                        "may wait behind (default 20000)")
    p.add_argument("--max-request-work", type=bounded(int, 1, 10**9), default=50_000,
                   help="work (source pieces x beam x n-best, summed over its texts) one request may "
                        "ask for; more is answered 413 (default 50000)")
    p.add_argument("--max-attention-cells", type=bounded(int, 1, 10**9), default=1_000_000,
                   help="attention weights one answer may hold; more is answered 413 (default 1000000)")
    p.add_argument("--request-timeout-s", type=bounded(float, 0, 3600, above=True), default=60.0,
                   help="a request not answered within this many seconds gets 504 (default 60); on "
                        "SIGTERM the server answers the requests under way (for at most this long), "
                        "answers new ones 503, then exits 0")
    p.add_argument("--workers", type=bounded(int, 0, 64), metavar="N",
                   help="model worker processes, each loading the runs once, so HTTP and JSON work "
                        "never share an interpreter with the model (default: 1 up to 4 CPUs, then one "
                        "per 4 CPUs, at most 8; 0: the model runs on a thread of the server)")
    p.add_argument("--threads", type=bounded(int, 1, 1024),
                   help="intra-op threads of each worker, torch's or onnxruntime's (default: the CPUs "
                        "but one, shared between the workers; with --workers 0, the engine's choice; 1 "
                        "suits small models and busy machines)")
    p.add_argument("--continuous", action="store_true",
                   help="continuous batching: a worker's sentences join the beam search under way at its "
                        "next step and each is answered when done, instead of waiting for the model call "
                        "under way to end (beam search without attention, alignments, constraints, "
                        "markup or sampling; other requests run as before): a small request no longer "
                        "waits behind a large one's model call (docs/performance.md)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="server log level (info logs every request)")


def run(args) -> int:
    from nmt.tools.serve import serve_cli

    return serve_cli(args)

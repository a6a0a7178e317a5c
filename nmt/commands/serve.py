"""``nmt serve``."""
from __future__ import annotations

import argparse

from nmt.commands.common import add_checkpoint, add_precision

NAME = "serve"
HELP = "a translation web page showing attention, and a JSON API"
EXAMPLES = """
    nmt serve runs/fr-en                                page at http://127.0.0.1:8000/, API at /docs
    nmt serve runs/fr-en runs/fr-en-local-p --port 8080   two runs side by side
    curl -s localhost:8000/api/translate -H 'content-type: application/json' \\
         -d '{"text": "Je suis fatigué.", "n_best": 3, "beam": 5}'
    """


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by nmt train")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allowed-hosts", metavar="NAMES",
                   help="comma-separated Host names the server answers to, '*' for any (default: the "
                        "--host name and the loopback names; with --host 0.0.0.0 also this machine's "
                        "names and any address); guards against DNS rebinding")
    add_checkpoint(p)
    add_precision(p)
    p.add_argument("--max-texts", type=int, default=32, help="sentences per request (default 32)")
    p.add_argument("--max-chars", type=int, default=1000, help="characters per sentence (default 1000)")
    p.add_argument("--max-beam", type=int, default=16, help="largest beam a request may ask for (default 16)")
    p.add_argument("--queue-limit", type=int, default=64,
                   help="requests waiting for the model before answering 503 (default 64)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long a request waits for others to batch with (default 2)")
    p.add_argument("--max-batch-texts", type=int, default=64, help="sentences per model call (default 64)")
    p.add_argument("--max-batch-work", type=int, default=20_000,
                   help="work (source pieces x beam x n-best) per model call: what a small request "
                        "may wait behind (default 20000)")
    p.add_argument("--max-request-work", type=int, default=50_000,
                   help="work (source pieces x beam x n-best, summed over its texts) one request may "
                        "ask for; more is answered 413 (default 50000)")
    p.add_argument("--max-attention-cells", type=int, default=1_000_000,
                   help="attention weights one answer may hold; more is answered 413 (default 1000000)")
    p.add_argument("--request-timeout-s", type=float, default=60.0,
                   help="a request not answered within this many seconds gets 504 (default 60)")
    p.add_argument("--threads", type=int,
                   help="torch threads of the model (default: torch's choice; 1 suits small models "
                        "and busy machines)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="server log level (info logs every request)")


def run(args) -> int:
    from nmt.tools.serve import serve_cli

    return serve_cli(args)

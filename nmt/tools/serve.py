"""``nmt serve``: a translation web page that shows attention, and a JSON API (FastAPI on uvicorn).

::

    nmt serve runs/fr-en                         http://127.0.0.1:8000/ (the page), /docs (the API)
    nmt serve runs/fr-en runs/fr-en-local-p      two runs: the page shows them side by side

Endpoints:

- ``POST /api/translate``: ``text`` (one sentence) or ``texts`` (a list), and optionally ``model``
  (a served run's name; default: the first), ``beam``, ``n_best``, ``length_penalty``,
  ``shortlist``, ``return_scores`` (default true), ``return_attention`` (default false). Answers
  the n-best hypotheses of each text with their scores, per-token log-probabilities and target
  pieces; with ``return_attention`` also the source pieces, the attention matrix (target pieces ×
  source pieces), local-p's predicted centres and window, and the encoder's self-attention weights
  (layers × heads × source × source) when it has self-attention layers. ``return_alignment``
  adds each hypothesis's word alignment; ``constraints`` (one list of target terms per text) asks
  for terminology-constrained beam search, and each hypothesis then says ``constraints_met``.
- ``GET /api/models``: each served run's summary (attention, activation, sizes, parameters, test
  BLEU when ``nmt evaluate`` wrote ``RUN_DIR/eval/test.*.json``). ``GET /health``. ``GET /metrics``:
  Prometheus text format (:mod:`nmt.tools.serve_metrics`).
- ``GET /``: the page (static files shipped in ``nmt/tools/static``; no network access).
  ``/?text=...&model=...`` opens it with that sentence translated. ``GET /openapi.json``: the API
  schema; ``GET /docs`` renders it with Swagger UI, which the browser loads from a CDN.

Requests are split into sentences and translated together with other requests' sentences, one
model call at a time on a single worker thread (:mod:`nmt.tools.serve_batcher`), so concurrent
requests neither oversubscribe the CPU threads nor queue without bound (past ``queue_limit``
waiting requests the server answers 503 with ``Retry-After``), and a small request is not stuck
behind a large one. A request's work and its answer's size are bounded (413), so is its time
(504), and a request whose client went away is dropped. Every malformed request gets a 4xx JSON
answer ``{"error": message, "details": [...]}``, never a 500.
"""
import asyncio
import json
import socket
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nmt.errors import NmtError
from nmt.tools.serve_batcher import Batcher, Job
from nmt.tools.serve_guard import RequestGuard, default_allowed_hosts, is_loopback
from nmt.tools.serve_requests import (
    UNREADABLE_BODY,
    ApiError,
    ServeLimits,
    body_error,
    check_constraints,
    check_request,
    finite_or_null,
    printable,
    request_model,
    request_work,
    validation_error,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"

__all__ = ["ServeLimits", "create_app", "run_summary", "serve_cli", "STATIC_DIR"]


# --------------------------------------------------------------------------------------- models

@dataclass
class ServedModel:
    name: str
    translator: Any  #: nmt.inference.translator.Translator
    summary: dict[str, Any]
    has_lexicon: bool
    self_attention: bool


def _test_bleu(run_dir: Path) -> dict[str, Any] | None:
    """The most recent ``nmt evaluate`` result on the test split, or None."""
    best = None
    for path in sorted((run_dir / "eval").glob("test.*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            score = float(record["scores"]["bleu"]["score"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable or foreign file: the summary simply has no BLEU from it
        # NaN or inf (a diverged run's evaluation) cannot go into JSON: null instead
        entry = finite_or_null({"bleu": round(score, 2), "beam": record.get("beam"),
                                "checkpoint": record.get("checkpoint"), "shortlist": record.get("shortlist"),
                                "file": f"eval/{path.name}", "timestamp": str(record.get("timestamp", ""))})
        if best is None or entry["timestamp"] >= best["timestamp"]:
            best = entry
    return best


def run_summary(name: str, translator) -> dict[str, Any]:
    """What the page and ``GET /api/models`` say about a served run."""
    recipe = translator.recipe
    m = recipe.model
    att = m.attention
    local = att.kind == "local-p"
    run_dir = Path(translator.run_dir) if translator.run_dir is not None else None
    return {
        "name": name,
        "run_dir": str(run_dir) if run_dir else None,
        "src_lang": recipe.data.src_lang,
        "tgt_lang": recipe.data.tgt_lang,
        "attention": att.kind,
        "attention_score": att.score if local else None,
        "window": att.window if local else None,
        "activation": m.activation,
        "embedding_dim": m.embedding_dim,
        "encoder": {"layers": m.encoder.layers, "hidden_size": m.encoder.hidden_size,
                    "bidirectional": m.encoder.bidirectional,
                    "self_attention_layers": m.encoder.self_attention_layers,
                    "self_attention_heads": m.encoder.self_attention_heads
                    if m.encoder.self_attention_layers else 0},
        "decoder": {"layers": m.decoder.layers, "hidden_size": m.decoder.hidden_size},
        "vocab": {"src": translator.tokenizers.src_vocab_size,
                  "tgt": translator.tokenizers.tgt_vocab_size},
        "parameters": sum(p.numel() for p in translator.model.parameters()),
        "decode": {"beam": recipe.decode.beam, "length_penalty": recipe.decode.length_penalty,
                   "shortlist": recipe.decode.shortlist},
        "test_bleu": _test_bleu(run_dir) if run_dir else None,
    }


def _model_names(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's directory name; runs that share a name are told apart by their parent."""
    names = [p.resolve().name or str(p) for p in run_dirs]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(run_dirs, names)]


def load_models(run_dirs: Sequence[str | Path], checkpoint: str = "best",
                precision: str | None = None) -> list[ServedModel]:
    """Each run's translator (``precision`` None: its recipe's ``decode.precision``; ``auto`` is
    resolved here, before the first request)."""
    from nmt.inference.shortlist import LEXICON_FILE
    from nmt.inference.translator import Translator

    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise NmtError("nmt serve needs at least one run directory")
    names = _model_names(paths)
    if len(set(names)) != len(names):
        raise NmtError(f"run directories {', '.join(map(str, paths))} do not have distinct names; "
                       "serve each run once")
    models = []
    for name, path in zip(names, paths):
        if not path.is_dir():
            raise NmtError(f"run directory {path} not found (train one with: nmt train RECIPE)")
        translator = Translator.load(path, checkpoint, device="cpu", precision=precision)
        translator.resolve_precision()
        warn = getattr(translator, "warn", None)
        if warn is not None and hasattr(warn, "prefix"):
            warn.prefix = f"nmt serve [{name}]"
        models.append(ServedModel(
            name=name, translator=translator, summary=run_summary(name, translator),
            has_lexicon=(path / LEXICON_FILE).is_file(),
            self_attention=bool(translator.recipe.model.encoder.self_attention_layers)))
    return models


# ------------------------------------------------------------------------------------------ app

def create_app(run_dirs: Sequence[str | Path] = (), limits: ServeLimits | None = None, *,
               models: Sequence[ServedModel] | None = None, checkpoint: str = "best",
               precision: str = "float32", threads: int | None = None,
               allowed_hosts: Sequence[str] | None = None):
    """The FastAPI application serving ``run_dirs`` (or already loaded ``models``).

    ``threads``: torch intra-op threads of the model thread (default: torch's choice).
    ``allowed_hosts``: the Host names it answers (:mod:`nmt.tools.serve_guard`; None: any; ``nmt
    serve`` passes the names it listens on).
    """
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    limits = limits or ServeLimits()
    served = list(models) if models is not None else load_models(run_dirs, checkpoint, precision)
    batcher = Batcher(limits, threads)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            task.cancel()
            batcher.executor.shutdown(wait=False, cancel_futures=True)

    from nmt import __version__

    app = FastAPI(title="nmt serve", version=__version__, lifespan=lifespan,
                  description="Translate with attention-based GRU models and look at their attention.")
    app.state.batcher = batcher
    app.state.models = served
    app.state.limits = limits
    _add_error_handlers(app, limits)
    app.add_middleware(RequestGuard, max_body_bytes=limits.max_body_bytes, allowed_hosts=allowed_hosts)
    _add_api(app, served, batcher, limits)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _error_response(err: ApiError):
    from fastapi.responses import JSONResponse

    body: dict[str, Any] = {"error": err.message}
    if err.details:
        body["details"] = err.details
    return JSONResponse(printable(body), status_code=err.status, headers=err.headers)


def _add_error_handlers(app, limits: ServeLimits) -> None:
    """Every refusal as a 4xx JSON answer ``{"error": ..., "details": [...]}``."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and kind != "application/json":
            return _error_response(ApiError(415, f"the body is sent as {kind or 'no content type'}; "
                                                 "send JSON with the header Content-Type: application/json"))
        return _error_response(validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 400 and message == UNREADABLE_BODY:  # FastAPI's words for any parse failure
            return _error_response(body_error(exc.__cause__))
        if exc.status_code == 404:
            message = f"no such page or endpoint: {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        return JSONResponse({"error": message}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))



def _add_api(app, served: list[ServedModel], batcher: "Batcher", limits: ServeLimits) -> None:
    """The endpoints: ``POST /api/translate``, ``GET /api/models``, ``GET /health`` and the page."""
    from fastapi import Request
    from fastapi.responses import FileResponse, JSONResponse, Response

    by_name = {m.name: m for m in served}
    default = served[0].name
    TranslateRequest = request_model()

    @app.post("/api/translate", summary="Translate text; n-best, scores and attention on request",
              responses={400: {"description": "malformed JSON"}, 404: {"description": "unknown model"},
                         413: {"description": "too much work or too large an answer"},
                         422: {"description": "invalid request"},
                         503: {"description": "queue full; retry after Retry-After seconds"},
                         504: {"description": "not answered within the request time limit"}})
    async def translate(req: TranslateRequest, request: Request):
        start, status = time.perf_counter(), 500
        try:
            model, texts, options = check_request(req, by_name, default, limits)
            work = request_work(model, texts, options, req.return_attention, limits)
            job = Job(model, texts, options, req.return_attention, req.return_scores, work,
                      constraints=check_constraints(req, texts, limits), alignment=req.return_alignment)
            batcher.submit(job)
            batcher.stats["requests"] += 1
            results = await _answer(job, request, batcher, limits)
            out: dict[str, Any] = {"model": model.name, "translations": results}
            if req.return_attention:
                out["attention"] = model.summary["attention"]
                out["window"] = model.summary["window"]
            status = 200
            return JSONResponse(out)  # already plain JSON: no second encoding pass
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            if batcher.metrics is not None:
                batcher.metrics.request(status, time.perf_counter() - start)

    @app.get("/api/models", summary="The served runs")
    async def list_models():
        return {"models": [m.summary for m in served],
                "limits": {"max_texts": limits.max_texts, "max_chars": limits.max_chars,
                           "max_beam": limits.max_beam, "max_request_work": limits.max_request_work,
                           "max_attention_cells": limits.max_attention_cells,
                           "request_timeout_s": limits.request_timeout_s}}

    @app.get("/health", summary="Liveness and queue state")
    async def health():
        return {"status": "ok", "models": list(by_name), "waiting": len(batcher.pending),
                "queue_limit": limits.queue_limit, **batcher.stats}

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def metrics():
        if batcher.metrics is None:
            raise ApiError(503, "metrics need prometheus-client: pip install 'nmt[serve]'")
        body, kind = batcher.metrics.render()
        return Response(body, media_type=kind)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _answer(job: Job, request, batcher: Batcher, limits: ServeLimits) -> list:
    """The request's answers; 504 past the time limit. Checks every ``POLL_S`` whether the client
    is still there: a request nobody waits for is dropped (its sentences not yet started are not
    computed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.request_timeout_s
    while not job.future.done():
        left = deadline - loop.time()
        if left <= 0:
            job.future.cancel()
            batcher.stats["timed_out"] += 1
            raise ApiError(504, f"the request was not answered within {limits.request_timeout_s:g} s "
                                "(--request-timeout-s); send fewer or shorter texts or a smaller beam, "
                                "or retry when the server is less busy")
        await asyncio.wait([job.future], timeout=min(POLL_S, left))
        if not job.future.done() and await request.is_disconnected():
            job.future.cancel()
            batcher.stats["abandoned"] += 1
            raise ApiError(499, "the client closed the connection")
    return job.future.result()


POLL_S = 0.1  #: how often a waiting request checks its client and its time limit


# ------------------------------------------------------------------------------------------ CLI

def _check_port(host: str, port: int) -> None:
    """Fail before loading models when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NmtError(f"--host {host}: cannot resolve it ({exc.strerror}); give an address such "
                       "as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise NmtError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another "
                           "--port (or stop the program using it)") from None


def serve_cli(args) -> int:
    """``nmt serve RUN_DIR [RUN_DIR ...] [--host 127.0.0.1] [--port 8000]``."""
    try:
        import uvicorn  # noqa: F401
        import fastapi  # noqa: F401
    except ImportError as exc:
        raise NmtError(f"nmt serve needs FastAPI and uvicorn ({exc.name} is not installed): "
                       "pip install 'nmt[serve]'") from None
    import uvicorn

    if args.threads is not None and args.threads < 1:
        raise NmtError(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.port <= 65535:
        raise NmtError(f"--port must be between 0 and 65535, got {args.port}")
    limits = ServeLimits(max_texts=args.max_texts, max_chars=args.max_chars, max_beam=args.max_beam,
                         queue_limit=args.queue_limit, batch_window_ms=args.batch_window_ms,
                         max_batch_texts=args.max_batch_texts, max_batch_work=args.max_batch_work,
                         max_request_work=args.max_request_work,
                         max_attention_cells=args.max_attention_cells,
                         request_timeout_s=args.request_timeout_s)
    for path in args.run_dirs:  # before binding the port: the commonest mistake first
        if not Path(path).is_dir():
            raise NmtError(f"run directory {path} not found (train one with: nmt train RECIPE)")
    _check_port(args.host, args.port)
    models = load_models(args.run_dirs, args.checkpoint, args.precision)
    allowed = args.allowed_hosts.split(",") if args.allowed_hosts else default_allowed_hosts(args.host)
    app = create_app(models=models, limits=limits, threads=args.threads, allowed_hosts=allowed)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    for m in models:
        s = m.summary
        print(f"nmt serve: {m.name}: {s['attention']} attention, {s['activation']}, "
              f"{s['parameters']:,} parameters ({s['run_dir']})", file=sys.stderr)
        choice = m.translator.precision_choice
        if choice is not None:
            print(f"nmt serve: {m.name}: {choice.describe()}", file=sys.stderr)
    if not is_loopback(args.host):
        print(f"nmt serve: listening on {args.host}, reachable from other machines; the server "
              "has no authentication", file=sys.stderr)
    print(f"nmt serve: page at http://{shown}:{args.port}/ , API at http://{shown}:{args.port}/docs",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level in ("debug", "info"))
    return 0

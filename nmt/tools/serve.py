"""``nmt serve``: a translation web page that shows attention, and a JSON API (FastAPI on uvicorn).

::

    nmt serve runs/fr-en                         http://127.0.0.1:8000/ (the page), /docs (the API)
    nmt serve runs/fr-en runs/fr-en-local-p      two runs: the page shows them side by side
    nmt serve --ensemble runs/a runs/b           one model: the runs' ensemble
    nmt serve --engine onnx export/fr-en         an nmt export on onnxruntime, without PyTorch

Endpoints:

- ``POST /api/translate``: ``text`` (one sentence) or ``texts`` (a list), and optionally ``model``
  (a served run's name; default: the first), ``beam``, ``n_best``, ``length_penalty``,
  ``shortlist``, ``sample`` with ``temperature``, ``top_k``, ``top_p`` and ``seed`` (each
  sentence samples from streams of its own, so its samples do not depend on the other sentences
  or requests), ``return_scores`` (default true), ``return_attention`` (default false). Answers
  the n-best hypotheses of each text with their scores, per-token log-probabilities and target
  pieces; with ``return_attention`` also the source pieces, the attention matrix (target pieces ×
  source pieces), local-p's predicted centres and window, and the encoder's self-attention weights
  (layers × heads × source × source) when it has self-attention layers. ``return_alignment``
  adds each hypothesis's word alignment; ``constraints`` (one list of target terms per text) asks
  for terminology-constrained beam search, and each hypothesis then says ``constraints_met`` and
  where each term is (``constraint_spans``: its target pieces and words). ``markup: "html"``:
  the texts carry inline HTML tags, put back into the translations (:mod:`nmt.inference.markup`).
- ``GET /api/models``: each served run's summary (attention, activation, sizes, parameters, test
  BLEU when ``nmt evaluate`` wrote ``RUN_DIR/eval/test.*.json``). ``GET /health``. ``GET /metrics``:
  Prometheus text format (:mod:`nmt.tools.serve_metrics`).
- ``GET /``: the page (static files shipped in ``nmt/tools/static``; no network access).
  ``/?text=...&model=...`` opens it with that sentence translated. ``GET /openapi.json``: the API
  schema; ``GET /docs`` renders it with Swagger UI, served from this process
  (:mod:`nmt.tools.serve_docs`).

The models come from :mod:`nmt.tools.serve_model` (the torch or ONNX engine, ensembles). With
``--token-file`` the API needs a bearer token (:mod:`nmt.tools.serve_access`); SIGTERM drains the
server: requests under way are answered, new ones get 503, then it exits 0
(:mod:`nmt.tools.serve_drain`).

Requests are split into sentences and translated together with other requests' sentences
(:mod:`nmt.tools.serve_batcher`), one model call at a time on each model worker process
(:mod:`nmt.tools.serve_pool`; ``workers=0``: a thread of this process), so concurrent
requests neither oversubscribe the CPU threads nor queue without bound (past ``queue_limit``
waiting requests the server answers 503 with ``Retry-After``), and a small request is not stuck
behind a large one. A request's work and its answer's size are bounded (413), so is its time
(504), and a request whose client went away is dropped. Every malformed request gets a 4xx JSON
answer ``{"error": message, "details": [...]}``, never a 500.
"""
import asyncio
import socket
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Sequence

from nmt.errors import NmtError
from nmt.tools.serve_access import TokenCheck, read_token_file
from nmt.tools.serve_batcher import Batcher, Job
from nmt.tools.serve_docs import add_docs
from nmt.tools.serve_drain import Drain, DrainMiddleware, draining_server
from nmt.tools.serve_guard import RequestGuard, default_allowed_hosts, is_loopback
from nmt.tools.serve_model import ServedModel, check_dirs, load_models, run_summary
from nmt.tools.serve_pool import describe_runners, model_runner, workers_and_threads
from nmt.tools.serve_requests import (
    UNREADABLE_BODY,
    ApiError,
    ServeLimits,
    body_error,
    check_constraints,
    check_request,
    printable,
    request_model,
    request_work,
    validation_error,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"

__all__ = ["ServeLimits", "ServedModel", "create_app", "load_models", "run_summary", "serve_cli", "STATIC_DIR"]


# ------------------------------------------------------------------------------------------ app

def create_app(run_dirs: Sequence[str | Path] = (), limits: ServeLimits | None = None, *,
               models: Sequence[ServedModel] | None = None, checkpoint: str = "best",
               precision: str | None = None, threads: int | None = None,
               allowed_hosts: Sequence[str] | None = None, engine: str = "torch", ensemble: bool = False,
               token: str | None = None, workers: int = 0):
    """The FastAPI application serving ``run_dirs`` (or already loaded ``models``).

    ``workers``: model worker processes, started with the application and stopped with it (0: the
    model runs on a thread of this process). ``threads``: intra-op threads of each worker or of the
    model thread (default: the engine's choice). ``allowed_hosts``: the Host names it answers
    (:mod:`nmt.tools.serve_guard`; None: any; ``nmt serve`` passes the names it listens on).
    ``engine``, ``ensemble``: see :func:`~nmt.tools.serve_model.load_models`. ``token``: the bearer
    token the API requires (:mod:`nmt.tools.serve_access`; None: none). ``app.state.drain`` is its
    :class:`~nmt.tools.serve_drain.Drain` (SIGTERM starts it).
    """
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    limits = limits or ServeLimits()
    onnx = engine == "onnx"
    served = list(models) if models is not None else load_models(
        run_dirs, checkpoint, precision, engine=engine, ensemble=ensemble, threads=threads if onnx else None,
        model_threads=None if onnx else threads, batch_sentences=limits.max_batch_texts)
    # the ONNX engine's threads are its sessions' (in the models' options), not torch's
    batcher = Batcher(limits, model_runner(served, workers, None if onnx else threads, limits.continuous))

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            task.cancel()
            batcher.close()

    from nmt import __version__

    app = FastAPI(title="nmt serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Translate with attention-based GRU models and look at their attention.")
    app.state.batcher = batcher
    app.state.models = served
    app.state.limits = limits
    # a request under way may take the whole time limit, and the drain waits for it
    app.state.drain = Drain(timeout_s=limits.request_timeout_s + 5)
    _add_error_handlers(app, limits)
    app.add_middleware(RequestGuard, max_body_bytes=limits.max_body_bytes, allowed_hosts=allowed_hosts)
    if token is not None:
        app.add_middleware(TokenCheck, token=token)
    app.add_middleware(DrainMiddleware, drain=app.state.drain)  # the outermost: counts every request
    _add_api(app, served, batcher, limits)
    app.state.local_docs = add_docs(app, token=token is not None)
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
        if batcher.broken:
            raise ApiError(503, "no model worker is running (see the server's log)")
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
    """The request's answers; 504 past the time limit, and 499 when the client closes the connection
    first: a request nobody waits for is dropped (its sentences not yet started are not computed).
    One wait for whichever comes first, rather than a look every few milliseconds: the event loop
    serves every client, and its time per request bounds the server's throughput."""
    loop = asyncio.get_running_loop()
    gone = loop.create_task(_client_gone(request))
    try:
        done, _ = await asyncio.wait([job.future, gone], timeout=limits.request_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if job.future.done():
        return job.future.result()
    job.future.cancel()
    if gone in done:
        batcher.stats["abandoned"] += 1
        raise ApiError(499, "the client closed the connection")
    batcher.stats["timed_out"] += 1
    raise ApiError(504, f"the request was not answered within {limits.request_timeout_s:g} s "
                        "(--request-timeout-s); send fewer or shorter texts or a smaller beam, "
                        "or retry when the server is less busy")


async def _client_gone(request) -> None:
    """Returns when the client has closed the connection (the body is read: the server's next
    message is the disconnect)."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 - a connection that cannot be read is gone as well
        return


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


def _limits(args) -> ServeLimits:
    return ServeLimits(max_texts=args.max_texts, max_chars=args.max_chars, max_beam=args.max_beam,
                       queue_limit=args.queue_limit, batch_window_ms=args.batch_window_ms,
                       max_batch_texts=args.max_batch_texts, max_batch_work=args.max_batch_work,
                       max_request_work=args.max_request_work, max_attention_cells=args.max_attention_cells,
                       request_timeout_s=args.request_timeout_s, continuous=args.continuous)


def _token(args) -> str | None:
    """The ``--token-file``'s token; refused start (exit 2) when the server listens beyond this
    machine without one."""
    token_file = getattr(args, "token_file", None)
    if token_file is None:
        if not is_loopback(args.host):
            raise NmtError(f"--host {args.host} makes the server reachable from other machines: give "
                           "--token-file FILE (a secret the API's clients send as 'Authorization: Bearer "
                           "TOKEN'), or listen on 127.0.0.1")
        return None
    return read_token_file(token_file)


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
    limits = _limits(args)
    token = _token(args)
    engine = getattr(args, "engine", "torch")
    check_dirs(args.run_dirs, engine)  # before binding the port: the commonest mistake first
    _check_port(args.host, args.port)
    workers, threads = workers_and_threads(getattr(args, "workers", None), args.threads)
    if limits.continuous and not workers:
        raise NmtError("--continuous needs model worker processes: drop --workers 0 (or give --workers N)")
    models = load_models(args.run_dirs, args.checkpoint, args.precision, engine=engine,
                         ensemble=getattr(args, "ensemble", False),
                         threads=threads if engine == "onnx" else None,
                         model_threads=None if engine == "onnx" else threads,
                         batch_sentences=limits.max_batch_texts)
    allowed = args.allowed_hosts.split(",") if args.allowed_hosts else default_allowed_hosts(args.host)
    app = create_app(models=models, limits=limits, threads=None if engine == "onnx" else threads,
                     allowed_hosts=allowed, token=token, workers=workers)
    _announce(args, models, app, token is not None, describe_runners(workers, threads))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.log_level in ("debug", "info"), timeout_graceful_shutdown=5)
    server = draining_server(config, app.state.drain)
    server.run()
    return 0 if server.started else 1


def _announce(args, models: Sequence[ServedModel], app, with_token: bool, runners: str) -> None:
    """What is served where, on stderr."""
    shown = f"[{args.host}]" if ":" in args.host else args.host
    for m in models:
        s = m.summary
        size = f"{s['parameters']:,} parameters" if s["parameters"] is not None else f"{s['engine']} engine"
        what = f"ensemble of {len(s['ensemble'])} runs, " if s["ensemble"] else ""
        print(f"nmt serve: {m.name}: {what}{s['attention']} attention, {s['activation']}, {size} "
              f"({s['run_dir']})", file=sys.stderr)
        choice = getattr(m.translator, "precision_choice", None)
        if choice is not None:
            print(f"nmt serve: {m.name}: {choice.describe()}", file=sys.stderr)
    print(f"nmt serve: {runners}", file=sys.stderr)
    if not is_loopback(args.host):
        print(f"nmt serve: listening on {args.host}, reachable from other machines; the API needs the "
              "token of --token-file", file=sys.stderr)
    elif with_token:
        print("nmt serve: the API needs the token of --token-file", file=sys.stderr)
    docs = "" if app.state.local_docs else " (Swagger UI from a CDN: pip install swagger-ui-py to serve it here)"
    print(f"nmt serve: page at http://{shown}:{args.port}/ , API at http://{shown}:{args.port}/docs{docs}",
          file=sys.stderr, flush=True)

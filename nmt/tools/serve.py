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
  (layers × heads × source × source) when it has self-attention layers.
- ``GET /api/models``: each served run's summary (attention, activation, sizes, parameters, test
  BLEU when ``nmt evaluate`` wrote ``RUN_DIR/eval/test.*.json``). ``GET /health``.
- ``GET /``: the page (static files shipped in ``nmt/tools/static``; no network access).
  ``/?text=...&model=...`` opens it with that sentence translated. ``GET /openapi.json``: the API
  schema; ``GET /docs`` renders it with Swagger UI, which the browser loads from a CDN.

Requests that arrive within a short window (``batch_window_ms``) are translated together, up to
``max_batch_texts`` sentences per model call, and one model call runs at a time on a single worker
thread, so concurrent requests neither oversubscribe the CPU threads nor queue without bound: past
``queue_limit`` waiting requests the server answers 503 with ``Retry-After``. Every malformed
request gets a 4xx JSON answer ``{"error": message, "details": [...]}``, never a 500.
"""
import asyncio
import ipaddress
import json
import socket
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nmt.errors import NmtError
from nmt.tools.serve_requests import ApiError, ServeLimits, check_request, request_model, validation_error

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
        entry = {"bleu": round(score, 2), "beam": record.get("beam"),
                 "checkpoint": record.get("checkpoint"), "shortlist": record.get("shortlist"),
                 "file": f"eval/{path.name}", "timestamp": str(record.get("timestamp", ""))}
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
    names = [p.name or str(p) for p in run_dirs]
    return [f"{p.parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(run_dirs, names)]


def load_models(run_dirs: Sequence[str | Path], checkpoint: str = "best",
                precision: str = "float32") -> list[ServedModel]:
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
        warn = getattr(translator, "warn", None)
        if warn is not None and hasattr(warn, "prefix"):
            warn.prefix = f"nmt serve [{name}]"
        models.append(ServedModel(
            name=name, translator=translator, summary=run_summary(name, translator),
            has_lexicon=(path / LEXICON_FILE).is_file(),
            self_attention=bool(translator.recipe.model.encoder.self_attention_layers)))
    return models


# -------------------------------------------------------------------------------------- batching

@dataclass
class _Job:
    model: ServedModel
    texts: list[str]
    options: dict[str, Any]  #: keyword arguments of Translator.translate
    attention: bool
    scores: bool
    future: asyncio.Future = field(repr=False, default=None)


class Batcher:
    """Collects requests for a short window and runs them as bounded batches, one model call at a time.

    Requests wait in a deque; the collector takes the first, waits ``batch_window_ms`` for others
    (unless enough sentences already wait), and hands at most ``max_batch_texts`` sentences to the
    single worker thread. Requests with the same model and search options share one
    ``Translator.translate`` call.
    """

    def __init__(self, limits: ServeLimits, threads: int | None = None):
        self.limits = limits
        self.pending: deque[_Job] = deque()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmt-serve-model",
                                           initializer=_set_threads, initargs=(threads,))
        self.stats = {"requests": 0, "texts": 0, "batches": 0, "model_calls": 0, "rejected": 0}
        self._wakeup: asyncio.Event | None = None

    def submit(self, job: _Job) -> asyncio.Future:
        if len(self.pending) >= self.limits.queue_limit:
            self.stats["rejected"] += 1
            raise ApiError(503, f"the server is busy: {len(self.pending)} requests are waiting "
                                f"(queue limit {self.limits.queue_limit}); retry in "
                                f"{self.limits.retry_after_s} s",
                           headers={"Retry-After": str(self.limits.retry_after_s)})
        job.future = asyncio.get_running_loop().create_future()
        self.pending.append(job)
        self._wakeup.set()
        return job.future

    def _take(self) -> list[_Job]:
        batch, n = [], 0
        while self.pending:
            job = self.pending[0]
            if job.future.done():  # the client went away while waiting
                self.pending.popleft()
                continue
            if batch and n + len(job.texts) > self.limits.max_batch_texts:
                break
            batch.append(self.pending.popleft())
            n += len(job.texts)
        return batch

    async def run(self) -> None:
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        window = self.limits.batch_window_ms / 1000.0
        while True:
            await self._wakeup.wait()
            if window and sum(len(j.texts) for j in self.pending) < self.limits.max_batch_texts:
                await asyncio.sleep(window)
            batch = self._take()
            if not self.pending:
                self._wakeup.clear()
            if not batch:
                continue
            try:
                outcomes = await loop.run_in_executor(self.executor, self._run_batch, batch)
            except Exception as exc:  # the worker itself failed: its requests fail, the loop goes on
                outcomes = [exc] * len(batch)
            self.stats["batches"] += 1
            for job, outcome in zip(batch, outcomes):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _run_batch(self, batch: list[_Job]) -> list[Any]:
        """On the worker thread: one translate call per (model, options) group of the batch."""
        groups: dict[tuple, list[int]] = {}
        for k, job in enumerate(batch):
            key = (job.model.name, job.attention, tuple(sorted(job.options.items())))
            groups.setdefault(key, []).append(k)
        outcomes: list[Any] = [None] * len(batch)
        for members in groups.values():
            first = batch[members[0]]
            texts = [t for k in members for t in batch[k].texts]
            try:
                results = first.model.translator.translate(
                    texts, return_scores=True, return_attention=first.attention, **first.options)
                self_att = [None] * len(texts)
                if first.attention and first.model.self_attention:
                    self_att = [first.model.translator.encoder_self_attention(t) for t in texts]
                self.stats["model_calls"] += 1
                self.stats["texts"] += len(texts)
                start = 0
                for k in members:
                    job = batch[k]
                    part = slice(start, start + len(job.texts))
                    outcomes[k] = [_result_json(r, sa, job) for r, sa in
                                   zip(results[part], self_att[part])]
                    start += len(job.texts)
            except NmtError as exc:  # options the translator refuses: the caller's to fix
                for k in members:
                    outcomes[k] = ApiError(422, str(exc))
            except Exception as exc:  # a bug: logged by the caller's 500 handler
                for k in members:
                    outcomes[k] = exc
        return outcomes


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


def _result_json(result, self_attention, job: _Job) -> dict[str, Any]:
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
        hyps.append(entry)
    out: dict[str, Any] = {"source": result.source, "text": result.text, "hypotheses": hyps}
    if job.attention:
        out["src_tokens"] = src_tokens
        out["self_attention"] = _floats(self_attention, 5)
    return out


# ------------------------------------------------------------------------------------------ app

def create_app(run_dirs: Sequence[str | Path] = (), limits: ServeLimits | None = None, *,
               models: Sequence[ServedModel] | None = None, checkpoint: str = "best",
               precision: str = "float32", threads: int | None = None):
    """The FastAPI application serving ``run_dirs`` (or already loaded ``models``).

    ``threads``: torch intra-op threads of the model thread (default: torch's choice).
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
    _add_api(app, served, batcher, limits)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _error_response(err: ApiError):
    from fastapi.responses import JSONResponse

    body: dict[str, Any] = {"error": err.message}
    if err.details:
        body["details"] = err.details
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _add_error_handlers(app, limits: ServeLimits) -> None:
    """Every refusal as a 4xx JSON answer ``{"error": ..., "details": [...]}``, and the body size limit."""
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
        if exc.status_code == 404:
            message = f"no such page or endpoint: {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        return JSONResponse({"error": message}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return JSONResponse({"error": f"invalid Content-Length header {length!r}"}, 400)
            if int(length) > limits.max_body_bytes:
                return JSONResponse({"error": f"request body of {int(length):,} bytes; at most "
                                              f"{limits.max_body_bytes:,}"}, 413)
        return await call_next(request)


def _add_api(app, served: list[ServedModel], batcher: "Batcher", limits: ServeLimits) -> None:
    """The endpoints: ``POST /api/translate``, ``GET /api/models``, ``GET /health`` and the page."""
    from fastapi.responses import FileResponse, JSONResponse

    by_name = {m.name: m for m in served}
    default = served[0].name
    TranslateRequest = request_model()

    @app.post("/api/translate", summary="Translate text; n-best, scores and attention on request",
              responses={400: {"description": "malformed JSON"}, 404: {"description": "unknown model"},
                         422: {"description": "invalid request"},
                         503: {"description": "queue full; retry after Retry-After seconds"}})
    async def translate(req: TranslateRequest):
        model, texts, options = check_request(req, by_name, default, limits)
        job = _Job(model, texts, options, req.return_attention, req.return_scores)
        pending = batcher.submit(job)
        batcher.stats["requests"] += 1
        results = await pending
        out: dict[str, Any] = {"model": model.name, "translations": results}
        if req.return_attention:
            out["attention"] = model.summary["attention"]
            out["window"] = model.summary["window"]
        return JSONResponse(out)  # already plain JSON: no second encoding pass

    @app.get("/api/models", summary="The served runs")
    async def list_models():
        return {"models": [m.summary for m in served],
                "limits": {"max_texts": limits.max_texts, "max_chars": limits.max_chars,
                           "max_beam": limits.max_beam}}

    @app.get("/health", summary="Liveness and queue state")
    async def health():
        return {"status": "ok", "models": list(by_name), "waiting": len(batcher.pending),
                "queue_limit": limits.queue_limit, **batcher.stats}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


# ------------------------------------------------------------------------------------------ CLI

def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
                         max_batch_texts=args.max_batch_texts)
    for path in args.run_dirs:  # before binding the port: the commonest mistake first
        if not Path(path).is_dir():
            raise NmtError(f"run directory {path} not found (train one with: nmt train RECIPE)")
    _check_port(args.host, args.port)
    models = load_models(args.run_dirs, args.checkpoint, args.precision)
    app = create_app(models=models, limits=limits, threads=args.threads)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    for m in models:
        s = m.summary
        print(f"nmt serve: {m.name}: {s['attention']} attention, {s['activation']}, "
              f"{s['parameters']:,} parameters ({s['run_dir']})", file=sys.stderr)
    if not _is_loopback(args.host):
        print(f"nmt serve: listening on {args.host}, reachable from other machines; the server "
              "has no authentication", file=sys.stderr)
    print(f"nmt serve: page at http://{shown}:{args.port}/ , API at http://{shown}:{args.port}/docs",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level in ("debug", "info"))
    return 0

"""How ``nmt serve`` stops: a graceful drain on SIGTERM.

On the first SIGTERM the server stops taking work: every new request is answered 503 with a JSON
error (``Retry-After``, ``Connection: close``), while the requests already under way are answered
as usual (each within ``--request-timeout-s``). Once none is left, or after ``timeout_s``, uvicorn
closes the listening socket and the connections and the process exits with status 0. A second
SIGTERM, or SIGINT (Ctrl-C), skips the drain and stops as uvicorn does (open connections get at
most the ``timeout_graceful_shutdown`` ``nmt serve`` gives uvicorn, 5 s).

uvicorn alone would close the listening socket at the first signal (new clients see "connection
refused" rather than an answer) and re-raise the signal once it has stopped (the process then ends
"killed by SIGTERM", not with 0); :class:`DrainingServer` replaces both.
"""
from __future__ import annotations

import signal
import time

from nmt.tools.serve_access import send_json

__all__ = ["Drain", "DrainMiddleware", "draining_server", "DRAINING_MESSAGE"]

DRAINING_MESSAGE = ("the server is shutting down: it answers the requests it already has and takes no "
                    "new ones; retry in a moment (on another server or once this one has restarted)")


class Drain:
    """The drain's state: whether it has begun, and the HTTP requests under way."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.in_flight = 0
        self.started_at: float | None = None

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()

    def finished(self) -> bool:
        """Draining, and nothing left to answer (or out of time)."""
        return self.draining and (self.in_flight == 0 or time.monotonic() - self.started_at > self.timeout_s)


class DrainMiddleware:
    """ASGI middleware: counts the requests under way; 503 to new ones while draining."""

    def __init__(self, app, drain: Drain):
        self.app, self.drain = app, drain

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            await send_json(send, 503, {"error": DRAINING_MESSAGE}, {"retry-after": "1", "connection": "close"})
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


def draining_server(config, drain: Drain):
    """A ``uvicorn.Server`` for ``config`` that drains on SIGTERM (see the module's docstring)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if sig == signal.SIGTERM and not drain.draining:
                drain.start()  # not recorded as captured: no re-raise after a clean stop
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if drain.finished():
                self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer(config)

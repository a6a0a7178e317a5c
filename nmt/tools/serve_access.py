"""Who may use ``nmt serve``: an optional bearer token (``--token-file``).

The token is read once, at start, and never logged. With a token, every request to the API
(``/api/...``) and to ``/metrics`` must send ``Authorization: Bearer TOKEN``; without it or with
another token the answer is 401. ``/health`` stays open (a load balancer's liveness probe carries
no credentials), and so do the page, its static files, ``/docs`` and ``/openapi.json``: they hold
no translations and are the same on every server. A server that listens beyond this machine
(``--host`` not loopback) refuses to start without a token.
"""
from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

from nmt.errors import NmtError

__all__ = ["read_token_file", "TokenCheck", "PROTECTED_PREFIXES", "MIN_TOKEN_CHARS"]

#: the paths a token protects (everything else answers without one)
PROTECTED_PREFIXES = ("/api/", "/metrics")
MIN_TOKEN_CHARS = 16  #: a shorter token can be guessed


def read_token_file(path: str | Path) -> str:
    """The token of ``path``: its text without surrounding whitespace; printable ASCII without
    spaces (an HTTP header carries it), at least :data:`MIN_TOKEN_CHARS` characters."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise NmtError(f"--token-file {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        token = text.decode("ascii").strip()
    except UnicodeDecodeError:
        raise NmtError(f"--token-file {path}: the token must be printable ASCII (e.g. the output of "
                       "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)") from None
    if not token:
        raise NmtError(f"--token-file {path} is empty; write a token into it (e.g. `python -c 'import "
                       "secrets; print(secrets.token_urlsafe(32))' > FILE`)")
    if any(not ch.isprintable() or ch.isspace() for ch in token):
        raise NmtError(f"--token-file {path}: the token holds spaces or control characters; give one "
                       "line of printable ASCII")
    if len(token) < MIN_TOKEN_CHARS:
        raise NmtError(f"--token-file {path}: the token has {len(token)} characters, at least "
                       f"{MIN_TOKEN_CHARS} are needed (a short token can be guessed)")
    return token


class TokenCheck:
    """ASGI middleware: 401 for a protected path without the right ``Authorization: Bearer``."""

    def __init__(self, app, token: str):
        self.app = app
        self._token = token.encode("ascii")

    def __repr__(self) -> str:  # never shows the token
        return "TokenCheck(<token>)"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        problem = self._problem(dict(scope["headers"]).get(b"authorization"))
        if problem is None:
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, {"error": problem}, {"www-authenticate": "Bearer"})

    def _problem(self, header: bytes | None) -> str | None:
        """None for the right token, else what is wrong (never quoting what was sent)."""
        if not header:
            return ("this server needs a token: send the header 'Authorization: Bearer TOKEN' with the "
                    "token of its --token-file")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return "the Authorization header must be 'Bearer TOKEN'"
        if not hmac.compare_digest(given.strip(), self._token):
            return "wrong token: send the token of the server's --token-file"
        return None


async def send_json(send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """A whole JSON answer from ASGI middleware (no application involved)."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})

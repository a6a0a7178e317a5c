"""What ``nmt serve`` checks before a request reaches the API (an ASGI middleware):

- the ``Host`` header, against DNS rebinding (a web page on another site whose name is made to
  resolve to this machine must not reach the server through the visitor's browser): only the names
  the server was started with and the loopback names are accepted, unless ``--allowed-hosts`` says
  otherwise;
- the body's size, counted on the bytes actually read, so a chunked body (no Content-Length) is cut
  off at the limit too, answered 413 without reading the rest.
"""
from __future__ import annotations

import ipaddress
import json
import socket
from typing import Iterable

__all__ = ["RequestGuard", "default_allowed_hosts", "host_name", "is_loopback"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")


def host_name(value: str) -> str:
    """A Host header (or --host) without its port and IPv6 brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address) only reaches this machine: "localhost" in any case, a
    loopback address in any spelling (``127.1``), or a name that resolves to loopback addresses only."""
    name = host_name(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except (socket.gaierror, UnicodeError):
        return False
    addresses = {info[4][0].split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def default_allowed_hosts(bound: str) -> set[str]:
    """The Host names accepted by default: the loopback names and the name given to ``--host``;
    listening on every interface also accepts this machine's names and any address."""
    names = set(LOOPBACK_NAMES) | {host_name(bound)}
    if host_name(bound) in ANY_ADDRESS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower(), "*address*"}
    return names


class RequestGuard:
    """ASGI middleware: the Host check (``allowed_hosts`` None: none; ``"*"`` in it: any host) and
    the body limit (``max_body_bytes``)."""

    def __init__(self, app, max_body_bytes: int, allowed_hosts: Iterable[str] | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed = None if allowed_hosts is None else {host_name(h) if h != "*address*" else h
                                                          for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        refusal = self._refusal(headers)
        if refusal is not None:
            return await _send_json(send, *refusal)
        read = 0

        async def counted():
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_body_bytes:
                    from starlette.exceptions import HTTPException

                    raise HTTPException(413, self._too_large(f"more than {self.max_body_bytes:,}"))
            return message

        await self.app(scope, counted, send)

    def _refusal(self, headers: dict[str, str]) -> tuple[int, str] | None:
        if self.allowed is not None and "*" not in self.allowed:
            host = host_name(headers.get("host", ""))
            if not self._host_allowed(host):
                return 400, (f"Host {headers.get('host', '')!r} is not one this server answers to (it "
                             f"accepts {', '.join(sorted(h for h in self.allowed if h != '*address*'))}); "
                             "start it with --allowed-hosts NAME to accept another name")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, f"invalid Content-Length header {length!r}"
            if int(length) > self.max_body_bytes:
                return 413, self._too_large(f"{int(length):,}")
        return None

    def _host_allowed(self, host: str) -> bool:
        if host in self.allowed:
            return True
        if "*address*" in self.allowed:
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False

    def _too_large(self, size: str) -> str:
        return (f"request body of {size} bytes; at most {self.max_body_bytes:,}: send fewer or "
                "shorter texts per request")


async def _send_json(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

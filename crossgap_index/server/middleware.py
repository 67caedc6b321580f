"""ASGI middleware that must act before a route reads the body: the bearer token, the request size cap
(declared Content-Length, then counted as the body streams in, with a per-chunk read timeout), and
per-route metrics."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crossgap_index.server.metrics import Metrics

OPEN_PATHS = frozenset({"/healthz"})
TOKEN_COOKIE = "cgx_token"


async def send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TokenAuth:
    """Every request but /healthz needs ``Authorization: Bearer <token>`` (or the cookie the page sets
    from ``/?token=``). Checked before any body is read."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self._presented(scope):
            return await self.app(scope, receive, send)
        await send_error(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])

    def _presented(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self.token):
            return True
        if scope["path"] == "/":  # the page's first visit: /?token=T (it then sets the cookie)
            presented = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
            if presented and hmac.compare_digest(presented.encode(), self.token):
                return True
        cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        return TOKEN_COOKIE in cookie and hmac.compare_digest(cookie[TOKEN_COOKIE].value.encode(), self.token)


class BodyLimit:
    """413 when a body declares or streams more than ``max_bytes``; 408 when a chunk takes too long."""

    def __init__(self, app: ASGIApp, max_bytes: int, chunk_timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.chunk_timeout_s = chunk_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_error(send, 400, "invalid Content-Length")
            if int(declared) > self.max_bytes:
                return await send_error(send, 413, self._too_large())
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.chunk_timeout_s)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body not received within {self.chunk_timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_bytes} bytes"


class RequestMetrics:
    """Count and time each request under its route template (not its raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(name, scope["method"], status, time.perf_counter() - start)

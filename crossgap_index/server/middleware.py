"""ASGI middleware that must act before a route reads the body: the Host check (DNS rebinding), the bearer
token, the content type of writes, the request size cap per route (declared Content-Length, then counted
as the body streams in, with a per-chunk read timeout), and per-route metrics."""

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
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITE_TYPES = frozenset({"application/json", "multipart/form-data"})
# Label values metrics may carry: HTTP's own methods; anything else a client sends is "other".
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
OTHER = "other"


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


class HostCheck:
    """Without a token, answer only requests addressed to this machine by name: Host ``127.0.0.1``,
    ``localhost`` or ``[::1]`` (any port). A web page whose name an attacker rebinds to 127.0.0.1 sends its
    own name as Host, so it is refused (421) and cannot read results, paths or images (DNS rebinding).
    With a token the token guards every route and any Host is served."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.active = token is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.active:
            return await self.app(scope, receive, send)
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) != 1:
            return await send_error(send, 400, "send exactly one Host header")
        name = host_name(hosts[0])
        if name is None:
            return await send_error(send, 400, "malformed Host header")
        if name not in LOCAL_HOSTS:
            return await send_error(
                send, 421, "this server answers only Host 127.0.0.1, localhost or [::1] (start it with --token)"
            )
        await self.app(scope, receive, send)


def host_name(value: bytes) -> str | None:
    """The name in a Host header value (``name`` or ``name:port``, ``[v6]`` or ``[v6]:port``), lower-cased;
    None when it is malformed."""
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            return None
        name, port = text[: end + 1], rest[1:]
    elif ":" in text:
        name, _, port = text.partition(":")
    else:
        name, port = text, ""
    if port and not port.isdigit():
        return None
    return name


class WriteContentType:
    """Requests that may change state (every method but GET, HEAD, OPTIONS) must say they carry JSON or a
    multipart form: a cross-site form or ``fetch`` without CORS can send neither, so no page can make
    this server act on a plain-text body (415). ``untyped_reads``: POST routes that only read and take a body
    that declares no type at all as JSON (clients that send none, such as clip-retrieval's)."""

    def __init__(self, app: ASGIApp, untyped_reads: frozenset[str] = frozenset()):
        self.app = app
        self.untyped_reads = untyped_reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if b"content-type" not in headers and scope["path"] in self.untyped_reads:
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if declared.decode("latin-1") not in WRITE_TYPES:
            return await send_error(send, 415, "send application/json or multipart/form-data")
        await self.app(scope, receive, send)


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
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            if "token" in query:  # a token in the address must be right: the page would store it in the cookie
                presented = query["token"]
                return len(presented) == 1 and hmac.compare_digest(presented[0].encode(), self.token)
        cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        return TOKEN_COOKIE in cookie and hmac.compare_digest(cookie[TOKEN_COOKIE].value.encode(), self.token)


class BodyLimit:
    """413 when a body declares or streams more than its route's cap (``per_path``, else ``max_bytes``);
    408 when a chunk takes too long."""

    def __init__(self, app: ASGIApp, max_bytes: int, chunk_timeout_s: float, per_path: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.chunk_timeout_s = chunk_timeout_s
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = min(self.per_path.get(scope["path"], self.max_bytes), self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_error(send, 400, "invalid Content-Length")
            if int(declared) > limit:
                return await send_error(send, 413, self._too_large(limit))
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.chunk_timeout_s)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body not received within {self.chunk_timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, self._too_large(limit))
            return message

        await self.app(scope, limited_receive, send)

    @staticmethod
    def _too_large(limit: int) -> str:
        return f"request body over the limit of {limit} bytes"


class RequestMetrics:
    """Count and time each request under its route template and HTTP method. Label values come from the
    server's own routes and HTTP's methods only: a method or path the server does not know (or a request
    refused before routing, such as a 401) is counted as ``other``, so clients cannot grow the series."""

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
            name = getattr(route, "path", None) or OTHER
            method = scope["method"] if scope["method"] in METRIC_METHODS else OTHER
            self.metrics.observe_request(name, method, status, time.perf_counter() - start)

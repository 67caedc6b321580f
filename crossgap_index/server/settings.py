"""Limits and knobs of the HTTP service, in one frozen object (the CLI fills it from its options)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from crossgap_index.errors import CrossGapError
from crossgap_index.ingest.limits import DEFAULT_MAX_MEGAPIXELS


@dataclass(frozen=True)
class ServeSettings:
    """``batch_window_ms`` / ``max_batch``: how long an inversion query waits for neighbours and how
    many run together (``max_batch=1`` turns micro-batching off). Sizes in bytes."""

    token: str | None = None
    max_k: int = 100
    max_batch_queries: int = 64  # queries in one POST /search/batch
    max_texts: int = 1000  # texts in one POST /texts
    max_text_chars: int = 2000
    max_request_bytes: int = 32 * 1024 * 1024
    max_upload_bytes: int = 16 * 1024 * 1024  # one decoded image (upload, base64 or an indexed file)
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    max_steps: int = 2000  # inversion steps one request may ask for
    batch_window_ms: float = 5.0
    max_batch: int = 32
    search_threads: int = 4
    request_timeout_s: float = 120.0  # running a query
    body_timeout_s: float = 30.0  # each chunk of a request body
    follow_interval_s: float = 0.5  # how often the server looks for a state another writer saved (0: never)
    compile_inversion: bool = False  # compiled inversion steps, compiled at start (inversion/compiled.py)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.batch_window_ms < 0 or self.search_threads < 1:
            raise CrossGapError("serve: max_batch and search_threads must be >= 1, batch_window_ms >= 0")
        if self.token is not None and not self.token.strip():
            raise CrossGapError("serve: the token must not be empty")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a bearer token."""
    if not is_loopback(host) and not token:
        raise CrossGapError(f"serve: binding {host} (not loopback) needs --token (or $CGX_TOKEN)")

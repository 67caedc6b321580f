"""Reach a Ray cluster's address before anything is built: a bounded check in plain sockets.

``ray.init(address=...)`` retries an unreachable address for minutes (each try waiting on gRPC) and,
meanwhile, a build would already have created its index folder. One TCP connect and an HTTP/2 greeting
with a deadline answer in seconds, in one line, before Ray (or torch) is imported and before the index
exists; a greeting that is not answered as gRPC servers answer it is not a Ray cluster.
"""

from __future__ import annotations

import socket
import time

from crossgap_index.errors import QueryError

CONNECT_TIMEOUT_S = 5.0
# Ray's GCS and client servers speak gRPC, i.e. HTTP/2: a client's connection preface and an empty
# SETTINGS frame are answered with the server's SETTINGS frame before anything else.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS_TYPE = 0x4
_SETTINGS_FRAME = bytes([0, 0, 0, _SETTINGS_TYPE, 0, 0, 0, 0, 0])


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line when ``address`` (HOST:PORT or ray://HOST:PORT) does not greet as an HTTP/2 (gRPC)
    server within ``timeout`` seconds. None (a new local instance) and ``auto`` (the running one, found
    locally) pass."""
    if address is None or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise QueryError(f"bad --ray-address '{address}': use HOST:PORT, ray://HOST:PORT or auto")
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            conn.sendall(_HTTP2_PREFACE + _SETTINGS_FRAME)
            reply = b""
            while len(reply) < 9:  # the server's first frame header: SETTINGS, as every HTTP/2 server sends
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                data = conn.recv(9 - len(reply))
                if not data:
                    break
                reply += data
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise QueryError(_unreachable(address, reason, timeout)) from exc
    if len(reply) < 9 or reply[3] != _SETTINGS_TYPE:
        raise QueryError(_unreachable(address, "it answers, but not as a Ray (gRPC) server", timeout))


def _unreachable(address: str, reason: str, timeout: float) -> str:
    return (
        f"cannot reach Ray at {address}: {reason} (checked for up to {timeout:g} s); start the cluster "
        "(`ray start --head`) or drop --ray-address for a local instance"
    )

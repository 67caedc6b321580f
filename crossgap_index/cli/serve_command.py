"""`cgx serve`: the HTTP search service. Parse, open the index once, hand it to uvicorn."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from crossgap_index.cli.options import DeviceOpt, ServiceIndexOpt
from crossgap_index.errors import CrossGapError
from crossgap_index.server.settings import ServeSettings, check_bind


def serve_command(
    index: ServiceIndexOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(envvar="CGX_TOKEN", help="Bearer token required on every request but /healthz."),
    ] = None,
    device: DeviceOpt = "auto",
    batch_window_ms: Annotated[
        float, typer.Option(min=0.0, help="How long an inversion query waits for others to batch with.")
    ] = ServeSettings.batch_window_ms,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most inversion queries run together (1: no micro-batching).")
    ] = ServeSettings.max_batch,
    max_k: Annotated[int, typer.Option(min=1, help="Most hits one query may ask for.")] = ServeSettings.max_k,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a query may run before the request fails (504).")
    ] = ServeSettings.request_timeout_s,
    compile_inversion: Annotated[
        bool,
        typer.Option(
            "--compile-inversion",
            help="Compile the inversion steps (torch.compile) before serving: the server starts seconds to a minute "
            "later, and cross queries run faster after (benchmarks/results/oti-step-compile.md).",
        ),
    ] = False,
    watch: Annotated[
        list[Path] | None,
        typer.Option(
            "--watch",
            help="A folder to keep indexed while serving (repeat for more): new, edited, moved and deleted images "
            "are written in batches, as `cgx watch` does, and each batch is searchable as a whole once written.",
        ),
    ] = None,
) -> None:
    """Serve search over HTTP: JSON API (/docs), a search page at /, Prometheus /metrics.
    Concurrent inversion queries are micro-batched. Stops cleanly on SIGTERM / Ctrl-C."""
    from crossgap_index.cli.watch_command import watched_roots

    check_bind(host, token)
    check_port_free(host, port)  # before the index and the model load: a busy port fails at once
    settings = ServeSettings(
        token=token,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        max_k=max_k,
        request_timeout_s=timeout,
        compile_inversion=compile_inversion,
    )
    import uvicorn  # heavy imports here, not when the CLI starts

    from crossgap_index import CrossGapIndex
    from crossgap_index.server.app import create_app

    # The batch worker, the search pool and the event loop share the GIL; with the default 5 ms switch
    # interval a thread back from a torch op or a socket waits up to 5 ms per hand-off. Measured on 2 shared
    # cores, 32 clients of cross queries: a batched call took 1.9 s of wall time for 0.7 s of library work
    # at 5 ms, and 0.49 s for 0.49 s at 0.5 ms (benchmarks/RESULTS.md).
    sys.setswitchinterval(0.0005)
    roots = watched_roots(watch or [])
    print("cgx serve: opening the index and loading its model...", file=sys.stderr, flush=True)  # seconds of it
    with CrossGapIndex.open(index, device=device) as cgx:
        cgx.load_model()  # before the first request, not during it
        print(f"cgx serve: {cgx.info().counts.get('image', 0)} images, model {cgx.info().model}", file=sys.stderr)
        watcher = _start_watching(cgx, roots, device)
        try:
            uvicorn.run(create_app(cgx, settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=60)
        finally:
            if watcher is not None:
                watcher.stop()


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, in one line. The probe binds as uvicorn does
    (SO_REUSEADDR, so a port left in TIME_WAIT by a server just stopped is free) and lets go at once."""
    if port == 0:
        return
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as exc:
        raise CrossGapError(
            f"serve: cannot listen on {host}:{port}: {exc.strerror or exc} (another server? choose another --port)"
        ) from None


def _start_watching(cgx, roots: list[Path], device: str):
    """The background watcher of ``--watch`` folders (None without any)."""
    if not roots:
        return None
    from crossgap_index.folder_watch import WatchSettings
    from crossgap_index.server.watching import ServedWatch

    watcher = ServedWatch(cgx, roots, WatchSettings(), device)
    watcher.start()
    return watcher

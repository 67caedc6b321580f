"""`cgx serve` over loopback: latency and throughput of intra and cross queries at 1, 8 and 32 concurrent
clients, micro-batching on vs off, and the server's overhead over an in-process search call.

Two real `cgx serve` processes (batching on, off); the clients are asyncio tasks in this process (real
HTTP via httpx). Every cell is bounded by a query count and a time limit, run in rounds that alternate on and off
so that the shared machine's load changes hit both. Cross queries are image -> images through OTI with
``--steps`` steps, inversion cache off, each query a different photo; intra queries are text -> images.
Batching off is ``--max-batch 1`` (queries inverted one by one in the same worker).

    python benchmarks/bench_serve.py --out benchmarks/out/serve.json --table benchmarks/out/serve.md
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads skew shared cores

import argparse
import asyncio
import base64
import importlib.metadata
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.machine import machine_info, percentile_ms, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import export_folder

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    args = _parse()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        index_path, photos, texts = _build(Path(tmp), args)
        report = {
            "machine": machine_info(),
            "http_stack": {name: _version(name) for name in ("fastapi", "uvicorn", "httptools", "uvloop", "httpx")},
            "model": args.model,
            "settings": vars(args),
            "load_average_before": os.getloadavg(),
            "cells": [],
        }
        images = [base64.b64encode(p.read_bytes()).decode() for p in photos]
        report["library_batching"] = _library_batching(index_path, photos, args)
        print(json.dumps(report["library_batching"]), flush=True)
        with _server(index_path, True, args) as on_url, _server(index_path, False, args) as off_url:
            urls = {True: on_url, False: off_url}
            for url in urls.values():
                _warm(url, texts, images, args)
            report["overhead"] = _overhead(index_path, on_url, texts, args)
            print(json.dumps(report["overhead"]), flush=True)
            for kind in ("intra", "cross"):
                for clients in args.clients:
                    rounds = {True: [], False: []}
                    for r in range(args.rounds):  # on and off alternate (order too), so load changes hit both
                        for batching in (True, False) if r % 2 == 0 else (False, True):
                            rounds[batching].append(_run_cell(urls[batching], kind, clients, texts, images, args))
                    for batching, parts in rounds.items():
                        cell = _merge(kind, clients, batching, parts)
                        report["cells"].append(cell)
                        print(json.dumps({k: v for k, v in cell.items() if k != "batch_sizes"}), flush=True)
        report["load_average_after"] = os.getloadavg()
        report["seconds"] = time.time() - started
    _summarise(report)
    write_json(args.out, report)
    if args.table:
        Path(args.table).write_text(_table(report))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="crossgap-small")
    p.add_argument("--images", type=int, default=240, help="gallery size")
    p.add_argument("--steps", type=int, default=25, help="OTI steps of a cross query")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--intra-queries", type=int, default=400, help="most intra queries per cell")
    p.add_argument("--cross-queries", type=int, default=160, help="most cross queries per cell")
    p.add_argument("--cell-seconds", type=float, default=24.0, help="time limit per cell (all rounds)")
    p.add_argument("--rounds", type=int, default=3, help="alternating on/off rounds per cell")
    p.add_argument("--window-ms", type=float, default=5.0)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of the server")
    p.add_argument("--out", default="benchmarks/out/serve.json")
    p.add_argument("--table", default=None)
    return p.parse_args()


def _build(root: Path, args) -> tuple[Path, list[Path], list[str]]:
    photos = export_folder(root / "photos", seed=101, n=args.images)
    captions = [json.loads(line)["text"] for line in (photos / "captions.jsonl").read_text().splitlines()]
    with CrossGapIndex.create(root / "index", model=args.model, device="cpu") as cgx:
        cgx.index_folders([photos])
    return root / "index", sorted(photos.rglob("*.png")), captions[:: max(1, len(captions) // 400)]


def _overhead(index_path: Path, url: str, texts: list[str], args) -> dict:
    """The same intra query in process (CrossGapIndex.search) and over HTTP (one client), alternating,
    so both see the same machine load; the overhead is the median of the paired differences."""
    import torch

    torch.set_num_threads(args.threads)
    local, remote, floor, served = [], [], [], []
    with CrossGapIndex.open(index_path, device="cpu") as cgx, httpx.Client(base_url=url, timeout=60) as client:
        for text in texts[:10]:
            cgx.search(text=text, k=10)
        for text in texts[: args.intra_queries]:
            start = time.perf_counter()
            cgx.search(text=text, k=10)
            local.append(time.perf_counter() - start)
            start = time.perf_counter()
            response = client.post("/search", json={"text": text, "k": 10})
            remote.append(time.perf_counter() - start)
            served.append(response.json()["timings"]["total_ms"] / 1000.0)
            start = time.perf_counter()
            client.get("/healthz").raise_for_status()
            floor.append(time.perf_counter() - start)
    diffs = np.asarray(remote) - np.asarray(local)
    return {
        "n": len(local),
        "in_process_p50_ms": percentile_ms(local, 50),
        "in_process_p95_ms": percentile_ms(local, 95),
        "http_p50_ms": percentile_ms(remote, 50),
        "http_p95_ms": percentile_ms(remote, 95),
        "paired_overhead_p50_ms": float(np.median(diffs) * 1000.0),
        "healthz_p50_ms": percentile_ms(floor, 50),  # the HTTP floor: client, uvicorn, middleware, no work
        "service_p50_ms": percentile_ms(served, 50),  # inside the server: parse, thread hop, search, response
    }


def _library_batching(index_path: Path, photos: list[Path], args) -> dict:
    """The library alone, no HTTP: one search_batch of ``--max-batch`` cross queries vs the same queries
    one call each (what batching can gain at most here, measured in the same minute)."""
    from crossgap_index.ingest.decode import decode_rgb
    from crossgap_index.inversion import InversionConfig

    config = InversionConfig(oti_steps=args.steps)
    queries = [{"image": decode_rgb(p.read_bytes())} for p in photos[: args.max_batch]]
    with CrossGapIndex.open(index_path, device="cpu") as cgx:
        cgx.search_batch(queries[:1], mode="cross", inversion=config, use_cache=False)
        start = time.perf_counter()
        cgx.search_batch(queries, mode="cross", inversion=config, use_cache=False)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        for query in queries:
            cgx.search_batch([query], mode="cross", inversion=config, use_cache=False)
        solo = time.perf_counter() - start
    return {"queries": len(queries), "batched_s": batched, "one_by_one_s": solo, "gain": solo / batched}


class _server:
    """A `cgx serve` process on a free loopback port; SIGTERM on exit."""

    def __init__(self, index_path: Path, batching: bool, args):
        self.cmd = [
            sys.executable, "-m", "crossgap_index", "serve", "--index", str(index_path),
            "--port", "0", "--device", "cpu",
            "--max-batch", str(args.max_batch if batching else 1),
            "--batch-window-ms", str(args.window_ms if batching else 0.0),
        ]  # fmt: skip
        paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        threads = str(args.threads)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": threads}

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        for line in self.proc.stdout:
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained
                return found.group(1)
        raise RuntimeError("cgx serve did not start")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


def _request(kind: str, i: int, texts: list[str], images: list[str], steps: int) -> dict:
    if kind == "intra":
        return {"text": texts[i % len(texts)], "k": 10}
    return {"image_base64": images[i % len(images)], "k": 10, "mode": "cross", "steps": steps, "use_cache": False}


def _bodies(kind: str, n: int, texts: list[str], images: list[str], steps: int) -> list[bytes]:
    """Request bodies encoded once, so the clients spend little CPU beside the server on the same cores."""
    return [json.dumps(_request(kind, i, texts, images, steps)).encode() for i in range(n)]


def _warm(url: str, texts: list[str], images: list[str], args) -> None:
    with httpx.Client(base_url=url, timeout=300) as client:
        for i in range(5):
            for kind in ("intra", "cross"):
                client.post("/search", json=_request(kind, 10_000 + i, texts, images, args.steps)).raise_for_status()


def _run_cell(url: str, kind: str, clients: int, texts, images, args) -> dict:
    """``clients`` concurrent clients (asyncio tasks on one event loop: no client-side thread convoy),
    each sending its next query as soon as the last one is answered, until the count or time runs out."""
    limit = (args.intra_queries if kind == "intra" else args.cross_queries) // args.rounds
    bodies = _bodies(kind, limit, texts, images, args.steps)
    load = os.getloadavg()[0]
    return asyncio.run(_clients(url, clients, bodies, args.cell_seconds / args.rounds)) | {"load": load}


async def _clients(url: str, clients: int, bodies: list[bytes], seconds: float) -> dict:
    pending = iter(range(len(bodies)))
    latencies: list[float] = []
    batch_sizes: list[int] = []
    server_ms: list[float] = []
    parts: list[dict] = []  # the server's timings of each query
    failures: list[str] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline and (i := next(pending, None)) is not None:
            start = time.perf_counter()
            response = await client.post("/search", content=bodies[i], headers={"content-type": "application/json"})
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.text[:120]}")
                continue
            latencies.append(elapsed)
            timings = response.json()["timings"]
            server_ms.append(timings["total_ms"])
            parts.append(timings)
            if "batch_queries" in timings:
                batch_sizes.append(timings["batch_queries"])

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "server_ms": server_ms, "batch_sizes": batch_sizes, "failures": failures,
            "seconds": wall, "timings": parts}  # fmt: skip


def _merge(kind: str, clients: int, batching: bool, parts: list[dict]) -> dict:
    latencies = [x for p in parts for x in p["latencies"]]
    batch_sizes = [x for p in parts for x in p["batch_sizes"]]
    failures = [x for p in parts for x in p["failures"]]
    wall = sum(p["seconds"] for p in parts)
    return {
        "kind": kind,
        "clients": clients,
        "batching": batching,
        "rounds": len(parts),
        "queries": len(latencies),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "seconds": wall,
        "qps": len(latencies) / wall if wall else 0.0,
        "p50_ms": percentile_ms(latencies, 50) if latencies else None,
        "p95_ms": percentile_ms(latencies, 95) if latencies else None,
        "server_p50_ms": float(np.median([x for p in parts for x in p["server_ms"]])) if latencies else None,
        "mean_batch_size": float(np.mean(batch_sizes)) if batch_sizes else None,
        "max_batch_size": max(batch_sizes) if batch_sizes else None,
        "batch_sizes": batch_sizes,
        "server_timings_p50_ms": _median_timings([t for p in parts for t in p["timings"]]),
        "load_1min": float(np.mean([p["load"] for p in parts])),
    }


def _median_timings(timings: list[dict]) -> dict[str, float]:
    """Median of each millisecond field the server reported (queue, batch, embed, search, total), and the
    mean of the batched call's time (what throughput depends on)."""
    names = {k for t in timings for k in t if k.endswith("_ms")}
    medians = {k: float(np.median([t[k] for t in timings if k in t])) for k in sorted(names)}
    if "batch_ms" in names:
        medians["batch_ms_mean"] = float(np.mean([t["batch_ms"] for t in timings if "batch_ms" in t]))
    return medians


def _summarise(report: dict) -> None:
    cells = {(c["kind"], c["clients"], c["batching"]): c for c in report["cells"]}
    gains = {}
    for clients in report["settings"]["clients"]:
        on, off = cells.get(("cross", clients, True)), cells.get(("cross", clients, False))
        if on and off and off["qps"]:
            gains[str(clients)] = on["qps"] / off["qps"]
    report["summary"] = {
        "cross_throughput_gain_of_batching": gains,
        "intra_server_overhead_p50_ms": report["overhead"]["paired_overhead_p50_ms"],
    }


def _table(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        "# `cgx serve` benchmark (benchmarks/bench_serve.py)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {report['load_average_before'][0]:.1f} before / "
        f"{report['load_average_after'][0]:.1f} after (shared machine). Python {m['python']}, torch {m['torch']}, "
        + ", ".join(f"{k} {v}" for k, v in report["http_stack"].items() if v)
        + ".",
        f"Model {report['model']}, {s['images']} synthetic images (seed 101), k=10, "
        f"server torch threads {s['threads']}. "
        f"Cross = image -> images OTI, {s['steps']} steps, cache off; intra = text -> images. "
        f"Batching on: window {s['window_ms']:g} ms, max batch {s['max_batch']}; off: max batch 1. "
        f"Each cell at most {s['intra_queries']} intra / {s['cross_queries']} cross queries "
        f"or {s['cell_seconds']:g} s, in {s['rounds']} rounds alternating batching on and off (two servers). "
        "Latency is client-side over loopback HTTP; the clients are asyncio tasks in one process.",
        "",
        "| kind | clients | batching | queries | q/s | p50 ms | p95 ms | server p50 ms | batch call p50 / mean ms "
        "| mean batch | max batch | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cells"]:
        mean = f"{c['mean_batch_size']:.1f}" if c["mean_batch_size"] else "-"
        batch_ms = c["server_timings_p50_ms"].get("batch_ms")
        batch_call = (
            f"{batch_ms:.0f} / {c['server_timings_p50_ms']['batch_ms_mean']:.0f}" if batch_ms is not None else "-"
        )
        lines.append(
            f"| {c['kind']} | {c['clients']} | {'on' if c['batching'] else 'off'} | {c['queries']} | {c['qps']:.1f} | "
            f"{c['p50_ms']:.1f} | {c['p95_ms']:.1f} | {c['server_p50_ms']:.1f} | {batch_call} | {mean} | "
            f"{c['max_batch_size'] or '-'} | "
            f"{c['load_1min']:.1f} |"
        )
    summary, base = report["summary"], report["overhead"]
    gains = ", ".join(f"{g:.1f}x at {c} clients" for c, g in summary["cross_throughput_gain_of_batching"].items())
    lib = report["library_batching"]
    lines += [
        "",
        f"- Cross-query throughput, batching on / off: {gains} (target >= 5x at 32 clients).",
        f"- The library alone (no HTTP, same minute): one `search_batch` of {lib['queries']} cross queries "
        f"{lib['batched_s']:.2f} s vs {lib['one_by_one_s']:.2f} s one call each: {lib['gain']:.1f}x.",
        f"- Intra (text) queries alternating in process and over HTTP ({base['n']} each, 1 client): in-process p50 "
        f"{base['in_process_p50_ms']:.2f} ms, HTTP p50 {base['http_p50_ms']:.2f} ms; median paired overhead "
        f"{summary['intra_server_overhead_p50_ms']:.2f} ms (target < 2 ms). For scale: GET /healthz (no work, the "
        f"HTTP floor of client + uvicorn + middleware) p50 {base['healthz_p50_ms']:.2f} ms; the server's own "
        f"`timings.total_ms` p50 {base['service_p50_ms']:.2f} ms.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

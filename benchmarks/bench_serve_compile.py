"""`cgx serve --mode cross` with and without ``--compile-inversion``: client-side p50 at 1 and 32 clients.

Two real `cgx serve` processes on the same index, both batching on (bench_serve.py's defaults); one compiles the
inversion step at start (its start time is reported), the other runs it eagerly. Cells alternate between the two
servers round by round, so the shared machine's load changes hit both; everything else is bench_serve.py's.
``--compiled-precision fp32``: the compiling server's requests ask for fp32 (the eager one's keep the served
precision), and before the cells it gets a burst of concurrent queries, so that the fp32 shapes are compiled.

    python -m benchmarks.bench_serve_compile --out benchmarks/results/serve-compile.json \
        --table benchmarks/results/serve-compile.md
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as the CLI does

import argparse
import base64
import tempfile
import time
from pathlib import Path

from benchmarks import bench_serve
from benchmarks.machine import machine_info, write_json


class _Server(bench_serve._server):
    """bench_serve's server, batching on, with ``--compile-inversion`` when ``compiles``; times its start."""

    def __init__(self, index_path: Path, compiles: bool, args):
        super().__init__(index_path, True, args)
        if compiles:
            self.cmd.append("--compile-inversion")

    def __enter__(self) -> str:
        start = time.perf_counter()
        url = super().__enter__()
        self.start_s = time.perf_counter() - start
        return url


def main() -> None:
    args = _parse()
    with tempfile.TemporaryDirectory() as tmp:
        index_path, photos, texts = bench_serve._build(Path(tmp), args)
        images = [base64.b64encode(p.read_bytes()).decode() for p in photos]
        report = {"machine": machine_info(), "model": args.model, "settings": vars(args), "cells": []}
        servers = {"compiled": _Server(index_path, True, args), "eager": _Server(index_path, False, args)}
        with servers["compiled"] as compiled_url, servers["eager"] as eager_url:
            urls = {"compiled": compiled_url, "eager": eager_url}
            report["start_s"] = {name: server.start_s for name, server in servers.items()}
            for url in urls.values():
                bench_serve._warm(url, texts, images, args)
            precision = {"compiled": args.compiled_precision, "eager": None}
            if args.compiled_precision:
                for clients in (1, args.max_batch):  # the compiled shapes of that precision: a lone query, a batch
                    _cell(compiled_url, clients, args.compiled_precision, texts, images, args)
            for clients in args.clients:
                rounds: dict[str, list] = {"compiled": [], "eager": []}
                for r in range(args.rounds):
                    for name in ("compiled", "eager") if r % 2 == 0 else ("eager", "compiled"):
                        rounds[name].append(_cell(urls[name], clients, precision[name], texts, images, args))
                for name, parts in rounds.items():
                    cell = bench_serve._merge("cross", clients, True, parts) | {"server": name}
                    cell.pop("batch_sizes")
                    report["cells"].append(cell)
                    print(f"{name} {clients} clients: p50 {cell['p50_ms']:.0f} ms, {cell['qps']:.1f} q/s, load "
                          f"{cell['load_1min']:.1f}", flush=True)  # fmt: skip
        report["load_average_after"] = os.getloadavg()
    write_json(args.out, report)
    Path(args.table).write_text(_table(report))


def _cell(url: str, clients: int, precision: str | None, texts: list[str], images: list[str], args) -> dict:
    """bench_serve's cross cell, its request bodies asking for ``precision`` when given (else the served one)."""
    plain = bench_serve._request

    def request(kind: str, i: int, texts: list[str], images: list[str], steps: int) -> dict:
        return plain(kind, i, texts, images, steps) | ({"precision": precision} if precision else {})

    bench_serve._request = request
    try:
        return bench_serve._run_cell(url, "cross", clients, texts, images, args)
    finally:
        bench_serve._request = plain


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="crossgap-small")
    p.add_argument("--images", type=int, default=240, help="gallery size")
    p.add_argument("--steps", type=int, default=25, help="OTI steps of a cross query")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    p.add_argument("--cross-queries", type=int, default=128, help="most cross queries per cell (all rounds)")
    p.add_argument("--intra-queries", type=int, default=0, help="unused here (bench_serve's cells)")
    p.add_argument("--cell-seconds", type=float, default=40.0, help="time limit per cell (all rounds)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per cell")
    p.add_argument("--window-ms", type=float, default=5.0)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of the servers")
    p.add_argument("--compiled-precision", choices=["fp32", "bf16"], default=None, help="the compiled server's")
    p.add_argument("--out", default="benchmarks/out/serve-compile.json")
    p.add_argument("--table", default="benchmarks/out/serve-compile.md")
    return p.parse_args()


def _table(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        "# `cgx serve --mode cross` with and without `--compile-inversion` (benchmarks/bench_serve_compile.py)",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, load average {m['load_average_at_start'][0]:.1f} at "
        f"start, {report['load_average_after'][0]:.1f} at end (shared machine). Model {report['model']}, "
        f"{s['images']} synthetic images, cross = image -> images OTI, {s['steps']} steps, cache off, k=10, "
        f"batching on (window {s['window_ms']:g} ms, max batch {s['max_batch']}), server threads {s['threads']}. "
        f"{s['rounds']} rounds per cell alternating the two servers, at most {s['cross_queries']} queries or "
        f"{s['cell_seconds']:g} s per cell. Compiled server's requests in precision "
        f"{s['compiled_precision'] or 'as served'}. Client-side latency over loopback HTTP. Start (index open, model "
        f"load, and for the compiling server its warm-up): compiled {report['start_s']['compiled']:.1f} s, eager "
        f"{report['start_s']['eager']:.1f} s.",
        "",
        "| clients | server | queries | q/s | p50 ms | p95 ms | server p50 ms | mean batch | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cells"]:
        mean = f"{c['mean_batch_size']:.1f}" if c["mean_batch_size"] else "-"
        lines.append(
            f"| {c['clients']} | {c['server']} | {c['queries']} | {c['qps']:.1f} | {c['p50_ms']:.1f} | "
            f"{c['p95_ms']:.1f} | {c['server_p50_ms']:.1f} | {mean} | {c['load_1min']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Other clients' latency while one client sends a 32 MB ``POST /search/batch`` of tiny queries.

A real `cgx serve` process over a small crossgap-small index. One thread probes ``GET /healthz`` and an
intra text search every 20 ms; another sends one batch of ~2.4 million ``{"text":"x"}`` queries (just under
the 32 MiB request cap). Reported: the batch's status and time, and the probes' latency while it was in
flight (before: the query count was checked after validating every query on the event loop).
Run it against two checkouts (PYTHONPATH) to compare.

    python benchmarks/bench_serve_flood.py --out benchmarks/out/serve_flood.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.machine import machine_info, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import export_folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--mib", type=float, default=32.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = export_folder(Path(tmp) / "photos", seed=3, n=16)
        with CrossGapIndex.create(Path(tmp) / "index", model="crossgap-small", device="cpu") as cgx:
            cgx.index_folders([photos])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "crossgap_index", "serve", "--index", str(Path(tmp) / "index"), "--port", "0"]
        proc = subprocess.Popen(
            cmd + ["--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        try:
            port = None
            while port is None:
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit("cgx serve did not start")
                found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
                port = int(found.group(1)) if found else None
            report = run(f"http://127.0.0.1:{port}", int(args.mib * 1024 * 1024) - 64)
        finally:
            proc.terminate()
            proc.wait(30)
    report["machine"] = machine_info()
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1))
    if args.out:
        write_json(args.out, report)


def run(base: str, size: int) -> dict:
    one = b'{"text":"x"}'
    n = (size - 20) // (len(one) + 1)
    body = b'{"queries":[' + b",".join([one] * n) + b"]}"
    probes: list[tuple[float, float, float]] = []  # (start, healthz seconds, search seconds)
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            c.post("/search", json={"text": "a red circle", "k": 3})  # warm
            while not stop.is_set():
                t0 = time.perf_counter()
                c.get("/healthz")
                t1 = time.perf_counter()
                c.post("/search", json={"text": "a red circle", "k": 3})
                probes.append((t0, t1 - t0, time.perf_counter() - t1))
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(1.0)
    with httpx.Client(base_url=base, timeout=300) as c:
        start = time.perf_counter()
        response = c.post("/search/batch", content=body, headers={"content-type": "application/json"})
        end = time.perf_counter()
    time.sleep(0.5)
    stop.set()
    prober.join()
    quiet = [p for p in probes if p[0] < start - 0.05]
    during = [p for p in probes if start <= p[0] <= end]
    # a probe that started before the batch ended but finished after it still waited on the batch
    straddling = [p for p in probes if p[0] < end < p[0] + p[1] + p[2]]

    def stats(rows: list, col: int) -> dict:
        values = np.array([r[col] for r in rows]) * 1e3 if rows else np.zeros(1)
        return {"n": len(rows), "p50_ms": float(np.median(values)), "max_ms": float(values.max())}

    window = during + [p for p in straddling if p not in during]
    return {
        "batch_queries": n,
        "batch_bytes": len(body),
        "batch_status": response.status_code,
        "batch_answer": response.text[:120],
        "batch_seconds": round(end - start, 3),
        "quiet_healthz": stats(quiet, 1),
        "quiet_search": stats(quiet, 2),
        "during_healthz": stats(window, 1),
        "during_search": stats(window, 2),
        "longest_probe_ms": round(max((p[1] + p[2] for p in window), default=0.0) * 1e3, 1),
    }


if __name__ == "__main__":
    main()

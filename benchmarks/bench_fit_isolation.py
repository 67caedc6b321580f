"""Other clients' intra latency and the server's memory while a first ``mode=dba`` request is served (issue 23, C1).

A real `cgx serve` process over an index of N random unit vectors imported with `cgx import` (crossgap-small's
width, the factory `auto` picks for N). Phase 1 (idle): one client sends intra ``item_id`` searches, 20 ms apart;
their p50 and the server's RSS are the baseline. Phase 2: another client sends the first ``mode=dba`` request and
repeats it (each waits for the fit within the request timeout, then gets 503 with Retry-After) until it answers
200, while the intra client goes on; phase 3: idle again as long as phase 1 (a second baseline). Reported:
intra p50/p95 in each phase and their ratio (target <= 2), the server's peak RSS in phase 2 over its RSS idle
(target <= 2), the fit's duration and the dba client's statuses.

    nice python benchmarks/bench_fit_isolation.py --rows 200000 --out benchmarks/results/fit-isolation.json
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

from benchmarks.machine import machine_info, percentile_ms, write_json

MODEL = "crossgap-small"
DIM = 128


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--idle-s", type=float, default=30.0, help="seconds of idle intra probing")
    parser.add_argument("--max-fit-s", type=float, default=3000.0, help="give up on the fit after this long")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="the server's request timeout")
    parser.add_argument("--probe-interval-ms", type=float, default=20.0, help="intra client's pause")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    env = {**os.environ}
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        index = Path(tmp) / "index"
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.rows, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        np.save(Path(tmp) / "emb.npy", vectors)
        del vectors
        started = time.perf_counter()
        cgx = [sys.executable, "-m", "crossgap_index"]
        imported = ["import", str(Path(tmp) / "emb.npy"), "--index", str(index), "--model", MODEL, "-q"]
        subprocess.run(cgx + imported, check=True, env=env)
        import_s = time.perf_counter() - started
        serve = cgx + ["serve", "--index", str(index), "--port", "0", "--device", "cpu"]
        serve += ["--timeout", str(args.timeout_s)]
        proc = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            port = None
            while port is None:
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit("cgx serve did not start")
                found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
                port = int(found.group(1)) if found else None
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain its log
            report = run(f"http://127.0.0.1:{port}", proc.pid, args)
        finally:
            proc.terminate()
            proc.wait(60)
    report.update(rows=args.rows, dim=DIM, model=MODEL, import_s=round(import_s, 1), machine=machine_info())
    report["machine"]["load_average_at_start"] = load_at_start
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1))
    if args.out:
        write_json(args.out, report)
    if args.markdown:
        args.markdown.write_text(markdown(report))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def run(base: str, pid: int, args) -> dict:
    probes: list[tuple[float, float, int]] = []  # (start, seconds, status)
    rss: list[tuple[float, float]] = []  # (time, MB)
    stop = threading.Event()
    rng = np.random.default_rng(1)

    def probe() -> None:
        with httpx.Client(base_url=base, timeout=600) as client:
            while not stop.is_set():
                body = {"item_id": int(rng.integers(1, args.rows + 1)), "k": 10, "mode": "intra"}
                t0 = time.perf_counter()
                status = client.post("/search", json=body).status_code
                probes.append((t0, time.perf_counter() - t0, status))
                stop.wait(args.probe_interval_ms / 1000.0)

    def sample() -> None:
        while not stop.is_set():
            rss.append((time.perf_counter(), rss_mb(pid)))
            time.sleep(0.25)

    with httpx.Client(base_url=base, timeout=600) as client:  # warm: the model, the index
        assert client.post("/search", json={"text": "a red circle", "k": 10}).status_code == 200
        assert client.post("/search", json={"item_id": 1, "k": 10}).status_code == 200
    threads = [threading.Thread(target=probe), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    idle_start = time.perf_counter()
    time.sleep(args.idle_s)
    fit_start = time.perf_counter()
    load_at_fit_start = os.getloadavg()
    dba: list[dict] = []
    with httpx.Client(base_url=base, timeout=args.timeout_s + 600) as client:
        while time.perf_counter() - fit_start < args.max_fit_s:
            t0 = time.perf_counter()
            response = client.post("/search", json={"item_id": 1, "k": 10, "mode": "dba"})
            dba.append(
                {
                    "at_s": round(t0 - fit_start, 1),
                    "seconds": round(time.perf_counter() - t0, 2),
                    "status": response.status_code,
                    "retry_after": response.headers.get("retry-after"),
                    "error": response.json().get("error") if response.status_code != 200 else None,
                }
            )
            if response.status_code == 200:
                break
    fit_end = time.perf_counter()
    load_after_fit = os.getloadavg()
    time.sleep(args.idle_s)  # idle again (dba fitted): a second baseline, in the machine's later conditions
    after_end = time.perf_counter()
    stop.set()
    for thread in threads:
        thread.join()

    def phase(first: float, last: float) -> dict:
        times = [s for t, s, status in probes if first <= t < last and status == 200]
        failed = sum(1 for t, _, status in probes if first <= t < last and status != 200)
        return {
            "queries": len(times),
            "failed": failed,
            "p50_ms": round(percentile_ms(times, 50), 2) if times else None,
            "p95_ms": round(percentile_ms(times, 95), 2) if times else None,
        }

    idle, fitting, after = phase(idle_start, fit_start), phase(fit_start, fit_end), phase(fit_end, after_end)
    idle_rss = max(mb for t, mb in rss if idle_start <= t < fit_start)
    fit_rss = max(mb for t, mb in rss if fit_start <= t < fit_end)
    baseline = max(idle["p50_ms"], after["p50_ms"] or 0.0)
    return {
        "intra_idle": idle,
        "intra_while_fitting": fitting,
        "intra_idle_after": after,
        "intra_p50_ratio": round(fitting["p50_ms"] / idle["p50_ms"], 2) if fitting["p50_ms"] else None,
        "intra_p50_ratio_to_worse_idle": round(fitting["p50_ms"] / baseline, 2) if fitting["p50_ms"] else None,
        "load_average_at_fit_start": load_at_fit_start,
        "load_average_at_fit_end": load_after_fit,
        "rss_idle_mb": round(idle_rss, 1),
        "rss_peak_while_fitting_mb": round(fit_rss, 1),
        "rss_ratio": round(fit_rss / idle_rss, 2),
        "fit_done": bool(dba) and dba[-1]["status"] == 200,
        "fit_s": round(fit_end - fit_start, 1),
        "dba_requests": dba,
        "server_timeout_s": args.timeout_s,
        "probe_interval_ms": args.probe_interval_ms,
    }


def markdown(report: dict) -> str:
    m, idle, fit = report["machine"], report["intra_idle"], report["intra_while_fitting"]
    after = report["intra_idle_after"]
    statuses = ", ".join(f"{r['status']} after {r['seconds']} s" for r in report["dba_requests"])
    return "\n".join(
        [
            "# Fit isolation: intra latency and server memory while the first dba request is served",
            "",
            f"`benchmarks/bench_fit_isolation.py`: a `cgx serve` process over {report['rows']:,} random unit "
            f"vectors (dim {report['dim']}, `cgx import`, model {report['model']}, factory auto), request timeout "
            f"{report['server_timeout_s']:g} s, intra queries {report['probe_interval_ms']:g} ms apart. "
            f"Machine: {m['cpu']}, {m['cores']} cores, load average at start "
            f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}, at end "
            f"{', '.join(f'{x:.1f}' for x in report['load_average_at_end'])} (as the fit began "
            f"{report['load_average_at_fit_start'][0]:.1f}, as it ended {report['load_average_at_fit_end'][0]:.1f}); "
            "run under `nice`.",
            "",
            "| | intra queries | intra p50 ms | intra p95 ms | server RSS MB |",
            "|---|---|---|---|---|",
            f"| idle | {idle['queries']} | {idle['p50_ms']} | {idle['p95_ms']} | {report['rss_idle_mb']} |",
            f"| while dba is fitted | {fit['queries']} ({fit['failed']} failed) | {fit['p50_ms']} | {fit['p95_ms']} "
            f"| {report['rss_peak_while_fitting_mb']} (peak) |",
            f"| idle again, dba fitted | {after['queries']} | {after['p50_ms']} | {after['p95_ms']} | |",
            f"| fitting / idle before (target <= 2) | | {report['intra_p50_ratio']} | | {report['rss_ratio']} |",
            f"| fitting / the worse idle | | {report['intra_p50_ratio_to_worse_idle']} | | |",
            "",
            f"The dba fit took {report['fit_s']} s (done: {report['fit_done']}); the dba client's requests: "
            f"{statuses}.",
            "",
        ]
    )


if __name__ == "__main__":
    main()

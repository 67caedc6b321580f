"""Benchmark what index integrity costs and buys: open time before and after a --cross query, and
search throughput of 8 threads on one opened index vs 1 thread.

Not a test: it measures and writes JSON + a markdown table (machine, model and settings beside every
number). The index is N random unit 512-d vectors written straight through the store as image items
(no model runs to make them); the manifest names ViT-B-32/random (real architecture, random weights),
so a real OTI --cross query can run against it. Fill, opens, and the --cross query each run in their
own process, as each `cgx` command does. With ``--baseline DIR`` (a checkout of an earlier
commit, e.g. ``git archive e3999ec | tar -x -C DIR``) the open/cross phase also runs on that code, in
its own process, for a side-by-side ratio.

    python benchmarks/bench_integrity.py --vectors 200000 --baseline /tmp/cgx-baseline
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODEL = "ViT-B-32/random"
DIM = 512
REPO = Path(__file__).resolve().parents[1]


def fill(path: Path, n: int, chunk: int = 50_000) -> float:
    """N random unit vectors as image items, through the store's own catalog; returns seconds."""
    from PIL import Image

    from crossgap_index.store.directory import Store

    start = time.perf_counter()
    store = Store.create(path, model=MODEL, dim=DIM, factory="Flat")
    rng = np.random.default_rng(0)
    for first in range(0, n, chunk):
        vectors = rng.standard_normal((min(chunk, n - first), DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = range(first, first + len(vectors))  # vectors go to the shards, rows point at them
        paths, hashes = [f"/bench/img{i:07d}.jpg" for i in rows], [f"h{i}" for i in rows]
        store.catalog.add_images(paths, hashes, vectors, [i + 1 for i in rows])
        store.catalog.commit()
    store.save()
    store.close()
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path / "query.png")
    return time.perf_counter() - start


def time_opens(path: Path, repeats: int) -> list[float]:
    from crossgap_index import CrossGapIndex

    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        index = CrossGapIndex.open(path)
        seconds.append(time.perf_counter() - start)
        index.close()
    return seconds


def worker(phase: str, path: Path, n: int, repeats: int, steps: int) -> dict:
    """One phase in its own process, as each `cgx` command is: fill, open (x repeats), or one --cross query."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.inversion import InversionConfig

    if phase == "fill":
        return {"fill_seconds": fill(path, n)}
    if phase == "open":
        return {"open_s": time_opens(path, repeats)}
    with CrossGapIndex.open(path, device="cpu") as index:
        start = time.perf_counter()
        index.search(image=path / "query.png", mode="cross", inversion=InversionConfig(oti_steps=steps), k=10)
        return {"cross_query_s": time.perf_counter() - start}


def open_cross(code: Path, path: Path, args: argparse.Namespace) -> dict:
    """Fill, open (fresh process), one --cross query (fresh process), open again (fresh process)."""
    fill_seconds = run_worker(code, "fill", path, args)["fill_seconds"]
    before = run_worker(code, "open", path, args)["open_s"]
    cross = run_worker(code, "cross", path, args)["cross_query_s"]
    after = run_worker(code, "open", path, args)["open_s"]
    manifest = json.loads((path / "manifest.json").read_text())
    return {
        "vectors": args.vectors,
        "fill_seconds": fill_seconds,
        "open_before_cross_s": before,
        "cross_query_s": cross,
        "open_after_cross_s": after,
        "manifest_generation_after": manifest["generation"],
        "files": sorted(p.name for p in path.iterdir()),
    }


def threads_bench(path: Path, n_queries: int, k: int, threads: int) -> dict:
    """Queries/s of threads sharing one opened index, vector queries (no model): the store's concurrency
    alone, beside the same threads calling the raw FAISS index it holds (the ceiling on this machine).
    FAISS's own OpenMP is set to 1 thread so parallelism comes from our threads."""
    import faiss

    from crossgap_index import CrossGapIndex

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((n_queries, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with CrossGapIndex.open(path) as index:
        oracle = [[h.id for h in index.search(vector=q, k=k)] for q in queries[:8]]
        raw = index._store.indexes["image"].index
        out: dict = {"queries": n_queries, "k": k}
        for n_threads in sorted({1, 2, threads}):
            wrong: list[int] = []

            def ours(i: int, wrong: list = wrong) -> None:
                hits = index.search(vector=queries[i], k=k)
                if i < len(oracle) and [h.id for h in hits] != oracle[i]:
                    wrong.append(i)

            seconds = _run_threads(ours, n_queries, n_threads)
            raw_seconds = _run_threads(lambda i: raw.search(queries[i : i + 1], k), n_queries, n_threads)
            out[f"{n_threads}_threads"] = {
                "seconds": seconds,
                "queries_per_s": n_queries / seconds,
                "raw_faiss_queries_per_s": n_queries / raw_seconds,
                "wrong": wrong,
            }
        out["speedup"] = out[f"{threads}_threads"]["queries_per_s"] / out["1_threads"]["queries_per_s"]
    return out


def _run_threads(search, n_queries: int, n_threads: int) -> float:
    """Wall seconds for ``n_threads`` threads to run ``search(i)`` over all query rows between them."""
    shares = np.array_split(np.arange(n_queries), n_threads)
    workers = [threading.Thread(target=lambda rows=rows: [search(int(i)) for i in rows]) for rows in shares]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def run_worker(code: Path, phase: str, path: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path), "--phase", phase]
    cmd += ["--vectors", str(args.vectors), "--repeats", str(args.repeats), "--steps", str(args.steps)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)
    if done.returncode != 0:
        raise SystemExit(f"worker on {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def table(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, faiss {m['faiss']}; load average "
        f"{m['load_average_at_start'][0]:.1f} at start, {results['load_average_at_end'][0]:.1f} at end "
        "(shared machine).",
        f"Index: {results['vectors']:,} random unit {DIM}-d vectors written through the store (Flat), "
        f"manifest model {MODEL}; --cross query: OTI, {results['steps']} steps.",
        "",
        "| code | open before --cross: min / median s | open after --cross: min / median s | after/before (min) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results["open_cross"].items():
        before, after = r["open_before_cross_s"], r["open_after_cross_s"]
        b, a = f"{min(before):.2f} / {np.median(before):.2f}", f"{min(after):.2f} / {np.median(after):.2f}"
        lines.append(f"| {name} | {b} | {a} | {min(after) / min(before):.2f}x |")
    t = results["threads"]
    lines += [
        "",
        f"| threads searching one opened index ({t['queries']} vector queries, k={t['k']}, FAISS 1 thread each) "
        "| seconds | queries/s | raw FAISS queries/s, same threads | results differing from the oracle |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in sorted((k for k in t if k.endswith("_threads")), key=lambda k: int(k.split("_")[0])):
        r = t[key]
        raw = f"{r['raw_faiss_queries_per_s']:.1f}" if "raw_faiss_queries_per_s" in r else "-"
        lines.append(
            f"| {key.replace('_', ' ')} | {r['seconds']:.2f} | {r['queries_per_s']:.1f} | {raw} | {len(r['wrong'])} |"
        )
    lines.append(f"\nSpeed-up of {results['threads_n']} threads over 1: {t['speedup']:.2f}x on {m['cores']} cores.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="OTI steps of the --cross query")
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--baseline", type=Path, help="a checkout of earlier code to compare open times with")
    parser.add_argument("--out", default="benchmarks/out/integrity.json")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("fill", "open", "cross"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.phase, args.worker, args.vectors, args.repeats, args.steps)))
        return

    from benchmarks.machine import machine_info, write_json

    results: dict = {"machine": machine_info(), "vectors": args.vectors, "steps": args.steps, "open_cross": {}}
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"this branch": REPO}
        if args.baseline:
            codes["baseline"] = args.baseline.resolve()
        for name, code in codes.items():
            path = Path(tmp) / name.replace(" ", "-")
            results["open_cross"][name] = open_cross(code, path, args)
            if name != "this branch":
                continue
            results["threads_n"] = args.threads
            results["threads"] = threads_bench(path, args.queries, args.k, args.threads)
            shutil.rmtree(path)
    results["load_average_at_end"] = os.getloadavg()
    write_json(args.out, results)
    print(table(results))
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()

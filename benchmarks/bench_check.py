"""Benchmark what `cgx check` costs on a large index, and its self-search part (a seeded sample of stored
vectors searched in the FAISS file, store/check.py) and IVF list check (store/vectors.py) on their own.

Not a test: it measures and writes JSON + a markdown table (machine, load and settings beside every number).
The index is N random unit 512-d vectors written straight through the store as image items (no model runs),
once per factory; each measurement is the best of ``--repeats`` in this process.

    python benchmarks/bench_check.py --vectors 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info, write_json

DIM = 512
RESULTS = Path(__file__).resolve().parent / "results"


def fill(path: Path, n: int, factory: str, chunk: int = 50_000) -> float:
    from crossgap_index.store.directory import Store

    start = time.perf_counter()
    store = Store.create(path, model="ViT-B-32/random", dim=DIM, factory=factory)
    rng = np.random.default_rng(0)
    for first in range(0, n, chunk):
        vectors = rng.standard_normal((min(chunk, n - first), DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = range(first, first + len(vectors))
        store.catalog.add_images(
            [f"/bench/{i}.jpg" for i in rows], [f"h{i}" for i in rows], vectors, [i + 1 for i in rows]
        )
        store.catalog.commit()
    store.save()
    store.close()
    return time.perf_counter() - start


def best(run, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def measure(path: Path, factory: str, repeats: int) -> dict:
    from crossgap_index.store import check
    from crossgap_index.store.directory import Store
    from crossgap_index.store.vectors import ivf_position_problem

    store = Store.open(path, readonly=True)
    index = store.indexes["image"]
    index.index  # noqa: B018 - waits for a background load
    ids = store.catalog.ids("image")
    report = check.check_store(store, files=False)
    assert report.ok, report.problems
    row = {
        "factory": factory,
        "resolved": index.resolved_factory,
        "vectors": int(index.ntotal),
        "check_s": best(lambda: check.check_store(store, files=False), repeats),
        # a Flat file's check compares every vector instead; its self-search is timed for comparison only
        "self_search_s": best(lambda: check._self_search_problem(store, "image", index, ids), repeats),
        "ivf_lists_s": best(lambda: ivf_position_problem(index.index), repeats),
        "sample": check.SELF_SEARCH_SAMPLE,
        "search_params": index.search_params,
    }
    store.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--factories", nargs="+", default=["Flat", "IVF1024,Flat"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = {"machine": machine_info(), "vectors": args.vectors, "dim": DIM, "rows": []}
    with tempfile.TemporaryDirectory(prefix="cgx-bench-check-") as tmp:
        for factory in args.factories:
            path = Path(tmp) / factory.replace(",", "-")
            fill_s = fill(path, args.vectors, factory)
            row = measure(path, factory, args.repeats)
            row["fill_s"] = fill_s
            row["load_average"] = os.getloadavg()
            result["rows"].append(row)
            print(row, flush=True)
    result["load_average_at_end"] = os.getloadavg()
    write_json(RESULTS / "store-check.json", result)
    write_table(result, args.repeats)


def loads(values) -> str:
    return ", ".join(f"{x:.1f}" for x in values)


def write_table(result: dict, repeats: int) -> None:
    m = result["machine"]
    lines = [
        "# `cgx check` on a large index: the self-search and the IVF list check",
        "",
        f"benchmarks/bench_check.py --vectors {result['vectors']}: {m['cpu']}, {m['cores']} cores, faiss {m['faiss']}; "
        f"load average at start {loads(m['load_average_at_start'])}, at end {loads(result['load_average_at_end'])}. "
        f"Random unit {DIM}-d vectors; best of {repeats}; `check --no-files`, read-only.",
        "",
        "A Flat file's check compares every vector exactly instead of the self-search (timed here beside it).",
        "",
        "| factory | vectors | search params | whole check (s) | self-search of a sample (s) | sample | "
        "IVF list check (s) | load average |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['resolved']} | {r['vectors']:,} | {r['search_params'] or '-'} | {r['check_s']:.2f} | "
            f"{r['self_search_s']:.2f} | {r['sample']} | {r['ivf_lists_s']:.3f} | {loads(r['load_average'])} |"
        )
    (RESULTS / "store-check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

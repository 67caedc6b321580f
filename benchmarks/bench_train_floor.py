"""How many rows per IVF list train an IVF-Flat index without losing recall (store/vectors.py's
TRAIN_POINTS_PER_LIST): build time and recall@10 of the same vectors at several rows per list, side by side.

The vectors and queries are bench_search_raw.py's (clustered random unit vectors x 512, queries = stored
vectors + noise), read from its work folder. Each setting builds the index as the store does
(``VectorIndex.build_chunked``: a seeded random training sample, then adds a chunk at a time) and searches it
with the store's default parameters and with fewer lists probed (``LOW_NPROBES``: where a coarser clustering
shows first); IVF-Flat's scores are exact, so its top-10 is what a search serves.
A sample larger than the collection is the whole collection.

    python benchmarks/bench_train_floor.py --vectors 200000 --factory auto --factory IVF1024,Flat
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_search_raw import CHUNK, DIM, K, prepared, recall  # noqa: E402
from benchmarks.machine import machine_info, write_json  # noqa: E402

LOW_NPROBES = (2, 8)


TRAIN_SECONDS: list[float] = []


def first_call(phases: dict[str, float], phase: str, *_: int) -> None:
    """When each build phase first reported."""
    phases.setdefault(phase, time.perf_counter())


def two_level_trained(index, chunks, n: int):
    """``index`` (IDMap2 over an IVF) with its lists trained by faiss.contrib's two-level clustering: sqrt(nlist)
    coarse clusters, then each split in proportion to its rows (a fraction of flat k-means's distance work)."""
    import faiss
    from faiss.contrib.clustering import two_level_clustering

    from crossgap_index.store import faiss_build

    began = time.perf_counter()
    ivf = faiss.extract_index_ivf(index)
    sample = faiss_build.training_sample(chunks(), n, faiss_build.training_size(index, n))
    centroids, _ = two_level_clustering(sample, round(ivf.nlist**0.5), ivf.nlist, clustering_niter=10)
    ivf.quantizer.add(np.ascontiguousarray(centroids, np.float32))
    ivf.is_trained = True
    index.is_trained = True
    TRAIN_SECONDS.append(time.perf_counter() - began)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--factory", action="append", help="factories to build (default: auto)")
    parser.add_argument("--rows-per-list", type=int, nargs="+", default=[64, 100, 256])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cgx-search-raw"))
    parser.add_argument(
        "--clustering", nargs="+", default=["kmeans"], choices=["kmeans", "two-level"], help="how the lists train"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train-floor.json")
    args = parser.parse_args()

    from crossgap_index.store import faiss_build, vectors

    machine = machine_info()
    _, embeddings, queries, truth = prepared(args.work, args.vectors, args.queries)
    rows = np.load(embeddings, mmap_mode="r")

    def chunks():
        for first in range(0, len(rows), CHUNK):
            chunk = np.asarray(rows[first : first + CHUNK], np.float32)
            yield np.arange(first + 1, first + len(chunk) + 1, dtype=np.int64), chunk

    runs = []
    for factory in args.factory or ["auto"]:
        for per_list, clustering in itertools.product(args.rows_per_list, args.clustering):
            faiss_build.TRAIN_POINTS_PER_LIST = per_list  # read by training_size at each build
            index = vectors.VectorIndex(DIM, factory)
            load = os.getloadavg()
            phases: dict[str, float] = {}
            began = time.perf_counter()
            if clustering == "kmeans":
                index.build_chunked(len(rows), chunks, progress=functools.partial(first_call, phases))
                phases["train"] = phases.get("add", began) - phases.get("train", began)
            else:
                index.index = faiss_build.build_streamed(
                    two_level_trained(index._empty(len(rows)), chunks, len(rows)), DIM, len(rows), chunks
                )
                index.search_params = vectors.default_search_params(index.resolved_factory)
                phases["train"] = TRAIN_SECONDS[-1]
            seconds = time.perf_counter() - began
            default_params = index.search_params
            recalls = {}
            for params in [*(f"nprobe={n}" for n in LOW_NPROBES), default_params]:
                index.search_params = params
                recalls[params] = recall(list(index.search(queries, K)[1]), truth)
            runs.append(
                {
                    "factory": index.resolved_factory,
                    "rows_per_list": per_list,
                    "clustering": clustering,
                    "train_seconds": phases["train"],
                    "training_rows": vectors.training_size(index._empty(len(rows)), len(rows)),
                    "build_seconds": seconds,
                    "recall_at_10": recalls[default_params],
                    "recall_at_10_by_params": recalls,
                    "search_params": default_params,
                    "load_average_at_start": load,
                }
            )
            print(runs[-1], flush=True)
    result = {"machine": machine, "vectors": len(rows), "dim": DIM, "queries": len(queries), "runs": runs}
    write_json(args.out, result)
    lines = [
        "# IVF training rows per list: build time and recall@10 (store/vectors.py TRAIN_POINTS_PER_LIST)",
        "",
        f"`benchmarks/bench_train_floor.py`: {len(rows):,} clustered random unit vectors x {DIM} "
        f"(bench_search_raw.py's), {len(queries)} queries (stored vectors + noise), recall@10 against brute force "
        f"(IVF-Flat's scores are exact: what a search serves). `VectorIndex.build_chunked` as the store builds. "
        f"Machine: {machine['cpu']}, {machine['cores']} cores, FAISS {machine['faiss']}; load average at start "
        f"{machine['load_average_at_start']}. Settings run one after another in one process.",
        "",
        "| factory | clustering | rows per list | training rows | train s | build s | build / largest sample's "
        "| recall@10 (default) " + "".join(f"| recall@10 nprobe={n} " for n in LOW_NPROBES) + "| load (1 min) |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(LOW_NPROBES) + "---|",
    ]
    for run in runs:
        largest = max((r for r in runs if r["factory"] == run["factory"]), key=lambda r: r["rows_per_list"])
        lines.append(
            f"| `{run['factory']}` ({run['search_params']}) | {run['clustering']} | {run['rows_per_list']} "
            f"| {run['training_rows']:,} | {run['train_seconds']:.1f} | {run['build_seconds']:.1f} "
            f"| {run['build_seconds'] / largest['build_seconds']:.2f}x "
            f"| {run['recall_at_10']:.4f} "
            + "".join(f"| {run['recall_at_10_by_params'][f'nprobe={n}']:.4f} " for n in LOW_NPROBES)
            + f"| {run['load_average_at_start'][0]:.1f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

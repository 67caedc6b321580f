"""The store's FAISS build per candidate factory and training rows per list: each build's phases, recall@10 and
batch-1 latency, side by side on the same vectors (store/vectors.py's ``auto`` rule and store/faiss_build.py's
TRAIN_POINTS_PER_LIST rest on these).

The vectors and queries are bench_search_raw.py's (clustered random unit vectors x 512, queries = stored
vectors + noise), read from its work folder. Each setting builds the index as the store does
(``VectorIndex.build_chunked``: a seeded random training sample, then adds a chunk at a time), times its
phases (sample: drawing the training rows; train: k-means and any code training; add: assigning and adding
every row; write: ``VectorIndex.save``, fsync included), then searches it at the store's default parameters
and with fewer lists probed (``LOW_NPROBES``: where a coarser clustering shows first). What a search serves:
IVF-Flat's scores are exact, so its top-10 as FAISS returns it; compressed codes (SQ8, ...) as
search/ranking.py serves them: ``RERANK_MIN_CANDIDATES`` candidates re-scored exactly from the float32 rows.
Batch-1 p50: one query at a time, re-scoring included. A sample larger than the collection is the whole
collection.

    python benchmarks/bench_train_floor.py --vectors 1000000 --factory auto --factory IVF1024,Flat \
        --rows-per-list 64 100 --work /tmp/importscale
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
from benchmarks.machine import machine_info, percentile_ms, write_json  # noqa: E402

LOW_NPROBES = (2, 8)
LATENCY_QUERIES = 200
TRAIN_SECONDS: list[float] = []
SAMPLE_SECONDS: list[float] = []


def first_call(phases: dict[str, float], phase: str, *_: int) -> None:
    """When each build phase first reported."""
    phases.setdefault(phase, time.perf_counter())


def timed_sample(draw, *args):
    """faiss_build.training_sample, its seconds kept in SAMPLE_SECONDS."""
    began = time.perf_counter()
    try:
        return draw(*args)
    finally:
        SAMPLE_SECONDS.append(time.perf_counter() - began)


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


def served(index, rows: np.ndarray, queries: np.ndarray, exact: bool) -> np.ndarray:
    """Each query's top-10 ids as a search serves them: FAISS's own where its scores are exact, else its
    RERANK_MIN_CANDIDATES candidates re-scored from the float32 rows (ids are 1-based row numbers)."""
    from crossgap_index.search.ranking import RERANK_MIN_CANDIDATES

    if exact:
        return index.search(queries, K)[1]
    candidates = index.search(queries, RERANK_MIN_CANDIDATES)[1]
    out = np.zeros((len(queries), K), np.int64)
    for row, (query, ids) in enumerate(zip(queries, candidates, strict=True)):
        ids = ids[ids > 0]
        order = np.sort(ids)
        scores = np.asarray(rows[order - 1], np.float32) @ query
        out[row, : min(K, len(order))] = order[np.argsort(-scores, kind="stable")[:K]]
    return out


def build_one(factory: str, per_list: int, clustering: str, rows: np.ndarray, chunks, work: Path) -> tuple:
    """One build as the store does it; its phases in seconds and the built ``VectorIndex``."""
    from crossgap_index.store import faiss_build, vectors

    faiss_build.TRAIN_POINTS_PER_LIST = per_list  # read by training_size at each build
    index = vectors.VectorIndex(DIM, factory)
    marks: dict[str, float] = {}
    SAMPLE_SECONDS.clear()
    began, cpu = time.perf_counter(), time.process_time()
    if clustering == "kmeans":
        index.build_chunked(len(rows), chunks, progress=functools.partial(first_call, marks))
        added = time.perf_counter()
        train = marks.get("add", began) - marks.get("train", began)
        sample = sum(SAMPLE_SECONDS)
        phases = {"sample": sample, "train": train - sample, "add": added - marks.get("add", began)}
    else:
        index.index = faiss_build.build_streamed(
            two_level_trained(index._empty(len(rows)), chunks, len(rows)), DIM, len(rows), chunks
        )
        index.search_params = vectors.default_search_params(index.resolved_factory)
        phases = {"sample": 0.0, "train": TRAIN_SECONDS[-1], "add": time.perf_counter() - began - TRAIN_SECONDS[-1]}
    written = time.perf_counter()
    path = work / "candidate.faiss"
    index.save(path)
    phases["write"] = time.perf_counter() - written
    phases["file_bytes"] = path.stat().st_size
    path.unlink()
    phases["build"] = time.perf_counter() - began
    phases["cpu"] = time.process_time() - cpu  # every thread of this process, user + system
    return phases, index


def measure(index, rows: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Recall@10 at the default and at lower nprobes, and batch-1 latency at the default, as a search serves."""
    import faiss

    from crossgap_index.store import faiss_build

    exact = isinstance(faiss_build.unwrapped(index.index.index), faiss.IndexIVFFlat | faiss.IndexFlat)
    default_params = index.search_params
    recalls = {}
    for params in [*(f"nprobe={n}" for n in LOW_NPROBES), default_params]:
        index.search_params = params
        recalls[params] = recall(list(served(index.index, rows, queries, exact)), truth)
    index.search_params = default_params
    seconds = []
    for query in queries[:LATENCY_QUERIES]:
        began = time.perf_counter()
        served(index.index, rows, query[None], exact)
        seconds.append(time.perf_counter() - began)
    return {
        "recall_at_10": recalls[default_params],
        "recall_at_10_by_params": recalls,
        "search_params": default_params,
        "rescored": not exact,
        "batch1_p50_ms": percentile_ms(seconds, 50),
        "batch1_p90_ms": percentile_ms(seconds, 90),
    }


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

    faiss_build.training_sample = functools.partial(timed_sample, faiss_build.training_sample)
    machine = machine_info()
    work, embeddings, queries, truth = prepared(args.work, args.vectors, args.queries)
    rows = np.load(embeddings, mmap_mode="r")

    def chunks():
        for first in range(0, len(rows), CHUNK):
            chunk = np.asarray(rows[first : first + CHUNK], np.float32)
            yield np.arange(first + 1, first + len(chunk) + 1, dtype=np.int64), chunk

    runs = []
    for factory in args.factory or ["auto"]:
        for per_list, clustering in itertools.product(args.rows_per_list, args.clustering):
            load = os.getloadavg()
            phases, index = build_one(factory, per_list, clustering, rows, chunks, work)
            run = {
                "factory": index.resolved_factory,
                "rows_per_list": per_list,
                "clustering": clustering,
                "training_rows": vectors.training_size(index._empty(len(rows)), len(rows)),
                "phases": phases,
                "build_seconds": phases["build"],
                **measure(index, rows, queries, truth),
                "load_average_at_start": load,
                "load_average_at_end": os.getloadavg(),
            }
            del index
            runs.append(run)
            print(run, flush=True)
            result = {"machine": machine, "vectors": len(rows), "dim": DIM, "queries": len(queries), "runs": runs}
            write_json(args.out, result)
            write_markdown(args.out.with_suffix(".md"), result)
    print(args.out.with_suffix(".md").read_text())


def write_markdown(path: Path, r: dict) -> None:
    m, runs = r["machine"], r["runs"]
    lines = [
        "# The FAISS build per factory and training rows per list: phases, recall@10, batch-1 latency",
        "",
        f"`benchmarks/bench_train_floor.py`: {r['vectors']:,} clustered random unit vectors x {r['dim']} "
        f"(bench_search_raw.py's), {r['queries']} queries (stored vectors + noise), recall@10 against brute force "
        "as a search serves it (IVF-Flat: FAISS's exact scores; compressed codes: 100 candidates re-scored exactly "
        f"from the float32 rows). `VectorIndex.build_chunked` + `save` as the store builds. Batch-1 p50/p90 over "
        f"{LATENCY_QUERIES} queries at the default parameters, re-scoring included. Machine: {m['cpu']}, "
        f"{m['cores']} cores, FAISS {m['faiss']}; load average at start {m['load_average_at_start']}. Settings run "
        "one after another in one process, under `nice -n 5`.",
        "",
        "| factory | clustering | rows per list | training rows | sample s | train s | add s | write s | build s "
        "| vectors/s (build) | CPU s | file MB | recall@10 (default) "
        + "".join(f"| nprobe={n} " for n in LOW_NPROBES)
        + "| batch-1 p50 / p90 ms | load (1 min) start / end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(LOW_NPROBES) + "---|---|",
    ]
    for run in runs:
        p = run["phases"]
        lines.append(
            f"| `{run['factory']}` ({run['search_params']}{', re-scored' if run['rescored'] else ''}) "
            f"| {run['clustering']} | {run['rows_per_list']} | {run['training_rows']:,} | {p['sample']:.1f} "
            f"| {p['train']:.1f} | {p['add']:.1f} | {p['write']:.1f} | {run['build_seconds']:.1f} "
            f"| {r['vectors'] / run['build_seconds']:,.0f} | {p.get('cpu', float('nan')):.0f} "
            f"| {p['file_bytes'] / 1e6:,.0f} | {run['recall_at_10']:.4f} "
            + "".join(f"| {run['recall_at_10_by_params'][f'nprobe={n}']:.4f} " for n in LOW_NPROBES)
            + f"| {run['batch1_p50_ms']:.2f} / {run['batch1_p90_ms']:.2f} "
            f"| {run['load_average_at_start'][0]:.1f} / {run['load_average_at_end'][0]:.1f} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Batch-1 search latency of ``CrossGapIndex.search`` beside raw FAISS on the index's own file, warm and cold pages.

N random unit vectors x 512 (float32; clustered as image embeddings are: ``CLUSTERS`` random unit centres,
each row a centre plus Gaussian noise, normalised, as benchmarks/bench_scale.py makes them) are imported with
the library's import (the ``auto`` factory), then every query (a stored vector plus noise, normalised) runs,
interleaved in one process:
  raw      faiss.read_index of the saved image index, memory-mapped as the store maps it, the store's own search
           parameters (nprobe), k = 10;
  before   CrossGapIndex.search (mode intra, a vector query) with every candidate re-scored from the
           shards (search/ranking.py forced to re-score: main's rule, which re-scores all but plain Flat);
  after    CrossGapIndex.search as it runs now (no re-scoring where FAISS's scores are exact).
Each runs once over all queries first (warm pages), then each query runs the three in rotating order (warm);
then again with cold pages (``--cold``): before each timed query every file of the index is dropped from the
page cache (this process's mappings of it released with madvise(MADV_DONTNEED), then
posix_fadvise(POSIX_FADV_DONTNEED) on the file), so FAISS's lists, the catalog's pages and the shards come
from the disk. Recall@10 against brute force over the float32 vectors, for each.

    python benchmarks/bench_search_raw.py --vectors 200000 --queries 300 --work /tmp/cgx-search-raw
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info, percentile_ms, write_json  # noqa: E402

DIM = 512
MODEL = "ViT-B-32/random"  # 512-d; the import reads only its config, never its weights
CHUNK = 100_000
K = 10
CLUSTERS = 1000
NOISE = 0.04  # per-coordinate sd of a row around its centre, and of a query around its stored vector


def generate(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for first in range(0, n, CHUNK):
        count = min(CHUNK, n - first)
        rows = centres[rng.integers(0, CLUSTERS, count)] + rng.normal(0, NOISE, (count, DIM)).astype(np.float32)
        out[first : first + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    out.flush()


def make_queries(embeddings: Path, count: int) -> np.ndarray:
    rows = np.load(embeddings, mmap_mode="r")
    rng = np.random.default_rng(1)
    picked = np.asarray(rows[np.sort(rng.choice(len(rows), count, replace=False))], np.float32)
    queries = picked + rng.normal(0, NOISE, picked.shape).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def brute_force_ids(embeddings: Path, queries: np.ndarray) -> np.ndarray:
    """Each query's exact top-10 ids (1..N in file order, as the import numbers them)."""
    rows = np.load(embeddings, mmap_mode="r")
    best_scores = np.full((len(queries), K), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), K), np.int64)
    for first in range(0, len(rows), CHUNK):
        chunk = np.asarray(rows[first : first + CHUNK], np.float32)
        scores = np.concatenate([best_scores, queries @ chunk.T], axis=1)
        numbers = np.broadcast_to(np.arange(first + 1, first + len(chunk) + 1), (len(queries), len(chunk)))
        ids = np.concatenate([best_ids, numbers], axis=1)
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    return best_ids


def prepared(work_root: Path, n: int, queries: int) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """The work folder for ``n`` vectors, its .npy (made once), the queries and their exact top-10 ids."""
    work = work_root / str(n)
    work.mkdir(parents=True, exist_ok=True)
    embeddings = work / "emb.npy"
    if not embeddings.exists():
        generate(embeddings, n)
    picked = make_queries(embeddings, queries)
    return work, embeddings, picked, brute_force_ids(embeddings, picked)


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


MADV_DONTNEED = 4


def page_dropper(folder: Path):
    """A function that drops every file under ``folder`` from the page cache, mapped pages included."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    files = [p for p in folder.rglob("*") if p.is_file()]
    prefix = str(folder.resolve())

    def drop() -> None:
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(prefix):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                libc.madvise(start, end - start, MADV_DONTNEED)
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    return drop


def timed_rounds(runs: dict, queries: np.ndarray, before_each=None) -> dict[str, list[float]]:
    """Seconds of each run per query, the runs in rotating order; ``before_each()`` untimed before every one."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for number, q in enumerate(queries):
        for name in names[number % len(names) :] + names[: number % len(names)]:
            if before_each is not None:
                before_each()
            began = time.perf_counter()
            runs[name](q)
            seconds[name].append(time.perf_counter() - began)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cgx-search-raw"), help="vectors and index, reused")
    parser.add_argument("--faiss-threads", type=int, default=0, help="OpenMP threads for FAISS (0: its default)")
    parser.add_argument("--cold", type=int, default=0, help="queries timed with cold pages too (0: warm only)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search-raw.json")
    args = parser.parse_args()

    import faiss

    from crossgap_index import CrossGapIndex
    from crossgap_index.search import ranking

    if args.faiss_threads:
        faiss.omp_set_num_threads(args.faiss_threads)
    machine = machine_info()
    work = args.work / str(args.vectors)
    work.mkdir(parents=True, exist_ok=True)
    embeddings, index_path = work / "emb.npy", work / "index"
    if not embeddings.exists():
        generate(embeddings, args.vectors)
    build_seconds = None
    if not (index_path / "manifest.json").exists():
        began = time.perf_counter()
        CrossGapIndex.import_embeddings(embeddings, index_path, MODEL)
        build_seconds = time.perf_counter() - began
    queries = make_queries(embeddings, args.queries)
    truth = brute_force_ids(embeddings, queries)

    cgx = CrossGapIndex.open(index_path, readonly=True)
    vector_index = cgx._store.indexes["image"]
    vector_index.index  # noqa: B018 - waits for the background load, which sets the default search parameters
    params = vector_index.search_params
    raw = faiss.read_index(str(index_path / "image.faiss"), faiss.IO_FLAG_MMAP_IFC)
    if params:
        faiss.ParameterSpace().set_index_parameters(raw, params)
    exact_rule = ranking.faiss_scores_exact

    def run_raw(q: np.ndarray) -> np.ndarray:
        return raw.search(q[None], K)[1][0]

    def run_cgx(q: np.ndarray) -> np.ndarray:
        return np.array([hit.id for hit in cgx.search(vector=q, mode="intra", k=K)], np.int64)

    def run_before(q: np.ndarray) -> np.ndarray:
        ranking.faiss_scores_exact = lambda store, collection: False
        try:
            return run_cgx(q)
        finally:
            ranking.faiss_scores_exact = exact_rule

    runs = {"raw": run_raw, "before": run_before, "after": run_cgx}
    found = {name: [run(q) for q in queries] for name, run in runs.items()}  # warm-up: pages and caches
    load_before = os.getloadavg()
    seconds = timed_rounds(runs, queries)
    load_after = os.getloadavg()
    cold = timed_rounds(runs, queries[: args.cold], page_dropper(index_path)) if args.cold else None
    load_cold = os.getloadavg()
    p50 = {name: percentile_ms(s, 50) for name, s in seconds.items()}
    result = {
        "machine": machine,
        "load_average_during": [load_before, load_after],
        "settings": {
            "vectors": args.vectors,
            "dim": DIM,
            "queries": args.queries,
            "k": K,
            "clusters": CLUSTERS,
            "noise_per_coordinate": NOISE,
            "factory": vector_index.resolved_factory,
            "search_params": params,
            "shard_dtype": cgx._store.catalog.vector_dtype(),
            "faiss_threads": faiss.omp_get_max_threads(),
        },
        "import_seconds": build_seconds,
        "p50_ms": p50,
        "p90_ms": {name: percentile_ms(s, 90) for name, s in seconds.items()},
        "ratio_to_raw_p50": {name: p50[name] / p50["raw"] for name in runs},
        "after_speedup_over_before_p50": p50["before"] / p50["after"],
        "recall_at_10": {name: recall(found[name], truth) for name in runs},
        "cold_queries": args.cold,
        "load_average_after_cold": load_cold,
        "cold_p50_ms": {name: percentile_ms(s, 50) for name, s in cold.items()} if cold else None,
        "cold_p90_ms": {name: percentile_ms(s, 90) for name, s in cold.items()} if cold else None,
        "same_ids_after_as_before": all(
            np.array_equal(a, b) for a, b in zip(found["after"], found["before"], strict=True)
        ),
    }
    cgx.close()
    write_json(args.out, result)
    write_markdown(args.out.with_suffix(".md"), result)
    print(args.out.with_suffix(".md").read_text())


def write_markdown(path: Path, r: dict) -> None:
    s, m = r["settings"], r["machine"]
    lines = [
        "# Search beside raw FAISS on the index's own file (batch 1, warm and cold pages)",
        "",
        f"`benchmarks/bench_search_raw.py`: {s['vectors']:,} random unit vectors x {s['dim']} (float32 shards; "
        f"{s['clusters']} random centres + N(0, {s['noise_per_coordinate']}) per coordinate), "
        f"`auto` = `{s['factory']}`, `{s['search_params']}`, k = {s['k']}, {s['queries']} queries (stored vectors "
        f"+ noise), mode intra. Machine: {m['cpu']}, {m['cores']} cores, FAISS {m['faiss']} "
        f"({s['faiss_threads']} threads); load average at start {m['load_average_at_start']}, during the timed "
        f"rounds {r['load_average_during']}, after the cold ones {r.get('load_average_after_cold')}. All three run "
        f"interleaved in one process; cold: {r.get('cold_queries') or 0} queries, each after every file of the index "
        "is dropped from the page cache.",
        "",
        "| path | p50 ms | p90 ms | p50 / raw | cold p50 ms | cold p90 ms | cold p50 / raw cold | recall@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "raw": "raw FAISS (`faiss.read_index`, mapped, same nprobe)",
        "before": "`CrossGapIndex.search`, every candidate re-scored (main's rule)",
        "after": "`CrossGapIndex.search`, FAISS's exact scores kept",
    }
    cold50, cold90 = r.get("cold_p50_ms"), r.get("cold_p90_ms")
    for name, label in labels.items():
        cold = (
            f"{cold50[name]:.2f} | {cold90[name]:.2f} | {cold50[name] / cold50['raw']:.2f}x" if cold50 else "- | - | -"
        )
        lines.append(
            f"| {label} | {r['p50_ms'][name]:.2f} | {r['p90_ms'][name]:.2f} | {r['ratio_to_raw_p50'][name]:.2f}x "
            f"| {cold} | {r['recall_at_10'][name]:.3f} |"
        )
    lines += [
        "",
        f"After / before: {1 / r['after_speedup_over_before_p50']:.2f}x the time (p50); same ids after as before: "
        f"{r['same_ids_after_as_before']}. Import (library, `auto`): "
        + (f"{r['import_seconds']:.0f} s." if r["import_seconds"] else "reused from an earlier run."),
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()

"""Benchmark build-index throughput and intra-search latency, beside raw FAISS on the same vectors.

Not a test: it measures and writes JSON + a table (machine, model and settings beside every number).

    python benchmarks/bench_build.py --out benchmarks/out/build.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from benchmarks.machine import machine_info, percentile_ms, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.store.directory import Store


def make_folder(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:05d}.jpg", quality=90)


def bench_build(model: str, n_images: int, image_size: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_folder(folder, n_images, image_size)
        with CrossGapIndex.create(Path(tmp) / "idx", model=model, device="cpu") as index:
            index._runtime.encoder.encode_images([Image.new("RGB", (image_size, image_size))])  # warm-up
            report = index.index_folders([folder], batch_size=batch_size)
            rerun = index.index_folders([folder], batch_size=batch_size)
    return {
        "model": model,
        "images": n_images,
        "image_size": f"{image_size}x{image_size} JPEG",
        "batch_size": batch_size,
        "seconds": report.seconds,
        "images_per_second": report.images_per_second,
        "unchanged_rerun_seconds": rerun.seconds,
    }


def fill_store(path: Path, vectors: np.ndarray) -> None:
    """Write random unit vectors as text items straight through the store (no model needed)."""
    store = Store.create(path, model="bench-random-vectors", dim=vectors.shape[1], factory="Flat")
    for i, v in enumerate(vectors):  # vectors live in the shards: the catalog's own writer places them
        store.catalog.add_text(f"doc {i}", f"h{i}", None, v)
    store.save()
    store.close()


def bench_search(n: int, dim: int, k: int, n_queries: int) -> dict:
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    faiss.normalize_L2(vectors)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    faiss.normalize_L2(queries)

    raw = faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    raw.add_with_ids(vectors, np.arange(1, n + 1, dtype=np.int64))
    raw_times = []
    for q in queries:
        start = time.perf_counter()
        raw.search(q[None, :], k)
        raw_times.append(time.perf_counter() - start)
    del raw

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fill_store(Path(tmp) / "idx", vectors)
        fill_seconds = time.perf_counter() - start
        ours_times = []
        with CrossGapIndex.open(Path(tmp) / "idx") as index:
            for q in queries:
                start = time.perf_counter()
                hits = index.search(vector=q, target="texts", k=k)
                ours_times.append(time.perf_counter() - start)
            assert len(hits) == k
    p50_raw, p50_ours = percentile_ms(raw_times, 50), percentile_ms(ours_times, 50)
    return {
        "vectors": n,
        "dim": dim,
        "k": k,
        "queries": n_queries,
        "factory": "Flat",
        "store_fill_seconds": fill_seconds,
        "raw_faiss_p50_ms": p50_raw,
        "raw_faiss_p95_ms": percentile_ms(raw_times, 95),
        "crossgap_p50_ms": p50_ours,
        "crossgap_p95_ms": percentile_ms(ours_times, 95),
        "overhead_ratio_p50": p50_ours / p50_raw,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/build.json")
    parser.add_argument("--models", default="ViT-B-32/random,tiny-random")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    results = {"machine": machine_info(), "build": [], "search": []}
    for model in args.models.split(","):
        results["build"].append(bench_build(model, args.images, args.image_size, args.batch_size))
    for n in (int(s) for s in args.sizes.split(",")):
        results["search"].append(bench_search(n, args.dim, args.k, args.queries))
    write_json(args.out, results)

    console = Console(width=200)
    m = results["machine"]
    console.print(
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"faiss {m['faiss']}, load average at start {m['load_average_at_start'][0]:.2f}"
    )
    table = Table(title="build-index (decode + encode + index), CPU")
    for col in ("model", "images", "image size", "batch", "seconds", "images/s", "unchanged re-run s"):
        table.add_column(col, justify="right")
    for r in results["build"]:
        table.add_row(
            r["model"],
            str(r["images"]),
            r["image_size"],
            str(r["batch_size"]),
            f"{r['seconds']:.2f}",
            f"{r['images_per_second']:.1f}",
            f"{r['unchanged_rerun_seconds']:.3f}",
        )
    console.print(table)
    table = Table(title=f"intra search latency, k={args.k}, dim={args.dim}, exact (Flat), one query at a time")
    for col in ("vectors", "raw FAISS p50 ms", "p95 ms", "crossgap p50 ms", "p95 ms", "overhead p50"):
        table.add_column(col, justify="right")
    for r in results["search"]:
        table.add_row(
            f"{r['vectors']:,}",
            f"{r['raw_faiss_p50_ms']:.3f}",
            f"{r['raw_faiss_p95_ms']:.3f}",
            f"{r['crossgap_p50_ms']:.3f}",
            f"{r['crossgap_p95_ms']:.3f}",
            f"{r['overhead_ratio_p50']:.2f}x",
        )
    console.print(table)
    console.print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()

"""Scale-out benchmarks: local vs Ray Data build engine, per-worker embedding rate, rebuild memory.

Not a test: it measures and writes JSON + a markdown table (machine, model and settings beside
every number). Ray runs as a local instance on this machine's cores, so its ratio to the local
engine is the overhead of the Ray pipeline here, not a cluster speed-up.

    python -m benchmarks.bench_scaleout --out benchmarks/out/scaleout.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.machine import machine_info, write_json


def make_jpegs(folder: Path, n: int, size: int) -> None:
    """Distinct small photos-like JPEGs: smooth gradients plus noise (decode cost of a real JPEG)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for i in range(n):
        base = (ramp[None, :, None] * rng.random(3) + ramp[:, None, None] * rng.random(3)) / 2
        arr = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:05d}.jpg", quality=90)


def bench_engines(model: str, n: int, size: int, batch_size: int, ray_cpus: int) -> dict:
    """One local build and one Ray build of the same folder, each into a fresh index."""
    import ray

    from crossgap_index import CrossGapIndex
    from crossgap_index.engines.ray_data import RayEngine

    result: dict = {"model": model, "images": n, "image_size": f"{size}x{size} JPEG", "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_jpegs(folder, n, size)
        with CrossGapIndex.create(Path(tmp) / "local", model=model, device="cpu") as index:
            index.load_model()  # model load is not build time
            report = index.index_folders([folder], batch_size=batch_size)
        result["local"] = {"seconds": report.seconds, "images_per_second": report.images_per_second}
        start = time.perf_counter()
        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
        result["ray_init_seconds"] = time.perf_counter() - start
        try:
            engine = RayEngine()  # default: one 1-CPU actor per CPU (decode fused into the actors on CPU)
            with CrossGapIndex.create(Path(tmp) / "ray", model=model, device="cpu") as index:
                report = index.index_folders([folder], batch_size=batch_size, engine=engine)
        finally:
            ray.shutdown()
        result["ray"] = {
            "seconds": report.seconds,
            "images_per_second": report.images_per_second,
            "settings": f"local Ray, num_cpus={ray_cpus}: {ray_cpus} actors x 1 CPU, decode fused into the actors",
        }
    result["ray_over_local_time_ratio"] = result["ray"]["seconds"] / result["local"]["seconds"]
    return result


def bench_worker(model: str, batch_size: int, threads: int, batches: int) -> dict:
    """Embedding rate of one worker: preprocessed pixels in, unit vectors out (no decode)."""
    from crossgap_index.models import Encoder, load_model

    torch.set_num_threads(threads)
    encoder = Encoder(load_model(model, "cpu"), batch_size)
    shape = encoder.loaded.preprocess(Image.new("RGB", (8, 8))).shape
    pixels = torch.randn(batch_size, *shape)
    encoder.encode_pixels(pixels)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        encoder.encode_pixels(pixels)
    seconds = time.perf_counter() - start
    return {
        "model": model,
        "torch_threads": threads,
        "batch_size": batch_size,
        "images": batch_size * batches,
        "seconds": seconds,
        "images_per_second": batch_size * batches / seconds,
    }


def bench_driver_rates(n: int, size: int, dim: int) -> dict:
    """Rates of the steps that stay on the driver, and of decode + preprocess on one core."""
    from crossgap_index.ingest.discover import find_images
    from crossgap_index.ingest.pipeline import prepare
    from crossgap_index.models import load_model
    from crossgap_index.store.catalog import Catalog

    torch.set_num_threads(1)
    preprocess = load_model("ViT-B-32/random", "cpu").preprocess
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_jpegs(folder, n, size)
        start = time.perf_counter()
        paths = find_images([folder])
        stats = [p.stat() for p in paths]
        discover = time.perf_counter() - start
        start = time.perf_counter()
        for path in paths:
            preprocess(prepare(path, lambda _: False, 100.0).image)
        decode = time.perf_counter() - start
        catalog = Catalog(Path(tmp) / "catalog.sqlite")
        vectors = np.random.default_rng(0).normal(size=(20_000, dim)).astype(np.float32)
        start = time.perf_counter()
        for i, vector in enumerate(vectors):
            catalog.add_image(f"/p/{i}.jpg", f"{i:032x}", 1, 1, vector)
        catalog.commit()
        write = time.perf_counter() - start
        catalog.close()
    return {
        "files": len(stats),
        "discover_and_stat_files_per_second": len(stats) / discover,
        "decode_preprocess_images_per_second_one_core": n / decode,
        "decode_settings": f"{size}x{size} JPEG -> ViT-B-32 preprocess (224 px), 1 thread",
        "catalog_rows_per_second": len(vectors) / write,
        "catalog_settings": f"SQLite add_image, {dim}-d float32 blob, one commit",
    }


REBUILD_CHILD = """
import sys, time
from pathlib import Path
from crossgap_index.store.directory import Store
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":"))
store = Store.open(Path(sys.argv[1]))  # the index file is current: nothing is rebuilt here
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
start = time.perf_counter()
if sys.argv[2] == "in-memory":
    store.indexes["image"].build(*store.ids_and_vectors("image"))
else:
    store.rebuild("image")
seconds = time.perf_counter() - start
peak = status("VmHWM")
print(base, peak, seconds, store.indexes["image"].ntotal)
"""


def bench_rebuild_memory(n: int, dim: int) -> dict:
    """Peak RSS growth of rebuilding a Flat index from the catalog: in one piece vs a chunk at a time."""
    from crossgap_index.store.directory import Store

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "idx"
        store = Store.create(path, "bench-random-vectors", dim, "Flat")
        rng = np.random.default_rng(0)
        for start in range(0, n, 50_000):
            block = rng.normal(size=(min(50_000, n - start), dim)).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            store.catalog.conn.executemany(
                "INSERT INTO items (modality, text, content_hash, vector) VALUES ('text', ?, ?, ?)",
                ((f"doc {start + i}", f"h{start + i}", v.tobytes()) for i, v in enumerate(block)),
            )
        store.catalog.conn.execute("UPDATE items SET modality = 'image'")  # a gallery of n items
        store.save()
        store.close()
        out = {"vectors": n, "dim": dim, "vector_bytes": n * dim * 4}
        for way in ("in-memory", "chunked"):
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            line = subprocess.run(
                [sys.executable, "-c", REBUILD_CHILD, str(path), way],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout.split()
            base, peak, seconds, ntotal = int(line[0]), int(line[1]), float(line[2]), int(line[3])
            assert ntotal == n
            out[way] = {"peak_rss_growth_bytes": (peak - base) * 1024, "seconds": seconds}
    return out


def table(results: dict) -> str:
    rows = [
        "| what | model | images | local img/s | Ray img/s | Ray / local time | Ray init s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["engines"]:
        rows.append(
            f"| build ({r['image_size']}, batch {r['batch_size']}) | {r['model']} | {r['images']} | "
            f"{r['local']['images_per_second']:.1f} | {r['ray']['images_per_second']:.1f} | "
            f"{r['ray_over_local_time_ratio']:.2f} | {r['ray_init_seconds']:.1f} |"
        )
    rows += ["", "| per-worker embedding | torch threads | batch | images | img/s |", "|---|---:|---:|---:|---:|"]
    for r in results["workers"]:
        rows.append(
            f"| {r['model']} | {r['torch_threads']} | {r['batch_size']} | {r['images']} | "
            f"{r['images_per_second']:.1f} |"
        )
    d = results.get("driver_rates")
    if d:
        rows += ["", "| step | rate | settings |", "|---|---:|---|"]
        rows.append(
            f"| discover + stat (driver) | {d['discover_and_stat_files_per_second']:.0f} files/s | {d['files']} files |"
        )
        rows.append(
            f"| decode + preprocess (one core) | {d['decode_preprocess_images_per_second_one_core']:.1f} img/s | "
            f"{d['decode_settings']} |"
        )
        rows.append(f"| catalog write (driver) | {d['catalog_rows_per_second']:.0f} rows/s | {d['catalog_settings']} |")
    m = results.get("rebuild_memory")
    if m:
        rows += [
            "",
            "| rebuild (Flat) | vectors x dim | vector bytes | peak RSS growth | seconds |",
            "|---|---|---:|---:|---:|",
        ]
        for way in ("in-memory", "chunked"):
            rows.append(
                f"| {way} | {m['vectors']} x {m['dim']} | {m['vector_bytes'] / 2**20:.0f} MiB | "
                f"{m[way]['peak_rss_growth_bytes'] / 2**20:.0f} MiB | {m[way]['seconds']:.1f} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/scaleout.json")
    parser.add_argument("--tiny-images", type=int, default=1000)
    parser.add_argument("--vit-images", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--worker-batches", type=int, default=3)
    parser.add_argument("--rebuild-vectors", type=int, default=200_000)
    parser.add_argument("--rebuild-dim", type=int, default=512)
    parser.add_argument("--parts", default="engines,workers,driver,rebuild")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    results: dict = {"machine": machine_info(), "engines": [], "workers": []}
    if "engines" in parts:
        results["engines"].append(bench_engines("tiny-random", args.tiny_images, args.image_size, 64, args.ray_cpus))
        results["engines"].append(bench_engines("ViT-B-32/random", args.vit_images, args.image_size, 32, args.ray_cpus))
    if "workers" in parts:
        for threads in (1, 2):
            results["workers"].append(bench_worker("ViT-B-32/random", 32, threads, args.worker_batches))
    if "driver" in parts:
        results["driver_rates"] = bench_driver_rates(256, args.image_size, args.rebuild_dim)
    if "rebuild" in parts:
        results["rebuild_memory"] = bench_rebuild_memory(args.rebuild_vectors, args.rebuild_dim)
    results["load_average_at_end"] = os.getloadavg()
    results["max_rss_bytes_of_driver"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_json(args.out, results)
    print(table(results))
    print(
        json.dumps(
            {
                "load_average_at_start": results["machine"]["load_average_at_start"],
                "at_end": results["load_average_at_end"],
            }
        )
    )


if __name__ == "__main__":
    main()

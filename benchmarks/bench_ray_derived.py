"""Gallery-side work through the build engines: gallery OTI and the derived-collection step, local vs Ray.

Not a test: it measures and writes JSON (machine, model, settings and load average beside every number). Ray runs
as a local instance on this machine's cores with ``--actors`` CPU actors, so on a 2-core VM its time against the
local engine is the Ray overhead (startup, model load per actor, transfers) on shared cores, not a cluster speed-up.

The gallery is imported synthetic unit vectors (``cgx import``'s path), not embedded photos: OTI's cost per row and
a map's cost per vector do not depend on the values, and the import keeps the set-up out of the timings.

    python -m benchmarks.bench_ray_derived --out benchmarks/out/ray-derived.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info, write_json


def make_index(folder: Path, model: str, n: int, dim: int, seed: int) -> Path:
    """An index of ``n`` random unit vectors of the model's dimension, imported."""
    from crossgap_index import CrossGapIndex

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    source = folder / f"vectors-{n}.npy"
    np.save(source, vectors)
    index = folder / f"index-{n}"
    CrossGapIndex.import_embeddings(source, index, model)
    return index


def timed(run) -> dict:
    """Wall seconds of ``run()`` and the 1-minute load average just before and just after."""
    before = os.getloadavg()[0]
    start = time.perf_counter()
    value = run()
    return {
        "seconds": round(time.perf_counter() - start, 3),
        "load_before": before,
        "load_after": os.getloadavg()[0],
    }, value


def bench_oti(root: Path, model: str, n: int, dim: int, steps: int, batch: int, engine) -> dict:
    from crossgap_index import CrossGapIndex
    from crossgap_index.inversion import InversionConfig

    base = make_index(root, model, n, dim, seed=1)
    config = InversionConfig(oti_steps=steps, batch_size=batch)
    out: dict = {"images": n, "oti_steps": steps, "batch_size": batch}
    for name, chosen in (("local", "local"), ("ray", engine)):
        index = shutil.copytree(base, root / f"oti-{name}")
        with CrossGapIndex.open(index, device="cpu") as cgx:
            if name == "local":
                cgx.load_model()  # the driver's model load is not inversion time (each Ray actor's load is counted)
            out[name], count = timed(lambda cgx=cgx, chosen=chosen: cgx.invert_gallery(config, engine=chosen))
            assert count == n
    with (
        CrossGapIndex.open(root / "oti-local", device="cpu") as a,
        CrossGapIndex.open(root / "oti-ray", device="cpu") as b,
    ):
        diff = np.abs(a._store.ids_and_vectors("image-oti")[1] - b._store.ids_and_vectors("image-oti")[1]).max()
    out["max_abs_difference"] = float(diff)
    return out


def bench_derived(root: Path, model: str, n: int, dim: int, engine) -> dict:
    from crossgap_index import CrossGapIndex

    base = make_index(root, model, n, dim, seed=2)
    with CrossGapIndex.open(base, device="cpu") as cgx:  # fit the default map once (its matrix is kept in derived/)
        fit, names = timed(cgx.build_derived)
    for built in (base / "derived").glob("image@*"):
        built.unlink()  # keep the fitted map, drop the collection: both runs below build it from the same start
    out: dict = {"vectors": n, "collections": names, "map_fit_and_first_build": fit}
    for name, chosen in (("local", "local"), ("ray", engine)):
        index = shutil.copytree(base, root / f"derived-{name}")
        with CrossGapIndex.open(index, device="cpu") as cgx:
            out[name], built = timed(lambda cgx=cgx, chosen=chosen: cgx.build_derived(engine=chosen))
            assert built == names
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="crossgap-small")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vectors", type=int, default=2000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/ray-derived.json")
    args = parser.parse_args()

    import ray

    from crossgap_index.engines.ray_data import RayEngine
    from crossgap_index.ingest.embeddings import model_dim

    result: dict = {"machine": machine_info(), "model": args.model, "ray_actors": args.actors}
    dim = model_dim(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ray.init(
            num_cpus=args.actors, object_store_memory=200 * 1024 * 1024, include_dashboard=False, log_to_driver=False
        )
        result["ray_init_seconds"] = round(time.perf_counter() - start, 3)
        try:
            engine = RayEngine(actors=args.actors)
            result["gallery_oti"] = bench_oti(Path(tmp), args.model, args.images, dim, args.steps, args.batch, engine)
            result["derived"] = bench_derived(Path(tmp), args.model, args.vectors, dim, engine)
        finally:
            ray.shutdown()
    result["load_average_at_end"] = os.getloadavg()
    print(write_json(args.out, result))


if __name__ == "__main__":
    main()

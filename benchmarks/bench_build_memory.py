"""Peak RSS of `cgx build-index` on large photos vs small ones: does memory follow the model or the photos?

Not a test: it measures and writes JSON + a markdown table. Each build is a fresh `cgx` process run
under /usr/bin/time (maximum resident set size), on N distinct JPEGs of each size (distinct bytes, so
no vector is reused), side by side for this tree and for an earlier checkout (``--before``).

    python benchmarks/bench_build_memory.py --n 100 --before /tmp/cgx-before --out benchmarks/out/build_memory.json

The old code holds every photo of up to three batches decoded at full size: at 100 photos of 24 MP
that passed 9.5 GB before it was stopped, so compare before/after at a smaller ``--n`` on a shared
machine (``--skip-before-above N`` leaves the old code out above N photos).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> int:
    """``n`` distinct photo-like JPEGs (smooth gradients, a few blocks, mild noise); returns total bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    base = np.empty((h, w, 3), np.uint8)
    base[..., 0] = (x * 200 + y * 40).astype(np.uint8)
    base[..., 1] = (y * 220).astype(np.uint8)
    base[..., 2] = ((1 - x) * 180 + 30).astype(np.uint8)
    noise = rng.integers(0, 12, (h, w, 1), dtype=np.uint8)
    base += noise
    total = 0
    for i in range(n):
        arr = base.copy()
        for _ in range(4):  # blocks at random places: every file differs
            bw, bh = int(rng.integers(w // 10, w // 3)), int(rng.integers(h // 10, h // 3))
            bx, by = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            arr[by : by + bh, bx : bx + bw] = rng.integers(0, 256, 3, dtype=np.uint8)
        path = folder / f"photo{i:04d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        total += path.stat().st_size
    return total


def peak_build(folder: Path, index: Path, code_root: Path, model: str, batch_size: int) -> dict:
    """Build an index of ``folder`` in a fresh process; its peak RSS (MB) and wall time."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB %M", sys.executable, "-m", "crossgap_index", "build-index", str(folder)]
    cmd += ["--index", str(index), "--model", model, "--device", "cpu", "--batch-size", str(batch_size), "-q"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=code_root)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"build failed: {proc.stderr[-800:]}")
    kb = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB"))
    return {"peak_rss_mb": kb / 1024, "seconds": seconds}


def machine() -> dict:
    return {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg(), "python": sys.version.split()[0]}


# The floor under any build: imports, the model, and one encoded batch of model-sized images.
FLOOR = """
import sys
from PIL import Image
import faiss
from crossgap_index.models import Encoder, load_model
encoder = Encoder(load_model(sys.argv[1], "cpu"))
encoder.encode_images([Image.new("RGB", (224, 224), (i, 0, 0)) for i in range(int(sys.argv[2]))])
"""


def floor_rss(code_root: Path, model: str, batch_size: int) -> float:
    """Peak RSS (MB) of a process that only loads the model and embeds one batch."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB %M", sys.executable, "-c", FLOOR, model, str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=code_root, check=True)
    return next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="Photos per size.")
    parser.add_argument("--big", default="6000x4000", help="Large photo size (24 MP).")
    parser.add_argument("--small", default="1224x816", help="Small photo size (1 MP).")
    parser.add_argument("--model", default="ViT-B-32/random")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--before", type=Path, help="A checkout of the code to compare with.")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "build_memory.json")
    parser.add_argument("--workdir", type=Path, default=None, help="Where to write the photos (default: a temp dir).")
    parser.add_argument("--skip-before-above", type=int, default=40, help="Run --before only up to this many photos.")
    args = parser.parse_args()

    sizes = {
        label: tuple(int(v) for v in text.split("x")) for label, text in (("big", args.big), ("small", args.small))
    }  # noqa: E501
    run_before = args.before is not None and args.n <= args.skip_before_above
    trees = {"after": REPO} | ({"before": args.before} if run_before else {})
    results: dict = {
        "machine": machine(),
        "settings": {"n": args.n, "sizes": {k: f"{w}x{h}" for k, (w, h) in sizes.items()}, "model": args.model,
                     "batch_size": args.batch_size, "device": "cpu", "workers": 4},
        "folders": {},
        "floor_rss_mb": floor_rss(REPO, args.model, args.batch_size),
        "builds": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for label, size in sizes.items():
            start = time.perf_counter()
            total = make_photos(Path(tmp) / label, args.n, size)
            results["folders"][label] = {"bytes": total, "generate_s": time.perf_counter() - start}
        for tree, root in trees.items():
            results["builds"][tree] = {}
            for label in sizes:
                index = Path(tmp) / f"idx-{tree}-{label}"
                results["builds"][tree][label] = peak_build(Path(tmp) / label, index, root, args.model, args.batch_size)
                results["machine"]["load_average_at_end"] = os.getloadavg()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2) + "\n")  # after every build: nothing lost
    print(markdown(results))


def markdown(results: dict) -> str:
    s, m = results["settings"], results["machine"]
    lines = [
        f"Machine: {m['cores']} cores, load average {m['load_average_at_start'][0]:.1f} at start, "
        f"{m['load_average_at_end'][0]:.1f} at end. `cgx build-index` in a fresh process, model {s['model']}, "
        f"device cpu, batch size {s['batch_size']}, 4 decode workers; {s['n']} distinct JPEGs per size "
        f"(big {s['sizes']['big']}: {results['folders']['big']['bytes'] / 1e6:.0f} MB on disk, "
        f"small {s['sizes']['small']}: {results['folders']['small']['bytes'] / 1e6:.0f} MB).",
        "",
        f"Floor (imports + model + one embedded batch of {s['batch_size']}, no files): "
        f"{results['floor_rss_mb']:.0f} MB.",
        "",
        "| code | peak RSS big | peak RSS small | big / small | build time big | build time small |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tree, builds in results["builds"].items():
        big, small = builds["big"], builds["small"]
        lines.append(
            f"| {tree} | {big['peak_rss_mb']:.0f} MB | {small['peak_rss_mb']:.0f} MB "
            f"| {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}x | {big['seconds']:.1f} s | {small['seconds']:.1f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

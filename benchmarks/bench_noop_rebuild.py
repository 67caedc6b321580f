"""A no-op rebuild against `cgx info` on the same index: what re-running `cgx build-index` costs when nothing
changed, in a folder of 25 photos and 5 broken files (issue 22's target: <= 1.5x `cgx info`).

Each command is a fresh `python -m crossgap_index` process (what a user or a cron job runs), alternated, so both
see the same machine load; medians of ``--repeats`` runs, side by side in one run. ``--retry-failed`` is the
rebuild that reads the broken files again (what every rebuild did before failures were remembered).

    python benchmarks/bench_noop_rebuild.py --out benchmarks/results/noop-rebuild.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.machine import machine_info, write_json

MODEL = "crossgap-small"


def make_folder(folder: Path, photos: int) -> None:
    """``photos`` small PNGs and five broken files: corrupt, truncated, empty, text, noise."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(photos):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(folder / f"p{i:03d}.png")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.webp").write_text("a text file, not an image\n")
    (folder / "noise.png").write_bytes(b"\x89PNG" + rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "crossgap_index", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cgx {' '.join(args)} failed: {done.stderr.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/noop-rebuild.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, index = Path(tmp) / "photos", Path(tmp) / "idx"
        make_folder(folder, args.photos)
        build = ["build-index", str(folder), "--index", str(index), "--device", "cpu"]
        timed([*build, "--model", MODEL])  # the first build (not measured)
        runs: dict[str, list[float]] = {"info": [], "noop_rebuild": [], "rebuild_retry_failed": []}
        commands = {
            "info": ["info", "--index", str(index)],
            "noop_rebuild": build,
            "rebuild_retry_failed": [*build, "--retry-failed"],
        }
        load_before = os.getloadavg()
        for _ in range(args.repeats):
            for name, command in commands.items():
                runs[name].append(timed(command))
        load_after = os.getloadavg()
    medians = {name: statistics.median(values) for name, values in runs.items()}
    result = {
        "machine": machine_info(),
        "load_average_before_after": [load_before, load_after],
        "settings": {
            "model": MODEL,
            "device": "cpu",
            "photos": args.photos,
            "broken_files": 5,
            "repeats": args.repeats,
            "process": "python -m crossgap_index, fresh per run, alternated",
        },
        "seconds": runs,
        "median_seconds": medians,
        "ratio_noop_rebuild_to_info": medians["noop_rebuild"] / medians["info"],
        "ratio_retry_failed_to_info": medians["rebuild_retry_failed"] / medians["info"],
    }
    write_json(args.out, result)
    table = [
        f"# No-op rebuild vs `cgx info` ({args.photos} photos + 5 broken files, {MODEL}, cpu)",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; load average before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f}. Medians of {args.repeats} fresh processes each, "
        "alternated in one run.",
        "",
        "| command | median s | ratio to `cgx info` |",
        "|---|---:|---:|",
    ]
    for name, label in (
        ("info", "`cgx info`"),
        ("noop_rebuild", "`cgx build-index` (nothing changed)"),
        ("rebuild_retry_failed", "`cgx build-index --retry-failed` (reads the 5 broken files, loads the model)"),
    ):
        table.append(f"| {label} | {medians[name]:.2f} | {medians[name] / medians['info']:.2f}x |")
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()

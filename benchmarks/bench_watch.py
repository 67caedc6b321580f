"""Watch latency: from a file written into a watched folder to the moment it is committed in the index, for
one file at a time and for a burst of ``--burst`` files copied in at once.

A ``FolderWatcher`` (folder_watch.py, the writer `cgx watch` and `cgx serve --watch` run) on a thread of this
process, with the default settings (debounce 2000 ms, quiet step 300 ms); a poller reads the committed catalog
every 10 ms, as another process would. "searchable" is when the catalog row is committed (the FAISS change is
applied in the same step); "batch done" is when the watcher has also brought the derived collections up to
date and told its listener (what `cgx serve --watch` waits for before it swaps its searches). Last, a real
`cgx serve --watch` process: from a file copied into its watched folder to the first /search by that file's own
image that returns it as the top hit (polled every 100 ms).

    python benchmarks/bench_watch.py --out benchmarks/results/watch.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.machine import machine_info, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.folder_watch import FolderWatcher, WatchSettings
from crossgap_index.store.catalog import Catalog

MODEL = "crossgap-small"


def make_photos(folder: Path, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        path = folder / f"s{seed}-{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def committed(index: Path) -> int:
    catalog = Catalog(index / "catalog.sqlite", readonly=True)
    try:
        return catalog.count("image")
    finally:
        catalog.close()


def wait_count(index: Path, count: int, timeout: float = 1800.0) -> float:
    deadline = time.monotonic() + timeout
    while committed(index) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {count} items")
        time.sleep(0.01)
    return time.perf_counter()


def serve_watch_latency(tmp: Path, trials: int) -> list[float]:
    """Seconds from a copy into a `cgx serve --watch` folder to /search returning it top, per trial (a served
    index of 20 other photos)."""
    import httpx

    index, incoming = tmp / "served-idx", tmp / "incoming"
    incoming.mkdir()
    photos = make_photos(tmp / "arrivals", trials, seed=4)
    with CrossGapIndex.create(index, model=MODEL, device="cpu") as cgx:
        cgx.index_folders([make_photos(tmp / "served-base", 20, seed=3)[0].parent])
    command = [sys.executable, "-m", "crossgap_index", "serve", "--index", str(index), "--port", "0"]
    server = subprocess.Popen(
        [*command, "--device", "cpu", "--watch", str(incoming)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    latencies = []
    try:
        port = None
        while port is None and (line := server.stderr.readline()):
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        while "caught up" not in (line := server.stderr.readline()):
            if not line:
                raise SystemExit("cgx serve --watch stopped")
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()  # keep the pipe drained
        for photo in photos:
            data = photo.read_bytes()
            start = time.perf_counter()
            shutil.copy(photo, incoming / photo.name)
            wanted = str((incoming / photo.name).resolve())
            while True:
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/search", files={"image": (photo.name, data)}, data={"k": "1"}, timeout=60
                ).json()
                if reply["hits"] and reply["hits"][0]["path"] == wanted:
                    break
                time.sleep(0.1)
            latencies.append(time.perf_counter() - start)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--singles", type=int, default=5, help="one-file trials")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/watch.json"))
    args = parser.parse_args()
    settings = WatchSettings()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        singles = make_photos(tmp / "singles", args.singles, seed=1)
        burst = make_photos(tmp / "burst", args.burst, seed=2)
        folder, index = tmp / "watched", tmp / "idx"
        folder.mkdir()
        batch_times: list[tuple[float, object]] = []
        with CrossGapIndex.create(index, model=MODEL, device="cpu") as cgx:
            stop = threading.Event()
            watcher = FolderWatcher(
                cgx, [folder.resolve()], settings, on_batch=lambda b: batch_times.append((time.perf_counter(), b))
            )
            thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
            thread.start()
            watcher.listening.wait(600)
            single_committed, single_done = [], []
            for n, photo in enumerate(singles, start=1):
                seen = len(batch_times)
                start = time.perf_counter()
                shutil.copy(photo, folder / photo.name)
                single_committed.append(wait_count(index, n) - start)
                while len(batch_times) == seen:
                    time.sleep(0.01)
                single_done.append(batch_times[-1][0] - start)
            seen = len(batch_times)
            start = time.perf_counter()
            for photo in burst:
                shutil.copy(photo, folder / photo.name)
            copied = time.perf_counter() - start
            first_committed = wait_count(index, args.singles + 1) - start
            all_committed = wait_count(index, args.singles + args.burst) - start
            while sum(b.report.added for _, b in batch_times[seen:]) < args.burst:
                time.sleep(0.01)
            burst_done = batch_times[-1][0] - start
            burst_batches = [b for _, b in batch_times[seen:]]
            stop.set()
            thread.join(120)
            check_ok = cgx.check().ok
        served = serve_watch_latency(tmp, args.singles)
    load_after = os.getloadavg()
    result = {
        "machine": machine_info(),
        "load_average_before_after": [load_before, load_after],
        "settings": {
            "model": MODEL,
            "device": "cpu",
            "debounce_ms": settings.debounce_ms,
            "step_ms": settings.step_ms,
            "batch_size": settings.batch_size,
            "images": "320x240 JPEG",
        },
        "single_file": {
            "trials": args.singles,
            "committed_s": single_committed,
            "batch_done_s": single_done,
            "median_committed_s": statistics.median(single_committed),
            "median_batch_done_s": statistics.median(single_done),
        },
        "burst": {
            "files": args.burst,
            "copy_s": copied,
            "first_committed_s": first_committed,
            "all_committed_s": all_committed,
            "all_batches_done_s": burst_done,
            "batches": len(burst_batches),
            "files_per_batch": [b.report.added for b in burst_batches],
            "files_per_second": args.burst / all_committed,
        },
        "check_ok": check_ok,
        "serve_watch": {
            "trials": len(served),
            "served_top_s": served,
            "median_served_top_s": statistics.median(served),
        },
    }
    write_json(args.out, result)
    s, b = result["single_file"], result["burst"]
    table = [
        f"# Watch latency: file written -> searchable ({MODEL}, cpu, debounce {settings.debounce_ms} ms, "
        f"step {settings.step_ms} ms)",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; load average before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f}. `cgx check` after: {'ok' if check_ok else 'FAILED'}.",
        "",
        "| case | committed (searchable) | batch done (derived current) | batches |",
        "|---|---:|---:|---:|",
        f"| 1 file (median of {args.singles}) | {s['median_committed_s']:.2f} s "
        f"| {s['median_batch_done_s']:.2f} s | 1 |",
        f"| {args.burst}-file burst, first file | {b['first_committed_s']:.2f} s | | |",
        f"| {args.burst}-file burst, all files | {b['all_committed_s']:.2f} s ({b['files_per_second']:.1f} files/s) "
        f"| {b['all_batches_done_s']:.2f} s | {b['batches']} |",
        f"| `cgx serve --watch`: 1 file copied -> top hit of its own image over HTTP (median of {len(served)}) "
        f"| {statistics.median(served):.2f} s | | 1 |",
        "",
        f"The burst was copied in {b['copy_s']:.2f} s; files per batch: {b['files_per_batch']}.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()

"""A living index: readers and a `cgx serve` process while another process writes, and how fast the server follows.

1. ``--seconds`` (default 60) of another process (tests/support/living_writer.py) looping remove 3 images / add their
   files back / compact every third cycle, against 8 reader threads on one library handle in this process (one of them
   calls ``refresh()`` every fourth search) and 2 HTTP client threads on a real `cgx serve` process, every query
   one of 8 modes (intra, aqe, qbnorm, span, dba, nnn, cross, fused; HNSW32, crossgap-small, k=8). Counted:
   searches, exceptions, HTTP 5xx, removed items returned (an id whose removal was committed before the search
   began), results shorter than k.
2. The catch-up time of a running `cgx serve` after another process writes 10,000 items (`cgx import` of vectors
   with ids): from the import's exit to the first query that returns one of the new items (intra, a new item's own
   vector, k=1), and to the same in mode auto (the served --cross: its derived collection rebuilt for the new
   state); ``--rounds`` writes in a row, each measured.

    python benchmarks/bench_living.py --out benchmarks/results/living.json --table benchmarks/results/living.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.machine import machine_info, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.inversion import InversionConfig

REPO = Path(__file__).resolve().parents[1]
MODEL = "crossgap-small"
K = 8
MODES = ("intra", "aqe", "qbnorm", "span", "dba", "nnn", "cross", "fused")
FEW = InversionConfig(oti_steps=4, ovi_steps=4)
POLL_S = 0.02  # the catch-up probe's interval


def main() -> None:
    args = _parse()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cgx-living-") as tmp:
        root = Path(tmp)
        photos = export_folder(root / "photos", seed=11, n=48)
        living = _living(root, photos, args)
        catch_up = _catch_up(root, photos, args)
    payload = {
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "model": MODEL,
        "settings": {"seconds": args.seconds, "rounds": args.rounds, "items": args.items, "k": K, "modes": MODES},
        "living": living,
        "catch_up": catch_up,
    }
    write_json(args.out, payload)
    Path(args.table).write_text(_table(payload))
    print(Path(args.table).read_text())


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the writer loops")
    parser.add_argument("--items", type=int, default=10_000, help="items per write of the catch-up measurement")
    parser.add_argument("--rounds", type=int, default=3, help="writes of the catch-up measurement")
    parser.add_argument("--out", default="benchmarks/results/living.json")
    parser.add_argument("--table", default="benchmarks/results/living.md")
    return parser.parse_args()


class _Server:
    """A real `cgx serve` process on a free loopback port; SIGTERM on exit."""

    def __init__(self, index: Path):
        self.cmd = [sys.executable, "-m", "crossgap_index", "serve", "--index", str(index), "--port", "0"]
        self.cmd += ["--device", "cpu"]
        paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}

    def __enter__(self) -> str:
        pipe = subprocess.PIPE
        self.proc = subprocess.Popen(self.cmd, stdout=pipe, stderr=subprocess.STDOUT, text=True, env=self.env)
        for line in self.proc.stdout:
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained
                return found.group(1)
        raise RuntimeError("cgx serve did not start")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# -- 1. readers and a server against a writer -------------------------------------------------------------------
def _living(root: Path, photos: Path, args) -> dict:
    from tests.support.living_writer import removals, removed_before, wait_until_ready

    index = root / "living"
    with CrossGapIndex.create(index, model=MODEL, device="cpu", factory="HNSW32") as built:
        built.index_folders([photos])
        _, vectors = built._store.ids_and_vectors("image")
    queries = [{"vector": v.tolist(), "modality": "image"} for v in vectors[:: len(vectors) // 6][:6]]
    log = root / "writer.log"
    counts = {"library": 0, "http": 0, "exceptions": 0, "http_5xx": 0, "http_other": 0, "removed_returned": 0}
    counts["short"] = 0
    lock = threading.Lock()
    examples: list[str] = []

    def count(key: str, example: str | None = None) -> None:
        with lock:
            counts[key] += 1
            if example and len(examples) < 10:
                examples.append(example)

    def check(where: str, ids: list[int], start: float) -> None:
        count(where)
        if len(ids) < K:
            count("short", f"{where}: {len(ids)} hits")
        if set(ids) & removed_before(removals(log), start):
            count("removed_returned", f"{where}: returned a removed item")

    with _Server(index) as url, CrossGapIndex.open(index, device="cpu") as library:
        for mode in MODES:  # first inversions and fits, before the writer's clock starts
            library.search_batch(queries[:1], mode=mode, k=K, inversion=FEW)
            httpx.post(f"{url}/search", json={**queries[0], "mode": mode, "k": K, "steps": 4}, timeout=300)
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests.support.living_writer", str(index), str(log), "0", str(args.seconds)],
            cwd=REPO,
            env=_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        swaps = []

        wait_until_ready(log, writer)

        def library_reader(n: int) -> None:
            step = n
            while writer.poll() is None:
                step += 1
                mode, query = MODES[step % len(MODES)], queries[step % len(queries)]
                start = time.monotonic()
                try:
                    if n == 0 and step % 4 == 0 and library.refresh():
                        swaps.append(start)
                    hits = library.search_batch([query], mode=mode, k=K, inversion=FEW)[0]
                    check("library", [h.id for h in hits], start)
                except Exception as exc:  # noqa: BLE001 - counted, the benchmark goes on
                    count("exceptions", f"library {mode}: {type(exc).__name__}: {exc}")

        def http_reader(n: int) -> None:
            step = n
            with httpx.Client(base_url=url, timeout=300) as client:
                while writer.poll() is None:
                    step += 1
                    mode, query = MODES[step % len(MODES)], queries[step % len(queries)]
                    start = time.monotonic()
                    response = client.post("/search", json={**query, "mode": mode, "k": K, "steps": 4})
                    if response.status_code >= 500:
                        count("http_5xx", f"http {mode}: {response.status_code} {response.text[:200]}")
                    elif response.status_code != 200:
                        count("http_other", f"http {mode}: {response.status_code} {response.text[:200]}")
                    else:
                        check("http", [h["id"] for h in response.json()["hits"]], start)

        threads = [threading.Thread(target=library_reader, args=(n,)) for n in range(8)]
        threads += [threading.Thread(target=http_reader, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        _, err = writer.communicate(timeout=args.seconds + 600)
        for thread in threads:
            thread.join()
    if writer.returncode != 0:
        raise RuntimeError(f"the writer failed: {err}")
    last = log.read_text().splitlines()[-1]
    return {
        **counts,
        "writer_cycles": int(last.split()[1]),
        "items_removed": sum(len(ids) for _, ids in removals(log)),
        "library_swaps": len(swaps),
        "factory": "HNSW32",
        "examples": examples,
    }


# -- 2. catch-up after a 10,000-item write ---------------------------------------------------------------------------
def _catch_up(root: Path, photos: Path, args) -> dict:
    index = root / "catch-up"
    with CrossGapIndex.create(index, model=MODEL, device="cpu") as built:
        built.index_folders([photos])
        dim = built.info().dim
    rng = np.random.default_rng(5)
    rounds = []
    with _Server(index) as url, httpx.Client(base_url=url, timeout=300) as client:
        probe = {"vector": rng.normal(size=dim).tolist(), "modality": "image", "k": 1}
        for mode in ("intra", "auto"):
            client.post("/search", json={**probe, "mode": mode}).raise_for_status()
        for r in range(args.rounds):
            first_id = 1_000_000 * (r + 1)
            vectors = rng.normal(size=(args.items, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            npy, meta = root / f"write-{r}.npy", root / f"write-{r}.jsonl"
            np.save(npy, vectors)
            meta.write_text("".join(json.dumps({"id": first_id + i}) + "\n" for i in range(args.items)))
            target = int(rng.integers(args.items))
            probe = {"vector": vectors[target].tolist(), "modality": "image", "k": 1}
            began = time.monotonic()
            cmd = [sys.executable, "-m", "crossgap_index", "import", str(npy), "--meta", str(meta)]
            cmd += ["--index", str(index), "--model", MODEL, "--quiet"]
            subprocess.run(cmd, env=_env(), check=True, capture_output=True)
            written = time.monotonic()
            saved = (index / "manifest.json").stat().st_mtime  # the write's commit point (its manifest, last)
            found, since_save = {}, {}
            for mode in ("intra", "auto"):
                while True:
                    hits = client.post("/search", json={**probe, "mode": mode}).json()["hits"]
                    if hits and hits[0]["id"] == first_id + target:
                        found[mode] = time.monotonic() - written
                        since_save[mode] = time.time() - saved
                        break
                    if time.monotonic() - written > 300:
                        raise RuntimeError(f"the server did not serve the write in mode {mode} within 300 s")
                    time.sleep(POLL_S)
            count = client.get("/info").json()["counts"]["image"]
            rounds.append(
                {
                    "import_s": round(written - began, 3),
                    "catch_up_intra_s": round(found["intra"], 3),
                    "catch_up_auto_s": round(found["auto"], 3),
                    "since_save_intra_s": round(since_save["intra"], 3),
                    "since_save_auto_s": round(since_save["auto"], 3),
                    "images_served": count,
                }
            )
    return {
        "items_per_write": args.items,
        "follow_interval_s": 0.5,
        "rounds": rounds,
        "median_catch_up_intra_s": statistics.median(r["catch_up_intra_s"] for r in rounds),
        "median_catch_up_auto_s": statistics.median(r["catch_up_auto_s"] for r in rounds),
        "median_since_save_intra_s": statistics.median(r["since_save_intra_s"] for r in rounds),
        "median_since_save_auto_s": statistics.median(r["since_save_auto_s"] for r in rounds),
    }


def _table(payload: dict) -> str:
    m, living, catch = payload["machine"], payload["living"], payload["catch_up"]
    lines = [
        "# A living index: readers against another writer, and the server's catch-up",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average before {payload['load_average_before'][0]:.1f}, "
        f"after {payload['load_average_after'][0]:.1f}; model {payload['model']}; k={K}; "
        f"modes {', '.join(MODES)}.",
        "",
        f"## {payload['settings']['seconds']:g} s of remove / re-add / compact in another process "
        f"({living['factory']})",
        "",
        "| searches (library, 8 threads) | searches (HTTP, 2 clients) | exceptions | HTTP 5xx | other HTTP errors "
        "| removed items returned | results short of k | writer cycles | items removed | library swaps |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {living['library']} | {living['http']} | {living['exceptions']} | {living['http_5xx']} | "
        f"{living['http_other']} | {living['removed_returned']} | {living['short']} | {living['writer_cycles']} | "
        f"{living['items_removed']} | {living['library_swaps']} |",
        "",
        f"## Catch-up of a running `cgx serve` after `cgx import` of {catch['items_per_write']:,} items",
        "",
        "To the first query answering with a new item (k=1, its own vector), from the import process's exit and "
        "from its save (the manifest's mtime: the commit point, before the process exits); "
        f"the server polls every {catch['follow_interval_s']} s.",
        "",
        "| round | import (s) | from exit, intra (s) | from exit, auto (s) | from save, intra (s) "
        "| from save, auto (s) | images served |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(catch["rounds"], 1):
        lines.append(
            f"| {i} | {r['import_s']} | {r['catch_up_intra_s']} | {r['catch_up_auto_s']} | "
            f"{r['since_save_intra_s']} | {r['since_save_auto_s']} | {r['images_served']} |"
        )
    lines += [
        "",
        f"Median catch-up from the save: intra {catch['median_since_save_intra_s']} s, "
        f"auto {catch['median_since_save_auto_s']} s (from the import's exit: intra "
        f"{catch['median_catch_up_intra_s']} s, auto {catch['median_catch_up_auto_s']} s).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

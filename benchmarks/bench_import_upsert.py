"""What the import's upsert costs: rows per second of the rows half of `cgx import` (vectors into shards,
rows into the catalog; no FAISS build) for this checkout and a baseline checkout, side by side in one run.

Three imports of N synthetic rows (float32, d=512), each in its own process: an ``.npy`` without ids (the
bulk path), a Parquet file with an id and a path per row (the metadata pre-pass and path look-ups), and the
same Parquet file again into the index it made (every row compared with the stored one: "unchanged").
The baseline (e.g. main before the upsert) had no pre-pass and did not compare re-imported rows.

    python benchmarks/bench_import_upsert.py --rows 100000 --baseline /path/to/main
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

REPO = Path(__file__).resolve().parents[1]
MODEL = "ViT-B-32/random"  # only its config is read (512-d), never its weights
WIDTH = 512

PHASE = """
import json, os, sys, time
from pathlib import Path
from crossgap_index.ingest.embeddings import import_source, model_dim, open_source
from crossgap_index.store.directory import Store
source, index = Path(sys.argv[1]), Path(sys.argv[2])
opened = open_source(source)
if (index / "manifest.json").exists():
    store = Store.open(index)
else:
    store = Store.create(index, sys.argv[3], model_dim(sys.argv[3]), "Flat", vector_dtype="float32")
with store.writing():
    cpu = time.process_time()
    wall = time.perf_counter()
    report = import_source(store, opened)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
store.close()
print(json.dumps({"rows": report.rows, "added": report.added, "unchanged": report.unchanged,
                  "seconds": wall, "cpu_seconds": cpu, "rows_per_second": report.rows / wall}))
"""


def write_sources(folder: Path, n: int) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((n, WIDTH)).astype(np.float32)
    np.save(folder / "plain.npy", rows)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), WIDTH)
    table = pa.table(
        {"embedding": vectors, "id": np.arange(1, n + 1), "path": [f"/photos/{i:08d}.jpg" for i in range(n)]}
    )
    pq.write_table(table, folder / "keyed.parquet")
    return {"plain": folder / "plain.npy", "keyed": folder / "keyed.parquet"}


def phase(checkout: Path, source: Path, index: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", PHASE, str(source), str(index), MODEL],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=checkout,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def commit_of(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "import-upsert")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from benchmarks.machine import machine_info, write_json

    results: dict = {"machine": machine_info(), "rows": args.rows, "dim": WIDTH, "model": MODEL, "runs": {}}
    cases = ("npy without ids", "parquet with ids and paths", "same parquet again")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = write_sources(folder, args.rows)
        for name, checkout in (("this", REPO), ("baseline", args.baseline)):
            results["runs"][name] = {"commit": commit_of(checkout), **{case: [] for case in cases}}
        for repeat in range(args.repeats):  # the two checkouts alternate, so a change of load hits both
            for name, checkout in (("this", REPO), ("baseline", args.baseline)):
                runs = results["runs"][name]
                index = folder / f"{name}-{repeat}"
                runs[cases[0]].append(phase(checkout, sources["plain"], index.with_name(index.name + "-plain")))
                runs[cases[1]].append(phase(checkout, sources["keyed"], index.with_name(index.name + "-keyed")))
                runs[cases[2]].append(phase(checkout, sources["keyed"], index.with_name(index.name + "-keyed")))
    results["load_average_at_end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write_json(args.out.with_suffix(".json"), results)
    lines = [
        f"# Import upsert cost ({args.rows:,} rows, d={WIDTH}, float32; rows half only, no FAISS build)",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; load average at start "
        f"{results['machine']['load_average_at_start']}, at end {results['load_average_at_end']}. "
        f"This: {results['runs']['this']['commit']}, baseline: {results['runs']['baseline']['commit']}.",
        "",
        f"Best of {args.repeats} alternating runs each; rows per CPU second (both threads of the import) are "
        "less sensitive to the load than rows per second.",
        "",
        "| import | this rows/s | baseline rows/s | this / baseline | this rows/CPU-s | baseline rows/CPU-s "
        "| this / baseline (CPU) | added/unchanged (both) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        this, base = results["runs"]["this"][case], results["runs"]["baseline"][case]
        speed = [max(r["rows_per_second"] for r in runs) for runs in (this, base)]
        cpu = [max(r["rows"] / r["cpu_seconds"] for r in runs) for runs in (this, base)]
        counts = {f"{r['added']}/{r['unchanged']}" for r in this + base}
        lines.append(
            f"| {case} | {speed[0]:,.0f} | {speed[1]:,.0f} | {speed[0] / speed[1]:.2f} | {cpu[0]:,.0f} | "
            f"{cpu[1]:,.0f} | {cpu[0] / cpu[1]:.2f} | {', '.join(sorted(counts))} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

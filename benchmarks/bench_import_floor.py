"""`cgx import`'s phases beside autofaiss building the same vectors into the same factory, side by side.

N clustered random unit vectors x 512 (bench_search_raw.py's) in one .npy, then one after another:
  cgx        ``CrossGapIndex.import_embeddings`` into a fresh index (``auto``), timed by phase from its own
             callbacks: rows (catalog + shards), train (k-means on the sample), add, write (the FAISS file);
  autofaiss  ``autofaiss.build_index`` in its own virtual environment (it pins other numpy/pyarrow versions), on
             the same .npy with ``index_key`` = the factory cgx's ``auto`` resolved to; its own build time and
             the wall time of its process.
Recall@10 of each saved index against brute force, at the store's nprobe and at a lower one (where a coarser
clustering would show first), the queries being stored vectors plus noise.

    python benchmarks/bench_import_floor.py --vectors 200000 --autofaiss-python /tmp/afvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_search_raw import MODEL, K, prepared, recall  # noqa: E402
from benchmarks.machine import machine_info, write_json  # noqa: E402

NPROBES = (32, 8)
AUTOFAISS_SCRIPT = """
import json, sys, time
import faiss
from autofaiss import build_index
folder, index_path, key = sys.argv[1:4]
began = time.perf_counter()
build_index(embeddings=folder, index_path=index_path, index_infos_path=index_path + ".json", index_key=key,
            metric_type="ip", nb_cores=2, max_index_memory_usage="8G", current_memory_available="16G", verbose=30)
print(json.dumps({"build_seconds": time.perf_counter() - began, "faiss": faiss.__version__}))
"""


def import_with_phases(embeddings: Path, index: Path) -> dict:
    """cgx's import, its seconds per phase (each from its first callback to the next phase's first)."""
    from crossgap_index import CrossGapIndex, ImportProgress

    marks: list[tuple[str, float]] = []

    def mark(phase: str, *_: int) -> None:
        if not marks or marks[-1][0] != phase:
            marks.append((phase, time.perf_counter()))

    began = time.perf_counter()
    marks.append(("rows", began))
    report = CrossGapIndex.import_embeddings(embeddings, index, MODEL, progress=ImportProgress(phases=mark))
    ended = time.perf_counter()
    phases: dict[str, float] = {}
    for (phase, start), (_, stop) in zip(marks, marks[1:] + [("end", ended)], strict=True):
        phases[phase] = phases.get(phase, 0.0) + stop - start
    with CrossGapIndex.open(index, readonly=True) as cgx:
        factory = cgx._store.indexes["image"].resolved_factory
    return {"seconds": ended - began, "phases": phases, "factory": factory, "rows": report.added}


def autofaiss_build(python: str, embeddings: Path, work: Path, factory: str) -> dict:
    folder = work / "autofaiss-input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "emb.npy").symlink_to(embeddings)
    index_path = work / "autofaiss.index"
    began = time.perf_counter()
    done = subprocess.run(
        [python, "-c", AUTOFAISS_SCRIPT, str(folder), str(index_path), factory],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - began
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": wall, "path": str(index_path)}


def recalls(path: Path, queries: np.ndarray, truth: np.ndarray, id_offset: int) -> dict[str, float]:
    import faiss

    index = faiss.read_index(str(path))
    out = {}
    for nprobe in NPROBES:
        if "IVF" in index_factory_of(index):
            faiss.ParameterSpace().set_index_parameters(index, f"nprobe={nprobe}")
        ids = index.search(queries, K)[1] + id_offset
        out[f"nprobe={nprobe}"] = recall(list(ids), truth)
    return out


def index_factory_of(index) -> str:
    """The type names inside ``index`` (enough to tell an IVF from a Flat)."""
    import faiss

    names = []
    while index is not None:
        index = faiss.downcast_index(index)
        names.append(type(index).__name__)
        index = getattr(index, "index", None)
    return ",".join(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cgx-search-raw"), help="vectors (shared, reused)")
    parser.add_argument("--autofaiss-python", help="the python of a venv with autofaiss (omitted: cgx only)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "import-floor.json")
    args = parser.parse_args()

    machine = machine_info()
    work, embeddings, queries, truth = prepared(args.work, args.vectors, args.queries)
    index = work / "import-floor-index"
    shutil.rmtree(index, ignore_errors=True)

    loads = [os.getloadavg()]
    cgx = import_with_phases(embeddings, index)
    loads.append(os.getloadavg())
    cgx["recall_at_10"] = recalls(index / "image.faiss", queries, truth, 0)
    result: dict = {"machine": machine, "settings": {"vectors": args.vectors, "dim": 512, "k": K}, "cgx": cgx}
    if args.autofaiss_python:
        built = autofaiss_build(args.autofaiss_python, embeddings, work, cgx["factory"])
        loads.append(os.getloadavg())
        built["recall_at_10"] = recalls(Path(built.pop("path")), queries, truth, 1)
        result["autofaiss"] = built
        build = sum(cgx["phases"].get(phase, 0.0) for phase in ("train", "add", "write"))
        result["cgx_over_autofaiss"] = build / built["build_seconds"]
    result["load_average"] = loads
    shutil.rmtree(index, ignore_errors=True)
    write_json(args.out, result)
    write_markdown(args.out.with_suffix(".md"), result)
    print(args.out.with_suffix(".md").read_text())


def write_markdown(path: Path, r: dict) -> None:
    s, m, c = r["settings"], r["machine"], r["cgx"]
    rate = s["vectors"] / c["seconds"]
    lines = [
        "# `cgx import`'s phases beside autofaiss (same vectors, same factory)",
        "",
        f"`benchmarks/bench_import_floor.py`: {s['vectors']:,} clustered random unit vectors x {s['dim']} "
        f"(bench_search_raw.py's), `auto` = `{c['factory']}`. Machine: {m['cpu']}, {m['cores']} cores, FAISS "
        f"{m['faiss']}; load average before / after each build {r['load_average']}. cgx, then autofaiss, one "
        "after the other.",
        "",
        "| build | rows s | train s | add s | write s | total s | vectors/s end to end | recall@10 "
        + " | ".join(f"nprobe {n}" for n in NPROBES)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(NPROBES),
    ]
    p = c["phases"]
    cells = [f"{p.get(phase, 0):.1f}" for phase in ("rows", "train", "add", "write")]
    rows = [("cgx import", cells, f"{c['seconds']:.1f}", rate, c["recall_at_10"])]
    if "autofaiss" in r:
        a = r["autofaiss"]
        total = f"{a['build_seconds']:.1f} (process {a['process_seconds']:.1f})"
        label = f"autofaiss `build_index` (index_key=`{c['factory']}`)"
        rows.append((label, ["-"] * 4, total, s["vectors"] / a["build_seconds"], a["recall_at_10"]))
    for label, phases, total, per_second, recalls in rows:
        found = [f"{recalls[f'nprobe={n}']:.4f}" for n in NPROBES]
        lines.append(f"| {label} | {' | '.join(phases)} | {total} | {per_second:,.0f} | {' | '.join(found)} |")
    if "autofaiss" in r:
        lines += ["", f"cgx's FAISS build (train + add + write) / autofaiss's build: {r['cgx_over_autofaiss']:.2f}x."]
    lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()

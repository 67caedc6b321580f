"""`cgx import`'s phases beside autofaiss building the same vectors into the same factory, side by side.

N clustered random unit vectors x 512 (bench_search_raw.py's) in one .npy, then one after another:
  cgx        ``CrossGapIndex.import_embeddings`` into a fresh index (``auto``), timed by phase from its own
             callbacks: rows (catalog + shards), train (k-means on the sample), add, write (the FAISS file);
  autofaiss  ``autofaiss.build_index`` in its own virtual environment (it pins other numpy/pyarrow versions), on
             the same .npy with ``index_key`` = the factory cgx's ``auto`` resolved to; its own build time and
             the wall time of its process.
Recall@10 of each saved index against brute force, at the store's nprobe and at a lower one (where a coarser
clustering would show first), the queries being stored vectors plus noise. ``--rounds N`` alternates the two N
times (cgx, autofaiss, cgx, ...), each into a fresh index; the CPU seconds of each (all threads, user + system)
stand beside its wall time, so a build that waited on other work on the machine shows as such.

    python benchmarks/bench_import_floor.py --vectors 200000 --autofaiss-python /tmp/afvenv/bin/python
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_search_raw import MODEL, K, prepared, recall  # noqa: E402
from benchmarks.bench_train_floor import SAMPLE_SECONDS, timed_sample  # noqa: E402
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
    """cgx's import, its seconds per phase (each from its first callback to the next phase's first; the
    training sample's pass over the stored rows is taken out of "train" as "sample")."""
    from crossgap_index import CrossGapIndex, ImportProgress

    marks: list[tuple[str, float]] = []

    def mark(phase: str, *_: int) -> None:
        if not marks or marks[-1][0] != phase:
            marks.append((phase, time.perf_counter()))

    SAMPLE_SECONDS.clear()
    began, cpu = time.perf_counter(), time.process_time()
    marks.append(("rows", began))
    report = CrossGapIndex.import_embeddings(embeddings, index, MODEL, progress=ImportProgress(phases=mark))
    ended = time.perf_counter()
    phases: dict[str, float] = {}
    for (phase, start), (_, stop) in zip(marks, marks[1:] + [("end", ended)], strict=True):
        phases[phase] = phases.get(phase, 0.0) + stop - start
    phases["sample"] = sum(SAMPLE_SECONDS)
    phases["train"] = phases.get("train", 0.0) - phases["sample"]
    with CrossGapIndex.open(index, readonly=True) as cgx:
        factory = cgx._store.indexes["image"].resolved_factory
    return {
        "seconds": ended - began,
        "cpu_seconds": time.process_time() - cpu,
        "phases": phases,
        "factory": factory,
        "rows": report.added,
    }


def autofaiss_build(python: str, embeddings: Path, work: Path, factory: str) -> dict:
    folder = work / "autofaiss-input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "emb.npy").symlink_to(embeddings)
    index_path = work / "autofaiss.index"
    began, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(
        [python, "-c", AUTOFAISS_SCRIPT, str(folder), str(index_path), factory],
        capture_output=True,
        text=True,
        check=True,
    )
    wall, used = time.perf_counter() - began, children_cpu() - cpu
    built = json.loads(done.stdout.strip().splitlines()[-1])
    return {**built, "process_seconds": wall, "cpu_seconds": used, "path": str(index_path)}


def children_cpu() -> float:
    """User + system CPU seconds of every finished child process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    parser.add_argument("--rounds", type=int, default=1, help="cgx then autofaiss, this many times")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cgx-search-raw"), help="vectors (shared, reused)")
    parser.add_argument("--autofaiss-python", help="the python of a venv with autofaiss (omitted: cgx only)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "import-floor.json")
    args = parser.parse_args()

    from crossgap_index.store import faiss_build

    faiss_build.training_sample = functools.partial(timed_sample, faiss_build.training_sample)
    machine = machine_info()
    work, embeddings, queries, truth = prepared(args.work, args.vectors, args.queries)
    index = work / "import-floor-index"
    result: dict = {"machine": machine, "settings": {"vectors": args.vectors, "dim": 512, "k": K}, "rounds": []}
    for _ in range(args.rounds):
        shutil.rmtree(index, ignore_errors=True)
        loads = [os.getloadavg()]
        cgx = import_with_phases(embeddings, index)
        loads.append(os.getloadavg())
        cgx["recall_at_10"] = recalls(index / "image.faiss", queries, truth, 0)
        shutil.rmtree(index, ignore_errors=True)
        done: dict = {"cgx": cgx}
        if args.autofaiss_python:
            loads.append(os.getloadavg())
            built = autofaiss_build(args.autofaiss_python, embeddings, work, cgx["factory"])
            loads.append(os.getloadavg())
            index_file = Path(built.pop("path"))
            built["recall_at_10"] = recalls(index_file, queries, truth, 1)
            index_file.unlink()
            done["autofaiss"] = built
            build = sum(cgx["phases"].get(phase, 0.0) for phase in ("sample", "train", "add", "write"))
            done["cgx_build_over_autofaiss"] = build / built["build_seconds"]
            done["cgx_end_to_end_over_autofaiss"] = cgx["seconds"] / built["build_seconds"]
        done["load_average"] = loads
        result["rounds"].append(done)
        print(json.dumps(done), flush=True)
        write_json(args.out, result)
        write_markdown(args.out.with_suffix(".md"), result)
    print(args.out.with_suffix(".md").read_text())


PHASES = ("rows", "sample", "train", "add", "write")


def write_markdown(path: Path, r: dict) -> None:
    s, m = r["settings"], r["machine"]
    factory = r["rounds"][0]["cgx"]["factory"]
    lines = [
        "# `cgx import`'s phases beside autofaiss (same vectors, same factory)",
        "",
        f"`benchmarks/bench_import_floor.py`: {s['vectors']:,} clustered random unit vectors x {s['dim']} "
        f"(bench_search_raw.py's) in one .npy, `auto` = `{factory}`. Machine: {m['cpu']}, {m['cores']} cores, "
        f"FAISS {m['faiss']}; load average at start {m['load_average_at_start']}. cgx, then autofaiss "
        "(`index_key` = the same factory, `nb_cores=2`), one after the other, alternating; the load average (1, 5, "
        "15 min) before and after each build stands in its row. sample: the pass over the stored rows that draws "
        "the training sample; CPU s: every thread of the build's process, user + system.",
        "",
        "| round | build | " + " | ".join(f"{phase} s" for phase in PHASES) + " | total s | CPU s "
        "| vectors/s end to end | recall@10 " + " | ".join(f"nprobe {n}" for n in NPROBES) + " | load before / after |",
        "|---|---|" + "---|" * len(PHASES) + "---|---|---|" + "---|" * len(NPROBES) + "---|",
    ]
    for number, done in enumerate(r["rounds"], 1):
        c, loads = done["cgx"], done["load_average"]
        cells = [f"{c['phases'].get(phase, 0):.1f}" for phase in PHASES]
        rows = [("cgx import", cells, f"{c['seconds']:.1f}", c, s["vectors"] / c["seconds"], loads[0:2])]
        if "autofaiss" in done:
            a = done["autofaiss"]
            total = f"{a['build_seconds']:.1f} (process {a['process_seconds']:.1f})"
            label = f"autofaiss `build_index` (index_key=`{factory}`)"
            rows.append((label, ["-"] * len(PHASES), total, a, s["vectors"] / a["build_seconds"], loads[2:4]))
        for label, phases, total, run, per_second, load in rows:
            found = [f"{run['recall_at_10'][f'nprobe={n}']:.4f}" for n in NPROBES]
            around = " / ".join("(" + ", ".join(f"{x:.1f}" for x in one) + ")" for one in load)
            lines.append(
                f"| {number} | {label} | {' | '.join(phases)} | {total} | {run['cpu_seconds']:.0f} "
                f"| {per_second:,.0f} | {' | '.join(found)} | {around} |"
            )
    if any("autofaiss" in done for done in r["rounds"]):
        lines += [
            "",
            "cgx's FAISS build (sample + train + add + write) / autofaiss's build, per round: "
            + ", ".join(f"{done['cgx_build_over_autofaiss']:.2f}x" for done in r["rounds"])
            + "; cgx's whole import (rows included) / autofaiss's build: "
            + ", ".join(f"{done['cgx_end_to_end_over_autofaiss']:.2f}x" for done in r["rounds"])
            + ".",
        ]
    lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()

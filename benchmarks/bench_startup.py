"""Start-up cost of `cgx`: `--help` and `info` wall time, and a query split into import / model load / search.

Not a test: it measures and writes JSON + a markdown table. Each figure is the median of fresh
processes, run side by side for this tree and for a checkout of an earlier commit (``--before``,
e.g. extracted with ``git archive``), so the two are compared under the same load.

    python benchmarks/bench_startup.py --before /tmp/cgx-before --out benchmarks/out/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A query in a fresh process, timed in three parts; printed as JSON on the last line.
QUERY_SPLIT = """
import json, sys, time
t0 = time.perf_counter()
from crossgap_index import CrossGapIndex
index = CrossGapIndex.open(sys.argv[1])
t1 = time.perf_counter()
index.load_model()
t2 = time.perf_counter()
hits = index.search(text="a red bicycle", k=10)
t3 = time.perf_counter()
print(json.dumps({"import_and_open_s": t1 - t0, "model_load_s": t2 - t1, "search_s": t3 - t2, "hits": len(hits)}))
"""


def wall(cmd: list[str], code_root: Path, repeats: int, expect: int = 0, env: dict | None = None) -> dict:
    """Median and min wall seconds of ``cmd`` in fresh processes with ``code_root`` first on the path."""
    env = {**(env or os.environ), "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, env=env, cwd=code_root)
        times.append(time.perf_counter() - start)
        if proc.returncode != expect:
            raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": repeats}


def query_split(index: Path, code_root: Path, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(
            [sys.executable, "-c", QUERY_SPLIT, str(index)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=code_root,  # `python -c` puts the working directory first on sys.path
        )
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for r in runs:
        r["total_s"] = r["import_and_open_s"] + r["model_load_s"] + r["search_s"]
    keys = ("import_and_open_s", "model_load_s", "search_s", "total_s")
    return {key: statistics.median(r[key] for r in runs) for key in keys}


def build_index(path: Path, model: str) -> None:
    """A small index (16 images, 3 texts) built with this tree's code."""
    sys.path.insert(0, str(REPO))
    from crossgap_index import CrossGapIndex
    from tests.support.photos import write_photo

    folder = path.parent / "photos"
    for i in range(16):
        write_photo(folder / f"img{i}.png", seed=i, size=(96, 80))
    with CrossGapIndex.create(path, model=model, device="cpu") as index:
        index.index_folders([folder])
        index.add_texts(["a red bicycle", "a blue car", "a green tree"])


def machine() -> dict:
    return {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg(), "python": sys.version.split()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="A checkout of the code to compare with (same layout).")
    parser.add_argument("--models", default="crossgap-small,ViT-B-32/random")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "startup.json")
    args = parser.parse_args()

    trees = {"after": REPO} | ({"before": args.before} if args.before else {})
    results: dict = {
        "machine": machine(),
        "settings": {"repeats": args.repeats, "omp_threads": 1},
        "python_baseline": wall([sys.executable, "-c", "pass"], REPO, args.repeats),
        "commands": {},
        "query_split": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        indexes = {}
        for model in args.models.split(","):
            indexes[model] = Path(tmp) / model.replace("/", "_") / "idx"
            build_index(indexes[model], model)
        first = indexes[args.models.split(",")[0]]
        fast = {
            "cgx --help": [sys.executable, "-m", "crossgap_index", "--help"],
            "cgx info": [sys.executable, "-m", "crossgap_index", "info", "--index", str(first)],
        }
        # On a shared machine the load moves: take each figure in rounds, one run per tree per round.
        samples: dict = {label: {name: [] for name in fast} for label in trees}
        for _ in range(args.repeats):
            for label, root in trees.items():
                for name, cmd in fast.items():
                    samples[label][name].append(wall(cmd, root, 1)["min_s"])
        for label, root in trees.items():
            results["commands"][label] = {
                name: {"median_s": statistics.median(t), "min_s": min(t), "runs": len(t)}
                for name, t in samples[label].items()
            }
            # No network here: a pretrained tag that is not cached must fail; how long until it does?
            offline_env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
            empty = Path(tmp) / f"empty-{label}"
            empty.mkdir()
            results["commands"][label]["build-index, uncached pretrained model, no network"] = wall(
                [sys.executable, "-m", "crossgap_index", "build-index", str(empty),
                 "--index", str(Path(tmp) / f"off-{label}"),
                 "--model", "ViT-B-32/laion2b_s34b_b79k"],
                root, 1, expect=1, env=offline_env,
            )  # fmt: skip
            results["query_split"][label] = {
                model: query_split(path, root, max(2, args.repeats // 2)) for model, path in indexes.items()
            }
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cores']} cores, Python {m['python']}, load average {m['load_average_at_start'][0]:.1f} at "
        f"start, {m['load_average_at_end'][0]:.1f} at end; median of {results['settings']['repeats']} fresh "
        f"processes; `python -c pass` takes {results['python_baseline']['median_s']:.2f} s.",
        "",
        "| command | " + " | ".join(results["commands"]) + " |",
        "|---|" + "---:|" * len(results["commands"]),
    ]
    for command in next(iter(results["commands"].values())):
        figures = [results["commands"][label][command] for label in results["commands"]]
        cells = [f"{f['median_s']:.2f} s (min {f['min_s']:.2f})" for f in figures]
        lines.append(f"| `{command}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| query (fresh process) | model | import + open | model load (after: incl. torch import) | search | total |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, per_model in results["query_split"].items():
        for model, split in per_model.items():
            lines.append(
                f"| {label} | {model} | {split['import_and_open_s']:.2f} s | {split['model_load_s']:.2f} s "
                f"| {split['search_s']:.2f} s | {split['total_s']:.2f} s |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

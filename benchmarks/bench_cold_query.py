"""A cold `cgx query IMAGE` (intra and --cross) beside `import torch` and beside an rclip-like cold search.

Each figure is the wall time of a fresh process, taken in rounds (one run of every command per round, so all
see the same load), median over the rounds. Commands:

* ``cgx query`` as shipped: image queries on the verified ONNX tower (models/query_encoder.py);
* the same with ``CGX_QUERY_TOWERS=torch``: the torch path (torch + open_clip imported, the model built, bf16
  where the CPU runs it natively, as before this path existed);
* ``cgx query TEXT --text``: a text query, which always imports torch and builds the model (a model whose
  checkpoint replaces every weight is built without random fills);
* ``python -c "import torch"`` and ``python -c pass``;

every process keeps compiled bytecode (``PYTHONPYCACHEPREFIX``, warmed before timing), as an installed package
does, even where the environment sets ``PYTHONDONTWRITEBYTECODE``;
* the rclip-like floor: rclip itself cannot fetch its weights here, so this is what its cold search does, on
  the same ONNX file: a fresh process imports onnxruntime, numpy, PIL and faiss, opens the image tower with
  ONNX Runtime's default options, preprocesses one image, embeds it and searches the index's own FAISS file.

    python benchmarks/bench_cold_query.py --models crossgap-small,ViT-B-32/random --rounds 3

``--trees old=/tmp/old-checkout,new=.`` times `cgx query` from several checkouts (each its own PYTHONPATH; a tree
may name extra folders before it, ``a:b``) side by side: in every round each tree's query runs right after the
other's, so all see the same load, and the hits of every tree are compared with the first's. Each later tree queries
its own copy of the index, so a tree whose tower sidecar has another format keeps the tower it exported; a run where
a tower changed while timing is refused. ``--no-torch-path`` leaves out the torch-path commands (seconds each, and the
same in every tree).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import write_json

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
# As an installed package runs: compiled bytecode kept (here in a cache of its own), not recompiled per process.
PYCACHE = Path(tempfile.gettempdir()) / "cgx-bench-pycache"
# Where every timed process runs: `python -m` and `-c` put their working directory first on sys.path, so in a
# folder that holds no checkout PYTHONPATH alone says which tree's code runs.
NEUTRAL_CWD = Path(tempfile.gettempdir())

# What an rclip-style cold search runs: ONNX Runtime on the image tower, hand-written preprocessing, a flat search.
FLOOR = """
import json, sys
import faiss, numpy as np, onnxruntime
from PIL import Image
towers, image, index_file = sys.argv[1:4]
meta = json.load(open(towers + "/image.json"))
session = onnxruntime.InferenceSession(towers + "/image.onnx", providers=["CPUExecutionProvider"])
size = meta["input_shape"][1]
steps = dict((name, args) for name, args in meta["recipe"])
img = Image.open(image).convert("RGB")
w, h = img.size
scale = size / min(w, h)
img = img.resize((max(size, int(w * scale)), max(size, int(h * scale))), Image.BICUBIC)
left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
img = img.crop((left, top, left + size, top + size))
pixels = (np.asarray(img, np.float32) / 255 - steps["normalize"]["mean"]) / steps["normalize"]["std"]
feature = session.run(None, {"pixels": pixels.transpose(2, 0, 1)[None].astype(np.float32)})[0]
feature /= np.linalg.norm(feature)
scores, ids = faiss.read_index(index_file).search(feature, 10)
print(ids[0][:3])
"""


def build(root: Path, model: str) -> tuple[Path, Path]:
    """An index of 64 photos and 3 texts built with this tree (`cgx build-index`), its derived maps current."""
    sys.path.insert(0, str(REPO))
    from tests.support.photos import write_photo

    photos = root / "photos"
    for i in range(64):
        write_photo(photos / f"img{i}.png", seed=i, size=(320, 240))
    index = root / "idx"
    cgx(["build-index", str(photos), "--index", str(index), "--model", model, "--device", "cpu", "--quiet"])
    return index, photos / "img7.png"


def cgx(args: list[str], env: dict | None = None) -> tuple[float, float]:
    return timed([sys.executable, "-m", "crossgap_index", *args], env)


def bench_env(extra: dict | None = None) -> dict:
    """A fresh process's environment: this tree on the path (``extra`` may name another tree's PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(REPO), "PYTHONPYCACHEPREFIX": str(PYCACHE), **(extra or {})}


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds of ``cmd`` in a fresh process, and the CPU seconds (user + system, all its threads) it used:
    on a shared machine the CPU time moves less with the load than the wall time does."""
    full_env = bench_env(env)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=NEUTRAL_CWD)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {proc.stderr[-800:]}")
    return seconds, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


# The queries timed from every tree: image queries take the ONNX tower; a text query always loads torch and the model.
TREE_QUERIES = {
    "cgx query IMAGE (ONNX)": ["IMAGE"],
    "cgx query IMAGE --cross (ONNX)": ["IMAGE", "--cross"],
    "cgx query TEXT (torch)": ["two red shapes", "--text"],
}


def commands(indexes: dict[str, Path], image: Path, trees: dict[str, str], torch_path: bool = True) -> dict:
    """Every timed command by name; with more than one tree, each `cgx query` once per tree (on its own copy of the
    index), the trees adjacent."""
    index = next(iter(indexes.values()))
    query = ["query", str(image), "--index", str(index), "-k", "10", "--json", "--quiet"]
    on_torch = {"CGX_QUERY_TOWERS": "torch"}
    towers = index / "query-towers"
    named: dict = {
        "python -c pass": lambda: timed([sys.executable, "-c", "pass"]),
        "python -c 'import torch'": lambda: timed([sys.executable, "-c", "import torch"]),
        "rclip-like floor (ORT + faiss, same ONNX)": lambda: timed(
            [sys.executable, "-c", FLOOR, str(towers), str(image), str(index / "image.faiss")]
        ),
    }
    for label, given in TREE_QUERIES.items():
        for tree, path in trees.items():
            suffix = f" [{tree}]" if len(trees) > 1 else ""
            args = [str(image) if word == "IMAGE" else word for word in given]
            own = ["query", *args, "--index", str(indexes[tree]), "-k", "10", "--json", "--quiet"]
            named[f"{label}{suffix}"] = lambda q=own, pp=path: cgx(q, {"PYTHONPATH": pp})
    if torch_path:
        named["cgx query IMAGE (torch path)"] = lambda: cgx(query, on_torch)
        named["cgx query IMAGE --cross (torch path)"] = lambda: cgx([*query, "--cross"], on_torch)
    return named


def hits(index: Path, query: str | Path, extra: list[str], env: dict | None = None) -> list:
    full_env = bench_env(env)
    args = ["query", str(query), "--index", str(index), "-k", "10", "--json", "--quiet", *extra]
    cmd = [sys.executable, "-m", "crossgap_index", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=NEUTRAL_CWD)
    return [(h["id"], h["score"]) for h in json.loads(out.stdout)["hits"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="crossgap-small,ViT-B-32/random")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="cold-query")
    parser.add_argument("--trees", default="", help="name=PYTHONPATH,... checkouts whose `cgx query` is timed")
    parser.add_argument("--no-torch-path", action="store_true", help="leave out the torch-path commands")
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.trees.split(",")) if args.trees else {"this": str(REPO)}
    trees = {name: ":".join(str(Path(p).resolve()) for p in path.split(":")) for name, path in trees.items()}
    results: dict = {
        "machine": {
            "cores": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "python": sys.version.split()[0],
        },
        "settings": {"rounds": args.rounds, "device": "auto (CPU)", "k": 10, "gallery": "64 photos 320x240, 3 texts"},
        "trees": trees,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            index, image = build(Path(tmp) / model.replace("/", "_"), model)
            hits(index, image, [])  # the first image query loads torch and exports the tower (not timed)
            for extra, env in (([], {}), (["--cross"], {}), (["--cross"], {"CGX_QUERY_TOWERS": "torch"})):
                hits(index, image, extra, env)  # and bytecode is compiled once, as an install does (not timed)
            indexes = {tree: index if i == 0 else index.with_name(f"idx-{tree}") for i, tree in enumerate(trees)}
            for tree, path in trees.items():
                if indexes[tree] != index:
                    shutil.copytree(index, indexes[tree], symlinks=True)
                for extra in ([], ["--cross"]):  # each tree's bytecode, and its tower where its format differs
                    hits(indexes[tree], image, extra, {"PYTHONPATH": path})
                text = TREE_QUERIES["cgx query TEXT (torch)"]
                hits(indexes[tree], text[0], text[1:], {"PYTHONPATH": path})  # the text path's bytecode
            sidecar = json.loads((index / "query-towers" / "image.json").read_text())
            timed_commands = commands(indexes, image, trees, not args.no_torch_path)
            samples: dict = {name: [] for name in timed_commands}
            towers_before = {t: (i / "query-towers" / "image.json").read_bytes() for t, i in indexes.items()}
            for _ in range(args.rounds):
                for name, run in timed_commands.items():
                    samples[name].append(run())
            if {t: (i / "query-towers" / "image.json").read_bytes() for t, i in indexes.items()} != towers_before:
                raise RuntimeError("an ONNX tower was exported again while timing")
            results["models"][model] = {
                "tower": {k: sidecar.get(k) for k in ("status", "probe_min_cosine", "bytes")},
                "median_s": {name: statistics.median(w for w, _ in t) for name, t in samples.items()},
                "min_s": {name: min(w for w, _ in t) for name, t in samples.items()},
                "cpu_median_s": {name: statistics.median(c for _, c in t) for name, t in samples.items()},
                "samples_s": {name: [w for w, _ in t] for name, t in samples.items()},
                "cpu_samples_s": {name: [c for _, c in t] for name, t in samples.items()},
                "hits": model_hits(indexes, image, trees, not args.no_torch_path),
            }
    results["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(OUT / f"{args.name}.json", results)
    table = markdown(results)
    (OUT / f"{args.name}.md").write_text(table + "\n")
    print(table)


def model_hits(indexes: dict[str, Path], image: Path, trees: dict[str, str], torch_path: bool) -> dict:
    """Each mode's (id, score) hits: ONNX from every tree (on its own copy), and torch from this one when timed."""
    index = next(iter(indexes.values()))
    found: dict = {}
    for mode, extra in (("intra", []), ("cross", ["--cross"])):
        found[mode] = {
            f"onnx [{tree}]": hits(indexes[tree], image, extra, {"PYTHONPATH": path}) for tree, path in trees.items()
        }
        if torch_path:
            found[mode]["torch"] = hits(index, image, extra, {"CGX_QUERY_TOWERS": "torch"})
    text = TREE_QUERIES["cgx query TEXT (torch)"]
    found["text"] = {
        f"torch [{tree}]": hits(indexes[tree], text[0], text[1:], {"PYTHONPATH": path}) for tree, path in trees.items()
    }
    return found


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cores']} cores, Python {m['python']}, load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in m['load_average_at_start'])} at start, "
        f"{'/'.join(f'{x:.1f}' for x in m['load_average_at_end'])} at end. Wall time of fresh processes, median "
        f"(min), and their CPU time (user + system), median, of {results['settings']['rounds']} rounds, every "
        f"command once per round; {results['settings']}.",
    ]
    trees = results.get("trees", {})
    if len(trees) > 1:
        lines.append(f"\nTrees (PYTHONPATH of each `cgx query [tree]`): {trees}.")
    for model, data in results["models"].items():
        med, low, cpu = data["median_s"], data["min_s"], data["cpu_median_s"]
        floor_name = "rclip-like floor (ORT + faiss, same ONNX)"
        floor, cpu_floor = med[floor_name], cpu[floor_name]
        lines += [
            "",
            f"**{model}** (tower {data['tower']})",
            "",
            "| command | wall s | x rclip-like floor | CPU s | CPU x floor |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {med[name]:.2f} ({low[name]:.2f}) | {med[name] / floor:.2f} | {cpu[name]:.2f} | "
            f"{cpu[name] / cpu_floor:.2f} |"
            for name in med
        ]
        lines += _paired_ratios(data["samples_s"], list(trees), "wall")
        lines += _paired_ratios(data["cpu_samples_s"], list(trees), "CPU")
        for mode, found in data["hits"].items():
            lines.append(f"\n{mode}: " + "; ".join(_hits_agreement(found)))
    return "\n".join(lines)


def _paired_ratios(samples: dict, trees: list[str], what: str) -> list[str]:
    """Each later tree's query time over the first tree's, taken round by round (the two ran back to back), median."""
    lines = []
    for label in TREE_QUERIES:
        first = samples.get(f"{label} [{trees[0]}]") if trees else None
        for tree in trees[1:]:
            if first is None:
                break
            ratios = [t / b for t, b in zip(samples[f"{label} [{tree}]"], first, strict=True)]
            lines.append(
                f"\n{label}, {what}: {tree} / {trees[0]} = {statistics.median(ratios):.2f} (per-round, median)"
            )
    return lines


def _hits_agreement(found: dict) -> list[str]:
    """How each list of hits compares with the first tree's ONNX hits: identical, or ids equal/differing and the
    largest score gap."""
    names = list(found)
    first = found[names[0]]
    said = []
    for name in names[1:]:
        other = found[name]
        if other == first:
            said.append(f"{name} identical to {names[0]} (ids and scores)")
            continue
        same = [i for i, _ in other] == [i for i, _ in first]
        gap = max((abs(a[1] - b[1]) for a, b in zip(other, first, strict=False)), default=0.0)
        said.append(f"{name} vs {names[0]}: top-10 ids {'equal' if same else 'DIFFER'}, max score gap {gap:.5f}")
    return said or [f"{names[0]} only"]


if __name__ == "__main__":
    main()

"""A cold `cgx query IMAGE` (intra and --cross) beside `import torch` and beside an rclip-like cold search.

Each figure is the wall time of a fresh process, taken in rounds (one run of every command per round, so all
see the same load), median over the rounds. Commands:

* ``cgx query`` as shipped: image queries on the verified ONNX tower (models/query_encoder.py);
* the same with ``CGX_QUERY_TOWERS=torch``: the torch path (torch + open_clip imported, the model built, bf16
  where the CPU runs it natively, as before this path existed);
* ``python -c "import torch"`` and ``python -c pass``;

every process keeps compiled bytecode (``PYTHONPYCACHEPREFIX``, warmed before timing), as an installed package
does, even where the environment sets ``PYTHONDONTWRITEBYTECODE``;
* the rclip-like floor: rclip itself cannot fetch its weights here, so this is what its cold search does, on
  the same ONNX file: a fresh process imports onnxruntime, numpy, PIL and faiss, opens the image tower with
  ONNX Runtime's default options, preprocesses one image, embeds it and searches the index's own FAISS file.

    python benchmarks/bench_cold_query.py --models crossgap-small,ViT-B-32/random --rounds 3
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

from benchmarks.machine import write_json

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
# As an installed package runs: compiled bytecode kept (here in a cache of its own), not recompiled per process.
PYCACHE = Path(tempfile.gettempdir()) / "cgx-bench-pycache"

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


def cgx(args: list[str], env: dict | None = None) -> float:
    return timed([sys.executable, "-m", "crossgap_index", *args], env)


def bench_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(REPO), "PYTHONPYCACHEPREFIX": str(PYCACHE), **(extra or {})}


def timed(cmd: list[str], env: dict | None = None) -> float:
    full_env = bench_env(env)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {proc.stderr[-800:]}")
    return seconds


def commands(index: Path, image: Path) -> dict:
    query = ["query", str(image), "--index", str(index), "-k", "10", "--json", "--quiet"]
    torch_path = {"CGX_QUERY_TOWERS": "torch"}
    towers = index / "query-towers"
    return {
        "python -c pass": lambda: timed([sys.executable, "-c", "pass"]),
        "python -c 'import torch'": lambda: timed([sys.executable, "-c", "import torch"]),
        "rclip-like floor (ORT + faiss, same ONNX)": lambda: timed(
            [sys.executable, "-c", FLOOR, str(towers), str(image), str(index / "image.faiss")]
        ),
        "cgx query IMAGE (ONNX)": lambda: cgx(query),
        "cgx query IMAGE --cross (ONNX)": lambda: cgx([*query, "--cross"]),
        "cgx query IMAGE (torch path)": lambda: cgx(query, torch_path),
        "cgx query IMAGE --cross (torch path)": lambda: cgx([*query, "--cross"], torch_path),
    }


def hits(index: Path, image: Path, extra: list[str], env: dict | None = None) -> list:
    full_env = bench_env(env)
    args = ["query", str(image), "--index", str(index), "-k", "10", "--json", "--quiet", *extra]
    out = subprocess.run([sys.executable, "-m", "crossgap_index", *args], capture_output=True, text=True, env=full_env)
    return [(h["id"], round(h["score"], 5)) for h in json.loads(out.stdout)["hits"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="crossgap-small,ViT-B-32/random")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="cold-query")
    args = parser.parse_args()
    results: dict = {
        "machine": {
            "cores": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "python": sys.version.split()[0],
        },
        "settings": {"rounds": args.rounds, "device": "auto (CPU)", "k": 10, "gallery": "64 photos 320x240, 3 texts"},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            index, image = build(Path(tmp) / model.replace("/", "_"), model)
            hits(index, image, [])  # the first image query loads torch and exports the tower (not timed)
            for extra, env in (([], {}), (["--cross"], {}), (["--cross"], {"CGX_QUERY_TOWERS": "torch"})):
                hits(index, image, extra, env)  # and bytecode is compiled once, as an install does (not timed)
            sidecar = json.loads((index / "query-towers" / "image.json").read_text())
            samples: dict = {name: [] for name in commands(index, image)}
            for _ in range(args.rounds):
                for name, run in commands(index, image).items():
                    samples[name].append(run())
            torch_env = {"CGX_QUERY_TOWERS": "torch"}
            results["models"][model] = {
                "tower": {k: sidecar.get(k) for k in ("status", "probe_min_cosine", "bytes")},
                "median_s": {name: statistics.median(t) for name, t in samples.items()},
                "min_s": {name: min(t) for name, t in samples.items()},
                "hits": {
                    "intra": {"onnx": hits(index, image, []), "torch": hits(index, image, [], torch_env)},
                    "cross": {
                        "onnx": hits(index, image, ["--cross"]),
                        "torch": hits(index, image, ["--cross"], torch_env),
                    },
                },
            }
    results["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(OUT / f"{args.name}.json", results)
    table = markdown(results)
    (OUT / f"{args.name}.md").write_text(table + "\n")
    print(table)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cores']} cores, Python {m['python']}, load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in m['load_average_at_start'])} at start, "
        f"{'/'.join(f'{x:.1f}' for x in m['load_average_at_end'])} at end. Wall time of fresh processes, median "
        f"(min) of {results['settings']['rounds']} rounds, every command once per round; {results['settings']}.",
    ]
    for model, data in results["models"].items():
        med, low = data["median_s"], data["min_s"]
        floor = med["rclip-like floor (ORT + faiss, same ONNX)"]
        lines += [
            "",
            f"**{model}** (tower {data['tower']})",
            "",
            "| command | wall s | x rclip-like floor |",
            "|---|---:|---:|",
        ]
        lines += [f"| {name} | {med[name]:.2f} ({low[name]:.2f}) | {med[name] / floor:.2f} |" for name in med]
        for mode, pair in data["hits"].items():
            same = [i for i, _ in pair["onnx"]] == [i for i, _ in pair["torch"]]
            gap = max((abs(a[1] - b[1]) for a, b in zip(pair["onnx"], pair["torch"], strict=False)), default=0.0)
            lines.append(
                f"\n{mode}: top-10 ids {'equal' if same else 'DIFFER'} (ONNX vs torch), max score gap {gap:.5f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

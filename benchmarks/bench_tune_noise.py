"""How often `cgx tune` stores a mode where there is nothing to find, and whether it still stores real winners.

Noise: ``--folders`` labelled sets of pure noise images (uniform, Gaussian and smoothed noise, mixed within every
class), each with its own seed, class count (8-16) and items per class (8-12), class names taken from the
synthetic world's vocabulary so the label-based candidates (span and concept over the labels) run as they would on
a user's folder. Any mode tune stores on them is a false store. For each folder the record's class-level interval
(what tune decides by, ``evaluation.stats.class_interval``) is reported beside the per-query interval (the
previous rule, ``per_query_ci95``) on the same winner.

Real data: Fashion-MNIST's test split with crossgap-fashion, and the bundled synthetic world's labelled folders
(synthetic:7:480 and synthetic:9:480) with crossgap-small, where a winner is known (the label-based span and
concept modes, see benchmarks/results/worlds.md).

Inversion candidates are left out (``inversion=False``): they cost OTI per query on a CPU; every other candidate
(projections over the labels and over ImageNet names, iso, the peers and their compositions) runs.

    nice python -m benchmarks.bench_tune_noise --folders 40
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.machine import machine_info

CLASS_COUNTS = (8, 10, 12, 16)
ITEM_COUNTS = (8, 10, 12)
SIZES = (32, 48)


def noise_image(rng: np.random.Generator, size: int) -> bytes:
    """One PNG of pure noise: uniform pixels, Gaussian pixels, or smoothed (upsampled) noise."""
    kind = rng.integers(3)
    if kind == 0:
        pixels = rng.integers(0, 256, (size, size, 3))
    elif kind == 1:
        pixels = np.clip(rng.normal(128, 48, (size, size, 3)), 0, 255)
    else:
        coarse = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_folder(seed: int):
    """A labelled set of pure noise: its class count, items per class and image size follow from ``seed``."""
    from crossgap_index.datasets.synthetic import CLASS_NAMES
    from crossgap_index.evaluation.data import EvalDataset, ImageSet

    rng = np.random.default_rng(10_000 + seed)
    k = CLASS_COUNTS[seed % len(CLASS_COUNTS)]
    m = ITEM_COUNTS[(seed // len(CLASS_COUNTS)) % len(ITEM_COUNTS)]
    size = SIZES[seed % len(SIZES)]
    names = [CLASS_NAMES[i] for i in sorted(rng.choice(len(CLASS_NAMES), k, replace=False))]
    items = [noise_image(rng, size) for _ in range(k * m)]
    labels = np.repeat(np.arange(k), m)
    return EvalDataset(f"noise#{seed}:{k}x{m}@{size}px", "folder", ImageSet(items, labels, names), None)


def run(data, encoder, maps: Path) -> dict:
    from crossgap_index.tuning.tune import tune

    begin = time.perf_counter()
    result, _ = tune(data, encoder, inversion=False, maps_dir=maps)
    if result.record is None:  # below tune's minimum: nothing measured
        raise SystemExit(f"{data.spec}: {result.reason}")
    rep = result.record["report"]
    per_query = rep.get("per_query_ci95", [float("nan")] * 2)
    return {
        "data": data.spec if hasattr(data, "spec") else str(data),
        "winner": result.record["candidate"],
        "stored": result.stored,
        "delta": rep["delta_map"],
        "ci95": rep["delta_map_ci95"],
        "per_query_ci95": per_query,
        "per_query_would_store": result.record["candidate"] != "intra" and per_query[0] > 0,
        "collapsing": [c["name"] for c in result.candidates if c["collapses"]],
        "seconds": time.perf_counter() - begin,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", type=int, default=40)
    parser.add_argument("--fashion", default="fashion-mnist:test:400")
    parser.add_argument("--worlds", nargs="+", default=["synthetic:7:480", "synthetic:9:480"])
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tune-noise.json"))
    args = parser.parse_args(argv)

    from crossgap_index.evaluation.data import load_dataset
    from crossgap_index.models import Encoder, load_model

    started = time.perf_counter()
    doc: dict = {"machine": machine_info(), "argv": " ".join(sys.argv[1:]), "noise": [], "real": []}
    small = Encoder(load_model("crossgap-small", "cpu"), precision="fp32")
    maps = Path(tempfile.mkdtemp(prefix="cgx-tune-maps-"))  # fitted maps depend on model + settings only
    for seed in range(args.folders):
        row = run(noise_folder(seed), small, maps)
        doc["noise"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if not args.skip_real:
        fashion = Encoder(load_model("crossgap-fashion", "cpu"), precision="fp32")
        plan = [(args.fashion, fashion, "crossgap-fashion")] + [(w, small, "crossgap-small") for w in args.worlds]
        for spec, encoder, model in plan:
            row = {**run(load_dataset(spec), encoder, maps), "model": model}
            doc["real"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    doc["seconds"] = time.perf_counter() - started
    doc["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    args.out.with_suffix(".md").write_text(markdown(doc))


def markdown(doc: dict) -> str:
    noise, m = doc["noise"], doc["machine"]
    stored = sum(r["stored"] for r in noise)
    old = sum(r["per_query_would_store"] for r in noise)
    pct = lambda a, b: f"{a}/{b} ({100 * a / max(b, 1):.1f}%)"  # noqa: E731
    lines = [
        "# `cgx tune` on pure noise and on real labelled data (issue 23, item 7)",
        "",
        f"`nice python -m benchmarks.bench_tune_noise {doc['argv']}` (JSON beside this file). Machine: {m['cpu']}, "
        f"{m['cores']} cores shared with other jobs, load average {m['load_average_at_start'][0]:.1f} at start, "
        f"{doc['load_average_at_end'][0]:.1f} at end; {doc['seconds']:.0f} s in all; CPU, fp32; inversion "
        "candidates off (`inversion=False`), every other candidate on.",
        "",
        f"**False-store rate on {len(noise)} noise folders: {pct(stored, len(noise))}** with the class-level "
        f"interval tune decides by; the per-query interval on the same winners would have stored "
        f"{pct(old, len(noise))}.",
        "",
        "| folder (classes x items @ size) | winner | ΔmAP | class interval (decides) | per-query interval | stored |"
        " collapsing candidates |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in noise:
        lo, hi = r["ci95"]
        plo, phi = r["per_query_ci95"]
        lines.append(
            f"| {r['data']} | {r['winner']} | {r['delta'] * 100:+.2f} | [{lo * 100:+.1f}, {hi * 100:+.1f}] | "
            f"[{plo * 100:+.1f}, {phi * 100:+.1f}] | {'yes' if r['stored'] else 'no'} | {len(r['collapsing'])} |"
        )
    if doc["real"]:
        lines += [
            "",
            "## Real labelled data (a winner exists)",
            "",
            "| data | model | winner | ΔmAP | class interval | stored | collapsing candidates (not chosen) |",
            "|---|---|---|---:|---:|---|---|",
        ]
        for r in doc["real"]:
            lo, hi = r["ci95"]
            lines.append(
                f"| {r['data']} | {r['model']} | {r['winner']} | {r['delta'] * 100:+.2f} | "
                f"[{lo * 100:+.1f}, {hi * 100:+.1f}] | {'yes' if r['stored'] else 'no'} | "
                f"{', '.join(r['collapsing']) or 'none'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

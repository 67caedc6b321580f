"""The mode engine's targets (issue 8): tuned --cross and the best served mode on held-out seeds, the
inverter against the best OTI step count, and the cost of a tuned query against an intra query.

Quality (crossgap-small): `tune` on a development seed stores a mode in a fresh index; `evaluate` then
measures every mode, the tuned one included, on held-out seeds nobody tuned on, each mode through the
same engine a query is served by. Cost (ViT-B-32 random weights: the real architecture's compute): an
index of synthetic photos; in-process search at batch 1, no cache, intra and each mode alternated so
the shared machine's noise falls alike on both; ratios of medians.

    python -m benchmarks.bench_modes                 # the RESULTS.md run
    python -m benchmarks.bench_modes --n 96 --seeds 1001 --cost-queries 3   # quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import machine_info, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import CLASS_NAMES, export_folder, make_item
from crossgap_index.evaluation.protocol import IMAGES, evaluate
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.modes import resolve_mode


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    doc = {"machine": machine_info(), "settings": vars(args), "quality": {}, "cost": {}}
    with tempfile.TemporaryDirectory() as tmp:
        index = CrossGapIndex.create(Path(tmp) / "idx", model="crossgap-small", device="cpu")
        begin = time.perf_counter()
        tuned = index.tune(f"synthetic:{args.tune_seed}:{args.n}", inversion=True)
        doc["tune"] = {"record": tuned.record, "candidates": tuned.candidates, "seconds": time.perf_counter() - begin}
        print(f"tuned on seed {args.tune_seed}: {tuned.record['candidate']}", flush=True)
        tuned_mode = resolve_mode("auto", tuned=tuned.record["mode"])
        index.close()
    for seed in args.seeds:
        result = evaluate(
            f"synthetic:{seed}:{args.n}",
            "crossgap-small",
            device="cpu",
            tasks=["images"],
            extra_modes={"tuned": tuned_mode},
            sweep_steps=args.sweep_steps,
            sweep_tokens=args.sweep_tokens,
        )
        task = result.tasks[IMAGES]
        doc["quality"][str(seed)] = {
            "intra_map": task.modes["intra"].metrics["map"],
            "modes": {
                name: {"map": m.metrics["map"], "delta": m.map_vs_intra, "se": m.map_vs_intra_se, "ms": m.ms_per_query}
                for name, m in task.modes.items()
            },
            "sweep": [
                {
                    "tokens": p.tokens,
                    "steps": p.steps,
                    "map": p.metrics["map"],
                    "delta": p.map_vs_intra,
                    "se": p.map_vs_intra_se,
                }
                for p in result.sweep
            ],
            "embed_ms_per_image": result.timings["embed_ms_per_image"],
        }
        print(f"seed {seed} done", flush=True)
    doc["cost"] = _cost(args, tuned.record)
    path = write_json(out / "modes.json", doc)
    table = _table(doc)
    (out / "modes.md").write_text(table)
    print(table)
    print(f"wrote {path}")


def _cost(args, record: dict) -> dict:
    """Median in-process ms per query at batch 1 (embedding included, no cache), ViT-B-32 random weights."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_folder(Path(tmp) / "photos", 7, args.cost_gallery)
        index = CrossGapIndex.create(Path(tmp) / "idx", model="ViT-B-32/random", device="cpu")
        index.index_folders([folder])
        tuned_like = dict(record["mode"])  # the tuned mode's settings, with this model's text tower
        modes = {
            "intra": {"mode": "intra"},
            "tuned (as chosen on crossgap-small)": {"mode": resolve_mode("auto", tuned=tuned_like)},
            "concept (48 class names)": {"mode": "concept", "projection": {"vocabulary": list(CLASS_NAMES)}},
            "span (default, ImageNet)": {"mode": "span"},
            "cross (OTI 25 steps)": {"mode": "cross"},
            "cross (OTI R=2, 10 steps)": {"mode": "cross", "inversion": InversionConfig(oti_steps=10, n_tokens=2)},
        }
        index.train_inverter()
        modes["inverter"] = {"mode": "inverter"}
        queries = [make_item(7, args.cost_gallery + i).image for i in range(args.cost_queries + 1)]
        times: dict[str, list[float]] = {name: [] for name in modes}
        for settings in modes.values():  # warm-up: fit maps, build derived collections
            index.search(image=queries[0], k=10, use_cache=False, **settings)
        for query in queries[1:]:
            for name, settings in modes.items():
                begin = time.perf_counter()
                index.search(image=query, k=10, use_cache=False, **settings)
                times[name].append(time.perf_counter() - begin)
        index.close()
    intra = float(np.median(times["intra"]))
    return {
        "model": "ViT-B-32/random",
        "gallery": args.cost_gallery,
        "queries": args.cost_queries,
        "load_average": os.getloadavg(),
        "ms": {name: float(np.median(t) * 1e3) for name, t in times.items()},
        "ratio_to_intra": {name: float(np.median(t) / intra) for name, t in times.items()},
    }


def _table(doc: dict) -> str:
    rec = doc["tune"]["record"]
    lines = [
        f"Tuned on synthetic:{doc['settings']['tune_seed']}:{doc['settings']['n']} (crossgap-small): "
        f"**{rec['candidate']}** — report half mAP {rec['report']['map'] * 100:.2f} vs intra "
        f"{rec['report']['intra_map'] * 100:.2f}; tune took {doc['tune']['seconds']:.0f} s.",
        "",
    ]
    seeds = list(doc["quality"])
    lines.append("| mode | " + " | ".join(f"seed {s}: ΔmAP ± se (mAP)" for s in seeds) + " | mode ms/query |")
    lines.append("|---|" + "---|" * len(seeds) + "---|")
    names = list(doc["quality"][seeds[0]]["modes"])
    for name in names:
        cells = []
        for s in seeds:
            m = doc["quality"][s]["modes"][name]
            se = f" ± {m['se'] * 100:.2f}" if m["se"] is not None else ""
            cells.append(f"{m['delta'] * 100:+.2f}{se} ({m['map'] * 100:.2f})")
        ms = doc["quality"][seeds[0]]["modes"][name]["ms"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ms:.1f} |")
    lines += ["", "OTI sweep (cross mode), ΔmAP vs intra:", ""]
    lines.append("| R | steps | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    lines.append("|---|---|" + "---|" * len(seeds))
    for i, point in enumerate(doc["quality"][seeds[0]]["sweep"]):
        cells = [f"{doc['quality'][s]['sweep'][i]['delta'] * 100:+.2f}" for s in seeds]
        lines.append(f"| {point['tokens']} | {point['steps']} | " + " | ".join(cells) + " |")
    cost = doc["cost"]
    lines += [
        "",
        f"Cost per query, in process, batch 1, no cache, embedding included ({cost['model']}, gallery "
        f"{cost['gallery']}, median of {cost['queries']} alternated queries, load {cost['load_average'][0]:.1f}):",
        "",
        "| mode | ms | × intra |",
        "|---|---|---|",
    ]
    for name, ms in cost["ms"].items():
        lines.append(f"| {name} | {ms:.1f} | {cost['ratio_to_intra'][name]:.2f} |")
    return "\n".join(lines) + "\n"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=480, help="items per synthetic seed")
    parser.add_argument("--tune-seed", type=int, default=11)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1001, 1002])
    parser.add_argument("--sweep-steps", type=int, nargs="+", default=[5, 10, 17, 25, 50])
    parser.add_argument("--sweep-tokens", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cost-gallery", type=int, default=200)
    parser.add_argument("--cost-queries", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out")
    return parser.parse_args()


if __name__ == "__main__":
    main()

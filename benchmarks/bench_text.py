"""Text queries (issue 15): `cgx eval --task texts` with the defaults on held-out seeds (quality, wall and CPU
time), the text-to-image task, and the cost of each text mode against an intra text query.

Quality (crossgap-small): `evaluate` with default settings on held-out synthetic seeds (never used for the
defaults, which were chosen on development seed 21): every text mode, each through the engine a query is
served by, the OVI sweep when asked. Wall time is reported beside the process's CPU time and the load
average: on a shared machine the CPU time is the figure that transfers. Cost (ViT-B-32 random weights:
the real architecture's compute): in-process, one text query at batch 1 and per query at batch 32, intra
(embed + search) and each text mode alternated so the machine's noise falls alike; ratios of medians.

    python -m benchmarks.bench_text --seeds 2001 --n 480                  # the results/text.md run
    python -m benchmarks.bench_text --seeds 2001 --n 96 --cost-rounds 3   # quick look
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep, as in the CLI

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import machine_info, write_json
from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import generate
from crossgap_index.evaluation.protocol import evaluate
from crossgap_index.inversion.inverter import InverterConfig


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads)
    doc = {"machine": machine_info(), "settings": vars(args), "quality": {}, "cost": {}}
    for seed in args.seeds:
        tasks = ["texts"] + (["text-to-image"] if args.text_to_image else [])
        cpu0, wall0, load0 = _cpu(), time.perf_counter(), os.getloadavg()
        result = evaluate(
            f"synthetic:{seed}:{args.n}",
            "crossgap-small",
            device="cpu",
            tasks=tasks,
            sweep_steps=args.sweep_steps,
            sweep_patches=args.sweep_patches or [None],
            sweep_lrs=args.sweep_lrs,
        )
        doc["quality"][str(seed)] = {
            "wall_s": time.perf_counter() - wall0,
            "cpu_s": _cpu() - cpu0,
            "load_before": load0,
            "load_after": os.getloadavg(),
            "timings": result.timings,
            "tasks": {
                name: {
                    "intra_map": task.modes["intra"].metrics["map"],
                    "relevant": task.relevant,
                    "queries": task.n_queries,
                    "modes": {
                        mode: {
                            "map": m.metrics["map"],
                            "delta": m.map_vs_intra,
                            "se": m.map_vs_intra_se,
                            "ms_b1": m.ms_per_query,
                            "ms_b32": m.ms_per_query_batch,
                        }
                        for mode, m in task.modes.items()
                    },
                }
                for name, task in result.tasks.items()
            },
            "sweep": [dataclasses.asdict(p) for p in result.sweep],
        }
        print(f"seed {seed}: {doc['quality'][str(seed)]['wall_s']:.0f} s wall", flush=True)
        write_json(Path(args.out), doc)
    if args.cost_rounds:
        doc["cost"] = _cost(args)
    path = write_json(Path(args.out), doc)
    print(_table(doc))
    print(f"wrote {path}")


def _cost(args) -> dict:
    """ms per text query on ViT-B-32 (random weights), batch 1 and batch 32, intra and each text mode."""
    items = generate(args.cost_seed, 64)
    texts = sorted({c for item in items for c in item.captions})
    with tempfile.TemporaryDirectory() as tmp:
        index = CrossGapIndex.create(Path(tmp) / "idx", model="ViT-B-32/random", device="cpu", precision="fp32")
        index.add_texts(texts)
        index.train_inverter(InverterConfig(direction="ovi", n_tokens=None, steps=2, batch_size=16), modality="text")
        modes = ["intra", "span", "inverter", "warm", "cross"]
        needed = 1 + args.cost_rounds * len(modes) * 33  # every timed query is a new one: no cache can answer it
        queries = [f"a photo of query {i} {texts[i % len(texts)]}" for i in range(needed)]
        times: dict[str, dict[int, list[float]]] = {m: {1: [], 32: []} for m in modes}
        for mode in modes:  # warm-up: loads the inverter, fits maps
            index.search(text=queries[0], target="texts", k=10, mode=mode, use_cache=False)
        used = 1
        for _ in range(args.cost_rounds):
            for mode in modes:
                for batch in (1, 32):
                    chunk = [{"text": q} for q in queries[used : used + batch]]
                    used += batch
                    begin = time.perf_counter()
                    index.search_batch(chunk, target="texts", k=10, mode=mode, use_cache=False)
                    times[mode][batch].append((time.perf_counter() - begin) * 1e3 / batch)
        index.close()
    out = {m: {str(b): float(np.median(v)) for b, v in by.items()} for m, by in times.items()}
    for m in modes:
        for b in ("1", "32"):
            out[m][f"x_intra_{b}"] = out[m][b] / out["intra"][b]
    return out


def _table(doc: dict) -> str:
    lines = []
    for seed, q in doc["quality"].items():
        lines.append(
            f"seed {seed}: wall {q['wall_s']:.0f} s, CPU {q['cpu_s']:.0f} s, load {q['load_before'][0]:.1f} -> "
            f"{q['load_after'][0]:.1f}"
        )
        for task, t in q["tasks"].items():
            lines.append(f"| {task} (intra {t['intra_map'] * 100:.2f}) | ΔmAP ± se | mAP | ms b1 | ms b32 |")
            for mode, m in t["modes"].items():
                se = f" ± {m['se'] * 100:.2f}" if m["se"] is not None else ""
                lines.append(
                    f"| {mode} | {m['delta'] * 100:+.2f}{se} | {m['map'] * 100:.2f} | {m['ms_b1']:.1f} | "
                    f"{m['ms_b32']:.1f} |"
                )
        for p in q["sweep"]:
            lines.append(
                f"sweep {p['task']} P={p['patches']} lr={p['lr']} steps={p['steps']}: {p['map_vs_intra'] * 100:+.2f}"
            )
    for mode, c in doc.get("cost", {}).items():
        lines.append(
            f"cost {mode}: b1 {c['1']:.1f} ms ({c['x_intra_1']:.2f}x), b32 {c['32']:.1f} ms ({c['x_intra_32']:.2f}x)"
        )
    return "\n".join(lines)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[2001])
    parser.add_argument("--n", type=int, default=480)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep-steps", type=int, nargs="*", default=[])
    parser.add_argument("--sweep-patches", type=int, nargs="*", default=[])
    parser.add_argument("--sweep-lrs", type=float, nargs="*", default=[])
    parser.add_argument("--text-to-image", action="store_true")
    parser.add_argument("--cost-rounds", type=int, default=5)
    parser.add_argument("--cost-seed", type=int, default=101)
    parser.add_argument("--out", default="benchmarks/out/text.json")
    return parser.parse_args()


if __name__ == "__main__":
    main()

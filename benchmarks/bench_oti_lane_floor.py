"""Issue 26 item 1 for ViT-B-32 on the CPU: how far a batch-1 OTI step is from its floor, and what the bf16 lane costs.

A lone bf16 OTI query runs as a lane of 8 rows (inversion/optimise.py ``OTI_LANE``), so that its rounding is the same
whatever batch it comes in (batch = solo). This measures, alternated run by run in one process, eager:

* ``lane 8 (shipped)``: one query in bf16, padded to its lane, on 1 and on 2 threads;
* ``1 row (what-if)``: the same query with the lane set to 1 (``OTI_LANE`` patched): the cost of one query's own rows,
  which the shipped path cannot run because it breaks batch = solo (counted below);
* ``fp32 1 row``: precision fp32 (no lanes; batch differences ~1e-7).

Beside them: the text tower's weight bytes, which every step reads twice (forward, and the backward to the input), and
the bandwidth that reading implies at each figure. Then 32 queries inverted with lane 1 against lane 8: how many
queries' results differ, and by how much (the reason the lane stays).

    python -m benchmarks.bench_oti_lane_floor --model ViT-B-32/random --steps 8 --rounds 5
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep, as in the CLI

import argparse
import statistics
from pathlib import Path

import numpy as np

from benchmarks.bench_oti_default import step_ms
from benchmarks.machine import machine_info, write_json
from crossgap_index.inversion import InversionConfig, optimise, oti
from crossgap_index.models import load_model

RESULTS = Path(__file__).parent / "results"


def with_lane(lane: int, run):
    """``run()`` with bf16 OTI lanes of ``lane`` rows (the shipped value restored after)."""
    shipped = optimise.OTI_LANE
    optimise.OTI_LANE = lane
    try:
        return run()
    finally:
        optimise.OTI_LANE = shipped


def lane_disagreement(loaded, steps: int, queries: int = 32) -> dict:
    """``queries`` random targets inverted in bf16 with lanes of 1 and of 8: queries whose features differ, and the
    largest difference."""
    rng = np.random.default_rng(0)
    targets = rng.standard_normal((queries, loaded.embed_dim)).astype(np.float32)
    config = InversionConfig(oti_steps=steps, precision="bf16")
    seeds = list(range(queries))
    one = with_lane(1, lambda: oti(loaded, targets, config, seeds))
    eight = oti(loaded, targets, config, seeds)
    gap = np.abs(one - eight).max(axis=1)
    return {"queries": queries, "steps": steps, "differing": int((gap > 0).sum()), "max_abs": float(gap.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32/random")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="oti-lane-floor")
    args = parser.parse_args()
    loaded = load_model(args.model, "cpu")
    tower_bytes = sum(p.numel() for p in loaded.model.transformer.parameters())
    paths = {}
    for threads in (1, 2):
        bf16 = InversionConfig(oti_steps=args.steps, batch_size=1, precision="bf16", cpu_threads=threads)
        fp32 = InversionConfig(oti_steps=args.steps, batch_size=1, precision="fp32", cpu_threads=threads)
        paths[f"lane 8 (shipped), {threads} thr"] = (lambda c=bf16: step_ms(loaded, 1, c), 2)
        paths[f"1 row (what-if), {threads} thr"] = (lambda c=bf16: with_lane(1, lambda: step_ms(loaded, 1, c)), 2)
        paths[f"fp32 1 row, {threads} thr"] = (lambda c=fp32: step_ms(loaded, 1, c), 4)
    for run, _ in paths.values():
        run()  # warm-up: setups, first-touch of the bf16 copy
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, (run, _) in paths.items():
            samples[name].append(run())
    info = machine_info()
    info["load_average_at_end"] = os.getloadavg()
    rows = []
    for name, (_, bytes_per_param) in paths.items():
        median = statistics.median(samples[name])
        read = 2 * tower_bytes * bytes_per_param  # forward, and the backward to the input
        rows.append(
            {"path": name, "ms_per_step": median, "min_ms": min(samples[name]), "GB_per_s": read / median / 1e6}
        )
    agreement = lane_disagreement(loaded, max(args.steps, 10))
    settings = {"model": args.model, "steps": args.steps, "rounds": args.rounds, "batch": 1}
    payload = {
        "machine": info,
        "settings": settings,
        "text_tower_params": tower_bytes,
        "rows": rows,
        "samples_ms": samples,
        "lane_1_vs_8": agreement,
    }
    write_json(RESULTS / f"{args.name}.json", payload)
    shipped = statistics.median(samples["lane 8 (shipped), 2 thr"])
    lines = [
        f"# One OTI query on the CPU: the bf16 lane against one query's own rows ({args.model})",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, OMP_WAIT_POLICY "
        f"{os.environ.get('OMP_WAIT_POLICY')}, load {info['load_average_at_start'][0]:.1f} -> "
        f"{info['load_average_at_end'][0]:.1f}; {settings}. ms per step of one query, median of the rounds (min), "
        f"paths alternated run by run; the text tower holds {tower_bytes / 1e6:.1f} M weights, read twice a step "
        "(bf16 2 bytes each, fp32 4): GB/s is that reading over the step's time.",
        "",
        "| path | ms/step (min) | lane 8 on 2 threads / this | weight GB/s |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['path']} | {r['ms_per_step']:.1f} ({r['min_ms']:.1f}) | {shipped / r['ms_per_step']:.2f}x | "
        f"{r['GB_per_s']:.1f} |"
        for r in rows
    ]
    lines += [
        "",
        f"Lane 1 against lane 8, {agreement['queries']} queries, {agreement['steps']} steps: "
        f"{agreement['differing']} queries' features differ, by up to {agreement['max_abs']:.4f} (so a lone query "
        "run as its own rows would not equal the same query in a batch).",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

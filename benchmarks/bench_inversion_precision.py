"""OTI and OVI on the CPU in fp32 against bf16, per model and batch: the evidence for inversion's precision ``auto``.

Each run inverts ``batch`` random unit targets for ``--steps`` steps (default 25, as served) on the eager fast path
(no compile) and is timed whole, setup included, so bf16's lanes (inversion/optimise.py: OTI runs chunks of 8 rows,
OVI of 1, one after another) and the per-run setup are paid as a query pays them; the figure is the run's time divided
by its steps (one untimed warm-up run per precision first). fp32 and bf16 alternate run by run, order swapped every
round; the ratio is fp32 time / bf16 time (> 1: bf16 faster), median over rounds.

    python -m benchmarks.bench_inversion_precision --models crossgap-small ViT-B-32/random --batches 1 8 32
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep, as in the CLI

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info, write_json
from crossgap_index.inversion import InversionConfig, oti, ovi
from crossgap_index.models import load_model

RESULTS = Path(__file__).parent / "results"
METHODS = {"oti": oti, "ovi": ovi}


def timed_run(loaded, method: str, batch: int, precision: str, steps: int) -> float:
    """Seconds of one inversion of ``batch`` random unit targets, ``steps`` steps, eager fast path."""
    rng = np.random.default_rng(batch)
    targets = rng.standard_normal((batch, loaded.embed_dim)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    config = InversionConfig(oti_steps=steps, ovi_steps=steps, precision=precision, compile=False, batch_size=batch)
    start = time.perf_counter()
    METHODS[method](loaded, targets, config, list(range(batch)))
    return time.perf_counter() - start


def measure(name: str, methods: list[str], batches: list[int], steps: int, rounds: int) -> list[dict]:
    loaded = load_model(name, "cpu")
    rows = []
    for method in methods:
        for batch in batches:
            load_start = os.getloadavg()
            for precision in ("bf16", "fp32"):
                timed_run(loaded, method, batch, precision, 1)  # warm-up: casts, allocations
            times: dict[str, list[float]] = {"bf16": [], "fp32": []}
            for r in range(rounds):
                for precision in ("bf16", "fp32") if r % 2 == 0 else ("fp32", "bf16"):
                    times[precision].append(timed_run(loaded, method, batch, precision, steps) / steps * 1e3)
            ratios = [f / b for f, b in zip(times["fp32"], times["bf16"], strict=True)]
            row = {
                "model": name,
                "weight_mib": loaded.weight_bytes / 2**20,
                "method": method,
                "batch": batch,
                "bf16_ms_per_step": statistics.median(times["bf16"]),
                "fp32_ms_per_step": statistics.median(times["fp32"]),
                "fp32_over_bf16": statistics.median(ratios),
                "ratio_range": [min(ratios), max(ratios)],
                "auto_picks": InversionConfig().precision_on(loaded),
                "load_start": load_start,
                "load_end": os.getloadavg(),
                "times_ms": times,
            }
            print(
                f"{name} {method} batch {batch}: bf16 {row['bf16_ms_per_step']:.1f}, fp32 {row['fp32_ms_per_step']:.1f}"
                f" ms/step, fp32/bf16 {row['fp32_over_bf16']:.2f}; auto picks {row['auto_picks']}",
                flush=True,
            )
            rows.append(row)
    return rows


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# OTI / OVI on the CPU: fp32 against bf16 per model and batch (the evidence for inversion's `auto`)",
        "",
        f"{m.get('cpu', 'CPU')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}; settings {doc['settings']}.",
        "Eager fast path, whole runs timed (bf16 lanes paid as a query pays them), fp32 and bf16 alternated; ms per"
        " step of the whole batch (run time / steps, setup included), median over rounds; fp32/bf16 > 1 means bf16 is"
        " faster ([min-max] over rounds).",
        "",
        "| model | fp32 weights MiB | method | batch | bf16 ms/step | fp32 ms/step | fp32/bf16 | auto picks | load |",
        "|---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for r in doc["rows"]:
        low, high = r["ratio_range"]
        lines.append(
            f"| {r['model']} | {r['weight_mib']:.1f} | {r['method']} | {r['batch']} | {r['bf16_ms_per_step']:.1f} | "
            f"{r['fp32_ms_per_step']:.1f} | **{r['fp32_over_bf16']:.2f}** [{low:.2f}-{high:.2f}] | {r['auto_picks']} | "
            f"{r['load_start'][0]:.1f} -> {r['load_end'][0]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["crossgap-small", "ViT-B-32/random"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="inversion-precision")
    args = parser.parse_args()
    rows = [row for name in args.models for row in measure(name, args.methods, args.batches, args.steps, args.rounds)]
    doc = {"machine": machine_info(), "settings": vars(args), "rows": rows}
    write_json(RESULTS / f"{args.name}.json", doc)
    (RESULTS / f"{args.name}.md").write_text(markdown(doc))


if __name__ == "__main__":
    main()

"""Issue 26 item 1 on the CPU: the OTI step as the default now runs it against the fast path before this pass.

Before: ``auto`` inverted in bf16 wherever the CPU runs it natively, on the process's two threads (OpenMP waiting
passively kept every step on them). Now: ``auto`` inverts a small model in fp32 (precision.py) and a step below
``SMALL_STEP_FLOPS`` runs on one thread (inversion/threads.py). The "before" side is that configuration asked for
by name (``precision="bf16"``, ``cpu_threads=2``) in the same process, so both sides run in one run, alternated run
by run; eager (no compile) both. ms per step is of the whole batch, the first step (with the setup) left out.

    python -m benchmarks.bench_oti_default --models crossgap-small ViT-B-32/random --batches 1 32
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
from crossgap_index.inversion import InversionConfig, oti
from crossgap_index.models import load_model

RESULTS = Path(__file__).parent / "results"


def step_ms(loaded, batch: int, config: InversionConfig) -> float:
    """ms of one OTI step of the whole batch of ``batch`` random unit targets: the mean time between progress calls
    (the first, with the setup, left out) times the calls per step (bf16 runs the batch in lanes of 8, one after
    another, and reports each lane's steps)."""
    rng = np.random.default_rng(batch)
    targets = rng.standard_normal((batch, loaded.embed_dim)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    stamps: list[float] = []
    oti(loaded, targets, config, list(range(batch)), progress=lambda step, loss: stamps.append(time.perf_counter()))
    per_call = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return per_call * len(stamps) / config.oti_steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["crossgap-small", "ViT-B-32/random"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="oti-default")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        loaded = load_model(name, "cpu")
        for batch in args.batches:
            sides = {
                "before": InversionConfig(oti_steps=args.steps, batch_size=batch, precision="bf16", cpu_threads=2),
                "now": InversionConfig(oti_steps=args.steps, batch_size=batch),
            }
            load_start = os.getloadavg()
            for config in sides.values():
                step_ms(loaded, batch, InversionConfig(**{**config.__dict__, "oti_steps": 2}))  # warm-up
            times: dict[str, list[float]] = {side: [] for side in sides}
            for r in range(args.rounds):
                for side in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                    times[side].append(step_ms(loaded, batch, sides[side]))
            before, now = statistics.median(times["before"]), statistics.median(times["now"])
            row = {
                "model": name,
                "batch": batch,
                "now_precision": sides["now"].precision_on(loaded),
                "before_ms": before,
                "now_ms": now,
                "before_over_now": before / now,
                "times_ms": times,
                "load_start": load_start,
                "load_end": os.getloadavg(),
            }
            print(f"{name} b{batch}: before {before:.1f} ms/step, now {now:.1f} ({row['now_precision']}), "
                  f"{before / now:.2f}x", flush=True)  # fmt: skip
            rows.append(row)
    doc = {"machine": machine_info(), "settings": vars(args), "rows": rows}
    write_json(RESULTS / f"{args.name}.json", doc)
    lines = [
        "# OTI step on the CPU: the default now against the fast path before issue 26's third pass",
        "",
        f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores, torch {doc['machine']['torch']}, OMP_WAIT_POLICY "
        f"PASSIVE; settings {doc['settings']}. Before: bf16 on two threads; now: `auto` (fp32 for a small model) with "
        "the one-thread rule for small steps. Eager both, alternated run by run; ms per step of the whole batch, "
        "median over rounds.",
        "",
        "| model | batch | before ms/step | now ms/step (precision) | before / now | load |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['before_ms']:.1f} | {r['now_ms']:.1f} ({r['now_precision']}) | "
            f"**{r['before_over_now']:.2f}x** | {r['load_start'][0]:.1f} -> {r['load_end'][0]:.1f} |"
        )
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

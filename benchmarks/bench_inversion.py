"""OTI / OVI speed: fast path vs the oracle, per-query latency at batch 1, throughput at batch 64.

Randomly initialised ViT-B-32 (open_clip), CPU always and CUDA when present. Full oracle runs
(150 OTI / 1000 OVI steps at batch 64) take far too long on a small CPU, so each run does
``--warmup`` untimed + a few timed optimisation steps through the public ``oti`` / ``ovi``
functions, timed step by step from the progress callback, and reports:
  * measured: seconds per step, the mean of the best run and the fastest single step (on a
    shared machine the minimum is the least disturbed estimate, the mean what a user sees);
  * measured: fixed cost per call (setup before the first step + the final forward);
  * extrapolated: fixed + default steps x per-step, i.e. one whole inversion, labelled as such.
Fast and oracle runs alternate so that a change in machine load hits both. Timings never go
into assertions; this script only reports.

    python benchmarks/bench_inversion.py --threads 2 --out benchmarks/out/inversion.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import torch

from crossgap_index.inversion import InversionConfig, oti, oti_reference, ovi, ovi_reference
from crossgap_index.models.factory import LoadedModel, ModelSpec

ARCH = "ViT-B-32"
DEFAULT_STEPS = {"oti": InversionConfig().oti_steps, "ovi": InversionConfig().ovi_steps}
PATHS = {("oti", "fast"): oti, ("oti", "oracle"): oti_reference, ("ovi", "fast"): ovi, ("ovi", "oracle"): ovi_reference}


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {
        "machine": _machine(),
        "model": f"{ARCH}, open_clip random init (seed 0), fp32 weights",
        "settings": vars(args),
        "results": [],
    }
    for device in devices:
        loaded = _model(device)
        for method in args.methods:
            for batch in args.batches:
                report["results"] += _measure(loaded, method, batch, args)
    report["summary"] = _summary(report["results"])
    report["machine"]["load_average_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    _print(report)
    print(f"\nwritten: {out}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/out/inversion.json")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--methods", nargs="+", default=["oti", "ovi"], choices=["oti", "ovi"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    parser.add_argument("--timed", type=int, default=3, help="timed steps per run at batch > 1")
    parser.add_argument("--timed-batch1", type=int, default=15, help="timed steps per run at batch 1")
    parser.add_argument("--repeats", type=int, default=2, help="runs per path and configuration")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path (CUDA only)")
    parser.add_argument(
        "--devices", nargs="+", choices=["cpu", "cuda"], help="where to measure [default: cpu, and cuda when present]"
    )
    return parser.parse_args()


def _machine() -> dict:
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    cpu = names[0] if names else cpu
    machine = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "open_clip": open_clip.__version__,
        "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "GOMP_"))},
        "load_average_start": os.getloadavg(),
    }
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    return machine


def _model(device: str) -> LoadedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(ARCH, device=device).eval().requires_grad_(False)
    spec = ModelSpec("pretrained", ARCH, "random-init")
    return LoadedModel(spec, model, None, open_clip.get_tokenizer(ARCH), torch.device(device))


def _measure(loaded: LoadedModel, method: str, batch: int, args: argparse.Namespace) -> list[dict]:
    """Alternate fast / oracle runs ``repeats`` times; the first ``warmup`` steps of each run are untimed."""
    targets = np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32)
    seeds = list(range(batch))
    timed = args.timed_batch1 if batch == 1 else args.timed
    steps = args.warmup + timed
    configs = {
        "fast": InversionConfig(oti_steps=steps, ovi_steps=steps, batch_size=batch, compile=args.compile),
        "oracle": InversionConfig(oti_steps=steps, ovi_steps=steps, batch_size=batch, fast=False),
    }
    runs: dict[str, list[dict]] = {"fast": [], "oracle": []}
    for _ in range(args.repeats):
        for path, config in configs.items():
            run = _timed_run(PATHS[method, path], loaded, targets, config, seeds, args.warmup)
            runs[path].append(run)
            print(
                f"  {loaded.device.type} {method} {path} batch {batch}: {run['mean_s'] * 1e3:.1f} ms/step", flush=True
            )
    results = []
    full = DEFAULT_STEPS[method]
    for path, config in configs.items():
        best = min(runs[path], key=lambda run: run["mean_s"])
        step_min = min(t for run in runs[path] for t in run["step_times_s"])
        fixed = min(run["fixed_s"] for run in runs[path])
        results.append(
            {
                "device": loaded.device.type,
                "method": method,
                "path": path,
                "batch": batch,
                "threads": torch.get_num_threads(),
                "precision": config.precision_on(loaded),
                "compile": config.compiles(loaded.device),
                "steps_per_run": steps,
                "timed_steps_per_run": timed,
                "measured_step_s_mean": best["mean_s"],
                "measured_step_s_min": step_min,
                "measured_fixed_s": fixed,
                "measured_step_times_s": [run["step_times_s"] for run in runs[path]],
                "extrapolated_full_steps": full,
                "extrapolated_full_s_from_mean": fixed + full * best["mean_s"],
                "extrapolated_full_s_from_min": fixed + full * step_min,
                "config": asdict(config),
            }
        )
    return results


def _timed_run(
    fn, loaded: LoadedModel, targets: np.ndarray, config: InversionConfig, seeds: list[int], warmup: int
) -> dict:
    """Per-step times from the progress callback; fixed = setup before step 1 + the final forward."""
    stamps: list[float] = []
    start = time.perf_counter()
    fn(loaded, targets, config, seeds, progress=lambda step, loss: stamps.append(time.perf_counter()))
    end = time.perf_counter()
    steps = np.diff([start, *stamps])  # steps[0] also holds the setup
    timed = steps[max(warmup, 1) :]
    return {
        "mean_s": float(np.mean(timed)),
        "step_times_s": [float(t) for t in timed],
        "fixed_s": float(steps[0] - np.min(timed) + (end - stamps[-1])),
    }


def _summary(results: list[dict]) -> list[dict]:
    """Oracle / fast ratios per device, method and batch (> 1 means the fast path is faster)."""
    rows = []
    for fast in (r for r in results if r["path"] == "fast"):
        same = ("device", "method", "batch")
        oracle = next(r for r in results if r["path"] == "oracle" and all(r[k] == fast[k] for k in same))
        rows.append(
            {
                **{k: fast[k] for k in same},
                "speedup_per_step_mean": oracle["measured_step_s_mean"] / fast["measured_step_s_mean"],
                "speedup_per_step_min": oracle["measured_step_s_min"] / fast["measured_step_s_min"],
                "speedup_full_run_from_mean": oracle["extrapolated_full_s_from_mean"]
                / fast["extrapolated_full_s_from_mean"],
                "speedup_full_run_from_min": oracle["extrapolated_full_s_from_min"]
                / fast["extrapolated_full_s_from_min"],
            }
        )
    return rows


def _print(report: dict) -> None:
    m, s = report["machine"], report["settings"]
    print(
        f"\nmachine: {m['cpu']}, {m['logical_cores']} logical cores, torch {m['torch']}, "
        f"{m['torch_threads']} threads, load average {_load(m['load_average_start'])} -> "
        f"{_load(m['load_average_end'])} (1/5/15 min)"
    )
    print(f"model: {report['model']}")
    print(
        f"settings: per run {s['warmup']} untimed + {s['timed_batch1']} (batch 1) / {s['timed']} (larger) "
        f"timed steps, {s['repeats']} runs per path, fast and oracle alternating\n"
    )
    header = (
        f"{'device':6} {'method':6} {'path':6} {'batch':>5} {'precision':>9} {'ms/step':>9} {'min ms':>9} "
        f"{'fixed s':>7} {'steps':>5} {'full s':>9} {'full s':>9} {'queries/s':>9}"
    )
    units = " " * 37 + f"{'mean':>9} {'min step':>9}" + " " * 15 + f"{'(mean)':>9} {'(min)':>9} {'(mean)':>9}"
    print(header + "\n" + units)
    print("-" * len(header))
    for r in report["results"]:
        print(
            f"{r['device']:6} {r['method']:6} {r['path']:6} {r['batch']:>5} {r['precision']:>9} "
            f"{r['measured_step_s_mean'] * 1e3:>9.1f} {r['measured_step_s_min'] * 1e3:>9.1f} "
            f"{r['measured_fixed_s']:>7.2f} {r['extrapolated_full_steps']:>5} "
            f"{r['extrapolated_full_s_from_mean']:>9.1f} {r['extrapolated_full_s_from_min']:>9.1f} "
            f"{r['batch'] / r['extrapolated_full_s_from_mean']:>9.3f}"
        )
    print(
        "\nms/step (mean of the best run, and the fastest single step) and fixed s are measured; full s "
        "(one whole inversion: fixed + steps x per-step; batch 1: the per-query latency) and queries/s "
        f"are extrapolated to the default steps (OTI {DEFAULT_STEPS['oti']}, OVI {DEFAULT_STEPS['ovi']})."
    )
    print(
        f"\n{'device':6} {'method':6} {'batch':>5} {'speedup (mean)':>15} {'speedup (min)':>14} {'full run (mean)':>16}"
    )
    for row in report["summary"]:
        print(
            f"{row['device']:6} {row['method']:6} {row['batch']:>5} {row['speedup_per_step_mean']:>14.1f}x "
            f"{row['speedup_per_step_min']:>13.1f}x {row['speedup_full_run_from_mean']:>15.1f}x"
        )


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()

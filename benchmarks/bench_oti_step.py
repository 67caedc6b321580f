"""OTI / OVI step cost on the CPU: the compiled step (crossgap_index/inversion/compiled.py) against the eager fast
path, the thread rule (crossgap_index/inversion/threads.py) against today's path, and the text evaluation's CPU
seconds with and without the rule.

``--compare compile`` (the default), three paths alternated run by run in one process, all on the fast feature
functions in the precision asked for (``auto``: what it picks here):
  * ``eager``: the fast path as a one-shot CLI query runs it (``compile=False``);
  * ``fused``: the same eager step with AdamW's fused kernel (no compilation);
  * ``compiled``: ``compile=True``: forward, loss and backward compiled by inductor, AdamW fused.
Each path's first run is a warm-up, not timed; for ``compiled`` it includes compiling that shape, reported apart
(``compile_s``: the first run's wall time less its steps at the timed median). The process imports crossgap_index
before torch, so OpenMP's threads wait passively, as in the CLI and the server.

``--compare precision``: ``eager`` and ``compiled`` as above, and both again in fp32 (``eager-fp32``,
``compiled-fp32``) whatever ``--precisions`` says: what a step costs in each precision, side by side (the row's
GFLOP/step is that of ``--precisions``).

``--compare threads``: the rule applies where OpenMP's threads spin (``OMP_WAIT_POLICY=ACTIVE``, or unset in a
script that imports torch before crossgap_index); run it once with ``OMP_WAIT_POLICY=ACTIVE`` and once with
``PASSIVE`` (where both paths are one and the same: the pair then shows the noise). Two paths, alternated run by
run in one process:
  * ``today``: every step on the process's intra-op threads (the rule switched off: ``SMALL_STEP_FLOPS = 0``);
  * ``fast``: the rule (steps below ``SMALL_STEP_FLOPS`` on one thread).
Both use the fast feature functions and the precision ``auto`` picks here. Reported per (model, method, batch):
wall and CPU ms per step (median and minimum over the timed steps of every run), ms per query, the arithmetic one
step does (torch's FlopCounterMode: forward and backward) and the CPU's nominal peak beside it. ``--text-eval N``
also runs ``evaluate(synthetic:SEED:N, crossgap-small, tasks=[texts])`` once per path and reports its CPU seconds,
stage timings and mAP. Timings never go into assertions.

    python -m benchmarks.bench_oti_step --models crossgap-small --methods oti --precisions auto fp32 \
        --out-json benchmarks/results/oti-step-compile.json --out-md benchmarks/results/oti-step-compile.md
    OMP_WAIT_POLICY=ACTIVE python -m benchmarks.bench_oti_step --compare threads --batches 1 8 32 --text-eval 96
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as crossgap_index's entry points do

import argparse
import contextlib
import resource
import statistics
import time
from pathlib import Path

import numpy as np
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import machine_info, write_json
from crossgap_index.inversion import InversionConfig, oti, ovi
from crossgap_index.inversion import compiled as compiled_step
from crossgap_index.inversion import threads as thread_rule
from crossgap_index.models.factory import LoadedModel, load_model

METHODS = {"oti": oti, "ovi": ovi}
MODELS = {"crossgap-small": "crossgap-small", "ViT-B-32": "ViT-B-32::random"}
FP32_FLOP_PER_CYCLE = 32  # per core: two 256-bit FMA pipes (AVX-512 issues as two halves on this EPYC)
RULE = thread_rule.SMALL_STEP_FLOPS
PATHS = {
    "compile": ("eager", "fused", "compiled"),
    "precision": ("eager", "compiled", "eager-fp32", "compiled-fp32"),
    "threads": ("today", "fast"),
}
EAGER_OPTIMIZER = compiled_step.optimizer


def main() -> None:
    args = _parse()
    machine = {**machine_info(), "nominal_peak_gflops": _nominal_peak()}
    machine["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "unset (spinning)")
    doc = {"machine": machine, "settings": vars(args)}
    doc["steps"] = []
    for name in args.models:
        loaded = load_model(MODELS[name], "cpu")
        for precision in args.precisions:
            for method in args.methods:
                for batch in args.batches:
                    if (name, method) == ("ViT-B-32", "ovi") and batch > args.vit_ovi_max_batch:
                        continue
                    doc["steps"].append(_measure(loaded, name, method, batch, precision, args))
                    write_json(args.out_json, doc)
    if args.text_eval:
        doc["text_eval"] = [_text_eval(path, args) for path in ("today", "fast")]
    doc["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(args.out_json, doc)
    Path(args.out_md).write_text(_markdown(doc))
    print(_markdown(doc))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", choices=list(PATHS), default="compile")
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=2, help="runs per path, alternated")
    parser.add_argument("--vit-ovi-max-batch", type=int, default=8, help="ViT-B-32 OVI: 17 GFLOP a query-step")
    parser.add_argument("--text-eval", type=int, default=0, help="N of the text evaluation (0: not run)")
    parser.add_argument("--text-seed", type=int, default=2001)
    parser.add_argument("--out-json", default="benchmarks/results/oti-step.json")
    parser.add_argument("--out-md", default="benchmarks/results/oti-step.md")
    return parser.parse_args()


def _nominal_peak() -> dict:
    mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines() if "cpu MHz" in line]
    fp32 = (os.cpu_count() or 1) * (max(mhz) if mhz else 0.0) * 1e-3 * FP32_FLOP_PER_CYCLE
    return {"fp32": round(fp32, 1), "bf16": round(2 * fp32, 1), "basis": "cores x MHz x 32 FLOP/cycle (nominal)"}


def _config(batch: int, steps: int, precision: str = "auto", path: str = "eager") -> InversionConfig:
    """The config of ``path``: ``compiled*`` compile, ``*-fp32`` run in fp32 whatever ``precision`` says."""
    return InversionConfig(
        oti_steps=steps,
        ovi_steps=steps,
        batch_size=batch,
        precision="fp32" if path.endswith("-fp32") else precision,
        compile=path.startswith("compiled"),
    )


@contextlib.contextmanager
def _path(path: str):
    """The process set up for ``path``: the thread rule on or off, AdamW fused or torch's default."""
    thread_rule.SMALL_STEP_FLOPS = 0.0 if path == "today" else RULE
    if path == "fused":
        compiled_step.optimizer = lambda params, lr, decay, fused: EAGER_OPTIMIZER(params, lr, decay, True)
    try:
        yield
    finally:
        thread_rule.SMALL_STEP_FLOPS = RULE
        compiled_step.optimizer = EAGER_OPTIMIZER


def _step_flops(loaded: LoadedModel, method: str, batch: int, targets: np.ndarray, precision: str) -> float:
    """One step's FLOPs: a 2-step run minus a 1-step run (the final forward cancels)."""
    counts = []
    for steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            METHODS[method](loaded, targets, _config(batch, steps, precision), list(range(batch)))
        counts.append(counter.get_total_flops())
    return float(counts[1] - counts[0])


def _measure(loaded: LoadedModel, name: str, method: str, batch: int, precision: str, args) -> dict:
    dim = int(loaded.model.text_projection.shape[1])
    targets = np.random.default_rng(0).standard_normal((batch, dim)).astype(np.float32)
    paths = PATHS[args.compare]
    runs: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
    first_run: dict[str, float] = {}
    for repeat in range(args.repeats + 1):  # run 0 of each path: its warm-up (and compilation), not timed
        for path in paths:
            marks: list[tuple[float, float]] = []

            def mark(step: int, loss: float, marks: list = marks) -> None:
                marks.append((time.perf_counter(), time.process_time()))

            config = _config(batch, args.steps, precision, path)
            start = time.perf_counter()
            with _path(path):
                METHODS[method](loaded, targets, config, list(range(batch)), progress=mark)
            if repeat == 0:
                first_run[path] = time.perf_counter() - start
                continue
            chunks = len(marks) // args.steps  # bf16 lanes: one chunk after another, each its own steps
            for c in range(chunks):
                part = marks[c * args.steps : (c + 1) * args.steps]
                runs[path] += [(b[0] - a[0], b[1] - a[1]) for a, b in zip(part, part[1:], strict=False)]
    flops = _step_flops(loaded, method, batch, targets, precision)
    resolved = _config(batch, 1, precision).precision_on(loaded)
    out = {"model": name, "method": method, "batch": batch, "precision": resolved, "step_flops": flops}
    for path, times in runs.items():
        in_bf16 = _config(batch, 1, precision, path).precision_on(loaded) == "bf16"
        lanes = -(-batch // _lane(method)) if in_bf16 else 1
        wall, cpu = [t[0] * 1e3 for t in times], [t[1] * 1e3 for t in times]
        step_ms = statistics.median(wall) * lanes
        out[path] = {
            "ms_per_step_median": step_ms,
            "ms_per_step_min": min(wall) * lanes,
            "cpu_ms_per_step_median": statistics.median(cpu) * lanes,
            "ms_per_query_step_median": step_ms / batch,
            "gflops_achieved_median": flops / (step_ms * 1e-3) / 1e9,
            "first_run_s": first_run[path],
            "compile_s": max(0.0, first_run[path] - args.steps * step_ms * 1e-3),
        }
    base = out[paths[0]]["ms_per_step_median"]
    out["speedup_median"] = {path: base / out[path]["ms_per_step_median"] for path in paths[1:]}
    out["load_average"] = os.getloadavg()
    ratios = ", ".join(f"{p} {out[p]['ms_per_step_median']:.1f} ({r:.2f}x)" for p, r in out["speedup_median"].items())
    print(f"{name} {method} {resolved} b{batch}: {paths[0]} {base:.1f} ms/step, {ratios}, load "
          f"{out['load_average'][0]:.1f}", flush=True)  # fmt: skip
    return out


def _lane(method: str) -> int:
    from crossgap_index.inversion.optimise import OTI_LANE, OVI_LANE

    return OTI_LANE if method == "oti" else OVI_LANE


def _text_eval(path: str, args: argparse.Namespace) -> dict:
    from crossgap_index.evaluation.protocol import evaluate

    thread_rule.SMALL_STEP_FLOPS = 0.0 if path == "today" else RULE
    cpu0, wall0, load0 = _cpu(), time.perf_counter(), os.getloadavg()
    result = evaluate(f"synthetic:{args.text_seed}:{args.text_eval}", "crossgap-small", device="cpu", tasks=["texts"])
    thread_rule.SMALL_STEP_FLOPS = RULE
    task = result.tasks["texts"]
    out = {
        "path": path,
        "n": args.text_eval,
        "cpu_s": _cpu() - cpu0,
        "wall_s": time.perf_counter() - wall0,
        "load_before": load0,
        "load_after": os.getloadavg(),
        "timings": {k: v for k, v in result.timings.items() if isinstance(v, (int, float))},
        "map": {mode: m.metrics["map"] for mode, m in task.modes.items()},
    }
    print(f"text eval {path}: {out['cpu_s']:.0f} CPU-s, {out['wall_s']:.0f} s wall", flush=True)
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _markdown(doc: dict) -> str:
    m, paths = doc["machine"], PATHS[doc["settings"]["compare"]]
    base, others = paths[0], paths[1:]
    title = {
        "compile": "the compiled step against the eager fast path",
        "precision": "the compiled step in the precision auto picks and in fp32, against the eager fast path",
        "threads": "the one-thread rule",
    }
    lines = [
        f"# OTI / OVI step on the CPU: {title[doc['settings']['compare']]}",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), OMP_WAIT_POLICY "
        f"{m['omp_wait_policy']}, load average "
        f"{m['load_average_at_start']} at start, {m.get('load_average_at_end')} at end. Nominal peak "
        f"{m['nominal_peak_gflops']['fp32']} GFLOP/s fp32, {m['nominal_peak_gflops']['bf16']} bf16 "
        f"({m['nominal_peak_gflops']['basis']}). Settings: {doc['settings']}. Paths {', '.join(paths)} alternate run "
        "by run in one process, after one untimed warm-up run each; ms per step are medians over every timed step "
        "(min beside); bf16 runs each lane of 8 OTI / 1 OVI queries in turn: a step is all lanes' steps. "
        "`first run s`: the warm-up run's wall time (compilation included).",
        "",
        "| model | method | batch | precision | GFLOP/step | "
        + " | ".join(f"{p} ms/step (min)" for p in paths)
        + " | "
        + " | ".join(f"{base}/{p}" for p in others)
        + " | "
        + " | ".join(f"{p} CPU ms" for p in paths)
        + f" | {paths[-1]} GFLOP/s | "
        + " | ".join(f"{p} first run s" for p in paths)
        + " | load |",
        "|" + "---|" * (7 + 3 * len(paths) + len(others)),
    ]
    for r in doc["steps"]:
        cells = [r["model"], r["method"], str(r["batch"]), r["precision"], f"{r['step_flops'] / 1e9:.2f}"]
        cells += [f"{r[p]['ms_per_step_median']:.1f} ({r[p]['ms_per_step_min']:.1f})" for p in paths]
        cells += [f"{r['speedup_median'][p]:.2f}x" for p in others]
        cells += [f"{r[p]['cpu_ms_per_step_median']:.1f}" for p in paths]
        cells += [f"{r[paths[-1]]['gflops_achieved_median']:.1f}"]
        cells += [f"{r[p]['first_run_s']:.1f}" for p in paths]
        cells += [f"{r['load_average'][0]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for run in doc.get("text_eval", []):
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in run["timings"].items() if v >= 1)
        maps = ", ".join(f"{k} {v * 100:.2f}" for k, v in run["map"].items())
        lines += [
            "",
            f"**text eval ({run['path']})**, synthetic:{doc['settings']['text_seed']}:{run['n']}, crossgap-small: "
            f"{run['cpu_s']:.0f} CPU-s, {run['wall_s']:.0f} s wall, load {run['load_before'][0]:.1f} -> "
            f"{run['load_after'][0]:.1f}. Stages (wall): {stages}. mAP: {maps}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

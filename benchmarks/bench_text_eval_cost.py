"""Issue 26 item 5: the CPU time of `cgx eval synthetic:SEED:N --model crossgap-small --device cpu --task texts`
as a user runs it (the CLI, so OpenMP waits passively), old tree against new, with every mode's mAP.

Each side is one CLI process under ``/usr/bin/time -v`` (user + system CPU seconds, wall, peak RSS), started with
PYTHONPATH at its tree; ``--together`` starts both at once so that the machine's load falls alike on them (CPU
seconds are the figure that transfers on a shared machine; wall time is reported beside them). Every mode's mAP
of both sides is reported with its difference; the per-query APs are not in the CLI's JSON, so the difference is
of means (the evaluation is deterministic: equal runs give equal means).

    python -m benchmarks.bench_text_eval_cost --old /tmp/texteval-old --new . --n 480 --together
    python -m benchmarks.bench_text_eval_cost --report-only --logs /tmp/te   # from the logs of an earlier run
    python -m benchmarks.bench_text_eval_cost --ovi-cost                      # one OVI's CPU time by precision

``--ovi-cost``: what one OVI of a text query costs crossgap-small in CPU seconds, in-process (OpenMP passive, as the
CLI), bf16 in its lanes of one row (what ``auto`` serves on an AVX512-BF16 CPU) against fp32 at batch 1 and 64,
alternated over rounds; and how far fp32 results are from bf16 ones (minimum cosine).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep, as in the CLI

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.machine import machine_info, write_json

RESULTS = Path(__file__).parent / "results"


def command(seed: int, n: int) -> list[str]:
    spec = f"synthetic:{seed}:{n}"
    return [sys.executable, "-m", "crossgap_index", "eval", spec, "--model", "crossgap-small", "--device", "cpu"]


def main() -> None:
    args = _parse()
    if args.ovi_cost:
        write_json(RESULTS / "text-eval-ovi-cost.json", ovi_cost(args.rounds))
        return
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    sides = {"old": (Path(args.old).resolve(), ()), "new": (Path(args.new).resolve(), ())}
    if args.fp32:  # the new tree evaluating what `--precision fp32` serves (inversion batched, not in bf16 lanes)
        sides["new-fp32"] = (Path(args.new).resolve(), ("--precision", "fp32"))
    load_before = os.getloadavg()
    if not args.report_only:
        _run(sides, args, logs)
    doc = {
        "machine": machine_info(),
        "settings": {**vars(args), "command": " ".join(command(args.seed, args.n)[1:] + ["--task", "texts"])},
        "load_before_runs" if not args.report_only else "load_at_report": load_before,
        "load_after_runs" if not args.report_only else "load_at_report_end": os.getloadavg(),
        "sides": {name: _side(logs, name, args.n) for name in sides},
    }
    doc["modes"] = _modes(doc["sides"])
    write_json(RESULTS / args.out, doc)
    shown = ("cpu_s", "wall", "timings_s")
    print(json.dumps({name: {k: side[k] for k in shown} for name, side in doc["sides"].items()}))


def _run(sides: dict[str, tuple[Path, tuple[str, ...]]], args: argparse.Namespace, logs: Path) -> None:
    """Every side's CLI under /usr/bin/time -v: together, or one after the other (old first)."""
    running = []
    for name, (tree, extra) in sides.items():
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop("OMP_WAIT_POLICY", None)  # as a user runs it: the CLI's own choice (passive)
        cli = [*command(args.seed, args.n), "--task", "texts", *extra, "--json"]
        argv = ["nice", "-n", "5", "/usr/bin/time", "-v", *cli]
        with open(logs / f"{name}-{args.n}.json", "w") as out, open(logs / f"{name}-{args.n}.err", "w") as err:
            process = subprocess.Popen(argv, cwd=tree, env=env, stdout=out, stderr=err)
        running.append(process)
        if not args.together:
            process.wait()
    for process in running:
        process.wait()


def _side(logs: Path, name: str, n: int) -> dict:
    """One side's figures: /usr/bin/time's CPU, wall and RSS, the evaluation's stage timings, every mode's mAP."""
    text = (logs / f"{name}-{n}.err").read_text(errors="replace")

    def field(label: str) -> str:
        match = re.search(rf"{re.escape(label)}: (.+)", text)
        return match.group(1).strip() if match else ""

    user, system = float(field("User time (seconds)") or "nan"), float(field("System time (seconds)") or "nan")
    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    result = json.loads((logs / f"{name}-{n}.json").read_text())
    task = result["tasks"]["text-to-text"]
    modes = task["modes"]
    return {
        "cpu_s": round(user + system, 1),
        "user_s": user,
        "system_s": system,
        "wall": wall,
        "max_rss_kb": int(field("Maximum resident set size (kbytes)") or 0),
        "exit_status": field("Exit status"),
        "timings_s": {k: round(v, 1) for k, v in result["timings"].items()},
        "n_queries": task["n_queries"],
        "n_gallery": task["n_gallery"],
        "modes": {mode: info["metrics"]["map"] for mode, info in modes.items()},
        "map_vs_intra": {mode: [info["map_vs_intra"], info["map_vs_intra_se"]] for mode, info in modes.items()},
        "ms_per_query": {mode: [info["ms_per_query"], info["ms_per_query_batch"]] for mode, info in modes.items()},
    }


def _modes(sides: dict) -> dict:
    """Every mode's mAP on each side, and each side's difference from the old one."""
    old = sides["old"]["modes"]
    out = {}
    for mode in old:
        row = {name: side["modes"].get(mode) for name, side in sides.items()}
        row.update({f"{name}_minus_old": _diff(old[mode], row[name]) for name in sides if name != "old"})
        out[mode] = row
    return out


def _diff(old: float | None, new: float | None) -> float | None:
    return None if old is None or new is None else new - old


def ovi_cost(rounds: int) -> dict:
    """CPU seconds per query of a 25-step OVI on crossgap-small: bf16 lanes (served) vs fp32 at batch 1 and 64."""
    import time

    import numpy as np

    from crossgap_index.inversion import InversionConfig, ovi
    from crossgap_index.models import load_model

    loaded = load_model("crossgap-small", "cpu")
    targets = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    seeds = list(range(len(targets)))
    settings = {
        "bf16 lanes of 1 (auto, served)": (InversionConfig(precision="bf16"), 16),
        "fp32 batch 1": (InversionConfig(precision="fp32", batch_size=1), 16),
        "fp32 batch 64": (InversionConfig(precision="fp32", batch_size=64), 64),
    }
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    outputs = {}
    load_before = os.getloadavg()
    for _ in range(rounds):
        for name, (config, n) in settings.items():
            begin = time.process_time()
            outputs[name] = ovi(loaded, targets[:n], config, seeds[:n])
            seconds[name].append((time.process_time() - begin) / n)
    bf16 = outputs["bf16 lanes of 1 (auto, served)"]
    fp32 = outputs["fp32 batch 64"][: len(bf16)]
    return {
        "machine": machine_info(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "settings": {"model": "crossgap-small", "ovi_steps": 25, "rounds": rounds, "threads": "process (2)"},
        "cpu_s_per_query_median": {name: float(np.median(v)) for name, v in seconds.items()},
        "cpu_s_per_query_all": seconds,
        "min_cosine_fp32_vs_bf16": float((bf16 * fp32).sum(axis=1).min()),
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default="/tmp/texteval-old", help="the old tree (main where the branch started)")
    parser.add_argument("--new", default=".", help="the new tree")
    parser.add_argument("--seed", type=int, default=2001)
    parser.add_argument("--n", type=int, default=480)
    parser.add_argument("--together", action="store_true", help="start the sides at once (same load)")
    parser.add_argument("--fp32", action="store_true", help="also the new tree with --precision fp32")
    parser.add_argument("--logs", default="/tmp/text-eval-cost", help="where each side's JSON and time -v go")
    parser.add_argument("--report-only", action="store_true", help="read the logs of an earlier run")
    parser.add_argument("--out", default="text-eval-cost.json", help="the JSON written under benchmarks/results")
    parser.add_argument("--ovi-cost", action="store_true", help="one OVI's CPU time by precision (in-process)")
    parser.add_argument("--rounds", type=int, default=3, help="--ovi-cost: alternated rounds")
    return parser.parse_args()


if __name__ == "__main__":
    main()

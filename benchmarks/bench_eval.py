"""`cgx eval` on held-out synthetic data: which retrieval mode wins, with the OTI steps sweep.

Runs ``crossgap_index.evaluation.evaluate`` (the function behind ``cgx eval``) once per seed for
image-to-image (with the steps sweep) and once for text-to-text (OVI is the slow part, so its N can
be smaller), and writes, per seed, one JSON document (machine, settings, the full result) plus the
PNG plots under ``--out``. The model was trained on seed 1: use other seeds. Only reports; no
threshold anywhere.

    python -m benchmarks.bench_eval                                  # the RESULTS.md run
    python -m benchmarks.bench_eval --seeds 1001 --n 96 --text-n 48 --ovi-steps 50 --sweep 10,50   # quick look
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from benchmarks.machine import machine_info, write_json
from crossgap_index.evaluation.protocol import evaluate
from crossgap_index.evaluation.report import render, write_plots
from crossgap_index.inversion import InversionConfig
from crossgap_index.models._registry import bundled_dir

err = Console(stderr=True)


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = InversionConfig(oti_steps=args.steps, ovi_steps=args.ovi_steps, batch_size=args.batch_size)
    sweep = [int(s) for s in args.sweep.split(",")] if args.sweep else []
    out = Path(args.out)
    for seed in [int(s) for s in args.seeds.split(",")]:
        runs = {}
        if args.n:
            spec = f"synthetic:{seed}:{args.n}"
            runs["images"] = _run(spec, "images", args, config, sweep, out / f"eval-plots-{seed}-images")
        if args.text_n:
            spec = f"synthetic:{seed}:{args.text_n}"
            runs["texts"] = _run(spec, "texts", args, config, [], out / f"eval-plots-{seed}-texts")
        path = write_json(
            out / f"eval-{args.model}-{seed}.json",
            {
                "machine": {**machine_info(), "load_average_end": os.getloadavg()},
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "weights_sha256": _weights_sha256(args.model),
                "runs": runs,
            },
        )
        err.print(f"written: {path}")


def _run(
    spec: str, task: str, args: argparse.Namespace, config: InversionConfig, sweep: list[int], plots: Path
) -> dict:
    err.print(f"[bold]{spec}[/bold] {task} ({args.model})")
    begin = time.perf_counter()
    result = evaluate(
        spec,
        args.model,
        device="cpu",
        config=config,
        tasks=[task],
        sweep_steps=sweep,
        span_components=args.span_components,
    )
    wall = time.perf_counter() - begin
    Console(width=120).print(render(result))
    write_plots(result, plots)
    return {**result.to_dict(), "wall_s": wall, "plots": str(plots)}


def _weights_sha256(model: str) -> str | None:
    """The bundled model's weights digest: a retrained model ships under the same name."""
    folder = bundled_dir(model)
    weights = folder / "open_clip_model.safetensors" if folder else None
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights and weights.is_file() else None


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="crossgap-small")
    parser.add_argument("--seeds", default="1001,1002", help="comma-separated synthetic seeds (not 1: training)")
    parser.add_argument("--n", type=int, default=480, help="images per seed (0: skip image-to-image)")
    parser.add_argument("--text-n", type=int, default=480, help="caption groups per seed (0: skip text-to-text)")
    parser.add_argument("--steps", type=int, default=InversionConfig.oti_steps, help="OTI steps")
    parser.add_argument("--ovi-steps", type=int, default=InversionConfig.ovi_steps, help="OVI steps")
    parser.add_argument("--batch-size", type=int, default=InversionConfig.batch_size)
    parser.add_argument("--sweep", default="10,25,50,100,150", help="OTI steps sweep ('' for none)")
    parser.add_argument("--span-components", type=int, default=None, help="span projection directions (default d/2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="benchmarks/out")
    return parser.parse_args()


if __name__ == "__main__":
    main()

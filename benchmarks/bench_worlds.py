"""One table: every world x task x mode, with paired 95% intervals, cost per query, and which gains need labels.

Each dataset spec (anything ``cgx eval`` takes: ``synthetic:SEED:N``, a labelled folder, a captions
``.jsonl``, and specs other modules add such as ``fashion-mnist:test:N``) is a world; each task (``images``,
``texts``, and tasks other modules add such as ``text-to-image``) runs through ``evaluate``, the code behind
``cgx eval``. Specs or tasks this checkout does not know are skipped with a note, so the same command line
works before and after they land. Every mode row carries ``uses_labels`` from the eval report: a mode whose
vocabulary, fit or selection used the evaluated data's labels (concept, span over the labels, a tune on the
same data) is reported apart from the label-free ones.

    python -m benchmarks.bench_worlds --model crossgap-small \\
        --datasets synthetic:11:120 synthetic:12:120 synthetic:13:120 fashion-mnist:test:500 \\
        --tasks images texts text-to-image

Writes benchmarks/results/worlds-table.md, a PNG beside it and the raw rows under benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info

RESULTS = Path("benchmarks/results")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="crossgap-small")
    parser.add_argument("--datasets", nargs="+", default=["synthetic:11:120", "synthetic:12:120", "synthetic:13:120"])
    parser.add_argument("--tasks", nargs="+", default=["images", "texts"])
    parser.add_argument("--limit", type=int, default=None, help="Items per world (as cgx eval --limit).")
    parser.add_argument("--steps", type=int, default=None, help="OTI steps of cross/fused [default: served].")
    parser.add_argument("--ovi-steps", type=int, default=None, help="OVI steps (text cross) [default: served].")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--md", type=Path, default=RESULTS / "worlds-table.md")
    parser.add_argument("--plot", type=Path, default=RESULTS / "worlds-table.png")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/worlds-table.json"))
    args = parser.parse_args(argv)

    from crossgap_index.errors import CrossGapError
    from crossgap_index.evaluation.data import load_dataset
    from crossgap_index.evaluation.protocol import SERVED_INVERSION, evaluate
    from crossgap_index.inversion import InversionConfig

    config = InversionConfig(
        oti_steps=SERVED_INVERSION.oti_steps if args.steps is None else args.steps,
        ovi_steps=SERVED_INVERSION.ovi_steps if args.ovi_steps is None else args.ovi_steps,
    )
    rows, notes, runs = [], [], []
    begin = time.perf_counter()
    load_start = os.getloadavg()
    for spec in args.datasets:
        try:
            data = load_dataset(spec, args.limit)
        except CrossGapError as exc:
            notes.append(f"world `{spec}` skipped: {exc}")
            continue
        for task in args.tasks:
            started = time.perf_counter()
            try:
                result = evaluate(data, args.model, device=args.device, config=config, tasks=[task])
            except CrossGapError as exc:
                notes.append(f"`{spec}` x `{task}` skipped: {exc}")
                continue
            for task_name, measured in result.tasks.items():
                for name, mode in measured.modes.items():
                    ci = mode.map_vs_intra_ci95
                    rows.append(
                        {
                            "world": spec,
                            "task": task_name,
                            "mode": name,
                            "uses_labels": bool(mode.uses_labels),
                            "map": mode.metrics["map"],
                            "delta": mode.map_vs_intra,
                            "ci_low": None if ci is None else ci[0],
                            "ci_high": None if ci is None else ci[1],
                            "ms_per_query": mode.ms_per_query,
                            "queries": measured.n_queries,
                            "gallery": measured.n_gallery,
                        }
                    )
            notes += [f"`{spec}` x `{task}`: {note}" for note in result.dataset.get("notes", [])]
            runs.append(
                {
                    "world": spec,
                    "task": task,
                    "seconds": time.perf_counter() - started,
                    "default": result.settings.get("default"),
                }
            )
            print(f"{spec} x {task}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    doc = {
        "model": args.model,
        "datasets": args.datasets,
        "tasks": args.tasks,
        "limit": args.limit,
        "oti_steps": config.oti_steps,
        "ovi_steps": config.ovi_steps,
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "seconds": time.perf_counter() - begin,
        "runs": runs,
        "notes": notes,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2))
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(render_markdown(doc, args.plot))
    if rows:
        write_plot(rows, args.plot, args.model)
    print(args.md.read_text())


def render_markdown(doc: dict, plot: Path) -> str:
    """The table, then per world x task the best label-free and label-informed modes, then the notes."""
    rows = doc["rows"]
    load = doc["load_average"]
    lines = [
        "# Every world x task x mode",
        "",
        f"`python -m benchmarks.bench_worlds --model {doc['model']} --datasets {' '.join(doc['datasets'])} "
        f"--tasks {' '.join(doc['tasks'])}"
        + (f" --limit {doc['limit']}" if doc["limit"] else "")
        + f" --steps {doc['oti_steps']} --ovi-steps {doc['ovi_steps']}`",
        "",
        f"Model {doc['model']}; OTI {doc['oti_steps']} steps, OVI {doc['ovi_steps']} steps; "
        f"machine: {_machine(doc['machine'])}; load average "
        f"{load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end; {doc['seconds']:.0f} s in all.",
        "",
        "ΔmAP: mean per-query AP difference against intra on the same queries, in points, with its paired 95% "
        "t-interval over queries. ms/query: the mode's own work for one query at batch 1 (add the model's "
        "embedding time). **labels = yes**: the mode's vocabulary, fit or selection used the evaluated data's "
        "labels or class names (concept and span over the labels; a tune on the same data): its gain is not "
        "one a user without those labels gets. `default` is what an untuned `--cross` serves.",
        "",
        "| world | task | mode | labels | mAP | ΔmAP [95% CI] | ms/query |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['world']} | {r['task']} | {r['mode']} | {'yes' if r['uses_labels'] else 'no'} | "
            f"{r['map'] * 100:.2f} | {_delta(r)} | {_ms(r['ms_per_query'])} |"
        )
    lines += ["", "## Mean over worlds, per task and mode", ""]
    lines += ["| task | mode | labels | worlds | mean ΔmAP | worst ΔmAP | worlds with CI above 0 / below 0 |"]
    lines += ["|---|---|---|---:|---:|---:|---:|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["task"] == task):
            cell = [r for r in rows if r["task"] == task and r["mode"] == mode]
            deltas = [r["delta"] for r in cell]
            above = sum(r["ci_low"] is not None and r["ci_low"] > 0 for r in cell)
            below = sum(r["ci_high"] is not None and r["ci_high"] < 0 for r in cell)
            lines.append(
                f"| {task} | {mode} | {'yes' if cell[0]['uses_labels'] else 'no'} | {len(cell)} | "
                f"{np.mean(deltas) * 100:+.2f} | {np.min(deltas) * 100:+.2f} | {above} / {below} |"
            )
    lines += ["", "## Best label-free and label-informed mode per world and task", ""]
    lines += ["| world | task | best label-free (ΔmAP) | best using labels (ΔmAP) | default (ΔmAP) |"]
    lines += ["|---|---|---|---|---|"]
    for world, task in dict.fromkeys((r["world"], r["task"]) for r in rows):
        cell = [r for r in rows if r["world"] == world and r["task"] == task]
        free = max((r for r in cell if not r["uses_labels"]), key=lambda r: r["delta"], default=None)
        labelled = max((r for r in cell if r["uses_labels"]), key=lambda r: r["delta"], default=None)
        default = next((r for r in cell if r["mode"] == "default"), None)
        lines.append(f"| {world} | {task} | {_named(free)} | {_named(labelled)} | {_named(default)} |")
    label_modes = sorted({r["mode"] for r in rows if r["uses_labels"]})
    free_modes = sorted({r["mode"] for r in rows if not r["uses_labels"]})
    lines += [
        "",
        f"Gains that need the test's labels: {', '.join(label_modes) or 'none measured'}. "
        f"Label-free: {', '.join(free_modes)}.",
        "",
        f"![every world x task x mode]({plot.name})",
    ]
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in doc["notes"]]
    return "\n".join(lines) + "\n"


def write_plot(rows: list[dict], path: Path, model: str) -> None:
    """ΔmAP with its 95% interval per mode, one panel per world x task; label-using modes in orange."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = list(dict.fromkeys((r["world"], r["task"]) for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    columns = min(4, len(panels))
    grid_rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.4 * columns, (0.32 * len(modes) + 1.4) * grid_rows + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(grid_rows, columns, sharey=True, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (world, task) in zip(axes, panels, strict=False):
        cell = {r["mode"]: r for r in rows if r["world"] == world and r["task"] == task}
        for y, mode in enumerate(modes):
            r = cell.get(mode)
            if r is None:
                continue
            colour = "tab:orange" if r["uses_labels"] else "tab:blue"
            low = r["ci_low"] if r["ci_low"] is not None else r["delta"]
            high = r["ci_high"] if r["ci_high"] is not None else r["delta"]
            ax.errorbar(
                r["delta"] * 100,
                y,
                xerr=[[(r["delta"] - low) * 100], [(high - r["delta"]) * 100]],
                fmt="o",
                color=colour,
                capsize=2,
            )
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.set_yticks(range(len(modes)), modes)
        ax.invert_yaxis()
        ax.set_title(f"{world}\n{task}", fontsize=8)
        ax.set_xlabel("ΔmAP vs intra (points)")
    fig.suptitle(f"{model}: ΔmAP with paired 95% CI (orange: uses the test's labels)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _delta(r: dict) -> str:
    if r["mode"] == "intra":
        return ""
    ci = "" if r["ci_low"] is None else f" [{r['ci_low'] * 100:+.2f}, {r['ci_high'] * 100:+.2f}]"
    return f"{r['delta'] * 100:+.2f}{ci}"


def _named(r: dict | None) -> str:
    return "" if r is None else f"{r['mode']} ({r['delta'] * 100:+.2f})"


def _ms(value: float | None) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.1f}"


def _machine(info: dict) -> str:
    keys = ("cpu", "cores", "cuda", "torch")
    return ", ".join(f"{k} {info[k]}" for k in keys if info.get(k) is not None) or "unknown"


if __name__ == "__main__":
    main()

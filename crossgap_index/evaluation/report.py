"""Reports of an ``EvalResult``: rich tables (best value per metric highlighted) and matplotlib PNGs."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Group
from rich.table import Table
from rich.text import Text

from crossgap_index.evaluation.measure import COST_BATCH
from crossgap_index.evaluation.metrics import METRIC_TITLES, METRICS
from crossgap_index.evaluation.results import EvalResult, TaskResult

_BEST = "bold green"


def task_table(task: TaskResult, caption: str = "") -> Table:
    """Modes x metrics of one task (in %), with each mode's mAP change against intra."""
    loo = ", leave-one-out" if task.leave_one_out else ""
    skipped = f", {task.n_skipped_queries} queries without a relevant item left out" if task.n_skipped_queries else ""
    table = Table(
        title=f"{task.task}: {task.n_queries} queries, gallery {task.n_gallery}, relevant = {task.relevant}"
        f"{loo}{skipped}",
        title_justify="left",
        caption=caption or None,
        caption_justify="left",
    )
    table.add_column("mode")
    for metric in METRICS:
        table.add_column(METRIC_TITLES[metric], justify="right")
    table.add_column("ΔmAP ± se", justify="right")
    table.add_column("ms/query", justify="right")
    table.add_column(f"ms/query at {COST_BATCH}", justify="right")
    best = task.best()
    for name, mode in task.modes.items():
        cells = [Text(f"{mode.metrics[m] * 100:.2f}", style=_BEST if best[m] == name else "") for m in METRICS]
        delta = "" if name == "intra" else _delta(mode.map_vs_intra, mode.map_vs_intra_se)
        cost = "" if mode.ms_per_query is None else f"{mode.ms_per_query:.1f}"
        batched = "" if mode.ms_per_query_batch is None else f"{mode.ms_per_query_batch:.1f}"
        table.add_row(name + (" ‡" if mode.uses_labels else ""), *cells, delta, cost, batched)
    return table


def sweep_table(result: EvalResult, task: str = "image-to-image") -> Table:
    """Cross-mode metrics against inversion steps (OTI for image-to-image, OVI for text-to-text), beside intra."""
    base = result.tasks.get(task)
    intra = base.modes["intra"].metrics["map"] if base else float("nan")
    points = [p for p in result.sweep if p.task == task]
    ovi = task != "image-to-image"
    table = Table(
        title=f"{'OVI' if ovi else 'OTI'} sweep (pseudo-{'patches P' if ovi else 'tokens R'} x learning rate x steps), "
        f"{task} cross mode (intra mAP {intra * 100:.2f})",
        title_justify="left",
    )
    table.add_column("P" if ovi else "R", justify="right")
    table.add_column("lr", justify="right")
    table.add_column("steps", justify="right")
    for metric in METRICS:
        table.add_column(METRIC_TITLES[metric], justify="right")
    table.add_column("ΔmAP vs intra ± se", justify="right")
    table.add_column("run seconds", justify="right")
    best = max(points, key=lambda p: p.metrics["map"])
    for point in points:
        cells = [f"{point.metrics[m] * 100:.2f}" for m in METRICS]
        count = (point.patches or "default") if ovi else point.tokens
        table.add_row(
            str(count),
            f"{point.lr:g}" if point.lr is not None else "",
            Text(str(point.steps), style=_BEST if point is best else ""),
            *cells,
            _delta(point.map_vs_intra, point.map_vs_intra_se),
            f"{point.seconds:.1f}",
        )
    return table


def render(result: EvalResult) -> Group:
    """Everything a person reads: one table per task, the zero-shot control, the sweep, settings, times."""
    inv = result.settings["inversion"]
    span = result.settings["span"]
    caption = (
        f"model {result.model} (d={result.dim}, {result.device}); OTI {inv['oti_steps']} steps, "
        f"OVI {inv['ovi_steps']} steps; fusion rrf_k={result.settings['fusion']['rrf_k']}, "
        f"score alpha={result.settings['fusion']['alpha_cross']}; span: {span['components']} components from "
        f"{span['size']} names ({span['vocabulary']}). Metrics in %, best per metric in green; ΔmAP: mean "
        "per-query AP difference against intra ± its standard error over queries; ‡: the mode used the evaluated "
        "data's labels or class names (its gain needs them). ms/query: the mode's own work "
        f"for one query at batch 1 (and per query at batch {COST_BATCH}), no cache"
        + (
            f", on top of {result.timings['embed_ms_per_image']:.1f} ms to embed the query image"
            if "embed_ms_per_image" in result.timings
            else ""
        )
        + "."
    )
    parts: list = []
    for task in result.tasks.values():
        parts.append(task_table(task, caption))
        legend = "; ".join(f"{mode.mode}: {mode.description}" for mode in task.modes.values())
        parts.append(Text(f"modes: {legend}", style="dim"))
    if result.zero_shot:
        z = result.zero_shot
        parts.append(
            Text(
                f"zero-shot classification control: accuracy {z['accuracy'] * 100:.2f}% over "
                f"{z['classes']} classes (chance {z['chance'] * 100:.2f}%)"
            )
        )
    for task in dict.fromkeys(p.task for p in result.sweep):
        parts.append(sweep_table(result, task))
    times = ", ".join(
        f"{name} {seconds:.1f}s" for name, seconds in result.timings.items() if not name.endswith("_ms_per_image")
    )
    parts.append(Text(f"wall time: {times}", style="dim"))
    parts += [Text(f"note: {note}", style="yellow") for note in result.dataset.get("notes", [])]
    return Group(*parts)


def _delta(mean: float, se: float | None) -> str:
    """A paired mAP difference in points, with its standard error over queries."""
    return f"{mean * 100:+.2f}" + (f" ± {se * 100:.2f}" if se is not None else "")


def write_plots(result: EvalResult, folder: str | Path) -> list[Path]:
    """One PNG per task (every metric per mode) and, with a sweep, mAP against OTI steps."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [_metrics_plot(task, result.model, folder) for task in result.tasks.values()]
    written += [_cost_plot(task, result, folder) for task in result.tasks.values()]
    for task in dict.fromkeys(p.task for p in result.sweep):
        written.append(_sweep_plot(result, folder, task))
    return written


def _metrics_plot(task: TaskResult, model: str, folder: Path) -> Path:
    modes = list(task.modes)
    best = task.best()
    fig = Figure(figsize=(3.2 * len(METRICS), 0.45 * len(modes) + 1.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(METRICS), sharey=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        values = [task.modes[m].metrics[metric] * 100 for m in modes]
        colours = ["tab:green" if best[metric] == m else "tab:gray" for m in modes]
        ax.barh(modes, values, color=colours)
        ax.invert_yaxis()
        ax.set_title(METRIC_TITLES[metric])
        ax.set_xlabel("%")
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.1f}", va="center", fontsize=8)
        ax.set_xlim(0, max(max(values) * 1.25, 1.0))
    fig.suptitle(f"{task.task} ({model}, {task.n_queries} queries)")
    fig.tight_layout()
    path = folder / f"{task.task}-metrics.png"
    fig.savefig(path, dpi=110)
    return path


def _sweep_plot(result: EvalResult, folder: Path, task_name: str = "image-to-image") -> Path:
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ovi = task_name != "image-to-image"
    points = [p for p in result.sweep if p.task == task_name]
    for key in dict.fromkeys((p.patches if ovi else p.tokens, p.lr) for p in points):
        line = [p for p in points if (p.patches if ovi else p.tokens, p.lr) == key]
        name = f"{'P' if ovi else 'R'}={key[0] or 'default'}, lr={key[1]:g}" if key[1] is not None else f"R={key[0]}"
        ax.plot([p.steps for p in line], [p.metrics["map"] * 100 for p in line], "o-", label=f"cross, {name}")
    task = result.tasks[task_name]
    for mode, colour in (("intra", "tab:gray"), ("span", "tab:purple"), ("concept", "tab:green")):
        if mode in task.modes:
            ax.axhline(task.modes[mode].metrics["map"] * 100, color=colour, linestyle=":", label=f"{mode} mAP")
    kind = "OVI" if ovi else "OTI"
    ax.set_xlabel(f"{kind} steps")
    ax.set_ylabel("%")
    ax.set_title(f"{task_name}: {kind} steps ({result.model})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / f"{kind.lower()}-steps-sweep.png"
    fig.savefig(path, dpi=110)
    return path


def _cost_plot(task: TaskResult, result: EvalResult, folder: Path) -> Path:
    """mAP against the mode's own cost per query (log scale): which mode pays for itself."""
    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    embed = result.timings.get("embed_ms_per_image", 0.0) if task.task == "image-to-image" else 0.0
    for name, mode in task.modes.items():
        if mode.ms_per_query is None:
            continue
        cost = mode.ms_per_query + embed
        ax.scatter([cost], [mode.metrics["map"] * 100], color="tab:green" if name == task.best()["map"] else "tab:blue")
        ax.annotate(name, (cost, mode.metrics["map"] * 100), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (batch 1, no cache" + (", incl. embedding the query)" if embed else ")"))
    ax.set_ylabel("mAP %")
    ax.set_title(f"{task.task}: quality vs cost ({result.model})")
    fig.tight_layout()
    path = folder / f"{task.task}-quality-vs-cost.png"
    fig.savefig(path, dpi=110)
    return path

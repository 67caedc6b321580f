"""Live progress on stderr for the CLI: bars (rich) and phase lines, each a callback the library calls.

A command imports this module when it draws progress; the bars are made with rich, the lines printed through
render's ``err`` console.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from crossgap_index.cli.render import err
from crossgap_index.words import StageProgress


class RateColumn(ProgressColumn):
    """Items per second, from rich's own speed estimate."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress_bar(description: str, unit: str, enabled: bool = True) -> Iterator:
    """Yield a ``progress(done, total)`` callback drawing a bar on stderr once work starts."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
    )
    bar = Progress(*columns, console=err)
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if not enabled or total == 0:
            return
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


@contextmanager
def phase_lines(what: str, enabled: bool = True, steps: int = 4) -> Iterator:
    """Yield a ``progress(phase, done, total)`` callback printing a line on stderr as each phase ("train", "add",
    "write") starts, at every ``steps``-th of its total, and when it ends, with its seconds and rate. Lines,
    not a bar: another command's bar (the import's rows) may be live, and rich draws one live display at once."""
    state: dict[str, float] = {}

    def update(phase: str, done: int, total: int) -> None:
        if not enabled or total == 0:
            return
        now = time.perf_counter()
        if phase not in state or done == 0:  # a phase starts (again, for the next collection)
            state[phase], state[phase + " shown"] = now, 0
            err.print(f"{what}: {phase} {total:,} ...", highlight=False)
            return
        seconds = now - state[phase]
        if done >= total:
            rate = f" ({done / seconds:,.0f}/s)" if seconds > 0 and total > 1 else ""
            err.print(f"{what}: {phase} done in {seconds:.1f} s{rate}", highlight=False)
        elif done * steps >= (state[phase + " shown"] + 1) * total:
            state[phase + " shown"] = done * steps // total
            err.print(f"{what}: {phase} {done:,}/{total:,} ({seconds:.1f} s)", highlight=False)

    yield update


@contextmanager
def stage_bars(enabled: bool = True) -> Iterator[StageProgress]:
    """A ``progress(stage, done, total)`` callback: one bar per stage on stderr, started on first use."""
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if not enabled:
            return
        if not tasks:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()


@contextmanager
def inversion_bar(total_steps: int | None = None, enabled: bool = True, delay: float = 1.0) -> Iterator:
    """Yield a ``progress(step, loss)`` callback; the bar appears only once the inversion has run ``delay`` s."""
    columns = (
        TextColumn("inverting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    bar = Progress(*columns, console=err)
    start = time.perf_counter()
    task = None

    def update(step: int, loss: float) -> None:
        nonlocal task
        if not enabled:
            return
        if task is None:
            if time.perf_counter() - start < delay:
                return
            bar.start()
            task = bar.add_task("inverting", total=total_steps, loss="-")
        bar.update(task, completed=step, loss=f"{loss:.4f}")

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()

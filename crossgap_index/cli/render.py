"""Rendering for the CLI: results to stdout (table, JSON, paths), everything else to stderr.

rich loads with the first table or console used (``out`` and ``err`` are made on first use, PEP 562): a
command that prints JSON or paths and nothing else never imports it. Live progress displays are in bars.py.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from crossgap_index.search.registry import mode_label

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from crossgap_index.api import BuildReport, Hit, IndexInfo

# Under a pipe or redirect rich would fit tables into 80 columns and cut paths: render at full width.
PIPE_WIDTH = 100_000
_CONSOLES: dict[str, Console] = {}


def __getattr__(name: str) -> Console:
    """``out`` (stdout, full width under a pipe) and ``err`` (stderr): rich consoles, made on first use."""
    if name not in ("out", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _console(name)


def _console(name: str) -> Console:
    """The one ``out`` or ``err`` console of this process (threads that make it at once all get the first)."""
    console = _CONSOLES.get(name)
    if console is None:
        from rich.console import Console

        if name == "out":
            made = Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)
        else:
            made = Console(stderr=True, soft_wrap=True)
        console = _CONSOLES.setdefault(name, made)
    return console


def note(message: str) -> None:
    """One ``cgx: note:`` line on stderr, printed as it is (no rich markup or emoji codes: notes name files)."""
    print(f"cgx: note: {message}", file=sys.stderr)


def printable(name: str) -> str:
    """A file name for display: bytes that are not UTF-8 (surrogate-escaped by os) shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def hits_table(hits: list[Hit], title: str | Text, label_of=None) -> Table:
    """Rank, score, each merged list's rank/score, (label), item."""
    from rich.table import Table
    from rich.text import Text

    lists = list(dict.fromkeys(name for h in hits for name in h.ranks))
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("score" if len(lists) <= 1 else "merged", justify="right")
    if len(lists) > 1:
        for name in lists:
            table.add_column(f"{mode_label(name)} rank/score", justify="right")
    if label_of:
        table.add_column("label")
    table.add_column("item")
    for rank, hit in enumerate(hits, 1):
        cells = [str(rank), f"{hit.score:.4f}"]
        if len(lists) > 1:
            cells += [f"{hit.ranks[n]} / {hit.scores[n]:.4f}" if n in hit.ranks else "-" for n in lists]
        if label_of:
            cells.append(label_of(hit))
        cells.append(Text(printable(hit.path) if hit.path is not None else hit.text or ""))  # no markup in names
        table.add_row(*cells)
    return table


def print_hits(hits: list[Hit], query: dict, settings: dict, fmt: str, separator: bytes = b"\n") -> None:
    """``fmt``: json, table, or paths (each path or text then ``separator``; b"\\0" carries any file name)."""
    if fmt == "json":
        print(json.dumps({"query": query, "settings": settings, "hits": [asdict(h) for h in hits]}, indent=2))
    elif fmt == "paths":
        sys.stdout.flush()
        for hit in hits:  # the file name's own bytes, so `xargs -0` gets the very file
            item = os.fsencode(hit.path) if hit.path is not None else (hit.text or "").encode("utf-8")
            sys.stdout.buffer.write(item + separator)
        sys.stdout.buffer.flush()
    else:
        from rich.text import Text

        served = settings.get("served")
        mode = f" · {served_heading(served['name'])}" if served else ""
        _console("out").print(hits_table(hits, Text(f"{query['kind']} query: {printable(str(query['value']))}{mode}")))


def served_heading(mode: str) -> str:
    """How a heading names the mode a query was served by: the page's plain words, then the API's name
    (``Word directions (span)``); the settings in full are in --json's ``served``."""
    label = mode_label(mode)
    return label if label == mode else f"{label} ({mode})"


MODEL_NOTE_SHOWN = "model-note-shown"  # in the index folder: the bundled-model note was shown for it


def first_time_for_index(index_path: Path, marker: str = MODEL_NOTE_SHOWN) -> bool:
    """True the first time a note is shown for this index, recorded by a small file in the index folder (so
    a new index at the same place is told again); always True where the folder cannot be written."""
    try:
        with open(index_path / marker, "x", encoding="utf-8") as f:
            f.write("shown\n")
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def build_summary(report: BuildReport) -> str:
    known = report.known_failures
    retry = f"; {known} files that failed before are unchanged and were not read (--retry-failed reads them)"
    if not report.changed and not report.adopted and len(report.skipped) == known:
        return f"nothing to do: {report.unchanged} files unchanged{retry if known else ''}"
    moves = f"moved {report.moved}, " if report.moved else ""
    adopted = f"adopted {report.adopted} imported, " if report.adopted else ""
    return (
        f"added {report.added}, updated {report.updated}, {moves}removed {report.removed}, reused {report.reused}, "
        f"{adopted}unchanged {report.unchanged}, skipped {len(report.skipped)} in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} images/s embedded){retry if known else ''}"
    )


def info_table(info: IndexInfo) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=False, title=info.path, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("model", info.model)
    table.add_row("dim / metric / precision", f"{info.dim} / {info.metric} / {info.precision}")
    for name, count in info.counts.items():
        if count == 0 and name not in ("image", "text"):
            continue  # optional derived collections appear once built
        table.add_row(f"{name}", f"{count} vectors, factory {info.factories[name]}")
    table.add_row("on disk", ", ".join(f"{name} {_human(size)}" for name, size in info.disk_bytes.items()))
    tuned_modes = info.tuned_modes or ({"any": info.tuned_mode} if info.tuned_mode else {})
    for task, tuned in sorted(tuned_modes.items()):
        rep = tuned["report"]
        table.add_row(
            f"tuned mode (--cross), {task}",
            f"{escape(tuned['candidate'])}: mAP {rep['map'] * 100:.2f} vs intra {rep['intra_map'] * 100:.2f} "
            f"on the report half of {escape(tuned['dataset']['spec'])} ({tuned['date']})",
        )
    if not tuned_modes:
        table.add_row("tuned mode (--cross)", "none (see cgx tune)")
    source = {"tuned": "tuned", "bundled": "the model's measured default", "published": "published setting"}
    for modality, cross in (info.cross or {}).items():
        table.add_row(
            f"--cross runs, {modality} queries",
            f"{escape(cross['summary'])}\nsource: {source.get(cross['source'], cross['source'])}: "
            f"{escape(cross['detail'])}",
        )
    if info.inverter:
        table.add_row(
            "inverter (images)", f"trained on {info.inverter['images']} images, {info.inverter['steps']} steps"
        )
    if info.text_inverter:
        text = info.text_inverter
        table.add_row("inverter (texts)", f"trained on {text['texts']} texts, {text['steps']} steps")
    table.add_row("schema / version", f"{info.schema_version} / crossgap-index {info.crossgap_version}")
    return table


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)

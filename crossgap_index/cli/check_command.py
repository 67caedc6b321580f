"""`cgx check`: verify an index like git fsck, and with --repair rebuild what the catalog can restore."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Annotated

import typer

from crossgap_index.cli.options import IndexOpt, JsonOpt, NoWaitOpt
from crossgap_index.cli.raw_text import one_field, write_raw

if TYPE_CHECKING:
    from crossgap_index.store.check import CheckReport


def check_command(
    index: IndexOpt = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Rebuild damaged or stale FAISS files from the catalog.")
    ] = False,
    files: Annotated[bool, typer.Option(help="Also check that indexed image files still exist.")] = True,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
) -> None:
    """Verify the index (catalog integrity, FAISS files against the catalog: counts, ids, checksums,
    unit-norm vectors; files on disk), like git fsck. Exit 1 when a problem remains."""
    from crossgap_index import CrossGapIndex

    # Without --repair nothing is written: opened read-only, damaged files stay as found and are reported.
    # Opened for check: a short or missing shard is reported (and with --repair written again), not refused.
    with CrossGapIndex.open(index, wait=not no_wait, readonly=None if repair else True, for_check=True) as cgx:
        report = cgx.check(repair=repair, files=files)
    if json_out:
        write_raw(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    else:
        write_raw(_report_lines(report))
    if not report.ok:
        raise typer.Exit(1)


def _report_lines(report: CheckReport) -> str:
    """The report as lines: what was repaired, notes, problems, the first missing files, then ok or NOT OK."""
    counts = ", ".join(f"{name} {n}" for name, n in report.counts.items())
    lines = [f"repaired: {line}" for line in report.repaired] + [f"note: {line}" for line in report.notes]
    lines += [f"problem: {line}" for line in report.problems]
    lines += [f"missing: {one_field(path)}" for path in report.missing_files[:20]]
    lines.append(f"{'ok' if report.ok else 'NOT OK'} ({counts})")
    return "".join(line + "\n" for line in lines)

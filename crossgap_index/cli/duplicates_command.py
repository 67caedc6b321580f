"""`cgx duplicates`: groups of near-duplicate images in an index, as a table, JSON or a contact sheet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crossgap_index.cli.options import IndexOpt


def duplicates_command(
    index: IndexOpt = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            metavar="T",
            help="Images whose vectors score above this (inner product of unit vectors, 1 = identical) are "
            "duplicates; chains of such pairs make a group [default: 0.95, measured: README, duplicates].",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON list on stdout: the groups, each a list of {id, path}.")
    ] = False,
    sheet: Annotated[
        Path | None, typer.Option("--sheet", metavar="PNG", help="Also write a contact sheet, one row per group.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Find groups of near-duplicate images (resized, re-encoded, slightly cropped copies) from the stored
    vectors: no image is read again, and memory stays bounded on large indexes (chunked FAISS range search)."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.render import err, out
    from crossgap_index.contact_sheet import group_sheet

    with CrossGapIndex.open(index, readonly=True) as cgx:
        groups = cgx.duplicates(threshold)
    if json_out:
        print(json.dumps([[{"id": row.id, "path": row.path} for row in group] for group in groups], indent=2))
    else:
        out.print(duplicates_table(groups))
    if sheet is not None:
        group_sheet([[(row.id, Path(row.path or "")) for row in group] for group in groups], sheet)
    if not quiet:
        images = sum(len(group) for group in groups)
        where = f"; contact sheet {sheet}" if sheet is not None else ""
        err.print(f"{len(groups)} groups of near-duplicates, {images} images{where}", highlight=False)


def duplicates_table(groups: list):
    from rich.table import Table

    from crossgap_index.cli.render import printable

    table = Table(title="near-duplicate images", title_justify="left")
    table.add_column("group", justify="right")
    table.add_column("id", justify="right")
    table.add_column("path")
    for number, group in enumerate(groups, 1):
        for row in group:
            table.add_row(str(number), str(row.id), printable(row.path or ""))
        table.add_section()
    return table

"""`cgx export`: an index's vectors and metadata as Parquet or .npy files for other tools."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from crossgap_index.cli.options import IndexOpt


class Format(str, Enum):
    parquet = "parquet"
    npy = "npy"


def export_command(
    index: IndexOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="parquet: one table per collection; npy: arrays + jsonl.")] = (
        Format.parquet
    ),
    collection: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME", help="image, text or image-oti (repeatable) [default: every non-empty collection]."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder to write into (created if missing).")] = Path("cgx-export"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Write the stored vectors (unit float32, inner product) with ids, paths, texts and external ids."""
    from crossgap_index.cli.render import err
    from crossgap_index.export import export_index
    from crossgap_index.store.directory import default_index_path

    report = export_index(index or default_index_path(), out, fmt.value, collection)
    if not quiet:
        counts = ", ".join(f"{n} {name}" for name, n in report.counts.items()) or "nothing"
        err.print(f"exported {counts} ({report.model}, dim {report.dim}) to {out}", highlight=False)

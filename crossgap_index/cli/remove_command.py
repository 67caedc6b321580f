"""`cgx remove`: take items out of an index by path, by id, or every image whose file is gone."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from crossgap_index.cli.options import IndexOpt, NoWaitOpt


def remove_command(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files or folders (they may be gone) whose images to remove.")
    ] = None,
    missing: Annotated[bool, typer.Option("--missing", help="Remove every image whose file is gone.")] = False,
    ids: Annotated[
        list[int] | None, typer.Option("--id", metavar="ID", help="Remove the item with this id (repeatable).")
    ] = None,
    index: IndexOpt = None,
    no_wait: NoWaitOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Remove items from the index: by path (a file, or a whole folder), every missing file, or by id."""
    from crossgap_index import CrossGapIndex

    if not (paths or missing or ids):
        raise typer.BadParameter("give PATH..., --missing or --id N")
    with CrossGapIndex.open(index, wait=not no_wait) as cgx:
        removed = cgx.remove(ids or None, paths=paths or None, missing=missing)
    if not quiet:
        print(f"removed {len(removed)} items", file=sys.stderr)

"""`cgx remove`, `cgx ls`, `cgx check`: look after an index directory. Parse, call the library, render.

Paths are printed as the bytes they name on disk (non-UTF-8 file names survive a pipe), and nothing
heavy (torch, faiss) is imported until a command runs.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

IndexOpt = Annotated[
    Path | None,
    typer.Option("--index", envvar="CGX_INDEX", help="Index directory [default: $CGX_INDEX or the user data dir]."),
]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Fail at once if another process is writing the index, instead of waiting.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


class Modality(str, Enum):
    image = "image"
    text = "text"


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


def ls_command(
    index: IndexOpt = None,
    modality: Annotated[Modality | None, typer.Option("--modality", help="Only images or only texts.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List what the index holds: id, modality, and the path or text of every item."""
    from crossgap_index import CrossGapIndex

    with CrossGapIndex.open(index) as cgx:
        items = cgx.ls(modality.value if modality else None)
    if json_out:
        _write(json.dumps([dataclasses.asdict(item) for item in items], indent=2) + "\n")
        return
    _write("".join(f"{i.id}\t{i.modality}\t{_one_line(i.path if i.path is not None else i.text)}\n" for i in items))


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
        _write(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    else:
        counts = ", ".join(f"{name} {n}" for name, n in report.counts.items())
        lines = [f"repaired: {line}" for line in report.repaired] + [f"note: {line}" for line in report.notes]
        lines += [f"problem: {line}" for line in report.problems]
        lines += [f"missing: {_one_line(path)}" for path in report.missing_files[:20]]
        lines.append(f"{'ok' if report.ok else 'NOT OK'} ({counts})")
        _write("".join(line + "\n" for line in lines))
    if not report.ok:
        raise typer.Exit(1)


def compact_command(
    index: IndexOpt = None,
    min_dead: Annotated[
        float,
        typer.Option(
            "--min-dead",
            min=0.0,
            max=1.0,
            help="Rewrite the vector shards at least this fraction dead (rows of removed items); 0: any dead row. "
            "Writes that remove items already compact shards at least 0.5 dead by themselves.",
        ),
    ] = 0.2,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
) -> None:
    """Give back the disk space of removed items' vectors: shards with many dead rows are rewritten with
    their live rows only, then the old files deleted. Safe to kill at any point; searches go on meanwhile."""
    from crossgap_index import CrossGapIndex

    with CrossGapIndex.open(index, wait=not no_wait) as cgx:
        report = cgx.compact(min_dead)
    if json_out:
        _write(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    elif report.compacted:
        _write(
            f"compacted {len(report.compacted)} vector shards into {len(report.written)}: {report.rows_copied} "
            f"rows copied, {report.rows_freed} dead rows freed; "
            f"vectors/ {report.bytes_before} -> {report.bytes_after} bytes\n"
        )
    else:
        which = f"is at least {min_dead:g} dead" if min_dead > 0 else "has a dead row"
        _write(f"nothing to compact: no vector shard {which} ({report.bytes_after} bytes)\n")


def _one_line(value: str | None) -> str:
    return "" if value is None else value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def _write(text: str) -> None:
    """To stdout as the original bytes: file names that are not UTF-8 are held with surrogate escapes."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.buffer.flush()

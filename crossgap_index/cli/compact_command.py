"""`cgx compact`: give back the disk space of removed items' vectors."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from crossgap_index.cli.options import IndexOpt, JsonOpt, NoWaitOpt
from crossgap_index.cli.raw_text import write_raw


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
        write_raw(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    elif report.compacted:
        write_raw(
            f"compacted {len(report.compacted)} vector shards into {len(report.written)}: {report.rows_copied} "
            f"rows copied, {report.rows_freed} dead rows freed; "
            f"vectors/ {report.bytes_before} -> {report.bytes_after} bytes\n"
        )
    else:
        which = f"is at least {min_dead:g} dead" if min_dead > 0 else "has a dead row"
        write_raw(f"nothing to compact: no vector shard {which} ({report.bytes_after} bytes)\n")

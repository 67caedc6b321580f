"""`cgx ls`: every item an index holds, one line each (id, modality, path or text), or as JSON."""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from typing import Annotated

import typer

from crossgap_index.cli.options import IndexOpt, JsonOpt
from crossgap_index.cli.raw_text import one_field, write_raw
from crossgap_index.words import MODALITIES

Modality = Enum("Modality", {name: name for name in MODALITIES}, type=str)


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
        write_raw(json.dumps([dataclasses.asdict(item) for item in items], indent=2) + "\n")
        return
    write_raw("".join(f"{i.id}\t{i.modality}\t{one_field(i.path if i.path is not None else i.text)}\n" for i in items))

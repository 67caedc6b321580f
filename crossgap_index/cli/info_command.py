"""`cgx info`: what an index holds and how (model, dimension, counts, FAISS factories, sizes on disk)."""

from __future__ import annotations

import json
from dataclasses import asdict

from crossgap_index.cli.options import IndexOpt, JsonOpt


def info_command(index: IndexOpt = None, json_out: JsonOpt = False) -> None:
    """Model, dimension, counts, FAISS factories and sizes on disk of an index."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.render import info_table, out

    with CrossGapIndex.open(index) as cgx:
        details = cgx.info()
    if json_out:
        print(json.dumps(asdict(details), indent=2))
    else:
        out.print(info_table(details))

"""`cgx import`: embeddings computed elsewhere (.npy, parquet, clip-retrieval's folder) into an index."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from crossgap_index.cli.options import IndexOpt


class Dtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


def import_command(
    embeddings: Annotated[
        Path,
        typer.Argument(
            help="N x d .npy (float32/float16), a .parquet file or folder with an 'embedding' (or 'vector') "
            "column, clip-retrieval's output folder (img_emb/ + metadata/), or a `cgx export` folder."
        ),
    ],
    index: IndexOpt = None,
    model: Annotated[
        str,
        typer.Option(
            "--model", envvar="CGX_MODEL", help="The model that made the embeddings (its dimension is checked)."
        ),
    ] = ...,
    meta: Annotated[
        Path | None,
        typer.Option(
            help="For an .npy: one row per embedding, .jsonl or .parquet (id, modality, path, caption or text, "
            "external_id; all optional)."
        ),
    ] = None,
    factory: Annotated[str, typer.Option(help="FAISS factory for a new index (auto: by size).")] = "auto",
    dtype: Annotated[
        Dtype | None, typer.Option(help="How a new index stores vectors [default: the embeddings' own].")
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Fail at once if another process is writing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")] = False,
) -> None:
    """Import existing embeddings, an upsert keyed by id: a row whose id (or, without an id, whose path) is
    stored replaces that item when its vector or metadata differ and changes nothing when identical; every
    other row is added, rows without ids getting the ids after the largest the index has held. The same id
    or path twice in one import, an id over 2**53 - 1, or an id of a built item is refused before anything
    is written. An interrupted import resumes when run again; the model's weights are not loaded."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.bars import phase_lines, progress_bar
    from crossgap_index.cli.render import err
    from crossgap_index.ingest.embeddings import ImportProgress
    from crossgap_index.store.directory import default_index_path

    with (
        progress_bar("importing", "vec", enabled=not quiet) as progress,
        phase_lines("index", enabled=not quiet) as build_progress,
    ):
        report = CrossGapIndex.import_embeddings(
            embeddings,
            index or default_index_path(),
            model,
            meta=meta,
            factory=factory,
            vector_dtype=dtype.value if dtype else None,
            wait=not no_wait,
            progress=ImportProgress(rows=progress, phases=build_progress),
        )
    if not quiet:
        err.print(
            f"imported {report.added + report.updated + report.unchanged} rows: {report.added} added, "
            f"{report.updated} updated, {report.unchanged} unchanged"
            + (f", {report.derived} derived vectors" if report.derived else "")
            + f"; dim {report.dim}: "
            f"{report.rows_per_second:,.0f} rows/s, then {report.index_seconds:.1f} s building the index",
            highlight=False,
        )

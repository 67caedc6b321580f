"""`cgx add-texts`: a text corpus beside the images, exact duplicates stored once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossgap_index.cli.options import (
    DeviceOpt,
    IndexOpt,
    ModelOpt,
    NoWaitOpt,
    QuietOpt,
    RayAddressOpt,
    VerboseOpt,
    engine_option,
)
from crossgap_index.ingest.limits import DEFAULT_MAX_FILE_MB
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.flags import InversionFlags

EngineOpt = engine_option(
    "Where --invert-gallery and the derived collections --cross searches run: local (this process) or ray (a Ray "
    "actor pool). Texts are embedded here either way; this process writes the index."
)


def add_texts_command(
    file: Annotated[Path, typer.Argument(help='.txt (one document per line) or .jsonl ({"text": ..., "id": ...}).')],
    index: IndexOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    max_file_mb: Annotated[
        float, typer.Option(min=0.0, help="Refuse a corpus file larger than this many MB without reading it.")
    ] = DEFAULT_MAX_FILE_MB,
    invert_gallery: Annotated[
        bool,
        typer.Option(
            help="Also store each text's OVI feature for text queries with --mode cross-gallery "
            "(one inversion per text; kept current on later additions)."
        ),
    ] = False,
    ovi_steps: Annotated[int, typer.Option(min=0, help="OVI steps for --invert-gallery.")] = InversionConfig.ovi_steps,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    no_wait: NoWaitOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Add a text corpus beside the images; exact duplicates are stored once."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.bars import progress_bar
    from crossgap_index.cli.gallery_upkeep import keep_gallery_current, tell_derived
    from crossgap_index.cli.render import err
    from crossgap_index.engines import get_engine
    from crossgap_index.ingest.texts import read_text_corpus

    corpus = read_text_corpus(file, max_bytes=int(max_file_mb * 1e6))
    gallery_engine = get_engine(engine, ray_address, verbose=verbose)
    gallery = InversionFlags(ovi_steps=ovi_steps).config() if invert_gallery else None
    with (
        CrossGapIndex.open_or_create(index, model=model, device=device, wait=not no_wait) as cgx,
        progress_bar("embedding texts", "txt", enabled=not quiet) as progress,
    ):
        result = cgx.add_texts(corpus.texts, corpus.ids, progress=progress)
        derived = keep_gallery_current(cgx, "text", gallery, gallery_engine, quiet)
    if not quiet:
        err.print(f"added {result.added} texts, {result.duplicates} duplicates, {len(corpus.bad_lines)} bad lines")
        tell_derived(derived)
        for lineno, reason in corpus.bad_lines[:10]:
            err.print(f"  {file}:{lineno}: {reason}", highlight=False)

"""`cgx build-index`: embed the images under folders into an index, incrementally."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crossgap_index.cli.options import (
    DeviceOpt,
    IncludeHiddenOpt,
    IndexOpt,
    MaxFileMbOpt,
    MaxImageMegapixelsOpt,
    ModelOpt,
    NoWaitOpt,
    PrecisionOpt,
    QuietOpt,
    RayAddressOpt,
    VerboseOpt,
    engine_option,
    exclude_option,
)
from crossgap_index.ingest.discover import DEFAULT_EXCLUDES
from crossgap_index.ingest.limits import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_MEGAPIXELS
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.flags import InversionFlags

if TYPE_CHECKING:
    from crossgap_index.api import BuildReport

ExcludeOpt = exclude_option(
    "Leave out folders and files matching GLOB (repeatable): a name pattern (raw, *.tmp.jpg) matches any name on the "
    "way, one with / the path under the folder (2019/drafts/*). Files indexed before and excluded now leave the "
    f"index. Always left out: {', '.join(DEFAULT_EXCLUDES)}."
)
EngineOpt = engine_option(
    "local (threads + this process) or ray (Ray Data: decode tasks, embedding actors; --invert-gallery and the "
    "derived collections --cross searches run in a Ray actor pool too). This process writes the index."
)


def build_index_command(
    folders: Annotated[list[Path], typer.Argument(help="Folders (or image files) to index, recursively.")],
    index: IndexOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    factory: Annotated[
        str,
        typer.Option(
            help="FAISS index_factory string for new indexes, e.g. Flat, IVF1024,Flat, HNSW32. "
            "auto: exact up to 100k vectors, IVF above."
        ),
    ] = "auto",
    include_hidden: IncludeHiddenOpt = False,
    exclude: ExcludeOpt = None,
    max_image_megapixels: MaxImageMegapixelsOpt = DEFAULT_MAX_MEGAPIXELS,
    max_file_mb: MaxFileMbOpt = DEFAULT_MAX_FILE_MB,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per embedding batch.")] = 64,
    workers: Annotated[int, typer.Option(min=1, help="Decoding threads.")] = 4,
    report: Annotated[Path | None, typer.Option(help="Write every skipped file and its reason to this file.")] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(help="Read again files that failed to decode before (by default not while unchanged)."),
    ] = False,
    invert_gallery: Annotated[
        bool,
        typer.Option(
            help="Experimental: also store each image's OTI feature for --mode cross-gallery "
            "(one inversion per image; kept current on later builds)."
        ),
    ] = False,
    steps: Annotated[int, typer.Option(help="OTI steps for --invert-gallery.")] = InversionConfig.oti_steps,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    no_wait: NoWaitOpt = False,
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Embed the images under FOLDERS into the index. Incremental: unchanged files are skipped,
    changed ones re-embedded, deleted ones removed, renamed or duplicate files reuse stored vectors."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.bars import phase_lines, progress_bar
    from crossgap_index.cli.gallery_upkeep import keep_gallery_current
    from crossgap_index.cli.render import first_time_for_index
    from crossgap_index.engines import get_engine
    from crossgap_index.ingest.discover import resolve_roots

    folders = resolve_roots(folders)  # before an index is created for a typo
    build_engine = get_engine(engine, ray_address, verbose=verbose)
    # The gallery holds images: --steps is the OTI step count, the steps of an image query's inversion.
    gallery = InversionFlags(oti_steps=steps, precision=precision).config() if invert_gallery else None
    with (
        CrossGapIndex.open_or_create(
            index, model=model, device=device, factory=factory, wait=not no_wait, precision=precision
        ) as cgx,
        progress_bar("embedding", "img", enabled=not quiet) as progress,
        phase_lines("index", enabled=not quiet) as build_progress,
    ):
        cgx.report_index_builds(build_progress)
        result = cgx.index_folders(
            folders,
            include_hidden=include_hidden,
            exclude=exclude or (),
            max_megapixels=max_image_megapixels,
            max_file_bytes=int(max_file_mb * 1e6),
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            engine=build_engine,
            retry_failed=retry_failed,
        )
        derived = keep_gallery_current(cgx, "image", gallery, build_engine, quiet)
        note = None if quiet else cgx.model_note()
        note = note if note and first_time_for_index(cgx.path) else None
    if report is not None:
        lines = "".join(f"{path}\t{reason}\n" for path, reason in result.skipped)
        report.write_bytes(lines.encode("utf-8", "surrogateescape"))  # file names as their own bytes
    if not quiet:
        _tell_build(result, derived, note)


def _tell_build(result: BuildReport, derived: list[str], note: str | None) -> None:
    """The build's summary on stderr: counts, derived collections, new unreadable files, the model note."""
    from crossgap_index.cli.gallery_upkeep import tell_derived
    from crossgap_index.cli.render import build_summary, err, printable
    from crossgap_index.cli.render import note as print_note

    err.print(build_summary(result), highlight=False)
    tell_derived(derived)
    new_failures = result.skipped[result.known_failures :]
    if new_failures:
        shown = "; ".join(f"{printable(p)} ({r})" for p, r in new_failures[:5])
        more = f" and {len(new_failures) - 5} more" if len(new_failures) > 5 else ""
        err.print(f"skipped {len(new_failures)} unreadable files: {shown}{more}", highlight=False)
    if note:
        print_note(note)

"""`cgx watch`: keep an index in step with folders as files come, change, move and go."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from crossgap_index.cli.options import (
    IncludeHiddenOpt,
    MaxFileMbOpt,
    MaxImageMegapixelsOpt,
    ServiceIndexOpt,
    exclude_option,
)
from crossgap_index.errors import QueryError
from crossgap_index.folder_watch import WatchSettings
from crossgap_index.ingest.limits import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_MEGAPIXELS

ExcludeOpt = exclude_option(
    "Leave out folders and files matching GLOB (repeatable), as `cgx build-index --exclude` does; the NAS and system "
    "folders build-index always leaves out are left out here too."
)
WatchDeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]


def watch_command(
    folders: Annotated[list[Path], typer.Argument(help="Folders to keep indexed, recursively.")],
    index: ServiceIndexOpt = None,
    model: Annotated[str | None, typer.Option(help="Model of a new index (an existing index keeps its own).")] = None,
    device: WatchDeviceOpt = "auto",
    include_hidden: IncludeHiddenOpt = False,
    exclude: ExcludeOpt = None,
    debounce_ms: Annotated[
        int, typer.Option(min=1, help="The longest a batch collects changes before it is written.")
    ] = WatchSettings.debounce_ms,
    step_ms: Annotated[
        int, typer.Option(min=1, help="A batch is written once the folders are quiet this long.")
    ] = WatchSettings.step_ms,
    max_image_megapixels: MaxImageMegapixelsOpt = DEFAULT_MAX_MEGAPIXELS,
    max_file_mb: MaxFileMbOpt = DEFAULT_MAX_FILE_MB,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per embedding batch (and per commit).")] = 64,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No lines on stderr.")] = False,
) -> None:
    """Watch FOLDERS and keep the index in step: new and edited images are embedded, moved ones keep their
    ids, deleted ones leave. Changes are collected into batches (one line each on stderr), each written like
    `cgx build-index` (the index lock held while it is written). On start it first catches up with whatever
    changed while it was not running, so a killed watcher resumes by starting again. Ctrl-C stops it cleanly."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.folder_watch import FolderWatcher, batch_line

    roots = watched_roots(folders)
    settings = WatchSettings(
        include_hidden=include_hidden,
        exclude=tuple(exclude or ()),
        debounce_ms=debounce_ms,
        step_ms=step_ms,
        max_megapixels=max_image_megapixels,
        max_file_bytes=int(max_file_mb * 1e6),
        batch_size=batch_size,
    )

    def tell(batch) -> None:
        if not quiet:
            print(batch_line(batch), file=sys.stderr, flush=True)

    def note(problem: str) -> None:
        if not quiet:
            print(f"cgx watch: note: {problem}", file=sys.stderr, flush=True)

    with CrossGapIndex.open_or_create(index, model=model, device=device) as cgx:
        watcher = FolderWatcher(cgx, roots, settings, on_batch=tell, on_problem=note)
        if not quiet:
            print(f"cgx watch: watching {', '.join(map(str, roots))} into {cgx.path}", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop ends like Ctrl-C
        try:
            watcher.run()
        except KeyboardInterrupt:
            if not quiet:
                print("cgx watch: stopped; every finished batch is saved", file=sys.stderr, flush=True)


def watched_roots(folders: list[Path]) -> list[Path]:
    """The folders to watch, resolved; a one-line error for one that is not a folder."""
    from crossgap_index.ingest.discover import resolve_roots

    roots = resolve_roots(folders)
    for root in roots:
        if not root.is_dir():
            raise QueryError(f"cannot watch {root}: not a folder")
    return roots


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt

"""`cgx`: a thin typer layer over crossgap_index.CrossGapIndex. Parse, call the library, render."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cli.render import build_summary, err, info_table, out, print_hits, progress_bar
from crossgap_index import CrossGapIndex
from crossgap_index.errors import CrossGapError
from crossgap_index.ingest.decode import DEFAULT_MAX_MEGAPIXELS
from crossgap_index.ingest.discover import is_image_path, resolve_roots
from crossgap_index.ingest.texts import read_text_corpus
from crossgap_index.models import DEFAULT_MODEL

app = typer.Typer(
    help="crossgap-index: CLIP image/text search with modality-inversion reranking.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

IndexOpt = Annotated[
    Path | None,
    typer.Option("--index", envvar="CGX_INDEX", help="Index directory [default: $CGX_INDEX or the user data dir]."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        envvar="CGX_MODEL",
        help=f"Model spec: ARCH/TAG (default {DEFAULT_MODEL}), ARCH::/path/weights, a model folder, "
        "or a bundled name (tiny-random, crossgap-small). New indexes only; an existing index keeps its model.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries on stderr.")]


class Target(str, Enum):
    images = "images"
    texts = "texts"


def fails_cleanly(command):
    """Expected failures become one line on stderr and exit 1; Ctrl-C exits 130 after saving."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CrossGapError as exc:
            err.print(f"[red]cgx: error:[/red] {exc}", highlight=False, markup=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("cgx: interrupted; work done so far is saved, re-run to resume")
            raise typer.Exit(130) from None

    return wrapper


@app.command("build-index")
@fails_cleanly
def build_index(
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
    include_hidden: Annotated[bool, typer.Option(help="Also index hidden files and folders.")] = False,
    max_image_megapixels: Annotated[
        float, typer.Option(help="Skip images larger than this (decompression-bomb guard).")
    ] = DEFAULT_MAX_MEGAPIXELS,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per embedding batch.")] = 64,
    workers: Annotated[int, typer.Option(min=1, help="Decoding threads.")] = 4,
    report: Annotated[Path | None, typer.Option(help="Write every skipped file and its reason to this file.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Embed the images under FOLDERS into the index. Incremental: unchanged files are skipped,
    changed ones re-embedded, deleted ones removed, renamed or duplicate files reuse stored vectors."""
    folders = resolve_roots(folders)  # before an index is created for a typo
    with (
        CrossGapIndex.open_or_create(index, model=model, device=device, factory=factory) as cgx,
        progress_bar("embedding", "img", enabled=not quiet) as progress,
    ):
        result = cgx.index_folders(
            folders,
            include_hidden=include_hidden,
            max_megapixels=max_image_megapixels,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
        )
    if report is not None:
        report.write_text("".join(f"{path}\t{reason}\n" for path, reason in result.skipped))
    if not quiet:
        err.print(build_summary(result), highlight=False)
        if result.skipped:
            shown = "; ".join(f"{p} ({r})" for p, r in result.skipped[:5])
            more = f" and {len(result.skipped) - 5} more" if len(result.skipped) > 5 else ""
            err.print(f"skipped {len(result.skipped)} unreadable files: {shown}{more}", highlight=False)


@app.command("add-texts")
@fails_cleanly
def add_texts(
    file: Annotated[Path, typer.Argument(help='.txt (one document per line) or .jsonl ({"text": ..., "id": ...}).')],
    index: IndexOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Add a text corpus beside the images; exact duplicates are stored once."""
    corpus = read_text_corpus(file)
    with CrossGapIndex.open_or_create(index, model=model, device=device) as cgx:
        result = cgx.add_texts(corpus.texts, corpus.ids)
    if not quiet:
        err.print(f"added {result.added} texts, {result.duplicates} duplicates, {len(corpus.bad_lines)} bad lines")
        for lineno, reason in corpus.bad_lines[:10]:
            err.print(f"  {file}:{lineno}: {reason}", highlight=False)


@app.command()
@fails_cleanly
def query(
    query: Annotated[str, typer.Argument(help="An image file, or else text.")],
    index: IndexOpt = None,
    device: DeviceOpt = "auto",
    as_image: Annotated[bool, typer.Option("--image", help="Treat QUERY as an image path.")] = False,
    as_text: Annotated[bool, typer.Option("--text", help="Treat QUERY as text even if such a file exists.")] = False,
    target: Annotated[Target, typer.Option(help="Which collection to search.")] = Target.images,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Number of results.")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    paths_only: Annotated[bool, typer.Option("--paths-only", help="Only paths (or texts), one per line.")] = False,
) -> None:
    """Search the index with an image or a text."""
    if as_image and as_text:
        raise typer.BadParameter("--image and --text exclude each other")
    is_image = as_image or (not as_text and Path(query).expanduser().is_file() and is_image_path(Path(query)))
    with CrossGapIndex.open(index, device=device) as cgx:
        kwargs = {"image": query} if is_image else {"text": query}
        hits = cgx.search(**kwargs, target=target.value, k=top_k)
    fmt = "json" if json_out else "paths" if paths_only else "table"
    query_doc = {"kind": "image" if is_image else "text", "value": query}
    print_hits(hits, query_doc, {"target": target.value, "k": top_k, "mode": "intra"}, fmt)


@app.command()
@fails_cleanly
def info(
    index: IndexOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Model, dimension, counts, FAISS factories and sizes on disk of an index."""
    with CrossGapIndex.open(index) as cgx:
        details = cgx.info()
    if json_out:
        print(json.dumps(asdict(details), indent=2))
    else:
        out.print(info_table(details))


def main() -> None:
    app()

"""`cgx`: a thin typer layer over crossgap_index.CrossGapIndex. Parse, call the library, render."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from crossgap_index import __version__

# Start-up stays light: only torch-free modules here. The library, rich rendering, numpy, FAISS and
# torch load inside the commands that use them (`cgx --help` and `cgx info` never import torch).
from crossgap_index.cli.duplicates_command import duplicates_command
from crossgap_index.cli.eval_command import eval_command
from crossgap_index.cli.export_command import export_command
from crossgap_index.cli.import_command import import_command
from crossgap_index.cli.maintenance import NoWaitOpt, check_command, compact_command, ls_command, remove_command
from crossgap_index.cli.query_arg import query_modality, query_of
from crossgap_index.cli.serve_command import serve_command
from crossgap_index.cli.tune_command import train_inverter_command, tune_command
from crossgap_index.cli.watch_command import watch_command
from crossgap_index.demo import DEMO_MODEL
from crossgap_index.errors import CrossGapError, CrossGapWarning, is_disk_full
from crossgap_index.ingest.discover import DEFAULT_EXCLUDES
from crossgap_index.ingest.limits import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_MEGAPIXELS
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.config import LR_MAX
from crossgap_index.models import DEFAULT_MODEL, bundled_names
from crossgap_index.search.modes import MODE_NAMES, SERVED_OTI_STEPS
from crossgap_index.search.registry import mode_help_text
from crossgap_index.words import RRF_K

app = typer.Typer(
    help="crossgap-index: CLIP image/text search with modality-inversion reranking.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich markup would eat "[default: ...]" and cost start-up time
)


def _version(value: bool) -> None:
    if value:
        print(f"cgx (crossgap-index) {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    warnings.showwarning = _show_note  # library notes (e.g. a truncated query text) as one line
    # The command owns its process (the library never touches process-wide state): Pillow's fixed 89 MP bomb
    # warning is hidden here, --max-image-megapixels being the limit that applies.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    # open_clip logs its loading chatter on the root logger ("no pretrained weights" for random models).
    logging.getLogger().addFilter(lambda record: "open_clip" not in record.pathname)
    _plain_library_log()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (a test runner may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _plain_library_log() -> None:
    """The library's log lines (e.g. waiting for another writer) on stderr as they are, without a
    ``WARNING:crossgap_index:`` prefix, whatever another package did to the root logger."""
    logger = logging.getLogger("crossgap_index")
    if not any(getattr(h, "_cgx", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._cgx = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


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
        f"or a bundled name ({', '.join(bundled_names())}). New indexes only; an existing index keeps its model.",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA when available), cpu, cuda, cuda:N (the Nth GPU) or mps (Apple GPU)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries on stderr.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", help="Also show the engine's own logs (Ray's INFO/WARNING lines).")
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto (bf16 where the CPU/GPU runs it natively, else fp32), fp32 or bf16: the model's compute "
        "precision; an index takes another precision than its vectors' only within the measured agreement.",
    ),
]


class Target(str, Enum):
    images = "images"
    texts = "texts"


COLLECTIONS = {Target.images: "image", Target.texts: "text"}


def fails_cleanly(command):
    """Expected failures become one line on stderr and exit 1; Ctrl-C exits 130 after saving."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CrossGapError as exc:
            print(f"cgx: error: {_one_line(exc)}", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print("cgx: interrupted; work done so far is saved, re-run to resume", file=sys.stderr)
            raise typer.Exit(130) from None
        except OSError as exc:  # the file system said no (a path that is a file, a full disk, permissions)
            where = f" {exc.filename}:" if exc.filename else ""
            full = " disk full:" if is_disk_full(exc) else ""
            print(f"cgx: error:{full}{where} {exc.strerror or exc}", file=sys.stderr)
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug: still one line, the traceback on request
            if hasattr(exc, "exit_code") or os.environ.get("CGX_DEBUG"):
                raise  # typer's own exits and usage errors, or a debugging user
            if is_disk_full(exc):  # SQLite or FAISS out of space outside the store's writes (e.g. a cache)
                print(f"cgx: error: disk full: {_one_line(exc)}; free some space and re-run", file=sys.stderr)
                raise typer.Exit(1) from None
            print(
                f"cgx: internal error: {type(exc).__name__}: {_one_line(exc)} (CGX_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            raise typer.Exit(2) from None

    return wrapper


def _one_line(message: object) -> str:
    return " ".join(str(message).split("\n"))


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """Library notes (CrossGapWarning) are one line on stderr; other warnings keep Python's format."""
    if issubclass(category, CrossGapWarning):
        print(f"cgx: note: {_one_line(message)}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


RayAddressOpt = Annotated[
    str | None, typer.Option(help="--engine ray: auto, or a cluster address [default: a new local instance].")
]


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
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GLOB",
            help="Leave out folders and files matching GLOB (repeatable): a name pattern (raw, *.tmp.jpg) matches "
            "any name on the way, one with / the path under the folder (2019/drafts/*). Files indexed before and "
            f"excluded now leave the index. Always left out: {', '.join(DEFAULT_EXCLUDES)}.",
        ),
    ] = None,
    max_image_megapixels: Annotated[
        float, typer.Option(min=0.0, help="Skip images larger than this (decompression-bomb guard).")
    ] = DEFAULT_MAX_MEGAPIXELS,
    max_file_mb: Annotated[
        float, typer.Option(min=0.0, help="Skip files larger than this many MB without reading them.")
    ] = DEFAULT_MAX_FILE_MB,
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
    engine: Annotated[
        str,
        typer.Option(
            help="local (threads + this process) or ray (Ray Data: decode tasks, embedding actors; --invert-gallery "
            "and the derived collections --cross searches run in a Ray actor pool too). This process writes the index."
        ),
    ] = "local",
    ray_address: RayAddressOpt = None,
    no_wait: NoWaitOpt = False,
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Embed the images under FOLDERS into the index. Incremental: unchanged files are skipped,
    changed ones re-embedded, deleted ones removed, renamed or duplicate files reuse stored vectors."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.render import build_summary, err, first_time_for_index, phase_lines, printable, progress_bar
    from crossgap_index.engines import get_engine
    from crossgap_index.ingest.discover import resolve_roots

    folders = resolve_roots(folders)  # before an index is created for a typo
    build_engine = get_engine(engine, ray_address, verbose=verbose)
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
        if invert_gallery or cgx.gallery_inversion is not None:
            config = InversionConfig(oti_steps=steps, precision=precision) if invert_gallery else None
            with progress_bar("inverting gallery", "img", enabled=not quiet) as gallery_progress:
                cgx.invert_gallery(config, progress=gallery_progress, engine=build_engine)
        derived = cgx.build_derived(engine=build_engine)
        note = None if quiet else cgx.model_note()
        note = note if note and first_time_for_index(cgx.path) else None
    if report is not None:
        lines = "".join(f"{path}\t{reason}\n" for path, reason in result.skipped)
        report.write_bytes(lines.encode("utf-8", "surrogateescape"))  # file names as their own bytes
    if not quiet:
        err.print(build_summary(result), highlight=False)
        if derived:
            err.print(f"built {len(derived)} derived collection(s) for --cross: {', '.join(derived)}", highlight=False)
        new_failures = result.skipped[result.known_failures :]
        if new_failures:
            shown = "; ".join(f"{printable(p)} ({r})" for p, r in new_failures[:5])
            more = f" and {len(new_failures) - 5} more" if len(new_failures) > 5 else ""
            err.print(f"skipped {len(new_failures)} unreadable files: {shown}{more}", highlight=False)
        if note:
            err.print(f"cgx: note: {note}", highlight=False)


@app.command("add-texts")
@fails_cleanly
def add_texts(
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
    engine: Annotated[
        str,
        typer.Option(
            help="Where --invert-gallery and the derived collections --cross searches run: local (this process) or "
            "ray (a Ray actor pool). Texts are embedded here either way; this process writes the index."
        ),
    ] = "local",
    ray_address: RayAddressOpt = None,
    no_wait: NoWaitOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Add a text corpus beside the images; exact duplicates are stored once."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.render import err, progress_bar
    from crossgap_index.engines import get_engine
    from crossgap_index.ingest.texts import read_text_corpus

    corpus = read_text_corpus(file, max_bytes=int(max_file_mb * 1e6))
    gallery_engine = get_engine(engine, ray_address, verbose=verbose)
    with (
        CrossGapIndex.open_or_create(index, model=model, device=device, wait=not no_wait) as cgx,
        progress_bar("embedding texts", "txt", enabled=not quiet) as progress,
    ):
        result = cgx.add_texts(corpus.texts, corpus.ids, progress=progress)
        if invert_gallery or cgx.text_gallery_inversion is not None:
            config = InversionConfig(ovi_steps=ovi_steps) if invert_gallery else None
            with progress_bar("inverting texts", "txt", enabled=not quiet) as gallery_progress:
                cgx.invert_gallery(config, progress=gallery_progress, modality="text", engine=gallery_engine)
        derived = cgx.build_derived(engine=gallery_engine)
    if not quiet:
        err.print(f"added {result.added} texts, {result.duplicates} duplicates, {len(corpus.bad_lines)} bad lines")
        if derived:
            err.print(f"built {len(derived)} derived collection(s) for --cross: {', '.join(derived)}", highlight=False)
        for lineno, reason in corpus.bad_lines[:10]:
            err.print(f"  {file}:{lineno}: {reason}", highlight=False)


Mode = Enum("Mode", {name.replace("-", "_"): name for name in MODE_NAMES}, type=str)


class Merge(str, Enum):
    rrf = "rrf"
    score = "score"
    none = "none"


@app.command()
@fails_cleanly
def query(
    query: Annotated[
        str | None,
        typer.Argument(
            help="An image file, or else text; or query arithmetic: '2:\"red car\" + ./photo.jpg - night + item:42' "
            "(weights N:, + and - between spaces, quoted texts, item:ID for a stored item).",
            show_default=False,
        ),
    ] = None,
    index: IndexOpt = None,
    device: DeviceOpt = "auto",
    as_image: Annotated[bool, typer.Option("--image", help="Treat QUERY as an image path.")] = False,
    as_text: Annotated[bool, typer.Option("--text", help="Treat QUERY as text even if such a file exists.")] = False,
    target: Annotated[Target, typer.Option(help="Which collection to search.")] = Target.images,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Number of results.")] = 10,
    cross: Annotated[
        bool,
        typer.Option(
            "--cross",
            help="Search the way that wins on this index: the mode `cgx tune` stored, else the model's default "
            "(chosen on development data; cgx info says which). Same as --mode auto.",
        ),
    ] = False,
    mode: Annotated[
        Mode | None,
        typer.Option(
            metavar="MODE",
            help=mode_help_text(),
        ),
    ] = None,
    merge: Annotated[
        Merge,
        typer.Option(
            help="rrf: reciprocal rank fusion, 1/(rrf_k + rank) summed; score: min-max normalised "
            "scores, weighted by --alpha; none: cross results only."
        ),
    ] = Merge.rrf,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of the cross list for --merge score.")] = 0.5,
    rrf_k: Annotated[int, typer.Option(min=1, help="RRF constant.")] = RRF_K,
    depth: Annotated[int, typer.Option(min=1, help="How deep each merged list is taken (at least -k).")] = 100,
    steps: Annotated[
        int | None, typer.Option(min=0, help="Inversion steps [default: 25, OTI and OVI; the paper: 150 and 1000].")
    ] = None,
    tokens: Annotated[int | None, typer.Option(min=1, help="OTI pseudo-tokens R [default: 1].")] = None,
    patches: Annotated[int | None, typer.Option(min=1, help="OVI pseudo-patches P [default: per model].")] = None,
    lr: Annotated[
        float | None, typer.Option(help=f"Inversion learning rate (AdamW), at most {LR_MAX:g} [default: 0.02].")
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="OTI prompt; {} marks the pseudo-tokens [default: 'a photo of {}'].")
    ] = None,
    span_components: Annotated[
        int | None, typer.Option(min=1, help="Directions kept by --mode span [default: the model's rule, cgx info].")
    ] = None,
    vocab: Annotated[
        Path | None,
        typer.Option(help="Concept names, one per line, for --mode span / concept [default: ImageNet-1k names]."),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ignore and do not fill the inversion cache.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    paths_only: Annotated[bool, typer.Option("--paths-only", help="Only paths (or texts), one per line.")] = False,
    null: Annotated[
        bool, typer.Option("--null", "-0", help="With --paths-only: end each item with NUL, not newline (xargs -0).")
    ] = False,
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
    item: Annotated[
        int | None,
        typer.Option("--item", min=1, metavar="ID", help="Search with stored item ID's own vector (more like this)."),
    ] = None,
    under: Annotated[
        Path | None, typer.Option("--under", metavar="FOLDER", help="Only images in FOLDER or below it.")
    ] = None,
    glob: Annotated[
        str | None,
        typer.Option(
            "--glob",
            metavar="PATTERN",
            help="Only images whose file name matches PATTERN ('*.jpg'; with a / the path).",
        ),
    ] = None,
    only_id: Annotated[
        list[int] | None, typer.Option("--only-id", metavar="ID", help="Only these item ids (repeatable).")
    ] = None,
    exclude_id: Annotated[
        list[int] | None, typer.Option("--exclude-id", metavar="ID", help="Never these item ids (repeatable).")
    ] = None,
    external_id: Annotated[
        list[str] | None,
        typer.Option("--external-id", metavar="ID", help="Only texts added with these external ids (repeatable)."),
    ] = None,
    keep_query_item: Annotated[
        bool,
        typer.Option("--keep-query-item", help="With --item or item:ID terms: let the query's own items be hits."),
    ] = False,
) -> None:
    """Search the index with an image, a text, a stored item or a weighted sum of them, plainly or through
    modality inversion; filters keep hits to a folder, a file-name pattern or given ids, and -k of those come back.

    QUERY is an image when it names an existing image file, else text; an argument with an image
    extension that names no file is an error (use --text to search for such text). Query arithmetic sums
    the terms' unit features (weights and signs) and searches the re-normalised sum as one query: texts
    only or images only can be inverted by --cross modes; a mix of both is searched as a raw vector."""
    from crossgap_index import CrossGapIndex, SearchOptions
    from crossgap_index.cli.render import err, first_time_for_index, inversion_bar, print_hits
    from crossgap_index.evaluation.data import read_vocab

    library_query = query_of(query, item, as_image, as_text)
    if mode is None:
        mode = Mode("cross" if merge is Merge.none else "auto") if cross else Mode("intra")
    elif mode.value == "fused" and merge is Merge.none:
        mode = Mode("cross")
    given = {"oti_steps": steps, "n_tokens": tokens, "n_patches": patches, "lr": lr, "template": template}
    given = {k: v for k, v in given.items() if v is not None}
    config = None
    if given or precision != "auto":
        if steps is not None:
            given["ovi_steps"] = steps
        config = InversionConfig(**{"oti_steps": SERVED_OTI_STEPS, **given, "precision": precision})
    projection = {}
    if span_components is not None:
        projection["components"] = span_components
    if vocab is not None:
        projection["vocabulary"] = read_vocab(vocab)
    if mode.value == "auto" and (given or projection) and not quiet:
        err.print(
            "cgx: note: --cross serves the tuned mode (or the default) as stored; --steps, --tokens, --vocab and "
            "--span-components apply to an explicit --mode"
        )
    options = SearchOptions(
        target=target.value,
        k=top_k,
        mode=mode.value,
        merge="rrf" if merge is Merge.none else merge.value,
        alpha=alpha,
        rrf_k=rrf_k,
        depth=max(depth, top_k),
        inversion=config,
        projection=projection or None,
        use_cache=not no_cache,
        under=str(under.expanduser().resolve()) if under is not None else None,
        glob=glob,
        only_ids=tuple(only_id) if only_id else None,
        exclude_ids=tuple(exclude_id or ()),
        external_ids=tuple(external_id) if external_id else None,
        exclude_query=False if keep_query_item else None,
    )
    with CrossGapIndex.open(index, device=device, precision=precision) as cgx:
        modality = query_modality(library_query, cgx.item)
        is_image = modality == "image"
        served = cgx.describe_mode(modality, options)
        total = inversion_steps(served, config or InversionConfig(), is_image)
        with inversion_bar(total, enabled=not (quiet or json_out)) as progress:
            hits = cgx.search_batch([library_query], options, progress=progress)[0]
        held = cgx.info().counts[COLLECTIONS[target]] if len(hits) < top_k else len(hits)
        note = cgx.model_note() if target is Target.images and not quiet else None
        note = note if note and first_time_for_index(cgx.path) else None
    if note and not quiet:
        err.print(f"cgx: note: {note}", highlight=False)
    inter_modal = modality in ("image", "text") and is_image != (target is Target.images)
    if inter_modal and mode.value != "intra" and served["name"] == "intra" and not quiet:
        err.print(
            "cgx: note: this query is already inter-modal (cross search turns image->images, text->texts): "
            "served as it is"
        )
    if len(hits) < top_k and not quiet:
        reason = f"the index holds {held} {target.value}" if held <= len(hits) else "the merged lists ran short"
        if held > len(hits) and not options.item_filter().empty:
            reason = f"only {len(hits)} {target.value} pass the filters"
        err.print(f"cgx: note: {len(hits)} hits, fewer than -k {top_k}: {reason}", highlight=False)
    fmt = "json" if json_out else "paths" if paths_only else "table"
    kind = "combined" if "terms" in library_query else next(iter(library_query))
    query_doc = {"kind": kind, "value": query if item is None else item}
    settings = {"target": target.value, "k": top_k, "mode": mode.value, "served": served}
    print_hits(hits, query_doc, settings, fmt, separator=b"\0" if null else b"\n")


def inversion_steps(served: dict, config: InversionConfig, is_image: bool) -> int | None:
    """How many steps the served mode's inversion runs (its leg's own setting, else the query's), for the
    progress bar's total; None when no leg inverts by steps."""
    key = "oti_steps" if is_image else "ovi_steps"
    for leg in served["legs"]:
        if key in leg["params"]:
            return int(leg["params"][key])
        if leg["transform"] == "invert":
            return getattr(config, key)
    return None


@app.command()
@fails_cleanly
def info(
    index: IndexOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Model, dimension, counts, FAISS factories and sizes on disk of an index."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.render import info_table, out

    with CrossGapIndex.open(index) as cgx:
        details = cgx.info()
    if json_out:
        print(json.dumps(asdict(details), indent=2))
    else:
        out.print(info_table(details))


@app.command()
@fails_cleanly
def demo(
    folder: Annotated[Path, typer.Argument(help="Where to write the demo images, index and contact sheet.")] = Path(
        "cgx-demo"
    ),
    model: Annotated[str, typer.Option(help="Model for the demo index.")] = DEMO_MODEL,
    images: Annotated[int, typer.Option(min=8, help="Synthetic images in the gallery.")] = 240,
    tune_images: Annotated[int, typer.Option(min=8, help="Labelled synthetic photos `cgx tune` chooses on.")] = 480,
    inversion: Annotated[bool, typer.Option(help="Let tune also try OTI settings and the inverter (slower).")] = False,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Hits per mode.")] = 8,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Offline demo: generate labelled synthetic photos, index them with the bundled crossgap-small model,
    tune the index on other labelled photos, and show a held-out query where the tuned mode changes the
    top results, beside plain intra-modal search, with a contact sheet."""
    import shlex

    from crossgap_index.cli.eval_command import _progress
    from crossgap_index.cli.render import build_summary, err, hits_table, out, progress_bar
    from crossgap_index.demo import run_demo

    with progress_bar("embedding", "img", enabled=not quiet) as progress, _progress(not quiet) as tune_progress:
        result = run_demo(
            folder,
            model=model,
            n_images=images,
            k=top_k,
            tune_images=tune_images,
            inversion=inversion,
            device=device,
            progress=progress,
            tune_progress=tune_progress,
        )
    tuned = result.tuned
    for mode, hits in result.hits.items():
        name = mode
        if mode == "tuned":
            name = f"tuned = {escape(tuned['candidate'])}" if result.tune_stored else "--cross (untuned default)"
        title = f"{name}: query {result.query} (a {result.query_label}), {result.correct[mode]}/{top_k} same class"
        out.print(hits_table(hits, title, label_of=lambda h: Path(h.path).parent.name.replace("_", " ")))
    if tuned is not None:
        rep = tuned["report"]
        out.print(
            f"tune chose {escape(tuned['candidate'])}: mAP {rep['map'] * 100:.2f} vs intra "
            f"{rep['intra_map'] * 100:.2f} ({rep['delta_map'] * 100:+.2f}) on held-out labelled photos",
            highlight=False,
        )
    if not result.tune_stored:
        out.print(f"tune: {escape(result.tune_reason)}", highlight=False)
    try_it = f"cgx query {shlex.quote(str(result.query))} --cross --index {shlex.quote(str(result.index))}"
    out.print(f"try it: {escape(try_it)}", highlight=False, soft_wrap=True)
    if not quiet:
        err.print(build_summary(result.build), highlight=False)
        err.print(f"contact sheet: {result.sheet}", highlight=False)


app.command("eval")(fails_cleanly(eval_command))
app.command("export")(fails_cleanly(export_command))
app.command("duplicates")(fails_cleanly(duplicates_command))
app.command("import")(fails_cleanly(import_command))
app.command("tune")(fails_cleanly(tune_command))
app.command("train-inverter")(fails_cleanly(train_inverter_command))
for _name, _command in (
    ("remove", remove_command),
    ("ls", ls_command),
    ("check", check_command),
    ("compact", compact_command),
):
    app.command(_name)(fails_cleanly(_command))
app.command("serve")(fails_cleanly(serve_command))
app.command("watch")(fails_cleanly(watch_command))


def main() -> None:
    app()

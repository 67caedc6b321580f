"""`cgx query`: search an index with an image, a text, a stored item or a weighted sum of them.

The options are declared once as aliases below, so the command's signature is one line per flag; the body
turns the flags into a ``SearchOptions``, runs one search and renders it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crossgap_index.cli.options import DeviceOpt, IndexOpt, JsonOpt, PrecisionOpt, QuietOpt, Target
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.config import LR_MAX
from crossgap_index.inversion.flags import InversionFlags
from crossgap_index.search.query_arg import query_modality, query_of
from crossgap_index.search.registry import mode_help_text, mode_names
from crossgap_index.words import RRF_K, TARGETS

if TYPE_CHECKING:
    from crossgap_index import SearchOptions
    from crossgap_index.api import Hit

# Every mode name the registry holds (compositions BASE+POST included), for typer's check of --mode.
Mode = Enum("Mode", {name.replace("-", "_"): name for name in mode_names()}, type=str)


class Merge(str, Enum):
    rrf = "rrf"
    score = "score"
    none = "none"


QueryArg = Annotated[
    str | None,
    typer.Argument(
        help="An image file, or else text; or query arithmetic: '2:\"red car\" + ./photo.jpg - night + item:42' "
        "(weights N:, + and - between spaces, quoted texts, item:ID for a stored item).",
        show_default=False,
    ),
]
AsImageOpt = Annotated[bool, typer.Option("--image", help="Treat QUERY as an image path.")]
AsTextOpt = Annotated[bool, typer.Option("--text", help="Treat QUERY as text even if such a file exists.")]
TargetOpt = Annotated[Target, typer.Option(help="Which collection to search.")]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, help="Number of results.")]
CrossOpt = Annotated[
    bool,
    typer.Option(
        "--cross",
        help="Search the way that wins on this index: the mode `cgx tune` stored, else the model's default "
        "(chosen on development data; cgx info says which). Same as --mode auto.",
    ),
]
ModeOpt = Annotated[Mode | None, typer.Option(metavar="MODE", help=mode_help_text())]
MergeOpt = Annotated[
    Merge,
    typer.Option(
        help="rrf: reciprocal rank fusion, 1/(rrf_k + rank) summed; score: min-max normalised "
        "scores, weighted by --alpha; none: cross results only."
    ),
]
AlphaOpt = Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of the cross list for --merge score.")]
RrfKOpt = Annotated[int, typer.Option(min=1, help="RRF constant.")]
DepthOpt = Annotated[int, typer.Option(min=1, help="How deep each merged list is taken (at least -k).")]
# --steps: the inversion steps of the query's own direction, OTI for an image and OVI for a text
# (crossgap_index.inversion.flags): the one meaning `cgx eval`, `cgx tune` and the server's `steps` share.
StepsOpt = Annotated[
    int | None, typer.Option(min=0, help="Inversion steps [default: 25, OTI and OVI; the paper: 150 and 1000].")
]
TokensOpt = Annotated[int | None, typer.Option(min=1, help="OTI pseudo-tokens R [default: 1].")]
PatchesOpt = Annotated[int | None, typer.Option(min=1, help="OVI pseudo-patches P [default: per model].")]
LrOpt = Annotated[
    float | None, typer.Option(help=f"Inversion learning rate (AdamW), at most {LR_MAX:g} [default: 0.02].")
]
TemplateOpt = Annotated[
    str | None, typer.Option(help="OTI prompt; {} marks the pseudo-tokens [default: 'a photo of {}'].")
]
SpanComponentsOpt = Annotated[
    int | None, typer.Option(min=1, help="Directions kept by --mode span [default: the model's rule, cgx info].")
]
VocabOpt = Annotated[
    Path | None,
    typer.Option(help="Concept names, one per line, for --mode span / concept [default: ImageNet-1k names]."),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Ignore and do not fill the inversion cache.")]
PathsOnlyOpt = Annotated[bool, typer.Option("--paths-only", help="Only paths (or texts), one per line.")]
NullOpt = Annotated[
    bool, typer.Option("--null", "-0", help="With --paths-only: end each item with NUL, not newline (xargs -0).")
]
ItemOpt = Annotated[
    int | None,
    typer.Option("--item", min=1, metavar="ID", help="Search with stored item ID's own vector (more like this)."),
]
UnderOpt = Annotated[Path | None, typer.Option("--under", metavar="FOLDER", help="Only images in FOLDER or below it.")]
GlobOpt = Annotated[
    str | None,
    typer.Option(
        "--glob",
        metavar="PATTERN",
        help="Only images whose file name matches PATTERN ('*.jpg'; with a / the path).",
    ),
]
OnlyIdOpt = Annotated[
    list[int] | None, typer.Option("--only-id", metavar="ID", help="Only these item ids (repeatable).")
]
ExcludeIdOpt = Annotated[
    list[int] | None, typer.Option("--exclude-id", metavar="ID", help="Never these item ids (repeatable).")
]
ExternalIdOpt = Annotated[
    list[str] | None,
    typer.Option("--external-id", metavar="ID", help="Only texts added with these external ids (repeatable)."),
]
KeepQueryItemOpt = Annotated[
    bool, typer.Option("--keep-query-item", help="With --item or item:ID terms: let the query's own items be hits.")
]


def query_command(
    query: QueryArg = None,
    index: IndexOpt = None,
    device: DeviceOpt = "auto",
    as_image: AsImageOpt = False,
    as_text: AsTextOpt = False,
    target: TargetOpt = Target.images,
    top_k: TopKOpt = 10,
    cross: CrossOpt = False,
    mode: ModeOpt = None,
    merge: MergeOpt = Merge.rrf,
    alpha: AlphaOpt = 0.5,
    rrf_k: RrfKOpt = RRF_K,
    depth: DepthOpt = 100,
    steps: StepsOpt = None,
    tokens: TokensOpt = None,
    patches: PatchesOpt = None,
    lr: LrOpt = None,
    template: TemplateOpt = None,
    span_components: SpanComponentsOpt = None,
    vocab: VocabOpt = None,
    no_cache: NoCacheOpt = False,
    json_out: JsonOpt = False,
    paths_only: PathsOnlyOpt = False,
    null: NullOpt = False,
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
    item: ItemOpt = None,
    under: UnderOpt = None,
    glob: GlobOpt = None,
    only_id: OnlyIdOpt = None,
    exclude_id: ExcludeIdOpt = None,
    external_id: ExternalIdOpt = None,
    keep_query_item: KeepQueryItemOpt = False,
) -> None:
    """Search the index with an image, a text, a stored item or a weighted sum of them, plainly or through
    modality inversion; filters keep hits to a folder, a file-name pattern or given ids, and -k of those come back.

    QUERY is an image when it names an existing image file, else text; an argument with an image
    extension that names no file is an error (use --text to search for such text). Query arithmetic sums
    the terms' unit features (weights and signs) and searches the re-normalised sum as one query: texts
    only or images only can be inverted by --cross modes; a mix of both is searched as a raw vector."""
    from crossgap_index import SearchOptions
    from crossgap_index.cli.render import print_hits

    library_query = query_of(query, item, as_image, as_text)
    mode_name = _mode_name(mode, cross, merge)
    chosen_precision = None if precision == "auto" else precision
    flags = InversionFlags(
        steps=steps, tokens=tokens, patches=patches, lr=lr, template=template, precision=chosen_precision
    )
    inversion = flags.config()
    projection = _projection(span_components, vocab)
    if mode_name == "auto" and (_tunes_inversion(flags) or projection) and not quiet:
        from crossgap_index.cli.render import note

        note(
            "--cross serves the tuned mode (or the default) as stored; --steps, --tokens, --vocab and "
            "--span-components apply to an explicit --mode"
        )
    options = SearchOptions(
        target=target.value,
        k=top_k,
        mode=mode_name,
        merge="rrf" if merge is Merge.none else merge.value,
        alpha=alpha,
        rrf_k=rrf_k,
        depth=max(depth, top_k),
        inversion=inversion,
        projection=projection or None,
        use_cache=not no_cache,
        **_filters(under, glob, only_id, exclude_id, external_id, keep_query_item),
    )
    searched = _search(index, device, precision, library_query, options, quiet or json_out, quiet)
    if not quiet:
        _tell_query(searched, options, mode_name)
    fmt = "json" if json_out else "paths" if paths_only else "table"
    kind = "combined" if "terms" in library_query else next(iter(library_query))
    query_doc = {"kind": kind, "value": query if item is None else item}
    settings = {"target": target.value, "k": top_k, "mode": mode_name, "served": searched.served}
    print_hits(searched.hits, query_doc, settings, fmt, separator=b"\0" if null else b"\n")


def _mode_name(mode: Mode | None, cross: bool, merge: Merge) -> str:
    """The mode `--mode`, `--cross` and `--merge` ask for together (``--merge none`` keeps only the cross list)."""
    if mode is None:
        return ("cross" if merge is Merge.none else "auto") if cross else "intra"
    if mode.value == "fused" and merge is Merge.none:
        return "cross"
    return mode.value


def _projection(span_components: int | None, vocab: Path | None) -> dict:
    """The projection settings `--span-components` and `--vocab` give (empty: the model's own)."""
    projection: dict = {}
    if span_components is not None:
        projection["components"] = span_components
    if vocab is not None:
        from crossgap_index.evaluation.data import read_vocab

        projection["vocabulary"] = read_vocab(vocab)
    return projection


def _filters(
    under: Path | None,
    glob: str | None,
    only_id: list[int] | None,
    exclude_id: list[int] | None,
    external_id: list[str] | None,
    keep_query_item: bool,
) -> dict:
    """The ``SearchOptions`` filter fields the filter flags give (a folder resolved from here)."""
    return {
        "under": str(under.expanduser().resolve()) if under is not None else None,
        "glob": glob,
        "only_ids": tuple(only_id) if only_id else None,
        "exclude_ids": tuple(exclude_id or ()),
        "external_ids": tuple(external_id) if external_id else None,
        "exclude_query": False if keep_query_item else None,
    }


def _tunes_inversion(flags: InversionFlags) -> bool:
    """Whether the flags change how an inversion runs (anything besides its precision)."""
    return bool(set(flags.changes()) - {"precision"})


@dataclass(frozen=True)
class _Searched:
    """One search's hits and what the notes after it need."""

    hits: list[Hit]
    modality: str  # of the query: image, text or vector
    served: dict  # the served mode, as describe_mode() tells it
    held: int  # items the target holds (len(hits) when -k came back in full)
    note: str | None  # the model's first-use note for this index, if due


def _search(
    index: Path | None, device: str, precision: str, query: dict, options: SearchOptions, bar_off: bool, quiet: bool
) -> _Searched:
    """Open the index, run ``query`` under ``options`` with an inversion bar on stderr (unless ``bar_off``)."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.render import first_time_for_index

    with CrossGapIndex.open(index, device=device, precision=precision) as cgx:
        modality = query_modality(query, cgx.item)
        served = cgx.describe_mode(modality, options)
        total = inversion_steps(served, options.inversion or InversionConfig(), modality == "image")
        with _inversion_bar(total, bar_off) as progress:
            hits = cgx.search_batch([query], options, progress=progress)[0]
        held = cgx.info().counts[TARGETS[options.target]] if len(hits) < options.k else len(hits)
        note = cgx.model_note() if options.target == Target.images.value and not quiet else None
        note = note if note and first_time_for_index(cgx.path) else None
    return _Searched(hits, modality, served, held, note)


def _inversion_bar(total_steps: int | None, bar_off: bool) -> AbstractContextManager:
    """The inversion bar's context (bars.inversion_bar); none at all with ``bar_off`` or when the served mode
    runs no inversion (``total_steps`` None, see inversion_steps), so a query that draws no bar loads no rich."""
    if bar_off or total_steps is None:
        return nullcontext()
    from crossgap_index.cli.bars import inversion_bar

    return inversion_bar(total_steps)


def _tell_query(searched: _Searched, options: SearchOptions, mode_name: str) -> None:
    """The notes after a search on stderr: the model's first-use note, a query served plainly because it is
    already inter-modal, and fewer hits than -k with the reason."""
    from crossgap_index.cli.render import note

    hits, target = searched.hits, options.target
    if searched.note:
        note(searched.note)
    is_image = searched.modality == "image"
    inter_modal = searched.modality in ("image", "text") and is_image != (target == Target.images.value)
    if inter_modal and mode_name != "intra" and searched.served["name"] == "intra":
        note("this query is already inter-modal (cross search turns image->images, text->texts): served as it is")
    if len(hits) < options.k:
        held = searched.held
        reason = f"the index holds {held} {target}" if held <= len(hits) else "the merged lists ran short"
        if held > len(hits) and not options.item_filter().empty:
            reason = f"only {len(hits)} {target} pass the filters"
        note(f"{len(hits)} hits, fewer than -k {options.k}: {reason}")


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

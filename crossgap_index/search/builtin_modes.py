"""The modes the package ships, one ``ModeEntry`` each (search/mode_entry.py), in the order people see them.

Adding a mode is one entry here (or ``registry.register_mode`` from outside) plus its implementation: a build
function below for a mode of legs, or a Peer class (search/peers.py) for a peer. Labels and help are for people
(the page's choices and tooltips, the CLI's help, report tables); the eval texts are what ``cgx eval`` prints
beside each row. numpy-free: the CLI reads this at start.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING

from crossgap_index.inversion import InversionConfig
from crossgap_index.search.mode_entry import EvalRow, ModeContext, ModeEntry
from crossgap_index.search.mode_spec import Leg, Mode

if TYPE_CHECKING:  # options.py imports numpy; builders read only its fields
    from crossgap_index.search.options import SearchOptions

# The eval tasks (evaluation/protocol.py) an entry's text may name: query and gallery modalities.
IMAGES, TEXTS, TEXT_TO_IMAGE = "image-to-image", "text-to-text", "text-to-image"
# OTI settings that modes use unless told otherwise: quality peaks early (benchmarks/RESULTS.md), so the
# served default is 25 steps, not the published 150.
SERVED_OTI_STEPS = InversionConfig.oti_steps
# warm: the inverter's output refined by a couple of gentle OTI (image queries) or OVI (text queries) steps
WARM_SETTINGS = {"oti_steps": 2, "ovi_steps": 2, "lr": 5e-3}
_SPEED_ONLY = ("batch_size", "compile", "fast")
IMAGENET_SPAN = {"vocabulary": "imagenet"}


def inversion_params(inversion: InversionConfig | None) -> dict:
    """Every setting that changes the inverted feature, so a stored (tuned) mode does not move when a later
    release changes a default; None: the defaults (an empty dict)."""
    if inversion is None:
        return {}
    return {k: v for k, v in dataclasses.asdict(inversion).items() if k not in _SPEED_ONLY}


def _cross_leg(options: SearchOptions) -> Leg:
    return Leg("cross", "invert", params=inversion_params(options.inversion))


def _auto(options: SearchOptions, context: ModeContext) -> Mode:
    if context.tuned is not None:
        return Mode.from_dict(context.tuned)
    if context.default is None:
        raise ValueError("auto needs the model's default (search.modes.resolve_mode supplies it)")
    return context.default()


def _intra(options: SearchOptions, context: ModeContext) -> Mode:
    return Mode("intra", (Leg("intra"),))


def _cross(options: SearchOptions, context: ModeContext) -> Mode:
    return Mode("cross", (_cross_leg(options),))


def _fused(options: SearchOptions, context: ModeContext) -> Mode:
    legs = (Leg("intra"), _cross_leg(options))
    return Mode("fused", legs, options.merge, options.rrf_k, options.alpha, options.depth)


def _cross_gallery(options: SearchOptions, context: ModeContext) -> Mode:
    return Mode("cross-gallery", (Leg("cross-gallery", gallery="inverted"),))


def _projected(kind: str):
    def build(options: SearchOptions, context: ModeContext) -> Mode:
        return Mode(kind, (Leg(kind, "project", "projected", {"kind": kind, **(options.projection or {})}),))

    return build


def _inverter(options: SearchOptions, context: ModeContext) -> Mode:
    return Mode("inverter", (Leg("inverter", "inverter"),))


def _warm(options: SearchOptions, context: ModeContext) -> Mode:
    params = inversion_params(options.inversion) if options.inversion is not None else dict(WARM_SETTINGS)
    return Mode("warm", (Leg("warm", "warm", params=params),))


def _peer(module: str, class_name: str):
    """The loader of a peer class in ``crossgap_index.search.<module>``: imported when a peer runs (numpy), not at
    start."""

    def load():
        return getattr(importlib.import_module(f"crossgap_index.search.{module}"), class_name)()

    return load


_MODES = (
    ModeEntry(
        "auto",
        _auto,
        "Best for this index",
        "The way of searching `cgx tune` chose for this index, or the default when it was never tuned.",
        "the untuned --cross (the model's default)",
        cost="varies",
        offered=True,
    ),
    ModeEntry(
        "intra",
        _intra,
        "Plain similarity",
        "Compares the query's own embedding with each item's: the usual CLIP search.",
        "query vs gallery, plain embeddings",
        eval_by_task={TEXT_TO_IMAGE: "caption vs images, plain embeddings"},
    ),
    ModeEntry(
        "cross",
        _cross,
        "Translate the query",
        "Turns a photo into the words that would describe it (or words into a picture), then searches with "
        "that; slower, a few hundred milliseconds per query.",
        "inverted query (OTI / OVI) vs gallery",
        cost="optimisation",
        composable=True,
    ),
    ModeEntry(
        "fused",
        _fused,
        "Plain + translated",
        "Runs plain similarity and the translated query, and merges their rankings.",
        "intra + cross, reciprocal rank fusion",
        cost="optimisation",
        eval_rows=(
            EvalRow("fused-rrf", "intra + cross, reciprocal rank fusion", {"merge": "rrf"}),
            EvalRow("fused-score", "intra + cross, min-max normalised score sum", {"merge": "score"}),
        ),
    ),
    ModeEntry(
        "cross-gallery",
        _cross_gallery,
        "Against translated photos",
        "Compares the query with each photo's stored translation into words.",
        "query vs OTI(gallery), same OTI settings",
        cost="gallery-fit",
        needs=("gallery-inversion",),
        composable=True,
        eval_by_task={TEXTS: "query vs OVI(gallery texts), same OVI settings"},
    ),
    ModeEntry(
        "span",
        _projected("span"),
        "Word directions",
        "Keeps only the directions that words vary along (from a list of object names) before comparing; "
        "free at query time.",
        "both projected onto the vocabulary's text span",
        uses_labels=True,
        composable=True,
        eval_rows=(
            EvalRow(
                "span-imagenet",
                "span over the ImageNet-1k names, the published PCA<- (bare names, raw features, d/2; no labels "
                "needed)",
                {"projection": {"preset": "published"}},
            ),
        ),
    ),
    ModeEntry(
        "iso",
        _projected("iso"),
        "Shared directions",
        "Drops the directions where photos and words disagree most before comparing (IsoCLIP); free at query time.",
        "IsoCLIP projector-spectrum truncation",
        needs=("linear-projections",),
        composable=True,
    ),
    ModeEntry(
        "concept",
        _projected("concept"),
        "Concept profile",
        "Describes query and items by how much they resemble each name in a list of concepts, and compares those.",
        "both as distributions over the vocabulary's concepts",
        uses_labels=True,
        composable=True,
    ),
    ModeEntry(
        "inverter",
        _inverter,
        "Learned translation",
        "A network trained on this index translates a photo into words in one pass.",
        "one-pass inversion network (OTI)",
        cost="network",
        needs=("inverter",),
        composable=True,
        eval_by_task={TEXTS: "one-pass inversion network (OVI)"},
    ),
    ModeEntry(
        "warm",
        _warm,
        "Learned + refined",
        "The learned translation, refined by two quick optimisation steps.",
        "inverter output + a few OTI steps",
        cost="optimisation",
        needs=("inverter",),
        composable=True,
        eval_by_task={TEXTS: "inverter output + a few OVI steps"},
    ),
)


def _after_imagenet_span(post: str) -> EvalRow:
    """The eval row of the published span over the ImageNet names followed by the post-step ``post``."""
    return EvalRow(
        f"span-imagenet+{post}", f"span over ImageNet names, then {post}", {"projection": IMAGENET_SPAN}, f"span+{post}"
    )


# Defaults from the papers: alpha-QE / alpha-DBA (Radenović et al.: alpha = 3, n a handful), NNN (k = 128,
# w = 0.75), QB-Norm's dynamic inverted softmax (beta = 20, re-scoring the top 100), GR-CLIP's full mean.
_PEERS = (
    ModeEntry(
        "aqe",
        None,
        "Query expansion",
        "Averages the query with its best few matches and searches again (alpha query expansion).",
        "alpha query expansion: query + its top-n weighted by sim^alpha, searched again",
        cost="second-search",
        role="post",
        defaults={"n": 5, "alpha": 3.0},
        implementation=_peer("post", "AlphaQueryExpansion"),
        eval_rows=(
            EvalRow("dba+aqe", "DBA gallery, then alpha query expansion", mode="dba+aqe"),
            _after_imagenet_span("aqe"),
        ),
    ),
    ModeEntry(
        "dba",
        None,
        "Smoothed gallery",
        "Each item is compared as the average of itself and its nearest neighbours.",
        "database-side augmentation: each gallery vector averaged with its top-n",
        cost="gallery-fit",
        role="adapt",
        composable=True,
        defaults={"n": 5, "alpha": 3.0},
        implementation=_peer("peers", "DatabaseAugmentation"),
    ),
    ModeEntry(
        "nnn",
        None,
        "Hub correction",
        "Lowers items that are close to everything (nearest-neighbour normalisation); free at query time.",
        "nearest neighbor normalization: q.g - w * mean top-k bank similarity of g",
        cost="gallery-fit",
        role="post",
        defaults={"k": 128, "w": 0.75},
        implementation=_peer("peers", "NearestNeighbourNormalisation"),
        eval_rows=(_after_imagenet_span("nnn"),),
    ),
    ModeEntry(
        "qbnorm",
        None,
        "Hub re-scoring",
        "Re-scores the top results so that items close to everything weigh less (QB-Norm).",
        "QB-Norm, dynamic inverted softmax over the top-K",
        cost="gallery-fit",
        role="post",
        defaults={"beta": 20.0, "depth": 100},
        implementation=_peer("post", "QueryBankNormalisation"),
        eval_rows=(_after_imagenet_span("qbnorm"),),
    ),
    ModeEntry(
        "center",
        None,
        "Centred",
        "Removes the average embedding of each modality before comparing; free at query time.",
        "each modality's mean removed (GR-CLIP, lam = 1)",
        role="adapt",
        composable=True,
        defaults={"lam": 1.0},
        implementation=_peer("peers", "Centring"),
        eval_rows=(EvalRow("center-dn", "a quarter of the mean removed (DN, lam = 0.25)", {"peer": {"lam": 0.25}}),),
    ),
)


BUILTIN_MODES: tuple[ModeEntry, ...] = _MODES + _PEERS

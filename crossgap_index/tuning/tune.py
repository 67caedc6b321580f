"""`cgx tune`: pick the mode that wins on the user's labelled data and store it in the index, or nothing.

The labelled items are split by item within each class (fixed seed) into a selection half and a report
half. Every candidate mode (projections with their settings, OTI pseudo-tokens x steps, the inverter at a
few training lengths, fusions of the best of each, the peer re-rankers and their compositions) is measured on
the selection half with the same engine that serves queries; the winner is then measured once on the
report half, which took no part in the choice, as a paired difference against intra with its 95% interval.
The interval's unit is the class, not the query (``evaluation.stats.class_interval``): queries that share a
class and a gallery move together, and an interval over them as independent samples stored a mode on pure
noise. Measured false-store rate: benchmarks/bench_tune_noise.py.

A candidate that collapses scores is not chosen: when, on the selection half, the longest run of equal scores
in a query's top ``TIE_TOP_K`` is on average more than ``COLLAPSE_SHARE`` of it (concept over a short label
list maps a whole class onto one point), the mode's ranking there is decided by the tie-break (intra), not by
the mode. Every candidate's tied hits are reported.

Tune cannot store noise. It first enforces a minimum (``MIN_CLASSES`` classes with ``MIN_ITEMS_PER_CLASS``
items each; smaller classes are left out and listed), then stores the winner only when the interval's lower
bound is above 0; otherwise it stores nothing and says why. The minimum comes from a measured noise floor
(``benchmarks/bench_tune_floor.py``, benchmarks/results/defaults.md): below it the report half's interval is
wider than the gains a mode can bring. A stored record goes into the manifest, where ``mode="auto"`` and
``cgx query --cross`` find it.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossgap_index.errors import InputFileError
from crossgap_index.evaluation.data import EvalDataset, load_dataset
from crossgap_index.evaluation.features import FeatureSet, MemoryCache, image_features, take_queries, text_features
from crossgap_index.evaluation.measure import measure_mode
from crossgap_index.evaluation.settings import IMAGES, TEXTS
from crossgap_index.evaluation.stats import CONFIDENCE, PairedComparison, paired_interval, per_class_comparison
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.candidates import post_candidates, tune_candidates
from crossgap_index.search.gallery import MatrixGallery
from crossgap_index.search.modes import Leg, Mode, resolve_mode
from crossgap_index.search.ranking import largest_tie, tied_share
from crossgap_index.search.run import run_mode
from crossgap_index.search.transforms import ModelTransformer
from crossgap_index.words import StageProgress

SPLIT_SEED = 0
# The minimum tune accepts: classes with at least MIN_ITEMS_PER_CLASS labelled items (others are left out),
# and at least MIN_CLASSES of them; caption data needs MIN_TEXT_QUERIES caption groups. Measured noise floor:
# benchmarks/results/defaults.md, "How much labelled data tune needs".
MIN_CLASSES = 8
MIN_ITEMS_PER_CLASS = 8
MIN_TEXT_QUERIES = MIN_CLASSES * MIN_ITEMS_PER_CLASS
MINIMUM = {
    "classes": MIN_CLASSES,
    "items_per_class": MIN_ITEMS_PER_CLASS,
    "text_queries": MIN_TEXT_QUERIES,
    "confidence": CONFIDENCE,
}
# The grid: small enough for a CPU in minutes with a small model; --no-inversion drops the costly part.
SPAN_COMPONENTS = (4, 6, 8, 12, 16, 24, 32, 64)
# Span over the fixed ImageNet names (label-free): the published prompt and features, with fixed fractions of
# d and the explained-variance rule.
IMAGENET_SPAN_COMPONENTS = ("d/32", "d/16", "d/8", "d/4", "d/2", "ev:0.9", "ev:0.95")
CONCEPT_TAUS = (0.01, 0.02, 0.05)
# None: the model's published IsoCLIP setting where the paper gives one, else the OpenAI B/32 one scaled.
ISO_FRACTIONS = (None, (0.1, 0.1), (0.05, 0.2), (0.2, 0.0))
OTI_TOKENS = (1, 2, 4)
OTI_STEPS = (5, 10, 17, 25, 50)
INVERTER_STEPS = (32, 48, 64)
# Ties: how deep each query's ranking is looked at, and the longest run of equal scores (as a share of that
# depth, averaged over queries) above which a candidate collapses scores and is not chosen. Rank fusion's chance
# ties are pairs (2 of 100); concept over a 10-name list on Fashion-MNIST tied 31 of the top 100.
TIE_TOP_K = 100
COLLAPSE_SHARE = 0.1

# progress(stage, done, total)


@dataclass
class Candidate:
    name: str
    mode: Mode
    selection_map: float = float("nan")
    inverter: object = None  # the trained network an inverter/warm candidate uses
    tied_share: float = 0.0  # share of top-k hits whose score equals a neighbour's (selection half, mean)
    largest_tie_share: float = 0.0  # the longest equal-score run as a share of the top-k (mean over queries)

    @property
    def collapses(self) -> bool:
        return self.largest_tie_share > COLLAPSE_SHARE


@dataclass
class TuneResult:
    """What tune found and whether it stored it.

    ``record``: the winner with its selection and report numbers (None when the data was below the
    minimum and nothing was measured); ``stored``: whether it goes into the index; ``reason``: why not (or
    what was stored); ``classes``: items per class found (those below the minimum marked in ``left_out``);
    ``skipped``: files and folders left out of the data; ``candidates``: every candidate's selection mAP and
    ties (``collapses``: left out of the choice, see the module docstring).
    """

    record: dict | None
    stored: bool
    reason: str
    classes: dict[str, int] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    minimum: dict = field(default_factory=dict)
    candidates: list[dict] = field(default_factory=list)


def tune(
    dataset: EvalDataset | str,
    encoder,
    *,
    task: str | None = None,
    inversion: bool = True,
    seed: int = SPLIT_SEED,
    progress: StageProgress | None = None,
    extra_candidates: Iterable[tuple[str, Mode]] = (),
    maps_dir: Path | None = None,
) -> tuple[TuneResult, object]:
    """Choose a mode on ``dataset`` with ``encoder`` (the index's model). Returns the result and the trained
    inverter when an inverter mode won and is stored (the caller saves it beside the index), else None.
    ``extra_candidates``: more (name, Mode) pairs to choose among, beside the grid and the peers. ``maps_dir``:
    where fitted projection maps are kept between runs (they depend on the model and settings only)."""
    report = progress or (lambda stage, done, total: None)
    data = load_dataset(dataset, progress=report) if isinstance(dataset, str) else dataset
    task = task or (IMAGES if data.images is not None else TEXTS)
    skipped = list(data.notes)
    features, collection, classes = _features(data, encoder, task, skipped, report)
    features, left_out, refusal = _enforce_minimum(features, task, classes)
    if refusal:
        return TuneResult(None, False, refusal, classes, left_out, skipped, dict(MINIMUM)), None
    selection, held_out = _split(features, task, seed)
    bench = _Bench(encoder, collection, maps_dir, _transformer(encoder, MemoryCache(), None, maps_dir))
    candidates = _candidates(task, sorted(set(data.class_names)), encoder.dim, inversion)
    candidates += [Candidate(name, mode) for name, mode in extra_candidates]
    if inversion and task == IMAGES:
        candidates += _inverter_candidates(encoder, selection, report)
    candidates = _select(candidates, selection, bench, report)
    intra = next(c for c in candidates if c.name == "intra")
    best = max((c for c in candidates if not c.collapses), key=lambda c: c.selection_map)
    held_out_report, versus = _report_half(best, intra, held_out, bench)
    record = {
        "mode": best.mode.to_dict(),
        "candidate": best.name,
        "summary": best.mode.describe(),
        "task": task,
        "selection": {
            "map": best.selection_map,
            "intra_map": intra.selection_map,
            "queries": len(selection.queries),
            "candidates": len(candidates),
        },
        "report": held_out_report,
        "dataset": {
            "spec": data.spec,
            "fingerprint": _fingerprint(selection, held_out),
            "split_seed": seed,
            "classes": len(classes) - len(left_out),
        },
        "model": encoder.loaded.spec.canonical,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    stored, reason = _verdict(best.name, versus.mean, versus.low, versus.high)
    result = TuneResult(record, stored, reason, classes, left_out, skipped, dict(MINIMUM), _table(candidates))
    return result, best.inverter if stored else None


@dataclass(frozen=True)
class _Bench:
    """Where candidates are measured: the index's encoder, the collection searched, where fitted maps are kept,
    and the one transformer every candidate without its own network shares (each projection fitted once)."""

    encoder: object
    collection: str
    maps_dir: Path | None
    shared: ModelTransformer

    def transformer(self, inverter: object) -> ModelTransformer:
        """The transformer a candidate runs through: the shared one, or one carrying the candidate's network."""
        if inverter is None:
            return self.shared
        return _transformer(self.encoder, MemoryCache(), inverter, self.maps_dir)


def _inverter_candidates(encoder, selection: FeatureSet, report: StageProgress) -> list[Candidate]:
    """The inverter trained on the selection half's images at each of ``INVERTER_STEPS``."""
    from crossgap_index.inversion.inverter import InverterConfig, train_inverter

    out = []
    for i, steps in enumerate(INVERTER_STEPS):
        report("training inverters", i, len(INVERTER_STEPS))
        network = train_inverter(encoder.loaded, selection.gallery, InverterConfig(steps=steps))
        out.append(Candidate(f"inverter[steps={steps}]", resolve_mode("inverter"), inverter=network))
    report("training inverters", len(INVERTER_STEPS), len(INVERTER_STEPS))
    return out


def _select(
    candidates: list[Candidate], selection: FeatureSet, bench: _Bench, report: StageProgress
) -> list[Candidate]:
    """Every candidate measured on the selection half, then fusions and post-steps of the best of them."""
    stage = "candidates (selection half)"
    for i, candidate in enumerate(candidates):
        report(stage, i, len(candidates))
        _measure(candidate, selection, bench.transformer(candidate.inverter), bench.collection)
    report(stage, len(candidates), len(candidates))
    fused = _fusions(candidates)
    one_leg = [c for c in candidates if len(c.mode.legs) == 1 and c.mode.legs[0].transform in ("project", "invert")]
    bases = [(c.name, c.mode) for c in sorted(one_leg, key=lambda c: -c.selection_map)[:2]]  # then a post-step
    fused += [Candidate(name, mode) for name, mode in post_candidates(bases)]
    for candidate in fused:
        _measure(candidate, selection, bench.shared, bench.collection)
    return candidates + fused


def _report_half(
    best: Candidate, intra: Candidate, held_out: FeatureSet, bench: _Bench
) -> tuple[dict, PairedComparison]:
    """The winner against intra on the report half, which took no part in the choice: the record's numbers and
    the comparison (its interval over classes) the verdict is taken on."""
    transformer = bench.transformer(best.inverter)
    chosen = measure_mode(best.mode, held_out, transformer, bench.collection)
    base = measure_mode(intra.mode, held_out, transformer, bench.collection)
    values, base_values = chosen.per_query["map"], base.per_query["map"]
    versus = per_class_comparison(values, base_values, held_out.query_labels)
    units = len(np.unique(held_out.query_labels))
    numbers = {
        "map": chosen.means()["map"],
        "intra_map": base.means()["map"],
        "delta_map": versus.mean,
        "delta_map_se": versus.se,
        "delta_map_ci95": [versus.low, versus.high],
        "interval": f"95% t-interval over {units} classes' mean differences (a class is one unit)",
        # the per-query interval, for comparison only: it treats queries sharing a gallery as independent
        "per_query_ci95": list(paired_interval(values, base_values)[::2]),
        "queries": len(held_out.queries),
    }
    return numbers, versus


def _table(candidates: list[Candidate]) -> list[dict]:
    """Every candidate's selection-half numbers, best first."""
    return [
        {
            "name": c.name,
            "summary": c.mode.describe(),
            "selection_map": c.selection_map,
            "tied_share": c.tied_share,
            "largest_tie_share": c.largest_tie_share,
            "collapses": c.collapses,
        }
        for c in sorted(candidates, key=lambda c: -c.selection_map)
    ]


def _verdict(name: str, delta: float, low: float, high: float) -> tuple[bool, str]:
    """Store only a winner whose report-half gain over intra has a 95% interval above 0."""
    if name == "intra":
        return False, "intra won on the selection half: no mode beat plain search on this data, nothing stored"
    interval = f"{delta * 100:+.2f} mAP, 95% interval [{low * 100:+.2f}, {high * 100:+.2f}]"
    if not low > 0:  # NaN (too few report queries) stores nothing too
        return False, (
            f"{name}'s gain on the report half ({interval}) is not distinguishable from noise (the interval "
            "reaches 0): nothing stored; --cross keeps serving the default. Tune on more labelled items"
        )
    return True, f"stored {name}: report-half gain {interval}"


def _features(
    data: EvalDataset, encoder, task: str, skipped: list[str], report
) -> tuple[FeatureSet, str, dict[str, int]]:
    """The task's embedded items, its collection, and the items found per class (images) or the caption
    groups (texts, one 'class' each)."""
    if task == IMAGES:
        if data.images is None:
            raise InputFileError(f"dataset {data.spec} has no images to tune on")
        features = image_features(data, encoder, skipped, report)
        names = data.images.class_names
        counts = np.bincount(features.gallery_labels, minlength=len(names))
        return features, "image", {name: int(n) for name, n in zip(names, counts, strict=True) if n > 0}
    if data.texts is None:
        raise InputFileError(f"dataset {data.spec} has no captions to tune on")
    return text_features(data.texts, encoder), "text", {"caption groups": len(data.texts.query_texts)}


def _enforce_minimum(
    features: FeatureSet, task: str, classes: dict[str, int]
) -> tuple[FeatureSet, list[str], str | None]:
    """The items of the classes that meet the minimum, the classes left out, and why tune refuses (or None)."""
    if task == TEXTS:
        found = classes["caption groups"]
        if found < MIN_TEXT_QUERIES:
            return (
                features,
                [],
                (
                    f"found {found} caption groups with 2+ captions; tune needs at least {MIN_TEXT_QUERIES} to tell "
                    "a gain from noise: nothing stored"
                ),
            )
        return features, [], None
    left_out = [f"{name} ({n} items)" for name, n in classes.items() if n < MIN_ITEMS_PER_CLASS]
    kept = np.flatnonzero(np.bincount(features.gallery_labels) >= MIN_ITEMS_PER_CLASS)
    if len(kept) < MIN_CLASSES:
        return (
            features,
            left_out,
            (
                f"found {len(kept)} classes with at least {MIN_ITEMS_PER_CLASS} labelled items ({len(classes)} classes "
                f"in all); tune needs at least {MIN_CLASSES} such classes to tell a gain from noise: nothing stored. "
                "Give one subfolder per class, each with 8 or more images"
            ),
        )
    rows = np.flatnonzero(np.isin(features.gallery_labels, kept))
    return _subset(features, rows), left_out, None


def _candidates(task: str, names: list[str], dim: int, inversion: bool) -> list[Candidate]:
    out = [Candidate("intra", resolve_mode("intra"))]
    if len(names) >= 2:
        for k in sorted({min(k, dim) for k in SPAN_COMPONENTS}):
            settings = {"vocabulary": names, "prompt": "photo", "features": "unit", "components": k}
            out.append(Candidate(f"span[labels,{k}]", resolve_mode("span", projection=settings)))
        for tau in CONCEPT_TAUS:
            mode = resolve_mode("concept", projection={"vocabulary": names, "tau": tau})
            out.append(Candidate(f"concept[labels,tau={tau}]", mode))
    for rule in IMAGENET_SPAN_COMPONENTS:
        settings = {"vocabulary": "imagenet", "prompt": "raw", "features": "raw", "components": rule}
        out.append(Candidate(f"span[imagenet,{rule}]", resolve_mode("span", projection=settings)))
    modality = "image" if task == IMAGES else "text"
    for fractions in ISO_FRACTIONS:
        if fractions is None:
            out.append(Candidate("iso[default]", resolve_mode("iso", projection={"modality": modality})))
            continue
        params = {"modality": modality, "k_top": round(dim * fractions[0]), "k_bottom": round(dim * fractions[1])}
        out.append(Candidate(f"iso[{params['k_top']},{params['k_bottom']}]", resolve_mode("iso", projection=params)))
    out += [Candidate(name, mode) for name, mode in tune_candidates()]  # the peers, label-free (search/peers.py)
    if inversion and task == IMAGES:
        for tokens in OTI_TOKENS:
            for steps in OTI_STEPS:
                config = InversionConfig(oti_steps=steps, n_tokens=tokens)
                out.append(Candidate(f"cross[R={tokens},steps={steps}]", resolve_mode("cross", inversion=config)))
    return out


def _fusions(candidates: list[Candidate]) -> list[Candidate]:
    """RRF of the best zero-cost leg with the best inversion leg, and of intra with the best inversion."""

    def best(kind: Callable[[Candidate], bool]) -> Candidate | None:
        pool = [c for c in candidates if kind(c)]
        return max(pool, key=lambda c: c.selection_map) if pool else None

    projection = best(lambda c: c.mode.legs[0].transform == "project")
    inverted = best(lambda c: c.mode.legs[0].transform == "invert")
    if inverted is None:
        return []
    out = []
    for first in (Leg("intra"), projection.mode.legs[0] if projection else None):
        if first is None:
            continue
        mode = Mode("fused", (first, inverted.mode.legs[0]), "rrf")
        out.append(Candidate(f"fused[{first.name}+{inverted.name}]", mode))
    return out


def _transformer(encoder, cache: MemoryCache, inverter, maps_dir: Path | None) -> ModelTransformer:
    return ModelTransformer(
        encoder.loaded.spec.canonical,
        lambda: encoder,
        cache=cache,
        inverter=(lambda: inverter) if inverter is not None else None,
        projection_dir=maps_dir,
    )


def _measure(candidate: Candidate, features: FeatureSet, transformer: ModelTransformer, collection: str) -> None:
    """The candidate's selection-half mAP and how much its top-``TIE_TOP_K`` rankings tie."""
    candidate.selection_map = float(measure_mode(candidate.mode, features, transformer, collection).means()["map"])
    ids = np.arange(len(features.gallery))
    exclude = features.exclude_ids()
    k = min(TIE_TOP_K, len(ids) - (1 if exclude is not None else 0))
    results = run_mode(
        candidate.mode,
        features.queries,
        collection,
        k,
        MatrixGallery({collection: (ids, features.gallery)}),
        transformer,
        exclude,
    )
    candidate.tied_share = float(np.mean([tied_share(r.ranked) for r in results]))
    candidate.largest_tie_share = float(np.mean([largest_tie(r.ranked) / max(len(r.ranked), 1) for r in results]))


def _split(features: FeatureSet, task: str, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """Selection and report halves, split by item within each class (images) or by caption group (texts)."""
    if task == IMAGES:
        return tuple(_subset(features, rows) for rows in _halves(features.gallery_labels, seed))
    groups = features.query_labels
    out = []
    for rows in _halves(np.zeros(len(groups), np.int64), seed):  # each query is its own group: deal them
        keep = np.isin(features.gallery_labels, groups[rows])
        queries = take_queries(features.queries, rows)
        out.append(FeatureSet(queries, groups[rows], features.gallery[keep], features.gallery_labels[keep], False))
    return out[0], out[1]


def _halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items of each label shuffled with ``seed`` and dealt alternately into two halves."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        first += rows[0::2].tolist()
        second += rows[1::2].tolist()
    if len(first) < 2 or len(second) < 2:
        raise InputFileError("tuning needs at least 4 labelled items (2 per half): give more images or caption groups")
    return np.sort(first), np.sort(second)


def _subset(features: FeatureSet, rows: np.ndarray) -> FeatureSet:
    queries = take_queries(features.queries, rows)
    return FeatureSet(queries, features.query_labels[rows], features.gallery[rows], features.gallery_labels[rows], True)


def _fingerprint(*halves: FeatureSet) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for half in halves:
        for d, label in sorted(zip(half.queries.digests, half.query_labels.tolist(), strict=True)):
            digest.update(f"{d}:{label};".encode())
    return digest.hexdigest()

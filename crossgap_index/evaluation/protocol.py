"""The evaluation protocol behind ``cgx eval``: which retrieval mode wins on a labelled dataset.

Research notes, section 3: image-to-image, each image queries all the others (leave-one-out),
relevant = same class; text-to-text, each group's first caption queries the other captions,
relevant = same group. Every mode yields a full (queries, gallery) score matrix, built with the
project's own inversion (``oti`` / ``ovi``, seeded from each query's content hash as the API does),
merging (``reciprocal_rank_fusion`` / ``score_fusion``, applied per query over the full ranking)
and ``SpanProjection``; the metrics module then ranks and scores it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from crossgap_index.errors import InputFileError, QueryError
from crossgap_index.evaluation.data import EvalDataset, ImageSet, load_dataset
from crossgap_index.evaluation.metrics import METRICS, RetrievalMetrics, rank_order, retrieval_metrics
from crossgap_index.ingest.decode import DecodeError, content_hash, decode_rgb
from crossgap_index.inversion import InversionConfig, oti, ovi
from crossgap_index.inversion.keys import seed_from_digest
from crossgap_index.models import Encoder, default_model_spec, load_model
from crossgap_index.search.merge import RRF_K, reciprocal_rank_fusion, score_fusion
from crossgap_index.search.ranking import Ranked
from crossgap_index.search.span import SpanProjection

IMAGES, TEXTS = "image-to-image", "text-to-text"
TASKS = {"images": IMAGES, "texts": TEXTS}
PROMPT = "a photo of {}"  # concept prompts, zero-shot and span vocabulary alike: "a photo of a red circle"
DEFAULT_ALPHA = 0.5
MODE_DESCRIPTIONS = {
    IMAGES: {
        "intra": "query image vs gallery images",
        "cross": "OTI(query image) vs gallery images",
        "fused-rrf": "intra + cross, reciprocal rank fusion",
        "fused-score": "intra + cross, min-max normalised score sum",
        "cross-gallery": "query image vs OTI(gallery images)",
        "span": "both projected onto the vocabulary's text span",
    },
    TEXTS: {
        "intra": "query text vs gallery texts",
        "cross": "OVI(query text) vs gallery texts",
        "fused-rrf": "intra + cross, reciprocal rank fusion",
        "fused-score": "intra + cross, min-max normalised score sum",
        "span": "both projected onto the vocabulary's text span",
    },
}
_EMBED_BATCH = 64
# Exact ties are common in fused-rrf (equal reciprocal-rank sums) and for duplicate texts. The metrics and the
# project's merges break them by gallery position, so the gallery is put in a content-hash order first: a class-
# sorted folder would otherwise decide ties by label, and each dataset form (folder, synthetic) would differ.
TIES = "broken by gallery position, the gallery ordered by content hash (independent of file order and labels)"

# progress(stage, done, total), e.g. ("OTI, 480 images", 300, 1200): drives the CLI's bars.
EvalProgress = Callable[[str, int, int], None]


@dataclass
class ModeResult:
    """One mode's mean metrics; ``seconds`` builds its score matrix from already computed features.

    ``map_vs_intra`` is the mean per-query AP difference against intra, ``map_vs_intra_se`` its standard
    error over queries (paired: same queries, same gallery), so a reader can tell a win from noise.
    """

    mode: str
    description: str
    metrics: dict[str, float]
    map_vs_intra: float
    map_vs_intra_se: float | None
    seconds: float


@dataclass
class TaskResult:
    """Every mode of one task (image-to-image or text-to-text) on the same queries and gallery."""

    task: str
    relevant: str
    n_queries: int
    n_gallery: int
    n_skipped_queries: int  # queries with nothing relevant in the gallery, left out of the means
    leave_one_out: bool
    modes: dict[str, ModeResult] = field(default_factory=dict)

    def best(self) -> dict[str, str]:
        """The winning mode per metric (first in mode order on a tie)."""
        return {m: max(self.modes, key=lambda name: self.modes[name].metrics[m]) for m in METRICS}


@dataclass
class SweepPoint:
    """Cross-mode (OTI, image-to-image) metrics after ``steps`` inversion steps; AP difference as in ModeResult."""

    steps: int
    metrics: dict[str, float]
    map_vs_intra: float
    map_vs_intra_se: float | None
    seconds: float


@dataclass
class EvalResult:
    """Everything ``cgx eval`` reports; ``to_dict`` is the ``--json`` document."""

    dataset: dict
    model: str
    dim: int
    device: str
    settings: dict
    tasks: dict[str, TaskResult]
    zero_shot: dict | None
    sweep: list[SweepPoint]
    timings: dict[str, float]

    def to_dict(self) -> dict:
        doc = dataclasses.asdict(self)
        for name, task in self.tasks.items():
            doc["tasks"][name]["best"] = task.best()
        return doc


def evaluate(
    dataset: EvalDataset | str,
    model: str | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    config: InversionConfig | None = None,
    vocab: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    sweep_steps: Sequence[int] = (),
    span_components: int | None = None,
    rrf_k: int = RRF_K,
    alpha: float = DEFAULT_ALPHA,
    progress: EvalProgress | None = None,
) -> EvalResult:
    """Run every retrieval mode on ``dataset`` (an ``EvalDataset`` or a spec for ``load_dataset``).

    ``tasks``: a subset of ``("images", "texts")`` (default: whichever the dataset has). ``vocab``:
    concept names for span projection (default: the dataset's class names). ``sweep_steps``: also
    measure the image cross mode (OTI) after each of these step counts. ``span_components``: principal
    directions kept by span projection (default d/2, the critique's choice; at most the vocabulary size - 1).
    ``precision``: the embedding model's (auto, fp32, bf16); inversion follows ``config.precision``.
    """
    start = time.perf_counter()
    config = config or InversionConfig()
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    wanted = _tasks(data, tasks)
    if sweep_steps and IMAGES not in wanted:
        raise QueryError("--sweep-steps measures OTI on image-to-image: the dataset (or --task) has no images")
    if any(s < 0 for s in sweep_steps):
        raise QueryError("sweep steps must be >= 0")
    if span_components is not None and span_components < 1:
        raise QueryError(f"span components must be >= 1, got {span_components}")
    if not 0.0 <= alpha <= 1.0 or rrf_k < 1:
        raise QueryError("alpha must be in [0, 1] and rrf_k >= 1")
    report = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}
    with _timed(timings, "load_model"):
        encoder = Encoder(load_model(model or default_model_spec(), device), precision=precision)

    if span_components is not None and span_components > encoder.dim:
        raise QueryError(f"span components must be at most the model's dimension {encoder.dim}")
    # sorted and deduplicated: the same vocabulary gives the same projection whatever its order
    names = sorted(set(vocab if vocab is not None else data.class_names))
    span = None
    if len(names) >= 2:
        with _timed(timings, "span_fit"):
            span = SpanProjection().fit(encoder.encode_texts(concept_prompts(names)), span_components)
    elif vocab is not None:
        raise QueryError(f"a span vocabulary needs at least 2 names, got {len(names)}")
    config = config.resolved(encoder.device)
    settings = {
        "precision": encoder.precision,
        "inversion": dataclasses.asdict(config),
        "fusion": {"rrf_k": rrf_k, "alpha_cross": alpha, "depth": "full ranking"},
        "span": {
            "vocabulary": "given" if vocab is not None else "dataset class names",
            "size": len(names),
            "prompt": PROMPT.format("{a|an} {name}"),
            "components": span.n_components if span else 0,
            "components_requested": span_components or encoder.dim // 2,
        },
        "ties": TIES,
    }
    result = EvalResult(
        dataset=data.describe(),
        model=encoder.loaded.spec.canonical,
        dim=encoder.dim,
        device=str(encoder.device),
        settings=settings,
        tasks={},
        zero_shot=None,
        sweep=[],
        timings=timings,
    )
    if IMAGES in wanted:
        _run_images(data, encoder, config, span, sweep_steps, rrf_k, alpha, result, report)
    if TEXTS in wanted:
        _run_texts(data, encoder, config, span, rrf_k, alpha, result, report)
    if span is None:
        result.dataset["notes"].append("no span vocabulary (the captions carry no labels): give --vocab FILE")
    timings["total"] = time.perf_counter() - start
    return result


def concept_prompts(names: Sequence[str]) -> list[str]:
    """Prompts 'a photo of a/an {name}', as CLIP is queried: the zero-shot classifier and the span vocabulary."""
    return [PROMPT.format(("an " if name[:1].lower() in "aeiou" else "a ") + name) for name in names]


def fused_scores(
    intra: np.ndarray,
    cross: np.ndarray,
    method: str,
    exclude: np.ndarray | None = None,
    rrf_k: int = RRF_K,
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """Merge each query's intra and cross rankings with the project's merge function (``rrf`` or
    ``score``) over the whole gallery; returns scores whose order is the merged order (n - position),
    excluded items below every other."""
    out = np.full(intra.shape, -1.0)
    for row in range(len(intra)):
        candidates = np.arange(intra.shape[1]) if exclude is None else np.flatnonzero(~exclude[row])
        if method == "rrf":
            lists = {name: _ranked(m[row, candidates], candidates) for name, m in (("intra", intra), ("cross", cross))}
            merged = reciprocal_rank_fusion(lists, rrf_k)
        elif method == "score":
            exact = {"intra": intra[row, candidates], "cross": cross[row, candidates]}
            merged = score_fusion(candidates, exact, {"cross": alpha, "intra": 1.0 - alpha})
        else:
            raise QueryError(f"unknown merge '{method}': use rrf or score")
        out[row, merged.ids] = np.arange(len(merged.ids), 0, -1)
    return out


def paired_difference(values: np.ndarray, base: np.ndarray) -> tuple[float, float | None]:
    """Mean of per-query ``values - base`` over the queries that count (not NaN) and its standard error
    (None with a single query). Queries share one gallery, so read it as a yardstick, not a test."""
    valid = ~np.isnan(base)
    diff = values[valid] - base[valid]
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
    return float(diff.mean()), se


def _ranked(scores: np.ndarray, ids: np.ndarray) -> Ranked:
    order = rank_order(scores[None, :])[0]
    return Ranked(ids[order], scores[order].astype(np.float32))


def _tasks(data: EvalDataset, asked: Sequence[str] | None) -> list[str]:
    available = {IMAGES: data.images is not None, TEXTS: data.texts is not None}
    if asked is None:
        return [t for t, ok in available.items() if ok]
    unknown = [t for t in asked if t not in TASKS]
    if unknown:
        raise QueryError(f"unknown task '{unknown[0]}': use {' or '.join(TASKS)}")
    missing = [t for t in asked if not available[TASKS[t]]]
    if missing:
        raise InputFileError(f"dataset {data.spec} has no {missing[0]} to evaluate")
    return [TASKS[t] for t in asked]


def _run_images(
    data: EvalDataset,
    encoder: Encoder,
    config: InversionConfig,
    span: SpanProjection | None,
    sweep_steps: Sequence[int],
    rrf_k: int,
    alpha: float,
    result: EvalResult,
    report: EvalProgress,
) -> None:
    timings = result.timings
    with _timed(timings, "embed_images"):
        notes = list(data.notes)
        feats, digests, labels = _embed_images(data.images, encoder, notes, report)
    result.dataset.update(notes=notes, images_evaluated=len(feats))
    seeds = [seed_from_digest(d) for d in digests]
    exclude = np.eye(len(feats), dtype=bool)  # leave-one-out: every image queries all the others

    def measure(scores: np.ndarray) -> RetrievalMetrics:
        return retrieval_metrics(scores, labels, labels, exclude)

    with _timed(timings, "oti"):
        inverted = _invert(oti, encoder, feats, config, seeds, f"OTI, {len(feats)} images", report)
    matrices = {"intra": lambda: feats @ feats.T, "cross": lambda: inverted @ feats.T}
    matrices["cross-gallery"] = lambda: feats @ inverted.T  # leave-one-out: the queries' OTI serve as the gallery's
    if span is not None:
        matrices["span"] = lambda: _self_scores(span.apply(feats))
    intra_ap = _task(IMAGES, "same class", matrices, measure, exclude, rrf_k, alpha, result, report)

    prompts = encoder.encode_texts(concept_prompts(data.images.class_names))
    accuracy = float(((feats @ prompts.T).argmax(axis=1) == labels).mean())
    result.zero_shot = {
        "accuracy": accuracy,
        "chance": 1.0 / len(data.images.class_names),
        "classes": len(data.images.class_names),
        "prompt": PROMPT.format("{a|an} {class name}"),
    }
    for steps in sweep_steps:
        begin = time.perf_counter()
        if steps == config.oti_steps:
            sweep_inverted, seconds = inverted, timings["oti"]
        else:
            sweep_config = dataclasses.replace(config, oti_steps=steps)
            sweep_inverted = _invert(oti, encoder, feats, sweep_config, seeds, f"sweep: OTI {steps} steps", report)
            seconds = time.perf_counter() - begin
        metrics = measure(sweep_inverted @ feats.T)
        delta = paired_difference(metrics.per_query["map"], intra_ap)
        result.sweep.append(SweepPoint(steps, metrics.means(), *delta, seconds))


def _run_texts(
    data: EvalDataset,
    encoder: Encoder,
    config: InversionConfig,
    span: SpanProjection | None,
    rrf_k: int,
    alpha: float,
    result: EvalResult,
    report: EvalProgress,
) -> None:
    texts, timings = data.texts, result.timings
    with _timed(timings, "embed_texts"):
        report("embedding texts", 0, 2)
        queries = encoder.encode_texts(texts.query_texts)
        report("embedding texts", 1, 2)
        gallery = encoder.encode_texts(texts.gallery_texts)
        report("embedding texts", 2, 2)
    seeds = [seed_from_digest(content_hash(t.encode("utf-8"))) for t in texts.query_texts]

    def measure(scores: np.ndarray) -> RetrievalMetrics:
        return retrieval_metrics(scores, texts.query_groups, texts.gallery_groups)

    with _timed(timings, "ovi"):
        inverted = _invert(ovi, encoder, queries, config, seeds, f"OVI, {len(queries)} texts", report)
    matrices = {"intra": lambda: queries @ gallery.T, "cross": lambda: inverted @ gallery.T}
    if span is not None:
        matrices["span"] = lambda: span.apply(queries) @ span.apply(gallery).T
    _task(TEXTS, "same group", matrices, measure, None, rrf_k, alpha, result, report)


def _task(
    name: str,
    relevant: str,
    matrices: dict[str, Callable[[], np.ndarray]],
    measure: Callable[[np.ndarray], RetrievalMetrics],
    exclude: np.ndarray | None,
    rrf_k: int,
    alpha: float,
    result: EvalResult,
    report: EvalProgress,
) -> np.ndarray:
    """Score matrices for every mode (fused ones from intra and cross), then their metrics; returns intra's
    per-query AP, the base of every paired difference."""
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for mode, build in matrices.items():
        begin = time.perf_counter()
        scores[mode] = build()
        seconds[mode] = time.perf_counter() - begin
    for i, method in enumerate(("rrf", "score")):
        report(f"fusing rankings ({name})", i, 2)
        begin = time.perf_counter()
        scores[f"fused-{method}"] = fused_scores(scores["intra"], scores["cross"], method, exclude, rrf_k, alpha)
        seconds[f"fused-{method}"] = time.perf_counter() - begin
    report(f"fusing rankings ({name})", 2, 2)
    measured = {mode: measure(scores[mode]) for mode in MODE_DESCRIPTIONS[name] if mode in scores}
    base = measured["intra"]
    if base.n_queries == 0:
        raise InputFileError(f"{name}: no query has a relevant item in the gallery")
    n_gallery = scores["intra"].shape[1] - (1 if exclude is not None else 0)
    task = TaskResult(name, relevant, base.n_queries, n_gallery, base.n_skipped, exclude is not None)
    intra_ap = base.per_query["map"]
    for mode, metrics in measured.items():
        delta = paired_difference(metrics.per_query["map"], intra_ap)
        task.modes[mode] = ModeResult(mode, MODE_DESCRIPTIONS[name][mode], metrics.means(), *delta, seconds[mode])
    result.tasks[name] = task
    return intra_ap


def _embed_images(
    images: ImageSet, encoder: Encoder, notes: list[str], report: EvalProgress
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Unit features, content hashes and labels of the images that decode; the others become a note."""
    feats, digests, kept, bad = [], [], [], []
    total = len(images.items)
    report("embedding images", 0, total)
    for first in range(0, total, _EMBED_BATCH):
        decoded = []
        for i in range(first, min(first + _EMBED_BATCH, total)):
            data = images.read(i)
            try:
                decoded.append(decode_rgb(data))
            except DecodeError as exc:
                bad.append(f"{images.items[i]} ({exc})")
                continue
            digests.append(content_hash(data))
            kept.append(i)
        feats.append(encoder.encode_images(decoded))
        report("embedding images", min(first + _EMBED_BATCH, total), total)
    if bad:
        notes.append(f"{len(bad)} undecodable images left out: {'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    labels = images.labels[kept]
    if len(np.unique(labels)) < 2:
        raise InputFileError("image-to-image evaluation needs at least 2 classes with decodable images")
    order = np.argsort(digests, kind="stable")  # content-hash order: see TIES
    return np.concatenate(feats)[order], [digests[i] for i in order], labels[order]


def _invert(
    invert: Callable,
    encoder: Encoder,
    features: np.ndarray,
    config: InversionConfig,
    seeds: list[int],
    stage: str,
    report: EvalProgress,
) -> np.ndarray:
    steps = config.oti_steps if invert is oti else config.ovi_steps
    total = -(-len(features) // config.batch_size) * steps
    report(stage, 0, total)
    return invert(encoder.loaded, features, config, seeds, lambda step, loss: report(stage, step, total))


def _self_scores(features: np.ndarray) -> np.ndarray:
    return features @ features.T


class _timed:
    """Adds the block's wall time to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.begin = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.begin

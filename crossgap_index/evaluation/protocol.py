"""The evaluation protocol behind ``cgx eval``: which retrieval mode wins on a labelled dataset.

Research notes, section 3: image-to-image, each image queries all the others (leave-one-out),
relevant = same class; text-to-text, each group's first caption queries the other captions,
relevant = same group; text-to-image, every caption queries the images, relevant = an image of the
caption's class (captions labelled with the images' class names), else the caption's own image.
Every mode runs through the search engine's ``run_mode`` (search/run.py) over the dataset's
features held in memory, with the same transforms, fusion and fusion depth a served query gets;
each query's full ranking (the fused head, then the first leg's order) is then scored by the
metrics module. So an eval number is the number ``cgx query`` serves.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from crossgap_index.errors import CrossGapError, InputFileError, QueryError
from crossgap_index.evaluation.data import EvalDataset, ImageSet, load_dataset
from crossgap_index.evaluation.metrics import METRICS, RetrievalMetrics, retrieval_metrics
from crossgap_index.evaluation.stats import paired_difference, paired_interval
from crossgap_index.ingest.decode import DecodeError, decode_rgb
from crossgap_index.inversion import InversionConfig
from crossgap_index.models import Encoder, default_model_spec, load_model
from crossgap_index.search.gallery import MatrixGallery
from crossgap_index.search.modes import RRF_K, SERVED_OTI_STEPS, Mode, default_cross, resolve_mode
from crossgap_index.search.peers import eval_modes as peer_eval_modes
from crossgap_index.search.run import Queries, run_mode
from crossgap_index.search.transforms import ModelTransformer
from crossgap_index.search.vocabulary import PROMPT, concept_prompts
from crossgap_index.words import StageProgress, content_hash, text_hash

IMAGES, TEXTS, TEXT_TO_IMAGE = "image-to-image", "text-to-text", "text-to-image"
TASKS = {"images": IMAGES, "texts": TEXTS, "text-to-image": TEXT_TO_IMAGE}
COST_BATCH = 32  # the second batch size every mode's cost is measured at (the first is 1)
DEFAULT_ALPHA = 0.5
# cross / fused modes at the served default step count, unless the caller gives an InversionConfig
SERVED_INVERSION = InversionConfig(oti_steps=SERVED_OTI_STEPS)
_EMBED_BATCH = 64
# Ties: the engine (search/run.py) orders equal scores (within 1e-6) by the intra score, as it serves them; what
# is still equal (duplicate items) goes by gallery position, the gallery put in content-hash order first so a
# class-sorted folder does not decide by label and each dataset form (folder, synthetic) agrees.
TIES = (
    "equal scores (within 1e-6) ordered by the intra score, as served; then by gallery position, the gallery "
    "ordered by content hash (independent of file order and labels)"
)

# progress(stage, done, total), e.g. ("OTI, 480 images", 300, 1200): drives the CLI's bars.


@dataclass
class ModeResult:
    """One mode's mean metrics and cost.

    ``map_vs_intra`` is the mean per-query AP difference against intra, ``map_vs_intra_se`` its standard
    error over queries (paired: same queries, same gallery), so a reader can tell a win from noise.
    ``ms_per_query``: the mode's own work for one query at batch 1 with no cache (transform, ranking,
    fusion over the in-memory gallery), to add to the model's query embedding time (``timings``).
    ``ms_per_query_batch``: the same per query when ``COST_BATCH`` queries run together (one inversion call).
    ``seconds``: the whole batch of queries, caches allowed (the cost of the evaluation itself).
    ``map_vs_intra_ci95``: the paired 95% interval of ``map_vs_intra`` (t over queries). ``uses_labels``: the
    mode's vocabulary, fit or selection used the evaluated data's labels or class names (``uses_labels``), so
    its gain is not one a user without those labels gets.
    """

    mode: str
    description: str
    metrics: dict[str, float]
    map_vs_intra: float
    map_vs_intra_se: float | None
    seconds: float
    ms_per_query: float | None = None
    settings: dict = field(default_factory=dict)
    ms_per_query_batch: float | None = None
    uses_labels: bool = False
    map_vs_intra_ci95: tuple[float, float] | None = None


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
    """Cross-mode metrics after ``steps`` inversion steps: OTI on image-to-image with ``tokens`` pseudo-tokens,
    or OVI on text-to-text (``task``) with ``patches`` pseudo-patches; ``lr`` the inversion's learning rate.
    ``seconds``: the inversion run the point came from (one run per R or P and lr serves every step count)."""

    steps: int
    metrics: dict[str, float]
    map_vs_intra: float
    map_vs_intra_se: float | None
    seconds: float
    tokens: int = 1
    task: str = IMAGES
    patches: int | None = None
    lr: float | None = None


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


class MemoryCache:
    """An inversion cache in memory, so modes sharing an inversion (cross, fused) compute it once."""

    def __init__(self) -> None:
        self._vectors: dict[str, np.ndarray] = {}

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: self._vectors[k] for k in keys if k in self._vectors}

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        self._vectors.update(items)


@dataclass
class FeatureSet:
    """Embedded, labelled items: the queries and gallery of one task, in the engine's terms."""

    queries: Queries
    query_labels: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray
    leave_one_out: bool  # queries are the gallery; each leaves itself out

    def exclude_ids(self) -> np.ndarray | None:
        return np.arange(len(self.queries)) if self.leave_one_out else None


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
    sweep_tokens: Sequence[int] = (1,),
    sweep_patches: Sequence[int | None] = (None,),
    sweep_lrs: Sequence[float] = (),
    span_components: int | None = None,
    rrf_k: int = RRF_K,
    alpha: float = DEFAULT_ALPHA,
    extra_modes: dict[str, Mode] | None = None,
    task_modes: dict[str, dict[str, Mode]] | None = None,
    inverter=None,
    text_inverter=None,
    transductive: bool = False,
    progress: StageProgress | None = None,
    labelled_modes: Sequence[str] = (),
) -> EvalResult:
    """Run every retrieval mode on ``dataset`` (an ``EvalDataset`` or a spec for ``load_dataset``).

    ``tasks``: a subset of ``("images", "texts")`` (default: whichever the dataset has). ``config``: the
    inversion settings of the cross and fused modes (default: the served ones). ``vocab``: concept names for
    the span and concept maps (default: the dataset's class names). ``sweep_steps`` x ``sweep_tokens``: also
    measure the image cross mode (OTI) at these step counts and pseudo-token counts, and ``sweep_steps`` x
    ``sweep_patches`` (None: the model's P) the text cross mode (OVI), each at every rate of ``sweep_lrs``
    (default: the config's). ``span_components``: directions kept by the span maps (default: the model's
    default span rule, ``default_cross``).
    ``extra_modes``: more named modes to measure on image-to-image, e.g. an index's tuned mode as ``tuned``;
    ``task_modes``: task -> named modes to measure on that task. ``inverter`` / ``text_inverter``: trained
    networks for the inverter and warm modes of image / text queries, measured as they are (an index's own:
    what it serves); None: one trained here on the evaluated items, without their labels (transductive).
    ``transductive``: with given networks, also measure freshly trained ones as ``inverter-transductive``.
    ``labelled_modes``: which named modes were fitted or chosen on this data's labels (e.g. ``tuned`` when
    tuned on the same dataset).
    ``precision``: the embedding model's (auto, fp32, bf16); inversion follows ``config.precision``.
    """
    start = time.perf_counter()
    config = config or SERVED_INVERSION
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    wanted = _tasks(data, tasks)
    if sweep_steps and IMAGES not in wanted and TEXTS not in wanted:
        raise QueryError("--sweep-steps measures OTI on image-to-image or OVI on text-to-text: neither is evaluated")
    if any(s < 0 for s in sweep_steps) or any(r < 1 for r in sweep_tokens):
        raise QueryError("sweep steps must be >= 0 and sweep tokens >= 1")
    if any(p is not None and p < 1 for p in sweep_patches) or any(not lr > 0 for lr in sweep_lrs):
        raise QueryError("sweep patches must be >= 1 and sweep learning rates > 0")
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
    names = sorted(set(vocab if vocab is not None else data.class_names))
    if vocab is not None and len(names) < 2:
        raise QueryError(f"a span vocabulary needs at least 2 names, got {len(names)}")
    config = config.resolved(encoder.device)
    default = default_cross(encoder.loaded.spec.canonical)
    span_defaults = default.span_settings()
    settings = {
        "precision": encoder.precision,
        "inversion": dataclasses.asdict(config),
        "fusion": {"rrf_k": rrf_k, "alpha_cross": alpha, "depth": resolve_mode("fused").depth},
        "span": {
            "vocabulary": "given" if vocab is not None else "dataset class names",
            "size": len(names),
            "prompt": PROMPT.format("{a|an} {name}") if span_defaults["prompt"] == "photo" else "{name}",
            "features": span_defaults["features"],
            "components": span_components or span_defaults["components"],
        },
        "default": {"mode": default.name, "projection": default.projection, "source": default.source},
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
    modes_by_task = {task: dict(modes) for task, modes in (task_modes or {}).items()}
    modes_by_task.setdefault(IMAGES, {}).update(extra_modes or {})
    context = _Context(
        encoder, config, names, span_components, rrf_k, alpha, modes_by_task, inverter, report, text_inverter
    )
    context.transductive = transductive
    context.labelled_modes = set(labelled_modes)
    sweep = _Sweep(list(sweep_steps), list(sweep_tokens), list(sweep_patches), list(sweep_lrs) or [config.lr])
    if IMAGES in wanted:
        _run_images(data, context, sweep, result)
    if TEXTS in wanted:
        _run_texts(data, context, sweep, result)
    if TEXT_TO_IMAGE in wanted:
        _run_text_to_image(data, context, result)
    if len(names) < 2:
        result.dataset["notes"].append("no vocabulary (the captions carry no labels): give --vocab FILE")
    timings["total"] = time.perf_counter() - start
    return result


@dataclass
class _Context:
    encoder: Encoder
    config: InversionConfig
    names: list[str]
    span_components: int | None
    rrf_k: int
    alpha: float
    task_modes: dict[str, dict[str, Mode]]
    inverter: object
    report: StageProgress
    text_inverter: object = None
    transductive: bool = False
    labelled_modes: set[str] = field(default_factory=set)

    def extra(self, task: str) -> dict[str, tuple[Mode, str]]:
        return {name: (mode, mode.describe()) for name, mode in self.task_modes.get(task, {}).items()}


@dataclass
class _Sweep:
    steps: list[int]
    tokens: list[int]
    patches: list[int | None]
    lrs: list[float]


def eval_modes(
    task: str,
    config: InversionConfig,
    names: Sequence[str],
    span_components: int | None = None,
    rrf_k: int = RRF_K,
    alpha: float = DEFAULT_ALPHA,
    model: str | None = None,
) -> dict[str, tuple[Mode, str]]:
    """The modes ``cgx eval`` measures for ``task``, each with a one-line description; ``default`` is what an
    untuned ``--cross`` serves with ``model``."""
    vocabulary = list(names) if len(names) >= 2 else None
    default = default_cross(model)
    modes: dict[str, tuple[Mode, str]] = {
        "intra": (resolve_mode("intra"), "query vs gallery, plain embeddings"),
        "default": (default.mode(), f"the untuned --cross ({default.source} default)"),
        "cross": (resolve_mode("cross", inversion=config), "inverted query (OTI / OVI) vs gallery"),
        "fused-rrf": (
            resolve_mode("fused", inversion=config, merge="rrf", rrf_k=rrf_k),
            "intra + cross, reciprocal rank fusion",
        ),
        "fused-score": (
            resolve_mode("fused", inversion=config, merge="score", alpha=alpha),
            "intra + cross, min-max normalised score sum",
        ),
    }
    if task == TEXT_TO_IMAGE:  # already inter-modal: the plain embeddings, and what maps both sides alike
        modes = {
            "intra": (resolve_mode("intra"), "caption vs images, plain embeddings"),
            "default": (resolve_mode("intra"), "the untuned --cross: a caption against images is served as it is"),
        }
    elif task == IMAGES:
        modes["cross-gallery"] = (resolve_mode("cross-gallery"), "query vs OTI(gallery), same OTI settings")
    else:
        modes["cross-gallery"] = (resolve_mode("cross-gallery"), "query vs OVI(gallery texts), same OVI settings")
    if vocabulary:
        span = {"vocabulary": vocabulary, "components": span_components}
        modes["span"] = (resolve_mode("span", projection=span), "both projected onto the vocabulary's text span")
        modes["concept"] = (
            resolve_mode("concept", projection={"vocabulary": vocabulary}),
            "both as distributions over the vocabulary's concepts",
        )
    published = {"preset": "published", "components": span_components}
    modes["span-imagenet"] = (
        resolve_mode("span", projection=published),
        "span over the ImageNet-1k names, the published PCA<- (bare names, raw features, d/2; no labels needed)",
    )
    modes["iso"] = (resolve_mode("iso"), "IsoCLIP projector-spectrum truncation")
    modes.update(peer_eval_modes(task))  # aqe, dba, nnn, qbnorm, center and a few compositions (search/peers.py)
    if task == IMAGES:
        modes["inverter"] = (resolve_mode("inverter"), "one-pass inversion network (OTI)")
        modes["warm"] = (resolve_mode("warm"), "inverter output + a few OTI steps")
    elif task == TEXTS:
        modes["inverter"] = (resolve_mode("inverter"), "one-pass inversion network (OVI)")
        modes["warm"] = (resolve_mode("warm"), "inverter output + a few OVI steps")
        # The span leg is the model's default span (what its untuned --cross projects with), not the published
        # one: on a model whose measured default differs, fusing with the published leg fuses with a weak leg.
        span = default.span_settings()
        if span_components is not None:
            span["components"] = span_components
        span_leg = resolve_mode("span", projection=span).legs[0]
        settings = ", ".join(f"{key} {value}" for key, value in span.items())
        for name, leg in (("cross", modes["cross"][0].legs[0]), ("inverter", modes["inverter"][0].legs[0])):
            modes[f"fused-span-{name}"] = (
                Mode("fused", (span_leg, leg), "rrf", rrf_k),
                f"the model's default span ({default.source}: {settings}) + {name}, rank fusion (label-free)",
            )
    return modes


def measure_mode(
    mode: Mode,
    features: FeatureSet,
    transformer: ModelTransformer,
    collection: str,
    extra_collections: dict[str, np.ndarray] | None = None,
) -> RetrievalMetrics:
    """Run ``mode`` for every query over the whole gallery (leave-one-out when queries are the gallery)
    and score each query's full ranking."""
    n_gallery = len(features.gallery)
    ids = np.arange(n_gallery)
    collections = {collection: (ids, features.gallery)}
    for name, vectors in (extra_collections or {}).items():
        collections[name] = (ids, vectors)
    gallery = MatrixGallery(collections)
    exclude = features.exclude_ids()
    k = n_gallery - (1 if exclude is not None else 0)
    results = run_mode(mode, features.queries, collection, k, gallery, transformer, exclude)
    scores = np.full((len(features.queries), n_gallery), -np.inf)
    for row, result in enumerate(results):
        scores[row, result.ranked.ids] = np.arange(len(result.ranked.ids), 0, -1)
    mask = np.eye(n_gallery, dtype=bool) if exclude is not None else None
    return retrieval_metrics(scores, features.query_labels, features.gallery_labels, mask)


def query_cost_ms(
    mode: Mode,
    features: FeatureSet,
    make_transformer: Callable[[], ModelTransformer],
    collection: str,
    extra_collections: dict[str, np.ndarray] | None = None,
    samples: int = 3,
    batch: int = 1,
) -> float:
    """Median milliseconds per query of the mode's work with ``batch`` queries run together, no cache
    (transform, ranking, fusion); a batch larger than the queries left repeats them (as distinct queries)."""
    ids = np.arange(len(features.gallery))
    collections = {collection: (ids, features.gallery)}
    for name, vectors in (extra_collections or {}).items():
        collections[name] = (ids, vectors)
    gallery = MatrixGallery(collections)
    transformer = make_transformer()
    run_mode(mode, _take(features.queries, [0]), collection, 10, gallery, transformer)  # warm-up: fits maps
    n = len(features.queries)
    times = []
    rounds = min(samples, n - 1) if batch == 1 else max(1, samples // 2)
    for r in range(rounds):
        rows = [1 + (r * batch + j) % max(n - 1, 1) for j in range(batch)] if n > 1 else [0] * batch
        begin = time.perf_counter()
        run_mode(mode, _take(features.queries, rows), collection, 10, gallery, transformer)
        times.append((time.perf_counter() - begin) / batch)
    return float(np.median(times) * 1e3) if times else float("nan")


def _take(queries: Queries, rows: list[int]) -> Queries:
    return Queries(queries.features[rows], queries.modality, tuple(queries.digests[i] for i in rows))


def uses_labels(mode: Mode, class_names: Sequence[str]) -> bool:
    """Whether a projection leg of ``mode`` has a vocabulary holding one of the evaluated data's class names
    (case and spaces aside): concept or span over the labels. A fixed vocabulary (``imagenet``) is not
    chosen from the labels; a mode fitted or chosen on this data is flagged by the caller."""
    known = {" ".join(str(n).lower().split()) for n in class_names}
    for leg in mode.legs:
        vocabulary = leg.params.get("vocabulary") if leg.transform == "project" else None
        named = set() if vocabulary is None or isinstance(vocabulary, str) else set(vocabulary)
        if known & {" ".join(str(n).lower().split()) for n in named}:
            return True
    return False


def _tasks(data: EvalDataset, asked: Sequence[str] | None) -> list[str]:
    available = {
        IMAGES: data.images is not None,
        TEXTS: data.texts is not None,
        TEXT_TO_IMAGE: data.images is not None and bool(data.captions),
    }
    if asked is None:  # text-to-image when asked for (--task text-to-image): the default run keeps its cost
        return [t for t, ok in available.items() if ok and t != TEXT_TO_IMAGE]
    unknown = [t for t in asked if t not in TASKS]
    if unknown:
        raise QueryError(f"unknown task '{unknown[0]}': use {' or '.join(TASKS)}")
    missing = [t for t in asked if not available[TASKS[t]]]
    if missing:
        raise InputFileError(f"dataset {data.spec} has no {missing[0]} to evaluate")
    return [TASKS[t] for t in asked]


def image_features(data: EvalDataset, encoder: Encoder, notes: list[str], report: StageProgress) -> FeatureSet:
    """The image-to-image task's features: every decodable image is a query and the gallery."""
    feats, digests, labels = _embed_images(data.images, encoder, notes, report)
    return FeatureSet(Queries(feats, "image", tuple(digests)), labels, feats, labels, True)


def _run_images(data: EvalDataset, ctx: _Context, sweep: _Sweep, result: EvalResult) -> None:
    timings, encoder = result.timings, ctx.encoder
    with _timed(timings, "embed_images"):
        notes = list(data.notes)
        features = image_features(data, encoder, notes, ctx.report)
    result.dataset.update(notes=notes, images_evaluated=len(features.gallery))
    timings["embed_ms_per_image"] = _embed_cost_ms(encoder, data)
    inverter, transductive = _inverters(ctx.inverter, ctx.transductive, "oti", features.gallery, ctx, timings)

    def make_transformer(cache=None, network=inverter, progress=None) -> ModelTransformer:
        model = encoder.loaded.spec.canonical
        return ModelTransformer(model, lambda: encoder, cache=cache, inverter=lambda: network, progress=progress)

    cache = MemoryCache()
    transformer = make_transformer(cache)
    stage = f"OTI, {len(features.gallery)} images"
    cross_leg = resolve_mode("cross", inversion=ctx.config).legs[0]
    with _timed(timings, "oti"):
        stepping = _stepping(ctx, stage, len(features.queries.features), cross_leg, "oti")
        gallery_oti = make_transformer(cache, progress=stepping).search_vectors(cross_leg, features.queries, "image")
    extra = {"image-oti": gallery_oti}
    model = encoder.loaded.spec.canonical
    modes = eval_modes(IMAGES, ctx.config, ctx.names, ctx.span_components, ctx.rrf_k, ctx.alpha, model)
    modes.update(ctx.extra(IMAGES))
    factories = {name: make_transformer for name in modes}
    if transductive is not None:
        modes["inverter-transductive"] = (resolve_mode("inverter"), "an inverter trained here on these images")
        factories["inverter-transductive"] = functools.partial(make_transformer, network=transductive)
    labels = data.images.class_names
    relevant = data.images.relevance
    intra_ap = _task(IMAGES, relevant, modes, features, transformer, factories, "image", extra, result, ctx, labels)

    prompts = encoder.encode_texts(concept_prompts(data.images.class_names))
    accuracy = float(((features.gallery @ prompts.T).argmax(axis=1) == features.gallery_labels).mean())
    result.zero_shot = {
        "accuracy": accuracy,
        "chance": 1.0 / len(data.images.class_names),
        "classes": len(data.images.class_names),
        "prompt": PROMPT.format("{a|an} {class name}"),
    }
    if sweep.steps:
        settings = [{"n_tokens": tokens, "lr": lr} for tokens in sweep.tokens for lr in sweep.lrs]
        _sweep(IMAGES, "oti", settings, sweep.steps, features, transformer, cache, intra_ap, ctx, result)


def _sweep(
    task: str,
    direction: str,
    settings: list[dict],
    steps: list[int],
    features: FeatureSet,
    transformer: ModelTransformer,
    cache: MemoryCache,
    intra_ap: np.ndarray,
    ctx: _Context,
    result: EvalResult,
) -> None:
    """The cross mode at every step count of ``steps`` for each of ``settings``: one inversion run per
    setting (``inversion_path``), its snapshots put in the cache under the keys a served query of those
    settings has, then measured through the same engine as every mode."""
    from crossgap_index.inversion.keys import cache_key, seed_from_digest
    from crossgap_index.inversion.optimise import inversion_path

    encoder, queries = ctx.encoder, features.queries
    collection = "image" if direction == "oti" else "text"
    seeds = [seed_from_digest(d) for d in queries.digests]
    for setting in settings:
        base = dataclasses.replace(ctx.config, **setting)
        names = {"n_tokens": "R", "n_patches": "P"}
        label = ", ".join(f"{names.get(k, k)}={'default' if v is None else v}" for k, v in setting.items())
        stage = f"sweep: {direction.upper()} {label}, {max(steps)} steps"
        ctx.report(stage, 0, 1)
        begin = time.perf_counter()
        path = inversion_path(encoder.loaded, queries.features, base, seeds, direction, steps)
        seconds = time.perf_counter() - begin
        ctx.report(stage, 1, 1)
        for step, vectors in path.items():
            field_name = "oti_steps" if direction == "oti" else "ovi_steps"
            config = dataclasses.replace(base, **{field_name: step})
            keyed = config.resolved(encoder.device)
            model = encoder.loaded.spec.canonical
            cache.put_many({cache_key(model, direction, keyed, d): vectors[i] for i, d in enumerate(queries.digests)})
            metrics = measure_mode(resolve_mode("cross", inversion=config), features, transformer, collection)
            delta = paired_difference(metrics.per_query["map"], intra_ap)
            result.sweep.append(
                SweepPoint(
                    step,
                    metrics.means(),
                    *delta,
                    seconds,
                    tokens=config.n_tokens,
                    task=task,
                    patches=config.n_patches if direction == "ovi" else None,
                    lr=config.lr,
                )
            )


def _inverters(given, transductive: bool, direction: str, items: np.ndarray, ctx: _Context, timings: dict):
    """(the network the inverter/warm modes use, a freshly trained one to compare or None). A given network
    (an index's own) is measured as it is; without one, one is trained here on ``items`` (no labels)."""
    from crossgap_index.inversion.inverter import DEFAULT_STEPS, InverterConfig, train_inverter

    def train():
        config = InverterConfig(
            direction=direction, n_tokens=1 if direction == "oti" else None, steps=DEFAULT_STEPS[direction]
        )
        with _timed(timings, f"train_inverter_{direction}"):
            return train_inverter(ctx.encoder.loaded, items, config)

    if given is None:
        return train(), None
    return given, train() if transductive else None


def _stepping(ctx: _Context, stage: str, n: int, leg, direction: str) -> Callable[[int, float], None]:
    """An inversion progress callback reporting ``n`` queries' steps as ``stage`` (done of the total)."""
    from crossgap_index.inversion.optimise import progress_total

    device = ctx.encoder.device
    total = progress_total(n, leg.inversion().resolved(device), device, direction)
    ctx.report(stage, 0, total)
    return lambda step, loss: ctx.report(stage, min(step, total), total)


def _run_texts(data: EvalDataset, ctx: _Context, sweep: _Sweep, result: EvalResult) -> None:
    texts, timings, encoder = data.texts, result.timings, ctx.encoder
    with _timed(timings, "embed_texts"):
        ctx.report("embedding texts", 0, 2)
        queries = encoder.encode_texts(texts.query_texts)
        ctx.report("embedding texts", 1, 2)
        gallery = encoder.encode_texts(texts.gallery_texts)
        ctx.report("embedding texts", 2, 2)
    digests = tuple(text_hash(t) for t in texts.query_texts)
    features = FeatureSet(Queries(queries, "text", digests), texts.query_groups, gallery, texts.gallery_groups, False)
    own_texts = np.concatenate([queries, gallery])  # every evaluated text, as an index holding them would train on
    inverter, transductive = _inverters(ctx.text_inverter, ctx.transductive, "ovi", own_texts, ctx, timings)

    def make_transformer(cache=None, network=inverter, progress=None) -> ModelTransformer:
        model = encoder.loaded.spec.canonical
        return ModelTransformer(model, lambda: encoder, cache=cache, text_inverter=lambda: network, progress=progress)

    model = encoder.loaded.spec.canonical
    modes = eval_modes(TEXTS, ctx.config, ctx.names, ctx.span_components, ctx.rrf_k, ctx.alpha, model)
    modes.update(ctx.extra(TEXTS))
    factories = {name: make_transformer for name in modes}
    if transductive is not None:
        modes["inverter-transductive"] = (resolve_mode("inverter"), "an inverter trained here on these texts")
        factories["inverter-transductive"] = functools.partial(make_transformer, network=transductive)
    cache = MemoryCache()
    transformer = make_transformer(cache)
    cross_leg = modes["cross"][0].legs[0]
    with _timed(timings, "ovi"):
        stepping = _stepping(ctx, f"OVI, {len(queries)} texts", len(queries), cross_leg, "ovi")
        make_transformer(cache, progress=stepping).search_vectors(
            cross_leg, features.queries, "text"
        )  # fills the cache
    stage = f"OVI of the gallery, {len(gallery)} texts"
    with _timed(timings, "ovi_gallery"):
        gallery_digests = tuple(text_hash(t) for t in texts.gallery_texts)
        stepping = _stepping(ctx, stage, len(gallery), cross_leg, "ovi")
        gallery_queries = Queries(gallery, "text", gallery_digests)
        gallery_ovi = make_transformer(cache, progress=stepping).search_vectors(cross_leg, gallery_queries, "text")
    extra = {"text-ovi": gallery_ovi}
    labels = data.class_names
    intra_ap = _task(TEXTS, "same group", modes, features, transformer, factories, "text", extra, result, ctx, labels)
    if sweep.steps:
        settings = [{"n_patches": patches, "lr": lr} for patches in sweep.patches for lr in sweep.lrs]
        _sweep(TEXTS, "ovi", settings, sweep.steps, features, transformer, cache, intra_ap, ctx, result)


def _run_text_to_image(data: EvalDataset, ctx: _Context, result: EvalResult) -> None:
    """Every caption queries the images: relevant = an image of its class (or its own image, see data)."""
    timings, encoder = result.timings, ctx.encoder
    pairs = data.caption_image_labels()
    with _timed(timings, "embed_images"):
        notes = result.dataset.setdefault("notes", list(data.notes))
        images = image_features(data, encoder, notes, ctx.report)
    with _timed(timings, "embed_texts"):
        captions = encoder.encode_texts(pairs.texts)
    digests = tuple(text_hash(t) for t in pairs.texts)
    image_labels = pairs.image_labels(images.gallery_labels, images.queries.digests)
    features = FeatureSet(Queries(captions, "text", digests), pairs.labels, images.gallery, image_labels, False)

    def make_transformer(cache=None) -> ModelTransformer:
        return ModelTransformer(encoder.loaded.spec.canonical, lambda: encoder, cache=cache)

    model = encoder.loaded.spec.canonical
    modes = eval_modes(TEXT_TO_IMAGE, ctx.config, ctx.names, ctx.span_components, ctx.rrf_k, ctx.alpha, model)
    modes.update(ctx.extra(TEXT_TO_IMAGE))
    factories = {name: make_transformer for name in modes}
    transformer = make_transformer(MemoryCache())
    labels = data.class_names
    _task(TEXT_TO_IMAGE, pairs.relevant, modes, features, transformer, factories, "image", {}, result, ctx, labels)


def _task(
    name: str,
    relevant: str,
    modes: dict[str, tuple[Mode, str]],
    features: FeatureSet,
    transformer: ModelTransformer,
    factories: dict[str, Callable],
    collection: str,
    extra: dict[str, np.ndarray],
    result: EvalResult,
    ctx: _Context,
    class_names: Sequence[str] = (),
) -> np.ndarray:
    """Every mode's metrics and cost on one task; returns intra's per-query AP, the base of every difference.
    ``factories``: mode name -> ``make_transformer(cache)`` (the inverter a mode uses rides in it).
    ``class_names``: the evaluated data's labels (a mode whose vocabulary holds one of them uses labels)."""
    measured: dict[str, tuple[RetrievalMetrics, float, float | None, float | None]] = {}
    stage = f"modes ({name})"
    for i, (mode_name, (mode, _)) in enumerate(modes.items()):
        ctx.report(stage, i, len(modes))
        begin = time.perf_counter()
        own = transformer if factories[mode_name] is factories["intra"] else factories[mode_name](MemoryCache())
        try:
            metrics = measure_mode(mode, features, own, collection, extra)
        except CrossGapError as exc:  # a mode this model or data cannot run: say so, measure the rest
            result.dataset["notes"].append(f"{name}: mode {mode_name} left out: {exc}")
            continue
        seconds = time.perf_counter() - begin
        make = functools.partial(factories[mode_name], None)
        cost = query_cost_ms(mode, features, make, collection, extra)
        cost_batch = query_cost_ms(mode, features, make, collection, extra, batch=COST_BATCH)
        measured[mode_name] = (metrics, seconds, cost, cost_batch)
    ctx.report(stage, len(modes), len(modes))
    base = measured["intra"][0]
    if base.n_queries == 0:
        raise InputFileError(f"{name}: no query has a relevant item in the gallery")
    n_gallery = len(features.gallery) - (1 if features.leave_one_out else 0)
    task = TaskResult(name, relevant, base.n_queries, n_gallery, base.n_skipped, features.leave_one_out)
    intra_ap = base.per_query["map"]
    for mode_name, (metrics, seconds, cost, cost_batch) in measured.items():
        delta = paired_difference(metrics.per_query["map"], intra_ap)
        mode, description = modes[mode_name]
        low, _, high = paired_interval(metrics.per_query["map"], intra_ap)
        task.modes[mode_name] = ModeResult(
            mode_name,
            description,
            metrics.means(),
            *delta,
            seconds,
            cost,
            {"legs": mode.to_dict()["legs"]},
            cost_batch,
            uses_labels=mode_name in ctx.labelled_modes or uses_labels(mode, class_names),
            map_vs_intra_ci95=None if np.isnan(low) else (low, high),
        )
    result.tasks[name] = task
    return intra_ap


def _embed_cost_ms(encoder: Encoder, data: EvalDataset, samples: int = 3) -> float:
    """Median milliseconds to embed one query image at batch 1 (what every image query pays first)."""
    times = []
    for i in range(min(samples + 1, len(data.images.items))):
        try:
            image = decode_rgb(data.images.read(i))
        except DecodeError:
            continue
        begin = time.perf_counter()
        encoder.encode_images([image])
        times.append(time.perf_counter() - begin)
    return float(np.median(times[1:] or times) * 1e3) if times else float("nan")


def _embed_images(
    images: ImageSet, encoder: Encoder, notes: list[str], report: StageProgress
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
        shown = "; ".join(bad[:20]) + (f"; ... ({len(bad) - 20} more)" if len(bad) > 20 else "")
        notes.append(f"{len(bad)} undecodable images left out: {shown}")
    labels = images.labels[kept]
    if len(np.unique(labels)) < 2:
        raise InputFileError("image-to-image evaluation needs at least 2 classes with decodable images")
    order = np.argsort(digests, kind="stable")  # content-hash order: see TIES
    return np.concatenate(feats)[order], [digests[i] for i in order], labels[order]


class _timed:
    """Adds the block's wall time to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.begin = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.begin

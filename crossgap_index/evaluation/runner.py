"""The parts every ``cgx eval`` task shares: the run's context, the transformers its modes run through, and the
measurement of every mode of a task against intra on the same queries and gallery."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from crossgap_index.errors import CrossGapError, InputFileError
from crossgap_index.evaluation.features import FeatureSet, MemoryCache, take_queries
from crossgap_index.evaluation.measure import COST_BATCH, InversionCosts, measure_mode, query_cost_ms, uses_labels
from crossgap_index.evaluation.metrics import RetrievalMetrics
from crossgap_index.evaluation.modes import eval_modes
from crossgap_index.evaluation.results import EvalResult, ModeResult, TaskResult
from crossgap_index.evaluation.settings import EvalSettings
from crossgap_index.evaluation.stats import per_query_comparison
from crossgap_index.inversion import InversionConfig
from crossgap_index.models import Encoder
from crossgap_index.search.modes import Leg, Mode
from crossgap_index.search.run import Queries
from crossgap_index.search.transforms import ModelTransformer
from crossgap_index.words import StageProgress


@dataclass(frozen=True)
class RunContext:
    """What every task of one run reads: the loaded model, the inversion settings resolved on its device, the
    span and concept vocabulary, the caller's settings, the progress callback and the timing table."""

    encoder: Encoder
    config: InversionConfig
    names: tuple[str, ...]
    settings: EvalSettings
    report: StageProgress
    timings: dict[str, float]  # the run's wall times by stage, filled as the stages run

    @property
    def model(self) -> str:
        return self.encoder.loaded.spec.canonical

    def modes(self, task: str) -> dict[str, tuple[Mode, str]]:
        """The modes measured on ``task`` with their descriptions: the protocol's, then the caller's named ones."""
        s = self.settings
        modes = eval_modes(task, self.config, self.names, s.span_components, s.rrf_k, s.alpha, self.model)
        modes.update({name: (mode, mode.describe()) for name, mode in s.named_modes(task).items()})
        return modes

    def stepping(self, stage: str, n: int, leg: Leg, direction: str) -> Callable[[int, float], None]:
        """An inversion progress callback reporting ``n`` queries' steps as ``stage`` (done of the total)."""
        from crossgap_index.inversion.optimise import progress_total

        total = progress_total(n, leg.inversion().resolved(self.encoder.loaded), direction)
        self.report(stage, 0, total)
        return lambda step, loss: self.report(stage, min(step, total), total)


@dataclass(frozen=True)
class Transformers:
    """Makes a task's ``ModelTransformer``s: ``network`` rides in ``slot`` (``inverter`` for image queries,
    ``text_inverter`` for text queries, None where no mode inverts), for the inverter and warm modes. Every
    transformer made shares ``projections``: a span, iso or concept map is fitted once per settings, as one
    served index keeps it, not again for each fresh transformer a cost measurement makes."""

    encoder: Encoder
    slot: str | None = None
    network: object = None
    projections: dict = field(default_factory=dict)

    def make(self, cache: MemoryCache | None = None, progress: Callable | None = None) -> ModelTransformer:
        network = self.network
        networks = {} if self.slot is None else {self.slot: lambda: network}
        encoder = self.encoder
        model = encoder.loaded.spec.canonical
        return ModelTransformer(
            model, lambda: encoder, cache=cache, progress=progress, projections=self.projections, **networks
        )

    def invert(
        self,
        cache: MemoryCache,
        leg: Leg,
        queries: Queries,
        stage: str,
        ctx: RunContext,
        known: frozenset[str] = frozenset(),
    ) -> np.ndarray:
        """``leg``'s search vectors for ``queries`` (their inversion), reported as ``stage``, kept in ``cache``.

        A row of ``known`` (digests ``leg`` already put in ``cache``) takes the cache's vectors, as a served query
        of that content does. Rows with the same content and the same features (a repeated caption, embedded
        alike) are inverted once: the same target and seed give the same vectors (bf16 lanes: bit for bit), so
        each row gets what inverting it alone gives. The cache ends holding, per content, its last row's vectors,
        as when every row is inverted in order."""
        direction = "oti" if queries.modality == "image" else "ovi"
        cached = [row for row, digest in enumerate(queries.digests) if digest in known]
        last = distinct_rows(queries, known)
        stepping = ctx.stepping(stage, len(last), leg, direction)
        todo = take_queries(queries, list(last.values()))
        fresh = self.make(cache, progress=stepping).search_vectors(leg, todo, todo.modality)
        out = np.empty_like(queries.features)
        if cached:
            out[cached] = self.make(cache).search_vectors(leg, take_queries(queries, cached), queries.modality)
        position = {key: i for i, key in enumerate(last)}
        for row, digest in enumerate(queries.digests):
            if digest not in known:
                out[row] = fresh[position[digest, queries.features[row].tobytes()]]
        return out


@dataclass(frozen=True)
class TaskPlan:
    """One task ready to measure: its queries and gallery, the modes, how each mode's transformer is made
    (``own``, or a mode's entry in ``special``), the transformer and cache the ``own`` modes share, and the
    precomputed collections (an inverted gallery) beside the gallery."""

    name: str
    relevant: str
    features: FeatureSet
    collection: str
    modes: dict[str, tuple[Mode, str]]
    own: Transformers
    special: dict[str, Transformers]
    transformer: ModelTransformer
    cache: MemoryCache
    extra: dict[str, np.ndarray]
    class_names: Sequence[str] = ()


@dataclass(frozen=True)
class _Measured:
    metrics: RetrievalMetrics
    seconds: float
    cost: float | None
    cost_batch: float | None


def measure_task(plan: TaskPlan, ctx: RunContext, result: EvalResult) -> np.ndarray:
    """Every mode's metrics and cost on one task, into ``result.tasks``; returns intra's per-query AP, the base of
    every difference. A mode this model or data cannot run becomes a note, and the rest are measured."""
    measured = _measure_modes(plan, ctx, result)
    base = measured["intra"].metrics
    if base.n_queries == 0:
        raise InputFileError(f"{plan.name}: no query has a relevant item in the gallery")
    features = plan.features
    n_gallery = len(features.gallery) - (1 if features.leave_one_out else 0)
    task = TaskResult(plan.name, plan.relevant, base.n_queries, n_gallery, base.n_skipped, features.leave_one_out)
    intra_ap = base.per_query["map"]
    for mode_name, done in measured.items():
        mode, description = plan.modes[mode_name]
        versus = per_query_comparison(done.metrics.per_query["map"], intra_ap)
        task.modes[mode_name] = ModeResult(
            mode_name,
            description,
            done.metrics.means(),
            versus.mean,
            versus.se,
            done.seconds,
            done.cost,
            {"legs": mode.to_dict()["legs"]},
            done.cost_batch,
            uses_labels=mode_name in ctx.settings.labelled_modes or uses_labels(mode, plan.class_names),
            map_vs_intra_ci95=versus.interval,
        )
    result.tasks[plan.name] = task
    return intra_ap


def _measure_modes(plan: TaskPlan, ctx: RunContext, result: EvalResult) -> dict[str, _Measured]:
    measured: dict[str, _Measured] = {}
    stage = f"modes ({plan.name})"
    shared = InversionCosts(plan.own.make)  # the own modes' inversions timed once (cross and its fusions)
    for i, (mode_name, (mode, _)) in enumerate(plan.modes.items()):
        ctx.report(stage, i, len(plan.modes))
        begin = time.perf_counter()
        maker = plan.special.get(mode_name, plan.own)
        transformer = plan.transformer if mode_name not in plan.special else maker.make(MemoryCache())
        try:
            metrics = measure_mode(mode, plan.features, transformer, plan.collection, plan.extra)
        except CrossGapError as exc:  # a mode this model or data cannot run: say so, measure the rest
            result.dataset["notes"].append(f"{plan.name}: mode {mode_name} left out: {exc}")
            continue
        seconds = time.perf_counter() - begin
        sharing = shared if maker is plan.own else None
        cost, cost_batch = (
            query_cost_ms(mode, plan.features, maker.make, plan.collection, plan.extra, batch=batch, shared=sharing)
            for batch in (1, COST_BATCH)
        )
        measured[mode_name] = _Measured(metrics, seconds, cost, cost_batch)
    ctx.report(stage, len(plan.modes), len(plan.modes))
    return measured


def distinct_rows(queries: Queries, known: frozenset[str] = frozenset()) -> dict[tuple[str, bytes], int]:
    """(digest, feature bytes) -> the last row holding them, ordered by those last rows; rows of ``known`` left out."""
    last: dict[tuple[str, bytes], int] = {}
    for row, digest in enumerate(queries.digests):
        if digest not in known:
            key = (digest, queries.features[row].tobytes())
            last.pop(key, None)  # re-inserted: the order follows each key's last row
            last[key] = row
    return last


def with_network(transformers: Transformers, network: object) -> Transformers:
    """The same transformers with another network in the slot (a freshly trained inverter to compare)."""
    return dataclasses.replace(transformers, network=network)


class timed:
    """Adds the block's wall time to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.begin = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.begin

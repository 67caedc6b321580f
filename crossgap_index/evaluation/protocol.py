"""The evaluation protocol behind ``cgx eval``: which retrieval mode wins on a labelled dataset.

The tasks (image-to-image, text-to-text, text-to-image) and what is relevant in each: evaluation/tasks.py.
Every mode runs through the search engine's ``run_mode`` (search/run.py) over the dataset's features held in
memory, with the same transforms, fusion and fusion depth a served query gets; each query's full ranking (the
fused head, then the first leg's order) is then scored by the metrics module. So an eval number is the number
``cgx query`` serves.

This module is the entry point: ``evaluate`` and the names its callers use, each defined in the module of its
concern (settings, features, measure, modes, results, runner, tasks, stats).
"""

from __future__ import annotations

import dataclasses
import time

from crossgap_index.errors import QueryError
from crossgap_index.evaluation.data import EvalDataset, load_dataset
from crossgap_index.evaluation.features import TIES, FeatureSet, MemoryCache, image_features
from crossgap_index.evaluation.measure import COST_BATCH, measure_mode, query_cost_ms, uses_labels
from crossgap_index.evaluation.modes import eval_modes
from crossgap_index.evaluation.results import EvalResult, ModeResult, SweepPoint, TaskResult
from crossgap_index.evaluation.runner import RunContext, timed
from crossgap_index.evaluation.settings import (
    DEFAULT_ALPHA,
    IMAGES,
    SERVED_INVERSION,
    TASKS,
    TEXT_TO_IMAGE,
    TEXTS,
    EvalSettings,
)
from crossgap_index.evaluation.tasks import KINDS, run_task
from crossgap_index.models import Encoder, default_model_spec, load_model
from crossgap_index.search.modes import default_cross, resolve_mode
from crossgap_index.search.vocabulary import PROMPT
from crossgap_index.words import StageProgress

__all__ = [
    "COST_BATCH",
    "DEFAULT_ALPHA",
    "IMAGES",
    "SERVED_INVERSION",
    "TASKS",
    "TEXTS",
    "TEXT_TO_IMAGE",
    "TIES",
    "EvalResult",
    "EvalSettings",
    "FeatureSet",
    "MemoryCache",
    "ModeResult",
    "SweepPoint",
    "TaskResult",
    "eval_modes",
    "evaluate",
    "image_features",
    "measure_mode",
    "query_cost_ms",
    "uses_labels",
]


def evaluate(
    dataset: EvalDataset | str,
    settings: EvalSettings | str | None = None,
    *,
    progress: StageProgress | None = None,
    **keywords: object,
) -> EvalResult:
    """Run every retrieval mode on ``dataset`` (an ``EvalDataset`` or a spec for ``load_dataset``).

    ``settings``: an ``EvalSettings``; or, in the keyword form, the model spec (None: the default model) with
    ``EvalSettings``' fields as keywords: ``evaluate("synthetic:3:24", "crossgap-small", device="cpu")``.
    ``progress(stage, done, total)`` follows the stages, e.g. ("OTI, 480 images", 300, 1200).
    """
    if not isinstance(settings, EvalSettings):
        settings = EvalSettings(model=settings, **keywords)
    elif keywords:
        raise TypeError(f"evaluate takes EvalSettings or keywords, not both: {', '.join(keywords)}")
    start = time.perf_counter()
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    wanted = settings.wanted_tasks(data)
    timings: dict[str, float] = {}
    with timed(timings, "load_model"):
        loaded = load_model(settings.model or default_model_spec(), settings.device)
        encoder = Encoder(loaded, precision=settings.precision)
    if settings.span_components is not None and settings.span_components > encoder.dim:
        raise QueryError(f"span components must be at most the model's dimension {encoder.dim}")
    names = tuple(sorted(set(settings.vocab if settings.vocab is not None else data.class_names)))
    report = progress or (lambda stage, done, total: None)
    ctx = RunContext(encoder, settings.config.resolved(encoder.loaded), names, settings, report, timings)
    result = EvalResult(
        dataset=data.describe(),
        model=ctx.model,
        dim=encoder.dim,
        device=str(encoder.device),
        settings=_settings_report(ctx),
        tasks={},
        zero_shot=None,
        sweep=[],
        timings=timings,
    )
    for task in wanted:
        run_task(KINDS[task], data, ctx, result)
    if len(names) < 2:
        result.dataset["notes"].append("no vocabulary (the captions carry no labels): give --vocab FILE")
    timings["total"] = time.perf_counter() - start
    return result


def _settings_report(ctx: RunContext) -> dict:
    """The settings every mode ran with, as the report states them."""
    settings = ctx.settings
    default = default_cross(ctx.model)
    span_defaults = default.span_settings()
    return {
        "precision": ctx.encoder.precision,
        "inversion": dataclasses.asdict(ctx.config),
        "fusion": {"rrf_k": settings.rrf_k, "alpha_cross": settings.alpha, "depth": resolve_mode("fused").depth},
        "span": {
            "vocabulary": "given" if settings.vocab is not None else "dataset class names",
            "size": len(ctx.names),
            "prompt": PROMPT.format("{a|an} {name}") if span_defaults["prompt"] == "photo" else "{name}",
            "features": span_defaults["features"],
            "components": settings.span_components or span_defaults["components"],
        },
        "default": {"mode": default.name, "projection": default.projection, "source": default.source},
        "ties": TIES,
    }

"""The three ``cgx eval`` tasks through one skeleton (``run_task``): embed the items, take or train the inverter,
invert what the cross modes share, measure every mode, then the task's own extras. What differs is a
``TaskKind`` each.

Image-to-image: each image queries all the others (leave-one-out), relevant = same class. Text-to-text: each
group's first caption queries the other captions, relevant = same group. Text-to-image: every caption queries
the images, relevant = an image of the caption's class (captions labelled with the images' class names), else
the caption's own image.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from crossgap_index.evaluation.data import EvalDataset
from crossgap_index.evaluation.features import (
    FeatureSet,
    MemoryCache,
    embed_cost_ms,
    image_features,
    text_features,
)
from crossgap_index.evaluation.measure import measure_mode
from crossgap_index.evaluation.results import EvalResult, SweepPoint
from crossgap_index.evaluation.runner import RunContext, TaskPlan, Transformers, measure_task, timed, with_network
from crossgap_index.evaluation.settings import IMAGES, TEXT_TO_IMAGE, TEXTS
from crossgap_index.evaluation.stats import paired_difference
from crossgap_index.search.modes import resolve_mode
from crossgap_index.search.run import Queries
from crossgap_index.search.vocabulary import PROMPT, concept_prompts
from crossgap_index.words import text_hash


@dataclass(frozen=True)
class Embedded:
    """A task's embedded items: the features, what makes an item relevant, the labels' names, and the items an
    inverter trained here learns from (None where the task has no inverter)."""

    features: FeatureSet
    relevant: str
    class_names: list[str]
    own_items: np.ndarray | None = None


class TaskKind(ABC):
    """What one task does differently; the defaults are a task whose modes invert nothing."""

    name: str
    collection: str  # the gallery's modality, as the engine names the collection
    direction: str | None = None  # the inversion of its queries: oti (images), ovi (texts)
    slot: str | None = None  # the transformer argument the task's inverter rides in
    items: str = ""  # how a report names the items an inverter trained here learns from
    sweep_field: str | None = None  # the pseudo-word count a sweep varies: n_tokens (OTI), n_patches (OVI)

    @abstractmethod
    def embed(self, data: EvalDataset, ctx: RunContext, result: EvalResult) -> Embedded:
        """The task's queries and gallery, embedded (their notes and timings into ``result`` and ``ctx``)."""

    def given_network(self, ctx: RunContext) -> object:
        """The caller's trained network for this task's inverter modes (an index's own), or None."""
        return None

    def invert(
        self, data: EvalDataset, embedded: Embedded, own: Transformers, cache: MemoryCache, ctx: RunContext
    ) -> dict[str, np.ndarray]:
        """Inversions the cross modes share, put in ``cache``; returns the precomputed collections."""
        return {}

    def sweep_counts(self, ctx: RunContext) -> tuple:
        """The pseudo-word counts a sweep runs at (none: the task does not sweep)."""
        return ()

    def finish(
        self, data: EvalDataset, plan: TaskPlan, intra_ap: np.ndarray, ctx: RunContext, result: EvalResult
    ) -> None:
        """After the modes: the cross mode at every sweep setting, where the task sweeps."""
        if ctx.settings.sweep_steps and self.sweep_field is not None:
            _sweep(self, plan, intra_ap, ctx, result)


class ImageTask(TaskKind):
    name, collection, direction, slot, items, sweep_field = IMAGES, "image", "oti", "inverter", "images", "n_tokens"

    def embed(self, data: EvalDataset, ctx: RunContext, result: EvalResult) -> Embedded:
        with timed(ctx.timings, "embed_images"):
            notes = list(data.notes)
            features = image_features(data, ctx.encoder, notes, ctx.report)
        result.dataset.update(notes=notes, images_evaluated=len(features.gallery))
        ctx.timings["embed_ms_per_image"] = embed_cost_ms(ctx.encoder, data)
        return Embedded(features, data.images.relevance, data.images.class_names, features.gallery)

    def given_network(self, ctx: RunContext) -> object:
        return ctx.settings.inverter

    def invert(self, data, embedded, own, cache, ctx) -> dict[str, np.ndarray]:
        leg = resolve_mode("cross", inversion=ctx.config).legs[0]
        queries = embedded.features.queries
        with timed(ctx.timings, "oti"):
            return {"image-oti": own.invert(cache, leg, queries, f"OTI, {len(embedded.features.gallery)} images", ctx)}

    def sweep_counts(self, ctx: RunContext) -> tuple:
        return ctx.settings.sweep_tokens

    def finish(self, data, plan, intra_ap, ctx, result) -> None:
        """Zero-shot classification of the images by their class names, as a control; then the sweep."""
        names = data.images.class_names
        features = plan.features
        prompts = ctx.encoder.encode_texts(concept_prompts(names))
        accuracy = float(((features.gallery @ prompts.T).argmax(axis=1) == features.gallery_labels).mean())
        result.zero_shot = {
            "accuracy": accuracy,
            "chance": 1.0 / len(names),
            "classes": len(names),
            "prompt": PROMPT.format("{a|an} {class name}"),
        }
        super().finish(data, plan, intra_ap, ctx, result)


class TextTask(TaskKind):
    name, collection, direction, slot, items, sweep_field = TEXTS, "text", "ovi", "text_inverter", "texts", "n_patches"

    def embed(self, data: EvalDataset, ctx: RunContext, result: EvalResult) -> Embedded:
        with timed(ctx.timings, "embed_texts"):
            features = text_features(data.texts, ctx.encoder, ctx.report)
        own = np.concatenate([features.queries.features, features.gallery])  # as an index holding them would train on
        return Embedded(features, "same group", data.class_names, own)

    def given_network(self, ctx: RunContext) -> object:
        return ctx.settings.text_inverter

    def invert(self, data, embedded, own, cache, ctx) -> dict[str, np.ndarray]:
        leg = resolve_mode("cross", inversion=ctx.config).legs[0]
        queries, gallery = embedded.features.queries, embedded.features.gallery
        with timed(ctx.timings, "ovi"):
            own.invert(cache, leg, queries, f"OVI, {len(queries.features)} texts", ctx)  # fills the cache
        with timed(ctx.timings, "ovi_gallery"):
            digests = tuple(text_hash(t) for t in data.texts.gallery_texts)
            stage = f"OVI of the gallery, {len(gallery)} texts"
            known = frozenset(queries.digests)  # a gallery caption that is also a query: in the cache already
            return {"text-ovi": own.invert(cache, leg, Queries(gallery, "text", digests), stage, ctx, known)}

    def sweep_counts(self, ctx: RunContext) -> tuple:
        return ctx.settings.sweep_patches


class TextToImageTask(TaskKind):
    name, collection = TEXT_TO_IMAGE, "image"

    def embed(self, data: EvalDataset, ctx: RunContext, result: EvalResult) -> Embedded:
        """Every caption queries the images: relevant = an image of its class (or its own image, see data)."""
        pairs = data.caption_image_labels()
        with timed(ctx.timings, "embed_images"):
            notes = result.dataset.setdefault("notes", list(data.notes))
            images = image_features(data, ctx.encoder, notes, ctx.report)
        with timed(ctx.timings, "embed_texts"):
            captions = ctx.encoder.encode_texts(pairs.texts)
        digests = tuple(text_hash(t) for t in pairs.texts)
        image_labels = pairs.image_labels(images.gallery_labels, images.queries.digests)
        features = FeatureSet(Queries(captions, "text", digests), pairs.labels, images.gallery, image_labels, False)
        return Embedded(features, pairs.relevant, data.class_names)


KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (ImageTask(), TextTask(), TextToImageTask())}


def run_task(kind: TaskKind, data: EvalDataset, ctx: RunContext, result: EvalResult) -> None:
    """One task from its items to its report in ``result``: the skeleton every task runs through."""
    embedded = kind.embed(data, ctx, result)
    network, fresh = _inverters(kind, embedded.own_items, ctx)
    own = Transformers(ctx.encoder, kind.slot, network)
    cache = MemoryCache()
    transformer = own.make(cache)
    extra = kind.invert(data, embedded, own, cache, ctx)
    modes = ctx.modes(kind.name)
    special = {}
    if fresh is not None:
        modes["inverter-transductive"] = (resolve_mode("inverter"), f"an inverter trained here on these {kind.items}")
        special["inverter-transductive"] = with_network(own, fresh)
    plan = TaskPlan(
        kind.name,
        embedded.relevant,
        embedded.features,
        kind.collection,
        modes,
        own,
        special,
        transformer,
        cache,
        extra,
        embedded.class_names,
    )
    intra_ap = measure_task(plan, ctx, result)
    kind.finish(data, plan, intra_ap, ctx, result)


def _inverters(kind: TaskKind, items: np.ndarray | None, ctx: RunContext) -> tuple[object, object]:
    """(the network the inverter/warm modes use, a freshly trained one to compare or None). A given network
    (an index's own) is measured as it is; without one, one is trained here on ``items`` (no labels)."""
    if kind.direction is None:
        return None, None
    from crossgap_index.inversion.inverter import DEFAULT_STEPS, InverterConfig, train_inverter

    direction = kind.direction

    def train():
        config = InverterConfig(
            direction=direction, n_tokens=1 if direction == "oti" else None, steps=DEFAULT_STEPS[direction]
        )
        with timed(ctx.timings, f"train_inverter_{direction}"):
            return train_inverter(ctx.encoder.loaded, items, config)

    given = kind.given_network(ctx)
    if given is None:
        return train(), None
    return given, train() if ctx.settings.transductive else None


def _sweep(kind: TaskKind, plan: TaskPlan, intra_ap: np.ndarray, ctx: RunContext, result: EvalResult) -> None:
    """The cross mode at every sweep step count, for each pseudo-word count and learning rate: one inversion
    run per setting (``inversion_path``), its snapshots put in the cache under the keys a served query of those
    settings has, then measured through the same engine as every mode."""
    from crossgap_index.inversion.keys import cache_key, seed_from_digest
    from crossgap_index.inversion.optimise import inversion_path

    steps, direction, queries = list(ctx.settings.sweep_steps), kind.direction, plan.features.queries
    seeds = [seed_from_digest(d) for d in queries.digests]
    rates = ctx.settings.sweep_lrs or (ctx.config.lr,)
    step_field = "oti_steps" if direction == "oti" else "ovi_steps"
    for count in kind.sweep_counts(ctx):
        for lr in rates:
            base = dataclasses.replace(ctx.config, **{kind.sweep_field: count, "lr": lr})
            label = f"{'R' if direction == 'oti' else 'P'}={'default' if count is None else count}, lr={lr}"
            stage = f"sweep: {direction.upper()} {label}, {max(steps)} steps"
            ctx.report(stage, 0, 1)
            begin = time.perf_counter()
            path = inversion_path(ctx.encoder.loaded, queries.features, base, seeds, direction, steps)
            seconds = time.perf_counter() - begin
            ctx.report(stage, 1, 1)
            for step, vectors in path.items():
                config = dataclasses.replace(base, **{step_field: step})
                keyed = config.resolved(ctx.encoder.loaded)
                plan.cache.put_many(
                    {cache_key(ctx.model, direction, keyed, d): vectors[i] for i, d in enumerate(queries.digests)}
                )
                cross = resolve_mode("cross", inversion=config)
                metrics = measure_mode(cross, plan.features, plan.transformer, kind.collection)
                mean, se = paired_difference(metrics.per_query["map"], intra_ap)
                patches = config.n_patches if direction == "ovi" else None
                point = SweepPoint(
                    step, metrics.means(), mean, se, seconds, config.n_tokens, kind.name, patches, config.lr
                )
                result.sweep.append(point)

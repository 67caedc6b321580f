"""`cgx tune`: pick the mode that wins on the user's labelled data and store it in the index.

The labelled items are split by item within each class (fixed seed) into a selection half and a report
half. Every candidate mode (projections with their settings, OTI pseudo-tokens x steps, the inverter at a
few training lengths, fusions of the best of each) is measured on the selection half with the same engine
that serves queries; the winner is then measured once on the report half, which took no part in the
choice, so its number is an honest estimate. The record goes into the manifest, where ``mode="auto"`` and
``cgx query --cross`` find it.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from crossgap_index.errors import InputFileError
from crossgap_index.evaluation.data import EvalDataset, load_dataset
from crossgap_index.evaluation.protocol import (
    IMAGES,
    TEXTS,
    FeatureSet,
    MemoryCache,
    image_features,
    measure_mode,
    paired_difference,
)
from crossgap_index.ingest.decode import content_hash
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.engine import Queries
from crossgap_index.search.modes import Leg, Mode, resolve_mode
from crossgap_index.search.peers import post_candidates, tune_candidates
from crossgap_index.search.transforms import ModelTransformer

SPLIT_SEED = 0
# The grid: small enough for a CPU in minutes with a small model; --no-inversion drops the costly part.
SPAN_COMPONENTS = (4, 6, 8, 12, 16, 24, 32, 64)
CONCEPT_TAUS = (0.01, 0.02, 0.05)
ISO_FRACTIONS = ((150 / 512, 50 / 512), (0.1, 0.1), (0.05, 0.2), (0.2, 0.0))
OTI_TOKENS = (1, 2, 4)
OTI_STEPS = (5, 10, 17, 25, 50)
INVERTER_STEPS = (32, 48, 64)

# progress(stage, done, total)
TuneProgress = Callable[[str, int, int], None]


@dataclass
class Candidate:
    name: str
    mode: Mode
    selection_map: float = float("nan")
    inverter: object = None  # the trained network an inverter/warm candidate uses


@dataclass
class TuneResult:
    """The chosen mode with its selection and report numbers, and every candidate's selection mAP."""

    record: dict
    candidates: list[dict] = field(default_factory=list)


def tune(
    dataset: EvalDataset | str,
    encoder,
    *,
    task: str | None = None,
    inversion: bool = True,
    seed: int = SPLIT_SEED,
    progress: TuneProgress | None = None,
) -> tuple[TuneResult, object]:
    """Choose a mode on ``dataset`` with ``encoder`` (the index's model). Returns the result and the trained
    inverter when an inverter mode won (the caller saves it beside the index), else None."""
    report = progress or (lambda stage, done, total: None)
    data = load_dataset(dataset, progress=report) if isinstance(dataset, str) else dataset
    task = task or (IMAGES if data.images is not None else TEXTS)
    selection, held_out, collection = _split(data, encoder, task, seed, report)
    names = sorted(set(data.class_names))
    candidates = _candidates(task, names, encoder.dim, inversion)
    inverters = {}
    if inversion and task == IMAGES:
        from crossgap_index.inversion.inverter import InverterConfig, train_inverter

        for i, steps in enumerate(INVERTER_STEPS):
            report("training inverters", i, len(INVERTER_STEPS))
            inverters[steps] = train_inverter(encoder.loaded, selection.gallery, InverterConfig(steps=steps))
        report("training inverters", len(INVERTER_STEPS), len(INVERTER_STEPS))
        for steps, network in inverters.items():
            candidates.append(Candidate(f"inverter[steps={steps}]", resolve_mode("inverter"), inverter=network))
    intra_selection = measure_mode(resolve_mode("intra"), selection, _transformer(encoder, None, None), collection)
    if intra_selection.n_queries == 0:
        raise InputFileError("tuning: no class has 2 items in each half; give at least 4 labelled items per class")
    cache = MemoryCache()
    for i, candidate in enumerate(candidates):
        report("candidates (selection half)", i, len(candidates))
        transformer = _transformer(encoder, cache, candidate.inverter)
        candidate.selection_map = _mean_map(candidate.mode, selection, transformer, collection)
    report("candidates (selection half)", len(candidates), len(candidates))
    fused = _fusions(candidates)
    one_leg = [c for c in candidates if len(c.mode.legs) == 1 and c.mode.legs[0].transform in ("project", "invert")]
    bases = [(c.name, c.mode) for c in sorted(one_leg, key=lambda c: -c.selection_map)[:2]]  # then a post-step
    fused += [Candidate(name, mode) for name, mode in post_candidates(bases)]
    for candidate in fused:
        transformer = _transformer(encoder, cache, None)
        candidate.selection_map = _mean_map(candidate.mode, selection, transformer, collection)
    candidates += fused
    intra = next(c for c in candidates if c.name == "intra")
    best = max(candidates, key=lambda c: c.selection_map)
    transformer = _transformer(encoder, MemoryCache(), best.inverter)
    chosen = measure_mode(best.mode, held_out, transformer, collection)
    base = measure_mode(intra.mode, held_out, transformer, collection)
    if base.n_queries == 0:
        raise InputFileError("tuning: no class has 2 items in each half; give at least 4 labelled items per class")
    delta, se = paired_difference(chosen.per_query["map"], base.per_query["map"])
    record = {
        "mode": best.mode.to_dict(),
        "candidate": best.name,
        "summary": best.mode.describe(),
        "task": task,
        "selection": {
            "map": best.selection_map,
            "intra_map": intra.selection_map,
            "queries": len(selection.queries),
        },
        "report": {
            "map": chosen.means()["map"],
            "intra_map": base.means()["map"],
            "delta_map": delta,
            "delta_map_se": se,
            "queries": len(held_out.queries),
        },
        "dataset": {"spec": data.spec, "fingerprint": _fingerprint(selection, held_out), "split_seed": seed},
        "model": encoder.loaded.spec.canonical,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    table = [
        {"name": c.name, "summary": c.mode.describe(), "selection_map": c.selection_map}
        for c in sorted(candidates, key=lambda c: -c.selection_map)
    ]
    return TuneResult(record, table), best.inverter


def _candidates(task: str, names: list[str], dim: int, inversion: bool) -> list[Candidate]:
    out = [Candidate("intra", resolve_mode("intra"))]
    if len(names) >= 2:
        for k in sorted({min(k, dim) for k in SPAN_COMPONENTS}):
            mode = resolve_mode("span", projection={"vocabulary": names, "components": k})
            out.append(Candidate(f"span[labels,{k}]", mode))
        for tau in CONCEPT_TAUS:
            mode = resolve_mode("concept", projection={"vocabulary": names, "tau": tau})
            out.append(Candidate(f"concept[labels,tau={tau}]", mode))
    for k in sorted({max(1, dim // d) for d in (32, 16, 8, 4, 2)}):
        mode = resolve_mode("span", projection={"vocabulary": "imagenet", "components": k})
        out.append(Candidate(f"span[imagenet,{k}]", mode))
    modality = "image" if task == IMAGES else "text"
    for top, bottom in ISO_FRACTIONS:
        params = {"modality": modality, "k_top": round(dim * top), "k_bottom": round(dim * bottom)}
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


def _transformer(encoder, cache: MemoryCache, inverter) -> ModelTransformer:
    return ModelTransformer(
        encoder.loaded.spec.canonical,
        lambda: encoder,
        cache=cache,
        inverter=(lambda: inverter) if inverter is not None else None,
    )


def _mean_map(mode: Mode, features: FeatureSet, transformer: ModelTransformer, collection: str) -> float:
    return float(measure_mode(mode, features, transformer, collection).means()["map"])


def _split(data: EvalDataset, encoder, task: str, seed: int, report) -> tuple[FeatureSet, FeatureSet, str]:
    """Selection and report halves, split by item within each class (labels) or group (texts)."""
    if task == IMAGES:
        if data.images is None:
            raise InputFileError(f"dataset {data.spec} has no images to tune on")
        features = image_features(data, encoder, [], report)
        halves = _halves(features.gallery_labels, seed)
        return (*(_subset(features, rows) for rows in halves), "image")
    if data.texts is None:
        raise InputFileError(f"dataset {data.spec} has no captions to tune on")
    texts = data.texts
    queries = encoder.encode_texts(texts.query_texts)
    gallery = encoder.encode_texts(texts.gallery_texts)
    digests = tuple(content_hash(t.encode("utf-8", "surrogatepass")) for t in texts.query_texts)
    halves = _halves(np.zeros(len(texts.query_groups), np.int64), seed)  # each query is its own group: deal them
    out = []
    for rows in halves:
        keep = np.isin(texts.gallery_groups, texts.query_groups[rows])
        out.append(
            FeatureSet(
                Queries(queries[rows], "text", tuple(digests[i] for i in rows)),
                texts.query_groups[rows],
                gallery[keep],
                texts.gallery_groups[keep],
                False,
            )
        )
    return out[0], out[1], "text"


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
    q = features.queries
    queries = Queries(q.features[rows], q.modality, tuple(q.digests[i] for i in rows))
    return FeatureSet(queries, features.query_labels[rows], features.gallery[rows], features.gallery_labels[rows], True)


def _fingerprint(*halves: FeatureSet) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for half in halves:
        for d, label in sorted(zip(half.queries.digests, half.query_labels.tolist(), strict=True)):
            digest.update(f"{d}:{label};".encode())
    return digest.hexdigest()


def record_mode(record: dict) -> Mode:
    """The Mode a stored tune record serves."""
    return Mode.from_dict(record["mode"])

"""Query-side transforms of the mode engine: identity, OTI/OVI inversion, span/iso projection, the inverter
network and inverter-initialised inversion ("warm"). One object serves a whole batch of queries.

The model, the inverter and the projection vocabulary are loaded only when a leg needs them, so intra and
projection queries on a warm index never touch the optimiser, and an intra query never loads the inverter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from crossgap_index.errors import IncompatibleModelError, QueryError
from crossgap_index.inversion.config import InversionConfig
from crossgap_index.inversion.keys import cache_key, seed_from_digest
from crossgap_index.search.modes import Leg, default_cross
from crossgap_index.search.projections import (
    ConceptMap,
    FeatureMap,
    Projection,
    fit_span,
    iso_projection,
    iso_published,
    projection_weights,
)
from crossgap_index.search.run import Queries
from crossgap_index.search.vocabulary import IMAGENET, concept_prompts, vocabulary_names
from crossgap_index.words import StepProgress

# Measured default (benchmarks/RESULTS.md, "Choosing the defaults"): concept uses tau = 0.02. Span settings a
# leg leaves out come from the model's default (search.modes.default_cross).
CONCEPT_TAU = 0.02

# progress(step, mean_loss) of an inversion


class VectorCache(Protocol):
    """Where inverted query features are kept between queries (the index's inversion cache)."""

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]: ...

    def put_many(self, items: dict[str, np.ndarray]) -> None: ...


class ModelTransformer:
    """The engine's ``Transformer`` over a loaded model (lazily), an optional cache and optional inverters.

    ``encoder``: returns the Encoder (loads the model on first call). ``inverter`` / ``text_inverter``: return
    the trained network for image queries (OTI) / text queries (OVI), or raise. ``projection_dir``: where
    projection matrices are kept between processes (None: memory only). ``projections``: fitted maps by settings
    key, shared with other transformers of the same model (None: this transformer's own).
    """

    def __init__(
        self,
        model_name: str,
        encoder: Callable,
        *,
        cache: VectorCache | None = None,
        inverter: Callable | None = None,
        text_inverter: Callable | None = None,
        projection_dir: Path | None = None,
        progress: StepProgress | None = None,
        projections: dict[str, FeatureMap] | None = None,
    ):
        self.model_name = model_name
        self._encoder = encoder
        self._cache = cache
        self._inverter = inverter
        self._text_inverter = text_inverter
        self._projection_dir = projection_dir
        self._progress = progress
        self._projections: dict[str, FeatureMap] = {} if projections is None else projections
        self._lock = threading.Lock()
        # the most queries one inversion call ran together since the searcher last set it to 0 (a search's
        # tie-widening pass may invert a few of its queries again: the batch it reports is the largest)
        self.last_inversion_batch = 0

    # -- the engine's Transformer protocol -------------------------------------------------
    def search_vectors(self, leg: Leg, queries: Queries, collection: str) -> np.ndarray:
        if leg.transform in ("identity", "adapt"):  # adapt: the engine applies the gallery-fitted map (peers.py)
            return queries.features
        if leg.transform == "project":
            return self.projection(leg, collection).apply(queries.features)
        if queries.modality != collection:
            raise QueryError(f"{leg.name} turns an {collection} query into the other modality: give an {collection}")
        if leg.transform == "invert":
            return self._invert(queries, leg.inversion(), "oti" if collection == "image" else "ovi")
        network = self._load_inverter(collection)
        if leg.transform == "inverter":
            return network.features(self._encoder().loaded, queries.features)
        init = network.tokens(queries.features)
        if collection == "image":  # the network's tokens fill the network's prompt
            config = dataclasses.replace(
                leg.inversion(), n_tokens=network.config.n_tokens, template=network.config.template
            )
        else:  # and its pseudo-patches the network's grid
            config = dataclasses.replace(leg.inversion(), n_patches=init.shape[1])
        direction = "oti" if collection == "image" else "ovi"
        return self._invert(queries, config, direction, init=init, tag=f"warm:{network.fingerprint}")

    def projection(self, leg: Leg, collection: str) -> FeatureMap | None:
        """The span, iso or concept map a ``project`` leg uses, built once per settings and kept."""
        if leg.transform != "project":
            return None
        params = dict(leg.params)
        if params.get("kind") == "iso":
            params.setdefault("modality", collection)
        key = _settings_key(self.model_name, params)
        with self._lock:
            if key not in self._projections:
                self._projections[key] = self._load_or_fit(key, params)
            return self._projections[key]

    # -- inversion --------------------------------------------------------------------------
    def _invert(
        self,
        queries: Queries,
        config: InversionConfig,
        direction: str,
        init: np.ndarray | None = None,
        tag: str = "",
    ) -> np.ndarray:
        from crossgap_index.inversion import oti, ovi

        config = config.resolved(self._encoder().loaded)  # auto -> the precision it runs in: part of the key
        keys = [cache_key(self.model_name + tag, direction, config, d) for d in queries.digests]
        cached = self._cache.get_many(keys) if self._cache is not None and queries.modality != "vector" else {}
        todo = [i for i, key in enumerate(keys) if key not in cached]
        out = np.zeros_like(queries.features)
        for i, key in enumerate(keys):
            if key in cached:
                out[i] = cached[key]
        if todo:
            invert = oti if direction == "oti" else ovi
            seeds = [seed_from_digest(queries.digests[i]) for i in todo]
            kwargs = {"init": init[todo]} if init is not None else {}
            self.last_inversion_batch = max(self.last_inversion_batch, len(todo))
            fresh = invert(self._encoder().loaded, queries.features[todo], config, seeds, self._progress, **kwargs)
            out[todo] = fresh
            if self._cache is not None and queries.modality != "vector":
                self._cache.put_many({keys[i]: fresh[j] for j, i in enumerate(todo)})
        return out

    def _load_inverter(self, modality: str):
        """The network that inverts ``modality`` queries (image: OTI, text: OVI), or a one-line refusal."""
        if modality == "image":
            if self._inverter is None:
                raise QueryError("no inverter for this index: train one with `cgx train-inverter`")
            return self._inverter()
        if self._text_inverter is None:
            raise QueryError("no text inverter for this index: train one with `cgx train-inverter --modality texts`")
        return self._text_inverter()

    # -- projections -------------------------------------------------------------------------
    def _load_or_fit(self, key: str, params: dict) -> FeatureMap:
        """Fit the map, keeping its matrix (or vocabulary features) on disk: fitting embeds the vocabulary."""
        cached = self._projection_dir / f"map-{key}.npy" if self._projection_dir else None
        if cached is not None and cached.is_file():
            try:
                return _from_array(params, np.load(cached, allow_pickle=False))
            except (OSError, ValueError, QueryError):
                pass  # damaged: fit again below
        feature_map = self._fit(params)
        if cached is not None:
            array = feature_map.matrix if isinstance(feature_map, Projection) else feature_map.vocabulary_features
            _save_quietly(cached, array)
        return feature_map

    def _fit(self, params: dict) -> FeatureMap:
        encoder = self._encoder()
        kind = params.get("kind")
        if kind == "span":
            return fit_span(encoder, params, default_cross(self.model_name).span_settings())
        if kind == "concept":
            names = vocabulary_names(params.get("vocabulary", IMAGENET))
            features = encoder.encode_texts(concept_prompts(names))
            return ConceptMap(features, float(params.get("tau", CONCEPT_TAU)), params)
        if kind == "iso":
            model = encoder.loaded.model
            name = self.model_name
            weights = (projection_weights(model, "image", name), projection_weights(model, "text", name))
            k_top, k_bottom = params.get("k_top"), params.get("k_bottom")
            published = iso_published(name, params["modality"]) if k_top is None and k_bottom is None else None
            if published is not None:
                k_top, k_bottom = published
            projection = iso_projection(*weights, params["modality"], k_top, k_bottom)
            source = "published for this model" if published else "given" if k_top is not None else "scaled B/32"
            return Projection("iso", projection.matrix, {**params, **projection.settings, "source": source})
        raise IncompatibleModelError(f"unknown projection kind {kind!r}")


def _from_array(params: dict, array: np.ndarray) -> FeatureMap:
    """Rebuild a saved map; raises ValueError for an array of the wrong shape."""
    if array.ndim != 2:
        raise ValueError("not a 2-d array")
    if params.get("kind") == "concept":
        return ConceptMap(array.astype(np.float32), float(params.get("tau", CONCEPT_TAU)), params)
    if array.shape[0] != array.shape[1]:
        raise ValueError("not a square matrix")
    return Projection(params["kind"], array.astype(np.float32), params)


def _settings_key(model: str, params: dict) -> str:
    payload = json.dumps({"model": model, **params}, sort_keys=True, default=list)
    return hashlib.blake2b(payload.encode(), digest_size=10).hexdigest()


def _save_quietly(path: Path, matrix: np.ndarray) -> None:
    """Keep the matrix for the next process; a read-only index just recomputes it."""
    tmp = path.with_name(path.name + ".tmp.npy")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # the first query of an index may come before any derived file
        np.save(tmp, matrix, allow_pickle=False)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)

"""Derived collections after a build: what ``--cross`` will search against, made before the first query asks.

A mode with a projected or adapted leg (span, iso, concept, dba, nnn, ...) searches the gallery seen through a
feature map: a derived FAISS collection (search/gallery.py). Searches build one on first use; after a build
(``cgx build-index``, ``cgx add-texts``) the driver builds the ones the index's served ``--cross`` mode (mode
``auto``: the tuned mode of each task, else the model's default) needs, with the map applied by the build
engine (this process, or the Ray actor pool in blocks), through the same builder a query would use, so the
first query finds them current.
"""

from __future__ import annotations

import numpy as np

from crossgap_index.engines import Engine
from crossgap_index.errors import QueryError
from crossgap_index.search.gallery import DERIVED_DIR, derived_name
from crossgap_index.search.mode_spec import gallery_collection
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.run import apply_peers

# (query modality, target) pairs a served --cross answers: images and texts each against their own kind, and
# text queries against images (intra unless a text-to-image mode was tuned; image queries against texts are intra).
SERVED = (("image", "images"), ("text", "texts"), ("text", "images"))


def served_maps(store, searcher) -> list[tuple[str, object]]:
    """(collection, feature map) of every derived collection mode ``auto`` searches for the collections that hold
    items; a map shared by several tasks is listed once."""
    out: dict[str, tuple[str, object]] = {}
    for query_modality, target in SERVED:
        collection = {"images": "image", "texts": "text"}[target]
        if store.indexes[collection].ntotal == 0:
            continue
        try:
            mode = searcher.served(SearchOptions(target=target, mode="auto"), query_modality)
        except QueryError:  # e.g. a tuned cross-gallery without stored inverted features: the query says so
            continue
        for leg in mode.legs:
            projection = searcher.transformer.projection(leg, collection)
            if leg.transform == "adapt" or mode.post is not None:  # peer maps, fitted on the gallery itself
                dim = projection.out_dim if projection is not None else store.manifest.dim
                no_rows = np.zeros((0, dim), np.float32)
                gallery = searcher.gallery
                _, projection = apply_peers(mode, leg, no_rows, projection, gallery, collection, query_modality)
            if projection is not None:
                searched = gallery_collection(leg, collection)
                out[derived_name(searched, projection)] = (searched, projection)
    return list(out.values())


def build_served_derived(store, searcher, engine: Engine) -> list[str]:
    """Build (and save under ``derived/``) each derived collection ``served_maps`` names that is not current,
    with ``engine`` applying the map. Returns the names built."""
    # The maps' own matrices are kept there too (search/transforms.py) once the folder exists: then a query
    # process needs neither the map's fit nor the derived build.
    (store.path / DERIVED_DIR).mkdir(exist_ok=True)
    built = []
    for collection, projection in served_maps(store, searcher):
        if searcher.gallery.refresh(collection, projection, engine.map_vectors):
            built.append(derived_name(collection, projection))
    return built

"""Qdrant: an index's items as points with named vectors, and a prefetch + re-score search.

Each item becomes a point (id = the item's id) with the named vector ``plain`` (its own unit
embedding), one named vector per derived collection it has (``image-oti``), and a payload of
modality, path, text and external_id. A search prefetches ``depth`` candidates with the plain query
vector and re-scores them with each of the transform's vectors through the query API, then merges
the lists (rrf | score) with crossgap_index.search.merge::

    upsert_index(client, "photos", index)
    t = index.transform_query(image="q.jpg", mode="cross")
    hits = search_qdrant(client, "photos", t, index.embed_query(image="q.jpg").feature, k=10)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from crossgap_index.api import CrossGapIndex
from crossgap_index.export import item_chunks, open_catalog
from crossgap_index.integrations.rescore import (
    Transform,
    checked_query,
    combine,
    hits,
    nan_padded,
    ranked,
    rescore,
)
from crossgap_index.search.searcher import Hit
from crossgap_index.store.directory import DERIVED, MODALITIES
from crossgap_index.words import target_modality

PLAIN = "plain"
UPSERT_CHUNK = 512


def vector_name(collection: str) -> str:
    """The named vector holding a collection's vectors: ``plain`` for items' own, else its name."""
    return PLAIN if collection in MODALITIES else collection


def upsert_index(
    client: QdrantClient, collection_name: str, index: CrossGapIndex | str | Path, *, chunk: int = UPSERT_CHUNK
) -> int:
    """Create ``collection_name`` (dot product, one named vector per collection) if missing and upsert
    every image and text item; re-running updates points in place. Returns how many were written."""
    path = index.path if isinstance(index, CrossGapIndex) else Path(index)
    written = 0
    with open_catalog(path) as (manifest, catalog):
        if not client.collection_exists(collection_name):
            params = models.VectorParams(size=manifest.dim, distance=models.Distance.DOT)
            names = [PLAIN, *(vector_name(kind) for kind in DERIVED)]
            client.create_collection(collection_name, vectors_config=dict.fromkeys(names, params))
            client.create_payload_index(collection_name, "modality", models.PayloadSchemaType.KEYWORD)
        for modality in MODALITIES:
            for items in item_chunks(manifest, catalog, modality, chunk, with_derived=True):
                points = []
                for i, item_id in enumerate(items.ids.tolist()):
                    vectors = {PLAIN: items.vectors[i].tolist()}
                    for kind, values in items.derived.items():
                        if values[i] is not None:
                            vectors[vector_name(kind)] = values[i].tolist()
                    payload = {"modality": items.modality[i], "path": items.path[i], "text": items.text[i]}
                    payload["external_id"] = items.external_id[i]
                    points.append(models.PointStruct(id=item_id, vector=vectors, payload=payload))
                client.upsert(collection_name, points)
                written += len(points)
    return written


def search_qdrant(
    client: QdrantClient,
    collection_name: str,
    transform: Transform,
    query_vector: np.ndarray,
    *,
    target: str = "images",
    k: int = 10,
    depth: int = 100,
) -> list[Hit]:
    """Top ``k`` of ``target``: ``depth`` candidates by the plain query vector (``index.embed_query``),
    re-scored by Qdrant with each transformed vector (client-side when the transform maps the gallery
    side), then merged. Equal to ``CrossGapIndex.search`` when the candidates hold each list's top; no
    candidates: no hits. A NaN or wrongly sized query vector, or ``k``/``depth`` below 1: AdapterQueryError."""
    only = models.Filter(
        must=[models.FieldCondition(key="modality", match=models.MatchValue(value=target_modality(target)))]
    )
    dim = client.get_collection(collection_name).config.params.vectors[PLAIN].size
    plain = checked_query(query_vector, dim, k, depth, transform).tolist()
    if transform.gallery_map is not None:  # Qdrant cannot map stored vectors: score the candidates here
        found = client.query_points(
            collection_name, query=plain, using=PLAIN, query_filter=only, limit=depth, with_vectors=True
        ).points
        if not found:
            return []
        ids = np.array([p.id for p in found], np.int64)
        gallery = {c: _matrix(found, vector_name(c)) for _, c in transform.lists.values()}
        fused, lists = rescore(transform, ids, gallery)
    else:
        prefetch = models.Prefetch(query=plain, using=PLAIN, filter=only, limit=depth)
        lists = {}
        for name, (vector, collection) in transform.lists.items():
            points = client.query_points(
                collection_name,
                prefetch=prefetch,
                query=np.asarray(vector, np.float32).tolist(),
                using=vector_name(collection),
                limit=depth,
            ).points
            lists[name] = ranked(np.array([p.id for p in points], np.int64), np.array([p.score for p in points]))
        if not any(len(r) for r in lists.values()):
            return []
        fused, lists = combine(transform, lists)
    top = fused.ids[:k].tolist()
    rows = {p.id: p.payload for p in client.retrieve(collection_name, ids=top, with_payload=True)}
    return hits(fused, lists, rows, k)


def _matrix(points: list, name: str) -> np.ndarray:
    """Each point's named vector as a row; NaN where a point has none."""
    return nan_padded([p.vector.get(name) for p in points])

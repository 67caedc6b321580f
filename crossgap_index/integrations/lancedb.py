"""LanceDB: an index's items as a table, and a Reranker that applies a query transform.

Table: one row per item: id, modality, path, text, external_id, ``vector`` (the item's own unit
embedding) and one nullable column per derived collection (``image_oti``). Search with the plain
query vector for candidates, then let CrossGapReranker re-score them with the transform's lists and
merge them (rrf | score) as ``CrossGapIndex.search`` does (hybrid search too: ``rerank_hybrid``)::

    table = export_to_lancedb(index, lancedb.connect("db"), "photos")
    t = index.transform_query(image="q.jpg", mode="fused")
    hits = search_lancedb(table, t, index.embed_query(image="q.jpg").feature, k=10, depth=100)
"""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.rerankers import Reranker

from crossgap_index.api import CrossGapIndex
from crossgap_index.export import CHUNK, arrow_batch, arrow_schema, item_chunks, open_catalog
from crossgap_index.integrations.rescore import Transform, checked_query, hits, nan_padded, rescore
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.ranking import Ranked
from crossgap_index.search.searcher import Hit
from crossgap_index.store.directory import DERIVED, MODALITIES
from crossgap_index.words import target_modality

PLAIN_COLUMN = "vector"


def column_for(collection: str) -> str:
    """The table column holding a collection's vectors: ``vector`` for items' own, else e.g. ``image_oti``."""
    return PLAIN_COLUMN if collection in MODALITIES else collection.replace("-", "_")


def export_to_lancedb(
    index: CrossGapIndex | str | Path,
    db: lancedb.DBConnection,
    table_name: str,
    *,
    mode: str = "overwrite",
    chunk: int = CHUNK,
) -> lancedb.table.Table:
    """Write every image and text item (with its derived vectors) to ``table_name``, a chunk at a time."""
    path = index.path if isinstance(index, CrossGapIndex) else Path(index)
    with open_catalog(path) as (manifest, catalog):
        base = arrow_schema(manifest.dim)
        derived_fields = [pa.field(column_for(kind), pa.list_(pa.float32(), manifest.dim)) for kind in DERIVED]
        schema = pa.schema([*base, *derived_fields], metadata={b"crossgap.model": manifest.model.encode()})
        table = db.create_table(table_name, schema=schema, mode=mode)
        for modality in MODALITIES:
            for items in item_chunks(manifest, catalog, modality, chunk, with_derived=True):
                columns = arrow_batch(items, base).columns
                for kind in DERIVED:
                    vectors = items.derived.get(kind, [None] * len(items.ids))
                    values = [None if v is None else v.tolist() for v in vectors]
                    columns.append(pa.array(values, schema.field(column_for(kind)).type))
                table.add(pa.Table.from_arrays(columns, schema=schema))
    return table


class CrossGapReranker(Reranker):
    """Re-scores a LanceDB search's candidates with a query transform (inverted or projected query) and
    merges the transform's lists (rrf | score) with crossgap_index.search.merge.

    Give it one query's ``transform`` (``index.transform_query``), or an ``index`` and ``options`` to make
    the transform from each call's query string (a text query, as hybrid search passes it): then one
    instance serves any number of queries and threads. Nothing is kept on the instance between calls.
    The candidate table needs ``id`` and the vector columns the lists name; the result holds the
    candidates best first with ``_relevance_score`` and, per list, ``_rank_<list>`` / ``_score_<list>``."""

    def __init__(
        self,
        transform: Transform | None = None,
        *,
        index: CrossGapIndex | None = None,
        options: SearchOptions | None = None,
        return_score: str = "relevance",
    ):
        super().__init__(return_score)
        if (transform is None) == (index is None):
            raise ValueError("give a query's transform, or an index (and options) to transform each query")
        self._transform = transform
        self._index = index
        self._options = SearchOptions.of(options or SearchOptions(mode="auto"))

    def transform_for(self, query: str) -> Transform:
        """The fixed transform, or the one the index makes for this text query."""
        if self._transform is not None:
            return self._transform
        return self._index.transform_query(text=query, options=self._options)

    def rerank_vector(self, query: str, vector_results: pa.Table) -> pa.Table:
        return self._rerank(self.transform_for(query), vector_results)

    def rerank_hybrid(self, query: str, vector_results: pa.Table, fts_results: pa.Table) -> pa.Table:
        """The union of the vector and full-text candidates (each row once), re-scored like a vector search."""
        return self._rerank(self.transform_for(query), self.merge_results(vector_results, fts_results))

    def rerank_fts(self, query: str, fts_results: pa.Table) -> pa.Table:
        return self._rerank(self.transform_for(query), fts_results)

    def _rerank(self, transform: Transform, candidates: pa.Table) -> pa.Table:
        if candidates.num_rows == 0:  # nothing to re-score: the result's columns, no rows
            return _empty_result(transform, self._keep_relevance_score(candidates))
        ids = candidates.column("id").to_numpy()
        gallery = {
            collection: _matrix(candidates.column(column_for(collection))) for _, collection in transform.lists.values()
        }
        fused, lists = rescore(transform, ids, gallery)
        row_of = {item_id: row for row, item_id in enumerate(ids.tolist())}
        ordered = self._keep_relevance_score(candidates.take(pa.array([row_of[i] for i in fused.ids.tolist()])))
        order = fused.ids.tolist()
        for name, ranked in lists.items():
            rank = {i: r for r, i in enumerate(ranked.ids.tolist(), 1)}
            score = dict(zip(ranked.ids.tolist(), ranked.scores.tolist(), strict=True))
            ordered = ordered.append_column(f"_rank_{name}", pa.array([rank.get(i) for i in order], pa.int64()))
            ordered = ordered.append_column(f"_score_{name}", pa.array([score.get(i) for i in order], pa.float32()))
        return ordered.append_column("_relevance_score", pa.array(fused.scores, pa.float32()))


def search_lancedb(
    table: lancedb.table.Table,
    transform: Transform,
    query_vector: np.ndarray,
    *,
    target: str = "images",
    k: int = 10,
    depth: int = 100,
) -> list[Hit]:
    """Top ``k`` of ``target``: ``depth`` candidates by the plain query vector (``index.embed_query``),
    re-scored and merged. Equal to ``CrossGapIndex.search`` when the candidates hold each list's top; no
    candidates: no hits. A NaN or wrongly sized query vector, or ``k``/``depth`` below 1: AdapterQueryError."""
    dim = table.schema.field(PLAIN_COLUMN).type.list_size
    vector = checked_query(query_vector, dim, k, depth, transform)
    results = (
        table.search(vector, vector_column_name=PLAIN_COLUMN)
        .distance_type("dot")
        .where(f"modality = '{target_modality(target)}'", prefilter=True)
        .limit(depth)
        .rerank(CrossGapReranker(transform), query_string="crossgap")
        .to_arrow()
    )
    return hits_of(results, transform, k)


def hits_of(results: pa.Table, transform: Transform, k: int) -> list[Hit]:
    """The top ``k`` of a CrossGapReranker's result table as Hits, with each list's rank and score."""
    rows = {r["id"]: r for r in results.select(["id", "modality", "path", "text", "external_id"]).to_pylist()}
    ids = results.column("id").to_numpy()
    fused = Ranked(ids, results.column("_relevance_score").to_numpy())
    lists = {}
    for name in transform.lists:
        ranks = results.column(f"_rank_{name}").to_numpy(zero_copy_only=False)
        scores = results.column(f"_score_{name}").to_numpy(zero_copy_only=False)
        held = ~np.isnan(ranks.astype(np.float64))
        order = np.argsort(ranks[held].astype(np.int64), kind="stable")
        lists[name] = Ranked(ids[held][order], scores[held][order].astype(np.float32))
    return hits(fused, lists, rows, k)


def _empty_result(transform: Transform, candidates: pa.Table) -> pa.Table:
    """A CrossGapReranker result with no rows: the candidates' columns, each list's and the relevance score."""
    for name in transform.lists:
        candidates = candidates.append_column(f"_rank_{name}", pa.array([], pa.int64()))
        candidates = candidates.append_column(f"_score_{name}", pa.array([], pa.float32()))
    return candidates.append_column("_relevance_score", pa.array([], pa.float32()))


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column as an (n, d) float32 matrix; null rows become NaN."""
    return nan_padded(column.to_pylist())

"""Adapters that put an index's vectors and query transforms into other vector databases.

``lancedb``: export items to a LanceDB table and a Reranker that re-scores candidates with a query
transform; ``qdrant``: upsert items with named vectors and a prefetch + re-score search helper.
Both take a query transform (``CrossGapIndex.transform_query``) and merge lists with
crossgap_index.search.merge, so their hits are those of ``CrossGapIndex.search`` over the same pool.
"""

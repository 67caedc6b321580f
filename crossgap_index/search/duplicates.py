"""Near-duplicate images: groups of stored images whose vectors are more alike than ``threshold``.

Pairs come from FAISS range search of the stored image vectors against the image index, a chunk of rows at a
time (``CHUNK`` queries), and are joined into groups by union-find: two images are in one group when a chain of
pairs, each scoring above ``threshold`` (inner product of unit vectors), links them. No n x n matrix is made;
memory is one chunk of vectors (``CHUNK`` x d floats), the range-search result of that chunk (its rows' pairs
above the threshold: a few per row for near-duplicates) and the union-find table, one entry per image that has a
pair. At 1M 512-d images with CHUNK 4096 that is 8 MB of vectors plus the chunk's pairs (12 bytes each) and at
most 1M table entries, whatever the collection's size. A threshold so low that one chunk links more than
MAX_CHUNK_PAIRS (8M pairs, 96 MB) is refused after that chunk: near-duplicates never come in such numbers. The
time is the n^2 d inner products of the flat scan (or, for an IVF index, those of the probed lists).

Approximate indexes (IVF, 8-bit codes) find pairs among the lists they probe; each pair's similarity is then
computed exactly from the stored vectors before it is kept, so no pair below the threshold is reported (a pair
in lists never probed can be missed). ``brute_force_groups`` is the exact twin the tests hold this against.

``DEFAULT_THRESHOLD`` was measured on the bundled synthetic world with crossgap-small (benchmarks/bench_duplicates.py,
benchmarks/results/duplicates.md; 3 seeds x 300 photos, 40 photos each planted with a copy resized to 60%, one
re-encoded as JPEG quality 75 and one with 3% cropped off each side): it is the highest threshold at which at least
90% of the planted groups link up whole on every seed (36-39 of 40). That model cannot tell a copy from another
photo of the same drawn scene: distinct photos of one class and colour score up to 0.995 there, the weakest copy
0.78-0.90, so some distinct look-alikes are linked at every threshold that finds the copies (103-199 pairs at 0.95).
Models trained on real photos separate instances far better; pass a higher threshold to keep only closer copies.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from crossgap_index.errors import QueryError

DEFAULT_THRESHOLD = 0.95
CHUNK = 4096
# Pairs one chunk may link: near-duplicates are a few per image; a threshold linking more is not duplicate finding
# (at 0.3 every image of a class pairs with every other) and would hold chunk x n pairs.
MAX_CHUNK_PAIRS = 8_000_000


class UnionFind:
    """Disjoint sets of ids (path halving, union by size); only ids that are ever joined are held."""

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        self._size: dict[int, int] = {}

    def find(self, item: int) -> int:
        parent = self._parent
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size.get(ra, 1) < self._size.get(rb, 1):
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] = self._size.get(ra, 1) + self._size.pop(rb, 1)

    def groups(self) -> list[list[int]]:
        """Every set of two or more ids, each sorted; largest first, then by smallest id."""
        by_root: dict[int, list[int]] = {}
        for item in self._parent:
            by_root.setdefault(self.find(item), []).append(item)
        found = [sorted(members) for members in by_root.values() if len(members) > 1]
        return sorted(found, key=lambda members: (-len(members), members[0]))


def check_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise QueryError(f"the duplicate threshold is a number in (0, 1], got {threshold!r}") from None
    if not 0.0 < value <= 1.0:
        raise QueryError(f"the duplicate threshold is a similarity in (0, 1], got {threshold!r}")
    return value


def range_pairs(store, threshold: float, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids a, ids b, similarity) of the pairs a < b of stored images scoring above ``threshold``, a chunk of
    query rows at a time."""
    vector_index = store.indexes["image"]
    exact = vector_index.resolved_factory == "Flat"
    index = vector_index.index  # the CPU index: range search is not served by GPU replicas
    for ids, vectors in store.vector_chunks("image", chunk):
        result_lims, scores, found = index.range_search(np.ascontiguousarray(vectors, np.float32), float(threshold))
        if len(found) > MAX_CHUNK_PAIRS:
            raise QueryError(
                f"threshold {threshold:g} links over {MAX_CHUNK_PAIRS:,} pairs among {len(ids)} images: "
                "that is not near-duplicates; raise the threshold"
            )
        rows = np.repeat(np.arange(len(ids)), np.diff(result_lims.astype(np.int64)))
        left = ids[rows]
        keep = (found >= 0) & (left < found)  # each pair once, never an image with itself (FAISS: score > threshold)
        left, right, rows, scores = left[keep], found[keep], rows[keep], scores[keep]
        if not exact and len(right):
            scores = np.einsum("ij,ij->i", vectors[rows], store.catalog_vectors("image", right))
            sure = scores > threshold
            left, right, scores = left[sure], right[sure], scores[sure]
        yield left, right, scores.astype(np.float32)


def duplicate_groups(store, threshold: float = DEFAULT_THRESHOLD, chunk: int = CHUNK) -> list[list[int]]:
    """Groups of image ids linked by pairs scoring above ``threshold`` (largest first)."""
    threshold = check_threshold(threshold)
    joined = UnionFind()
    for left, right, _ in range_pairs(store, threshold, chunk):
        for a, b in zip(left.tolist(), right.tolist(), strict=True):
            joined.union(a, b)
    return joined.groups()


def brute_force_groups(ids: np.ndarray, vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """The twin of ``duplicate_groups``: the full similarity matrix, thresholded, joined the same way."""
    joined = UnionFind()
    similar = (vectors @ vectors.T) > threshold
    for a, b in zip(*np.nonzero(np.triu(similar, k=1)), strict=True):
        joined.union(int(ids[a]), int(ids[b]))
    return joined.groups()


def duplicate_rows(store, threshold: float = DEFAULT_THRESHOLD, chunk: int = CHUNK) -> list[list]:
    """``duplicate_groups`` as catalog rows (id, path, ...); an image removed meanwhile is left out."""
    groups = duplicate_groups(store, threshold, chunk)
    wanted = [i for group in groups for i in group]
    rows: dict = {}
    for first in range(0, len(wanted), 900):  # under SQLite's bound-parameter limit
        rows.update(store.catalog.rows(wanted[first : first + 900]))
    found = [[rows[i] for i in group if i in rows] for group in groups]
    return [group for group in found if len(group) > 1]

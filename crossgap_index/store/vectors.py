"""FAISS index per modality: IDMap2 over any index_factory string, inner product on unit vectors.

The index is derived data: ``build`` recreates it from (ids, vectors) held by the catalog,
which is also how approximate indexes are (re)trained and how HNSW "removes" items.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import faiss
import numpy as np

from crossgap_index.errors import StoreError

# Below this many vectors exact search is both fast enough and exact; above it, IVF.
EXACT_SEARCH_LIMIT = 100_000
AUTO = "auto"


def auto_factory(n: int) -> str:
    """The documented default: ``Flat`` (exact) up to EXACT_SEARCH_LIMIT vectors, then ``IVF{c},Flat``
    with c = 4 * sqrt(n) rounded to a power of two (the FAISS wiki's rule of thumb)."""
    if n <= EXACT_SEARCH_LIMIT:
        return "Flat"
    return f"IVF{2 ** round(math.log2(4 * math.sqrt(n)))},Flat"


def default_search_params(factory: str) -> str:
    """Search-time parameters for approximate indexes (recall over speed; override with --search-params)."""
    if factory.startswith("IVF") or ",IVF" in factory:
        return "nprobe=32"
    if factory.startswith("HNSW"):
        return "efSearch=128"
    return ""


def validate_factory(factory: str, dim: int) -> None:
    """Fail early, with one line, on a factory string FAISS does not understand."""
    if factory == AUTO:
        return
    try:
        faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise StoreError(f"invalid FAISS factory string '{factory}'") from exc


class VectorIndex:
    """One modality's FAISS index with stable int64 ids."""

    def __init__(self, dim: int, factory: str, index: faiss.Index | None = None):
        self.dim = dim
        self.factory = factory
        self.index = index if index is not None else self._empty(0)
        self.search_params = default_search_params(self.resolved_factory)

    @property
    def search_params(self) -> str:
        return self._search_params

    @search_params.setter
    def search_params(self, params: str) -> None:
        """Applied to the index once here (and on rebuild), not parsed again on every query."""
        self._search_params = params
        if params:
            faiss.ParameterSpace().set_index_parameters(self.index, params)

    @property
    def resolved_factory(self) -> str:
        return auto_factory(self.ntotal) if self.factory == AUTO else self.factory

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def _empty(self, n: int) -> faiss.Index:
        factory = auto_factory(n) if self.factory == AUTO else self.factory
        return faiss.index_factory(self.dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Recreate the index from scratch (training it on ``vectors`` when the factory needs it)."""
        index = self._empty(len(ids))
        if not index.is_trained:
            if len(ids) == 0:
                self.index = index
                return
            index.train(vectors)
        if len(ids):
            index.add_with_ids(vectors, ids.astype(np.int64))
        self.index = index
        self.search_params = default_search_params(self.resolved_factory)

    def needs_rebuild(self) -> bool:
        """An untrained approximate index, or an auto index whose size moved it to another type."""
        if not self.index.is_trained:
            return True
        if self.factory != AUTO:
            return False
        return self._current_type() != auto_factory(self.ntotal)

    def _current_type(self) -> str:
        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexIVF):
            return f"IVF{inner.nlist},Flat"
        return "Flat"

    def can_add(self) -> bool:
        return bool(self.index.is_trained)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ids in place; False when the index type cannot (HNSW): the caller rebuilds."""
        try:
            self.index.remove_ids(ids.astype(np.int64))
        except RuntimeError:
            return False
        return True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; missing slots have id -1."""
        k = min(k, self.ntotal)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, ids = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, ids

    def save(self, path: Path) -> None:
        """Atomic: write beside, then rename over."""
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, dim: int, factory: str) -> VectorIndex:
        return cls(dim, factory, faiss.read_index(str(path)))

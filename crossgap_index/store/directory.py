"""An index directory: manifest, SQLite catalog, and one FAISS file per vector collection.

    manifest.json        schema version, model spec, dim, metric, factory per collection, counts
    catalog.sqlite       items (id, modality, path or text, hash, size, mtime, vector), caches
    image.faiss          IDMap2 over the chosen factory, unit vectors, inner product
    text.faiss
    image-oti.faiss      optional: each gallery image's OTI text-space feature

The store knows nothing about models: it keeps vectors under ids and answers top-k.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import platformdirs

from crossgap_index.errors import StoreError
from crossgap_index.store.catalog import Catalog
from crossgap_index.store.manifest import Manifest
from crossgap_index.store.vectors import AUTO, VectorIndex, validate_factory

INDEX_ENV_VAR = "CGX_INDEX"
MODALITIES = ("image", "text")
# Collections of vectors derived from items: name -> modality of the items they belong to.
DERIVED = {"image-oti": "image"}
CATALOG_NAME = "catalog.sqlite"


def default_index_path() -> Path:
    """``$CGX_INDEX``, else the per-user data dir (e.g. ~/.local/share/crossgap-index/default)."""
    env = os.environ.get(INDEX_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("crossgap-index")) / "default"


class Store:
    """Owns the files of one index directory."""

    def __init__(self, path: Path, manifest: Manifest, catalog: Catalog, indexes: dict[str, VectorIndex]):
        self.path = path
        self.manifest = manifest
        self.catalog = catalog
        self.indexes = indexes

    @classmethod
    def create(cls, path: Path, model: str, dim: int, factory: str = AUTO, precision: str = "fp32") -> Store:
        validate_factory(factory, dim)
        if (path / "manifest.json").exists():
            raise StoreError(f"an index already exists at {path}")
        path.mkdir(parents=True, exist_ok=True)
        names = (*MODALITIES, *DERIVED)
        manifest = Manifest(model=model, dim=dim, factories=dict.fromkeys(names, factory), precision=precision)
        catalog = Catalog(path / CATALOG_NAME)
        store = cls(path, manifest, catalog, {n: VectorIndex(dim, factory) for n in names})
        store.save()
        return store

    @classmethod
    def open(cls, path: Path) -> Store:
        manifest = Manifest.load(path)
        catalog = Catalog(path / CATALOG_NAME)
        store = cls(path, manifest, catalog, {})
        for name, factory in manifest.factories.items():
            file = path / f"{name}.faiss"
            index = VectorIndex.load(file, manifest.dim, factory) if file.is_file() else None
            store.indexes[name] = index or VectorIndex(manifest.dim, factory)
            if index is None or not store._in_sync(name):
                store.rebuild(name)
        return store

    def _in_sync(self, name: str) -> bool:
        """FAISS files are saved after the catalog commits; a crash in between shows up here."""
        return self.manifest.generation == self.catalog.generation and self.indexes[name].ntotal == self.stored_count(
            name
        )

    def stored_count(self, name: str) -> int:
        if name in DERIVED:
            return self.catalog.count_derived(name)
        return self.catalog.count(name)

    def ids_and_vectors(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name in DERIVED:
            return self.catalog.derived_ids_and_vectors(name, self.manifest.dim)
        return self.catalog.ids_and_vectors(name, self.manifest.dim)

    def rebuild(self, name: str) -> None:
        self.indexes[name].build(*self.ids_and_vectors(name))

    # -- writes ---------------------------------------------------------------------------
    def add(self, name: str, ids: list[int], vectors: np.ndarray) -> None:
        """Index vectors whose rows the caller has already written to the catalog."""
        index = self.indexes[name]
        if len(ids) and index.can_add():
            index.add(np.asarray(ids, np.int64), vectors)

    def remove(self, ids: list[int]) -> None:
        """Remove items (and their derived vectors) from the catalog and every FAISS index."""
        if not ids:
            return
        self.catalog.remove(ids)
        arr = np.asarray(ids, np.int64)
        for name, index in self.indexes.items():
            if not index.remove(arr):
                self.rebuild(name)

    def commit(self) -> None:
        self.catalog.commit()

    def save(self) -> None:
        """Commit the catalog, bring every FAISS index in line with it, write files atomically."""
        self.catalog.commit()
        for name, index in self.indexes.items():
            if index.needs_rebuild() or index.ntotal != self.stored_count(name):
                self.rebuild(name)
            index.save(self.path / f"{name}.faiss")
        self.manifest.counts = {name: self.stored_count(name) for name in self.indexes}
        self.manifest.generation = self.catalog.generation
        self.manifest.save(self.path)

    def close(self) -> None:
        self.catalog.close()

    # -- reads ----------------------------------------------------------------------------
    def search(self, name: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.indexes[name].search(queries, k)

    def exact_rerank(self, name: str, query: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
        """Exact inner products of one query with candidates, from the stored (uncompressed) vectors."""
        kind = name if name in DERIVED else None
        return self.catalog.vectors_for(candidate_ids.tolist(), self.manifest.dim, kind) @ query

    def disk_sizes(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file()}

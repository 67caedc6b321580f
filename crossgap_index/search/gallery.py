"""Gallery sides the mode engine ranks against: an index's FAISS collections, or features held in memory.

``StoreGallery`` serves searches. A projected leg needs the gallery seen through the same map, so the
first search with a projection builds a derived FAISS collection from the catalog's vectors, saves it
beside the index (``derived/``) and rebuilds it whenever the catalog has moved on (its generation) or
the projection changed (its fingerprint): derived data never goes stale and never needs re-encoding.
``make_derived`` is the one builder: a query calls it with the map applied here, a build (``refresh`` after
``cgx build-index``) with the map applied by the build engine (engines/derived.py), so both save the same file.

``MatrixGallery`` ranks in-memory features exactly (ties by gallery position): ``cgx eval`` and
``cgx tune`` use it with the same ``run_mode`` a query goes through.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from crossgap_index.search.fitting import FIT_BLOCK, FitProgress, FitRunner
from crossgap_index.search.projections import FeatureMap
from crossgap_index.search.ranking import Ranked, top_k_batch

DERIVED_DIR = "derived"
# Derived collections kept on disk; the least recently used beyond this are deleted (rebuilt if used again).
KEEP_DERIVED = 6
# Rows a derived collection's vectors are mapped in (a block of the actor pool's work under --engine ray).
DERIVED_BLOCK = 4096
# numpy parses .npy headers with ast.literal_eval, which threads can break on CPython 3.11 ("AST constructor
# recursion depth mismatch", python/cpython#106905): saved statistics are read one thread at a time.
_HEADER_LOCK = threading.Lock()
# map_blocks(feature map, blocks of vectors) -> the mapped blocks, in order: in this process or a build engine's pool.
MapBlocks = Callable[[FeatureMap, Iterable[np.ndarray]], Iterator[np.ndarray]]


class MatrixGallery:
    """Named collections of (ids, unit vectors) in memory; exact, deterministic ranking."""

    def __init__(self, collections: dict[str, tuple[np.ndarray, np.ndarray]]):
        self._collections = collections
        self._projected: dict[tuple[str, str], np.ndarray] = {}
        self.fitted: dict = {}  # the peers' fitted maps and statistics (search/peers.py), by key: (version, value)
        self.fits = FitRunner()  # fits run in the caller's thread (search/fitting.py)

    def _vectors(self, collection: str, projection: FeatureMap | None) -> tuple[np.ndarray, np.ndarray]:
        ids, vectors = self._collections[collection]
        if projection is None:
            return ids, vectors
        key = (collection, projection.fingerprint)
        if key not in self._projected:
            self._projected[key] = projection.apply(vectors)
        return ids, self._projected[key]

    def top_k(self, collection: str, queries: np.ndarray, k: int, projection: FeatureMap | None) -> list[Ranked]:
        ids, vectors = self._vectors(collection, projection)
        scores = np.asarray(queries, np.float32) @ vectors.T
        k = min(k, len(ids))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [Ranked(ids[row], scores[i, row]) for i, row in enumerate(order)]

    def scores(self, collection: str, query: np.ndarray, ids: np.ndarray, projection: FeatureMap | None) -> np.ndarray:
        all_ids, vectors = self._vectors(collection, projection)
        position = {int(i): p for p, i in enumerate(all_ids.tolist())}
        return vectors[[position[int(i)] for i in ids]] @ np.asarray(query, np.float32)

    # -- what the peers (search/peers.py, search/post.py) read: the vectors themselves and their version ----------
    def vectors(self, collection: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, plain vectors) of a whole collection."""
        return self._collections[collection]

    def vector_blocks(self, collection: str, size: int = FIT_BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, plain vectors) of a collection, ``size`` rows at a time; none for a collection it does not hold
        (as ``count`` says 0), so a fit over it finds no vectors instead of failing on a key."""
        if collection not in self._collections:
            return iter(())
        ids, vectors = self._collections[collection]
        return ((ids[i : i + size], vectors[i : i + size]) for i in range(0, len(ids), size))

    def count(self, collection: str) -> int:
        return len(self._collections[collection][0]) if collection in self._collections else 0

    def vectors_of(self, collection: str, ids: np.ndarray, projection: FeatureMap | None) -> np.ndarray:
        """The rows of ``ids`` as the gallery is searched (through ``projection``)."""
        all_ids, vectors = self._vectors(collection, projection)
        position = {int(i): p for p, i in enumerate(all_ids.tolist())}
        return vectors[[position[int(i)] for i in ids]]

    def version(self, collection: str) -> int:
        """Statistics fitted on a collection stay valid while this is unchanged (in memory: always)."""
        return 0

    def keep(self, name: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Statistics fitted on the gallery (in memory: computed by the caller's cache, nothing kept on disk)."""
        return make()


class StoreGallery:
    """An index's stored collections, plus derived projected collections built on first use."""

    def __init__(self, store, fits: FitRunner | None = None):
        self._store = store
        self._derived: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self.fitted: dict = {}  # the peers' fitted maps and statistics (search/peers.py), by key: (version, value)
        self.fits = fits or FitRunner()  # who runs fits and derived builds (search/fitting.py)

    def top_k(self, collection: str, queries: np.ndarray, k: int, projection: FeatureMap | None) -> list[Ranked]:
        if projection is None:
            return top_k_batch(self._store, collection, queries, k)
        index = self._projected(collection, projection)
        k = min(k, index.ntotal)
        if k <= 0:
            return [Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        exact = index.resolved_factory == "Flat"
        fetch = k if exact else max(10 * k, 100)
        scores, ids = index.search(np.asarray(queries, np.float32), fetch)
        out = []
        for row in range(len(queries)):
            keep = ids[row] >= 0
            row_ids, row_scores = ids[row][keep], scores[row][keep]
            if not exact and len(row_ids):  # candidates removed by another process since this state are dropped
                live, row_scores = self._live_scores(collection, queries[row], row_ids, projection)
                row_ids = row_ids[live]
                order = np.argsort(-row_scores, kind="stable")
                row_ids, row_scores = row_ids[order], row_scores[order]
            out.append(Ranked(row_ids[:k], row_scores[:k].astype(np.float32)))
        return out

    def scores(self, collection: str, query: np.ndarray, ids: np.ndarray, projection: FeatureMap | None) -> np.ndarray:
        """Exact scores of ``ids``; one removed by another process since this state (no row left) gets the lowest
        live score, so a fusion's min-max scaling of the live ones is unchanged (the hit is dropped later)."""
        live, found = self._live_scores(collection, query, ids, projection)
        scores = np.full(len(live), found.min() if len(found) else 0.0, np.float32)
        scores[live] = found
        return scores

    def _live_scores(
        self, collection: str, query: np.ndarray, ids: np.ndarray, projection: FeatureMap | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mask of ``ids`` the catalog still holds, their exact scores)."""
        live, vectors = self._store.live_vectors(collection, ids)
        if projection is not None and len(vectors):
            vectors = projection.apply(vectors)
        return live, (vectors @ np.asarray(query, np.float32)).astype(np.float32)

    # -- what the peers (search/peers.py, search/post.py) read: the vectors themselves and their version ----------
    def vectors(self, collection: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, stored vectors) of a whole collection: the catalog's rows of the items the held state's FAISS
        collection has (a newer write by another process joins at the swap to its state, never before)."""
        ids, vectors = self._store.ids_and_vectors(collection)
        held = self._store.held_ids(collection, ids)
        return (ids, vectors) if held.all() else (ids[held], vectors[held])

    def vector_blocks(self, collection: str, size: int = 16_384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, stored vectors) of a collection from the catalog, ``size`` rows at a time: the items the held
        state's FAISS collection has, as ``vectors`` gives them."""
        for ids, vectors in self._store.vector_chunks(collection, size):
            held = self._store.held_ids(collection, ids)
            yield (ids, vectors) if held.all() else (ids[held], vectors[held])

    def count(self, collection: str) -> int:
        index = self._store.indexes.get(collection)
        return 0 if index is None else index.ntotal

    def vectors_of(self, collection: str, ids: np.ndarray, projection: FeatureMap | None) -> np.ndarray:
        """The rows of ``ids`` as the gallery is searched (through ``projection``); a row removed by another
        process since this state is zeros (an expansion's neighbour that adds nothing)."""
        live, found = self._store.live_vectors(collection, ids)
        if projection is not None and len(found):
            found = projection.apply(found)
        width = projection.out_dim if projection is not None else self._store.manifest.dim
        vectors = np.zeros((len(live), width), np.float32)
        vectors[live] = found
        return vectors

    def version(self, collection: str) -> int:
        """The catalog generation: statistics fitted on the gallery are refitted when it moves on."""
        return self._store.generation

    def keep(self, name: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Arrays fitted on the gallery (qbnorm's per-item statistics, center's means), kept under ``derived/``
        for later processes while the catalog generation is the one they were fitted at."""
        generation = self._store.generation
        path = self._store.path / DERIVED_DIR / f"{name}.npz"
        try:
            with _HEADER_LOCK, np.load(path, allow_pickle=False) as saved:
                if int(saved["generation"]) == generation:
                    return {key: saved[key] for key in saved.files if key != "generation"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # missing, damaged or from another generation: fit again
        arrays = make()
        tmp = path.with_name(path.name + ".tmp.npz")
        try:
            path.parent.mkdir(exist_ok=True)
            np.savez(tmp, generation=np.int64(generation), **arrays)
            os.replace(tmp, path)
        except OSError:  # a read-only index keeps them in memory only
            tmp.unlink(missing_ok=True)
        return arrays

    def refresh(self, collection: str, projection: FeatureMap, map_blocks: MapBlocks | None = None) -> bool:
        """Bring a projected collection in line with the catalog now (after a build), not at the next query.
        ``map_blocks`` applies the map (a build engine's actor pool; None: in this process). A collection
        whose saved file is already current is left on disk (the first query loads and verifies it).
        Returns whether it was built."""
        key = (collection, projection.fingerprint)
        generation = self._store.generation
        with self._lock:
            held = self._derived.get(key)
            if held is not None and held[0] == generation:
                return False
            name = derived_name(collection, projection)
            count = self._store.indexes[collection].ntotal
            if _current_meta(self._store.path / DERIVED_DIR, name, generation, count) is not None:
                return False
            self._derived[key] = (generation, make_derived(self._store, collection, projection, map_blocks))
            return True

    def _projected(self, collection: str, projection: FeatureMap):
        """The derived FAISS collection ``collection`` seen through ``projection``, current with the catalog: held,
        saved under ``derived/``, or built through the fit runner (here, or in the background: FitPending)."""
        key = (collection, projection.fingerprint)
        generation = self._store.generation
        name = derived_name(collection, projection)
        with self._lock:
            held = self._derived.get(key)
            if held is not None and held[0] == generation:
                return held[1]
            base = self._store.indexes[collection]
            folder = self._store.path / DERIVED_DIR
            index = _load_current(folder, name, generation, base.ntotal, projection.out_dim, base.factory)
            if index is not None:
                self._derived[key] = (generation, index)
                return index

        def build(progress: FitProgress):
            return make_derived(self._store, collection, projection, progress=progress)

        index = self.fits.run(("derived", key), generation, f"the derived collection {name}", base.ntotal, build)
        with self._lock:
            self._derived[key] = (generation, index)
        return index


def derived_name(collection: str, projection: FeatureMap) -> str:
    """The file stem of ``collection`` seen through ``projection`` under ``derived/``."""
    return f"{collection}@{projection.fingerprint}"


def apply_here(projection: FeatureMap, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """``MapBlocks`` in this process: each block through ``projection.apply``."""
    return (projection.apply(block) for block in blocks)


def make_derived(
    store,
    collection: str,
    projection: FeatureMap,
    map_blocks: MapBlocks | None = None,
    progress: FitProgress | None = None,
):
    """The one builder of a derived collection: the catalog's vectors of ``collection``, ``DERIVED_BLOCK`` rows at
    a time, through ``map_blocks`` (in this process, or a build engine's actor pool; blocks come back in order),
    indexed with the collection's factory a block at a time (no concatenated copy) and saved under ``derived/``
    at the catalog generation. ``progress`` advances per mapped block (and stops a cancelled build there).
    Returns the index (kept in memory even where the index directory is read-only)."""
    from crossgap_index.store.vectors import VectorIndex

    generation = store.generation
    base = store.indexes[collection]
    dim = projection.out_dim
    ids, vectors = store.ids_and_vectors(collection)
    held = store.held_ids(collection, ids)  # the items of the state this store holds, as the catalog has them now
    ids, vectors = (ids, vectors) if held.all() else (ids[held], vectors[held])
    blocks = (vectors[first : first + DERIVED_BLOCK] for first in range(0, len(ids), DERIVED_BLOCK))
    mapped = []
    for block in (map_blocks or apply_here)(projection, blocks):
        mapped.append(np.ascontiguousarray(block, np.float32))
        if progress is not None:
            progress.advance(len(block))
    if sum(len(block) for block in mapped) != len(ids):
        raise RuntimeError(f"derived {collection}: {len(ids)} vectors went out, {sum(map(len, mapped))} came back")
    del vectors
    starts = np.cumsum([0, *(len(block) for block in mapped)])

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return ((ids[starts[i] : starts[i + 1]], block) for i, block in enumerate(mapped))

    index = VectorIndex(dim, base.factory)
    index.build_chunked(len(ids), chunks)
    if index.ntotal == base.ntotal:  # the whole state: later processes may load it (a part is kept in memory only)
        _save_quietly(store.path / DERIVED_DIR, derived_name(collection, projection), index, generation)
    return index


def _current_meta(folder: Path, name: str, generation: int, count: int) -> dict | None:
    """The saved derived collection's record when it says it was made at ``generation`` with ``count`` vectors and
    its file has the recorded size (the checksum is verified when the file is loaded), else None. A current one is
    marked recently used (kept by ``_prune``)."""
    meta_file = folder / f"{name}.json"
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("generation") != generation or meta.get("count") != count:
            return None
        if meta.get("size") != (folder / f"{name}.faiss").stat().st_size:
            return None
        os.utime(meta_file)
    except (OSError, ValueError, AttributeError):
        return None
    return meta


def _load_current(folder: Path, name: str, generation: int, count: int, dim: int, factory: str):
    """The saved derived collection when it was made at ``generation`` with ``count`` vectors, else None."""
    from crossgap_index.store.vectors import VectorIndex

    meta = _current_meta(folder, name, generation, count)
    if meta is None:
        return None
    try:
        index = VectorIndex.load(folder / f"{name}.faiss", dim, factory, meta)  # None unless size and crc32 match
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None
    return index if index is not None and index.ntotal == count else None


def _save_quietly(folder: Path, name: str, index, generation: int) -> None:
    """Keep the derived collection for later processes; a read-only index rebuilds it in memory instead."""
    try:
        folder.mkdir(exist_ok=True)
        meta = {"generation": generation, "count": index.ntotal, **index.save(folder / f"{name}.faiss")}
        tmp = folder / f"{name}.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, folder / f"{name}.json")
        _prune(folder)
    except OSError:
        pass


def _prune(folder: Path) -> None:
    """Delete the least recently used derived collections beyond KEEP_DERIVED (settings no longer in use)."""
    metas = sorted(folder.glob("*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
    for meta in metas[KEEP_DERIVED:]:
        meta.with_suffix(".faiss").unlink(missing_ok=True)
        meta.unlink(missing_ok=True)

"""An index directory: manifest, SQLite catalog, and one FAISS file per vector collection.

    manifest.json        schema version, model spec, dim, metric, factory per collection, counts,
                         generation and each FAISS file's size and crc32
    catalog.sqlite       items (id, modality, path or text, hash, size, mtime, vector slot), and each
                         vector shard's committed rows and crc32
    vectors/             append-only vector shards (float32 or float16), read by row (store/shards.py);
                         catalog rows + the shard bytes they point at, verified: the truth
    cache.sqlite         inversion cache (writing it never marks FAISS files stale)
    image.faiss          IDMap2 over the chosen factory, unit vectors, inner product
    text.faiss
    image-oti.faiss      optional: each gallery image's OTI text-space feature
    text-ovi.faiss       optional: each stored text's OVI image-space feature
    lock                 advisory writer lock (store/lock.py)

The store knows nothing about models: it keeps vectors under ids and answers top-k.
FAISS files are derived: one that is missing, damaged, or from another generation than the
catalog is never read; it is rebuilt from the catalog and the shards (after verifying the shards'
checksums: a damaged shard is refused in one line, never indexed). Writers hold the lock and replace files
atomically, the manifest last, so a reader that opens mid-write sees a consistent state.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crossgap_index.errors import DiskFullError, StoreError, is_disk_full
from crossgap_index.store.cache import InversionCache
from crossgap_index.store.catalog import DEFAULT_DTYPE, Catalog
from crossgap_index.store.compact import AUTO_MIN_DEAD, DEFAULT_MIN_DEAD, CompactReport, compact, remove_unrecorded
from crossgap_index.store.lock import IndexLock, ReadWriteLock
from crossgap_index.store.manifest import MANIFEST_NAME, Manifest
from crossgap_index.store.shards import ITEMS_STREAM, VECTORS_DIR, read_again_if_moved
from crossgap_index.store.state import HeldState
from crossgap_index.store.vectors import AUTO, VectorIndex, validate_factory
from crossgap_index.words import MODALITIES, StageProgress

if TYPE_CHECKING:
    import faiss

INDEX_ENV_VAR = "CGX_INDEX"
# Collections of vectors derived from items: name -> modality of the items they belong to.
DERIVED = {"image-oti": "image", "text-ovi": "text"}
CATALOG_NAME = "catalog.sqlite"
log = logging.getLogger("crossgap_index")


def default_index_path() -> Path:
    """``$CGX_INDEX``, else the per-user data dir (e.g. ~/.local/share/crossgap-index/default)."""
    env = os.environ.get(INDEX_ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs  # here: a query that names its index never needs it

    return Path(platformdirs.user_data_dir("crossgap-index")) / "default"


class IndexExistsError(StoreError):
    """Store.create found an index already there (another process may have just made it)."""


class Store(HeldState):
    """Owns the files of one index directory.

    Thread-safe: searches run under ``reading()`` (shared), index mutation under a short exclusive
    section; whole writes run under ``writing()``, which also holds the cross-process lock.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        catalog: Catalog,
        indexes: dict[str, VectorIndex],
        readonly: bool,
        lock: IndexLock | None = None,
    ):
        self.path = path
        self.manifest = manifest
        self.catalog = catalog
        self.indexes = indexes
        self.readonly = readonly
        self.cache = InversionCache(path, writable=not readonly, legacy_catalog=path / CATALOG_NAME)
        self.lock = lock or IndexLock(path)
        self.wait = True  # what a writer does when another process holds the lock
        self.build_progress: StageProgress | None = None  # told a FAISS build's phases: train, add, write
        self.rebuilt: list[str] = []  # collections rebuilt from the catalog on open (damaged, stale, missing)
        self.introduced: list[str] = []  # derived collections this release has and the index did not (added empty)
        self._rw = ReadWriteLock()
        self._writer = threading.RLock()
        self._write_depth = 0
        self._pending: list[tuple[str, str, np.ndarray, np.ndarray | None]] = []
        self._loaded_generation = -1
        self._removed = False  # items were removed since the last save: it looks for shards to compact
        self._held: dict[str, tuple[tuple, np.ndarray]] = {}  # collection -> (state, its sorted ids): held_ids
        self._held_lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._for_check = False  # opened for `check`: damaged shards leave a collection empty, not refused

    @classmethod
    def create(
        cls,
        path: Path,
        model: str,
        dim: int,
        factory: str = AUTO,
        wait: bool = True,
        precision: str = "fp32",
        vector_dtype: str = DEFAULT_DTYPE,
    ) -> Store:
        """A new index; ``vector_dtype``: how the shards store vectors (float32, or float16: half the
        bytes, ~1e-3 relative rounding, which exact re-scoring then works on)."""
        validate_factory(factory, dim)
        _make_directory(path)
        lock = IndexLock(path)
        with lock.hold(wait):
            if (path / MANIFEST_NAME).exists():
                raise IndexExistsError(f"an index already exists at {path}")
            names = (*MODALITIES, *DERIVED)
            manifest = Manifest(model=model, dim=dim, factories=dict.fromkeys(names, factory), precision=precision)
            catalog = Catalog(path / CATALOG_NAME)
            catalog.set_vector_format(dim, vector_dtype)
            indexes = {n: VectorIndex(dim, factory) for n in names}
            store = cls(path, manifest, catalog, indexes, readonly=False, lock=lock)
            store.wait = wait
            store._loaded_generation = catalog.generation
            store.save()
        return store

    @classmethod
    def open(cls, path: Path, readonly: bool | None = None, for_check: bool = False) -> Store:
        """Open an index; FAISS files that fail verification are rebuilt in memory (and saved again when
        the directory is writable and no writer is busy). ``readonly`` None: decided by whether the
        directory can be written; True: nothing is written. An index of the previous layout (vectors in
        the catalog) is migrated to shards here when writable, and served as it is when not.
        ``for_check``: short or missing shards are not refused (`cgx check` reports them, and ``--repair``
        writes them again); a collection that would be rebuilt from them is left empty in memory."""
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not an index directory")
        manifest = Manifest.load(path)
        for factory in set(manifest.factories.values()):  # a hand-edited factory: one line, not a crash later
            validate_factory(factory, manifest.dim, where=f"{path / MANIFEST_NAME}: ")
        if readonly is None:
            readonly = not _writable(path)
        catalog = Catalog(path / CATALOG_NAME, readonly=readonly)
        try:
            store = cls(path, manifest, catalog, {}, readonly)
            store._for_check = for_check
            store._check_dim()
            catalog.migrate_if_old(manifest.dim, lambda: store.lock.hold(store.wait))
            if not for_check:
                store._check_shards()
            if not readonly:
                store._remove_unrecorded()
            store._load_indexes()
        except sqlite3.DatabaseError as exc:
            catalog.close()
            raise StoreError(f"{catalog.path}: damaged catalog ({exc}); restore it from a backup") from exc
        except BaseException:
            catalog.close()
            raise
        if (store.rebuilt or store.introduced) and not readonly:
            store._save_repaired()
        return store

    def _check_dim(self) -> None:
        stored = self.catalog.stored_dim()
        if stored is not None and stored != self.manifest.dim:
            raise StoreError(
                f"{self.path / MANIFEST_NAME}: says dim {self.manifest.dim} (model {self.manifest.model}) but the "
                f"catalog holds {stored}-d vectors; the manifest does not belong to this catalog"
            )

    def _check_shards(self) -> None:
        """Every shard at least as long as its committed rows (one stat each): a shorter one has lost
        committed vectors, so the index is refused in one line."""
        problems = self.catalog.shard_problems()
        if problems:
            raise StoreError(f"{self.path}: {problems[0]}; {SHARD_ADVICE}")

    def _remove_unrecorded(self) -> None:
        """Shard files an interrupted compaction (or write) left that no catalog record names: deleted when
        no writer holds the lock (one may be writing such a file right now), else left for a later writer."""
        if not self.catalog.uses_shards():
            return
        if not self.catalog.shards().unrecorded(self.catalog.shard_records()):
            return
        try:
            with self.lock.hold(wait=False):
                remove_unrecorded(self.catalog)
        except StoreError:
            pass  # a writer is busy: unrecorded files are never read, and it or a later writer removes them

    def verify_vectors(self, name: str) -> None:
        """Checksums of the shards a collection's vectors live in (each shard's unverified part, once per
        process), before they are read in full into a FAISS index. Raises StoreError in one line."""
        problems = self.catalog.shard_problems(full=True, streams=[_stream(name)])
        if problems:
            raise StoreError(f"{self.path}: {problems[0]}; {SHARD_ADVICE}")

    def _load_indexes(self) -> None:
        """Load every collection, verified against the manifest (size, crc32, generation, count); a large
        file is verified in the background and waited for on first use (store/vectors.py)."""
        generation = self.catalog.generation
        self.rebuilt = []
        introduced = [name for name in DERIVED if name not in self.manifest.factories]
        self.introduced = introduced
        for name in introduced:  # a derived collection newer than the index: its owner's factory, saved on open
            self.manifest.factories[name] = self.manifest.factories.get(DERIVED[name], AUTO)
        for name, factory in self.manifest.factories.items():
            expected = self.manifest.files.get(name) if self.manifest.generation == generation else None
            count = self.manifest.counts.get(name) if expected is not None else None
            index = VectorIndex.load(
                self.path / f"{name}.faiss",
                self.manifest.dim,
                factory,
                expected,
                count if count is not None else self.stored_count(name),
                fallback=lambda name=name, factory=factory: self._rebuilt_index(name, factory),
            )
            if index is None:
                index = VectorIndex(self.manifest.dim, factory, self._rebuilt_index(name, factory))
            self.indexes[name] = index
        self._loaded_generation = generation

    def _rebuilt_index(self, name: str, factory: str) -> faiss.Index:
        """A collection's FAISS index built from its verified shards (when its file cannot be used)."""
        fresh = VectorIndex(self.manifest.dim, factory)
        try:
            self.verify_vectors(name)
        except StoreError:
            if self._for_check:
                return fresh.index  # `check` reports the shard; nothing is searched here
            raise
        fresh.build_chunked(self.stored_count(name), lambda: self.vector_chunks(name))
        if name not in self.introduced:  # a collection new to this index is made, not repaired
            self.rebuilt.append(name)
        return fresh.index

    def _save_repaired(self) -> None:
        """Write the rebuilt files back, if no writer holds the lock (an opener never waits)."""
        try:
            with self.writing(wait=False):
                self._write_files()
        except StoreError:
            pass  # a writer is busy, or the lock cannot be made: it will save them itself

    # -- locking --------------------------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[None]:
        """Searches hold this: they see FAISS and catalog rows of one committed state."""
        with self._rw.read():
            yield

    @contextmanager
    def writing(self, wait: bool | None = None) -> Iterator[None]:
        """Hold the index for a write: one writer per process (others wait), one across processes
        (the lock file: wait with a message, or ``wait=False``: fail in one line). The outermost
        entry first brings this store up to date with other processes' writes."""
        if self.readonly:
            raise StoreError(f"the index at {self.path} is read-only here (the directory cannot be written)")
        with self._writer, self.lock.hold(self.wait if wait is None else wait):
            self._write_depth += 1
            try:
                if self._write_depth == 1:
                    self._catch_up()
                yield
            except BaseException as exc:
                if self._write_depth == 1:
                    self.catalog.rollback()
                    self._pending.clear()
                if is_disk_full(exc) and not isinstance(exc, DiskFullError) and self.catalog.ids_exhausted():
                    raise StoreError(  # SQLite says SQLITE_FULL when AUTOINCREMENT has no id left to give
                        f"the index at {self.path} holds id 2**63 - 1, the largest SQLite has, so no new item can "
                        "get an id (the disk is not full); add new items to a new index (imports now stop at 2**53 - 1)"
                    ) from exc
                if is_disk_full(exc) and not isinstance(exc, DiskFullError):
                    raise DiskFullError(
                        f"disk full while writing the index at {self.path}: free some space and re-run "
                        "(everything committed before is kept)"
                    ) from exc
                raise
            finally:
                self._write_depth -= 1

    def stored_count(self, name: str) -> int:
        if name in DERIVED:
            return self.catalog.count_derived(name)
        return self.catalog.count(name)

    def ids_and_vectors(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, stored vector) of a collection, read again when a compaction elsewhere moved the rows."""
        if name in DERIVED:
            return read_again_if_moved(lambda: self.catalog.derived_ids_and_vectors(name, self.manifest.dim))
        return read_again_if_moved(lambda: self.catalog.ids_and_vectors(name, self.manifest.dim))

    def vector_chunks(self, name: str, size: int = 16_384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of a collection in id order, ``size`` at a time (exports, large builds)."""
        return self.catalog.vector_chunks(name, name in DERIVED, self.manifest.dim, size)

    def rebuild(self, name: str) -> None:
        """From the catalog, a chunk at a time (training on a sample when the factory needs it); searches
        go on against the old index until the new one is swapped in."""
        self.verify_vectors(name)
        self.indexes[name].build_chunked(
            self.stored_count(name), lambda: self.vector_chunks(name), self._rw.write, self.build_progress
        )

    # -- writes (inside writing()) ----------------------------------------------------------
    def add(self, name: str, ids: list[int], vectors: np.ndarray) -> None:
        """Index vectors whose rows the caller has written to the catalog; they reach FAISS when the
        catalog commits, so a concurrent search never finds an id whose row it cannot see."""
        if len(ids):
            self._pending.append(("add", name, np.asarray(ids, np.int64), np.asarray(vectors, np.float32)))

    def remove(self, ids: list[int]) -> None:
        """Remove items (and their derived vectors) from the catalog and, at commit, every FAISS index."""
        if not ids:
            return
        self.catalog.remove(ids)
        self._pending.append(("remove", "", np.asarray(ids, np.int64), None))
        self._removed = True

    def replace(self, name: str, ids: list[int], vectors: np.ndarray) -> None:
        """Index new vectors under ids whose catalog rows the caller has rewritten (edited files keep their ids):
        at commit the old vectors leave every FAISS index (the derived ones too) and the new ones join ``name``."""
        if len(ids):
            ids = np.asarray(ids, np.int64)
            self._pending.append(("remove", "", ids, None))
            self._pending.append(("add", name, ids, np.asarray(vectors, np.float32)))

    def commit(self) -> None:
        """Commit the catalog and apply the pending FAISS changes, as one step for readers."""
        with self._rw.write():
            self.catalog.commit()
            pending, self._pending = self._pending, []
            rebuilt: set[str] = set()
            for op, name, ids, vectors in pending:
                if op == "remove":
                    for target, index in self.indexes.items():
                        if target not in rebuilt and not index.remove(ids):
                            self.rebuild(target)
                            rebuilt.add(target)
                elif name not in rebuilt and self.indexes[name].can_add():
                    self.indexes[name].add(ids, vectors)
            self._loaded_generation = self.catalog.generation

    def save(self) -> None:
        """Commit the catalog, bring every FAISS index in line with it, write files atomically."""
        with self.writing():
            self.commit()
            self._write_files()
            if self._removed:
                self._removed = False
                self._compact_after_removal()

    def compact(self, min_dead: float = DEFAULT_MIN_DEAD) -> CompactReport:
        """Rewrite the live rows of shards at least ``min_dead`` dead into new shards and delete the old
        files (store/compact.py); searches go on meanwhile and the FAISS files stay valid."""
        with self.writing():
            if self._pending:
                self.commit()
            return compact(self.catalog, self._rw.write, min_dead)

    def _compact_after_removal(self) -> None:
        """The automatic compaction after a write that removed items: shards at least half dead only (it
        copies no more rows than it frees). A failure here is a note: the write itself has succeeded."""
        try:
            report = compact(self.catalog, self._rw.write, AUTO_MIN_DEAD)
        except (StoreError, OSError) as exc:
            log.warning("cgx: note: shards not compacted (%s); `cgx compact` retries", exc)
            return
        if report.compacted:
            log.info(
                "cgx: compacted %d vector shards: %d rows copied, %d dead rows freed",
                len(report.compacted),
                report.rows_copied,
                report.rows_freed,
            )

    def _write_files(self) -> None:
        """Each FAISS file, then the manifest naming their sizes and checksums (last: the commit point)."""
        for name, index in self.indexes.items():
            if index.needs_rebuild() or index.ntotal != self.stored_count(name):
                self.rebuild(name)
            if self.build_progress:
                self.build_progress("write", 0, index.ntotal)
            self.manifest.files[name] = index.save(self.path / f"{name}.faiss")
            if self.build_progress:
                self.build_progress("write", index.ntotal, index.ntotal)
        self.manifest.counts = {name: self.stored_count(name) for name in self.indexes}
        self.manifest.generation = self.catalog.generation
        self.manifest.save(self.path)

    def close(self) -> None:
        self.cache.close()
        self.catalog.close()

    # -- reads ----------------------------------------------------------------------------
    def search(self, name: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.indexes[name].search(queries, k)

    def exact_rerank(self, name: str, query: np.ndarray, candidate_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the candidates the catalog still holds, their exact inner products with one query), from
        the stored (uncompressed) vectors."""
        live, vectors = self.live_vectors(name, candidate_ids)
        return live, vectors @ query

    def catalog_vectors(self, name: str, ids: np.ndarray) -> np.ndarray:
        """The stored (uncompressed) vectors of ``ids`` in collection ``name``, in order."""
        kind = name if name in DERIVED else None
        wanted = np.asarray(ids).tolist()
        return read_again_if_moved(lambda: self.catalog.vectors_for(wanted, self.manifest.dim, kind))

    def live_vectors(self, name: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of ``ids`` the catalog still holds, their stored vectors in order): a reader's candidates come
        from the FAISS files of the state it holds, and another process may have removed some since."""
        kind = name if name in DERIVED else None
        wanted = np.asarray(ids).tolist()
        return read_again_if_moved(lambda: self.catalog.vectors_found(wanted, self.manifest.dim, kind))

    @property
    def generation(self) -> int:
        """Catalog generation the FAISS files were last saved at: derived data is current only at it."""
        return self.manifest.generation

    def disk_sizes(self) -> dict[str, int]:
        """Bytes per file; the vector shards summed as ``vectors/``."""
        sizes = {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file()}
        shards = self.path / VECTORS_DIR
        if shards.is_dir():
            sizes[f"{VECTORS_DIR}/"] = sum(p.stat().st_size for p in shards.iterdir() if p.is_file())
        return sizes


SHARD_ADVICE = (
    "the shards hold the index's vectors (catalog rows + verified shards are its truth): `cgx check --repair` "
    "writes a damaged one again when an uncompressed FAISS file still holds its vectors; else restore the index "
    "directory from a backup, or build it again from its images or embeddings"
)


def _stream(name: str) -> str:
    """The shard stream a collection's vectors live in: the items' one, or the derived collection's own."""
    return name if name in DERIVED else ITEMS_STREAM


def _writable(path: Path) -> bool:
    """Whether this process can write the index directory and its catalog (a read-only mount, or
    permissions: os.access answers for the real user, root included on a read-only file system)."""
    catalog = path / CATALOG_NAME
    return os.access(path, os.W_OK) and (not catalog.exists() or os.access(catalog, os.W_OK))


def _make_directory(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} is a file, not an index directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the index directory {path}: {exc.strerror or exc}") from exc
    if not _writable(path):
        raise StoreError(f"cannot write to the index directory {path}")

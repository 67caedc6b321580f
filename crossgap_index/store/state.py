"""The saved state a store holds (a part of ``Store``): moving a reader to a newer saved state, and what the
held state's FAISS collections contain.

Every save writes the FAISS files first and the manifest last, naming the catalog generation they were built
at; a reader holds one such state and answers from it until it moves to a newer one, all at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crossgap_index.store.catalog import ItemRow
from crossgap_index.store.manifest import Manifest
from crossgap_index.store.vectors import VectorIndex
from crossgap_index.words import MODALITIES

if TYPE_CHECKING:
    from crossgap_index.store.directory import Store

SAVED_STATE_TRIES = 3  # reads of the manifest while a writer replaces the files it names


class HeldState:
    """Following saved states (``refresh``) and the ids the held state's collections contain."""

    def refresh(self: Store) -> bool:
        """Move a reader to the newest saved state: the manifest (written last by every save) names a catalog
        generation whose FAISS files are all on disk. The new state's files are loaded and verified aside, then
        the manifest and every collection are swapped in at once under the exclusive lock: a search holds the
        shared lock throughout, so it sees the old state or the new one, never a mix. True when it moved.
        Nothing happens while this process writes (its writer keeps the state current) or when the saved state
        is not newer than the one held. A file replaced by a writer between the manifest and the file is caught
        by its checksum: the manifest is read again; after a few tries the state is loaded the writer's way."""
        with self._refreshing:  # two callers (a follower, a watcher's publish): the second sees the first's state
            if not self._writer.acquire(blocking=False):
                return False  # a write of this process is under way: it brings the store up to date itself
            try:
                return self._swap_to_saved()
            finally:
                self._writer.release()

    def _swap_to_saved(self: Store) -> bool:
        """``refresh`` once its locks are held."""
        for _ in range(SAVED_STATE_TRIES):
            manifest = Manifest.load(self.path)
            if manifest.generation <= self._loaded_generation:
                return False
            indexes = self._saved_indexes(manifest)
            if indexes is not None:
                with self._rw.write():
                    self.manifest, self.indexes = manifest, indexes
                    self._pending.clear()
                    self._loaded_generation = manifest.generation
                return True
        return self._catch_up()

    def saved_generation(self: Store) -> int:
        """The generation of the newest saved state (one small file read): what a follower polls."""
        return Manifest.load(self.path).generation

    @property
    def loaded_generation(self: Store) -> int:
        """The generation of the state this store holds."""
        return self._loaded_generation

    def _saved_indexes(self: Store, manifest: Manifest) -> dict[str, VectorIndex] | None:
        """Every collection ``manifest`` records, read from its file and verified against the record (size,
        crc32, count); None when one is missing or differs (replaced meanwhile by a writer)."""
        if set(manifest.factories) != set(self.manifest.factories) or manifest.dim != self.manifest.dim:
            return None
        indexes = {}
        for name, factory in manifest.factories.items():
            path = self.path / f"{name}.faiss"
            index = VectorIndex.load(path, manifest.dim, factory, manifest.files.get(name), manifest.counts.get(name))
            if index is None:
                return None
            indexes[name] = index
        return indexes

    def _catch_up(self: Store) -> bool:
        """A writer's start: load the catalog's newest committed generation (FAISS files rebuilt from it where a
        writer elsewhere committed rows and died before saving them). True when something changed."""
        if self.catalog.generation == self._loaded_generation:
            return False
        manifest = Manifest.load(self.path)
        with self._rw.write():
            self.manifest = manifest
            self.indexes = {}
            self._pending.clear()
            self._load_indexes()
        return True

    def held_items(self: Store, modality: str | None, after: int, limit: int) -> list[ItemRow]:
        """``catalog.items`` as this store's state has them: rows of items its FAISS collections hold (one another
        process added since joins when the state is swapped; one it removed has left both). Pages stay full."""
        held = [name for name in MODALITIES if modality in (None, name)]
        out: list[ItemRow] = []
        while limit < 0 or len(out) < limit:
            want = -1 if limit < 0 else limit - len(out)
            rows = self.catalog.items(modality, after, want)
            ids = np.fromiter((r.id for r in rows), np.int64, count=len(rows))
            kept = np.zeros(len(rows), bool)
            for name in held:
                of_name = np.fromiter((r.modality == name for r in rows), bool, count=len(rows))
                kept |= of_name & self.held_ids(name, ids)
            out += [row for row, keep in zip(rows, kept.tolist(), strict=True) if keep]
            if want < 0 or len(rows) < want:
                break
            after = rows[-1].id
        return out

    def held_ids(self: Store, name: str, ids: np.ndarray) -> np.ndarray:
        """The mask of ``ids`` that collection ``name`` holds in this store's state (its FAISS index). The index's
        ids are sorted once per state: the in-memory indexes change only with the generation (a commit, a swap)."""
        key = (self._loaded_generation, id(self.indexes[name]))
        with self._held_lock:
            cached = self._held.get(name)
        if cached is None or cached[0] != key:
            cached = (key, np.sort(self.indexes[name].ids()))
            with self._held_lock:
                self._held[name] = cached
        own = cached[1]
        ids = np.asarray(ids, np.int64)
        if not len(own):
            return np.zeros(len(ids), bool)
        positions = np.minimum(np.searchsorted(own, ids), len(own) - 1)
        return own[positions] == ids

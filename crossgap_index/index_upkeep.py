"""The upkeep part of CrossGapIndex (api.py): what an index holds (info, ls, item, duplicates, the model note),
removal, checks and compaction, and following the states other processes save (refresh, generations)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from crossgap_index.index_info import IndexInfo, index_info
from crossgap_index.index_runtime import IndexRuntime, reads
from crossgap_index.store.catalog import ImageRecord, ItemRow
from crossgap_index.store.check import CheckReport, check_store
from crossgap_index.store.compact import DEFAULT_MIN_DEAD, CompactReport
from crossgap_index.store.directory import Store
from crossgap_index.store.prune import select_for_removal
from crossgap_index.words import check_modality


class IndexUpkeep:
    """Methods of CrossGapIndex over the store it holds (``_store``) and its loaded parts (``_runtime``)."""

    _store: Store
    _runtime: IndexRuntime

    @reads
    def duplicates(self, threshold: float | None = None) -> list[list[ItemRow]]:
        """Groups of near-duplicate images: linked by pairs whose vectors score above ``threshold`` (default:
        search/duplicates.py's measured DEFAULT_THRESHOLD), found by chunked FAISS range search, largest first."""
        from crossgap_index.search.duplicates import DEFAULT_THRESHOLD, duplicate_rows

        return duplicate_rows(self._store, DEFAULT_THRESHOLD if threshold is None else threshold)

    @reads
    def item(self, item_id: int) -> ItemRow | None:
        """The stored item with this id (modality, path or text, external id), or None."""
        return self._store.catalog.rows([item_id]).get(item_id)

    @reads
    def image_record(self, item_id: int) -> ImageRecord | None:
        """An image item's file as the catalog recorded it (path, content hash, size, mtime), or None: what
        a server checks the file against before serving it."""
        return self._store.catalog.image_record(item_id)

    def model_note(self) -> str | None:
        """One line when most of the index's images lie outside its bundled model's world (a small model
        trained on synthetic shapes, used on real photos), else None. Reads stored vectors only (no model):
        the rule is in crossgap_index.models.world."""
        from crossgap_index.index_items import model_note

        return model_note(self._store)

    @reads
    def info(self) -> IndexInfo:
        """What the index holds in the state this handle reads (its counts are those of the held generation)."""
        return index_info(self._store, self._runtime.searcher)

    # -- maintenance (remove, ls, check) ------------------------------------------------------
    def remove(
        self, ids: Iterable[int] | None = None, *, paths: Iterable[str | Path] | None = None, missing: bool = False
    ) -> list[int]:
        """Remove items by id, every image at or under ``paths`` (files or whole folders, gone or not),
        and with ``missing`` every image whose file is no longer on disk. Returns the removed ids."""
        with self._store.writing():
            chosen = select_for_removal(self._store.catalog, ids=ids, paths=paths, missing=missing)
            self._store.remove(chosen)
            self._store.save()
        return chosen

    @reads
    def ls(self, modality: str | None = None, *, after: int = 0, limit: int | None = None) -> list[ItemRow]:
        """Every stored item (id, modality, path or text, external id), by id; ``modality``: 'image' or 'text'.
        ``after`` / ``limit`` give one page (the items with ids above ``after``), for browsing large indexes."""
        if modality is not None:
            check_modality(modality)
        return self._store.held_items(modality, after, -1 if limit is None else limit)

    def check(self, repair: bool = False, files: bool = True) -> CheckReport:
        """Verify the catalog (SQLite integrity_check, unit-norm vectors), every FAISS file against it
        (present, checksum, count, ids) and, with ``files``, that indexed image files exist. ``repair``
        rebuilds the derived FAISS files from the catalog. Like ``git fsck``: a report, not an exception."""
        return check_store(self._store, repair=repair, files=files)

    def compact(self, min_dead: float = DEFAULT_MIN_DEAD) -> CompactReport:
        """Give back the bytes of removed items' vectors: shards at least ``min_dead`` dead are rewritten with
        their live rows only (a kill at any point leaves an index that opens and answers the same; searches go
        on meanwhile). Writes after removals do this by themselves for shards at least half dead."""
        return self._store.compact(min_dead)

    def refresh(self) -> bool:
        """Move this handle to the newest state another process saved (True when it moved). A handle reads one
        committed state (FAISS collections, derived collections, catalog rows, ``ls``/``info``) from open until
        it refreshes; the new state is loaded aside and swapped in whole, so a search running meanwhile sees the
        old state or the new one, never a mix. Cheap when nothing changed (one small file read): call it as
        often as a long-lived handle should follow (``cgx serve`` does, by itself, about twice a second)."""
        moved = self._store.refresh()
        if moved:
            self._runtime.forget_searcher()  # tuned modes and inverter files of the new state
        return moved

    @property
    def generation(self) -> int:
        """The catalog generation of the state this handle reads."""
        return self._store.loaded_generation

    def saved_generation(self) -> int:
        """The generation of the newest state saved in the index directory (a follower compares the two)."""
        return self._store.saved_generation()

"""`check`: verify an index directory the way `git fsck` / SQLite's integrity_check do, and repair
what is derived (the FAISS files) from what is true (the catalog).

What is checked: the catalog file (PRAGMA integrity_check), each vector shard's size and crc32
against the catalog's record (``--repair`` writes a damaged shard again only from a current, verified,
uncompressed FAISS file, store/recover.py; else it is reported with what to do), every stored vector
unit-norm, each
FAISS file present, matching the manifest's size and crc32 and generation, holding exactly the
catalog's ids (and, for exact indexes, the catalog's vectors), each id on its own vector (an IVF's lists
numbered as its id table says, and a sampled self-search: a stored vector read from the shards finds its
own id), and that indexed image files exist.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field

import faiss
import numpy as np

from crossgap_index.store.catalog import header_shortfall, wal_has_frames
from crossgap_index.store.compact import remove_unrecorded, shard_use
from crossgap_index.store.directory import DERIVED, SHARD_ADVICE, Store
from crossgap_index.store.prune import is_reference
from crossgap_index.store.shards import ShardRecord
from crossgap_index.store.vectors import VectorIndex, file_record, read_verified

NORM_TOLERANCE = 1e-3
VECTOR_TOLERANCE = 1e-5
# The self-search: this many stored vectors (seeded sample), searched in chunks of SELF_SEARCH_CHUNK, must
# find their own ids; its cost is one search of the sample, bounded whatever the index's size.
SELF_SEARCH_SAMPLE = 512
SELF_SEARCH_CHUNK = 128
SELF_SEARCH_SEED = 20261207
# Where the index holds the vectors themselves and finds the nearest exactly (Flat; IVF-Flat probing its
# own list first), a vector's own id is among the best-scored (ties: equal vectors) of SELF_SEARCH_EXACT_K.
SELF_SEARCH_EXACT_K = 32
SELF_SCORE_TOLERANCE = 1e-4
# Elsewhere (codes, graphs) the search is approximate: a vector's own id must be among as many candidates
# as search/ranking.py re-scores exactly, and a few misses are the approximation, not a wrong id: ids moved
# onto other vectors miss far more than this fraction of the sample.
SELF_SEARCH_CANDIDATES = 100
SELF_SEARCH_APPROXIMATE_MISSES = 0.05


@dataclass
class CheckReport:
    """``problems``: what is wrong now; ``repaired``: what was wrong and has been rebuilt; ``notes``:
    what is behind but loses nothing (derived files a killed writer left stale, rebuilt on the next
    open; a checkpoint a full disk interrupted): not problems, ``ok`` stays true."""

    ok: bool
    counts: dict[str, int]
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_store(store: Store, repair: bool = False, files: bool = True) -> CheckReport:
    try:
        return _check(store, repair, files)
    except sqlite3.DatabaseError as exc:  # a damaged catalog can fail any query
        problems = [f"catalog.sqlite: {exc} (the catalog is damaged; restore it from a backup)"]
        return CheckReport(ok=False, counts={}, problems=problems)


def _check(store: Store, repair: bool, files: bool) -> CheckReport:
    catalog = store.catalog
    problems = [f"catalog.sqlite: {msg}" for msg in catalog.integrity_check()[:20]]
    notes: list[str] = []
    repaired: list[str] = []
    cannot_repair = repair and store.readonly
    if header_shortfall(catalog.path) and wal_has_frames(catalog.path):
        if repair and not store.readonly and catalog.checkpoint():
            repaired.append("catalog.sqlite: completed the checkpoint a full disk interrupted (the WAL's pages)")
        else:
            notes.append(
                "catalog.sqlite: a checkpoint was interrupted (a full disk?); its pages are safe in the WAL "
                "and are read from there; `cgx check --repair` writes them into the file"
            )
    counts = {name: store.stored_count(name) for name in store.manifest.factories}
    shard_problems = catalog.shard_problems(full=True)
    if repair and shard_problems and not store.readonly:
        recovered, shard_problems = _recover_shards(store)
        repaired += recovered
    problems += [f"{p} ({SHARD_ADVICE})" for p in shard_problems]
    shard_notes, shard_repairs = _shard_leftovers(store, repair)
    notes += shard_notes
    repaired += shard_repairs
    for name in store.manifest.factories if not shard_problems else ():
        problems += _vector_norm_problems(store, name)
    derived = {name: _faiss_problem(store, name, not shard_problems) for name in store.manifest.factories}
    repaired += [f"{name}.faiss: rebuilt from the catalog on open" for name in store.rebuilt if not derived[name]]
    broken = [name for name, problem in derived.items() if problem and not shard_problems]
    if not repair:  # a killed writer leaves the files a generation behind: nothing is lost, the next open rebuilds
        stale = [name for name in broken if _stale(derived[name])]
        notes += [f"{name}.faiss: {derived[name]}; will be rebuilt on next open" for name in stale]
        broken = [name for name in broken if not _stale(derived[name])]
    if cannot_repair and (broken or notes or shard_problems):
        problems.append(
            f"cannot repair: the index directory {store.path} cannot be written here (read-only); "
            "searches rebuild damaged or stale files in memory"
        )
    if repair and broken and not store.readonly:
        with store.writing():
            for name in broken:
                store.rebuild(name)
            store.save()
        for name in broken:
            after = _faiss_problem(store, name, True)
            if after:
                problems.append(f"{name}.faiss: {after} (still, after repair)")
            else:
                repaired.append(f"{name}.faiss: {derived[name]}; rebuilt from the catalog")
    else:
        problems += [f"{name}.faiss: {derived[name]}" for name in broken]
    missing: list[str] = []
    if files:
        missing = sorted(
            r.path for r in catalog.images().values() if not is_reference(r.path) and not os.path.isfile(r.path)
        )
        if missing:
            problems.append(f"{len(missing)} indexed image files are gone (`cgx remove --missing` prunes them)")
    return CheckReport(
        ok=not problems, counts=counts, problems=problems, repaired=repaired, missing_files=missing, notes=notes
    )


def _stale(problem: str | None) -> bool:
    return bool(problem) and problem.startswith("stale")


def _recover_shards(store: Store) -> tuple[list[str], list[str]]:
    """Damaged shards written again from uncompressed FAISS files (store/recover.py): (repaired, still wrong)."""
    from crossgap_index.errors import StoreError
    from crossgap_index.store.recover import recover_shard

    repaired, problems = [], []
    with store.writing():
        for record in store.catalog.shard_records():
            problem = store.catalog.shards().verify(record)
            if problem is None:
                continue
            try:
                repaired.append(f"{problem}; {recover_shard(store, record)}")
            except StoreError as exc:
                problems.append(f"{problem}; {exc}")
                continue
            after = store.catalog.shards().verify(_current_record(store, record))
            if after:
                problems.append(f"{after} (still, after repair)")
    return repaired, problems


def _shard_leftovers(store: Store, repair: bool) -> tuple[list[str], list[str]]:
    """Shard files no record names (an interrupted compaction's; never read) and dead rows (removed items'
    bytes): notes, not problems; ``repair`` deletes the unrecorded files. (notes, repaired)"""
    catalog = store.catalog
    if not catalog.uses_shards():
        return [], []
    notes, repaired = [], []
    unrecorded = catalog.shards().unrecorded(catalog.shard_records())
    if unrecorded and repair and not store.readonly:
        with store.writing():
            repaired += [
                f"{name}: not in the catalog (an interrupted compaction's); deleted"
                for name in remove_unrecorded(catalog)
            ]
    elif unrecorded:
        names = ", ".join(f"{p.parent.name}/{p.name}" for p in unrecorded[:5])
        notes.append(
            f"{names}: not in the catalog (left by an interrupted compaction, never read); the next writer deletes it"
        )
    uses = shard_use(catalog)
    dead = sum(u.record.rows - u.live for u in uses)
    if dead:
        total = sum(u.record.rows for u in uses)
        notes.append(
            f"vectors/: {dead} of {total} shard rows belong to removed items; `cgx compact` gives their bytes back"
        )
    return notes, repaired


def _current_record(store: Store, record: ShardRecord) -> ShardRecord:
    """The shard's record as the catalog now has it."""
    return next(r for r in store.catalog.shard_records() if (r.stream, r.number) == (record.stream, record.number))


def _faiss_problem(store: Store, name: str, read_shards: bool) -> str | None:
    """What is wrong with one FAISS file on disk, judged against the manifest and the catalog; None: sound.
    ``read_shards``: also compare it with the shards' vectors (only when they are sound): an exact file's
    every vector, and the self-search."""
    path = store.path / f"{name}.faiss"
    manifest, catalog = store.manifest, store.catalog
    if not path.is_file():
        return "missing"
    if manifest.generation != catalog.generation:
        return f"stale (saved at generation {manifest.generation}, the catalog is at {catalog.generation})"
    expected = manifest.files.get(name)
    if expected is None:
        return "no checksum in the manifest"
    try:
        actual = file_record(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if actual["size"] != expected["size"]:
        return f"size {actual['size']} bytes, the manifest records {expected['size']} (truncated or replaced)"
    if actual["crc32"] != expected["crc32"]:
        return "checksum differs from the manifest (damaged)"
    read, why = read_verified(path, manifest.dim, expected)
    if read is None:
        return why
    index = VectorIndex(manifest.dim, manifest.factories[name], read, mapped=True)
    stored_ids = _catalog_ids(store, name)
    if index.ntotal != len(stored_ids):
        return f"holds {index.ntotal} vectors, the catalog {len(stored_ids)}"
    faiss_ids = np.sort(faiss.vector_to_array(index.index.id_map))
    if not np.array_equal(faiss_ids, stored_ids):
        return "holds other ids than the catalog"
    if not read_shards:
        return None
    inner = faiss.downcast_index(index.index.index)
    if isinstance(inner, faiss.IndexFlat) and index.ntotal:
        # a chunk at a time (memory: one chunk of each side, not two copies of every vector): the k-th
        # smallest id sits at position order[k], and the catalog's chunks come in id order
        order = np.argsort(faiss.vector_to_array(index.index.id_map), kind="stable")
        done = 0
        for ids, vectors in store.vector_chunks(name):
            held = inner.reconstruct_batch(order[done : done + len(ids)])
            if not np.allclose(held, vectors, atol=VECTOR_TOLERANCE):
                return "holds other vectors than the catalog"
            done += len(ids)
        return None  # every id's own vector compared exactly: more than a self-search of a sample shows
    return _self_search_problem(store, name, index, stored_ids)


def _self_search_problem(store: Store, name: str, index: VectorIndex, stored_ids: np.ndarray) -> str | None:
    """A seeded sample of stored vectors, read from the shards, searched in the index: each must find its own
    id (see the SELF_SEARCH constants). None when they do."""
    if not len(stored_ids):
        return None
    rng = np.random.default_rng(SELF_SEARCH_SEED)
    sample = np.sort(rng.choice(stored_ids, min(len(stored_ids), SELF_SEARCH_SAMPLE), replace=False))
    exact = _searches_exactly(index)
    k = SELF_SEARCH_EXACT_K if exact else SELF_SEARCH_CANDIDATES
    missed: list[np.ndarray] = []
    for start in range(0, len(sample), SELF_SEARCH_CHUNK):
        ids = sample[start : start + SELF_SEARCH_CHUNK]
        scores, found = index.search(store.catalog_vectors(name, ids), k)
        own = found == ids[:, None]
        if exact:  # its own id, scored as well as the best (an equal vector may come first)
            own &= scores >= scores[:, :1] - SELF_SCORE_TOLERANCE
        tied = scores[:, -1] >= scores[:, 0] - SELF_SCORE_TOLERANCE  # all k equal vectors: its own may be further
        missed.append(ids[~(own.any(axis=1) | tied)])
    lost = np.concatenate(missed)
    allowed = 0 if exact else int(SELF_SEARCH_APPROXIMATE_MISSES * len(sample))
    if len(lost) <= allowed:
        return None
    return (
        f"ids no longer match their vectors: {len(lost)} of {len(sample)} sampled stored vectors do not find "
        f"their own id (item {lost[0]} first)"
    )


def _searches_exactly(index: VectorIndex) -> bool:
    """Flat, or IVF-Flat over a flat quantizer: vectors held as they are, a vector's own list probed first."""
    inner = faiss.downcast_index(index.index.index)
    if isinstance(inner, faiss.IndexIVFFlat):
        return isinstance(faiss.downcast_index(inner.quantizer), faiss.IndexFlat)
    return isinstance(inner, faiss.IndexFlat)


def _catalog_ids(store: Store, name: str) -> np.ndarray:
    return store.catalog.ids(name, derived=name in DERIVED)


def _vector_norm_problems(store: Store, name: str) -> list[str]:
    """Stored vectors that are not unit-norm, a chunk at a time (memory: one chunk at any index size)."""
    bad = np.concatenate(
        [np.zeros(0, np.int64)]
        + [ids[np.abs(np.linalg.norm(v, axis=1) - 1.0) > NORM_TOLERANCE] for ids, v in store.vector_chunks(name)]
    )
    if not len(bad):
        return []
    shown = ", ".join(map(str, bad[:5].tolist()))
    return [f"{name}: {len(bad)} stored vectors are not unit-norm (ids {shown}); remove and re-add those items"]

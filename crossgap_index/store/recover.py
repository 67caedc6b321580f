"""Recover a vector shard whose bytes no longer match their checksum, from FAISS files that still hold
the same vectors uncompressed.

Shards are the index's truth, not derived data, so in general a damaged one can only be restored from a
backup. But a FAISS file that verifies against the manifest at the catalog's current generation was
built from exactly the shards' vectors; when it is ``Flat`` or ``IVF-Flat`` it holds them as they were
(float32: the float16 values of a float16 shard exactly), so the live rows of the shard can be written
again from it. Anything less (compressed codes, a stale or damaged FAISS file, a live row no file holds)
is refused, and the shard stays as found.
"""

from __future__ import annotations

import os
import zlib

import faiss
import numpy as np

from crossgap_index.errors import StoreError
from crossgap_index.store.directory import Store
from crossgap_index.store.shards import SHARD_ROWS, ShardRecord, fsync_dir
from crossgap_index.store.vectors import VectorIndex


def recover_shard(store: Store, record: ShardRecord) -> str:
    """Rewrite the live rows of a damaged shard from verified uncompressed FAISS files; returns what was done.
    The caller holds ``store.writing()``. Raises StoreError (one line) when the rows cannot all be recovered."""
    catalog, shards = store.catalog, store.catalog.shards()
    path = shards.path(record.stream, record.number)
    first = record.number * SHARD_ROWS
    live = catalog.rows_in_slots(record.stream, first, first + record.rows)
    data = np.zeros((record.rows, shards.dim), shards.numpy_dtype)
    if path.exists():
        old = np.fromfile(path, shards.numpy_dtype, count=record.rows * shards.dim)
        data.reshape(-1)[: len(old)] = old  # dead rows keep their bytes; live ones are all written below
    for name in sorted({r[2] for r in live}):
        ids = np.array([r[0] for r in live if r[2] == name], np.int64)
        slots = np.array([r[1] for r in live if r[2] == name], np.int64)
        data[slots - first] = _held_vectors(store, name, ids).astype(shards.numpy_dtype)
    content = memoryview(np.ascontiguousarray(data)).cast("B")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    crc = zlib.crc32(content)
    catalog.set_shard_checksum(record, crc)
    catalog.commit_bookkeeping()  # the vectors FAISS was built from: the generation stays, files stay valid
    shards.forget(record.stream, record.number)
    return f"{path.parent.name}/{path.name}: {len(live)} vectors written again from the FAISS files"


def _held_vectors(store: Store, name: str, ids: np.ndarray) -> np.ndarray:
    """The vectors of ``ids`` as a verified, current, uncompressed FAISS file of ``name`` holds them."""
    manifest = store.manifest
    where = f"{name}.faiss"
    expected = manifest.files.get(name) if manifest.generation == store.catalog.generation else None
    count = store.stored_count(name)
    index = VectorIndex.load(store.path / where, manifest.dim, manifest.factories[name], expected, count)
    if index is None:
        raise StoreError(f"{where} is missing, stale or damaged: it cannot restore the shard ({_ADVICE})")
    table = faiss.vector_to_array(index.index.id_map)
    order = np.argsort(table, kind="stable")
    at = np.searchsorted(table, ids, sorter=order)
    held = (at < len(table)) & (table[order[np.minimum(at, len(table) - 1)]] == ids)
    if not held.all():
        raise StoreError(f"{where} does not hold item {ids[~held][0]}: it cannot restore the shard ({_ADVICE})")
    positions = order[at]
    inner = faiss.downcast_index(index.index.index)
    if isinstance(inner, faiss.IndexFlat):
        return inner.reconstruct_batch(positions)
    if isinstance(inner, faiss.IndexIVFFlat):
        return _ivf_flat_rows(inner, positions)
    raise StoreError(f"{where} holds compressed codes, not the vectors: it cannot restore the shard ({_ADVICE})")


def _ivf_flat_rows(ivf: faiss.IndexIVFFlat, positions: np.ndarray) -> np.ndarray:
    """The float32 vectors an IVF-Flat holds at ``positions``, read from its lists' codes (an IVF-Flat code is
    the vector itself) where they lie, mapped or not: one pass over the lists' ids, no copy of the index."""
    row_of = np.full(int(ivf.ntotal), -1, np.int64)
    row_of[positions] = np.arange(len(positions))
    out = np.empty((len(positions), ivf.d), np.float32)
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        if not size:
            continue
        rows = row_of[faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)]
        wanted = rows >= 0
        if wanted.any():
            codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(number), size * ivf.code_size)
            out[rows[wanted]] = codes.view(np.float32).reshape(size, ivf.d)[wanted]
    return out


_ADVICE = "restore the index directory from a backup, or build it again"

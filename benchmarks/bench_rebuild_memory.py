"""Peak memory of rebuilding a FAISS index from what the index stores (the path an open takes when a FAISS
file is missing, as `cgx check --repair` / ``Store.rebuild`` do), one phase per process so each phase's
VmHWM is its own. Run each phase with PYTHONPATH pointing at the release to measure:

    PYTHONPATH=/work/wt/prev python benchmarks/bench_rebuild_memory.py make-legacy DIR --n 1000000
    PYTHONPATH=/work/wt/prev python benchmarks/bench_rebuild_memory.py rebuild DIR      # previous release
    PYTHONPATH=$PWD          python benchmarks/bench_rebuild_memory.py migrate DIR      # this release
    PYTHONPATH=$PWD          python benchmarks/bench_rebuild_memory.py rebuild DIR
    (and ``store-rebuild DIR`` under either: ``Store.rebuild`` alone, FAISS files not loaded;
    ``compact DIR --remove 0.3`` under this release: remove 30% of the items at random, then compact;
    ``save DIR`` then ``check DIR``: `cgx check`'s memory with the FAISS files saved)

``make-legacy`` creates the index with the previous release's Store (catalog schema 1, vectors as BLOBs)
and inserts random unit vectors straight into its catalog, then bumps the generation and deletes the
FAISS files, so the next open rebuilds every collection from the catalog. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

CHUNK = 16_384


def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def make_legacy(path: Path, n: int, dim: int, factory: str) -> dict:
    from crossgap_index.store.directory import Store

    store = Store.create(path, "synthetic", dim, factory)
    store.close()
    conn = sqlite3.connect(path / "catalog.sqlite")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
    assert "vector" in columns, "make-legacy needs the previous release on PYTHONPATH"
    rng = np.random.default_rng(0)
    for first in range(0, n, CHUNK):
        v = rng.standard_normal((min(CHUNK, n - first), dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        conn.executemany(
            "INSERT INTO items (modality, path, content_hash, size, mtime_ns, vector) VALUES ('image', ?, ?, 1, 1, ?)",
            ((f"/v/{first + i}", f"{first + i:032x}", row.tobytes()) for i, row in enumerate(v)),
        )
        conn.commit()
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    conn.commit()
    conn.close()
    for faiss_file in path.glob("*.faiss"):
        faiss_file.unlink()
    return {"rows": n, "dim": dim, "factory": factory}


def rebuild(path: Path) -> dict:
    from crossgap_index.store.directory import Store

    for faiss_file in path.glob("*.faiss"):  # the path a missing FAISS file takes
        faiss_file.unlink()
    start = time.perf_counter()
    store = Store.open(path, readonly=True)
    seconds = time.perf_counter() - start
    out = {
        "rebuilt": store.rebuilt,
        "ntotal": store.indexes["image"].ntotal,
        "factory": store.indexes["image"].resolved_factory,
        "seconds": round(seconds, 1),
    }
    store.close()
    return out


def store_rebuild(path: Path) -> dict:
    """``Store.rebuild("image")`` (what `cgx check --repair` runs on a damaged file, and a removal that FAISS
    cannot apply) on a Store whose FAISS files were not loaded: only the rebuild's own memory counts."""
    from crossgap_index.store.directory import Store
    from crossgap_index.store.vectors import VectorIndex

    def empty(self: Store) -> None:
        self.indexes = {n: VectorIndex(self.manifest.dim, f) for n, f in self.manifest.factories.items()}
        self._loaded_generation = self.catalog.generation

    Store._load_indexes = empty
    store = Store.open(path, readonly=True)
    before = vm_hwm_kib()
    start = time.perf_counter()
    store.rebuild("image")
    out = {
        "ntotal": store.indexes["image"].ntotal,
        "factory": store.indexes["image"].resolved_factory,
        "seconds": round(time.perf_counter() - start, 1),
        "vm_hwm_before_rebuild_mib": round(before / 1024, 1),
    }
    store.close()
    return out


def compact(path: Path, fraction: float) -> dict:
    """Remove ``fraction`` of the items at random (catalog rows only), then ``Store.compact(0.2)``; FAISS
    files are not loaded, so the figures are the compaction's own."""
    from crossgap_index.store.directory import Store
    from crossgap_index.store.vectors import VectorIndex

    def empty(self: Store) -> None:
        self.indexes = {n: VectorIndex(self.manifest.dim, f) for n, f in self.manifest.factories.items()}
        self._loaded_generation = self.catalog.generation

    Store._load_indexes = empty
    store = Store.open(path)
    ids = store.catalog.ids("image")
    gone = np.random.default_rng(1).choice(ids, int(len(ids) * fraction), replace=False)
    with store.writing():
        store.catalog.conn.executemany("DELETE FROM items WHERE id = ?", ((int(i),) for i in gone))
        store.catalog.conn.commit()
    shards = path / "vectors"
    before = sum(p.stat().st_size for p in shards.iterdir())
    start = time.perf_counter()
    report = store.compact(0.2)
    seconds = time.perf_counter() - start
    problems = store.catalog.shard_problems(full=True)
    store.close()
    return {
        "removed": len(gone),
        "rows_copied": report.rows_copied,
        "seconds": round(seconds, 1),
        "vectors_bytes_before": before,
        "vectors_bytes_after": sum(p.stat().st_size for p in shards.iterdir()),
        "crc32_problems_after": problems,
    }


def save(path: Path) -> dict:
    """A writable open: migrates an old index, rebuilds missing FAISS files and saves them."""
    from crossgap_index.store.directory import Store

    start = time.perf_counter()
    store = Store.open(path)
    out = {"rebuilt": store.rebuilt, "seconds": round(time.perf_counter() - start, 1)}
    store.close()
    return out


def check(path: Path) -> dict:
    """`cgx check` (read-only, without the image-file walk) on an index whose FAISS files are saved."""
    from crossgap_index.store.check import check_store
    from crossgap_index.store.directory import Store

    start = time.perf_counter()
    store = Store.open(path, readonly=True)
    report = check_store(store, files=False)
    store.close()
    return {"ok": report.ok, "problems": report.problems[:3], "seconds": round(time.perf_counter() - start, 1)}


def migrate(path: Path, dim: int) -> dict:
    from crossgap_index.store.catalog import Catalog
    from crossgap_index.store.lock import IndexLock

    start = time.perf_counter()
    with IndexLock(path).hold():
        catalog = Catalog(path / "catalog.sqlite")
        moved = catalog.migrate_to_shards(dim)
        catalog.close()
    return {"moved": moved, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    phases = ["make-legacy", "rebuild", "store-rebuild", "migrate", "compact", "save", "check"]
    parser.add_argument("phase", choices=phases)
    parser.add_argument("index", type=Path)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--remove", type=float, default=0.3, help="compact: fraction of items removed first")
    args = parser.parse_args()
    if args.phase == "make-legacy":
        result = make_legacy(args.index, args.n, args.dim, args.factory)
    elif args.phase == "rebuild":
        result = rebuild(args.index)
    elif args.phase == "store-rebuild":
        result = store_rebuild(args.index)
    elif args.phase == "compact":
        result = compact(args.index, args.remove)
    elif args.phase == "save":
        result = save(args.index)
    elif args.phase == "check":
        result = check(args.index)
    else:
        result = migrate(args.index, args.dim)
    import crossgap_index

    result.update(
        phase=args.phase,
        code=os.path.dirname(os.path.dirname(crossgap_index.__file__)),
        vm_hwm_mib=round(vm_hwm_kib() / 1024, 1),
        load=os.getloadavg()[0],
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

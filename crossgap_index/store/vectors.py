"""FAISS index per modality: IDMap2 over any index_factory string, inner product on unit vectors.

The index is derived data: ``build`` recreates it from (ids, vectors) held by the catalog,
which is also how approximate indexes are (re)trained and how HNSW "removes" items.

Removal keeps every other id on its own vector: an IVF removes by position in its lists
(store/ivf_removal.py), a flat code array through IDMap2; any other type is rebuilt. How an index is
trained and filled is store/faiss_build.py's.

A saved file is verified (size, crc32) before FAISS parses a byte of it, then memory-mapped
(``IO_FLAG_MMAP_IFC``: codes and inverted lists stay in the page cache, not copied). A file over
LAZY_VERIFY_BYTES is verified and mapped on a background thread started at open; the first use
of the index waits for it, and an index that fails is rebuilt then: no search ever runs on an
unverified file. A mapped index is copied into memory before its first change (FAISS cannot
grow a mapped one).
"""

from __future__ import annotations

import errno
import functools
import math
import os
import re
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import faiss
import numpy as np

from crossgap_index.errors import DiskFullError, StoreError, is_disk_full
from crossgap_index.store.faiss_build import (
    COARSE_EF_SEARCH,
    TRAIN_POINTS_PER_LIST,
    Chunks,
    build_streamed,
    flat_index,
    ivf_of,
    min_training_vectors,
    quiet_training,
    set_coarse_ef_search,
    training_sample,
    training_size,
    unwrapped,
)
from crossgap_index.store.ivf_removal import ivf_position_problem, remove_from_ivf
from crossgap_index.words import StageProgress

__all__ = [  # the store's vector-index names, importable from here as before the build and removal modules
    "AUTO",
    "COARSE_EF_SEARCH",
    "TRAIN_POINTS_PER_LIST",
    "VectorIndex",
    "file_record",
    "ivf_position_problem",
    "min_training_vectors",
    "read_verified",
    "training_sample",
    "training_size",
    "validate_factory",
]

# Below this many vectors exact search is both fast enough and exact; above it, IVF.
EXACT_SEARCH_LIMIT = 100_000
# Above this many, auto stores 8-bit scalar codes (a quarter of fp32's bytes) and re-scores candidates exactly
# from the shards (search/ranking.py); see docs/scaling.md for the measurement behind it.
COMPRESSED_ABOVE = 2_000_000
# Lists of auto's IVF-Flat tier (EXACT_SEARCH_LIMIT < n <= COMPRESSED_ABOVE), whatever n. Adding n rows assigns
# each to its list by brute force, n x lists x d multiply-adds, and k-means on rows-per-list x lists rows costs
# lists^2 x d per iteration: with lists growing as 4·sqrt(n) (the FAISS wiki's rule, 4,096 lists at 1M-2M) the
# build's vectors/s falls as n grows, and at 2M it was 2.6e13 flops, more than two cores do in the 100 s of a
# 20k vectors/s import. 1,024 lists keep the build's rate flat in n and its flops at a quarter (add) and a
# sixteenth (k-means) of 4,096's; a query scans 32 of them, 3% of the rows. Measured (benchmarks/
# bench_train_floor.py, clustered 512-d vectors, recall@10 at nprobe 32 against exact top-10; results/
# train-floor-1m-*.md, train-floor-2m.md; 200k: train-floor-ivf1024.md, train-floor-auto.md), one after another
# on 2 shared cores: at 1M (load 6-10) IVF1024,Flat built in 60-63 s, IVF2048,Flat in 166 s, IVF1024,SQ8 (a
# flat coarse quantizer, re-scored) in 57 s, IVF1024_HNSW32,SQ8 in 247 s (HNSW assignment to 1,024 lists is
# 5x brute force's), recall@10 1.000 for all; at 2M IVF1024,Flat built on 53 CPU-seconds, recall@10 1.000 at
# nprobe 2, 8 and 32; at 200k IVF1024 matched IVF2048's recall (1.000) in 0.23x its build time (27 vs 118 s).
IVF_FLAT_LISTS = 1024
AUTO = "auto"
_PROBE_VECTORS = 64  # vectors of the tiny index a factory string is tried on

# FAISS files larger than this are verified (crc32, ~3 GB/s here) and mapped in the background after open.
LAZY_VERIFY_BYTES = 128 << 20


def auto_factory(n: int) -> str:
    """The documented default: ``Flat`` (exact) up to EXACT_SEARCH_LIMIT vectors, then
    ``IVF{IVF_FLAT_LISTS},Flat`` (a build whose rate does not fall as n grows; see the constant); above
    COMPRESSED_ABOVE, ``IVF{c}_HNSW32,SQ8`` with c = sqrt(n) rounded to a power of two: 8-bit codes
    (exact re-scoring from the shards keeps recall), an HNSW coarse quantizer (assigning 10M vectors to
    lists by brute force would take an hour on 2 cores), and lists few enough to train on a CPU."""
    if n <= EXACT_SEARCH_LIMIT:
        return "Flat"
    if n <= COMPRESSED_ABOVE:
        return f"IVF{IVF_FLAT_LISTS},Flat"
    return f"IVF{2 ** round(math.log2(math.sqrt(n)))}_HNSW32,SQ8"


def default_search_params(factory: str) -> str:
    """Search-time parameters for approximate indexes (recall over speed; override with --search-params)."""
    if factory.startswith("IVF") or ",IVF" in factory:
        return "nprobe=32"
    if factory.startswith("HNSW"):
        return "efSearch=128"
    return ""


def validate_factory(factory: str, dim: int, where: str = "") -> None:
    """Fail early, with one line, on a factory string this store cannot use: one FAISS does not parse,
    one that wraps ids itself (the store adds IDMap2), or one whose index cannot add, search and be
    written and read back: a tiny index is built with it once (per factory and dim) before it is accepted."""
    if factory == AUTO:
        return
    problem = _factory_problem(factory, dim)
    if problem:
        raise StoreError(f"{where}invalid FAISS factory string '{factory}': {problem}")


@functools.lru_cache(maxsize=64)
def _factory_problem(factory: str, dim: int) -> str | None:
    if any(part.strip().startswith("IDMap") for part in factory.split(",")):
        return "the store adds IDMap2 itself; give the factory without IDMap"
    try:
        faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        return "FAISS does not understand it"
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((_PROBE_VECTORS, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, _PROBE_VECTORS + 1, dtype=np.int64)
    try:
        probe = VectorIndex(dim, factory)
        probe.build(ids, vectors)
        probe.search(vectors[:2], 3)
        back = faiss.deserialize_index(faiss.serialize_index(probe.index))
    except (RuntimeError, ValueError, TypeError) as exc:
        return f"a small index built with it fails ({_first_line(exc)})"
    if not isinstance(back, faiss.IndexIDMap2) or back.ntotal != _PROBE_VECTORS:
        return "a small index built with it does not read back as written"
    return None


def _first_line(exc: BaseException) -> str:
    """FAISS's own reason without its C++ signature and source location."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return re.split(r"\.(?:cpp|h):\d+: ", text)[-1][:160]


def gpu_count() -> int:
    """GPUs this faiss can search on: 0 with a faiss-cpu build or on a machine without one."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


class VectorIndex:
    """One modality's FAISS index with stable int64 ids.

    The CPU index is the one written and saved. When a GPU is present (decided when the index is
    opened) searches go to a GPU copy of the inner index, made on first search after each change;
    index types FAISS cannot put on a GPU (HNSW) stay on the CPU. Not exercised here: no GPU."""

    def __init__(
        self,
        dim: int,
        factory: str,
        index: faiss.Index | None = None,
        mapped: bool = False,
        loading: tuple[Future, Callable[[], faiss.Index], int] | None = None,
    ):
        """``mapped``: ``index`` reads a memory-mapped file. ``loading``: (the background load's future,
        the rebuild to fall back on, the count the file must hold) instead of an index."""
        self.dim = dim
        self.factory = factory
        self.use_gpu = gpu_count() > 0
        self._gpu: tuple | None = None  # (resources, GPU inner index, position -> id) once made
        self._mapped = mapped
        self._loading = loading
        self._load_lock = threading.Lock()
        self._search_params = ""
        if loading is None:
            self._index = index if index is not None else self._empty(0)
            self.search_params = default_search_params(self.resolved_factory)

    @property
    def index(self) -> faiss.Index:
        """The FAISS index; while a background load runs, waits for it (and rebuilds if the file failed)."""
        if self._loading is not None:
            self._finish_loading()
        return self._index

    @index.setter
    def index(self, index: faiss.Index) -> None:
        """A new (built) index: in memory, and it replaces whatever a background load would have given."""
        with self._load_lock:
            self._index, self._mapped, self._loading = index, False, None

    def _finish_loading(self) -> None:
        with self._load_lock:
            if self._loading is None:
                return
            future, fallback, _ = self._loading
            try:
                loaded = future.result()
            except (OSError, RuntimeError):
                loaded = None
            if loaded is None:
                self._index, self._mapped = fallback(), False
            else:
                self._index, self._mapped = loaded, True
            self._loading = None
            # parameters set while the file loaded (a library user's nprobe) win over the defaults
            self.search_params = self._search_params or default_search_params(self.resolved_factory)

    @property
    def ready(self) -> bool:
        """Whether the index is in hand (no background load pending)."""
        return self._loading is None

    def _owned(self) -> faiss.Index:
        """The index, copied into memory first if it reads a mapped file (FAISS aborts growing a mapped one)."""
        index = self.index
        if self._mapped:
            index = faiss.deserialize_index(faiss.serialize_index(index))
            self._index, self._mapped = index, False
            self.search_params = self._search_params
        return index

    @property
    def search_params(self) -> str:
        return self._search_params

    @search_params.setter
    def search_params(self, params: str) -> None:
        """Applied to the index once here (and on rebuild), not parsed again on every query."""
        self._search_params = params
        self._gpu = None
        if params and self._loading is None:
            faiss.ParameterSpace().set_index_parameters(self.index, params)

    @property
    def resolved_factory(self) -> str:
        if self.factory == AUTO:
            return auto_factory(self.ntotal)
        return "Flat" if self.exact_fallback else self.factory

    @property
    def ntotal(self) -> int:
        if self._loading is not None:
            return self._loading[2]  # what the file is verified to hold (or the rebuild, from the same catalog)
        return int(self.index.ntotal)

    def _empty(self, n: int) -> faiss.Index:
        factory = auto_factory(n) if self.factory == AUTO else self.factory
        index = faiss.index_factory(self.dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
        set_coarse_ef_search(index)
        quiet_training(index)
        return index

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Recreate the index from scratch (training it on ``vectors`` when the factory needs it).
        Too few vectors to train the factory (IVF1024 on 150 images): exact search until there are."""
        index = self._empty(len(ids))
        if not index.is_trained:
            if len(ids) < min_training_vectors(index):
                index = flat_index(self.dim)
            else:
                try:
                    index.train(np.ascontiguousarray(vectors, np.float32))
                except RuntimeError:
                    index = flat_index(self.dim)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
        self.index = index
        self.search_params = default_search_params(self.resolved_factory)

    def build_chunked(
        self,
        n: int,
        chunks: Chunks,
        swap: Callable[[], AbstractContextManager] = nullcontext,
        progress: StageProgress | None = None,
    ) -> None:
        """``build``'s streaming twin for large collections (``faiss_build.build_streamed``: train on a sample,
        then add a block at a time). ``swap``: held while the new index replaces the old one. ``progress``:
        told each phase (train, add) as it goes."""
        index = build_streamed(self._empty(n), self.dim, n, chunks, progress)
        with swap():
            self.index = index
            self.search_params = default_search_params(self.resolved_factory)

    @property
    def exact_fallback(self) -> bool:
        """Whether an approximate factory is standing in as Flat because it could not be trained yet."""
        return self.factory not in (AUTO, "Flat") and self._current_type() == "Flat"

    def needs_rebuild(self) -> bool:
        """An untrained approximate index, or an auto index whose size moved it to another type."""
        if not self.index.is_trained:
            return True
        if self.factory != AUTO:
            return self.exact_fallback and self.ntotal >= min_training_vectors(self._empty(self.ntotal))
        return self._current_type() != auto_factory(self.ntotal)

    def _current_type(self) -> str:
        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexIVF):
            coarse = "_HNSW32" if isinstance(faiss.downcast_index(inner.quantizer), faiss.IndexHNSW) else ""
            codes = "Flat" if isinstance(inner, faiss.IndexIVFFlat) else "SQ8"
            if not isinstance(inner, faiss.IndexIVFFlat | faiss.IndexIVFScalarQuantizer):
                codes = "other"
            return f"IVF{inner.nlist}{coarse},{codes}"
        if isinstance(inner, faiss.IndexFlat):
            return "Flat"
        return "other"

    def can_add(self) -> bool:
        return bool(self.index.is_trained)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._gpu = None
        self._owned().add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ids in place, leaving every other id on its own vector; False when this index type cannot
        (HNSW, a refined or fast-scan index, ...): the caller rebuilds."""
        self._gpu = None
        index = self._owned()
        ids = np.asarray(ids, np.int64)
        if ivf_of(index) is not None:
            return remove_from_ivf(index, ids)
        if not isinstance(unwrapped(index.index), faiss.IndexFlatCodes):
            return False
        try:
            index.remove_ids(ids)
        except RuntimeError:
            return False
        return True

    def ids(self) -> np.ndarray:
        """Every id this index holds (IDMap2's table, in insertion order)."""
        return faiss.vector_to_array(faiss.downcast_index(self.index).id_map).astype(np.int64, copy=False)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; missing slots have id -1."""
        k = min(k, self.ntotal)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        queries = np.ascontiguousarray(queries, np.float32)
        replica = self._gpu_replica() if self.use_gpu else None
        if replica is None:
            return self.index.search(queries, k)
        _, inner, position_ids = replica
        scores, positions = inner.search(queries, k)
        return scores, np.where(positions >= 0, position_ids[np.maximum(positions, 0)], -1)

    def _gpu_replica(self) -> tuple | None:
        """The inner index on GPU 0 plus the IDMap2's position -> id table (None: this type stays on CPU)."""
        if self._gpu is None:
            resources = faiss.StandardGpuResources()
            try:
                inner = faiss.index_cpu_to_gpu(resources, 0, faiss.downcast_index(self.index.index))
            except RuntimeError:
                self.use_gpu = False
                return None
            if self._search_params:
                faiss.GpuParameterSpace().set_index_parameters(inner, self._search_params)
            self._gpu = (resources, inner, faiss.vector_to_array(self.index.id_map))
        return self._gpu

    def save(self, path: Path) -> dict[str, int]:
        """Atomic and durable: write beside, flush, rename over. Returns the file's size and crc32
        for the manifest. A failed write (a full disk) leaves no ``.tmp`` behind and names the cause."""
        tmp = path.with_name(path.name + ".tmp")
        try:
            faiss.write_index(self.index, str(tmp))
            record = file_record(tmp, fsync=True)
            os.replace(tmp, path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise DiskFullError(f"disk full: cannot write {path} ({os.strerror(errno.ENOSPC)})") from exc
            raise
        return record

    @classmethod
    def load(
        cls,
        path: Path,
        dim: int,
        factory: str,
        expected: dict[str, int] | None,
        count: int | None = None,
        fallback: Callable[[], faiss.Index] | None = None,
    ) -> VectorIndex | None:
        """The saved index, or None when the file is missing, differs from the manifest's record
        (truncated, bit-flipped, replaced), holds another ``count`` than given, or FAISS cannot read it:
        the caller rebuilds from the catalog. With ``fallback`` (and ``count``), a file over
        LAZY_VERIFY_BYTES of the right size is verified and mapped in the background: returned at once,
        the index waits for it on first use and takes ``fallback()`` (a rebuild) if it fails."""
        try:
            if expected is None or path.stat().st_size != expected.get("size"):
                return None
        except OSError:
            return None
        if fallback is not None and count is not None and expected["size"] > LAZY_VERIFY_BYTES:
            future: Future = Future()

            def verify_then_map() -> None:
                try:
                    future.set_result(read_verified(path, dim, expected, count)[0])
                except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for it
                    future.set_exception(exc)

            threading.Thread(target=verify_then_map, name=f"verify {path.name}", daemon=True).start()
            return cls(dim, factory, loading=(future, fallback, count))
        index = read_verified(path, dim, expected, count)[0]
        return cls(dim, factory, index, mapped=True) if index is not None else None


def read_verified(
    path: Path, dim: int, expected: dict[str, int], count: int | None = None
) -> tuple[faiss.Index | None, str | None]:
    """The file at ``path`` memory-mapped by FAISS, only after its size and crc32 match ``expected``
    (and it is the same file afterwards: a writer renaming another over it in between is caught), holding
    ``count`` vectors each under its own id: (index, None), or (None, why it is refused)."""
    try:
        before = path.stat()
        if file_record(path) != {"size": expected.get("size"), "crc32": expected.get("crc32")}:
            return None, "differs from the manifest's size and checksum"
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        after = path.stat()
    except (OSError, RuntimeError):
        return None, "FAISS cannot read it"
    if (before.st_ino, before.st_mtime_ns) != (after.st_ino, after.st_mtime_ns):
        return None, "was replaced while it was read"
    if index.d != dim or not isinstance(index, faiss.IndexIDMap2):
        return None, f"is not an IDMap2 index of {dim}-d vectors"
    if count is not None and index.ntotal != count:
        return None, f"holds {index.ntotal} vectors, not {count}"
    problem = ivf_position_problem(index)
    if problem:
        return None, problem
    return index, None


def file_record(path: Path, fsync: bool = False) -> dict[str, int]:
    """Size and crc32 of a file, read in blocks into one reused buffer (~3 GB/s here): a bit flip anywhere
    shows, and the file is judged before FAISS parses a byte of it. Not through a memory map: the mapped
    pages would count against this process's resident set beside FAISS's own map of the same file."""
    crc = 0
    with path.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buffer = bytearray(max(1, min(size, _CRC_BLOCK)))  # a small file's open zeroes no 8 MiB it never fills
        view = memoryview(buffer)
        while read := f.readinto(buffer):
            crc = zlib.crc32(view[:read], crc)
        if fsync:
            os.fsync(f.fileno())
    return {"size": size, "crc32": crc}


_CRC_BLOCK = 8 << 20

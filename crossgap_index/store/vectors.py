"""FAISS index per modality: IDMap2 over any index_factory string, inner product on unit vectors.

The index is derived data: ``build`` recreates it from (ids, vectors) held by the catalog,
which is also how approximate indexes are (re)trained and how HNSW "removes" items.

IDMap2 keeps the ids in a table by position and the wrapped index numbers its vectors by position. FAISS's
``IndexIDMap2.remove_ids`` closes the gaps in the table, which is right only when the wrapped index closes
them too: flat code arrays (Flat, PQ, SQ) do; IVF lists keep the positions they were added under. So an IVF
removes by position in its lists and renumbers their entries (``_remove_from_ivf``); any other type is
rebuilt. A saved IVF whose list entries are not exactly the positions 0..n-1 (written by a version that
removed through IDMap2) is refused when read and rebuilt (``ivf_position_problem``).

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
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import faiss
import numpy as np

from crossgap_index.errors import DiskFullError, StoreError, is_disk_full

# Below this many vectors exact search is both fast enough and exact; above it, IVF.
EXACT_SEARCH_LIMIT = 100_000
# Above this many, auto stores 8-bit scalar codes (a quarter of fp32's bytes) and re-scores candidates exactly
# from the shards (search/ranking.py); see docs/scaling.md for the measurement behind it.
COMPRESSED_ABOVE = 2_000_000
AUTO = "auto"
# Training rows per IVF-Flat list (a seeded random sample of at most this many per list; k-means time is
# nlist x rows x d). The rule: fewer rows per list only where recall@10 stays within 0.001 of 256's (FAISS's
# own max_points_per_centroid) on the same vectors. Measured (benchmarks/bench_train_floor.py, 200k clustered
# 512-d vectors, results/train-floor-*.md): recall@10 was 1.000 at the default nprobe 32 for IVF1024,Flat at
# 64, 100 and 256 rows per list and for IVF2048,Flat at 64 and 256 (100 is every row there); at nprobe 2
# IVF1024 lost 0.0003 (64) and 0.0007 (100), and its build took 0.43x the time at 100. 100 is also
# autofaiss's sample for this factory, which matched 256's recall at 1M (IVF4096,Flat, issue 26); 64 held
# here too but has no measurement at 1M.
TRAIN_POINTS_PER_LIST = 100
TRAIN_POINTS_OTHER = 65_536  # trainable non-IVF factories (PQ, PCA, ...)
# IVF over compressed codes: candidates are re-scored exactly, so a coarser k-means (64 rows per list, above
# FAISS's warning floor of 39) does; it is a quarter of the training time, which is nlist x rows x d.
TRAIN_POINTS_PER_LIST_COMPRESSED = 64
TRAIN_SEED = 1234
# efSearch of an HNSW coarse quantizer (auto's IVF{c}_HNSW32 above COMPRESSED_ABOVE): it picks the list each
# vector is added to, and a wrong list is never probed by the queries near it. FAISS's default of 16 put 3.4%
# of 10M clustered rows in a list other than their nearest centroid's, and recall@10 stayed at 0.949-0.951
# for nprobe 32 to 128 and 100 to 400 re-scored candidates; 64 finds the nearest centroid for 99.95% of them
# (benchmarks/results/store.md, "`auto`'s own factory at 10M"). Saved with the index: queries search it at 64 too.
COARSE_EF_SEARCH = 64
_PROBE_VECTORS = 64  # vectors of the tiny index a factory string is tried on

Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # a fresh pass of (ids, vectors) chunks
# FAISS files larger than this are verified (crc32, ~3 GB/s here) and mapped in the background after open.
LAZY_VERIFY_BYTES = 128 << 20


def auto_factory(n: int) -> str:
    """The documented default: ``Flat`` (exact) up to EXACT_SEARCH_LIMIT vectors, then ``IVF{c},Flat``
    with c = 4 * sqrt(n) rounded to a power of two (the FAISS wiki's rule of thumb); above
    COMPRESSED_ABOVE, ``IVF{c}_HNSW32,SQ8`` with c = sqrt(n) rounded to a power of two: 8-bit codes
    (exact re-scoring from the shards keeps recall), an HNSW coarse quantizer (assigning 10M vectors to
    lists by brute force would take an hour on 2 cores), and lists few enough to train on a CPU."""
    if n <= EXACT_SEARCH_LIMIT:
        return "Flat"
    if n <= COMPRESSED_ABOVE:
        return f"IVF{2 ** round(math.log2(4 * math.sqrt(n)))},Flat"
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
        _set_coarse_ef_search(index)
        _quiet_training(index)
        return index

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Recreate the index from scratch (training it on ``vectors`` when the factory needs it).
        Too few vectors to train the factory (IVF1024 on 150 images): exact search until there are."""
        index = self._empty(len(ids))
        if not index.is_trained:
            if len(ids) < min_training_vectors(index):
                index = _flat(self.dim)
            else:
                try:
                    index.train(np.ascontiguousarray(vectors, np.float32))
                except RuntimeError:
                    index = _flat(self.dim)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
        self.index = index
        self.search_params = default_search_params(self.resolved_factory)

    def build_chunked(self, n: int, chunks: Chunks, swap: Callable[[], AbstractContextManager] = nullcontext) -> None:
        """``build``'s streaming twin for large collections: train on a random sample of the ``n`` rows
        (all of them, in order, when the sample would be the whole set: then it equals ``build``), then
        add a chunk at a time. Two passes over ``chunks``; memory: the sample or the index, not both
        plus a full copy of every vector. ``swap``: held while the new index replaces the old one."""
        index = self._empty(n)
        if not index.is_trained:
            if n < min_training_vectors(index):
                index = _flat(self.dim)
            else:
                try:
                    index.train(training_sample(chunks(), n, training_size(index, n)))
                except RuntimeError:
                    index = _flat(self.dim)
        _reserve(index, n)
        for ids, vectors in chunks() if n else ():
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
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
        if _ivf(index) is not None:
            return _remove_from_ivf(index, ids)
        if not isinstance(_unwrapped(index.index), faiss.IndexFlatCodes):
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


def ivf_position_problem(index: faiss.Index) -> str | None:
    """For IDMap2 over an IVF: whether the lists' entries are exactly the positions 0..n-1 of the id table,
    each once (what IDMap2 needs to name each vector's id); None when they are, or the index is no IVF.
    One pass over the lists' ids: O(n) time, 8 bytes per vector."""
    ivf = _ivf(index)
    if ivf is None:
        return None
    n = int(index.ntotal)
    sizes = [ivf.invlists.list_size(number) for number in range(ivf.nlist)]
    if int(ivf.ntotal) != n or sum(sizes) != n:
        return _MISNUMBERED
    held = np.empty(n, np.int64)
    filled = 0
    for number, size in enumerate(sizes):
        if size:
            held[filled : filled + size] = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)
            filled += size
    if n and (held.min() < 0 or held.max() >= n or np.bincount(held, minlength=n).max() != 1):
        return _MISNUMBERED
    return None


_MISNUMBERED = (
    "its IVF lists do not hold each vector under its own position (a removal by an earlier version moved "
    "ids onto other items' vectors)"
)


def file_record(path: Path, fsync: bool = False) -> dict[str, int]:
    """Size and crc32 of a file, read in blocks into one reused buffer (~3 GB/s here): a bit flip anywhere
    shows, and the file is judged before FAISS parses a byte of it. Not through a memory map: the mapped
    pages would count against this process's resident set beside FAISS's own map of the same file."""
    crc = 0
    buffer = bytearray(_CRC_BLOCK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        while read := f.readinto(buffer):
            crc = zlib.crc32(view[:read], crc)
        if fsync:
            os.fsync(f.fileno())
    return {"size": size, "crc32": crc}


_CRC_BLOCK = 8 << 20


def min_training_vectors(index: faiss.Index) -> int:
    """Fewest vectors FAISS accepts to train ``index``: an IVF quantiser needs one per list, a product
    quantiser 2^nbits per sub-quantiser; 0 for indexes that need no training."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if inner.is_trained:
        return 0
    need = 1
    if isinstance(inner, faiss.IndexIVF):
        need = max(need, inner.nlist)
        inner = faiss.downcast_index(inner)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        need = max(need, 1 << pq.nbits)
    return need


def _unwrapped(index: faiss.Index) -> faiss.Index:
    """The index under any pre-transforms (PCA, OPQ, ...), downcast to its own type."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF inside an IDMap2 (under pre-transforms), or None."""
    inner = _unwrapped(index.index) if isinstance(index, faiss.IndexIDMap2) else _unwrapped(index)
    return inner if isinstance(inner, faiss.IndexIVF) else None


def _remove_from_ivf(index: faiss.IndexIDMap2, ids: np.ndarray) -> bool:
    """Remove ``ids`` from IDMap2 over an in-memory IVF, keeping each remaining id on its own vector: the
    lists drop the removed positions, then every entry is renumbered to its position in the shortened id
    table (the position minus the removed positions below it), as IDMap2 shortens the table. False (nothing
    changed) for lists this cannot renumber in place (not plain arrays, or a direct map to keep): rebuild."""
    ivf = _ivf(index)
    if not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.ArrayInvertedLists):
        return False
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        return False
    table = faiss.vector_to_array(index.id_map)
    gone = np.isin(table, ids)
    if not gone.any():
        return True
    positions = np.ascontiguousarray(np.flatnonzero(gone), np.int64)
    try:
        index.index.remove_ids(faiss.IDSelectorBatch(len(positions), faiss.swig_ptr(positions)))
    except RuntimeError:  # an IVF type that cannot remove refuses before it changes anything
        return False
    renumbered = np.cumsum(~gone) - 1
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        if size:
            held = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)  # the list's own (writable) array
            held[:] = renumbered[held]
    kept = table[~gone]
    faiss.copy_array_to_vector(kept, index.id_map)
    index.ntotal = len(kept)
    index.construct_rev_map()
    return True


def _quiet_training(index: faiss.Index) -> None:
    """No k-means warnings on the user's terminal: FAISS prints one whenever it trains with fewer than
    ``min_points_per_centroid`` (39) rows per centroid, as small collections and the factory probe do. The
    threshold only gates that message (the clustering itself is the same), so it is lowered to 1."""
    inner = _unwrapped(index.index) if isinstance(index, faiss.IndexIDMap2) else _unwrapped(index)
    if isinstance(inner, faiss.IndexHNSW) and inner.storage is not None:
        inner = faiss.downcast_index(inner.storage)  # HNSW over PQ codes trains its storage's quantizer
    holders = [inner if isinstance(inner, faiss.IndexIVF) else None, getattr(inner, "pq", None)]
    holders.append(getattr(inner, "rq", None))  # residual quantizers (RQ, IVF-RQ)
    for holder in holders:
        if holder is not None:
            holder.cp.min_points_per_centroid = 1


def _set_coarse_ef_search(index: faiss.Index) -> None:
    """COARSE_EF_SEARCH for an IVF index whose coarse quantizer is an HNSW graph (see the constant)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return  # not an IVF index
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(int(quantizer.hnsw.efSearch), COARSE_EF_SEARCH)


def _flat(dim: int) -> faiss.Index:
    return faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)


def _reserve(index: faiss.Index, n: int) -> None:
    """Give a flat index's code array its final size up front: growing it chunk by chunk (std::vector
    doubling) would briefly hold the old and the doubled array, up to 3x the vectors. Each add then
    resizes within this capacity (a std::vector keeps its capacity when resized down)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexFlatCodes) and inner.ntotal == 0:
        inner.codes.resize(n * inner.code_size)


def training_size(index: faiss.Index, n: int) -> int:
    """How many rows train ``index``: TRAIN_POINTS_PER_LIST per IVF-Flat list; for IVF over codes (whose
    candidates are re-scored exactly) ..._COMPRESSED per list but at least TRAIN_POINTS_OTHER; capped at ``n``."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexIVFFlat):
        return min(n, TRAIN_POINTS_PER_LIST * int(inner.nlist))
    if isinstance(inner, faiss.IndexIVF):
        return min(n, max(TRAIN_POINTS_PER_LIST_COMPRESSED * int(inner.nlist), TRAIN_POINTS_OTHER))
    return min(n, TRAIN_POINTS_OTHER)


def training_sample(chunks: Iterator[tuple[np.ndarray, np.ndarray]], n: int, size: int) -> np.ndarray:
    """``size`` of the ``n`` streamed rows, chosen uniformly at random (seeded), in stream order."""
    positions = np.arange(n) if size >= n else np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size, replace=False))
    sample: np.ndarray | None = None
    filled = start = 0
    for _, vectors in chunks:
        lo, hi = np.searchsorted(positions, [start, start + len(vectors)])
        if sample is None:
            sample = np.empty((len(positions), vectors.shape[1]), np.float32)
        sample[filled : filled + hi - lo] = vectors[positions[lo:hi] - start]
        filled += hi - lo
        start += len(vectors)
    if sample is None:
        raise StoreError("no vectors to train the index on")
    return sample[:filled]

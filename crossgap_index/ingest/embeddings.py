"""`cgx import`: embeddings made elsewhere (GPU jobs, clip-retrieval, img2dataset pipelines) into an index.

Sources, read a batch at a time (never the whole file in memory):

* ``FILE.npy``: N x d float32 or float16 rows, memory-mapped; metadata optional (``--meta``): a
  ``.jsonl`` with one object per row (``id``, ``path``, ``caption``; all optional) or a ``.parquet``
  table with those columns, N rows in the same order;
* ``FILE.parquet``, or a folder of them: an ``embedding`` column (list of floats) and optional
  ``id``, ``path`` (or ``image_path``), ``caption`` columns;
* clip-retrieval's output folder: ``img_emb/img_emb_K.npy`` beside ``metadata/metadata_K.parquet``.

Rows become image items: ids 1..N in source order unless an ``id`` column names them; the path and
caption when given. A row whose id is stored already, as an imported row, is left as it is, so running
the same import again changes nothing (and an interrupted import resumes). The model is only named:
its dimension comes from its open_clip config, its weights are never loaded.
"""

from __future__ import annotations

import functools
import json
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossgap_index.errors import InputFileError, StoreError
from crossgap_index.pause_points import pause_point

BATCH_ROWS = 65_536  # rows per read and per catalog commit: a quarter of a shard
ProgressFn = Callable[[int, int], None]
_NORM_FLOOR = 1e-6
# A float16 row bound for float16 shards whose norm is within this of 1 is stored as given. Re-normalising
# it would move each element by less than one float16 step (this is float16's unit roundoff, 2**-11), a
# precision the stored row cannot hold anyway; `cgx check` flags norms off by more than 1e-3. Rows further
# off are normalised exactly as ``unit_rows`` does.
HALF_UNIT_TOLERANCE = 2.0**-11
_NORM_CHUNK = 1024  # rows per step of the float16 norms (their squares stay in cache)
IMPORTED_PREFIX = "import:"


@dataclass
class Batch:
    """Consecutive rows of a source: vectors (n, d) and, where the source has them, ids/paths/captions."""

    vectors: np.ndarray
    ids: np.ndarray | None = None
    paths: list[str | None] | None = None
    captions: list[str | None] | None = None


@dataclass
class Source:
    """An opened source: its row count and width, and a fresh pass of batches."""

    name: str
    rows: int
    dim: int
    dtype: str  # "float32" | "float16": what the rows are stored in
    batches: Callable[[int], Iterator[Batch]]


@dataclass
class ImportReport:
    added: int = 0
    unchanged: int = 0
    rows: int = 0
    dim: int = 0
    seconds: float = 0.0  # writing rows (vectors into shards, rows into the catalog)
    index_seconds: float = 0.0  # then building the FAISS indexes from the shards

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# -- the model's width, without its weights ---------------------------------------------------
def model_dim(spec: str) -> int:
    """Embedding width of a model spec from its open_clip config (bundled or folder: the json file;
    an open_clip architecture: open_clip's own config). Weights are not read."""
    from crossgap_index.models import local_weights, parse_spec
    from crossgap_index.models._registry import bundled_dir

    parsed = parse_spec(spec)
    local_weights(parsed)  # a folder without usable weights is refused here too, as for a build
    if parsed.kind in ("bundled", "local-dir"):
        folder = bundled_dir(parsed.arch) if parsed.kind == "bundled" else Path(parsed.source)
        config = json.loads((folder / "open_clip_config.json").read_text())
        return int(config["model_cfg"]["embed_dim"])
    import open_clip

    config = open_clip.get_model_config(parsed.arch)
    if config is None:
        from crossgap_index.errors import ModelUnavailableError

        raise ModelUnavailableError(f"unknown open_clip architecture '{parsed.arch}' (see open_clip.list_models())")
    return int(config["embed_dim"])


# -- sources ------------------------------------------------------------------------------
def open_source(path: Path, meta: Path | None = None) -> Source:
    """The source at ``path`` (see the module docstring); one line on anything unusable."""
    if not path.exists():
        raise InputFileError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "img_emb").is_dir():
            return _clip_retrieval(path)
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise InputFileError(f"{path}: no .parquet files, and no img_emb/ folder (clip-retrieval's layout)")
        return _parquet(files, path.name)
    if path.suffix == ".npy":
        return _npy([path], [meta] if meta is not None else None, path.name)
    if path.suffix == ".parquet":
        return _parquet([path], path.name)
    raise InputFileError(f"{path}: not an .npy or .parquet file, nor a folder of them")


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputFileError(f"{path}: not a readable .npy array ({exc})") from exc
    if array.ndim != 2 or array.dtype not in (np.float32, np.float16):
        raise InputFileError(f"{path}: needs N x d float32 or float16 rows, not {array.dtype} of shape {array.shape}")
    return array


def _npy(files: list[Path], metas: list[Path] | None, name: str) -> Source:
    arrays = [_load_npy(f) for f in files]
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        raise InputFileError(f"{name}: arrays of different widths ({', '.join(map(str, sorted(dims)))})")
    for array, meta, file in zip(arrays, metas or [None] * len(files), files, strict=True):
        if meta is not None and _count_meta(meta) != len(array):
            raise InputFileError(f"{meta}: {_count_meta(meta)} rows of metadata for the {len(array)} rows of {file}")

    def batches(size: int) -> Iterator[Batch]:
        for array, meta, file in zip(arrays, metas or [None] * len(arrays), files, strict=True):
            metadata = _meta_batches(meta, size) if meta is not None else None
            for start in range(0, len(array), size):
                vectors = _read_rows(file, array, start, size)
                batch = next(metadata) if metadata is not None else Batch(vectors)
                batch.vectors = vectors
                yield batch

    dtype = "float16" if all(a.dtype == np.float16 for a in arrays) else "float32"
    return Source(name, sum(len(a) for a in arrays), dims.pop(), dtype, batches)


def _read_rows(file: Path, array: np.ndarray, start: int, size: int) -> np.ndarray:
    """Rows ``start``..``start+size`` of an .npy: read, not mapped, so the file's pages do not pile up in
    this process's resident set (a 10 GB source would otherwise count 10 GB against it)."""
    rows = min(size, len(array) - start)
    if not isinstance(array, np.memmap) or not array.flags.c_contiguous:
        return np.asarray(array[start : start + rows])
    with file.open("rb") as f:
        f.seek(array.offset + start * array.shape[1] * array.itemsize)
        return np.fromfile(f, array.dtype, count=rows * array.shape[1]).reshape(rows, array.shape[1])


def _count_meta(meta: Path) -> int:
    if meta.suffix == ".parquet":
        return _parquet_file(meta).metadata.num_rows
    with meta.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _meta_batches(meta: Path, size: int) -> Iterator[Batch]:
    """Metadata rows (ids, paths, captions) ``size`` at a time, vectors left empty."""
    if meta.suffix == ".parquet":
        for table in _parquet_file(meta).iter_batches(batch_size=size):
            yield _from_columns(table.to_pydict(), meta, None)
        return
    rows: list[dict] = []
    with meta.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFileError(f"{meta}:{lineno}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise InputFileError(f"{meta}:{lineno}: needs a JSON object per line")
            rows.append(row)
            if len(rows) == size:
                yield _from_columns(_columns(rows), meta, None)
                rows = []
    if rows:
        yield _from_columns(_columns(rows), meta, None)


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = {k for row in rows for k in row}
    return {k: [row.get(k) for row in rows] for k in keys}


def _from_columns(columns: dict[str, list], where: Path, vectors: np.ndarray | None) -> Batch:
    ids = None
    if columns.get("id") is not None:
        raw = columns["id"]
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 1 for i in raw):
            bad = next(i for i in raw if not isinstance(i, int) or isinstance(i, bool) or i < 1)
            raise InputFileError(f"{where}: ids must be positive integers, found {bad!r}")
        ids = np.asarray(raw, np.int64)
    paths = columns.get("path", columns.get("image_path"))
    captions = columns.get("caption")
    return Batch(vectors if vectors is not None else np.zeros((0, 0), np.float32), ids, paths, captions)


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputFileError("reading parquet needs pyarrow: pip install 'crossgap-index[export]'") from exc
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputFileError(f"{path}: not a readable parquet file ({exc})") from exc


def _parquet(files: list[Path], name: str) -> Source:
    import pyarrow as pa

    opened = [_parquet_file(f) for f in files]
    dims = set()
    for file, parquet in zip(files, opened, strict=True):
        field_ = parquet.schema_arrow.field("embedding") if "embedding" in parquet.schema_arrow.names else None
        if field_ is None:
            raise InputFileError(f"{file}: no 'embedding' column (columns: {', '.join(parquet.schema_arrow.names)})")
        kind = field_.type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
            raise InputFileError(f"{file}: the 'embedding' column must hold lists of floats, not {kind}")
        if parquet.metadata.num_rows:
            first = next(parquet.iter_batches(batch_size=1, columns=["embedding"])).column(0)
            dims.add(len(first[0]))
    if len(dims) > 1:
        raise InputFileError(f"{name}: embeddings of different widths ({', '.join(map(str, sorted(dims)))})")
    dim = dims.pop() if dims else 0
    wanted = ("embedding", "id", "path", "image_path", "caption")
    half = all(pa.types.is_float16(p.schema_arrow.field("embedding").type.value_type) for p in opened)

    def batches(size: int) -> Iterator[Batch]:
        for file, parquet in zip(files, opened, strict=True):
            columns = [c for c in wanted if c in parquet.schema_arrow.names]
            for record in parquet.iter_batches(batch_size=size, columns=columns):
                vectors = _list_column(record.column(0), dim, file)
                others = {c: record.column(i).to_pylist() for i, c in enumerate(columns) if c != "embedding"}
                yield _from_columns(others, file, vectors)

    return Source(name, sum(p.metadata.num_rows for p in opened), dim, "float16" if half else "float32", batches)


def _list_column(column, dim: int, where: Path) -> np.ndarray:
    """A column of float lists as an (n, dim) array, without a Python object per value."""
    import pyarrow as pa

    if column.null_count:
        raise InputFileError(f"{where}: {column.null_count} rows have no embedding")
    if pa.types.is_fixed_size_list(column.type):
        if column.type.list_size != dim:
            raise InputFileError(f"{where}: {column.type.list_size}-d embeddings, the others are {dim}-d")
        values = column.flatten()
    else:
        offsets = np.asarray(column.offsets)
        lengths = np.diff(offsets)
        if len(lengths) and (lengths.min() != dim or lengths.max() != dim):
            raise InputFileError(f"{where}: embeddings of {lengths.min()} to {lengths.max()} values, expected {dim}")
        values = column.flatten()
    return values.to_numpy(zero_copy_only=False).reshape(len(column), dim)


def _clip_retrieval(folder: Path) -> Source:
    """clip-retrieval's ``img_emb/img_emb_K.npy`` with ``metadata/metadata_K.parquet`` (paired by K)."""

    def numbered(sub: str, pattern: str) -> dict[int, Path]:
        found = {}
        for p in (folder / sub).glob("*"):
            m = re.fullmatch(pattern, p.name)
            if m:
                found[int(m.group(1))] = p
        return found

    embeddings = numbered("img_emb", r"img_emb_(\d+)\.npy")
    metadata = numbered("metadata", r"metadata_(\d+)\.parquet")
    if not embeddings:
        raise InputFileError(f"{folder / 'img_emb'}: no img_emb_K.npy files")
    keys = sorted(embeddings)
    missing = [k for k in keys if k not in metadata]
    if metadata and missing:
        raise InputFileError(f"{folder / 'metadata'}: no metadata_{missing[0]}.parquet for img_emb_{missing[0]}.npy")
    metas = [metadata[k] for k in keys] if metadata else None
    return _npy([embeddings[k] for k in keys], metas, folder.name)


# -- the import ----------------------------------------------------------------------------
def unit_rows(vectors: np.ndarray, first_row: int, name: str) -> np.ndarray:
    """Rows scaled to unit length (inner product = cosine), as a new float32 array; a zero or non-finite
    row is refused."""
    vectors = np.array(vectors, np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    bad = ~np.isfinite(norms) | (norms < _NORM_FLOOR)
    if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        raise InputFileError(f"{name}: row {row} is zero or not finite; it cannot be searched by cosine")
    vectors /= norms[:, None]
    return vectors


def unit_rows_as(vectors: np.ndarray, dtype: np.dtype, first_row: int, name: str) -> np.ndarray:
    """``unit_rows`` in the shards' ``dtype``, without its float32 round trip where it changes nothing:
    float16 rows for float16 shards keep their values when their norm is within HALF_UNIT_TOLERANCE of 1
    (the norms come from a table of every float16's square, a chunk of rows at a time); the rows off by
    more, and every other dtype pairing, are what ``unit_rows`` makes, cast to ``dtype``."""
    if vectors.dtype != np.float16 or np.dtype(dtype) != np.float16:
        return unit_rows(vectors, first_row, name).astype(dtype, copy=False)
    vectors = np.ascontiguousarray(vectors)
    norms = _half_norms(vectors)
    bad = ~np.isfinite(norms) | (norms < _NORM_FLOOR)
    if bad.any():
        unit_rows(vectors[bad], first_row + int(np.flatnonzero(bad)[0]), name)  # raises its one-line error
    off = np.flatnonzero(np.abs(norms - 1.0) > HALF_UNIT_TOLERANCE)
    if len(off):
        vectors = vectors.copy()  # the source's array may be read-only (a mapped file, an Arrow buffer)
        vectors[off] = unit_rows(vectors[off], first_row, name).astype(np.float16)
    return vectors


def _half_norms(vectors: np.ndarray) -> np.ndarray:
    """Euclidean norms of float16 rows, summed in float32 (as ``unit_rows`` does after converting), without
    converting the rows: each element's square is looked up by its 16 bits."""
    squares = _half_squares()
    bits = vectors.view(np.uint16)
    sums = np.empty(len(vectors), np.float32)
    step = np.empty((min(_NORM_CHUNK, len(vectors)), vectors.shape[1]), np.float32)  # reused: stays in cache
    for first in range(0, len(vectors), _NORM_CHUNK):
        chunk = bits[first : first + _NORM_CHUNK]
        np.take(squares, chunk, out=step[: len(chunk)])
        np.sum(step[: len(chunk)], axis=1, out=sums[first : first + len(chunk)])
    return np.sqrt(sums)


@functools.cache
def _half_squares() -> np.ndarray:
    """float32 square of each of the 65,536 float16 bit patterns (inf and nan square to inf and nan)."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        return values * values


def import_source(
    store, source: Source, progress: ProgressFn | None = None, batch_rows: int | None = None
) -> ImportReport:
    """Write ``source``'s rows into ``store`` (the caller holds ``store.writing()``), ``batch_rows`` (default
    BATCH_ROWS) per commit; then the FAISS indexes are rebuilt once, from the shards, by the caller's save."""
    start = time.perf_counter()
    report = ImportReport(rows=source.rows, dim=source.dim)
    catalog, done = store.catalog, 0
    dtype = np.dtype(catalog.vector_dtype())
    for batch in _ahead(_unit_batches(source, batch_rows or BATCH_ROWS, dtype)):
        n = len(batch.vectors)
        ids = batch.ids if batch.ids is not None else np.arange(done + 1, done + n + 1, dtype=np.int64)
        if batch.ids is not None and len(np.unique(ids)) != n:  # numbered rows are distinct by construction
            raise InputFileError(f"{source.name}: the same id twice within rows {done + 1}..{done + n}")
        fresh = _fresh_rows(catalog, ids, source.name)
        if fresh.any():
            vectors = batch.vectors if fresh.all() else batch.vectors[fresh]
            chosen = np.flatnonzero(fresh)
            try:
                if batch.paths is None and batch.captions is None:
                    catalog.add_imported(ids[chosen], vectors, IMPORTED_PREFIX)
                else:
                    paths = [batch.paths[i] for i in chosen] if batch.paths is not None else [None] * len(chosen)
                    captions = [batch.captions[i] for i in chosen] if batch.captions is not None else None
                    hashes = [imported_hash(int(i)) for i in ids[chosen]]
                    catalog.add_images(paths, hashes, vectors, ids[chosen], captions)
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"{source.name}: a path in rows {done + 1}..{done + n} is indexed already") from exc
            pause_point("import-written")  # the batch's vectors are in the shards, its rows not committed yet
            store.commit()
        report.added += int(fresh.sum())
        report.unchanged += n - int(fresh.sum())
        done += n
        if progress:
            progress(done, source.rows)
    report.seconds = time.perf_counter() - start
    return report


def _unit_batches(source: Source, size: int, dtype: np.dtype) -> Iterator[Batch]:
    """The source's batches with unit rows in the shards' ``dtype``."""
    done = 0
    for batch in source.batches(size):
        batch.vectors = unit_rows_as(batch.vectors, dtype, done, source.name)
        done += len(batch.vectors)
        yield batch


_END = object()


def _ahead(items: Iterator[Batch]) -> Iterator[Batch]:
    """``items``, produced one ahead on a thread: reading and converting the next batch (numpy, which
    releases the GIL) overlaps writing this one (SQLite and the shard file, which do too)."""
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
            ready.put(exc)

    thread = threading.Thread(target=produce, name="import reader", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def imported_hash(item_id: int) -> str:
    """An imported row's content hash: its id (the vector came without the content it was made from)."""
    return f"{IMPORTED_PREFIX}{item_id}"


def _fresh_rows(catalog, ids: np.ndarray, name: str) -> np.ndarray:
    """Which of ``ids`` are not stored yet; an id held by an item that was not imported is refused."""
    stored = dict(
        catalog.conn.execute(
            "SELECT id, content_hash FROM items WHERE id BETWEEN ? AND ?", (int(ids.min()), int(ids.max()))
        )
    )
    if not stored:
        return np.ones(len(ids), bool)
    held = np.fromiter((int(i) in stored for i in ids), bool, count=len(ids))
    for i in ids[held]:
        if stored[int(i)] != imported_hash(int(i)):
            raise StoreError(
                f"{name}: id {int(i)} belongs to an item of the index that was not imported; "
                "give the rows other ids (an id column), or import into a new index"
            )
    return ~held


def import_embeddings(
    index_path: Path,
    embeddings: Path,
    model: str,
    meta: Path | None = None,
    factory: str = "auto",
    vector_dtype: str | None = None,
    wait: bool = True,
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Import into the index at ``index_path`` (made for ``model`` when missing); see the module docstring.
    ``vector_dtype``: how new shards store vectors (default: the source's float32 or float16)."""
    from crossgap_index.models import parse_spec
    from crossgap_index.store.directory import IndexExistsError, Store
    from crossgap_index.store.manifest import MANIFEST_NAME

    canonical = parse_spec(model).canonical
    dim = model_dim(model)
    source = open_source(embeddings, meta)
    if source.rows and source.dim != dim:
        raise InputFileError(f"{embeddings}: {source.dim}-d embeddings, but model '{canonical}' makes {dim}-d vectors")
    store = None
    if not (index_path / MANIFEST_NAME).exists():
        try:
            store = Store.create(
                index_path, canonical, dim, factory, wait=wait, vector_dtype=vector_dtype or source.dtype
            )
        except IndexExistsError:
            store = None
    if store is None:
        store = Store.open(index_path)
        if store.manifest.model != canonical:
            store.close()
            raise StoreError(f"index at {index_path} was built with model '{store.manifest.model}', not '{canonical}'")
    store.wait = wait
    try:
        with store.writing():
            report = import_source(store, source, progress)
            if report.added or store.rebuilt:  # else nothing changed: not even the generation
                began = time.perf_counter()
                store.save()  # the FAISS indexes, rebuilt once from the shards
                report.index_seconds = time.perf_counter() - began
    finally:
        store.close()
    return report

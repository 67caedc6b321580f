"""Vectors and metadata of an index for other tools: Parquet or .npy files, and the item stream
that the database adapters (crossgap_index.integrations) load from.

Reads the catalog (the source of truth) a chunk at a time, so an export never holds more than one
chunk of vectors in memory, whatever the index size. Opens only the manifest and the SQLite file.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossgap_index.errors import DiskFullError, QueryError, StoreError, is_disk_full
from crossgap_index.store.catalog import Catalog
from crossgap_index.store.directory import CATALOG_NAME, DERIVED, MODALITIES
from crossgap_index.store.manifest import Manifest

FORMATS = ("parquet", "npy")
COLLECTIONS = (*MODALITIES, *DERIVED)
Staged = list[tuple[Path, Path]]  # (file written beside, its final name)
CHUNK = 8192  # rows per read; also bounds the SQL "IN (...)" of the metadata look-up


@dataclass(frozen=True)
class ItemChunk:
    """Consecutive items of one collection: ids, unit vectors (n, d) and their catalog metadata;
    ``derived`` (when asked for): per derived collection, each item's vector or None."""

    ids: np.ndarray
    vectors: np.ndarray
    modality: list[str]
    path: list[str | None]
    text: list[str | None]
    external_id: list[str | None]
    derived: dict[str, list[np.ndarray | None]] = field(default_factory=dict)


@dataclass
class ExportReport:
    model: str
    dim: int
    counts: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


@contextmanager
def open_catalog(index_path: str | Path) -> Iterator[tuple[Manifest, Catalog]]:
    path = Path(index_path).expanduser()
    manifest = Manifest.load(path)
    catalog = Catalog(path / CATALOG_NAME, readonly=True)
    try:
        yield manifest, catalog
    finally:
        catalog.close()


def stored_count(catalog: Catalog, collection: str) -> int:
    return catalog.count_derived(collection) if collection in DERIVED else catalog.count(collection)


def item_chunks(
    manifest: Manifest, catalog: Catalog, collection: str, size: int = CHUNK, with_derived: bool = False
) -> Iterator[ItemChunk]:
    """Every item of ``collection`` (image, text or a derived collection such as image-oti) in id order;
    ``with_derived``: also the items' derived vectors (image-oti ... for images)."""
    check_collections([collection])
    kinds = [kind for kind, owner in DERIVED.items() if owner == collection] if with_derived else []
    for ids, vectors in catalog.vector_chunks(collection, collection in DERIVED, manifest.dim, size):
        rows = catalog.rows(ids.tolist())
        meta = [rows[i] for i in ids.tolist()]
        derived = {}
        for kind in kinds:
            found = catalog.derived_for(kind, ids.tolist())
            derived[kind] = [found.get(i) for i in ids.tolist()]
        yield ItemChunk(
            ids,
            vectors,
            [r.modality for r in meta],
            [r.path for r in meta],
            [r.text for r in meta],
            [r.external_id for r in meta],
            derived,
        )


def check_collections(collections: Sequence[str]) -> None:
    for name in collections:
        if name not in COLLECTIONS:
            raise QueryError(f"unknown collection '{name}': use one of {', '.join(COLLECTIONS)}")


def export_index(
    index_path: str | Path,
    out_dir: str | Path,
    fmt: str = "parquet",
    collections: Sequence[str] | None = None,
    chunk: int = CHUNK,
) -> ExportReport:
    """Write each non-empty collection to ``out_dir``: ``NAME.parquet`` (id, modality, path, text,
    external_id, vector), or ``NAME.vectors.npy`` (float32, n x d) + ``NAME.ids.npy`` (int64) +
    ``NAME.items.jsonl``; and ``export.json`` (model, dim, metric, counts, files)."""
    if fmt not in FORMATS:
        raise QueryError(f"unknown export format '{fmt}': use one of {', '.join(FORMATS)}")
    check_collections(collections or [])
    out = Path(out_dir).expanduser()
    staged: Staged = []  # renamed only once every file is complete
    try:
        with open_catalog(index_path) as (manifest, catalog):
            out.mkdir(parents=True, exist_ok=True)
            report = ExportReport(manifest.model, manifest.dim)
            for name in collections or COLLECTIONS:
                n = stored_count(catalog, name)
                if n == 0 and not collections:
                    continue
                chunks = item_chunks(manifest, catalog, name, chunk)
                files = (
                    _write_parquet(manifest, name, chunks, out, staged)
                    if fmt == "parquet"
                    else _write_npy(manifest, name, n, chunks, out, staged)
                )
                report.counts[name] = n
                report.files.extend(str(final) for final in files)
            summary = {"model": manifest.model, "dim": manifest.dim, "metric": manifest.metric, "counts": report.counts}
            summary["inversions"] = _inversions(manifest, report.counts)
            summary_file = _beside(out / "export.json")
            staged.append((summary_file, out / "export.json"))
            summary_file.write_text(json.dumps({**summary, "files": [Path(f).name for f in report.files]}, indent=2))
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(f"disk full while writing the export to {out}: free some space and re-run") from exc
        if exc.errno == errno.EFBIG:
            where = exc.filename or out
            raise StoreError(f"{where}: over the largest file this process may write (ulimit -f)") from exc
        raise
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return report


def _inversions(manifest: Manifest, counts: dict[str, int]) -> dict[str, dict]:
    """The settings the exported gallery inversions were made with, by manifest record (an import restores
    them, so that `cgx invert` goes on with the same ones)."""
    records = {"image-oti": "gallery_inversion", "text-ovi": "text_gallery_inversion"}
    found = {records[name]: getattr(manifest, records[name], None) for name in counts if name in records}
    return {record: settings for record, settings in found.items() if settings is not None}


def _beside(path: Path) -> Path:
    """Where ``path`` is written before it is complete (a hidden name in the same folder, renamed over it)."""
    return path.with_name(f".{path.name}.tmp")


def printable_path(path: str | None) -> str | None:
    """A file name as valid UTF-8 text: bytes that are not UTF-8 (surrogate-escaped by os) as ``\\xNN``."""
    return None if path is None else path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _write_parquet(manifest: Manifest, name: str, chunks: Iterator[ItemChunk], out: Path, staged: Staged) -> list[Path]:
    """``NAME.parquet``, written beside (registered in ``staged`` before the first byte, so a failure
    anywhere removes it)."""
    _require_pyarrow()
    import pyarrow.parquet as pq

    schema = arrow_schema(manifest.dim).with_metadata(
        {"crossgap.model": manifest.model, "crossgap.collection": name, "crossgap.metric": manifest.metric}
    )
    path = out / f"{name}.parquet"
    staged.append((_beside(path), path))
    with pq.ParquetWriter(_beside(path), schema) as writer:
        for chunk in chunks:
            writer.write_batch(arrow_batch(chunk, schema))
    return [path]


def arrow_schema(dim: int):
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64()),
            ("modality", pa.string()),
            ("path", pa.string()),  # as text: a name that is not UTF-8 shows its odd bytes as \xNN
            ("path_bytes", pa.binary()),  # the file name's own bytes (null for texts)
            ("text", pa.string()),
            ("external_id", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def arrow_batch(chunk: ItemChunk, schema):
    """One chunk as an Arrow record batch; the vectors as a fixed-size list column (no copy per row)."""
    import pyarrow as pa

    dim = chunk.vectors.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(chunk.vectors).reshape(-1)), dim)
    raw = [None if p is None else os.fsencode(p) for p in chunk.path]
    columns = [pa.array(chunk.ids), pa.array(chunk.modality), pa.array([printable_path(p) for p in chunk.path])]
    columns.append(pa.array(raw, pa.binary()))
    columns += [pa.array(chunk.text, pa.string()), pa.array(chunk.external_id, pa.string()), vectors]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise QueryError('Parquet export needs pyarrow: pip install "crossgap-index[export]"') from exc


def _write_npy(
    manifest: Manifest, name: str, n: int, chunks: Iterator[ItemChunk], out: Path, staged: Staged
) -> list[Path]:
    """``NAME.vectors.npy``, ``NAME.ids.npy`` and ``NAME.items.jsonl``, written beside with ordinary buffered
    writes (a full disk is an OSError here; a memory-mapped file would die of SIGBUS instead)."""
    paths = [out / f"{name}.vectors.npy", out / f"{name}.ids.npy", out / f"{name}.items.jsonl"]
    staged += [(_beside(p), p) for p in paths]
    done = 0
    with _beside(paths[0]).open("wb") as vectors, _beside(paths[1]).open("wb") as ids:
        _npy_header(vectors, np.dtype("<f4"), (n, manifest.dim))
        _npy_header(ids, np.dtype("<i8"), (n,))
        with _beside(paths[2]).open("wb") as items:
            for chunk in chunks:
                end = done + len(chunk.ids)
                if end > n:
                    raise StoreError(f"the {name} collection grew during the export; run it again")
                vectors.write(np.ascontiguousarray(chunk.vectors, "<f4").tobytes())
                ids.write(np.ascontiguousarray(chunk.ids, "<i8").tobytes())
                for i, item_id in enumerate(chunk.ids.tolist()):
                    row = {"id": item_id, "modality": chunk.modality[i], "path": chunk.path[i], "text": chunk.text[i]}
                    items.write(_json_line({**row, "external_id": chunk.external_id[i]}))
                done = end
    if done != n:
        raise StoreError(f"the {name} collection shrank during the export; run it again")
    return paths


def _npy_header(file, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(file, header)


def _json_line(row: dict) -> bytes:
    """One JSON line in UTF-8; a file name that is not UTF-8 is written with ``\\udcNN`` escapes, which
    json.loads turns back into the surrogate-escaped str that ``os.fsencode`` maps to the name's bytes."""
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row) + "\n").encode("ascii")

"""What `cgx import` reads, as batches of rows: vectors and, where the source has them, each row's id,
modality, path, text (a caption for an image) and external id, every value checked as it is read.

Sources:

* ``FILE.npy``: N x d float32 or float16 rows; metadata optional (``--meta``): a ``.jsonl`` with one
  object per row or a ``.parquet`` table, N rows in the same order;
* ``FILE.parquet``, or a folder of them: an ``embedding`` (or ``vector``) column of float lists;
* clip-retrieval's output folder: ``img_emb/img_emb_K.npy`` beside ``metadata/metadata_K.parquet``;
* a ``cgx export`` folder (``export.json`` beside the files it names): every collection it holds, the
  derived ones (gallery inversions such as ``image-oti``) as what they are.

Metadata fields (columns or JSON keys), all optional: ``id`` (an integer 1..MAX_IMPORT_ID), ``modality``
(``image`` or ``text``), ``path`` (or ``image_path``; ``path_bytes``: the file name's own bytes, as the
export writes them), ``caption`` or ``text`` (UTF-8 text; Parquet ``binary`` values are decoded as UTF-8,
the way Spark writes strings), ``external_id``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossgap_index.errors import InputFileError
from crossgap_index.ingest.import_files import MAX_JSON_FILE_BYTES, open_npy, open_regular
from crossgap_index.ingest.jsonl import jsonl_objects, read_json_object
from crossgap_index.ingest.texts import unicode_problem

# The largest id an import may give a row: 2**53 - 1, the largest integer a JSON number holds exactly in
# JavaScript (the page, and most clients of the HTTP API, read ids as such numbers), and far enough below
# SQLite's 2**63 - 1 that ids handed out after it (builds, unnumbered rows) can never run out.
MAX_IMPORT_ID = 2**53 - 1
MODALITIES = ("image", "text")
# Collections of vectors derived from items (as store/directory.DERIVED, without importing the store here).
DERIVED_OWNERS = {"image-oti": "image", "text-ovi": "text"}
VECTOR_COLUMNS = ("embedding", "vector")


@dataclass
class Batch:
    """Consecutive rows of a source: vectors (n, d; (n, 0) in a metadata-only pass) and, where the source
    has them, per-row metadata (a list per field; a field the source lacks is None)."""

    vectors: np.ndarray
    ids: np.ndarray | None = None  # int64; 0 where a row has no id
    modalities: list[str] | None = None
    paths: list[str | None] | None = None
    texts: list[str | None] | None = None
    external_ids: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass
class Source:
    """An opened source: its rows, width, the files it reads (their stat fingerprints an interrupted import)
    and a fresh pass of batches (``vectors=False``: metadata only, for the checks made before writing)."""

    name: str
    rows: int
    dim: int
    dtype: str  # "float32" | "float16": what the rows are stored in
    batches: Callable[..., Iterator[Batch]]
    files: list[Path] = field(default_factory=list)
    derived: dict[str, Source] = field(default_factory=dict)  # gallery inversions of an export folder
    inversions: dict[str, dict] = field(default_factory=dict)  # their settings, by manifest record
    model: str | None = None  # the model an export folder names


def open_source(path: Path, meta: Path | None = None) -> Source:
    """The source at ``path`` (see the module docstring); one line on anything unusable."""
    if not path.exists() and not path.is_symlink():
        raise InputFileError(f"{path}: no such file or folder")
    if path.is_dir():
        if meta is not None:
            raise InputFileError(f"{meta}: --meta goes with an .npy file, not a folder")
        if (path / "export.json").exists():
            return _export_folder(path)
        if (path / "img_emb").is_dir():
            return _clip_retrieval(path)
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise InputFileError(f"{path}: no .parquet files, and no img_emb/ folder (clip-retrieval's layout)")
        return _parquet(files, path.name)
    _refuse_derived_file(path)
    if path.suffix == ".npy":
        return _npy([path], [meta] if meta is not None else None, path.name)
    if meta is not None:
        raise InputFileError(f"{meta}: --meta goes with an .npy file; a .parquet file holds its own metadata")
    if path.suffix == ".parquet":
        return _parquet([path], path.name)
    raise InputFileError(f"{path}: not an .npy or .parquet file, nor a folder of them")


def _refuse_derived_file(path: Path) -> None:
    """A gallery inversion's file from an export, given alone, would become items: refuse it."""
    for kind in DERIVED_OWNERS:
        if path.name in (f"{kind}.vectors.npy", f"{kind}.parquet"):
            raise InputFileError(
                f"{path}: the {kind} vectors of a cgx export (features of items, not items); "
                "import the whole export folder to bring them back with their items"
            )


# -- .npy ---------------------------------------------------------------------------------------
def _npy(files: list[Path], metas: list[Path] | None, name: str) -> Source:
    arrays = [open_npy(f) for f in files]
    dims = {a.dim for a in arrays}
    if len(dims) != 1:
        raise InputFileError(f"{name}: arrays of different widths ({', '.join(map(str, sorted(dims)))})")
    dim = dims.pop()
    pairs = list(zip(arrays, metas or [None] * len(arrays), strict=True))  # metadata: .parquet, else JSON lines

    def batches(size: int, vectors: bool = True) -> Iterator[Batch]:
        for array, meta in pairs:
            metadata = _meta_batches(meta, size) if meta is not None else None
            done = 0
            for start in range(0, array.rows, size):
                count = min(size, array.rows - start)
                rows = array.read(start, count) if vectors else np.zeros((count, 0), np.float32)
                batch = next(metadata, None) if metadata is not None else Batch(rows)
                if batch is None or len(batch.vectors) != count:
                    have = done + (len(batch.vectors) if batch is not None else 0)
                    raise InputFileError(f"{meta}: {have} rows of metadata for the {array.rows} rows of {array.path}")
                batch.vectors = rows
                done += count
                yield batch
            if metadata is not None and next(metadata, None) is not None:
                raise InputFileError(f"{meta}: more rows of metadata than the {array.rows} rows of {array.path}")

    dtype = "float16" if all(a.dtype.itemsize == 2 for a in arrays) else "float32"
    files_read = files + [m for m in metas or [] if m is not None]
    return Source(name, sum(a.rows for a in arrays), dim, dtype, batches, files_read)


def _meta_batches(meta: Path, size: int) -> Iterator[Batch]:
    """Metadata rows ``size`` at a time, each batch's vectors an (n, 0) placeholder."""
    if meta.suffix == ".parquet":
        parquet = _parquet_file(meta)
        names = [c for c in _META_COLUMNS if c in parquet.schema_arrow.names]
        first = 1
        for record in _iter_batches(parquet, meta, size, names):
            yield _from_columns(_pylists(record, names), meta, first, np.zeros((record.num_rows, 0), np.float32))
            first += record.num_rows
        return
    rows: list[dict] = []
    first = 1
    for _, row in jsonl_objects(meta, None):
        rows.append(row)
        if len(rows) == size:
            yield _from_columns(_columns(rows), meta, first, np.zeros((len(rows), 0), np.float32))
            first, rows = first + len(rows), []
    if rows:
        yield _from_columns(_columns(rows), meta, first, np.zeros((len(rows), 0), np.float32))


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = {k for row in rows for k in row if k in _META_COLUMNS}
    return {k: [row.get(k) for row in rows] for k in keys}


# -- values ---------------------------------------------------------------------------------------
_META_COLUMNS = ("id", "modality", "path", "image_path", "path_bytes", "caption", "text", "external_id")


def _from_columns(columns: dict[str, list], where: Path, first_row: int, vectors: np.ndarray) -> Batch:
    """A batch from raw column values, each checked: one line naming the file and row otherwise."""
    n = len(vectors)

    def bad(i: int, what: str) -> InputFileError:
        return InputFileError(f"{where}: row {first_row + i}: {what}")

    batch = Batch(vectors)
    if "id" in columns:
        ids = np.zeros(n, np.int64)
        for i, value in enumerate(columns["id"]):
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_IMPORT_ID:
                raise bad(i, f"ids must be integers 1..{MAX_IMPORT_ID} (2**53 - 1), found {_short(value)}")
            ids[i] = value
        batch.ids = ids
    if "modality" in columns:
        modalities = []
        for i, value in enumerate(columns["modality"]):
            value = "image" if value is None else value
            if value not in MODALITIES:
                raise bad(i, f"modality must be 'image' or 'text', found {_short(value)}")
            modalities.append(value)
        batch.modalities = modalities
    raw_paths = columns.get("path_bytes")
    paths = columns.get("path", columns.get("image_path"))
    if raw_paths is not None:
        given = paths or [None] * n
        paths = [os.fsdecode(p) if isinstance(p, bytes) else q for p, q in zip(raw_paths, given, strict=True)]
    if paths is not None:
        batch.paths = [_path(p, lambda what, i=i: bad(i, what)) for i, p in enumerate(paths)]
    texts = columns.get("text", columns.get("caption"))
    if texts is not None:
        batch.texts = [_text(t, "text", lambda what, i=i: bad(i, what)) for i, t in enumerate(texts)]
    if "external_id" in columns:
        external = [str(t) if isinstance(t, int) and not isinstance(t, bool) else t for t in columns["external_id"]]
        batch.external_ids = [_text(t, "external_id", lambda w, i=i: bad(i, w)) for i, t in enumerate(external)]
    _check_kinds(batch, bad)
    return batch


def _path(value: object, bad: Callable[[str], InputFileError]) -> str | None:
    """A path as the catalog stores it: text (a name that is not UTF-8 as os gives it, surrogate-escaped)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = _utf8(value, "path", bad)
    if not isinstance(value, str):
        raise bad(f"a path must be a string, found {_short(value)}")
    if not value:
        raise bad("an empty path")
    if "\x00" in value:
        raise bad("a path holds a NUL character, which no file name can")
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise bad(f"the path {unicode_problem(value)}") from None
    return value


def _text(value: object, name: str, bad: Callable[[str], InputFileError]) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = _utf8(value, name, bad)
    if not isinstance(value, str):
        raise bad(f"{name} must be a string, found {_short(value)}")
    problem = unicode_problem(value)
    if problem:
        raise bad(f"{name} {problem}")
    if "\x00" in value:
        raise bad(f"{name} holds a NUL character")
    return value


def _utf8(value: bytes, name: str, bad: Callable[[str], InputFileError]) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"{name} is binary that is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _check_kinds(batch: Batch, bad: Callable[[int, str], InputFileError]) -> None:
    """A text row has its text and no path."""
    if batch.modalities is None:
        return
    for i, modality in enumerate(batch.modalities):
        if modality != "text":
            continue
        if batch.paths is not None and batch.paths[i] is not None:
            raise bad(i, "a text row cannot have a path")
        if batch.texts is None or not (batch.texts[i] or "").strip():
            raise bad(i, "a text row needs its text")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- Parquet ------------------------------------------------------------------------------------------
def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputFileError("reading parquet needs pyarrow: pip install 'crossgap-index[export]'") from exc
    handle = open_regular(path)
    try:
        return pq.ParquetFile(handle)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        handle.close()
        raise InputFileError(f"{path}: not a readable parquet file ({_first_line(exc)})") from exc


def _iter_batches(parquet, path: Path, size: int, columns: list[str]):
    """Record batches; a file changed or cut short meanwhile is one line, not Arrow's exception."""
    import pyarrow as pa

    try:
        yield from parquet.iter_batches(batch_size=size, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputFileError(f"{path}: cannot be read to the end ({_first_line(exc)}); did it change?") from exc


def _pylists(record, names: list[str]) -> dict[str, list]:
    return {c: record.column(record.schema.get_field_index(c)).to_pylist() for c in names}


def _vector_column(parquet, file: Path) -> str:
    import pyarrow as pa

    names = parquet.schema_arrow.names
    found = [c for c in VECTOR_COLUMNS if c in names]
    if not found:
        raise InputFileError(f"{file}: no 'embedding' or 'vector' column (columns: {', '.join(names)})")
    kind = parquet.schema_arrow.field(found[0]).type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise InputFileError(f"{file}: the '{found[0]}' column must hold lists of numbers, not {kind}")
    if not pa.types.is_floating(kind.value_type):
        raise InputFileError(f"{file}: the '{found[0]}' column must hold lists of floats, not {kind}")
    return found[0]


def _parquet(files: list[Path], name: str, derived: bool = False) -> Source:
    """Parquet files as one source; ``derived``: an export's gallery inversion, read as what it is."""
    import pyarrow as pa

    opened = [_parquet_file(f) for f in files]
    dims: set[int] = set()
    columns: list[str] = []
    for file, parquet in zip(files, opened, strict=True):
        collection = (parquet.schema_arrow.metadata or {}).get(b"crossgap.collection", b"").decode(errors="replace")
        if collection in DERIVED_OWNERS and not derived:
            _refuse_derived_file(Path(f"{collection}.parquet"))
        column = _vector_column(parquet, file)
        columns.append(column)
        kind = parquet.schema_arrow.field(column).type
        if pa.types.is_fixed_size_list(kind):
            dims.add(kind.list_size)
        elif parquet.metadata.num_rows:
            first = next(_iter_batches(parquet, file, 1, [column]), None)
            if first is None or first.column(0)[0].as_py() is None:
                raise InputFileError(f"{file}: row 1 has no embedding")
            dims.add(len(first.column(0)[0]))
    if len(dims) > 1:
        raise InputFileError(f"{name}: embeddings of different widths ({', '.join(map(str, sorted(dims)))})")
    dim = dims.pop() if dims else 0
    half = all(
        pa.types.is_float16(p.schema_arrow.field(c).type.value_type) for p, c in zip(opened, columns, strict=True)
    )

    def batches(size: int, vectors: bool = True) -> Iterator[Batch]:
        for file, parquet, column in zip(files, opened, columns, strict=True):
            meta = [c for c in _META_COLUMNS if c in parquet.schema_arrow.names]
            first = 1
            for record in _iter_batches(parquet, file, size, [column, *meta] if vectors else meta or [column]):
                n = record.num_rows
                rows = _list_column(record.column(0), dim, file, first) if vectors else np.zeros((n, 0), np.float32)
                yield _from_columns(_pylists(record, meta), file, first, rows)
                first += n

    return Source(name, sum(p.metadata.num_rows for p in opened), dim, "float16" if half else "float32", batches, files)


def _list_column(column, dim: int, where: Path, first_row: int) -> np.ndarray:
    """A column of float lists as an (n, dim) array, without a Python object per value."""
    import pyarrow as pa

    if column.null_count:
        row = first_row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputFileError(f"{where}: row {row} has no embedding ({column.null_count} rows have none)")
    if pa.types.is_fixed_size_list(column.type):
        if column.type.list_size != dim:
            raise InputFileError(f"{where}: {column.type.list_size}-d embeddings, the others are {dim}-d")
    else:
        lengths = np.diff(np.asarray(column.offsets))
        if len(lengths) and (lengths.min() != dim or lengths.max() != dim):
            raise InputFileError(f"{where}: embeddings of {lengths.min()} to {lengths.max()} values, expected {dim}")
    values = column.flatten()
    if values.null_count:
        raise InputFileError(f"{where}: an embedding in rows {first_row}.. holds a null value")
    return values.to_numpy(zero_copy_only=False).reshape(len(column), dim)


# -- folders ------------------------------------------------------------------------------------------
def _clip_retrieval(folder: Path) -> Source:
    """clip-retrieval's ``img_emb/img_emb_K.npy`` with ``metadata/metadata_K.parquet`` (paired by K)."""

    def numbered(sub: str, pattern: str) -> dict[int, Path]:
        found = {}
        if (folder / sub).is_dir():
            for p in (folder / sub).iterdir():
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


def _export_folder(folder: Path) -> Source:
    """A ``cgx export`` folder: its item collections (image, text) as one source, its derived ones beside."""
    summary = read_json_object(folder / "export.json", MAX_JSON_FILE_BYTES)
    counts = summary.get("counts")
    if not isinstance(counts, dict) or not all(isinstance(k, str) for k in counts):
        raise InputFileError(f"{folder / 'export.json'}: no 'counts' object naming the exported collections")
    unknown = [k for k in counts if k not in MODALITIES and k not in DERIVED_OWNERS]
    if unknown:
        raise InputFileError(f"{folder / 'export.json'}: unknown collection '{unknown[0]}'")
    sources: dict[str, Source] = {}
    for collection in counts:
        parquet, npy = folder / f"{collection}.parquet", folder / f"{collection}.vectors.npy"
        if parquet.exists():
            sources[collection] = _parquet([parquet], collection, collection in DERIVED_OWNERS)
        elif npy.exists():
            sources[collection] = _npy([npy], [folder / f"{collection}.items.jsonl"], collection)
        else:
            raise InputFileError(f"{folder}: export.json names the {collection} collection, but its files are missing")
    items = [sources[c] for c in MODALITIES if c in sources]
    dims = {s.dim for s in sources.values() if s.rows}
    if len(dims) > 1:
        raise InputFileError(f"{folder}: collections of different widths ({', '.join(map(str, sorted(dims)))})")
    inversions = summary.get("inversions") or {}
    if not isinstance(inversions, dict) or not all(isinstance(v, dict) for v in inversions.values()):
        raise InputFileError(f"{folder / 'export.json'}: 'inversions' must be an object of objects")
    model = summary.get("model")
    combined = _concat(items, folder.name, dims.pop() if dims else 0)
    combined.derived = {c: s for c, s in sources.items() if c in DERIVED_OWNERS}
    combined.inversions = inversions
    combined.model = model if isinstance(model, str) else None
    combined.files.append(folder / "export.json")
    return combined


def _concat(sources: list[Source], name: str, dim: int) -> Source:
    """Sources read one after the other, as one."""

    def batches(size: int, vectors: bool = True) -> Iterator[Batch]:
        for source in sources:
            yield from source.batches(size, vectors)

    dtype = "float16" if sources and all(s.dtype == "float16" for s in sources) else "float32"
    files = [f for s in sources for f in s.files]
    return Source(name, sum(s.rows for s in sources), dim, dtype, batches, files)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]

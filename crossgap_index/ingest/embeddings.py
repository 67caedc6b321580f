"""`cgx import`: embeddings made elsewhere (GPU jobs, clip-retrieval, img2dataset pipelines, a `cgx export`)
into an index. The sources and their fields are in ingest/import_sources.py; read a batch at a time.

An import is an upsert, keyed by id:

* a row with an ``id`` is that item: added when the index has no such id; when it has one (an item that
  was imported), the row replaces it if its vector or metadata differ (its derived vectors, such as its
  gallery inversion, are dropped with the old vector, to be made again) and changes nothing if identical;
* a row without an id but with a path already imported is that item, the same way;
* any other row is new: it gets the next id after the largest the index has ever held (ids are never
  reused) and after every id of the import itself, in source order. Re-running an import that finished
  adds such rows again; re-running one that was interrupted resumes it (the source's files are recognised
  by name, size and modification time, and its new rows get the ids they got the first time).

Before anything is written the whole source's metadata is read once: the same id twice (in any batch or
file), the same path twice, an id or path held by an item that was not imported (a built file or text),
and ids over MAX_IMPORT_ID are refused in one line. The model is only named: its dimension comes from
its open_clip config, its weights are never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossgap_index.errors import InputFileError, StoreError
from crossgap_index.ingest.import_sources import (
    DERIVED_OWNERS,
    MAX_IMPORT_ID,
    Batch,
    Source,
    open_source,
)
from crossgap_index.ingest.unit_rows import HALF_UNIT_TOLERANCE, unit_rows, unit_rows_as
from crossgap_index.pause_points import pause_point
from crossgap_index.words import CountProgress, StageProgress

__all__ = [
    "HALF_UNIT_TOLERANCE",
    "MAX_IMPORT_ID",
    "Batch",
    "ImportReport",
    "Source",
    "import_embeddings",
    "import_source",
    "open_source",
    "unit_rows",
    "unit_rows_as",
]

BATCH_ROWS = 65_536  # rows per read and per catalog commit: a quarter of a shard
IMPORTED_PREFIX = "import:"
RESUME_KEY = "import_in_progress"  # catalog meta: the interrupted import's source and first new id


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    derived: int = 0  # derived vectors (gallery inversions) written from an export folder
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


# -- the plan: every row's id, checked before a row is written -------------------------------------
@dataclass
class Plan:
    """Each row's id (given, or the stored id of its path; 0: new) and the first id new rows get."""

    ids: np.ndarray | None  # None: every row is new (no id or path column anywhere)
    first_new: int
    new_rows: int
    fingerprint: str
    resumed: bool  # an interrupted run of this source is resumed: rows with new ids may be stored already


def plan_import(catalog, source: Source, size: int) -> Plan:
    """Read the source's metadata once and settle every row's id; refuse what the import could only do
    in part (see the module docstring), before anything is written."""
    ids: np.ndarray | None = None  # made at the first row with an id or a path (an id-less .npy needs none)
    path_keys: np.ndarray | None = None  # 0: no path; else a 64-bit hash of it (for duplicates)
    done = 0
    for batch in source.batches(size, vectors=False):
        n = len(batch)
        if done + n > source.rows:
            raise InputFileError(f"{source.name}: the source grew while it was read; run the import again")
        has_paths = batch.paths is not None and any(p is not None for p in batch.paths)
        if ids is None and (batch.ids is not None or has_paths):
            ids, path_keys = np.zeros(source.rows, np.int64), np.zeros(source.rows, np.uint64)
        if batch.ids is not None:
            ids[done : done + n] = batch.ids
        if has_paths:
            _match_paths(catalog, batch, ids[done : done + n], path_keys[done : done + n], source.name, done)
        done += n
    if done != source.rows:
        raise InputFileError(f"{source.name}: {done} rows read of the {source.rows} it held; did it change?")
    if ids is not None:
        _refuse_duplicates(path_keys, source.name, "path")
        _refuse_duplicates(ids, source.name, "id")
        _refuse_built(catalog, np.unique(ids[ids > 0]), source.name)
    fingerprint = _fingerprint(source)
    new_rows = int((ids == 0).sum()) if ids is not None else source.rows
    first_new = max(catalog.max_item_id(), int(ids.max()) if ids is not None and len(ids) else 0) + 1
    resumed = False
    marker = catalog.get_meta(RESUME_KEY)
    if marker and json.loads(marker).get("source") == fingerprint:
        earlier = int(json.loads(marker)["first_new"])
        if not catalog.built_ids_between(earlier, earlier + new_rows - 1, IMPORTED_PREFIX):  # no build took them
            first_new, resumed = earlier, True  # the interrupted run's new rows keep their ids
    if new_rows and first_new + new_rows - 1 > MAX_IMPORT_ID:
        raise StoreError(
            f"{source.name}: its {new_rows} rows without ids would need ids up to {first_new + new_rows - 1}, "
            f"over the largest an import may use ({MAX_IMPORT_ID}, 2**53 - 1); import into a new index"
        )
    return Plan(ids, first_new, new_rows, fingerprint, resumed)


def _match_paths(catalog, batch: Batch, ids: np.ndarray, keys: np.ndarray, name: str, done: int) -> None:
    """An image row without an id whose path is stored is that item; a row whose id and stored path disagree,
    or whose path belongs to a built image, is refused."""
    modalities = batch.modalities or ["image"] * len(batch)
    rows = [i for i, p in enumerate(batch.paths) if p is not None and modalities[i] == "image"]
    stored = catalog.ids_of_paths([batch.paths[i] for i in rows])
    for i in rows:
        path = batch.paths[i]
        keys[i] = int.from_bytes(hashlib.blake2b(os.fsencode(path), digest_size=8).digest(), "little") | 1
        if path not in stored:
            continue
        held, content_hash = stored[path]
        if content_hash != imported_hash(held):
            raise StoreError(
                f"{name}: row {done + i + 1}: {_printable(path)} is indexed already, as item {held} built from "
                "the file; an import does not replace built items (remove it first, or import into a new index)"
            )
        if ids[i] == 0:
            ids[i] = held
        elif ids[i] != held:
            raise StoreError(
                f"{name}: row {done + i + 1}: {_printable(path)} is item {held} of the index, the row gives id "
                f"{int(ids[i])}; a path belongs to one item"
            )


def _refuse_duplicates(keys: np.ndarray, name: str, what: str) -> None:
    given = np.flatnonzero(keys)
    if not len(given):
        return
    order = given[np.argsort(keys[given], kind="stable")]
    twice = np.flatnonzero(keys[order[1:]] == keys[order[:-1]])
    if len(twice):
        first, second = sorted((int(order[twice[0]]), int(order[twice[0] + 1])))
        shown = f"id {int(keys[first])}" if what == "id" else "the same path"
        raise InputFileError(
            f"{name}: {shown} is given to rows {first + 1} and {second + 1}; each {what} may appear once in "
            "an import (nothing was written)"
        )


def _refuse_built(catalog, ids: np.ndarray, name: str) -> None:
    for item_id, content_hash in catalog.content_hashes_for(ids.tolist()).items():
        if content_hash != imported_hash(item_id):
            raise StoreError(
                f"{name}: id {item_id} belongs to an item of the index that was not imported; "
                "give the rows other ids (an id column), or import into a new index"
            )


def _fingerprint(source: Source) -> str:
    """The source's files by resolved name, size and modification time."""
    parts = []
    for file in source.files:
        info = os.stat(file)
        parts.append([str(file.resolve()), info.st_size, info.st_mtime_ns])
    return json.dumps(parts)


def _printable(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# -- writing ------------------------------------------------------------------------------------
def import_source(
    store, source: Source, progress: CountProgress | None = None, batch_rows: int | None = None
) -> ImportReport:
    """Write ``source``'s rows into ``store`` (the caller holds ``store.writing()``), ``batch_rows`` (default
    BATCH_ROWS) per commit, after ``plan_import``'s checks; the FAISS indexes are brought in line by the
    caller's save (which rebuilds them all when rows were replaced in place)."""
    start = time.perf_counter()
    size = batch_rows or BATCH_ROWS
    report = ImportReport(rows=source.rows, dim=source.dim)
    catalog = store.catalog
    plan = plan_import(catalog, source, size)
    if source.derived:
        _check_derived_ids(catalog, source, plan, size)
    marker = json.dumps({"source": plan.fingerprint, "first_new": plan.first_new}) if plan.new_rows else None
    dtype = np.dtype(catalog.vector_dtype())
    done, new_seen = 0, 0
    for batch in _ahead(_unit_batches(source, size, dtype)):
        n = len(batch)
        if plan.ids is None:
            ids = np.arange(plan.first_new + done, plan.first_new + done + n, dtype=np.int64)
        else:
            ids = plan.ids[done : done + n].copy()
            new = ids == 0
            ids[new] = plan.first_new + new_seen + np.arange(int(new.sum()))
            new_seen += int(new.sum())
        if plan.resumed:
            may_exist = None  # rows given new ids by the interrupted run may be stored
        elif plan.ids is None:
            may_exist = np.zeros(n, bool)
        else:
            may_exist = plan.ids[done : done + n] > 0
        changed = _write_batch(catalog, batch, ids, report, may_exist)
        last = done + n == source.rows
        if changed or (last and catalog.get_meta(RESUME_KEY) is not None):
            # An interrupted run is resumable until another import writes: this one's marker replaces any
            # other (whose new ids this import's rows may now hold), and goes with this import's last batch.
            if marker and not last:
                catalog.set_meta(RESUME_KEY, marker)
            else:
                catalog.delete_meta(RESUME_KEY)
            pause_point("import-written")  # the batch's vectors are in the shards, its rows not committed yet
            store.commit()
        done += n
        if progress:
            progress(done, source.rows)
    for kind, derived in source.derived.items():
        report.derived += _write_derived(store, kind, derived, size)
    if source.inversions:
        _restore_inversion_records(store, source)
    report.seconds = time.perf_counter() - start
    return report


def _write_batch(catalog, batch: Batch, ids: np.ndarray, report: ImportReport, may_exist: np.ndarray | None) -> bool:
    """Add the batch's new rows, replace its changed ones; whether anything was written. ``may_exist``: the
    rows that may be stored already (None: any), the only ones looked up."""
    candidates = ids if may_exist is None else ids[may_exist]
    stored = catalog.stored_rows(candidates.tolist()) if len(candidates) else {}
    fresh = np.fromiter((int(i) not in stored for i in ids), bool, count=len(ids))
    written = False
    if fresh.any():
        chosen = np.flatnonzero(fresh)
        vectors = batch.vectors if fresh.all() else batch.vectors[chosen]
        if batch.paths is None and batch.texts is None and batch.modalities is None and batch.external_ids is None:
            catalog.add_imported(ids[chosen], vectors, IMPORTED_PREFIX)
        else:
            meta = _metadata(batch, chosen, None)
            hashes = [imported_hash(int(i)) for i in ids[chosen]]
            catalog.add_imported_rows(ids[chosen].tolist(), vectors, hashes, *meta)
        written = True
    held = np.flatnonzero(~fresh)
    if len(held):
        held_ids = ids[held].tolist()
        before = [stored[i] for i in held_ids]
        meta = _metadata(batch, held, before)
        old = catalog.vectors_for(held_ids, batch.vectors.shape[1])
        new = (batch.vectors if len(held) == len(ids) else batch.vectors[held]).astype(np.float32, copy=False)
        same_vector = (old == new).all(axis=1)
        same_meta = np.array([tuple(m[j] for m in meta) == before[j][:4] for j in range(len(held))], bool)
        changed = ~(same_vector & same_meta)
        if changed.any():
            rows = np.flatnonzero(changed)
            catalog.replace_imported_rows(
                [held_ids[j] for j in rows],
                batch.vectors[held[rows]],
                *([m[j] for j in rows] for m in meta),
                new_vectors=[not same_vector[j] for j in rows],
            )
            written = True
        report.updated += int(changed.sum())
        report.unchanged += int((~changed).sum())
    report.added += int(fresh.sum())
    return written


def _metadata(batch: Batch, rows: np.ndarray, before: list[tuple] | None) -> tuple[list, list, list, list]:
    """(modalities, paths, texts, external ids) of ``rows``; a field the source lacks keeps the stored value
    (``before``) of an item already there, and is empty for a new one."""
    out = []
    fields = (batch.modalities, batch.paths, batch.texts, batch.external_ids)
    for position, values in enumerate(fields):
        if values is not None:
            out.append([values[i] for i in rows])
        elif before is not None:
            out.append([row[position] for row in before])
        else:
            out.append(["image" if position == 0 else None] * len(rows))
    return out[0], out[1], out[2], out[3]


def _check_derived_ids(catalog, source: Source, plan: Plan, size: int) -> None:
    """Each derived vector of an export folder belongs to an item of the import or of the index, once."""
    known = set(plan.ids[plan.ids > 0].tolist()) if plan.ids is not None else set()
    for kind, derived in source.derived.items():
        ids = np.concatenate(
            [b.ids if b.ids is not None else np.zeros(len(b), np.int64) for b in derived.batches(size, vectors=False)]
            or [np.zeros(0, np.int64)]
        )
        if (ids == 0).any():
            raise InputFileError(f"{derived.name}: {kind} rows need the id of the item they belong to")
        _refuse_duplicates(ids, derived.name, "id")
        outside = sorted(set(ids.tolist()) - known)
        stored = catalog.content_hashes_for(outside)
        missing = [i for i in outside if i not in stored]
        if missing:
            raise InputFileError(f"{derived.name}: id {missing[0]} is not an item of the import or the index")


def _write_derived(store, kind: str, source: Source, size: int) -> int:
    """An export's derived vectors (gallery inversions) for the items they belong to, replacing any stored."""
    catalog, owner, written = store.catalog, DERIVED_OWNERS[kind], 0
    dtype = np.dtype(catalog.vector_dtype())
    for batch in _unit_batches(source, size, dtype):
        ids = batch.ids.tolist()
        rows = catalog.rows(ids)
        wrong = [i for i in ids if rows[i].modality != owner]
        if wrong:
            raise InputFileError(f"{source.name}: id {wrong[0]} is not an {owner}; {kind} vectors belong to {owner}s")
        catalog.set_derived(kind, ids, batch.vectors)
        store.commit()
        written += len(ids)
    return written


def _restore_inversion_records(store, source: Source) -> None:
    """The settings the exported gallery inversions were made with, so that `cgx invert` keeps them."""
    from crossgap_index.store.manifest import GALLERY_INVERTED

    for kind, _, record in GALLERY_INVERTED.values():
        if kind in source.derived and record in source.inversions and getattr(store.manifest, record) is None:
            setattr(store.manifest, record, source.inversions[record])


def _unit_batches(source: Source, size: int, dtype: np.dtype) -> Iterator[Batch]:
    """The source's batches with unit rows in the shards' ``dtype``."""
    done = 0
    for batch in source.batches(size):
        batch.vectors = unit_rows_as(batch.vectors, dtype, done + 1, source.name)
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


@dataclass(frozen=True)
class ImportProgress:
    """What an import tells while it runs: ``rows(done, total)`` as rows are written, then ``phases(phase, done,
    total)`` as the FAISS index is built from them (train, add, write)."""

    rows: CountProgress | None = None
    phases: StageProgress | None = None


def import_embeddings(
    index_path: Path,
    embeddings: Path,
    model: str,
    meta: Path | None = None,
    factory: str = "auto",
    vector_dtype: str | None = None,
    wait: bool = True,
    progress: CountProgress | ImportProgress | None = None,
) -> ImportReport:
    """Import into the index at ``index_path`` (made for ``model`` when missing); see the module docstring.
    ``vector_dtype``: how new shards store vectors (default: the source's float32 or float16). ``progress``:
    an ``ImportProgress``, or a plain ``fn(done, total)`` told the rows only."""
    from crossgap_index.models import parse_spec
    from crossgap_index.store.directory import IndexExistsError, Store
    from crossgap_index.store.manifest import MANIFEST_NAME

    canonical = parse_spec(model).canonical
    dim = model_dim(model)
    source = open_source(embeddings, meta)
    if source.model is not None and source.model != canonical:
        raise InputFileError(f"{embeddings}: exported from an index of model '{source.model}', not '{canonical}'")
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
    told = progress if isinstance(progress, ImportProgress) else ImportProgress(rows=progress)
    store.build_progress = told.phases
    try:
        with store.writing():
            report = import_source(store, source, told.rows)
            if report.added or report.updated or report.derived or store.rebuilt:  # else not even the generation
                began = time.perf_counter()
                if report.updated or report.derived:  # vectors replaced in place: counts alone do not show it
                    for name in store.indexes:
                        store.rebuild(name)
                store.save()  # the FAISS indexes, rebuilt once from the shards
                report.index_seconds = time.perf_counter() - began
    finally:
        store.close()
    return report

"""The write side of an index: the incremental image build, adding a text corpus, inverting the gallery.

``CrossGapIndex`` holds the index lock and calls these; the engine (local threads or Ray) only turns
paths into prepared batches. Catalog rows are committed a batch at a time, so an interrupted run keeps
what it finished and the next run resumes from there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossgap_index.engines import Engine, LoadedFn, ModelSite, PrepareRequest
from crossgap_index.ingest.decode import decode_side
from crossgap_index.ingest.embeddings import IMPORTED_PREFIX
from crossgap_index.ingest.pipeline import Prepared, ReadLimits, prepare
from crossgap_index.inversion.config import InversionConfig
from crossgap_index.inversion.keys import seed_from_digest, settings_fingerprint
from crossgap_index.pause_points import pause_point
from crossgap_index.store.catalog import ImageRecord
from crossgap_index.store.manifest import GALLERY_INVERTED
from crossgap_index.words import CountProgress, text_hash

TEXT_CHUNK = 256


@dataclass
class BuildReport:
    """What a build did. ``embedded`` counts images that went through the model; ``moved``: files found under
    a new path with the content of one gone from its old path (they keep their ids); ``adopted``: imported rows
    whose files a build saw for the first time (their stat recorded; ids, captions and vectors kept);
    ``known_failures``: files that failed before and are unchanged since (not read again; the first
    ``known_failures`` of ``skipped``)."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    reused: int = 0
    embedded: int = 0
    moved: int = 0
    adopted: int = 0
    known_failures: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    @property
    def changed(self) -> bool:
        """Whether the build changed what searches see (items added, replaced, moved or removed)."""
        return bool(self.added or self.updated or self.removed or self.moved)


@dataclass
class TextReport:
    added: int = 0
    duplicates: int = 0


@dataclass
class BuildPlan:
    """The diff of files on disk against the catalog, from stat alone (no file is read to make it)."""

    records: dict[str, ImageRecord] = field(default_factory=dict)  # the catalog's image files by path
    todo: list[Path] = field(default_factory=list)  # new or changed files: read, hashed, embedded when new content
    adopt: list[tuple[int, int, int]] = field(default_factory=list)  # (id, size, mtime): files behind imported rows
    gone: list[ImageRecord] = field(default_factory=list)  # indexed files no longer on disk under the pruned roots
    unchanged: int = 0
    known_failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) not read again
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): stat failed
    vanished_failures: list[str] = field(default_factory=list)  # remembered failures no longer on disk


def plan_build(
    catalog, paths: Sequence[Path], prune_roots: Sequence[Path], limits: ReadLimits, retry_failed: bool = False
) -> BuildPlan:
    """What a build has to do for ``paths`` (the files found) and the catalog's records under ``prune_roots``.

    A file is unchanged when its size and mtime are the recorded ones; a file that failed to decode at its
    present size and mtime, under the same read limits, is not read again unless ``retry_failed``."""
    records = catalog.images()
    plan = BuildPlan(records=records)
    failed = catalog.failed_files()
    key = limits_key(limits)
    for path in paths:
        record = records.get(str(path))
        try:
            stat = path.stat()
        except OSError as exc:
            plan.unreadable.append((str(path), f"unreadable: {exc.strerror or exc}"))
            continue
        failure = failed.get(str(path))
        if record and record.size == stat.st_size and record.mtime_ns == stat.st_mtime_ns:
            plan.unchanged += 1
        elif not retry_failed and failure is not None and failure[:3] == (stat.st_size, stat.st_mtime_ns, key):
            plan.known_failures.append((str(path), failure[3]))
        elif record is not None and _never_seen_import(record):
            plan.adopt.append((record.id, stat.st_size, stat.st_mtime_ns))
        else:
            plan.todo.append(path)
    on_disk = {str(p) for p in paths}
    plan.gone = [
        r
        for p, r in records.items()
        if p not in on_disk and _under_any(p, prune_roots) and not _never_seen_import(r)  # imports name, not own
    ]
    plan.vanished_failures = [p for p in failed if p not in on_disk and _under_any(p, prune_roots)]
    return plan


def _never_seen_import(record: ImageRecord) -> bool:
    """An imported row whose file no build has seen yet (imports record no stat)."""
    return record.content_hash.startswith(IMPORTED_PREFIX) and record.mtime_ns == 0


def limits_key(limits: ReadLimits) -> str:
    """The read limits a failure is remembered under: raising a limit retries the files it refused."""
    return f"{limits.max_megapixels:g}MP,{limits.max_file_bytes}B"


class ImageBuild:
    """One incremental build: diff the files against the catalog, embed what is new or changed (or reuse a
    stored vector with the same content), write it, and remove what vanished under the given roots.

    Ids follow files: an edited file keeps its id (its vector is replaced), a file found under a new path with
    the content of one gone from its old path keeps that one's id, and an imported row's file keeps the row's
    id, caption and vector (its stat is recorded, nothing is read) until the file changes, which is an edit.
    Nothing is committed as a new generation when nothing searchable changed."""

    def __init__(self, store, encoder: Callable, before_embedding: Callable[[], None], device: str):
        self._store = store
        self._encoder = encoder
        self._before_embedding = before_embedding  # records the precision new vectors are written in
        self._device = device

    def run(
        self,
        paths: list[Path],
        prune_roots: list[Path],
        limits: ReadLimits,
        batch_size: int,
        workers: int,
        engine: Engine,
        progress: CountProgress | None,
        retry_failed: bool = False,
    ) -> BuildReport:
        start = time.perf_counter()
        report = BuildReport()
        catalog = self._store.catalog
        plan = plan_build(catalog, paths, prune_roots, limits, retry_failed)
        report.unchanged = plan.unchanged
        report.skipped.extend(plan.known_failures)
        report.skipped.extend(plan.unreadable)
        report.known_failures = len(plan.known_failures)
        records = plan.records
        gone_by_hash: dict[str, list[ImageRecord]] = {}
        for record in plan.gone:
            gone_by_hash.setdefault(record.content_hash, []).append(record)
        todo = plan.todo
        for record_id, size, mtime_ns in plan.adopt:  # the imported vector stays the one searched
            catalog.adopt_file(record_id, size, mtime_ns)
        report.adopted = len(plan.adopt)

        known = catalog.known_hashes("image")
        if todo:  # decode no larger than the model's input: memory follows the model, not the photos
            limits = dataclasses.replace(limits, min_side=decode_side(self._encoder().input_size))
        done = 0
        if progress:
            progress(0, len(todo))
        try:
            request = PrepareRequest(
                model=self._store.manifest.model,
                device=self._device,
                precision=self._encoder().precision if todo else "auto",  # the index's rule; no model load if idle
                batch_size=batch_size,
                workers=workers,
                limits=limits,
            )
            batches = engine.batches(todo, known, request)
            for batch in batches:
                before = (report.added, report.updated, report.moved)
                self._store_batch(batch, records, known, gone_by_hash, report, limits)
                self._commit((report.added, report.updated, report.moved) != before)
                pause_point("build-committed")
                done += len(batch)
                if progress:
                    progress(done, len(todo))
            moved_ids = {r.id for r in plan.gone} - {r.id for rs in gone_by_hash.values() for r in rs}
            gone = [r.id for r in plan.gone if r.id not in moved_ids]
            self._store.remove(gone)
            catalog.forget_failures(plan.vanished_failures)
            report.removed = len(gone)
        except BaseException:
            if report.changed:
                self._store.save()  # what finished is kept: the next build resumes from it
            raise
        if report.changed:
            self._store.save()
        else:  # nothing searchable changed: the generation, FAISS files and derived collections stay
            catalog.commit_bookkeeping()
        report.seconds = time.perf_counter() - start
        return report

    def _commit(self, changed: bool) -> None:
        if changed:
            self._store.commit()
        else:
            self._store.catalog.commit_bookkeeping()

    def _store_batch(
        self,
        batch: list[Prepared],
        records: dict[str, ImageRecord],
        known: set[str],
        gone_by_hash: dict[str, list[ImageRecord]],
        report: BuildReport,
        limits: ReadLimits,
    ) -> None:
        catalog = self._store.catalog
        key = limits_key(limits)
        failures, succeeded = [], []
        remaining = []
        for item in batch:  # moves first: they need no vector
            if self._move(item, records, gone_by_hash, report):
                succeeded.append(str(item.path))
            else:
                remaining.append(item)
        batch = remaining
        vectors: dict[str, np.ndarray] = {}
        for i, item in enumerate(batch):
            if item.error is not None:
                continue
            if item.vector is not None:  # embedded by the engine
                vectors[item.file.content_hash] = item.vector
            elif item.reused:
                stored = catalog.vector_by_hash(item.file.content_hash)
                if stored is not None:
                    vectors[item.file.content_hash] = stored
                else:  # its only holder was replaced earlier in this run: read and decode it after all
                    batch[i] = prepare(item.path, lambda _: False, limits)
        fresh = [p for p in batch if p.image is not None]
        if fresh:
            self._before_embedding()
            images = [p.image for p in fresh]
            encoded = self._encoder().encode_images(images)
            vectors.update(zip((p.file.content_hash for p in fresh), encoded, strict=True))
            report.embedded += len(fresh)
        report.embedded += sum(item.vector is not None for item in batch)
        new_ids, new_vectors, replaced_ids, replaced_vectors = [], [], [], []
        for item in batch:
            if item.error is not None:
                report.skipped.append((str(item.path), item.error))
                if item.file is not None:  # read, and failed to decode: not read again while unchanged
                    failures.append((str(item.path), item.file.size, item.file.mtime_ns, key, item.error))
                continue
            file, old = item.file, records.get(str(item.path))
            succeeded.append(str(item.path))
            if old is not None and old.content_hash == file.content_hash:
                catalog.update_stat(old.id, file.size, file.mtime_ns)  # touched, same content
                report.unchanged += 1
                continue
            vector = vectors[file.content_hash]
            report.reused += item.reused
            if old is not None:  # edited in place: same id, new vector
                catalog.replace_image(old.id, file.content_hash, file.size, file.mtime_ns, vector)
                replaced_ids.append(old.id)
                replaced_vectors.append(vector)
                records[str(item.path)] = dataclasses.replace(old, content_hash=file.content_hash)
                report.updated += 1
            else:
                new_ids.append(catalog.add_image(str(item.path), file.content_hash, file.size, file.mtime_ns, vector))
                new_vectors.append(vector)
                report.added += 1
            known.add(file.content_hash)
        if new_ids:
            self._store.add("image", new_ids, np.stack(new_vectors))
        if replaced_ids:
            self._store.replace("image", replaced_ids, np.stack(replaced_vectors))
        catalog.record_failures(failures)
        catalog.forget_failures(succeeded)

    def _move(
        self, item: Prepared, records: dict[str, ImageRecord], gone_by_hash: dict[str, list[ImageRecord]], report
    ) -> bool:
        """A new path with the content of a file gone from its indexed path: the item moves, keeping its id."""
        if item.error is not None or str(item.path) in records or not gone_by_hash.get(item.file.content_hash):
            return False
        origin = gone_by_hash[item.file.content_hash].pop()
        self._store.catalog.move_image(origin.id, str(item.path), item.file.size, item.file.mtime_ns)
        report.moved += 1
        return True


def add_text_items(
    store,
    encoder,
    texts: Sequence[str],
    ids: Sequence[str | None] | None,
    before_embedding: Callable[[], None],
    progress: CountProgress | None = None,
) -> TextReport:
    """Embed and store texts whose exact content is not stored yet, a chunk per commit."""
    report = TextReport()
    known = store.catalog.known_hashes("text")
    fresh: dict[str, tuple[str, str | None]] = {}
    for i, text in enumerate(texts):
        digest = text_hash(text)
        if digest in known or digest in fresh:
            report.duplicates += 1
        else:
            fresh[digest] = (text, ids[i] if ids is not None else None)
    items = list(fresh.items())
    if items:
        before_embedding()
    if progress:
        progress(0, len(items))
    for start in range(0, len(items), TEXT_CHUNK):
        chunk = items[start : start + TEXT_CHUNK]
        vectors = encoder.encode_texts([text for _, (text, _) in chunk])
        new_ids = [
            store.catalog.add_text(text, digest, ext, vec)
            for (digest, (text, ext)), vec in zip(chunk, vectors, strict=True)
        ]
        store.add("text", new_ids, vectors)
        store.commit()
        report.added += len(chunk)
        if progress:
            progress(report.added, len(items))
    store.save()
    return report


def invert_gallery_items(
    store,
    config: InversionConfig,
    modality: str,
    engine: Engine,
    loaded: LoadedFn,
    device: str,
    progress: CountProgress | None = None,
) -> int:
    """Store each gallery item's inverted feature: an image's OTI text-space feature (``image-oti``) or a
    text's OVI image-space feature (``text-ovi``). Resumable: only items without one are inverted, and
    other settings than the stored ones start over. The engine inverts blocks of ``config.batch_size`` rows
    (in this process or its actor pool) and hands them back in order; each block is written and committed
    here as it arrives, so an interrupted run keeps what came back. Returns how many were inverted."""
    manifest, catalog = store.manifest, store.catalog
    kind, direction, record = GALLERY_INVERTED[modality]
    stored = getattr(manifest, record)
    if stored is not None and InversionConfig(**stored) == config and _all_inverted(catalog, kind, modality):
        return 0  # every item has its feature under the stored settings: no model load, no new generation
    site = ModelSite(manifest.model, device, loaded)
    config = engine.inversion_config(config, site)
    settings = dataclasses.asdict(config)
    if stored is not None and _fingerprint(stored, direction) != _fingerprint(settings, direction):
        catalog.clear_derived(kind)  # other settings: the stored features no longer apply
        store.rebuild(kind)
    setattr(manifest, record, settings)
    ids, vectors = catalog.ids_and_vectors(modality, manifest.dim)
    done = catalog.derived_ids(kind)
    todo = [i for i, item_id in enumerate(ids.tolist()) if item_id not in done]
    seeds = [seed_from_digest(h) for h in catalog.content_hashes_of(ids[todo].tolist())]
    size = config.batch_size
    starts = range(0, len(todo), size)
    blocks = ((vectors[todo[first : first + size]], seeds[first : first + size]) for first in starts)
    if progress:
        progress(0, len(todo))
    inverted_blocks = engine.invert(blocks, direction, config, site)
    try:
        with contextlib.closing(inverted_blocks):  # stopping early (Ctrl-C) releases the engine's workers at once
            for first, inverted in zip(starts, inverted_blocks, strict=True):
                rows = ids[todo[first : first + size]].tolist()
                catalog.set_derived(kind, rows, inverted)
                store.add(kind, rows, inverted)
                store.commit()
                if progress:
                    progress(first + len(rows), len(todo))
    finally:
        store.save()
    return len(todo)


def _all_inverted(catalog, kind: str, modality: str) -> bool:
    return catalog.count_derived(kind) == catalog.count(modality)


def _under_any(path: str, roots: list[Path]) -> bool:
    p = Path(path)
    return any(p == r or r in p.parents for r in roots)


def _fingerprint(settings: dict, direction: str) -> str:
    return settings_fingerprint(InversionConfig(**settings), direction)

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

from crossgap_index.engines import Engine, LoadedFn
from crossgap_index.ingest.decode import content_hash
from crossgap_index.ingest.pipeline import Prepared, ReadLimits, decode_side, prepare
from crossgap_index.inversion.config import InversionConfig
from crossgap_index.inversion.keys import seed_from_digest, settings_fingerprint
from crossgap_index.pause_points import pause_point

GALLERY_OTI = "image-oti"
GALLERY_OVI = "text-ovi"
# modality -> (derived collection, inversion direction, the manifest field recording its settings)
GALLERY_INVERTED = {
    "image": (GALLERY_OTI, "oti", "gallery_inversion"),
    "text": (GALLERY_OVI, "ovi", "text_gallery_inversion"),
}
TEXT_CHUNK = 256

# progress(done, total): called as files (or texts, or gallery images) are processed.
ProgressFn = Callable[[int, int], None]


@dataclass
class BuildReport:
    """What a build did. ``embedded`` counts images that went through the model."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    reused: int = 0
    embedded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TextReport:
    added: int = 0
    duplicates: int = 0


class ImageBuild:
    """One incremental build: diff the files against the catalog, embed what is new or changed (or reuse a
    stored vector with the same content), write it, and remove what vanished under the given roots."""

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
        progress: ProgressFn | None,
    ) -> BuildReport:
        start = time.perf_counter()
        report = BuildReport()
        catalog = self._store.catalog
        records = catalog.images()
        todo = []
        for path in paths:
            record = records.get(str(path))
            try:
                stat = path.stat()
            except OSError as exc:
                report.skipped.append((str(path), f"unreadable: {exc.strerror or exc}"))
                continue
            if record and record.size == stat.st_size and record.mtime_ns == stat.st_mtime_ns:
                report.unchanged += 1
            else:
                todo.append(path)
        on_disk = {str(p) for p in paths}
        gone = [r.id for p, r in records.items() if p not in on_disk and _under_any(p, prune_roots)]

        known = catalog.known_hashes("image")
        if todo:  # decode no larger than the model's input: memory follows the model, not the photos
            limits = dataclasses.replace(limits, min_side=decode_side(self._encoder().input_size))
        done = 0
        if progress:
            progress(0, len(todo))
        try:
            batches = engine.batches(
                todo,
                known,
                model=self._store.manifest.model,
                device=self._device,
                precision=self._encoder().precision if todo else "auto",  # the index's rule; no model load if idle
                batch_size=batch_size,
                workers=workers,
                limits=limits,
            )
            for batch in batches:
                self._store_batch(batch, records, known, report, limits)
                self._store.commit()
                pause_point("build-committed")
                done += len(batch)
                if progress:
                    progress(done, len(todo))
            self._store.remove(gone)
            report.removed = len(gone)
        finally:
            self._store.save()
            report.seconds = time.perf_counter() - start
        return report

    def _store_batch(
        self, batch: list[Prepared], records: dict, known: set[str], report: BuildReport, limits: ReadLimits
    ) -> None:
        catalog = self._store.catalog
        vectors: dict[str, np.ndarray] = {}
        for i, item in enumerate(batch):
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
        new_ids, new_vectors = [], []
        for item in batch:
            if item.error is not None:
                report.skipped.append((str(item.path), item.error))
                continue
            file, old = item.file, records.get(str(item.path))
            if old is not None and old.content_hash == file.content_hash:
                catalog.update_stat(old.id, file.size, file.mtime_ns)  # touched, same content
                report.unchanged += 1
                continue
            if old is not None:
                self._store.remove([old.id])
                report.updated += 1
            else:
                report.added += 1
            report.reused += item.reused
            vector = vectors[file.content_hash]
            new_ids.append(catalog.add_image(str(item.path), file.content_hash, file.size, file.mtime_ns, vector))
            new_vectors.append(vector)
            known.add(file.content_hash)
        if new_ids:
            self._store.add("image", new_ids, np.stack(new_vectors))


def add_text_items(
    store,
    encoder,
    texts: Sequence[str],
    ids: Sequence[str | None] | None,
    before_embedding: Callable[[], None],
    progress: ProgressFn | None = None,
) -> TextReport:
    """Embed and store texts whose exact content is not stored yet, a chunk per commit."""
    report = TextReport()
    known = store.catalog.known_hashes("text")
    fresh: dict[str, tuple[str, str | None]] = {}
    for i, text in enumerate(texts):
        digest = content_hash(text.encode("utf-8"))
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
    progress: ProgressFn | None = None,
) -> int:
    """Store each gallery item's inverted feature: an image's OTI text-space feature (``image-oti``) or a
    text's OVI image-space feature (``text-ovi``). Resumable: only items without one are inverted, and
    other settings than the stored ones start over. The engine inverts blocks of ``config.batch_size`` rows
    (in this process or its actor pool) and hands them back in order; each block is written and committed
    here as it arrives, so an interrupted run keeps what came back. Returns how many were inverted."""
    manifest, catalog = store.manifest, store.catalog
    kind, direction, record = GALLERY_INVERTED[modality]
    config = engine.inversion_config(config, model=manifest.model, device=device, loaded=loaded)
    settings = dataclasses.asdict(config)
    stored = getattr(manifest, record)
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
    inverted_blocks = engine.invert(
        blocks, direction=direction, config=config, model=manifest.model, device=device, loaded=loaded
    )
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


def _under_any(path: str, roots: list[Path]) -> bool:
    p = Path(path)
    return any(p == r or r in p.parents for r in roots)


def _fingerprint(settings: dict, direction: str) -> str:
    return settings_fingerprint(InversionConfig(**settings), direction)

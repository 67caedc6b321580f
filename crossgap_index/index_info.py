"""What an index says about itself: the IndexInfo of ``cgx info`` and the tuned-mode records of its manifest."""

from __future__ import annotations

from dataclasses import dataclass

from crossgap_index.errors import QueryError
from crossgap_index.index_inverters import inverter_file, inverter_stats
from crossgap_index.search.modes import describe_cross, resolve_mode
from crossgap_index.search.searcher import Searcher
from crossgap_index.store.directory import Store
from crossgap_index.store.manifest import Manifest, tuned_task


@dataclass(frozen=True)
class IndexInfo:
    path: str
    model: str
    dim: int
    metric: str
    counts: dict[str, int]
    factories: dict[str, str]
    disk_bytes: dict[str, int]
    schema_version: int
    crossgap_version: str
    gallery_inversion: dict | None = None
    tuned_mode: dict | None = None  # the record stored last (what a reader that knows no per-task records shows)
    inverter: dict | None = None
    precision: str = "fp32"
    tuned_modes: dict | None = None  # task (image-to-image, text-to-text, text-to-image, any) -> record
    text_inverter: dict | None = None
    text_gallery_inversion: dict | None = None
    cross: dict | None = None  # per query modality: what --cross runs and why (search.modes.describe_cross)


def index_info(store: Store, searcher: Searcher) -> IndexInfo:
    """The IndexInfo of the state ``store`` holds (the caller holds its read lock)."""
    m = store.manifest
    return IndexInfo(
        path=str(store.path),
        model=m.model,
        dim=m.dim,
        metric=m.metric,
        counts={n: idx.ntotal for n, idx in store.indexes.items()},
        factories={n: idx.resolved_factory for n, idx in store.indexes.items()},
        disk_bytes=store.disk_sizes(),
        schema_version=m.schema_version,
        crossgap_version=m.crossgap_version,
        gallery_inversion=m.gallery_inversion,
        tuned_mode=m.tuned_mode,
        inverter=inverter_stats(inverter_file(store.path, "image")),
        precision=m.precision,
        tuned_modes=dict(m.tuned_modes),
        text_inverter=inverter_stats(inverter_file(store.path, "text")),
        text_gallery_inversion=m.text_gallery_inversion,
        cross={q: describe_cross(m.model, searcher.tuned_record(q, q)) for q in ("image", "text")},
    )


def check_tuned_record(record: dict | None) -> None:
    """Refuse a malformed tune record before it is saved (None: a clearing, always well formed)."""
    if record is not None:
        if not isinstance(record, dict) or not isinstance(record.get("mode"), dict):
            raise QueryError("a tuned-mode record is a dict with a 'mode' (see cgx tune)")
        resolve_mode("auto", tuned=record["mode"])


def apply_tuned_record(manifest: Manifest, record: dict | None, task: str | None) -> None:
    """Store ``record`` for its task, replacing only that task's record; ``None`` clears ``task``'s record, or
    with no ``task`` every record. ``tuned_mode`` follows as the record stored last."""
    if record is not None:
        manifest.tuned_modes[tuned_task(record)] = record
    elif task is None:
        manifest.tuned_modes.clear()
    else:
        manifest.tuned_modes.pop(task, None)
    manifest.tuned_mode = record if record is not None else next(reversed(manifest.tuned_modes.values()), None)

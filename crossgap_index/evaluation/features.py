"""The embedded, labelled items a task runs on (``FeatureSet``), how images and texts become them, and the
in-memory inversion cache the modes of one task share."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crossgap_index.errors import InputFileError
from crossgap_index.evaluation.data import EvalDataset, ImageSet, TextSet
from crossgap_index.ingest.decode import DecodeError, decode_rgb
from crossgap_index.models import Encoder
from crossgap_index.search.run import Queries
from crossgap_index.words import StageProgress, content_hash, text_hash

_EMBED_BATCH = 64
# Ties: the engine (search/run.py) orders equal scores (within 1e-6) by the intra score, as it serves them; what
# is still equal (duplicate items) goes by gallery position, the gallery put in content-hash order first so a
# class-sorted folder does not decide by label and each dataset form (folder, synthetic) agrees.
TIES = (
    "equal scores (within 1e-6) ordered by the intra score, as served; then by gallery position, the gallery "
    "ordered by content hash (independent of file order and labels)"
)


class MemoryCache:
    """An inversion cache in memory, so modes sharing an inversion (cross, fused) compute it once."""

    def __init__(self) -> None:
        self._vectors: dict[str, np.ndarray] = {}

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: self._vectors[k] for k in keys if k in self._vectors}

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        self._vectors.update(items)

    def items(self) -> dict[str, np.ndarray]:
        """Every kept vector by its key (a copy of the mapping)."""
        return dict(self._vectors)


@dataclass
class FeatureSet:
    """Embedded, labelled items: the queries and gallery of one task, in the engine's terms."""

    queries: Queries
    query_labels: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray
    leave_one_out: bool  # queries are the gallery; each leaves itself out

    def exclude_ids(self) -> np.ndarray | None:
        return np.arange(len(self.queries)) if self.leave_one_out else None


def take_queries(queries: Queries, rows: Sequence[int] | np.ndarray) -> Queries:
    """The queries at ``rows``, with their digests."""
    return Queries(queries.features[rows], queries.modality, tuple(queries.digests[i] for i in rows))


def image_features(data: EvalDataset, encoder: Encoder, notes: list[str], report: StageProgress) -> FeatureSet:
    """The image-to-image task's features: every decodable image is a query and the gallery."""
    feats, digests, labels = _embed_images(data.images, encoder, notes, report)
    return FeatureSet(Queries(feats, "image", tuple(digests)), labels, feats, labels, True)


def text_features(texts: TextSet, encoder: Encoder, report: StageProgress | None = None) -> FeatureSet:
    """The text-to-text task's features: each group's query caption against the other captions."""
    stage = "embedding texts"
    say = report or (lambda stage, done, total: None)
    say(stage, 0, 2)
    queries = encoder.encode_texts(texts.query_texts)
    say(stage, 1, 2)
    gallery = encoder.encode_texts(texts.gallery_texts)
    say(stage, 2, 2)
    digests = tuple(text_hash(t) for t in texts.query_texts)
    return FeatureSet(Queries(queries, "text", digests), texts.query_groups, gallery, texts.gallery_groups, False)


def embed_cost_ms(encoder: Encoder, data: EvalDataset, samples: int = 3) -> float:
    """Median milliseconds to embed one query image at batch 1 (what every image query pays first)."""
    times = []
    for i in range(min(samples + 1, len(data.images.items))):
        try:
            image = decode_rgb(data.images.read(i))
        except DecodeError:
            continue
        begin = time.perf_counter()
        encoder.encode_images([image])
        times.append(time.perf_counter() - begin)
    return float(np.median(times[1:] or times) * 1e3) if times else float("nan")


def _embed_images(
    images: ImageSet, encoder: Encoder, notes: list[str], report: StageProgress
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Unit features, content hashes and labels of the images that decode; the others become a note."""
    feats, digests, kept, bad = [], [], [], []
    total = len(images.items)
    report("embedding images", 0, total)
    for first in range(0, total, _EMBED_BATCH):
        decoded = []
        for i in range(first, min(first + _EMBED_BATCH, total)):
            data = images.read(i)
            try:
                decoded.append(decode_rgb(data))
            except DecodeError as exc:
                bad.append(f"{images.items[i]} ({exc})")
                continue
            digests.append(content_hash(data))
            kept.append(i)
        feats.append(encoder.encode_images(decoded))
        report("embedding images", min(first + _EMBED_BATCH, total), total)
    if bad:
        shown = "; ".join(bad[:20]) + (f"; ... ({len(bad) - 20} more)" if len(bad) > 20 else "")
        notes.append(f"{len(bad)} undecodable images left out: {shown}")
    labels = images.labels[kept]
    if len(np.unique(labels)) < 2:
        raise InputFileError("image-to-image evaluation needs at least 2 classes with decodable images")
    order = np.argsort(digests, kind="stable")  # content-hash order: see TIES
    return np.concatenate(feats)[order], [digests[i] for i in order], labels[order]

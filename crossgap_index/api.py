"""CrossGapIndex: the one public entry point that the CLI and library users call."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from crossgap_index.errors import QueryError, StoreError
from crossgap_index.ingest.decode import DEFAULT_MAX_MEGAPIXELS, DecodeError, content_hash, decode_rgb
from crossgap_index.ingest.discover import find_images, resolve_roots
from crossgap_index.ingest.pipeline import Prepared, prepared_batches
from crossgap_index.inversion import InversionConfig, oti, ovi
from crossgap_index.inversion.keys import cache_key, seed_from_digest, settings_fingerprint
from crossgap_index.models import Encoder, default_model_spec, load_model, parse_spec
from crossgap_index.models.encoder import precision_agreement
from crossgap_index.precision import after_write, check_setting, precision_for_index, precision_for_new_index
from crossgap_index.search.merge import RRF_K, reciprocal_rank_fusion, score_fusion
from crossgap_index.search.ranking import Ranked, top_k
from crossgap_index.store.directory import Store, default_index_path
from crossgap_index.store.vectors import AUTO

TARGETS = {"images": "image", "texts": "text"}
MODES = ("intra", "cross", "fused", "cross-gallery")
MERGES = ("rrf", "score")
GALLERY_OTI = "image-oti"

# progress(done, total): called as files (or gallery images) are processed.
ProgressFn = Callable[[int, int], None]
# progress(step, mean_loss): called after each inversion step.
InversionProgressFn = Callable[[int, float], None]


@dataclass(frozen=True)
class Query:
    """An embedded query: unit feature, modality ('image', 'text' or 'vector'), content hash."""

    feature: np.ndarray
    modality: str
    digest: str


@dataclass(frozen=True)
class Hit:
    """One search result. ``ranks``/``scores`` give its position in each merged list (1-based)."""

    id: int
    score: float
    modality: str
    path: str | None = None
    text: str | None = None
    external_id: str | None = None
    ranks: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


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
    precision: str = "fp32"


class CrossGapIndex:
    """An index directory plus the model it was built with (loaded on first use).

    ``precision`` (auto, fp32, bf16) is what the model embeds in; the index records the precision
    of its vectors and admits another only within the measured agreement (crossgap_index.precision).
    """

    def __init__(self, store: Store, device: str = "auto", precision: str = "auto"):
        self._store = store
        self._device = device
        self._precision = check_setting(precision)
        self._encoder: Encoder | None = None

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path | None = None,
        model: str | None = None,
        device: str = "auto",
        factory: str = AUTO,
        precision: str = "auto",
    ) -> CrossGapIndex:
        """Make a new, empty index directory for ``model`` (default: $CGX_MODEL or the open_clip default)."""
        path = _index_path(path)
        spec = parse_spec(model or default_model_spec())
        loaded = load_model(spec, device)
        measured: list[float] = []

        def agreement() -> float:  # measured only when auto would pick bf16
            measured.append(precision_agreement(loaded))
            return measured[0]

        encoder = Encoder(loaded, precision=precision_for_new_index(check_setting(precision), loaded.device, agreement))
        store = Store.create(path, spec.canonical, encoder.dim, factory, encoder.precision)
        if measured:
            store.manifest.precision_agreement = measured[0]
            store.manifest.save(path)
        index = cls(store, device, precision)
        index._encoder = encoder
        return index

    @classmethod
    def open(
        cls, path: str | Path | None = None, model: str | None = None, device: str = "auto", precision: str = "auto"
    ) -> CrossGapIndex:
        """Open an existing index; ``model``, when given, must be the one the index was built with.

        An explicit ``precision`` is checked against the index's vectors now (loading the model);
        ``auto`` never refuses and is resolved when the model is first needed.
        """
        path = _index_path(path)
        store = Store.open(path)
        if model is not None and parse_spec(model).canonical != store.manifest.model:
            store.close()
            raise StoreError(
                f"index at {path} was built with model '{store.manifest.model}', not '{parse_spec(model).canonical}'"
            )
        index = cls(store, device, precision)
        if precision != "auto":
            try:
                index.encoder  # noqa: B018 - builds the encoder, refusing a precision the vectors do not agree with
            except BaseException:
                store.close()
                raise
        return index

    @classmethod
    def open_or_create(
        cls,
        path: str | Path | None = None,
        model: str | None = None,
        device: str = "auto",
        factory: str = AUTO,
        precision: str = "auto",
    ) -> CrossGapIndex:
        path = _index_path(path)
        if (path / "manifest.json").exists():
            return cls.open(path, model=model, device=device, precision=precision)
        return cls.create(path, model=model, device=device, factory=factory, precision=precision)

    def save(self) -> None:
        self._store.save()

    def close(self) -> None:
        """Release the files. Writes are saved by the methods that make them."""
        self._store.close()

    def __enter__(self) -> CrossGapIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def gallery_inversion(self) -> dict | None:
        """The InversionConfig (as a dict) of the gallery's stored OTI features, or None when not inverted."""
        return self._store.manifest.gallery_inversion

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            loaded = load_model(self._store.manifest.model, self._device)
            stored, where = self._store.manifest.precision, f"index at {self.path}"
            agreement = lambda: self._agreement(loaded)  # noqa: E731 - measured only when precisions differ
            precision = precision_for_index(self._precision, stored, loaded.device, agreement, where)
            self._encoder = Encoder(loaded, precision=precision)
        return self._encoder

    def _agreement(self, loaded) -> float:
        """The model's fp32/bf16 probe agreement, measured once per index and kept in its manifest."""
        manifest = self._store.manifest
        if manifest.precision_agreement is None:
            manifest.precision_agreement = precision_agreement(loaded)
            manifest.save(self.path)
        return manifest.precision_agreement

    def _record_precision(self) -> None:
        """Before new vectors are written: the index's precision covers them (saved with them)."""
        manifest = self._store.manifest
        empty = not any(self._store.indexes[name].ntotal for name in ("image", "text"))
        manifest.precision = after_write(manifest.precision, self.encoder.precision, empty)

    # -- writing --------------------------------------------------------------------------
    def index_folders(
        self,
        roots: Iterable[str | Path],
        *,
        include_hidden: bool = False,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        batch_size: int = 64,
        workers: int = 4,
        progress: ProgressFn | None = None,
    ) -> BuildReport:
        """Bring the index in line with the image files under ``roots``: new and changed files are
        embedded (or reuse a stored vector with the same content), files gone from disk leave."""
        roots = resolve_roots(roots)
        paths = find_images(roots, include_hidden=include_hidden)
        return self._ingest(paths, roots, max_megapixels, batch_size, workers, progress)

    def add_images(
        self,
        paths: Iterable[str | Path],
        *,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        batch_size: int = 64,
        progress: ProgressFn | None = None,
    ) -> BuildReport:
        """Add or update the given image files; nothing is removed."""
        files = [Path(p).expanduser().resolve() for p in paths]
        return self._ingest(files, [], max_megapixels, batch_size, 4, progress)

    def _ingest(
        self,
        paths: list[Path],
        prune_roots: list[Path],
        max_megapixels: float,
        batch_size: int,
        workers: int,
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
        done = 0
        if progress:
            progress(0, len(todo))
        try:
            for batch in prepared_batches(todo, known.__contains__, batch_size, workers, max_megapixels):
                self._store_batch(batch, records, known, report)
                self._store.commit()
                done += len(batch)
                if progress:
                    progress(done, len(todo))
            self._store.remove(gone)
            report.removed = len(gone)
        finally:
            self._store.save()
            report.seconds = time.perf_counter() - start
        return report

    def _store_batch(self, batch: list[Prepared], records: dict, known: set[str], report: BuildReport) -> None:
        catalog = self._store.catalog
        vectors: dict[str, np.ndarray] = {}
        for item in batch:
            if item.reused:
                stored = catalog.vector_by_hash(item.file.content_hash)
                if stored is not None:
                    vectors[item.file.content_hash] = stored
        fresh = [p for p in batch if p.image is not None or (p.reused and p.file.content_hash not in vectors)]
        if fresh:  # a reused vector can vanish when its only holder was replaced earlier in this run
            self._record_precision()
            images = [p.image if p.image is not None else decode_rgb(p.file.data) for p in fresh]
            vectors.update(zip((p.file.content_hash for p in fresh), self.encoder.encode_images(images), strict=True))
            report.embedded += len(fresh)
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
            report.reused += item.reused and item not in fresh
            vector = vectors[file.content_hash]
            new_ids.append(catalog.add_image(str(item.path), file.content_hash, file.size, file.mtime_ns, vector))
            new_vectors.append(vector)
            known.add(file.content_hash)
        if new_ids:
            self._store.add("image", new_ids, np.stack(new_vectors))

    def add_texts(self, texts: Sequence[str], ids: Sequence[str | None] | None = None) -> TextReport:
        """Embed and store texts, skipping any whose exact content is already stored."""
        if ids is not None and len(ids) != len(texts):
            raise QueryError("add_texts: texts and ids differ in length")
        report = TextReport()
        known = self._store.catalog.known_hashes("text")
        fresh: dict[str, tuple[str, str | None]] = {}
        for i, text in enumerate(texts):
            digest = content_hash(text.encode("utf-8"))
            if digest in known or digest in fresh:
                report.duplicates += 1
            else:
                fresh[digest] = (text, ids[i] if ids is not None else None)
        items = list(fresh.items())
        if items:
            self._record_precision()
        for start in range(0, len(items), 256):
            chunk = items[start : start + 256]
            vectors = self.encoder.encode_texts([text for _, (text, _) in chunk])
            new_ids = [
                self._store.catalog.add_text(text, digest, ext, vec)
                for (digest, (text, ext)), vec in zip(chunk, vectors, strict=True)
            ]
            self._store.add("text", new_ids, vectors)
            self._store.commit()
            report.added += len(chunk)
        self._store.save()
        return report

    def remove(self, ids: Iterable[int]) -> None:
        self._store.remove([int(i) for i in ids])
        self._store.save()

    # -- gallery-side inversion ------------------------------------------------------------
    def invert_gallery(self, config: InversionConfig | None = None, progress: ProgressFn | None = None) -> int:
        """Store each gallery image's OTI text-space feature (collection ``image-oti``), so image queries
        can be compared inter-modally with no optimisation at query time (mode ``cross-gallery``).
        Resumable: only images without a stored feature are inverted. Returns how many were."""
        config = (config or InversionConfig()).resolved(self.encoder.device)
        manifest, catalog = self._store.manifest, self._store.catalog
        settings = dataclasses.asdict(config)
        if manifest.gallery_inversion is not None and _fingerprint(manifest.gallery_inversion) != _fingerprint(
            settings
        ):
            catalog.clear_derived(GALLERY_OTI)  # other settings: the stored features no longer apply
            self._store.rebuild(GALLERY_OTI)
        manifest.gallery_inversion = settings
        ids, vectors = catalog.ids_and_vectors("image", manifest.dim)
        done = catalog.derived_ids(GALLERY_OTI)
        todo = [i for i, item_id in enumerate(ids.tolist()) if item_id not in done]
        seeds = [seed_from_digest(h) for h in catalog.content_hashes(ids[todo].tolist())]
        if progress:
            progress(0, len(todo))
        try:
            for first in range(0, len(todo), config.batch_size):
                rows = todo[first : first + config.batch_size]
                inverted = oti(self.encoder.loaded, vectors[rows], config, seeds[first : first + len(rows)])
                catalog.set_derived(GALLERY_OTI, ids[rows].tolist(), inverted)
                self._store.add(GALLERY_OTI, ids[rows].tolist(), inverted)
                self._store.commit()
                if progress:
                    progress(first + len(rows), len(todo))
        finally:
            self._store.save()
        return len(todo)

    # -- reading --------------------------------------------------------------------------
    def embed_query(self, image: str | Path | Image.Image | None = None, text: str | None = None, vector=None) -> Query:
        """The query's unit feature, its modality and its content hash."""
        given = [x is not None for x in (image, text, vector)]
        if sum(given) != 1:
            raise QueryError("give exactly one of image=, text= or vector=")
        if vector is not None:
            vec = np.asarray(vector, np.float32).reshape(-1)
            if vec.shape[0] != self._store.manifest.dim:
                raise QueryError(f"query vector has dim {vec.shape[0]}, index has {self._store.manifest.dim}")
            return Query(vec / max(float(np.linalg.norm(vec)), 1e-12), "vector", content_hash(vec.tobytes()))
        if text is not None:
            return Query(self.encoder.encode_texts([text])[0], "text", content_hash(text.encode("utf-8")))
        img, digest = _load_query_image(image)
        return Query(self.encoder.encode_images([img])[0], "image", digest)

    def invert(
        self,
        query: Query,
        config: InversionConfig | None = None,
        use_cache: bool = True,
        progress: InversionProgressFn | None = None,
    ) -> np.ndarray:
        """OTI (image query -> text-space feature) or OVI (text query -> image-space feature),
        seeded by the query's content hash and cached in the index directory."""
        config = (config or InversionConfig()).resolved(self.encoder.device)
        if query.modality not in ("image", "text"):
            raise QueryError("inversion needs an image or text query, not a raw vector")
        direction = "oti" if query.modality == "image" else "ovi"
        key = cache_key(self._store.manifest.model, direction, config, query.digest)
        if use_cache:
            cached = self._store.catalog.cached_vector(key)
            if cached is not None:
                return cached
        invert = oti if direction == "oti" else ovi
        inverted = invert(
            self.encoder.loaded, query.feature[None, :], config, [seed_from_digest(query.digest)], progress
        )
        if use_cache:
            self._store.catalog.cache_vector(key, inverted[0])
            self._store.commit()
        return inverted[0]

    def search(
        self,
        image: str | Path | Image.Image | None = None,
        text: str | None = None,
        vector=None,
        *,
        target: str = "images",
        k: int = 10,
        mode: str = "intra",
        merge: str = "rrf",
        alpha: float = 0.5,
        rrf_k: int = RRF_K,
        depth: int = 100,
        inversion: InversionConfig | None = None,
        use_cache: bool = True,
        progress: InversionProgressFn | None = None,
    ) -> list[Hit]:
        """Top-k items of ``target`` ('images' or 'texts') for one query.

        Modes: ``intra`` searches with the query's own embedding; ``cross`` inverts the query into the
        other modality (OTI / OVI) and searches with that; ``fused`` merges both lists (``merge``:
        ``rrf`` with constant ``rrf_k``, or ``score``: min-max normalised exact scores, ``alpha`` the
        cross list's weight), each taken ``depth`` deep; ``cross-gallery`` compares an image query with
        the gallery's stored OTI features (see ``invert_gallery``).
        """
        if mode not in MODES:
            raise QueryError(f"unknown mode '{mode}': use one of {', '.join(MODES)}")
        if merge not in MERGES:
            raise QueryError(f"unknown merge '{merge}': use one of {', '.join(MERGES)}")
        collection = _collection(target)
        self._require_items(collection)
        query = self.embed_query(image, text, vector)
        if mode == "intra":
            return self._hits(top_k(self._store, collection, query.feature, k), {"intra": None})
        if query.modality != collection:
            raise QueryError(
                f"a {query.modality} query against {target} is already inter-modal; inversion (--cross) applies "
                "to image -> images and text -> texts"
            )
        if mode == "cross-gallery":
            missing = self._store.indexes["image"].ntotal - self._store.indexes[GALLERY_OTI].ntotal
            if missing:
                raise QueryError(
                    f"{missing} gallery images have no OTI feature yet: run `cgx build-index DIR --invert-gallery` "
                    "(library: invert_gallery())"
                )
            return self._hits(top_k(self._store, GALLERY_OTI, query.feature, k), {"cross-gallery": None})
        inverted = self.invert(query, inversion, use_cache, progress)
        if mode == "cross":
            return self._hits(top_k(self._store, collection, inverted, k), {"cross": None})
        lists = {
            "intra": top_k(self._store, collection, query.feature, depth),
            "cross": top_k(self._store, collection, inverted, depth),
        }
        if merge == "rrf":
            fused = reciprocal_rank_fusion(lists, rrf_k)
        else:
            candidates = np.union1d(lists["intra"].ids, lists["cross"].ids)
            exact = {
                "intra": self._store.exact_rerank(collection, query.feature, candidates),
                "cross": self._store.exact_rerank(collection, inverted, candidates),
            }
            fused = score_fusion(candidates, exact, {"cross": alpha, "intra": 1.0 - alpha})
        return self._hits(Ranked(fused.ids[:k], fused.scores[:k]), lists)

    def _require_items(self, collection: str) -> None:
        if self._store.indexes[collection].ntotal == 0:  # in line with the catalog since open; no table scan
            raise StoreError(f"the {collection} index at {self.path} is empty")

    def _hits(self, ranked: Ranked, lists: dict[str, Ranked | None]) -> list[Hit]:
        """Hits of ``ranked``; each carries its rank and score in every list (None: ``ranked`` itself)."""
        positions = {
            name: {i: (r, s) for r, (i, s) in enumerate(zip(lst.ids.tolist(), lst.scores.tolist(), strict=True), 1)}
            for name, lst in ((n, ranked if lst is None else lst) for n, lst in lists.items())
        }
        rows = self._store.catalog.rows(ranked.ids.tolist())
        hits = []
        for item_id, score in zip(ranked.ids.tolist(), ranked.scores.tolist(), strict=True):
            row = rows[item_id]
            found = {name: pos[item_id] for name, pos in positions.items() if item_id in pos}
            hits.append(
                Hit(
                    item_id,
                    score,
                    row.modality,
                    row.path,
                    row.text,
                    row.external_id,
                    ranks={name: r for name, (r, _) in found.items()},
                    scores={name: s for name, (_, s) in found.items()},
                )
            )
        return hits

    def info(self) -> IndexInfo:
        m = self._store.manifest
        return IndexInfo(
            path=str(self.path),
            model=m.model,
            dim=m.dim,
            metric=m.metric,
            counts={n: self._store.stored_count(n) for n in self._store.indexes},
            factories={n: idx.resolved_factory for n, idx in self._store.indexes.items()},
            disk_bytes=self._store.disk_sizes(),
            schema_version=m.schema_version,
            crossgap_version=m.crossgap_version,
            gallery_inversion=self.gallery_inversion,
            precision=m.precision,
        )


def _index_path(path: str | Path | None) -> Path:
    return Path(path).expanduser() if path else default_index_path()


def _collection(target: str) -> str:
    if target not in TARGETS:
        raise QueryError(f"unknown target '{target}': use one of {', '.join(TARGETS)}")
    return TARGETS[target]


def _under_any(path: str, roots: list[Path]) -> bool:
    p = Path(path)
    return any(p == r or r in p.parents for r in roots)


def _fingerprint(settings: dict) -> str:
    return settings_fingerprint(InversionConfig(**settings), "oti")


def _load_query_image(image: str | Path | Image.Image) -> tuple[Image.Image, str]:
    """The decoded query image and the hash of its content."""
    if isinstance(image, Image.Image):
        rgb = image.convert("RGB")
        return rgb, content_hash(f"{rgb.size}".encode() + rgb.tobytes())
    path = Path(image).expanduser()
    try:
        data = path.read_bytes()
        return decode_rgb(data), content_hash(data)
    except OSError as exc:
        raise QueryError(f"cannot read query image {path}: {exc.strerror or exc}") from exc
    except DecodeError as exc:
        raise QueryError(f"cannot decode query image {path}: {exc}") from exc

"""CrossGapIndex: the one public entry point that the CLI and library users call."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from crossgap_index.engines import Engine, get_engine
from crossgap_index.engines.build import BuildReport, ImageBuild, TextReport, add_text_items, invert_gallery_items
from crossgap_index.errors import QueryError, StoreError
from crossgap_index.ingest.decode import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_MEGAPIXELS
from crossgap_index.ingest.discover import find_images, resolve_roots
from crossgap_index.ingest.pipeline import ReadLimits
from crossgap_index.ingest.texts import unicode_problem
from crossgap_index.inversion import InversionConfig
from crossgap_index.models import check_device, default_model_spec, local_weights, parse_spec
from crossgap_index.models.spec import MODEL_ENV_VAR
from crossgap_index.precision import after_write, check_setting, precision_for_index, precision_for_new_index
from crossgap_index.search.gallery import StoreGallery
from crossgap_index.search.modes import Mode, describe_cross, resolve_mode
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.run import Queries
from crossgap_index.search.searcher import Hit, QueryTransform, Searcher
from crossgap_index.store.catalog import ImageRecord, ItemRow
from crossgap_index.store.check import CheckReport, check_store
from crossgap_index.store.compact import DEFAULT_MIN_DEAD, CompactReport
from crossgap_index.store.directory import IndexExistsError, Store, default_index_path
from crossgap_index.store.manifest import tuned_task
from crossgap_index.store.prune import select_for_removal
from crossgap_index.store.vectors import AUTO
from crossgap_index.words import CountProgress, StageProgress, StepProgress, check_modality

if TYPE_CHECKING:  # torch loads with the first model, inside the methods that need one
    from crossgap_index.ingest.embeddings import ImportReport
    from crossgap_index.inversion.inverter import Inverter, InverterConfig
    from crossgap_index.models import Encoder
    from crossgap_index.models.query_encoder import QueryEncoder

INVERTER_FILE = "inverter.safetensors"  # the OTI network: image queries
TEXT_INVERTER_FILE = "text-inverter.safetensors"  # the OVI network: text queries
# query modality -> (file, direction, items it trains on)
_INVERTERS = {"image": (INVERTER_FILE, "oti"), "text": (TEXT_INVERTER_FILE, "ovi")}
__all__ = ["BuildReport", "CrossGapIndex", "Hit", "IndexInfo", "Query", "QueryTransform", "SearchOptions", "TextReport"]


@dataclass(frozen=True)
class Query:
    """An embedded query: unit feature, modality ('image', 'text' or 'vector'), content hash."""

    feature: np.ndarray
    modality: str
    digest: str


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
    tuned_mode: dict | None = None  # the record stored last (what releases before per-task records show)
    inverter: dict | None = None
    precision: str = "fp32"
    tuned_modes: dict | None = None  # task (image-to-image, text-to-text, text-to-image, any) -> record
    text_inverter: dict | None = None
    text_gallery_inversion: dict | None = None
    cross: dict | None = None  # per query modality: what --cross runs and why (search.modes.describe_cross)


def _reads(method: Callable) -> Callable:
    """Run a read under the store's shared lock: a search sees FAISS and catalog rows of one state."""

    @functools.wraps(method)
    def reading(self: CrossGapIndex, *args, **kwargs):
        with self._store.reading():
            return method(self, *args, **kwargs)

    return reading


class CrossGapIndex:
    """An index directory plus the model it was built with (loaded on first use).

    ``precision`` (auto, fp32, bf16) is what the model embeds in; the index records the precision
    of its vectors and admits another only within the measured agreement (crossgap_index.precision).
    """

    def __init__(self, store: Store, device: str = "auto", precision: str = "auto"):
        self._store = store
        self._device = check_device(device)
        self._precision = check_setting(precision)
        self._encoder: Encoder | None = None
        self._query_encoder: QueryEncoder | None = None
        self._searcher: Searcher | None = None
        self._inverter_nets: dict[str, Inverter] = {}
        self._fits = None  # who runs gallery fits (search/fitting.py): this thread unless fit_in_background()
        # The model, searcher and inverters load on first use; threads that arrive together build them once.
        self._loading = threading.RLock()

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path | None = None,
        model: str | None = None,
        device: str = "auto",
        factory: str = AUTO,
        wait: bool = True,
        precision: str = "auto",
    ) -> CrossGapIndex:
        """Make a new, empty index directory for ``model`` (default: $CGX_MODEL or the open_clip default).
        ``wait``: when another process is writing this index, wait for it (else fail at once)."""
        path = _index_path(path)
        spec = parse_spec(model or default_model_spec())
        local_weights(spec)  # bad settings fail before torch is even imported
        check_device(device)
        check_setting(precision)
        if spec.kind == "pretrained" and model is None and not os.environ.get(MODEL_ENV_VAR):
            # the default is a download: offline, a stranger's first build fails now, before torch loads (an
            # explicit ARCH/TAG goes on to open_clip, which also names an unknown tag)
            from crossgap_index.models.offline import refuse_download_offline

            refuse_download_offline(spec.canonical)
        from crossgap_index.models import Encoder, load_model
        from crossgap_index.models.encoder import precision_agreement

        loaded = load_model(spec, device)
        measured: list[float] = []

        def agreement() -> float:  # measured only when auto would pick bf16
            measured.append(precision_agreement(loaded))
            return measured[0]

        encoder = Encoder(loaded, precision=precision_for_new_index(check_setting(precision), loaded.device, agreement))
        store = Store.create(path, spec.canonical, encoder.dim, factory, wait=wait, precision=encoder.precision)
        if measured:
            store.manifest.precision_agreement = measured[0]
            store.manifest.save(path)
        index = cls(store, device, precision)
        index._encoder = encoder
        return index

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        model: str | None = None,
        device: str = "auto",
        wait: bool = True,
        readonly: bool | None = None,
        precision: str = "auto",
        for_check: bool = False,
    ) -> CrossGapIndex:
        """Open an existing index; ``model``, when given, must be the one the index was built with.
        ``wait``: what writes do while another process writes (wait, or fail at once); ``readonly``:
        None opens read-only when the directory cannot be written. Safe to share between threads.
        An explicit ``precision`` is checked against the index's vectors when the model first loads;
        ``auto`` never refuses. ``for_check``: opened for ``check`` only, damaged shards are not refused."""
        path = _index_path(path)
        store = Store.open(path, readonly=readonly, for_check=for_check)
        store.wait = wait
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
        wait: bool = True,
        precision: str = "auto",
    ) -> CrossGapIndex:
        path = _index_path(path)
        if not (path / "manifest.json").exists():
            try:
                return cls.create(path, model=model, device=device, factory=factory, wait=wait, precision=precision)
            except IndexExistsError:
                pass  # another process made it meanwhile
        return cls.open(path, model=model, device=device, wait=wait, precision=precision)

    @staticmethod
    def import_embeddings(
        embeddings: str | Path,
        path: str | Path | None = None,
        model: str | None = None,
        *,
        meta: str | Path | None = None,
        factory: str = AUTO,
        vector_dtype: str | None = None,
        wait: bool = True,
        progress: CountProgress | None = None,
        build_progress: StageProgress | None = None,
    ) -> ImportReport:
        """Import embeddings made elsewhere into the index at ``path`` (created for ``model`` when missing);
        the model's weights are not loaded. See crossgap_index.ingest.embeddings. ``build_progress(phase, done,
        total)``: the FAISS build's phases after the rows are written (train, add, write)."""
        from crossgap_index.ingest.embeddings import import_embeddings

        return import_embeddings(
            _index_path(path),
            Path(embeddings).expanduser(),
            model or default_model_spec(),
            meta=Path(meta).expanduser() if meta is not None else None,
            factory=factory,
            vector_dtype=vector_dtype,
            wait=wait,
            progress=progress,
            build_progress=build_progress,
        )

    def report_index_builds(self, progress: StageProgress | None) -> None:
        """Tell ``progress(phase, done, total)`` the phases (train, add, write) of each FAISS build this index
        runs from now on (None: stop)."""
        self._store.build_progress = progress

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
    def text_gallery_inversion(self) -> dict | None:
        """The InversionConfig (as a dict) of the stored texts' OVI features, or None when not inverted."""
        return self._store.manifest.text_gallery_inversion

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            with self._loading:
                if self._encoder is None:
                    self._encoder = self._load_encoder()
        return self._encoder

    def share_model(self, other: CrossGapIndex) -> None:
        """Embed with ``other``'s model (loaded there if not yet) instead of loading a copy: the same index opened
        twice in one process, e.g. a server and the watcher writing into it. The encoder is thread-safe."""
        if other.path != self.path:
            raise QueryError(f"share_model: {other.path} is another index than {self.path}")
        self._encoder = other.encoder

    def _load_encoder(self) -> Encoder:
        """The index's model in the precision its vectors admit; refuses a model of another dimension."""
        from crossgap_index.models import Encoder, load_model

        loaded = load_model(self._store.manifest.model, self._device)
        stored, where = self._store.manifest.precision, f"index at {self.path}"
        agreement = lambda: self._agreement(loaded)  # noqa: E731 - measured only when precisions differ
        precision = precision_for_index(self._precision, stored, loaded.device, agreement, where)
        encoder = Encoder(loaded, precision=precision)
        if encoder.dim != self._store.manifest.dim:
            raise StoreError(
                f"{self.path / 'manifest.json'}: model '{self._store.manifest.model}' makes {encoder.dim}-d "
                f"vectors, the index holds {self._store.manifest.dim}-d ones"
            )
        return encoder

    def _agreement(self, loaded) -> float:
        """The model's fp32/bf16 probe agreement, measured once per index and kept in its manifest."""
        from crossgap_index.models.encoder import precision_agreement

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
        exclude: Iterable[str] = (),
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        batch_size: int = 64,
        workers: int = 4,
        progress: CountProgress | None = None,
        engine: str | Engine = "local",
        retry_failed: bool = False,
    ) -> BuildReport:
        """Bring the index in line with the image files under ``roots``: new and changed files are
        embedded (or reuse a stored vector with the same content), files gone from disk leave; ids follow
        files (an edit keeps the id, so does a move; README "Ids"). Only regular files up to ``max_file_bytes``
        are read; any other file is skipped with a reason. A file that failed to decode is not read again
        while its size and mtime stay the same, unless ``retry_failed``.
        ``engine``: ``local``, ``ray`` (a Ray cluster; see crossgap_index.engines) or an engine object.
        ``exclude``: glob patterns of folders and files to leave out, beside DEFAULT_EXCLUDES (discover.py)."""
        roots = resolve_roots(roots)
        paths = find_images(roots, include_hidden=include_hidden, exclude=exclude)
        return self._ingest(
            paths,
            roots,
            max_megapixels,
            max_file_bytes,
            batch_size,
            workers,
            progress,
            get_engine(engine),
            retry_failed,
        )

    def add_images(
        self,
        paths: Iterable[str | Path],
        *,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        batch_size: int = 64,
        progress: CountProgress | None = None,
    ) -> BuildReport:
        """Add or update the given image files; nothing is removed."""
        files = [Path(p).expanduser().resolve() for p in paths]
        return self._ingest(files, [], max_megapixels, max_file_bytes, batch_size, 4, progress, get_engine("local"))

    def sync_paths(
        self,
        changed: Iterable[str | Path],
        roots: Iterable[str | Path],
        *,
        include_hidden: bool = False,
        exclude: Iterable[str] = (),
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        batch_size: int = 64,
        workers: int = 4,
        progress: CountProgress | None = None,
    ) -> BuildReport:
        """``index_folders`` limited to ``changed`` paths under ``roots`` (what a file watcher reports): image
        files among them, or under folders among them, are added or updated; paths gone from disk (files, or
        folders with all under them) leave; a file moved from one to another keeps its id. ``exclude`` as in
        ``index_folders``."""
        from crossgap_index.ingest.watch import paths_to_sync

        files, prune = paths_to_sync([Path(p) for p in changed], resolve_roots(roots), include_hidden, exclude)
        engine = get_engine("local")
        return self._ingest(files, prune, max_megapixels, max_file_bytes, batch_size, workers, progress, engine)

    def _ingest(
        self,
        paths: list[Path],
        prune_roots: list[Path],
        max_megapixels: float,
        max_file_bytes: int,
        batch_size: int,
        workers: int,
        progress: CountProgress | None,
        engine: Engine,
        retry_failed: bool = False,
    ) -> BuildReport:
        with self._store.writing():
            limits = ReadLimits(max_megapixels, max_file_bytes, None)
            build = ImageBuild(self._store, lambda: self.encoder, self._record_precision, self._device)
            return build.run(paths, prune_roots, limits, batch_size, workers, engine, progress, retry_failed)

    def add_texts(
        self,
        texts: Sequence[str],
        ids: Sequence[str | None] | None = None,
        progress: CountProgress | None = None,
    ) -> TextReport:
        """Embed and store texts, skipping any whose exact content is already stored.
        Texts that cannot be stored as UTF-8 (lone surrogates) are refused before anything is written."""
        if ids is not None and len(ids) != len(texts):
            raise QueryError("add_texts: texts and ids differ in length")
        for i, text in enumerate(texts):
            if problem := unicode_problem(text):
                raise QueryError(f"add_texts: text {i} {problem}")
            if ids is not None and (problem := unicode_problem(ids[i])):
                raise QueryError(f"add_texts: id {i} {problem}")
        with self._store.writing():
            return add_text_items(self._store, self.encoder, texts, ids, self._record_precision, progress)

    # -- gallery-side inversion ------------------------------------------------------------
    def invert_gallery(
        self,
        config: InversionConfig | None = None,
        progress: CountProgress | None = None,
        modality: str = "image",
        engine: str | Engine = "local",
    ) -> int:
        """Store each gallery item's inverted feature, so queries of its modality can be compared inter-modally
        with no optimisation at query time (mode ``cross-gallery``): each image's OTI text-space feature
        (collection ``image-oti``), or with ``modality="text"`` each stored text's OVI image-space feature
        (``text-ovi``). Resumable: only items without a stored feature are inverted. Returns how many were.
        ``config`` None: the settings the gallery was inverted with (kept current), else the defaults.
        ``engine``: where the inversions run (``local``: this process; ``ray``: an actor pool); this process
        writes them either way."""
        check_modality(modality)
        engine = get_engine(engine)
        with self._store.writing():
            manifest = self._store.manifest
            stored = manifest.gallery_inversion if modality == "image" else manifest.text_gallery_inversion
            if config is None:
                config = InversionConfig(**stored) if stored else InversionConfig()
            loaded = lambda: self.encoder.loaded  # noqa: E731 - the local engine's model, loaded on first use
            return invert_gallery_items(self._store, config, modality, engine, loaded, self._device, progress)

    def build_derived(self, engine: str | Engine = "local") -> list[str]:
        """Build now the derived collections (span, iso, concept, peer maps) that ``--cross`` (mode ``auto``)
        searches against, so the first query finds them current instead of building them. ``engine``: where the
        maps are applied (``ray``: an actor pool, vectors in blocks). Returns the names of those built (none when
        they were current, or the served modes need none)."""
        from crossgap_index.engines.derived import build_served_derived

        engine = get_engine(engine)
        with self._store.writing():
            return build_served_derived(self._store, self.searcher, engine)

    @_reads
    def prepare_derived(self) -> list[str]:
        """Bring the derived collections ``--cross`` (mode ``auto``) searches up to date with the state this handle
        holds, now and in this process (no writer lock: a reader after ``refresh``), so the first query finds them
        current. Returns the names built (those already current on disk are loaded by the first query)."""
        from crossgap_index.engines.derived import served_maps
        from crossgap_index.search.gallery import derived_name

        gallery = self.searcher.gallery
        return [
            derived_name(collection, projection)
            for collection, projection in served_maps(self._store, self.searcher)
            if gallery.refresh(collection, projection)
        ]

    # -- reading --------------------------------------------------------------------------
    @property
    def searcher(self) -> Searcher:
        """The read side (search/searcher.py); one per opened index, shared by every thread."""
        if self._searcher is None:
            with self._loading:
                if self._searcher is None:
                    image = self.path / INVERTER_FILE
                    text = self.path / TEXT_INVERTER_FILE
                    self._searcher = Searcher(
                        self._store,
                        self._store.manifest.model,
                        self.query_encoder,
                        functools.partial(self.inverter, "image") if image.is_file() else None,
                        _CatalogCache(self._store),
                        text_inverter=functools.partial(self.inverter, "text") if text.is_file() else None,
                        gallery=StoreGallery(self._store, self._fits),
                    )
        return self._searcher

    def query_encoder(self) -> QueryEncoder:
        """What searches embed queries with: image queries on a verified ONNX tower where one serves this index,
        the rest on ``encoder`` (crossgap_index.models.query_encoder)."""
        if self._query_encoder is None:
            with self._loading:
                if self._query_encoder is None:
                    from crossgap_index.models.query_encoder import query_encoder_for

                    self._query_encoder = query_encoder_for(
                        self.path,
                        self._store.manifest,
                        self._device,
                        self._precision,
                        lambda: self.encoder,
                        lambda: self._encoder is not None,
                    )
        return self._query_encoder

    def fit_in_background(self):
        """From now on, gallery fits (dba, nnn, qbnorm, center, derived collections) run on a background thread of
        their own, and a query whose fit is not ready raises FitPending instead of computing it (the server's
        way: search/fitting.py). Returns the runner; closing it stops a running fit."""
        from crossgap_index.search.fitting import BackgroundFits

        with self._loading:
            self._fits = BackgroundFits()
            self._searcher = None
        return self._fits

    def embed_query(self, image: str | Path | Image.Image | None = None, text: str | None = None, vector=None) -> Query:
        """The query's unit feature, its modality and its content hash."""
        feature, modality, digest = self.searcher.embed([_query(image, text, vector)])[0]
        return Query(feature, modality, digest)

    def invert(
        self,
        query: Query,
        config: InversionConfig | None = None,
        use_cache: bool = True,
        progress: StepProgress | None = None,
    ) -> np.ndarray:
        """OTI (image query -> text-space feature) or OVI (text query -> image-space feature),
        seeded by the query's content hash and cached in the index directory."""
        check_modality(query.modality, what="query modality for an inversion")
        mode = resolve_mode("cross", inversion=config or InversionConfig())
        transformer = self.searcher.serving(SearchOptions(use_cache=use_cache), progress).transformer
        batch = Queries(query.feature[None, :], query.modality, (query.digest,))
        return transformer.search_vectors(mode.legs[0], batch, query.modality)[0]

    def search(
        self,
        image: str | Path | Image.Image | None = None,
        text: str | None = None,
        vector=None,
        *,
        item: int | None = None,
        expression: str | None = None,
        options: SearchOptions | None = None,
        progress: StepProgress | None = None,
        **settings,
    ) -> list[Hit]:
        """Top-k items of ``target`` ('images' or 'texts') for one query (image, text, vector or stored item).

        How to search is one ``SearchOptions`` (search/options.py), or its fields as keywords
        (``target``, ``k``, ``mode``, ``merge``, ``alpha``, ``rrf_k``, ``depth``, ``inversion``, ``projection``,
        ``use_cache``), which override ``options``. The modes, each with its label and help, are the registry's
        (``crossgap_index.search.registry.MODES``; ``mode_help_text()`` words them all). A query that is already
        inter-modal (text against images) is served as it is by every mode that would turn it.

        ``expression``: query arithmetic, e.g. ``'2:"red car" + ./photo.jpg - night + item:42'``: a weighted sum
        of texts, image files and stored items searched as one query (search/arithmetic.py says what it means).
        """
        query = _query(image, text, vector, item, expression)
        return self.search_batch([query], options, progress=progress, **settings)[0]

    @_reads
    def search_batch(
        self,
        queries: Sequence[dict],
        options: SearchOptions | None = None,
        *,
        progress: StepProgress | None = None,
        timings: dict | None = None,
        **settings,
    ) -> list[list[Hit]]:
        """Hits for many queries at once, each a dict with one of ``image``, ``text``, ``vector`` (optionally
        with ``modality``), ``item`` (a stored item's id) or ``terms`` (query arithmetic: (weight, query dict)
        pairs, search/arithmetic.py); ``options``/``settings`` as for ``search``.
        Inversions of the batch run together; each query's hits equal its solo ``search``. ``timings``, when
        given, receives embed/search milliseconds and the inversion batch size."""
        chosen = SearchOptions.of(options, **settings)
        return self.searcher.search_batch(queries, chosen, progress=progress, timings=timings)

    @_reads
    def duplicates(self, threshold: float | None = None) -> list[list[ItemRow]]:
        """Groups of near-duplicate images: linked by pairs whose vectors score above ``threshold`` (default:
        search/duplicates.py's measured DEFAULT_THRESHOLD), found by chunked FAISS range search, largest first."""
        from crossgap_index.search.duplicates import DEFAULT_THRESHOLD, duplicate_rows

        return duplicate_rows(self._store, DEFAULT_THRESHOLD if threshold is None else threshold)

    @_reads
    def item(self, item_id: int) -> ItemRow | None:
        """The stored item with this id (modality, path or text, external id), or None."""
        return self._store.catalog.rows([item_id]).get(item_id)

    @_reads
    def image_record(self, item_id: int) -> ImageRecord | None:
        """An image item's file as the catalog recorded it (path, content hash, size, mtime), or None: what
        a server checks the file against before serving it."""
        return self._store.catalog.image_record(item_id)

    def model_note(self) -> str | None:
        """One line when most of the index's images lie outside its bundled model's world (a small model
        trained on synthetic shapes, used on real photos), else None. Reads stored vectors only (no model):
        the rule is in crossgap_index.models.world."""
        from crossgap_index.models.world import SAMPLE, outside_mask, world_note, world_reference

        model = self._store.manifest.model
        reference = world_reference(model)
        if reference is None:
            return None
        ids = self._store.catalog.ids("image")
        if len(ids) > SAMPLE:
            ids = ids[np.linspace(0, len(ids) - 1, SAMPLE).round().astype(int)]
        _, vectors = self._store.live_vectors("image", ids)  # another process may remove some meanwhile
        return world_note(model, int(outside_mask(vectors, reference).sum()), len(vectors))

    def served_mode(self, options: SearchOptions, query_modality: str) -> Mode:
        """The Mode a query of ``query_modality`` asked with ``options`` runs (``auto``: the tuned one);
        e.g. ``.inverts`` tells a server which queries to batch."""
        return self.searcher.served(options, query_modality)

    @_reads
    def transform_query(
        self,
        image: str | Path | Image.Image | None = None,
        text: str | None = None,
        vector=None,
        *,
        item: int | None = None,
        expression: str | None = None,
        options: SearchOptions | None = None,
        **settings,
    ) -> QueryTransform:
        """The vector(s) a mode (default ``auto``) searches with, and whether the gallery must be mapped: so
        any vector database can be queried the way ``search`` would."""
        chosen = SearchOptions.of(options or SearchOptions(mode="auto"), **settings)
        return self.searcher.transform_query(_query(image, text, vector, item, expression), chosen)

    def describe_mode(self, query_modality: str, options: SearchOptions | None = None, **settings) -> dict:
        """The mode a query of ``query_modality`` is served with (``auto`` resolved), as data and as one line."""
        chosen = self.served_mode(SearchOptions.of(options, **settings), query_modality)
        return {"name": chosen.name, "summary": chosen.describe(), **chosen.to_dict()}

    @property
    def tuned_mode(self) -> dict | None:
        """The record ``cgx tune`` stored last: the mode, its task, selection and report mAPs, the dataset, the date."""
        return self._store.manifest.tuned_mode

    @property
    def tuned_modes(self) -> dict[str, dict]:
        """Every stored tune record by task (image-to-image, text-to-text, text-to-image; ``any``: a record
        that names no task). ``mode="auto"`` serves a query the record of its task."""
        return dict(self._store.manifest.tuned_modes)

    def set_tuned_mode(self, record: dict | None, task: str | None = None) -> None:
        """Store the mode that ``mode="auto"`` and ``cgx query --cross`` serve for the record's task (its
        ``task`` field; none: every query), replacing only that task's record. ``None`` clears ``task``'s
        record, or with no ``task`` every record."""
        if record is not None:
            if not isinstance(record, dict) or not isinstance(record.get("mode"), dict):
                raise QueryError("a tuned-mode record is a dict with a 'mode' (see cgx tune)")
            resolve_mode("auto", tuned=record["mode"])  # refuse a malformed record before it is saved
        with self._store.writing():
            manifest = self._store.manifest
            if record is not None:
                manifest.tuned_modes[tuned_task(record)] = record
            elif task is None:
                manifest.tuned_modes.clear()
            else:
                manifest.tuned_modes.pop(task, None)
            manifest.tuned_mode = record if record is not None else next(reversed(manifest.tuned_modes.values()), None)
            self._store.save()
        self._searcher = None

    def tune(self, dataset, *, inversion: bool = True, seed: int = 0, progress=None, task: str | None = None):
        """Choose the mode that wins on labelled ``dataset`` (the forms ``cgx eval`` takes) and store it for
        the task tuned (``task``: image-to-image or text-to-text; default: images when the dataset has them):
        ``mode="auto"`` and ``cgx query --cross`` serve it to that task's queries. Stores nothing when the data
        is below tune's minimum or the winner's held-out gain is not above noise (``result.stored``,
        ``result.reason``). Returns the TuneResult."""
        from crossgap_index.tuning import tune

        kwargs = {"task": task} if task is not None else {}
        result, network = tune(dataset, self.encoder, inversion=inversion, seed=seed, progress=progress, **kwargs)
        if not result.stored:
            return result
        with self._store.writing():
            if network is not None:
                network.save(self.path / _INVERTERS[network.query_modality][0])
                self._inverter_nets[network.query_modality] = network
            self.set_tuned_mode(result.record)
        return result

    # -- inversion networks ---------------------------------------------------------------
    def train_inverter(
        self, config: InverterConfig | None = None, progress=None, modality: str = "image", replace: bool = False
    ) -> Inverter:
        """Train the one-pass inversion network for ``modality`` queries on this index's own items, no labels,
        and save it beside the index: ``image`` (OTI: the image vectors through the text tower) or ``text``
        (OVI: the stored texts through the image tower). ``config.direction`` follows ``modality``. A network
        that ``max_seconds`` cut short of its steps does not replace a stored one unless ``replace``: the
        stored one is kept and a StoreError says so (nothing is replaced silently)."""
        import dataclasses

        from crossgap_index.inversion.inverter import DEFAULT_STEPS, InverterConfig, train_inverter

        check_modality(modality)
        file, direction = _INVERTERS[modality]
        if config is None:
            n_tokens = None if direction == "ovi" else 1
            config = InverterConfig(direction=direction, n_tokens=n_tokens, steps=DEFAULT_STEPS[direction])
        config = dataclasses.replace(config, direction=direction)
        _, vectors = self._store.ids_and_vectors(modality)
        if len(vectors) < 2:
            raise StoreError(f"the {modality} index at {self.path} needs at least 2 items to train an inverter")
        partial = self.path / f"{file}.partial"  # Ctrl-C between steps keeps the run here; the same run resumes
        network = train_inverter(self.encoder.loaded, vectors, config, progress, checkpoint=partial)
        stored = self.path / file
        if network.cut_short and stored.exists() and not replace:
            raise StoreError(
                f"training stopped by max_seconds after {network.stats['steps']} of {network.config.steps} steps; "
                f"the inverter stored at {stored} is kept (replace it with --replace)"
            )
        with self._store.writing():
            network.save(stored)
        self._inverter_nets[modality] = network
        self._searcher = None
        return network

    def inverter(self, modality: str = "image") -> Inverter:
        """The saved network for ``modality`` queries (image: OTI, text: OVI); StoreError when there is none,
        or when the file is another model's or another direction's."""
        check_modality(modality)
        if modality not in self._inverter_nets:
            from crossgap_index.inversion.inverter import Inverter

            file, direction = _INVERTERS[modality]
            with self._loading:
                if modality not in self._inverter_nets:
                    if not (self.path / file).is_file():
                        raise StoreError(f"no {modality} inverter at {self.path}: train one with `cgx train-inverter`")
                    self._inverter_nets[modality] = Inverter.load(
                        self.path / file, self._store.manifest.model, self.encoder.device, direction
                    )
        return self._inverter_nets[modality]

    @_reads
    def info(self) -> IndexInfo:
        """What the index holds in the state this handle reads (its counts are those of the held generation)."""
        m = self._store.manifest
        return IndexInfo(
            path=str(self.path),
            model=m.model,
            dim=m.dim,
            metric=m.metric,
            counts={n: idx.ntotal for n, idx in self._store.indexes.items()},
            factories={n: idx.resolved_factory for n, idx in self._store.indexes.items()},
            disk_bytes=self._store.disk_sizes(),
            schema_version=m.schema_version,
            crossgap_version=m.crossgap_version,
            gallery_inversion=self.gallery_inversion,
            tuned_mode=m.tuned_mode,
            inverter=_inverter_stats(self.path / INVERTER_FILE),
            precision=m.precision,
            tuned_modes=dict(m.tuned_modes),
            text_inverter=_inverter_stats(self.path / TEXT_INVERTER_FILE),
            text_gallery_inversion=m.text_gallery_inversion,
            cross={q: describe_cross(m.model, self.searcher.tuned_record(q, q)) for q in ("image", "text")},
        )

    # -- maintenance (remove, ls, check) ------------------------------------------------------
    def remove(
        self, ids: Iterable[int] | None = None, *, paths: Iterable[str | Path] | None = None, missing: bool = False
    ) -> list[int]:
        """Remove items by id, every image at or under ``paths`` (files or whole folders, gone or not),
        and with ``missing`` every image whose file is no longer on disk. Returns the removed ids."""
        with self._store.writing():
            chosen = select_for_removal(self._store.catalog, ids=ids, paths=paths, missing=missing)
            self._store.remove(chosen)
            self._store.save()
        return chosen

    @_reads
    def ls(self, modality: str | None = None, *, after: int = 0, limit: int | None = None) -> list[ItemRow]:
        """Every stored item (id, modality, path or text, external id), by id; ``modality``: 'image' or 'text'.
        ``after`` / ``limit`` give one page (the items with ids above ``after``), for browsing large indexes."""
        if modality is not None:
            check_modality(modality)
        return self._store.held_items(modality, after, -1 if limit is None else limit)

    def check(self, repair: bool = False, files: bool = True) -> CheckReport:
        """Verify the catalog (SQLite integrity_check, unit-norm vectors), every FAISS file against it
        (present, checksum, count, ids) and, with ``files``, that indexed image files exist. ``repair``
        rebuilds the derived FAISS files from the catalog. Like ``git fsck``: a report, not an exception."""
        return check_store(self._store, repair=repair, files=files)

    def compact(self, min_dead: float = DEFAULT_MIN_DEAD) -> CompactReport:
        """Give back the bytes of removed items' vectors: shards at least ``min_dead`` dead are rewritten with
        their live rows only (a kill at any point leaves an index that opens and answers the same; searches go
        on meanwhile). Writes after removals do this by themselves for shards at least half dead."""
        return self._store.compact(min_dead)

    def refresh(self) -> bool:
        """Move this handle to the newest state another process saved (True when it moved). A handle reads one
        committed state (FAISS collections, derived collections, catalog rows, ``ls``/``info``) from open until
        it refreshes; the new state is loaded aside and swapped in whole, so a search running meanwhile sees the
        old state or the new one, never a mix. Cheap when nothing changed (one small file read): call it as
        often as a long-lived handle should follow (``cgx serve`` does, by itself, about twice a second)."""
        moved = self._store.refresh()
        if moved:
            self._searcher = None  # tuned modes and inverter files of the new state
        return moved

    @property
    def generation(self) -> int:
        """The catalog generation of the state this handle reads."""
        return self._store.loaded_generation

    def saved_generation(self) -> int:
        """The generation of the newest state saved in the index directory (a follower compares the two)."""
        return self._store.saved_generation()


def _inverter_stats(path: Path) -> dict | None:
    """A saved inverter's training stats, read from the safetensors header alone (no torch: `cgx info` stays
    light); None when there is no such file, or one line when it is not an inverter."""
    import json
    import struct

    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(min(size, 1 << 24)))["__metadata__"]
        return json.loads(meta["stats"])
    except (OSError, struct.error, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path}: unreadable inverter ({exc})") from exc


def _index_path(path: str | Path | None) -> Path:
    return (Path(path).expanduser() if path else default_index_path()).absolute()


def _query(image=None, text=None, vector=None, item: int | None = None, expression: str | None = None) -> dict:
    """The keyword arguments as one query dict; the searcher checks that exactly one was given."""
    terms = None
    if expression is not None:
        from crossgap_index.cli.query_arg import query_kind
        from crossgap_index.search.arithmetic import parse

        terms = parse(expression, kind_of=query_kind)
    given = (("image", image), ("text", text), ("vector", vector), ("item", item), ("terms", terms))
    return {k: v for k, v in given if v is not None}


class _CatalogCache:
    """The inversion cache (cache.sqlite, store/cache.py) as the search layer sees it (get_many / put_many).
    Writing it leaves the catalog and the FAISS files as they are."""

    def __init__(self, store: Store):
        self._store = store

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        for key in keys:
            vector = self._store.cache.get(key)
            if vector is not None:
                found[key] = vector
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        for key, vector in items.items():
            self._store.cache.put(key, vector)

"""CrossGapIndex: the one public entry point that the CLI and library users call.

A facade: each method checks its arguments, takes the store's lock its work needs and calls the layer that
does the work (engines/, search/, store/, tuning/ and the index_* modules beside this one)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from crossgap_index.build_options import BuildOptions
from crossgap_index.errors import QueryError
from crossgap_index.index_cross import IndexCross
from crossgap_index.index_info import IndexInfo
from crossgap_index.index_inverters import INVERTER_FILE, TEXT_INVERTER_FILE
from crossgap_index.index_items import check_new_texts
from crossgap_index.index_model import check_model_name, create_store, has_linear_projections
from crossgap_index.index_queries import Query, query_dict
from crossgap_index.index_runtime import IndexRuntime, reads
from crossgap_index.index_upkeep import IndexUpkeep
from crossgap_index.ingest.discover import find_images, resolve_roots
from crossgap_index.ingest.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_MEGAPIXELS
from crossgap_index.inversion import InversionConfig
from crossgap_index.models import check_device
from crossgap_index.precision import after_write, check_setting
from crossgap_index.search.modes import resolve_mode
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.run import Queries
from crossgap_index.search.searcher import Hit, QueryTransform, Searcher
from crossgap_index.store.directory import IndexExistsError, Store, default_index_path
from crossgap_index.store.vectors import AUTO
from crossgap_index.words import CountProgress, StageProgress, StepProgress, check_modality

if TYPE_CHECKING:  # torch loads with the first model, inside the methods that need one; the write path
    # (engines/, ingest's pipeline) inside the methods that write, so a query process never imports it
    from crossgap_index.engines import Engine
    from crossgap_index.engines.build import BuildReport, TextReport
    from crossgap_index.ingest.embeddings import ImportProgress, ImportReport
    from crossgap_index.models import Encoder

__all__ = [
    "BuildOptions",
    "INVERTER_FILE",
    "TEXT_INVERTER_FILE",
    "BuildReport",
    "CrossGapIndex",
    "Hit",
    "IndexInfo",
    "Query",
    "QueryTransform",
    "SearchOptions",
    "TextReport",
]


def _creator(create: str, summary: str) -> classmethod:
    """``CrossGapIndex.create`` / ``open_or_create``: one signature, ``_open`` with ``create`` fixed."""

    def creating(
        cls,
        path: str | Path | None = None,
        model: str | None = None,
        device: str = "auto",
        factory: str = AUTO,
        wait: bool = True,
        precision: str = "auto",
    ) -> CrossGapIndex:
        return cls._open(path, model, device, wait, None, precision, False, create, factory)

    creating.__doc__ = f"""{summary} ``factory``: the FAISS factory a new index is made with (``auto``: chosen
        by size, store/vectors.py); ``model`` (default: $CGX_MODEL or the open_clip default) and the rest as
        for ``open``."""
    return classmethod(creating)


class CrossGapIndex(IndexCross, IndexUpkeep):
    """An index directory plus the model it was built with (loaded on first use).

    Lifecycle, writing and searching are here; what ``--cross`` prepares and serves (tuned modes, inverters,
    gallery inversions) is in index_cross.py, listing, removal, checks and generations in index_upkeep.py.

    ``precision`` (auto, fp32, bf16) is what the model embeds in; the index records the precision
    of its vectors and admits another only within the measured agreement (crossgap_index.precision).
    """

    def __init__(self, store: Store, device: str = "auto", precision: str = "auto"):
        self._store = store
        self._device = check_device(device)
        self._runtime = IndexRuntime(store, self._device, check_setting(precision))

    # -- lifecycle ------------------------------------------------------------------------
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
        *,
        create: bool = False,
    ) -> CrossGapIndex:
        """Open the index at ``path``; ``model``, when given, must be the one the index was built with.
        ``create``: make it (for ``model``, default: $CGX_MODEL or the open_clip default) when it is missing.
        ``wait``: what writes do while another process writes (wait, or fail at once); ``readonly``:
        None opens read-only when the directory cannot be written. Safe to share between threads.
        An explicit ``precision`` is checked against the index's vectors when the model first loads;
        ``auto`` never refuses. ``for_check``: opened for ``check`` only, damaged shards are not refused."""
        missing = "missing" if create else "never"
        return cls._open(path, model, device, wait, readonly, precision, for_check, missing, AUTO)

    create = _creator("always", "A new, empty index at ``path`` (IndexExistsError when one is there).")
    open_or_create = _creator("missing", "``open(path, create=True)``: the index at ``path``, made when missing.")

    @classmethod
    def _open(cls, path, model, device, wait, readonly, precision, for_check, create: str, factory: str):
        """``create``: never (the index must exist), missing (made when it is not there), always (made, or
        IndexExistsError)."""
        path = _index_path(path)
        if create == "always" or (create == "missing" and not (path / "manifest.json").exists()):
            try:
                store, encoder = create_store(path, model, device, factory, wait, precision)
            except IndexExistsError:
                if create == "always":
                    raise  # else another process made it meanwhile: open it
            else:
                index = cls(store, device, precision)
                index._runtime.use_encoder(encoder)
                return index
        store = Store.open(path, readonly=readonly, for_check=for_check)
        store.wait = wait
        check_model_name(store, model)
        index = cls(store, device, precision)
        if precision != "auto":
            try:
                index.load_model()  # refuses a precision the vectors do not agree with
            except BaseException:
                store.close()
                raise
        return index

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
        progress: CountProgress | ImportProgress | None = None,
    ) -> ImportReport:
        """Import embeddings made elsewhere into the index at ``path`` (created for ``model`` when missing);
        the model's weights are not loaded. See crossgap_index.ingest.embeddings. ``progress``: a plain
        ``fn(done, total)`` told the rows, or an ``ImportProgress`` that is also told the FAISS build's phases."""
        from crossgap_index.ingest.embeddings import import_embeddings
        from crossgap_index.models import default_model_spec

        return import_embeddings(
            _index_path(path),
            Path(embeddings).expanduser(),
            model or default_model_spec(),
            meta=Path(meta).expanduser() if meta is not None else None,
            factory=factory,
            vector_dtype=vector_dtype,
            wait=wait,
            progress=progress,
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

    # -- the model ------------------------------------------------------------------------
    def load_model(self) -> None:
        """Load the model now (it loads on first use otherwise): a server before its first request, a clock
        before it starts. Refuses an explicit ``precision`` the index's vectors do not agree with."""
        self._runtime.encoder  # noqa: B018 - builds the encoder

    def model_input_size(self) -> int | None:
        """The image side the model takes (None: any size): what an upload is decoded to, with a margin."""
        return self._runtime.encoder.input_size

    def has_linear_projections(self) -> bool:
        """Whether both of the model's towers end in a bias-free linear projection (mode ``iso`` needs them)."""
        return has_linear_projections(self._runtime.encoder)

    def share_model(self, other: CrossGapIndex) -> None:
        """Embed with ``other``'s model (loaded there if not yet) instead of loading a copy: the same index opened
        twice in one process, e.g. a server and the watcher writing into it. The encoder is thread-safe."""
        if other.path != self.path:
            raise QueryError(f"share_model: {other.path} is another index than {self.path}")
        self._runtime.use_encoder(other._runtime.encoder)

    @property
    def encoder(self) -> Encoder:
        """Deprecated: the index's model; use ``load_model``, ``embed_query`` and the model_* methods."""
        warnings.warn("CrossGapIndex.encoder is private; see its docstring", DeprecationWarning, stacklevel=2)
        return self._runtime.encoder

    @property
    def searcher(self) -> Searcher:
        """Deprecated: the read side; use ``search_batch``, ``transform_query``, ``served_mode``."""
        warnings.warn("CrossGapIndex.searcher is private; see its docstring", DeprecationWarning, stacklevel=2)
        return self._runtime.searcher

    def _record_precision(self) -> None:
        """Before new vectors are written: the index's precision covers them (saved with them)."""
        manifest = self._store.manifest
        empty = not any(self._store.indexes[name].ntotal for name in ("image", "text"))
        manifest.precision = after_write(manifest.precision, self._runtime.encoder.precision, empty)

    # -- writing --------------------------------------------------------------------------
    def index_folders(
        self,
        roots: Iterable[str | Path],
        options: BuildOptions | None = None,
        *,
        progress: CountProgress | None = None,
        engine: str | Engine = "local",
        **settings,
    ) -> BuildReport:
        """Bring the index in line with the image files under ``roots``: new and changed files are
        embedded (or reuse a stored vector with the same content), files gone from disk leave; ids follow
        files (an edit keeps the id, so does a move; README "Ids"). Only regular files up to ``max_file_bytes``
        are read; any other file is skipped with a reason. A file that failed to decode is not read again
        while its size and mtime stay the same, unless ``retry_failed``.
        How files are found and read is one ``BuildOptions`` (build_options.py), or its fields as keywords
        (``include_hidden``, ``exclude``, ``max_megapixels``, ``max_file_bytes``, ``batch_size``, ``workers``,
        ``retry_failed``), which override ``options``.
        ``engine``: ``local``, ``ray`` (a Ray cluster; see crossgap_index.engines) or an engine object."""
        from crossgap_index.engines import get_engine

        chosen = BuildOptions.of(options, **settings)
        roots = resolve_roots(roots)
        paths = find_images(roots, include_hidden=chosen.include_hidden, exclude=chosen.exclude)
        return self._ingest(paths, roots, chosen, progress, get_engine(engine))

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
        from crossgap_index.engines import get_engine

        files = [Path(p).expanduser().resolve() for p in paths]
        chosen = BuildOptions(max_megapixels=max_megapixels, max_file_bytes=max_file_bytes, batch_size=batch_size)
        return self._ingest(files, [], chosen, progress, get_engine("local"))

    def sync_paths(
        self,
        changed: Iterable[str | Path],
        roots: Iterable[str | Path],
        options: BuildOptions | None = None,
        *,
        progress: CountProgress | None = None,
        **settings,
    ) -> BuildReport:
        """``index_folders`` limited to ``changed`` paths under ``roots`` (what a file watcher reports): image
        files among them, or under folders among them, are added or updated; paths gone from disk (files, or
        folders with all under them) leave; a file moved from one to another keeps its id. ``options`` and
        ``settings`` as in ``index_folders``."""
        from crossgap_index.engines import get_engine
        from crossgap_index.ingest.discover import paths_to_sync

        chosen = BuildOptions.of(options, **settings)
        changed_paths = [Path(p) for p in changed]
        files, prune = paths_to_sync(changed_paths, resolve_roots(roots), chosen.include_hidden, chosen.exclude)
        return self._ingest(files, prune, chosen, progress, get_engine("local"))

    def _ingest(self, paths: list[Path], prune_roots: list[Path], chosen: BuildOptions, progress, engine: Engine):
        from crossgap_index.engines.build import ImageBuild
        from crossgap_index.ingest.pipeline import ReadLimits

        with self._store.writing():
            limits = ReadLimits(chosen.max_megapixels, chosen.max_file_bytes, None)
            build = ImageBuild(self._store, lambda: self._runtime.encoder, self._record_precision, self._device)
            batch, workers = chosen.batch_size, chosen.workers
            return build.run(paths, prune_roots, limits, batch, workers, engine, progress, chosen.retry_failed)

    def add_texts(
        self,
        texts: Sequence[str],
        ids: Sequence[str | None] | None = None,
        progress: CountProgress | None = None,
    ) -> TextReport:
        """Embed and store texts, skipping any whose exact content is already stored.
        Texts that cannot be stored as UTF-8 (lone surrogates) are refused before anything is written."""
        from crossgap_index.engines.build import add_text_items

        check_new_texts(texts, ids)
        with self._store.writing():
            return add_text_items(self._store, self._runtime.encoder, texts, ids, self._record_precision, progress)

    # -- reading --------------------------------------------------------------------------
    def fit_in_background(self):
        """From now on, gallery fits (dba, nnn, qbnorm, center, derived collections) run on a background thread of
        their own, and a query whose fit is not ready raises FitPending instead of computing it (the server's
        way: search/fitting.py). Returns the runner; closing it stops a running fit."""
        return self._runtime.fit_in_background()

    def embed_query(self, image: str | Path | Image.Image | None = None, text: str | None = None, vector=None) -> Query:
        """The query's unit feature, its modality and its content hash."""
        feature, modality, digest = self._runtime.searcher.embed([query_dict(image, text, vector)])[0]
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
        transformer = self._runtime.searcher.serving(SearchOptions(use_cache=use_cache), progress).transformer
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
        query = query_dict(image, text, vector, item, expression)
        return self.search_batch([query], options, progress=progress, **settings)[0]

    @reads
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
        return self._runtime.searcher.search_batch(queries, chosen, progress=progress, timings=timings)

    @reads
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
        return self._runtime.searcher.transform_query(query_dict(image, text, vector, item, expression), chosen)


def _index_path(path: str | Path | None) -> Path:
    return (Path(path).expanduser() if path else default_index_path()).absolute()


def __getattr__(name: str):
    """``BuildReport`` and ``TextReport`` stay importable from here without a query importing the write path."""
    if name in ("BuildReport", "TextReport"):
        from crossgap_index.engines import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

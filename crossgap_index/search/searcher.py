"""Searching one index: embed the queries, resolve the mode, run the engine, turn ranked ids into hits.

``CrossGapIndex`` delegates here; the CLI, the server and the adapters all end up in ``search_batch``,
so a query is answered the same way whichever door it came in by.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossgap_index.errors import QueryError, StoreError
from crossgap_index.ingest.decode import DecodeError, SkippedFile, decode_rgb, decode_side, read_file
from crossgap_index.ingest.texts import check_query_text
from crossgap_index.search.arithmetic import check_terms, combine
from crossgap_index.search.filters import Admit, admitter, check_filter_target
from crossgap_index.search.gallery import StoreGallery
from crossgap_index.search.modes import Mode, resolve_mode
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.projections import FeatureMap
from crossgap_index.search.ranking import Ranked
from crossgap_index.search.run import Queries, Result, apply_peers, gallery_collection, peer_of, run_mode
from crossgap_index.search.transforms import ModelTransformer
from crossgap_index.store.catalog import ItemRow
from crossgap_index.store.manifest import ANY_TASK
from crossgap_index.words import QUERY_MODALITIES, check_modality, content_hash, target_modality, text_hash

QUERY_KINDS = ("image", "text", "vector", "item", "terms")
# (query modality, target collection) -> the task whose tuned mode serves it
TASK_OF = {("image", "image"): "image-to-image", ("text", "text"): "text-to-text", ("text", "image"): "text-to-image"}


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


@dataclass(frozen=True)
class QueryTransform:
    """What a mode searches with, for use in another vector database.

    ``lists``: leg name -> (unit search vector, the collection it is compared with: 'image', 'text' or
    'image-oti'). ``gallery_map``: None, or the feature map (span, iso, concept) through which the gallery's
    vectors must be seen: ``gallery_map.apply(vectors)`` gives the unit rows to store in the other database
    (linear maps also carry ``.matrix``). ``fusion``: None, or ('rrf', rrf_k) / ('score', alpha) to merge
    two lists, each taken ``depth`` deep.
    """

    mode: str
    lists: dict[str, tuple[np.ndarray, str]]
    gallery_map: FeatureMap | None = None
    fusion: tuple[str, float] | None = None
    depth: int = 100


class Searcher:
    """The read side of an index: stateless per query, safe to share between threads."""

    def __init__(
        self,
        store,
        model_name: str,
        encoder: Callable,
        inverter: Callable | None,
        cache=None,
        *,
        progress: Callable | None = None,
        gallery: StoreGallery | None = None,
        text_inverter: Callable | None = None,
    ):
        self._store = store
        self._encoder = encoder
        self._model_name, self._inverter, self._text_inverter = model_name, inverter, text_inverter
        self._cache = cache
        self.gallery = gallery or StoreGallery(store)
        self.transformer = ModelTransformer(
            model_name,
            encoder,
            cache=cache,
            inverter=inverter,
            text_inverter=text_inverter,
            projection_dir=store.path / "derived",
            progress=progress,
        )

    def with_options(self, cache, progress: Callable | None) -> Searcher:
        """The same index, gallery and inverters with another cache (None: none) or an inversion progress callback."""
        return Searcher(
            self._store,
            self._model_name,
            self._encoder,
            self._inverter,
            cache,
            progress=progress,
            gallery=self.gallery,
            text_inverter=self._text_inverter,
        )

    def serving(self, options: SearchOptions, progress: Callable | None) -> Searcher:
        """This searcher, or one without the cache (``use_cache=False``) or reporting inversion progress."""
        if options.use_cache and progress is None:
            return self
        return self.with_options(self._cache if options.use_cache else None, progress)

    # -- queries ------------------------------------------------------------------------------
    def embed(self, queries: Sequence[dict], solo: Set[str] = frozenset()) -> list[tuple[np.ndarray, str, str]]:
        """(unit feature, modality, content hash) per query dict with one of image/text/vector/item; image or text
        queries whose modality is in ``solo`` are embedded one at a time whatever the encoder's batch."""
        out: list[tuple[np.ndarray, str, str] | None] = [None] * len(queries)
        images, texts = [], []
        side = None
        for i, query in enumerate(queries):
            kind = _kind(query)
            if kind == "image":
                if side is None:
                    side = decode_side(self._encoder().input_size) or 0
                images.append((i, *_load_query_image(query["image"], side or None)))
            elif kind == "text":
                texts.append((i, check_query_text(query["text"])))
            elif kind == "vector":
                out[i] = self._vector(query)
            elif kind == "terms":
                out[i] = self._combined(query["terms"])
            else:
                out[i] = self._item(query["item"])
        if images:
            encoder = self._encoder()  # query_batch_size: a query's vector never depends on its neighbours
            size = 1 if "image" in solo else encoder.query_batch_size
            feats = encoder.encode_images([img for _, img, _ in images], size)
            for (i, _, digest), feat in zip(images, feats, strict=True):
                out[i] = (feat, "image", digest)
        if texts:
            for _, text in texts:
                self._encoder().note_truncation(text)  # a one-line note when the model's context cuts it
            encoder = self._encoder()
            size = 1 if "text" in solo else encoder.query_batch_size
            feats = encoder.encode_texts([t for _, t in texts], size)
            for (i, text), feat in zip(texts, feats, strict=True):
                out[i] = (feat, "text", text_hash(text))
        return out  # type: ignore[return-value]

    def _vector(self, query: dict) -> tuple[np.ndarray, str, str]:
        dim = self._store.manifest.dim
        try:
            vec = np.asarray(query["vector"], np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise QueryError(f"query vector is not a list of numbers: {exc}") from exc
        if vec.shape[0] != dim:
            raise QueryError(f"query vector has dim {vec.shape[0]}, index has {dim}")
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or norm == 0.0:
            raise QueryError("query vector must be finite and non-zero")
        modality = query.get("modality", "vector")
        check_modality(modality, QUERY_MODALITIES, what="vector modality")
        unit = vec / norm
        return unit, modality, content_hash(unit.tobytes())

    def _combined(self, terms) -> tuple[np.ndarray, str, str]:
        """A weighted sum of queries (search/arithmetic.py), searched as one query."""
        pairs = check_terms(terms)
        unit, modality = combine([w for w, _ in pairs], self.embed([q for _, q in pairs]))
        return unit, modality, content_hash(unit.tobytes())

    def _item(self, item_id) -> tuple[np.ndarray, str, str]:
        try:
            item_id = int(item_id)
        except (TypeError, ValueError) as exc:
            raise QueryError(f"item id must be an integer, got {item_id!r}") from exc
        row = self._store.catalog.rows([item_id]).get(item_id)
        if row is None:
            raise QueryError(f"no item with id {item_id}")
        live, vectors = self._store.live_vectors(row.modality, np.asarray([item_id]))
        try:
            digest = self._store.catalog.content_hashes_of([item_id])[0] if live.all() else None
        except KeyError:
            digest = None
        if digest is None:  # removed by another process between the reads
            raise QueryError(f"no item with id {item_id}")
        return np.array(vectors[0], np.float32), row.modality, digest

    # -- modes --------------------------------------------------------------------------------
    def resolve(self, options: SearchOptions, query_modality: str, collection: str) -> Mode:
        """The Mode ``options`` names for a query of ``query_modality`` against ``collection``."""
        if isinstance(options.mode, Mode):
            return options.mode
        tuned = self.tuned_record(query_modality, collection)
        if options.mode == "auto" and query_modality != collection and tuned is None:
            return resolve_mode("intra")  # already inter-modal and nothing tuned for it: nothing to turn around
        return resolve_mode(options.mode, options, tuned=tuned["mode"] if tuned else None, model=self._model_name)

    def tuned_record(self, query_modality: str, collection: str) -> dict | None:
        """The tune record serving ``query_modality`` queries against ``collection``: the one tuned for that
        task, else one that names no task (served to every query, as single records always were), else None.
        Each query modality can win with a different mode, so each task keeps its own."""
        records = self._store.manifest.tuned_modes
        task = TASK_OF.get((query_modality, collection))
        record = records.get(task) if task else None
        if record is None and query_modality == collection:
            record = records.get(ANY_TASK)
        return record

    def search_batch(
        self,
        queries: Sequence[dict],
        options: SearchOptions,
        *,
        progress: Callable | None = None,
        timings: dict | None = None,
    ) -> list[list[Hit]]:
        """Hits per query; queries that share a modality run together (one inversion call per batch).

        A mode that turns the query into the other modality (cross, fused, inverter, ...) serves a query
        that is already inter-modal (a text query against images) as it is: that query is the cross search.
        """
        searcher = self.serving(options, progress)
        collection = target_modality(options.target)
        check_filter_target(options.item_filter(), collection)
        if self._store.indexes[collection].ntotal == 0:
            raise StoreError(f"the {collection} index at {self._store.path} is empty")
        begin = time.perf_counter()
        # the modes of the image and text queries, known before embedding (how to embed may depend on them)
        modes = {m: searcher.served(options, m) for m in {_kind(query) for query in queries} & {"image", "text"}}
        embedded = searcher.embed(queries, self._inverting_in_bf16(modes))
        embed_s = time.perf_counter() - begin
        results: list[list[Hit] | None] = [None] * len(queries)
        inversion_batch = 0
        for modality in sorted({m for _, m, _ in embedded}):
            rows = [i for i, (_, m, _) in enumerate(embedded) if m == modality]
            chosen = modes[modality] if modality in modes else searcher.served(options, modality)
            batch = Queries(np.stack([embedded[i][0] for i in rows]), modality, tuple(embedded[i][2] for i in rows))
            admit = searcher.admit(options, [queries[i] for i in rows])
            searcher.transformer.last_inversion_batch = 0
            ranked = run_mode(chosen, batch, collection, options.k, searcher.gallery, searcher.transformer, admit=admit)
            if chosen.inverts:
                inversion_batch = max(inversion_batch, searcher.transformer.last_inversion_batch)
            backfilled = searcher._backfilled(
                chosen, batch, collection, options.k, ranked, options, [queries[i] for i in rows]
            )
            for i, hits in zip(rows, backfilled, strict=True):
                results[i] = hits
        if timings is not None:
            timings.update(
                embed_ms=embed_s * 1e3,
                search_ms=(time.perf_counter() - begin - embed_s) * 1e3,
                inversion_batch_size=inversion_batch,
            )
        return results  # type: ignore[return-value]

    def _inverting_in_bf16(self, modes: dict[str, Mode]) -> set[str]:
        """The query modalities among ``modes`` (modality -> its served mode) whose mode inverts in bf16. Such a query
        is embedded alone even where the encoder batches (fp32): a last-bit difference in its target (fp32 rows round
        by the batch's shape, ~1e-7) moves its bf16 inversion by ~1e-3, and its hits would depend on its neighbours."""
        return {
            modality
            for modality, mode in modes.items()
            if any(leg.inverts and leg.inversion().precision_on(self._encoder().loaded) == "bf16" for leg in mode.legs)
        }

    def served(self, options: SearchOptions, query_modality: str) -> Mode:
        """The Mode that answers a query of ``query_modality`` asked with ``options``, checked against the index."""
        collection = target_modality(options.target)
        chosen = self.resolve(options, query_modality, collection)
        if query_modality in ("image", "text") and query_modality != collection and turns(chosen):
            chosen = resolve_mode("intra")  # already inter-modal: the query itself is the cross search
        self._check(chosen, query_modality, collection)
        return chosen

    def admit(self, options: SearchOptions, queries: Sequence[dict]) -> Admit | None:
        """What ``options``' filter lets each of ``queries`` return (search/filters.py), or None when it is all.
        A query made from stored items leaves them out unless ``exclude_query`` is False ("more like this")."""
        item_filter = options.item_filter()
        own = [query_items(q) if options.exclude_query is not False else set() for q in queries]
        if item_filter.empty and not any(own):
            return None
        return admitter(item_filter, self._store.catalog.rows, own)

    def _backfilled(
        self,
        mode: Mode,
        batch: Queries,
        collection: str,
        k: int,
        ranked: list[Result],
        options: SearchOptions,
        queries: Sequence[dict],
    ) -> list[list[Hit]]:
        """Hits per query, ``k`` of them wherever the index holds that many live items. A reader whose FAISS
        files predate another process's removal ranks ids the catalog no longer holds: those are dropped,
        and the query is ranked again deeper (same vectors, same seeds) until ``k`` live hits fill it or the
        ranking runs out. The hits are then the best live items of the state this reader loaded."""
        rows = self._store.catalog.rows(sorted({i for result in ranked for i in result.ranked.ids.tolist()}))
        out = [self.hits(result, rows) for result in ranked]  # one catalog lookup for the batch's hits
        fetch = k
        while True:
            short = [j for j, hits in enumerate(out) if len(hits) < k and len(ranked[j].ranked) >= fetch]
            if not short:
                return out
            fetch = 2 * fetch + max(k - len(out[j]) for j in short)
            again = Queries(batch.features[short], batch.modality, tuple(batch.digests[j] for j in short))
            admit = self.admit(options, [queries[j] for j in short])
            deeper = run_mode(mode, again, collection, fetch, self.gallery, self.transformer, admit=admit)
            for j, result in zip(short, deeper, strict=True):
                ranked[j] = result
                out[j] = self.hits(result)[:k]

    def _check(self, mode: Mode, modality: str, collection: str) -> None:
        for leg in mode.legs:
            if _leg_turns(leg) and modality != collection:
                raise QueryError(
                    f"mode {mode.name} turns a query into the other modality, and a raw vector has none: name its "
                    "modality (image or text); a sum of texts and images has none either: combine one modality"
                )
            if leg.gallery == "inverted":
                inverted = gallery_collection(leg, collection)
                missing = self._store.indexes[collection].ntotal - self._store.indexes[inverted].ntotal
                if missing and collection == "image":
                    raise QueryError(
                        f"{missing} gallery images have no OTI feature yet: run `cgx build-index DIR "
                        "--invert-gallery` (library: invert_gallery())"
                    )
                if missing:
                    raise QueryError(
                        f"{missing} stored texts have no OVI feature yet: run `cgx add-texts FILE --invert-gallery` "
                        "(library: invert_gallery(modality='text'))"
                    )

    def transform_query(self, query: dict, options: SearchOptions) -> QueryTransform:
        """The vectors ``options.mode`` searches with for one query, for another vector database (QueryTransform)."""
        if not options.item_filter().empty:  # a vector form carries no filter: refused, never silently dropped
            raise QueryError(
                "filters (under, glob, ids, external ids) apply inside this index; in another database use its own "
                "filter (LanceDB: where=, Qdrant: query_filter=)"
            )
        searcher = self.serving(options, None)
        collection = target_modality(options.target)
        feature, modality, digest = searcher.embed([query])[0]
        chosen = searcher.served(options, modality)
        batch = Queries(feature[None, :], modality, (digest,))
        if chosen.post is not None and not peer_of(chosen.post["kind"]).vector_form:
            raise QueryError(f"mode {chosen.name} re-ranks inside the index: no vector form for another database")
        lists, gallery_map = {}, None
        for leg in chosen.legs:
            vector = searcher.transformer.search_vectors(leg, batch, collection)
            projection = searcher.transformer.projection(leg, collection)
            vector, projection = apply_peers(chosen, leg, vector, projection, searcher.gallery, collection, modality)
            lists[leg.name] = (vector[0], gallery_collection(leg, collection))
            if projection is not None:
                gallery_map = projection
        fusion = None
        if chosen.fusion is not None:
            fusion = (chosen.fusion, float(chosen.rrf_k if chosen.fusion == "rrf" else chosen.alpha))
        return QueryTransform(chosen.name, lists, gallery_map, fusion, chosen.depth)

    def hits(self, result: Result, rows: dict[int, ItemRow] | None = None) -> list[Hit]:
        """Hits of a result; each carries its rank and score in every leg's list. ``rows``: the catalog rows
        already looked up for a batch (holding at least the result's ids), else looked up here."""
        ranked: Ranked = result.ranked
        positions = {
            name: {i: (r, s) for r, (i, s) in enumerate(zip(lst.ids.tolist(), lst.scores.tolist(), strict=True), 1)}
            for name, lst in result.lists.items()
        }
        if rows is None:
            rows = self._store.catalog.rows(ranked.ids.tolist())
        hits = []
        for item_id, score in zip(ranked.ids.tolist(), ranked.scores.tolist(), strict=True):
            row = rows.get(item_id)
            if row is None:  # removed by another process after this one loaded its FAISS files
                continue
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


def query_items(query: dict) -> set[int]:
    """The stored items a query is made from (an ``item`` query: that one; a combined query: its item terms)."""
    if not isinstance(query, dict):
        return set()
    if query.get("terms") is not None:
        return set().union(*(query_items(term) for _, term in check_terms(query["terms"])))
    return {int(query["item"])} if query.get("item") is not None else set()


def turns(mode: Mode) -> bool:
    """Whether ``mode`` turns the query into the other modality (an inversion, or the inverted gallery)."""
    return any(_leg_turns(leg) for leg in mode.legs)


def _leg_turns(leg) -> bool:
    return leg.transform in ("invert", "inverter", "warm") or leg.gallery == "inverted"


def _kind(query: dict) -> str:
    if not isinstance(query, dict):
        raise QueryError("each query must be a dict with one of: image, text, vector, item")
    given = [k for k in QUERY_KINDS if query.get(k) is not None]
    if len(given) != 1:
        raise QueryError("give exactly one of image=, text=, vector=, item= or terms= (an expression)")
    return given[0]


def _load_query_image(image, min_side: int | None) -> tuple:
    """The decoded query image (decoded as gallery images are) and the hash of its content."""
    from PIL import Image

    if isinstance(image, Image.Image):
        rgb = image.convert("RGB")
        return rgb, content_hash(f"{rgb.size}".encode() + rgb.tobytes())
    if isinstance(image, bytes | bytearray):
        try:
            return decode_rgb(bytes(image), min_side=min_side), content_hash(bytes(image))
        except DecodeError as exc:
            raise QueryError(f"cannot decode query image: {exc}") from exc
    path = Path(image).expanduser()
    try:
        data = read_file(path).data  # regular files only, size-capped: a FIFO named q.png cannot hang a query
        return decode_rgb(data, min_side=min_side), content_hash(data)
    except OSError as exc:
        raise QueryError(f"cannot read query image {path}: {exc.strerror or exc}") from exc
    except SkippedFile as exc:
        raise QueryError(f"cannot read query image {path}: {exc}") from exc
    except DecodeError as exc:
        raise QueryError(f"cannot decode query image {path}: {exc}") from exc

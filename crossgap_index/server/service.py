"""The search service behind the routes: checks a request against the limits, turns it into a library
query, and runs it on the direct path (a thread pool) or through the inversion micro-batcher."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.exceptions import HTTPException

from crossgap_index.api import CrossGapIndex, Hit
from crossgap_index.errors import CrossGapError
from crossgap_index.ingest.decode import DecodeError, decode_rgb, decode_side
from crossgap_index.ingest.texts import unicode_problem
from crossgap_index.search.arithmetic import parse as parse_expression
from crossgap_index.search.fitting import FitPending
from crossgap_index.search.options import SearchOptions
from crossgap_index.search.registry import (
    MODES,
    is_mode_name,
    list_labels,
    mode_help,
    mode_label,
    mode_names,
    unknown_mode_message,
)
from crossgap_index.server.batcher import BatchResult, MicroBatcher
from crossgap_index.server.errors import ApiError, status_of
from crossgap_index.server.files import read_item_file
from crossgap_index.server.follower import IndexFollower
from crossgap_index.server.metrics import Metrics
from crossgap_index.server.models import AddTextsRequest, SearchRequest
from crossgap_index.server.settings import ServeSettings
from crossgap_index.server.thumbnails import ThumbnailCache, file_state, make_thumbnail
from crossgap_index.store.catalog import ImageRecord

QUERY_KINDS = ("text", "vector", "image_base64", "item_id", "expression")

T = TypeVar("T")


class SearchService:
    def __init__(self, index: CrossGapIndex, settings: ServeSettings, metrics: Metrics):
        self.index = index
        self.settings = settings
        self.metrics = metrics
        self._thumbs = ThumbnailCache()
        self._fits = index.fit_in_background()  # fits never run in the pool that answers searches
        self._pool = ThreadPoolExecutor(settings.search_threads, thread_name_prefix="cgx-search")
        self._batcher = MicroBatcher(
            self._run_batch, settings.batch_window_ms / 1000.0, settings.max_batch, metrics.inversion_batch.observe
        )
        # Other writers' saved states, swapped in whole (server/follower.py): check_now() after a write, or the loop.
        self.follower = IndexFollower(index, settings.follow_interval_s)
        self.follower.start()

    @property
    def modes(self) -> list[str]:
        return list(mode_names())

    def servable_modes(self) -> list[str]:
        """The modes this index can serve (the page offers only these): each registry entry says what it needs
        (a trained inverter, the gallery's stored inversions, a model with linear projections)."""
        info = self.index.info()
        missing = set()
        if info.inverter is None:
            missing.add("inverter")
        if info.gallery_inversion is None:
            missing.add("gallery-inversion")
        if not self.index.has_linear_projections():
            missing.add("linear-projections")
        # The page offers the registry's offered modes; compositions (span+aqe) stay reachable through the API.
        offered = mode_names(compositions=False, offered_only=True)
        return [name for name in offered if not missing.intersection(MODES[name].needs)]

    def close(self) -> None:
        """Finish queued work, then release threads (the index is closed by its owner); a running fit stops."""
        self.follower.stop()
        self._fits.close()
        self._batcher.close()
        self._pool.shutdown(wait=True)

    # -- searching ------------------------------------------------------------------------
    async def search(self, request: SearchRequest, upload: bytes | None = None) -> dict[str, Any]:
        """The hits of one request. A mode whose gallery fit is not ready waits for it (holding no search thread)
        within the request's timeout, then answers 503 with Retry-After (search/fitting.py)."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        while True:
            try:
                return await self._search(request, upload)
            except FitPending as pending:
                await self._wait_for_fit(pending, deadline)

    async def _wait_for_fit(self, pending: FitPending, deadline: float) -> None:
        job = pending.job
        try:
            waiting = asyncio.shield(asyncio.wrap_future(job.future))  # giving up on it leaves the fit running
            await asyncio.wait_for(waiting, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise HTTPException(503, str(FitPending(job)), headers={"Retry-After": str(job.retry_after_s)}) from None
        except Exception:  # noqa: BLE001 - the fit failed: the search asked again answers with its error
            return

    async def _search(self, request: SearchRequest, upload: bytes | None) -> dict[str, Any]:
        start = time.perf_counter()
        self._check(request, upload)
        options = self._options(request)
        item_modality = None
        if request.item_id is not None:  # a catalog read: in the pool, never blocking the event loop on a write
            item_modality = await self._in_pool(lambda: self._item_modality(request.item_id))
        if self._batched(request, options, item_modality):
            query = await self._in_pool(lambda: self._library_query(request, upload))
            prepared = time.perf_counter()
            with self.metrics.in_flight.labels("batched").track_inprogress():  # queries asked alike meet in a batch
                result: BatchResult = await self._bounded(asyncio.wrap_future(self._batcher.submit(options, query)))
            hits, library = result.value
            timings: dict[str, float | int] = {
                "prepare_ms": _ms(prepared - start),
                "queue_ms": _ms(result.wait_s),
                "batch_ms": _ms(result.run_s),
                "batch_queries": result.batch_size,
                **library,
            }
            self.metrics.queries.labels(request.mode, "batched").inc()
        else:  # one hop to a worker thread: decode (if any) and search there
            with self.metrics.in_flight.labels("direct").track_inprogress():
                hits, timings = await self._in_pool(lambda: self._search_one(request, upload, options))
            self.metrics.queries.labels(request.mode, "direct").inc()
        timings["total_ms"] = _ms(time.perf_counter() - start)
        return {"hits": [hit_json(h) for h in hits], "mode": request.mode, "timings": timings}

    async def search_many(self, requests: list[SearchRequest]) -> list[dict[str, Any]]:
        """All queries at once: the inverting ones meet in the batcher."""
        if len(requests) > self.settings.max_batch_queries:
            raise ApiError(413, f"{len(requests)} queries is over the limit of {self.settings.max_batch_queries}")

        async def one(i: int, request: SearchRequest) -> dict[str, Any]:
            try:
                return await self.search(request)
            except ApiError as exc:
                raise ApiError(exc.status, f"queries[{i}]: {exc.message}") from None
            except CrossGapError as exc:
                raise ApiError(status_of(exc), f"queries[{i}]: {exc}") from None

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))

    def _check(self, request: SearchRequest, upload: bytes | None) -> None:
        given = [name for name in QUERY_KINDS if getattr(request, name) is not None]
        given += ["image"] if upload is not None else []
        if len(given) != 1:
            kinds = ", ".join((*QUERY_KINDS, "an uploaded image"))
            raise ApiError(400, f"give exactly one query: {kinds} (got {', '.join(given) or 'none'})")
        s = self.settings
        if request.k > s.max_k:
            raise ApiError(400, f"k={request.k} is over the limit of {s.max_k}")
        if not is_mode_name(request.mode):
            raise ApiError(400, f"{unknown_mode_message(request.mode)} (GET /info lists all)")
        if request.steps is not None and request.steps > s.max_steps:
            raise ApiError(400, f"steps={request.steps} is over the limit of {s.max_steps}")
        if request.expression is not None and len(request.expression) > s.max_text_chars:
            raise ApiError(413, f"expression of {len(request.expression)} characters is over the limit")
        if request.text is not None and len(request.text) > s.max_text_chars:
            raise ApiError(413, f"text of {len(request.text)} characters is over the limit of {s.max_text_chars}")
        if request.modality is not None and request.vector is None:
            raise ApiError(400, "modality names what a raw vector is; it goes with vector only")

    def _item_modality(self, item_id: int) -> str:
        row = self.index.item(item_id)
        if row is None:
            raise ApiError(404, f"no item with id {item_id}")
        return row.modality

    def _batched(self, request: SearchRequest, options: SearchOptions, item_modality: str | None) -> bool:
        """Queries whose mode inverts them (image -> images, text -> texts): these are micro-batched."""
        if request.expression is not None:
            return False  # its terms' modality is known once they are embedded: answered directly
        if request.text is not None:
            modality = "text"
        elif request.vector is not None:
            modality = request.modality or "vector"
        else:
            modality = item_modality or "image"
        if modality != {"images": "image", "texts": "text"}[request.target]:
            return False  # inter-modal already: the library answers directly (or refuses an inversion)
        return self.index.served_mode(options, modality).inverts

    def _library_query(self, request: SearchRequest, upload: bytes | None) -> dict[str, Any]:
        """The query as search_batch() takes it; images decoded here under the server's limits."""
        if request.text is not None:
            return {"text": request.text}
        if request.vector is not None:
            return {"vector": request.vector, **({"modality": request.modality} if request.modality else {})}
        if request.item_id is not None:
            return {"item": request.item_id}  # the catalog's own vector for that id
        if request.expression is not None:
            return {"terms": parse_expression(request.expression)}  # bare words are texts: no file is read
        data = upload if upload is not None else _b64decode(request.image_base64 or "", self.settings.max_upload_bytes)
        if len(data) > self.settings.max_upload_bytes:
            raise ApiError(413, f"image of {len(data)} bytes is over the limit of {self.settings.max_upload_bytes}")
        try:  # refuse what is not a usable image here (415), at the model's input size (bounded memory)
            decode_rgb(data, self.settings.max_megapixels, decode_side(self.index.model_input_size()))
        except DecodeError as exc:
            raise ApiError(415, f"not a usable image: {exc}") from None
        return {"image": data}  # bytes: seeded and cached by their hash, as `cgx query photo.jpg` is

    @staticmethod
    def _options(request: SearchRequest) -> SearchOptions:
        """How the request asks to search, as the library takes it (inversion settings left out: the served ones)."""
        return SearchOptions(
            target=request.target,
            k=request.k,
            mode=request.mode,
            merge=request.merge,
            alpha=request.alpha,
            rrf_k=request.rrf_k,
            inversion=request.inversion(),
            use_cache=request.use_cache,
            under=request.under,
            glob=request.glob,
            only_ids=None if request.only_ids is None else tuple(request.only_ids),
            exclude_ids=tuple(request.exclude_ids or ()),
            external_ids=None if request.external_ids is None else tuple(request.external_ids),
            exclude_query=request.exclude_query,
        )

    def _search_one(
        self, request: SearchRequest, upload: bytes | None, options: SearchOptions
    ) -> tuple[list[Hit], dict[str, float | int]]:
        query = self._library_query(request, upload)
        timings: dict[str, float | int] = {}
        hits = self.index.search_batch([query], options, timings=timings)[0]
        return hits, _rounded(timings)

    def _run_batch(self, key: Hashable, queries: list[dict[str, Any]]) -> list[tuple[list[Hit], dict]]:
        assert isinstance(key, SearchOptions)
        timings: dict[str, float | int] = {}
        results = self.index.search_batch(queries, key, timings=timings)
        shared = _rounded(timings)
        return [(hits, shared) for hits in results]

    # -- other reads and writes -------------------------------------------------------------
    async def duplicates(self, threshold: float | None) -> list[list[dict[str, Any]]]:
        """Groups of near-duplicate images (CrossGapIndex.duplicates), each a list of {id, path}."""
        groups = await self._in_pool(lambda: self.index.duplicates(threshold))
        return [[{"id": row.id, "path": row.path} for row in group] for group in groups]

    async def item(self, item_id: int):
        row = await self._in_pool(lambda: self.index.item(item_id))
        if row is None:
            raise ApiError(404, f"no item with id {item_id}")
        return row

    async def item_image(self, item_id: int) -> tuple[bytes, str]:
        """The file of an image item, only while it is the file indexed (see files.read_item_file)."""
        row = await self.item(item_id)

        def read() -> bytes:
            return read_item_file(self._image_record(row), self.settings.max_upload_bytes)

        return await self._in_pool(read), row.path

    def _image_record(self, row) -> ImageRecord:
        """The catalog's record of an image item's file (404 for a text item, or one removed meanwhile)."""
        if row.modality != "image" or row.path is None:
            raise ApiError(404, f"item {row.id} is a text, not an image")
        record = self.index.image_record(row.id)
        if record is None:
            raise ApiError(404, f"no item with id {row.id}")
        return record

    async def thumbnail(self, item_id: int) -> bytes:
        """A small JPEG of an image item, whatever its format; cached by id and the file's state (file_state)."""
        row = await self.item(item_id)

        def make() -> bytes:
            record = self._image_record(row)
            key = (item_id, record.content_hash, file_state(record))  # revalidated: any change makes a new key
            cached = self._thumbs.get(key)
            if cached is None:
                data = read_item_file(record, self.settings.max_upload_bytes)  # every component, size and hash
                try:
                    cached = make_thumbnail(data, self.settings.max_megapixels)
                except DecodeError as exc:
                    raise ApiError(415, f"item {item_id} is not a usable image: {exc}") from None
                self._thumbs.put(key, cached)
            return cached

        return await self._in_pool(make)

    async def browse(self, after: int, limit: int) -> dict[str, Any]:
        """One page of the stored images by id (the page's view before any query)."""

        rows = await self._in_pool(lambda: self.index.ls("image", after=after, limit=limit))
        items = [{"id": r.id, "path": r.path} for r in rows]
        return {"items": items, "next_after": rows[-1].id if len(rows) == limit else None}

    def page_info(self) -> dict[str, Any]:
        """What the page shows besides hits: the modes it may offer, in plain words, what ``auto`` (the CLI's
        --cross) resolves to per query modality, and a note when the model does not know these images."""
        auto_serves = {
            m: self.index.served_mode(SearchOptions(mode="auto", target=f"{m}s"), m).name for m in ("image", "text")
        }
        return {
            "mode_choices": [{"name": n, "label": mode_label(n), "help": mode_help(n)} for n in self.servable_modes()],
            "auto_serves": auto_serves,
            "tuned": self.index.tuned_mode is not None,
            "list_labels": list_labels(),
            "model_note": self.index.model_note(),
        }

    async def info(self) -> dict[str, Any]:
        s = self.settings
        return {
            **await self._in_pool(lambda: {**dataclasses.asdict(self.index.info()), "page": self.page_info()}),
            "modes": self.modes,
            "limits": {
                "max_k": s.max_k,
                "max_batch_queries": s.max_batch_queries,
                "max_texts": s.max_texts,
                "max_request_bytes": s.max_request_bytes,
                "max_upload_bytes": s.max_upload_bytes,
                "max_megapixels": s.max_megapixels,
                "max_steps": s.max_steps,
            },
            "batching": {"window_ms": s.batch_window_ms, "max_batch": s.max_batch},
        }

    async def add_texts(self, request: AddTextsRequest) -> dict[str, int]:
        s = self.settings
        if len(request.texts) > s.max_texts:
            raise ApiError(413, f"{len(request.texts)} texts is over the limit of {s.max_texts}")
        if request.ids is not None and len(request.ids) != len(request.texts):
            raise ApiError(400, "texts and ids differ in length")
        for i, text in enumerate(request.texts):
            if not text.strip():
                raise ApiError(400, f"texts[{i}] is empty")
            if len(text) > s.max_text_chars:
                raise ApiError(413, f"texts[{i}] has {len(text)} characters, over the limit of {s.max_text_chars}")
            if problem := unicode_problem(text):
                raise ApiError(400, f"texts[{i}] {problem}")
        for i, external_id in enumerate(request.ids or []):
            if external_id is not None and len(external_id) > s.max_text_chars:
                raise ApiError(413, f"ids[{i}] has {len(external_id)} characters, over the limit of {s.max_text_chars}")
            if problem := unicode_problem(external_id):
                raise ApiError(400, f"ids[{i}] {problem}")

        report = await self._in_pool(lambda: self.index.add_texts(request.texts, request.ids))
        return {"added": report.added, "duplicates": report.duplicates}

    # -- plumbing ---------------------------------------------------------------------------
    async def _in_pool(self, fn: Callable[[], T]) -> T:
        return await self._bounded(asyncio.get_running_loop().run_in_executor(self._pool, fn))

    async def _bounded(self, awaitable):
        try:
            return await asyncio.wait_for(awaitable, self.settings.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, f"the query took longer than {self.settings.request_timeout_s:g} s") from None


def hit_json(hit: Hit) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": hit.id, "score": hit.score, "modality": hit.modality}
    if hit.modality == "image":
        doc["path"] = hit.path
    else:
        doc["text"] = hit.text
    if hit.external_id is not None:
        doc["external_id"] = hit.external_id
    doc["ranks"] = hit.ranks
    doc["scores"] = hit.scores
    return doc


def _rounded(timings: dict[str, float | int]) -> dict[str, float | int]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()}


def _b64decode(text: str, max_bytes: int) -> bytes:
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:  # before decoding
        raise ApiError(413, f"image of more than {max_bytes} bytes is over the limit")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_base64 is not valid base64") from None


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)

"""The FastAPI application factory: one loaded index, its search service, routers and middleware."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from crossgap_index import __version__
from crossgap_index.api import CrossGapIndex
from crossgap_index.server import (
    routes_admin,
    routes_clip,
    routes_duplicates,
    routes_gallery,
    routes_items,
    routes_page,
    routes_search,
)
from crossgap_index.server.docs import install_docs
from crossgap_index.server.errors import install_error_handlers
from crossgap_index.server.metrics import Metrics
from crossgap_index.server.middleware import BodyLimit, HostCheck, RequestMetrics, TokenAuth, WriteContentType
from crossgap_index.server.models import AddTextsRequest, BatchSearchRequest
from crossgap_index.server.responses import SafeJSONResponse
from crossgap_index.server.service import SearchService
from crossgap_index.server.settings import ServeSettings
from crossgap_index.server.warmup import warm_compiled_inversion


def create_app(index: CrossGapIndex, settings: ServeSettings | None = None) -> FastAPI:
    """An app serving ``index`` (left open: the caller owns it). Its worker threads stop at shutdown,
    after the queued queries finish."""
    settings = settings or ServeSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.compile_inversion:
            await asyncio.to_thread(warm_compiled_inversion, index)
        service = SearchService(index, settings, metrics)
        app.state.service = service
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="crossgap-index",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # /docs is served from local assets (docs.py); no CDN pages
        redoc_url=None,
        default_response_class=SafeJSONResponse,
    )
    app.state.metrics = metrics
    app.state.settings = settings
    install_error_handlers(app)
    for router in (
        routes_search.router,
        routes_items.router,
        routes_duplicates.router,
        routes_gallery.router,
        routes_admin.router,
        routes_page.router,
        routes_clip.router,
    ):
        app.include_router(router)
    install_docs(app)
    _document_bodies(app)
    # Added innermost first: metrics see everything, the Host and the token are checked before anything
    # else, and no body is read before the content type and the route's size cap are checked.
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_request_bytes,
        chunk_timeout_s=settings.body_timeout_s,
        per_path=body_limits(settings),
    )
    app.add_middleware(WriteContentType, untyped_reads=routes_clip.UNTYPED_READ_PATHS)
    app.add_middleware(TokenAuth, token=settings.token)
    app.add_middleware(HostCheck, token=settings.token)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def body_limits(settings: ServeSettings) -> dict[str, int]:
    """Each route's body cap, from the limits of what it may carry (never over max_request_bytes)."""
    slack = 64 * 1024  # the other fields of a query
    one_query = max((settings.max_upload_bytes + 2) // 3 * 4, 8192 * 32, settings.max_text_chars * 12) + slack
    texts = settings.max_texts * (settings.max_text_chars * 12 + 1024) + slack  # \uXXXX escapes, an id each
    caps = {"/search": one_query, "/search/batch": one_query * settings.max_batch_queries, "/texts": texts}
    caps |= {"/knn-service": one_query, "/metadata": slack + settings.max_k * 32}  # clip-retrieval's protocol
    return {path: min(cap, settings.max_request_bytes) for path, cap in caps.items()}


def _document_bodies(app: FastAPI) -> None:
    """The routes that parse their bodies themselves (counts first, off the event loop) name their
    request models in the OpenAPI document here."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (BatchSearchRequest, AddTextsRequest, routes_clip.KnnRequest, routes_clip.MetadataRequest):
            doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(doc.pop("$defs", {}))
            components[model.__name__] = doc
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

"""The FastAPI application factory: one loaded index, its search service, routers and middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from crossgap_index import __version__
from crossgap_index.api import CrossGapIndex
from crossgap_index.server import routes_admin, routes_gallery, routes_items, routes_page, routes_search
from crossgap_index.server.errors import install_error_handlers
from crossgap_index.server.metrics import Metrics
from crossgap_index.server.middleware import BodyLimit, RequestMetrics, TokenAuth
from crossgap_index.server.service import SearchService
from crossgap_index.server.settings import ServeSettings


def create_app(index: CrossGapIndex, settings: ServeSettings | None = None) -> FastAPI:
    """An app serving ``index`` (left open: the caller owns it). Its worker threads stop at shutdown,
    after the queued queries finish."""
    settings = settings or ServeSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = SearchService(index, settings, metrics)
        app.state.service = service
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="crossgap-index", version=__version__, lifespan=lifespan)
    app.state.metrics = metrics
    app.state.settings = settings
    install_error_handlers(app)
    for router in (
        routes_search.router,
        routes_items.router,
        routes_gallery.router,
        routes_admin.router,
        routes_page.router,
    ):
        app.include_router(router)
    # Added innermost first: metrics see everything, the token is checked before any body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, chunk_timeout_s=settings.body_timeout_s)
    app.add_middleware(TokenAuth, token=settings.token)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app

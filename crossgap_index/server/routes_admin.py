"""GET /info, GET /healthz, GET /metrics and POST /texts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from crossgap_index.server.bodies import parse_counted
from crossgap_index.server.deps import MetricsDep, Service
from crossgap_index.server.errors import ApiError
from crossgap_index.server.models import AddTextsRequest, AddTextsResponse, ErrorOut

router = APIRouter(tags=["service"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness; the one route that needs no token."""
    return {"status": "ok"}


@router.get("/info")
async def info(service: Service) -> dict[str, Any]:
    """The index (model, counts, sizes), the modes it serves, and this server's limits."""
    return await service.info()


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format: request counts and latencies per route, query paths, inversion batch sizes."""
    return Response(metrics.render(), media_type=metrics.content_type)


@router.post(
    "/texts",
    response_model=AddTextsResponse,
    responses={code: {"model": ErrorOut} for code in (400, 401, 413, 415, 422)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AddTextsRequest"}}},
        }
    },
)
async def add_texts(request: Request, service: Service) -> dict[str, int]:
    """Embed and store texts (exact duplicates are stored once). The counts are checked first, and the
    body parsed off the event loop."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "send application/json")
    body = await request.body()
    limit = service.settings.max_texts
    parsed = await run_in_threadpool(parse_counted, AddTextsRequest, body, {"texts": limit, "ids": limit})
    return await service.add_texts(parsed)

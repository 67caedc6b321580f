"""Dependencies the routes receive (FastAPI dependency injection): the app's service and metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from crossgap_index.server.metrics import Metrics
from crossgap_index.server.service import SearchService


def get_service(request: Request) -> SearchService:
    return request.app.state.service


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


Service = Annotated[SearchService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

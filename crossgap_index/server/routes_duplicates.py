"""GET /duplicates: groups of near-duplicate images (search/duplicates.py), from the stored vectors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from crossgap_index.server.deps import Service
from crossgap_index.server.models import ErrorOut

router = APIRouter(tags=["items"])


class DuplicateOut(BaseModel):
    id: int
    path: str | None = None


class DuplicatesResponse(BaseModel):
    groups: list[list[DuplicateOut]]


@router.get(
    "/duplicates",
    response_model=DuplicatesResponse,
    responses={code: {"model": ErrorOut} for code in (401, 422, 504)},
)
async def duplicates(
    service: Service,
    threshold: Annotated[
        float | None,
        Query(gt=0.0, le=1.0, description="Pairs scoring above this are duplicates [default: the measured 0.95]."),
    ] = None,
) -> dict[str, Any]:
    """Groups of near-duplicate images, largest first; each a list of items with ``id`` and ``path``."""
    return {"groups": await service.duplicates(threshold)}

"""GET /items/{id} and GET /items/{id}/image: stored items by catalog id (never by a path)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from crossgap_index.server.deps import Service
from crossgap_index.server.files import media_type
from crossgap_index.server.models import ErrorOut, ItemOut
from crossgap_index.server.params import ItemId

router = APIRouter(prefix="/items", tags=["items"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 404, 410, 422)}


@router.get("/{item_id}", response_model=ItemOut, response_model_exclude_none=True, responses=_ERRORS)
async def get_item(item_id: ItemId, service: Service) -> dict[str, Any]:
    row = await service.item(item_id)
    return {"id": row.id, "modality": row.modality, "path": row.path, "text": row.text, "external_id": row.external_id}


@router.get(
    "/{item_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, **_ERRORS},
)
async def get_item_image(item_id: ItemId, service: Service) -> Response:
    """The indexed file of an image item: only the path the catalog holds for that id."""
    data, path = await service.item_image(item_id)
    headers = {"x-content-type-options": "nosniff", "cache-control": "private, max-age=60"}
    return Response(data, media_type=media_type(path), headers=headers)

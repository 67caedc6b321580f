"""GET /items/{id}/thumb and GET /browse: what the page shows of the gallery (thumbnails, and the images
themselves before any query)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from crossgap_index.server.deps import Service
from crossgap_index.server.models import ErrorOut
from crossgap_index.server.params import BrowseAfter

router = APIRouter(tags=["items"])

ItemId = Annotated[int, Path(ge=1, le=2**63 - 1, description="A catalog id, as search hits carry it.")]
MAX_BROWSE = 200


@router.get(
    "/items/{item_id}/thumb",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}},
        **{code: {"model": ErrorOut} for code in (401, 404, 410, 415, 422)},
    },
)
async def get_item_thumbnail(item_id: ItemId, service: Service) -> Response:
    """A JPEG thumbnail (at most 256 px) of an image item, made on the server from any format the index
    holds (TIFF included), so every hit shows in every browser; cached until the file changes."""
    data = await service.thumbnail(item_id)
    headers = {"x-content-type-options": "nosniff", "cache-control": "private, max-age=300"}
    return Response(data, media_type="image/jpeg", headers=headers)


@router.get("/browse", responses={code: {"model": ErrorOut} for code in (401, 422)})
async def browse(
    service: Service,
    after: BrowseAfter = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_BROWSE, description="Images per page.")] = 48,
) -> dict[str, Any]:
    """Stored images by id, a page at a time: ``next_after`` continues, null at the end."""
    return await service.browse(after, limit)

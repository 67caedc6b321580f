"""POST /search (JSON or a multipart image upload) and POST /search/batch."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from crossgap_index.server.deps import Service
from crossgap_index.server.errors import ApiError
from crossgap_index.server.models import (
    BatchSearchRequest,
    BatchSearchResponse,
    ErrorOut,
    SearchRequest,
    SearchResponse,
)

router = APIRouter(tags=["search"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 408, 410, 413, 415, 422, 504)
}
_SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "description": "field `image` (the photo) plus any SearchRequest field as a form field",
                }
            },
        },
    }
}


@router.post(
    "/search",
    response_model=SearchResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_SEARCH_BODY,
)
async def search(request: Request, service: Service) -> JSONResponse:
    """Top-k hits for one query: JSON (text, vector, image_base64 or item_id) or a multipart upload.
    (Returned as built, not re-validated against the response model, which documents it: less overhead.)"""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        query, upload = await _from_form(request)
        return JSONResponse(await service.search(query, upload))
    if content_type not in ("application/json", ""):
        raise ApiError(415, f"send application/json or multipart/form-data, not {content_type}")
    return JSONResponse(await service.search(_parse(SearchRequest, await request.body())))


@router.post("/search/batch", response_model=BatchSearchResponse, response_model_exclude_none=True, responses=_ERRORS)
async def search_batch(body: BatchSearchRequest, service: Service) -> JSONResponse:
    """Many queries in one request; those that invert are inverted together. Results in query order."""
    return JSONResponse({"results": await service.search_many(body.queries)})


async def _from_form(request: Request) -> tuple[SearchRequest, bytes]:
    service = request.app.state.service
    async with request.form(max_files=1, max_fields=32) as form:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "multipart search needs a file field named 'image'")
        limit = service.settings.max_upload_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"image over the limit of {limit} bytes")
        fields = {name: value for name, value in form.items() if name != "image" and isinstance(value, str)}
    try:
        return SearchRequest.model_validate(fields), data
    except ValidationError as exc:
        raise ApiError(422, _first_problem(exc)) from None


def _parse(model: type[SearchRequest], body: bytes) -> SearchRequest:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ApiError(400, "the body is not valid JSON") from None
        raise ApiError(422, _first_problem(exc)) from None


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]

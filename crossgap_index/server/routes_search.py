"""POST /search (JSON or a multipart image upload) and POST /search/batch."""

from __future__ import annotations

import json
import typing
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from crossgap_index.server.bodies import first_problem, parse_counted, parse_json
from crossgap_index.server.deps import Service
from crossgap_index.server.errors import ApiError
from crossgap_index.server.models import (
    BatchSearchRequest,
    BatchSearchResponse,
    ErrorOut,
    SearchRequest,
    SearchResponse,
)
from crossgap_index.server.responses import SafeJSONResponse

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

_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchSearchRequest"}}},
    }
}


@router.post(
    "/search",
    response_model=SearchResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_SEARCH_BODY,
)
async def search(request: Request, service: Service) -> SafeJSONResponse:
    """Top-k hits for one query: JSON (text, vector, image_base64 or item_id) or a multipart upload.
    (Returned as built, not re-validated against the response model, which documents it: less overhead.)"""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        query, upload = await _from_form(request)
        return SafeJSONResponse(await service.search(query, upload))
    if content_type != "application/json":
        raise ApiError(415, f"send application/json or multipart/form-data, not {content_type or 'no type'}")
    body = await request.body()
    return SafeJSONResponse(await service.search(await run_in_threadpool(parse_json, SearchRequest, body)))


@router.post(
    "/search/batch",
    response_model=BatchSearchResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_BATCH_BODY,
)
async def search_batch(request: Request, service: Service) -> SafeJSONResponse:
    """Many queries in one request; those that invert are inverted together. Results in query order.
    The query count is checked first, and the body parsed off the event loop."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "send application/json")
    body = await request.body()
    limit = service.settings.max_batch_queries
    batch = await run_in_threadpool(parse_counted, BatchSearchRequest, body, {"queries": limit})
    return SafeJSONResponse({"results": await service.search_many(batch.queries)})


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
        if not data:
            raise ApiError(400, "the uploaded image is empty (0 bytes)")
        fields = {name: _form_value(name, value) for name, value in form.items() if name != "image"}
    try:
        return SearchRequest.model_validate(fields), data
    except ValidationError as exc:
        raise ApiError(422, first_problem(exc)) from None


def _form_value(name: str, value: Any) -> Any:
    """A form field as the JSON body would carry it: text fields as given, the others written as JSON
    literals (``k=5``, ``use_cache=false``) with nothing around them, so ``+5``, `` 5`` or ``5.0`` for an
    integer are refused as they are in JSON."""
    if not isinstance(value, str):
        raise ApiError(422, f"{name}: only the field 'image' may be a file")
    field = SearchRequest.model_fields.get(name)
    if field is None or _takes_text(field.annotation):
        return value  # unknown names are refused by the model (extra="forbid")
    try:
        if value != value.strip():
            raise ValueError
        return json.loads(value, parse_constant=_no_constant)
    except ValueError:
        raise ApiError(422, f"{name}: {value!r} is not a valid {name} value") from None


def _takes_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    return any(_takes_text(a) for a in typing.get_args(annotation))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")

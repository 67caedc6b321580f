"""clip-retrieval's back-end protocol (what its ``ClipClient`` and clip-front speak): ``GET /indices-list``,
``POST /knn-service``, ``POST /metadata``.

A knn request becomes the ``POST /search`` request it means and runs through the same service, so both
routes answer the same ids in the same order. clip-retrieval's ``modality`` names the index searched (image
or text), as ``target`` does here; the query's own modality is what it carries (``text``, ``image`` or
``embedding_input``). Its filters that need models this server does not have (deduplication, safety,
violence, aesthetic, mclip) are accepted and ignored; ``image_url`` is refused: the server never fetches a
URL a request names. docs/serve.md lists the differences.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from crossgap_index.server.bodies import first_problem, parse_json
from crossgap_index.server.deps import Service
from crossgap_index.server.errors import ApiError
from crossgap_index.server.models import ErrorOut, SearchRequest
from crossgap_index.server.responses import SafeJSONResponse

router = APIRouter(tags=["clip-retrieval"])
M = TypeVar("M", bound=BaseModel)

# ClipClient posts its JSON without a Content-Type; these routes only read, so the write rule (a declared
# JSON or multipart body) lets them through without one (middleware.WriteContentType).
UNTYPED_READ_PATHS = frozenset({"/knn-service", "/metadata"})

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 408, 413, 415, 422, 504)
}


class KnnRequest(BaseModel):
    """clip-retrieval's knn query: one of ``text``, ``image`` (base64) or ``embedding_input``."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # clip-back ignores fields it does not use

    text: str | None = Field(None, description="A text query.")
    image: str | None = Field(None, description="An image file's bytes, base64-encoded.")
    image_url: str | None = Field(None, description="Refused: this server never fetches URLs.")
    embedding_input: list[float] | None = Field(None, max_length=8192, description="A raw query embedding.")
    modality: Literal["image", "text"] = Field("image", description="Which items to search: images or texts.")
    num_images: int = Field(40, ge=1, description="Number of results (capped by the server's max k).")
    indice_name: str | None = Field(None, description="The index (GET /indices-list); none: the one served.")
    mode: str = Field("intra", description="crossgap-index's search mode (an extra field; GET /info lists them).")
    num_result_ids: Any = Field(None, description="Ignored: results are exactly num_images.")
    deduplicate: Any = Field(None, description="Ignored: no deduplication.")
    use_safety_model: Any = Field(None, description="Ignored: no safety model.")
    use_violence_detector: Any = Field(None, description="Ignored: no violence detector.")
    use_mclip: Any = Field(None, description="Ignored: the index's own text encoder is used.")
    aesthetic_score: Any = Field(None, description="Ignored: no aesthetic embeddings.")
    aesthetic_weight: Any = Field(None, description="Ignored: no aesthetic embeddings.")


class KnnResult(BaseModel):
    id: int
    similarity: float
    caption: str | None = Field(None, description="The text of a text item; an image's file name.")
    image_path: str | None = Field(None, description="The indexed file of an image item.")
    url: str | None = Field(None, description="Where this server serves the image (GET /items/{id}/image).")
    external_id: str | None = None


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[int] = Field(..., description="Item ids, as /knn-service returned them.")
    indice_name: str | None = None


class MetadataOut(BaseModel):
    id: int
    metadata: dict[str, Any] = Field(..., description="The result's fields but id and similarity; {} when gone.")


@router.get("/indices-list", response_model=list[str])
async def indices_list(service: Service) -> list[str]:
    """The names of the indices served: one, this index's folder name."""
    return [_index_name(service)]


def _body_of(model: type[BaseModel]) -> dict[str, Any]:
    """The route's request body for the OpenAPI document (the route parses it itself: see _read)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


async def _read(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``, whether or not the client declared its type (ClipClient declares none)."""
    body = await request.body()
    return await run_in_threadpool(parse_json, model, body)


@router.post(
    "/knn-service",
    response_model=list[KnnResult],
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_body_of(KnnRequest),
)
async def knn_service(request: Request, service: Service) -> SafeJSONResponse:
    """Nearest items to a text, an image or an embedding, as clip-retrieval's back-end answers them."""
    body = await _read(request, KnnRequest)
    _check_index(service, body.indice_name)
    search = await service.search(_search_request(body, service.settings.max_k))
    base = str(request.base_url).rstrip("/")
    return SafeJSONResponse([_result(hit, base) for hit in search["hits"]])


@router.post("/metadata", response_model=list[MetadataOut], responses=_ERRORS, openapi_extra=_body_of(MetadataRequest))
async def metadata(request: Request, service: Service) -> SafeJSONResponse:
    """Each id's metadata, in the order asked; an id no longer stored gets ``{}``."""
    body = await _read(request, MetadataRequest)
    _check_index(service, body.indice_name)
    if len(body.ids) > service.settings.max_k:
        raise ApiError(413, f"{len(body.ids)} ids is over the limit of {service.settings.max_k}")
    base = str(request.base_url).rstrip("/")
    out = []
    for item_id in body.ids:
        try:
            row = await service.item(item_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            out.append({"id": item_id, "metadata": {}})
            continue
        hit = {"id": row.id, "modality": row.modality, "path": row.path, "text": row.text}
        meta = _result({**hit, "external_id": row.external_id, "score": 0.0}, base)
        out.append({"id": item_id, "metadata": {k: v for k, v in meta.items() if k not in ("id", "similarity")}})
    return SafeJSONResponse(out)


def _index_name(service) -> str:
    return service.index.path.name


def _check_index(service, name: str | None) -> None:
    if name is not None and name != _index_name(service):
        raise ApiError(404, f"no index named {name!r}: this server serves {_index_name(service)!r} (GET /indices-list)")


def _search_request(body: KnnRequest, max_k: int) -> SearchRequest:
    """The POST /search request a knn request means."""
    if body.image_url:
        raise ApiError(400, "image_url is refused: this server never fetches URLs; send the image base64 in 'image'")
    queries = {
        "text": body.text or None,  # clip-back takes an empty text as no text
        "image_base64": body.image or None,
        "vector": body.embedding_input or None,
    }
    given = {name: value for name, value in queries.items() if value is not None}
    if len(given) != 1:
        names = {"text": "text", "image_base64": "image", "vector": "embedding_input"}
        got = ", ".join(names[n] for n in given) or "none"
        raise ApiError(400, f"give exactly one of text, image or embedding_input (got {got})")
    if body.num_images > max_k:
        raise ApiError(400, f"num_images={body.num_images} is over the limit of {max_k}")
    fields = {**given, "k": body.num_images, "target": f"{body.modality}s", "mode": body.mode}
    try:
        return SearchRequest.model_validate(fields)
    except ValidationError as exc:
        raise ApiError(422, first_problem(exc)) from None


def _result(hit: dict[str, Any], base: str) -> dict[str, Any]:
    """One /search hit in clip-retrieval's result shape."""
    doc: dict[str, Any] = {"id": hit["id"], "similarity": hit["score"]}
    if hit["modality"] == "image":
        doc.update(caption=PurePath(hit["path"]).name, image_path=hit["path"], url=f"{base}/items/{hit['id']}/image")
    else:
        doc["caption"] = hit["text"]
    if hit.get("external_id") is not None:
        doc["external_id"] = hit["external_id"]
    return doc

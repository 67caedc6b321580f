"""Request and response bodies of the HTTP API (pydantic; they are also the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crossgap_index.inversion.config import LR_MAX, N_PATCHES_MAX, N_TOKENS_MAX, InversionConfig
from crossgap_index.inversion.flags import InversionFlags
from crossgap_index.search.registry import mode_names
from crossgap_index.words import RRF_K

MAX_FILTER_IDS = 100_000  # ids or external ids one filter may list


class SearchRequest(BaseModel):
    """One query: exactly one of ``text``, ``vector``, ``image_base64``, ``item_id``, ``expression`` (or a
    multipart ``image`` upload), plus how to search and which items may be returned (the filters).
    Inversion settings left out take the library defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)  # strict: `k: true` is no 1

    text: str | None = Field(None, min_length=1, description="A text query.")
    vector: list[float] | None = Field(None, max_length=8192, description="A raw query embedding.")
    image_base64: str | None = Field(None, description="An image file's bytes, base64-encoded.")
    modality: Literal["image", "text"] | None = Field(None, description="What a raw vector is (lets it invert).")
    item_id: int | None = Field(None, ge=1, le=2**63 - 1, description="Search with a stored item ('more like this').")
    k: int = Field(10, ge=1, description="Number of hits (capped by the server).")
    target: Literal["images", "texts"] = "images"
    mode: str = Field(
        "intra",
        description=f"A search mode: {', '.join(mode_names(compositions=False))}, or BASE+POST such as span+aqe "
        "(GET /info lists every name and the page's choices).",
    )
    merge: Literal["rrf", "score"] = "rrf"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the cross list for merge=score.")
    rrf_k: int = Field(RRF_K, ge=1)
    steps: int | None = Field(None, ge=0, description="Inversion steps (OTI for images, OVI for texts).")
    tokens: int | None = Field(None, ge=1, le=N_TOKENS_MAX, description="OTI pseudo-tokens.")
    patches: int | None = Field(None, ge=1, le=N_PATCHES_MAX, description="OVI pseudo-patches.")
    lr: float | None = Field(None, gt=0.0, le=LR_MAX, description="Inversion learning rate.")
    precision: Literal["auto", "fp32", "bf16"] | None = Field(
        None, description="Inversion arithmetic (auto: bf16 where native, but fp32 for a small model on a CPU)."
    )
    use_cache: bool = True
    expression: str | None = Field(
        None,
        min_length=1,
        description="Query arithmetic over texts and stored items: '2:\"red car\" - night + item:42' "
        "(every other term is text: a request never names a file to read).",
    )
    under: str | None = Field(None, min_length=1, description="Only images in this folder or below it.")
    glob: str | None = Field(None, min_length=1, description="Only images whose file name (or, with /, path) matches.")
    only_ids: list[int] | None = Field(None, max_length=MAX_FILTER_IDS, description="Only these item ids.")
    exclude_ids: list[int] | None = Field(None, max_length=MAX_FILTER_IDS, description="Never these item ids.")
    external_ids: list[str] | None = Field(
        None, max_length=MAX_FILTER_IDS, description="Only texts added with these external ids."
    )
    exclude_query: bool | None = Field(
        None, description="Leave the query's own stored items out of its hits (default: yes)."
    )

    def inversion(self) -> InversionConfig | None:
        """The inversion settings this request asks for (None: the served ones); ``steps`` sets OTI and OVI."""
        return InversionFlags(
            steps=self.steps, tokens=self.tokens, patches=self.patches, lr=self.lr, precision=self.precision
        ).config()


class BatchSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    queries: list[SearchRequest] = Field(..., min_length=1)


class HitOut(BaseModel):
    id: int
    score: float
    modality: str
    path: str | None = None
    text: str | None = None
    external_id: str | None = None
    ranks: dict[str, int]
    scores: dict[str, float]


class SearchResponse(BaseModel):
    hits: list[HitOut]
    mode: str
    timings: dict[str, float | int]


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]


class ItemOut(BaseModel):
    id: int
    modality: str
    path: str | None = None
    text: str | None = None
    external_id: str | None = None


class AddTextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[str] = Field(..., min_length=1)
    ids: list[str | None] | None = Field(None, description="External ids, one per text.")


class AddTextsResponse(BaseModel):
    added: int
    duplicates: int


class ErrorOut(BaseModel):
    error: str

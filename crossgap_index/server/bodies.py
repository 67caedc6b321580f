"""Reading a JSON request body into a request model, off the event loop, counting a route's list first.

A body of many small items (2 million one-word queries fit in 32 MB) costs seconds to validate; its
list is therefore parsed one element at a time and refused as soon as it holds more items than the
route allows, before anything is validated. The caller runs this in a worker thread, and each step
parses one element, so the event loop (other clients) keeps its turn.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from crossgap_index.server.errors import ApiError

M = TypeVar("M", bound=BaseModel)
_WS = re.compile(r"[ \t\n\r]*")
_SMALL = 64 * 1024  # a body that is not an object is parsed whole only up to this size


def parse_counted(model: type[M], body: bytes, limits: dict[str, int]) -> M:
    """``body`` as ``model`` (strict), refusing it (413) once a list named in ``limits`` holds more items
    than its limit there."""
    try:
        doc = _counted(body.decode("utf-8"), limits)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not valid JSON (not UTF-8)") from None
    except (ValueError, IndexError):
        raise ApiError(400, "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON (nested too deeply)") from None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ApiError(422, first_problem(exc)) from None


def parse_json(model: type[M], body: bytes) -> M:
    """``body`` as ``model`` (strict JSON mode): 400 for what is not JSON, 422 for the first problem."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ApiError(400, "the body is not valid JSON") from None
        raise ApiError(422, first_problem(exc)) from None


def first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _counted(text: str, limits: dict[str, int]) -> Any:
    decode = json.JSONDecoder().raw_decode
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        if len(text) > _SMALL:
            raise ApiError(422, "the body must be a JSON object")
        return json.loads(text)  # small: the model names what is wrong with it
    doc: dict[str, Any] = {}
    pos = _skip(text, pos + 1)
    if text[pos] == "}":
        return _end(text, pos + 1, doc)
    while True:
        key, pos = decode(text, pos)
        if not isinstance(key, str):
            raise ValueError("object keys are strings")
        pos = _skip(text, pos)
        if text[pos] != ":":
            raise ValueError("':' expected")
        pos = _skip(text, pos + 1)
        if key in limits and text[pos] == "[":
            doc[key], pos = _array(text, pos, limits[key], key, decode)
        else:
            doc[key], pos = decode(text, pos)
        pos = _skip(text, pos)
        if text[pos] == "}":
            return _end(text, pos + 1, doc)
        if text[pos] != ",":
            raise ValueError("',' or '}' expected")
        pos = _skip(text, pos + 1)


def _array(text: str, pos: int, limit: int, what: str, decode) -> tuple[list[Any], int]:
    items: list[Any] = []
    pos = _skip(text, pos + 1)
    if text[pos] == "]":
        return items, pos + 1
    while True:
        item, pos = decode(text, pos)
        items.append(item)
        if len(items) > limit:
            raise ApiError(413, f"{what}: more than {limit} items, over the limit of {limit}")
        pos = _skip(text, pos)
        if text[pos] == "]":
            return items, pos + 1
        if text[pos] != ",":
            raise ValueError("',' or ']' expected")
        pos = _skip(text, pos + 1)


def _end(text: str, pos: int, doc: dict[str, Any]) -> dict[str, Any]:
    if _skip(text, pos) != len(text):
        raise ValueError("extra data after the object")
    return doc


def _skip(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]

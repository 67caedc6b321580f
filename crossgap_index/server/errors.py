"""Every error leaves the server as one JSON line, ``{"error": "..."}``, with a 4xx/5xx status; never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crossgap_index.errors import CrossGapError, StoreError
from crossgap_index.server.files import ItemFileError
from crossgap_index.server.responses import SafeJSONResponse

log = logging.getLogger("crossgap_index.server")


class ApiError(Exception):
    """A request the server refuses, with the status to refuse it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return SafeJSONResponse({"error": message}, status_code=status, headers=headers)


def status_of(exc: CrossGapError) -> int:
    if isinstance(exc, ItemFileError):
        return 410  # the catalog names it, the disk no longer holds it as indexed
    if isinstance(exc, StoreError):
        return 409
    return 400


def validation_message(exc: RequestValidationError) -> str:
    """The first problem, as ``field.path: what is wrong``."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "path", "query"))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(CrossGapError)
    async def _library_error(request: Request, exc: CrossGapError) -> JSONResponse:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        service = getattr(request.app.state, "service", None)
        if service is not None:  # clients see the index by its folder name, not where it lies on the server
            message = message.replace(str(service.index.path), f"'{service.index.path.name}'")
        return error_response(status_of(exc), message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error_response(400, "the body is not valid JSON")
        return error_response(422, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (logged on the server)")

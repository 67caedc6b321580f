"""The search page: fixed static files from the package (no JS build step)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from crossgap_index.server.middleware import TOKEN_COOKIE

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"


@router.get("/")
async def page(request: Request) -> Response:
    """The page. ``/?token=T`` (checked by the token middleware) stores the token in a cookie for the
    page's own requests and drops it from the address bar."""
    token = request.query_params.get("token")
    if token is not None:
        rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        redirect = RedirectResponse("/" + (f"?{rest}" if rest else ""), status_code=303)
        redirect.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return redirect
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/favicon.ico")
async def favicon() -> Response:
    """No icon: 204 rather than a 404 in every browser's console and the server's log."""
    return Response(status_code=204)


@router.get("/static/app.js")
async def script() -> FileResponse:
    return FileResponse(STATIC / "app.js", media_type="text/javascript")


@router.get("/static/style.css")
async def style() -> FileResponse:
    return FileResponse(STATIC / "style.css", media_type="text/css")

"""GET /docs: Swagger UI from the assets the package ``fastapi-offline`` ships (Swagger UI 5, which reads the
OpenAPI 3.1 document FastAPI writes; no CDN: it works offline and loads nothing from third parties). Only
the asset files are used, found without importing the package. Without them /docs is left out and
/openapi.json remains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


def assets_dir() -> Path | None:
    """Where fastapi-offline keeps Swagger UI's files, or None when it is not installed."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "static"
        if all((folder / name).is_file() for name in ASSETS):
            return folder
    return None


def install_docs(app: FastAPI) -> bool:
    """Add /docs and its assets under /docs/assets/ when the assets are installed; True when added."""
    folder = assets_dir()
    if folder is None:
        return False

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png",
            oauth2_redirect_url=None,
        )

    for name, media_type in ASSETS.items():
        app.add_api_route(
            f"/docs/assets/{name}", _asset(folder / name, media_type), methods=["GET"], include_in_schema=False
        )
    return True


def _asset(path: Path, media_type: str):
    async def asset() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"cache-control": "public, max-age=86400"})

    return asset

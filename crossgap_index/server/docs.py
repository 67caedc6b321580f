"""GET /docs: Swagger UI served from the package ``swagger-ui-bundle`` (no CDN: it works offline and
loads nothing from third parties). Without that package /docs is left out and /openapi.json remains."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def assets_dir() -> Path | None:
    """Where swagger-ui-bundle keeps Swagger UI's files, or None when it is not installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    folder = Path(str(swagger_ui_path))
    return folder if all((folder / name).is_file() for name in ASSETS) else None


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
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
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

"""The playground page and the OpenAPI page, served by the ingress from files in this package.

GET / is a plain HTML page (index.html, app.js, style.css beside this file; no build step, nothing
from a CDN) that asks GET /v1/models what the app serves, sends POST /v1/generate and shows the
answer: the audio, its log-Mel spectrogram (computed in the browser from the WAV) and the guide's
scores. GET /docs is FastAPI's Swagger UI page with its script and style served from the
`fastapi-offline` package's copy, so it too works on a closed network. Files are looked up in fixed
tables: a request never names a path on disk.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

HERE = Path(__file__).parent
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}

def docs_assets_dir() -> Path:
    """Where the Swagger UI files are (the fastapi-offline package ships them)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def _file(folder: Path, name: str, table: dict[str, str]) -> FileResponse:
    if name not in table:
        raise HTTPException(404, f"no such file: {name!r}")
    return FileResponse(folder / name, media_type=table[name], headers={"Cache-Control": "no-cache"})


async def playground_page() -> FileResponse:
    """The playground: pick a digit, guide kind, scale and steps; listen, see the spectrogram and scores."""
    return FileResponse(HERE / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


async def playground_file(name: str) -> FileResponse:
    return _file(HERE, name, PAGE_FILES)


async def openapi_page(request: Request) -> HTMLResponse:
    """FastAPI's Swagger UI over /openapi.json, with its assets served here instead of a CDN."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="speechguide API",
        swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs-assets/favicon.png",
    )


async def docs_file(name: str) -> FileResponse:
    return _file(docs_assets_dir(), name, DOCS_FILES)


def add_routes(app: FastAPI) -> None:
    """GET / (the playground), its files, and GET /docs with its assets, on `app` (none in the OpenAPI schema)."""
    for path, endpoint in (
        ("/", playground_page),
        ("/playground/{name}", playground_file),
        ("/docs", openapi_page),
        ("/docs-assets/{name}", docs_file),
    ):
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)

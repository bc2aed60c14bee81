"""The API's page, ``/docs``: Swagger UI from the files shipped in ``app/static/swagger-ui``
(swagger-ui-dist 5.36.0), where FastAPI's loads it from a CDN, so that the page works where the
reader's browser cannot reach the internet or may load no script from outside. ``/redoc``, FastAPI's
other page (ReDoc, from a CDN too), leads to it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response

router = APIRouter(include_in_schema=False)

# The files the page loads, with their media types: open without a key (app.middleware.OPEN_PATHS),
# as the page is, since a browser loads them before the page can send one.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


@cache
def _asset(name: str) -> bytes:
    return files("app").joinpath("static/swagger-ui", name).read_bytes()


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """FastAPI's Swagger UI page, its script, style and icon served by the service itself."""
    root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
    return get_swagger_ui_html(
        openapi_url=root + str(request.app.openapi_url),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/docs/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/favicon-32x32.png",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
    )


@router.get("/docs/oauth2-redirect")
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> RedirectResponse:
    return RedirectResponse(request.scope.get("root_path", "").rstrip("/") + "/docs", status_code=307)


def _serve(name: str, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def asset() -> Response:
        return Response(_asset(name), media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})

    return asset


for _name, _media_type in ASSETS.items():
    router.add_api_route(f"/docs/{_name}", _serve(_name, _media_type), methods=["GET"])

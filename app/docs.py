"""``/docs`` (Swagger UI) and ``/redoc`` served from assets shipped with the project, never from a CDN.

The JavaScript and CSS come from the ``fastapi-offline`` package (Swagger UI and ReDoc bundles, MIT, with
their licences in that package), mounted at ``/docs-assets``; the pages are FastAPI's own, pointed there
and without Google Fonts, so the docs work on a host without internet access. Two requests the bundles
would still make elsewhere are removed: Swagger UI's validator badge (``validatorUrl: null``) and the
Redocly logo that ReDoc's sidebar loads from its CDN (served with our favicon instead; the browser test
checks that neither page asks any other host for anything).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS = Path(str(files("fastapi_offline") / "static"))
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, its OAuth2 redirect page and ``/redoc`` (create the app with docs_url=redoc_url=None)."""
    redoc_js = (
        (ASSETS / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO.encode(), f"{ASSETS_URL}/favicon.png".encode())
    )

    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)
    def redoc_bundle() -> Response:
        return Response(redoc_js, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")  # after the route above
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )

    @app.get(redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

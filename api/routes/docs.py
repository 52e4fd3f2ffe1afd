"""/docs (Swagger UI) and /redoc served from files shipped with the package: they work offline.

Swagger UI comes from the ``swagger-ui-bundle`` wheel, Redoc's standalone bundle is vendored under
``api/ui/static/vendor/redoc`` (see its NOTICE). FastAPI's defaults would load both from a CDN.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

SWAGGER = "/docs-static/swagger"


def install(app: FastAPI) -> None:
    """Needs ``FastAPI(docs_url=None, redoc_url=None)``: these routes replace the CDN-backed ones."""
    app.mount(SWAGGER, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
                                   swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER}/swagger-ui.css",
                                   swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url="/ui/static/vendor/redoc/redoc.standalone.js",
                              redoc_favicon_url=f"{SWAGGER}/favicon-32x32.png", with_google_fonts=False)

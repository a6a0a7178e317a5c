"""``GET /docs``: the API rendered by Swagger UI from files this server sends itself, so the page
works without network access. The files come from the ``swagger-ui-py`` package (in the ``serve``
extra), which ships Swagger UI 5 (it reads the OpenAPI 3.1 schema FastAPI writes); without that
package the browser loads them from FastAPI's default CDN, as before.

With a token (``--token-file``) the schema declares bearer authentication, so Swagger UI's
"Authorize" button sends the token with the requests it tries.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["swagger_dir", "add_docs", "ASSETS"]

ASSETS = "/docs-assets"  #: where the Swagger UI files are served
_FILES = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css",
          "favicon-32x32.png": "image/png"}


def swagger_dir() -> Path | None:
    """The Swagger UI files of the installed ``swagger-ui-py`` (found without importing it), or None."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(list(spec.submodule_search_locations)[0]) / "static"
    return static if all((static / name).is_file() for name in _FILES) else None


def add_docs(app, token: bool = False) -> bool:
    """``GET /docs`` (and its files under :data:`ASSETS`) on ``app``, created with ``docs_url=None``.
    True when the files are served locally."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import FileResponse

    static = swagger_dir()
    urls = {}
    if static is not None:
        urls = {"swagger_js_url": f"{ASSETS}/swagger-ui-bundle.js", "swagger_css_url": f"{ASSETS}/swagger-ui.css",
                "swagger_favicon_url": f"{ASSETS}/favicon-32x32.png"}

        @app.get(ASSETS + "/{name}", include_in_schema=False)
        async def asset(name: str):
            if name not in _FILES:
                from nmt.tools.serve_requests import ApiError

                raise ApiError(404, f"no such file: {ASSETS}/{name}")
            return FileResponse(static / name, media_type=_FILES[name],
                                headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API", **urls)

    if token:
        _declare_bearer(app)
    return static is not None


def _declare_bearer(app) -> None:
    """The OpenAPI schema says the API takes a bearer token (Swagger UI's Authorize button)."""
    build = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "the token of the server's --token-file"}}
            for path, operations in schema.get("paths", {}).items():
                if path.startswith(("/api/", "/metrics")):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

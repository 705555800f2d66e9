"""The API's description: the OpenAPI document, and the page that shows it, offline.

The page is Swagger UI (swagger-ui-dist 5.35.0 from npm, Apache-2.0; its LICENSE,
NOTICE and the licenses of what it bundles are beside it) served from files in
this package, `app/docs_ui/`: `/docs` loads without reaching any other host,
and every version of the service shows the page it was tested with. Swagger UI
5 reads OpenAPI 3.1, which Litestar writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.types import Middleware

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/ui"
ASSETS = Path(__file__).resolve().parent / "docs_ui"


def openapi_config(middleware: Sequence[Middleware] = ()) -> OpenAPIConfig:
    """The document and its page, served through `middleware`."""
    ui = SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        # The default icon is fetched from a CDN.
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )
    return OpenAPIConfig(
        title="Recordline",
        version="1",
        description=(
            "Pub/Sub push in, analytics-grade records out. Every error is an RFC 9457 "
            "problem document (application/problem+json) whose `type` the service describes "
            "at `/problems/<name>`."
        ),
        render_plugins=[ui],
        # As Litestar makes it when given none, with `middleware`.
        openapi_router=Router(
            DOCS_PATH,
            route_handlers=[],
            include_in_schema=False,
            dto=None,
            return_dto=None,
            middleware=middleware,
        ),
    )


def docs_assets() -> Router:
    """The page's scripts and styles, from the package; they change only with a release."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[ASSETS],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=86_400),
    )

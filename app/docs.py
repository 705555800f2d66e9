"""The API's description: the OpenAPI document, and the page that shows it, offline.

The page is Swagger UI (swagger-ui-dist 5.35.0 from npm, Apache-2.0; its LICENSE,
NOTICE and the licenses of what it bundles are beside it) served from files in
this package, `app/docs_ui/`: `/docs` loads without reaching any other host,
and every version of the service shows the page it was tested with. Swagger UI
5 reads OpenAPI 3.1, which Litestar writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Response
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/ui"
ASSETS = Path(__file__).resolve().parent / "docs_ui"


def openapi_config() -> OpenAPIConfig:
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
        path=DOCS_PATH,
        render_plugins=[ui],
        openapi_router=Router(
            DOCS_PATH, route_handlers=[], include_in_schema=False, after_request=_problem_if_absent
        ),
    )


async def _problem_if_absent(response: Response[Any]) -> Response[Any]:
    """Litestar answers a path under /docs that no page has (`/docs/redoc`) with an HTML
    404 of its own; here, as everywhere else, an error is a problem document."""
    if response.status_code == 404:
        raise NotFoundException
    return response


def docs_assets() -> Router:
    """The page's scripts and styles, from the package; they change only with a release."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[ASSETS],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=86_400),
    )

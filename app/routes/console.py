"""The operator console at /console: records, rejections, dead letters and the access
record (operators only), producers and health in the browser, served by the service.

Each page is a Jinja template the browser fills from the read API (`/v1/...`) with a
small script of ours and uPlot (MIT, vendored in app/console_ui/static/vendor) for the
charts, nothing fetched from the internet: it shows what the API shows the same caller
(read rules, masking, filters, bounds); a replay (`/v1/replay`), the dead letters
(`/v1/dead-letters`) and the access record (`/v1/access`) are operators' alone.

Design: docs/console.md
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import quote

from litestar import HttpMethod, Request, Response, Router, get, route
from litestar.datastructures import CacheControlHeader
from litestar.params import PathParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import Guard, Middleware

from app.auth.guards import Auth
from app.errors import MethodNotAllowed, NotFound
from app.problems import Problems
from app.settings import system_path

CONSOLE_PATH: Final = "/console"
UI: Final = Path(__file__).resolve().parent.parent / "console_ui"
# The pages, in the order the navigation shows them.
PAGES: Final = ("records", "rejections", "dead-letters", "producers", "access", "health")
# The pages of operators alone, as the API they read is: no other caller is shown their
# link, and one who opens them anyway is refused as the API refuses them.
OPERATOR_PAGES: Final = frozenset({"dead-letters", "access"})
# Sent with every page and asset: scripts and styles of the console's own files only
# (it has none inline; its icon is an empty `data:` one), in no frame of another page,
# never sniffed as another type, and its address told to no other site.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def protect(response: Response[Any]) -> Response[Any]:
    """`response` with SECURITY_HEADERS."""
    response.headers.update(SECURITY_HEADERS)
    return response


async def protected(response: Response[Any]) -> Response[Any]:
    """`protect`, as an after-request hook."""
    return protect(response)


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The console's templates, autoescaped (Jinja's default for .html in Litestar)."""
    return TemplateConfig(directory=UI / "templates", engine=JinjaTemplateEngine)


def _assets() -> Router:
    """The console's stylesheet and scripts, with its security headers."""
    return create_static_files_router(
        path=f"{CONSOLE_PATH}/static",
        directories=[UI / "static"],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=3600),
        after_request=protected,
    )


def cell_console_router(systems: Sequence[str], problems: Problems) -> Router:
    """A cell's root console: the `systems` it serves, each a link to its own console
    (`/systems/NAME/console`), whose pages are behind that system's read rules. Their
    names are the cell's to tell anyone: its `/readyz` names them, and a path under an
    unknown one is answered 404 `unknown-system` where a known one is answered by its
    system."""

    @get(CONSOLE_PATH, include_in_schema=False, sync_to_thread=False)
    def cell_console(request: Request[Any, Any, Any]) -> Template:
        # Relative, as every link of the console (see `console_root`).
        slash = request.scope.get("raw_path", b"").endswith(b"/")
        return Template(
            template_name="systems.html",
            context={
                # Each system's path, relative to the root (`systems/NAME`).
                "systems": [
                    (name, system_path(quote(name, safe="")).lstrip("/"))
                    for name in sorted(systems)
                ],
                "up": "../" if slash else "",
                "assets": "static" if slash else "console/static",
            },
            headers={"Cache-Control": "no-store"},
        )

    def console_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        return protect(problems.exception(exc).to_response(request))

    assets = _assets()
    return Router(
        "/",
        route_handlers=[cell_console, assets],
        after_request=protected,
        exception_handlers={Exception: console_error},
    )


def console_router(
    auth: Auth,
    problems: Problems,
    *,
    guards: Sequence[Guard],
    middleware: Sequence[Middleware],
    system: str = "",
) -> Router:
    """The pages and their assets, behind the read guards: a caller who may not read
    the API may not open the console either. Each page names the `system` it reads.
    Every answer under /console carries the console's security headers, its errors too
    (a 401, a page or an asset not found): each is answered through `problems`, as
    every error is."""

    @get(CONSOLE_PATH, include_in_schema=False, sync_to_thread=False)
    def console_root(request: Request[Any, Any, Any]) -> Redirect:
        # Relative, as every link of the console: the same under a cell's system prefix.
        # (From `/console/`, `console/records` would be `/console/console/records`.)
        slash = request.scope.get("raw_path", b"").endswith(b"/")
        return Redirect("records" if slash else "console/records")

    # What no page or asset is, answered here rather than by the app's router, so that
    # it goes out with the console's headers as its pages do.
    @get(
        [f"{CONSOLE_PATH}/{{page:str}}/{{rest:path}}", f"{CONSOLE_PATH}/static"],
        include_in_schema=False,
    )
    async def nothing_here() -> None:
        raise NotFound("nothing of the console is served at this path")

    @route(
        [
            CONSOLE_PATH,
            f"{CONSOLE_PATH}/{{page:str}}",
            f"{CONSOLE_PATH}/{{page:str}}/{{rest:path}}",
            f"{CONSOLE_PATH}/static/{{file_path:path}}",
        ],
        http_method=[
            HttpMethod.POST,
            HttpMethod.PUT,
            HttpMethod.PATCH,
            HttpMethod.DELETE,
        ],
        include_in_schema=False,
    )
    async def read_only() -> None:
        refusal = MethodNotAllowed("the console is read with GET (and HEAD) alone")
        refusal.headers = {"Allow": "GET, HEAD"}
        raise refusal

    def console_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if isinstance(exc, ValueError) and request.scope["path"].startswith(
            f"{CONSOLE_PATH}/static/"
        ):
            # A path the file system refuses to look up (a NUL in it): no asset there.
            exc = NotFound("no console asset at this path")
        return protect(problems.exception(exc).to_response(request))

    async def shown(request: Request[Any, Any, Any], page: str) -> Template:
        operator = await auth.operates(request)
        return Template(
            template_name=f"{page}.html",
            context={
                "page": page,
                "pages": [name for name in PAGES if operator or name not in OPERATOR_PAGES],
                "system": system,
                "operator": operator,
                "exporter": await auth.exports(request),
                "assets": "static",
            },
            headers={"Cache-Control": "no-store"},
        )

    @get(f"{CONSOLE_PATH}/{{page:str}}", include_in_schema=False)
    async def console_page(
        request: Request[Any, Any, Any], page: Annotated[str, PathParameter()]
    ) -> Template:
        if page not in PAGES or page in OPERATOR_PAGES:
            raise NotFound(f"no console page {page!r}; the pages are {', '.join(PAGES)}")
        return await shown(request, page)

    # The operators' pages, behind the guards of the API they read (a replay's): a caller
    # who may not read it is refused the page as the API refuses them.
    @get(
        [f"{CONSOLE_PATH}/{name}" for name in sorted(OPERATOR_PAGES)],
        guards=auth.replay_guards,
        include_in_schema=False,
    )
    async def operator_page(request: Request[Any, Any, Any]) -> Template:
        return await shown(request, request.scope["path"].rstrip("/").rpartition("/")[2])

    assets = _assets()
    return Router(
        "/",
        route_handlers=[
            console_root,
            console_page,
            operator_page,
            nothing_here,
            read_only,
            assets,
        ],
        guards=list(guards),
        middleware=list(middleware),
        after_request=protected,
        exception_handlers={Exception: console_error},
    )

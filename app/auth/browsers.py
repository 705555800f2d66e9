"""Writes a browser makes for a page of another site are refused (CSRF, DNS rebinding).

A page at another origin can make its reader's browser POST to this service, with
the browser's own route to it: a loopback service with no authentication, or a proxy
that adds an operator's credentials (`gcloud run services proxy`). A browser says
where the page is from: `Sec-Fetch-Site` (every current browser) and `Origin`. A
write either names as another site is refused (403 `cross-site-request`), and a
replay must be JSON (415 otherwise), which a page of another site cannot send
without the service's consent. The CLI sends neither header; a push is judged as
app.routes.ingest says. Design: docs/security.md#browsers
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from app.errors import CrossSite, UnsupportedMediaType

# What `Sec-Fetch-Site` says of a request the page's own origin made, or the user.
_OWN = frozenset({"same-origin", "none"})


def foreign(headers: Any) -> str | None:
    """Why a request with these headers came from a page of another site, if it did."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        # A proxy may rewrite Host but not this: it is the browser's own word.
        return None if site.lower() in _OWN else f"Sec-Fetch-Site: {site[:40]}"
    origin = headers.get("origin")
    if origin is None:
        return None
    host = headers.get("host", "")
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        netloc = ""
    if not netloc or netloc.lower() != host.lower():
        return f"Origin {origin[:80]!r} is not this service's ({host[:80]!r})"
    return None


async def same_origin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Refuses a write a browser makes for a page of another site (403)."""
    why = foreign(connection.headers)
    if why is not None:
        raise CrossSite(f"a browser sent this for a page of another site ({why})")


async def json_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Refuses a body that is not `application/json` (415)."""
    given = connection.headers.get("content-type", "")
    if given.partition(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(
            f"the body must be application/json, not {given[:80]!r}"
            if given
            else "the body must be application/json: no Content-Type given"
        )

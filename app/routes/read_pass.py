"""POST /v1/read-pass: a read pass (a Cloud CDN signed cookie) for a reader's token.

The pass opens this system's reads (`{url}/v1/`, in a cell
`{url}/systems/{system}/v1/`) for `RECORDLINE_READ_PASS_SECONDS`, as a reader:
followers then read through the CDN with the cookie alone. Only a token mints a
pass (`create_app` puts the route behind the token's guard, never the pass's).
Design: docs/security.md#read-passes
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import msgspec
from litestar import Response, post
from litestar.datastructures import CacheControlHeader
from litestar.handlers import HTTPRouteHandler

from app.auth.access import PassAccess
from app.errors import (
    AmbiguousRequest,
    CertsUnavailable,
    CrossSite,
    Forbidden,
    PassesNotConfigured,
    Unauthorized,
)
from app.problems import problem_responses
from app.records import rfc3339

READ_PASSES_PATH: Final = "/v1/read-pass"
NO_STORE: Final = CacheControlHeader(no_store=True)


class ReadPassAnswer(msgspec.Struct, frozen=True):
    """A read pass: the cookie to send (`Cookie: <cookie>`), the URL prefix it opens,
    and when it expires."""

    cookie: str
    url_prefix: str
    expires: str


def read_pass_routes(passes: PassAccess | None) -> list[HTTPRouteHandler]:
    """The route issuing `passes` (None where none are configured: it answers 404)."""

    @post(
        READ_PASSES_PATH,
        status_code=200,
        summary="Get a read pass (a Cloud CDN signed cookie) for this system's reads",
        description=(
            "For a reader's token (never a pass): a `Cloud-CDN-Cookie` that opens every "
            "read under this system's `/v1/` for `RECORDLINE_READ_PASS_SECONDS`, as a "
            "reader (masked fields stay masked, whoever asked). Set as a cookie for that "
            "path, and given in the body for programs, which send it as "
            "`Cookie: <cookie>`. Answers to reads with a pass may be kept by the CDN and "
            "given to other pass holders. A pass cannot be revoked: it expires."
        ),
        tags=["records"],
        responses=problem_responses(
            AmbiguousRequest,
            Unauthorized,
            Forbidden,
            CrossSite,
            PassesNotConfigured,
            CertsUnavailable,
        ),
    )
    async def read_pass() -> Response[ReadPassAnswer]:
        if passes is None:
            raise PassesNotConfigured(
                "This service issues no read passes (RECORDLINE_READ_PASS_KEYS): read with a token."
            )
        issued = passes.issue()
        expires = datetime.fromtimestamp(issued.expires, UTC)
        cookie = (
            f"{issued.cookie}; Path={passes.path_prefix}; Max-Age={passes.seconds}; Secure; "
            "HttpOnly; SameSite=Lax"
        )
        return Response(
            ReadPassAnswer(issued.cookie, issued.url_prefix, rfc3339(expires)),
            headers={"Set-Cookie": cookie, NO_STORE.HEADER_NAME: NO_STORE.to_header()},
        )

    return [read_pass]

"""HEAD answered wherever GET is (RFC 9110 §9.3.2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

from litestar import Litestar
from litestar.types import (
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Message,
    Receive,
    Scope,
    Send,
)

if TYPE_CHECKING:
    from app.health import Readiness
    from app.http.limits import ConnectionObserver

# Set in a request's scope where the app answers a HEAD as its GET: a route whose
# HEAD says something its GET does not (a stream's tail) reads the mark.
HEAD_REQUEST: Final = "recordline.head"


class Recordline(Litestar):
    """The service's app: Litestar, with HEAD answered wherever GET is.

    RFC 9110 §9.3.2: HEAD is GET without the content. A HEAD request is routed,
    guarded and answered as the GET it stands for (so the same guards apply,
    and the headers are the GET's, Content-Length included), and its body is
    not sent. Litestar answers only the methods a handler names, and a route
    declared for HEAD as well would show each operation twice in the OpenAPI
    document.
    """

    # Told of each connection a bound of the server refused or closed (app.http.limits).
    connections: ConnectionObserver | None = None
    # Told of SIGTERM by a cell that serves this app among others (app.cell), which
    # installs one handler for them all; an app on its own hears it itself.
    stopping: Callable[[], None] | None = None
    # What the app's /readyz asks, for a cell that serves it among others.
    readiness: Readiness | None = None

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope.get("method") != "HEAD":
            await super().__call__(scope, receive, send)
            return
        http_send = cast("Send", send)

        async def without_content(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await http_send(message)

        # A copy: the server keeps its own scope, which still says HEAD. A route
        # whose HEAD says something its GET does not (a stream's tail) reads the mark.
        as_get = cast("Scope", {**scope, "method": "GET", HEAD_REQUEST: True})
        await super().__call__(as_get, receive, without_content)

"""The service's app: its Litestar app behind a plain ASGI layer of ours, which
answers HEAD wherever GET is (RFC 9110 §9.3.2)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final, cast

from litestar import Litestar
from litestar.types import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from app.health import Readiness
    from app.http.limits import ConnectionObserver

# Set in a request's scope where the app answers a HEAD as its GET: a route whose
# HEAD says something its GET does not (a stream's tail) reads the mark.
HEAD_REQUEST: Final = "recordline.head"


class Recordline:
    """The service's app: `litestar`, with HEAD answered wherever GET is.

    RFC 9110 §9.3.2: HEAD is GET without the content. A HEAD request is routed,
    guarded and answered as the GET it stands for (so the same guards apply,
    and the headers are the GET's, Content-Length included), and its body is
    not sent. Litestar answers only the methods a handler names, its handlers for
    HEAD may return no body, and a route declared for HEAD as well would show each
    operation twice in the OpenAPI document: so the request is rewritten before
    Litestar routes it, here, rather than inside Litestar.
    """

    __slots__ = ("connections", "litestar", "readiness", "stopping")

    def __init__(self, litestar: Litestar) -> None:
        self.litestar = litestar
        # Told of each connection a bound of the server refused or closed (app.http.limits).
        self.connections: ConnectionObserver | None = None
        # Told of SIGTERM by a cell that serves this app among others (app.cell), which
        # installs one handler for them all; an app on its own hears it itself.
        self.stopping: Callable[[], None] | None = None
        # What the app's /readyz asks, for a cell that serves it among others.
        self.readiness: Readiness | None = None

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """The app's lifespan, for a server of several apps that runs each one's."""
        return self.litestar.lifespan()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "HEAD":
            await self.litestar(scope, receive, send)
            return

        async def without_content(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # A copy: the server keeps its own scope, which still says HEAD. A route
        # whose HEAD says something its GET does not (a stream's tail) reads the mark.
        as_get = cast("Scope", {**scope, "method": "GET", HEAD_REQUEST: True})
        await self.litestar(as_get, receive, without_content)

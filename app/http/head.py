"""The service's app: its Litestar app behind a plain ASGI layer of ours, which answers
HEAD wherever GET is (RFC 9110 §9.3.2) and gives back what a request holds of the
process's budget once it is answered (`app.budget`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final, cast

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import Message, Receive, Scope, Send

from app.budget import Budget, Charge
from app.http.limits import CHARGE
from app.query.events import SLICE_BYTES

if TYPE_CHECKING:
    from app.health import Readiness
    from app.http.limits import ConnectionObserver

# Set in a request's scope where the app answers a HEAD as its GET: a route whose
# HEAD says something its GET does not (a stream's tail) reads the mark.
HEAD_REQUEST: Final = "recordline.head"


class Recordline:
    """The service's app: `litestar`, with HEAD answered wherever GET is, and each
    request's charge of the process's budget (`CHARGE`, made here under a server that
    makes none) released once it is answered, its answer sent in slices (SLICE_BYTES).

    RFC 9110 §9.3.2: HEAD is GET without the content. A HEAD request is routed,
    guarded and answered as the GET it stands for (so the same guards apply,
    and the headers are the GET's, Content-Length included), and its body is
    not sent. Litestar answers only the methods a handler names, its handlers for
    HEAD may return no body, and a route declared for HEAD as well would show each
    operation twice in the OpenAPI document: so the request is rewritten before
    Litestar routes it, here, rather than inside Litestar.
    """

    __slots__ = ("budget", "connections", "litestar", "readiness", "stopping")

    def __init__(self, litestar: Litestar) -> None:
        self.litestar = litestar
        # Told of each connection a bound of the server refused or closed (app.http.limits).
        self.connections: ConnectionObserver | None = None
        # Told of SIGTERM by a cell that serves this app among others (app.cell), which
        # installs one handler for them all; an app on its own hears it itself.
        self.stopping: Callable[[], None] | None = None
        # What the app's /readyz asks, for a cell that serves it among others.
        self.readiness: Readiness | None = None
        # What requests and answers in flight are charged to (`create_app`).
        self.budget: Budget | None = None

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """The app's lifespan, for a server of several apps that runs each one's."""
        return self.litestar.lifespan()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.litestar(scope, receive, send)
            return
        values = cast("dict[str, Any]", scope)
        # The server's charge for the request (its head and body), or one of the app's.
        charge: Charge | None = values.get(CHARGE)
        if charge is None and self.budget is not None:
            charge = values[CHARGE] = Charge(self.budget)
        try:
            await self._answer(scope, receive, sliced(send))
        finally:
            # Answered: what is not sent yet is one slice, the connection's.
            if charge is not None:
                charge.release()

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
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


def sliced(send: Send) -> Send:
    """`send`, with a body longer than SLICE_BYTES handed on a slice at a time: each a
    copy of its own, so that the connection never keeps the whole body by a view of it."""

    async def send_sliced(message: Message) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if len(body) > SLICE_BYTES:
                more = message.get("more_body", False)
                whole = memoryview(body)
                end = len(body)
                for at in range(0, end, SLICE_BYTES):
                    after = at + SLICE_BYTES
                    await send(
                        {
                            "type": "http.response.body",
                            "body": bytes(whole[at:after]),
                            "more_body": more or after < end,
                        }
                    )
                return
        await send(message)

    return send_sliced


def charge_of(scope: Scope) -> Charge | None:
    """What the request of `scope` holds of the budget (None where the app has none)."""
    return cast("Charge | None", scope.get(CHARGE))

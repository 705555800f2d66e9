"""The service's app: HEAD answered wherever GET is (RFC 9110 §9.3.2), and what a request
holds of the process's budget given back once it is answered (`app.budget`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import (
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Message,
    Receive,
    Scope,
    Send,
)

from app.budget import Budget, Charge
from app.http.limits import CHARGE

if TYPE_CHECKING:
    from app.health import Readiness
    from app.http.limits import ConnectionObserver

# Set in a request's scope where the app answers a HEAD as its GET: a route whose
# HEAD says something its GET does not (a stream's tail) reads the mark.
HEAD_REQUEST: Final = "recordline.head"
# An answer's body is handed to the connection this much at a time, each slice once the
# connection has room for it: what is not sent yet stays with the answer, charged with
# it, and once the app has answered a connection holds at most one slice and what its
# transport keeps (`app.http.limits.WRITE_HIGH_WATER`). Written whole, a page its client
# never reads was held by the connection, uncounted, until it was cut off.
SLICE_BYTES: Final = 64 * 1024


class Recordline(Litestar):
    """The service's app: Litestar, with HEAD answered wherever GET is, and each request's
    charge of the process's budget (`CHARGE`, made here under a server that makes none)
    released once it is answered, its answer sent in slices (SLICE_BYTES).

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
    # What requests and answers in flight are charged to (`create_app`).
    budget: Budget | None = None

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope["type"] != ScopeType.HTTP:
            await super().__call__(scope, receive, send)
            return
        values = cast("dict[str, Any]", scope)
        # The server's charge for the request (its head and body), or one of the app's.
        charge: Charge | None = values.get(CHARGE)
        if charge is None and self.budget is not None:
            charge = values[CHARGE] = Charge(self.budget)
        try:
            await self._answer(
                cast("Scope", scope), cast("Receive", receive), sliced(cast("Send", send))
            )
        finally:
            # Answered: what is not sent yet is one slice, the connection's.
            if charge is not None:
                charge.release()

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "HEAD":
            await super().__call__(scope, receive, send)
            return

        async def without_content(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # A copy: the server keeps its own scope, which still says HEAD. A route
        # whose HEAD says something its GET does not (a stream's tail) reads the mark.
        as_get = cast("Scope", {**scope, "method": "GET", HEAD_REQUEST: True})
        await super().__call__(as_get, receive, without_content)


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

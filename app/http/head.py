"""The service's app: its Litestar app behind a plain ASGI layer of ours, which answers
HEAD wherever GET is (RFC 9110 §9.3.2), counts what a request holds of the process's
budget in its system's share, and gives it back once it is answered (`app.budget`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final, cast

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import Message, Receive, Scope, Send

from app.budget import SMALL_BYTES, Budget, Charge, Share
from app.errors import RecordlineError
from app.http.limits import BODY_COPIES, CHARGE
from app.problems import MEDIA_TYPE, Problems
from app.query.events import SLICE_BYTES

if TYPE_CHECKING:
    from app.health import Readiness
    from app.http.limits import ConnectionObserver

# Set in a request's scope where the app answers a HEAD as its GET: a route whose
# HEAD says something its GET does not (a stream's tail) reads the mark.
HEAD_REQUEST: Final = "recordline.head"
# Where a request finds the app that answers it (`charge_of`).
ANSWERING: Final = "recordline.app"


def first_header(scope: Scope, name: bytes) -> str | None:
    """The request's first header `name` (lower case), as Litestar's `Headers.get` finds
    it, read from the scope's raw headers: a `Headers` made for it (~20 calls) would be
    kept in the scope as long as the request."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class Recordline:
    """The service's app: `litestar`, with HEAD answered wherever GET is, and each
    request's charge of the process's budget (`CHARGE`: the server's, or made here on
    demand under a server that makes none, `charge_of`) counted in the app's `share`
    (a system's, in a cell) and released once it is answered, its answer sent in
    slices (SLICE_BYTES) but on `unsliced` (the push, answered 204 or with a problem).

    RFC 9110 §9.3.2: HEAD is GET without the content. A HEAD request is routed,
    guarded and answered as the GET it stands for (so the same guards apply,
    and the headers are the GET's, Content-Length included), and its body is
    not sent. Litestar answers only the methods a handler names, its handlers for
    HEAD may return no body, and a route declared for HEAD as well would show each
    operation twice in the OpenAPI document: so the request is rewritten before
    Litestar routes it, here, rather than inside Litestar.
    """

    __slots__ = (
        "budget",
        "connections",
        "litestar",
        "problems",
        "readiness",
        "refused",
        "share",
        "stopping",
        "unsliced",
    )

    def __init__(self, litestar: Litestar) -> None:
        self.litestar = litestar
        # Told of each connection a bound of the server refused or closed (app.http.limits).
        self.connections: ConnectionObserver | None = None
        # Told of SIGTERM by a cell that serves this app among others (app.cell), which
        # installs one handler for them all; an app on its own hears it itself.
        self.stopping: Callable[[], None] | None = None
        # What the app's /readyz asks, for a cell that serves it among others.
        self.readiness: Readiness | None = None
        # What requests and answers in flight are charged to (`create_app`), and the
        # system's share of it in a cell.
        self.budget: Budget | None = None
        self.share: Share | None = None
        # The path whose answers are never sliced: no answer of it is larger than one.
        self.unsliced = ""
        # What its refusals are answered with, before Litestar (`refuse`).
        self.problems: Problems | None = None
        # Why a request whose body says it is so many bytes long is refused on its head,
        # if it is, before it is routed (`app.asgi.refused_on_head`).
        self.refused: Callable[[Scope, int], RecordlineError | None] | None = None

    async def refuse(self, send: Send, error: RecordlineError) -> None:
        """Answer `error` as its problem, before the app is asked: never kept by a cache."""
        assert self.problems is not None  # every app has its problems (`http_app`)
        problem, extra = self.problems.of(error)
        body = msgspec.json.encode(problem)
        headers = [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *((name.lower().encode(), value.encode()) for name, value in (extra or {}).items()),
        ]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """The app's lifespan, for a server of several apps that runs each one's."""
        return self.litestar.lifespan()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.litestar(scope, receive, send)
            return
        # The server's charge for the request (its head, and its body as it is read).
        charge: Charge | None = scope.get(CHARGE)  # type: ignore[assignment]
        if charge is not None:
            if self.share is not None:
                charge.join(self.share)
            # A large body is read only where there is room for all of it (its share's,
            # the room kept for pushes): refused on its head otherwise, before a byte
            # more of it is read, rather than read part way and refused.
            declared = charge.declared
            # A push its system's queue has no room for, an export past its share:
            # refused before it is routed, its token checked or its body read, so that
            # one system's flood costs the process, and the other systems, next to nothing.
            refusal = None if self.refused is None else self.refused(scope, declared)
            if (
                refusal is None
                and declared > SMALL_BYTES
                and not charge.vow(BODY_COPIES * declared)
            ):
                refusal = charge.budget.refusal()
            if refusal is not None:
                try:
                    await self.refuse(send, refusal)
                finally:
                    charge.release()
                return
        if scope["method"] == "HEAD":
            # A copy: the server keeps its own scope, which still says HEAD. A route
            # whose HEAD says something its GET does not (a stream's tail) reads the mark.
            scope = cast("Scope", {**scope, "method": "GET", HEAD_REQUEST: True})
            send = without_content(send)
        elif scope["path"] != self.unsliced:
            send = sliced(send)
        scope[ANSWERING] = self  # type: ignore[typeddict-unknown-key]
        try:
            await self.litestar(scope, receive, send)
        finally:
            # Answered: what is not sent yet is one slice, the connection's.
            charge = scope.get(CHARGE)  # type: ignore[assignment]
            if charge is not None:
                charge.release()


def without_content(send: Send) -> Send:
    """`send`, with every body left out (a HEAD's)."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head


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
    """What the request of `scope` holds of the budget (None where the app has none):
    the server's charge, or one made now under a server that makes none."""
    charge: Charge | None = scope.get(CHARGE)  # type: ignore[assignment]
    if charge is None:
        app: Recordline | None = scope.get(ANSWERING)  # type: ignore[assignment]
        if app is not None and app.budget is not None:
            charge = Charge(app.budget, app.share)
            scope[CHARGE] = charge  # type: ignore[typeddict-unknown-key]
    return charge

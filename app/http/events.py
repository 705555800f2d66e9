"""A follower's connection: when its client has gone, and its events sent one at a time.

A follower ends as soon as its client leaves: under `recordline serve` the connection
says so (`Connection.gone`), with no task of its own; under another server, one task
reads `receive`. Events are sent from the request's own task by Litestar's streaming
response with a body of ours (`FollowerEvents`): the next event is made once the client
took the last, so a slow reader holds one event at most, and one that takes none in
time is cut off. (Litestar's own body holds a task group and two tasks a follower.) A
HEAD is answered the head alone (`stream_head`): it follows nothing.
docs/reading.md#following-the-tail
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final, cast

from litestar import Request, Response
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from app.http.limits import CONNECTION, Connection
from app.query.events import Event

log = logging.getLogger(__name__)

EVENT_STREAM: Final = "text/event-stream"


def stop_of(request: Request[Any, Any, Any]) -> tuple[asyncio.Future[None], bool]:
    """What ends a follower early, and whether the server completes it when the client
    leaves. Under `recordline serve`, the connection's own future (`Connection.gone`),
    which the service's stop completes as well: a follower then holds no task to learn
    that its client left. Under another server, a new future, which a task reading
    `receive` sets (`until_disconnected`)."""
    connection = cast("Connection | None", request.scope.get(CONNECTION))
    if connection is not None:
        return connection.gone(), True
    return asyncio.get_running_loop().create_future(), False


async def until_disconnected(receive: Receive, stop: asyncio.Future[None]) -> None:
    """Set `stop` once the client has gone."""
    # The request's body first (none, for a GET), then a receive that returns
    # once the client has gone. A server that answers it at once with more of
    # the request (not as ASGI has it) cannot say when the client leaves: the
    # wait then ends by time alone, rather than spinning here.
    message = await receive()
    while message["type"] == "http.request" and message.get("more_body", False):
        message = await receive()
    if message["type"] != "http.disconnect":
        message = await receive()
    if message["type"] == "http.disconnect" and not stop.done():
        stop.set_result(None)


def watcher(
    receive: Receive, stop: asyncio.Future[None], watched: bool
) -> asyncio.Future[None] | None:
    """The task that sets `stop` once the client has gone, where the server does not
    (`watched` false): the request's own, to cancel as the request ends."""
    return None if watched else asyncio.ensure_future(until_disconnected(receive, stop))


class FollowerEvents(ASGIStreamingResponse):
    """A follower's events as Litestar's streaming response, its body sent from its
    request's own task (not the task group Litestar's own `send_body` holds); `stop` is
    done once the client leaves, by the server (`watched`, `stop_of`) or else by one
    task that waits for it."""

    __slots__ = ("connection", "events", "slow_seconds", "stop", "watched")

    def __init__(
        self,
        events: AsyncIterator[Event],
        *,
        status: int,
        headers: list[tuple[str, str]],
        stop: asyncio.Future[None],
        watched: bool,
        slow_seconds: float,
        connection: Connection | None,
    ) -> None:
        # Its content type from EVENT_STREAM, with the `charset=utf-8` a text type
        # needs; every other header as the route's answer has it, repeated ones too.
        super().__init__(
            iterator=cast("AsyncIterator[bytes]", events),
            status_code=status,
            media_type=EVENT_STREAM,
        )
        for name, value in headers:
            self.headers.add(name, value)
        self.events = events
        self.stop = stop
        self.watched = watched
        self.slow_seconds = slow_seconds
        # Under `recordline serve`, the connection, to drop at once what a follower cut
        # off still holds (`Connection.cut`).
        self.connection = connection

    async def send_body(self, send: Send, receive: Receive) -> None:
        watching = watcher(receive, self.stop, self.watched)
        try:
            async for event in self.events:
                pieces = event if isinstance(event, tuple) else (event,)
                try:
                    # Written, the event waits in the connection until its client takes
                    # it, and the next is made only once it has: a slow reader holds one
                    # event, and one that takes none in time is cut off. What it was
                    # made of is charged until the stream asks for the next.
                    async with asyncio.timeout(self.slow_seconds):
                        for piece in pieces:
                            await send(
                                {"type": "http.response.body", "body": piece, "more_body": True}
                            )
                        del event, pieces, piece  # written: not held while it is taken
                        # Nothing: a send waits, as any does, until the connection has
                        # room again (its client took what was written before).
                        await send({"type": "http.response.body", "body": b"", "more_body": True})
                except TimeoutError:
                    log.warning(
                        "a follower took no event for %g s: cut off, to resume where it was",
                        self.slow_seconds,
                    )
                    if isinstance(self.events, AsyncGenerator):
                        await self.events.aclose()  # it counts as a follower no more
                    if self.connection is not None:
                        # Closed now, what it holds dropped: a close would keep the
                        # event until the client reads it, which it may never do.
                        self.connection.cut()
                    return  # the server closes the connection: the response is unfinished
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watching is not None:
                watching.cancel()


class EventStream(Response[bytes]):
    """Server-sent events for a follower, as Litestar's routes answer (a `Response`):
    what Litestar asks of it is `FollowerEvents`, with the status and the headers it
    merged, and nothing else beside the stream."""

    __slots__ = ("events", "slow_seconds", "stop", "watched")

    def __init__(
        self,
        events: AsyncIterator[Event],
        *,
        stop: asyncio.Future[None],
        watched: bool,
        slow_seconds: float,
        headers: dict[str, str],
    ) -> None:
        # Litestar adds the one `charset=utf-8` a text type needs.
        super().__init__(b"", media_type=EVENT_STREAM, headers=headers)
        self.events = events
        self.stop = stop
        self.watched = watched
        self.slow_seconds = slow_seconds

    def to_asgi_response(
        self, app: Any, request: Request[Any, Any, Any], **merged: Any
    ) -> ASGIResponse:
        # Litestar's own answer to the request gives the status and the headers (the
        # route's and this response's, merged as for any other); it has no body.
        head = super().to_asgi_response(app, request, **merged)
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in head.encode_headers()
            if name not in (b"content-length", b"content-type")
        ]
        return FollowerEvents(
            self.events,
            status=head.status_code,
            headers=headers,
            stop=self.stop,
            watched=self.watched,
            slow_seconds=self.slow_seconds,
            connection=cast("Connection | None", request.scope.get(CONNECTION)),
        )


async def _no_events() -> AsyncIterator[Event]:
    return
    yield  # an async generator that gives nothing


def stream_head(headers: dict[str, str]) -> EventStream:
    """What a HEAD of an event stream is answered: the GET's status and headers, and
    nothing after them (no follower made, no seat held)."""
    stop = asyncio.get_running_loop().create_future()
    stop.set_result(None)
    return EventStream(_no_events(), stop=stop, watched=True, slow_seconds=0.0, headers=headers)

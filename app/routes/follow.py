"""Followers told at once: a page that waits (long-poll), a stream of pages
(server-sent events), and pages that say when they can never change.

`wait=SECONDS` holds a page that would be empty; `Accept: text/event-stream`
streams pages as events, resumable by `Last-Event-ID`; a full page of records
carries a strong `ETag` and may be cached. A stream produces the next event only
once its client has taken the last one: a follower holds one event at most, of
SSE_EVENT_BYTES or one row, and one that takes nothing is cut off.

Design: docs/reading.md#following-the-tail
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Final, TypeVar, cast

import cachetools
import msgspec
from litestar import Request, Response
from litestar.datastructures import Accept, CacheControlHeader, ETag
from litestar.datastructures.headers import Header
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.status_codes import HTTP_304_NOT_MODIFIED
from litestar.types import Receive, Scope, Send

from app.errors import RetryLater, TooManyFollowers
from app.http.limits import CONNECTION, Connection
from app.problems import problem_type
from app.query.service import Listing, Reader, RecordsPage, RejectionsPage
from app.records import rfc3339

P = TypeVar("P", RecordsPage, RejectionsPage)
log = logging.getLogger(__name__)

COMPLETE_UNTIL: Final = "Recordline-Complete-Until"
EVENT_STREAM: Final = "text/event-stream"
JSON: Final = "application/json"
# A page that can never change may be kept this long (a year: as long as HTTP allows).
IMMUTABLE_SECONDS: Final = 31_536_000
# Encodings kept of the pages followers are being sent, in bytes at most (followers
# woken together are sent the same page object, so it is encoded once for all of
# them): each is dropped with its page, or, the least recently used first, past this.
# Once, 64 pages were kept whatever their size: six pages of 4 MB records held 4 GB.
ENCODED_BYTES: Final = 32 * 1024 * 1024
_encode = msgspec.json.encode
DEFAULT_MAX_FOLLOWERS: Final = 1000
# A stream whose client takes no event for this long (its connection's buffers full)
# is cut off, and what it held dropped: it held one event meanwhile, never more, and
# reconnects from where it was (RECORDLINE_SEND_TIMEOUT_SECONDS).
SLOW_FOLLOWER_SECONDS: Final = 30.0
# A stream's events hold about this much at most (`app.store.row_bytes`), or one row
# when that is larger: what a follower whose client reads slowly holds while paused.
SSE_EVENT_BYTES: Final = 1024 * 1024
# How long a stream's long-poll waits for rows before its 204: under the 30 s
# many HTTP clients give a response (the Durable Streams Python client's default).
DEFAULT_LONG_POLL_SECONDS: Final = 20.0
# A full instance is asked again after this long: followers end within a stream's
# life, and a retry may reach another instance.
FULL_RETRY_SECONDS: Final = 5


class _Following:
    """`Followers.following`: a context manager of two slots, where contextlib's made of
    a generator held 400 bytes an idle follower."""

    __slots__ = ("followers", "stop")

    def __init__(self, followers: Followers, stop: asyncio.Future[None]) -> None:
        self.followers = followers
        self.stop = stop

    def __enter__(self) -> None:
        self.followers.joined(self.stop)

    def __exit__(self, *_: object) -> None:
        self.followers.left(self.stop)


class Followers:
    """What every waiting page and stream of one app shares: when to stop, how long."""

    def __init__(
        self,
        *,
        stream_seconds: float,
        heartbeat_seconds: float,
        shared_cache: bool,
        max_open: int = DEFAULT_MAX_FOLLOWERS,
        long_poll_seconds: float = DEFAULT_LONG_POLL_SECONDS,
        slow_seconds: float = SLOW_FOLLOWER_SECONDS,
    ) -> None:
        self.stream_seconds = stream_seconds
        # How long a stream may wait for its client to take one event.
        self.slow_seconds = slow_seconds
        self.long_poll_seconds = long_poll_seconds
        self.max_open = max_open
        self.heartbeat_seconds = heartbeat_seconds
        self.shared_cache = shared_cache
        # True once the service starts stopping (SIGTERM): waits end, streams say
        # where to resume, so the grace period is enough for every one.
        self.stopping = False
        # What ends each waiting page and open stream early (`until_gone`).
        self._stops: set[asyncio.Future[None]] = set()
        # Waiting pages and open streams now (for metrics and tests).
        self.open = 0
        # By the page's id: while the page lives (`_Encoded`), and ENCODED_BYTES at most.
        self._encoded: cachetools.LRUCache[int, _Encoded] = cachetools.LRUCache(
            maxsize=ENCODED_BYTES, getsizeof=_Encoded.weight
        )

    def admit(self) -> None:
        """Raise TooManyFollowers while this instance holds `max_open` followers: each
        holds a connection, a task and a wait, and a client opening thousands must not
        take them all. Checked before a stream's headers are sent, so it is refused
        with a status, never cut after its 200."""
        if self.open >= self.max_open:
            raise TooManyFollowers(
                f"this instance holds {self.open} waiting pages and streams, its most "
                "(RECORDLINE_MAX_FOLLOWERS); retry, or read without waiting",
                retry_after=FULL_RETRY_SECONDS,
            )

    def stop(self) -> None:
        """The service stops: every wait ends now, and so does every stream."""
        self.stopping = True
        for stop in self._stops:
            if not stop.done():
                stop.set_result(None)

    def following(self, stop: asyncio.Future[None]) -> _Following:
        """Count a waiting page or stream while inside; `stop` is done if the service stops."""
        return _Following(self, stop)

    def joined(self, stop: asyncio.Future[None]) -> None:
        if self.stopping and not stop.done():
            stop.set_result(None)
        self._stops.add(stop)
        self.open += 1

    def left(self, stop: asyncio.Future[None]) -> None:
        self.open -= 1
        self._stops.discard(stop)

    @property
    def encoded_bytes(self) -> int:
        """What the encodings kept hold now (ENCODED_BYTES at most), as they are counted."""
        return int(self._encoded.currsize)

    def encoded(self, page: RecordsPage | RejectionsPage) -> bytes:
        """The page as JSON: made once per page object."""
        return self._encoding(page).body

    def event(self, page: RecordsPage | RejectionsPage) -> bytes:
        """The page as an event of a stream (`event: page`): made once per page object."""
        encoded = self._encoding(page)
        if encoded.event is None:
            encoded.event = _event("page", page.next_page_token, encoded.body)
        return encoded.event

    def _encoding(self, page: RecordsPage | RejectionsPage) -> _Encoded:
        key = id(page)
        found = self._encoded.get(key)
        if found is not None and found.page() is page:
            return found
        encoded = _Encoded(page, _encode(page), self._encoded, key)
        with contextlib.suppress(ValueError):  # larger than them all: not kept
            self._encoded[key] = encoded
        return encoded


class _Encoded:
    """A page's encodings, kept while the page lives: once no follower holds it, they
    are dropped from the cache, whatever room is left (`_forget`)."""

    __slots__ = ("body", "event", "page")

    def __init__(
        self,
        page: RecordsPage | RejectionsPage,
        body: bytes,
        cache: cachetools.LRUCache[int, _Encoded],
        key: int,
    ) -> None:
        self.body = body
        self.event: bytes | None = None
        self.page = weakref.ref(page, _forget(cache, key))

    def weight(self) -> int:
        # The body, the event made of it, and the page's views (what the page holds,
        # about as many bytes as its body), counted whether or not they are made yet.
        return 3 * len(self.body)


def _forget(
    cache: cachetools.LRUCache[int, _Encoded], key: int
) -> Callable[[weakref.ref[Any]], None]:
    """What drops a page's encodings from `cache` once the page is gone."""

    def gone(ref: weakref.ref[Any]) -> None:
        found = cache.get(key)
        if found is not None and found.page is ref:
            del cache[key]

    return gone


def stop_of(request: Request[Any, Any, Any]) -> tuple[asyncio.Future[None], bool]:
    """What ends a follower early, and whether the server completes it when the client
    leaves. Under `recordline serve`, the connection's own future (`Connection.gone`),
    which the service's stop completes as well: a follower then holds no task to learn
    that its client left. Under another server, a new future, which a task reading
    `receive` sets (`_until_disconnected`)."""
    connection = cast("Connection | None", request.scope.get(CONNECTION))
    if connection is not None:
        return connection.gone(), True
    return asyncio.get_running_loop().create_future(), False


def until_gone(request: Request[Any, Any, Any], followers: Followers) -> _UntilGone:
    """A future done when the client disconnects or the service stops, while inside."""
    return _UntilGone(request, followers)


class _UntilGone:
    """`until_gone`: a context manager of slots, where contextlib's made of a generator
    held 400 bytes a parked long-poll."""

    __slots__ = ("followers", "request", "stop", "watcher")

    def __init__(self, request: Request[Any, Any, Any], followers: Followers) -> None:
        self.request = request
        self.followers = followers

    async def __aenter__(self) -> asyncio.Future[None]:
        stop, watched = stop_of(self.request)
        self.stop = stop
        self.watcher = (
            None
            if watched
            else asyncio.ensure_future(_until_disconnected(self.request.receive, stop))
        )
        self.followers.joined(stop)
        return stop

    async def __aexit__(self, *_: object) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        self.followers.left(self.stop)


async def _until_disconnected(receive: Receive, stop: asyncio.Future[None]) -> None:
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


class _FollowerEvents(ASGIStreamingResponse):
    """A follower's events, sent from its request's own task; `stop` is done once the
    client leaves, by the server (`stop_of`) or else by one task that waits for it.
    (Litestar's streaming response runs the stream in a task group beside a listener:
    a group and two tasks a follower, which an idle follower need not hold.)"""

    __slots__ = ("connection", "slow_seconds", "stop", "watched")

    def __init__(
        self, *, stop: asyncio.Future[None], watched: bool, slow_seconds: float, **options: Any
    ) -> None:
        super().__init__(**options)
        self.stop = stop
        self.watched = watched
        self.slow_seconds = slow_seconds
        self.connection: Connection | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Under `recordline serve`, the connection, to drop at once what a follower cut
        # off still holds (`Connection.cut`).
        self.connection = cast("Connection | None", scope.get(CONNECTION))
        await super().__call__(scope, receive, send)

    async def send_body(self, send: Send, receive: Receive) -> None:
        watcher = (
            None if self.watched else asyncio.ensure_future(_until_disconnected(receive, self.stop))
        )
        try:
            async for chunk in self.iterator:
                body = chunk if isinstance(chunk, bytes) else chunk.encode(self.encoding)
                try:
                    # Written, the event waits in the connection until its client takes
                    # it, and the next is made only once it has: a slow reader holds one
                    # event, and one that takes none in time is cut off.
                    async with asyncio.timeout(self.slow_seconds):
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                        del chunk, body  # written: not held while it is taken
                        # Nothing: a send waits, as any does, until the connection has
                        # room again (its client took what was written before).
                        await send({"type": "http.response.body", "body": b"", "more_body": True})
                except TimeoutError:
                    log.warning(
                        "a follower took no event for %g s: cut off, to resume where it was",
                        self.slow_seconds,
                    )
                    if isinstance(self.iterator, AsyncGenerator):
                        await self.iterator.aclose()  # it counts as a follower no more
                    if self.connection is not None:
                        # Closed now, what it holds dropped: a close would keep the
                        # event until the client reads it, which it may never do.
                        self.connection.cut()
                    return  # the server closes the connection: the response is unfinished
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()


class EventStream(Stream):
    """Server-sent events for a follower: its generator ends once `stop` is done (the
    client left, or the service stops), and nothing else runs beside it. `watched`:
    the server completes `stop` when the client leaves (`stop_of`)."""

    __slots__ = ("slow_seconds", "stop", "watched")

    def __init__(
        self,
        content: Any,
        *,
        stop: asyncio.Future[None],
        watched: bool = False,
        slow_seconds: float = SLOW_FOLLOWER_SECONDS,
        **options: Any,
    ) -> None:
        super().__init__(content, **options)
        self.stop = stop
        self.watched = watched
        self.slow_seconds = slow_seconds

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: Any = None,
        cookies: Any = None,
        encoded_headers: Any = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: str | None = None,
        status_code: int | None = None,
        type_encoders: Any = None,
    ) -> ASGIStreamingResponse:
        # As Stream's own, with the response that holds nothing beside the stream.
        return _FollowerEvents(
            stop=self.stop,
            watched=self.watched,
            slow_seconds=self.slow_seconds,
            background=self.background or background,
            content_length=0,
            cookies=self.cookies if cookies is None else [*self.cookies, *cookies],
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=is_head_response,
            iterator=self.iterator,
            media_type=str(media_type or self.media_type),
            status_code=self.status_code or status_code,
        )


def wants_stream(request: Request[Any, Any, Any]) -> bool:
    """Whether the client's `Accept` prefers a stream of events to one JSON page.

    Negotiated as RFC 9110 says (section 12.5.1): media ranges compare
    case-insensitively, each type takes the quality of the most specific range
    that matches it, and a quality of 0 is "not acceptable", so
    `text/event-stream;q=0, */*` never streams. (Litestar's `Accept.best_match`
    matches a `q=0` range like any other, so only its parsing is used.) The higher
    quality wins; a tie, no header, or nothing acceptable: JSON.
    """
    header = request.headers.get("accept")
    if not header:
        return False
    ranges = [_media_range(media) for media in Accept(header.lower())]
    stream = _quality(ranges, EVENT_STREAM)
    return stream > 0 and stream > _quality(ranges, JSON)


def _media_range(media: str) -> tuple[str, float]:
    """`text/*;q=0.5` → ("text/*", 0.5); a missing or unreadable q is 1."""
    kind, *parameters = media.split(";")
    quality = 1.0
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "q":
            with contextlib.suppress(ValueError):
                quality = float(value.strip())
    return kind.strip(), quality


def _quality(ranges: list[tuple[str, float]], media_type: str) -> float:
    """The quality of `media_type`: its most specific matching range's, or 0."""
    wildcard = media_type.partition("/")[0] + "/*"
    specificity = {media_type: 2, wildcard: 1, "*/*": 0}
    matching = [(specificity[r], q) for r, q in ranges if r in specificity]
    return max(matching)[1] if matching else 0.0


def answer(
    request: Request[Any, Any, Any],
    page: P,
    *,
    full: bool,
    final: bool,
    followers: Followers,
) -> Response[Any]:
    """The page as JSON, with its freshness, and what caches may do: keep a `final`
    full page, revalidate any other full one by its `ETag`, ask again for the tail."""
    headers = {COMPLETE_UNTIL: rfc3339(page.complete_until)}
    body = followers.encoded(page)
    if not full:
        headers |= _header(NO_CACHE)
        return Response(body, media_type=JSON, headers=headers)
    etag = ETag(value=hashlib.sha256(body).hexdigest()[:32])
    shared = followers.shared_cache
    cache_control = (
        CacheControlHeader(
            public=shared or None,
            private=not shared or None,
            max_age=IMMUTABLE_SECONDS,
            immutable=True,
        )
        if final
        else NO_CACHE
    )
    headers |= _header(etag) | _header(cache_control)
    if etag.to_header() in _etags(request.headers.get("if-none-match", "")):
        return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(body, media_type=JSON, headers=headers)


NO_CACHE: Final = CacheControlHeader(no_cache=True)


def _header(header: Header) -> dict[str, str]:
    return {header.HEADER_NAME: header.to_header()}


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def _event(kind: str, event_id: str | None, data: bytes) -> bytes:
    """One server-sent event; `data` is JSON from msgspec, which is one line."""
    head = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
    return head + b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


HEARTBEAT: Final = b": heartbeat\n\n"


async def _pages(
    reader: Reader,
    listing: Listing[P],
    followers: Followers,
    page_token: str | None,
    first: dict[str, Any],
    limit: int,
    stop: asyncio.Future[None],
) -> AsyncIterator[bytes]:
    """`stream`'s events. (Module-level, not a closure: a closure's function and cells
    were held by every idle follower, 0.5 KiB.)"""
    loop = asyncio.get_running_loop()
    ends = loop.time() + followers.stream_seconds
    # What this follower was acknowledged before its stream began is in every
    # page the stream sends (`Reader.page`'s `asked_at`).
    asked_at = time.monotonic()
    token = page_token
    complete = None
    failed: RetryLater | None = None
    with followers.following(stop):
        while not stop.done() and loop.time() < ends:
            wait = min(followers.heartbeat_seconds, max(ends - loop.time(), 0.0))
            try:
                page = await reader.page(
                    listing,
                    **(first if token is None else {"since": None, "until": None}),
                    limit=limit,
                    page_token=token,
                    wait=wait,
                    stop=stop,
                    asked_at=asked_at,
                    max_bytes=SSE_EVENT_BYTES,
                )
            except RetryLater as exc:
                # The store did not answer: the stream ends as it would, with
                # where to resume, and says why.
                log.warning("stream of pages ended early: %s", exc.detail)
                failed = exc
                break
            token, complete = page.next_page_token, page.complete_until
            rows = page.records if isinstance(page, RecordsPage) else page.rejections
            if rows:
                yield followers.event(page)
            elif token is not None:
                yield HEARTBEAT
            if token is None:  # a bounded range, complete
                break
        # Where to resume: the same stream, asked again with this id.
        end: dict[str, Any] = {
            "next_page_token": token,
            "complete_until": None if complete is None else rfc3339(complete),
        }
        if failed is not None:
            end["problem"] = {
                "type": problem_type(type(failed)),
                "title": failed.title,
                "status": failed.status,
                "detail": failed.detail,
            }
        yield _event("end", token, _encode(end))


def stream(
    request: Request[Any, Any, Any],
    reader: Reader,
    listing: Listing[P],
    followers: Followers,
    *,
    page_token: str | None,
    first: dict[str, Any],
    limit: int,
) -> Stream:
    """The pages from `page_token` (or `first`'s since/until) on, as events."""
    # Done once the client leaves or the service stops.
    stop, watched = stop_of(request)

    return EventStream(
        _pages(reader, listing, followers, page_token, first, limit, stop),
        stop=stop,
        watched=watched,
        slow_seconds=followers.slow_seconds,
        # Litestar adds the one `charset=utf-8` a text type needs.
        media_type=EVENT_STREAM,
        headers={"X-Accel-Buffering": "no"} | _header(NO_CACHE),
    )

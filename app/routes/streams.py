"""The Durable Streams read side, over HTTP: thin routes on `app.query.streams`.

Catch-up (§5.6, `?offset=`), long-poll (§5.7, `live=long-poll`), SSE (§5.8,
`live=sse`) and HEAD (§5.5, the tail); PUT, POST and DELETE are 405: rows come
from Pub/Sub, and the protocol's §3 lets a server implement the read side alone.
Live reads count against the instance's followers (`RECORDLINE_MAX_FOLLOWERS`)
and end at once when the client leaves or the service stops.

Design: docs/streams.md#what-the-protocol-gets-here
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.datastructures import CacheControlHeader, ETag, ResponseHeader
from litestar.di import NamedDependency
from litestar.exceptions import MethodNotAllowedException
from litestar.params import Parameter, PathParameter
from litestar.status_codes import HTTP_204_NO_CONTENT, HTTP_304_NOT_MODIFIED

from app.docs import StreamOperation
from app.errors import RetryLater
from app.http.head import HEAD_REQUEST, charge_of
from app.query.offsets import MAX_OFFSET_LENGTH, OFFSET_PATTERN
from app.query.page_token import PageToken
from app.query.streams import CURSOR_DIGITS, STREAMS, Chunk, Control, Streams, cursor_after
from app.records import moment, rfc3339
from app.routes.follow import (
    COMPLETE_UNTIL,
    EVENT_STREAM,
    HEARTBEAT,
    JSON,
    SSE_EVENT_BYTES,
    Event,
    EventStream,
    Followers,
    framed,
    stop_of,
    until_gone,
)
from app.routes.query import (
    STREAM_ERRORS,
    AttributeFilter,
    FieldFilter,
    Filter,
    MessageIdFilter,
    Paging,
    ProducerFilter,
    RecordIdFilter,
)

log = logging.getLogger(__name__)

NEXT_OFFSET: Final = "Stream-Next-Offset"
UP_TO_DATE: Final = "Stream-Up-To-Date"
CURSOR: Final = "Stream-Cursor"
# An SSE stream ends after about this long, or the instance's stream_seconds if
# shorter (§10.2: so that new clients collapse onto the edge's requests).
SSE_SECONDS: Final = 60.0
# What a catch-up chunk or a long-poll's rows may be kept for (§10.1).
CHUNK_MAX_AGE: Final = 60
CHUNK_STALE_SECONDS: Final = 300
NO_STORE: Final = CacheControlHeader(no_store=True)
NO_CACHE: Final = CacheControlHeader(no_cache=True)
ALLOW: Final = "GET, HEAD"

Name = Annotated[
    str,
    PathParameter(
        description=f"The stream: {' or '.join(STREAMS)}",
        # Any other name is a 404: the document lists the streams there are.
        schema_extra={"enum": list(STREAMS)},
    ),
]
OffsetText = Annotated[
    str | None,
    Parameter(
        description=(
            "Where to read from: a `Stream-Next-Offset` this stream gave, `-1` (or none) for "
            "the oldest row kept, `now` for the tail"
        ),
        max_length=MAX_OFFSET_LENGTH,
        # What an offset may look like; only one this stream signed is read.
        schema_extra={"pattern": OFFSET_PATTERN},
    ),
]
Live = Annotated[
    Literal["long-poll", "sse"] | None,
    Parameter(description="Wait for rows (`long-poll`), or stream them (`sse`)"),
]
CursorText = Annotated[
    str | None,
    Parameter(
        description="The last `Stream-Cursor` received, sent back as it came",
        # A cursor is a count of intervals: digits only.
        schema_extra={"pattern": f"^[0-9]{{1,{CURSOR_DIGITS}}}$"},
    ),
]


def _headers(*items: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        if isinstance(item, tuple):
            headers[item[0]] = item[1]
        else:
            headers[item.HEADER_NAME] = item.to_header()
    return headers


def _positioned(chunk: Chunk) -> dict[str, str]:
    headers = {
        NEXT_OFFSET: chunk.next_offset,
        COMPLETE_UNTIL: rfc3339(moment(chunk.complete_until)),
    }
    if chunk.up_to_date:
        headers[UP_TO_DATE] = "true"
    return headers


def _kept(shared: bool) -> dict[str, str]:
    return _headers(
        CacheControlHeader(
            public=shared or None,
            private=not shared or None,
            max_age=CHUNK_MAX_AGE,
            stale_while_revalidate=CHUNK_STALE_SECONDS,
        )
    )


# What caches may do with a chunk, written once: one of records may be kept a minute
# (its rows never change), by the client's cache or (shared) any; one of rejections is
# revalidated (a replay may mark one `stored`).
_CACHING: Final = {
    (True, False): _kept(shared=False),
    (True, True): _kept(shared=True),
    (False, False): _headers(CacheControlHeader(private=True, no_cache=True)),
    (False, True): _headers(CacheControlHeader(private=True, no_cache=True)),
}


def _caching(paging: Paging, final: bool) -> dict[str, str]:
    return _CACHING[final, paging.followers.shared_cache]


def _sent(request: Request[Any, Any, Any], chunk: Chunk) -> bytes:
    """The chunk's body, to answer with: the chunk (charged with its reads) lives until
    it is sent."""
    charge = charge_of(request.scope)
    if charge is not None:
        charge.keep(chunk)
    return chunk.body


def _unchanged(request: Request[Any, Any, Any], etag: ETag) -> bool:
    sent = request.headers.get("if-none-match", "")
    return etag.to_header() in {tag.strip().removeprefix("W/") for tag in sent.split(",")}


@get(
    "/v1/streams/{name:str}",
    summary="A list as a Durable Streams stream: catch-up, long-poll or SSE",
    description=(
        "The Durable Streams protocol's read side (JSON mode): each chunk is a JSON array of the "
        "objects `/v1/records` (or `/v1/rejections`) lists, in the same order. Resume from "
        "`Stream-Next-Offset`; `HEAD` names the tail. Streams are read-only: rows come from "
        "Pub/Sub."
    ),
    tags=["streams"],
    response_headers=[
        ResponseHeader(
            name=NEXT_OFFSET,
            description="The offset to read from next",
            value="2vNCZ5LvW.-Fh3mIX8n2y1xFXQZVw1ZMk",
            documentation_only=True,
        ),
        ResponseHeader(
            name=UP_TO_DATE,
            description="Present (`true`) when the response reaches the tail",
            value="true",
            documentation_only=True,
        ),
        ResponseHeader(
            name=CURSOR,
            description="Live reads: send it back as `cursor` on the next request",
            value="3000",
            documentation_only=True,
        ),
    ],
    responses=STREAM_ERRORS,
    operation_class=StreamOperation,
)
async def read_stream(
    request: Request[Any, Any, Any],
    paging: NamedDependency[Paging],
    name: Name,
    offset: OffsetText = None,
    live: Live = None,
    cursor: CursorText = None,
    attribute: AttributeFilter = None,
    producer: ProducerFilter = None,
    record_id: RecordIdFilter = None,
    message_id: MessageIdFilter = None,
    field: FieldFilter = None,
) -> Response[Any]:
    streams, followers = paging.streams, paging.followers
    listing = streams.named(name)
    # A filtered stream is a stream of its own: its offsets are signed for its filter.
    keep = Filter(attribute, producer, record_id, message_id, field).of(listing)
    if request.scope.get(HEAD_REQUEST):
        tail = streams.position(listing, await streams.tail(listing, keep))
        return Response(b"", media_type=JSON, headers={NEXT_OFFSET: tail} | _headers(NO_STORE))
    start = streams.start(listing, offset, keep)
    # Checked in every mode: a cursor that is none is a 400 wherever it is sent.
    next_cursor = cursor_after(cursor)
    if live is None:
        if start is None:  # offset=now: nothing, and where the tail is
            now = streams.position(listing, await streams.tail(listing, keep))
            return Response(
                b"[]",
                media_type=JSON,
                headers={NEXT_OFFSET: now, UP_TO_DATE: "true"} | _headers(NO_STORE),
            )
        chunk = await streams.chunk(listing, start)
        etag = ETag(value=chunk.etag)
        headers = _positioned(chunk) | _headers(etag) | _caching(paging, listing.final)
        if _unchanged(request, etag):
            return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(_sent(request, chunk), media_type=JSON, headers=headers)
    followers.admit()
    if start is None:
        start = await streams.tail(listing, keep)
    if live == "sse":
        await streams.reader.check_filter(listing, keep)
        return _sse(request, paging, listing, start, cursor)
    async with until_gone(request, followers) as stop:
        chunk = await streams.chunk(listing, start, wait=followers.long_poll_seconds, stop=stop)
    headers = _positioned(chunk) | {CURSOR: next_cursor}
    if not chunk.rows:
        headers[UP_TO_DATE] = "true"
        return Response(b"", status_code=HTTP_204_NO_CONTENT, headers=headers | _headers(NO_STORE))
    etag = ETag(value=chunk.etag)
    headers |= _headers(etag) | _caching(paging, listing.final)
    return Response(_sent(request, chunk), media_type=JSON, headers=headers)


_encode = msgspec.json.encode


def _event(kind: bytes, data: bytes) -> bytes:
    """One server-sent event; `data` is JSON from msgspec, which is one line."""
    return b"event: " + kind + b"\ndata: " + data + b"\n\n"


def _sse(
    request: Request[Any, Any, Any],
    paging: Paging,
    listing: Any,
    start: PageToken,
    cursor: str | None,
) -> EventStream:
    streams, followers = paging.streams, paging.followers
    # Done once the client leaves or the service stops.
    stop, watched = stop_of(request)

    return EventStream(
        _events(streams, followers, listing, start, cursor, stop),
        stop=stop,
        watched=watched,
        slow_seconds=followers.slow_seconds,
        # Litestar adds the one `charset=utf-8` a text type needs.
        media_type=EVENT_STREAM,
        headers={"X-Accel-Buffering": "no"} | _headers(NO_CACHE),
    )


async def _events(
    streams: Streams,
    followers: Followers,
    listing: Any,
    start: PageToken,
    cursor: str | None,
    stop: asyncio.Future[None],
) -> AsyncIterator[Event]:
    """A stream's events from `start` on, until `stop`, its time or a failed read.
    (Module-level, not a closure: a closure's function and cells were held by every
    idle follower, 0.5 KiB.)"""
    loop = asyncio.get_running_loop()
    ends = loop.time() + min(followers.stream_seconds, SSE_SECONDS)
    # What this follower was acknowledged before its stream began is in every
    # chunk the stream sends (`Reader.read`'s `asked_at`).
    asked_at = time.monotonic()
    position = start
    told = False  # whether a control event said where the stream stands
    sent = cursor
    bell = streams.reader.bell
    quiet_since = loop.time()
    with followers.following(stop):
        while not stop.done() and loop.time() < ends:
            seen = bell.version
            try:
                chunk = await streams.chunk(
                    listing,
                    position,
                    stop=stop,
                    asked_at=asked_at,
                    followed=True,
                    max_bytes=SSE_EVENT_BYTES,
                )
            except RetryLater as exc:
                # The store did not answer: the stream ends, and the client
                # reconnects from the last offset it was given.
                log.warning("stream %s ended early: %s", listing.name, exc.detail)
                break
            position = chunk.after
            if chunk.rows or not told:
                sent = cursor_after(sent)
                control = Control(
                    streamNextOffset=chunk.next_offset,
                    streamCursor=sent,
                    upToDate=chunk.up_to_date,
                )
                event = _with_data(chunk, _event(b"control", _encode(control)))
                # Sent while the chunk (charged) lives; an idle stream holds its
                # position, not what it sent.
                yield event
                del chunk, control, event
                told, quiet_since = True, loop.time()
                continue
            del chunk
            # Nothing new: wait for the bell here, where an idle follower holds
            # the least (no read under way), and say it is alive now and then.
            beat = quiet_since + followers.heartbeat_seconds
            left = min(beat, ends) - loop.time()
            if left > 0 and await bell.wait(seen, left, stop):
                continue
            if loop.time() >= beat and not stop.done():
                yield HEARTBEAT
                quiet_since = loop.time()


def _with_data(chunk: Chunk, control: bytes) -> Event:
    """The chunk's `event: data` (made once for every stream that sends it), then `control`;
    pieces, its body not copied, when that is larger than a slice."""
    if not chunk.rows:
        return control
    if chunk.data_event is None:
        chunk.data_event = framed(b"event: data\ndata: ", chunk.body, b"\n\n")
    data = chunk.data_event
    if isinstance(data, tuple):
        return (*data, control)
    return data + control


@put("/v1/streams/{name:str}", include_in_schema=False, status_code=405)
async def create_stream(name: Name) -> None:
    raise _read_only()


@post("/v1/streams/{name:str}", include_in_schema=False, status_code=405)
async def append_to_stream(name: Name) -> None:
    raise _read_only()


@delete("/v1/streams/{name:str}", include_in_schema=False, status_code=405)
async def delete_stream(name: Name) -> None:
    raise _read_only()


def _read_only() -> MethodNotAllowedException:
    return MethodNotAllowedException(
        detail="streams are read-only here: rows come from Pub/Sub",
        headers={"Allow": ALLOW},
    )


STREAM_ROUTES = [read_stream, create_stream, append_to_stream, delete_stream]

"""The Durable Streams read side, over HTTP: thin routes on `app.query.streams`.

Catch-up (§5.6, `?offset=`), long-poll (§5.7, `live=long-poll`), SSE (§5.8,
`live=sse`) and HEAD (§5.5, the tail); PUT, POST and DELETE are 405: rows come
from Pub/Sub, and the protocol's §3 lets a server implement the read side alone.
Live reads count against the instance's followers (`RECORDLINE_MAX_FOLLOWERS`)
and end at once when the client leaves or the service stops.

Design: docs/streams.md#what-the-protocol-gets-here
"""

from __future__ import annotations

import hashlib
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
from app.http.events import EVENT_STREAM, EventStream, stop_of
from app.http.head import HEAD_REQUEST, charge_of
from app.query.events import Event, event, event_bytes, framed
from app.query.follow import Seat
from app.query.offsets import MAX_OFFSET_LENGTH, NOW, OFFSET_PATTERN
from app.query.page_token import PageToken
from app.query.select import Selection
from app.query.service import Excerpt, Listing
from app.query.streams import CURSOR_DIGITS, STREAMS, Chunk, Control, Streams, cursor_after
from app.records import moment, rfc3339
from app.routes.follow import (
    COMPLETE_UNTIL,
    JSON,
    SSE_EVENT_BYTES,
    STREAMING,
    as_headers,
    immutable,
    shareable,
    unchanged,
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
    SelectText,
    WhereFilter,
    select_once,
    selected,
)

NEXT_OFFSET: Final = "Stream-Next-Offset"
UP_TO_DATE: Final = "Stream-Up-To-Date"
CURSOR: Final = "Stream-Cursor"
# An SSE stream ends after about this long, or the instance's stream_seconds if
# shorter (§10.2: so that new clients collapse onto the edge's requests).
SSE_SECONDS: Final = 60.0
# What a catch-up chunk that reaches the tail or a long-poll's rows may be kept for
# (§10.1); a chunk that stops short of the tail holds the same rows for ever.
CHUNK_MAX_AGE: Final = 60
CHUNK_STALE_SECONDS: Final = 300
# What a shared cache may keep a long-poll's 204 for: the followers that sent the same
# offset and cursor waited for it together, and a cache wakes those queued behind its
# one request to the origin within half a second (nginx's lock), so a second serves
# them all and bounds what a latecomer could be told; its next request carries the new
# cursor, a URL no cache has seen. Kept for none, a cache would send the queue to the
# origin one by one, or all at once.
TIMED_OUT_SHARED_SECONDS: Final = 1
NO_STORE: Final = CacheControlHeader(no_store=True)
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


def _positioned(chunk: Chunk) -> dict[str, str]:
    headers = {
        NEXT_OFFSET: chunk.next_offset,
        COMPLETE_UNTIL: rfc3339(moment(chunk.complete_until)),
    }
    if chunk.up_to_date:
        headers[UP_TO_DATE] = "true"
    return headers


def _kept(shared: bool, *, whole: bool) -> dict[str, str]:
    if whole:
        return as_headers(immutable(shared))
    return as_headers(
        CacheControlHeader(
            public=shared or None,
            private=not shared or None,
            max_age=CHUNK_MAX_AGE,
            stale_while_revalidate=CHUNK_STALE_SECONDS,
        )
    )


# What caches may do with a chunk, written once, by (stream final, whole, shared): one
# of records may be kept a minute, by the client's cache or (shared) any, and for ever
# if it stops short of the tail (it can never hold other rows); one of rejections is
# revalidated (a replay may mark one `stored`).
_CACHING: Final = {
    (True, whole, shared): _kept(shared, whole=whole)
    for whole in (False, True)
    for shared in (False, True)
} | {
    (False, whole, shared): as_headers(CacheControlHeader(private=True, no_cache=True))
    for whole in (False, True)
    for shared in (False, True)
}
_TIMED_OUT: Final = {
    False: as_headers(NO_STORE),
    True: as_headers(CacheControlHeader(public=True, max_age=TIMED_OUT_SHARED_SECONDS)),
}


def _caching(
    shared: bool,
    listing: Listing[Any],
    chunk: Chunk,
    *,
    live: bool,
    offset: str | None,
    kept: int | None = None,
) -> dict[str, str]:
    # A long-poll's rows reach the tail by definition: kept as a chunk that does. So is a
    # chunk from the oldest row kept (`-1`, or no offset): retention moves where it starts.
    whole = not (live or chunk.up_to_date or offset in (None, "-1"))
    if whole and listing.final and kept is not None:
        # Kept no longer than the retention keeps its rows: then its offset is a 410.
        return as_headers(immutable(shared, kept))
    return _CACHING[listing.final, whole, shared]


def _body(streams: Streams, chunk: Chunk, select: Selection | None) -> bytes:
    """The chunk's JSON with what `select` keeps of each row: made once per projection
    for every reader given the chunk."""
    if select is None:
        return chunk.body
    return streams.encodings.of(
        chunk,
        (JSON, select.text),
        lambda: select.encoded(select.rows(chunk.body)),
        len,
        apart=True,
    )


def _etag(chunk: Chunk, select: Selection | None) -> ETag:
    """The chunk's tag, of its projection's own body where it has one."""
    if select is None:
        return ETag(value=chunk.etag)
    tagged = f"{chunk.etag}:{select.text}".encode()
    return ETag(value=hashlib.sha256(tagged).hexdigest()[:32])


def _sent(
    request: Request[Any, Any, Any],
    chunk: Chunk,
    streams: Streams | None = None,
    select: Selection | None = None,
) -> bytes:
    """The chunk's body, to answer with: the chunk (charged with its reads) lives until
    it is sent."""
    charge = charge_of(request.scope)
    if charge is not None:
        charge.keep(chunk)
    return chunk.body if streams is None else _body(streams, chunk, select)


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
    where: WhereFilter = None,
    select: SelectText = None,
) -> Response[Any]:
    streams, followers = paging.streams, paging.followers
    listing = streams.named(name)
    # A filtered stream is a stream of its own: its offsets are signed for its filter.
    keep = Filter(attribute, producer, record_id, message_id, field, where).of(listing)
    # A projection is not: it changes which fields a chunk's rows show, never its offsets.
    select_once(request)
    chosen = selected(listing, select, streams.reader)
    if request.scope.get(HEAD_REQUEST):
        tail = streams.position(listing, await streams.tail(listing, keep))
        return Response(b"", media_type=JSON, headers={NEXT_OFFSET: tail} | as_headers(NO_STORE))
    start = streams.start(listing, offset, keep)
    # Checked in every mode: a cursor that is none is a 400 wherever it is sent.
    next_cursor = cursor_after(cursor, at=offset or "")
    if live is None:
        if start is None:  # offset=now: nothing, and where the tail is
            now = streams.position(listing, await streams.tail(listing, keep))
            return Response(
                b"[]",
                media_type=JSON,
                headers={NEXT_OFFSET: now, UP_TO_DATE: "true"} | as_headers(NO_STORE),
            )
        chunk = await streams.chunk(listing, start)
        etag = _etag(chunk, chosen)
        headers = (
            _positioned(chunk)
            | as_headers(etag)
            | _caching(
                shareable(request, followers),
                listing,
                chunk,
                live=False,
                offset=offset,
                kept=streams.reader.kept_seconds(start.after_time),
            )
        )
        if unchanged(request, etag):
            return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(_sent(request, chunk, streams, chosen), media_type=JSON, headers=headers)
    # A seat among the followers, taken before anything is awaited: long-polls and
    # streams asking at once cannot all pass the check.
    seat = followers.admit()
    try:
        if start is None:
            start = await streams.tail(listing, keep)
        if live == "sse":
            await streams.reader.check_filter(listing, keep)
            return _sse(request, paging, listing, start, cursor, seat, chosen)
    except BaseException:
        seat.release()
        raise
    async with until_gone(request, followers, seat) as follow:
        chunk = await streams.chunk(listing, start, follow=follow, wait=followers.long_poll_seconds)
    headers = _positioned(chunk) | {CURSOR: next_cursor}
    shared = shareable(request, followers)
    # Shared only among the followers that sent this offset and cursor together.
    waited = _TIMED_OUT[shared and listing.final]
    if not chunk.rows and chunk.up_to_date:
        headers[UP_TO_DATE] = "true"
        return Response(b"", status_code=HTTP_204_NO_CONTENT, headers=headers | waited)
    # (No rows and not up to date: rows read and none kept, `Reader.keyed_filter`; its
    # offset goes on after them.)
    etag = _etag(chunk, chosen)
    # From `now`, where the rows start is the tail when the request came: a follower
    # asking that URL later must not be sent back to it, so it is kept as a 204 is.
    kept = waited if offset == NOW else _caching(shared, listing, chunk, live=True, offset=offset)
    headers |= as_headers(etag) | kept
    return Response(_sent(request, chunk, streams, chosen), media_type=JSON, headers=headers)


_encode = msgspec.json.encode


def _sse(
    request: Request[Any, Any, Any],
    paging: Paging,
    listing: Listing[Any],
    start: PageToken,
    cursor: str | None,
    seat: Seat,
    select: Selection | None = None,
) -> EventStream:
    followers = paging.followers
    # Done once the client leaves or the service stops.
    stop, watched = stop_of(request)
    seat.until(stop)
    chunks = ChunkEvents(paging.streams, listing, start, cursor, select)
    seconds = min(followers.stream_seconds, SSE_SECONDS)
    return EventStream(
        followers.follow(stop, seat=seat).events(chunks, seconds=seconds),
        stop=stop,
        watched=watched,
        slow_seconds=followers.slow_seconds,
        headers=STREAMING,
    )


class ChunkEvents:
    """A stream's chunks as SSE (§5.8, `Follow.events`): the first read whatever it
    holds, then each that has rows, as its `event: data` and an `event: control`
    saying where the stream stands."""

    __slots__ = (
        "cursor",
        "done",
        "last_cursor",
        "limit",
        "listing",
        "max_bytes",
        "select",
        "sending",
        "streams",
        "told",
    )

    def __init__(
        self,
        streams: Streams,
        listing: Listing[Any],
        start: PageToken,
        cursor: str | None,
        select: Selection | None = None,
    ) -> None:
        self.streams = streams
        # What each row shows: a chunk's events are made once per projection.
        self.select = select
        self.listing = listing
        self.cursor = start
        self.limit = streams.page_rows
        self.max_bytes = SSE_EVENT_BYTES
        # The last `Stream-Cursor` sent (or the one the client sent back).
        self.last_cursor = cursor
        # Whether a control event said where the stream stands.
        self.told = False
        self.done = False
        # The chunk whose events are being sent: it (charged with its reads) lives until
        # the stream reads again, so what is sent of it is counted while it is held.
        self.sending: Chunk | None = None

    async def sent(self, read: Excerpt[Any]) -> Event | None:
        streams = self.streams
        self.sending = None
        chunk = await streams.chunk_of(self.listing, self.cursor, read, self.max_bytes)
        self.cursor = chunk.after
        if not chunk.rows and self.told:
            return None
        self.told = True
        self.last_cursor = cursor_after(self.last_cursor)
        control = Control(
            streamNextOffset=chunk.next_offset,
            streamCursor=self.last_cursor,
            upToDate=chunk.up_to_date,
        )
        self.sending = chunk
        return _with_data(streams, chunk, event(b"control", _encode(control)), self.select)

    def end(self, failed: RetryLater | None) -> None:
        # The client reconnects from the last offset it was given.
        self.sending = None


def _with_data(
    streams: Streams, chunk: Chunk, control: bytes, select: Selection | None = None
) -> Event:
    """The chunk's `event: data` (made once for every stream that sends it with the same
    projection), then `control`; pieces, its body not copied, when that is larger than
    a slice."""
    if not chunk.rows:
        return control
    data = streams.encodings.of(
        chunk,
        EVENT_STREAM if select is None else (EVENT_STREAM, select.text),
        lambda: framed(b"data", _body(streams, chunk, select)),
        event_bytes,
        apart=select is not None,
    )
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

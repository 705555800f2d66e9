"""The Durable Streams read side: each paged list as a stream of JSON arrays.

`/v1/streams/records` and `/v1/streams/rejections` are the lists of `/v1/records`
and `/v1/rejections` in the protocol's JSON mode, read by the same `Reader`; what
differs is an offset (`app.query.offsets`) for a page token, and chunks sized for a
reader far behind. A chunk ends where the rows of one microsecond end, so an
offset names a position below the read horizon and moves only when a row becomes
readable.

Design: docs/streams.md#what-the-protocol-gets-here
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any, Final

import msgspec

from app.errors import BadParameter, NotFound
from app.query.events import Encodings
from app.query.follow import Follow
from app.query.offsets import BEGINNING, NOW, Offsets
from app.query.page_token import PageToken
from app.query.service import MAX_LIMIT, RECORDS, REJECTIONS, Excerpt, Listing, Reader
from app.store import ROW_BYTES, row_bytes
from app.store.filters import RowFilter

STREAMS: Final[dict[str, Listing[Any]]] = {"records": RECORDS, "rejections": REJECTIONS}
# A chunk holds at most this many bytes of rows (`row_bytes`), or its first row alone
# when that is larger, read from the store at once: a reader far behind gets few large
# responses, each one read of the store (20,000 records of 333 bytes in two; once, in
# reads of a page's 1,000 rows, they took 21), which stops at the bytes the chunk has
# room for. No count of rows bounds it beside its bytes but the most rows they can be
# (CHUNK_ROWS), which the store is asked for.
CHUNK_BYTES: Final = 8 * 1024 * 1024
CHUNK_ROWS: Final = CHUNK_BYTES // ROW_BYTES
# Rows read at once: the API's largest page.
PAGE_ROWS: Final = MAX_LIMIT

# Cursors (protocol §10.1, "Server-Generated Cursors"): 20-second intervals
# counted from 2024-10-09T00:00:00Z, and a cursor sent back at or ahead of the
# current one answered with a later one, by 1 to 3,600 seconds of jitter.
CURSOR_EPOCH_SECONDS: Final = 1_728_432_000
CURSOR_INTERVAL_SECONDS: Final = 20
_JITTER_SECONDS: Final = (1, 3600)
# A cursor a client sends back is at most this many digits: intervals since the
# epoch fit in 8 for the next thousand years.
CURSOR_DIGITS: Final = 15

_encode = msgspec.json.encode


class Control(msgspec.Struct, omit_defaults=True):
    """What follows each batch of an SSE stream (protocol §5.8, `event: control`)."""

    streamNextOffset: str
    streamCursor: str | None = None
    upToDate: bool = False


class Chunk:
    """One response's worth of a stream: a JSON array of rows and where it ends.

    Made once per read a follower shares, so a thousand followers woken by one
    commit get the same bytes, encoded once (`app.query.events`)."""

    __slots__ = (
        "__weakref__",
        "after",
        "body",
        "complete_until",
        "etag",
        "next_offset",
        "rows",
        "up_to_date",
    )

    def __init__(
        self,
        body: bytes,
        rows: int,
        after: PageToken,
        next_offset: str,
        up_to_date: bool,
        etag: str,
        complete_until: int,
    ) -> None:
        self.body = body
        # The cursor the next chunk reads after, which `next_offset` encodes.
        self.after = after
        self.rows = rows
        self.next_offset = next_offset
        self.up_to_date = up_to_date
        self.etag = etag
        self.complete_until = complete_until


def cursor_after(sent: str | None, *, now: float | None = None, at: str | None = None) -> str:
    """The `Stream-Cursor` to answer a live read with (§10.1): the current interval,
    or, for a cursor sent back at or ahead of it, one strictly later. A long-poll's
    jitter is drawn from where it reads (`at`, its offset) and the cursor sent: every
    answer to one URL names the same next one, so the followers a shared cache answers
    together stay together, the cache's own retries included."""
    seconds = time.time() if now is None else now
    current = int(seconds - CURSOR_EPOCH_SECONDS) // CURSOR_INTERVAL_SECONDS
    if sent is None:
        return str(current)
    if not sent.isascii() or not sent.isdigit() or len(sent) > CURSOR_DIGITS:
        raise BadParameter("cursor", "not a cursor: send back the last Stream-Cursor as it came")
    echoed = int(sent)
    if echoed < current:
        return str(current)
    low, high = _JITTER_SECONDS
    if at is None:
        jitter = random.randint(low, high)
    else:
        drawn = hashlib.sha256(f"{at}:{sent}".encode()).digest()
        jitter = low + int.from_bytes(drawn[:4]) % (high - low + 1)
    return str(echoed + max(1, -(-jitter // CURSOR_INTERVAL_SECONDS)))


def _scope(keep: RowFilter | None) -> str:
    """What a filtered stream's offsets are signed for besides the stream: its filter."""
    if keep is None:
        return ""
    return hashlib.sha256(msgspec.msgpack.encode(keep)).hexdigest()[:32]


class Streams:
    """The streams of one service: their offsets, and chunks read by the Reader; what
    a chunk's followers are sent is made once (`encodings`, the followers' own)."""

    def __init__(
        self,
        reader: Reader,
        offsets: Offsets,
        *,
        encodings: Encodings | None = None,
        page_rows: int = PAGE_ROWS,
        chunk_rows: int = CHUNK_ROWS,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.reader = reader
        self.encodings = Encodings() if encodings is None else encodings
        self._offsets = offsets
        # Rows read at once, for a chunk.
        self.page_rows = page_rows
        self._chunk_rows = chunk_rows
        self._chunk_bytes = chunk_bytes

    @staticmethod
    def named(name: str) -> Listing[Any]:
        listing = STREAMS.get(name)
        if listing is None:
            raise NotFound(f"no stream {name!r}: the streams are {', '.join(STREAMS)}")
        return listing

    def offset(self, listing: Listing[Any], key: tuple[int, str]) -> str:
        return self._offsets.encode(listing.name, *key)

    def start(
        self, listing: Listing[Any], offset: str | None, keep: RowFilter | None = None
    ) -> PageToken | None:
        """The cursor an `offset` parameter names in the stream of the rows `keep`
        matches, None for `now` (the tail, which takes a read to find); 400 if it is no
        offset of this stream (of that filter), 410 if older than the retention."""
        self.reader.refuse_masked(keep)
        if offset == NOW:
            return None
        cursor = None
        if offset is not None and offset != BEGINNING:
            cursor = self._offsets.decode(listing.name, offset, scope=_scope(keep))
        started = self.reader.start(listing, cursor, sent_as="offset")
        return msgspec.structs.replace(started, filter=keep)

    async def tail(self, listing: Listing[Any], keep: RowFilter | None = None) -> PageToken:
        """The position after the newest readable row: where `offset=now` reads from,
        and what HEAD names. It moves only when a row becomes readable (a quiet
        stream's stays put), and never before the oldest row kept. (The newest row of
        all: a filtered stream's rows lie after it too.)"""
        self.reader.refuse_masked(keep)
        newest = await self.reader.newest(listing)
        start = self.reader.start(listing, None, sent_as="offset")
        if newest is not None and newest[0] + 1 > start.after_time:
            start = PageToken(newest[0] + 1, "", None, listing=listing.name)
        return msgspec.structs.replace(start, filter=keep)

    def position(self, listing: Listing[Any], cursor: PageToken) -> str:
        return self._offsets.encode(
            listing.name, cursor.after_time, cursor.after_message_id, scope=_scope(cursor.filter)
        )

    async def chunk(
        self,
        listing: Listing[Any],
        cursor: PageToken,
        *,
        follow: Follow | None = None,
        wait: float = 0.0,
        max_bytes: int | None = None,
    ) -> Chunk:
        """The rows after `cursor` as one chunk, of about `max_bytes` at most (by default
        CHUNK_BYTES); for a `follow`er, waiting up to `wait` for some if none are
        readable yet (`app.query.follow`)."""
        budget = self._chunk_bytes if max_bytes is None else max_bytes
        # As many rows as its bytes can be, read at once.
        rows = min(self._chunk_rows, max(1, budget // ROW_BYTES))
        if follow is not None:
            # Bounded: each store read under the store's own deadline, the wait by `wait`.
            first = await follow.read(listing, cursor, rows, budget, wait=wait)
        else:
            # Its views are only encoded: as the store makes them, where it can.
            first = await self.reader.excerpt(listing, cursor, rows, budget, encoded=True)
        return await self.chunk_of(listing, cursor, first, budget)

    async def chunk_of(
        self, listing: Listing[Any], cursor: PageToken, first: Excerpt[Any], budget: int
    ) -> Chunk:
        """The chunk that starts with `first`, the read after `cursor`: at the tail, the
        read's alone (made once for every follower given it); else, for a reader
        behind, with the reads after it, up to the chunk's rows and `budget`."""
        if not first.full:
            return self.encodings.of(
                first,
                (Streams, budget),
                lambda: self._chunk(listing, cursor, [first], budget),
                lambda chunk: len(chunk.body),
            )
        reads = [first]
        rows, size = len(first.rows), first.size
        # A read cut short for want of room in the budget ends the chunk: the next
        # request goes on from there, not this one with a store read for each 64 KiB.
        while reads[-1].full and not reads[-1].short and rows < self._chunk_rows and size < budget:
            last = reads[-1]
            after = PageToken(*last.resume, None, listing=listing.name, filter=cursor.filter)
            more = await self.reader.excerpt(
                listing, after, self._chunk_rows - rows, budget - size, encoded=True
            )
            reads.append(more)
            rows += len(more.rows)
            size += more.size
        return self._chunk(listing, cursor, reads, budget)

    def _chunk(
        self, listing: Listing[Any], cursor: PageToken, reads: list[Excerpt[Any]], budget: int
    ) -> Chunk:
        rows = [row for read in reads for row in read.rows]
        views = [v for read in reads for v in read.views]
        last = reads[-1]
        # Past about `budget` bytes, the rest waits for the next chunk (each read knows
        # no less than what its rows take: counted row by row only past the budget).
        size, keep = 0, len(rows)
        if sum(read.size for read in reads) > budget:
            for at, row in enumerate(rows):
                size += row_bytes(row)
                if size > budget and at:
                    keep = at
                    break
        # The time of the first row left for the next chunk, where it is known (None
        # past a full read: more may share its last row's time).
        following = rows[keep].ingest_time if keep < len(rows) else None
        more = last.full or following is not None
        rows, views = rows[:keep], views[:keep]
        if not rows and last.full:
            # Rows read, none kept (`Reader.keyed_filter`): on after them, more to come.
            up_to_date, after = False, last.resume
        elif not rows:
            # Nothing new: the offset its last read began at, the tail's: as it was asked
            # with, or past the rows read before it and none kept (`Reader.keyed_filter`),
            # which the next chunk would otherwise read again, never moving on.
            up_to_date, after = True, (last.cursor.after_time, last.cursor.after_message_id)
        elif not more:
            # Every row before the horizon is here: the next starts after the last
            # row's microsecond (a time alone, however many rows shared it).
            up_to_date, after = True, (rows[-1].ingest_time + 1, "")
        else:
            up_to_date = False
            # The chunk ends with its last whole microsecond: one whose rows are all
            # in it (the next row's time is later, or, unknown, the one before is).
            end = len(rows)
            if following is None or following == rows[-1].ingest_time:
                end -= 1
                while end > 0 and rows[end - 1].ingest_time == rows[end].ingest_time:
                    end -= 1
            if end > 0:
                rows, views = rows[:end], views[:end]
                after = (rows[-1].ingest_time + 1, "")
            else:
                # One microsecond holds more rows than a chunk: this offset names a row.
                after = (rows[-1].ingest_time, rows[-1].message_id)
        body = _encode(views)
        next_offset = self._offsets.encode(listing.name, *after, scope=_scope(cursor.filter))
        start = self.position(listing, cursor)
        # A record never changes, so two offsets name the same rows for ever (shown
        # otherwise to a masked reader, whose tags are its own); a rejection may yet be
        # marked `stored`, so its chunk is known by its bytes.
        shown = "masked" if self.reader.mask is not None else "whole"
        tagged = f"{listing.name}:{start}:{next_offset}:{shown}".encode() if listing.final else body
        etag = hashlib.sha256(tagged).hexdigest()[:32]
        # Up to when the rows sent are all the rows there are (for Recordline-Complete-Until).
        complete_until = last.complete_until if up_to_date else after[0]
        resume = PageToken(*after, None, listing=listing.name, filter=cursor.filter)
        chunk = Chunk(body, len(rows), resume, next_offset, up_to_date, etag, complete_until)
        # Its body is charged with the reads it was made of, as long as it lives.
        for read in reads:
            read.held_by(chunk)
        return chunk

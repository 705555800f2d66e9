"""Following a list: every follower's reads and waits, in one place.

A follower reads the rows after its cursor; finding none, it waits until the store
reports rows (`app.store.live`, following's store side) and reads again, until its
time is up, its client leaves or the service stops. Followers at the same cursor at the same moment
share one read (`SharedReads`) and its encodings (`app.query.events`). The ways to
follow (a page that waits, a stream of pages, the Durable Streams long-poll and SSE)
only encode what a `Follow` reads; the stores only report.
docs/reading.md#following-the-tail
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

import cachetools

from app.budget import Places
from app.errors import BadParameter, RetryLater, TooManyFollowers
from app.query.events import HEARTBEAT, Encodings, Event
from app.query.page_token import PageToken
from app.query.served import served
from app.query.service import AnyPage, Excerpt, Listing, Reader

log = logging.getLogger(__name__)

# The longest a page may wait for rows (`wait`): a minute keeps a request well
# inside every proxy's idle timeout, and a follower asks again at once.
MAX_WAIT_SECONDS: Final = 60.0
DEFAULT_MAX_FOLLOWERS: Final = 1000
# A stream whose client takes no event for this long (its connection's buffers full)
# is cut off, and what it held dropped: it held one event meanwhile, never more, and
# reconnects from where it was (SEND_TIMEOUT_SECONDS).
SLOW_FOLLOWER_SECONDS: Final = 30.0
# How long a stream's long-poll waits for rows before its 204: under the 30 s
# many HTTP clients give a response (the Durable Streams Python client's default).
DEFAULT_LONG_POLL_SECONDS: Final = 20.0
# A stream with nothing new sends a heartbeat comment this often: half the 30 s read
# timeout of many HTTP clients, so a quiet stream is never taken for a dead one.
HEARTBEAT_SECONDS: Final = 15.0
# A full instance is asked again after this long: followers end within a stream's
# life, and a retry may reach another instance.
FULL_RETRY_SECONDS: Final = 5
# A read made for a follower is given to the followers asking for the same one
# within this long (and no rows reported since): at most this much older than a read of
# its own, and a thousand followers woken at once cost a few reads.
SHARED_READ_SECONDS: Final = 0.05
SHARED_READS: Final = 4096

# A read followers share: the table, the cursor, at most how many rows and bytes.
SharedKey = tuple[Any, PageToken, int, int]


class SharedRead:
    """A read that followers share: when it began (monotonic), and it."""

    __slots__ = ("begun", "read")

    def __init__(self, begun: float, read: asyncio.Future[Any]) -> None:
        self.begun = begun
        self.read = read


class SharedReads:
    """Followers' reads, by what was asked, made since the store last reported rows and within
    SHARED_READ_SECONDS. Each is dropped once that time has passed (`_forget`), not
    when the cache is next touched: an idle instance would otherwise keep the last
    reads its followers made."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self._shared: cachetools.TTLCache[SharedKey, SharedRead] = cachetools.TTLCache(
            maxsize=SHARED_READS, ttl=SHARED_READ_SECONDS, timer=time.monotonic
        )
        self._version = -1

    async def read(
        self,
        listing: Listing[AnyPage],
        cursor: PageToken,
        limit: int,
        max_bytes: int,
        asked: float,
    ) -> Excerpt[AnyPage]:
        """The read after `cursor` for a follower who asked at `asked`: one read for
        every follower at that cursor within SHARED_READ_SECONDS, with no rows reported
        since, and begun after the follower asked (its barrier then covers all
        that follower was acknowledged). A read made a moment ago was complete then,
        so it is a true answer now (the next read starts where it ends)."""
        version = self._reader.live.version
        if version != self._version:
            self._shared.clear()
            self._version = version
        key = (listing.kind, cursor, limit, max_bytes)
        while True:
            shared = self._shared.get(key)
            if shared is None or shared.begun < asked:
                return await self._read_for_all(key, listing, cursor, limit, max_bytes)
            try:
                # Shielded: one follower leaving (cancelled) ends no one else's wait.
                found: Excerpt[AnyPage] = await asyncio.shield(shared.read)
                # Read once for every follower at this cursor: each was served its rows.
                served(len(found.rows), masked=self._reader.mask is not None)
                return found
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not shared.read.cancelled() or (current is not None and current.cancelling()):
                    raise
                # The follower reading for all left before it was done: read anew.

    async def _read_for_all(
        self,
        key: SharedKey,
        listing: Listing[AnyPage],
        cursor: PageToken,
        limit: int,
        max_bytes: int,
    ) -> Excerpt[AnyPage]:
        """The read at `key`, made in this follower's own task and given to every
        follower that asks for it meanwhile. No task of its own: a follower at the tail,
        woken by a write, reads the tail and is answered in the same step of the loop,
        ahead of the work the write's other waiters do."""
        loop = asyncio.get_running_loop()
        read: asyncio.Future[Excerpt[AnyPage]] = loop.create_future()
        shared = self._shared[key] = SharedRead(time.monotonic(), read)
        loop.call_later(SHARED_READ_SECONDS, self._forget, key, shared)
        try:
            found = await self._reader.excerpt(listing, cursor, limit, max_bytes)
        except BaseException as exc:
            if self._shared.get(key) is shared:
                del self._shared[key]  # a read that failed is not handed to the next follower
            if isinstance(exc, asyncio.CancelledError):
                read.cancel()
            else:
                read.set_exception(exc)
                read.exception()  # those waiting for it raise it; nobody else need
            raise
        read.set_result(found)
        return found

    def _forget(self, key: SharedKey, shared: SharedRead) -> None:
        """Drop a shared read once it is too old to be shared (if no later one took its
        key): a TTLCache drops what expired only when it is next written."""
        self._shared.expire()
        if self._shared.get(key) is shared:
            with contextlib.suppress(KeyError):  # expired as it is dropped
                del self._shared[key]


class Seat:
    """A follower's place among those an app holds (`Followers.admit`): taken as it is
    admitted, before anything is awaited (so that followers asking at once cannot all
    pass the check), and given back once, as it leaves (`release`)."""

    __slots__ = ("held", "places", "stop")

    def __init__(self, places: Places) -> None:
        self.places = places
        self.held = True
        # What gives it back if its follower never does (`until`).
        self.stop: asyncio.Future[None] | None = None
        places.take()

    def until(self, stop: asyncio.Future[None]) -> None:
        """Give the place back once `stop` is done, if it was not before: a stream's seat,
        whose stream may never start. `stop` may be its connection's, which outlives the
        stream on a kept connection: the seat lets go of it as it is released."""
        self.stop = stop
        stop.add_done_callback(self.release)

    def release(self, *_: object) -> None:
        """Give the place back (once; a done callback's argument is ignored)."""
        if self.held:
            self.held = False
            self.places.give()
        stop, self.stop = self.stop, None
        if stop is not None:
            stop.remove_done_callback(self.release)


class _Following:
    """`Followers.following`: a context manager of slots, where contextlib's made of a
    generator held 400 bytes an idle follower."""

    __slots__ = ("followers", "seat", "stop")

    def __init__(self, followers: Followers, stop: asyncio.Future[None], seat: Seat) -> None:
        self.followers = followers
        self.stop = stop
        self.seat = seat

    def __enter__(self) -> None:
        self.followers.joined(self.stop)

    def __exit__(self, *_: object) -> None:
        self.followers.left(self.stop)
        self.seat.release()


class _Admitted:
    """What the followers of one app count and stop together, whichever reader each
    reads by (`Followers.reading`)."""

    __slots__ = ("places", "stopping", "stops")

    def __init__(self, places: Places) -> None:
        # Waiting pages and open streams now, and the most (in a cell, the system's share).
        self.places = places
        # True once the service starts stopping (SIGTERM): waits end, streams say
        # where to resume, so the grace period is enough for every one.
        self.stopping = False
        # What ends each waiting page and open stream early.
        self.stops: set[asyncio.Future[None]] = set()


class Followers:
    """What every follower of one app shares: the reads and what is made of them, how
    many follow and the most, when they all stop, and how long each may."""

    def __init__(
        self,
        reader: Reader,
        *,
        stream_seconds: float,
        shared_cache: bool,
        max_open: int = DEFAULT_MAX_FOLLOWERS,
        places: Places | None = None,
        long_poll_seconds: float = DEFAULT_LONG_POLL_SECONDS,
        slow_seconds: float = SLOW_FOLLOWER_SECONDS,
    ) -> None:
        self.reader = reader
        self.shared = SharedReads(reader)
        self.encodings = Encodings()
        self.stream_seconds = stream_seconds
        # How long a stream may wait for its client to take one event.
        self.slow_seconds = slow_seconds
        self.long_poll_seconds = long_poll_seconds
        self.max_open = max_open
        # Whether answers may be kept by a cache that others share (`public`).
        self.shared_cache = shared_cache
        # Its places (in a cell, a share of the cell's), or `max_open` of its own.
        self._admitted = _Admitted(places if places is not None else Places(max_open))

    def reading(self, reader: Reader) -> Followers:
        """Followers reading by `reader` (a masked one, `app.query.mask`): reads of their
        own, shared among them alone, counted and stopped with these."""
        other = copy.copy(self)
        other.reader = reader
        other.shared = SharedReads(reader)
        return other

    @property
    def open(self) -> int:
        """Waiting pages and open streams now (for metrics and tests)."""
        return self._admitted.places.open

    @property
    def stopping(self) -> bool:
        """Whether the service stops (SIGTERM): waits end, streams say where to resume,
        so the grace period is enough for every one."""
        return self._admitted.stopping

    def admit(self) -> Seat:
        """A follower's seat, taken now; TooManyFollowers while this app holds `max_open`
        followers (waiting pages, long-polls and streams of either protocol): each holds
        a connection, a task and a wait, and a client opening thousands must not take
        them all. Taken before a stream's headers are sent, so it is refused with a
        status, never cut after its 200; the follower gives it back as it leaves
        (`following`), or whoever admitted it if it never follows."""
        places = self._admitted.places
        if places.full():
            where = "this instance holds" if places.pool is None else "this system holds"
            raise TooManyFollowers(
                f"{where} {places.open} waiting pages and streams, its most "
                "(RECORDLINE_MAX_FOLLOWERS); retry, or read without waiting",
                retry_after=FULL_RETRY_SECONDS,
            )
        return Seat(places)

    def stop(self) -> None:
        """The service stops: every wait ends now, and so does every stream."""
        admitted = self._admitted
        admitted.stopping = True
        for stop in admitted.stops:
            if not stop.done():
                stop.set_result(None)

    def following(self, stop: asyncio.Future[None], seat: Seat) -> _Following:
        """A waiting page or stream while inside, in its `seat`, given back on the way out;
        `stop` is done if the service stops."""
        return _Following(self, stop, seat)

    def joined(self, stop: asyncio.Future[None]) -> None:
        admitted = self._admitted
        if admitted.stopping and not stop.done():
            stop.set_result(None)
        admitted.stops.add(stop)

    def left(self, stop: asyncio.Future[None]) -> None:
        self._admitted.stops.discard(stop)

    def follow(
        self,
        stop: asyncio.Future[None] | None,
        *,
        seat: Seat | None = None,
        asked_at: float | None = None,
    ) -> Follow:
        """A follower in `seat` that asked at `asked_at` (monotonic; by default, now),
        until `stop`."""
        return Follow(self, stop, time.monotonic() if asked_at is None else asked_at, seat)

    def page_of(self, read: Excerpt[AnyPage], *, first: bool) -> AnyPage:
        """The API's page of a follower's read (`Reader.page_of`): the same page object
        for every follower given the read, so that it is encoded once for all of them."""
        if not read.rows:
            return self.reader.page_of(read, waited=True, first=first)
        return self.encodings.of(read, Reader, lambda: self.reader.as_page(read))


class FollowMode(Protocol):
    """What a protocol makes of a follower's reads, as a stream of events
    (`Follow.events`): where it reads next, and what it sends of each read."""

    listing: Listing[Any]
    # Where the next read starts, as what was sent so far leaves it.
    cursor: PageToken
    limit: int
    max_bytes: int
    # True once the stream has nothing more to say (a bounded range, complete).
    done: bool

    async def sent(self, read: Excerpt[Any]) -> Event | None:
        """The events a read makes, None for none; moves `cursor` past what they hold."""

    def end(self, failed: RetryLater | None) -> Event | None:
        """The last event of the stream, if any: `failed` ended it early."""


class Follow:
    """One follower, from `asked` (monotonic: what it was acknowledged before then is in
    every read it gets) until `stop` is done (its client left, or the service stops)."""

    __slots__ = ("asked", "followers", "seat", "stop")

    def __init__(
        self,
        followers: Followers,
        stop: asyncio.Future[None] | None,
        asked: float,
        seat: Seat | None = None,
    ) -> None:
        self.followers = followers
        self.stop = stop
        self.asked = asked
        # Its place among the followers (`Followers.admit`), held while it streams.
        self.seat = seat

    async def read(
        self,
        listing: Listing[AnyPage],
        cursor: PageToken,
        limit: int,
        max_bytes: int,
        *,
        wait: float,
    ) -> Excerpt[AnyPage]:
        """The rows after `cursor` (a read shared with the followers at the same cursor),
        or, with none, those readable once the store reports rows, `wait` seconds pass
        or `stop` is done, whichever comes first."""
        followers, stop = self.followers, self.stop
        reader, shared = followers.reader, followers.shared
        live = reader.live
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        seen = live.version
        read = await shared.read(listing, cursor, limit, max_bytes, self.asked)
        # (A read that kept none of the rows it read, full, is answered at once: its
        # token goes on after them, `Reader.keyed_filter`.)
        while not read.rows and not read.full and not reader.ended(cursor, read.resume):
            left = deadline - loop.time()
            if left <= 0 or (stop is not None and stop.done()):
                break
            await live.wait(seen, left, stop)
            seen = live.version
            read = await shared.read(listing, cursor, limit, max_bytes, self.asked)
        return read

    async def page(
        self, listing: Listing[AnyPage], cursor: PageToken, limit: int, *, wait: float, first: bool
    ) -> AnyPage:
        """The page after `cursor`, waiting up to `wait` seconds for rows if none are
        readable yet (a long-poll); `first`: the cursor came from `since`, not a token."""
        if not 0 <= wait <= MAX_WAIT_SECONDS:
            raise BadParameter("wait", f"must be between 0 and {MAX_WAIT_SECONDS:g} seconds")
        reader = self.followers.reader
        read = await self.read(listing, cursor, limit, reader.page_bytes, wait=wait)
        return self.followers.page_of(read, first=first)

    async def events(self, mode: FollowMode, *, seconds: float) -> AsyncIterator[Event]:
        """A stream's events, as `mode` makes them of each read, for `seconds` at most,
        until `stop` or a read fails (`mode.end` then says so): each read that finds
        rows, and a heartbeat once the stream was quiet for the heartbeat interval."""
        followers, stop, seat = self.followers, self.stop, self.seat
        assert stop is not None  # a stream ends when its client leaves
        assert seat is not None  # and holds a place among the followers
        live = followers.reader.live
        loop = asyncio.get_running_loop()
        ends = loop.time() + seconds
        quiet_since = loop.time()
        failed: RetryLater | None = None
        with followers.following(stop, seat):
            while not stop.done() and loop.time() < ends:
                seen = live.version
                try:
                    read = await followers.shared.read(
                        mode.listing, mode.cursor, mode.limit, mode.max_bytes, self.asked
                    )
                    sent = await mode.sent(read)
                except RetryLater as exc:
                    # The store did not answer: the stream ends, saying where to resume.
                    log.warning("a stream of %s ended early: %s", mode.listing.name, exc.detail)
                    failed = exc
                    break
                if sent is not None:
                    # The read lives while its events are sent: it is charged to the
                    # budget (`app.budget`) with what is made of it, until the client
                    # has taken them or the follower leaves.
                    yield sent
                    del read, sent  # an idle stream holds its position, not what it sent
                    quiet_since = loop.time()
                    if mode.done:
                        break
                    continue
                if mode.done:
                    break
                full = read.full
                del read
                if full:
                    # Rows read and none kept (`Reader.keyed_filter`): read on, saying it
                    # is alive as while it waits, so that no proxy cuts a busy stream.
                    if loop.time() >= quiet_since + HEARTBEAT_SECONDS:
                        yield HEARTBEAT
                        quiet_since = loop.time()
                    continue
                # Nothing new: wait for rows here, where an idle follower holds
                # the least (no read under way), and say it is alive now and then.
                beat = quiet_since + HEARTBEAT_SECONDS
                left = min(beat, ends) - loop.time()
                if left > 0 and await live.wait(seen, left, stop):
                    continue
                if loop.time() >= beat and not stop.done():
                    yield HEARTBEAT
                    quiet_since = loop.time()
        end = mode.end(failed)
        if end is not None:
            yield end

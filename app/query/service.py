"""Reading records: keyset pages that a follower can walk without gaps.

A page never reaches past the read horizon: the ingest time below which every
record is already committed (rows still queued or being appended in this
process, and for a shared store the settle window of other instances). A row
that commits late therefore still lands after the cursor of every page served
so far, and a client that keeps following `next_page_token` while writes
continue sees every record exactly once.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any, Final, Generic, Literal, TypeVar, cast

import msgspec

from app.budget import Budget, Charge, Share
from app.errors import BadParameter, Gone, MaskedFilter, NotFound
from app.query.charged import Charged, look_up, read_charged
from app.query.mask import Mask
from app.query.page_token import PageToken, PageTokens
from app.query.served import served, told
from app.records import (
    DAY_MICROS,
    EPOCH,
    TABLES,
    Kind,
    Record,
    Rejection,
    columns,
    micros,
    moment,
)
from app.store import (
    MAX_BUCKETS,
    READ_ROUTE,
    UNSHOWN_COLUMNS,
    CountQuery,
    PageQuery,
    Shown,
    Store,
    most_row_bytes,
    row_bytes,
)
from app.store.copies import LaterCopies
from app.store.filters import RowFilter
from app.store.live import Live
from app.store.where import (
    MAX_WHERE_BYTES,
    Expression,
    Keyed,
    matches,
    parse,
    reads,
    relaxed,
    text,
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# A page holds at most this many bytes of rows (`app.store.row_bytes`: about what they
# take in its JSON), or its first row alone when that is larger: a page of 1,000
# records of 4 MB was once 4 GB, built three times over (rows, views, body). It may
# then hold fewer than `limit` rows, and its token resumes after the last.
PAGE_BYTES = 4 * 1024 * 1024
_FOREVER = 2**62
# How far back `Reader.newest` looks first (µs), and how much further each time.
_NEWEST_FIRST_SPAN = 1_000_000
_NEWEST_SPAN_GROWTH = 60
# A newest-first page (`Reader.newest_page`) reads windows back from its ceiling, a
# second first, each this many times longer than the last while they hold few rows;
# in one that holds more than a read takes, the newest rows are looked for by halves;
# after this many reads it ends with what it has, its token going on from there.
_BACK_SPAN_GROWTH = 8
_BACK_MAX_READS = 48
# The store reads one read may make for a filter the service answers in part (a keyed
# hash, `keyed_filter`) while each finds rows but none it keeps: past them it ends
# empty, its token (or cursor) after the rows examined, so no request scans for long.
KEYED_READS: Final = 10


class RecordView(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """A stored record as the API shows it (untracked by the garbage collector, as a
    row is: plain values, frozen)."""

    message_id: str
    id: str
    timestamp: datetime | None
    # JSON exactly as published, embedded without being parsed again.
    data: msgspec.Raw
    attributes: msgspec.Raw
    publish_time: datetime
    ingest_time: datetime
    subscription: str | None
    delivery_attempt: int | None
    trace_id: str | None
    # The topic schema revision the payload was decoded with; null for JSON without one.
    schema: str | None


class RejectionView(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """A stored rejection as the API shows it: the raw payload, and why it was refused."""

    message_id: str
    reason: str
    # Bytes exactly as received, base64 (msgspec encodes bytes so in JSON).
    data: bytes
    attributes: msgspec.Raw
    publish_time: datetime
    ingest_time: datetime
    subscription: str | None
    delivery_attempt: int | None
    # The topic schema revision the message named, which it did not fit.
    schema: str | None
    # True once the message was stored as a record since (a replay after a fix):
    # `/v1/messages/{id}` then answers `stored`, and replaying it again changes nothing.
    stored: bool = False


View = TypeVar("View", RecordView, RejectionView)


def view(view_type: type[View], row: Record | Rejection) -> View:
    """`row` as the API shows it: each of the view's fields from the row's column of that
    name, converted as its kind says (a view leaves out what it does not declare):
    times as datetimes (`moment`), JSON as its text. Converted here, not by a function
    per value: a page of 100 records has 500 values to convert."""
    values = {}
    for name, kind in _viewing(view_type, type(row)):
        value = getattr(row, name)
        if value is not None:
            if kind is Kind.TIMESTAMP:
                value = EPOCH + timedelta(microseconds=value)
            elif kind is Kind.JSON:
                # The text itself, not a copy: encoded as UTF-8 where it is written.
                value = msgspec.Raw(value)
        values[name] = value
    return view_type(**values)


_EPOCH = moment(0)
_Raw = msgspec.Raw
_micros = timedelta


def record_view(r: Record) -> RecordView:
    """What `view(RecordView, r)` makes (`record_views`, for one record)."""
    return record_views([r])[0]


def record_views(rows: list[Record]) -> list[RecordView]:
    """What `view(RecordView, r)` makes of each, written out: half the time of the
    general way, and in one comprehension rather than a call a record (a page of 100
    is a ninth fewer calls). A reader far behind makes one per record (a test checks
    both agree)."""
    # timedelta(0, 0, t) is t microseconds, made a third faster than by keyword.
    return [
        RecordView(
            message_id=r.message_id,
            id=r.id,
            timestamp=None if r.timestamp is None else _EPOCH + _micros(0, 0, r.timestamp),
            data=_Raw(r.data),
            attributes=_Raw(r.attributes),
            publish_time=_EPOCH + _micros(0, 0, r.publish_time),
            ingest_time=_EPOCH + _micros(0, 0, r.ingest_time),
            subscription=r.subscription,
            delivery_attempt=r.delivery_attempt,
            trace_id=r.trace_id,
            schema=r.schema,
        )
        for r in rows
    ]


# A record's view's fields, in order: what a store that makes the views is asked for.
_RECORD_VIEW_FIELDS: Final = tuple(RecordView.__struct_fields__)


def shown_of(fields: Collection[str]) -> tuple[str, ...]:
    """What a read of records showing `fields` of each (a projection's) asks a store to
    show (`PageQuery.shown`): the view's fields without `data` or `attributes` where
    `fields` holds neither; nothing where it holds both, as nothing would be left out."""
    named = tuple(f for f in _RECORD_VIEW_FIELDS if f in fields or f not in UNSHOWN_COLUMNS)
    return () if named == _RECORD_VIEW_FIELDS else named


# What the process keeps of records' encoded views at most (`EncodedViews`), counted as
# their JSON, their message id (`sys.getsizeof`: a push may send 1 KiB of it, held by
# the key once the record is let go of) and ENCODED_ENTRY_BYTES each (what tracemalloc
# saw an entry take beside those: its key, its Shown and Raw, its place in the dict):
# 20,000 records of 333 bytes are 18 MiB.
ENCODED_BYTES: Final = 32 * 1024 * 1024
ENCODED_ENTRY_BYTES: Final = 512
_encode_view_into = msgspec.json.Encoder().encode_into


class EncodedViews:
    """Records' views as JSON, made once and shared by every read that only encodes
    them (a stream's chunks, for readers nothing is masked from), whichever system's:
    a record never changes, so neither does its view, nor what it counts as. Readers
    catching up from the same place read the same records, and their chunks are
    records' bytes joined and their sizes summed, not a view and a size made of each
    row again. Past `max_bytes`, the longest held go first; a record no longer held is
    made again when read."""

    def __init__(self, max_bytes: int = ENCODED_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._held: dict[tuple[object, int, str], Shown] = {}

    def __len__(self) -> int:
        return len(self._held)

    def of(self, owner: object, rows: list[Record]) -> list[Shown]:
        """`rows` of `owner`'s store as a store that makes their JSON gives them
        (`PageQuery.shown`): each view encoded as `record_views` makes it, with what it
        counts as (`row_bytes`, and `most_bytes`)."""
        held = self._held
        keys = [(owner, r.ingest_time, r.message_id) for r in rows]
        buffer = bytearray()
        shown = [held.get(key) for key in keys]
        missing = [at for at, found in enumerate(shown) if found is None]
        if missing:
            made = record_views([rows[at] for at in missing])
            for at, view in zip(missing, made, strict=True):
                record = rows[at]
                # Copied out of the buffer at its length: msgspec's own output keeps the
                # room it grew into (a third more of a large view), held with it.
                _encode_view_into(view, buffer)
                encoded = bytes(buffer)
                one = Shown(
                    record.message_id,
                    record.ingest_time,
                    row_bytes(record),
                    most_row_bytes(record),
                    msgspec.Raw(encoded),
                )
                shown[at] = one
                if held.setdefault(keys[at], one) is one:  # a row read twice is held once
                    self.bytes += counted(one)
            self._evict()
        return cast("list[Shown]", shown)

    def _evict(self) -> None:
        held = self._held
        while self.bytes > self.max_bytes and held:
            oldest = next(iter(held))
            self.bytes -= counted(held.pop(oldest))


def counted(shown: Shown) -> int:
    """What `EncodedViews` counts a view it holds as: its JSON, its message id (its
    key's, once the record is let go of) and ENCODED_ENTRY_BYTES."""
    return len(shown.view) + sys.getsizeof(shown.message_id) + ENCODED_ENTRY_BYTES


_KINDS = {row_type: {c.name: c.kind for c in columns(row_type)} for row_type in TABLES.values()}


@functools.cache
def _viewing(view_type: type[Any], row_type: type[Any]) -> tuple[tuple[str, Kind], ...]:
    """Each field of the view, and the kind of the row's column it comes from: worked out
    once per pair of types (reading a struct's fields evaluates its annotations)."""
    kinds = _KINDS[row_type]
    return tuple(
        (field.name, kinds[field.name])
        for field in msgspec.structs.fields(view_type)
        if field.name in kinds  # not a column (`stored`): the view works it out
    )


# Weakly referable: the encoding of a page a follower is sent is kept while the page
# lives, and no longer (`app.query.events`).
class RecordsPage(msgspec.Struct, frozen=True, weakref=True):
    records: list[RecordView]
    # Follow it to get what comes next; null only once a bounded (`until`)
    # range is complete.
    next_page_token: str | None
    # Every record ingested before this time is in this page or an earlier one.
    complete_until: datetime


class RejectionsPage(msgspec.Struct, frozen=True, weakref=True):
    rejections: list[RejectionView]
    next_page_token: str | None
    complete_until: datetime


AnyPage = TypeVar("AnyPage", RecordsPage, RejectionsPage)


def complete(page: RecordsPage | RejectionsPage, limit: int) -> bool:
    """Whether `page` can never change: `limit` rows, or fewer cut by its bytes. Such a
    page is complete up to its last row's time (`Reader.excerpt`); any other up to a
    later time, every row it holds lying before it."""
    rows = page.records if isinstance(page, RecordsPage) else page.rejections
    return len(rows) == limit or (bool(rows) and page.complete_until == rows[-1].ingest_time)


class Listing(msgspec.Struct, Generic[AnyPage], frozen=True):
    """One paged list of the API: which table's rows, shown as which view, in which page.

    The three go together (`RECORDS`, `REJECTIONS`); the tests of both lists check
    each view and page holds what its table stores.
    """

    kind: Any  # type[Record] or type[Rejection]
    view: Any  # type[RecordView] or type[RejectionView]
    page: type[AnyPage]
    # The list's name in its path (`/v1/records`), which its page tokens carry.
    name: str
    # Whether a full page can never change. A rejection can: it is marked
    # `stored` once a replay stores its message.
    final: bool


RECORDS = Listing(Record, RecordView, RecordsPage, "records", final=True)
REJECTIONS = Listing(Rejection, RejectionView, RejectionsPage, "rejections", final=False)


class LaterCopiesView(msgspec.Struct, kw_only=True, frozen=True):
    """Later copies of the message under its id that said something else (a topic
    recreated, an emulator whose ids start from 1 again): acknowledged, not stored, the
    first copy kept. As the instance answering saw them since it started."""

    count: int
    # What the last of them said otherwise: `id`, `data`, `attributes`.
    differs: list[str]
    last_seen: datetime


class MessageView(msgspec.Struct, kw_only=True, frozen=True):
    message_id: str
    status: Literal["stored", "rejected"]
    ingest_time: datetime
    reason: str | None = None
    record: RecordView | None = None
    later_copies_differ: LaterCopiesView | None = None


class CountsView(msgspec.Struct, kw_only=True, frozen=True):
    """How many rows of a list a filter keeps, per bucket of time: what a walk of the
    list's filtered pages over `[since, until)` would meet in each."""

    # The range counted, as asked (`until` now unless given).
    since: datetime
    until: datetime
    # Each bucket's length: bucket `i` holds the rows stored from `since + i * width`,
    # the last one cut at `until`.
    width_seconds: float
    # The rows counted, in all and per bucket (`buckets` of them, fewer only where the
    # range is no longer than `buckets * (buckets - 1)` microseconds).
    total: int
    counts: list[int]
    # Every row stored before this time is counted; none after it (the read horizon,
    # where `until` lies ahead of it): buckets past it may still grow.
    complete_until: datetime


class Excerpt(Generic[AnyPage]):
    """A list's rows after a cursor, as one read of the store had them: the rows, their views,
    where the next read goes on, and up to when it is complete. Both protocols encode
    it, each once however many followers it is given to (`app.query.events`, which
    holds it weakly): the API's page (`Reader.page`) and a stream's chunk
    (`app.query.streams`)."""

    __slots__ = (
        "__weakref__",
        "charge",
        "complete_until",
        "cursor",
        "full",
        "listing",
        "resume",
        "rows",
        "short",
        "size",
        "views",
    )

    def __init__(
        self,
        listing: Listing[AnyPage],
        cursor: PageToken,
        rows: list[Any],
        views: list[Any],
        resume: tuple[int, str],
        complete_until: int,
        full: bool,
    ) -> None:
        self.listing: Listing[AnyPage] = listing
        self.cursor = cursor
        # The store's rows (Record or Rejection), in key order, and each as the API shows it.
        self.rows = rows
        self.views = views
        # The key the next read continues after (past rows the store skipped).
        self.resume = resume
        # Every row before this (µs) is in this read or an earlier one.
        self.complete_until = complete_until
        # As many rows as asked for: more may follow at once.
        self.full = full
        # Read for fewer bytes than asked, for want of room in the process's budget.
        self.short = False
        # No less than what its rows take (`row_bytes`): what it is charged for.
        self.size = 0
        # What it and what is made of it hold of the process's budget, if counted.
        self.charge: Charge | None = None

    def held_by(self, holder: object) -> None:
        """What is charged for this read is held by `holder` (made of it) as well."""
        if self.charge is not None:
            self.charge.until_gone(holder)


class Reader:
    def __init__(
        self,
        store: Store,
        *,
        pending_horizon: Callable[[], int],
        tokens: PageTokens,
        retention_days: int = 0,
        clock: Callable[[], int] = time.time_ns,
        later_copies: LaterCopies | None = None,
        page_bytes: int = PAGE_BYTES,
        budget: Budget | None = None,
        share: Share | None = None,
        mask: Mask | None = None,
        encoded: EncodedViews | None = None,
    ) -> None:
        self._store = store
        # Records' views made once for the reads that only encode them (the process's).
        self._encoded = encoded
        # What each read is charged to before it holds rows (none: nothing is counted),
        # and the system's share of it in a cell.
        self._budget = budget
        self._share = share
        # What this reader's callers may not see (app.query.mask): a reader of its own,
        # with reads shared among its callers alone.
        self.mask = mask if mask else None
        # Later copies of stored messages that differed, for `message` to show.
        self._later_copies = later_copies
        self.page_bytes = page_bytes
        self._pending_horizon = pending_horizon
        self._tokens = tokens
        self._retention_days = retention_days
        self._clock = clock

    @property
    def live(self) -> Live:
        """Following's side of the store: what followers wait on (`app.query.follow`)."""
        return self._store.live

    def horizon(self) -> int:
        store = self._store.read_horizon(self._clock() // 1000)
        if self._store.stamps_at_commit:
            # Rows still queued here will commit later than any read now.
            return store
        return min(self._pending_horizon(), store)

    def kept_seconds(self, us: int) -> int | None:
        """Whole seconds until the retention may delete rows stored at `us` (0 once it
        may; None without a retention): how long an answer holding them may be kept."""
        if not self._retention_days:
            return None
        return max(0, (us - self._oldest_retained()) // 1_000_000)

    def _oldest_retained(self) -> int:
        if not self._retention_days:
            return 0
        return self._clock() // 1000 - self._retention_days * DAY_MICROS

    def _check_retained(self, parameter: str, us: int) -> None:
        """Refuse a bound older than the retention: rows after it may already be deleted.

        Deletion runs on a schedule (hourly on DuckDB, by partition on
        BigQuery), so a page there could be silently incomplete; 410 says so.
        Without a retention nothing is deleted, and no bound is too old.
        """
        if not self._retention_days:
            return
        oldest = self._oldest_retained()
        if us < oldest:
            raise Gone(
                parameter,
                f"older than the {self._retention_days}-day retention "
                f"(nothing before {moment(oldest).isoformat()} is kept); start again "
                "from a later time",
                retention_days=self._retention_days,
            )

    async def page(
        self,
        listing: Listing[AnyPage],
        *,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        page_token: str | None,
        max_bytes: int | None = None,
        filter: RowFilter | None = None,
        fields: Collection[str] | None = None,
    ) -> AnyPage:
        """One page of a list, in ingest order; records and rejections page alike, of at
        most `limit` rows and `max_bytes` of them (by default `page_bytes`). With a
        `filter`, of the rows it keeps (a token carries it to the next page). With
        `fields`, the caller shows those fields of each row alone (a projection): a
        record's `data` or `attributes` it does not show may be left unread, empty in the
        page's views (`PageQuery.shown`). A page that waits for rows is a follower's
        (`app.query.follow`)."""
        cursor = self.cursor(listing, since, until, limit, page_token, filter=filter)
        budget = self.page_bytes if max_bytes is None else max_bytes
        read = await self.excerpt(listing, cursor, limit, budget, fields=fields)
        return self.page_of(read, waited=False, first=page_token is None)

    async def newest_page(
        self,
        listing: Listing[AnyPage],
        *,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        page_token: str | None,
        filter: RowFilter | None = None,
        fields: Collection[str] | None = None,
    ) -> AnyPage:
        """One page of a list newest first: its newest `limit` rows (and `page_bytes` of
        them) before `until` or the read horizon, none older than `since`; its token
        reads on to older rows. Read through the list's own pages, forwards, in windows
        back from the ceiling: every store serves it as it serves a page. It is complete
        up to its ceiling, where a follower of newer rows starts (`since`). `fields` as
        `page` takes them."""
        cursor = self.cursor(listing, since, until, limit, page_token, filter=filter, newest=True)
        await self._store.barrier()
        horizon = self.horizon()
        if cursor.until is not None and cursor.until <= horizon:
            top = (cursor.until, cursor.before_message_id)
        else:
            top = (horizon, "")
        # No lower than the retention keeps now: a walk begun earlier ends there.
        floor = max(cursor.after_time, self._oldest_retained())
        taken: list[tuple[Any, Any]] = []  # (row, view), the newest first
        reads: list[Excerpt[AnyPage]] = []
        size = 0
        more = False
        end = top[0] + 1 if top[1] else top[0]  # rows before it, in time, are read
        span = _NEWEST_FIRST_SPAN
        floor_found = False
        # Where windows stop while the newest part of a window too full to read is looked
        # for: its oldest rows' last time, at or above which the newest rows are.
        low = floor
        for _ in range(_BACK_MAX_READS):
            if end <= floor:
                break
            begin = max(end - span, low)
            window = PageToken(begin, "", end, listing=listing.name, filter=cursor.filter)
            # As many rows as a read takes: a page of a few rows is found in one read.
            # One store read a window whatever the filter: one that read rows and kept
            # none (`keyed_filter`) is looked into by halves as one too full to read.
            read = await self.excerpt(
                listing, window, MAX_LIMIT, self.page_bytes, fields=fields, reads=1
            )
            if read.full and end - begin > 1:
                # More rows than one read takes: rows are at its last row's time, so the
                # newest lie between it and the end, looked for by halves.
                # (The last the service kept of them, where it filters in part.)
                low = read.rows[-1].ingest_time if read.rows else read.resume[0]
                span = max(1, (end - low + 1) // 2)
                continue
            found = [
                (r, v)
                for r, v in zip(read.rows, read.views, strict=True)
                if (r.ingest_time, r.message_id) < top
            ]
            if read.full:
                # All in one microsecond, more than a read takes: the newest are read last.
                found, held = await self._whole_window(listing, read, found, top, limit, fields)
                reads += held  # their charge lasts while the page holds their rows
            elif found:
                reads.append(read)  # its charge lasts while the page holds its rows
            for row, view in reversed(found):
                weight = row_bytes(row)
                if len(taken) == limit or (taken and size + weight > self.page_bytes):
                    more = True
                    break
                taken.append((row, view))
                size += weight
            if more:
                break
            end = begin
            if begin <= low:
                low = floor  # what was too full to read is read: on below it
            if low > floor:
                if not read.rows:
                    span = max(1, (end - low + 1) // 2)  # none here: the lower half next
            elif len(read.rows) * _BACK_SPAN_GROWTH < MAX_LIMIT:
                span *= _BACK_SPAN_GROWTH  # a window as dense would not overflow a read
            if not floor_found and end > floor:
                # Before looking further back: where the oldest row below is, if any (one
                # read, oldest first), so that no window reaches further.
                floor_found = True
                # (By what the store is asked alone: a row it keeps may be older than
                # the oldest the service's part of the filter keeps, never newer.)
                asked = self.keyed_filter(cursor.filter)[0]
                below = PageToken(floor, "", end, listing=listing.name, filter=asked)
                first = await self.excerpt(listing, below, 1, self.page_bytes, fields=fields)
                floor = first.rows[0].ingest_time if first.rows else end
        else:
            more = end > floor
        token = None
        if more:
            edge = taken[-1][0] if taken else None
            # Never above the page's own ceiling: a page that found nothing in its reads
            # goes on from where its windows ended, or from its ceiling.
            until_key = (edge.ingest_time, edge.message_id) if edge else min((end, ""), top)
            token = self._tokens.encode(
                PageToken(
                    floor,
                    "",
                    until_key[0],
                    listing=listing.name,
                    filter=cursor.filter,
                    newest=True,
                    before_message_id=until_key[1],
                )
            )
        page = listing.page([view for _, view in taken], token, moment(top[0]))
        for read in reads:
            read.held_by(page)
        return page

    async def _whole_window(
        self,
        listing: Listing[AnyPage],
        read: Excerpt[AnyPage],
        found: list[tuple[Any, Any]],
        top: tuple[int, str],
        limit: int,
        fields: Collection[str] | None = None,
    ) -> tuple[list[tuple[Any, Any]], list[Excerpt[AnyPage]]]:
        """The rest of a one-microsecond window after its first `read`: its rows before
        `top`, the newest `limit` and one more at most (so that a page of `limit` knows
        that more are left), and no more bytes than a page and one row; read as many rows
        at a time as a read takes whatever the page's `limit`, up to the ceiling. With
        them, the reads they came from, whose charge lasts while they are held."""
        kept: list[tuple[Any, Any, Excerpt[AnyPage]]] = [(r, v, read) for r, v in found]
        kept = self._newest_kept(kept, limit)
        cursor = read.cursor
        while read.full:
            cursor = PageToken(
                *read.resume, cursor.until, listing=listing.name, filter=cursor.filter
            )
            read = await self.excerpt(listing, cursor, MAX_LIMIT, self.page_bytes, fields=fields)
            for row, view in zip(read.rows, read.views, strict=True):
                if (row.ingest_time, row.message_id) < top:
                    kept.append((row, view, read))
            kept = self._newest_kept(kept, limit)
            if read.rows and (read.rows[-1].ingest_time, read.rows[-1].message_id) >= top:
                break  # the rest is at or after the ceiling
        held: list[Excerpt[AnyPage]] = []
        for _, _, source in kept:
            if not any(source is h for h in held):
                held.append(source)
        return [(r, v) for r, v, _ in kept], held

    def _newest_kept(self, rows: list[Any], limit: int) -> list[Any]:
        """The newest of `rows` (oldest first) that a page may take and one more: `limit`
        and one, and rows while those after them hold no more than a page's bytes."""
        size = 0
        start = len(rows)
        while start > 0 and len(rows) - start <= limit and size <= self.page_bytes:
            start -= 1
            size += row_bytes(rows[start][0])
        return rows[start:]

    def page_of(self, read: Excerpt[AnyPage], *, waited: bool, first: bool) -> AnyPage:
        """The API's page of a read. One that found nothing after waiting (`waited`)
        gives the cursor back as it came, with a fresh `complete_until`; one after
        `since` (`first`, not a token) says it is complete up to the read horizon at
        most."""
        page = self.as_page(read)
        if read.rows:
            return page
        listing = read.listing
        if waited and page.next_page_token is not None and not read.full:
            # A wait that found nothing gives the cursor back as it came: every
            # follower waiting at the tail asks the same URL, which a cache in front
            # can answer with one request to the service.
            page = listing.page([], self._tokens.encode(read.cursor), page.complete_until)
        if first:
            # A `since` later than anything readable (a future time): the page is
            # complete up to now, not up to that time, so a client's lag (now -
            # complete_until) is never negative. A token's cursor keeps its time:
            # another instance's page may have said it was complete up to there.
            now = moment(self.horizon())
            if page.complete_until > now:
                page = msgspec.structs.replace(page, complete_until=now)
        return page

    def as_page(self, read: Excerpt[AnyPage]) -> AnyPage:
        """The API's page of a read, as it is: it holds what the read is charged."""
        page = read.listing.page(
            read.views, self._next(read.cursor, *read.resume), moment(read.complete_until)
        )
        read.held_by(page)
        return page

    async def excerpt(
        self,
        listing: Listing[AnyPage],
        cursor: PageToken,
        limit: int,
        max_bytes: int,
        *,
        encoded: bool = False,
        fields: Collection[str] | None = None,
        reads: int = KEYED_READS,
    ) -> Excerpt[AnyPage]:
        """The read after `cursor` as the store has it now, of at most `limit` rows and
        `max_bytes` of them (the first row whatever its size; fewer bytes while the
        budget has less room): what both protocols page. Charged to the budget
        (`app.query.charged`) until nothing made of it is held any more. For a reader that only
        encodes the views (`encoded`), a record's view may be its JSON as the store made
        it (`PageQuery.shown`), a `msgspec.Raw` encoded as the view would be. For one that
        shows only `fields` of each row, a record's `data` or `attributes` outside them
        (and outside what the service's part of the filter reads) may be empty in its
        view, never read. Where the service filters in part (`keyed_filter`), up to
        `reads` store reads while each finds rows and keeps none."""
        shown = self._shown(listing, cursor.filter, encoded=encoded, fields=fields)
        if self.mask is None or self.keyed_filter(cursor.filter)[2] is None:
            reads = 1
        while True:
            read = await read_charged(
                self._budget,
                self._share,
                max_bytes,
                functools.partial(self._read, listing, cursor, limit, shown=shown),
                functools.partial(self._excerpt_of, listing, cursor, limit),
            )
            reads -= 1
            if read.rows or not read.full or reads == 0:
                return read
            # Rows read, none kept by the service's part of the filter: read on.
            cursor = msgspec.structs.replace(
                cursor, after_time=read.resume[0], after_message_id=read.resume[1]
            )
            del read

    def keyed_filter(
        self, keep: RowFilter | None
    ) -> tuple[RowFilter | None, Expression | None, Keyed | None]:
        """`keep` as the store is asked it, and the expression the service matches each
        row it reads with, where `keep` compares what this reader's mask shows by its
        keyed hash (`Mask.keys`): the store holds no key, so it is asked a filter that
        keeps every such row and more (`where.relaxed`). Else `keep`, None, None."""
        if self.mask is None or keep is None or keep.where is None:
            return keep, None, None
        return _keyed_split(self.mask, keep)

    def _shown(
        self,
        listing: Listing[Any],
        keep: RowFilter | None,
        *,
        encoded: bool,
        fields: Collection[str] | None,
    ) -> tuple[str, ...]:
        """What a read asks the store to show of each record (`PageQuery.shown`): the
        view without `data` or `attributes` where neither `fields` nor the service's
        part of the filter `keep` (`keyed_filter`, matched on the rows read) reads it
        (the rest is its key, times and names, which every page reads); the whole view
        for a reader that only encodes it, nothing masked from it (a masked view is
        made of the record's fields); else nothing asked."""
        if listing.view is not RecordView:
            return ()
        if fields is not None:
            expression = self.keyed_filter(keep)[1]
            matched = [c for c in UNSHOWN_COLUMNS if reads(expression, c)]
            named = shown_of({*fields, *matched})
            if named:
                return named
        return _RECORD_VIEW_FIELDS if encoded and self.mask is None else ()

    async def _excerpt_of(
        self,
        listing: Listing[AnyPage],
        cursor: PageToken,
        limit: int,
        charged: Charged,
        charge: Charge | None,
    ) -> Excerpt[AnyPage]:
        """The read `charged` as the API shows it."""
        rows, resume, horizon = charged.rows, charged.resume, charged.horizon
        # As many rows as asked for, or as many bytes: the next read goes on at once
        # from the last (a store that skipped later copies may resume past it instead,
        # having examined all it could: that page is not full).
        full = bool(rows) and (
            len(rows) == limit or resume == (rows[-1].ingest_time, rows[-1].message_id)
        )
        if full:
            # A full page can never change: its rows are final, and it says it is
            # complete up to its last row, so every answer to it is the same.
            horizon = max(cursor.after_time, rows[-1].ingest_time)
        _, expression, keyed = (
            (None, None, None) if self.mask is None else self.keyed_filter(cursor.filter)
        )
        if keyed is not None:
            assert expression is not None
            # Of the rows the store read, those the whole filter keeps (what the reader
            # is shown, hashed), the read full still: the next goes on after them all.
            rows = [row for row in rows if matches(expression, row, keyed)]
        if rows and type(rows[0]) is Shown:
            views: list[Any] = [row.view for row in rows]
        elif listing.view is RecordView:
            views = record_views(rows)
        else:
            views = [view(listing.view, row) for row in rows]
        if listing.kind is Rejection and views:
            views = await self._mark_stored(views)
        if self.mask is not None:
            views = [self.mask.view(v) for v in views]
        excerpt = Excerpt(listing, cursor, rows, views, resume, horizon, full)
        excerpt.short, excerpt.size, excerpt.charge = charged.short, charged.size, charge
        served(len(rows), masked=self.mask is not None)
        return excerpt

    async def _mark_stored(self, views: list[RejectionView]) -> list[RejectionView]:
        """Say of each rejection whether its message was stored since, as
        `/v1/messages/{id}` would: one look-up for the page (on BigQuery a query
        reading only `message_id` and `ingest_time`, through their search index)."""
        route = READ_ROUTE.set("/v1/rejections")
        try:
            states = await self._store.seen([v.message_id for v in views])
        finally:
            READ_ROUTE.reset(route)
        return [
            msgspec.structs.replace(v, stored=True) if states.get(v.message_id) == "stored" else v
            for v in views
        ]

    async def _read(
        self,
        listing: Listing[AnyPage],
        cursor: PageToken,
        limit: int,
        max_bytes: int,
        shown: tuple[str, ...] = (),
    ) -> tuple[list[Any], tuple[int, str], int]:
        """One read: the rows after `cursor`, the key the next continues after, and
        up to when it is complete."""
        query, horizon = await self._range(cursor, limit, max_bytes)
        if shown:
            query = msgspec.structs.replace(query, shown=shown)
        page = await self._store.page(listing.kind, query)
        rows = page.rows
        if (
            shown == _RECORD_VIEW_FIELDS
            and self._encoded is not None
            and rows
            and type(rows[0]) is not Shown
        ):
            # Records nothing is masked from, only encoded: as their JSON, made once.
            rows = self._encoded.of(self._store, rows)
        if page.complete_until is not None:
            horizon = min(horizon, page.complete_until)
        # A page never says less than the one before it did: its cursor was
        # complete when given out, whichever instance and cache answer now.
        resume = max(
            (page.after_time, page.after_message_id), (cursor.after_time, cursor.after_message_id)
        )
        return rows, resume, max(horizon, cursor.after_time)

    def token(
        self,
        listing: Listing[Any],
        *,
        since: datetime | None,
        until: datetime | None,
        page_token: str | None,
        filter: RowFilter | None = None,
    ) -> str:
        """The page token of the first page these parameters ask for (checked as a
        page's are): an export reads every page, the first too, by token."""
        return self._tokens.encode(self.cursor(listing, since, until, 1, page_token, filter=filter))

    async def settled(self) -> int:
        """The read horizon once what was acknowledged before the call is readable: every
        row acknowledged so far lies below it (the store's clock, where it stamps rows)."""
        await self._store.barrier()
        return self.horizon()

    def token_after(self, token: str, row: RecordView | RejectionView) -> str | None:
        """The token of the page after `row`, in the walk `token` (one this reader issued)
        belongs to: an export cut inside a page goes on from its last row sent."""
        cursor = self._tokens.decode(token)
        return self._next(cursor, micros(row.ingest_time), row.message_id)

    def refuse_masked(self, keep: RowFilter | None) -> None:
        """MaskedFilter for a filter on what this reader's mask hides: the rows it keeps
        would tell a masked value, one question at a time."""
        if self.mask is None or keep is None:
            return
        for attribute in keep.attributes:
            if self.mask.masks_attribute(attribute.key):
                raise MaskedFilter(
                    "attribute", f"{attribute.key!r} is masked for readers who are not operators"
                )
        for field in keep.fields:
            masked = self.mask.names_in(str(s) for s in field.path)
            if masked is not None:
                raise MaskedFilter(
                    "field", f"{masked!r} is masked for readers who are not operators"
                )
        if keep.where is not None:
            told = self.mask.told_by(keep.where)
            if told is not None:
                raise MaskedFilter("where", told)

    async def check_filter(self, listing: Listing[Any], keep: RowFilter | None) -> None:
        """Raise what the store says of a filter naming typed fields (BadParameter: no
        such field here, or a value not of its type), asking it for an empty range: a
        stream asks before it begins, so that such a filter is a 400, never a stream
        cut after its 200. Other filters are checked as they are read."""
        self.refuse_masked(keep)
        if keep is None or not keep.fields:
            return
        at = self.horizon()
        empty = PageQuery(after_time=at, after_message_id="", before_time=at, limit=1, filter=keep)
        await self._store.page(listing.kind, empty)

    def cursor(
        self,
        listing: Listing[Any],
        since: datetime | None,
        until: datetime | None,
        limit: int,
        page_token: str | None,
        *,
        sent_as: str = "page_token",
        filter: RowFilter | None = None,
        newest: bool = False,
    ) -> PageToken:
        """Where a page of these bounds starts, or what it would raise (400, 410), without
        reading: a stream checks its start so that an expired cursor is a 410, never an
        empty stream. `sent_as` is where the client sent the token (`Last-Event-ID`).
        `newest`: a newest-first page's (`newest_page`), whose `until` is its ceiling."""
        if not 1 <= limit <= MAX_LIMIT:
            raise BadParameter("limit", f"must be between 1 and {MAX_LIMIT}")
        self.refuse_masked(filter)
        if page_token is not None:
            cursor = self._tokens.decode(page_token, parameter=sent_as)
            self.refuse_masked(cursor.filter)
            # A token read on another list, or up to another time, would skip or
            # repeat rows without a word: it is refused instead. (A token of an
            # older release names no list, and is taken where it is sent.)
            if cursor.listing and cursor.listing != listing.name:
                raise BadParameter(
                    sent_as, f"was issued by /v1/{cursor.listing}, not /v1/{listing.name}"
                )
            if cursor.newest != newest:
                raise BadParameter(
                    sent_as,
                    "was issued for pages newest first (`order=newest`), read with it"
                    if cursor.newest
                    else "was issued for pages oldest first; read it without `order=newest`",
                )
            if newest:
                # Its ceiling moves down from page to page: `until` was the first's.
                if filter is not None and filter != cursor.filter:
                    raise BadParameter(
                        sent_as,
                        "was issued for another filter; send it with the filter of the "
                        "first page, or without one (it carries its own)",
                    )
                # Where it goes on from is its ceiling, not its floor (the oldest row
                # below when it was issued, which the retention reaches first): Gone
                # once rows just below the ceiling may have been deleted.
                self._check_retained(sent_as, cursor.until if cursor.until is not None else 0)
                return cursor
            if until is not None and max(micros(until), 0) != cursor.until:
                raise BadParameter(
                    sent_as,
                    "was issued for another `until`; send it with the `until` of the first "
                    "page, or without one",
                )
            # A token keeps the filter it was issued with: sent with another, it would
            # resume a walk of other rows, skipping those that match the new one.
            if filter is not None and filter != cursor.filter:
                raise BadParameter(
                    sent_as,
                    "was issued for another filter; send it with the filter of the first "
                    "page, or without one (it carries its own)",
                )
            self._check_retained(sent_as, cursor.after_time)
            return cursor
        # Without `since`, a read starts at the oldest retained time: rows
        # older than it may linger until the next deletion, and a token
        # pointing at one would be refused on the next page.
        start = micros(since) if since is not None else self._oldest_retained()
        end = micros(until) if until is not None else None
        if since is not None:
            self._check_retained("since", start)
        if end is not None:
            self._check_retained("until", end)
        if end is not None and end <= start:
            raise BadParameter("until", "must be later than since")
        # No row is ingested before the epoch: an earlier bound reads from it,
        # and no store is asked for times its SQL cannot hold (a margin before
        # 0001-01-01 overflows BigQuery's TIMESTAMP).
        start, end = max(start, 0), None if end is None else max(end, 0)
        # message_id > "" holds for every row: the page starts at `since`.
        return PageToken(
            after_time=start,
            after_message_id="",
            until=end,
            listing=listing.name,
            filter=filter,
            newest=newest,
        )

    def start(self, listing: Listing[Any], cursor: PageToken | None, *, sent_as: str) -> PageToken:
        """Where a stream reads from: `cursor`, or without one the oldest row kept (as a
        page without `since`). Gone (410) if rows after it may have been deleted."""
        if cursor is None:
            return PageToken(max(self._oldest_retained(), 0), "", None, listing=listing.name)
        self._check_retained(sent_as, cursor.after_time)
        return cursor

    async def newest(self, listing: Listing[Any]) -> tuple[int, str] | None:
        """The key of the newest row readable now, or None if there is none.

        Read backwards from the read horizon through the list's own pages, a
        second, then a minute, an hour, 2.5 days and so on at most, each read
        forwards to the horizon: a stream that has rows lately costs one read
        (from the tail in memory, on the stores that keep one), a quiet one a
        few more, and no store needs a query of its own for it.
        """
        # What was acknowledged before is readable, and so below the horizon.
        await self._store.barrier()
        horizon = self.horizon()
        oldest = max(self._oldest_retained(), 0)
        span = _NEWEST_FIRST_SPAN
        while True:
            begin = max(horizon - span, oldest)
            cursor = PageToken(begin, "", horizon, listing=listing.name)
            newest: tuple[int, str] | None = None
            while True:
                read = await self.excerpt(listing, cursor, MAX_LIMIT, self.page_bytes)
                if read.rows:
                    last = read.rows[-1]
                    newest = (last.ingest_time, last.message_id)
                if not read.full:
                    break
                cursor = PageToken(*read.resume, horizon, listing=listing.name)
            if newest is not None or begin <= oldest:
                return newest
            span *= _NEWEST_SPAN_GROWTH

    async def _range(self, cursor: PageToken, limit: int, max_bytes: int) -> tuple[PageQuery, int]:
        """The store query for the page after `cursor`, never past the read horizon."""
        await self._store.barrier()
        horizon = self.horizon()
        before = min(cursor.until if cursor.until is not None else _FOREVER, horizon)
        query = PageQuery(
            after_time=cursor.after_time,
            after_message_id=cursor.after_message_id,
            before_time=before,
            limit=limit,
            max_bytes=max_bytes,
            filter=cursor.filter if self.mask is None else self.keyed_filter(cursor.filter)[0],
        )
        return query, horizon

    @staticmethod
    def ended(cursor: PageToken, resume: tuple[int, str]) -> bool:
        """Whether a bounded (`until`) range is complete once read up to `resume`: the
        store has examined everything before `until`."""
        after_time, after_message_id = resume
        return cursor.until is not None and (
            after_time > cursor.until or (after_time == cursor.until and after_message_id == "")
        )

    def _next(self, cursor: PageToken, after_time: int, after_message_id: str) -> str | None:
        """The token of the next page, or None once a bounded range is complete."""
        if self.ended(cursor, (after_time, after_message_id)):
            return None
        return self._tokens.encode(
            msgspec.structs.replace(
                cursor, after_time=after_time, after_message_id=after_message_id
            )
        )

    async def record(self, record_id: str, *, charge: Charge | None = None) -> RecordView:
        """The latest version of the record; with `charge`, charged there with its answer."""
        await self._store.barrier()
        record = await look_up(charge, lambda: self._store.latest(record_id), lambda r: r)
        if record is None:
            raise NotFound(f"no record with id {record_id!r}")
        found = record_view(record)
        served(1, masked=self.mask is not None)
        return found if self.mask is None else self.mask.view(found)

    async def counts(
        self,
        listing: Listing[Any],
        *,
        since: datetime,
        until: datetime | None,
        buckets: int,
        filter: RowFilter | None = None,
        now: datetime | None = None,
    ) -> CountsView:
        """How many of the list's rows `filter` keeps in each of `buckets` equal buckets
        of `[since, until)` (`until` is `now` unless given, by default the clock's), as
        its pages keep them: one read of the store, no row held (so nothing charged to
        the budget), never past the read horizon. Checked as a page's bounds are: 400
        naming what is wrong, 410 for a bound older than the retention, 403 for a filter
        on what is masked."""
        if not 1 <= buckets <= MAX_BUCKETS:
            raise BadParameter("buckets", f"must be between 1 and {MAX_BUCKETS}")
        self.refuse_masked(filter)
        if self.keyed_filter(filter)[2] is not None:
            raise BadParameter(
                "where",
                "compares a keyed hash, which only pages, streams and exports answer "
                "(the store counts, and holds no key): count without it",
            )
        start = micros(since)
        if until is not None:
            end = micros(until)
        else:
            end = micros(now) if now is not None else self._clock() // 1000
        self._check_retained("since", start)
        if until is not None:
            self._check_retained("until", end)
        if end <= start:
            if until is None:
                raise BadParameter("since", "must be earlier than now (`until` unless given)")
            raise BadParameter("until", "must be later than since")
        # No row is ingested before the epoch (as a page's bounds): a range wholly before
        # it holds no time at all, and no bucket.
        start, end = max(start, 0), max(end, 0)
        width = max(1, -(-(end - start) // buckets))
        await self._store.barrier()
        reached = min(end, max(self.horizon(), start))
        asked = CountQuery(since=start, until=end, width=width, filter=filter)
        found: list[int] = []
        if reached > start:
            counted = msgspec.structs.replace(asked, until=reached)
            found = await self._store.counts(listing.kind, counted)
        counts = found + [0] * (asked.buckets - len(found))
        total = sum(counts)
        # The access record keeps what was counted (a count tells of rows as a page
        # does), and whether a mask was on the reader who asked.
        served(0, masked=self.mask is not None)
        told(counted=total)
        return CountsView(
            since=moment(start),
            until=moment(end),
            width_seconds=width / 1_000_000,
            total=total,
            counts=counts,
            complete_until=moment(reached),
        )

    async def message(self, message_id: str, *, charge: Charge | None = None) -> MessageView:
        """What became of the message; with `charge`, charged there with its answer."""
        await self._store.barrier()
        status = await look_up(
            charge, lambda: self._store.message(message_id), lambda s: s and s.record
        )
        if status is None:
            raise NotFound(f"message {message_id!r} was never stored or rejected")
        later = None if self._later_copies is None else self._later_copies.of(message_id)
        found = MessageView(
            message_id=message_id,
            status=status.status,
            ingest_time=moment(status.ingest_time),
            reason=status.reason,
            record=None if status.record is None else record_view(status.record),
            later_copies_differ=None
            if later is None
            else LaterCopiesView(
                count=later.count, differs=later.differs, last_seen=moment(later.last_seen)
            ),
        )
        served(1, masked=self.mask is not None)
        return found if self.mask is None else self.mask.view(found)


@functools.lru_cache(maxsize=256)
def _keyed_split(
    mask: Mask, keep: RowFilter
) -> tuple[RowFilter | None, Expression | None, Keyed | None]:
    """`Reader.keyed_filter`, once for each mask and filter."""
    assert keep.where is not None
    expression = parse(keep.where)
    keyed = mask.keyed(expression)
    if keyed is None:
        return keep, None, None
    loose = relaxed(expression, keyed.conditions.__contains__)
    said = None if loose is None else text(loose)
    if said is not None and len(said.encode()) > MAX_WHERE_BYTES:
        said = None  # written longer than the filter was: every row, the service matches
    asked = msgspec.structs.replace(keep, where=said)
    return (asked if asked else None), expression, keyed

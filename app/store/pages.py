"""Pages of a table's rows, the queries for them, and what a row weighs in an answer.

A leaf of the store layer (`app.store` re-exports every name), so that the parts below
the Store protocol, the tail in memory and following's side of a store, can use them.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from typing import Final, Generic, TypeVar, cast, final

import msgspec

from app.errors import BadParameter
from app.records import Record, Rejection
from app.store.filters import RowFilter

# A page is of one table's rows: records, or rejections.
R = TypeVar("R", Record, Rejection)

# The columns a page may leave unread where a reader shows none of them
# (`PageQuery.shown`): a record's payload and attributes, its largest by far; the rest
# are its key, times and names, which every page reads.
UNSHOWN_COLUMNS: Final = ("data", "attributes")

# What a row takes in an answer besides its payload and attributes (its ids, times and
# names, once encoded), about: rows of tiny payloads count too.
ROW_BYTES: Final = 320


def text_bytes(text: str) -> int:
    """`text`'s length in UTF-8, without encoding it when it is ASCII (the usual case)."""
    return len(text) if text.isascii() else len(text.encode())


@final
class Shown(msgspec.Struct, frozen=True, gc=False):
    """A record as a store made what a reader is shown of it (`PageQuery.shown`): its key,
    what it counts as (`row_bytes`), what `most_bytes` counts it as (4 bytes a character
    of its payload and attributes, and ROW_BYTES), and the JSON object itself."""

    message_id: str
    ingest_time: int
    size: int
    most: int
    view: msgspec.Raw


def row_bytes(row: Record | Rejection | Shown) -> int:
    """About what `row` takes once a reader is shown it in JSON: its payload (a rejection's
    raw bytes as base 64), its attributes, and ROW_BYTES for the rest. The unit of every
    byte budget of a read (a page, a stream's chunk or event, the tail in memory)."""
    if type(row) is Shown:
        return row.size
    data, attributes = row.data, row.attributes
    if type(data) is str:
        payload = len(data) if data.isascii() else len(data.encode())
    else:
        payload = (len(data) + 2) // 3 * 4
    return (
        payload
        + (len(attributes) if attributes.isascii() else len(attributes.encode()))
        + (ROW_BYTES)
    )


def _sizes(rows: Sequence[Record | Rejection | Shown]) -> list[int]:
    """The sizes of `rows`, a read's `Shown` records (a read's rows are of one kind)."""
    return [row.size for row in cast("Sequence[Shown]", rows)]


def most_row_bytes(record: Record) -> int:
    """What `most_bytes` counts one record as (a `Shown`'s `most`)."""
    return 4 * (len(record.data) + len(record.attributes)) + ROW_BYTES


def most_bytes(rows: Sequence[Record | Rejection | Shown]) -> int:
    """No less than what `rows` take together (`row_bytes`), from their lengths alone: a
    character is 4 bytes at most in UTF-8, and base 64 4/3 of a byte. A page far below its
    budget, the usual one, is known to be so in a few calls, whatever its rows."""
    if rows and type(rows[0]) is Shown:
        return sum(row.most for row in cast("Sequence[Shown]", rows))
    # A read's rows are of one kind: these are records or rejections.
    payloads = sum(map(len, [row.data for row in rows]))  # type: ignore[union-attr, arg-type]
    attributes = sum(map(len, [row.attributes for row in rows]))  # type: ignore[union-attr, arg-type]
    return 4 * (payloads + attributes) + ROW_BYTES * len(rows)


def within(rows: Sequence[Record | Rejection | Shown], max_bytes: int) -> tuple[int, int]:
    """How many of `rows`, from the first, hold at most `max_bytes` together (`row_bytes`),
    and at least one: a row larger than the budget is read alone; and no less than what
    they hold (`most_bytes` of them when that is within the budget, else `row_bytes`)."""
    most = most_bytes(rows)
    if most <= max_bytes:
        # What records read the usual way count as too (so a stream's chunk takes the
        # same reads whichever way its rows were read).
        return len(rows), most
    if rows and type(rows[0]) is Shown:
        # Their sizes are known: the running totals, and where they pass the budget.
        totals = list(itertools.accumulate(_sizes(rows)))
        count = max(1, bisect.bisect_right(totals, max_bytes))
        return count, totals[count - 1]
    total = 0
    for count, row in enumerate(rows):
        size = row_bytes(row)
        if total + size > max_bytes and count:
            return count, total
        total += size
    return len(rows), total


class PageQuery(msgspec.Struct, kw_only=True, frozen=True):
    """Rows strictly after the cursor and strictly before `before`, in key order.

    The key is `(ingest_time, message_id)`. A message_id is returned only for
    its first stored copy of records, so a reader that walks the key range meets
    each message once.

    With a `filter`, the page holds the rows that match it (the first copies that
    match, for records), `limit` of them if there are as many, and resumes after
    the last row it examined as any page does.
    """

    after_time: int
    after_message_id: str
    before_time: int
    limit: int
    # The rows kept (app.store.filters); None keeps every row.
    filter: RowFilter | None = None
    # With a value, a store may end the page before `limit` rows once those it read hold
    # at least this many bytes (`row_bytes`): what it holds for a page of large rows
    # stays near the reader's budget, not `limit` times the largest row. The page is
    # then full: it resumes after its last row. The reader cuts the page to its budget
    # whatever the store returns (`within`); a store that cannot stop early ignores it.
    max_bytes: int | None = None
    # With names (of a record's columns, in its view's order), what a reader shows of each
    # record. Where they name both `data` and `attributes` (the whole view), a store may
    # return each record as a `Shown`: a JSON object of those columns in that order, as
    # msgspec encodes a struct of them (a time in RFC 3339 in UTC, a JSON column as it is
    # kept), so that a reader far behind is not made a Python object a row. Where they
    # leave one out (`left_out`: a projection, `select=`, shows no part of it), a store
    # need not read it: each Record it returns may hold it as empty text, and counts as
    # such (`row_bytes`), so that a page cut by `max_bytes` may hold more rows than
    # without it, and resumes after its last as any page does. A store that can do
    # neither ignores it: the reader shows what it asked for of whole records.
    shown: tuple[str, ...] = ()

    @property
    def left_out(self) -> tuple[str, ...]:
        """The JSON columns (`data`, `attributes`) `shown` leaves out, which a store need
        not read: none without `shown`."""
        if not self.shown:
            return ()
        return tuple(c for c in UNSHOWN_COLUMNS if c not in self.shown)

    def answer(self, rows: list[R], end: int | None = None, *, full: bool | None = None) -> Page[R]:
        """The page of `rows`, the rows the store examined (see `resume`)."""
        return Page(rows, *self.resume(rows, end, full=full))

    def filled(self, rows: Sequence[Record | Rejection]) -> bool:
        """Whether `rows` (those the store examined) make a full page: `limit` of them,
        or at least `max_bytes`."""
        if len(rows) >= self.limit:
            return True
        if self.max_bytes is None or most_bytes(rows) < self.max_bytes:
            return False
        return sum(map(row_bytes, rows)) >= self.max_bytes

    def resume(
        self,
        rows: Sequence[Record | Rejection],
        end: int | None = None,
        *,
        full: bool | None = None,
    ) -> tuple[int, str]:
        """The key the next page continues after, `rows` being those the store examined.

        A full page resumes after its last row; a short one examined its whole
        range, up to `end` (a store that scans a bounded range) or else
        `before_time`, so the next page starts there: a reader at the tail
        never scans again what it already found empty. A store that counted the
        rows' bytes as it read them says whether they are `full` (`filled`).
        """
        if rows and (self.filled(rows) if full is None else full):
            return rows[-1].ingest_time, rows[-1].message_id
        # message_id > "" holds for every row: the next page starts at the end.
        return (self.before_time if end is None else end), ""


class Page(msgspec.Struct, Generic[R], frozen=True):
    """One page of a table's rows, and the key the next page continues after.

    The key is the last row the store examined, which is not always the last
    row returned: a store that skips later copies of a message, or scans a
    bounded time range, moves the cursor past what it left out.

    `complete_until`, when set, is earlier than the query's `before_time`: the
    store answered only up to it (the serving tier from its cache of the tail,
    or from BigQuery up to where Spanner's rows begin), and the next page
    starts there.
    """

    rows: list[R]
    after_time: int
    after_message_id: str
    complete_until: int | None = None


# Buckets one count answers at most: a histogram's, never a table of every second.
MAX_BUCKETS: Final = 240


class CountQuery(msgspec.Struct, kw_only=True, frozen=True):
    """How many of a table's rows with `since <= ingest_time < until` a filter keeps, in
    buckets of `width` µs from `since` (the last one cut at `until`): as a walk of
    filtered pages over the range keeps them, first copies of records, every rejection.

    `until` is below the read horizon, as a page's `before_time` is: the caller bounds
    it (`Reader.counts`)."""

    since: int
    until: int
    width: int
    # The rows counted (app.store.filters); None counts every row.
    filter: RowFilter | None = None

    @property
    def buckets(self) -> int:
        """How many buckets the range holds: ceil((until - since) / width)."""
        return max(0, -(-(self.until - self.since) // self.width))

    def check(self) -> int:
        """The number of buckets; BadParameter unless the range and width make 0 to
        MAX_BUCKETS of them (a store checks before it reads)."""
        if self.width < 1:
            raise BadParameter("buckets", f"a bucket of {self.width} µs; 1 µs at least")
        if self.until < self.since:
            raise BadParameter("until", "must be later than since")
        if self.buckets > MAX_BUCKETS:
            raise BadParameter(
                "buckets", f"{self.buckets} buckets; {MAX_BUCKETS} at most in one count"
            )
        return self.buckets

    def tally(self, found: Iterable[tuple[int, int]]) -> list[int]:
        """One count per bucket, from a store's `(bucket, rows)` pairs (buckets it found
        no row in left out)."""
        counts = [0] * self.buckets
        for bucket, rows in found:
            counts[int(bucket)] += int(rows)
        return counts

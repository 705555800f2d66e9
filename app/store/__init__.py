"""The Store protocol: what ingest and query need from a backend, and the values it speaks.

Backends are chosen where the app is assembled (`app.store.open`), never
patched. Each implementation lives in a package of its own; test fakes
implement the same Protocol; `tests/store_contract/` holds what every one must do.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import msgspec

from app.records import Record, Rejection
from app.store.pages import MAX_BUCKETS as MAX_BUCKETS
from app.store.pages import ROW_BYTES as ROW_BYTES
from app.store.pages import UNSHOWN_COLUMNS as UNSHOWN_COLUMNS
from app.store.pages import CountQuery as CountQuery
from app.store.pages import Page as Page
from app.store.pages import PageQuery as PageQuery
from app.store.pages import R as R
from app.store.pages import Shown as Shown
from app.store.pages import most_bytes as most_bytes
from app.store.pages import most_row_bytes as most_row_bytes
from app.store.pages import row_bytes as row_bytes
from app.store.pages import text_bytes as text_bytes
from app.store.pages import within as within
from app.store.producers import Completeness

if TYPE_CHECKING:
    from app.store.live import Live

# What became of a Pub/Sub message: stored as a record, or rejected.
MessageState = Literal["stored", "rejected"]

# A rejection a replay compares its message with holds at most this much data: a
# payload an operator edits by hand, and 100 of them (a replay's most) are 6.4 MiB
# held at once, one push body's worth; a larger one is replayed uncompared.
COMPARED_BYTES = 64 * 1024


class MessageStatus(msgspec.Struct, kw_only=True, frozen=True):
    """What happened to one Pub/Sub message."""

    status: MessageState
    ingest_time: int
    reason: str | None = None
    record: Record | None = None


class QueryObserver(Protocol):
    """Told what one query behind a store call cost (telemetry puts it on the
    call's span and in its metrics); stores whose reads are billed report it."""

    def __call__(
        self,
        *,
        bytes_processed: int | None = None,
        bytes_billed: int | None = None,
        job_id: str | None = None,
    ) -> None: ...


# The API route a read serves, set where it is not the usual one for the store
# method called: a page of rejections asks `seen` (replay's look-up) which of its
# messages were stored since. Telemetry counts the read's time and bytes billed
# under this route.
READ_ROUTE: ContextVar[str | None] = ContextVar("recordline_read_route", default=None)


class PublisherDuplicate(msgspec.Struct, frozen=True):
    """A row not stored: a later copy of a producer's message, its sequence stored
    already under another message id (`app.store.producers`). Acknowledged and counted."""

    producer: str
    epoch: int
    sequence: int


# Per appended row: None when it was stored as given, else the reason the store
# refused it and recorded it in `rejected` instead (BigQuery row errors), or, from
# a store that keeps producer sequences, a publisher's duplicate it did not store.
RowOutcome = str | PublisherDuplicate | None


class Store(Protocol):
    """A durable home for records and rejections, readable by key order."""

    # How many appends the batcher may run at once: 1 where appends serialise
    # anyway (DuckDB), more where they pipeline (the Storage Write API).
    max_in_flight: int

    # Following's side of the store (the tail, what followers wait on): told of rows as
    # they become readable here (a commit on this instance, a refresh that found other
    # instances' commits), waiting followers read again.
    live: Live

    # True where the store stamps each row's ingest_time itself when it commits
    # (the serving tier: a later commit always gets a later time), so rows
    # still queued in this process can never land behind a page it serves;
    # False where rows keep the time the batcher gave them.
    stamps_at_commit: bool

    # The ledger of producer sequences (app.store.producers), kept where the store
    # is a system of record that settles each sequence as it commits its row
    # (DuckDB, the serving tier); None where every copy is stored (BigQuery alone).
    completeness: Completeness | None

    async def start(self) -> None:
        """Open connections and create the tables if they are missing."""

    async def close(self) -> None:
        """Release everything `start` opened."""

    async def check(self) -> None:
        """Raise StoreUnavailable unless the store can take writes and reads."""

    async def barrier(self) -> None:
        """Return once every append acknowledged before the call is readable.

        Reads call it first, so a client reads its own acknowledged writes.
        """

    def read_horizon(self, now: int) -> int:
        """Every row appended with an ingest_time below this is readable (µs).

        A local store answers with the oldest row it acknowledged but cannot
        read yet; a shared one with `now` less the time another instance may
        still be committing.
        """

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        """Store the rows durably, or raise StoreUnavailable having stored none reliably.

        Returns one outcome per row, in order. A returned call means every row
        is durable (as a record, or as a rejection).
        """

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        """One page of `kind`'s rows in `(ingest_time, message_id)` order: first
        copies of records, every rejection."""

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        """How many of `kind`'s rows the query's filter keeps in each of its buckets
        (`query.buckets` of them, from `since`): the rows a walk of filtered pages over
        `[since, until)` keeps, first copies of records, every rejection; in one query
        where the store reads SQL. BadParameter for more than MAX_BUCKETS buckets, or
        a filter the store cannot apply (as a page says)."""

    async def latest(self, record_id: str) -> Record | None:
        """The latest version of a record: by `timestamp`, then `publish_time`."""

    async def message(self, message_id: str) -> MessageStatus | None:
        """Whether a message was stored or rejected, if it was ever seen."""

    async def seen(self, message_ids: Sequence[str]) -> dict[str, MessageState]:
        """What became of each of these messages that was ever seen, in one read.

        "stored" if any copy is a record (a message rejected once and replayed
        since is stored), else "rejected"; a message never seen is absent.
        Replay asks it for a whole batch, where `message` would cost a query
        (a billed one on BigQuery) per message.
        """

    async def rejections(self, message_ids: Sequence[str]) -> dict[str, Rejection]:
        """Each of these messages' rejection as kept (its first, where it was rejected
        on several deliveries) whose data is at most COMPARED_BYTES, in one read: what
        a replay compares the message it is handed with, to say what an edit changed.
        A message never rejected, or whose data is larger, is absent."""


@runtime_checkable
class Reprojecting(Store, Protocol):
    """A store that keeps each record's typed fields itself (DuckDB), and so projects
    them again when asked (`recordline typed backfill`); BigQuery's are backfilled in
    place by a job of its own (app/store/bigquery/backfill.py)."""

    async def reproject(self, records: Sequence[Record]) -> int:
        """Project these stored records again, as the code and revisions are now, and
        replace their typed fields; returns how many were projected."""

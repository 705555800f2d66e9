"""Recent rows in Spanner: one read-write transaction per group commit, reads at exact times.

A group commit inserts the messages not stored yet, stamped with the commit
timestamp; a page is one read at an exact timestamp never earlier than its upper
bound, so it is complete up to it. The client's supported API is synchronous, so
every call runs on this store's daemon threads (`app.store.threads`), each
request bounded by what is left of its call's `Deadline`.

Design: docs/stores.md#serving-writes, docs/stores.md#serving-reads and
docs/stores.md#serving-deadlines
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple, TypeVar

import msgspec
from google.api_core.exceptions import (
    DeadlineExceeded,
    GoogleAPICallError,
    NotFound,
    RetryError,
    ServiceUnavailable,
)
from google.api_core.retry import Retry, if_exception_type
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from google.cloud import spanner
from google.cloud.spanner_v1 import param_types

from app.errors import Misconfigured, StoreUnavailable
from app.records import (
    DAY_MICROS,
    TABLES,
    Kind,
    Record,
    Rejection,
    Row,
    columns,
    micros,
    moment,
    rejected_record,
    row_of,
)
from app.store import MessageState, MessageStatus, PageQuery, PublisherDuplicate, RowOutcome
from app.store.copies import message_states
from app.store.producers import EpochEntry, ProducerSequence, Tally, sequence_of
from app.store.spanner import ledger
from app.store.spanner import producers as book
from app.store.spanner.schema import (
    ID_INDEX,
    SHARDS,
    expected_columns,
    expected_indexes,
    shard_of,
    time_index,
)
from app.store.threads import DaemonThreads

log = logging.getLogger(__name__)

_MULTIPLEXED_SWITCHES = ("GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS",)
T = TypeVar("T")
R = TypeVar("R", bound=Row)

# Calls in flight at once: a group commit per append slot and a few reads.
_THREADS: Final = 8

# A read or query that Spanner refuses (UNAVAILABLE) is tried again after
# 0.1 s, doubling to at most 2 s, jittered, until its call's deadline: the
# client's own retry settings for unary calls, with a shorter ceiling because
# every call here has a deadline of seconds, not minutes.
_RETRY_INITIAL: Final = 0.1
_RETRY_MAXIMUM: Final = 2.0
# The least time a request is given: one whose call's deadline has passed
# fails rather than going out with none.
_LEAST_SECONDS: Final = 0.01
# How long a stop waits for the channels to close (a local operation).
_CLOSE_SECONDS: Final = 2.0

# Spanner keeps old versions for an hour by default: a read never asks for a
# time older than this, and rows before an older bound were committed long ago,
# so reading them at this time instead changes nothing.
_OLDEST_READ_MICROS: Final = 30 * 60 * 1_000_000

# Ranges a page reads, widened in turn while it finds fewer rows than it may
# return: a follower near the tail reads a second of rows, one far behind at
# most a day per query, never the whole table to sort it.
READ_SPANS_MICROS: Final = (1_000_000, 60_000_000, 3_600_000_000, DAY_MICROS)


class Deadline:
    """When one call to Spanner must be over: what each of its requests is given."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; DeadlineExceeded once none are."""
        left = self._end - time.monotonic()
        if left < _LEAST_SECONDS:
            passed = f"the call's deadline of {self.seconds:g} s passed"
            raise DeadlineExceeded(passed)  # type: ignore[no-untyped-call]
        return left

    def retry(self) -> Retry:
        """UNAVAILABLE retried with backoff until the deadline, then RetryError."""
        return Retry(
            predicate=if_exception_type(ServiceUnavailable),
            initial=_RETRY_INITIAL,
            maximum=_RETRY_MAXIMUM,
            multiplier=2.0,
            timeout=self.left(),
        )


def sql_rows(source: Any, deadline: Deadline, sql: str, **options: Any) -> Any:
    """`source.execute_sql`, within the deadline (a snapshot or a transaction)."""
    return source.execute_sql(sql, timeout=deadline.left(), retry=deadline.retry(), **options)


def key_rows(
    source: Any, deadline: Deadline, table: str, names: Any, keys: Any, **options: Any
) -> Any:
    """`source.read`, within the deadline (a snapshot or a transaction)."""
    left, retry = deadline.left(), deadline.retry()
    return source.read(table, names, keys, timeout=left, retry=retry, **options)


class SpannerDatabase(NamedTuple):
    """A Spanner database by its names (`app.store.open` reads them from a URL)."""

    project: str
    instance: str
    database: str

    @property
    def path(self) -> str:
        return f"projects/{self.project}/instances/{self.instance}/databases/{self.database}"


# Spanner's documented limits (cloud.google.com/spanner/quotas, "Tables"): a
# STRING(MAX) cell holds 2,621,440 characters, a BYTES(MAX) cell 10 MiB.
STRING_MAX_CHARACTERS: Final = 2_621_440
BYTES_MAX: Final = 10 * 1024 * 1024
_CELLS: Final = (Kind.STRING, Kind.JSON, Kind.BYTES)
_SIZED: Final = {
    row_type: [
        (c.name, c.kind)
        for c in columns(row_type)
        if c.kind in (Kind.STRING, Kind.JSON, Kind.BYTES)
    ]
    for row_type in TABLES.values()
}


def too_large(row: Record | Rejection) -> str | None:
    """Why Spanner cannot hold `row` (a cell over its limit, named), or None if it can.

    BigQuery takes whatever Spanner does: a row of at most a Pub/Sub message's
    10 MB plus its attributes is within an AppendRows request, and every value
    was checked for BigQuery's types at validation (`app.ingest`).
    """
    for name, kind in _SIZED[type(row)]:
        value = getattr(row, name)
        if value is None:
            continue
        if kind is Kind.BYTES:
            if len(value) > BYTES_MAX:
                return (
                    f"`{name}` is {len(value):,} bytes, more than the {BYTES_MAX:,} a Spanner "
                    "BYTES(MAX) cell holds"
                )
        elif len(value) > STRING_MAX_CHARACTERS:
            return (
                f"`{name}` is {len(value):,} characters, more than the "
                f"{STRING_MAX_CHARACTERS:,} a Spanner STRING(MAX) cell holds"
            )
    return None


@dataclasses.dataclass(frozen=True)
class Accommodations:
    """What the service does differently against the Spanner emulator, each by name.

    Measured on the emulator (cloud-spanner-emulator of Cloud SDK 528): two
    read-write transactions at once fail the later one ("Invalid transaction
    ID", FAILED_PRECONDITION, which the client does not retry); a read on the
    client's default multiplexed session while a read-write transaction is
    open fails that transaction ("Transaction not found"); and the client's
    built-in metrics go to Cloud Monitoring, which an emulator has not. Spanner
    itself runs commits side by side (aborting one of two that touch the same
    keys, which the client retries), serves reads on multiplexed sessions, and
    takes the metrics for free: in production every one is off.
    """

    # This process's read-write transactions take turns (an asyncio lock).
    commit_turns: bool = False
    # Reads take pooled sessions, by the switch Google documents
    # (GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS=false; cloud.google.com/spanner/docs/sessions).
    pooled_sessions: bool = False
    # The client sends no metrics of its own.
    no_builtin_metrics: bool = False

    @classmethod
    def for_emulator(cls) -> Accommodations:
        return cls(commit_turns=True, pooled_sessions=True, no_builtin_metrics=True)

    @property
    def names(self) -> list[str]:
        return [name for name, on in dataclasses.asdict(self).items() if on]


class SchemaMismatch(Misconfigured):
    """The database's schema is not the one the service reads and writes."""


def _select_list(row_type: type[Row]) -> str:
    def expr(name: str, kind: Kind) -> str:
        return f"UNIX_MICROS(`{name}`)" if kind is Kind.TIMESTAMP else f"`{name}`"

    return ", ".join(expr(c.name, c.kind) for c in columns(row_type))


def _page_sql(table: str, row_type: type[Row]) -> str:
    # Every shard's range of the time index, merged in key order.
    return f"""
SELECT {_select_list(row_type)}
FROM {table}@{{FORCE_INDEX={time_index(table)}}}
WHERE shard BETWEEN 0 AND {SHARDS - 1}
  AND ingest_time >= @after_time AND ingest_time < @before_time
  AND (ingest_time > @after_time OR message_id > @after_message_id)
ORDER BY ingest_time, message_id
LIMIT @limit
""".strip()


_LATEST_SQL: Final = f"""
SELECT {_select_list(Record)}
FROM records@{{FORCE_INDEX={ID_INDEX}}}
WHERE id_shard = @id_shard AND id = @id
ORDER BY `timestamp` DESC, publish_time DESC, ingest_time DESC, message_id DESC
LIMIT 1
""".strip()


def _digest_sql(table: str) -> str:
    # Each window's row count and the XOR of its message ids' digests, as
    # `id_digest` computes one and BigQuery's verification SQL does too.
    return f"""
SELECT DIV(UNIX_MICROS(ingest_time), @window) AS w, COUNT(*) AS n,
  BIT_XOR(CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5(message_id)), 1, 15)) AS INT64)) AS d
FROM {table}@{{FORCE_INDEX={time_index(table)}}}
WHERE shard BETWEEN 0 AND {SHARDS - 1}
  AND ingest_time >= @since AND ingest_time < @until
GROUP BY w
""".strip()


def _keys_sql(table: str) -> str:
    return f"""
SELECT UNIX_MICROS(ingest_time), message_id
FROM {table}@{{FORCE_INDEX={time_index(table)}}}
WHERE shard BETWEEN 0 AND {SHARDS - 1}
  AND ingest_time >= @after_time AND ingest_time < @before_time
  AND (ingest_time > @after_time OR message_id > @after_message_id)
ORDER BY ingest_time, message_id
LIMIT @limit
""".strip()


_DIGEST_SQL: Final = {table: _digest_sql(table) for table in TABLES}
_KEYS_SQL: Final = {table: _keys_sql(table) for table in TABLES}

_PAGE_TYPES: Final = {
    "after_time": param_types.TIMESTAMP,
    "before_time": param_types.TIMESTAMP,
    "after_message_id": param_types.STRING,
    "limit": param_types.INT64,
}


def _value(row: Row, name: str, kind: Kind) -> Any:
    value = getattr(row, name)
    if value is None:
        return None
    match kind:
        case Kind.TIMESTAMP:
            return moment(value)
        case Kind.BYTES:
            # The client sends bytes as given, and Spanner takes them base64.
            return base64.b64encode(value)
        case _:
            return value


_BYTES_COLUMNS: Final = {
    row_type: {i for i, c in enumerate(columns(row_type)) if c.kind is Kind.BYTES}
    for row_type in TABLES.values()
}


def _stored(row_type: type[R], values: Sequence[Any]) -> R:
    """A row from Spanner's values: timestamps read by key come back as datetimes
    (queries select microseconds), and bytes come back base64, as they were sent."""
    binary = _BYTES_COLUMNS[row_type]
    converted = [
        micros(v)
        if isinstance(v, datetime)
        else base64.b64decode(v)
        if i in binary and v is not None
        else v
        for i, v in enumerate(values)
    ]
    return row_of(row_type, converted)


class Committed(NamedTuple):
    """What one group commit stored: each given row as the store now holds it."""

    rows: list[Record | Rejection]
    # How many of them were stored by this commit (the rest were there already).
    new: int
    # Per row, what the ledger of producer sequences made of it: a publisher's
    # copy not stored, or the reason it was kept as a rejection (else None).
    outcomes: list[RowOutcome] = []


class _Written(NamedTuple):
    """What one attempt of a group commit's transaction wrote."""

    existing: dict[tuple[str, str], Record | Rejection]
    # Each given row as it was to be stored; None for a publisher's copy.
    given: list[Record | Rejection | None]
    firsts: dict[tuple[str, str], Record | Rejection]
    outcomes: list[RowOutcome]


class SpannerServing:
    """The serving tier's Spanner database; see the module notes."""

    def __init__(
        self,
        database: SpannerDatabase,
        *,
        emulator_host: str | None = None,
        accommodations: Accommodations | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.database = database
        self._emulator = emulator_host
        self.accommodations = accommodations or (
            Accommodations.for_emulator() if emulator_host else Accommodations()
        )
        self._timeout = timeout_seconds
        self._threads = DaemonThreads(_THREADS, prefix="spanner")
        self._client: spanner.Client | None = None
        self._db: Any = None
        self._turns: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.accommodations.commit_turns else contextlib.nullcontext()
        )
        # Queries and key reads made for readers, for what reads cost: the
        # Spanner bill follows compute, which follows them. A commit's own key
        # reads are the write's cost, not counted. Counted from several threads.
        self.reads = 0
        self._reads_lock = threading.Lock()
        self._page_sql = {table: _page_sql(table, row) for table, row in TABLES.items()}
        self._names = {table: [c.name for c in columns(row)] for table, row in TABLES.items()}
        self._kinds = {table: [c.kind for c in columns(row)] for table, row in TABLES.items()}

    # -- life cycle ------------------------------------------------------------

    async def start(self) -> None:
        """Open the client; nothing is asked of Spanner yet (see `verify`)."""
        if self.accommodations.names:
            log.info("Spanner emulator accommodations: %s", ", ".join(self.accommodations.names))
        if self.accommodations.pooled_sessions:
            # The library reads its switch from the environment at each
            # transaction: set here, on the event loop's thread before any of
            # this store's threads runs, and never over what the user set.
            for switch in _MULTIPLEXED_SWITCHES:
                os.environ.setdefault(switch, "false")
        self._client, self._db = await self._call(self._open)

    def _open(self, _: Deadline) -> tuple[spanner.Client, Any]:
        project = self.database.project
        if self._emulator:
            client = spanner.Client(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": self._emulator},
                disable_builtin_metrics=self.accommodations.no_builtin_metrics,
            )
        else:
            client = spanner.Client(
                project=project, disable_builtin_metrics=self.accommodations.no_builtin_metrics
            )
        instance = client.instance(self.database.instance)  # type: ignore[no-untyped-call]
        db = instance.database(self.database.database)
        return client, db

    async def close(self) -> None:
        """Stop at once, whatever Spanner does: calls not started are dropped, the
        channels closed (a request in flight ends with them), and threads still
        inside a call are left to end on their own; they are daemons, so the
        process exits without them."""
        client, db, self._client, self._db = self._client, self._db, None, None
        self._threads.shutdown(wait=False, cancel_futures=True)
        if client is None:
            return
        closing = DaemonThreads(1, prefix="spanner-close")
        try:
            async with asyncio.timeout(_CLOSE_SECONDS):
                await asyncio.get_running_loop().run_in_executor(closing, _close, client, db)
        except TimeoutError:
            log.warning("Spanner's client did not close within %g s; left behind", _CLOSE_SECONDS)
        finally:
            closing.shutdown(wait=False)

    async def verify(self, *, within: float | None = None) -> None:
        """Raise SchemaMismatch unless the database has every table, column and
        index the service uses; StoreUnavailable if Spanner cannot be asked (within
        `within` s, by default the store's timeout)."""
        differences = await self._call(self._schema_differences, within=within)
        if differences:
            raise SchemaMismatch(
                f"the Spanner database {self.database.path} differs from the schema "
                f"`recordline schema spanner` prints: {'; '.join(differences)}"
            )

    def _schema_differences(self, deadline: Deadline) -> list[str]:
        with self._database().snapshot(multi_use=True) as snapshot:
            found_columns = {
                (table, name): (kind, nullable == "YES")
                for table, name, kind, nullable in sql_rows(
                    snapshot,
                    deadline,
                    "SELECT table_name, column_name, spanner_type, is_nullable "
                    "FROM information_schema.columns WHERE table_schema = ''",
                )
            }
            found_indexes: dict[str, list[str]] = {}
            for index, _table, column in sql_rows(
                snapshot,
                deadline,
                "SELECT index_name, table_name, column_name FROM information_schema.index_columns "
                "WHERE table_schema = '' AND ordinal_position IS NOT NULL "
                "ORDER BY index_name, ordinal_position",
            ):
                found_indexes.setdefault(index, []).append(column)
        differences = []
        for column in expected_columns():
            found = found_columns.get((column.table, column.name))
            where = f"{column.table}.{column.name}"
            if found is None:
                differences.append(f"{where} is missing")
            elif found != (column.spanner_type, column.nullable):
                kind, nullable = found
                differences.append(
                    f"{where} is {kind}{'' if nullable else ' NOT NULL'}, expected "
                    f"{column.spanner_type}{'' if column.nullable else ' NOT NULL'}"
                )
        for name, (table, keys) in expected_indexes().items():
            if found_indexes.get(name) != keys:
                differences.append(f"index {name} on {table}({', '.join(keys)}) is missing")
        return differences

    async def ping(self, *, within: float | None = None) -> None:
        """Raise StoreUnavailable unless Spanner answers a query (within `within` s,
        by default the store's timeout)."""
        await self._call(self._ping, within=within)

    def _ping(self, deadline: Deadline) -> None:
        with self._database().snapshot() as snapshot:
            list(sql_rows(snapshot, deadline, "SELECT 1"))

    # -- writing ---------------------------------------------------------------

    async def commit(self, rows: Sequence[Record | Rejection], within: float) -> Committed:
        """Store what is new among `rows` in one transaction, stamped with its commit
        time, retrying an aborted transaction for up to `within` seconds, waiting
        for its turn included."""
        return await self._transact(self._commit, rows, within=within)

    async def _transact(self, fn: Callable[..., T], *args: Any, within: float) -> T:
        """`_call` for a read-write transaction: its turn first (`Accommodations`),
        the wait for it counted against `within`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        try:
            async with asyncio.timeout(within), self._turns:
                left = max(deadline - loop.time(), 0.0)
                return await self._call(fn, *args, within=left)
        except TimeoutError:
            raise StoreUnavailable(f"Spanner did not answer within {within:g} s") from None

    # -- the export's ledger (app.store.spanner.ledger) ---------------------------

    async def claim_lease(self, name: str, holder: str, seconds: float) -> ledger.LeaseClaim:
        """Take or renew lease `name` for `seconds` from Spanner's now: whether `holder`
        holds it now, and if not, when the lease that stopped it expires."""
        lease_micros = int(seconds * 1_000_000)
        return await self._transact(
            self._claim_lease, name, holder, lease_micros, within=self._timeout
        )

    def _claim_lease(
        self, deadline: Deadline, name: str, holder: str, lease_micros: int
    ) -> ledger.LeaseClaim:
        def work(transaction: Any) -> ledger.LeaseClaim:
            return ledger.claim(transaction, _statement(deadline), name, holder, lease_micros)

        claimed: ledger.LeaseClaim = self._database().run_in_transaction(
            work, timeout_secs=deadline.left()
        )
        return claimed

    async def release_lease(self, name: str, holder: str, *, within: float) -> bool:
        """Hand lease `name` back if `holder` holds it; whether it did."""
        return await self._transact(self._release_lease, name, holder, within=within)

    def _release_lease(self, deadline: Deadline, name: str, holder: str) -> bool:
        def work(transaction: Any) -> bool:
            return ledger.release(transaction, _statement(deadline), name, holder)

        released: bool = self._database().run_in_transaction(work, timeout_secs=deadline.left())
        return released

    async def progress(self, table: str) -> ledger.Progress:
        """The export progress of `table` now (a strong read); a new one if it has none."""
        return await self._call(self._progress, table)

    def _progress(self, deadline: Deadline, table: str) -> ledger.Progress:
        with self._database().snapshot() as snapshot:
            found = key_rows(
                snapshot,
                deadline,
                ledger.PROGRESS_TABLE,
                ledger.progress_names(),
                ledger.progress_key(table),
            )
            return ledger.progress_of(table, list(found))

    async def record_progress(
        self, name: str, holder: str, progress: ledger.Progress
    ) -> ledger.Progress:
        """Write `progress` if `holder` holds lease `name` (else LeaseLost) and the row
        is still the one it was made from (else ProgressMoved), both checked in the
        same transaction; the progress as written, its `updated` the commit's time."""
        return await self._transact(
            self._record_progress, name, holder, progress, within=self._timeout
        )

    def _record_progress(
        self, deadline: Deadline, name: str, holder: str, progress: ledger.Progress
    ) -> ledger.Progress:
        attempts: list[Any] = []

        def work(transaction: Any) -> None:
            attempts.append(transaction)
            ledger.record(transaction, _statement(deadline), name, holder, progress)

        self._database().run_in_transaction(work, timeout_secs=deadline.left())
        return msgspec.structs.replace(progress, updated=micros(attempts[-1].committed))

    async def unblock_export(
        self, table: str, reason: str, decision: ledger.Decision | None = None
    ) -> bool:
        """Clear the export of `table`'s `blocked` if it still says `reason`, keeping
        `decision` in the same transaction; whether it did (an operator's retry:
        `recordline export retry`)."""
        return await self._transact(
            self._unblock_export, table, reason, decision, within=self._timeout
        )

    def _unblock_export(
        self, deadline: Deadline, table: str, reason: str, decision: ledger.Decision | None
    ) -> bool:
        def work(transaction: Any) -> bool:
            done = ledger.unblock(transaction, _statement(deadline), table, reason)
            if done and decision is not None:
                ledger.decide(transaction, decision)
            return done

        done: bool = self._database().run_in_transaction(work, timeout_secs=deadline.left())
        return done

    async def move_export(
        self,
        read: ledger.Progress,
        moved: ledger.Progress,
        decision: ledger.Decision | None = None,
    ) -> bool:
        """Write `moved` over `read`, a table's progress as an operator read it, if
        nothing wrote it since, keeping `decision` in the same transaction; whether
        it did (`recordline export resync`). No lease is checked: the holder of a
        blocked table writes nothing until its progress changes, and any write it
        makes first turns this one into a no-op."""
        return await self._transact(self._move_export, read, moved, decision, within=self._timeout)

    def _move_export(
        self,
        deadline: Deadline,
        read: ledger.Progress,
        moved: ledger.Progress,
        decision: ledger.Decision | None,
    ) -> bool:
        def work(transaction: Any) -> bool:
            done = ledger.overwrite(transaction, _statement(deadline), read, moved)
            if done and decision is not None:
                ledger.decide(transaction, decision)
            return done

        done: bool = self._database().run_in_transaction(work, timeout_secs=deadline.left())
        return done

    async def reject_refused(
        self,
        message_id: str,
        reason: str,
        blocked: str,
        decision: ledger.Decision | None = None,
    ) -> bool:
        """Move record `message_id`, at which the export of `records` is blocked
        (saying `blocked`: BigQuery refused it, or it could not be read or encoded),
        to the rejections with `reason`, and clear the export's batch, if it has
        one, and its stop, keeping `decision`; all in one transaction, only if the
        progress still says `blocked`. Whether it did."""
        return await self._transact(
            self._reject_refused, message_id, reason, blocked, decision, within=self._timeout
        )

    def _reject_refused(
        self,
        deadline: Deadline,
        message_id: str,
        reason: str,
        blocked: str,
        decision: ledger.Decision | None,
    ) -> bool:
        def work(transaction: Any) -> bool:
            names = ledger.progress_names()
            keys = ledger.progress_key("records")
            found = key_rows(transaction, deadline, ledger.PROGRESS_TABLE, names, keys)
            progress = ledger.progress_in(transaction, found, "records")
            if progress.blocked != blocked:
                return False
            held = [
                _stored(Record, values)
                for values in key_rows(
                    transaction, deadline, "records", self._names["records"], _keys([message_id])
                )
            ]
            if not held:
                return False
            record = held[0]
            transaction.delete("records", _keys([message_id]))
            rejection = rejected_record(record, reason)
            transaction.insert(
                "rejected",
                ["shard", *self._names["rejected"]],
                [self._insert_values("rejected", rejection)],
            )
            ledger.write_past_refused(transaction, progress)
            if decision is not None:
                ledger.decide(transaction, decision)
            return True

        done: bool = self._database().run_in_transaction(work, timeout_secs=deadline.left())
        return done

    async def watermarks(self) -> dict[str, int]:
        """Each table's export watermark (0 before its first export), in one read."""
        return await self._call(self._watermarks)

    def _watermarks(self, deadline: Deadline) -> dict[str, int]:
        with self._database().snapshot() as snapshot:
            names = ["table_name", "watermark"]
            keys = ledger.watermark_keys()
            return ledger.watermarks_of(
                key_rows(snapshot, deadline, ledger.PROGRESS_TABLE, names, keys)
            )

    def _commit(self, deadline: Deadline, rows: Sequence[Record | Rejection]) -> Committed:
        sequences = [sequence_of(row) for row in rows]
        sequenced = any(s is not None for s in sequences)
        attempts: list[Any] = []

        def work(transaction: Any) -> _Written:
            attempts.append(transaction)
            existing: dict[tuple[str, str], Record | Rejection] = {}
            # Which rows are stored already, by key. With producer sequences, every
            # message id in both tables: a seen sequence is a redelivery if its
            # message is stored as either, a publisher's copy if not.
            wanted: dict[str, set[str]] = {table: set() for table in TABLES}
            for row in rows:
                if sequenced:
                    for ids in wanted.values():
                        ids.add(row.message_id)
                else:
                    wanted[_table(row)].add(row.message_id)
            for table, ids in wanted.items():
                if not ids:
                    continue
                for values in key_rows(
                    transaction, deadline, table, self._names[table], _keys(ids)
                ):
                    held: Record | Rejection = (
                        _stored(Record, values)
                        if table == "records"
                        else _stored(Rejection, values)
                    )
                    existing[(table, held.message_id)] = held
            given: list[Record | Rejection | None] = list(rows)
            outcomes: list[RowOutcome] = [None] * len(rows)
            if sequenced:
                given, outcomes = self._settle(transaction, deadline, rows, sequences, existing)
            # The first copy of a message within the batch is the one to store.
            firsts: dict[tuple[str, str], Record | Rejection] = {}
            for kept in given:
                if kept is not None:
                    firsts.setdefault((_table(kept), kept.message_id), kept)
            by_table: dict[str, list[Record | Rejection]] = {table: [] for table in TABLES}
            for key, first in firsts.items():
                if key not in existing:
                    by_table[key[0]].append(first)
            for table, new in by_table.items():
                if new:
                    transaction.insert(
                        table,
                        ["shard", *self._key_names(table), *self._names[table]],
                        [self._insert_values(table, r) for r in new],
                    )
            return _Written(existing, given, firsts, outcomes)

        written: _Written = self._database().run_in_transaction(work, timeout_secs=deadline.left())
        committed = attempts[-1].committed
        ingest_time = micros(committed)
        stored: list[Record | Rejection] = []
        new = 0
        for row, kept in zip(rows, written.given, strict=True):
            if kept is None:
                # Not stored (a publisher's copy): handed back as given, at this commit.
                stored.append(msgspec.structs.replace(row, ingest_time=ingest_time))
                continue
            key = (_table(kept), kept.message_id)
            held = written.existing.get(key)
            if held is None:
                first = written.firsts[key]
                if first is kept:
                    new += 1
                held = type(kept)(**{**_fields(first), "ingest_time": ingest_time})
            stored.append(held)
        return Committed(stored, new, written.outcomes)

    def _settle(
        self,
        transaction: Any,
        deadline: Deadline,
        rows: Sequence[Record | Rejection],
        sequences: Sequence[ProducerSequence | None],
        existing: dict[tuple[str, str], Record | Rejection],
    ) -> tuple[list[Record | Rejection | None], list[RowOutcome]]:
        """The ledger's verdict on the batch, its changes written in `transaction`: each
        row as it is to be stored (None: a publisher's copy, not stored; a record kept
        as a rejection when its sequence would open a gap past the bound), and each
        row's outcome."""
        producers = {s.producer for s in sequences if s is not None}
        found = key_rows(transaction, deadline, book.TABLE, book.NAMES, book.keys_of(producers))
        tally = Tally(book.entries_of(found))
        settled = tally.settle(
            [(s, r.message_id, type(r) is Record) for r, s in zip(rows, sequences, strict=True)],
            stored_before={message_id for _, message_id in existing},
            now=time.time_ns() // 1000,
        )
        book.write(transaction, settled)
        given: list[Record | Rejection | None] = []
        outcomes: list[RowOutcome] = []
        for index, (row, sequence, verdict) in enumerate(
            zip(rows, sequences, settled.verdicts, strict=True)
        ):
            if verdict == "duplicate" and sequence is not None:
                given.append(None)
                outcomes.append(
                    PublisherDuplicate(sequence.producer, sequence.epoch, sequence.sequence)
                )
            elif verdict == "refuse" and isinstance(row, Record):
                reason = settled.reasons[index]
                given.append(rejected_record(row, reason))
                outcomes.append(reason)
            else:
                given.append(row)
                outcomes.append(None)
        return given, outcomes

    # -- the completeness ledger's reads -------------------------------------------

    async def producer_entries(self, after: str, limit: int) -> list[EpochEntry]:
        """Every entry of the ledger past producer `after`, in (producer, epoch) order:
        at most `limit` of them (a strong read)."""
        return await self._call(self._producer_entries, after, limit)

    def _producer_entries(self, deadline: Deadline, after: str, limit: int) -> list[EpochEntry]:
        self._count_reads(1)
        with self._database().snapshot() as snapshot:
            found = sql_rows(
                snapshot,
                deadline,
                book.PAGE_SQL,
                params={"after": after, "limit": limit},
                param_types={"after": param_types.STRING, "limit": param_types.INT64},
            )
            return book.entries_of(found)

    async def producer(self, producer: str) -> list[EpochEntry]:
        """One producer's entries, oldest epoch first (a strong read)."""
        return await self._call(self._producer, producer)

    def _producer(self, deadline: Deadline, producer: str) -> list[EpochEntry]:
        self._count_reads(1)
        with self._database().snapshot() as snapshot:
            found = key_rows(snapshot, deadline, book.TABLE, book.NAMES, book.keys_of([producer]))
            return sorted(book.entries_of(found), key=lambda e: e.epoch)

    def _key_names(self, table: str) -> list[str]:
        return ["id_shard"] if table == "records" else []

    def _insert_values(self, table: str, row: Record | Rejection) -> list[Any]:
        values: list[Any] = [shard_of(row.message_id)]
        if table == "records":
            assert isinstance(row, Record)
            values.append(shard_of(row.id))
        for name, kind in zip(self._names[table], self._kinds[table], strict=True):
            values.append(
                spanner.COMMIT_TIMESTAMP if name == "ingest_time" else _value(row, name, kind)
            )
        return values

    async def window_digests(
        self, table: str, since: int, until: int, window: int, *, within: float
    ) -> dict[int, tuple[int, int]]:
        """Per window of `ingest_time` (`time // window`), from `since` to `until`:
        how many rows `table` holds and the digest of their message ids (`id_digest`,
        XOR-ed), computed by Spanner in one strong read over the time index, so
        that what leaves Spanner is a row per window, not a row per message.
        `within` bounds this one call: a caller verifying a long range asks for it
        a window or a few at a time."""
        return await self._call(self._window_digests, table, since, until, window, within=within)

    def _window_digests(
        self, deadline: Deadline, table: str, since: int, until: int, window: int
    ) -> dict[int, tuple[int, int]]:
        params = {"since": moment(since), "until": moment(until), "window": window}
        types = {
            "since": param_types.TIMESTAMP,
            "until": param_types.TIMESTAMP,
            "window": param_types.INT64,
        }
        with self._database().snapshot() as snapshot:
            rows = sql_rows(
                snapshot, deadline, _DIGEST_SQL[table], params=params, param_types=types
            )
            return {int(w): (int(n), int(d)) for w, n, d in rows}

    async def keys_after(
        self, kind: type[R], after: tuple[int, str], until: int, limit: int, *, seen: int = 0
    ) -> list[tuple[int, str]]:
        """The keys `(ingest_time, message_id)` of what `rows_after` would answer (read
        at `until` or later, and after `seen`): two columns of the time index, which
        read whatever the rows hold."""
        read_at = max(until + 1, seen + 1)
        return await self._call(self._keys_after, _TABLE_OF[kind], after, until, limit, read_at)

    async def first_time(self, table: str, since: int, until: int) -> int | None:
        """The ingest time of `table`'s first row with `since <= ingest_time < until`
        (a strong read), None if it has none there."""
        found = await self._call(self._keys_after, table, (since, ""), until - 1, 1, None)
        return found[0][0] if found else None

    def _keys_after(
        self,
        deadline: Deadline,
        table: str,
        after: tuple[int, str],
        until: int,
        limit: int,
        read_at: int | None,
    ) -> list[tuple[int, str]]:
        params = {
            "after_time": moment(after[0]),
            "before_time": moment(until + 1),
            "after_message_id": after[1],
            "limit": limit,
        }
        database = self._database()
        snapshot = (
            database.snapshot()
            if read_at is None
            else database.snapshot(read_timestamp=moment(read_at))
        )
        with snapshot as reading:
            rows = sql_rows(
                reading, deadline, _KEYS_SQL[table], params=params, param_types=_PAGE_TYPES
            )
            return [(int(t), str(m)) for t, m in rows]

    # -- reading ---------------------------------------------------------------

    async def page(self, kind: type[R], query: PageQuery, now: int) -> list[R]:
        """Rows of `kind` after the cursor and before `query.before_time`, read at
        a time no earlier than that bound; at most `query.limit`, in key order."""
        return await self._call(self._page, kind, query, now)

    def _page(
        self,
        deadline: Deadline,
        kind: type[R],
        query: PageQuery,
        now: int,
        counted: bool = True,
        read_after: int = 0,
    ) -> list[R]:
        table = _TABLE_OF[kind]
        read_at = moment(max(query.before_time, now - _OLDEST_READ_MICROS, read_after))
        found: list[R] = []
        with self._database().snapshot(read_timestamp=read_at, multi_use=True) as snapshot:
            for span in (*READ_SPANS_MICROS, None):
                end = query.before_time if span is None else query.after_time + span
                end = min(end, query.before_time)
                params = {
                    "after_time": moment(query.after_time),
                    "before_time": moment(end),
                    "after_message_id": query.after_message_id,
                    "limit": query.limit,
                }
                if counted:
                    self._count_reads(1)
                rows = sql_rows(
                    snapshot,
                    deadline,
                    self._page_sql[table],
                    params=params,
                    param_types=_PAGE_TYPES,
                )
                found = [_stored(kind, values) for values in rows]
                if len(found) == query.limit or end == query.before_time:
                    break
        return found

    async def rows_after(
        self, kind: type[R], after: tuple[int, str], until: int, limit: int, *, seen: int = 0
    ) -> list[R]:
        """At most `limit` rows of `kind` after the key `after` with `ingest_time <= until`,
        in key order, read at `until` or later: final, every commit before it being in.
        Read after `seen` too (a commit time, µs), so that what that commit changed
        among those rows (an operator moving one to the rejections) is seen.
        The exporter's read, not counted among readers' reads."""
        query = PageQuery(
            after_time=after[0], after_message_id=after[1], before_time=until + 1, limit=limit
        )
        return await self._call(self._page, kind, query, until + 1, False, seen + 1)

    async def rows_between(self, since: int, before: int, limit: int) -> list[Record] | None:
        """Every record with `since <= ingest_time < before`, in key order, read at
        exactly `before` (so complete, once read, for that whole range); None if
        there are more than `limit`."""
        return await self._call(self._rows_between, since, before, limit)

    def _rows_between(
        self, deadline: Deadline, since: int, before: int, limit: int
    ) -> list[Record] | None:
        # Key reads, not SQL: each shard's range of the time index is a seek by
        # construction, whatever a query plan would make of a range of shards,
        # then the rows by their keys, at the same timestamp. (The emulator's
        # SQL scans the whole index: a tail read took 240 ms at 20,000 rows,
        # against 13 ms this way.)
        ranges = [
            spanner.KeyRange(  # type: ignore[no-untyped-call]
                start_closed=[shard, moment(since)], end_open=[shard, moment(before)]
            )
            for shard in range(SHARDS)
        ]
        index = time_index("records")
        with self._database().snapshot(read_timestamp=moment(before), multi_use=True) as snapshot:
            self._count_reads(1)
            keys = [
                list(key)
                for key in key_rows(
                    snapshot,
                    deadline,
                    "records",
                    ["shard", "message_id"],
                    spanner.KeySet(ranges=ranges),  # type: ignore[no-untyped-call]
                    index=index,
                    limit=limit + 1,
                )
            ]
            if len(keys) > limit:
                return None
            if not keys:
                return []
            self._count_reads(1)
            rows = key_rows(
                snapshot,
                deadline,
                "records",
                self._names["records"],
                spanner.KeySet(keys=keys),  # type: ignore[no-untyped-call]
            )
            records = [_stored(Record, values) for values in rows]
        records.sort(key=lambda r: (r.ingest_time, r.message_id))
        return records

    async def latest(self, record_id: str) -> Record | None:
        return await self._call(self._latest, record_id)

    def _latest(self, deadline: Deadline, record_id: str) -> Record | None:
        self._count_reads(1)
        with self._database().snapshot() as snapshot:
            rows = list(
                sql_rows(
                    snapshot,
                    deadline,
                    _LATEST_SQL,
                    params={"id_shard": shard_of(record_id), "id": record_id},
                    param_types={"id_shard": param_types.INT64, "id": param_types.STRING},
                )
            )
        return _stored(Record, rows[0]) if rows else None

    async def message(self, message_id: str) -> MessageStatus | None:
        return await self._call(self._message, message_id)

    def _message(self, deadline: Deadline, message_id: str) -> MessageStatus | None:
        keys = _keys([message_id])
        self._count_reads(2)
        with self._database().snapshot(multi_use=True) as snapshot:
            for values in key_rows(snapshot, deadline, "records", self._names["records"], keys):
                record = _stored(Record, values)
                return MessageStatus(status="stored", ingest_time=record.ingest_time, record=record)
            for values in key_rows(snapshot, deadline, "rejected", self._names["rejected"], keys):
                rejection = _stored(Rejection, values)
                return MessageStatus(
                    status="rejected", ingest_time=rejection.ingest_time, reason=rejection.reason
                )
        return None

    async def seen(self, message_ids: Sequence[str]) -> dict[str, MessageState]:
        return await self._call(self._seen, message_ids)

    def _seen(self, deadline: Deadline, message_ids: Sequence[str]) -> dict[str, MessageState]:
        keys = _keys(set(message_ids))
        found: list[tuple[str, MessageState]] = []
        self._count_reads(2)
        with self._database().snapshot(multi_use=True) as snapshot:
            tables: tuple[tuple[str, MessageState], ...] = (
                ("records", "stored"),
                ("rejected", "rejected"),
            )
            for table, state in tables:
                found += [
                    (m, state) for (m,) in key_rows(snapshot, deadline, table, ["message_id"], keys)
                ]
        return message_states(found)

    # -- plumbing --------------------------------------------------------------

    def _count_reads(self, reads: int) -> None:
        with self._reads_lock:
            self.reads += reads

    def _database(self) -> Any:
        if self._db is None:
            raise StoreUnavailable("the Spanner serving tier is not started")
        return self._db

    async def _call(self, fn: Callable[..., T], *args: Any, within: float | None = None) -> T:
        """`fn(deadline, *args)` on this store's threads, its failures as StoreUnavailable.

        The thread is given the same deadline as the caller's wait, counted from
        now (time queued for a thread included), and stops its requests there."""
        loop = asyncio.get_running_loop()
        seconds = self._timeout if within is None else within
        deadline = Deadline(seconds)
        try:
            async with asyncio.timeout(seconds):
                return await loop.run_in_executor(self._threads, fn, deadline, *args)
        except (TimeoutError, DeadlineExceeded):
            raise StoreUnavailable(f"Spanner did not answer within {seconds:g} s") from None
        except NotFound as exc:
            raise StoreUnavailable(f"Spanner: {exc.message}") from exc
        except GoogleAuthError as exc:
            # No credentials here (a shell without application-default credentials),
            # or none that may be refreshed: nothing of Spanner can be asked.
            raise StoreUnavailable(f"Spanner: no usable credentials: {exc}") from exc
        except (GoogleAPICallError, RetryError, OSError) as exc:
            log.warning("Spanner call failed: %s", exc)
            raise StoreUnavailable(f"Spanner failed: {exc}") from exc
        except RuntimeError as exc:  # the pool is shut down
            raise StoreUnavailable(f"the Spanner serving tier is closed: {exc}") from exc


_TABLE_OF: Final = {row_type: table for table, row_type in TABLES.items()}


def id_digest(message_id: str) -> int:
    """A message id's digest: the first 60 bits of its MD5, as BigQuery computes it
    too (`CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5(id)), 1, 15)) AS INT64)`); a window's
    is the XOR of its rows'."""
    return int(hashlib.md5(message_id.encode(), usedforsecurity=False).hexdigest()[:15], 16)


def _table(row: Record | Rejection) -> str:
    return _TABLE_OF[type(row)]


def _fields(row: Row) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__struct_fields__}


def _statement(deadline: Deadline) -> Callable[..., Any]:
    """`sql_rows` within `deadline`, for the ledger's statements."""

    def run(source: Any, sql: str, **options: Any) -> Any:
        return sql_rows(source, deadline, sql, **options)

    return run


def _close(client: spanner.Client, db: Any) -> None:
    """Close the database's channel (a request in flight on it ends) and the client."""
    if db is not None:
        db.spanner_api.transport.close()
    client.close()  # type: ignore[no-untyped-call]


def _keys(message_ids: Iterable[str]) -> Any:
    """The keys of these messages' rows, in either table."""
    return spanner.KeySet(keys=[[shard_of(m), m] for m in message_ids])  # type: ignore[no-untyped-call]

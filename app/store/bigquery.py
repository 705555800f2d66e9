"""The production store: BigQuery, written through the Storage Write API.

Writes go to each table's `_default` stream through one long-lived AppendRows
connection per table (`StorageWriter`); reads are short queries (no job is
created when BigQuery can answer at once) with named parameters, run in a
worker thread because `google-cloud-bigquery` is synchronous.

The tables themselves belong to Terraform, whose JSON schemas come from
`app.records`; `start()` only opens clients and touches no table. Their layout
is what keeps reads billed by the answer rather than by the table (on-demand
queries bill every referenced column of every block they cannot prune):
day partitions on `ingest_time`, clustered on `ingest_time` so that a page's
time range prunes inside a day, and search indexes on `id` and `message_id`
so that a lookup reads only the blocks that hold its key. Every query carries
`maximum_bytes_billed`, and its bytes go to its span and to a metric.

Read cache. Identical reads within `read_cache_seconds` share one query (off
by default). A page whose `before_time` is behind the settle horizon is
immutable: rows that old have finished committing on every instance, and a
first copy is decided by looking only backwards, so the same question always
gets the same answer and a cached page is never wrong, whatever the TTL. The
query layer bounds every page by the settle horizon, so followers' pages are
safe to cache; they rarely hit, though, because their `before_time` moves with
the clock, while readers walking the same history share pages. `latest` and
`message` can change as rows arrive, so for them the TTL is the staleness the
operator opted into.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, TypeVar

import google.auth
import grpc
import msgspec
from google.api_core.exceptions import GoogleAPIError
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY, DEFAULT_RETRY
from google.cloud.bigquery_storage_v1.services.big_query_write import BigQueryWriteAsyncClient
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
    BigQueryWriteGrpcAsyncIOTransport,
)

from app.errors import QueryTooCostly, StoreUnavailable
from app.records import Kind, Record, Rejection, Row, columns, delivery, row_of
from app.settings import QuerySettings, Settings, StoreSettings
from app.store import (
    MessageState,
    MessageStatus,
    PageQuery,
    RecordPage,
    RejectionPage,
    RowOutcome,
    UnknownStore,
    message_states,
)
from app.store.bigquery_proto import RowEncoder
from app.store.storage_write import DEFAULT_MAX_IN_FLIGHT, StorageWriter
from app.telemetry import record_query

log = logging.getLogger(__name__)

T = TypeVar("T")

# bigquery://PROJECT/DATASET. Both names are put into SQL as identifiers (values
# never are), so they are held to BigQuery's own character sets.
_URL: Final = re.compile(
    r"bigquery://(?P<project>[a-z][a-z0-9.:-]{4,61}[a-z0-9])/(?P<dataset>[A-Za-z0-9_]{1,1024})/?"
)

# Lower bound of the `ingest_time` range for lookups that span all history.
# The tables may require a partition filter; for these reads the search
# indexes on `id` and `message_id` do the pruning, so the range is explicit
# rather than selective.
_ALL_TIME: Final = 0

# Identical reads kept at most; a page of 100 rows is ~50 KB, so this bounds the
# cache near 50 MB in the worst case.
_CACHE_ENTRIES: Final = 1024

# The query itself gets the read timeout; the thread is given this much more
# for the HTTP round trip and decoding before the read is abandoned.
_QUERY_SLACK_SECONDS: Final = 2.0

# Time ranges one page scans, widened in turn while it finds fewer rows than
# it may return. A page pays for every block its range touches, so the first
# range is short (5 minutes is 30,000 rows at 100 msg/s, more than any page);
# a sparse stream widens to an hour, then a day, the most one page scans.
# A page that found too few rows even then ends where its scan ended and the
# next one goes on from there, instead of scanning to the horizon.
_PAGE_SPANS_MICROS: Final = (300_000_000, 3_600_000_000, 86_400_000_000)

# Every copy of a message is stored after Pub/Sub published it, so an earlier
# copy of a row lies between its publish_time and its ingest_time, not
# anywhere in the dedupe window. The margin covers the clocks of Pub/Sub and
# of this service disagreeing (NTP keeps them within milliseconds).
_CLOCK_SKEW_MICROS: Final = 60_000_000

# A page's scan starts this far before its cursor, so that the earlier
# copies of rows published up to (_EARLIER_COPIES - skew) before being stored,
# which is nearly every row, are found by the page's own query. Rows that
# waited longer (a backlog draining) are checked by a second, indexed query.
_EARLIER_COPIES_MICROS: Final = 120_000_000

# On-demand BigQuery bills at least 10 MiB per table a query references, and
# rounds up to a whole MiB; every read here references one table, the
# readiness probe's `SELECT 1` none.
_MIB: Final = 1 << 20
_MINIMUM_BILLED: Final = 10 * _MIB


def billed_bytes(processed: int, *, tables: int = 1) -> int:
    """What on-demand BigQuery bills a query over `tables` tables that processed `processed` bytes.

    The client library exposes bytes processed, not bytes billed, for short
    queries; BigQuery's documented rule turns one into the other.
    """
    if not tables:
        return 0
    return max(tables * _MINIMUM_BILLED, -(-processed // _MIB) * _MIB)


def select_list(row_type: type[Row], alias: str) -> str:
    # Timestamps come back as int microseconds and JSON as its text, which is
    # what a Record holds: no datetime or dict is built per row.
    out = []
    for column in columns(row_type):
        name = f"{alias}.`{column.name}`"
        match column.kind:
            case Kind.TIMESTAMP:
                out.append(f"UNIX_MICROS({name}) AS `{column.name}`")
            case Kind.JSON:
                out.append(f"TO_JSON_STRING({name}) AS `{column.name}`")
            case _:
                out.append(name)
    return ", ".join(out)


def page_sql(records: str) -> str:
    # One scan of [reach, end): constant bounds on ingest_time, the partition
    # and first clustering column, so only the blocks of that range are read.
    # A message's first copy is the one with the smallest ingest_time (then
    # publish_time, trace_id, subscription, so byte-identical copies of a
    # resent batch keep one). A row is shown unless the copy before it lies
    # within its look-back: after its publish time (less the clock margin)
    # and within the dedupe window. `previous_copy` is returned so the store
    # can tell which rows' look-back reaches before the scan.
    return f"""
SELECT {select_list(Record, "c")}, UNIX_MICROS(c.previous_copy) AS previous_copy
FROM (
  SELECT r.*, LAG(r.ingest_time) OVER (
    PARTITION BY r.message_id ORDER BY r.ingest_time, r.publish_time, r.trace_id, r.subscription
  ) AS previous_copy
  FROM {records} AS r
  WHERE r.ingest_time >= TIMESTAMP_MICROS(@reach)
    AND r.ingest_time < TIMESTAMP_MICROS(@end)
) AS c
WHERE c.ingest_time >= TIMESTAMP_MICROS(@after_time)
  AND (c.ingest_time > TIMESTAMP_MICROS(@after_time) OR c.message_id > @after_message_id)
  AND (
    c.previous_copy IS NULL
    OR UNIX_MICROS(c.previous_copy) < GREATEST(
      UNIX_MICROS(c.publish_time) - @clock_skew, UNIX_MICROS(c.ingest_time) - @window
    )
  )
ORDER BY c.ingest_time, c.message_id
LIMIT @limit
""".strip()


def earlier_copies_sql(records: str) -> str:
    # For the few rows whose look-back starts before the page's scan: the
    # latest copy of each before the scan. A constant IN list and a constant
    # range, so the search index on message_id and the partitions prune.
    return f"""
SELECT e.message_id, UNIX_MICROS(MAX(e.ingest_time)) AS last_copy
FROM {records} AS e
WHERE e.message_id IN UNNEST(@message_ids)
  AND e.ingest_time >= TIMESTAMP_MICROS(@since)
  AND e.ingest_time < TIMESTAMP_MICROS(@reach)
GROUP BY e.message_id
""".strip()


def rejections_sql(rejected: str) -> str:
    # The same constant range as a records page, on the same partitioning and
    # clustering column; rejections are rare, so no dedupe pass is made: a
    # message rejected on two deliveries is listed twice (replay is idempotent).
    return f"""
SELECT {select_list(Rejection, "j")}
FROM {rejected} AS j
WHERE j.ingest_time >= TIMESTAMP_MICROS(@after_time)
  AND j.ingest_time < TIMESTAMP_MICROS(@end)
  AND (j.ingest_time > TIMESTAMP_MICROS(@after_time) OR j.message_id > @after_message_id)
ORDER BY j.ingest_time, j.message_id
LIMIT @limit
""".strip()


def next_partition_sql(partitions: str) -> str:
    # Partition metadata: which day after an empty scan holds rows, for the
    # price of the 10 MiB minimum instead of a scan of every day between.
    return f"""
SELECT MIN(p.partition_id) AS partition_id
FROM {partitions} AS p
WHERE p.table_name = @table
  AND p.partition_id >= @from_day
  AND p.partition_id < @before_day
  AND p.total_rows > 0
""".strip()


def first_row_sql(records: str) -> str:
    # Where the rows of one day partition start: one narrow column of one day.
    return f"""
SELECT UNIX_MICROS(MIN(r.ingest_time)) AS first_row
FROM {records} AS r
WHERE r.ingest_time >= TIMESTAMP_MICROS(@since)
  AND r.ingest_time < TIMESTAMP_MICROS(@until)
""".strip()


def latest_sql(records: str) -> str:
    # An event time beats none (NULLS LAST), then the later publish, then the
    # later write; message_id only makes the choice deterministic. `id = @id`
    # is served by the search index: only blocks holding the id are read.
    return f"""
SELECT {select_list(Record, "r")}
FROM {records} AS r
WHERE r.id = @id
  AND r.ingest_time >= TIMESTAMP_MICROS(@not_before)
ORDER BY r.`timestamp` DESC NULLS LAST, r.publish_time DESC, r.ingest_time DESC, r.message_id DESC
LIMIT 1
""".strip()


def stored_sql(records: str) -> str:
    return f"""
SELECT {select_list(Record, "r")}
FROM {records} AS r
WHERE r.message_id = @message_id
  AND r.ingest_time >= TIMESTAMP_MICROS(@not_before)
ORDER BY r.ingest_time
LIMIT 1
""".strip()


def rejected_sql(rejected: str) -> str:
    return f"""
SELECT UNIX_MICROS(j.ingest_time) AS ingest_time, j.reason
FROM {rejected} AS j
WHERE j.message_id = @message_id
  AND j.ingest_time >= TIMESTAMP_MICROS(@not_before)
ORDER BY j.ingest_time
LIMIT 1
""".strip()


def seen_sql(records: str, rejected: str) -> str:
    # Only message_id and ingest_time are read (bytes billed are per column),
    # and `IN UNNEST(@message_ids)` is served by both tables' search indexes:
    # one query answers for a replay batch of up to 100 messages.
    return f"""
SELECT DISTINCT r.message_id, 'stored' AS state
FROM {records} AS r
WHERE r.message_id IN UNNEST(@message_ids)
  AND r.ingest_time >= TIMESTAMP_MICROS(@not_before)
UNION ALL
SELECT DISTINCT j.message_id, 'rejected' AS state
FROM {rejected} AS j
WHERE j.message_id IN UNNEST(@message_ids)
  AND j.ingest_time >= TIMESTAMP_MICROS(@not_before)
""".strip()


CHECK_SQL: Final = "SELECT 1"


class _Payload(msgspec.Struct, omit_defaults=True):
    id: str
    data: msgspec.Raw
    timestamp: str | None = None


def refused_record(record: Record, reason: str) -> Rejection:
    """The rejection stored for a record BigQuery would not take.

    It keeps the message data as the record received it, so that a replay
    decodes it as a push would, whatever its encoding (a topic schema's, the
    publisher's own shape). A record built without it has its payload rebuilt
    in the default contract: replaying that publishes the same id, event time
    and data.
    """
    if record.received is not None:
        reason = f"BigQuery refused the row: {reason}"
        return Rejection(**delivery(record), data=record.received, reason=reason)
    timestamp = None
    if record.timestamp is not None:
        moment = datetime.fromtimestamp(record.timestamp / 1e6, tz=UTC)
        timestamp = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    payload = _Payload(id=record.id, data=msgspec.Raw(record.data.encode()), timestamp=timestamp)
    return Rejection(
        **delivery(record),
        data=msgspec.json.encode(payload),
        reason=f"BigQuery refused the row: {reason}",
    )


class _ReadCache:
    """A bounded TTL map from a read to the task answering it.

    Holding the task rather than the result means identical reads arriving
    together share one query; a failed read is forgotten at once.
    """

    def __init__(self, ttl_seconds: float, max_entries: int = _CACHE_ENTRIES) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: collections.OrderedDict[object, tuple[float, asyncio.Task[Any]]] = (
            collections.OrderedDict()
        )

    async def get(self, key: object, load: Callable[[], Awaitable[T]]) -> T:
        ttl = self._ttl
        if ttl <= 0:
            return await load()
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            task: asyncio.Task[T] = asyncio.ensure_future(load())
            self._entries[key] = (now + ttl, task)
            task.add_done_callback(lambda done: self._forget_failure(key, done))
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
            task = entry[1]
        # Shielded: one caller giving up must not cancel the query for the rest.
        return await asyncio.shield(task)

    def _forget_failure(self, key: object, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            entry = self._entries.get(key)
            if entry is not None and entry[1] is task:
                del self._entries[key]


class BigQueryStore:
    """Records and rejections in BigQuery; see the module notes."""

    def __init__(
        self,
        project: str,
        dataset: str,
        *,
        store: StoreSettings,
        query: QuerySettings,
        query_endpoint: str | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.project = project
        self.dataset = dataset
        self.settle_micros = int(store.settle_seconds * 1_000_000)
        # Concurrent `append` calls worth making: each writer keeps this many
        # requests in flight, and more callers would only queue behind them.
        self.max_in_flight = max_in_flight
        self._write_deadline = store.write_deadline_seconds
        self._query_timeout = store.query_timeout_seconds
        self._write_endpoint = store.bigquery_write_endpoint or None
        self._query_endpoint = query_endpoint
        self._dedupe_window_micros = int(query.dedupe_window_seconds * 1_000_000)
        self._max_bytes_billed = query.max_bytes_billed
        self._cache = _ReadCache(store.read_cache_seconds)

        self._records_encoder = RowEncoder(Record)
        self._rejected_encoder = RowEncoder(Rejection)
        records = self._table_sql("records")
        self._page_sql = page_sql(records)
        self._earlier_copies_sql = earlier_copies_sql(records)
        self._first_row_sql = first_row_sql(records)
        self._next_partition_sql = next_partition_sql(
            self._table_sql("INFORMATION_SCHEMA.PARTITIONS")
        )
        self._latest_sql = latest_sql(records)
        self._stored_sql = stored_sql(records)
        self._rejected_sql = rejected_sql(self._table_sql("rejected"))
        self._rejections_sql = rejections_sql(self._table_sql("rejected"))
        self._seen_sql = seen_sql(records, self._table_sql("rejected"))

        self._write_client: BigQueryWriteAsyncClient | None = None
        self._query_client: bigquery.Client | None = None
        self._records: StorageWriter | None = None
        self._rejected: StorageWriter | None = None

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> BigQueryStore:
        match = _URL.fullmatch(url)
        if match is None:
            raise UnknownStore(f"not a bigquery://PROJECT/DATASET URL: {url!r}")
        # The library's own variable for a BigQuery emulator; it is honoured
        # for the endpoint but not for credentials, so it is passed on here.
        emulator = os.environ.get("BIGQUERY_EMULATOR_HOST") or None
        return cls(
            match["project"],
            match["dataset"],
            store=settings.store,
            query=settings.query,
            query_endpoint=emulator,
        )

    def _table_sql(self, table: str) -> str:
        return f"`{self.project}.{self.dataset}.{table}`"

    def _table_path(self, table: str) -> str:
        return f"projects/{self.project}/datasets/{self.dataset}/tables/{table}"

    async def start(self) -> None:
        if self._records is not None:
            return
        self._write_client = await self._open_write_client()
        self._query_client = await asyncio.to_thread(self._open_query_client)
        self._records = StorageWriter(
            self._write_client,
            self._table_path("records"),
            self._records_encoder.descriptor,
            max_in_flight=self.max_in_flight,
        )
        self._rejected = StorageWriter(
            self._write_client,
            self._table_path("rejected"),
            self._rejected_encoder.descriptor,
            max_in_flight=self.max_in_flight,
        )
        await self._records.start()
        await self._rejected.start()

    async def _open_write_client(self) -> BigQueryWriteAsyncClient:
        if self._write_endpoint is not None:
            channel = grpc.aio.insecure_channel(
                self._write_endpoint,
                options=[
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                ],
            )
            # With a channel of its own the transport looks for no credentials.
            transport = BigQueryWriteGrpcAsyncIOTransport(channel=channel)
            return BigQueryWriteAsyncClient(transport=transport)
        # Finding default credentials may ask the metadata server: not on the loop.
        credentials, _ = await asyncio.to_thread(
            google.auth.default, scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        return BigQueryWriteAsyncClient(credentials=credentials)

    def _open_query_client(self) -> bigquery.Client:
        if self._query_endpoint is not None:
            endpoint = self._query_endpoint
            if "://" not in endpoint:
                endpoint = f"http://{endpoint}"
            return bigquery.Client(
                project=self.project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": endpoint},
                default_job_creation_mode="JOB_CREATION_OPTIONAL",
            )
        return bigquery.Client(
            project=self.project, default_job_creation_mode="JOB_CREATION_OPTIONAL"
        )

    async def close(self) -> None:
        for writer in (self._records, self._rejected):
            if writer is not None:
                await writer.close()
        self._records = self._rejected = None
        if self._write_client is not None:
            await self._write_client.transport.close()  # type: ignore[no-untyped-call]
            self._write_client = None
        if self._query_client is not None:
            await asyncio.to_thread(self._query_client.close)
            self._query_client = None

    async def barrier(self) -> None:
        # An append returns once BigQuery committed it; reads see it already.
        return None

    def read_horizon(self, now: int) -> int:
        # Another instance may still be committing rows stamped up to a write
        # deadline ago; pages stay behind that.
        return now - self.settle_micros

    async def check(self) -> None:
        records, rejected = self._writers()
        await self._query(CHECK_SQL, {}, tables=0)
        for writer in (records, rejected):
            if writer.failure is not None:
                raise StoreUnavailable(writer.failure)

    # Writing

    def _writers(self) -> tuple[StorageWriter, StorageWriter]:
        if self._records is None or self._rejected is None:
            raise StoreUnavailable("the BigQuery store is not started")
        return self._records, self._rejected

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        records_writer, rejected_writer = self._writers()
        deadline = asyncio.get_running_loop().time() + self._write_deadline
        records: list[Record] = []
        rejections: list[Rejection] = []
        for row in rows:
            if isinstance(row, Record):
                records.append(row)
            else:
                rejections.append(row)
        encode_record = self._records_encoder.encode
        encode_rejection = self._rejected_encoder.encode

        record_outcomes: Sequence[str | None] = ()
        if records and rejections:
            # Both finish (each within the deadline) before either error is
            # raised, so no write is left running unobserved.
            record_result, rejection_result = await asyncio.gather(
                records_writer.append([encode_record(r) for r in records], deadline),
                rejected_writer.append([encode_rejection(r) for r in rejections], deadline),
                return_exceptions=True,
            )
            if isinstance(record_result, BaseException):
                raise record_result
            if isinstance(rejection_result, BaseException):
                raise rejection_result
            record_outcomes = record_result
            _require_stored(rejection_result, rejected_writer)
        elif records:
            record_outcomes = await records_writer.append(
                [encode_record(r) for r in records], deadline
            )
        elif rejections:
            _require_stored(
                await rejected_writer.append([encode_rejection(r) for r in rejections], deadline),
                rejected_writer,
            )

        refused = [
            refused_record(record, reason)
            for record, reason in zip(records, record_outcomes, strict=True)
            if reason is not None
        ]
        if refused:
            log.warning("BigQuery refused %d rows; storing them as rejections", len(refused))
            _require_stored(
                await rejected_writer.append([encode_rejection(r) for r in refused], deadline),
                rejected_writer,
            )
        if not refused:
            return [None] * len(rows)
        by_record = iter(record_outcomes)
        return [next(by_record) if isinstance(row, Record) else None for row in rows]

    # Reading

    async def page(self, query: PageQuery) -> RecordPage:
        return await self._cache.get(("page", query), lambda: self._page(query))

    async def _page(self, query: PageQuery) -> RecordPage:
        found, end = await self._scan(query, self._page_sql, self._page_params)
        if len(found) < query.limit and end < query.before_time:
            # Nothing near the cursor: jump to the next day that holds rows.
            start = await self._next_rows(end, query.before_time)
            if start > end:
                query = PageQuery(
                    after_time=start,
                    after_message_id="",
                    before_time=query.before_time,
                    limit=query.limit,
                )
                found, end = await self._scan(query, self._page_sql, self._page_params)
        candidates = [row_of(Record, row[:-1]) for row in found]
        hidden = await self._hidden(candidates, [row[-1] for row in found], query.after_time)
        records = [r for r in candidates if r.message_id not in hidden]
        # Later copies left out still moved the cursor: it follows the candidates.
        return RecordPage(records, *query.resume(candidates, end))

    async def _scan(
        self,
        query: PageQuery,
        sql: str,
        params: Callable[[PageQuery, int], dict[str, QueryValue]],
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Rows after the cursor over widening ranges, and where the last scan ended."""
        end = query.before_time
        found: list[tuple[Any, ...]] = []
        for span in _PAGE_SPANS_MICROS:
            end = min(query.before_time, query.after_time + span)
            found = await self._query(sql, params(query, end))
            if len(found) == query.limit or end == query.before_time:
                break
        return found, end

    async def rejections(self, query: PageQuery) -> RejectionPage:
        # Bounded like a records page: at most a day is scanned, and a page
        # that found too few rows ends where its scan ended. There is no jump
        # over empty days (rejections are listed rarely, not followed).
        found, end = await self._scan(query, self._rejections_sql, self._rejections_params)
        rows = [row_of(Rejection, row) for row in found]
        return RejectionPage(rows, *query.resume(rows, end))

    def _rejections_params(self, query: PageQuery, end: int) -> dict[str, QueryValue]:
        return {
            "end": end,
            "after_time": query.after_time,
            "after_message_id": query.after_message_id,
            "limit": query.limit,
        }

    async def _next_rows(self, after: int, before: int) -> int:
        """Where the first partition at or after `after` that holds rows starts.

        Rows still in write-optimized storage (the last 30 minutes) may not be
        counted in partition metadata yet, so the jump never passes the start
        of the day that held `before` an hour earlier: that day is scanned.
        """
        floor = (before - _METADATA_LAG_MICROS) // _DAY_MICROS * _DAY_MICROS
        if after >= floor:
            return after
        params: dict[str, QueryValue] = {
            "table": "records",
            "from_day": _day(after),
            "before_day": _day(floor),
        }
        ((first,),) = await self._query(self._next_partition_sql, params)
        if first is None:
            return floor
        day = int(datetime.strptime(first, "%Y%m%d").replace(tzinfo=UTC).timestamp()) * 1_000_000
        # The day's first row, read from ingest_time alone: a page starting
        # at midnight would scan the hours before it with every column.
        since = max(after, day)
        bounds: dict[str, QueryValue] = {"since": since, "until": day + _DAY_MICROS}
        ((row,),) = await self._query(self._first_row_sql, bounds)
        return since if row is None else int(row)

    def _page_params(self, query: PageQuery, end: int) -> dict[str, QueryValue]:
        return {
            "reach": query.after_time - _EARLIER_COPIES_MICROS,
            "end": end,
            "after_time": query.after_time,
            "after_message_id": query.after_message_id,
            "clock_skew": _CLOCK_SKEW_MICROS,
            "window": self._dedupe_window_micros,
            "limit": query.limit,
        }

    def _look_back(self, record: Record) -> int:
        """Where an earlier copy of this row may start: after its publish, within the window."""
        return max(
            record.publish_time - _CLOCK_SKEW_MICROS,
            record.ingest_time - self._dedupe_window_micros,
        )

    async def _hidden(
        self, candidates: list[Record], previous: list[int | None], after_time: int
    ) -> set[str]:
        """Message ids among `candidates` whose earlier copy lies before the page's scan."""
        reach = after_time - _EARLIER_COPIES_MICROS
        unsure = [
            r
            for r, before in zip(candidates, previous, strict=True)
            if before is None and self._look_back(r) < reach
        ]
        if not unsure:
            return set()
        params: dict[str, QueryValue] = {
            "message_ids": sorted({r.message_id for r in unsure}),
            "since": min(self._look_back(r) for r in unsure),
            "reach": reach,
        }
        last_copy = dict(await self._query(self._earlier_copies_sql, params))
        return {
            r.message_id
            for r in unsure
            if r.message_id in last_copy and last_copy[r.message_id] >= self._look_back(r)
        }

    async def latest(self, record_id: str) -> Record | None:
        params: dict[str, QueryValue] = {"id": record_id, "not_before": _ALL_TIME}

        async def load() -> Record | None:
            found = await self._query(self._latest_sql, params)
            return row_of(Record, found[0]) if found else None

        return await self._cache.get(("latest", record_id), load)

    async def message(self, message_id: str) -> MessageStatus | None:
        params: dict[str, QueryValue] = {"message_id": message_id, "not_before": _ALL_TIME}

        async def load() -> MessageStatus | None:
            stored = await self._query(self._stored_sql, params)
            if stored:
                record = row_of(Record, stored[0])
                return MessageStatus(status="stored", ingest_time=record.ingest_time, record=record)
            rejected = await self._query(self._rejected_sql, params)
            if rejected:
                ingest_time, reason = rejected[0]
                return MessageStatus(status="rejected", ingest_time=ingest_time, reason=reason)
            return None

        return await self._cache.get(("message", message_id), load)

    async def seen(self, message_ids: Sequence[str]) -> dict[str, MessageState]:
        # Not cached: replay asks it right before writing what it did not find.
        if not message_ids:
            return {}
        params: dict[str, QueryValue] = {
            "message_ids": sorted(set(message_ids)),
            "not_before": _ALL_TIME,
        }
        return message_states(await self._query(self._seen_sql, params, tables=2))

    async def _query(
        self, sql: str, params: dict[str, QueryValue], *, tables: int = 1
    ) -> list[tuple[Any, ...]]:
        if self._query_client is None:
            raise StoreUnavailable("the BigQuery store is not started")
        client = self._query_client
        timeout = self._query_timeout
        run = _query_runner(client, sql, params, timeout, self._max_bytes_billed)
        try:
            async with asyncio.timeout(timeout + _QUERY_SLACK_SECONDS):
                answer = await asyncio.to_thread(run)
        except TimeoutError:
            raise StoreUnavailable(f"BigQuery did not answer within {timeout:g} s") from None
        except (GoogleAPIError, OSError) as exc:
            if isinstance(exc, GoogleAPIError) and _reason(exc) == "bytesBilledLimitExceeded":
                log.warning(
                    "BigQuery refused a read over RECORDLINE_QUERY_MAX_BYTES_BILLED: %s", exc
                )
                raise QueryTooCostly(
                    f"the read would bill more than RECORDLINE_QUERY_MAX_BYTES_BILLED "
                    f"({self._max_bytes_billed} bytes): {getattr(exc, 'message', exc)}"
                ) from exc
            # Includes RetryError once the retries ran out of time, and
            # transport errors; a read the client may simply try again.
            log.warning("BigQuery read failed: %s", exc)
            raise StoreUnavailable(f"BigQuery read failed: {exc}") from exc
        record_query(
            bytes_processed=answer.bytes_processed,
            bytes_billed=billed_bytes(answer.bytes_processed, tables=tables),
            job_id=answer.job_id,
        )
        return answer.rows


# A named query parameter: INT64, STRING, or an ARRAY<STRING> for IN UNNEST(...).
QueryValue = int | str | list[str]


_DAY_MICROS: Final = 86_400_000_000
# Twice the 30 minutes rows stay in write-optimized storage.
_METADATA_LAG_MICROS: Final = 3_600_000_000


def _day(micros: int) -> str:
    """The id of the day partition holding `micros`: YYYYMMDD, UTC."""
    return datetime.fromtimestamp(micros // 1_000_000, tz=UTC).strftime("%Y%m%d")


class _Answer(NamedTuple):
    rows: list[tuple[Any, ...]]
    bytes_processed: int
    # The job's id where BigQuery made one, else the short query's id.
    job_id: str | None


def _parameter(name: str, value: QueryValue) -> Any:
    match value:
        case list():
            return bigquery.ArrayQueryParameter(name, "STRING", value)
        case int():
            return bigquery.ScalarQueryParameter(name, "INT64", value)
        case _:
            return bigquery.ScalarQueryParameter(name, "STRING", value)


def _reason(exc: GoogleAPIError) -> str | None:
    errors = getattr(exc, "errors", None) or []
    first = errors[0] if errors else None
    return first.get("reason") if isinstance(first, dict) else None


def _query_runner(
    client: bigquery.Client,
    sql: str,
    params: dict[str, QueryValue],
    timeout: float,
    max_bytes_billed: int,
) -> Callable[[], _Answer]:
    config = bigquery.QueryJobConfig(
        query_parameters=[_parameter(name, value) for name, value in params.items()],
        # BigQuery refuses, before running it, a query that would bill more.
        maximum_bytes_billed=max_bytes_billed,
    )
    # A query keeps running, and billing, after its caller gave up: BigQuery
    # stops it at the same timeout.
    config.job_timeout_ms = int(timeout * 1000)

    def run() -> _Answer:
        # The library retries for up to 10 minutes by default; a read that a
        # client waits for has `timeout` in all, retries included.
        rows = client.query_and_wait(
            sql,
            job_config=config,
            api_timeout=timeout,
            wait_timeout=timeout,
            retry=DEFAULT_RETRY.with_timeout(timeout),
            job_retry=DEFAULT_JOB_RETRY.with_timeout(timeout),
        )
        found = [tuple(row.values()) for row in rows]
        return _Answer(found, rows.total_bytes_processed or 0, rows.job_id or rows.query_id)

    return run


def _require_stored(outcomes: Sequence[str | None], writer: StorageWriter) -> None:
    # A rejection is the last resort: if BigQuery refuses even that, nothing can
    # hold the message, so it must not be acknowledged.
    reasons = [reason for reason in outcomes if reason is not None]
    if reasons:
        log.error("%s refused %d rejections: %s", writer.table, len(reasons), reasons[0])
        raise StoreUnavailable(f"{writer.table} refused a rejection: {reasons[0]}")

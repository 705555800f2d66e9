"""The production store: BigQuery, written through the Storage Write API.

Writes go to each table's `_default` stream through one long-lived AppendRows
connection per table (`storage_write.StorageWriter`, rows encoded by
`proto.RowEncoder`); reads are short queries with named parameters
(`queries.QueryRunner`, statements in `sql.py`, paging in `paging.py`, an optional
read cache in `cache.py`). After Terraform creates the tables, the schema of
`records` is the service's: `start()` adds any column of `Record` it lacks.

Design, and what keeps reads billed by the answer: docs/stores.md#bigquery-bigqueryprojectdataset
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import google.auth
import grpc
import msgspec
from google.api_core.exceptions import GoogleAPIError, NotFound
from google.cloud import bigquery
from google.cloud.bigquery_storage_v1 import types
from google.cloud.bigquery_storage_v1.services.big_query_write import BigQueryWriteAsyncClient
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
    BigQueryWriteGrpcAsyncIOTransport,
)

from app.errors import StoreUnavailable, WriteTimeout
from app.records import (
    MAX_MICROS,
    AccessRow,
    ExportWatermark,
    Record,
    Rejection,
    rejected_record,
    row_of,
)
from app.store import (
    COMPARED_BYTES,
    CountQuery,
    MessageState,
    MessageStatus,
    Page,
    PageQuery,
    QueryObserver,
    R,
    RowOutcome,
)
from app.store.access import AccessLine, AccessQuery
from app.store.bigquery.backfill import Backfill, Backfilled
from app.store.bigquery.cache import ReadCache
from app.store.bigquery.layout import NO_COPIES, Copies, TableLayout
from app.store.bigquery.paging import Pager
from app.store.bigquery.proto import RowEncoder
from app.store.bigquery.queries import QueryRunner, QueryValue
from app.store.bigquery.schema import created_schema
from app.store.bigquery.sql import CHECK_SQL, Statements, access_page_sql, dead_letters_sql
from app.store.bigquery.storage_write import DEFAULT_MAX_IN_FLIGHT, StorageWriter
from app.store.bigquery.stream import OffsetStream
from app.store.bigquery.typed import (
    PatchObserver,
    TypedTable,
    add_missing_columns,
    typed_columns,
    typed_descriptor,
    write_path_field,
)
from app.store.copies import message_states
from app.store.dead_letters import DeadLetter, DeadLetterQuery, day_of
from app.store.live import Live
from app.store.producers import Completeness
from app.store.supervisor import LoopObserver, Supervisor
from app.typed.mapping import Field

if TYPE_CHECKING:
    from app.typed.revisions import Revisions

log = logging.getLogger(__name__)

# The `ingest_time` range of look-ups that span all history. The tables may
# require a partition filter; for these reads the search indexes on `id` and
# `message_id` do the pruning, so the range is explicit rather than
# selective. Beside a serving tier, look-ups end where it begins instead.
_ALL_TIME: Final = 0
# Waiting followers read again at least this often on BigQuery alone.
_RING_SECONDS: Final = 1.0
END_OF_TIME: Final = MAX_MICROS  # 9999-12-31T23:59:59.999999Z, BigQuery's last
# A row of a revision whose new typed fields the write path does not take yet
# waits at most this long, and at most half of what is left of its deadline.
TYPED_WAIT_SECONDS: Final = 4.0
# How long the layout of `records` may stay unread before readiness says so.
_LAYOUT_SECONDS: Final = 5.0
# Rows written in the last half hour (write-optimized storage) may not be counted in
# partition metadata yet: days that held the last hour are read, whatever it says.
_METADATA_LAG_MICROS: Final = 3_600_000_000


class BigQueryOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What the store is tuned by, in seconds unless named otherwise; `app.store.open`
    fills it from the settings, which check and describe each value."""

    settle_seconds: float
    write_deadline_seconds: float
    query_timeout_seconds: float
    read_cache_seconds: float
    max_bytes_billed: int
    dedupe_window_seconds: float
    # The Storage Write API's address, where not Google's (an emulator, a fake).
    write_endpoint: str | None = None


class BigQueryStore:
    """Records and rejections in BigQuery; see the module notes."""

    # The Storage Write API's default stream stores every copy it is given, and no
    # instance sees another's writes as it makes them: no ledger of producer
    # sequences can be settled here. Every copy is stored; reads leave out later
    # copies of a message id, and `records_unique` those of a producer sequence too.
    completeness: Completeness | None = None

    def __init__(
        self,
        project: str,
        dataset: str,
        *,
        options: BigQueryOptions,
        query_endpoint: str | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        observer: QueryObserver | None = None,
        revisions: Revisions | None = None,
        patches: PatchObserver | None = None,
        loops: LoopObserver | None = None,
    ) -> None:
        """`project` and `dataset` are put into SQL as identifiers (values never are):
        `app.store.open` holds them to BigQuery's own character sets."""
        self.project = project
        self.dataset = dataset
        self.settle_micros = int(options.settle_seconds * 1_000_000)
        # No tail: every page is a query. Told of rows as the settle window passes.
        self.live = Live()
        # The loop that tells followers of others' rows ("bell") and each writer's:
        # restarted if they fail, named by readiness while they stay down, each
        # restart told to `loops`.
        self._loops = Supervisor(observer=loops)
        # Concurrent `append` calls worth making: each writer keeps this many
        # requests in flight, and more callers would only queue behind them.
        self.max_in_flight = max_in_flight
        # Rows keep the time the batcher stamped them with.
        self.stamps_at_commit = False
        self._write_deadline = options.write_deadline_seconds
        self._write_endpoint = options.write_endpoint
        self._cache = ReadCache(options.read_cache_seconds)
        self._records_encoder = RowEncoder(Record)
        self._rejected_encoder = RowEncoder(Rejection)
        self._access_encoder = RowEncoder(AccessRow)
        # How `records` is laid out, read from the table at start (`layout.py`): the
        # copies every row of it carries, and whether its partitions follow ingest_time.
        # Records are written only once it is known.
        self.layout: TableLayout | None = None
        self.copies: Copies = NO_COPIES
        self._sql = Statements.for_dataset(project, dataset)
        self._queries = QueryRunner(
            project,
            timeout=options.query_timeout_seconds,
            max_bytes_billed=options.max_bytes_billed,
            endpoint=query_endpoint,
            observer=observer,
        )
        self._pager = Pager(
            self._queries,
            self._sql,
            dedupe_window_micros=int(options.dedupe_window_seconds * 1_000_000),
            typed=self._typed_fields,
        )
        self._write_client: BigQueryWriteAsyncClient | None = None
        self._records: StorageWriter | None = None
        self._rejected: StorageWriter | None = None
        # The access record's writer (`access_record`'s _default stream): not among the
        # writers readiness asks about, since no push waits for it.
        self._access: StorageWriter | None = None
        # Typed columns (`typed.py`): where each revision's fields are learned,
        # the table's typed fields, and the writer of rows that carry them, for
        # the fields it was opened with. Writers replaced by a wider one close
        # in the background.
        self._revisions = revisions
        self._patches = patches
        self._query_timeout = options.query_timeout_seconds
        self.typed: TypedTable | None = None
        self._typed_writer: tuple[tuple[Field, ...] | None, StorageWriter, RowEncoder] | None = None
        # Writers a wider one replaced, with when (the loop's clock) every row
        # handed to them has passed its deadline: closed at the next swap after
        # that, or with the store. No task of their own to supervise.
        self._retired: list[tuple[StorageWriter, float]] = []

    @property
    def revisions(self) -> Revisions | None:
        """The schema revisions records are projected with; None: no typed columns."""
        return self._revisions

    def _table_path(self, table: str) -> str:
        return f"projects/{self.project}/datasets/{self.dataset}/tables/{table}"

    @property
    def queries(self) -> QueryRunner:
        """The store's queries (bounded, billed, observed), for readers of its tables
        beside it (the serving tier's exporter asks what a table holds)."""
        return self._queries

    def table_name(self, table: str) -> str:
        """`table`'s name as SQL quotes it: `project.dataset.table`."""
        return f"`{self.project}.{self.dataset}.{table}`"

    async def start(self) -> None:
        if self._rejected is not None:
            return
        self._write_client = await self._open_write_client()
        await self._queries.start()
        await self._loops.start()
        self._rejected = StorageWriter(
            self._write_client,
            self._table_path("rejected"),
            self._rejected_encoder.descriptor,
            max_in_flight=self.max_in_flight,
            loops=self._loops,
        )
        await self._rejected.start()
        self._access = StorageWriter(
            self._write_client,
            self._table_path("access_record"),
            self._access_encoder.descriptor,
            loops=self._loops,
        )
        await self._access.start()
        try:
            await self._learn_layout()
        except (GoogleAPIError, OSError, TimeoutError) as exc:
            # Writes answer 503 until it is read (a row is never written without its
            # copies); readiness names the loop that keeps asking.
            log.warning("the layout of %s could not be read: %s", self.table_name("records"), exc)
            self._loops.run("layout", self._until_layout, interval=_LAYOUT_SECONDS, finite=True)
        await self._own_columns()
        if self._revisions is not None:
            self.typed = TypedTable(
                f"{self.project}.{self.dataset}.records",
                call=self._queries.call,
                write_schema=self._write_path_schema,
                timeout=self._query_timeout,
                observer=self._patches,
            )
            declared = self._revisions.declared
            fields = self._revisions.fields(declared) if declared is not None else None
            if declared is not None and fields is not None:
                # A JSON topic's declared schema is known at start: its columns are
                # in the table before its first record (analysts' queries and views
                # may name them at once). Never fails the start (see `widen`).
                await self.typed.widen(declared, fields)
        every = max(self.settle_micros / 1e6, _RING_SECONDS)
        self._loops.run("bell", lambda: self.live.while_followed(self._ring, every), interval=every)

    async def _learn_layout(self) -> None:
        """Read how `records` is laid out, then open its writer with the copies its
        rows carry; the pager's jump over empty days reads partition metadata only
        where partitions follow ingest_time."""
        table_id = f"{self.project}.{self.dataset}.records"
        seconds = self._query_timeout
        try:
            table: bigquery.Table = await self._queries.call(
                lambda client: client.get_table(table_id, timeout=seconds)
            )
            layout = TableLayout.of(table)
        except NotFound:
            # No such table has no copies to write: the Storage Write API refuses its
            # rows, and says so (NOT_FOUND), as without a layout.
            layout = TableLayout()
        copies = Copies(layout.copies)
        encoder = RowEncoder(Record, derived=copies)
        writer = await self._records_writer(encoder)
        self.layout, self.copies, self._records_encoder = layout, copies, encoder
        self._pager.partitions_by_ingest_time = layout.by_ingest_time
        self._records = writer
        if copies:
            log.info(
                "%s carries the layout copies %s",
                table_id,
                ", ".join(c.column for c in copies.copies),
            )

    async def _records_writer(self, encoder: RowEncoder) -> StorageWriter:
        """A started writer of `records`' _default stream, with `encoder`'s schema."""
        if self._write_client is None:
            raise StoreUnavailable("the BigQuery store is not started")
        writer = StorageWriter(
            self._write_client,
            self._table_path("records"),
            encoder.descriptor,
            max_in_flight=self.max_in_flight,
            loops=self._loops,
        )
        await writer.start()
        return writer

    def layout_copies(self) -> Copies:
        """The copies each row of `records` carries (its exporter's); StoreUnavailable
        until the table's layout is read, so that no row is written without them."""
        if self.layout is None:
            raise StoreUnavailable("the layout of records is not known yet")
        return self.copies

    async def _until_layout(self) -> None:
        """The loop that reads the layout until it can (failing, so restarted with
        backoff, while it cannot), then ends."""
        if self._records is None:
            await self._learn_layout()

    async def _own_columns(self) -> None:
        """Add the columns `records` is created with (a `Record`'s, `projection_errors`)
        that the table lacks. Never fatal: a store that cannot read its table fails
        its writes and readiness."""
        wanted = [bigquery.SchemaField.from_api_repr(c) for c in created_schema(Record)]
        # A column the table lacks must not be REQUIRED: BigQuery adds none.
        wanted = [
            c
            if c.mode != "REQUIRED"
            else bigquery.SchemaField(c.name, c.field_type, description=c.description)
            for c in wanted
        ]
        table = f"{self.project}.{self.dataset}.records"
        try:
            added = await add_missing_columns(
                self._queries.call, table, wanted, self._query_timeout
            )
        except (GoogleAPIError, OSError, TimeoutError) as exc:
            log.warning("the columns of %s could not be checked: %s", table, exc)
            return
        if added:
            log.info("added to %s the columns %s", table, ", ".join(added))

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

    def watermark_writer(self) -> WatermarkWriter:
        """Appends the exporter's watermarks to `export_watermarks` (its `_default` stream)."""
        if self._write_client is None:
            raise StoreUnavailable("the BigQuery store is not started")
        encoder = RowEncoder(ExportWatermark)
        writer = StorageWriter(
            self._write_client,
            self._table_path("export_watermarks"),
            encoder.descriptor,
            loops=self._loops,
        )
        return WatermarkWriter(writer, encoder)

    def offset_stream(self, kind: type[Record] | type[Rejection]) -> OffsetStream:
        """A writer of application-created streams of `kind`'s table (the exporter's)."""
        if self._write_client is None:
            raise StoreUnavailable("the BigQuery store is not started")
        encoder = self._records_encoder if kind is Record else self._rejected_encoder
        table = "records" if kind is Record else "rejected"
        return OffsetStream(self._write_client, self._table_path(table), encoder.descriptor)

    async def close(self) -> None:
        typed = self._typed_stream
        for writer in (self._records, self._rejected, typed, self._access):
            if writer is not None:
                await writer.close()
        self._records = self._rejected = self._typed_writer = self._access = None
        for retired, _ in self._retired:
            await retired.close()
        self._retired.clear()
        if self._write_client is not None:
            await self._write_client.transport.close()  # type: ignore[no-untyped-call]
            self._write_client = None
        await self._loops.close()
        await self._queries.close()

    async def barrier(self) -> None:
        # An append returns once BigQuery committed it; reads see it already.
        return None

    @property
    def unanswered(self) -> int:
        """AppendRows requests sent to either table and not answered yet."""
        typed = self._typed_stream
        return sum(w.unanswered for w in (self._records, self._rejected, typed) if w is not None)

    def read_horizon(self, now: int) -> int:
        # Another instance may still be committing rows stamped up to a write
        # deadline ago; pages stay behind that.
        return now - self.settle_micros

    def down(self) -> list[str]:
        """Each of the store's loops failing for longer than its interval."""
        return self._loops.down()

    async def check(self) -> None:
        records, rejected = self._writers()
        self._loops.check()
        await self._queries.run(CHECK_SQL, {}, tables=0)
        typed = self._typed_stream
        for writer in (records, rejected, typed):
            if writer is None:
                continue
            if writer.failure is not None:
                raise StoreUnavailable(writer.failure)

    # Writing

    @property
    def _typed_stream(self) -> StorageWriter | None:
        """The writer of records with typed columns, once one was needed."""
        return self._typed_writer[1] if self._typed_writer is not None else None

    def _writers(self) -> tuple[StorageWriter, StorageWriter]:
        if self._rejected is None:
            raise StoreUnavailable("the BigQuery store is not started")
        if self._records is None:
            raise StoreUnavailable("the layout of records is not known yet")
        return self._records, self._rejected

    async def append(
        self, rows: Sequence[Record | Rejection], *, deadline: float | None = None
    ) -> Sequence[RowOutcome]:
        """Store the rows by `deadline` (the event loop's clock), by default the
        write deadline from now."""
        outcomes = await self._append(rows, deadline)
        # Readable once the settle window has passed: waiting followers read then.
        asyncio.get_running_loop().call_later(self.settle_micros / 1e6, self.live.arrived, rows)
        return outcomes

    async def _ring(self) -> None:
        """Other instances' rows become readable as the settle window passes, and this
        one cannot tell when without a query (which each follower makes anyway): while
        followers wait, they read again every window (at least a second)."""
        self.live.arrived()

    async def _append(
        self, rows: Sequence[Record | Rejection], deadline: float | None
    ) -> Sequence[RowOutcome]:
        _, rejected_writer = self._writers()
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._write_deadline
        records: list[Record] = []
        rejections: list[Rejection] = []
        for row in rows:
            if isinstance(row, Record):
                records.append(row)
            else:
                rejections.append(row)
        encode_rejection = self._rejected_encoder.encode

        record_outcomes: Sequence[str | None] = ()
        if records and rejections:
            # Both finish (each within the deadline) before either error is
            # raised, so no write is left running unobserved.
            record_result, rejection_result = await asyncio.gather(
                self._append_records(records, deadline),
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
            record_outcomes = await self._append_records(records, deadline)
        elif rejections:
            _require_stored(
                await rejected_writer.append([encode_rejection(r) for r in rejections], deadline),
                rejected_writer,
            )

        refused = [
            rejected_record(record, f"BigQuery refused the row: {reason}")
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

    async def _append_records(
        self, records: Sequence[Record], deadline: float
    ) -> Sequence[str | None]:
        """Per record, as `StorageWriter.append` answers: records projected onto the
        typed columns through the typed writer, the others through the plain one."""
        records_writer, _ = self._writers()
        revisions = [self._revision(r) for r in records]
        if not any(revisions):
            encode = self._records_encoder.encode
            return await records_writer.append([encode(r) for r in records], deadline)
        projected = await self._project(records, revisions, deadline)
        if projected is None:
            # The write path has no typed columns (yet): every record as JSON alone.
            encode = self._records_encoder.encode
            return await records_writer.append([encode(r) for r in records], deadline)
        typed_writer, encoded = projected
        plain = [r for r, revision in zip(records, revisions, strict=True) if not revision]
        typed_rows = [row for row in encoded if row is not None]
        encode = self._records_encoder.encode
        plain_result, typed_result = await asyncio.gather(
            records_writer.append([encode(r) for r in plain], deadline),
            typed_writer.append(typed_rows, deadline),
            return_exceptions=True,
        )
        if isinstance(plain_result, BaseException):
            raise plain_result
        if isinstance(typed_result, BaseException):
            raise typed_result
        plain_outcomes, typed_outcomes = iter(plain_result), iter(typed_result)
        return [
            next(typed_outcomes) if revision else next(plain_outcomes) for revision in revisions
        ]

    def _revision(self, record: Record) -> str | None:
        """The revision a record is projected under: its own, else the declared one."""
        if self._revisions is None:
            return None
        return self._revisions.revision_of(record.schema)

    async def _project(
        self, records: Sequence[Record], revisions: Sequence[str | None], deadline: float
    ) -> tuple[StorageWriter, list[bytes | None]] | None:
        """The writer of typed rows and, per record with a revision, its typed row;
        None where the write path has no typed columns, not even `projection_errors`."""
        assert self.typed is not None
        assert self._revisions is not None
        # Every revision was decoded here, on the push path: nothing is fetched.
        known = await self.typed.hold(self._revisions, revisions)
        now = asyncio.get_running_loop().time()
        writable = await self.typed.catch_up(now + min(TYPED_WAIT_SECONDS, (deadline - now) / 2))
        if not self.typed.takes_typed_rows:
            return None
        writer, encoder = await self._typed_writer_for(writable)
        rows: list[bytes | None] = []
        for record, revision in zip(records, revisions, strict=True):
            if not revision:
                rows.append(None)
                continue
            unmapped = self.typed.unmapped(revision)
            columns = typed_columns(record, revision, writable, known[revision], unmapped)
            rows.append(encoder.encode(record, columns))
        return writer, rows

    async def _typed_writer_for(
        self, writable: tuple[Field, ...] | None
    ) -> tuple[StorageWriter, RowEncoder]:
        """The writer of rows with these typed fields; a narrower one retires."""
        current = self._typed_writer
        if current is not None and current[0] == writable:
            return current[1], current[2]
        encoder = RowEncoder(Record, typed_descriptor(writable), derived=self.copies)
        writer = await self._records_writer(encoder)
        self._typed_writer = (writable, writer, encoder)
        now = asyncio.get_running_loop().time()
        done = [w for w, idle_at in self._retired if idle_at <= now]
        self._retired = [(w, t) for w, t in self._retired if t > now]
        if current is not None:
            # Rows handed to it finish there, each within its deadline: at most a
            # write deadline from now.
            self._retired.append((current[1], now + self._write_deadline))
        for retired in done:
            await retired.close()
        return writer, encoder

    async def backfill(
        self,
        since: int,
        until: int,
        *,
        statement_seconds: float,
        max_bytes_billed: int | None = None,
    ) -> Backfilled:
        """Project the records ingested in [since, until) (µs) onto the typed columns
        again, in place (`backfill.py`); BackfillError says why it could not."""
        if self.typed is None or self._revisions is None or self._write_client is None:
            raise StoreUnavailable("the BigQuery store is not started with schema revisions")
        client = self._write_client
        run = Backfill(
            project=self.project,
            dataset=self.dataset,
            call=self._queries.call,
            stream=lambda path, descriptor: OffsetStream(client, path, descriptor),
            typed=self.typed,
            revisions=self._revisions,
            statement_seconds=statement_seconds,
            max_bytes_billed=max_bytes_billed,
            copies=self.layout_copies(),
        )
        return await run.run(since, until)

    async def _write_path_schema(self) -> list[Field]:
        """The records table's columns as the Storage Write API's `_default` stream sees them."""
        if self._write_client is None:
            raise StoreUnavailable("the BigQuery store is not started")
        request = types.GetWriteStreamRequest(
            name=f"{self._table_path('records')}/streams/_default",
            view=types.WriteStreamView.FULL,
        )
        async with asyncio.timeout(self._query_timeout):
            stream = await self._write_client.get_write_stream(
                request=request, retry=None, timeout=self._query_timeout
            )
        return [write_path_field(c) for c in stream.table_schema.fields]

    # Reading

    async def _typed_fields(self) -> tuple[Field, ...]:
        """The typed fields of `records`, for a filter on one; none without typed columns."""
        return () if self.typed is None else await self.typed.readable()

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        # Records are deduplicated on read; rejections are listed as stored.
        read = self._pager.records if kind is Record else self._pager.rejections
        page: Page[Any] = await self._cache.get((kind, query), lambda: read(query))
        return page

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        # One query, billed and capped as a page's (`Pager.counts`); kept as pages are
        # (a copy each: callers sharing one answer never share its list).
        found: list[int] = await self._cache.get(
            ("counts", kind, query), lambda: self._pager.counts(kind, query)
        )
        return list(found)

    async def latest(self, record_id: str, *, before: int = END_OF_TIME) -> Record | None:
        """The latest version among rows stored before `before`."""
        params: dict[str, QueryValue] = {
            "id": record_id,
            "not_before": _ALL_TIME,
            "before": before,
        }

        async def load() -> Record | None:
            found = await self._queries.run(self._sql.latest, params)
            return row_of(Record, found[0]) if found else None

        return await self._cache.get(("latest", record_id, before), load)

    async def message(self, message_id: str, *, before: int = END_OF_TIME) -> MessageStatus | None:
        """What became of a message, among rows stored before `before`."""
        params: dict[str, QueryValue] = {
            "message_id": message_id,
            "not_before": _ALL_TIME,
            "before": before,
        }

        async def load() -> MessageStatus | None:
            stored = await self._queries.run(self._sql.stored, params)
            if stored:
                record = row_of(Record, stored[0])
                return MessageStatus(status="stored", ingest_time=record.ingest_time, record=record)
            rejected = await self._queries.run(self._sql.rejected, params)
            if rejected:
                ingest_time, reason = rejected[0]
                return MessageStatus(status="rejected", ingest_time=ingest_time, reason=reason)
            return None

        return await self._cache.get(("message", message_id, before), load)

    async def seen(
        self, message_ids: Sequence[str], *, before: int = END_OF_TIME
    ) -> dict[str, MessageState]:
        # Not cached: replay asks it right before writing what it did not find.
        if not message_ids:
            return {}
        params: dict[str, QueryValue] = {
            "message_ids": sorted(set(message_ids)),
            "not_before": _ALL_TIME,
            "before": before,
        }
        return message_states(await self._queries.run(self._sql.seen, params, tables=2))

    async def rejections(
        self, message_ids: Sequence[str], *, before: int = END_OF_TIME
    ) -> dict[str, Rejection]:
        if not message_ids:
            return {}
        params: dict[str, QueryValue] = {
            "message_ids": sorted(set(message_ids)),
            "most": COMPARED_BYTES,
            "not_before": _ALL_TIME,
            "before": before,
        }
        found = await self._queries.run(self._sql.compared, params)
        return {r.message_id: r for r in (row_of(Rejection, row) for row in found)}

    # The access record

    async def keep_access(self, lines: Sequence[AccessLine]) -> None:
        """Append the lines to `access_record` within the write deadline: at least
        once (a batch sent again after its answer was lost is there twice, and read
        once), StoreUnavailable if BigQuery did not take them."""
        if not lines:
            return
        if self._access is None:
            raise StoreUnavailable("the BigQuery store is not started")
        deadline = asyncio.get_running_loop().time() + self._write_deadline
        encode = self._access_encoder.encode
        rows = [encode(AccessRow(**msgspec.structs.asdict(line))) for line in lines]
        try:
            answered = await self._access.append(rows, deadline)
        except WriteTimeout as exc:
            # Some may be stored all the same: kept again, they are read once.
            raise StoreUnavailable(f"access_record: {exc}") from exc
        refused = [reason for reason in answered if reason is not None]
        if refused:
            raise StoreUnavailable(f"access_record refused {len(refused)} lines: {refused[0]}")

    async def access_page(self, query: AccessQuery) -> list[AccessLine]:
        """One query of `access_record` (`sql.access_page_sql`), billed and capped as a
        page's; not cached, so that a line kept is read at once."""
        if query.limit <= 0 or query.since >= query.until:
            return []
        params: dict[str, QueryValue] = {
            "since": query.since,
            "until": query.until,
            "limit": query.limit,
        }
        if query.before is not None:
            params["before_time"], params["before_id"] = query.before
        if query.action is not None:
            params["action"] = query.action
        if query.principal is not None:
            params["principal"] = query.principal
        sql = access_page_sql(
            self._sql.access_table,
            before=query.before is not None,
            action=query.action is not None,
            principal=query.principal is not None,
        )
        return [
            AccessLine(
                time=time, id=id_, action=action, principal=principal, status=status, entry=entry
            )
            for time, id_, action, principal, status, entry in await self._queries.run(sql, params)
        ]

    # Dead letters

    async def dead_letter_page(self, query: DeadLetterQuery) -> list[DeadLetter]:
        """One query of `dead_letters` (`sql.dead_letters_sql`), which Pub/Sub's BigQuery
        subscription writes: billed for the days its bounds reach, whole, and capped as a
        page's; not cached, so that a dead letter replayed is read again as it is."""
        if query.limit <= 0 or query.since >= query.until:
            return []
        params: dict[str, QueryValue] = {
            "since": query.since,
            "until": query.until,
            "limit": query.limit,
            "most_bytes": query.most_bytes,
        }
        if query.before is not None:
            params["before_time"], params["before_id"] = query.before
        sql = dead_letters_sql(self._sql.dead_letters_table, before=query.before is not None)
        return [
            DeadLetter(
                publish_time=publish_time,
                message_id=message_id,
                subscription_name=subscription_name,
                # Pub/Sub's subscription writes `data` to a STRING column too (a table
                # made so by hand, not by Terraform): read as its bytes.
                data=data.encode() if isinstance(data, str) else data,
                attributes=attributes,
            )
            for publish_time, message_id, subscription_name, data, attributes in (
                await self._queries.run(sql, params)
            )
        ]

    async def newest_dead_letter_day(self, since: int, before: int) -> int | None:
        """The newest day before `before` whose partition of `dead_letters` holds rows,
        from partition metadata (the 10 MiB minimum); a day that held the last hour is
        answered whatever the metadata says (its newest rows may not be counted yet)."""
        lagging = day_of(_now_micros() - _METADATA_LAG_MICROS)
        if day_of(since) <= lagging < before:
            return lagging
        if since >= before:
            return None
        params: dict[str, QueryValue] = {
            "table": "dead_letters",
            "from_day": _day_id(since),
            "before_day": _day_id(before),
        }
        ((newest,),) = await self._queries.run(self._sql.newest_partition, params)
        if newest is None:
            return None
        return int(datetime.strptime(newest, "%Y%m%d").replace(tzinfo=UTC).timestamp()) * 1_000_000


def _now_micros() -> int:
    return time.time_ns() // 1000


def _day_id(micros: int) -> str:
    """The id of the day partition holding `micros`: YYYYMMDD, UTC."""
    return datetime.fromtimestamp(day_of(micros) // 1_000_000, tz=UTC).strftime("%Y%m%d")


class WatermarkWriter:
    """The exporter's watermarks into BigQuery, at least once (readers take the greatest)."""

    def __init__(self, writer: StorageWriter, encoder: RowEncoder) -> None:
        self._writer = writer
        self._encoder = encoder

    async def start(self) -> None:
        await self._writer.start()

    async def close(self) -> None:
        await self._writer.close()

    async def publish(self, row: ExportWatermark, *, within: float) -> None:
        deadline = asyncio.get_running_loop().time() + within
        (refused,) = await self._writer.append([self._encoder.encode(row)], deadline)
        if refused is not None:
            raise StoreUnavailable(f"export_watermarks refused a row: {refused}")


def _require_stored(outcomes: Sequence[str | None], writer: StorageWriter) -> None:
    # A rejection is the last resort: if BigQuery refuses even that, nothing can
    # hold the message, so it must not be acknowledged.
    reasons = [reason for reason in outcomes if reason is not None]
    if reasons:
        log.error("%s refused %d rejections: %s", writer.table, len(reasons), reasons[0])
        raise StoreUnavailable(f"{writer.table} refused a rejection: {reasons[0]}")

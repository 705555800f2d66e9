"""Backfill on BigQuery: the typed columns of stored records projected again, in place.

`recordline typed backfill` on a BigQuery store (alone, or behind the serving
tier). The projection is the write path's own (`typed.typed_values`), so a fix to
the mapping reaches old rows as it reaches new ones: each record projected once
into a staging table through a COMMITTED stream at offsets, then one `UPDATE …
FROM` it (one transaction), then the staging table dropped.

Design: docs/typed-columns.md#backfill
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from google.api_core.exceptions import GoogleAPIError
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY, DEFAULT_RETRY

from app.errors import StoreUnavailable
from app.store.backoff import Backoff
from app.store.bigquery.layout import NO_COPIES, Copies
from app.store.bigquery.proto import message_class
from app.store.bigquery.queries import billed_bytes
from app.store.bigquery.stream import OffsetStream, RowsRefused, StreamBroken
from app.store.bigquery.typed import (
    ERRORS,
    ERRORS_FIELD,
    FIELDS,
    TypedTable,
    column_of,
    field_of,
    keyed_descriptor,
    typed_of,
    typed_values,
)
from app.typed.mapping import Field, Type
from app.typed.revisions import Revisions

log = logging.getLogger(__name__)

# A staging table outlives a run that died by this much at most.
STAGING_HOURS: Final = 24
# Rows per AppendRows request, and bytes (the API takes 10 MB a request).
_CHUNK_ROWS: Final = 10_000
_CHUNK_BYTES: Final = 8 << 20
# Rows per page of the read's answer.
_PAGE_ROWS: Final = 10_000
# Each HTTP call to BigQuery's REST API ends after this; a statement as a
# whole runs for at most the run's statement timeout.
_API_SECONDS: Final = 60.0
# Attempts at one append (the same offset each time) before the run gives up.
_APPEND_ATTEMPTS: Final = 6


class BackfillError(Exception):
    """The backfill could not finish; nothing in `records` changed. The message says why."""


@dataclasses.dataclass
class Backfilled:
    """What one run did."""

    projected: int = 0  # records projected (each message once)
    updated: int = 0  # rows of `records` changed (every copy of each)
    unknown: int = 0  # records left as they were: their revision is unknown
    bytes_billed: int = 0  # by the read and the UPDATE


Call = Callable[..., Any]


class Backfill:
    """One run over `[since, until)` (µs since the epoch, on `ingest_time`).

    `call(function, seconds=…)` runs a function of the `bigquery.Client` in a
    thread within a deadline (the store's `QueryRunner.call`); `stream` makes
    an `OffsetStream` for a table path and a writer schema; `typed` is the
    store's `TypedTable` of `records`.
    """

    def __init__(
        self,
        *,
        project: str,
        dataset: str,
        call: Call,
        stream: Callable[[str, Any], OffsetStream],
        typed: TypedTable,
        revisions: Revisions,
        statement_seconds: float,
        max_bytes_billed: int | None = None,
        copies: Copies = NO_COPIES,
    ) -> None:
        self._project = project
        # A layout's copies of typed fields, set again from the fields they copy.
        self._copies = [c for c in copies.copies if c.attribute is None]
        self._dataset = dataset
        self._call = call
        self._stream = stream
        self._typed = typed
        self._revisions = revisions
        self._seconds = statement_seconds
        self._max_bytes_billed = max_bytes_billed
        self._records = f"{project}.{dataset}.records"

    async def run(self, since: int, until: int) -> Backfilled:
        done = Backfilled()
        names = await self._revisions_in_range(since, until, done)
        revisions = [self._revisions.revision_of(name) for name in names]
        if not any(revisions):
            return done  # no record of the range has a schema: nothing to project
        known = await self._typed.hold(self._revisions, revisions)
        fields = await self._table_fields()
        staging = f"records_backfill_{uuid.uuid4().hex[:12]}"
        await self._create(staging, fields)
        try:
            await self._stage(staging, fields, since, until, known, done)
            if done.projected:
                if await self._table_fields() != fields:
                    raise BackfillError(
                        "a new revision's fields reached the table while this ran, so the "
                        "projected rows no longer fit it; nothing was changed: run it again"
                    )
                await self._update(staging, fields, since, until, done)
        finally:
            await self._drop(staging)
        return done

    # The statements

    async def _revisions_in_range(
        self, since: int, until: int, done: Backfilled
    ) -> list[str | None]:
        sql = f"SELECT DISTINCT schema FROM `{self._records}` WHERE {_in_range('ingest_time')}"
        rows, _ = await self._query(sql, {"since": since, "until": until}, done)
        return [row[0] for row in rows]

    async def _stage(
        self,
        staging: str,
        fields: tuple[Field, ...] | None,
        since: int,
        until: int,
        known: dict[str, bool],
        done: Backfilled,
    ) -> None:
        """Every record of the range, projected, into the staging table."""
        # Once a message: the copies of one message hold one payload.
        sql = (
            "SELECT message_id, ANY_VALUE(data) AS data, ANY_VALUE(schema) AS schema "
            f"FROM `{self._records}` "
            f"WHERE {_in_range('ingest_time')} GROUP BY message_id"
        )
        descriptor = keyed_descriptor(fields)
        message = message_class(descriptor)
        path = f"projects/{self._project}/datasets/{self._dataset}/tables/{staging}"
        writer = self._stream(path, descriptor)
        try:
            stream = await writer.create()
        except StreamBroken as exc:
            raise BackfillError(f"the staging table takes no stream: {exc}") from exc
        offset = 0
        chunk: list[bytes] = []
        size = 0
        _, pages = await self._query(sql, {"since": since, "until": until}, done, paged=True)
        async for rows in pages:
            for message_id, data, schema in rows:
                revision = self._revisions.revision_of(schema)
                if revision is None:
                    continue
                if not known.get(revision, False):
                    done.unknown += 1
                    continue
                values = typed_values(data, revision, fields, True)
                row = message(message_id=message_id, **values).SerializeToString()
                chunk.append(row)
                size += len(row)
                done.projected += 1
                if len(chunk) >= _CHUNK_ROWS or size >= _CHUNK_BYTES:
                    offset = await self._append(writer, stream, offset, chunk)
                    chunk, size = [], 0
        if chunk:
            await self._append(writer, stream, offset, chunk)
        writer.close()

    async def _append(
        self, writer: OffsetStream, stream: str, offset: int, rows: list[bytes]
    ) -> int:
        """Store `rows` at `offset`, sent again while BigQuery does not answer; the next
        offset. Stored or refused as already there (a resend), they are there once."""
        backoff = Backoff(0.5, 8.0)
        failure: StoreUnavailable | None = None
        for _ in range(_APPEND_ATTEMPTS):
            if failure is not None:
                await asyncio.sleep(backoff.next())
            try:
                await writer.append(stream, offset, rows)
            except StoreUnavailable as exc:
                failure = exc
                continue
            except (StreamBroken, RowsRefused) as exc:
                raise BackfillError(f"the staging rows could not be written: {exc}") from exc
            return offset + len(rows)
        raise BackfillError(f"the staging rows could not be written: {failure}") from failure

    async def _update(
        self,
        staging: str,
        fields: tuple[Field, ...] | None,
        since: int,
        until: int,
        done: Backfilled,
    ) -> None:
        assignments = [f"{ERRORS} = s.{ERRORS}"]
        if fields is not None:
            assignments.insert(0, f"{FIELDS} = s.{FIELDS}")
            # A copy the layout partitions or clusters by follows its field (a row whose
            # copy changes partition moves to its new one, in the same statement).
            for copy in self._copies:
                path = ".".join(f"`{name}`" for name in copy.field)
                assignments.append(f"`{copy.column}` = s.{FIELDS}.{path}")
        sql = (
            f"UPDATE `{self._records}` AS r SET {', '.join(assignments)} "
            f"FROM `{self._table(staging)}` AS s "
            f"WHERE r.message_id = s.message_id AND {_in_range('r.ingest_time')}"
        )
        _, answer = await self._query(sql, {"since": since, "until": until}, done, tables=2)
        done.updated = answer.num_dml_affected_rows or 0

    async def _query(
        self,
        sql: str,
        params: dict[str, int],
        done: Backfilled,
        *,
        paged: bool = False,
        tables: int = 1,
    ) -> tuple[list[tuple[Any, ...]], Any]:
        """Run one statement; its rows (or, `paged`, an async iterator of pages of them)."""
        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(name, "INT64", value)
                for name, value in params.items()
            ],
        )
        if self._max_bytes_billed is not None:
            # Only when set: the client would send None as the text "None".
            config.maximum_bytes_billed = self._max_bytes_billed
        # BigQuery stops the statement itself at the run's timeout, not only the wait.
        config.job_timeout_ms = int(self._seconds * 1000)
        seconds = self._seconds

        def run(client: bigquery.Client) -> Any:
            return client.query_and_wait(
                sql,
                job_config=config,
                api_timeout=_API_SECONDS,
                wait_timeout=seconds,
                retry=DEFAULT_RETRY.with_timeout(seconds),
                job_retry=DEFAULT_JOB_RETRY.with_timeout(seconds),
                page_size=_PAGE_ROWS,
            )

        try:
            answer = await self._call(run, seconds=seconds)
        except (GoogleAPIError, OSError, TimeoutError) as exc:
            raise BackfillError(
                f"BigQuery refused or did not finish: {sql.split()[0]}: {exc}"
            ) from exc
        done.bytes_billed += billed_bytes(answer.total_bytes_processed or 0, tables=tables)
        if paged:
            return [], self._pages(answer)
        rows = await self._call(lambda _: [tuple(r.values()) for r in answer], seconds=seconds)
        return rows, answer

    async def _pages(self, answer: Any) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The answer's rows a page at a time, each page's HTTP call in a thread."""
        pages: Iterator[Any] = iter(answer.pages)

        def following(_: bigquery.Client) -> list[tuple[Any, ...]] | None:
            page = next(pages, None)
            return None if page is None else [tuple(r.values()) for r in page]

        while True:
            try:
                rows = await self._call(following, seconds=_API_SECONDS)
            except (GoogleAPIError, OSError, TimeoutError) as exc:
                raise BackfillError(f"reading the range failed: {exc}") from exc
            if rows is None:
                return
            yield rows

    # The tables

    def _table(self, name: str) -> str:
        return f"{self._project}.{self._dataset}.{name}"

    async def _table_fields(self) -> tuple[Field, ...] | None:
        def get(client: bigquery.Client) -> bigquery.Table:
            return client.get_table(
                self._records, retry=DEFAULT_RETRY.with_timeout(_API_SECONDS), timeout=_API_SECONDS
            )

        try:
            table = await self._call(get, seconds=_API_SECONDS)
        except (GoogleAPIError, OSError, TimeoutError) as exc:
            raise BackfillError(f"{self._records} could not be read: {exc}") from exc
        return typed_of([field_of(c) for c in table.schema])

    async def _create(self, staging: str, fields: tuple[Field, ...] | None) -> None:
        columns = [bigquery.SchemaField("message_id", "STRING", mode="REQUIRED")]
        if fields is not None:
            columns.append(column_of(Field(name=FIELDS, type=Type.RECORD, fields=fields)))
        columns.append(column_of(ERRORS_FIELD))
        table = bigquery.Table(self._table(staging), schema=columns)
        table.expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=STAGING_HOURS)
        table.description = "recordline typed backfill: projected rows, dropped after the run"

        def create(client: bigquery.Client) -> Any:
            return client.create_table(
                table, retry=DEFAULT_RETRY.with_timeout(_API_SECONDS), timeout=_API_SECONDS
            )

        try:
            await self._call(create, seconds=_API_SECONDS)
        except (GoogleAPIError, OSError, TimeoutError) as exc:
            raise BackfillError(f"the staging table could not be made: {exc}") from exc

    async def _drop(self, staging: str) -> None:
        def drop(client: bigquery.Client) -> Any:
            return client.delete_table(
                self._table(staging),
                not_found_ok=True,
                retry=DEFAULT_RETRY.with_timeout(_API_SECONDS),
                timeout=_API_SECONDS,
            )

        try:
            await self._call(drop, seconds=_API_SECONDS)
        except (GoogleAPIError, OSError, TimeoutError) as exc:
            # It expires on its own (STAGING_HOURS); the run's outcome stands.
            log.warning("the staging table %s was left to expire: %s", staging, exc)


def _in_range(column: str) -> str:
    """`column` in [@since, @until): constant bounds, so partitions outside are pruned."""
    return f"{column} >= TIMESTAMP_MICROS(@since) AND {column} < TIMESTAMP_MICROS(@until)"

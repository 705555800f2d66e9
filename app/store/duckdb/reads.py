"""A DuckDB store's reads: pages (of the tail, when it holds them all), a record's
latest, a message's status, which messages are stored; each of DuckDB once every
append made before it is applied.

Design: docs/reading.md
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from app.records import Record, Rejection, row_of
from app.store import COMPARED_BYTES, CountQuery, MessageState, MessageStatus, Page, PageQuery, R
from app.store.copies import message_states
from app.store.duckdb.database import Database
from app.store.duckdb.sql import (
    BOUNDED_PAGE_SQL,
    COMPARED_REJECTIONS_SQL,
    LATEST_SQL,
    NEWEST_RECORDS_SQL,
    OLDER_RECORD_SQL,
    PAGE_SQL,
    RECORD_BY_MESSAGE_SQL,
    REJECTION_BY_MESSAGE_SQL,
    SEEN_SQL,
    counts_sql,
    filter_conditions,
    filtered,
    payload_size,
    read_shown,
    read_within,
)
from app.store.duckdb.typed import TypedColumns
from app.store.live import Live
from app.store.tail import BEGINNING


@dataclass(slots=True)
class DuckDBReads:
    """Reads `database` on its reader threads once `applied_now` returns, and pages of
    records from `live`'s tail where it holds them all; a filter's typed fields are
    `typed`'s."""

    database: Database
    applied_now: Callable[[], Awaitable[None]]
    live: Live
    typed: TypedColumns

    async def warm_tail(self, now: int) -> None:
        """Start the tail with the records of its window, as DuckDB holds them: a
        follower near the tail reads memory after a restart as before it, rather than
        a query a page until the tail has filled again. Where DuckDB holds nothing older
        than the window (a store just made) and the tail has room for all it holds, the
        tail starts before every key, and a reader from the first record reads memory."""
        tail = self.live.tail
        since = now - tail.window
        limit = tail.max_rows + 1
        params = {"since": since, "limit": limit}

        def newest() -> tuple[list[Record], bool, bool]:
            connection = self.database.connection()
            # Newest first, until they hold more than the tail keeps (`Tail.max_bytes`).
            found, more = read_within(
                connection,
                NEWEST_RECORDS_SQL,
                params,
                Record,
                tail.max_bytes,
                payload_size(Record),
            )
            # Fetched to its end (`fetchall`): a result left unfinished on the writer's
            # connection refuses every apply after it (see `read_within`).
            older = connection.execute(OLDER_RECORD_SQL, {"since": since}).fetchall()
            return found, more, bool(older)

        found, more, older = await self.database.write(newest)
        records = found[::-1]
        if more or len(records) == limit:
            # More than the tail holds: it starts after the oldest of those read.
            oldest = records.pop(0)
            self.live.readable(records, now=now, since=(oldest.ingest_time, oldest.message_id))
        else:
            self.live.readable(records, now=now, since=(since, "") if older else BEGINNING)

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        if kind is Record and self.live.covers(query):
            # Every record before `before_time` is applied or shown (the read
            # horizon), so the tail holds every one after the cursor: no query. A
            # closed store answers no page, from memory neither.
            self.database.connection()
            page: Page[Any] = self.live.page(query, query.before_time)
            return page
        sql, bounded, conditions = PAGE_SQL[kind], BOUNDED_PAGE_SQL[kind], dict[str, Any]()
        if query.filter:
            sql, bounded, conditions = filtered(kind, query.filter, self.typed.fields)
        await self.applied_now()
        params = {
            "after_time": query.after_time,
            "after_message_id": query.after_message_id,
            "before_time": query.before_time,
            "limit": query.limit,
            **conditions,
        }
        if query.max_bytes is None:
            found = await self.database.read(lambda cur: cur.execute(sql, params).fetchall())
            return query.answer([row_of(kind, r) for r in found])
        max_bytes, size = query.max_bytes, payload_size(kind)
        # Records as their JSON where the reader shows the whole view; a projection's
        # page (leaving `data` or `attributes` out) is read as without it: DuckDB reads
        # the payload of the rows a page returns alone, and bills nothing.
        if kind is Record and query.shown and not query.left_out and not query.filter:
            shown = await self.database.read(
                lambda cur: read_shown(cur, query.shown, {**params, "max_bytes": max_bytes})
            )
            if shown is not None:
                found_shown, reached = shown
                answer: Page[Any] = query.answer(
                    found_shown, full=reached or len(found_shown) >= query.limit
                )
                return answer
        rows, reached = await self.database.read(
            lambda cur: read_within(cur, bounded, params, kind, max_bytes, size)
        )
        # They hold `max_bytes` (by `row_bytes`, which `size` is), or are `limit` rows.
        return query.answer(rows, full=reached or len(rows) >= query.limit)

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        """One GROUP BY of the range, the filter's conditions those of its pages; a table
        keeps each message once (its primary key), so every row counted is a first copy."""
        if not query.check():
            return []
        where, params = "", dict[str, Any]()
        if query.filter:
            where, params = filter_conditions(kind, query.filter, self.typed.fields)
        sql = counts_sql(kind, where)
        params |= {"since": query.since, "until": query.until, "width": query.width}
        await self.applied_now()
        found = await self.database.read(lambda cur: cur.execute(sql, params).fetchall())
        return query.tally(found)

    async def latest(self, record_id: str) -> Record | None:
        await self.applied_now()
        rows = await self.database.read(
            lambda cur: cur.execute(LATEST_SQL, {"id": record_id}).fetchall()
        )
        return row_of(Record, rows[0]) if rows else None

    async def message(self, message_id: str) -> MessageStatus | None:
        await self.applied_now()
        params = {"message_id": message_id}

        def lookup(cur: duckdb.DuckDBPyConnection) -> MessageStatus | None:
            stored = cur.execute(RECORD_BY_MESSAGE_SQL, params).fetchall()
            if stored:
                record = row_of(Record, stored[0])
                return MessageStatus(status="stored", ingest_time=record.ingest_time, record=record)
            rejected = cur.execute(REJECTION_BY_MESSAGE_SQL, params).fetchall()
            if rejected:
                ingest_time, reason = rejected[0]
                return MessageStatus(status="rejected", ingest_time=ingest_time, reason=reason)
            return None

        return await self.database.read(lookup)

    async def seen(self, message_ids: Sequence[str]) -> dict[str, MessageState]:
        if not message_ids:
            return {}
        await self.applied_now()
        params = {"ids": list(message_ids)}
        return message_states(
            await self.database.read(lambda cur: cur.execute(SEEN_SQL, params).fetchall())
        )

    async def rejections(self, message_ids: Sequence[str]) -> dict[str, Rejection]:
        if not message_ids:
            return {}
        await self.applied_now()
        params = {"ids": list(message_ids), "most": COMPARED_BYTES}
        found = await self.database.read(
            lambda cur: cur.execute(COMPARED_REJECTIONS_SQL, params).fetchall()
        )
        return {r.message_id: r for r in (row_of(Rejection, row) for row in found)}

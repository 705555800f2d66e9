"""How the BigQuery store cuts a page of first copies, and what a page may cost.

Every page returns the first copy of each message whose first copy lies after
the cursor, in `(ingest_time, message_id)` order, and resumes from the last row
it *examined*, so the next page neither repeats nor skips a row. A row is a later
copy, and hidden, when an earlier copy lies within its look-back: after its
publish time (less the clock margin) and within the dedupe window. A page's
queries are bounded by construction: `MAX_QUERIES_PER_PAGE`.

Design: docs/stores.md#bigquery-bigqueryprojectdataset
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from app.errors import BadParameter
from app.records import CLOCK_SKEW_MICROS, DAY_MICROS, Record, Rejection, column_names, row_of
from app.store import UNSHOWN_COLUMNS, CountQuery, Page, PageQuery, R
from app.store.bigquery.queries import QueryRunner, QueryValue, Rows
from app.store.bigquery.sql import (
    Statements,
    page_sql,
    record_counts_sql,
    rejection_counts_sql,
    rejections_sql,
)
from app.store.filters import RowFilter, typed_field, typed_value
from app.store.where import BIGQUERY, to_sql
from app.typed.mapping import Field

# Twice the 30 minutes rows stay in write-optimized storage, where partition
# metadata may not count them yet.
_METADATA_LAG_MICROS: Final = 3_600_000_000

# Time ranges one page scans, widened in turn while it finds fewer rows than
# it may return. A page pays for every block its range touches, so the first
# range is short (5 minutes is 30,000 rows at 100 msg/s, more than any page);
# a sparse stream widens to an hour, then a day and an hour, the most one page
# scans: from the day a jump may stop at (`Pager._next_rows`), that reaches the
# horizon. A page that found too few rows even then ends where its scan ended,
# complete only to there, and the next one goes on from there, instead of
# scanning to the horizon.
SCAN_SPANS_MICROS: Final = (300_000_000, 3_600_000_000, DAY_MICROS + _METADATA_LAG_MICROS)

# A filtered page widens its scan to an hour at most: a filter that keeps few rows
# would otherwise scan a day and an hour of every column for one page (4 GB at 100
# msg/s, over the default cap). Such a page scans an hour, and an hour more from the
# next rows after it (the jump), and ends there, complete to there; the next goes on.
# A selective filter over a long range costs what reading the range costs, two hours
# of it a page at most, every query under the cap.
FILTERED_SCAN_SPANS_MICROS: Final = SCAN_SPANS_MICROS[:2]

# Two rounds of widening scans, the jump's two look-ups, one earlier-copies
# query (records only: a rejections page makes one query fewer at most).
MAX_QUERIES_PER_PAGE: Final = 2 * len(SCAN_SPANS_MICROS) + 2 + 1

# Every copy of a message is stored after Pub/Sub published it, so an earlier
# copy of a row lies between its publish_time (less CLOCK_SKEW_MICROS) and its
# ingest_time, not anywhere in the dedupe window.

# A page's scan starts this far before its cursor, so that the earlier
# copies of rows published up to (this - skew) before being stored, which is
# nearly every row, are found by the page's own query. Rows that waited
# longer (a backlog draining) are checked by a second, indexed query.
EARLIER_COPIES_MICROS: Final = 120_000_000

Params = Callable[[PageQuery, int], dict[str, QueryValue]]


# The typed fields the records table holds, for a filter on one (read once if need be).
TypedFields = Callable[[], Awaitable[Sequence[Field]]]


def _with(params: Params, values: dict[str, QueryValue]) -> Params:
    """`params` with a filter's values added."""

    def both(query: PageQuery, end: int) -> dict[str, QueryValue]:
        return params(query, end) | values

    return both


# Where each JSON column a page may leave out is among a record's columns.
_AT: Final = {name: at for at, name in enumerate(column_names(Record)) if name in UNSHOWN_COLUMNS}


def _filled(row: tuple[Any, ...], unshown: tuple[str, ...]) -> tuple[Any, ...]:
    """A row of a page whose `unshown` columns were not selected, with each as empty
    text where a record's columns hold it (the reader shows none of it)."""
    values = list(row)
    for name in sorted(unshown, key=_AT.__getitem__):
        values.insert(_AT[name], "")
    return tuple(values)


def _day(micros: int) -> str:
    """The id of the day partition holding `micros`: YYYYMMDD, UTC."""
    return datetime.fromtimestamp(micros // 1_000_000, tz=UTC).strftime("%Y%m%d")


def _page(
    query: PageQuery, rows: list[R], examined: Sequence[Record | Rejection], end: int
) -> Page[R]:
    """The page of `rows`, cut after the rows the scan `examined` up to `end`. A short
    page whose scan ended before the horizon is complete only up to where it ended:
    rows may lie between there and the horizon, for the next page to find."""
    short = len(examined) < query.limit and end < query.before_time
    return Page(rows, *query.resume(examined, end), complete_until=end if short else None)


class Pager:
    """Pages of records and of rejections, cut by the rules in the module notes."""

    def __init__(
        self,
        run: QueryRunner,
        statements: Statements,
        *,
        dedupe_window_micros: int,
        typed: TypedFields | None = None,
    ) -> None:
        self._run = run.run
        self._sql = statements
        self._window = dedupe_window_micros
        self._typed = typed
        # Whether the partitions of `records` are its days of ingest_time, as they are
        # unless a layout partitions it by another column (`layout.py`): only then does
        # partition metadata say which days of ingest hold rows.
        self.partitions_by_ingest_time = True

    async def records(self, query: PageQuery) -> Page[Record]:
        sql: str = self._sql.page
        params: Params = self._page_params
        # The columns the reader shows none of (`PageQuery.shown`): never returned, and
        # not read at all unless the filter reads them.
        unshown = query.left_out
        keep = query.filter
        unread = tuple(c for c in unshown if not (keep and keep.reads(c)))
        if keep or unshown:
            conditions, copies, values = "", "", dict[str, QueryValue]()
            if keep:
                conditions, copies, values = await self._conditions(Record, keep, "c")
                params = _with(params, values)
            sql = page_sql(
                self._sql.records_table,
                conditions,
                copies,
                unshown=unshown,
                unread=unread,
                typed=bool(keep and keep.fields),
            )
        query, found, end = await self._scan_or_jump(
            query, sql, params, "records", self._sql.first_row
        )
        if unshown:
            found = [_filled(row, unshown) for row in found]
        candidates = [row_of(Record, row[:-1]) for row in found]
        hidden = await self._hidden(candidates, [row[-1] for row in found], query.after_time)
        records = [r for r in candidates if r.message_id not in hidden]
        # Later copies left out still moved the cursor: it follows the candidates.
        return _page(query, records, candidates, end)

    async def rejections(self, query: PageQuery) -> Page[Rejection]:
        # Cut like a records page, without the dedupe pass: a message rejected
        # on two deliveries is listed twice (replay is idempotent).
        sql: str = self._sql.rejections
        params: Params = self._rejections_params
        if query.filter:
            conditions, _, values = await self._conditions(Rejection, query.filter, "j")
            sql = rejections_sql(self._sql.rejected_table, conditions)
            params = _with(params, values)
        _, found, end = await self._scan_or_jump(
            query, sql, params, "rejected", self._sql.first_rejection
        )
        rows = [row_of(Rejection, row) for row in found]
        return _page(query, rows, rows, end)

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        """How many rows a walk of filtered pages over the query's range keeps, by
        bucket, in one query (`record_counts_sql`, `rejection_counts_sql`): the page's
        conditions, on the copy a page shows. A later copy whose earlier copy lies more
        than EARLIER_COPIES_MICROS before `since` is counted (a page reading from `since`
        finds that copy by a second query and leaves the later one out)."""
        if not query.check():
            return []
        params: dict[str, QueryValue] = {
            "since": query.since,
            "until": query.until,
            "width": query.width,
        }
        if kind is Record:
            kept, copies, values = "", "", dict[str, QueryValue]()
            if query.filter:
                kept, copies, values = await self._conditions(Record, query.filter, "r")
            sql = record_counts_sql(self._sql.records_table, f"TRUE{kept}", copies)
            params |= {
                "reach": query.since - EARLIER_COPIES_MICROS,
                "clock_skew": CLOCK_SKEW_MICROS,
                "window": self._window,
            }
        else:
            conditions, values = "", {}
            if query.filter:
                conditions, _, values = await self._conditions(Rejection, query.filter, "j")
            sql = rejection_counts_sql(self._sql.rejected_table, conditions)
        found = await self._run(sql, params | values)
        return query.tally((bucket, rows) for bucket, rows in found)

    async def _conditions(
        self, kind: type[Record | Rejection], keep: RowFilter, alias: str
    ) -> tuple[str, str, dict[str, QueryValue]]:
        """A filter's conditions on the rows shown (`alias`), those every copy of a
        message shares (the scan's own, `r`), and their parameters. Values are named
        parameters, a JSONPath too; a typed field's names, held to FIELD_NAME_PATTERN,
        are quoted into the text."""
        shown: list[str] = []
        copies: list[str] = []
        values: dict[str, QueryValue] = {}
        for at, attribute in enumerate(keep.attributes):
            shown.append(f"JSON_VALUE({alias}.attributes, @path{at}) = @value{at}")
            values[f"path{at}"], values[f"value{at}"] = attribute.path, attribute.value
        if keep.message_id is not None:
            # Every copy has it: the scan reads that message's copies alone, through
            # the search index on message_id where the blocks are indexed.
            (copies if kind is Record else shown).append(
                f"{'r' if kind is Record else alias}.message_id = @message_id"
            )
            values["message_id"] = keep.message_id
        if keep.record_id is not None:
            # On the copy shown only: a later copy may carry another id. A rejection
            # has no record id, so none matches one.
            shown.append(f"{alias}.id = @record_id" if kind is Record else "FALSE")
            if kind is Record:
                values["record_id"] = keep.record_id
        if keep.fields:
            if kind is not Record:
                raise BadParameter("field", "rejections have no typed fields")
            typed = await self._typed() if self._typed is not None else ()
            for at, condition in enumerate(keep.fields):
                field = typed_field(typed, condition)
                column = ".".join([alias, "`fields`", *(f"`{name}`" for name in condition.path)])
                shown.append(f"{column} = @field{at}")
                values[f"field{at}"] = typed_value(field, condition)

        expression = keep.expression("records" if kind is Record else "rejections")
        if expression is not None:
            term, found = to_sql(expression, BIGQUERY, alias=alias)
            shown.append(term)
            values |= found

        def joined(conditions: list[str]) -> str:
            return "".join(f"\n  AND {c}" for c in conditions)

        return joined(shown), joined(copies), values

    async def _scan_or_jump(
        self, query: PageQuery, sql: str, params: Params, table: str, first_row: str
    ) -> tuple[PageQuery, Rows, int]:
        """The widening scans after the cursor; if even a day held too few rows,
        the same scans from the next day of `table` that holds any. Returns the
        query the rows answer (its cursor moved by a jump), the rows, and
        where the last scan ended."""
        found, end = await self._scan(query, sql, params)
        if len(found) < query.limit and end < query.before_time:
            start = await self._next_rows(end, query.before_time, table, first_row)
            if start > end:
                query = msgspec.structs.replace(query, after_time=start, after_message_id="")
                found, end = await self._scan(query, sql, params)
        return query, found, end

    async def _scan(self, query: PageQuery, sql: str, params: Params) -> tuple[Rows, int]:
        """Rows after the cursor over widening ranges, and where the last scan ended."""
        end = query.before_time
        found: Rows = []
        for span in FILTERED_SCAN_SPANS_MICROS if query.filter else SCAN_SPANS_MICROS:
            end = min(query.before_time, query.after_time + span)
            found = await self._run(sql, params(query, end))
            if len(found) == query.limit or end == query.before_time:
                break
        return found, end

    def _page_params(self, query: PageQuery, end: int) -> dict[str, QueryValue]:
        return {
            "reach": query.after_time - EARLIER_COPIES_MICROS,
            "end": end,
            "after_time": query.after_time,
            "after_message_id": query.after_message_id,
            "clock_skew": CLOCK_SKEW_MICROS,
            "window": self._window,
            "limit": query.limit,
        }

    @staticmethod
    def _rejections_params(query: PageQuery, end: int) -> dict[str, QueryValue]:
        return {
            "end": end,
            "after_time": query.after_time,
            "after_message_id": query.after_message_id,
            "limit": query.limit,
        }

    async def _next_rows(self, after: int, before: int, table: str, first_row: str) -> int:
        """Where the first partition at or after `after` that holds rows starts.

        Rows still in write-optimized storage (the last 30 minutes) may not be
        counted in partition metadata yet, so the jump never passes the start
        of the day that held `before` an hour earlier: that day is scanned.
        """
        floor = (before - _METADATA_LAG_MICROS) // DAY_MICROS * DAY_MICROS
        if after >= floor:
            return after
        if table == "records" and not self.partitions_by_ingest_time:
            # Partitions by another column's days say nothing of ingest: the first row
            # is read from ingest_time itself, over everything up to the floor (one
            # narrow column; clustering on ingest_time prunes it to its blocks).
            bounds_to_floor: dict[str, QueryValue] = {"since": after, "until": floor}
            ((row,),) = await self._run(first_row, bounds_to_floor)
            return floor if row is None else int(row)
        params: dict[str, QueryValue] = {
            "table": table,
            "from_day": _day(after),
            "before_day": _day(floor),
        }
        ((first,),) = await self._run(self._sql.next_partition, params)
        if first is None:
            return floor
        day = int(datetime.strptime(first, "%Y%m%d").replace(tzinfo=UTC).timestamp()) * 1_000_000
        # The day's first row, read from ingest_time alone: a page starting
        # at midnight would scan the hours before it with every column.
        since = max(after, day)
        bounds: dict[str, QueryValue] = {"since": since, "until": day + DAY_MICROS}
        ((row,),) = await self._run(first_row, bounds)
        return since if row is None else int(row)

    def _look_back(self, record: Record) -> int:
        """Where an earlier copy of this row may start: after its publish, within the window."""
        return max(record.publish_time - CLOCK_SKEW_MICROS, record.ingest_time - self._window)

    async def _hidden(
        self, candidates: list[Record], previous: list[int | None], after_time: int
    ) -> set[str]:
        """Message ids among `candidates` whose earlier copy lies before the page's scan."""
        reach = after_time - EARLIER_COPIES_MICROS
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
        last_copy: dict[str, int] = dict(await self._run(self._sql.earlier_copies, params))
        return {
            r.message_id
            for r in unsure
            if r.message_id in last_copy and last_copy[r.message_id] >= self._look_back(r)
        }

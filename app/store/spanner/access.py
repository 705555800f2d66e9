"""The access record in the serving tier's Spanner database: the table `access_record`.

A line is a row keyed by `(time DESC, id DESC)`: the key is the record's own order,
newest first, so a page is one range of the key read from its start (or from the
cursor) and stopped at its limit, never a sort. A key that begins with a time puts
every write at one end of the table, which Spanner serves from one split: a hotspot
only where writes come faster than a split takes them (thousands a second), and an
access record takes a few lines a second at most, written in batches every few
seconds by each instance. A write is `insert_or_update` of whole rows: a line
written again (a write retried after its answer was lost) is the same row. The row
deletion policy keeps a line as long as the rows (`schema.py`).

Design: docs/stores.md#serving-tier-spanner-in-front-of-bigquery-recordline_serving
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from google.cloud.spanner_v1 import param_types

from app.records import AccessRow, columns, moment
from app.store.access import AccessLine, AccessQuery
from app.store.spanner.calls import Deadline, SpannerCalls, in_transaction, sql_rows

TABLE: Final = "access_record"
NAMES: Final = [c.name for c in columns(AccessRow)]
# Lines written in one transaction at most: 6 mutations each, far within Spanner's
# 80,000 a commit, and a few seconds of an instance's lines many times over.
_LINES_A_COMMIT: Final = 2_000

_TYPES: Final = {
    "since": param_types.TIMESTAMP,
    "until": param_types.TIMESTAMP,
    "before_time": param_types.TIMESTAMP,
    "before_id": param_types.STRING,
    "action": param_types.STRING,
    "principal": param_types.STRING,
    "limit": param_types.INT64,
}


def page_sql(query: AccessQuery) -> str:
    """The page's statement: the key's range from `until` (or the cursor) down to
    `since`, in key order, each filter checked on the rows of that range."""
    conditions = ["`time` >= @since", "`time` < @until"]
    if query.before is not None:
        conditions.append("`time` <= @before_time AND (`time` < @before_time OR id < @before_id)")
    if query.action is not None:
        conditions.append("action = @action")
    if query.principal is not None:
        conditions.append("principal = @principal")
    where = "\n  AND ".join(conditions)
    return (
        "SELECT UNIX_MICROS(`time`), id, action, principal, status, entry\n"
        f"FROM {TABLE}\n"
        f"WHERE {where}\n"
        "ORDER BY `time` DESC, id DESC\n"
        "LIMIT @limit"
    )


def page_params(query: AccessQuery) -> tuple[dict[str, Any], dict[str, Any]]:
    """The values the page's statement names, and their types."""
    params: dict[str, Any] = {
        "since": moment(query.since),
        "until": moment(query.until),
        "limit": query.limit,
    }
    if query.before is not None:
        params["before_time"] = moment(query.before[0])
        params["before_id"] = query.before[1]
    if query.action is not None:
        params["action"] = query.action
    if query.principal is not None:
        params["principal"] = query.principal
    return params, {name: _TYPES[name] for name in params}


class SpannerAccess:
    """The access record of one serving database, each call within its deadline."""

    def __init__(self, calls: SpannerCalls, count: Callable[[int], None]) -> None:
        self._calls = calls
        self._count = count

    async def keep(self, lines: Sequence[AccessLine], *, within: float) -> None:
        """Write the lines, each a row by its key, in transactions of at most
        _LINES_A_COMMIT lines, all within `within` seconds (the wait for a turn
        included); StoreUnavailable if not."""
        for start in range(0, len(lines), _LINES_A_COMMIT):
            await self._calls.transact(
                self._keep, lines[start : start + _LINES_A_COMMIT], within=within
            )

    def _keep(self, deadline: Deadline, lines: Sequence[AccessLine]) -> None:
        values = [
            [
                moment(line.time),
                line.id,
                line.action,
                line.principal,
                line.status,
                line.entry,
            ]
            for line in lines
        ]

        def work(transaction: Any) -> None:
            transaction.insert_or_update(TABLE, NAMES, values)

        in_transaction(self._calls.database(), deadline, work)

    async def page(self, query: AccessQuery) -> list[AccessLine]:
        """At most `query.limit` lines, newest first: one strong read."""
        if query.limit <= 0 or query.since >= query.until:
            return []
        return await self._calls.call(self._page, query)

    def _page(self, deadline: Deadline, query: AccessQuery) -> list[AccessLine]:
        params, types = page_params(query)
        self._count(1)
        with self._calls.database().snapshot() as snapshot:
            rows = sql_rows(snapshot, deadline, page_sql(query), params=params, param_types=types)
            return [
                AccessLine(
                    time=int(time),
                    id=id_,
                    action=action,
                    principal=principal,
                    status=int(status),
                    entry=entry,
                )
                for time, id_, action, principal, status, entry in rows
            ]

"""The access record as a store keeps it: each line of `recordline.access` (who read,
exported, replayed or was refused what) kept in the system's own store beside its rows,
for operators to read back newest first (`GET /v1/access`, the console's Access page).

A line is kept whole, as logged (its JSON never holds a masked value), with the few
fields a read filters on beside it. A line is keyed by an id its instance made, so a
line written twice (a write retried after its answer was lost) reads once. Lines are
kept ACCESS_RETENTION_DAYS, whatever the rows' retention.

Design: docs/security.md#who-read-what
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Protocol, runtime_checkable

import msgspec

# A page of the access record holds at most so many lines.
MOST_LINES: Final = 500
# How long every store keeps a line: an audit record's year and a month (Cloud Audit
# Logs keep admin activity as long), whatever the store keeps of its rows.
ACCESS_RETENTION_DAYS: Final = 400
# Who a line of no principal names (no guard named anyone: no authentication, a token
# that was not valid), as the log says it and `principal=` asks for it. A principal is
# otherwise an e-mail, the push secret's holder or "read pass", never this word.
ANYONE: Final = "anyone"


class AccessLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the access record as kept."""

    # When its request ended (µs since the epoch, UTC), and an id unique to the line
    # (the instance's own, then a counter): together the line's key and order.
    time: int
    id: str
    action: str
    principal: str | None
    status: int
    # The line as logged, a JSON object (app.http.access.line and what followed).
    entry: str


class AccessQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Lines newest first: `time` in `[since, until)`, before `before` where given
    (the key of the last line of the page before), of one action or principal."""

    since: int
    until: int
    before: tuple[int, str] | None = None
    action: str | None = None
    principal: str | None = None
    limit: int = MOST_LINES


@runtime_checkable
class KeepsAccess(Protocol):
    """A store that keeps the access record beside its rows."""

    async def keep_access(self, lines: Sequence[AccessLine]) -> None:
        """Keep the lines durably, or raise StoreUnavailable; a line kept already (by
        its `time` and `id`) is kept once."""

    async def access_page(self, query: AccessQuery) -> list[AccessLine]:
        """The query's lines, newest first by (`time`, `id`), at most `query.limit`."""


def key(line: AccessLine) -> tuple[int, str]:
    return (line.time, line.id)


def kept(query: AccessQuery, line: AccessLine) -> bool:
    """Whether `query` asks for `line`: what every store's read answers."""
    return (
        query.since <= line.time < query.until
        and (query.before is None or key(line) < query.before)
        and (query.action is None or line.action == query.action)
        and (query.principal is None or (line.principal or ANYONE) == query.principal)
    )


def page_of(query: AccessQuery, lines: Iterable[AccessLine]) -> list[AccessLine]:
    """The page `query` asks of `lines`, each line once by its key: the oracle every
    store's `access_page` is held to, and the read of a store that holds lines in memory."""
    unique = {key(line): line for line in lines if kept(query, line)}
    return [unique[k] for k in sorted(unique, reverse=True)[: query.limit]]

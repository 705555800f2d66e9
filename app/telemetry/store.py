"""A Store that reports every call: a span, and its duration as a metric.

It wraps whichever store `create_app` was given, so DuckDB, BigQuery and test
fakes are observed alike; a store adds what only it knows (BigQuery's bytes
processed and job id) through the `QueryObserver` it was given, `record_query`.

Every method of the Store protocol is written out here, none inherited: a
method added to the protocol and not observed makes this class fail to be a
Store (mypy says so, and a test checks each read has a route), instead of
being forwarded in silence.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer

from app.records import Record, Rejection
from app.store import (
    READ_ROUTE,
    CountQuery,
    MessageState,
    MessageStatus,
    Page,
    PageQuery,
    R,
    RowOutcome,
    Store,
)
from app.store.access import AccessLine, AccessQuery, KeepsAccess
from app.store.dead_letters import DeadLetter, DeadLetterQuery, ReadsDeadLetters
from app.telemetry.metrics import Metrics
from app.telemetry.traces import QUERY_COST, QueryCost

# `route` of recordline.query.duration: the API route each query serves.
_PAGE_ROUTE = {"route": "/v1/records"}
_REJECTIONS_ROUTE = {"route": "/v1/rejections"}
_LATEST_ROUTE = {"route": "/v1/records/{record_id}"}
_MESSAGE_ROUTE = {"route": "/v1/messages/{message_id}"}
_REPLAY_ROUTE = {"route": "/v1/replay"}
_ACCESS_ROUTE = {"route": "/v1/access"}
_DEAD_LETTERS_ROUTE = {"route": "/v1/dead-letters"}
# The routes users read through: the read-latency SLO counts these (a test keeps
# Terraform's list equal), not replay's look-ups, which are an operator's batch.
READ_ROUTES = tuple(r["route"] for r in (_PAGE_ROUTE, _LATEST_ROUTE, _MESSAGE_ROUTE))


# A page of records or of rejections: each is its own route, and its own span name.
_PAGES: dict[type[Record | Rejection], tuple[str, dict[str, str]]] = {
    Record: ("page", _PAGE_ROUTE),
    Rejection: ("rejections", _REJECTIONS_ROUTE),
}
# A count of records or of rejections: each is its own route (`/v1/counts/…`).
_COUNTS: dict[type[Record | Rejection], tuple[str, dict[str, str]]] = {
    Record: ("counts", {"route": "/v1/counts/records"}),
    Rejection: ("counts.rejections", {"route": "/v1/counts/rejections"}),
}
# Each read of the Store protocol, and the route whose duration it is counted in
# (a page's, by what it pages: `_PAGES`; a count's, by what it counts: `_COUNTS`).
READ_METHODS = {
    "page": _PAGE_ROUTE,
    "counts": _COUNTS[Record][1],
    "latest": _LATEST_ROUTE,
    "message": _MESSAGE_ROUTE,
    "seen": _REPLAY_ROUTE,
    "rejections": _REPLAY_ROUTE,
}


class ObservedStore:
    def __init__(self, inner: Store, *, tracer: Tracer, metrics: Metrics) -> None:
        self.inner = inner
        self.max_in_flight = inner.max_in_flight
        self.stamps_at_commit = inner.stamps_at_commit
        self.live = inner.live
        self.completeness = inner.completeness
        self._tracer = tracer
        self._metrics = metrics
        self._system = {"recordline.store": type(inner).__name__}

    # Life cycle and horizon: not queries, not timed.

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def check(self) -> None:
        await self.inner.check()

    async def barrier(self) -> None:
        await self.inner.barrier()

    def read_horizon(self, now: int) -> int:
        return self.inner.read_horizon(now)

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        # A child of a traced flush only (see FlushTracer): an untraced flush
        # has no span to hang this one on.
        if not trace.get_current_span().is_recording():
            return await self._append(rows)
        with self._tracer.start_as_current_span(
            "recordline.store.append",
            kind=SpanKind.CLIENT,
            attributes={**self._system, "recordline.append.rows": len(rows)},
        ):
            return await self._append(rows)

    async def _append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        started = time.perf_counter()
        stored = False
        try:
            outcomes = await self.inner.append(rows)
            stored = True
            return outcomes
        finally:
            self._metrics.appended(rows, time.perf_counter() - started, stored)

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        with self._query(*_PAGES[kind]) as span:
            page = await self.inner.page(kind, query)
            span.set_attribute("db.response.returned_rows", len(page.rows))
            return page

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        with self._query(*_COUNTS[kind]) as span:
            counts = await self.inner.counts(kind, query)
            span.set_attribute("db.response.returned_rows", len(counts))
            return counts

    async def latest(self, record_id: str) -> Record | None:
        with self._query("latest", _LATEST_ROUTE) as span:
            record = await self.inner.latest(record_id)
            span.set_attribute("db.response.returned_rows", int(record is not None))
            return record

    async def message(self, message_id: str) -> MessageStatus | None:
        with self._query("message", _MESSAGE_ROUTE) as span:
            status = await self.inner.message(message_id)
            span.set_attribute("db.response.returned_rows", int(status is not None))
            return status

    async def seen(self, message_ids: Sequence[str]) -> dict[str, MessageState]:
        with self._query("seen", _REPLAY_ROUTE) as span:
            states = await self.inner.seen(message_ids)
            span.set_attribute("db.response.returned_rows", len(states))
            return states

    async def rejections(self, message_ids: Sequence[str]) -> dict[str, Rejection]:
        with self._query("compared", _REPLAY_ROUTE) as span:
            found = await self.inner.rejections(message_ids)
            span.set_attribute("db.response.returned_rows", len(found))
            return found

    @contextmanager
    def _query(self, name: str, route: dict[str, str]) -> Iterator[Span]:
        """A span for one read (in a traced request only), and its duration by API
        route, failed or not."""
        started = time.perf_counter()
        cost = QueryCost()
        token = QUERY_COST.set(cost)
        traced = trace.get_current_span().is_recording()
        with (
            self._tracer.start_as_current_span(
                f"recordline.store.{name}", kind=SpanKind.CLIENT, attributes=self._system
            )
            if traced
            else contextlib.nullcontext(trace.INVALID_SPAN)
        ) as span:
            try:
                yield span
            finally:
                QUERY_COST.reset(token)
                served = READ_ROUTE.get()
                if served is not None:
                    route = {"route": served}
                self._metrics.query_duration.record(time.perf_counter() - started, route)
                if cost.bytes_billed:
                    self._metrics.query_bytes_billed.add(cost.bytes_billed, route)


class ObservedAccess:
    """A store's access record, its reads observed as the Store protocol's are: a span,
    and `GET /v1/access`'s duration and bytes billed (a billed query on BigQuery)."""

    def __init__(self, inner: KeepsAccess, observed: ObservedStore) -> None:
        self._inner = inner
        self._observed = observed

    async def keep_access(self, lines: Sequence[AccessLine]) -> None:
        await self._inner.keep_access(lines)

    async def access_page(self, query: AccessQuery) -> list[AccessLine]:
        with self._observed._query("access", _ACCESS_ROUTE) as span:
            lines = await self._inner.access_page(query)
            span.set_attribute("db.response.returned_rows", len(lines))
            return lines


class ObservedDeadLetters:
    """A store's dead letters, their reads observed as the Store protocol's are:
    `GET /v1/dead-letters`'s duration and bytes billed, the day's look-up with them."""

    def __init__(self, inner: ReadsDeadLetters, observed: ObservedStore) -> None:
        self._inner = inner
        self._observed = observed

    async def dead_letter_page(self, query: DeadLetterQuery) -> list[DeadLetter]:
        with self._observed._query("dead_letters", _DEAD_LETTERS_ROUTE) as span:
            letters = await self._inner.dead_letter_page(query)
            span.set_attribute("db.response.returned_rows", len(letters))
            return letters

    async def newest_dead_letter_day(self, since: int, before: int) -> int | None:
        with self._observed._query("dead_letter_days", _DEAD_LETTERS_ROUTE):
            return await self._inner.newest_dead_letter_day(since, before)


def observed_reads(
    observed: ObservedStore,
) -> tuple[Store | KeepsAccess, Store | ReadsDeadLetters]:
    """What reads the access record and what reads dead letters, observed where the
    store `observed` wraps keeps them (and that store itself where it does not, so that
    each read says so)."""
    store = observed.inner
    access = ObservedAccess(store, observed) if isinstance(store, KeepsAccess) else store
    letters = ObservedDeadLetters(store, observed) if isinstance(store, ReadsDeadLetters) else store
    return access, letters

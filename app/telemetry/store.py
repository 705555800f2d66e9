"""A Store that reports every call: a span, and its duration as a metric.

It wraps whichever store `create_app` was given, so DuckDB, BigQuery and test
fakes are observed alike; a store adds what only it knows (BigQuery's bytes
processed and job id) to the current span with `record_query`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry.trace import SpanKind, Tracer

from app.records import Record, Rejection
from app.store import MessageStatus, PageQuery, RowOutcome, Store, WrappedStore
from app.telemetry.metrics import Metrics

# `route` of recordline.query.duration: the API route each query serves.
_PAGE_ROUTE = {"route": "/v1/records"}
_LATEST_ROUTE = {"route": "/v1/records/{record_id}"}
_MESSAGE_ROUTE = {"route": "/v1/messages/{message_id}"}


class ObservedStore(WrappedStore):
    def __init__(self, inner: Store, *, tracer: Tracer, metrics: Metrics) -> None:
        super().__init__(inner)
        self._tracer = tracer
        self._metrics = metrics
        self._system = {"recordline.store": type(inner).__name__}

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            "recordline.store.append", kind=SpanKind.CLIENT, attributes=self._system
        ) as span:
            span.set_attribute("recordline.append.rows", len(rows))
            try:
                return await self.inner.append(rows)
            finally:
                self._metrics.append_rows.record(len(rows))
                self._metrics.append_duration.record(time.perf_counter() - started)

    async def page(self, query: PageQuery) -> list[Record]:
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            "recordline.store.page", kind=SpanKind.CLIENT, attributes=self._system
        ) as span:
            try:
                rows = await self.inner.page(query)
            finally:
                self._metrics.query_duration.record(time.perf_counter() - started, _PAGE_ROUTE)
            span.set_attribute("db.response.returned_rows", len(rows))
            return rows

    async def latest(self, record_id: str) -> Record | None:
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            "recordline.store.latest", kind=SpanKind.CLIENT, attributes=self._system
        ) as span:
            try:
                record = await self.inner.latest(record_id)
            finally:
                self._metrics.query_duration.record(time.perf_counter() - started, _LATEST_ROUTE)
            span.set_attribute("db.response.returned_rows", int(record is not None))
            return record

    async def message(self, message_id: str) -> MessageStatus | None:
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            "recordline.store.message", kind=SpanKind.CLIENT, attributes=self._system
        ) as span:
            try:
                status = await self.inner.message(message_id)
            finally:
                self._metrics.query_duration.record(time.perf_counter() - started, _MESSAGE_ROUTE)
            span.set_attribute("db.response.returned_rows", int(status is not None))
            return status

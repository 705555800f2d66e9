"""Telemetry wired to in-memory exporters, passed into create_app."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

from app.asgi import create_app
from app.http.head import Recordline
from app.store.duckdb.store import DuckDBStore
from app.telemetry import Telemetry
from tests.conftest import settings
from tests.fakes import FaultyStore

RECORD = {"id": "1", "timestamp": "2024-04-27T12:00:00Z", "data": "Ejemplo de datos"}


class Exported(MetricExporter):
    """What the last export held."""

    def __init__(self) -> None:
        super().__init__()
        self.data: MetricsData | None = None

    def export(self, metrics_data: MetricsData, *_: Any, **__: Any) -> MetricExportResult:
        self.data = metrics_data
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 0) -> bool:
        return True

    def shutdown(self, *_: Any, **__: Any) -> None:
        pass


class Observed:
    """What one app reported: finished spans and exported metrics."""

    def __init__(self, sampler: Sampler | None = None) -> None:
        self.spans = InMemorySpanExporter()
        self.exported = Exported()
        tracer_provider = TracerProvider(sampler=sampler)
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        # The metrics' clock runs this far ahead of the wall clock: a test moves
        # time on instead of sleeping.
        self.ahead = 0.0
        self.telemetry = Telemetry(
            tracer_provider=tracer_provider,
            metric_exporters=[self.exported],
            clock=lambda: time.time() + self.ahead,
        )

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        spans = self.spans.get_finished_spans()
        return [s for s in spans if name is None or s.name == name]

    def points(self, metric: str) -> list[Any]:
        """Data points of one metric, collected now (call it while the app runs)."""
        assert self.telemetry.meter_provider is not None
        self.telemetry.meter_provider.force_flush()
        data = self.exported.data
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for m in scope.metrics
            if m.name == metric
            for point in m.data.data_points
        ]

    def count(self, metric: str, **attributes: str) -> float:
        return sum(
            p.value
            for p in self.points(metric)
            if all(p.attributes.get(k) == v for k, v in attributes.items())
        )


@pytest.fixture
def observed() -> Observed:
    return Observed()


@pytest.fixture
def store() -> FaultyStore:
    return FaultyStore(DuckDBStore(":memory:"))


@pytest.fixture
def app(observed: Observed, store: FaultyStore) -> Recordline:
    return create_app(settings(), store=store, telemetry=observed.telemetry)


@pytest.fixture
def client(app: Recordline) -> Iterator[TestClient[Recordline]]:
    with TestClient(app) as client:
        yield client

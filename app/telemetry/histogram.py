"""A histogram counted in plain Python and handed to the SDK's metric readers.

The OpenTelemetry SDK's `Histogram.record` costs ~4.7 µs per value here: a
Measurement object, dispatch through reader storages and views, two locks. The
ingest lag is recorded for every stored row, so that was ~6% of a push's CPU;
rows and duration are recorded for every append, which under light load is
every push. Counting into the same buckets here costs ~0.2 µs a value. Readers receive
what the SDK's own histogram would give them (explicit buckets, sum, count,
min, max; cumulative, or delta where a reader prefers it), in the same scope,
so Prometheus, OTLP and Cloud Monitoring see no difference.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics._internal.instrument import _Histogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope


@dataclasses.dataclass
class _State:
    counts: list[int]
    total: float = 0.0
    count: int = 0
    # [min, max] of the values counted.
    extremes: list[float] = dataclasses.field(default_factory=lambda: [math.inf, -math.inf])
    since: int = dataclasses.field(default_factory=time.time_ns)


class BucketHistogram:
    """One histogram without attributes, recorded from the event loop."""

    def __init__(
        self, name: str, *, unit: str, description: str, boundaries: Sequence[float]
    ) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.boundaries = tuple(boundaries)
        self._state = _State([0] * (len(self.boundaries) + 1))
        # Readers collect on their own threads (a periodic exporter's).
        self._lock = threading.Lock()
        # Per delta reader: the state it was last given, whose extremes then
        # widen with every value recorded since.
        self._exported: dict[int, _State] = {}

    def record(self, value: float) -> None:
        self.record_many((value,))

    def record_many(self, values: Iterable[float]) -> None:
        """Count each value; a negative one (a clock ahead of ours) counts as 0."""
        bounds = self.boundaries
        with self._lock:
            state = self._state
            counts, total, count = state.counts, state.total, state.count
            low, high = math.inf, -math.inf
            for value in values:
                if value < 0:
                    value = 0.0
                # (bounds[i-1], bounds[i]]: the SDK's explicit buckets.
                counts[bisect_left(bounds, value)] += 1
                total += value
                count += 1
                if value < low:
                    low = value
                if value > high:
                    high = value
            state.total, state.count = total, count
            for extremes in (state.extremes, *(e.extremes for e in self._exported.values())):
                extremes[0] = min(extremes[0], low)
                extremes[1] = max(extremes[1], high)

    def metric(self, reader: MetricReader, temporality: AggregationTemporality) -> Metric | None:
        """The data point `reader` gets now; None if it has no value to report."""
        now = time.time_ns()
        with self._lock:
            state = dataclasses.replace(
                self._state,
                counts=list(self._state.counts),
                extremes=list(self._state.extremes),
            )
            if temporality is AggregationTemporality.DELTA:
                last = self._exported.get(id(reader))
                self._exported[id(reader)] = dataclasses.replace(
                    state, extremes=[math.inf, -math.inf], since=now
                )
                if last is not None:
                    state = _State(
                        [a - b for a, b in zip(state.counts, last.counts, strict=True)],
                        state.total - last.total,
                        state.count - last.count,
                        last.extremes,
                        since=last.since,
                    )
        if not state.count:
            return None
        point = HistogramDataPoint(
            attributes={},
            start_time_unix_nano=state.since,
            time_unix_nano=now,
            count=state.count,
            sum=state.total,
            bucket_counts=tuple(state.counts),
            explicit_bounds=self.boundaries,
            min=state.extremes[0],
            max=state.extremes[1],
        )
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(data_points=[point], aggregation_temporality=temporality),
        )


def export_through(
    provider: MeterProvider, scope: str, histograms: Sequence[BucketHistogram]
) -> None:
    """Hand `histograms` to every reader of `provider`, as if `scope`'s meter had made them.

    A reader hands what it collected to `_receive_metrics`, the method the
    SDK documents for readers to implement; each reader's is wrapped here. A
    collection that found nothing at all is not handed on by the SDK; the
    app's gauges always report, so this one always is.
    """
    for reader in provider._metric_readers:
        reader._receive_metrics = _including_ours(  # type: ignore[method-assign]
            reader, histograms, scope
        )


def _including_ours(
    reader: MetricReader, histograms: Sequence[BucketHistogram], scope: str
) -> Callable[..., None]:
    receive = reader._receive_metrics
    temporality = reader._instrument_class_temporality[_Histogram]

    def receive_with_ours(data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        ours = [m for h in histograms if (m := h.metric(reader, temporality)) is not None]
        receive(_including(data, ours, scope), timeout_millis, **kwargs)

    return receive_with_ours


def _including(data: MetricsData, metrics: list[Metric], scope: str) -> MetricsData:
    """`data` with `metrics` added to `scope` (in the provider's one resource)."""
    if not metrics:
        return data
    resources = list(data.resource_metrics)
    first = resources[0]
    scopes = list(first.scope_metrics)
    for i, found in enumerate(scopes):
        if found.scope.name == scope:
            scopes[i] = dataclasses.replace(found, metrics=[*found.metrics, *metrics])
            break
    else:
        scopes.append(
            ScopeMetrics(scope=InstrumentationScope(scope), metrics=metrics, schema_url="")
        )
    resources[0] = dataclasses.replace(first, scope_metrics=scopes)
    return dataclasses.replace(data, resource_metrics=resources)

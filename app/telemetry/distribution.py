"""Histograms of the push path, counted in plain Python and exported through public interfaces.

The SDK's `Histogram.record` costs ~38,000 instructions a value here, and the API
has no call that records a batch: so the push path's three histograms are counted
into their buckets here (~1,500 instructions a value), then handed to exporters as
the SDK's own explicit-bucket histogram would be by `WithDistributions`, and to
Prometheus by a collector.

Design: docs/benchmarks.md
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.core import HistogramMetricFamily


class Distribution:
    """One histogram without attributes: explicit buckets, sum, count, min and max."""

    def __init__(
        self, name: str, *, unit: str, description: str, boundaries: Sequence[float]
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.boundaries = tuple(boundaries)
        self.counts = [0] * (len(self.boundaries) + 1)
        self.sum, self.min, self.max = 0.0, math.inf, -math.inf
        self.since = time.time_ns()

    def record(self, value: float) -> None:
        """Count one value; a negative one (a clock ahead of ours) counts as 0.

        Values are counted on the event loop only, and collected on an
        exporter's thread from a copy of the counts (one step under the GIL),
        so a collection is consistent without a lock: its count is the sum of
        its buckets; its sum may run one value ahead of them.
        """
        value = value if value > 0 else 0.0
        self.counts[bisect_left(self.boundaries, value)] += 1  # (b[i-1], b[i]], as the SDK
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def point(self) -> HistogramDataPoint | None:
        """Everything counted so far, or None if nothing was."""
        counts = list(self.counts)
        count = sum(counts)
        if not count:
            return None
        return HistogramDataPoint(
            attributes={},
            start_time_unix_nano=self.since,
            time_unix_nano=time.time_ns(),
            count=count,
            sum=self.sum,
            bucket_counts=counts,
            explicit_bounds=self.boundaries,
            min=self.min,
            max=self.max,
        )

    def metric(self) -> Metric | None:
        point = self.point()
        if point is None:
            return None
        data = Histogram([point], AggregationTemporality.CUMULATIVE)
        return Metric(self.name, self.description, self.unit, data)


class WithDistributions(MetricExporter):
    """Adds `distributions` to what the SDK collected, then exports through `inner`."""

    def __init__(
        self, inner: MetricExporter, distributions: Sequence[Distribution], scope: str
    ) -> None:
        super().__init__()  # cumulative: the distributions are
        self.inner = inner
        self.distributions = distributions
        self.scope = InstrumentationScope(scope)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        metrics = [m for d in self.distributions if (m := d.metric()) is not None]
        if metrics and metrics_data.resource_metrics:
            first, *rest = metrics_data.resource_metrics
            first = ResourceMetrics(
                resource=first.resource,
                scope_metrics=[*first.scope_metrics, ScopeMetrics(self.scope, metrics, "")],
                schema_url=first.schema_url,
            )
            metrics_data = MetricsData([first, *rest])
        return self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class PrometheusDistributions:
    """A prometheus_client collector: the distributions as Prometheus histograms,
    named as OpenTelemetry's Prometheus exporter names them (dots to
    underscores, seconds appended for `s`)."""

    def __init__(self, distributions: Sequence[Distribution]) -> None:
        self.distributions = distributions

    def collect(self) -> Iterator[HistogramMetricFamily]:
        for d in self.distributions:
            point = d.point()
            if point is None:
                continue
            cumulative, buckets = 0, []
            for bound, count in zip([*d.boundaries, math.inf], point.bucket_counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else f"{bound:g}", cumulative))
            name = d.name.replace(".", "_") + ("_seconds" if d.unit == "s" else "")
            yield HistogramMetricFamily(name, d.description, buckets=buckets, sum_value=point.sum)

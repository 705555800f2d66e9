"""BucketHistogram reaches every reader exactly as the SDK's own histogram would."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

from app.telemetry.histogram import BucketHistogram, export_through
from app.telemetry.metrics import LAG_SECONDS


def _points(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: (scope.scope.name, metric)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def _pair(reader: InMemoryMetricReader) -> tuple[BucketHistogram, Any]:
    """Ours, exported in scope "recordline", and the SDK's, in the same scope."""
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    ours = BucketHistogram("ours", unit="s", description="d", boundaries=LAG_SECONDS)
    export_through(provider, "recordline", [ours])
    theirs = provider.get_meter("recordline").create_histogram(
        "theirs", unit="s", description="d", explicit_bucket_boundaries_advisory=LAG_SECONDS
    )
    return ours, theirs


def _same(ours: Any, theirs: Any) -> None:
    assert ours.unit == theirs.unit
    assert ours.data.aggregation_temporality == theirs.data.aggregation_temporality
    (a,), (b,) = ours.data.data_points, theirs.data.data_points
    assert a.bucket_counts == tuple(b.bucket_counts)
    assert a.explicit_bounds == tuple(b.explicit_bounds)
    assert (a.count, a.min, a.max) == (b.count, b.min, b.max)
    assert a.sum == pytest.approx(b.sum)


lags = st.lists(
    st.one_of(
        st.sampled_from(LAG_SECONDS),  # on a boundary: the lower bucket, as the SDK
        st.floats(min_value=0, max_value=10_000, allow_nan=False),
    ),
    min_size=1,
    max_size=50,
)


@pytest.mark.parametrize(
    "temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA]
)
@settings(max_examples=50, deadline=None)
@given(batches=st.lists(lags, min_size=1, max_size=4))
def test_each_collection_equals_the_sdks(
    temporality: AggregationTemporality, batches: list[list[float]]
) -> None:
    reader = InMemoryMetricReader(preferred_temporality={Histogram: temporality})
    ours, theirs = _pair(reader)
    for batch in batches:
        ours.record_many(batch)
        for value in batch:
            theirs.record(value)
        found = _points(reader)
        assert found["ours"][0] == "recordline"
        _same(found["ours"][1], found["theirs"][1])


def test_nothing_recorded_reports_nothing_and_a_negative_lag_counts_as_zero() -> None:
    reader = InMemoryMetricReader()
    ours, theirs = _pair(reader)
    theirs.record(1.0)
    assert "ours" not in _points(reader)
    ours.record_many([-2.0])
    (point,) = _points(reader)["ours"][1].data.data_points
    assert (point.count, point.sum, point.min, point.bucket_counts[0]) == (1, 0.0, 0.0, 1)

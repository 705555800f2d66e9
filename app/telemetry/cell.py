"""A cell's metrics, each system's under its own namespace, through one exporter.

A cell's systems count into one meter (`Metrics.member`): one reader, one exporter
thread and one request an interval for the process, however many systems it serves.
Each system's points carry its name; `BySystem` moves them to a resource whose
`service.namespace` is the system's (Cloud Monitoring's `generic_task` keeps it), as
for a deployment of one. Distributions and the process's gauges stay the cell's.

Design: docs/observability.md#in-a-cell
"""

from __future__ import annotations

import dataclasses
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import SERVICE_NAMESPACE, Resource

from app.telemetry.metrics import SYSTEM_ATTRIBUTE


class BySystem(MetricExporter):
    """Exports through `inner`, each system's points under a resource whose namespace
    is the system's (the `system` attribute taken off); the rest as collected."""

    def __init__(self, inner: MetricExporter) -> None:
        super().__init__()  # cumulative, as every exporter here is read
        self.inner = inner

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return self.inner.export(by_system(metrics_data), timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def by_system(data: MetricsData) -> MetricsData:
    """`data` with each system's points moved to a resource of its own."""
    out: list[ResourceMetrics] = []
    for resource_metrics in data.resource_metrics:
        # The cell's own, then each system's, in the order first met.
        scopes: dict[str | None, dict[int, tuple[Any, dict[str, list[Any]]]]] = {None: {}}
        metrics: dict[tuple[int, str], Metric] = {}
        for index, scope_metrics in enumerate(resource_metrics.scope_metrics):
            for metric in scope_metrics.metrics:
                metrics[index, metric.name] = metric
                for point in metric.data.data_points:
                    given = point.attributes or {}
                    named = given.get(SYSTEM_ATTRIBUTE)
                    system = None if named is None else str(named)
                    if system is not None:
                        attributes = {k: v for k, v in given.items() if k != SYSTEM_ATTRIBUTE}
                        point = dataclasses.replace(point, attributes=attributes)
                    by_scope = scopes.setdefault(system, {})
                    _, points = by_scope.setdefault(index, (scope_metrics.scope, {}))
                    points.setdefault(metric.name, []).append(point)
        for system, by_scope in scopes.items():
            resource = resource_metrics.resource
            if system is not None:
                resource = resource.merge(Resource({SERVICE_NAMESPACE: str(system)}))
            scope_list = [
                ScopeMetrics(
                    scope,
                    [_with_points(metrics[index, name], found) for name, found in points.items()],
                    resource_metrics.scope_metrics[index].schema_url,
                )
                for index, (scope, points) in by_scope.items()
            ]
            if scope_list or system is None:
                out.append(ResourceMetrics(resource, scope_list, resource_metrics.schema_url))
    return MetricsData(out)


def _with_points(metric: Metric, points: list[Any]) -> Metric:
    data: Any = metric.data  # one of the SDK's data classes, each with its points
    return Metric(
        metric.name, metric.description, metric.unit, dataclasses.replace(data, data_points=points)
    )

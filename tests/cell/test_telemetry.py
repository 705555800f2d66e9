"""A cell's telemetry: each system's counters under its own namespace, distributions
and the process's gauges once for the cell, and the SLO events of every push and read.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.testing import TestClient
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.resources import SERVICE_NAMESPACE, Resource

from app.asgi import create_app
from app.store.duckdb.store import DuckDBStore
from app.telemetry import Telemetry
from tests.conftest import envelope, settings
from tests.fakes import FaultyStore
from tests.telemetry.conftest import RECORD, Exported

# Published long ago: stored well past the freshness threshold.
STALE = "2024-04-27T12:00:01Z"


def cell_telemetry(exported: Exported) -> Telemetry:
    return Telemetry(
        metric_exporters=[exported],
        resource=Resource({SERVICE_NAMESPACE: "cell-1"}),
        by_system=True,
        read_latency_seconds=5.0,
        freshness_seconds=10.0,
    )


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def series(data: MetricsData | None) -> dict[str, dict[str, list[Any]]]:
    """namespace -> metric -> points."""
    assert data is not None
    found: dict[str, dict[str, list[Any]]] = {}
    for resource in data.resource_metrics:
        namespace = str(resource.resource.attributes[SERVICE_NAMESPACE])
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(namespace, {}).setdefault(metric.name, []).extend(
                    metric.data.data_points
                )
    return found


def count(points: list[Any], **attributes: str) -> float:
    return sum(
        p.value for p in points if all(p.attributes.get(k) == v for k, v in attributes.items())
    )


def test_each_systems_counts_are_its_own_series_and_distributions_are_the_cells() -> None:
    exported = Exported()
    telemetry = cell_telemetry(exported)
    faulty = FaultyStore(DuckDBStore(":memory:"))
    apps = {
        "alpha": create_app(
            settings(), store=DuckDBStore(":memory:"), telemetry=telemetry.for_system("alpha")
        ),
        "beta": create_app(settings(), store=faulty, telemetry=telemetry.for_system("beta")),
    }
    with TestClient(apps["alpha"]) as alpha, TestClient(apps["beta"]) as beta:
        for n in range(3):
            answer = alpha.post(
                "/pubsub/push",
                json=envelope(RECORD, message_id=f"a-{n}", publish_time=now_rfc3339()),
            )
            assert answer.status_code == 204
        assert (
            alpha.post("/pubsub/push", json=envelope(RECORD, publish_time=STALE)).status_code == 204
        )
        assert alpha.get("/v1/records").status_code == 200
        faulty.failing = True
        assert beta.post("/pubsub/push", json=envelope(RECORD)).status_code == 503
        faulty.failing = False
        assert beta.post("/pubsub/push", json={"not": "an envelope"}).status_code == 400
        assert telemetry.meter_provider is not None
        telemetry.meter_provider.force_flush()
    found = series(exported.data)
    # Counters: each system's under its own namespace, with no `system` attribute left.
    assert count(found["alpha"]["recordline.messages"], outcome="stored") == 4
    assert count(found["beta"]["recordline.messages"], outcome="retried") == 1
    assert all("system" not in p.attributes for p in found["alpha"]["recordline.messages"])
    slo_a, slo_b = found["alpha"]["recordline.slo.events"], found["beta"]["recordline.slo.events"]
    assert count(slo_a, slo="availability", good="true") == 5  # four pushes and a read
    assert count(slo_a, slo="freshness", good="true") == 3
    assert count(slo_a, slo="freshness", good="false") == 1  # published long before
    assert count(slo_a, slo="read_latency", good="true") == 1
    assert count(slo_b, slo="availability", good="false") == 1  # the 503
    assert count(slo_b, slo="availability", good="true") == 1  # a 400 is an answer
    # Distributions and the process's gauges: the cell's, one series whatever the systems.
    cell = found["cell-1"]
    assert set(cell) >= {
        "recordline.ingest.lag",
        "recordline.append.rows",
        "recordline.queue.depth",
        "recordline.followers",
        "recordline.read.duration",
    }
    assert "recordline.ingest.lag" not in found["alpha"]
    assert len(cell["recordline.queue.depth"]) == 1
    (lag,) = cell["recordline.ingest.lag"]
    assert lag.count == 4


def test_a_hundred_systems_add_no_distribution() -> None:
    exported = Exported()
    telemetry = cell_telemetry(exported)
    for n in range(100):
        create_app(
            settings(), store=DuckDBStore(":memory:"), telemetry=telemetry.for_system(f"s{n}")
        )
    assert telemetry.meter_provider is not None
    telemetry.meter_provider.force_flush()
    found = series(exported.data)
    # Nothing pushed or read: no system has a series yet, and the cell's gauges are one each.
    assert set(found) == {"cell-1"}
    assert len(found["cell-1"]["recordline.queue.depth"]) == 1

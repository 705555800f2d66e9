"""A cell's telemetry: each system's counters under its own namespace, distributions
and the process's gauges once for the cell, and the SLO events of every push and read.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
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


@pytest.mark.slow
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
    assert all("system" not in p.attributes for p in found["alpha"]["recordline.messages"])
    # What a push cost without becoming a row (a 503, a refusal) is the cell's: a
    # system's on every instance that met one would be a series of each, written to the
    # instance's end. Which system: Pub/Sub's count by response class, and the logs.
    # Beta, a 503 and a 400 and no row: no series of its own at all.
    assert "beta" not in found
    outcomes = found["cell-1"]["recordline.messages"]
    assert count(outcomes, outcome="retried") == 1
    assert count(outcomes, outcome="refused", reason="not-a-push-envelope") == 1
    assert _fleet_cost().CELL_SERIES["messages"] == 2
    # A system's SLO events are what its store holds (freshness, on DuckDB counted as
    # stored); its pushes' answers are Pub/Sub's to count, per subscription.
    slo_a = found["alpha"]["recordline.slo.events"]
    assert count(slo_a, slo="freshness", good="true") == 3
    assert count(slo_a, slo="freshness", good="false") == 1  # published long before
    assert {p.attributes["slo"] for p in slo_a} == {"freshness"}
    # Reads' events are the cell's: every instance serves every system's reads.
    slo_cell = found["cell-1"]["recordline.slo.events"]
    assert count(slo_cell, slo="availability", good="true") == 1
    assert count(slo_cell, slo="read_latency", good="true") == 1
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
    # What reads bill is the cell's too, by route: no series of a system's.
    telemetry.for_system("alpha").metrics.query_bytes_billed.add(10, {"route": "/v1/records"})
    telemetry.meter_provider.force_flush()
    found = series(exported.data)
    assert "recordline.query.bytes_billed" not in found["alpha"]
    (billed,) = found["cell-1"]["recordline.query.bytes_billed"]
    assert (billed.value, dict(billed.attributes)) == (10, {"route": "/v1/records"})
    assert len(cell["recordline.queue.depth"]) == 1
    (lag,) = cell["recordline.ingest.lag"]
    assert lag.count == 4


@pytest.mark.slow
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


def _fleet_cost() -> Any:
    from tests.infra.test_cost import fleet_cost

    return fleet_cost()


def _per_system(found: dict[str, dict[str, list[Any]]], system: str) -> dict[str, int]:
    """A system's series, by short metric name: how many label sets each."""
    return {
        name.removeprefix("recordline."): len({tuple(sorted(p.attributes.items())) for p in points})
        for name, points in found.get(system, {}).items()
    }


def test_an_ingest_instance_writes_no_series_of_a_serving_system_on_an_ordinary_day() -> None:
    # A system with a serving tier: every row is exported once, and what the store
    # holds is counted there; a push's answer is Pub/Sub's, a read's the cell's. What
    # one ingest instance writes of it on an ordinary day (pushes stored, a canary, a
    # read) is what infra/fleet_cost.py prices from every instance: nothing. Were a
    # series of the system's written here again, this fails.
    exported = Exported()
    telemetry = cell_telemetry(exported)
    serving = settings(
        RECORDLINE_STORE="bigquery://recordline-dev/alpha",
        RECORDLINE_SERVING="spanner://projects/recordline-dev/instances/serving/databases/alpha",
    )
    app = create_app(
        serving, store=DuckDBStore(":memory:"), telemetry=telemetry.for_system("alpha")
    )
    with TestClient(app) as client:
        for n in range(3):
            answer = client.post(
                "/pubsub/push",
                json=envelope(RECORD, message_id=f"a-{n}", publish_time=now_rfc3339()),
            )
            assert answer.status_code == 204
        canary = envelope(
            {"id": "recordline-canary", "data": "x"},
            message_id="canary",
            publish_time=now_rfc3339(),
            attributes={"recordline-canary": "1"},
        )
        assert client.post("/pubsub/push", json=canary).status_code == 204
        assert client.get("/v1/records").status_code == 200
        assert telemetry.meter_provider is not None
        telemetry.meter_provider.force_flush()
    found = series(exported.data)
    written = _per_system(found, "alpha")
    model = _fleet_cost().INSTANCE_SERIES
    # Nothing: what the store holds is the export lease holder's to count, a push's
    # answer Pub/Sub's, a read's the cell's. Were a series of the system's written
    # here again, the model would price it from every instance: this fails first.
    assert written == {}, written
    assert all(n == 0 for n in model.values()), model
    slo = found["cell-1"]["recordline.slo.events"]
    assert {p.attributes["slo"] for p in slo} == {"availability", "read_latency"}
    assert count(slo, slo="availability", good="true") == 1
    # The cell's, as the model prices them: each instance's, whatever the systems.
    assert _per_system(found, "cell-1")["slo.events"] == _fleet_cost().CELL_SERIES["slo.events"]
    # The cell's distribution still has every row's lag.
    (lag,) = found["cell-1"]["recordline.ingest.lag"]
    assert lag.count == 4


def test_the_export_lease_holder_writes_what_the_store_holds_once_a_row() -> None:
    from app.records import Record, Rejection

    exported = Exported()
    telemetry = cell_telemetry(exported)
    observer = telemetry.for_system("alpha").export_observer()
    now = int(time.time() * 1e6)

    def row(n: int, published: int, attributes: str = "{}") -> Record:
        return Record(
            message_id=f"m-{n}",
            publish_time=published,
            ingest_time=now,
            id=f"r-{n}",
            subscription="alpha-push",
            attributes=attributes,
        )

    observer.watermark("records", now)
    observer.exported(
        "records",
        [
            row(1, now - 1_000_000),
            row(2, now - 60_000_000),
            row(3, now, '{"recordline-canary":"1"}'),
        ],
    )
    rejected = Rejection(
        message_id="m-4",
        publish_time=now,
        ingest_time=now,
        subscription="alpha-push",
        attributes="{}",
        data=b"",
        reason="payload is not JSON: x",
    )
    observer.exported("rejected", [rejected])
    assert telemetry.meter_provider is not None
    telemetry.meter_provider.force_flush()
    found = series(exported.data)
    alpha = found["alpha"]
    assert count(alpha["recordline.messages"], outcome="stored") == 3
    assert count(alpha["recordline.messages"], outcome="rejected", reason="json") == 1
    slo = alpha["recordline.slo.events"]
    assert count(slo, slo="freshness", good="true") == 3
    assert count(slo, slo="freshness", good="false") == 1  # published a minute before
    (age,) = alpha["recordline.canary.age"]
    assert 0 <= age.value < 60
    # What the model prices from the holder: each of its series, one writer.
    cost = _fleet_cost()
    written = _per_system(found, "alpha")
    for name, n in cost.HOLDER_SERIES.items():
        # An ordinary day's freshness is good only; this batch has a stale row too.
        assert written[name] == n + (1 if name == "slo.events" else 0), name
    # A refused change of its typed columns, a blocked table: none written until one
    # happens; the export's rows and lag, each table's.
    assert written.get("typed.patches_refused", 0) == cost.EXPORT_SERIES["typed.patches_refused"]
    assert written.get("export.blocked", 0) == cost.EXPORT_SERIES["export.blocked"] == 0
    assert written["export.rows"] == cost.EXPORT_SERIES["export.rows"]
    # A table blocked is said so, and unblocked, said so too until the lease is lost.
    observer.blocked("records", "BigQuery refused message m-9 of records: too long")
    telemetry.meter_provider.force_flush()
    (blocked,) = series(exported.data)["alpha"]["recordline.export.blocked"]
    assert (blocked.value, blocked.attributes) == (1, {"table": "records"})
    observer.exported("records", [row(5, now)])
    telemetry.meter_provider.force_flush()
    (blocked,) = series(exported.data)["alpha"]["recordline.export.blocked"]
    assert blocked.value == 0
    # The lease lost: the canary's age is the new holder's to say.
    observer.released()
    telemetry.meter_provider.force_flush()
    assert "recordline.canary.age" not in series(exported.data).get("alpha", {})

"""recordline.read.duration: what readers wait for, without probes, smoke tests or the canary."""

from __future__ import annotations

from litestar.testing import TestClient

from app.http.head import Recordline
from tests.conftest import envelope
from tests.telemetry.conftest import RECORD, Observed

UPTIME_CHECK = "GoogleStackdriverMonitoring-UptimeChecks(https://cloud.google.com/monitoring)"


def _counts(observed: Observed) -> dict[str, int]:
    return {
        str(p.attributes["route"]): p.count for p in observed.points("recordline.read.duration")
    }


def test_reads_are_timed_by_route_from_request_to_response(
    client: TestClient[Recordline], observed: Observed
) -> None:
    assert client.post("/pubsub/push", json=envelope(RECORD)).status_code == 204
    assert client.get("/v1/records").status_code == 200
    assert client.get("/v1/records/1").status_code == 200
    assert client.get("/v1/records/missing").status_code == 404  # an answer too
    assert _counts(observed) == {"/v1/records": 1, "/v1/records/{record_id}": 2}
    (page,) = [
        p
        for p in observed.points("recordline.read.duration")
        if p.attributes["route"] == "/v1/records"
    ]
    # The whole answer, at least the store's query for it.
    (query,) = [
        p
        for p in observed.points("recordline.query.duration")
        if p.attributes["route"] == "/v1/records"
    ]
    assert page.sum >= query.sum > 0


def test_synthetic_reads_and_refusals_are_left_out(
    client: TestClient[Recordline], observed: Observed
) -> None:
    assert client.get("/v1/records", headers={"User-Agent": UPTIME_CHECK}).status_code == 200
    assert (
        client.get("/v1/records/x", headers={"User-Agent": "recordline-smoke/1"}).status_code == 404
    )
    assert client.get("/v1/records/recordline-canary").status_code == 404
    assert client.get("/v1/records", params={"since": "yesterday"}).status_code == 400
    assert client.get("/healthz").status_code == 200
    assert _counts(observed) == {}
    # A reader's own read still counts.
    assert client.get("/v1/records", headers={"User-Agent": "python-httpx"}).status_code == 200
    assert _counts(observed) == {"/v1/records": 1}

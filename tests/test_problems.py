"""Problem documents: every kind of error has a `type` the service itself describes."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import TestClient

from app.problems import problem_types


def test_every_problem_type_is_described_at_its_own_uri(client: TestClient[Litestar]) -> None:
    kinds = problem_types()
    assert {"invalid-parameter", "store-unavailable", "not-a-push-envelope"} <= set(kinds)
    for name, kind in kinds.items():
        answer = client.get(kind.type)
        assert answer.status_code == 200, name
        assert answer.json() == {
            "type": f"/problems/{name}",
            "status": kind.status,
            "title": kind.title,
            "description": kind.description,
        }
    assert client.get("/problems/no-such-thing").json()["type"] == "/problems/not-found"


def test_an_error_answer_names_its_type(client: TestClient[Litestar]) -> None:
    bad = client.get("/v1/records", params={"limit": "0"})
    assert bad.status_code == 400
    assert bad.json()["type"] == "/problems/invalid-parameter"
    missing = client.get("/v1/records/nothing-here")
    assert missing.json()["type"] == "/problems/not-found"
    envelope = client.post("/pubsub/push", content=b"{}")
    assert envelope.status_code == 400
    assert envelope.json()["type"] == "/problems/not-a-push-envelope"
    described = client.get(envelope.json()["type"]).json()
    assert described["status"] == 400

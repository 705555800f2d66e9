"""A refused push is logged with its reason and counted by it; problem documents say
what a client needs (the limit, the right title) and never echo an input whole."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.problems import MAX_ECHO
from app.store.duckdb.store import DuckDBStore
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, FakeGoogle
from tests.conftest import envelope, settings
from tests.telemetry.conftest import Observed

RECORD = {"id": "1", "data": "x"}
LIMIT = 4096


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture
def client(observed: Observed, google: FakeGoogle) -> Iterator[TestClient[Recordline]]:
    app = create_app(
        settings(
            RECORDLINE_MAX_BODY_BYTES=str(LIMIT),
            RECORDLINE_PUSH_AUDIENCE=PUSH_AUDIENCE,
            RECORDLINE_PUSH_SERVICE_ACCOUNTS=PUSHER,
            RECORDLINE_OIDC_CERTS_URL=google.certs_url,
        ),
        store=DuckDBStore(":memory:"),
        telemetry=observed.telemetry,
    )
    with TestClient(app) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_every_refused_push_is_counted_by_its_reason_and_the_400s_and_413s_logged(
    client: TestClient[Recordline],
    observed: Observed,
    google: FakeGoogle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pusher = bearer(google.mint())
    with caplog.at_level(logging.WARNING):
        answers = [
            client.post("/pubsub/push", content=b"{not json", headers=pusher),
            client.post("/pubsub/push", json={"message": {}}, headers=pusher),
            client.post("/pubsub/push", content=b"x" * (LIMIT + 1), headers=pusher),
            client.post("/pubsub/push", json=envelope(RECORD)),
            client.post(
                "/pubsub/push",
                json=envelope(RECORD),
                headers=bearer(google.mint(email="someone@else.example")),
            ),
            client.post("/pubsub/push", json=envelope(RECORD), headers=pusher),
        ]
    assert [a.status_code for a in answers] == [400, 400, 413, 401, 403, 204]

    refused = {
        point.attributes["reason"]: point.value
        for point in observed.points("recordline.messages")
        if point.attributes["outcome"] == "refused"
    }
    assert refused == {
        "not-a-push-envelope": 2,
        "body-too-large": 1,
        "unauthorized": 1,
        "forbidden": 1,
    }
    assert observed.count("recordline.messages", outcome="stored") == 1
    lines = [r for r in caplog.records if r.name == "recordline.ingest"]
    assert [(r.fields["status"], r.fields["reason"]) for r in lines] == [  # type: ignore[attr-defined]
        (400, "not-a-push-envelope"),
        (400, "not-a-push-envelope"),
        (413, "body-too-large"),
    ]
    assert "body is not JSON" in lines[0].getMessage()
    assert "messageId" in lines[1].getMessage()
    # 401 and 403 are logged by the guard, with what was wrong with the token.
    assert any("refused with 403" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_413_states_the_limit(client: TestClient[Recordline], google: FakeGoogle) -> None:
    # Replay is an operator's: where pushes carry a shared secret, that secret.
    secret = "a-long-enough-push-secret"
    replays = create_app(
        settings(RECORDLINE_MAX_BODY_BYTES=str(LIMIT), RECORDLINE_PUSH_TOKEN=secret),
        store=DuckDBStore(":memory:"),
    )
    with TestClient(replays) as operator:
        answers = [
            client.post("/pubsub/push", content=b"x" * (LIMIT + 1), headers=bearer(google.mint())),
            # JSON by its type (a replay of another type is 415 before its size counts).
            operator.post(
                "/v1/replay",
                content=b"x" * (LIMIT + 1),
                headers={**bearer(secret), "content-type": "application/json"},
            ),
        ]
    for answer in answers:
        assert answer.status_code == 413
        assert answer.headers["content-type"].startswith("application/problem+json")
        problem = answer.json()
        assert problem["type"] == "/problems/body-too-large"
        assert problem["max_bytes"] == LIMIT
        assert str(LIMIT) in problem["detail"]
        assert "RECORDLINE_MAX_BODY_BYTES" in problem["detail"]


def test_a_junk_replay_body_has_its_title_and_detail_the_right_way_round() -> None:
    app = create_app(settings(), store=DuckDBStore(":memory:"))
    with TestClient(app) as client:
        answer = client.post(
            "/v1/replay", content=b"junk", headers={"content-type": "application/json"}
        )
    assert answer.status_code == 400
    problem = answer.json()
    assert problem["type"] == "/problems/bad-request"
    assert problem["title"] == "Bad request"  # the kind, the same for every one
    assert "malformed" in problem["detail"]  # this occurrence


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [
        "/v1/records/" + "r" * 5000,
        "/v1/messages/" + "m" * 5000,
        "/v1/records?until=" + "t" * 5000,
        "/problems/" + "p" * 5000,
    ],
)
def test_a_long_input_is_never_echoed_whole(path: str) -> None:
    app = create_app(settings(), store=DuckDBStore(":memory:"))
    with TestClient(app) as client:
        answer = client.get(path)
    assert answer.status_code == 400
    problem = answer.json()
    assert len(problem["detail"]) <= MAX_ECHO + 40
    assert "characters left out" in problem["detail"] or len(problem["detail"]) < MAX_ECHO
    for error in problem.get("errors", []):
        assert len(error["message"]) <= MAX_ECHO + 40
    assert len(answer.content) < 2000


def test_a_long_id_in_a_404_is_cut_short() -> None:
    app = create_app(settings(), store=DuckDBStore(":memory:"))
    with TestClient(app) as client:
        answer = client.get("/v1/records/" + "r" * 1000)
    assert answer.status_code == 404
    detail = answer.json()["detail"]
    assert "characters left out" in detail
    assert len(detail) <= MAX_ECHO + 40

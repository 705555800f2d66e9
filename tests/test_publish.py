"""`POST /v1/publish` refused or failed as it should: without a topic, with a body it
cannot read, to a reader, and where Pub/Sub refuses or never answers (the emulator's
own test is tests/e2e/test_publish_emulator.py)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.asgi import create_app
from app.ingest import topic
from app.store.duckdb.store import DuckDBStore
from recordline_dev.processes import free_port
from tests.conftest import served, settings

SECRET = "a-push-secret-long-enough"
OPERATOR = {"Authorization": f"Bearer {SECRET}"}
TOPIC = "projects/demo-project/topics/orders"
GOOD = {"data": base64.b64encode(b'{"id": "t-1", "data": 1}').decode()}


async def client_for(**env: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings(RECORDLINE_PUSH_TOKEN=SECRET, **env), store=DuckDBStore(":memory:"))
    async with served(app) as client:
        yield client


@pytest.fixture
async def no_topic() -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for():
        yield client


async def test_without_a_topic_a_publish_is_a_404_naming_the_setting(
    no_topic: httpx.AsyncClient,
) -> None:
    answer = await no_topic.post("/v1/publish", json=GOOD, headers=OPERATOR)
    assert answer.status_code == 404, answer.text
    assert "RECORDLINE_TOPIC" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("sent", "status", "field"),
    [
        ({"data": "not base64!"}, 400, "data"),
        ({"data": "QQ"}, 400, "data"),  # unpadded
        ({"data": 7}, 400, "data"),
        ({}, 400, "$"),
        ({**GOOD, "topic": TOPIC}, 400, "$"),
        ({**GOOD, "attributes": {"k": 1}}, 400, "attributes"),
        ({**GOOD, "attributes": {"k" * 300: "v"}}, 400, "attributes"),
        ({**GOOD, "note": "n" * 501}, 400, "note"),
        ([GOOD], 400, "$"),
    ],
)
async def test_a_body_it_cannot_publish_is_a_400_naming_the_field(
    sent: Any, status: int, field: str
) -> None:
    async for client in client_for(RECORDLINE_TOPIC=TOPIC, PUBSUB_EMULATOR_HOST="127.0.0.1:9"):
        answer = await client.post("/v1/publish", json=sent, headers=OPERATOR)
        assert answer.status_code == status, answer.text
        assert answer.json().get("field", "").startswith(field), answer.json()


async def test_only_an_operator_publishes_and_never_from_another_site() -> None:
    async for client in client_for(RECORDLINE_TOPIC=TOPIC, PUBSUB_EMULATOR_HOST="127.0.0.1:9"):
        reader = await client.post("/v1/publish", json=GOOD)
        assert reader.status_code == 401, reader.text
        wrong = await client.post(
            "/v1/publish", json=GOOD, headers={"Authorization": "Bearer not-the-secret-at-all"}
        )
        assert wrong.status_code in (401, 403), wrong.text
        foreign = await client.post(
            "/v1/publish",
            json=GOOD,
            headers={
                **OPERATOR,
                "Origin": "https://elsewhere.example",
                "Sec-Fetch-Site": "cross-site",
            },
        )
        assert foreign.status_code == 403, foreign.text
        form = await client.post(
            "/v1/publish", content=b"data=x", headers={**OPERATOR, "Content-Type": "text/plain"}
        )
        assert form.status_code == 415, form.text


async def test_a_pubsub_that_refuses_is_a_503_that_says_so() -> None:
    # Nothing listens on the port: the connection is refused.
    port = free_port()
    async for client in client_for(
        RECORDLINE_TOPIC=TOPIC, PUBSUB_EMULATOR_HOST=f"127.0.0.1:{port}"
    ):
        checked = await client.post("/v1/publish", json={**GOOD, "dry_run": True}, headers=OPERATOR)
        assert checked.status_code == 200, checked.text
        assert checked.json()["verdict"] == "stored"
        answer = await client.post("/v1/publish", json=GOOD, headers=OPERATOR)
        assert answer.status_code == 503, answer.text
        assert answer.json()["type"].endswith("/problems/topic-unavailable")
        assert TOPIC in answer.json()["detail"]
        assert int(answer.headers["retry-after"]) >= 1


async def test_a_pubsub_that_never_answers_ends_the_publish_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that takes the connection and says nothing, as one paused would.
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(topic, "PUBLISH_SECONDS", 0.5)
    try:
        async for client in client_for(
            RECORDLINE_TOPIC=TOPIC, PUBSUB_EMULATOR_HOST=f"127.0.0.1:{port}"
        ):
            began = time.monotonic()
            answer = await client.post("/v1/publish", json=GOOD, headers=OPERATOR)
            took = time.monotonic() - began
            assert answer.status_code == 503, answer.text
            assert "did not answer within 0.5 s" in answer.json()["detail"]
            # Its deadline ended the call (with a margin for a loaded machine).
            assert took < 5, took
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_console_offers_publishing_to_operators_alone() -> None:
    async for client in client_for(RECORDLINE_TOPIC=TOPIC, PUBSUB_EMULATOR_HOST="127.0.0.1:9"):
        operator = await client.get("/console/records", headers=OPERATOR)
        reader = await client.get("/console/records")
        assert operator.status_code == reader.status_code == 200, reader.text
        assert 'id="publish"' in operator.text
        assert 'id="publish"' not in reader.text

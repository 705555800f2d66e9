"""An operator's test message (`POST /v1/publish`) goes the topic's way: published to
the Pub/Sub emulator's topic, pushed by its subscription, and stored or rejected as
every message is, with its line in the access record."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from app.asgi import create_app
from app.store.duckdb.store import DuckDBStore
from recordline_dev.devstack import Emulator
from tests.conftest import served, settings
from tests.e2e.conftest import PUSH_TOKEN, Wiring
from tests.waiting import until

pytestmark = pytest.mark.emulator

OPERATOR = {"Authorization": f"Bearer {PUSH_TOKEN}"}


def body(payload: bytes, **more: Any) -> dict[str, Any]:
    return {"data": base64.b64encode(payload).decode(), **more}


async def outcome(http: httpx.AsyncClient, message_id: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        answer = await http.get(f"/v1/messages/{message_id}", headers=OPERATOR)
        return answer.json() if answer.status_code == 200 else None

    return await until(found, interval=0.1, what=f"message {message_id} to be answered")


async def test_a_test_message_is_published_delivered_and_stored(
    wiring: Wiring, emulator: Emulator
) -> None:
    app = create_app(
        settings(
            RECORDLINE_PUSH_TOKEN=PUSH_TOKEN,
            RECORDLINE_TOPIC=wiring.topic_path,
            PUBSUB_EMULATOR_HOST=emulator.host,
        ),
        store=DuckDBStore(":memory:"),
    )
    async with served(app) as http:
        await wiring.connect(str(http.base_url).rstrip("/"))
        good = json.dumps({"id": "t-1", "data": {"ok": True}}).encode()
        checked = await http.post("/v1/publish", json=body(good, dry_run=True), headers=OPERATOR)
        assert checked.status_code == 200, checked.text
        assert checked.json() == {
            "topic": wiring.topic_path,
            "verdict": "stored",
            "dry_run": True,
        }
        published = await http.post(
            "/v1/publish",
            json=body(good, attributes={"region": "eu"}, note="after the deploy"),
            headers=OPERATOR,
        )
        assert published.status_code == 200, published.text
        said = published.json()
        assert said["verdict"] == "stored"
        stored = await outcome(http, said["message_id"])
        assert stored["status"] == "stored"
        assert stored["record"]["id"] == "t-1"
        assert stored["record"]["attributes"] == {"region": "eu"}
        # One the validation rejects is published all the same, and rejected.
        bad = await http.post("/v1/publish", json=body(b"not json"), headers=OPERATOR)
        assert bad.status_code == 200, bad.text
        assert bad.json()["verdict"] == "rejected"
        assert bad.json()["reason"]
        rejected = await outcome(http, bad.json()["message_id"])
        assert rejected["status"] == "rejected"

        # Who published what, and why, is in the access record.
        async def lines() -> list[dict[str, Any]]:
            answer = await http.get("/v1/access", params={"action": "publish"}, headers=OPERATOR)
            found = [line["line"] for line in answer.json()["lines"]]
            return found if len(found) >= 3 else []

        kept = await until(lines, interval=0.2, what="the publishes' lines to be kept")
        assert {tuple(m) for line in kept for m in line["messages"]} >= {
            (said["message_id"], "stored"),
            (bad.json()["message_id"], "rejected"),
        }
        assert any(line.get("note") == "after the deploy" for line in kept)
        # A reader may not publish.
        refused = await http.post("/v1/publish", json=body(good))
        assert refused.status_code in (401, 403), refused.text

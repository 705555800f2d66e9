"""`POST /v1/publish` with what Pub/Sub itself may refuse, against the emulator: every
message is published, or refused as a 400 naming what was refused; never a 5xx. One
published is delivered, and stored or rejected as the answer said."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.asgi import create_app
from app.ingest.envelope import MAX_DATA_BYTES
from app.store.duckdb.store import DuckDBStore
from recordline_dev.devstack import Emulator
from tests.conftest import served, settings
from tests.e2e.conftest import PUSH_TOKEN, Wiring
from tests.waiting import until

pytestmark = pytest.mark.emulator

OPERATOR = {"Authorization": f"Bearer {PUSH_TOKEN}"}
PAYLOAD = b'{"id": "t-1", "data": 1}'


@pytest.fixture
async def http(wiring: Wiring, emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings(
            RECORDLINE_PUSH_TOKEN=PUSH_TOKEN,
            RECORDLINE_TOPIC=wiring.topic_path,
            PUBSUB_EMULATOR_HOST=emulator.host,
        ),
        store=DuckDBStore(":memory:"),
    )
    async with served(app) as client:
        await wiring.connect(str(client.base_url).rstrip("/"))
        yield client


def body(data: bytes, **more: Any) -> dict[str, Any]:
    return {"data": base64.b64encode(data).decode(), **more}


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(body(b""), id="empty-data-no-attributes"),
        pytest.param(body(b"", attributes={"k": ""}), id="empty-data-empty-value"),
        pytest.param(body(PAYLOAD, attributes={"": "v"}), id="empty-key"),
        pytest.param(body(PAYLOAD, attributes={"goog": "v"}), id="goog-key"),
        pytest.param(body(PAYLOAD, attributes={"é" * 256: "v"}), id="key-512-bytes"),
        pytest.param(body(PAYLOAD, attributes={"k": "é" * 1024}), id="value-2048-bytes"),
        pytest.param(body(PAYLOAD, attributes={"k\u0000": "\u0000"}), id="nul"),
        pytest.param(body(b"x" * (4 * 1024 * 1024 + 1)), id="data-past-4-mib"),
        pytest.param(body(b"x" * MAX_DATA_BYTES), id="data-at-10-mib"),
        pytest.param(
            body(b"x" * MAX_DATA_BYTES, attributes={f"k{n}": "v" * 1024 for n in range(100)}),
            id="data-at-10-mib-and-attributes",
        ),
    ],
)
async def test_what_pubsub_may_refuse_is_published_or_a_400(
    http: httpx.AsyncClient, sent: dict[str, Any]
) -> None:
    answer = await http.post("/v1/publish", json=sent, headers=OPERATOR)
    assert answer.status_code in (200, 400, 413), answer.text[:500]
    if answer.status_code != 200:
        assert answer.json()["detail"]
        return
    # Published: delivered, and stored or rejected as the answer said, as every message is.
    said = answer.json()
    message_id = said["message_id"]

    async def outcome() -> dict[str, Any] | None:
        found = await http.get(f"/v1/messages/{message_id}", headers=OPERATOR)
        return found.json() if found.status_code == 200 else None

    became = await until(outcome, interval=0.2, what=f"message {message_id} to be delivered")
    assert became["status"] == said["verdict"], became

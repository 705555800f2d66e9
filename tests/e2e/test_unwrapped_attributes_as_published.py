"""An unwrapped push stores the attributes its message was published with, and where the
publisher gave no Content-Type, the push client's own, which it cannot be told from."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from app.asgi import create_app
from app.store.duckdb.store import DuckDBStore
from tests.conftest import served, settings
from tests.e2e.conftest import Wiring
from tests.waiting import until

pytestmark = pytest.mark.emulator


async def test_an_unwrapped_message_published_without_attributes_keeps_the_clients_type(
    wiring: Wiring, publisher: Any
) -> None:
    # The delivery path's own Content-Type (here the emulator's HTTP client's default for
    # a POST, application/x-www-form-urlencoded) is the one header an unwrapped push
    # shares with a publisher's attribute (Pub/Sub's own example of one: it declares the
    # body's type), so it is stored as that attribute, as docs/security.md says; and
    # nothing else of the path is.
    store = DuckDBStore(":memory:")
    async with served(create_app(settings(), store=store)) as http:
        await wiring.connect(str(http.base_url).rstrip("/"), push_token=None, unwrapped=True)
        message_id = await asyncio.to_thread(
            lambda: publisher.publish(
                wiring.topic_path, msgspec.json.encode({"id": "bare", "data": 1})
            ).result(timeout=30)
        )

        async def stored() -> dict[str, Any] | None:
            answer = (await http.get(f"/v1/messages/{message_id}")).json()
            return answer if answer.get("status") == "stored" else None

        found = await until(stored, timeout=60, interval=0.2, what="the message stored")
    attributes = dict(found["record"]["attributes"])
    attributes.pop("googclient_traceparent", None)  # the publisher's own, as it traces
    assert attributes == {"content-type": "application/x-www-form-urlencoded"}

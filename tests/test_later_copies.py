"""A later copy of a stored message that says something else is shown where a user
looks for the message, not only in a log line (app.store.copies.LaterCopies)."""

from __future__ import annotations

from litestar.testing import TestClient

from app.asgi import create_app
from app.store.copies import LaterCopies
from tests.conftest import envelope, settings


def test_a_later_copy_that_differs_is_shown_by_its_message() -> None:
    # An emulator whose ids start from 1 again on an old store: the new message 1 was
    # acknowledged and dropped, /v1/messages/1 showed the old one, nothing else.
    with TestClient(create_app(settings())) as client:
        assert client.post("/pubsub/push", json=envelope({"id": "old"})).status_code == 204
        assert client.post("/pubsub/push", json=envelope({"id": "new"})).status_code == 204
        # A redelivery of the stored copy is no later copy that differs.
        assert client.post("/pubsub/push", json=envelope({"id": "old"})).status_code == 204
        assert client.post("/pubsub/push", json=envelope({"id": "newer"})).status_code == 204
        shown = client.get("/v1/messages/m-1").json()
        client.post("/pubsub/push", json=envelope({"id": "2"}, message_id="m-2"))
        other = client.get("/v1/messages/m-2").json()
    assert shown["status"] == "stored"
    assert shown["record"]["id"] == "old"
    later = shown["later_copies_differ"]
    assert later["count"] == 2
    assert later["differs"] == ["id"]
    assert later["last_seen"].endswith("Z")
    assert other["later_copies_differ"] is None


def test_later_copies_are_kept_for_the_most_recent_messages_only() -> None:
    from app.records import Record

    def record(message_id: str, record_id: str) -> Record:
        return Record(
            message_id=message_id,
            publish_time=0,
            ingest_time=0,
            id=record_id,
            data=None,
            attributes={},
            subscription="s",
        )

    kept = LaterCopies(kept=2, clock=lambda: 1.0)
    for n in range(3):
        kept(record(f"m-{n}", "a"), record(f"m-{n}", "b"))
    assert kept.of("m-0") is None  # the oldest made room
    assert kept.of("m-2") is not None
    assert kept.of("m-2").differs == ["id"]

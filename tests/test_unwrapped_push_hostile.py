"""An unwrapped push (`no_wrapper` + `write_metadata`) stores its message's attributes as
they were published: no more, no fewer, none altered."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.ingest.envelope import MAX_ATTRIBUTES
from tests.conftest import settings

RECORD = {"id": "1", "data": "x"}


@pytest.fixture
def client() -> Iterator[TestClient[Recordline]]:
    # The loopback service with no push settings (DuckDB in memory): where an unwrapped
    # push is judged by nothing but its headers.
    with TestClient(create_app(settings())) as client:
        yield client
UNWRAPPED = {
    "x-goog-pubsub-message-id": "u-1",
    "x-goog-pubsub-publish-time": "2024-04-27T12:00:01.123Z",
}


def test_a_message_with_as_many_attributes_as_pubsub_allows_is_stored_unwrapped(
    client: TestClient[Recordline],
) -> None:
    # Proves: the push client's own Content-Type (the emulator's HTTP client writes
    # application/x-www-form-urlencoded on a message published without one:
    # tests/e2e/test_unwrapped_attributes_as_published.py) now counts as an attribute,
    # so a message with Pub/Sub's largest number of attributes is 101 and refused 400:
    # never acknowledged, delivered again until it is dead-lettered.
    published = {f"a{n}": f"v{n}" for n in range(MAX_ATTRIBUTES)}
    headers = {
        **UNWRAPPED,
        "content-type": "application/x-www-form-urlencoded",
        **published,
    }
    response = client.post("/pubsub/push", content=json.dumps(RECORD), headers=headers)
    assert response.status_code == 204, response.text
    assert client.get("/v1/messages/u-1").json()["record"]["attributes"] == published


def test_a_message_delivered_again_through_a_proxy_is_no_conflicting_copy(
    client: TestClient[Recordline],
) -> None:
    # Proves: `x-request-id` is no longer withheld, and Envoy (Istio, Cloud Service
    # Mesh, GKE's gateways), ingress-nginx (generate-request-id, on by default), Heroku
    # and Render write a new one on every request they pass on. Each delivery of one
    # message then carries other "attributes": the first is stored with the proxy's
    # id, and every redelivery is counted as a later copy that differs (a WARNING, and
    # `recordline.conflicts`, which the runbook says to investigate) though Pub/Sub
    # delivered the same message.
    body = json.dumps(RECORD)
    for request_id in ("5a6b-first-delivery", "9c0d-second-delivery"):
        headers = {**UNWRAPPED, "origin-system": "billing", "x-request-id": request_id}
        response = client.post("/pubsub/push", content=body, headers=headers)
        assert response.status_code == 204, response.text
    answer = client.get("/v1/messages/u-1").json()
    assert answer["later_copies_differ"] is None, answer["later_copies_differ"]
    assert answer["record"]["attributes"] == {"origin-system": "billing"}


def test_an_attribute_value_in_utf_8_is_stored_as_published(
    client: TestClient[Recordline],
) -> None:
    # Proves (before this change too): a header's bytes are read as Latin-1, so an
    # attribute published as "café" (sent by the emulator as its UTF-8 bytes) is
    # stored and served as "cafÃ©".
    headers = [
        *((name.encode(), value.encode()) for name, value in UNWRAPPED.items()),
        (b"place", "café".encode()),
    ]
    response = client.post("/pubsub/push", content=json.dumps(RECORD), headers=headers)
    assert response.status_code == 204, response.text
    assert client.get("/v1/messages/u-1").json()["record"]["attributes"] == {"place": "café"}

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
from tests.conftest import served, settings
from tests.rawhttp import send

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
    # The push client's own Content-Type (the emulator's HTTP client writes
    # application/x-www-form-urlencoded on a message published without one:
    # tests/e2e/test_unwrapped_attributes_as_published.py) is kept as the attribute it
    # cannot be told from, and so no more counts against Pub/Sub's 100: a message with
    # Pub/Sub's largest number of attributes was refused 400, never acknowledged,
    # delivered again until it was dead-lettered.
    published = {f"a{n}": f"v{n}" for n in range(MAX_ATTRIBUTES)}
    client_type = {"content-type": "application/x-www-form-urlencoded"}
    headers = {**UNWRAPPED, **client_type, **published}
    response = client.post("/pubsub/push", content=json.dumps(RECORD), headers=headers)
    assert response.status_code == 204, response.text
    stored = client.get("/v1/messages/u-1").json()["record"]["attributes"]
    assert stored == {**client_type, **published}
    # One more of the publisher's own is no push Pub/Sub sends.
    headers = {**headers, "x-goog-pubsub-message-id": "u-2", "a100": "v100"}
    response = client.post("/pubsub/push", content=json.dumps(RECORD), headers=headers)
    assert response.status_code == 400, response.text


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


# Identities an authenticating proxy or a TLS terminator on the way writes on every
# request it passes on (none named with a credential's word, none a withheld prefix).
PROXY_IDENTITIES = {
    "remote-user": "pubsub-push@demo.iam.gserviceaccount.com",  # Authelia, Caddy forward_auth
    "remote-email": "pubsub-push@demo.iam.gserviceaccount.com",  # Authelia
    "x-consumer-username": "pubsub",  # Kong
    "x-consumer-id": "7f0e2c1a",  # Kong
    "tailscale-user-login": "ops@example.org",  # Tailscale serve
    "x-pomerium-claim-email": "ops@example.org",  # Pomerium
    "x-ssl-client-s-dn": "CN=pubsub,O=Google",  # nginx/HAProxy mTLS
}


@pytest.mark.parametrize(("name", "value"), PROXY_IDENTITIES.items())
def test_no_identity_a_proxy_vouches_for_is_stored_as_an_attribute(
    client: TestClient[Recordline], name: str, value: str
) -> None:
    # Proves (before this change too): the credential rule reads names for a credential's
    # words, and the path's own by list and prefix; an identity proxies write under names
    # of their own is neither, so it is stored on every message and served to every
    # reader, as the module says none may be ("a header is an attribute unless the
    # delivery path writes it").
    headers = {**UNWRAPPED, "origin-system": "billing", name: value}
    response = client.post("/pubsub/push", content=json.dumps(RECORD), headers=headers)
    assert response.status_code == 204, response.text
    assert client.get("/v1/messages/u-1").json()["record"]["attributes"] == {
        "origin-system": "billing"
    }


async def test_an_attribute_header_sent_twice_is_refused_not_stored_joined() -> None:
    # Pub/Sub's attribute names are case-sensitive, HTTP's header names are not, so
    # `Region` and `region` of one message arrive as two `region` headers, whose values
    # were read as one joined, `region: "eu-west1, us-east1"`, a value its publisher
    # never gave. Refused (400), the message is dead-lettered whole, where the wrapped
    # format keeps both. (Sent on a socket: an HTTP client joins them itself, as a proxy
    # may, and a joined value is one a single attribute may hold.)
    async with served(create_app(settings())) as http:
        body = json.dumps(RECORD).encode()
        head = [
            "POST /pubsub/push HTTP/1.1",
            "Host: 127.0.0.1",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in UNWRAPPED.items()),
            "Region: eu-west1",
            "region: us-east1",
        ]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        assert await send(http.base_url.host, http.base_url.port or 80, raw) == 400
        assert (await http.get("/v1/messages/u-1")).status_code == 404

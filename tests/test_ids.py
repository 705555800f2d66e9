"""Ids round-trip: any id the push path stores is found by look-up and taken by replay."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from urllib.parse import quote

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.commands.replay import Service, replay_rejected
from app.http.head import Recordline
from app.records import MAX_ID_LENGTH, Rejection
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, served, settings

# Ids as publishers write them: a path-like key, slashes doubled and trailing,
# characters a URL gives a meaning to, an encoded-looking one, other scripts.
ODD_IDS = ["orders/123", "a//b/", "/leading", "sp ace?#&=+%", "m%2F", "clé/日本"]


def path(prefix: str, identifier: str) -> str:
    return prefix + quote(identifier, safe="")


@pytest.mark.slow
@pytest.mark.parametrize("identifier", ODD_IDS)
def test_a_record_id_with_slashes_or_reserved_characters_is_found(
    client: TestClient[Recordline], identifier: str
) -> None:
    pushed = client.post("/pubsub/push", json=envelope({"id": identifier, "data": 1}))
    assert pushed.status_code == 204

    found = client.get(path("/v1/records/", identifier))
    assert found.status_code == 200, found.text
    assert found.json()["id"] == identifier


@pytest.mark.slow
@pytest.mark.parametrize("identifier", ODD_IDS)
def test_a_message_id_with_slashes_or_reserved_characters_is_found(
    client: TestClient[Recordline], identifier: str
) -> None:
    pushed = client.post("/pubsub/push", json=envelope({"id": "r"}, message_id=identifier))
    assert pushed.status_code == 204

    found = client.get(path("/v1/messages/", identifier))
    assert found.status_code == 200, found.text
    assert found.json()["message_id"] == identifier


def test_look_ups_are_exact_about_slashes(client: TestClient[Recordline]) -> None:
    client.post("/pubsub/push", json=envelope({"id": "a//b/"}))
    # The same id with its slashes as sent, unencoded, still finds it.
    assert client.get("/v1/records/a//b/").status_code == 200
    # Others that a decoded path would make of it do not.
    for other in ("a/b", "a//b", "a/b/"):
        answer = client.get(path("/v1/records/", other))
        assert answer.status_code == 404, other
        assert answer.json()["type"] == "/problems/not-found"


@pytest.mark.slow
@pytest.mark.parametrize("encoded", ["%FF", "a%C3", "%ED%A0%80", "%C0%AF"])
@pytest.mark.parametrize(
    ("prefix", "parameter"), [("/v1/records/", "record_id"), ("/v1/messages/", "message_id")]
)
def test_an_id_that_is_not_percent_encoded_utf8_is_a_400(
    client: TestClient[Recordline], encoded: str, prefix: str, parameter: str
) -> None:
    # Decoded leniently, each of these became U+FFFD, and found this record.
    pushed = client.post("/pubsub/push", json=envelope({"id": "\ufffd"}, message_id="\ufffd"))
    assert pushed.status_code == 204
    assert client.get(path(prefix, "\ufffd")).status_code == 200

    answer = client.get(prefix + encoded)
    assert answer.status_code == 400, answer.text
    problem = answer.json()
    assert problem["type"] == "/problems/invalid-parameter"
    assert problem["parameter"] == parameter
    assert "not UTF-8 once percent-decoded" in problem["detail"]


async def test_a_percent_sign_that_is_no_escape_is_a_400() -> None:
    # What curl sends for `/v1/records/100%`: httpx would encode the `%`, so the
    # request goes over a socket as typed.
    async def get(port: int, target: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        answer = await reader.read()
        writer.close()
        return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]

    app = create_app(settings(), store=DuckDBStore(":memory:"))
    async with served(app) as http:
        port = http.base_url.port
        assert port is not None
        pushed = await http.post("/pubsub/push", json=envelope({"id": "100%"}))
        assert pushed.status_code == 204
        status, body = await get(port, b"/v1/records/100%25")
        assert status == 200, body
        status, body = await get(port, b"/v1/records/100%")
        assert status == 400, body
        assert b"record_id: `%` at character 4 is not followed by two hex digits" in body
        assert b"`%` as `%25`" in body
        status, body = await get(port, b"/v1/messages/%zz")
        assert status == 400, body
        assert b"message_id: `%` at character 1 is not followed by two hex digits" in body


def test_a_message_id_longer_than_look_ups_take_is_refused_at_push(
    client: TestClient[Recordline],
) -> None:
    # Stored, it could never be looked up or replayed: so it is not stored, not
    # acknowledged, and the answer names the limit. Pub/Sub keeps the message.
    long_id = "9" * (MAX_ID_LENGTH + 1)
    answer = client.post("/pubsub/push", json=envelope({"id": "r"}, message_id=long_id))

    assert answer.status_code == 400
    problem = answer.json()
    assert problem["type"] == "/problems/not-a-push-envelope"
    assert str(MAX_ID_LENGTH) in problem["detail"]
    assert "messageId" in problem["detail"]
    assert (
        client.get("/v1/records", params={"since": "2000-01-01T00:00:00Z"}).json()["records"] == []
    )
    unwrapped = client.post(
        "/pubsub/push",
        content=b'{"id": "r"}',
        headers={
            "x-goog-pubsub-message-id": long_id,
            "x-goog-pubsub-publish-time": "2024-04-27T12:00:01Z",
        },
    )
    assert unwrapped.status_code == 400
    assert "x-goog-pubsub-message-id" in unwrapped.json()["detail"]


@pytest.mark.slow
def test_the_longest_message_id_push_takes_is_looked_up_and_replayed(
    client: TestClient[Recordline],
) -> None:
    longest = "7" * MAX_ID_LENGTH
    assert client.post("/pubsub/push", json=envelope(["bad"], message_id=longest)).status_code == (
        204
    )
    found = client.get(f"/v1/messages/{longest}")
    assert found.status_code == 200
    assert found.json()["status"] == "rejected"

    data = base64.b64encode(b'{"id": "fixed"}').decode()
    replayed = client.post(
        "/v1/replay",
        json={
            "messages": [
                {"message_id": longest, "publish_time": "2024-04-27T12:00:01Z", "data": data}
            ]
        },
    )
    assert replayed.status_code == 200, replayed.text
    # Compared with its rejection under that id: its data, and no subscription given.
    assert replayed.json()["results"] == [
        {"message_id": longest, "outcome": "stored", "changed": ["data", "subscription"]}
    ]
    assert client.get(f"/v1/messages/{longest}").json()["status"] == "stored"


class LegacyStore(DuckDBStore):
    """Rejections stored before push refused over-long message ids: one such, among
    two that today's validation stores."""

    LONG_ID = "x" * (MAX_ID_LENGTH + 500)

    async def start(self) -> None:
        await super().start()
        now = 1_700_000_000_000_000

        def rejection(message_id: str, payload: bytes, at: int) -> Rejection:
            return Rejection(
                message_id=message_id,
                publish_time=1_714_219_201_000_000,
                ingest_time=at,
                data=payload,
                reason="an old bug",
            )

        await self.append(
            [
                rejection("m-first", b'{"id": "one"}', now),
                rejection(self.LONG_ID, b'{"id": "long"}', now + 1),
                rejection("m-last", b'{"id": "two"}', now + 2),
            ]
        )


@pytest.mark.slow
async def test_replaying_rejections_names_a_message_the_service_refuses_and_goes_on() -> None:
    store = LegacyStore(":memory:")
    said_lines: list[str] = []
    async with served(create_app(settings(), store=store)) as http:
        service = Service(str(http.base_url).rstrip("/"))
        try:
            counts = await asyncio.to_thread(
                replay_rejected,
                service,
                since=None,
                until=None,
                reason_contains=None,
                dry_run=False,
                say=said_lines.append,
            )
        finally:
            service.close()
        assert counts == Counter({"stored": 2, "refused": 1})
        for message_id in ("m-first", "m-last"):
            assert (await http.get(f"/v1/messages/{message_id}")).json()["status"] == "stored"

    said = "\n".join(said_lines)
    # The message is named (cut short: it is 1,524 characters), and so is the field.
    assert "xxxxxxxxxx" in said
    assert "characters left out" in said
    assert "message_id" in said
    assert str(MAX_ID_LENGTH) in said

"""Oversized or overlong input gets a 400 or 413 problem document, and is never read whole."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.ingest.envelope import MAX_ATTRIBUTES
from app.query.page_token import MAX_TOKEN_LENGTH
from app.records import MAX_ID_LENGTH
from app.settings import Settings
from tests.conftest import envelope
from tests.uploads import CHUNK, Upload, post

PUSH_TOKEN = "a1b2c3d4e5f6a7b8c9d0"
TWENTY_MB = 20 * 1024 * 1024


@pytest.fixture
def settings() -> Settings:
    return Settings.load({"RECORDLINE_STORE": "memory:", "RECORDLINE_PUSH_TOKEN": PUSH_TOKEN})


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Recordline]]:
    async with AsyncTestClient(create_app(settings)) as client:  # runs the lifespan
        yield client


@pytest.fixture
def app(client: AsyncTestClient[Recordline]) -> Recordline:
    return client.app


@pytest.mark.slow
@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_a_20_mb_push_gets_413_without_being_read_whole(
    app: Recordline, settings: Settings, announced: bool
) -> None:
    upload = Upload(TWENTY_MB)
    headers = {"content-type": "application/json"}
    if announced:
        headers["content-length"] = str(TWENTY_MB)
    else:
        headers["transfer-encoding"] = "chunked"

    status, response_headers, body = await post(
        app, upload, headers=headers, query=f"token={PUSH_TOKEN}"
    )

    assert status == 413
    assert response_headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["status"] == 413
    if announced:
        assert upload.pulled == 0  # refused on the header alone
    else:
        # Reading stopped at the first chunk past the limit.
        assert upload.pulled <= settings.server.max_body_bytes + CHUNK
        assert upload.pulled < TWENTY_MB


async def test_an_unauthenticated_20_mb_push_is_refused_before_its_body_is_read(
    app: Recordline,
) -> None:
    upload = Upload(TWENTY_MB)
    status, _, _ = await post(app, upload, headers={"transfer-encoding": "chunked"})

    assert status == 401
    assert upload.pulled == 0


async def test_too_many_attributes_is_400(client: AsyncTestClient[Recordline]) -> None:
    attributes = {f"a{n}": "v" for n in range(MAX_ATTRIBUTES + 1)}
    response = await client.post(
        f"/pubsub/push?token={PUSH_TOKEN}", json=envelope({"id": "1"}, attributes=attributes)
    )

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "attributes" in response.json()["detail"]


@pytest.mark.slow
async def test_too_many_attribute_headers_in_an_unwrapped_push_is_400(
    client: AsyncTestClient[Recordline],
) -> None:
    headers = {
        "x-goog-pubsub-message-id": "m-1",
        "x-goog-pubsub-publish-time": "2024-04-27T12:00:01Z",
        **{f"a{n}": "v" for n in range(MAX_ATTRIBUTES + 1)},
    }
    response = await client.post(
        f"/pubsub/push?token={PUSH_TOKEN}", content=b'{"id": "1"}', headers=headers
    )

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_an_overlong_record_id_is_rejected_and_acknowledged(
    client: AsyncTestClient[Recordline],
) -> None:
    # A producer bug must not stall the subscription: stored in `rejected`, answered 204.
    payload = {"id": "x" * (MAX_ID_LENGTH + 1)}
    response = await client.post(f"/pubsub/push?token={PUSH_TOKEN}", json=envelope(payload))

    assert response.status_code == 204
    message = (await client.get("/v1/messages/m-1")).json()
    assert message["status"] == "rejected"
    assert "$.id" in message["reason"]


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        (f"/v1/records?page_token={'A' * (MAX_TOKEN_LENGTH + 1)}", "page_token"),
        (f"/v1/records/{'r' * (MAX_ID_LENGTH + 1)}", "record_id"),
        (f"/v1/messages/{'9' * (MAX_ID_LENGTH + 1)}", "message_id"),
        ("/v1/records?page=2", "page"),
        ("/v1/records?limit=100000", "limit"),
    ],
)
async def test_overlong_or_unknown_parameters_are_400(
    client: AsyncTestClient[Recordline], path: str, parameter: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["parameter"] == parameter


async def test_ids_up_to_the_limit_are_looked_up(client: AsyncTestClient[Recordline]) -> None:
    record_id = "r" * MAX_ID_LENGTH
    data = base64.b64encode(json.dumps({"id": record_id}).encode()).decode()
    body = envelope({"id": record_id})
    assert body["message"]["data"] == data
    assert (await client.post(f"/pubsub/push?token={PUSH_TOKEN}", json=body)).status_code == 204

    assert (await client.get(f"/v1/records/{record_id}")).json()["id"] == record_id

"""No body at all, JSON or not, makes the push route answer 5xx, or lose a message."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from tests.conftest import settings as app_settings
from tests.fuzz.budget import EXAMPLES

scalars = st.none() | st.booleans() | st.integers() | st.text()
json_values = st.recursive(
    scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.datetimes().map(lambda d: d.isoformat()),
    st.text(max_size=30),
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"id": st.one_of(st.text(max_size=40), st.integers(), st.none())},
        optional={"timestamp": timestamps, "data": json_values},
    ),
)
data_fields = st.one_of(
    payloads.map(lambda p: base64.b64encode(json.dumps(p).encode()).decode()),
    st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=60),
    st.integers(),
    st.none(),
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "data": data_fields,
        "messageId": st.one_of(st.text(max_size=20), st.integers(), st.none()),
        "message_id": st.text(max_size=20),
        "publishTime": timestamps,
        "attributes": st.one_of(
            st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5), json_values
        ),
        "orderingKey": st.text(max_size=10),
    },
)
envelopes = st.one_of(
    st.fixed_dictionaries(
        {"message": messages},
        optional={"subscription": st.text(max_size=30), "deliveryAttempt": json_values},
    ),
    json_values,
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Recordline]]:
    with TestClient(create_app(app_settings())) as client:
        yield client


def check(client: TestClient[Recordline], response: Any, message_id: object) -> None:
    assert response.status_code in (204, 400, 413), response.text
    if response.status_code != 204:
        assert response.headers["content-type"].startswith("application/problem+json")
    elif isinstance(message_id, str) and message_id and "/" not in message_id:
        # Acknowledged means findable: as a record or as a rejection. (Pub/Sub
        # ids are digits; an id with a slash cannot be a path segment.)
        # `.` percent-encoded too: clients resolve `.` and `..` segments away.
        segment = quote(message_id, safe="").replace(".", "%2E")
        assert client.get(f"/v1/messages/{segment}").status_code == 200


@pytest.mark.slow
@settings(max_examples=EXAMPLES * 12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=envelopes)
def test_any_json_body(client: TestClient[Recordline], body: Any) -> None:
    response = client.post("/pubsub/push", json=body)
    message = body.get("message") if isinstance(body, dict) else None
    message_id = message.get("messageId") if isinstance(message, dict) else None
    check(client, response, message_id)


@pytest.mark.slow
@settings(max_examples=EXAMPLES * 6, deadline=None)
@given(body=st.binary(max_size=300))
def test_any_bytes(client: TestClient[Recordline], body: bytes) -> None:
    response = client.post(
        "/pubsub/push", content=body, headers={"content-type": "application/json"}
    )
    check(client, response, None)


@pytest.mark.slow
@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(
    body=st.binary(max_size=200),
    message_id=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20
    ),
    publish_time=timestamps.filter(lambda t: t.isascii() and "\n" not in t and "\r" not in t),
)
def test_any_unwrapped_push(
    client: TestClient[Recordline], body: bytes, message_id: str, publish_time: str
) -> None:
    headers = {
        "x-goog-pubsub-message-id": message_id,
        "x-goog-pubsub-publish-time": publish_time,
    }
    response = client.post("/pubsub/push", content=body, headers=headers)
    check(client, response, message_id)


# What a credential's or a proxy's header name holds somewhere in it.
_CREDENTIAL_LOOKING = [
    "token",
    "key",
    "secret",
    "session",
    "signature",
    "cookie",
    "auth",
    "password",
    "credential",
    "jwt",
    "bearer",
    "userinfo",
]
# What the delivery path adds: a proxy's, a tracer's, Google's front end's.
_NOT_PUBLISHERS = [
    "x-amz-",
    "x-ms-",
    "x-b3-",
    "x-forwarded-",
    "proxy-",
    "x-goog-",
    "x-cloud-",
    "x-serverless-",
]
_NAME_PART = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", max_size=8)


@pytest.mark.slow
@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(
    names=st.lists(
        st.one_of(
            st.tuples(_NAME_PART, st.sampled_from(_CREDENTIAL_LOOKING), _NAME_PART).map("".join),
            st.tuples(st.sampled_from(_NOT_PUBLISHERS), _NAME_PART).map("".join),
            st.sampled_from(
                ["b3", "baggage", "forwarded", "host", "content-length", "user-agent", "via"]
            ),
        ),
        min_size=1,
        max_size=20,
    ),
    value=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
)
def test_no_credential_looking_header_is_an_attribute(names: list[str], value: str) -> None:
    from app.ingest.envelope import decode_unwrapped

    headers = {
        "x-goog-pubsub-message-id": "m-1",
        "x-goog-pubsub-publish-time": "2024-04-27T12:00:01Z",
        "origin-system": "billing",
        **{name: value for name in names},
    }
    message = decode_unwrapped(b"{}", headers)
    assert message.attributes == {"origin-system": "billing"}

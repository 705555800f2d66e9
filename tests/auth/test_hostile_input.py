"""Hostile input never hurts: no 5xx from any route, no exception from any decoder.

schemathesis drives every operation in the served OpenAPI document through
the ASGI app (with its lifespan, on the in-memory store); hypothesis feeds the
push decoders bytes, near-miss envelopes and header sets. Example counts are
kept small so the file runs in seconds inside the normal test run.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from litestar.types import Receive, Scope, Send
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from app.asgi import create_app
from app.errors import BadEnvelope
from app.http.head import Recordline
from app.ingest.envelope import decode_unwrapped, decode_wrapped
from app.ingest.service import to_row
from app.query.page_token import PageToken, PageTokens
from app.records import MAX_ID_LENGTH, MAX_MICROS, Record, Rejection
from app.settings import DEFAULT_PAGE_TOKEN_SECRET, Settings
from tests.conftest import long_polling
from tests.fuzz.budget import EXAMPLES

PUSH_TOKEN = "a1b2c3d4e5f6a7b8c9d0"

# An ingest time as the batcher stamps one: now.
NOW = time.time_ns() // 1000


class Restartable:
    """The app as an ASGI callable that builds a fresh Recordline at each lifespan start.

    schemathesis ends the lifespan after every operation and starts it again for
    the next one; a stopped store does not start twice, so each run gets its own.
    """

    def __init__(self) -> None:
        self._app = self._build()

    @staticmethod
    def _build() -> Recordline:
        # A stream's long-poll or SSE read holds the request this long at most: the
        # cases keep their shapes, and answer soon.
        return create_app(
            long_polling(
                Settings.load(
                    {
                        "RECORDLINE_STORE": "memory:",
                        "RECORDLINE_PUSH_TOKEN": PUSH_TOKEN,
                        "RECORDLINE_STREAM_SECONDS": "0.5",
                    }
                ),
                0.05,
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._app = self._build()
        await self._app(scope, receive, send)


# Examples and fuzzing. The coverage phase's boundary cases are drawn when the suite is
# collected, by every worker that collects it (half a minute each); they run with every
# check against the served app in tests/test_contract.py, pushes included.
SCHEMA = schemathesis.openapi.from_asgi(
    "/docs/openapi.json",
    Restartable(),
    config=SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}}),
)


@pytest.mark.slow
@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_route_answers_5xx(case: schemathesis.Case) -> None:
    # Pushes carry the shared secret so they get past the guard to the decoders.
    params = {"token": PUSH_TOKEN} if case.path == "/pubsub/push" else None
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 60:
        # A valid wait holds an empty page that long: the case keeps its shape, shorter.
        case.query["wait"] = min(wait, 0.05)
    response = case.call(params=params)
    case.validate_response(response, checks=[not_a_server_error])


# -- the decoders --------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
times = (
    st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat())
    | st.datetimes().map(lambda t: t.isoformat())  # no offset
    | st.text(max_size=30)
)
payloads = st.fixed_dictionaries(
    {"id": st.text(max_size=40) | json_values},
    optional={"timestamp": times | json_values, "data": json_values},
).map(lambda p: json.dumps(p).encode()) | st.binary(max_size=200)
data_fields = (
    payloads.map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=40) | json_values
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "data": data_fields,
        "attributes": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5)
        | json_values,
        "messageId": st.text(max_size=20) | json_values,
        "message_id": st.text(max_size=20),
        "publishTime": times | json_values,
        "publish_time": times,
        "orderingKey": st.text(max_size=8) | json_values,
    },
)
envelopes = st.fixed_dictionaries(
    {"message": messages | json_values},
    optional={
        "subscription": st.text(max_size=30) | json_values,
        "deliveryAttempt": st.integers() | json_values,
    },
).map(lambda e: json.dumps(e).encode())

# ASGI servers decode header bytes as latin-1, so any of its characters can arrive.
latin1 = st.characters(min_codepoint=0, max_codepoint=255)
header_names = st.sampled_from(
    [
        "x-goog-pubsub-message-id",
        "x-goog-pubsub-publish-time",
        "x-goog-pubsub-delivery-attempt",
        "x-goog-pubsub-subscription-name",
        "authorization",
        "content-type",
        "cookie",
        "proxy-authorization",
        "x-serverless-authorization",
        "x-api-key",
    ]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
header_values = st.text(latin1, max_size=30) | st.sampled_from(
    # Digits by str.isdigit() that int() refuses, and numbers past 64 bits.
    ["\xb2", "\xb9", "\u0661", "-1", "99999999999999999999999", "2024-04-27T12:00:01Z"]
)
header_sets = st.dictionaries(header_names, header_values, max_size=8)


def settles(decode: Any, *args: Any) -> Record | Rejection | None:
    """Decode and validate: a BadEnvelope (400) or a row, never anything else."""
    try:
        message = decode(*args)
    except BadEnvelope:
        return None
    return to_row(message, ingest_time=NOW, trace_id=None)


@pytest.mark.slow
@given(st.binary(max_size=512) | envelopes)
@settings(max_examples=EXAMPLES * 12, deadline=None)
def test_decode_wrapped_never_crashes(body: bytes) -> None:
    row = settles(decode_wrapped, body)
    assert row is None or isinstance(row, Record | Rejection)


@pytest.mark.slow
@given(payloads, header_sets)
@example(
    b"{}",
    {
        "x-goog-pubsub-message-id": "1",
        "x-goog-pubsub-publish-time": "2024-04-27T12:00:01Z",
        "x-goog-pubsub-delivery-attempt": "\xb2",  # superscript two: isdigit(), but not int()
    },
)
@settings(max_examples=EXAMPLES * 12, deadline=None)
def test_decode_unwrapped_never_crashes(body: bytes, headers: dict[str, str]) -> None:
    row = settles(decode_unwrapped, body, headers)
    assert row is None or isinstance(row, Record | Rejection)
    if row is not None:
        # No credential a caller sent is ever served back as an attribute.
        assert not set(json.loads(row.attributes or "{}")) & CREDENTIALS


CREDENTIALS = {
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-serverless-authorization",
    "x-api-key",
}


# -- cursors -------------------------------------------------------------------

# Any value a page token's fields can be made to hold, signed with the key the
# service uses: the signature is valid, the values need not be.
# (Any that MessagePack holds: 64 bits, signed or not.)
msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
cursors = st.builds(
    PageToken,
    after_time=msgpack_ints | st.sampled_from([0, MAX_MICROS, MAX_MICROS + 1, -1]),
    after_message_id=st.text(max_size=40) | st.just("9" * (MAX_ID_LENGTH + 1)),
    until=st.none() | msgpack_ints,
)


@pytest.fixture(scope="module")
def reader() -> Iterator[TestClient[Recordline]]:
    # A stream that starts ends at once: each example is a request, not a follower.
    app = create_app(
        Settings.load({"RECORDLINE_STORE": "memory:", "RECORDLINE_STREAM_SECONDS": "0.01"})
    )
    with TestClient(app) as client:
        yield client


@given(cursors, st.sampled_from(["/v1/records", "/v1/rejections"]), st.booleans())
@settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_signed_cursor_breaks_a_read(
    reader: TestClient[Recordline], cursor: PageToken, path: str, resumed: bool
) -> None:
    token = PageTokens(DEFAULT_PAGE_TOKEN_SECRET).encode(cursor)
    if resumed:
        # As a stream's Last-Event-ID, it is checked before the stream's 200.
        headers = {"Accept": "text/event-stream", "Last-Event-ID": token}
        answer = reader.get(path, headers=headers)
        if answer.status_code == 200:
            assert answer.headers["content-type"].startswith("text/event-stream")
            return
    else:
        answer = reader.get(path, params={"page_token": token})
    assert answer.status_code in (200, 400, 410), answer.text


@pytest.mark.slow
@given(payloads)
@settings(max_examples=EXAMPLES * 8, deadline=None)
def test_every_payload_becomes_a_record_or_a_rejection(payload: bytes) -> None:
    body = json.dumps(
        {
            "message": {
                "data": base64.b64encode(payload).decode(),
                "messageId": "m-1",
                "publishTime": "2024-04-27T12:00:01Z",
            }
        }
    ).encode()
    row = settles(decode_wrapped, body)
    assert isinstance(row, Record | Rejection)
    if isinstance(row, Rejection):
        assert row.reason
        assert row.data == payload  # kept as delivered, so nothing is lost

"""A page token pages the list and the range it was made for, and nothing else.

A token read on the other list, or with another `until`, would skip or repeat
rows without a word; each is refused with a 400 that names where the token was
sent and why, whether it came as `page_token` or as a stream's `Last-Event-ID`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.settings import Settings
from tests.fuzz.budget import EXAMPLES

LISTS = ("/v1/records", "/v1/rejections")
UNTIL = "2030-01-01T00:00:00Z"


def push(client: TestClient[Recordline], n: int, payload: object) -> None:
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    message = {"data": data, "messageId": f"m-{n}", "publishTime": "2024-04-27T12:00:01Z"}
    assert client.post("/pubsub/push", json={"message": message}).status_code == 204


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Recordline]]:
    settings = Settings.load({"RECORDLINE_STORE": "memory:", "RECORDLINE_STREAM_SECONDS": "0.01"})
    with TestClient(create_app(settings)) as client:
        # Three of each, so that a page of one has a token for the next.
        for n in range(3):
            push(client, n, {"id": f"r-{n}"})
            push(client, 10 + n, "not a record")
        yield client


def token(client: TestClient[Recordline], path: str, **params: str) -> str:
    page = client.get(path, params={"limit": "1", **params})
    assert page.status_code == 200, page.text
    made: str = page.json()["next_page_token"]
    return made


def read(
    client: TestClient[Recordline], path: str, made: str, source: str, **params: str
) -> httpx.Response:
    if source == "page_token":
        return client.get(path, params={"page_token": made, **params})
    headers = {"Accept": "text/event-stream", "Last-Event-ID": made}
    return client.get(path, params=params, headers=headers)


@pytest.mark.slow
@given(
    made_on=st.sampled_from(LISTS),
    read_on=st.sampled_from(LISTS),
    source=st.sampled_from(["page_token", "Last-Event-ID"]),
    bounded=st.booleans(),
)
@settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_token_is_taken_only_by_the_list_it_was_made_for(
    client: TestClient[Recordline], made_on: str, read_on: str, source: str, bounded: bool
) -> None:
    bounds = {"until": UNTIL} if bounded else {}
    made = token(client, made_on, **bounds)
    answer = read(client, read_on, made, source)
    if made_on == read_on:
        assert answer.status_code == 200, answer.text
    else:
        assert answer.status_code == 400, answer.text
        problem = answer.json()
        assert problem["parameter"] == source
        assert f"issued by {made_on}, not {read_on}" in problem["detail"]


@pytest.mark.parametrize("source", ["page_token", "Last-Event-ID"])
@pytest.mark.parametrize("path", LISTS)
def test_a_token_is_taken_only_with_the_until_it_was_made_for(
    client: TestClient[Recordline], path: str, source: str
) -> None:
    bounded = token(client, path, until=UNTIL)
    unbounded = token(client, path)
    # The first page's own `until`, or none: the token says the rest.
    assert read(client, path, bounded, source, until=UNTIL).status_code == 200
    assert read(client, path, bounded, source).status_code == 200
    for made, until in ((bounded, "2031-01-01T00:00:00Z"), (unbounded, UNTIL)):
        answer = read(client, path, made, source, until=until)
        assert answer.status_code == 400, answer.text
        problem = answer.json()
        assert problem["parameter"] == source
        assert "another `until`" in problem["detail"]

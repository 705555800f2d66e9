"""`since` and `until` at the very edge of the times every store holds, on every route
that takes them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from tests.conftest import settings


@pytest.fixture
def client() -> Iterator[TestClient[Recordline]]:
    with TestClient(create_app(settings())) as client:
        yield client


@pytest.mark.parametrize("name", ["records", "rejections"])
@pytest.mark.parametrize(
    "since",
    [
        "9999-12-31T23:59:59.999999Z",  # the last time every store holds
        "9999-12-31T23:59:59-14:00",  # beyond it: read as it (`time_or_ago`)
    ],
)
def test_an_export_from_the_last_time_there_is_is_empty_not_a_500(
    client: TestClient[Recordline], name: str, since: str
) -> None:
    # Proves (before this change too, and reached by more text since every `since` goes
    # through `time_or_ago`): an export whose `since` is later than when it was asked
    # reads "up to a moment after it", `since + 1 µs`, which past 9999-12-31T23:59:59.
    # 999999Z is no datetime: OverflowError, answered 500 to any reader.
    answer = client.get(f"/v1/export/{name}", params={"since": since})
    assert answer.status_code < 500, answer.text

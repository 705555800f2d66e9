"""`since` and `until` of the paged lists take how long ago, as `recordline tail --since`
does (`/v1/records?since=1h` was a 400 where `tail --since 1h` read on)."""

from __future__ import annotations

from litestar.testing import TestClient

from app.http.head import Recordline
from tests.conftest import envelope


def test_since_and_until_take_how_long_ago(client: TestClient[Recordline]) -> None:
    assert client.post("/pubsub/push", json=envelope({"id": "now"})).status_code == 204
    for params, ids in (
        ({"since": "1h"}, ["now"]),
        ({"until": "1h"}, []),  # until an hour ago: nothing yet
        ({"since": "7d"}, ["now"]),
        # Longer ago than any store reaches: from the start, as a time before the year 1.
        ({"since": "99999999999999999999d"}, ["now"]),
    ):
        answer = client.get("/v1/records", params=params)
        assert answer.status_code == 200, (params, answer.text)
        assert [r["id"] for r in answer.json()["records"]] == ids, params
    for params in ({"since": "1y"}, {"since": "-1h"}, {"until": "h"}):
        answer = client.get("/v1/records", params=params)
        assert answer.status_code == 400, (params, answer.text)
    assert client.get("/v1/rejections", params={"since": "2h"}).status_code == 200

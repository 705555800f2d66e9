"""Listing rejections: raw payloads and reasons, paged in ingest order like records."""

from __future__ import annotations

import base64

from litestar.testing import TestClient

from app.http.head import Recordline
from tests.conftest import envelope


def reject(client: TestClient[Recordline], n: int) -> bytes:
    raw = f"not json {n}".encode()
    body = envelope(None, message_id=f"x{n:04d}", raw_data=raw, attributes={"n": str(n)})
    assert client.post("/pubsub/push", json=body).status_code == 204
    return raw


def test_rejections_are_listed_once_in_key_order_with_their_payload(
    client: TestClient[Recordline],
) -> None:
    raws = {f"x{n:04d}": reject(client, n) for n in range(12)}
    good = envelope({"id": "r1", "data": 1}, message_id="m1")
    assert client.post("/pubsub/push", json=good).status_code == 204
    seen = []
    page = client.get("/v1/rejections", params={"limit": 5}).json()
    while page["rejections"]:
        seen += page["rejections"]
        page = client.get("/v1/rejections", params={"page_token": page["next_page_token"]}).json()
    assert [r["message_id"] for r in seen] == sorted(raws)
    keys = [(r["ingest_time"], r["message_id"]) for r in seen]
    assert keys == sorted(keys)
    first = seen[0]
    assert base64.b64decode(first["data"]) == raws[first["message_id"]]
    assert first["attributes"] == {"n": "0"}
    assert first["reason"]
    assert first["publish_time"].endswith("Z")
    # A follower sees the next rejection behind its token, and no record.
    reject(client, 99)
    later = client.get("/v1/rejections", params={"page_token": page["next_page_token"]}).json()
    assert [r["message_id"] for r in later["rejections"]] == ["x0099"]


def test_rejections_bad_parameters_are_problems(client: TestClient[Recordline]) -> None:
    for params in ({"since": "yesterday"}, {"limit": "0"}, {"page_token": "junk"}, {"x": "1"}):
        answer = client.get("/v1/rejections", params=params)
        assert answer.status_code == 400, params
        assert answer.headers["content-type"].startswith("application/problem+json")
    answer = client.get(
        "/v1/rejections",
        params={"since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"},
    )
    assert answer.json()["parameter"] == "until"

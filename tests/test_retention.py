"""Retention: reads from before it answer 410, and DuckDB deletes what it no longer keeps."""

from __future__ import annotations

import time
from pathlib import Path

from httpx import Response
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.query.page_token import PageToken, PageTokens
from app.records import Record, Rejection
from app.settings import Settings
from app.store import PageQuery
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, settings
from tests.waiting import until

DAY = 86_400 * 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def expired_token(config: Settings, age_days: float) -> str:
    # As a follower that stopped reading `age_days` ago would hold it.
    tokens = PageTokens(config.query.page_token_secret)
    return tokens.encode(PageToken(int(now_us() - age_days * DAY), "m-old"))


def assert_gone(answer: Response, parameter: str) -> None:
    assert answer.status_code == 410, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["parameter"] == parameter
    assert problem["retention_days"] == 7
    assert "7-day retention" in problem["detail"]


def test_bounds_older_than_the_retention_answer_410() -> None:
    config = settings(RECORDLINE_RETENTION_DAYS="7")
    with TestClient(create_app(config)) as client:
        body = envelope({"id": "r1", "data": 1}, message_id="m1")
        assert client.post("/pubsub/push", json=body).status_code == 204
        old = "2000-01-01T00:00:00Z"
        assert_gone(client.get("/v1/records", params={"since": old}), "since")
        assert_gone(client.get("/v1/records", params={"until": old}), "until")
        token = expired_token(config, 8)
        assert_gone(client.get("/v1/records", params={"page_token": token}), "page_token")
        # Inside the retention, and with no bound at all, reads work as before.
        recent = expired_token(config, 6)
        assert client.get("/v1/records", params={"page_token": recent}).status_code == 200
        page = client.get("/v1/records").json()
        assert [r["message_id"] for r in page["records"]] == ["m1"]
        assert client.get("/v1/records", params={"page_token": page["next_page_token"]}).is_success


def test_without_retention_old_bounds_are_served(client: TestClient[Recordline]) -> None:
    old = "2000-01-01T00:00:00Z"
    assert client.get("/v1/records", params={"since": old}).status_code == 200
    token = expired_token(settings(), 400)
    assert client.get("/v1/records", params={"page_token": token}).status_code == 200


def test_without_retention_bounds_before_1970_are_served(client: TestClient[Recordline]) -> None:
    # Nothing is deleted, so a bound before the epoch is a page like any other,
    # never a 410: it used to be compared with a retention start of 0 µs.
    body = envelope({"id": "r1", "data": 1}, message_id="m1")
    assert client.post("/pubsub/push", json=body).status_code == 204
    for since in ("1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z"):
        answer = client.get("/v1/records", params={"since": since})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert [r["message_id"] for r in page["records"]] == ["m1"]
        following = client.get("/v1/records", params={"page_token": page["next_page_token"]})
        assert following.status_code == 200, following.text
        assert client.get("/v1/rejections", params={"since": since}).status_code == 200
    # An empty range before the epoch is an empty page.
    bounded = client.get(
        "/v1/records", params={"since": "1900-01-01T00:00:00Z", "until": "1969-01-01T00:00:00Z"}
    )
    assert bounded.status_code == 200, bounded.text
    assert bounded.json()["records"] == []
    assert bounded.json()["next_page_token"] is None


def rows(ingest_time: int, n: int) -> list[Record | Rejection]:
    return [
        Record(
            message_id=f"m{n}",
            id=f"r{n}",
            data="1",
            publish_time=ingest_time,
            ingest_time=ingest_time,
        ),
        Rejection(
            message_id=f"x{n}",
            publish_time=ingest_time,
            ingest_time=ingest_time,
            data=b"not json",
            reason="data: not JSON",
        ),
    ]


async def everything(store: DuckDBStore) -> list[str]:
    await store.barrier()
    page = await store.page(
        Record, PageQuery(after_time=0, after_message_id="", before_time=2**62, limit=100)
    )
    return [r.message_id for r in page.rows]


async def test_duckdb_deletes_rows_older_than_the_retention() -> None:
    now = now_us()
    store = DuckDBStore(":memory:", retention_days=7, expire_every=3600)
    await store.start()
    try:
        await store.append([*rows(now - 8 * DAY, 1), *rows(now - 6 * DAY, 2)])
        await store.barrier()
        assert await store.expire() == 2
        assert await everything(store) == ["m2"]
        assert await store.message("x1") is None
        status = await store.message("x2")
        assert status is not None
        assert status.status == "rejected"
    finally:
        await store.close()


async def test_duckdb_deletes_on_a_schedule(duckdb_path: Path) -> None:
    now = now_us()
    clock = [now * 1000]
    store = DuckDBStore(
        str(duckdb_path), retention_days=1, expire_every=0.01, clock=lambda: clock[0]
    )
    await store.start()
    try:
        await store.append([*rows(now - 2 * DAY, 1), *rows(now, 2)])

        async def left(ids: list[str]) -> bool:
            return await everything(store) == ids

        await until(lambda: left(["m2"]), what="a round of the schedule to delete m1")
        assert await everything(store) == ["m2"]
        # Time passes: the next round deletes the rest.
        clock[0] += 2 * DAY * 1000
        await until(lambda: left([]), what="the next round to delete m2")
    finally:
        await store.close()


async def test_duckdb_keeps_everything_without_retention() -> None:
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        await store.append(rows(1_000, 1))
        assert await store.expire() == 0
        assert await everything(store) == ["m1"]
    finally:
        await store.close()

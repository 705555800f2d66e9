"""The access record kept in the system's own store and read back by operators
(`GET /v1/access`): each line the log writes is kept a few seconds after its request,
newest first a page at a time; readers are refused it; a store that will not take the
lines never costs a read its answer, and says so in `/readyz`; what waits as the service
stops is kept then."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, cast

import duckdb
import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.errors import StoreUnavailable
from app.http.head import Recordline
from app.query.access import MOST_WAITING_BYTES, AccessKeeper, AccessReads
from app.query.page_token import PageTokens
from app.store import Store
from app.store.access import AccessLine, AccessQuery, page_of
from app.store.duckdb.store import DuckDBStore
from tests.auth.fake_google import PUSHER, FakeGoogle
from tests.auth.test_export_permission import ANALYST, EXPORTER, OPERATOR, token
from tests.auth.test_export_permission import settings as exporting
from tests.conftest import envelope
from tests.conftest import settings as loaded
from tests.waiting import until, until_blocking


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture
def client(google: FakeGoogle, tmp_path: Path) -> Iterator[TestClient[Recordline]]:
    settings = exporting(
        google,
        RECORDLINE_STORE=f"duckdb:{tmp_path / 'kept.duckdb'}",
        RECORDLINE_EXPORT_PRINCIPALS=EXPORTER,
        RECORDLINE_MASK_ATTRIBUTES="client-ip:hash",
    )
    with TestClient(create_app(settings)) as client:
        for n in range(3):
            pushed = client.post(
                "/pubsub/push",
                json=envelope(
                    {"id": f"r-{n}", "data": {"n": n}},
                    message_id=f"m-{n}",
                    attributes={"client-ip": "10.9.8.7"},
                ),
                headers=token(google, PUSHER),
            )
            assert pushed.status_code == 204, pushed.text
        yield client


def kept(client: TestClient[Recordline], google: FakeGoogle, **params: Any) -> dict[str, Any]:
    answer = client.get("/v1/access", params=params, headers=token(google, OPERATOR))
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


def test_each_line_is_kept_and_read_back_by_an_operator_newest_first(
    client: TestClient[Recordline], google: FakeGoogle
) -> None:
    assert client.get("/v1/records", headers=token(google, ANALYST)).status_code == 200
    assert client.get("/v1/export/records", headers=token(google, ANALYST)).status_code == 403
    assert client.get("/v1/export/records", headers=token(google, EXPORTER)).status_code == 200
    asked = client.get(
        "/v1/records", params={"attribute": "client-ip:10.9.8.7"}, headers=token(google, ANALYST)
    )
    assert asked.status_code == 403

    def four() -> list[dict[str, Any]]:
        lines = (
            kept(client, google, action="export")["lines"]
            + kept(client, google, principal=ANALYST)["lines"]
        )
        return lines if len(lines) >= 4 else []

    lines = until_blocking(four, what="four lines kept")
    exports = [line["line"] for line in lines[:2]]
    # Newest first: the export answered, then the one refused.
    assert [(e["principal"], e["status"]) for e in exports] == [(EXPORTER, 200), (ANALYST, 403)]
    assert exports[0]["rows"] == 3
    by_analyst = [line["line"] for line in lines[2:]]
    assert [(e["path"], e["status"]) for e in by_analyst][-1] == ("/v1/records", 200)
    # A filter on a masked attribute is kept as the log keeps it: by its keyed hash.
    refused = next(e for e in by_analyst if e["status"] == 403 and e["action"] == "read")
    assert "10.9.8.7" not in json.dumps(refused)
    assert refused["parameters"][0][1].startswith("client-ip:hmac:")
    # Each line says when, and is the log's line whole.
    assert all(line["time"].endswith("Z") and line["id"] for line in lines)


def test_pages_of_the_record_follow_their_token_and_keep_what_was_asked(
    client: TestClient[Recordline], google: FakeGoogle
) -> None:
    for _ in range(5):
        assert client.get("/v1/records/r-1", headers=token(google, ANALYST)).status_code == 200
    until_blocking(
        lambda: len(kept(client, google, principal=ANALYST)["lines"]) >= 5, what="five lines"
    )
    whole = kept(client, google, principal=ANALYST, limit=500)["lines"]
    walked: list[dict[str, Any]] = []
    page = kept(client, google, principal=ANALYST, limit=2)
    while True:
        walked += page["lines"]
        if page["next_page_token"] is None:
            break
        page = kept(client, google, principal=ANALYST, limit=2, page_token=page["next_page_token"])
    assert [line["id"] for line in walked] == [line["id"] for line in whole]
    first = kept(client, google, principal=ANALYST, limit=2)
    # A token of one principal's lines is not another's.
    other = client.get(
        "/v1/access",
        params={"limit": 2, "page_token": first["next_page_token"]},
        headers=token(google, OPERATOR),
    )
    assert other.status_code == 400
    assert other.json()["parameter"] == "page_token"


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"action": "delete"}, "action"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"page_token": "garbage"}, "page_token"),
        ({"principal": "x" * 321}, "principal"),
        # A filter misspelt, or given twice, would read lines it was meant to leave out.
        ({"actoin": "export"}, "actoin"),
        ({"action": ["export", "read"]}, "action"),
        ({"principal": [ANALYST, EXPORTER]}, "principal"),
    ],
)
def test_bad_parameters_are_refused_naming_them(
    client: TestClient[Recordline], google: FakeGoogle, params: dict[str, Any], parameter: str
) -> None:
    answer = client.get("/v1/access", params=params, headers=token(google, OPERATOR))
    assert answer.status_code == 400, answer.text
    assert answer.json()["parameter"] == parameter


@pytest.mark.parametrize(
    ("since", "until"),
    [
        ("2099-01-01T00:00:00Z", "2099-01-02T00:00:00Z"),
        ("1960-01-01T00:00:00Z", "1965-01-01T00:00:00Z"),
    ],
)
def test_a_range_wholly_in_the_future_or_older_than_the_record_holds_none(
    client: TestClient[Recordline], google: FakeGoogle, since: str, until: str
) -> None:
    # `until` is later than `since`: the range is not refused, it holds no line.
    answer = client.get(
        "/v1/access", params={"since": since, "until": until}, headers=token(google, OPERATOR)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["lines"] == []


def test_readers_and_strangers_are_refused_the_record(
    client: TestClient[Recordline], google: FakeGoogle
) -> None:
    assert client.get("/v1/access", headers=token(google, ANALYST)).status_code == 403
    assert client.get("/v1/access", headers=token(google, EXPORTER)).status_code == 403
    assert client.get("/v1/access").status_code == 401


def test_what_waits_as_the_service_stops_is_kept(google: FakeGoogle, tmp_path: Path) -> None:
    path = tmp_path / "stopping.duckdb"
    settings = exporting(google, RECORDLINE_STORE=f"duckdb:{path}")
    with TestClient(create_app(settings)) as client:
        client.post(
            "/pubsub/push",
            json=envelope({"id": "a", "data": {}}, message_id="m-a"),
            headers=token(google, PUSHER),
        )
        assert client.get("/v1/records", headers=token(google, ANALYST)).status_code == 200
    # Stopped at once, before the keeper's next round: the line was kept as it stopped.
    with duckdb.connect(str(path), read_only=True) as con:
        found = con.execute("SELECT principal, action FROM access_record").fetchall()
    assert (ANALYST, "read") in found


def test_an_unauthenticated_loopback_service_serves_its_record_to_everyone() -> None:
    with TestClient(create_app(loaded())) as client:
        pushed = client.post("/pubsub/push", json=envelope({"id": "a", "data": {}}))
        assert pushed.status_code == 204
        assert client.get("/v1/records").json()["records"]

        def lines() -> list[dict[str, Any]]:
            answer = client.get("/v1/access")
            assert answer.status_code == 200
            found: list[dict[str, Any]] = answer.json()["lines"]
            return found

        until_blocking(lines, what="a line kept")


class Refusing:
    """A store that keeps lines only once told it may."""

    def __init__(self) -> None:
        self.lines: list[AccessLine] = []
        self.refusing = True

    async def keep_access(self, lines: Sequence[AccessLine]) -> None:
        if self.refusing:
            raise StoreUnavailable("the access record's table is gone")
        self.lines += lines

    async def access_page(self, query: AccessQuery) -> list[AccessLine]:
        return page_of(query, self.lines)


async def test_a_store_refusing_the_lines_keeps_them_waiting_bounded_and_said() -> None:
    store = Refusing()
    keeper = AccessKeeper(store)
    entry = {"action": "read", "principal": "ana", "status": 200, "path": "/v1/records"}
    for _ in range(3):
        keeper.add(entry)
    task = asyncio.create_task(keeper.forever())
    try:
        await until(lambda: keeper.warnings(), what="the record said to be behind")
        assert "3 lines waiting" in keeper.warnings()[0]
        assert "table is gone" in keeper.warnings()[0]
        assert keeper.waiting == 3
        assert not store.lines
        # Bounded: past MOST_WAITING_BYTES the newest are dropped, and said.
        big = entry | {"path": "x" * (MOST_WAITING_BYTES // 4)}
        for _ in range(5):
            keeper.add(big)
        assert keeper.dropped == 2
        assert any("dropped 2 lines" in said for said in keeper.warnings())
        store.refusing = False
        await until(lambda: keeper.waiting == 0, timeout=30, what="every line kept")
        assert len(store.lines) == 6
        assert len({line.id for line in store.lines}) == 6
        assert not any("waiting" in said for said in keeper.warnings())
    finally:
        task.cancel()


@pytest.mark.parametrize("retention_days", [0, 30])
async def test_the_embedded_store_keeps_a_line_400_days_whatever_the_rows_retention(
    retention_days: int,
) -> None:
    now = 1_790_000_000_000_000_000
    store = DuckDBStore(":memory:", retention_days=retention_days, clock=lambda: now)
    await store.start()
    try:
        day = 86_400_000_000

        def line(days_ago: int) -> AccessLine:
            return AccessLine(
                time=now // 1000 - days_ago * day,
                id=f"i-{days_ago}",
                action="read",
                principal=None,
                status=200,
                entry="{}",
            )

        await store.keep_access([line(401), line(399), line(31), line(1)])
        await store.expire()
        kept = await store.access_page(AccessQuery(since=0, until=now // 1000, limit=10))
        assert [k.id for k in kept] == ["i-1", "i-31", "i-399"]
    finally:
        await store.close()


async def test_the_embedded_store_keeps_a_batch_in_one_statement_not_one_a_line(
    tmp_path: Path,
) -> None:
    # The writer thread is the rows' applier's too: a batch of lines takes it for a few
    # milliseconds (a statement a line took it about 1 ms a line, 0.6 s a batch).
    store = DuckDBStore(str(tmp_path / "batch.duckdb"))
    await store.start()
    try:
        batches = [
            [
                AccessLine(
                    time=1_790_000_000_000_000 + b * 1000 + i,
                    id=f"i-{b}-{i:06d}",
                    action="read",
                    principal=None if i % 2 else "ana@example.com",
                    status=401,
                    entry=json.dumps({"path": f"/v1/records/{i}", "status": 401}),
                )
                for i in range(500)
            ]
            for b in range(5)
        ]
        started = perf_counter()
        for batch in batches:
            await store.keep_access(batch)
        took = perf_counter() - started
        assert took < 1.0, f"{took:.2f} s for 2,500 lines"
        # Kept again (a write whose answer was lost), each line is there once.
        await store.keep_access(batches[0])
        kept = await store.access_page(AccessQuery(since=0, until=2**60, limit=500))
        assert len(kept) == 500
        assert kept[0] == batches[-1][-1]
    finally:
        await store.close()


def test_what_waits_is_bounded_by_what_the_process_holds_of_it() -> None:
    # Filled to its bound by a flood of refusals (each the smallest of lines), the keeper
    # holds about what it counts: not the log's entries, several times their JSON.
    most = 1024 * 1024
    keeper = AccessKeeper(Refusing(), most_bytes=most)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        n = 0
        while not keeper.dropped:
            keeper.add(
                {
                    "action": "read",
                    "system": "orders",
                    "principal": None,
                    "method": "GET",
                    "path": f"/v1/records/{n}",
                    "parameters": [["limit", str(n)]],
                    "status": 401,
                    "rows": 0,
                    "bytes": 98,
                    "masked": False,
                    "seconds": n / 1e6,
                }
            )
            n += 1
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert keeper.waiting > 1000
    assert held <= most * 1.1, f"{held:,} bytes held for a bound of {most:,}"


class Recording(Refusing):
    """A store keeping every line at once, recording the span each read asked."""

    def __init__(self, lines: list[AccessLine]) -> None:
        super().__init__()
        self.refusing = False
        self.lines = lines
        self.spans: list[int] = []

    async def access_page(self, query: AccessQuery) -> list[AccessLine]:
        self.spans.append(query.until - query.since)
        return page_of(query, self.lines)


async def test_a_page_reads_a_week_at_most_and_the_walk_reads_every_line_once() -> None:
    day = 86_400_000_000
    now = 1_790_000_000_000_000
    # A line every 6 hours for 40 days, and five at one moment.
    lines = [
        AccessLine(
            time=now - n * day // 4,
            id=f"i-{n:04d}",
            action="read",
            principal=None,
            status=200,
            entry="{}",
        )
        for n in range(160)
    ] + [
        AccessLine(
            time=now - 10 * day,
            id=f"same-{n}",
            action="read",
            principal=None,
            status=200,
            entry="{}",
        )
        for n in range(5)
    ]
    store = Recording(lines)
    reads = AccessReads(cast(Store, store), PageTokens("a-secret"), clock=lambda: now * 1000)
    for limit in (500, 3):
        store.spans.clear()
        walked: list[str] = []
        page = await reads.page(
            since=None, until=None, action=None, principal=None, limit=limit, page_token=None
        )
        while True:
            walked += [line.id for line in page.lines]
            if page.next_page_token is None:
                break
            page = await reads.page(
                since=None,
                until=None,
                action=None,
                principal=None,
                limit=limit,
                page_token=page.next_page_token,
            )
        expected = [
            line.id for line in page_of(AccessQuery(since=0, until=now + 1, limit=999), lines)
        ]
        assert walked == expected
        # No read reached back more than a week.
        assert max(store.spans) <= 7 * day + 1
    # A week's lines with room to spare end their page with a token to the week before.
    first = await reads.page(
        since=None, until=None, action=None, principal=None, limit=500, page_token=None
    )
    # (7 days back from a minute past now: the lines of the last 6 days 18 hours.)
    assert len(first.lines) == 28
    assert first.next_page_token is not None

"""Reading: keyset pages, the follower guarantee, latest versions, problem details."""

from __future__ import annotations

import asyncio
import random

import pytest
from litestar.testing import AsyncTestClient, TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, http_scope, served, settings
from tests.fakes import FaultyStore
from tests.waiting import until


def push(client: TestClient[Recordline], n: int, **payload: object) -> None:
    body = envelope({"id": f"r{n}", "data": n, **payload}, message_id=f"m{n:04d}")
    assert client.post("/pubsub/push", json=body).status_code == 204


def test_pages_cover_everything_once_in_key_order(client: TestClient[Recordline]) -> None:
    for n in range(25):
        push(client, n)
    seen: list[str] = []
    keys: list[tuple[str, str]] = []
    page = client.get("/v1/records", params={"limit": 7}).json()
    while page["records"]:
        seen += [r["message_id"] for r in page["records"]]
        keys += [(r["ingest_time"], r["message_id"]) for r in page["records"]]
        page = client.get("/v1/records", params={"page_token": page["next_page_token"]}).json()
    assert sorted(seen) == [f"m{n:04d}" for n in range(25)]
    assert len(seen) == len(set(seen))
    assert keys == sorted(keys)
    # A follower keeps its token: the next record shows up behind it.
    push(client, 99)
    later = client.get("/v1/records", params={"page_token": page["next_page_token"]}).json()
    assert [r["message_id"] for r in later["records"]] == ["m0099"]


def test_since_and_until_bound_the_range(client: TestClient[Recordline]) -> None:
    push(client, 1)
    all_records = client.get("/v1/records").json()["records"]
    t = all_records[0]["ingest_time"]
    assert client.get("/v1/records", params={"since": t}).json()["records"]
    assert not client.get("/v1/records", params={"until": t}).json()["records"]
    future = client.get("/v1/records", params={"since": "2999-01-01T00:00:00Z"})
    assert not future.json()["records"]
    # Complete up to now, not up to the year 2999: a client's lag is never negative.
    assert future.json()["complete_until"] < "2100"
    assert future.headers["recordline-complete-until"] == future.json()["complete_until"]
    assert future.json()["complete_until"] >= t
    # Its token still starts at 2999: a record stored now is not in it.
    push(client, 2)
    after = client.get("/v1/records", params={"page_token": future.json()["next_page_token"]})
    assert after.json()["records"] == []
    # A bounded range whose end has passed is complete: no token to follow.
    done = client.get(
        "/v1/records", params={"since": "2000-01-01T00:00:00Z", "until": "2001-01-01T00:00:00Z"}
    ).json()
    assert done["next_page_token"] is None
    assert "complete_until" in done


def test_duplicates_never_appear_twice(client: TestClient[Recordline]) -> None:
    for _ in range(3):  # Pub/Sub redelivers the same message
        body = envelope({"id": "dup", "data": 1}, message_id="same")
        assert client.post("/pubsub/push", json=body).status_code == 204
    records = client.get("/v1/records").json()["records"]
    assert [r["message_id"] for r in records] == ["same"]


def test_latest_version_by_timestamp_then_publish_time(client: TestClient[Recordline]) -> None:
    versions = [
        ("a", "2024-01-01T00:00:02Z", "2024-01-01T00:00:00Z", "newest event"),
        ("b", "2024-01-01T00:00:01Z", "2024-01-01T00:00:09Z", "older event, published later"),
        ("c", None, "2024-01-01T00:00:10Z", "no event time"),
        ("d", "2024-01-01T00:00:02Z", "2024-01-01T00:00:05Z", "same event time, newer publish"),
    ]
    for message_id, timestamp, published, data in versions:
        payload = {"id": "doc", "data": data}
        if timestamp:
            payload["timestamp"] = timestamp
        body = envelope(payload, message_id=message_id, publish_time=published)
        assert client.post("/pubsub/push", json=body).status_code == 204
    assert client.get("/v1/records/doc").json()["data"] == "same event time, newer publish"


def test_not_found_is_problem_404(client: TestClient[Recordline]) -> None:
    for path in ("/v1/records/nope", "/v1/messages/nope"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")


def test_bad_parameters_are_400_naming_the_parameter(client: TestClient[Recordline]) -> None:
    push(client, 1)
    token = client.get("/v1/records").json()["next_page_token"]
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    cases = [
        ({"since": "yesterday"}, "since"),
        ({"until": "2024-01-01T00:00:00"}, "until"),  # no offset: ambiguous
        ({"since": "2024-02-01T00:00:00Z", "until": "2024-01-01T00:00:00Z"}, "until"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"page_token": tampered}, "page_token"),
        ({"page_token": "garbage!"}, "page_token"),
        ({"bogus": "1"}, "bogus"),
    ]
    for params, parameter in cases:
        response = client.get("/v1/records", params=params)
        assert response.status_code == 400, params
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["parameter"] == parameter, params


def test_openapi_and_docs_are_served(client: TestClient[Recordline]) -> None:
    schema = client.get("/docs/openapi.json").json()
    assert {"/pubsub/push", "/v1/records", "/v1/records/{record_id}"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_health(client: TestClient[Recordline]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


@pytest.mark.slow
async def test_follower_sees_every_record_exactly_once_while_writes_continue() -> None:
    # Several appends run at once and take a random while, as on BigQuery, so
    # rows commit in another order than the one they were stamped in; the
    # follower must still miss nothing.
    store = FaultyStore(DuckDBStore(":memory:"), max_in_flight=4)
    app = create_app(settings(), store=store)
    total = 400
    async with served(app) as client:

        async def writer() -> None:
            async def one(n: int) -> None:
                # Spread over half a second, so the follower reads while writes
                # go on: the workload's shape in time, not a wait for anything.
                await asyncio.sleep(random.random() * 0.5)
                body = envelope({"id": f"r{n}"}, message_id=f"w{n:04d}")
                response = await client.post("/pubsub/push", json=body)
                assert response.status_code == 204

            store.jitter = 0.05
            await asyncio.gather(*(one(n) for n in range(total)))

        async def follower() -> list[str]:
            seen: list[str] = []
            first = (await client.get("/v1/records", params={"limit": 13})).json()
            seen += [r["message_id"] for r in first["records"]]
            token = first["next_page_token"]

            async def read_on() -> bool:
                nonlocal token
                page = (await client.get("/v1/records", params={"page_token": token})).json()
                seen.extend(r["message_id"] for r in page["records"])
                token = page["next_page_token"]
                return len(seen) >= total

            await until(read_on, interval=0.005, what=lambda: f"{total} read, {len(seen)} were")
            return seen

        _, seen = await asyncio.gather(writer(), follower())
    assert len(seen) == len(set(seen)) == total


def test_pages_are_gzipped_for_clients_that_accept_it(client: TestClient[Recordline]) -> None:
    for n in range(100):
        push(client, n, note="the same words again and again " * 4)
    plain = client.get("/v1/records", headers={"Accept-Encoding": "identity"})
    zipped = client.get("/v1/records", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    # The body decodes to the same page, at a fraction of the bytes on the wire.
    assert zipped.json()["records"] == plain.json()["records"]
    assert zipped.headers["recordline-complete-until"]
    wire = int(zipped.headers["content-length"])
    assert wire * 5 < len(plain.content), (wire, len(plain.content))
    # A short answer is not worth compressing.
    small = client.get("/v1/records/r1", headers={"Accept-Encoding": "gzip"})
    assert small.status_code == 200
    assert "content-encoding" not in small.headers


# Accept-Encoding as RFC 9110 reads it: codings are case-insensitive tokens, a
# qvalue of 0 means "not acceptable", `*` stands for any coding not listed, and
# identity is acceptable unless excluded; the server picks among the rest.
GZIPPED = ["gzip", "GZIP", "Gzip;Q=1", "x-gzip", "gzip ; q=0.5", "*", "identity;q=0, gzip"]
GZIPPED += ["deflate, gzip;q=0.001", "br;q=1, gzip;q=0.8, identity;q=0.8", "identity, gzip"]
PLAIN = ["gzip;q=0", "GZIP; q=0.000", "gzip;q=0, *", "*;q=0", "br, deflate", "identity", ""]
PLAIN += ["gzip;q=0.5, identity;q=1", "gzip;q=abc", "gzip;q=2", "*;q=0.3, identity"]


def test_gzip_is_chosen_as_accept_encoding_says(client: TestClient[Recordline]) -> None:
    for n in range(50):
        push(client, n, note="the same words again and again " * 4)
    records = client.get("/v1/records", headers={"Accept-Encoding": "identity"}).json()["records"]
    for accept in GZIPPED + PLAIN:
        answer = client.get("/v1/records", headers={"Accept-Encoding": accept})
        assert answer.status_code == 200, (accept, answer.text)
        coding = answer.headers.get("content-encoding")
        assert coding == ("gzip" if accept in GZIPPED else None), accept
        assert answer.json()["records"] == records, accept


# Every GET route of the service, with a path that exists once m0000 is stored.
GET_PATHS = [
    "/v1/records",
    "/v1/records/r0",
    "/v1/messages/m0000",
    "/v1/rejections",
    "/healthz",
    "/readyz",
    "/metrics",
    "/problems/not-found",
    "/docs",
    "/docs/openapi.json",
]


async def test_head_is_answered_wherever_get_is_with_its_headers_and_no_content() -> None:
    app = create_app(settings(), store=DuckDBStore(":memory:"))
    async with served(app) as http:
        pushed = await http.post("/pubsub/push", json=envelope({"id": "r0"}, message_id="m0000"))
        assert pushed.status_code == 204
        for path in GET_PATHS:
            get = await http.get(path, headers={"Accept-Encoding": "identity"})
            head = await http.head(path, headers={"Accept-Encoding": "identity"})
            assert get.status_code == 200, (path, get.text)
            assert head.status_code == 200, (path, head.text)
            assert head.content == b""
            # The metrics change between two scrapes (this one's counts among them):
            # only their type is the same.
            same = ("content-type",) if path == "/metrics" else ("content-type", "content-length")
            for name in same:
                assert head.headers.get(name) == get.headers.get(name), (path, name)
            assert "content-length" in head.headers, path
        # Where GET is not allowed, neither is HEAD.
        refused = await http.head("/pubsub/push")
        assert refused.status_code == 405
        assert "POST" in refused.headers["allow"]
        assert (await http.head("/nowhere")).status_code == 404


async def test_the_app_itself_sends_no_content_for_head() -> None:
    # The server drops content sent for a HEAD; the app does not send it either.
    app = create_app(settings(), store=DuckDBStore(":memory:"))
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = http_scope("HEAD", "/v1/records")
    async with AsyncTestClient(app):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert scope["method"] == "HEAD"  # the server's own scope is left as it was
    start, *bodies = sent
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-length"] != b"0"  # type: ignore[call-overload]
    assert bodies
    assert all(body["body"] == b"" for body in bodies)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("limit=1.5", "limit: must be a whole number"),
        ("limit=abc", "limit: must be a whole number"),
        ("limit=0", "limit: must be at least 1"),
        ("limit=5000", "limit: must be at most 1000"),
        ("wait=abc", "wait: must be a number"),
        ("wait=61", "wait: must be at most 60"),
        # Written as RFC 3339, naming no time: the date is the problem, not the format.
        ("since=0000-01-01T00:00:00Z", "since: '0000-01-01T00:00:00Z' names no date and time in"),
        ("until=2024-02-30T00:00:00Z", "until: '2024-02-30T00:00:00Z' names no date and time in"),
        ("since=yesterday", "since: 'yesterday' is not an RFC 3339 time with an offset"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/records", "/v1/rejections"])
def test_a_bad_parameter_is_told_what_it_must_be(
    client: TestClient[Recordline], path: str, query: str, detail: str
) -> None:
    answer = client.get(f"{path}?{query}")
    assert answer.status_code == 400
    problem = answer.json()
    assert problem["detail"].startswith(detail), problem
    assert problem["parameter"] == query.partition("=")[0]

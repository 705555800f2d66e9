"""Followers told at once: long-poll, server-sent events and pages that never change,
through a real server, on the embedded store and on the serving tier."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.query import follow
from app.query.charged import READ_COPIES
from app.query.events import ENCODED_BYTES, Encodings, Event
from app.query.follow import HEARTBEAT_SECONDS, SHARED_READ_SECONDS, Followers
from app.query.page_token import MAX_TOKEN_LENGTH, PageToken, PageTokens
from app.query.service import PAGE_BYTES, RecordsPage
from app.records import moment
from app.routes.follow import page_body, page_event
from app.routes.query import Paging
from app.settings import DEFAULT_PAGE_TOKEN_SECRET
from app.store.duckdb.store import DuckDBStore
from tests.conftest import http_scope, served, served_in_thread, settings
from tests.fakes import FaultyStore
from tests.rows import shown_record
from tests.waiting import until

MIB = 1024 * 1024


def push_body(n: int) -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"id": f"r-{n}", "data": n}).encode()).decode()
    return {
        "message": {"data": data, "messageId": f"m-{n}", "publishTime": "2024-04-27T12:00:01Z"},
        "subscription": "projects/p/subscriptions/s",
    }


async def tail_token(client: httpx.AsyncClient) -> str:
    """A token at the tail: every page after it is empty until a push."""
    page = (await client.get("/v1/records", params={"limit": 1000})).json()
    token: str = page["next_page_token"]
    return token


async def following(app: Recordline) -> Followers:
    """The Followers instance the app's paged routes are given."""
    paging: Paging = await app.litestar.dependencies["paging"]()
    return paging.followers


async def until_waiting(app: Recordline, count: int) -> Followers:
    followers = await following(app)
    await until(lambda: followers.open == count, what=f"{count} followers to wait")
    return followers


@pytest.fixture
def app(store: FaultyStore, monkeypatch: pytest.MonkeyPatch) -> Recordline:
    monkeypatch.setattr(follow, "HEARTBEAT_SECONDS", 0.2)
    return create_app(settings(RECORDLINE_STREAM_SECONDS="2"), store=store)


@pytest.fixture
async def client(app: Recordline) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        yield client


async def test_a_waiting_page_answers_as_soon_as_a_row_is_stored(
    app: Recordline, client: httpx.AsyncClient
) -> None:
    token = await tail_token(client)
    waiting = asyncio.create_task(
        client.get("/v1/records", params={"page_token": token, "wait": 20})
    )
    await until_waiting(app, 1)  # the page is waiting when the push comes
    assert not waiting.done()
    pushed_at = time.monotonic()
    assert (await client.post("/pubsub/push", json=push_body(1))).status_code == 204
    page = (await waiting).json()
    woke = time.monotonic() - pushed_at
    assert [r["message_id"] for r in page["records"]] == ["m-1"]
    assert woke < 5, f"woke {woke:.2f} s after the push"


@pytest.mark.slow
async def test_a_wait_that_ends_answers_empty_with_the_same_cursor(
    client: httpx.AsyncClient,
) -> None:
    token = await tail_token(client)
    before = (await client.get("/v1/records", params={"page_token": token})).json()
    started = time.monotonic()
    answer = await client.get("/v1/records", params={"page_token": token, "wait": 0.5})
    assert time.monotonic() - started >= 0.5
    page = answer.json()
    assert page["records"] == []
    assert page["next_page_token"] == token
    assert page["complete_until"] >= before["complete_until"]
    assert answer.headers["cache-control"] == "no-cache"


async def test_a_wait_beyond_the_limit_is_a_400_naming_it(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/records", params={"wait": 61})
    assert answer.status_code == 400
    problem = answer.json()
    assert problem["parameter"] == "wait"
    assert "60" in problem["detail"]


async def test_a_client_that_leaves_mid_wait_frees_its_slot_at_once(
    app: Recordline, client: httpx.AsyncClient
) -> None:
    token = await tail_token(client)
    waiting = asyncio.create_task(
        client.get("/v1/records", params={"page_token": token, "wait": 30})
    )
    tracker = await until_waiting(app, 1)
    metrics = (await client.get("/metrics")).text
    assert re.search(r"^recordline_followers(\{[^}]*\})? 1(\.0)?$", metrics, re.M), metrics
    left = time.monotonic()
    waiting.cancel()  # the client closes the connection
    await until(lambda: tracker.open == 0, what="the wait to end as the client left")
    assert time.monotonic() - left < 1.0


@pytest.mark.parametrize("live", ["long-poll", "sse"])
async def test_a_streams_follower_whose_client_leaves_frees_its_seat_at_once(
    store: FaultyStore, live: str
) -> None:
    # Once, long-polls whose clients had gone kept a system's places.
    app = create_app(settings(), store=store)
    async with served(app, bounded=True) as client:
        followers = await following(app)
        path = "/v1/streams/records"
        waiting = asyncio.create_task(client.get(path, params={"offset": "now", "live": live}))
        await until(lambda: followers.open == 1, what="the follower to wait")
        left = time.monotonic()
        waiting.cancel()  # the client closes the connection
        await until(lambda: followers.open == 0, what="its seat given back as it left")
        # As it left, not when its wait or the stream's next heartbeat would have found it
        # gone (on loaded cores the cancel itself takes a second or more).
        assert time.monotonic() - left < HEARTBEAT_SECONDS / 3


async def test_under_recordline_serve_a_follower_holds_one_task_and_leaves_at_once(
    app: Recordline, store: FaultyStore
) -> None:
    """Under the connections `recordline serve` makes, the connection tells a follower
    that its client left: a waiting page and a stream each hold their request's task
    and nothing beside it, and count no more as soon as the client closes."""
    followers = await following(app)
    async with served(app, bounded=True) as client:
        token = await tail_token(client)
        sse = "accept: text/event-stream\r\n"
        for target, head in [
            (f"/v1/records?page_token={token}&wait=30", ""),
            ("/v1/records", sse),
            ("/v1/streams/records?offset=now&live=long-poll", ""),
            ("/v1/streams/records?offset=now&live=sse", sse),
        ]:
            before = asyncio.all_tasks()
            _, writer = await asyncio.open_connection("127.0.0.1", client.base_url.port)
            writer.write(f"GET {target} HTTP/1.1\r\nhost: localhost\r\n{head}\r\n".encode())
            await until(lambda: followers.open == 1, what=f"{target} to wait")
            # Waiting on the bell: whatever it starts beside it is started by now.
            await until(lambda: store.live.waiting == 1, what=f"{target} on the bell")
            # Tasks of the server and its routes (a store's own may come and go).
            held = [
                coro.__qualname__
                for coro in (task.get_coro() for task in asyncio.all_tasks() - before)
                if isinstance(coro, Coroutine)
                and re.search(r"/(uvicorn|litestar|app/routes|app/http)/", coro.cr_code.co_filename)
            ]
            assert held == ["Exchange.run"], target
            left = time.monotonic()
            writer.close()
            await until(lambda: followers.open == 0, what=f"{target} to end as the client left")
            assert time.monotonic() - left < 1.0, target


async def events(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[dict[str, str]]:
    """The stream's events as {field: value} (comments as {"comment": text})."""
    async with client.stream(
        "GET",
        "/v1/records",
        params=params,
        headers={"accept": "text/event-stream", **(headers or {})},
    ) as stream:
        assert stream.status_code == 200, await stream.aread()
        assert stream.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        async for line in stream.aiter_lines():
            if not line:
                if event:
                    yield event
                event = {}
            elif line.startswith(":"):
                event["comment"] = line[1:].strip()
            else:
                field, _, value = line.partition(":")
                event[field] = value.removeprefix(" ")


@pytest.mark.slow
async def test_a_stream_sends_pages_as_rows_come_and_ends_with_where_to_resume(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/pubsub/push", json=push_body(0))
    seen: list[str] = []
    kinds: list[str] = []
    last_id = None
    pushing: asyncio.Task[httpx.Response] | None = None
    async for event in events(client):
        kinds.append(event.get("event", "comment"))
        if event.get("event") == "page":
            seen += [r["message_id"] for r in json.loads(event["data"])["records"]]
            last_id = event["id"]
            if pushing is None:  # the stream is open: a row stored now comes next
                pushing = asyncio.create_task(client.post("/pubsub/push", json=push_body(1)))
        if event.get("event") == "end":
            end = json.loads(event["data"])
            assert event["id"] == end["next_page_token"]
    assert pushing is not None
    assert (await pushing).status_code == 204
    assert seen == ["m-0", "m-1"]
    assert "comment" in kinds  # heartbeats while nothing came
    assert kinds[-1] == "end"  # after RECORDLINE_STREAM_SECONDS
    # Resuming from the last page's id reads on from there, nothing twice.
    await client.post("/pubsub/push", json=push_body(2))
    resumed: list[str] = []
    async for event in events(client, headers={"last-event-id": str(last_id)}):
        if event.get("event") == "page":
            resumed += [r["message_id"] for r in json.loads(event["data"])["records"]]
    assert resumed == ["m-2"]


async def test_a_stream_from_a_cursor_behind_the_retention_is_a_410() -> None:
    app = create_app(
        settings(RECORDLINE_RETENTION_DAYS="1"), store=FaultyStore(DuckDBStore(":memory:"))
    )
    async with served(app) as client:
        answer = await client.get(
            "/v1/records",
            params={"since": "2000-01-01T00:00:00Z"},
            headers={"accept": "text/event-stream"},
        )
    assert answer.status_code == 410
    assert answer.json()["parameter"] == "since"


async def test_a_full_page_never_changes_and_says_so(client: httpx.AsyncClient) -> None:
    for n in range(3):
        await client.post("/pubsub/push", json=push_body(n))
    first = await client.get("/v1/records", params={"limit": 2})
    etag = first.headers["etag"]
    directives = set(first.headers["cache-control"].split(", "))
    assert {"private", "immutable", "max-age=31536000"} == directives
    await client.post("/pubsub/push", json=push_body(3))
    again = await client.get("/v1/records", params={"limit": 2})
    assert again.content == first.content
    assert again.headers["etag"] == etag
    unchanged = await client.get(
        "/v1/records", params={"limit": 2}, headers={"if-none-match": etag}
    )
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    # The page at the tail may still grow: no validator, no-cache.
    tail = await client.get("/v1/records", params={"limit": 100})
    assert "etag" not in tail.headers
    assert tail.headers["cache-control"] == "no-cache"


@pytest.mark.slow
async def test_a_server_that_never_says_the_client_left_does_not_make_a_wait_spin() -> None:
    # ASGI has a receive after the request's body return only once the client has
    # gone; one that answers at once, again and again, is asked twice, not in a loop.
    app = create_app(settings(), store=DuckDBStore(":memory:"))
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = http_scope("GET", "/v1/records", b"wait=0.5")
    async with AsyncTestClient(app):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 200
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["records"] == []
    assert received <= 2


@pytest.mark.slow
@pytest.mark.flaky(reruns=1)  # wake-ups spread by the suite's other workers' load
async def test_followers_woken_by_one_push_share_their_reads(
    app: Recordline, client: httpx.AsyncClient, store: FaultyStore
) -> None:
    token = await tail_token(client)
    waits = [
        asyncio.create_task(client.get("/v1/records", params={"page_token": token, "wait": 20}))
        for _ in range(50)
    ]
    await until_waiting(app, 50)
    before = store.pages
    assert (await client.post("/pubsub/push", json=push_body(1))).status_code == 204
    pages = [(await w).json() for w in waits]
    assert all([r["message_id"] for r in p["records"]] == ["m-1"] for p in pages)
    # One read for the followers woken within 50 ms of each other, not one each: on a
    # quiet machine two or three reads; on a loaded one their wake-ups spread further.
    assert store.pages - before < 25, store.pages - before


class HeldPages(FaultyStore):
    """Its reads of a page wait for `gate`; `entered` is set once one does."""

    def __init__(self) -> None:
        super().__init__(DuckDBStore(":memory:"))
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def page(self, kind: Any, query: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().page(kind, query)


async def test_a_shared_read_whose_follower_leaves_is_made_again_for_the_others() -> None:
    # Two followers at the tail, woken by one push: the first reads for both in its
    # own task, the second waits for that read. The first leaving (cancelled) must
    # end no one else's read.
    store = HeldPages()
    app = create_app(settings(), store=store)
    async with served(app) as client:
        paging: Paging = await app.litestar.dependencies["paging"]()
        listing = paging.streams.named("records")
        cursor = await paging.streams.tail(listing)
        leaving, staying = (
            asyncio.ensure_future(
                paging.streams.chunk(listing, cursor, follow=paging.followers.follow(None), wait=10)
            )
            for _ in range(2)
        )
        await until(lambda: paging.reader.live.waiting == 2, what="both followers to wait")
        store.gate.clear()
        store.entered.clear()
        before = store.pages
        assert (await client.post("/pubsub/push", json=push_body(1))).status_code == 204
        # Set once the first, woken first, reads; the second was woken in the same
        # step of the loop, and waits for that read by the time the test goes on.
        await asyncio.wait_for(store.entered.wait(), 10)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        store.gate.set()
        answer = await asyncio.wait_for(staying, 10)
        assert answer.rows == 1
        assert not staying.cancelled()
        assert store.pages - before == 1  # the read that was left was made again


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
# (HTTP trims a value's surrounding spaces, and clients refuse to send them.)
_HEADER = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).filter(
    lambda value: value == value.strip()
)


@pytest.fixture(scope="module")
def streams() -> Iterator[httpx.Client]:
    app = create_app(settings(RECORDLINE_STREAM_SECONDS="0.2"), store=DuckDBStore(":memory:"))
    with pytest.MonkeyPatch.context() as patch, served_in_thread(app) as client:
        patch.setattr(follow, "HEARTBEAT_SECONDS", 0.05)
        client.post("/pubsub/push", json=push_body(0)).raise_for_status()
        yield client


@pytest.mark.slow
@hypothesis.settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    params=st.fixed_dictionaries(
        {},
        optional={
            "since": _TEXT | st.just("2024-04-27T12:00:00Z"),
            "until": _TEXT | st.just("2030-01-01T00:00:00Z"),
            "limit": st.integers(-5, 2000).map(str) | _TEXT,
            "page_token": _TEXT,
            "wait": st.floats(-1, 100).map(str),
        },
    ),
    last_event_id=st.none() | _HEADER,
)
def test_any_stream_request_is_a_stream_that_ends_or_a_problem(
    streams: httpx.Client, params: dict[str, str], last_event_id: str | None
) -> None:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    with streams.stream("GET", "/v1/records", params=params, headers=headers) as answer:
        body = answer.read()
    assert answer.status_code < 500, body
    if answer.status_code == 200:
        assert answer.headers["content-type"].startswith("text/event-stream")
        # Every stream ends by itself (here after 0.2 s) saying where to resume.
        *_, last = body.decode().strip().split("\n\n")
        assert "event: end" in last, body
    else:
        assert answer.headers["content-type"] == "application/problem+json", body


# Media ranges a client may send, and the qualities it may give them.
_RANGES = ["text/event-stream", "application/json", "text/*", "application/*", "*/*", "text/html"]
_QUALITIES = [None, "0", "0.0", "0.001", "0.5", "1", "1.0"]


def _spelled(text: str, upper: list[bool]) -> str:
    return "".join(c.upper() if n < len(upper) and upper[n] else c for n, c in enumerate(text))


def _acceptable_quality(ranges: list[tuple[str, str | None]], media_type: str) -> float:
    """The quality RFC 9110 gives `media_type` under these ranges: that of the most
    specific range that matches it (0 when none does)."""
    kind = media_type.partition("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for media_range, q in ranges:
        r_kind, _, r_sub = media_range.partition("/")
        if media_range == media_type:
            specificity = 2
        elif r_kind == kind and r_sub == "*":
            specificity = 1
        elif media_range == "*/*":
            specificity = 0
        else:
            continue
        best = max(best, (specificity, 1.0 if q is None else float(q)))
    return best[1]


@pytest.mark.slow
@hypothesis.settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    ranges=st.lists(
        st.tuples(st.sampled_from(_RANGES), st.sampled_from(_QUALITIES)), min_size=1, max_size=4
    ).filter(lambda rs: len({r for r, _ in rs}) == len(rs)),
    upper=st.lists(st.booleans(), max_size=120),
)
def test_accept_is_negotiated_as_rfc_9110_says(
    streams: httpx.Client, ranges: list[tuple[str, str | None]], upper: list[bool]
) -> None:
    header = ", ".join(r if q is None else f"{r};q={q}" for r, q in ranges)
    stream_q = _acceptable_quality(ranges, "text/event-stream")
    json_q = _acceptable_quality(ranges, "application/json")
    # Media types are case-insensitive: any spelling of the header is the same header.
    with streams.stream(
        "GET", "/v1/records", headers={"Accept": _spelled(header, upper)}
    ) as answer:
        answer.read()
    assert answer.status_code == 200
    streamed = answer.headers["content-type"].startswith("text/event-stream")
    if stream_q == 0:
        # q=0 is "not acceptable": never a stream.
        assert not streamed, header
    elif json_q == 0 or stream_q > json_q:
        assert streamed, header
    elif json_q > stream_q:
        assert not streamed, header
    if streamed:
        # One charset, once.
        assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"


# Qualities that are no qvalue (RFC 9110, 12.4.2): out of 0 to 1, more than three decimals,
# not a number, or one Python reads as infinite.
UNUSABLE_Q = ["inf", "1e999", "-inf", "nan", "abc", "2", "-1", "1.0001", "0.0001", "", "1.5"]


@pytest.mark.parametrize("q", UNUSABLE_Q)
def test_a_range_whose_quality_is_no_qvalue_is_left_out_never_a_5xx(
    streams: httpx.Client, q: str
) -> None:
    # Alone, it asks for nothing: a JSON page. Beside a usable range, that one decides.
    for accept, wanted in [
        (f"text/event-stream;q={q}", "application/json"),
        (f"text/event-stream;q={q}, application/json;q=1", "application/json"),
        (f"application/json;q={q}, text/event-stream;q=0.5", "text/event-stream"),
    ]:
        with streams.stream("GET", "/v1/records", headers={"Accept": accept}) as answer:
            answer.read()
        assert answer.status_code == 200, accept
        assert answer.headers["content-type"].startswith(wanted), accept


@pytest.mark.slow
async def test_a_stream_whose_reads_fail_ends_with_where_to_resume_and_why(
    client: httpx.AsyncClient, store: FaultyStore
) -> None:
    await client.post("/pubsub/push", json=push_body(0))
    seen: list[dict[str, str]] = []
    async for event in events(client):
        seen.append(event)
        if event.get("event") == "page":
            store.failing_reads = True  # the store stops answering after the first page
    store.failing_reads = False
    page, end = seen[0], seen[-1]
    assert page["event"] == "page"
    assert end["event"] == "end"
    ended = json.loads(end["data"])
    assert ended["problem"]["type"] == "/problems/store-unavailable"
    assert ended["problem"]["status"] == 503
    # Where to resume is the token after the last page sent: nothing lost, nothing twice.
    assert end["id"] == page["id"] == ended["next_page_token"]
    await client.post("/pubsub/push", json=push_body(1))
    resumed: list[str] = []
    async for event in events(client, headers={"last-event-id": end["id"]}):
        if event.get("event") == "page":
            resumed += [r["message_id"] for r in json.loads(event["data"])["records"]]
    assert resumed == ["m-1"]


async def test_a_last_event_id_that_is_no_token_is_a_400_naming_the_header(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get(
        "/v1/records", headers={"Accept": "text/event-stream", "Last-Event-ID": "garbage"}
    )
    assert answer.status_code == 400
    assert answer.json()["parameter"] == "Last-Event-ID"
    # The same token as a parameter is named as the parameter.
    answer = await client.get(
        "/v1/records", params={"page_token": "garbage"}, headers={"Accept": "text/event-stream"}
    )
    assert answer.json()["parameter"] == "page_token"


async def test_an_overlong_last_event_id_is_a_400_before_it_is_decoded(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get(
        "/v1/records", headers={"Accept": "text/event-stream", "Last-Event-ID": "A" * 10_240}
    )
    assert answer.status_code == 400
    problem = answer.json()
    assert problem["parameter"] == "Last-Event-ID"
    assert str(MAX_TOKEN_LENGTH) in problem["detail"]


# Signed with the key the service signs with: a valid signature over values no page
# ever holds (a key that leaked, or the loopback default, lets anyone sign these).
OUT_OF_RANGE = {
    "after 2**62": PageToken(after_time=2**62, after_message_id=""),
    "after before the epoch": PageToken(after_time=-1, after_message_id=""),
    "until 2**62": PageToken(after_time=0, after_message_id="", until=2**62),
    "an id of 5,000 characters": PageToken(after_time=0, after_message_id="9" * 5000),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
async def test_a_signed_cursor_out_of_range_is_a_400_never_a_500(
    client: httpx.AsyncClient, case: str
) -> None:
    token = PageTokens(DEFAULT_PAGE_TOKEN_SECRET).encode(OUT_OF_RANGE[case])
    for path in ("/v1/records", "/v1/rejections"):
        answer = await client.get(path, params={"page_token": token})
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["parameter"] == "page_token"
    # Resuming a stream with it is refused before the stream's 200.
    answer = await client.get(
        "/v1/records", headers={"Accept": "text/event-stream", "Last-Event-ID": token}
    )
    assert answer.status_code == 400
    assert answer.json()["parameter"] == "Last-Event-ID"


async def test_followers_past_the_instances_cap_get_503_with_retry_after(
    store: FaultyStore,
) -> None:
    app = create_app(settings(RECORDLINE_MAX_FOLLOWERS="2"), store=store)
    async with served(app) as client:
        token = await tail_token(client)
        waits = [
            asyncio.create_task(client.get("/v1/records", params={"page_token": token, "wait": 30}))
            for _ in range(2)
        ]
        followers = await until_waiting(app, 2)
        refused = [
            await client.get("/v1/records", params={"page_token": token, "wait": 30}),
            await client.get("/v1/rejections", params={"wait": 5}),
            await client.get("/v1/records", headers={"Accept": "text/event-stream"}),
        ]
        for answer in refused:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            assert answer.json()["type"] == "/problems/too-many-followers"
        # A read that does not wait still answers at once, and so does a follower once
        # a place is free.
        assert (await client.get("/v1/records", params={"page_token": token})).status_code == 200
        waits[0].cancel()
        await until(lambda: followers.open == 1, what="a follower to leave")
        assert (await client.get("/v1/records", params={"wait": 0.1})).status_code == 200
        waits[1].cancel()


# Each way to follow: a page that waits, pages as events, the Durable Streams
# long-poll and its SSE.
LIVE_MODES: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "a waiting page": ("/v1/records", {"wait": 30}, {}),
    "pages as events": ("/v1/records", {}, {"Accept": "text/event-stream"}),
    "a long-poll": ("/v1/streams/records", {"offset": "now", "live": "long-poll"}, {}),
    "a stream's SSE": ("/v1/streams/records", {"offset": "now", "live": "sse"}, {}),
}


@pytest.mark.parametrize("mode", list(LIVE_MODES))
async def test_followers_asking_at_once_past_the_cap_are_refused_in_every_live_mode(
    store: FaultyStore, mode: str
) -> None:
    # Once, a stream's long-polls and SSE were admitted while they found the tail (an
    # await), so that all that asked at once came in: 15 of 15 against a cap of 10.
    app = create_app(settings(RECORDLINE_MAX_FOLLOWERS="3"), store=store)
    path, params, headers = LIVE_MODES[mode]
    async with served(app) as client:
        followers = await following(app)
        refused: list[httpx.Response] = []
        done = asyncio.Event()

        async def follow() -> None:
            async with client.stream("GET", path, params=params, headers=headers) as answer:
                if answer.status_code == 503:
                    await answer.aread()
                    refused.append(answer)
                else:
                    await done.wait()  # an admitted follower holds its seat meanwhile

        asked = [asyncio.create_task(follow()) for _ in range(8)]
        await until(lambda: len(refused) == 5, what="five followers refused")
        assert followers.open == 3
        for answer in refused:
            assert answer.headers["retry-after"] == "5"
            assert answer.json()["type"] == "/problems/too-many-followers"
        done.set()
        for task in asked:
            task.cancel()
        await asyncio.gather(*asked, return_exceptions=True)
        await until(lambda: followers.open == 0, what="every follower to leave")


class SlowReads(FaultyStore):
    """Reads of a page that take `read_seconds` each: a store under load."""

    read_seconds = 0.0

    async def page(self, kind: Any, query: Any) -> Any:
        if self.read_seconds:
            await asyncio.sleep(self.read_seconds)  # the store's time, not a wait of the test's
        return await super().page(kind, query)


@pytest.mark.slow
async def test_many_followers_of_small_rows_are_answered_with_room_for_few_full_reads() -> None:
    # A read was once charged, before the store was read, for the most a page may
    # bring (twice 4 MiB): a budget of 128 MiB left reads room for 7 at once, and of 60
    # followers woken by one write, those still waiting after a second were refused 503
    # (32 of them here), for one small record each.
    followers = 60
    store = SlowReads(DuckDBStore(":memory:"))
    app = create_app(
        settings(RECORDLINE_MEMORY_BUDGET_BYTES=str(128 * MIB), RECORDLINE_STREAM_SECONDS="30"),
        store=store,
    )
    budget = app.budget
    assert budget is not None
    full_reads = budget.read_ceiling // (READ_COPIES * PAGE_BYTES)
    assert full_reads < 10
    async with served(app) as client:
        token = await tail_token(client)
        # Each at a limit of its own: reads of their own, none shared.
        waits = [
            asyncio.create_task(
                client.get("/v1/records", params={"page_token": token, "wait": 30, "limit": n})
            )
            for n in range(1, followers + 1)
        ]
        await until_waiting(app, followers)
        store.read_seconds = 0.25  # followers * 0.25 / full_reads: past a second's wait
        assert (await client.post("/pubsub/push", json=push_body(1))).status_code == 204
        answers = await asyncio.gather(*waits)
        statuses = [answer.status_code for answer in answers]
        print(f"{statuses.count(200)} answered 200, {statuses.count(503)} refused 503")
        assert statuses == [200] * followers, [a.text for a in answers if a.status_code != 200][:1]
        for answer in answers:
            assert [r["id"] for r in answer.json()["records"]] == ["r-1"]
        store.read_seconds = 0.0
        await until(lambda: budget.held == 0, what="every follower's charge to be given back")


class CountedShortReads(FaultyStore):
    """Counts the reads in the store at once that may bring less than `under` bytes
    (charged short of a page's most), each taking `read_seconds`."""

    under = 0
    read_seconds = 0.0

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.now = 0
        self.most = 0

    async def page(self, kind: Any, query: Any) -> Any:
        short = query.max_bytes is not None and query.max_bytes < self.under
        self.now += short
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.read_seconds)  # the store's time, not a wait of the test's
            return await super().page(kind, query)
        finally:
            self.now -= short


@pytest.mark.slow
async def test_reads_charged_short_of_large_rows_are_few_in_the_store_at_once() -> None:
    # A read charged less than its most stops once past what it was charged for, so it
    # holds one row more for a moment: among rows of 600 KiB, 40 readers each charged
    # 128 KiB would hold 40 of them at once beyond the budget, however large it is.
    from app.budget import SHORT_READS

    readers, row = 40, 600 * 1024
    store = CountedShortReads(DuckDBStore(":memory:"))
    app = create_app(settings(RECORDLINE_MEMORY_BUDGET_BYTES=str(128 * MIB)), store=store)
    async with served(app) as client:
        for n in range(3):
            data = json.dumps({"id": f"r-{n}", "data": "x" * row}).encode()
            body = push_body(n)
            body["message"]["data"] = base64.b64encode(data).decode()
            assert (await client.post("/pubsub/push", json=body)).status_code == 204
        store.under, store.read_seconds = row, 0.05
        answers = await asyncio.gather(
            *(client.get("/v1/records", params={"limit": n}) for n in range(1, readers + 1))
        )
    assert [a.status_code for a in answers] == [200] * readers
    assert all(a.json()["records"][0]["id"] == "r-0" for a in answers)
    assert 0 < store.most <= SHORT_READS, store.most


def _page_of(size: int) -> RecordsPage:
    """A page of one record whose data is `size` bytes of JSON."""
    at = moment(1_700_000_000_000_000)
    return RecordsPage([shown_record(b'"' + b"x" * (size - 2) + b'"', at=at)], "token", at)


def test_a_pages_encodings_are_kept_while_it_lives_and_within_their_bytes() -> None:
    # Once, the last 64 pages' encodings were kept whatever their size: six pages of
    # 4 MB records held 4 GB.
    encodings = Encodings()

    def encoded(page: RecordsPage) -> bytes:
        return page_body(encodings, page)

    def event(page: RecordsPage) -> Event:
        return page_event(encodings, page)

    page = _page_of(MIB)
    body = encoded(page)
    assert encoded(page) is body  # encoded once for every follower sent it
    sent = event(page)
    assert event(page) is sent
    # Larger than a slice: sent in pieces, its body not copied into a frame.
    assert isinstance(sent, tuple)
    assert sent[1] is body
    assert b"".join(sent).endswith(body + b"\n\n")
    assert 0 < encodings.bytes <= 3 * len(body)
    del page  # no follower holds it any more: its encodings go with it
    assert encodings.bytes == 0
    # Pages followers still hold: kept up to ENCODED_BYTES, the least recently used dropped.
    held = [_page_of(4 * MIB) for _ in range(ENCODED_BYTES // (4 * MIB))]
    for page in held:
        encoded(page)
    assert 0 < encodings.bytes <= ENCODED_BYTES
    # A page larger than them all is encoded, and not kept.
    huge = _page_of(ENCODED_BYTES)
    assert len(encoded(huge)) > ENCODED_BYTES
    assert encodings.bytes <= ENCODED_BYTES


@pytest.mark.slow
async def test_a_streamed_page_is_charged_until_sent_and_given_back_as_its_follower_leaves() -> (
    None
):
    # A page's event waits in the connection until its client takes it: it is charged
    # to the process's budget until then, not only while it was read and encoded.
    app = create_app(settings(RECORDLINE_STREAM_SECONDS="30"), store=DuckDBStore(":memory:"))
    budget = app.budget
    assert budget is not None
    large = "x" * (200 * 1024)
    taken = asyncio.Event()
    sending = asyncio.Event()
    event_bytes = 0

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never says it left: it is cancelled
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal event_bytes
        if message["type"] == "http.response.body" and message.get("body"):
            event_bytes += len(message["body"])
            if message["body"] == b"\n\n":  # the page's event is written: not taken yet
                sending.set()
                await taken.wait()

    async with served(app) as client:
        for n in range(2):
            body = push_body(n)
            payload = json.dumps({"id": f"r-{n}", "data": large}).encode()
            body["message"]["data"] = base64.b64encode(payload).decode()
            assert (await client.post("/pubsub/push", json=body)).status_code == 204
        scope = http_scope("GET", "/v1/records")
        scope["headers"] = [(b"host", b"test"), (b"accept", b"text/event-stream")]
        follower = asyncio.ensure_future(app(scope, receive, send))  # type: ignore[arg-type]
        await asyncio.wait_for(sending.wait(), 10)
        # Past the moment the read is shared with other followers (and kept for them):
        # the follower sending it is all that holds it now.
        await asyncio.sleep(3 * SHARED_READ_SECONDS)
        # The rows, and the event made of them, held while the client has not taken it.
        assert budget.held >= event_bytes >= 2 * len(large)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        # Given back once the follower left, and the read it shared with others is no
        # longer handed out (SHARED_READ_SECONDS).
        await until(lambda: budget.held == 0, what="the follower's charge to be given back")

"""Followers through a real shared cache (nginx, recordline_dev/cache.py; Varnish,
recordline_dev/varnish.py, for the collapse) in front of the service: what it collapses,
what it never serves, and exactly once across both.

Skipped where there is no nginx or Varnish (scripts/install-nginx.sh, install-varnish.sh);
in CI a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from app.asgi import create_app
from app.query.offsets import Offsets
from app.settings import DEFAULT_PAGE_TOKEN_SECRET
from recordline_dev.cache import NginxMissing, SharedCache, find_nginx, shared_cache
from recordline_dev.processes import free_port
from recordline_dev.varnish import VarnishCache, VarnishMissing, find_varnishd, varnish_cache
from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.conftest import long_polling, settings
from tests.test_streams import push_body
from tests.waiting import until

pytestmark = pytest.mark.nginx

STREAM = "/v1/streams/records"
# How long a long-poll waits here: short, so a test sees its 204 in a second.
WAIT_SECONDS = 1.0


async def following(direct: httpx.AsyncClient) -> bool:
    """Whether a follower waits at the origin (its `recordline_followers` gauge)."""
    metrics = (await direct.get("/metrics")).text
    found = re.search(r"^recordline_followers(?:\{[^}]*\})? ([0-9.]+)$", metrics, re.M)
    return found is not None and float(found[1]) >= 1


@contextlib.asynccontextmanager
async def origin(port: int, store: Path, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    """The service on `port` (on this loop), its DuckDB file `store`, as a shared cache's
    origin (`env` in place of its settings here); a client that talks to it directly."""
    defaults = {"RECORDLINE_SHARED_CACHE": "true"}
    app = create_app(
        long_polling(
            settings(RECORDLINE_STORE=f"duckdb://{store}", **(defaults | env)), WAIT_SECONDS
        )
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_config=None)
    )
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()
        return server.started

    await until(started, timeout=60, what="the origin to start")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[tuple[SharedCache, int]]:
    """nginx in front of a port the origin is yet to listen on, and that port."""
    try:
        find_nginx()
    except NginxMissing as exc:
        pytest.skip(str(exc))
    port = free_port()
    with shared_cache(port, tmp_path / "nginx", followers=64, wait=WAIT_SECONDS) as running:
        yield running, port


@contextlib.asynccontextmanager
async def through(cache: SharedCache | VarnishCache) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cache.url, timeout=30) as client:
        yield client


def ids(answer: httpx.Response) -> list[str]:
    return [record["message_id"] for record in answer.json()]


async def long_poll(client: httpx.AsyncClient, offset: str, cursor: str | None) -> httpx.Response:
    params = {"offset": offset, "live": "long-poll"} | ({"cursor": cursor} if cursor else {})
    return await client.get(STREAM, params=params)


@pytest.fixture
def varnish(tmp_path: Path) -> Iterator[tuple[VarnishCache, int]]:
    """Varnish in front of a port the origin is yet to listen on, and that port."""
    try:
        find_varnishd()
    except VarnishMissing as exc:
        pytest.skip(str(exc))
    port = free_port()
    with varnish_cache(port, tmp_path / "varnish", followers=64, wait=WAIT_SECONDS) as running:
        yield running, port


async def test_followers_at_one_offset_share_one_request_and_none_is_told_of_nothing_after_a_write(
    cache: tuple[SharedCache, int], tmp_path: Path
) -> None:
    await followers_share_one_request(*cache, tmp_path)


@pytest.mark.varnish
async def test_followers_share_one_request_through_varnish_too(
    varnish: tuple[VarnishCache, int], tmp_path: Path
) -> None:
    await followers_share_one_request(*varnish, tmp_path)


async def followers_share_one_request(
    proxy: SharedCache | VarnishCache, port: int, tmp_path: Path
) -> None:
    async with origin(port, tmp_path / "r.duckdb") as direct, through(proxy) as client:
        (await direct.post("/pubsub/push", json=push_body(1))).raise_for_status()
        tail = (await direct.head(STREAM)).headers["stream-next-offset"]
        # Eight followers wait at the tail together: one request reaches the origin, and
        # its 204 (kept a second) answers them all with one next cursor.
        waited = await asyncio.gather(*(long_poll(client, tail, None) for _ in range(8)))
        assert {answer.status_code for answer in waited} == {204}
        assert {answer.headers["cache-control"] for answer in waited} == {"max-age=1, public"}
        proxy.settled(8)
        assert proxy.origin_requests(f"{STREAM}?offset=") == 1
        cursor = waited[0].headers["stream-cursor"]
        assert {answer.headers["stream-cursor"] for answer in waited} == {cursor}
        (await direct.post("/pubsub/push", json=push_body(2))).raise_for_status()
        # After the write, every follower's next request (the new cursor) has the row:
        # none is served the answer from before it.
        after = await asyncio.gather(*(long_poll(client, tail, cursor) for _ in range(8)))
        assert [ids(answer) for answer in after] == [["m-2"]] * 8
        proxy.settled(16)
        assert proxy.origin_requests(f"{STREAM}?offset=") == 2
        # The row's answer is kept (its rows never change); the next URL is another.
        assert "public" in after[0].headers["cache-control"]
        assert after[0].headers["stream-cursor"] != cursor


async def test_a_read_with_credentials_is_never_served_to_another_client(
    cache: tuple[SharedCache, int], tmp_path: Path
) -> None:
    proxy, port = cache
    async with origin(port, tmp_path / "r.duckdb") as direct, through(proxy) as client:
        for n in range(3):
            (await direct.post("/pubsub/push", json=push_body(n))).raise_for_status()
        for header in ("authorization", "x-serverless-authorization"):
            answered = await client.get(STREAM, headers={header: "Bearer reader-a"})
            assert answered.status_code == 200
            # Private at the origin: no shared cache may keep it, whatever it keys by.
            assert "private" in answered.headers["cache-control"]
            at_origin = await direct.get(STREAM, headers={header: "Bearer reader-a"})
            assert "private" in at_origin.headers["cache-control"]
        proxy.settled(2)
        before = proxy.origin_requests(STREAM)
        anonymous = await client.get(STREAM)
        assert anonymous.headers["x-cache"] == "MISS"
        proxy.settled(3)
        assert proxy.origin_requests(STREAM) == before + 1
        assert "public" in anonymous.headers["cache-control"]
        # And an anonymous answer kept by the cache is no answer to a token either.
        assert (await client.get(STREAM, headers={"authorization": "Bearer b"})).headers[
            "x-cache"
        ] == "BYPASS"


async def test_a_follower_alternating_between_cache_and_origin_gets_every_row_once(
    cache: tuple[SharedCache, int], tmp_path: Path
) -> None:
    proxy, port = cache
    async with origin(port, tmp_path / "r.duckdb") as direct, through(proxy) as client:
        pushed = 0

        async def push(count: int) -> None:
            nonlocal pushed
            for _ in range(count):
                pushed += 1
                (await direct.post("/pubsub/push", json=push_body(pushed))).raise_for_status()

        await push(5)
        # Another follower ahead of this one fills the cache with what it will ask for.
        ahead = await client.get(STREAM, params={"offset": "-1"})
        assert ahead.headers["x-cache"] == "MISS"
        seen = await alternating(client, direct, push)
        assert seen == [f"m-{n}" for n in range(1, pushed + 1)]
        assert {status for status, *_ in proxy.statuses()} & {"HIT"}


async def alternating(
    client: httpx.AsyncClient,
    direct: httpx.AsyncClient,
    push: Callable[[int], Awaitable[None]],
) -> list[str]:
    """The ids a follower from the start sees, reading through the cache (`client`) and
    the origin (`direct`) in turn while `push(n)` writes n more: its first chunk a hit
    (another follower read it first), then long-polls, then what is left."""
    seen: list[str] = []
    offset, cursor = "-1", None
    for step in range(8):
        via = client if step % 2 == 0 else direct
        if step == 0:
            answer = await via.get(STREAM, params={"offset": offset})
            assert answer.headers["x-cache"] == "HIT"
        else:
            writing = asyncio.create_task(push(2 if step % 3 else 0))
            answer = await long_poll(via, offset, cursor)
            await writing
            cursor = answer.headers["stream-cursor"]
        assert answer.status_code in (200, 204), answer.text
        if answer.status_code == 200:
            seen += ids(answer)
        offset = answer.headers["stream-next-offset"]
    while (rest := await client.get(STREAM, params={"offset": offset})).json():
        seen += ids(rest)
        offset = rest.headers["stream-next-offset"]
    return seen


async def test_a_follower_resumes_through_the_cache_after_a_restart_and_a_retention_cut(
    cache: tuple[SharedCache, int], tmp_path: Path
) -> None:
    proxy, port = cache
    store = tmp_path / "r.duckdb"
    async with origin(port, store) as direct, through(proxy) as client:
        for n in range(1, 4):
            (await direct.post("/pubsub/push", json=push_body(n))).raise_for_status()
        first = await client.get(STREAM)
        assert ids(first) == ["m-1", "m-2", "m-3"]
        saved = first.headers["stream-next-offset"]
    # The origin is gone: the cache answers its own error, and keeps none of it.
    async with through(proxy) as client:
        gone = await long_poll(client, saved, None)
        assert gone.status_code == 502
    async with origin(port, store) as direct, through(proxy) as client:
        (await direct.post("/pubsub/push", json=push_body(4))).raise_for_status()
        resumed = await long_poll(client, saved, None)
        assert resumed.status_code == 200
        assert ids(resumed) == ["m-4"]
        # Another client's filtered stream at the same place is another URL, and another
        # stream: its offsets are not this one's.
        filtered = await client.get(STREAM, params={"offset": saved, "producer": "p"})
        assert filtered.status_code == 400
        assert filtered.headers["cache-control"] == "no-store"
    async with (
        origin(port, store, RECORDLINE_RETENTION_DAYS="1") as direct,
        through(proxy) as client,
    ):
        # An offset behind the retention: 410 each time it is asked, from the origin.
        old = Offsets(DEFAULT_PAGE_TOKEN_SECRET).encode("records", 1_000_000)
        for _ in range(2):
            cut = await client.get(STREAM, params={"offset": old})
            assert cut.status_code == 410
            assert cut.headers["cache-control"] == "no-store"
        logged = proxy.settled(6)
        assert sum(1 for *_, origin_, uri in logged if old in uri and origin_) == 2
        # Read again from the oldest row kept: each once, in order.
        again, offset = [], "-1"
        while (chunk := await client.get(STREAM, params={"offset": offset})).json():
            again += ids(chunk)
            offset = chunk.headers["stream-next-offset"]
        assert again == ["m-1", "m-2", "m-3", "m-4"]


async def test_a_page_kept_as_json_is_never_the_answer_to_a_client_asking_for_events(
    cache: tuple[SharedCache, int], tmp_path: Path
) -> None:
    proxy, port = cache
    async with origin(port, tmp_path / "r.duckdb") as direct, through(proxy) as client:
        for n in range(1, 4):
            (await direct.post("/pubsub/push", json=push_body(n))).raise_for_status()
        page = await client.get("/v1/records", params={"limit": 2})
        assert "immutable" in page.headers["cache-control"]
        assert page.headers["content-type"] == "application/json"
        # The same URL asked for `text/event-stream` is a stream: the cache, which keys by
        # URL and bypasses nothing on `Accept` (Cloud CDN cannot), must not answer it with
        # the page it keeps.
        async with client.stream(
            "GET", "/v1/records", params={"limit": 2}, headers={"accept": "text/event-stream"}
        ) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            assert events.headers["x-cache"] != "HIT"
        again = await client.get("/v1/records", params={"limit": 2})
        assert again.headers["x-cache"] == "HIT"
        assert again.json() == page.json()


async def test_a_follower_joining_at_now_is_not_given_rows_written_long_before_it_joined(
    cache: tuple[SharedCache, int], tmp_path: Path
) -> None:
    proxy, port = cache
    async with origin(port, tmp_path / "r.duckdb") as direct, through(proxy) as client:
        (await direct.post("/pubsub/push", json=push_body(1))).raise_for_status()
        params = {"offset": "now", "live": "long-poll"}
        # A first follower waits at the tail and is answered the row written meanwhile.
        waiting = asyncio.create_task(client.get(STREAM, params=params))
        await until(lambda: following(direct), what="the follower to wait at the origin")
        (await direct.post("/pubsub/push", json=push_body(2))).raise_for_status()
        first = await waiting
        assert ids(first) == ["m-2"]
        # `now` is the tail when asked: a follower joining seconds later (the same URL)
        # is not told to start before m-2, which was written before it came.
        await asyncio.sleep(2.5)
        (await direct.post("/pubsub/push", json=push_body(3))).raise_for_status()
        later = await client.get(STREAM, params=params)
        assert later.headers.get("x-cache") != "HIT"
        assert later.status_code == 204 or "m-2" not in ids(later)


def max_age(answer: httpx.Response) -> int:
    for directive in answer.headers["cache-control"].split(","):
        name, _, value = directive.strip().partition("=")
        if name == "max-age":
            return int(value)
    raise AssertionError(f"no max-age in {answer.headers['cache-control']!r}")


async def test_an_answer_that_never_changes_is_kept_no_longer_than_the_retention_keeps_its_rows(
    cache: tuple[SharedCache, int], tmp_path: Path
) -> None:
    proxy, port = cache
    day = 86_400
    store = tmp_path / "r.duckdb"
    async with (
        origin(port, store, RECORDLINE_RETENTION_DAYS="1") as direct,
        through(proxy) as client,
    ):
        # Rows of 3 MiB: two to a chunk, so five make three chunks.
        for n in range(5):
            body = push_body(n, data="x" * 3_000_000)
            (await direct.post("/pubsub/push", json=body)).raise_for_status()
        first = await client.get(STREAM, params={"offset": "-1"})
        middle = await client.get(STREAM, params={"offset": first.headers["stream-next-offset"]})
        page = await client.get("/v1/records", params={"limit": 2})
        # Each never changes, but its rows are deleted a day after they came (and its
        # offset or token is then a 410): no cache may serve them a year.
        for kept in (middle, page):
            assert "immutable" in kept.headers["cache-control"]
            assert "public" in kept.headers["cache-control"]
            assert day - 60 <= max_age(kept) <= day
    async with origin(port, store) as direct, through(proxy) as client:
        # Kept for ever (no retention deletes anything): a year.
        page = await client.get("/v1/records", params={"limit": 3})
        assert max_age(page) == 31_536_000


async def test_a_page_from_a_time_ago_is_not_kept_as_if_that_time_stood_still(
    cache: tuple[SharedCache, int], tmp_path: Path
) -> None:
    proxy, port = cache
    async with origin(port, tmp_path / "r.duckdb") as direct, through(proxy) as client:
        (await direct.post("/pubsub/push", json=push_body(1))).raise_for_status()
        params = {"since": "2s", "limit": 1}
        first = await client.get("/v1/records", params=params)
        assert [r["message_id"] for r in first.json()["records"]] == ["m-1"]
        # `since=2s` is two seconds before each request: later, the same URL names
        # other rows, and no cache may answer it with the page it kept.
        assert "immutable" not in first.headers["cache-control"]
        await asyncio.sleep(2.5)
        (await direct.post("/pubsub/push", json=push_body(2))).raise_for_status()
        later = await client.get("/v1/records", params=params)
        assert [r["message_id"] for r in later.json()["records"]] == ["m-2"]


async def test_a_read_with_a_pass_is_never_served_to_a_client_without_one(
    cache: tuple[SharedCache, int], tmp_path: Path
) -> None:
    # A shared cache that does not check passes (this one, or any proxy on the way) keeps
    # what the origin lets any shared cache keep: a pass holder's records must not be
    # among it, as Cloud CDN keeps a signed request's answer whatever its Cache-Control.
    proxy, port = cache
    google = FakeGoogle().start()
    key = base64.urlsafe_b64encode(bytes(range(16))).decode()
    passes = {
        "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
        "RECORDLINE_READ_PRINCIPALS": "analyst@example.org",
        "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
        "RECORDLINE_READ_PASS_KEYS": f"k1:{key}",
        "RECORDLINE_READ_PASS_URL": "http://localhost",
    }
    try:
        async with (
            origin(port, tmp_path / "r.duckdb", **passes) as direct,
            through(proxy) as client,
        ):
            (await direct.post("/pubsub/push", json=push_body(1))).raise_for_status()
            reader = google.mint(aud=READ_AUDIENCE, email="analyst@example.org")
            issued = await direct.post(
                "/v1/read-pass", headers={"Authorization": f"Bearer {reader}"}
            )
            cookie = issued.json()["cookie"]
            by_pass = await client.get(STREAM, params={"offset": "-1"}, headers={"Cookie": cookie})
            assert ids(by_pass) == ["m-1"]
            anonymous = await client.get(STREAM, params={"offset": "-1"})
            assert anonymous.status_code == 401, (anonymous.headers.get("x-cache"), anonymous.text)
    finally:
        google.stop()

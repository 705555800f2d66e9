"""Followers with read passes through nginx standing in for Cloud CDN with signed cookies
(recordline_dev/cache.py, `passes`) in front of a service whose reads need a token.

Skipped where there is no nginx or no njs (scripts/install-nginx.sh); in CI a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.auth.passes import ReadPasses, parse_keys
from recordline_dev.cache import NginxMissing, SharedCache, find_nginx, find_njs, shared_cache
from recordline_dev.processes import free_port
from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.test_shared_cache import (
    STREAM,
    WAIT_SECONDS,
    alternating,
    ids,
    origin,
    through,
)
from tests.test_streams import push_body

pytestmark = pytest.mark.nginx

KEYS = "k1:" + base64.urlsafe_b64encode(bytes(range(16))).decode()
OTHER_KEYS = "k2:" + base64.urlsafe_b64encode(bytes(range(16, 32))).decode()
# The URL clients reach the cache at, as nginx sees it (`$scheme://$host`: no port).
URL = "http://127.0.0.1"
READER = "reader@example.com"
PUSH_TOKEN = "a-long-enough-push-secret"


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[tuple[SharedCache, int]]:
    """nginx checking passes in front of a port the origin is yet to listen on."""
    try:
        find_njs(find_nginx())
    except NginxMissing as exc:
        pytest.skip(str(exc))
    port = free_port()
    with shared_cache(
        port, tmp_path / "nginx", followers=64, wait=WAIT_SECONDS, passes=KEYS
    ) as running:
        yield running, port


@contextlib.asynccontextmanager
async def guarded(port: int, store: Path, google: FakeGoogle) -> AsyncIterator[httpx.AsyncClient]:
    """The origin, whose reads need a reader's token or a pass; a client straight to it."""
    env = {
        "RECORDLINE_SHARED_CACHE": "false",
        "RECORDLINE_PUSH_TOKEN": PUSH_TOKEN,
        "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
        "RECORDLINE_READ_PRINCIPALS": READER,
        "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
        "RECORDLINE_READ_PASS_KEYS": KEYS,
        "RECORDLINE_READ_PASS_URL": URL,
    }
    async with origin(port, store, **env) as direct:
        yield direct


def reader(google: FakeGoogle) -> dict[str, str]:
    """A reader's token, as a request's headers."""
    return {"authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=READER)}"}


async def issued(client: httpx.AsyncClient, google: FakeGoogle) -> dict[str, str]:
    """A pass the service issues to a reader, through the cache: its Cookie header."""
    answer = await client.post("/v1/read-pass", headers=reader(google))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    return {"cookie": answer.json()["cookie"]}


def signed(
    keys: str = KEYS, url: str = URL, prefix: str = "/v1/", ago: float = 0
) -> dict[str, str]:
    """A pass signed here with `keys` for `url` + `prefix`, issued `ago` seconds ago."""
    made = ReadPasses(parse_keys(keys), url, 600).issue(prefix, time.time() - ago)
    return {"cookie": made.cookie}


async def push(direct: httpx.AsyncClient, n: int) -> None:
    answer = await direct.post("/pubsub/push", params={"token": PUSH_TOKEN}, json=push_body(n))
    answer.raise_for_status()


async def test_followers_with_passes_share_one_origin_request_a_write(
    cache: tuple[SharedCache, int], tmp_path: Path, google: FakeGoogle
) -> None:
    proxy, port = cache
    async with guarded(port, tmp_path / "r.duckdb", google) as direct, through(proxy) as client:
        # Each follower has a pass of its own; the cache keys by URL, not by pass.
        passes = [await issued(client, google) for _ in range(2)]
        await push(direct, 1)
        tail = (await direct.head(STREAM, headers=reader(google))).headers["stream-next-offset"]

        async def follow(cursor: str | None) -> list[httpx.Response]:
            return await asyncio.gather(
                *(
                    client.get(
                        STREAM,
                        params={"offset": tail, "live": "long-poll"}
                        | ({"cursor": cursor} if cursor else {}),
                        headers=passes[n % 2],
                    )
                    for n in range(8)
                )
            )

        waited = await follow(None)
        assert {answer.status_code for answer in waited} == {204}
        proxy.settled(10)
        assert proxy.origin_requests(f"{STREAM}?offset=") == 1
        cursor = waited[0].headers["stream-cursor"]
        assert {answer.headers["stream-cursor"] for answer in waited} == {cursor}
        await push(direct, 2)
        after = await follow(cursor)
        assert [ids(answer) for answer in after] == [["m-2"]] * 8
        proxy.settled(18)
        assert proxy.origin_requests(f"{STREAM}?offset=") == 2


async def test_a_request_without_a_pass_is_never_answered_from_what_pass_holders_got(
    cache: tuple[SharedCache, int], tmp_path: Path, google: FakeGoogle
) -> None:
    proxy, port = cache
    async with guarded(port, tmp_path / "r.duckdb", google) as direct, through(proxy) as client:
        for n in range(1, 4):
            await push(direct, n)
        holder = await issued(client, google)
        first = await client.get(STREAM, headers=holder)
        again = await client.get(STREAM, headers=holder)
        assert [first.headers["x-cache"], again.headers["x-cache"]] == ["MISS", "HIT"]
        assert ids(again) == ["m-1", "m-2", "m-3"]
        assert "max-age=60" in first.headers["cache-control"]
        reached = proxy.origin_requests(STREAM)
        # Without a pass: neither answered from the cache nor kept in it, with a token,
        # without one, or with another cookie.
        for headers, status in (
            ({}, 401),
            ({"cookie": "session=1"}, 401),
            (reader(google), 200),
            (reader(google) | holder, 200),
        ):
            answer = await client.get(STREAM, headers=headers)
            assert answer.status_code == status
            assert answer.headers["x-cache"] == "BYPASS"
        proxy.settled(7)
        assert proxy.origin_requests(STREAM) == reached + 4
        # A stream of events with a pass goes through, never kept.
        async with client.stream(
            "GET", STREAM, params={"offset": "-1", "live": "sse"}, headers=holder
        ) as events:
            assert events.status_code == 200
            assert events.headers["x-cache"] == "BYPASS"
        # What a pass holder is given is kept a second, whatever the origin said (`max-age=60`
        # here: no offset, so no catch-up read); nginx counts in whole seconds, so a second
        # is up to two.
        await asyncio.sleep(2.5)
        assert (await client.get(STREAM, headers=holder)).headers["x-cache"] == "EXPIRED"


def forged_name(cookie: str, name: str) -> str:
    """`cookie` naming the key `name`, which nobody holds, with its signature kept."""
    return re.sub(r":KeyName=[^:]+:", f":KeyName={name}:", cookie)


async def test_a_bad_pass_is_refused_by_the_cache_without_reaching_the_origin(
    cache: tuple[SharedCache, int], tmp_path: Path, google: FakeGoogle
) -> None:
    proxy, port = cache
    async with guarded(port, tmp_path / "r.duckdb", google) as direct, through(proxy) as client:
        await push(direct, 1)
        good = signed()["cookie"]
        tampered = good[:-5] + ("A" if good[-5] != "A" else "B") + good[-4:]
        longer = good.replace(":Expires=", ":Expires=1")
        refused = {
            "bad signature": [tampered, longer],
            "expired": [signed(ago=601)["cookie"]],
            "another prefix": [
                signed(prefix="/systems/other/v1/")["cookie"],
                signed(url="http://localhost")["cookie"],
            ],
            "unknown key": [
                signed(keys=OTHER_KEYS)["cookie"],
                # Names every JavaScript object has: a key table with a prototype finds them.
                *(forged_name(good, name) for name in ("constructor", "tostring")),
            ],
            "malformed": [
                good.replace(":KeyName=", ":Key="),
                "Cloud-CDN-Cookie=x",
                *(forged_name(good, name) for name in ("toString", "__proto__", "valueOf")),
            ],
        }
        for reason, cookies in refused.items():
            for cookie in cookies:
                answer = await client.get(STREAM, headers={"cookie": cookie})
                assert answer.status_code == 403, cookie
                assert answer.headers["x-read-pass-refused"] == reason
        proxy.settled(13)
        assert proxy.origin_requests() == 0
        # The pass they were made from is good, at the cache and at the origin.
        assert (await client.get(STREAM, headers={"cookie": good})).status_code == 200
        assert (await direct.get(STREAM, headers={"cookie": good})).status_code == 200
        assert (await direct.get(STREAM, headers={"cookie": tampered})).status_code == 401


async def test_a_follower_with_a_pass_alternating_between_cache_and_origin_gets_every_row_once(
    cache: tuple[SharedCache, int], tmp_path: Path, google: FakeGoogle
) -> None:
    proxy, port = cache
    async with guarded(port, tmp_path / "r.duckdb", google) as direct, through(proxy) as client:
        holder = await issued(client, google)
        pushed = 0

        async def write(count: int) -> None:
            nonlocal pushed
            for _ in range(count):
                pushed += 1
                await push(direct, pushed)

        await write(5)
        # The follower reads the origin with its pass too, as a CDN miss does.
        # Another follower ahead of this one fills the cache with what it will ask for.
        ahead = await client.get(STREAM, params={"offset": "-1"}, headers=holder)
        assert ahead.headers["x-cache"] == "MISS"
        for via in (client, direct):
            via.headers["cookie"] = holder["cookie"]
        seen = await alternating(client, direct, write)
        assert seen == [f"m-{n}" for n in range(1, pushed + 1)]
        assert {status for status, *_ in proxy.statuses()} & {"HIT"}


async def test_a_catch_up_chunk_is_kept_a_minute_and_a_long_poll_s_answer_a_second(
    cache: tuple[SharedCache, int], tmp_path: Path, google: FakeGoogle
) -> None:
    proxy, port = cache
    async with guarded(port, tmp_path / "r.duckdb", google) as direct, through(proxy) as client:
        for n in range(1, 3):
            await push(direct, n)
        first, second = [await issued(client, google) for _ in range(2)]
        chunk = await client.get(STREAM, params={"offset": "-1"}, headers=first)
        assert chunk.headers["x-cache"] == "MISS"
        tail = chunk.headers["stream-next-offset"]
        waited = await client.get(
            STREAM, params={"offset": tail, "live": "long-poll"}, headers=first
        )
        assert (waited.status_code, waited.headers["x-cache"]) == (204, "MISS")
        # A HEAD names the tail now: passed on, never a kept GET's headers.
        head = await client.head(STREAM, params={"offset": "-1"}, headers=first)
        assert head.headers["x-cache"] == "BYPASS"
        await asyncio.sleep(2.5)
        # Past the second nginx may keep it: the chunk is another holder's from the
        # cache, even once a row was written after it; the long-poll's 204 is not.
        await push(direct, 3)
        again = await client.get(STREAM, params={"offset": "-1"}, headers=second)
        assert (again.headers["x-cache"], ids(again)) == ("HIT", ["m-1", "m-2"])
        waited = await client.get(
            STREAM, params={"offset": tail, "live": "long-poll"}, headers=second
        )
        assert (waited.status_code, waited.headers["x-cache"]) == (200, "EXPIRED")
        assert ids(waited) == ["m-3"]
        # A follower reads on from the chunk's next offset: nothing missed.
        after = await client.get(STREAM, params={"offset": tail}, headers=second)
        assert (after.headers["x-cache"], ids(after)) == ("MISS", ["m-3"])
        proxy.settled(7)
        # The chunk once, and the HEAD.
        assert proxy.origin_requests(f"{STREAM}?offset=-1") == 2

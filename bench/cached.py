"""Followers behind a shared cache (nginx, recordline_dev/cache.py, or Varnish,
recordline_dev/varnish.py) against the same followers on the origin: origin requests a
write, latency, memory, and catch-up.

    python3 dev.py bench followers --cache [--followers 1000,10000] [--writes 5]
                                           [--records 20000] [--readers 100] [--cache-only]
                                           [--proxy nginx|varnish] [--passes]

On one `recordline serve` (DuckDB, RECORDLINE_SHARED_CACHE=true) behind the cache, Durable
Streams long-poll followers wait at the tail, on the origin then through the cache, while
`--writes` records are pushed: origin requests a write, every row once and in order, p99,
memory. Then `--readers` catch up on `--records` from one offset: origin reads a chunk.
With `--passes` (nginx), reads need a token, every client reads with a read pass, and nginx
is Cloud CDN with signed cookies (checks each pass, keeps what a pass holder got 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.harness import SERVE, free_port, percentile, push_body, rss_kb, server, table
from recordline_dev.cache import SharedCache, shared_cache
from recordline_dev.varnish import VarnishCache, varnish_cache

STREAM = "/v1/streams/records"
# Seconds the followers are given to ask again between two writes (so each write finds
# them all waiting), and for all of them to see a write.
REARM_SECONDS = 0.5
ROUND_SECONDS = 120.0
# Pushes carry the shared push secret (RECORDLINE_PUSH_TOKEN), which reads never need.
PUSH_PARAMS = {"token": secrets.token_urlsafe(24)}
# With `--passes`: the one reader, and the URL passes open as the followers reach the
# cache (`Host: localhost`, as nginx sees it: `$scheme://$host`).
READER = "reader@bench.example.com"
PASS_URL = "http://localhost"


@dataclass(slots=True)
class Followers:
    """What the followers of one run saw."""

    count: int
    # The request's headers past `Host` (a read pass's `Cookie`).
    headers: str = ""
    # Per record pushed: when its push was answered, and how many followers have it.
    pushed_at: dict[str, float] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    reconnects: int = 0
    failures: list[str] = field(default_factory=list)


def _headers(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    found = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            found[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), found


async def follow(port: int, offset: str, expected: list[str], run: Followers) -> None:
    """One follower on its own connection (an HTTP client library would cost the
    cores more than what is measured): long-polls from `offset` until it has `expected`,
    which it must get once each, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    cursor = ""
    got: list[str] = []
    try:
        while len(got) < len(expected):
            path = f"{STREAM}?offset={offset}&live=long-poll" + (
                f"&cursor={cursor}" if cursor else ""
            )
            head = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{run.headers}\r\n"
            writer.write(head.encode())
            run.requests += 1
            try:
                status, headers = _headers(await reader.readuntil(b"\r\n\r\n"))
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
            except (asyncio.IncompleteReadError, ConnectionError):
                # A connection the server closed: asked again on a new one, as a client does.
                run.reconnects += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            now = time.monotonic()
            if status == 200:
                for record in json.loads(body):
                    message_id = record["message_id"]
                    got.append(message_id)
                    run.received[message_id] = run.received.get(message_id, 0) + 1
                    run.latencies.append(now - run.pushed_at[message_id])
            elif status != 204:
                raise RuntimeError(f"a follower was answered {status}: {body[:200]!r}")
            offset, cursor = headers["stream-next-offset"], headers["stream-cursor"]
        if got != expected:
            run.failures.append(f"saw {got[:5]}… not {expected[:5]}…")
    finally:
        writer.close()


def _pids(pid: int) -> list[int]:
    pids = [pid]
    for each in pids:
        for task in Path(f"/proc/{each}/task").iterdir():
            pids.extend(int(c) for c in (task / "children").read_text().split())
    return pids


def rss_mb(pid: int) -> float:
    """The resident memory of a process and its children."""
    return sum(rss_kb(each) for each in _pids(pid)) / 1024


async def followed(
    http: httpx.AsyncClient,
    port: int,
    count: int,
    writes: int,
    first: int,
    memory: dict[str, Callable[[], float]],
    cookie: str | None,
) -> tuple[Followers, dict[str, float]]:
    """`count` followers on `port` from the tail while `writes` records are pushed, each
    with the read pass `cookie` if any."""
    run = Followers(count, f"Cookie: {cookie}\r\n" if cookie else "")
    ids = [f"b-{first + n}" for n in range(writes)]
    offset = (await http.head(STREAM)).headers["stream-next-offset"]
    tasks = [asyncio.create_task(follow(port, offset, ids, run)) for _ in range(count)]
    peak = {name: 0.0 for name in memory}
    while run.requests < count:
        await asyncio.sleep(0.05)
    for message_id in ids:
        await asyncio.sleep(REARM_SECONDS)
        for name, read in memory.items():
            peak[name] = max(peak[name], read())
        # Timed from the push sent: a follower at the tail often has the row before the
        # push's 204 leaves (woken at durability).
        run.pushed_at[message_id] = time.monotonic()
        answer = await http.post(
            "/pubsub/push", params=PUSH_PARAMS, json=push_body(int(message_id[2:]))
        )
        answer.raise_for_status()
        deadline = time.monotonic() + ROUND_SECONDS
        while run.received.get(message_id, 0) < count and time.monotonic() < deadline:
            if any(task.done() for task in tasks):
                break
            await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*tasks), ROUND_SECONDS)
    return run, peak


async def catch_up(url: str, readers: int, headers: dict[str, str]) -> tuple[float, list[int]]:
    """`readers` read the whole stream from its start at once: the seconds it took, and
    the chunks each read. Each must read every row; on the origin their chunks may differ
    (a read is cut to the room the memory budget has while the others read)."""
    limits = httpx.Limits(max_connections=readers)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=headers) as http:

        async def read() -> tuple[int, int]:
            offset, rows, chunks, retries = "-1", 0, 0, 3
            while True:
                try:
                    answer = await http.get(STREAM, params={"offset": offset})
                except httpx.TransportError:
                    # A kept-alive connection the server closed meanwhile: asked again.
                    retries -= 1
                    if retries < 0:
                        raise
                    continue
                answer.raise_for_status()
                rows, chunks = rows + len(answer.json()), chunks + 1
                if answer.headers.get("stream-up-to-date") == "true":
                    return rows, chunks
                offset = answer.headers["stream-next-offset"]

        counts = await asyncio.gather(*(read() for _ in range(readers)))
    if len({rows for rows, _ in counts}) != 1:
        raise RuntimeError(f"readers read different rows: {sorted(set(counts))}")
    return time.monotonic() - started, [chunks for _, chunks in counts]


def print_followers(rows: list[list[str]], args: argparse.Namespace) -> None:
    """The followers' table, printed as soon as they are measured."""
    passes = ", every read with a pass" if args.passes else ""
    print(
        f"\nDurable Streams long-poll followers at the tail, {args.writes} writes (DuckDB),"
        f" through {args.proxy}{passes}\n"
    )
    header = [
        "followers",
        "where",
        "requests",
        "origin requests a write",
        "vs origin",
        "p50",
        "p99",
        "origin RSS",
        "cache RSS",
        "took",
    ]
    print(table([header, *rows]), flush=True)


async def measure(
    origin: str,
    origin_port: int,
    pid: int,
    cache: SharedCache | VarnishCache,
    args: argparse.Namespace,
    reader: str | None,
) -> list[list[str]]:
    memory = {
        "origin": lambda: rss_mb(pid),
        "cache": lambda: rss_mb(cache.process.pid),
    }
    rows: list[list[str]] = []
    pushed = 0
    async with httpx.AsyncClient(base_url=origin, timeout=60) as http:
        cookie = None
        if reader:
            # Issued to a reader's token; the service checks a pass on each request.
            issued = await http.post("/v1/read-pass", headers={"authorization": f"Bearer {reader}"})
            issued.raise_for_status()
            cookie = issued.json()["cookie"]
            http.headers["cookie"] = cookie
        for count in args.followers:
            baseline: dict[str, float] = {}
            ways = (("origin", origin_port), ("cache", cache.port))
            for where, port in ways[1:] if args.cache_only else ways:
                before = cache.origin_requests(STREAM) if where == "cache" else 0
                logged = len(cache.statuses())
                started = time.monotonic()
                run, peak = await followed(http, port, count, args.writes, pushed, memory, cookie)
                pushed += args.writes
                if run.failures or any(n != count for n in run.received.values()):
                    raise RuntimeError(f"{where}, {count:,} followers: {run.failures[:3]}")
                requests = reached = run.requests
                if where == "cache":
                    cache.settled(logged + run.requests)
                    reached = cache.origin_requests(STREAM) - before
                figures = {
                    "per write": reached / args.writes,
                    "p99": percentile(run.latencies, 0.99),
                    "origin": peak["origin"],
                }
                # Without the origin's run: one request a follower a write, as it has.
                baseline = baseline or (
                    {**figures, "per write": float(count)} if args.cache_only else figures
                )
                rows.append(
                    [
                        f"{count:,}",
                        "through the cache" if where == "cache" else "on the origin",
                        f"{requests:,}",
                        f"{figures['per write']:,.1f}",
                        f"{figures['per write'] / baseline['per write']:.4f}",
                        f"{percentile(run.latencies, 0.5) * 1000:,.0f} ms",
                        f"{figures['p99'] * 1000:,.0f} ms",
                        f"{peak['origin']:,.0f} MiB",
                        f"{peak['cache']:,.0f} MiB" if where == "cache" else "-",
                        f"{time.monotonic() - started:,.0f} s",
                    ]
                )

        print_followers(rows, args)

        # Catch-up: the stream is made `--records` long, then read from its start.
        async def push(n: int) -> None:
            answer = await http.post("/pubsub/push", params=PUSH_PARAMS, json=push_body(n))
            answer.raise_for_status()

        for start in range(pushed, args.records, 200):
            await asyncio.gather(*(push(n) for n in range(start, min(start + 200, args.records))))
        caught: list[list[str]] = []
        for where, url in (("on the origin", origin), ("through the cache", cache.url)):
            before = cache.origin_requests(f"{STREAM}?offset=")
            logged = len(cache.statuses())
            # A pass opens the URL as the followers reach the cache (`Host: localhost`).
            headers = {"cookie": cookie, "host": "localhost"} if cookie else {}
            seconds, chunks = await catch_up(url, args.readers, headers)
            if url == origin:
                reads = sum(chunks)
            else:
                cache.settled(logged + sum(chunks))
                reads = cache.origin_requests(f"{STREAM}?offset=") - before
            fewest, most = min(chunks), max(chunks)
            caught.append(
                [
                    where,
                    f"{args.readers}",
                    f"{fewest}" if fewest == most else f"{fewest}-{most}",
                    f"{reads:,}",
                    # On the origin each reader reads each of its chunks itself.
                    f"{(args.readers if url == origin else reads / most):,.2f}",
                    f"{seconds:,.1f} s",
                ]
            )
    return caught


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench followers --cache", description=__doc__)
    parser.add_argument(
        "--followers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1000, 10_000],
        help="counts of followers, comma-separated (1000,10000)",
    )
    parser.add_argument("--writes", type=int, default=5, help="records they follow (5)")
    parser.add_argument("--records", type=int, default=20_000, help="caught up on (20000)")
    parser.add_argument("--readers", type=int, default=100, help="catching up at once (100)")
    parser.add_argument(
        "--proxy",
        choices=("nginx", "varnish"),
        default="nginx",
        help="the shared cache: Debian's nginx or Varnish (nginx)",
    )
    parser.add_argument(
        "--cache-only",
        action="store_true",
        help="the followers through the cache alone (ratios against one request a follower)",
    )
    parser.add_argument(
        "--passes",
        action="store_true",
        help="reads need a token; every client reads with a read pass, checked by nginx",
    )
    args = parser.parse_args(argv)
    if args.passes and args.proxy != "nginx":
        print("--passes needs --proxy nginx: only its stand-in checks read passes")
        return 2
    most = max(args.followers)
    # Each follower holds a file on this side, the cache's and (uncached) the origin's.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < most + 256:
        print(f"{most:,} followers need {most + 256:,} open files; the limit is {hard:,}")
        return 2
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        env = {
            "RECORDLINE_STORE": f"duckdb://{Path(tmp) / 'cached.duckdb'}",
            "RECORDLINE_LOG_LEVEL": "WARNING",
            "RECORDLINE_SHARED_CACHE": "true",
            "RECORDLINE_PUSH_TOKEN": PUSH_PARAMS["token"],
            "RECORDLINE_MAX_FOLLOWERS": str(most + 50),
            "RECORDLINE_MAX_CONNECTIONS": str(2 * most + 200),
            # The default memory budget: a long-poll woken reads with the room it has.
        }
        keys = reader = None
        if args.passes:
            from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle

            google = FakeGoogle().start()
            stack.callback(google.stop)
            keys = "bench:" + base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()
            reader = google.mint(aud=READ_AUDIENCE, email=READER)
            env |= {
                "RECORDLINE_SHARED_CACHE": "false",
                "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
                "RECORDLINE_READ_PRINCIPALS": READER,
                "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
                "RECORDLINE_READ_PASS_KEYS": keys,
                "RECORDLINE_READ_PASS_URL": PASS_URL,
            }
        cache_at = (
            varnish_cache(port, Path(tmp) / "varnish", followers=most)
            if args.proxy == "varnish"
            else shared_cache(port, Path(tmp) / "nginx", followers=most, passes=keys)
        )
        with server([*SERVE, "--port", str(port)], port, env=env) as origin, cache_at as cache:
            caught = asyncio.run(measure(origin.url, port, origin.process.pid, cache, args, reader))
    print(f"\n{args.readers} readers catching up on {args.records:,} records from one offset\n")
    header = ["where", "readers", "chunks", "origin reads", "origin reads a chunk", "took"]
    print(table([header, *caught]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

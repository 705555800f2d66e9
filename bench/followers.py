"""Followers told at once, against followers that poll: wake-up, reads and memory.

    python3 dev.py bench followers [--followers 1000] [--rounds 5] [--poll 0.5]
                                   [--serving]
    python3 dev.py bench followers --peer [options]   # beside the reference server (bench/peer.py)
    python3 dev.py bench followers --heap [options]   # memory per idle follower (bench/heap.py)
    python3 dev.py bench followers --cache [options]  # behind a shared cache (bench/cached.py)

1. On one `recordline serve` (a DuckDB file), `--followers` long-poll requests
   wait at the tail (`wait=30`); one push is made and each follower's wake-up
   is timed from the push's 204 to its page, `--rounds` times; then the same
   as a stream of pages, and through the Durable Streams read side
   (`/v1/streams/records`, long-poll and SSE). Beside it, the
   same followers polling every `--poll` seconds (what `recordline tail` did):
   their publish-to-visible latency and their requests per second. The
   server's resident memory is read before and while they wait: the memory an
   idle follower costs.
2. With `--serving` (the Spanner emulator and the BigQuery fakes, in this
   process): the Spanner reads a second one instance makes while 1, 10, 100
   and `--followers` followers wait on it and another instance commits once a
   second. The tail is refreshed once for all of them, so the rate does not
   grow with followers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.harness import SERVE, free_port, percentile, push_body, rss_kb, server, table


async def waiting_on(http: httpx.AsyncClient, followers: int) -> None:
    """Until the service says that many followers wait (`recordline.followers`)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        metrics = (await http.get("/metrics")).text
        found = re.search(r"^recordline_followers(?:\{[^}]*\})? ([0-9.]+)$", metrics, re.M)
        if found and float(found[1]) >= followers:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{followers} followers were not all waiting after 60 s")


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (user and system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def follower(port: int, path: str, sse: bytes | None, woke: list[float]) -> None:
    """One follower waiting on `path` on a raw connection (an HTTP client library
    would cost more CPU than the service's answer, on the same cores): the moment
    its page (or, streaming, its event `sse`) arrives goes to `woke`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    accept = "Accept: text/event-stream\r\n" if sse else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n".encode())
    await writer.drain()
    try:
        if sse:
            while not (await reader.readline()).startswith(sse):
                pass
        else:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head, re.I)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert length is not None, head
            body = await reader.readexactly(int(length[1]))
            assert b'"records":[]' not in body
            assert body != b"[]"
        woke.append(time.monotonic())
    finally:
        writer.close()


# Each way to follow: the API's long-poll and stream of pages, and the Durable
# Streams read side's long-poll and SSE, each waiting at the tail.
WAYS = (
    ("long-poll (wait=30)", "/v1/records?page_token={token}&wait=30", None),
    ("server-sent events", "/v1/records?page_token={token}&wait=30", b"event: page"),
    ("streams, long-poll", "/v1/streams/records?offset={offset}&live=long-poll", None),
    ("streams, SSE", "/v1/streams/records?offset={offset}&live=sse", b"event: data"),
)


async def wake_ups(
    url: str, port: int, token: str, pid: int, args: argparse.Namespace
) -> list[list[str]]:
    limits = httpx.Limits(max_connections=args.followers + 50)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        pushed = 0
        rows: list[list[str]] = []
        p99s: dict[str, float] = {}
        for name, path, sse in WAYS:
            latencies: list[float] = []
            cpu: list[float] = []
            memory = 0.0
            for round_ in range(args.rounds):
                before = rss_kb(pid)
                woke: list[float] = []
                offset = (await http.head("/v1/streams/records")).headers["stream-next-offset"]
                target = path.format(token=token, offset=offset)
                waits = [
                    asyncio.create_task(follower(port, target, sse, woke))
                    for _ in range(args.followers)
                ]
                await waiting_on(http, args.followers)
                if not round_:
                    memory = (rss_kb(pid) - before) / args.followers
                pushed += 1
                busy = cpu_seconds(pid)
                at = time.monotonic()
                (await http.post("/pubsub/push", json=push_body(pushed))).raise_for_status()
                await asyncio.gather(*waits)
                cpu.append(cpu_seconds(pid) - busy)
                latencies += [t - at for t in woke]
                page = (await http.get("/v1/records", params={"page_token": token})).json()
                token = page["next_page_token"]
            p99s[name] = percentile(latencies, 0.99)
            rows.append(
                [
                    name,
                    f"{len(latencies):,}",
                    f"{percentile(latencies, 0.5) * 1000:,.0f} ms",
                    f"{p99s[name] * 1000:,.0f} ms",
                    f"{sum(cpu) / len(latencies) * 1e6:,.0f} µs",
                    f"{memory:,.1f} KiB",
                    "one per record",
                ]
            )
        # The same followers polling, as they did before they could wait.
        polled: list[float] = []
        requests = 0
        stop = asyncio.Event()

        async def poller(cursor: str) -> None:
            nonlocal requests
            while not stop.is_set():
                await asyncio.sleep(args.poll * secrets.randbelow(1000) / 1000)
                try:
                    answer = await http.get("/v1/records", params={"page_token": cursor})
                except httpx.TransportError:
                    # A kept-alive connection the server closed meanwhile: asked again.
                    continue
                page = answer.json()
                requests += 1
                cursor = page["next_page_token"]
                if page["records"]:
                    polled.append(time.monotonic() - pushed_at)
                    return

        pollers = [asyncio.create_task(poller(token)) for _ in range(args.followers)]
        await asyncio.sleep(args.poll)  # the pollers' rhythm is what is measured
        started = time.monotonic()
        pushed += 1
        pushed_at = time.monotonic()
        (await http.post("/pubsub/push", json=push_body(pushed))).raise_for_status()
        await asyncio.gather(*pollers)
        poll_rate = requests / (time.monotonic() - started)
    p99_poll = percentile(polled, 0.99)
    for row, p99 in zip(rows, p99s.values(), strict=True):
        row.append(f"{p99 / p99_poll:.3f}")
    rows.append(
        [
            f"polling every {args.poll:g} s",
            f"{len(polled):,}",
            f"{percentile(polled, 0.5) * 1000:,.0f} ms",
            f"{p99_poll * 1000:,.0f} ms",
            "-",
            "-",
            f"{poll_rate:,.0f}/s",
            "1.000",
        ]
    )
    return rows


def http_part(args: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "RECORDLINE_STORE": f"duckdb://{Path(tmp) / 'followers.duckdb'}",
            "RECORDLINE_LOG_LEVEL": "WARNING",
            # Room for every follower, and for its next page while the last is answered.
            "RECORDLINE_MAX_FOLLOWERS": str(args.followers + 50),
            "RECORDLINE_MAX_CONNECTIONS": str(2 * args.followers + 200),
        }
        with server([*SERVE, "--port", str(port)], port, env=env) as service:
            httpx.post(f"{service.url}/pubsub/push", json=push_body(0)).raise_for_status()
            token = httpx.get(f"{service.url}/v1/records").json()["next_page_token"]
            rows = asyncio.run(wake_ups(service.url, port, token, service.process.pid, args))
    print(
        f"\n{args.followers:,} followers at the tail of one instance (DuckDB),"
        f" {args.rounds} pushes\n"
    )
    header = [
        "followers",
        "pages",
        "p50",
        "p99",
        "server CPU a page",
        "memory each",
        "requests",
        "p99 / polling",
    ]
    print(table([header, *rows]))


async def reads_while_waiting(args: argparse.Namespace) -> list[list[str]]:
    from app.query.follow import Followers
    from app.query.page_token import PageTokens
    from app.query.service import RECORDS, Reader
    from app.records import Record
    from tests.bigquery.threaded import ThreadedBigQuery, serving_store
    from tests.spanner.emulator import SpannerEmulator, find_emulator

    async def follow(followers: Followers, cursor: str | None) -> None:
        # A long-poll's follower, as the route makes one: it waits up to 20 s for rows.
        reader = followers.reader
        while True:
            after = reader.cursor(RECORDS, None, None, 1000, cursor)
            page = await followers.follow(None).page(RECORDS, after, 1000, wait=20, first=False)
            cursor = page.next_page_token
            if page.records:
                return

    with tempfile.TemporaryDirectory() as tmp:
        emulator = SpannerEmulator(find_emulator(), Path(tmp) / "spanner.log")
        fakes = ThreadedBigQuery()
        try:
            database = emulator.database()
            followed = serving_store(database, emulator.host, fakes)
            writer = serving_store(database, emulator.host, fakes)
            await followed.start()
            await writer.start()
            reader = Reader(followed, pending_horizon=lambda: 2**62, tokens=PageTokens("bench"))
            # The app's followers: their reads shared, as the routes share them.
            followers = Followers(reader, stream_seconds=60, shared_cache=False)
            rows: list[list[str]] = []
            commits = 0
            alone = 0.0
            for count in sorted({1, 10, 100, args.followers}):
                token = (
                    await reader.page(RECORDS, since=None, until=None, limit=1000, page_token=None)
                ).next_page_token
                reads, started = followed.serving.reads, time.monotonic()
                for _ in range(5):  # a commit a second on the other instance
                    waiting = [asyncio.create_task(follow(followers, token)) for _ in range(count)]
                    await asyncio.sleep(1.0)
                    commits += 1
                    now = time.time_ns() // 1000
                    record = Record(
                        message_id=f"c-{commits}", publish_time=now, ingest_time=now, id="c"
                    )
                    await writer.append([record])
                    await asyncio.gather(*waiting)
                    token = (
                        await reader.page(
                            RECORDS, since=None, until=None, limit=1000, page_token=token
                        )
                    ).next_page_token
                rate = (followed.serving.reads - reads) / (time.monotonic() - started)
                alone = alone or rate
                rows.append([f"{count:,}", f"{rate:,.1f}", f"{rate / alone:.2f}"])
            await followed.close()
            await writer.close()
        finally:
            fakes.stop()
            emulator.stop()
    return rows


def main(argv: list[str]) -> int:
    if "--peer" in argv:
        from bench import peer

        return peer.main([a for a in argv if a != "--peer"])
    if "--cache" in argv:
        from bench import cached

        return cached.main([a for a in argv if a != "--cache"])
    if "--heap" in argv:
        from bench import heap

        return heap.main([a for a in argv if a != "--heap"])
    parser = argparse.ArgumentParser(prog="bench followers", description=__doc__)
    parser.add_argument("--followers", type=int, default=1000, help="followers waiting (1000)")
    parser.add_argument("--rounds", type=int, default=5, help="pushes they wait for (5)")
    parser.add_argument("--poll", type=float, default=0.5, help="the pollers' interval (0.5)")
    parser.add_argument("--serving", action="store_true", help="count Spanner reads per commit")
    args = parser.parse_args(argv)
    http_part(args)
    if args.serving:
        rows = asyncio.run(reads_while_waiting(args))
        print("\nSpanner reads a second on one instance while followers wait on it,")
        print("one commit a second on another instance\n")
        print(table([["followers", "reads/s", "vs one follower"], *rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

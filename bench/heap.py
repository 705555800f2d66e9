"""What an idle follower costs in memory, counted: `bench followers --heap`.

    python3 dev.py bench followers --heap [--followers 500] [--sites 0]

`recordline serve` on a DuckDB file, `--followers` idle followers at the tail
of `/v1/streams/records`: SSE streams, then parked long-polls. Per follower:

- the Python heap the server holds for it (tracemalloc, started once the
  server is warm, read with the followers connected and idle): a count of
  bytes, which moves by about half a KiB from run to run (what the server does
  besides in those seconds is counted too), where resident memory moves with
  the allocator, what was freed before, and the machine;
- the server's resident memory (RSS) growth, as `bench followers --peer`
  reads it, from servers run without tracemalloc (its bookkeeping would be
  counted too), one for each kind.

`--sites N` prints the N lines that allocated the most of each heap figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import peer
from bench.harness import table

# `recordline serve`, told by SIGUSR1 to snapshot its Python heap: the first
# signal starts tracemalloc (the server is warm by then), each one writes a
# snapshot to the next file of BENCH_HEAP_SNAPSHOTS.
TRACED_SERVE = """
import os, signal, sys, tracemalloc
taken = [0]
def snapshot(*_):
    if not tracemalloc.is_tracing():
        tracemalloc.start()
    taken[0] += 1
    path = f"{os.environ['BENCH_HEAP_SNAPSHOTS']}.{taken[0]}"
    tracemalloc.take_snapshot().dump(path + ".part")
    os.replace(path + ".part", path)  # there once whole: what the bench waits for
signal.signal(signal.SIGUSR1, snapshot)
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


KINDS = ("SSE", "long-poll")


class LongPoll:
    """One long-poll parked at the tail: its request sent, its answer not read."""

    def __init__(self, target: peer.Target, offset: str) -> None:
        self.target, self.offset = target, offset
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        _, self.writer = await asyncio.open_connection("127.0.0.1", self.target.port)
        path = f"{self.target.stream}?offset={self.offset}&live=long-poll"
        self.writer.write(f"GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n".encode())
        await self.writer.drain()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def followers_open(target: peer.Target) -> int:
    connection = await peer.Connection.open(target.port)
    try:
        _, _, body = await connection.request("GET", "/metrics")
    finally:
        connection.close()
    for line in body.decode().splitlines():
        if line.startswith("recordline_followers") and not line.startswith("recordline_followers_"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 60
    while not await condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within 60 s")
        await asyncio.sleep(0.2)


async def idle(target: peer.Target, kind: str, count: int, measure: Callable[[], None]) -> None:
    """Open `count` idle followers of `kind`, call `measure` once they all wait, close them."""
    offset = await peer.tail_offset(target)
    if kind == "SSE":
        streams = [peer.SseFollower(target, offset) for _ in range(count)]
        for stream in streams:
            stream.start()
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in streams)), 60)
        closers = [stream.stop for stream in streams]
    else:
        polls = [LongPoll(target, offset) for _ in range(count)]
        await asyncio.gather(*(poll.open() for poll in polls))
        closers = [poll.close for poll in polls]

    async def all_waiting() -> bool:
        return await followers_open(target) >= count

    await until(all_waiting, f"{count} {kind} followers waiting")
    await asyncio.sleep(1.0)  # each one's first read done, and it parked
    measure()
    for close in closers:
        close()

    async def none_waiting() -> bool:
        return await followers_open(target) == 0

    await until(none_waiting, "the followers gone")


async def measured(target: peer.Target, kinds: list[str], count: int, traced: bool) -> list[float]:
    """KiB of resident memory per follower of each kind; if `traced`, the server
    snapshots its heap before and with each kind's followers."""
    # Warm: a write, and a few followers of each kind come and gone, so what the
    # first of them makes once for all (caches, pools) is not counted.
    await target.write()
    for kind in kinds:
        await idle(target, kind, 10, lambda: None)
    found = []
    for kind in kinds:
        await asyncio.sleep(0.5)
        if traced:
            os.kill(target.process.pid, signal.SIGUSR1)
        before = target.rss_kib()
        after = 0

        def measure() -> None:
            nonlocal after
            if traced:
                os.kill(target.process.pid, signal.SIGUSR1)
            after = target.rss_kib()

        await idle(target, kind, count, measure)
        found.append((after - before) / count)
    if traced:
        last = Path(f"{os.environ['BENCH_HEAP_SNAPSHOTS']}.{2 * len(kinds)}")

        async def written() -> bool:
            return last.exists()

        await until(written, "the last heap snapshot")
    return found


def heap_figures(snapshots: str, count: int, sites: int) -> dict[str, float]:
    """KiB per follower from the snapshots, SSE then long-poll; the top `sites` printed."""
    found: dict[str, float] = {}
    for n, kind in enumerate(KINDS):
        before = tracemalloc.Snapshot.load(f"{snapshots}.{2 * n + 1}")
        after = tracemalloc.Snapshot.load(f"{snapshots}.{2 * n + 2}")
        grown = after.compare_to(before, "lineno")
        found[kind] = sum(stat.size_diff for stat in grown) / count / 1024
        if sites:
            print(f"\nwhere the heap of an idle {kind} follower is (bytes, allocations):")
            for stat in grown[:sites]:
                frame = stat.traceback[0]
                where = f"{frame.filename.replace(str(peer.ROOT) + '/', '')}:{frame.lineno}"
                print(f"  {stat.size_diff / count:7.0f}  {stat.count_diff / count:5.1f}  {where}")
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench followers --heap", description=__doc__)
    parser.add_argument("--followers", type=int, default=500, help="idle followers (500)")
    parser.add_argument("--sites", type=int, default=0, help="top allocating lines shown (0)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        snapshots = str(Path(tmp) / "heap")
        os.environ["BENCH_HEAP_SNAPSHOTS"] = snapshots
        with peer.recordline(
            Path(tmp) / "traced.duckdb", serve=[sys.executable, "-c", TRACED_SERVE, "serve"]
        ) as target:
            asyncio.run(measured(target, list(KINDS), args.followers, traced=True))
        heap = heap_figures(snapshots, args.followers, args.sites)
        rss = {}
        for kind in KINDS:
            # A server of its own for each: memory one kind's followers gave back
            # would be taken again by the other's unseen.
            with peer.recordline(Path(tmp) / f"{kind}.duckdb") as target:
                [rss[kind]] = asyncio.run(measured(target, [kind], args.followers, traced=False))
    print(
        f"\nRecordline (DuckDB): memory per idle follower, {args.followers} at the tail of "
        "/v1/streams/records\n"
    )
    rows = [["follower", "Python heap (tracemalloc)", "resident memory (RSS)"]]
    for kind in KINDS:
        rows.append([kind, f"{heap[kind]:.1f} KiB", f"{rss[kind]:.1f} KiB"])
    print(table(rows))
    return 0

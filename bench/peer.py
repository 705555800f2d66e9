"""Followers beside the Durable Streams reference server: `bench followers --peer`.

    python3 dev.py bench followers --peer [--rounds 5] [--trials 200]
                                          [--followers 500] [--records 20000]
                                          [--against REF ...]

The same load generator (Python asyncio over raw HTTP/1.1, no compression asked
for) against `recordline serve` on a DuckDB file and against the reference
server (`@durable-streams/server` from npm, run by node as its README starts
it: in memory; file-backed for the read after a restart, the only way its rows
outlive one), in alternating rounds, each a fresh server. Records are 333-byte
JSON objects on both: a push's payload on Recordline, an append on the
reference. Printed: the medians of the rounds, and Recordline / reference
(above 1 is Recordline ahead).

- SSE and long-poll: one follower at the tail; each write is timed from its
  acknowledgement (the 204) to the follower's event (or answer; 0 when it came
  first), and from the moment it was sent, `--trials` times a round.
- Memory: the server's resident memory before and with `--followers` idle SSE
  followers at the tail, per follower; then one write, timed to each of them
  (as above), and the write's own acknowledgement. Beside it, each round, the
  floor (bench/floor.py): the same followers of an ASGI app that only holds
  them, under uvicorn as `recordline serve` runs, its ratio the reference's
  memory to it (below 1: no ASGI app under that server can be lighter than the
  reference was).
- Catch-up: one reader from the start to the tail, chunk by chunk
  (`Stream-Next-Offset`), of `--records` records (and the writes before them),
  the best of three reads; then the first read after a restart.

`--against REF` measures an earlier commit's `recordline serve` (its files from git,
as `bench ingest --against` runs them) in the same alternating rounds, each measure
beside this checkout's, with this checkout's / the commit's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11

from bench.harness import ROOT, free_port, table
from bench.ingest import reference_design

SERVE = [sys.executable, "-m", "app.cli", "serve"]
# `recordline serve` of the files on PYTHONPATH (`-P`: not this checkout's own `app`).
SERVE_FILES = "import sys; from app.cli import main; sys.exit(main())"
# A 333-byte JSON record, the same on both servers.
NOTE = "x" * 289


def record(n: int) -> bytes:
    body = json.dumps({"id": f"r-{n:08}", "data": {"n": n, "note": NOTE}}, separators=(",", ":"))
    return body.encode()


assert len(record(0)) == 333, len(record(0))

NODE_SERVER = """
import { DurableStreamTestServer } from "@durable-streams/server"
const [port, dataDir] = process.argv.slice(2)
const options = { port: Number(port), host: "127.0.0.1" }
if (dataDir) options.dataDir = dataDir
const server = new DurableStreamTestServer(options)
await server.start()
console.log("ready")
process.on("SIGTERM", async () => { await server.stop(); process.exit(0) })
"""


# -- raw HTTP/1.1 --------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection, parsed by h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
        return cls(reader, writer)

    async def send(self, method: str, target: str, body: bytes = b"", **headers: str) -> None:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        # A loopback-bound service answers its own names only (anything else: 421).
        fields = [("host", "127.0.0.1"), *headers.items()]
        if body or method in ("POST", "PUT"):
            fields.append(("content-length", str(len(body))))
        out = self.h11.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            out += self.h11.send(h11.Data(data=body))
        out += self.h11.send(h11.EndOfMessage())
        self.writer.write(out)
        await self.writer.drain()

    async def _event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(1 << 20)
                self.h11.receive_data(data)
                if not data and self.h11.their_state is not h11.DONE:
                    raise ConnectionError("closed")
                continue
            return event

    async def head(self) -> tuple[int, dict[bytes, bytes]]:
        while True:
            event = await self._event()
            if isinstance(event, h11.Response):
                return event.status_code, dict(event.headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return

    async def request(
        self, method: str, target: str, body: bytes = b"", **headers: str
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        await self.send(method, target, body, **headers)
        status, head = await self.head()
        content = b"".join([c async for c in self.chunks()])
        return status, head, content

    def close(self) -> None:
        self.writer.close()


# -- the two servers -----------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    stream: str  # the stream's path
    write_path: str
    write_body: Callable[[int], bytes]
    writer: Connection | None = None
    written: int = 0
    figures: dict[str, list[float]] = field(default_factory=dict)

    async def write(self) -> None:
        """One record, returned once the server acknowledged it."""
        self.written += 1
        body = self.write_body(self.written)
        for _ in range(2):
            if self.writer is None:
                self.writer = await Connection.open(self.port)
            try:
                status, _, _ = await self.writer.request(
                    "POST", self.write_path, body, **{"content-type": JSON}
                )
                break
            except (ConnectionError, h11.ProtocolError):
                # Closed while idle (node keeps an idle connection 5 s): once more, anew.
                self.writer.close()
                self.writer = None
        assert status in (200, 204), status

    def rss_kib(self) -> int:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return next(int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("VmRSS"))


JSON = "application/json"


def push_envelope(n: int) -> bytes:
    data = base64.b64encode(record(n)).decode()
    return json.dumps(
        {"message": {"data": data, "messageId": f"b-{n}", "publishTime": "2024-04-27T12:00:01Z"}}
    ).encode()


def wait_ready(port: int, process: subprocess.Popen[bytes], path: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        time.sleep(0.1)
    raise RuntimeError("server not ready in 60 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def recordline(
    database: Path, serve: list[str] | None = None, source: Path | None = None
) -> Iterator[Target]:
    """`recordline serve` on `database` (or `serve`, a command that runs it; the files in
    `source`, an earlier commit's, if given)."""
    port = free_port()
    if source is not None:
        serve = [sys.executable, "-P", "-c", SERVE_FILES, "serve"]
    env = {
        **os.environ,
        **({"PYTHONPATH": str(source)} if source is not None else {}),
        "RECORDLINE_STORE": f"duckdb://{database}",
        "RECORDLINE_LOG_LEVEL": "WARNING",
        "RECORDLINE_MAX_FOLLOWERS": "2000",
    }
    process = subprocess.Popen([*(serve or SERVE), "--port", str(port)], cwd=ROOT, env=env)
    try:
        wait_ready(port, process, "/healthz")
        yield Target(
            "Recordline", port, process, "/v1/streams/records", "/pubsub/push", push_envelope
        )
    finally:
        stop(process)


@contextlib.contextmanager
def reference(package_dir: Path, data_dir: Path | None = None) -> Iterator[Target]:
    import httpx

    port = free_port()
    script = package_dir / "bench_server.mjs"
    script.write_text(NODE_SERVER)
    argv = ["node", str(script), str(port), *([str(data_dir)] if data_dir else [])]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        wait_ready(port, process, "/")
        url = f"http://127.0.0.1:{port}/records"
        httpx.put(url, headers={"content-type": JSON}).raise_for_status()
        yield Target(
            "reference", port, process, "/records", "/records", lambda n: b"[" + record(n) + b"]"
        )
    finally:
        stop(process)


@contextlib.contextmanager
def floor() -> Iterator[Target]:
    """An ASGI app that only holds its followers, under uvicorn as Recordline runs."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.floor", str(port)], cwd=ROOT)
    try:
        wait_ready(port, process, "/records")
        yield Target("floor", port, process, "/records", "/records", record)
    finally:
        stop(process)


# -- the measures --------------------------------------------------------------------


async def tail_offset(target: Target) -> str:
    connection = await Connection.open(target.port)
    try:
        status, head, _ = await connection.request("HEAD", target.stream)
        assert status == 200, status
        return head[b"stream-next-offset"].decode()
    finally:
        connection.close()


class SseFollower:
    """One idle SSE follower at an offset: the moment each data event arrives."""

    def __init__(self, target: Target, offset: str) -> None:
        self.target, self.offset = target, offset
        self.arrived: asyncio.Queue[float] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        connection = await Connection.open(self.target.port)
        try:
            await connection.send(
                "GET",
                f"{self.target.stream}?offset={self.offset}&live=sse",
                accept="text/event-stream",
            )
            status, _ = await connection.head()
            assert status == 200, status
            self.connected.set()
            tail = b""
            async for chunk in connection.chunks():
                now = time.perf_counter()
                text = tail + chunk
                for _ in range(text.count(b"event: data") + text.count(b"event:data")):
                    self.arrived.put_nowait(now)
                tail = text[-16:].rpartition(b"\n")[2]  # a marker cut in two
        finally:
            connection.close()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def sse_latency(target: Target, trials: int) -> tuple[list[float], list[float]]:
    """Each write's event at the follower, timed from the write's acknowledgement
    (0 if it came before) and from the moment the write was sent."""
    follower = SseFollower(target, await tail_offset(target))
    follower.start()
    await follower.connected.wait()
    await asyncio.sleep(0.2)  # its first read is parked: what follows is timed
    from_ack, from_sent = [], []
    try:
        for _ in range(trials):
            sent = time.perf_counter()
            await target.write()
            acked = time.perf_counter()
            arrived = await asyncio.wait_for(follower.arrived.get(), 10)
            from_ack.append(max(0.0, arrived - acked))
            from_sent.append(arrived - sent)
    finally:
        follower.stop()
    return from_ack, from_sent


async def long_poll_latency(target: Target, trials: int) -> tuple[list[float], list[float]]:
    """Each write's long-poll answer, timed as `sse_latency` times an event."""
    offset = await tail_offset(target)
    connection = await Connection.open(target.port)
    from_ack, from_sent = [], []
    try:
        for _ in range(trials):
            await connection.send("GET", f"{target.stream}?offset={offset}&live=long-poll")
            await asyncio.sleep(0.005)  # parked before the write: the wake is what is timed
            sent = time.perf_counter()
            await target.write()
            acked = time.perf_counter()
            status, head = await connection.head()
            _ = [c async for c in connection.chunks()]
            answered = time.perf_counter()
            from_ack.append(answered - acked)
            from_sent.append(answered - sent)
            assert status == 200, status
            offset = head[b"stream-next-offset"].decode()
    finally:
        connection.close()
    return from_ack, from_sent


async def idle_memory(target: Target, count: int) -> tuple[float, list[SseFollower]]:
    """KiB of resident memory per idle SSE follower, and the `count` followers, idle."""
    offset = await tail_offset(target)
    before = target.rss_kib()
    followers = [SseFollower(target, offset) for _ in range(count)]
    for follower in followers:
        follower.start()
    await asyncio.wait_for(asyncio.gather(*(f.connected.wait() for f in followers)), 60)
    await asyncio.sleep(1.0)  # every follower parked, its first read done
    # The control events of connecting are not the write's.
    for follower in followers:
        while not follower.arrived.empty():
            follower.arrived.get_nowait()
    return (target.rss_kib() - before) / count, followers


async def floor_memory(count: int) -> float:
    """`idle_memory` on the floor (bench/floor.py), a fresh server."""
    with floor() as target:
        # Warm, as Recordline is by the measures before this one: what the first
        # followers make once for all is not counted.
        _, warming = await idle_memory(target, 10)
        await stopped(warming)
        memory, followers = await idle_memory(target, count)
        await stopped(followers)
    return memory


async def stopped(followers: list[SseFollower]) -> None:
    """Close the followers' connections, and give the server a moment to drop them."""
    for follower in followers:
        follower.stop()
    await asyncio.sleep(0.5)


async def idle_followers(
    target: Target, count: int
) -> tuple[float, list[float], list[float], float]:
    """KiB of resident memory per idle SSE follower; each one's event on one write,
    from its acknowledgement (0 if before) and from the moment it was sent; and how
    long that write took to be acknowledged."""
    memory, followers = await idle_memory(target, count)
    sent = time.perf_counter()
    await target.write()
    acked = time.perf_counter()
    woke = await asyncio.wait_for(asyncio.gather(*(f.arrived.get() for f in followers)), 30)
    await stopped(followers)
    return memory, [max(0.0, t - acked) for t in woke], [t - sent for t in woke], acked - sent


async def catch_up(target: Target) -> float:
    """Records a second, one reader from the start to the tail."""
    connection = await Connection.open(target.port)
    offset, rows, chunks = "-1", 0, []
    started = time.perf_counter()
    try:
        while True:
            status, head, body = await connection.request("GET", f"{target.stream}?offset={offset}")
            assert status == 200, status
            chunks.append(body)
            offset = head[b"stream-next-offset"].decode()
            if b"stream-up-to-date" in head:
                break
    finally:
        connection.close()
    elapsed = time.perf_counter() - started
    rows = sum(len(json.loads(chunk)) for chunk in chunks)
    return rows / elapsed


async def seed(target: Target, records: int, *, batch: int = 1) -> None:
    """Exactly `records` more records, 32 writers at a time, up to `batch` to a write."""
    sizes = [min(batch, records - start) for start in range(0, records, batch)]

    async def writer(writes: list[int]) -> None:
        connection = await Connection.open(target.port)
        try:
            for size in writes:
                bodies = []
                for _ in range(size):
                    target.written += 1
                    bodies.append(target.write_body(target.written))
                body = bodies[0] if batch == 1 else b"[" + b",".join(b[1:-1] for b in bodies) + b"]"
                status, _, _ = await connection.request(
                    "POST", target.write_path, body, **{"content-type": JSON}
                )
                assert status in (200, 204), status
        finally:
            connection.close()

    await asyncio.gather(*(writer(sizes[n::32]) for n in range(min(32, len(sizes)))))


async def round_on(target: Target, args: argparse.Namespace) -> None:
    figures = target.figures
    sse, sse_sent = await sse_latency(target, args.trials)
    figures.setdefault("sse_p99", []).append(percentile(sse, 0.99))
    figures.setdefault("sse_p50", []).append(percentile(sse, 0.5))
    figures.setdefault("sse_sent_p99", []).append(percentile(sse_sent, 0.99))
    poll, poll_sent = await long_poll_latency(target, args.trials)
    figures.setdefault("poll_p99", []).append(percentile(poll, 0.99))
    figures.setdefault("poll_sent_p99", []).append(percentile(poll_sent, 0.99))
    memory, woke, woke_sent, ack = await idle_followers(target, args.followers)
    figures.setdefault("memory", []).append(memory)
    figures.setdefault("wake_p99", []).append(percentile(woke, 0.99))
    figures.setdefault("wake_sent_p99", []).append(percentile(woke_sent, 0.99))
    figures.setdefault("wake_ack", []).append(ack)
    await asyncio.sleep(2)  # the followers' connections closed and cleared first
    # The best of three reads: what the server can do, less the shared machine's noise;
    # and the first alone, whose reader finds nothing read before it.
    reads = [await catch_up(target) for _ in range(3)]
    figures.setdefault("catch_up", []).append(max(reads))
    figures.setdefault("catch_up_first", []).append(reads[0])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def quotient(above: float, below: float) -> str:
    """`above / below` as the table shows it; none where `below` measured nothing (a
    small run's memory, under a page of it)."""
    return f"{above / below:.2f}" if below else "none"


def main(argv: list[str]) -> int:
    from tests.node import installed

    parser = argparse.ArgumentParser(prog="bench followers --peer", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    parser.add_argument("--trials", type=int, default=200, help="writes timed a round (200)")
    parser.add_argument("--followers", type=int, default=500, help="idle SSE followers (500)")
    parser.add_argument("--records", type=int, default=20_000, help="records caught up (20,000)")
    parser.add_argument(
        "--against", action="append", default=[], help="an earlier commit measured beside it"
    )
    args = parser.parse_args(argv)
    package_dir = installed("@durable-streams/server")
    results: dict[str, dict[str, list[float]]] = {"Recordline": {}, "reference": {}}
    floors: list[float] = []  # KiB per idle SSE follower of bench/floor.py
    with tempfile.TemporaryDirectory() as tmp:
        sources: dict[str, Path] = {}
        for ref in args.against:
            name, source = reference_design(ref, Path(tmp))
            sources[name.split(" ", 1)[0]] = source
            results[name.split(" ", 1)[0]] = {}
        names = list(results)
        for round_ in range(args.rounds):
            # Each first in turn.
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                database = Path(tmp) / f"{name}{round_}.duckdb"
                data_dir = Path(tmp) / f"ref{round_}"
                # Each round a fresh server, seeded, measured, restarted, read again.
                fresh = (
                    reference(package_dir)
                    if name == "reference"
                    else recordline(database, source=sources.get(name))
                )
                with fresh as target:
                    target.figures = results[name]
                    asyncio.run(seed(target, args.records))
                    asyncio.run(round_on(target, args))
                if name == "reference":
                    # Its rows outlive a restart only file-backed: seeded there, in
                    # arrays of 100 (its file mode syncs each write, 867 a second).
                    with reference(package_dir, data_dir) as target:
                        asyncio.run(seed(target, args.records, batch=100))
                again = (
                    reference(package_dir, data_dir)
                    if name == "reference"
                    else recordline(database, source=sources.get(name))
                )
                with again as target:
                    # The first read after the restart: Recordline read its records of
                    # the last minute from storage into its tail as it started, and
                    # reads any older from storage now.
                    results[name].setdefault("restarted", []).append(asyncio.run(catch_up(target)))
                print(f"round {round_ + 1} {name}: done", file=sys.stderr)
            floors.append(asyncio.run(floor_memory(args.followers)))
    rows = []
    measures = [
        ("SSE, acknowledged → event, p99", "sse_p99", "ms", True),
        ("SSE, acknowledged → event, p50", "sse_p50", "ms", True),
        ("SSE, write sent → event, p99", "sse_sent_p99", "ms", True),
        ("long-poll, acknowledged → answer, p99", "poll_p99", "ms", True),
        ("long-poll, write sent → answer, p99", "poll_sent_p99", "ms", True),
        (f"memory per idle SSE follower ({args.followers})", "memory", "KiB", True),
        (f"one write woken to {args.followers} idle SSE followers, p99", "wake_p99", "ms", True),
        ("the same, from the write sent, p99", "wake_sent_p99", "ms", True),
        ("that write's acknowledgement, from sent", "wake_ack", "ms", True),
        (f"catch-up of {args.records:,} records, records/s", "catch_up", "/s", False),
        ("the same, the first reader's", "catch_up_first", "/s", False),
        ("the same, the first read after a restart", "restarted", "/s", False),
    ]
    others = [name for name in results if name != "Recordline"]

    def shown(value: float, unit: str) -> str:
        if unit == "ms":
            return f"{value * 1000:,.2f} ms"
        return f"{value:,.1f} KiB" if unit == "KiB" else f"{value:,.0f}"

    for label, key, unit, lower_is_better in measures:
        ours = statistics.median(results["Recordline"][key])
        cells, ratios = [shown(ours, unit)], []
        for other in others:
            theirs = statistics.median(results[other][key])
            # Above 1: Recordline ahead (less time or memory, more records a second).
            cells.append(shown(theirs, unit))
            if lower_is_better and not ours:
                # 0 ms from the acknowledgement: the event came first every time.
                ratios.append("∞")
            else:
                ratios.append(quotient(theirs, ours) if lower_is_better else quotient(ours, theirs))
        rows.append([label, *cells, *ratios])
    floor_kib = statistics.median(floors)
    theirs = statistics.median(results["reference"]["memory"])
    after_memory = next(n for n, row in enumerate(rows) if row[0].startswith("memory")) + 1
    rows.insert(
        after_memory,
        [
            "  the floor: an ASGI app that holds them and nothing else",
            f"{floor_kib:,.1f} KiB",
            f"{theirs:,.1f} KiB",
            *[""] * (len(others) - 1),
            quotient(theirs, floor_kib),
            *[""] * (len(others) - 1),
        ],
    )
    print(
        f"\nRecordline (DuckDB) beside the Durable Streams reference server, {args.rounds} "
        "alternating rounds, medians; ratio above 1: Recordline ahead\n"
    )
    head = ["measure", "Recordline", *others, *[f"Recordline / {other}" for other in others]]
    print(table([head, *rows]))
    return 0

"""One system of a cell flooded, in alternating slices, while the others push and read.

A cell of three systems on DuckDB files (`recordline serve`, a process of its own):
alpha is flooded in every other slice, beta and gamma push and read one request at a
time throughout, and their answer times are kept by slice. The flood, from a process
of its own so that its client's work is not the measurers':
- a burst of ten times alpha's queue in bodies of 128 KiB (a refused push is delivered
  again by Pub/Sub after 10 s at the least, past the slice);
- 24 followers at the tail, of every live mode (a waiting page, pages as events, a
  stream's long-poll, a stream's SSE), none reading what it is sent;
- 50 exports whose clients take nothing;
- 4 readers declaring bodies of 14 MiB and sending none;
each a slice's, held until it ends (a refused one would ask again after its Retry-After,
past the slice), and readers whose receive buffers are 4 KiB.

What it measures: beta's and gamma's push and read p99 in the slices with the flood
and without it (the same run, the machine's drift on both alike); every answer alpha
got, and whether each refusal said when to retry; the server's resident memory at
its most. `bench cell --flood` prints it; tests/cell/test_shares.py holds it to the
promise of docs/cells.md#admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx

from bench.harness import free_port, percentile, rss_kb
from recordline_dev.processes import terminate

RECORDLINE = str(Path(sys.executable).with_name("recordline"))
SYSTEMS = ("alpha", "beta", "gamma")
FLOODED = "alpha"
QUIET = ("beta", "gamma")
# What the cell's process holds for requests in flight (RECORDLINE_MEMORY_BUDGET_BYTES):
# small, so that the flood reaches it.
BUDGET = 128 * 1024 * 1024
# Alpha's queue (its entry's `queue_bytes`): the flood is ten times this.
QUEUE = 1024 * 1024
BODY = 128 * 1024
FOLLOWERS_EACH_MODE = 6
EXPORTS = 50
DECLARING = 4
DECLARED = 14_680_064
# Rows alpha holds before the flood, for its followers and exports to be sent.
ALPHA_ROWS = 24
ALPHA_ROW_BYTES = 96 * 1024
# The quiet systems' requests: one at a time, this far apart.
PACE_SECONDS = 0.02
# Followers at the tail, each way (the exports are the readers far behind).
LIVE = {
    "a waiting page": ("/v1/records?since=2099-01-01T00:00:00Z&wait=30", ""),
    "pages as events": ("/v1/records?since=2099-01-01T00:00:00Z", "text/event-stream"),
    "a long-poll": ("/v1/streams/records?offset=now&live=long-poll", ""),
    "a stream's SSE": ("/v1/streams/records?offset=now&live=sse", ""),
}


def envelope(message_id: str, data: bytes) -> bytes:
    import base64

    return json.dumps(
        {
            "message": {
                "data": base64.b64encode(data).decode(),
                "messageId": message_id,
                "publishTime": "2024-04-27T12:00:01Z",
            },
            "subscription": "projects/p/subscriptions/s",
        }
    ).encode()


def record(message_id: str, size: int) -> bytes:
    return envelope(message_id, json.dumps({"id": message_id, "data": "x" * size}).encode())


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return rss_kb(self.process.pid) * 1024


@contextlib.contextmanager
def serving(folder: Path, *, in_cell: bool) -> Iterator[Served]:
    """The three systems' cell, or a deployment of one, served until done."""
    systems: dict[str, dict[str, Any]] = {
        name: {"store": f"duckdb://{folder / name}.duckdb"} for name in SYSTEMS
    }
    systems[FLOODED]["queue_bytes"] = QUEUE
    port = free_port()
    env = {
        **os.environ,
        "RECORDLINE_MEMORY_BUDGET_BYTES": str(BUDGET),
        "RECORDLINE_LOG_LEVEL": "ERROR",
    }
    if in_cell:
        env |= {"RECORDLINE_CELL": "flood", "RECORDLINE_SYSTEMS": json.dumps(systems)}
    else:
        env |= {"RECORDLINE_STORE": f"duckdb://{folder}/one.duckdb"}
    process = subprocess.Popen(
        [RECORDLINE, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    served = Served(process, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"{served.url}/readyz", timeout=2)
                if ready.status_code == 200 and not ready.json().get("not_ready"):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the service did not start")
            time.sleep(0.1)
        with httpx.Client(base_url=served.url, timeout=30) as client:
            for n in range(ALPHA_ROWS):
                body = record(f"alpha-row-{n}", ALPHA_ROW_BYTES)
                answer = client.post(
                    f"{_prefix(FLOODED, in_cell)}/pubsub/push",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                if answer.status_code != 204:
                    raise RuntimeError(f"alpha's rows: {answer.status_code} {answer.text}")
        yield served
    finally:
        terminate(process, timeout=15)


def _prefix(system: str, in_cell: bool) -> str:
    """Where a system's paths are: under the cell's `/systems/{system}`, or at the root."""
    return f"/systems/{system}" if in_cell else ""


# The flood, in a process of its own.


@dataclass
class Answer:
    """What the flood was answered: the status, whether it said when to retry, and the
    problem's type (for a refusal)."""

    kind: str
    status: int
    retry_after: bool
    problem: str


def _head(data: bytes) -> tuple[int, bool, str]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    lowered = head.lower()
    problem = ""
    if b"/problems/" in body:
        problem = body.split(b"/problems/", 1)[1].split(b'"', 1)[0].decode()
    return status, b"\nretry-after:" in lowered, problem


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


class _Flood:
    def __init__(self, port: int, on: EventType, stop: EventType, in_cell: bool) -> None:
        self.port = port
        # Where alpha's paths are; in a deployment of one the readers are the flood alone.
        self.prefix = _prefix(FLOODED, in_cell)
        self.in_cell = in_cell
        self.on = on
        self.stop = stop
        self.answers: list[Answer] = []
        self.bodies = [record(f"flood-{n}", BODY * 3 // 4 - 100) for n in range(10 * QUEUE // BODY)]

    async def _ask(self, kind: str, head: bytes, body: bytes = b"") -> tuple[int, Any]:
        """Send a request on a connection whose client takes what it is sent slowly (a
        receive buffer of 4 KiB); its status, and the connection (open, for a 200)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        kept = None
        try:
            writer.write(head + body)
            data = b""
            while b"\r\n\r\n" not in data:
                more = await reader.read(65536)
                if not more:
                    break
                data += more
            status, said, _ = _head(data)
            if status >= 300:
                head, _, body = data.partition(b"\r\n\r\n")
                length = _length(head)
                with contextlib.suppress(ConnectionError, TimeoutError):
                    async with asyncio.timeout(2):
                        while len(body) < length and (more := await reader.read(65536)):
                            body += more
                status, said, problem = _head(head + b"\r\n\r\n" + body)
                self.answers.append(Answer(kind, status, said, problem))
                return status, None
            self.answers.append(Answer(kind, status, said, ""))
            if status == 200 and kind != "push":
                kept = writer
            return status, kept
        except ConnectionError:
            self.answers.append(Answer(kind, 0, False, "connection"))
            return 0, None
        finally:
            if kept is None:
                writer.transport.abort()

    async def push(self, body: bytes) -> None:
        """One delivery of a burst: refused, it is delivered again by Pub/Sub after 10 s
        at the least (a subscription's retry policy), past the slice."""
        head = (
            f"POST {self.prefix}/pubsub/push HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        await self._ask("push", head, body)

    async def hold(self, kind: str, path: str, accept: str = "", extra: str = "") -> None:
        """A reader that takes nothing of what it is sent, held until the slice ends;
        refused, it would ask again after its Retry-After (5 s), past the slice."""
        head = f"GET {self.prefix}{path} HTTP/1.1\r\nHost: localhost\r\n"
        if accept:
            head += f"Accept: {accept}\r\n"
        head += extra + "\r\n"
        _, writer = await self._ask(kind, head.encode())
        if writer is not None:
            try:
                while self.on.is_set() and not self.stop.is_set():
                    await asyncio.sleep(0.05)
            finally:
                writer.transport.abort()

    async def slice(self) -> None:
        """One flooded slice: every client at once, all ended as the slice ends."""
        every = "push,follow,export,declare" if self.in_cell else "follow,export,declare"
        parts = os.environ.get("FLOOD_PARTS", every).split(",")
        tasks = [self.push(body) for body in self.bodies] if "push" in parts else []
        for mode, (path, accept) in LIVE.items():
            if "follow" in parts:
                tasks += [self.hold(mode, path, accept) for _ in range(FOLLOWERS_EACH_MODE)]
        if "export" in parts:
            tasks += [
                self.hold("export", "/v1/export/records?format=jsonl") for _ in range(EXPORTS)
            ]
        declaring = f"Content-Length: {DECLARED}\r\n"
        if "declare" in parts:
            tasks += [
                self.hold(
                    "declaring a body",
                    "/v1/records?since=2099-01-01T00:00:00Z",
                    "text/event-stream",
                    declaring,
                )
                for _ in range(DECLARING)
            ]
        running = [asyncio.ensure_future(task) for task in tasks]
        while self.on.is_set() and not self.stop.is_set():
            await asyncio.sleep(0.05)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def run(self) -> None:
        while not self.stop.is_set():
            if self.on.is_set():
                await self.slice()
            await asyncio.sleep(0.02)


def _flood(port: int, on: EventType, stop: EventType, out: Any, in_cell: bool) -> None:
    # The flood's own work is the client's, not the server's: on a busy machine it
    # yields the cores to the server and to the measured systems' client.
    os.nice(19)
    flood = _Flood(port, on, stop, in_cell)
    asyncio.run(flood.run())
    out.put([(a.kind, a.status, a.retry_after, a.problem) for a in flood.answers])


# The quiet systems, measured.


@dataclass
class Took:
    """The answer times of each quiet system's pushes and reads, by slice kind."""

    seconds: dict[tuple[str, str, bool], list[float]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def add(self, system: str, what: str, flooded: bool, seconds: float) -> None:
        self.seconds.setdefault((system, what, flooded), []).append(seconds)

    def p99(self, system: str, what: str, flooded: bool) -> float:
        return percentile(self.seconds[system, what, flooded], 0.99)


# What the slice is, for the measuring process: between two (not counted), unflooded,
# flooded.
BETWEEN, UNFLOODED, FLOODED_SLICE = -1, 0, 1


async def _measure(url: str, took: Took, kind_now: Any, done: EventType, in_cell: bool) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def system(name: str) -> None:
            # In a deployment of one, beta and gamma are two other clients of its one.
            prefix = _prefix(name, in_cell)
            n = 0
            while not done.is_set():
                n += 1
                kind = kind_now.value
                body = envelope(f"{name}-{n}", json.dumps({"id": f"{name}-{n}", "n": n}).encode())
                began = time.perf_counter()
                pushed = await client.post(
                    f"{prefix}/pubsub/push",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                if kind != BETWEEN and kind == kind_now.value:
                    took.add(name, "push", kind == FLOODED_SLICE, time.perf_counter() - began)
                if pushed.status_code != 204:
                    took.failed.append(f"{name} push {pushed.status_code}: {pushed.text[:200]}")
                began = time.perf_counter()
                read = await client.get(f"{prefix}/v1/records", params={"limit": 10})
                if kind != BETWEEN and kind == kind_now.value:
                    took.add(name, "read", kind == FLOODED_SLICE, time.perf_counter() - began)
                if read.status_code != 200:
                    took.failed.append(f"{name} read {read.status_code}: {read.text[:200]}")
                await asyncio.sleep(PACE_SECONDS)

        await asyncio.gather(*(system(name) for name in QUIET))


def _measuring(url: str, kind_now: Any, done: EventType, out: Any, in_cell: bool) -> None:
    """The quiet systems' clients, in a process of their own: a fresh one, whose times
    are the service's, not those of the process that started it (a test run's heap)."""
    took = Took()
    asyncio.run(_measure(url, took, kind_now, done, in_cell))
    out.put((took.seconds, took.failed))


@dataclass
class Result:
    took: Took
    answers: list[Answer]
    base_rss: int
    peak_rss: int

    def ratio(self, system: str, what: str) -> float:
        return self.took.p99(system, what, True) / self.took.p99(system, what, False)

    def lines(self) -> list[str]:
        said = []
        for system in QUIET:
            for what in ("push", "read"):
                quiet = self.took.p99(system, what, False)
                loud = self.took.p99(system, what, True)
                said.append(
                    f"{system} {what}: p99 {quiet * 1000:.1f} ms unflooded, "
                    f"{loud * 1000:.1f} ms with {FLOODED} flooded ({loud / quiet:.2f}x; "
                    f"{len(self.took.seconds[system, what, True])} and "
                    f"{len(self.took.seconds[system, what, False])} requests)"
                )
        counts: dict[tuple[str, int], int] = {}
        for a in self.answers:
            counts[a.kind, a.status] = counts.get((a.kind, a.status), 0) + 1
        said.append(
            f"{FLOODED}'s answers: "
            + ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(counts.items()))
        )
        grown = (self.peak_rss - self.base_rss) / 2**20
        said.append(f"the server's RSS grew {grown:.0f} MiB at its most")
        return said


def run(slices: int = 6, seconds: float = 2.0, *, in_cell: bool = True) -> Result:
    """A cell, its quiet systems measured in `slices` of `seconds` each, alpha flooded in
    every other one; or (not `in_cell`) a deployment of one, two clients of it measured
    while the flood's readers read it."""
    context = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as folder,
        serving(Path(folder), in_cell=in_cell) as served,
    ):
        on, stop = context.Event(), context.Event()
        out = context.Queue()
        flooding = context.Process(
            target=_flood, args=(served.port, on, stop, out, in_cell), daemon=True
        )
        flooding.start()
        base = served.rss()
        peak = [base]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.02):
                peak[0] = max(peak[0], served.rss())

        sampler = threading.Thread(target=sample)
        sampler.start()
        kind_now = context.Value("i", BETWEEN)
        done = context.Event()
        measured = context.Queue()
        measuring = context.Process(
            target=_measuring, args=(served.url, kind_now, done, measured, in_cell), daemon=True
        )
        measuring.start()
        took = Took()
        try:
            time.sleep(1.0)  # the measuring clients' first requests: not counted
            for n in range(slices):
                loud = n % 2 == 1
                if loud:
                    on.set()
                else:
                    on.clear()
                # A slice's first moments are the change's own: not counted.
                kind_now.value = BETWEEN
                time.sleep(0.2)
                kind_now.value = FLOODED_SLICE if loud else UNFLOODED
                time.sleep(seconds)
            kind_now.value = BETWEEN
            done.set()
            on.clear()
            took.seconds, took.failed = measured.get(timeout=60)
            measuring.join(timeout=30)
        finally:
            done.set()
            stop.set()
            on.clear()
            answers = [Answer(*a) for a in out.get(timeout=60)]
            flooding.join(timeout=30)
            sampling.set()
            sampler.join()
    return Result(took, answers, base, peak[0])


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="bench cell --flood")
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--slice-seconds", type=float, default=2.0)
    parser.add_argument(
        "--one", action="store_true", help="a deployment of one system, its readers the flood"
    )
    args = parser.parse_args(argv)
    result = run(args.slices, args.slice_seconds, in_cell=not args.one)
    print("\n".join(result.lines()))
    for failure in result.took.failed[:5]:
        print("failed:", failure)
    ratios = [result.ratio(s, w) for s in QUIET for w in ("push", "read")]
    print(
        f"worst flooded/unflooded p99: {max(ratios):.2f} (median {statistics.median(ratios):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

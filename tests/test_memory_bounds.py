"""What readers make a real `recordline serve` hold is bounded in bytes, and let go.

The largest record the service accepts is the unit: a page (`limit=1000`) of
40 records of 4 MB once answered 168 MB and kept it (a 64-page cache of
encodings: 4.25 GB after six pages), and four SSE followers that never read once
held 3.6 GB past their cut-off. Here, against the process as it is deployed on a DuckDB file, a
page holds at most its byte budget or one record, a follower that takes nothing
holds one event until it is cut off at the send deadline, and what either held
is given back to the system once they are done: RSS, read from /proc.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.ingest.envelope import MAX_DATA_BYTES
from app.query.events import ENCODED_BYTES
from app.query.service import PAGE_BYTES
from app.query.streams import CHUNK_BYTES
from app.routes.follow import SSE_EVENT_BYTES
from app.settings import ServerSettings
from app.store import ROW_BYTES
from recordline_dev.processes import free_port
from tests.waiting import until_blocking

RECORDLINE = str(Path(sys.executable).with_name("recordline"))
MIB = 1024 * 1024
RECORDS = 40
REJECTIONS = 8
PAYLOAD = 4 * MIB
# What a follower that takes nothing may wait (RECORDLINE_SEND_TIMEOUT_SECONDS): short,
# so that the test sees the cut-off.
SEND_TIMEOUT = 5.0
# What the process may hold more than before, while answering and once done. A read
# of DuckDB near these records holds what DuckDB reads with them for a moment (it
# reads a column 2,048 rows at a time, here all 40 records: ~170 MB), then returns it.
WHILE_ANSWERING_KIB = 300 * 1024
ONCE_DONE_KIB = 100 * 1024
# Connections the service keeps: few, so that the process's bound is small enough to
# reach (docs/security.md#memory-bound).
CONNECTIONS = 12
# A read of DuckDB holds what the 2,048-row vectors it scans hold, for a moment: here
# at most every row stored, and four reads at once (its reader threads).
DUCKDB_READS = 4 * (RECORDS + REJECTIONS) * PAYLOAD * 4 // 3


def per_connection(server: ServerSettings) -> int:
    """What one connection may make the process hold (docs/security.md#memory-bound):
    heads, and the larger of a push with what it decodes to and an answer made three
    times over, of a chunk's budget or the largest row (a rejection, in base 64)."""
    largest = (MAX_DATA_BYTES + 2) // 3 * 4 + ROW_BYTES
    push = server.max_body_bytes + 2 * MAX_DATA_BYTES
    answer = 3 * max(CHUNK_BYTES, largest)
    return 2 * server.max_header_bytes + 256 * 1024 + max(push, answer)


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cut_off(self) -> float:
        """Connections cut off for taking nothing (`recordline.connections.refused`)."""
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith("recordline_connections_refused_total{") and (
                'reason="send-timeout"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def settled(self, base: int, what: str) -> None:
        """Wait until the process holds at most ONCE_DONE_KIB more than `base`."""
        until_blocking(
            lambda: self.rss_kib() - base < ONCE_DONE_KIB,
            timeout=15,
            interval=0.1,
            what=lambda: (
                f"{what}: RSS back within {ONCE_DONE_KIB} KiB of "
                f"{base} KiB (it is {self.rss_kib()} KiB)"
            ),
        )


def envelope(message_id: str, data: bytes) -> dict[str, object]:
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "messageId": message_id,
            "publishTime": "2024-04-27T12:00:01Z",
        },
        "subscription": "projects/p/subscriptions/s",
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A service on a DuckDB file holding RECORDS records and REJECTIONS rejections of
    PAYLOAD bytes each, the largest the tests need."""
    port = free_port()
    store = tmp_path_factory.mktemp("memory") / "records.duckdb"
    process = subprocess.Popen(
        [RECORDLINE, "serve", "--port", str(port), "--store", f"duckdb://{store}"],
        env={
            **os.environ,
            "RECORDLINE_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT),
            "RECORDLINE_MAX_CONNECTIONS": str(CONNECTIONS),
            "RECORDLINE_LOG_LEVEL": "ERROR",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    served = Served(process, port)
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        until_blocking(ready, timeout=60, what="recordline serve to answer")
        with httpx.Client(base_url=served.url, timeout=60) as client:
            text = "x" * PAYLOAD
            for n in range(RECORDS):
                record = json.dumps({"id": f"big-{n}", "data": text}).encode()
                answer = client.post("/pubsub/push", json=envelope(f"big-{n}", record))
                assert answer.status_code == 204, answer.text
            for n in range(REJECTIONS):
                # Not JSON: kept as a rejection, its bytes shown as base 64.
                answer = client.post("/pubsub/push", json=envelope(f"bad-{n}", b"\xff" * PAYLOAD))
                assert answer.status_code == 204, answer.text
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_pages_of_the_largest_records_hold_their_budget_and_let_it_go(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        base = served.rss_kib()
        for _ in range(6):
            page = client.get("/v1/records?limit=1000", headers={"accept-encoding": "identity"})
            grown = served.rss_kib() - base
            assert grown < WHILE_ANSWERING_KIB, f"grew {grown} KiB answering a page"
            assert page.status_code == 200
            # One record of 4 MB is more than the budget: it is read alone.
            assert len(page.json()["records"]) == 1
            assert len(page.content) < PAGE_BYTES + PAYLOAD
        # Every record once, in order, each page resuming after the last row it held.
        seen: list[str] = []
        token = None
        while True:
            params = {"limit": "1000", **({"page_token": token} if token else {})}
            page = client.get("/v1/records", params=params).json()
            if not page["records"]:
                break
            seen += [r["message_id"] for r in page["records"]]
            token = page["next_page_token"]
        assert seen == [f"big-{n}" for n in range(RECORDS)]
    served.settled(base, "after the pages")


def test_a_page_of_smaller_records_holds_as_many_as_its_budget_takes(served: Served) -> None:
    # Two rejections of 4 MB shown as base 64 (5.6 MB each) are more than a page holds.
    with httpx.Client(base_url=served.url, timeout=60) as client:
        page = client.get("/v1/rejections?limit=1000").json()
        assert [r["message_id"] for r in page["rejections"]] == ["bad-0"]
        then = client.get("/v1/rejections", params={"page_token": page["next_page_token"]})
        assert [r["message_id"] for r in then.json()["rejections"]] == ["bad-1"]


def test_an_answer_its_client_never_reads_is_cut_off_at_the_send_timeout(
    served: Served,
) -> None:
    # A rejection of 4 MB is 5.6 MB of JSON: more than the kernel's buffers take for a
    # client that reads nothing, so the rest waits in the connection, and is dropped.
    cut_before = served.cut_off()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", served.port))
    opened = time.monotonic()
    sock.sendall(b"GET /v1/rejections?limit=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    until_blocking(
        lambda: served.cut_off() > cut_before,
        timeout=SEND_TIMEOUT + 15,
        interval=0.1,
        what="an answer never read to be cut off",
    )
    assert time.monotonic() - opened > SEND_TIMEOUT
    sock.close()


FOLLOWED = {
    "records, as pages": ("/v1/records?limit=1000", {"accept": "text/event-stream"}),
    "rejections, as pages": ("/v1/rejections?limit=1000", {"accept": "text/event-stream"}),
    "records, as a stream": ("/v1/streams/records?offset=-1&live=sse", {}),
    "rejections, as a stream": ("/v1/streams/rejections?offset=-1&live=sse", {}),
}


@pytest.mark.parametrize("name", list(FOLLOWED))
def test_followers_that_never_read_hold_an_event_each_and_are_cut_off(
    served: Served, name: str
) -> None:
    # Once, four of them held 3.6 GB, and kept it past their cut-off.
    path, headers = FOLLOWED[name]
    assert httpx.get(f"{served.url}/healthz").status_code == 200
    base = served.rss_kib()
    cut_before = served.cut_off()
    opened = time.monotonic()
    followers = []
    for _ in range(4):
        # Taking nothing: the kernel's buffers fill, then the connection's.
        sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        head = [f"GET {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        followers.append(sock)
    # Their first reads done, each holds one event of at most 1 MiB or one row (4 MB):
    # not a page of every record, not every event since.
    served.settled(base, f"four followers of {path} holding an event each")
    assert SSE_EVENT_BYTES < PAYLOAD
    # Cut off once they have taken nothing for the send timeout, and closed.
    until_blocking(
        lambda: served.cut_off() >= cut_before + 4,
        timeout=SEND_TIMEOUT + 15,
        interval=0.1,
        what="four followers that took nothing to be cut off",
    )
    assert time.monotonic() - opened > SEND_TIMEOUT
    for sock in followers:
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):  # what the kernel held for it, then the end
                pass
        sock.close()
    served.settled(base, f"four followers of {path} cut off")


def test_every_connection_at_its_worst_at_once_stays_within_the_bound_and_pushes_go_on(
    served: Served,
) -> None:
    # Readers on every connection they may take (RECORDLINE_PUSH_RESERVE leaves two of
    # twelve to pushes), each holding what it can: followers and answers never read,
    # and a flood of pipelined requests; two pushes of Pub/Sub's largest message
    # meanwhile, answered as ever.
    assert httpx.get(f"{served.url}/healthz").status_code == 200
    base = served.rss_kib() * 1024
    bound = CONNECTIONS * per_connection(ServerSettings()) + ENCODED_BYTES + DUCKDB_READS
    cut_before = served.cut_off()
    asked = [*FOLLOWED.values(), *FOLLOWED.values(), *[("/v1/rejections?limit=1000", {})] * 2]
    with Peak(served) as peak:
        readers = []
        for path, headers in asked:
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
            head = [f"GET {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            readers.append(sock)
        pipelined = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        with contextlib.suppress(OSError):  # the server closes it once it has seen enough
            pipelined.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 300_000)
        largest = json.dumps({"id": "largest", "data": "x" * (MAX_DATA_BYTES - 100)}).encode()
        with httpx.Client(base_url=served.url, timeout=60) as client:
            for n in range(2):
                answer = client.post("/pubsub/push", json=envelope(f"largest-{n}", largest))
                assert answer.status_code == 204, answer.text
        # What the readers hold, they hold until they are cut off.
        until_blocking(
            lambda: served.cut_off() > cut_before,
            timeout=SEND_TIMEOUT + 15,
            interval=0.1,
            what="the readers that took nothing to be cut off",
        )
    assert peak.most - base < bound, f"grew {(peak.most - base) >> 20} MiB of {bound >> 20}"
    for sock in [*readers, pipelined]:
        sock.close()
    served.settled(base // 1024, "every connection at its worst, then gone")


class Peak:
    """The most RSS the process reached while inside, read every 10 ms."""

    def __init__(self, served: Served) -> None:
        self._served = served
        self.most = served.rss_kib() * 1024
        self._done = threading.Event()
        self._reading = threading.Thread(target=self._read)

    def _read(self) -> None:
        while not self._done.wait(0.01):
            self.most = max(self.most, self._served.rss_kib() * 1024)

    def __enter__(self) -> Peak:
        self._reading.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._reading.join()

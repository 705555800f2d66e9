"""What a connection may cost before any route runs is bounded, in a real `recordline serve`.

Headers are read before any guard: without bounds, a few connections sending
headers without end grew the process by gigabytes, and a connection that sent
half a request head was held forever. Each bound is tried here as an attacker
would, over loopback sockets, against the process as it is deployed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.http_limits import RequestHeads
from recordline_dev.processes import free_port
from tests.waiting import until_blocking

RECORDLINE = str(Path(sys.executable).with_name("recordline"))
HEADER_TIMEOUT = 1.0
HALF_OPEN = 2000


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

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@contextlib.contextmanager
def serve(**env: str) -> Iterator[Served]:
    port = free_port()
    process = subprocess.Popen(
        [RECORDLINE, "serve", "--port", str(port), "--store", "memory:"],
        env={
            **os.environ,
            "RECORDLINE_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "RECORDLINE_LOG_LEVEL": "WARNING",
            **env,
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
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def response(sock: socket.socket) -> bytes:
    """One whole response (head and `Content-Length` body) read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (EOF or reset) and sent nothing else."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_a_megabyte_of_headers_is_refused_and_costs_no_memory() -> None:
    with serve() as served:
        # A first request of each kind warms the process: what is measured after is growth.
        assert httpx.get(f"{served.url}/healthz").status_code == 200
        before = served.rss_kib()
        for _ in range(4):
            sock = served.connect()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            head = b"X-Pad: " + b"a" * 1000 + b"\r\n"
            answer = b""
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(1024):  # 1 MB of headers, never ended
                    sock.sendall(head)
            with contextlib.suppress(ConnectionResetError):
                answer = sock.recv(4096)
            sock.close()
            # Refused once past the bound, with a status, never served.
            assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
        grown = served.rss_kib() - before
        assert grown < 10 * 1024, f"grew {grown} KiB"
        assert httpx.get(f"{served.url}/healthz").status_code == 200


def test_a_head_just_under_the_bound_is_served() -> None:
    # An unwrapped push with Pub/Sub's 100 attributes of its largest sizes: ~130 KB.
    with serve() as served:
        headers = {f"a{n}": "v" * 1024 for n in range(100)}
        assert httpx.get(f"{served.url}/healthz", headers=headers).status_code == 200


@pytest.fixture
def many_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, HALF_OPEN * 3)
    if wanted < HALF_OPEN + 200:
        pytest.skip(f"the open-file limit ({hard}) is below {HALF_OPEN + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("many_files")
def test_half_open_connections_are_closed_within_the_header_timeout() -> None:
    # The server inherits the raised limit, so that it is the bound, not its
    # file descriptors, that ends them.
    with serve(RECORDLINE_MAX_CONNECTIONS=str(HALF_OPEN * 2)) as served:
        socks = []
        opened = time.monotonic()
        for n in range(HALF_OPEN):
            sock = served.connect()
            # Half of them send part of a head and stop; half send nothing at all.
            if n % 2:
                sock.sendall(b"POST /pubsub/push HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(sock)
        for sock in socks:
            sock.settimeout(max(HEADER_TIMEOUT * 3 - (time.monotonic() - opened), 0.1) + 5)
            assert closed_by_server(sock)
            sock.close()
        elapsed = time.monotonic() - opened
        # Each closed within the timeout of its own opening, give or take the
        # time to open 2,000 connections on a loaded machine.
        assert elapsed < HEADER_TIMEOUT * 3 + 10, elapsed
        assert httpx.get(f"{served.url}/healthz").status_code == 200


def test_a_head_begun_after_a_request_is_held_to_the_deadline_too() -> None:
    with serve() as served:
        sock = served.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response(sock).startswith(b"HTTP/1.1 200")
        # The second request's head begins and never ends. The deadline runs from
        # its first byte, so more bytes now and then would not extend it.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: a")
        started = time.monotonic()
        sock.settimeout(HEADER_TIMEOUT + 10)
        assert closed_by_server(sock)
        assert time.monotonic() - started < HEADER_TIMEOUT + 5


def test_past_the_connection_bound_a_request_is_503() -> None:
    with serve(RECORDLINE_MAX_CONNECTIONS="4", RECORDLINE_HEADER_TIMEOUT_SECONDS="30") as served:
        held = [served.connect() for _ in range(4)]
        try:
            answer = httpx.get(f"{served.url}/healthz")
            assert answer.status_code == 503
        finally:
            for sock in held:
                sock.close()
        until_blocking(
            lambda: httpx.get(f"{served.url}/healthz").status_code == 200,
            what="a request once the held connections closed",
        )


def test_request_heads_are_followed_across_requests_bodies_and_pipelining() -> None:
    heads = RequestHeads(64 * 1024)
    assert not heads.waiting
    heads.feed(b"POST /p HTTP/1.1\r\nHost: x\r\n")
    assert heads.waiting
    heads.feed(b"Content-Length: 5\r\n\r\nab")
    assert not heads.waiting  # the body is not the head
    heads.feed(b"cde")
    assert not heads.waiting  # between requests: idle, the keep-alive's to bound
    # A whole request and the start of the next in one read: the next is waited on.
    heads.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HT")
    assert heads.waiting
    heads.feed(b"TP/1.1\r\nHost: x\r\n\r\n")
    assert not heads.waiting
    # Chunked bodies end where their framing says.
    heads.feed(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert not heads.waiting
    heads.feed(b"0\r\n\r\nGET")
    assert heads.waiting
    assert not heads.too_large


@pytest.mark.parametrize(
    "head",
    [
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n",  # the request line alone
        b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % n for n in range(300)),
    ],
    ids=["request line", "one header", "too many headers"],
)
def test_a_head_past_either_bound_is_too_large(head: bytes) -> None:
    heads = RequestHeads(64 * 1024)
    for start in range(0, len(head), 1000):  # as a slow client would send it
        heads.feed(head[start : start + 1000])
    assert heads.too_large

"""What a connection may cost is bounded, in a real `recordline serve`, whatever came before it.

Every byte of a request (line, headers, body, trailers) is read before any
route or guard runs: without bounds, a few connections sending headers without
end grew the process by gigabytes, an upgrade or a head that came in one read
stepped around the bound on heads, a trailer became a header, and connections
that sent a byte now and then, or did nothing, took every push's room. Each
bound is tried here as an attacker would, over loopback sockets, against the
process as it is deployed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.http.limits import MAX_HEADERS, MAX_PIPELINED
from recordline_dev.processes import free_port
from tests import tuned
from tests.fuzz.budget import EXAMPLES
from tests.waiting import until_blocking

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
# Small, so that a head over it fits in one socket read (256 KiB).
HEAD_BYTES = 16 * 1024
TOKEN = "a1b2c3d4e5f6a7b8c9d0"
MIB = 1024 * 1024
# What the process may grow by while refusing 64 MiB.
GROWTH_KIB = 10 * 1024


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
def serve(server: dict[str, float] | None = None, **env: str) -> Iterator[Served]:
    """`recordline serve` with `env`, and its server's bounds of `server` (field → value:
    constants in the service) in place of its own, the head's time HEADER_TIMEOUT."""
    port = free_port()
    bounds = {"header_timeout_seconds": HEADER_TIMEOUT, **(server or {})}
    process = subprocess.Popen(
        tuned.argv({"server": bounds}, "--port", str(port), "--store", "memory:"),
        env={**os.environ, "RECORDLINE_LOG_LEVEL": "WARNING", **env},
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


@pytest.fixture(scope="module")
def small() -> Iterator[Served]:
    """A service with small bounds, so that trying them is quick; pushes need the token."""
    with serve(
        {"body_timeout_seconds": BODY_TIMEOUT, "max_header_bytes": HEAD_BYTES},
        RECORDLINE_PUSH_TOKEN=TOKEN,
    ) as served:
        yield served


def content_length(head: bytes) -> int:
    """A response head's `Content-Length` (0 without one: a 204)."""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def response(sock: socket.socket) -> bytes:
    """One whole response (head and `Content-Length` body) read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = content_length(head)
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def everything(sock: socket.socket, seconds: float = 10) -> bytes:
    """What `sock` reads until the server closes it (within `seconds`, or the test fails)."""
    sock.settimeout(seconds)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def statuses(answers: bytes) -> list[int]:
    """The status of each response in `answers`, one after the other."""
    found = []
    while answers.startswith(b"HTTP/1.1 "):
        head, _, rest = answers.partition(b"\r\n\r\n")
        found.append(int(head.split(b" ", 2)[1]))
        answers = rest[content_length(head) :]
    assert answers == b"", answers[:200]
    return found


def problem(answer: bytes) -> dict[str, object]:
    """The problem document of `answer`, which no cache may keep: an error is this
    request's answer (the server's own, before any route, as the routes' are)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\ncache-control: no-store" in head.lower(), head
    document = json.loads(body)
    assert isinstance(document, dict)
    return document


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (EOF or reset) and sent nothing else."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def flood(sock: socket.socket, first: bytes, filler: bytes, size: int) -> bytes:
    """Send `first`, then `size` bytes of `filler` until the server stops reading, and
    return everything it answers: read as it comes, so that a connection the server
    resets once it stops reading loses none of the answer."""
    answered: list[bytes] = []

    def read() -> None:
        try:
            answered.append(everything(sock))
        except TimeoutError:
            answered.append(b"(the server neither answered nor closed within 10 s)")

    reading = threading.Thread(target=read)
    reading.start()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
        sock.sendall(first)
        for _ in range(size // len(filler)):
            sock.sendall(filler)
    reading.join()
    return answered[0]


def get(path: str = "/healthz", *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: localhost", *extra]) + "\r\n\r\n").encode()


def push_envelope(message_id: str) -> bytes:
    record = json.dumps({"id": message_id, "data": {"n": 1}}).encode()
    return json.dumps(
        {
            "message": {
                "data": base64.b64encode(record).decode(),
                "messageId": message_id,
                "publishTime": "2024-04-27T12:00:01Z",
            },
            "subscription": "projects/p/subscriptions/s",
        }
    ).encode()


def push(message_id: str, *extra: str) -> bytes:
    body = push_envelope(message_id)
    head = [
        f"POST /pubsub/push?token={TOKEN} HTTP/1.1",
        "Host: localhost",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# Heads: bounded in size however they arrive, whatever came before them.


@pytest.mark.slow
def test_a_megabyte_of_headers_is_refused_and_costs_no_memory(small: Served) -> None:
    # A first request of each kind warms the process: what is measured after is growth.
    assert httpx.get(f"{small.url}/healthz").status_code == 200
    before = small.rss_kib()
    for _ in range(4):
        sock = small.connect()
        header = b"X-Pad: " + b"a" * 1000 + b"\r\n"
        answer = flood(sock, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n", header, MIB)
        sock.close()
        # Refused once past the bound, with a status, never served.
        assert statuses(answer) == [431], answer[:100]
        assert problem(answer)["type"] == "/problems/headers-too-large"
    grown = small.rss_kib() - before
    assert grown < GROWTH_KIB, f"grew {grown} KiB"
    assert httpx.get(f"{small.url}/healthz").status_code == 200


@pytest.mark.slow
def test_a_head_over_the_bound_in_one_write_is_refused(small: Served) -> None:
    # 100 KB, well within one socket read: measured whole all the same.
    sock = small.connect()
    sock.sendall(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n"
    )
    assert statuses(everything(sock)) == [431]
    sock.close()


def test_a_head_pipelined_behind_two_requests_is_refused_after_their_answers(
    small: Served,
) -> None:
    sock = small.connect()
    big = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 313_000 + b"\r\n\r\n"
    sock.sendall(get() + push("pipelined-1") + big)
    # Answers go in the order of their requests: the refusal last.
    assert statuses(everything(sock)) == [200, 204, 431]
    sock.close()


def test_a_head_just_under_the_bound_is_served(small: Served) -> None:
    headers = {f"a{n}": "v" * 1000 for n in range(15)}  # ~15.2 KB of 16 KiB
    assert httpx.get(f"{small.url}/healthz", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "opening",
    [
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n",
    ],
    ids=["h2c", "websocket", "CONNECT"],
)
def test_an_upgrade_or_connect_is_refused_and_what_follows_is_not_read(
    small: Served, opening: bytes
) -> None:
    # Once, a 64 MiB head after an upgrade was answered 200, and four of 128 MiB
    # grew the process by 793 MB: no bound followed the connection any more.
    assert httpx.get(f"{small.url}/healthz").status_code == 200
    before = small.rss_kib()
    sock = small.connect()
    head = opening + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: "
    answer = flood(sock, head, b"a" * MIB, 64 * MIB)
    sock.close()
    assert statuses(answer) == [400], answer[:300]
    assert problem(answer)["type"] == "/problems/upgrade-not-served"
    grown = small.rss_kib() - before
    assert grown < GROWTH_KIB, f"grew {grown} KiB"


def refusals(served: Served) -> dict[str, float]:
    """`recordline.connections.refused` by reason, as `GET /metrics` says now."""
    found = {}
    for line in httpx.get(f"{served.url}/metrics").text.splitlines():
        if line.startswith("recordline_connections_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.mark.slow
def test_each_connection_a_bound_ends_is_counted_by_its_reason(small: Served) -> None:
    before = refusals(small)
    upgrade = small.connect()
    upgrade.sendall(get("/healthz", "Connection: Upgrade", "Upgrade: h2c"))
    assert statuses(everything(upgrade)) == [400]
    too_large = small.connect()
    too_large.sendall(get("/healthz", "X-Pad: " + "a" * HEAD_BYTES))
    assert statuses(everything(too_large)) == [431]
    # A head begun and never ended: closed at the header deadline, answering nothing.
    slow = small.connect()
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
    assert everything(slow, seconds=HEADER_TIMEOUT + 5) == b""
    for sock in (upgrade, too_large, slow):
        sock.close()
    after = refusals(small)
    counted = {r: n - before.get(r, 0.0) for r, n in after.items() if n != before.get(r, 0.0)}
    assert counted == {"upgrade-not-served": 1, "headers-too-large": 1, "head-timeout": 1}


# Framing: a request is read one way or refused. Two readings of where a request ends
# (a front proxy's and this server's) are what request smuggling needs.


def framed(message_id: str, headers: bytes, body: bytes) -> bytes:
    """A push whose framing headers are `headers` (each line ending in CRLF) and whose
    bytes after the head are `body`."""
    return (
        f"POST /pubsub/push?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: application/json\r\n".encode()
        + headers
        + b"\r\n"
        + body
    )


def _framings() -> dict[str, tuple[str, bytes]]:
    """Each way of framing a request twice, or wrongly, as (message id, request)."""
    found = {}
    cases: dict[str, tuple[bytes, bytes]] = {
        # Content-Length and Transfer-Encoding: which one ends the body?
        "CL+TE": (b"Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n", b"{chunked}"),
        "TE+CL": (b"Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n", b"{chunked}"),
        "two Content-Length": (b"Content-Length: {n}\r\nContent-Length: {m}\r\n", b"{body}"),
        "two equal Content-Length": (
            b"Content-Length: {n}\r\nContent-Length: {n}\r\n",
            b"{body}",
        ),
        # A header continued on the next line (obsolete line folding, RFC 9112 5.2).
        "obs-fold": (b"Content-Length: {n}\r\nX-Folded: a\r\n b\r\n", b"{body}"),
        "xchunked": (b"Transfer-Encoding: xchunked\r\n", b"{chunked}"),
        "chunked, then another coding": (b"Transfer-Encoding: chunked, x\r\n", b"{chunked}"),
        "space before the colon": (b"Content-Length : {n}\r\n", b"{body}"),
        "a line ended by LF alone": (b"Content-Length: {n}\nX-Bare: lf\r\n", b"{body}"),
        # A chunk size past 64 bits: wrapped, it would be a small one.
        "chunk size overflow": (
            b"Transfer-Encoding: chunked\r\n",
            b"1ffffffffffffffff{hex}\r\n{body}\r\n0\r\n\r\n",
        ),
        "NUL in a header": (b"Content-Length: {n}\r\nX-Nul: a\x00b\r\n", b"{body}"),
    }
    for number, (name, (headers, after)) in enumerate(cases.items()):
        message_id = f"framed-{number}"
        body = push_envelope(message_id)
        values = {
            b"{n}": str(len(body)).encode(),
            b"{m}": str(len(body) + 1).encode(),
            b"{hex}": f"{len(body):x}".encode(),
            b"{chunked}": f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n",
            b"{body}": body,
        }
        for key, value in values.items():
            headers, after = headers.replace(key, value), after.replace(key, value)
        found[name] = (message_id, framed(message_id, headers, after))
    return found


FRAMINGS = _framings()


@pytest.mark.parametrize("name", list(FRAMINGS))
def test_a_request_framed_two_ways_is_refused_and_nothing_is_stored(
    small: Served, name: str
) -> None:
    message_id, request = FRAMINGS[name]
    sock = small.connect()
    sock.sendall(request)
    answer = everything(sock)
    sock.close()
    assert statuses(answer) == [400], answer[:300]
    assert httpx.get(f"{small.url}/v1/messages/{message_id}").status_code == 404


def test_a_bare_lf_request_and_a_nul_in_its_path_are_refused(small: Served) -> None:
    for request in (
        b"GET /healthz HTTP/1.1\nHost: localhost\n\n",
        b"GET /health\x00z HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ):
        sock = small.connect()
        sock.sendall(request)
        assert statuses(everything(sock)) == [400]
        sock.close()


def test_one_header_past_the_most_fields_is_431(small: Served) -> None:
    def with_fields(count: int) -> bytes:
        # Host is one of them.
        fields = b"".join(b"X-%d: v\r\n" % n for n in range(count - 1))
        return b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n"

    sock = small.connect()
    sock.sendall(with_fields(MAX_HEADERS))
    assert response(sock).startswith(b"HTTP/1.1 200")
    sock.sendall(with_fields(MAX_HEADERS + 1))
    answer = everything(sock)
    sock.close()
    assert statuses(answer) == [431]
    assert problem(answer)["type"] == "/problems/headers-too-large"


# Requests sent ahead of their answers: a few are served, a flood is not queued.


def test_requests_pipelined_up_to_the_bound_are_each_answered_in_order(small: Served) -> None:
    sock = small.connect()
    # One answered, MAX_PIPELINED waiting behind it, the last a push that ends the
    # connection once answered.
    sock.sendall(get() * MAX_PIPELINED + push("pipelined-within", "Connection: close"))
    answers = statuses(everything(sock))
    sock.close()
    assert answers == [200] * MAX_PIPELINED + [204]


def test_a_flood_of_pipelined_requests_is_cut_and_costs_no_memory(small: Served) -> None:
    # Once, 40 MB of pipelined 34-byte requests on one connection grew the process from
    # 228 MB to 2.9 GB, and it kept it after the connection closed: every request was
    # queued, each its cycle and scope, and the queue and the connection referred to
    # each other, left to a cyclic collection that did not come.
    assert httpx.get(f"{small.url}/healthz").status_code == 200
    before = small.rss_kib()
    sock = small.connect()
    answer = flood(sock, get(), get() * 30_000, 40 * MIB)
    sock.close()
    answers = statuses(answer)
    assert answers[-1] == 503, answers[-5:]
    assert set(answers[:-1]) == {200}, answers[:5]
    assert len(answers) > MAX_PIPELINED
    last = answer[answer.rindex(b"HTTP/1.1 503") :]
    assert problem(last)["type"] == "/problems/too-many-pipelined-requests"
    grown = small.rss_kib() - before
    assert grown < GROWTH_KIB, f"grew {grown} KiB"
    assert httpx.get(f"{small.url}/healthz").status_code == 200


# Bodies and trailers: bounded in time and size, and trailers never headers.


@pytest.mark.slow
def test_a_body_sent_a_byte_a_second_is_cut_at_the_body_deadline(small: Served) -> None:
    sock = small.connect()
    sock.sendall(
        f"POST /pubsub/push?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
    )
    started = time.monotonic()
    answer = b""
    sock.settimeout(1)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while time.monotonic() - started < BODY_TIMEOUT + 10:
            sock.sendall(b"{")
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            answer += chunk
    elapsed = time.monotonic() - started
    sock.close()
    assert statuses(answer) == [408], answer[:300]
    assert problem(answer)["type"] == "/problems/request-timeout"
    assert BODY_TIMEOUT - 0.5 < elapsed < BODY_TIMEOUT + 5, elapsed


def test_a_64_mib_trailer_is_refused_and_costs_no_memory(small: Served) -> None:
    # Once: +222 MB and 11 s of CPU, then a request header.
    assert httpx.get(f"{small.url}/healthz").status_code == 200
    before = small.rss_kib()
    body = push_envelope("trailed")
    sock = small.connect()
    head = (
        f"POST /pubsub/push?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\nX-Trailer: "
    )
    answer = flood(sock, head, b"a" * MIB, 64 * MIB)
    sock.close()
    assert statuses(answer) == [431], answer[:300]
    grown = small.rss_kib() - before
    assert grown < GROWTH_KIB, f"grew {grown} KiB"
    # Refused before it was answered: nothing was acknowledged, so nothing may be stored.
    assert httpx.get(f"{small.url}/v1/messages/trailed").status_code == 404


def test_a_trailer_never_becomes_an_attribute(small: Served) -> None:
    # An unwrapped push takes each attribute from a header of its own: a trailer is none.
    body = json.dumps({"id": "unwrapped-trailer"}).encode()
    sock = small.connect()
    sock.sendall(
        f"POST /pubsub/push?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "X-Goog-Pubsub-Message-Id: u-trailer\r\n"
        "X-Goog-Pubsub-Publish-Time: 2024-04-27T12:00:01Z\r\n"
        "Origin-System: billing\r\n\r\n"
        f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\nSmuggled-Attribute: evil\r\n\r\n"
    )
    assert statuses(response(sock)) == [204]
    sock.close()
    record = httpx.get(f"{small.url}/v1/records/unwrapped-trailer").json()
    # Its headers' (the publisher's Content-Type declares the body), none of its trailer's.
    assert record["attributes"] == {"origin-system": "billing", "content-type": "application/json"}


def test_a_request_answered_before_its_body_is_read_ends_its_connection(small: Served) -> None:
    # No token: 401 on the headers alone. The 10 GB announced is not read to be dropped.
    sock = small.connect()
    sock.sendall(
        b"POST /pubsub/push HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\n\r\n{"
    )
    answer = everything(sock)
    sock.close()
    assert statuses(answer) == [401]


# Between requests: blank lines start the clock, and nothing holds a connection for free.


@pytest.mark.slow
@pytest.mark.parametrize("after", [b"\r\n", b"G"], ids=["a blank line", "a request's start"])
def test_a_byte_after_an_answered_request_is_held_to_the_header_deadline(
    small: Served, after: bytes
) -> None:
    sock = small.connect()
    sock.sendall(get())
    assert response(sock).startswith(b"HTTP/1.1 200")
    sock.sendall(after)
    started = time.monotonic()
    sock.settimeout(HEADER_TIMEOUT + 10)
    assert closed_by_server(sock)
    assert time.monotonic() - started < HEADER_TIMEOUT + 5
    sock.close()


@pytest.mark.slow
def test_a_head_begun_after_a_request_is_held_to_the_deadline_too(small: Served) -> None:
    sock = small.connect()
    sock.sendall(get())
    assert response(sock).startswith(b"HTTP/1.1 200")
    # The second request's head begins and never ends. The deadline runs from
    # its first byte, so more bytes now and then would not extend it.
    sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: a")
    started = time.monotonic()
    sock.settimeout(HEADER_TIMEOUT + 10)
    assert closed_by_server(sock)
    assert time.monotonic() - started < HEADER_TIMEOUT + 5


# Headers that identify: once, or the request is refused.


@pytest.mark.parametrize(
    ("extra", "host"),
    [
        (["Authorization: Bearer a.b.c", "Authorization: Bearer d.e.f"], True),
        (["X-Serverless-Authorization: Bearer a", "X-Serverless-Authorization: Bearer b"], True),
        (["Host: y"], True),
        ([], False),
    ],
    ids=["two Authorization", "two X-Serverless-Authorization", "two Host", "no Host"],
)
def test_a_header_that_identifies_is_taken_once_or_refused(
    small: Served, extra: list[str], host: bool
) -> None:
    request = push("ambiguous", *extra)
    if not host:
        request = request.replace(b"Host: localhost\r\n", b"")
    sock = small.connect()
    sock.sendall(request)
    answer = response(sock)
    sock.close()
    assert statuses(answer) == [400], answer[:300]
    assert problem(answer)["type"] == "/problems/ambiguous-request"
    assert httpx.get(f"{small.url}/v1/messages/ambiguous").status_code == 404


@pytest.mark.parametrize(
    ("host", "answered"),
    [
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("127.0.0.1:1", True),
        ("[::1]:80", True),
        ("attacker.example", False),
        ("attacker.example:8080", False),
        ("localhost.attacker.example", False),
        ("127.0.0.2", False),
        ("[::2]", False),
    ],
)
def test_bound_to_loopback_only_loopback_names_are_answered(
    small: Served, host: str, answered: bool
) -> None:
    # A page whose name a DNS rebinding pointed here is its own origin to the browser:
    # the name it asks for is what tells it apart.
    request = push(f"host-{answered}-{len(host)}").replace(
        b"Host: localhost\r\n", f"Host: {host}\r\n".encode()
    )
    sock = small.connect()
    sock.sendall(request)
    answer = response(sock)
    sock.close()
    if answered:
        assert statuses(answer) == [204], answer[:300]
    else:
        assert statuses(answer) == [421], answer[:300]
        assert problem(answer)["type"] == "/problems/misdirected-request"


# Heads split any way, behind any requests: the same answers.

_REQUESTS = st.sampled_from(["get", "push", "chunked"])


def _request(kind: str, n: int) -> bytes:
    if kind == "get":
        return get()
    if kind == "push":
        return push(f"split-{n}")
    body = push_envelope(f"split-{n}")
    return (
        f"POST /pubsub/push?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{len(body) // 2:x}\r\n".encode()
        + body[: len(body) // 2]
        + f"\r\n{len(body) - len(body) // 2:x}\r\n".encode()
        + body[len(body) // 2 :]
        + b"\r\n0\r\nA-Trailer: t\r\n\r\n"
    )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ahead=st.lists(_REQUESTS, max_size=2),
    over=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=40_000), max_size=8),
    blank_lines=st.booleans(),
)
def test_a_head_is_measured_whole_however_it_is_split(
    small: Served, ahead: list[str], over: bool, cuts: list[int], blank_lines: bool
) -> None:
    # Well over the bound or well under it (a head is measured to within its framing).
    pad = HEAD_BYTES + 500 if over else HEAD_BYTES - 500
    last = (
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Pad: "
        + b"a" * pad
        + b"\r\n\r\n"
    )
    separator = b"\r\n" if blank_lines else b""
    stream = separator.join(
        [*(_request(kind, time.monotonic_ns() + n) for n, kind in enumerate(ahead)), last]
    )
    sock = small.connect()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = 0
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for cut in sorted(set(cuts)):
            sock.sendall(stream[start:cut])
            start = max(start, cut)
            time.sleep(0.002)
        sock.sendall(stream[start:])
    answers = statuses(everything(sock))
    sock.close()
    expected = [200 if kind == "get" else 204 for kind in ahead]
    assert answers == [*expected, 431 if over else 200]


# Connections: a bound, with room for pushes that idle sockets and readers cannot take.


@pytest.fixture
def many_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 6000)
    if wanted < 2400:
        pytest.skip(f"the open-file limit ({hard}) is below 2,400")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
@pytest.mark.usefixtures("many_files")
def test_half_open_connections_are_closed_within_the_header_timeout() -> None:
    half_open = 2000
    # The server inherits the raised limit, so that it is the bound, not its
    # file descriptors, that ends them.
    with serve(RECORDLINE_MAX_CONNECTIONS=str(half_open * 2)) as served:
        socks = []
        opened = time.monotonic()
        for n in range(half_open):
            sock = served.connect()
            # Half of them send part of a head and stop; half send nothing at all.
            if n % 2:
                sock.sendall(b"POST /pubsub/push HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
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


@pytest.mark.slow
@pytest.mark.usefixtures("many_files")
def test_a_thousand_idle_connections_leave_pushes_their_room() -> None:
    # Once, 1,000 idle keep-alive connections (the default bound) made every push 503.
    idle = 1000
    with serve(
        {"header_timeout_seconds": 30},
        RECORDLINE_MAX_CONNECTIONS=str(idle),
        RECORDLINE_PUSH_TOKEN=TOKEN,
    ) as served:
        socks = [served.connect() for _ in range(idle)]
        for sock in socks:
            sock.sendall(get())
        for sock in socks:
            assert response(sock).startswith(b"HTTP/1.1 200")
        # Every connection kept is now idle between requests, for 75 s unless needed.
        for n in range(20):
            sock = served.connect()
            sock.sendall(push(f"room-{n}"))
            assert statuses(response(sock)) == [204]
            sock.close()
        # Room was made by closing the connections idle longest: the first ones.
        socks[0].settimeout(5)
        assert closed_by_server(socks[0])
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_readers_at_the_bound_leave_pushes_their_room() -> None:
    # Once, 50 streams at RECORDLINE_MAX_CONNECTIONS=50 made every push 503.
    with serve(RECORDLINE_MAX_CONNECTIONS="50", RECORDLINE_PUSH_TOKEN=TOKEN) as served:
        readers = []
        for _ in range(50):
            sock = served.connect()
            sock.sendall(get("/v1/records", "Accept: text/event-stream"))
            readers.append(sock)
        answered = []
        for sock in readers:
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(4096)
            status = int(data.split(b" ", 2)[1])
            if status == 503:
                body = data.partition(b"\r\n\r\n")[2]
                while len(body) < content_length(data):
                    body += sock.recv(4096)
                assert json.loads(body)["type"] == "/problems/too-many-reads"
            answered.append(status)
        # 40 streams (PUSH_RESERVE keeps 10 of 50 for pushes), 10 refused.
        assert sorted(answered) == [200] * 40 + [503] * 10
        for n in range(20):
            sock = served.connect()
            sock.sendall(push(f"beside-readers-{n}"))
            assert statuses(response(sock)) == [204]
            sock.close()
        for sock in readers:
            sock.close()


@pytest.mark.slow
def test_past_the_connection_bound_the_idle_go_first_then_requests_get_503() -> None:
    with serve({"header_timeout_seconds": 30}, RECORDLINE_MAX_CONNECTIONS="4") as served:
        # Four connections that sent nothing: closed, the longest idle first, for new ones.
        idle = [served.connect() for _ in range(4)]
        assert httpx.get(f"{served.url}/healthz").status_code == 200
        assert closed_by_server(idle[0])
        for sock in idle:
            sock.close()
        # Four requests whose bodies are still coming hold their connections: one more
        # request finds none to take, and is refused.
        busy = []
        for _ in range(4):
            sock = served.connect()
            sock.sendall(
                b"POST /pubsub/push HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            busy.append(sock)
        until_blocking(
            lambda: httpx.get(f"{served.url}/healthz").status_code == 503,
            what="a request with every connection busy to be refused",
        )
        answer = httpx.get(f"{served.url}/healthz")
        assert answer.json()["type"] == "/problems/too-many-connections"
        assert answer.headers["retry-after"] == "1"
        for sock in busy:
            sock.close()
        until_blocking(
            lambda: httpx.get(f"{served.url}/healthz").status_code == 200,
            what="a request once the busy connections closed",
        )

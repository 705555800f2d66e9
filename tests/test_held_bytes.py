"""The process's budget is charged what requests and answers hold, when they hold it,
never what a client declares, in a real `recordline serve`.

Once, a request's body was charged four times its `Content-Length` from its head until
it was answered, for any method: four SSE followers declaring 14 MiB bodies and
sending none held 183.6 MiB of a 256 MiB budget for the five minutes of a stream (RSS
flat), and 55 of 60 other reads were refused 503. Now a read's body is dropped unread,
and any other body is charged as it is read.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.test_memory_bounds import envelope
from tests.test_server_limits import TOKEN, Served, everything, push, serve
from tests.waiting import until_blocking

# What the largest push declares (Pub/Sub's largest message, wrapped), sent by no one.
DECLARED = 14_680_064


def held(served: Served) -> int:
    """What the process's budget holds now (`recordline.memory.held`)."""
    for line in httpx.get(f"{served.url}/metrics").text.splitlines():
        if line.startswith("recordline_memory_held_bytes"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("no recordline_memory_held_bytes")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve(RECORDLINE_PUSH_TOKEN=TOKEN) as served:
        yield served


def declaring(served: Served, head: list[str]) -> socket.socket:
    """A connection that sends `head` and nothing after it."""
    sock = served.connect()
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return sock


def test_followers_declaring_bodies_they_never_send_hold_nothing(served: Served) -> None:
    alone = held(served)
    followers = [
        declaring(
            served,
            [
                "GET /v1/records HTTP/1.1",
                "Host: localhost",
                "Accept: text/event-stream",
                f"Content-Length: {DECLARED}",
            ],
        )
        for _ in range(4)
    ]
    # Each follows, its body dropped unread: nothing held for what it declared.
    for sock in followers:
        assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
    assert held(served) - alone < 64 * 1024, held(served)
    # Every other read is answered.
    with httpx.Client(base_url=served.url) as client:
        answers = [client.get("/v1/records?limit=1").status_code for _ in range(60)]
    assert answers == [200] * 60
    for sock in followers:
        sock.close()
    # A read's body that does come is dropped, and the read answered as if it had none.
    body = b"x" * 100_000
    sock = declaring(
        served,
        [
            "GET /healthz HTTP/1.1",
            "Host: localhost",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ],
    )
    sock.sendall(body)
    assert everything(sock).startswith(b"HTTP/1.1 200 ")
    sock.close()
    sock = declaring(
        served,
        ["HEAD /v1/records HTTP/1.1", "Host: localhost", "Transfer-Encoding: chunked"],
    )
    assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
    sock.close()
    until_blocking(
        lambda: held(served) == alone, timeout=10, what="the budget to hold the scrape alone"
    )


def test_a_push_declaring_a_body_it_does_not_send_holds_only_what_came(served: Served) -> None:
    # What a scrape holds itself (its own head): the budget holds that alone now.
    alone = held(served)
    waiting = declaring(
        served,
        [
            f"POST /pubsub/push?token={TOKEN} HTTP/1.1",
            "Host: localhost",
            "Content-Type: application/json",
            f"Content-Length: {DECLARED}",
        ],
    )
    # A little of its body, then nothing: what came is charged, not what was declared.
    waiting.sendall(b'{"message": ')
    until_blocking(lambda: held(served) > alone, timeout=10, what="the push's head to be charged")
    assert held(served) - alone < 64 * 1024, held(served)
    with served.connect() as other:
        other.sendall(push("held-bytes-1", "Connection: close"))
        assert everything(other).startswith(b"HTTP/1.1 204 ")
    waiting.close()
    until_blocking(
        lambda: held(served) == alone, timeout=10, what="the budget to hold the scrape alone"
    )


# A service whose budget sends eight exports at once (one for each 16 MiB), and rows
# enough for an export's chunk of a page's 4 MiB.
EXPORT_BUDGET = 128 * 1024 * 1024
RECORD_BYTES = 400_000


@pytest.fixture(scope="module")
def exporting() -> Iterator[Served]:
    with (
        serve(
            {"send_timeout_seconds": 60},
            RECORDLINE_PUSH_TOKEN=TOKEN,
            RECORDLINE_MEMORY_BUDGET_BYTES=str(EXPORT_BUDGET),
        ) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        for n in range(12):
            record = json.dumps({"id": f"big-{n}", "data": "x" * RECORD_BYTES}).encode()
            body = envelope(f"big-{n}", record)
            answer = client.post(f"/pubsub/push?token={TOKEN}", json=body)
            assert answer.status_code == 204, answer.text
        yield served


def test_exports_waiting_on_their_clients_are_charged_and_capped(exporting: Served) -> None:
    # Once, an export gave back its page's charge before its chunk was taken: 200 slow
    # exports held 329-483 MB with the budget reading 0, and a push took 89.6 s.
    alone = held(exporting)
    stalled = []
    for _ in range(10):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", exporting.port))
        sock.sendall(b"GET /v1/export/records?format=jsonl HTTP/1.1\r\nHost: localhost\r\n\r\n")
        stalled.append(sock)
    heads = [sock.recv(1024) for sock in stalled]
    statuses = sorted(int(head.split(b" ", 2)[1]) for head in heads)
    assert statuses == [200] * 8 + [503] * 2, statuses
    refused = next(head.lower() for head in heads if head.startswith(b"HTTP/1.1 503"))
    assert b"retry-after: 5" in refused
    assert b"too-many-exports" in refused or b"application/problem+json" in refused
    # Each chunk its client has not taken is charged until it is.
    until_blocking(
        lambda: held(exporting) - alone > 8 * 1024 * 1024,
        timeout=10,
        what=lambda: f"the exports' chunks to be charged (the budget holds {held(exporting)})",
    )
    # A push is answered meanwhile.
    with exporting.connect() as other:
        other.sendall(push("held-bytes-export", "Connection: close"))
        assert everything(other).startswith(b"HTTP/1.1 204 ")
    for sock in stalled:
        sock.close()
    until_blocking(
        lambda: held(exporting) == alone, timeout=15, what="the exports to give back their chunks"
    )

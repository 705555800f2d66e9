"""The process's budget is charged what requests and answers hold, when they hold it,
never what a client declares, in a real `recordline serve`.

Once, a request's body was charged four times its `Content-Length` from its head until
it was answered, for any method: four SSE followers declaring 14 MiB bodies and
sending none held 183.6 MiB of a 256 MiB budget for the five minutes of a stream (RSS
flat), and 55 of 60 other reads were refused 503. Now a read that declares a body is
refused on its head, and a body is charged as it is read.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

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


def test_followers_declaring_bodies_they_never_send_are_refused_and_hold_nothing(
    served: Served,
) -> None:
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
    for sock in followers:
        answer = everything(sock)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"/problems/body-not-allowed" in answer
        sock.close()
    # A HEAD declaring a chunked body is refused alike.
    sock = declaring(
        served, ["HEAD /v1/records HTTP/1.1", "Host: localhost", "Transfer-Encoding: chunked"]
    )
    assert everything(sock).startswith(b"HTTP/1.1 400 ")
    sock.close()
    # Every other read is answered: nothing was held for what was declared.
    with httpx.Client(base_url=served.url) as client:
        answers = [client.get("/v1/records?limit=1").status_code for _ in range(60)]
    assert answers == [200] * 60
    # `Content-Length: 0` is no body.
    sock = declaring(
        served,
        ["GET /healthz HTTP/1.1", "Host: localhost", "Content-Length: 0", "Connection: close"],
    )
    assert everything(sock).startswith(b"HTTP/1.1 200 ")
    sock.close()


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

"""Each request on a connection gets its own answer, in order, whatever a request behind
it does, in a real `recordline serve` (the service with small bounds of
tests/test_server_limits.py), over loopback sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app.http.limits import bounded_connections
from app.settings import ServerSettings
from recordline_dev.processes import free_port
from tests import tuned
from tests.test_server_limits import (
    MIB,
    TOKEN,
    Served,
    everything,
    get,
    problem,
    push_envelope,
    serve,
    small,
    statuses,
)
from tests.waiting import until_blocking

__all__ = ["small"]  # the fixture, imported to be used here

# An empty page held this long (`wait=`): the answer ahead of what follows it.
HELD_SECONDS = 1
# A follower that takes nothing for this long is cut off.
SEND_TIMEOUT = 2.0


def held(served: Served) -> float:
    """What requests and answers in flight hold of the budget, as `GET /metrics` says now
    (its own head among them)."""
    for line in httpx.get(f"{served.url}/metrics").text.splitlines():
        if line.startswith("recordline_memory_held_bytes"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no recordline_memory_held_bytes")


def held_read() -> bytes:
    """A read of a page that stays empty (nothing is published in 2099) held HELD_SECONDS."""
    return get(f"/v1/records?since=2099-01-01T00:00:00Z&wait={HELD_SECONDS}")


def chunked_push(chunks: bytes) -> bytes:
    """A push whose chunked body is `chunks` as sent."""
    return (
        f"POST /pubsub/push?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + chunks
    )


def test_a_malformed_body_behind_an_answer_under_way_is_refused_after_it(
    small: Served,
) -> None:
    # The refusal was written at once, in place of the answer to the request ahead of
    # it, which the client then took for that request's.
    sock = small.connect()
    sock.sendall(held_read() + chunked_push(b"zz\r\n"))
    started = time.monotonic()
    answer = everything(sock)
    sock.close()
    assert statuses(answer) == [200, 400], answer[:300]
    assert time.monotonic() - started >= HELD_SECONDS - 0.2
    last = answer[answer.rindex(b"HTTP/1.1 400") :]
    assert problem(last)["type"] == "/problems/malformed-request"
    assert httpx.get(f"{small.url}/healthz").status_code == 200


def test_a_body_still_coming_when_the_stop_s_grace_ends_is_told_to_retry() -> None:
    # Once answered 500 (the service failed): the server's stop cancels what is still
    # running past its grace, and the sender, who sent slowly, is to retry.
    with serve({"shutdown_grace_seconds": 3}, RECORDLINE_PUSH_TOKEN=TOKEN) as served:
        body = push_envelope("stopped-mid-body")
        before = held(served)
        sock = served.connect()
        sock.sendall(
            f"POST /pubsub/push?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:40]
        )
        # The request is read, its body waited for, before the stop begins.
        until_blocking(lambda: held(served) > before, what="the request to be read")
        served.process.terminate()
        answer = everything(sock, seconds=15)
        sock.close()
        assert statuses(answer) == [503], answer[:300]
        assert problem(answer)["type"] == "/problems/shutting-down"
        assert served.process.wait(timeout=15) is not None


@contextlib.contextmanager
def logged(log: Path, server: dict[str, float]) -> Iterator[Served]:
    """`recordline serve` with its server's bounds of `server`, what it logs at WARNING
    and above written to `log`."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            tuned.argv({"server": server}, "--port", str(port), "--store", "memory:"),
            env={**os.environ, "RECORDLINE_LOG_LEVEL": "WARNING", "RECORDLINE_PUSH_TOKEN": TOKEN},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, port)
    try:
        until_blocking(lambda: _answers(served), timeout=60, what="recordline serve to answer")
        yield served
    finally:
        process.terminate()
        process.wait(timeout=15)


def _answers(served: Served) -> bool:
    try:
        return httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def errors(log: Path) -> list[bytes]:
    return [line for line in log.read_bytes().splitlines() if b'"ERROR"' in line]


def stuck_follower(served: Served, log: Path) -> socket.socket:
    """A follower of records larger than what the sockets between it and the service
    hold, that took nothing, once it is cut off (as `log` says)."""
    for n in range(3):
        record = {"id": f"large-{n}", "data": {"pad": "x" * 3 * MIB}}
        envelope = {
            "message": {
                "data": base64.b64encode(json.dumps(record).encode()).decode(),
                "messageId": f"large-{n}",
                "publishTime": "2024-04-27T12:00:01Z",
            },
            "subscription": "projects/p/subscriptions/s",
        }
        pushed = httpx.post(f"{served.url}/pubsub/push?token={TOKEN}", json=envelope)
        assert pushed.status_code == 204
    sock = served.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(get("/v1/records?since=2024-04-27T00:00:00Z", "Accept: text/event-stream"))
    # Taking nothing: cut off at the send deadline.
    until_blocking(
        lambda: b"took no event" in log.read_bytes(),
        timeout=SEND_TIMEOUT + 30,
        what="the follower to be cut off",
    )
    return sock


def test_a_follower_cut_off_for_taking_nothing_is_no_error_of_the_app(tmp_path: Path) -> None:
    # Once, each follower cut off was also logged as an error, "the app returned
    # without completing its answer": it returns as it cuts, before the connection
    # is told it is lost.
    log = tmp_path / "serve.log"
    with logged(log, {"send_timeout_seconds": SEND_TIMEOUT}) as served:
        sock = stuck_follower(served, log)
        sock.close()
        assert httpx.get(f"{served.url}/healthz").status_code == 200
    assert errors(log) == []


def test_a_follower_cut_off_is_reset_not_left_to_drain_what_it_was_sent(tmp_path: Path) -> None:
    # Once closed with what the kernel still held for it (up to megabytes, an orphaned
    # socket's, counted nowhere): a client that read again stalled, neither served nor
    # told it was cut off, for as long as the kernel kept trying to send it.
    log = tmp_path / "serve.log"
    with logged(log, {"send_timeout_seconds": SEND_TIMEOUT}) as served:
        sock = stuck_follower(served, log)
        assert how_it_ends(sock, seconds=SEND_TIMEOUT * 2) == "reset"
        sock.close()


def how_it_ends(sock: socket.socket, seconds: float) -> str:
    """Read `sock` for `seconds` at most: "reset", "closed" (an EOF), or "open"."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(1 << 20):
                return "closed"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        pass
    return "open"


def test_a_malformed_body_that_expects_100_continue_is_no_error_of_the_app(
    tmp_path: Path,
) -> None:
    # Once, the app's first `receive` wrote its 100 Continue after the refusal had
    # ended the connection's side: it raised, logged as an error with its traceback.
    log = tmp_path / "serve.log"
    with logged(log, {}) as served:
        sock = served.connect()
        sock.sendall(
            f"POST /pubsub/push?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/json\r\nExpect: 100-continue\r\n"
            "Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode()
        )
        answer = everything(sock)
        sock.close()
        assert statuses(answer) == [400], answer[:300]
        assert problem(answer)["type"] == "/problems/malformed-request"
        assert httpx.get(f"{served.url}/healthz").status_code == 200
    assert errors(log) == []


def test_a_target_in_absolute_form_without_a_path_is_read_as_the_root(small: Served) -> None:
    # RFC 9110 §4.2.3: `http://host` is `http://host/`. Once refused as malformed
    # ("User callback error"), the parser's URL having no path at all.
    answers = []
    for target in (b"/", b"http://localhost", b"http://localhost?a=1"):
        sock = small.connect()
        sock.sendall(b"GET %b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % target)
        answers.append(everything(sock))
        sock.close()
    assert [statuses(answer) for answer in answers] == [[404]] * 3, answers[1][-200:]
    assert {problem(answer)["type"] for answer in answers} == {"/problems/not-found"}


def test_connections_closed_mid_body_leave_nothing_behind(small: Served) -> None:
    # Once, each connection closed mid-body kept ~6 KB (its protocol, its parser, its
    # request and what it had read) until a full cyclic collection, which the service
    # makes rare: 3,000 of them grew the process by ~17 MB, and went on growing.
    body = push_envelope("cut-short")
    head = (
        f"POST /pubsub/push?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )

    def cut_short(count: int) -> None:
        socks = [small.connect() for _ in range(count)]
        for sock in socks:
            sock.sendall(head + body[:100])
        # Each request read, its body waited for, before its connection closes.
        until_blocking(lambda: held(small) > before_held, what="the requests to be read")
        for sock in socks:
            sock.close()
        until_blocking(lambda: held(small) <= before_held, what="the requests to be dropped")

    before_held = held(small)
    cut_short(300)  # warms the process: what is measured after is growth
    before = small.rss_kib()
    for _ in range(10):
        cut_short(300)
    grown = small.rss_kib() - before
    assert grown < 5 * 1024, f"grew {grown} KiB"


async def test_an_app_that_is_a_plain_function_is_served() -> None:
    """The protocol serves any ASGI app, a coroutine function as well as an object: it
    is called as it is, never bound to the protocol as a method."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan of its own
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    config = uvicorn.Config(
        app,
        port=0,
        lifespan="off",
        log_config=None,
        http=bounded_connections(app, ServerSettings()),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.01)  # polled: uvicorn says it started by this flag alone
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answer = await client.get("/plain")
        assert (answer.status_code, answer.text) == (200, "/plain")
    finally:
        server.should_exit = True
        await task

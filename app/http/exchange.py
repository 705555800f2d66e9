"""One request and its answer on a connection: the ASGI `receive` and `send` of it.

`app.http.limits` reads each request through httptools and makes an `Exchange` for it
once its head is read; the app reads the body from `receive` and writes its answer
through `send`, framed here as HTTP/1.1 (a length the app gives, else chunked). What
the connection does around it (bounds, pipelining, keeping it open) is the
`Carrier`'s, told when the answer is complete.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import time
from email.utils import formatdate
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

# What may not appear in a header's name or value written: what would end the line or
# the field (a value the app took from a request cannot split the answer).
_BAD_NAME: Final = re.compile(rb'[\x00-\x1f\x7f()<>@,;:\[\]={} \t\\"]')
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# How much of a body may wait read before the app takes it, before reading pauses.
READ_AHEAD_BYTES: Final = 64 * 1024


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


STATUS_LINES: Final = {status: _status_line(status) for status in range(100, 600)}


class Carrier(Protocol):
    """What an exchange asks of the connection that carries it."""

    transport: asyncio.Transport
    # The transport holds as much as it may: a send waits (`drain`) before writing more.
    write_paused: bool

    def resume_reading(self) -> None: ...

    def pause_reading(self) -> None: ...

    async def drain(self) -> None:
        """Return once the transport takes more (its client took some of what it holds)."""
        ...

    def answered(self, exchange: Exchange) -> None:
        """The answer to `exchange` is written whole."""
        ...

    def failed(self, exchange: Exchange, *, stopping: bool = False) -> None:
        """The app raised before it began an answer: answer 500 and close (503, to be
        retried, if it was cancelled by the server's stop)."""
        ...


class Exchange:
    """A request (its scope and body as read) and the state of its answer."""

    __slots__ = (
        "body",
        "carrier",
        "chunked",
        "continue_expected",
        "disconnected",
        "head_only",
        "keep_alive",
        "left",
        "more_body",
        "read",
        "response_complete",
        "response_started",
        "scope",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        carrier: Carrier,
        *,
        keep_alive: bool,
        continue_expected: bool,
    ) -> None:
        self.scope = scope
        self.carrier = carrier
        self.keep_alive = keep_alive
        self.continue_expected = continue_expected
        self.head_only = scope["method"] == "HEAD"
        # The request's body as read and not yet taken by `receive`.
        self.body = bytearray()
        self.more_body = True
        # Set when there is more of the body to take, or the exchange ended.
        self.read = asyncio.Event()
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        # Bytes of the body the answer's Content-Length still promises.
        self.left = 0

    # From the connection.

    def body_read(self, data: bytes) -> None:
        if self.response_complete:
            return  # answered already: what comes is dropped
        self.body += data
        if len(self.body) > READ_AHEAD_BYTES:
            self.carrier.pause_reading()
        self.read.set()

    def body_ended(self) -> None:
        if not self.response_complete:
            self.more_body = False
            self.read.set()

    def lost(self) -> None:
        """The connection is gone: `receive` says so, `send` writes nothing more."""
        if not self.response_complete:
            self.disconnected = True
        self.read.set()

    # ASGI.

    async def run(self, app: Any) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            # The server stops, its grace over (uvicorn cancels what still runs): the
            # request is not answered, to be sent again, and the service did not fail.
            log.info("stopped before %s was answered", self.scope.get("path"))
            self._abandon(stopping=True)
            raise
        except BaseException:
            log.exception("the app raised while answering %s", self.scope.get("path"))
            self._abandon()
        else:
            if result is not None or (not self.response_complete and not self.disconnected):
                log.error("the app returned without completing its answer")
                self._abandon()

    def _abandon(self, *, stopping: bool = False) -> None:
        """End an answer the app did not complete: a 500 (503 `stopping`) if none was
        begun, else the connection closed mid-answer."""
        if not self.response_started:
            self.carrier.failed(self, stopping=stopping)
        else:
            self.carrier.transport.close()
        self.response_complete = True

    async def receive(self) -> dict[str, Any]:
        # Not once the exchange is cut off (`lost`): the connection may have ended its side.
        carrier = self.carrier
        if self.continue_expected and not self.disconnected and not carrier.transport.is_closing():
            carrier.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.continue_expected = False
        if not self.disconnected and not self.response_complete:
            carrier.resume_reading()
            await self.read.wait()
            self.read.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message = {"type": "http.request", "body": bytes(self.body), "more_body": self.more_body}
        self.body.clear()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        carrier = self.carrier
        if carrier.write_paused and not self.disconnected:
            await carrier.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, not {kind}")
            self.response_started = True
            self.continue_expected = False
            carrier.transport.write(self._head(message["status"], message.get("headers", ())))
            return
        if self.response_complete or kind != "http.response.body":
            raise RuntimeError(f"unexpected {kind} once the answer is {self._state()}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        transport = carrier.transport
        if self.head_only:
            self.left = 0
        elif self.chunked:
            if body:
                transport.write(b"%x\r\n%b\r\n" % (len(body), body))
            if not more:
                transport.write(b"0\r\n\r\n")
        else:
            if len(body) > self.left:
                raise RuntimeError("the answer's body is longer than its Content-Length")
            self.left -= len(body)
            if body:
                transport.write(body)
        if not more:
            if self.left:
                raise RuntimeError("the answer's body is shorter than its Content-Length")
            self.response_complete = True
            self.read.set()
            if not self.keep_alive:
                transport.close()
            carrier.answered(self)

    def _head(self, status: int, headers: Any) -> bytes:
        lines = [STATUS_LINES[status], b"date: ", http_date(), b"\r\n"]
        framed = closes = False
        for name, value in headers:
            if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
                raise RuntimeError(f"a header of the answer cannot be written: {name!r}")
            name = name.lower()
            if name == b"content-length" and not framed:
                self.left = int(value)
                framed = True
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.left = 0
                self.chunked = framed = True
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                closes = True
            lines += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not closes:
            lines.append(b"connection: close\r\n")
        if not framed and not self.head_only and status not in (204, 304):
            self.chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _state(self) -> str:
        return "complete" if self.response_complete else "started"


_date: list[Any] = [0, b""]


def http_date() -> bytes:
    """Now as an HTTP date (RFC 9110), made once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, formatdate(now, usegmt=True).encode("ascii")]
    return _date[1]  # type: ignore[no-any-return]

"""What one connection may cost before the app sees a request: bounded.

uvicorn reads a request's line and headers before any route or guard runs,
and its httptools protocol bounds neither their size nor how long they take:
four connections sending headers without end grew the process by gigabytes,
and a connection that sent half a request head was held forever. So every
connection is served by `BoundedHttpTools`, uvicorn's httptools protocol with:

- a size bound: a request's line and headers together are at most
  `max_header_bytes`, and at most `MAX_HEADERS` headers; more is answered 431
  and the connection closed, having passed no more than that to the server;
- a header deadline: a request's head must be complete within
  `header_timeout` of its first byte (of the connection's opening, for the
  first), or the connection is closed.

uvicorn's own settings do the rest: `timeout_keep_alive` for a connection idle
between requests, `limit_concurrency` for connections and requests at once.
uvicorn's h11 protocol bounds a head's size (`h11_max_incomplete_event_size`)
but not its time, and costs a push 1.7 times the event loop's instructions
(`python3 dev.py bench server`); httptools' parser, fed the same bytes
first, follows each head for a fraction of that, through its public callbacks.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# More headers than this is no client of this service: a push carries ~10, an
# unwrapped one at most Pub/Sub's 100 attributes besides.
MAX_HEADERS: Final = 256
TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: 43\r\n\r\n"
    b"the request line and headers are too large\n"
)


class RequestHeads:
    """Where a connection is in its requests, from its bytes: httptools' callbacks."""

    def __init__(self, max_header_bytes: int) -> None:
        self._max_bytes = max_header_bytes
        self._parser = httptools.HttpRequestParser(self)
        # Bytes received since a head began that has not ended. httptools reports a
        # header only once the next one starts, so a head is measured by what
        # arrives while it is incomplete: at most one read more than the bound.
        self._pending = 0
        self._headers = 0
        # A request's first byte came and its head has not ended.
        self.waiting = False
        # The head passed a bound; nothing more is read from this connection.
        self.too_large = False
        # The bytes are no HTTP/1.1 this parser follows (an upgrade, or an error the
        # server's own parser answers): no longer followed.
        self.gone = False

    def feed(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.waiting = False
            self.gone = True
            return
        if not self.waiting:
            self._pending = 0
            return
        self._pending += len(data)
        if self._pending > self._max_bytes:
            self.too_large = True

    # httptools' callbacks.

    def on_message_begin(self) -> None:
        self.waiting = True
        self._pending = self._headers = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        if self._headers > MAX_HEADERS:
            self.too_large = True

    def on_headers_complete(self) -> None:
        self.waiting = False


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, with each request head bounded in size and time.

    `header_timeout` and `max_header_bytes` are read from the class, which
    `bounded_httptools` makes per service: uvicorn builds one protocol per
    connection from the class it is given (`http=`).
    """

    header_timeout: float = 10.0
    max_header_bytes: int = 256 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heads = RequestHeads(self.max_header_bytes)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._connection: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._connection = transport
        # The first request's head is due from the moment the connection opens.
        self._arm()

    def data_received(self, data: bytes) -> None:
        heads = self._heads
        heads.feed(data)
        if heads.too_large:
            self._refuse()
            return
        if heads.waiting:
            if self._head_deadline is None:
                self._arm()
        else:
            self._disarm()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_deadline = loop.call_later(self.header_timeout, self._close)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _refuse(self) -> None:
        self._disarm()
        connection = self._connection
        if connection is not None and not connection.is_closing():
            connection.write(TOO_LARGE)
            connection.close()

    def _close(self) -> None:
        self._head_deadline = None
        if self._connection is not None and not self._connection.is_closing():
            self._connection.close()


def bounded_httptools(*, header_timeout: float, max_header_bytes: int) -> type[BoundedHttpTools]:
    """The protocol class uvicorn is given (`http=`), with these bounds."""
    return type(
        "BoundedHttpTools",
        (BoundedHttpTools,),
        {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes},
    )

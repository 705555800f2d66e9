"""What one connection may cost: every byte of every request bounded, in size and in time.

Each connection is a `BoundedConnection`, an asyncio protocol reading every request
through httptools' parser (its public callbacks) and handing it to the app as an
`Exchange` (`app.http.exchange`): a head's size and time, a body's time, trailers
dropped, upgrades and `CONNECT` refused, `Host` checked, pipelining bounded, head and
body charged as read, an answer its client does not take cut off, `max_connections` a
process. uvicorn runs it (`http=`): socket, lifespan, signals and graceful stop.

Design, and why a protocol of its own: docs/security.md#request-bounds
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import struct
from collections import deque
from typing import Any, ClassVar, Final, Protocol
from urllib.parse import unquote

import httptools
import msgspec

from app.budget import Budget, Charge
from app.errors import (
    AmbiguousRequest,
    HeadersTooLarge,
    MalformedRequest,
    MisdirectedRequest,
    RecordlineError,
    RequestTimeout,
    ShuttingDown,
    TooManyConnections,
    TooManyPipelined,
    UpgradeNotServed,
)
from app.http.exchange import Exchange
from app.problems import MEDIA_TYPE, Problems
from app.settings import ServerSettings, is_loopback

# More headers than this is no client of this service: a push carries ~10, an
# unwrapped one at most Pub/Sub's 100 attributes besides.
MAX_HEADERS: Final = 256
# What a chunk of a chunked body may add to it: 16 hex digits of size (a 64-bit
# length), the CRLF after them, and the CRLF after the chunk's data.
CHUNK_FRAMING: Final = 20
# A header's bytes besides its name and value: `:`, a space, CRLF.
HEADER_FRAMING: Final = 4
# Requests a connection may send ahead of their answers (pipelined), waiting behind the
# one being answered: each holds ~2 KiB of objects however few its bytes (1.2 million
# pipelined 34-byte requests once held 2.9 GB), so they are counted, and their heads
# together are at most MAX_HEADER_BYTES. No client of this service pipelines.
MAX_PIPELINED: Final = 32
# How long a refused connection is still read from, what comes dropped, once its
# refusal is sent: closed with bytes unread, the connection would be reset, and a
# reset can discard the refusal before a client that is still sending reads it.
LINGER_SECONDS: Final = 2.0
# Where a connection is in its requests: between two (or before the first), in a
# head, in a body.
WAITING: Final = 0
HEAD: Final = 1
BODY: Final = 2
# Where a request finds its connection in the ASGI scope (`Connection`): a follower
# learns that its client left from `gone()`, with no task of its own reading `receive`.
CONNECTION: Final = "recordline.connection"
# Where a request finds its charge of the process's budget (`app.budget.Charge`): its head
# and body, charged here as they are read; the app releases it once it has answered.
CHARGE: Final = "recordline.charge"
# What a request's body is charged, in copies of each byte as it is read (never for what
# its Content-Length declares), until it is answered: a push holds its body, the message
# data it decodes to and the record's text, and for a moment what the checks of that
# text copy (measured with tracemalloc, Pub/Sub's largest message: 2.75 times a wrapped
# body, 3 when its payload is all brackets; 4 times an unwrapped one all brackets; 1.5
# to 2 times once decoded, while it is stored).
BODY_COPIES: Final = 4
# The methods whose requests carry no body here: a read. What one that declares a body
# sends of it is dropped unread and uncharged (and the connection closed once it is
# answered, if the body did not end), so that no reader holds what it declares.
BODILESS: Final = frozenset({b"GET", b"HEAD"})
# What a connection's transport may hold of an answer before it stops taking more
# (writing paused until its client takes some): asyncio's default is 64 KiB. An answer
# is sent in slices (`app.query.events.SLICE_BYTES`), so a connection holds at most this and
# a slice of it beyond what the budget counts.
WRITE_HIGH_WATER: Final = 16 * 1024
# SO_LINGER on, for 0 s: a socket closed so is reset, what it had not sent dropped.
_RESET: Final = struct.pack("ii", 1, 0)
# The ASGI version a request's scope says (one dict, shared by every scope).
ASGI: Final = {"version": "3.0", "spec_version": "2.3"}


class ConnectionObserver(Protocol):
    """Told of each connection refused or closed by a bound; telemetry implements it
    (`recordline.connections.refused`, by reason)."""

    def refused(self, reason: str) -> None: ...


class Connection(Protocol):
    """What a request may ask of the connection that carries it."""

    def gone(self) -> asyncio.Future[None]:
        """A future done once the client has gone (the connection is lost)."""
        ...

    def cut(self) -> None:
        """Close the connection now, dropping what it has not sent: its client took
        nothing for SEND_TIMEOUT_SECONDS."""
        ...


class Refused(Exception):
    """Raised from a parser callback to stop httptools at once: what comes after a
    refused upgrade is no HTTP this module follows."""


def problem_bytes(error: RecordlineError, problems: Problems) -> bytes:
    """`error` as a whole HTTP/1.1 answer, its problem document, that closes the connection."""
    problem, headers = problems.of(error)
    body = msgspec.json.encode(problem)
    lines = [
        f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}",
        f"content-type: {MEDIA_TYPE}",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name.lower()}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connections:
    """The connections one server keeps: at most `most`, the one that has held no
    request longest closed to make room for another."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._open: set[BoundedConnection] = set()
        # Connections holding no request, longest first (a dict keeps insertion order).
        self._idle: dict[BoundedConnection, None] = {}

    def opened(self, connection: BoundedConnection) -> bool:
        """Count `connection` in, closing idle ones past the bound; False if it is one
        too many (every other connection holds a request)."""
        while len(self._open) >= self.most and self._idle:
            longest = next(iter(self._idle))
            self.closed(longest)
            longest.evict()
        self._open.add(connection)
        self._idle[connection] = None
        return len(self._open) <= self.most

    def crowded(self) -> bool:
        return len(self._open) > self.most

    def busy(self, connection: BoundedConnection) -> None:
        self._idle.pop(connection, None)

    def idle(self, connection: BoundedConnection) -> None:
        if connection in self._open:
            self._idle[connection] = None

    def closed(self, connection: BoundedConnection) -> None:
        self._open.discard(connection)
        self._idle.pop(connection, None)


class BoundedConnection(asyncio.Protocol):
    """One connection, every request on it bounded (see the module).

    `app`, `limits`, `problems`, `kept` and `budget` are read from the class, which
    `bounded_connections` makes per server: uvicorn builds one protocol per connection
    from the class it is given (`http=`), with the keywords below, and stops it
    gracefully through `server_state` (`connections`, each told `shutdown()`; `tasks`,
    awaited, then cancelled).
    """

    app: ClassVar[Any]
    limits: ClassVar[ServerSettings]
    problems: ClassVar[Problems]
    kept: ClassVar[Connections]
    budget: ClassVar[Budget]
    observer: ClassVar[ConnectionObserver | None] = None
    # Bound to a loopback address: only loopback names are answered (DNS rebinding).
    loopback: ClassVar[bool] = False

    __slots__ = (
        "_body_charge",
        "_body_read",
        "_charge",
        "_chunks",
        "_continue",
        "_crowded",
        "_cut",
        "_deadline",
        "_discarding",
        "_gone",
        "_head_ended",
        "_idle",
        "_in_flight",
        "_lingering",
        "_phase",
        "_read",
        "_refusal",
        "_stall",
        "_taken",
        "_unsent",
        "_writable",
        "app_state",
        "client",
        "connections",
        "exchange",
        "headers",
        "loop",
        "parser",
        "pipeline",
        "read_paused",
        "running",
        "scheme",
        "server",
        "tasks",
        "transport",
        "url",
        "write_paused",
    )

    def __init__(
        self,
        *,
        config: object,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = _loop or asyncio.get_running_loop()
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.app_state = app_state
        self.parser = httptools.HttpRequestParser(self)
        # A request after one that closes the connection is dropped, not an error that
        # would cut the answer to the one before it.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._continue = False
        # The request read last, and the one whose answer is being made (answers go
        # in the order of their requests); those read between them wait here, the
        # next on the right.
        self.exchange: Exchange | None = None
        self.running: Exchange | None = None
        self.pipeline: deque[Exchange] = deque()
        self.read_paused = False
        self.write_paused = False
        self._writable: asyncio.Event | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._phase = WAITING
        # Bytes the current head has taken of the reads so far (in a body: what the
        # reads after its first brought besides body bytes: framing and trailers).
        self._taken = 0
        # The current read's size, and its bytes the parser passed on as body.
        self._read = 0
        self._body_read = 0
        # The head ended in the current read: what of it is the body's is not known.
        self._head_ended = False
        # The request being read is a read whose body is dropped (BODILESS).
        self._discarding = False
        self._chunks = 0
        # Requests whose head was read and whose answer is not complete.
        self._in_flight = 0
        self._deadline: asyncio.TimerHandle | None = None
        # The answer that ends this connection (b"": none, only the close), once decided.
        self._refusal: bytes | None = None
        # Opened while every kept connection held a request.
        self._crowded = False
        # Answered its refusal; reading on only to drop what comes (LINGER_SECONDS).
        self._lingering = False
        # Done once the connection is lost: made when a request first asks (`gone`).
        self._gone: asyncio.Future[None] | None = None
        # While the transport holds more than it sends at once (writing paused): when the
        # client must have taken some of it, and how much was unsent then.
        self._stall: asyncio.TimerHandle | None = None
        self._unsent = 0
        # Cut off for taking nothing (`cut`): counted once.
        self._cut = False
        # What the request being read holds of the budget: its head as it arrives; the
        # app's once the head is whole (in its scope, CHARGE), and its body's as it is
        # read (`_body_charge`, until the body is whole).
        self._charge: Charge | None = None
        self._body_charge: Charge | None = None

    # The connection.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.transport = transport
        self.connections.add(self)
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._crowded = not self.kept.opened(self)
        # The first request's head is due from the moment the connection opens.
        self._arm(self.limits.header_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._disarm()
        self._unstall()
        self._keep_no_longer()
        self.kept.closed(self)
        for exchange in (self.running, self.exchange):
            if exchange is not None:
                exchange.lost()
        if self._writable is not None:
            self._writable.set()  # what waits to write learns it is lost
        # The requests still queued will never be answered: dropped now, with what
        # they held of the budget (the app never ran to release it), and the head
        # being read.
        for exchange in self.pipeline:
            exchange.scope[CHARGE].release()
        self.pipeline.clear()
        self._release_head()
        gone = self._gone
        if gone is not None and not gone.done():
            gone.set_result(None)
        # Freed now, not when the cyclic collector (rare, under `quiet_garbage_collector`)
        # finds that the parser's callbacks and this protocol, or its requests' exchanges
        # and it, refer to each other: until then, each closed connection kept its
        # objects and what its requests had read (~6 KB for a body cut short).
        del self.parser
        self.exchange = self.running = None
        if exc is None:
            self.transport.close()

    def shutdown(self) -> None:
        """The server stops: close now if no answer is due, else once it is sent."""
        exchange = self.exchange
        if exchange is None or exchange.response_complete:
            self.transport.close()
        else:
            exchange.keep_alive = False

    def gone(self) -> asyncio.Future[None]:
        """A future done once the client has gone: what a follower waits on to stop,
        where a task of its own would otherwise wait for `receive` to say so."""
        gone = self._gone
        if gone is None:
            gone = self._gone = self.loop.create_future()
            if self.transport.is_closing():
                gone.set_result(None)
            else:
                # The client's leaving is read, not held back behind a paused read.
                self.resume_reading()
        return gone

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        self._keep_no_longer()
        if self._phase == WAITING:
            # Whatever comes now is the next request's: its head's clock starts with it.
            self._begin()
        self._read = len(data)
        self._body_read = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Refused as its head ended (`_refusal_of_head`): never taken.
            self._refusal = self._refusal or b""
        except httptools.HttpParserError as exc:
            if self._refusal is None:
                malformed = MalformedRequest(
                    f"the request is not HTTP/1.1 this service reads: {exc}"
                )
                if self._phase == BODY:
                    # The request being read will never be whole: answered now, and closed.
                    self._refuse_in_body(malformed, reason="malformed")
                    return
                self._count("malformed")
                self._refusal = problem_bytes(malformed, self.problems)
        if self._refusal is not None:
            self._refuse()
            return
        phase = self._phase
        if phase == WAITING:
            return
        limits = self.limits
        if phase == HEAD:
            # Every byte of the read but the body of a request before it: at most one
            # read more than the head itself, where requests before it left framing.
            self._taken += len(data) - self._body_read
            if self._taken > limits.max_header_bytes:
                self._refuse_with(self._too_large("the request line and headers"))
            elif not self._head_charged(self._taken):
                self._refuse_with(self.budget.refusal())
            elif self._deadline is None:
                self._arm(limits.header_timeout_seconds)
            return
        if self._head_ended:
            self._head_ended = False
        else:
            self._taken += len(data) - self._body_read
            if self._taken > limits.max_header_bytes + CHUNK_FRAMING * self._chunks:
                self._refuse_in_body(self._too_large("the body's trailers and chunk framing"))
                return
        if self._deadline is None:
            self._arm(limits.body_timeout_seconds)

    def eof_received(self) -> bool | None:
        return None  # closed: what is sent after a client's EOF would go nowhere

    # The answers (`Carrier`).

    def answered(self, exchange: Exchange) -> None:
        if self._in_flight:  # none once a refusal cut the request being read
            self._in_flight -= 1
        self.running = None
        transport = self.transport
        if not transport.is_closing():
            pipeline = self.pipeline
            if pipeline:
                self._start(pipeline.pop())
            if pipeline:
                # Not read on while requests read already wait.
                self.pause_reading()
            else:
                self.resume_reading()
                if self._in_flight == 0:
                    self._keep(self.limits.keep_alive_seconds)
        if self._refusal is not None:
            if self._in_flight == 0:
                self._refuse()  # its turn, after the answers to the requests ahead of it
            return
        if self._phase == BODY and self.exchange is not None and self.exchange.response_complete:
            # Answered before its body was read whole: what is left is not read to be dropped.
            self.shed()
        elif self._in_flight == 0:
            self.kept.idle(self)

    def failed(self, exchange: Exchange, *, stopping: bool = False) -> None:
        # Cut off (`_refuse_in_body`) or gone: nothing more is written to it.
        if not exchange.disconnected and not self.transport.is_closing():
            error = (
                ShuttingDown("the instance stopped before the request was answered; retry")
                if stopping
                else RecordlineError("the service failed to answer")
            )
            self.transport.write(problem_bytes(error, self.problems))
            self.transport.close()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        writable = self._writable
        if writable is not None:
            await writable.wait()

    def _start(self, exchange: Exchange) -> None:
        self.running = exchange
        task = self.loop.create_task(exchange.run(self.app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (at once, dropping an
        answer its client has not taken: it no longer counts among those kept)."""
        self._count("idle-evicted")
        if self.transport.get_write_buffer_size():
            self._disarm()
            self.transport.abort()
        else:
            self.shed()

    def shed(self) -> None:
        """Close the connection, answering nothing more."""
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()

    def cut(self) -> None:
        """Close the connection now, dropping what it has not sent, for a client that took
        nothing for SEND_TIMEOUT_SECONDS (counted as `send-timeout`): a
        follower cut off releases the event it held at once, not when its client reads it
        (`close` would keep it until then)."""
        self._disarm()
        self._unstall()
        if self._cut:
            return  # the follower's deadline and the connection's, both of a send
        self._cut = True
        self._count("send-timeout")
        # Reset, not closed: closed, the socket would keep what the kernel holds for it
        # (up to megabytes, counted nowhere) and trickle it out to the client for minutes.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.transport.abort()
        # Told now, not once the loss is reported: a follower returns as it cuts, its
        # answer rightly unfinished.
        for exchange in (self.running, self.exchange):
            if exchange is not None:
                exchange.lost()

    # What the transport holds for the client: bounded in time.

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()
        if self._stall is None:
            self._unsent = self.transport.get_write_buffer_size()
            self._stall = self.loop.call_later(self.limits.send_timeout_seconds, self._stalled)

    def resume_writing(self) -> None:
        self._unstall()
        self.write_paused = False
        if self._writable is not None:
            self._writable.set()

    def _unstall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        """The client took nothing of its answer for SEND_TIMEOUT_SECONDS."""
        self._stall = None
        unsent = self.transport.get_write_buffer_size()
        if unsent < self._unsent:
            # It takes the answer, slowly: the time runs again from now.
            self._unsent = unsent
            self._stall = self.loop.call_later(self.limits.send_timeout_seconds, self._stalled)
            return
        self.cut()

    # httptools' callbacks.

    def on_message_begin(self) -> None:
        if self._refusal is not None:
            return
        if self._phase != HEAD:
            self._begin()
        self.url = b""
        self.headers = []
        self._continue = False

    def on_url(self, url: bytes) -> None:
        if self._refusal is None:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # In a body, a field is a trailer: measured with the framing, never a header.
        if self._phase != BODY and self._refusal is None:
            name = name.lower()
            if name == b"expect" and value.lower() == b"100-continue":
                self._continue = True
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._refusal is None:
            self._refusal = self._refusal_of_head()
        if self._refusal is not None:
            if self.parser.should_upgrade() or self._in_flight:
                # httptools would stop at the upgrade, or parse the rest of a read full
                # of pipelined requests: stop here instead.
                raise Refused
            return
        # Raises (the request is malformed) before anything is counted.
        scope = self._scope()
        self._phase = BODY
        self._taken = self._chunks = 0
        self._head_ended = True
        self._disarm()
        if not self._in_flight:
            self.kept.busy(self)
        self._in_flight += 1
        # The request's charge is the app's to release once it has answered.
        scope[CHARGE] = self._body_charge = self._charge
        self._charge = None
        parser = self.parser
        exchange = Exchange(
            scope,
            self,
            keep_alive=scope["http_version"] != "1.0" and parser.should_keep_alive(),
            continue_expected=self._continue,
        )
        before = self.exchange
        self.exchange = exchange
        if before is None or before.response_complete:
            self._start(exchange)
        else:
            # Answered after the requests before it: read on no further meanwhile.
            self.pause_reading()
            self.pipeline.appendleft(exchange)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        if self._refusal is not None:
            return
        size = len(body)
        self._body_read += size
        if self._discarding:
            return  # a read's body: dropped, unread by the app and uncharged
        exchange = self.exchange
        assert exchange is not None
        charge = self._body_charge
        # Charged as it is read, BODY_COPIES over (what the app makes of it), while the
        # app has not answered: past its answer, what comes is dropped.
        if (
            charge is not None
            and not exchange.response_complete
            and not charge.take_request(charge.size + BODY_COPIES * size)
        ):
            self._refuse_in_body(self.budget.refusal())
            return
        exchange.body_read(body)

    def on_message_complete(self) -> None:
        if self._refusal is not None:
            return
        self._phase = WAITING
        self._body_charge = None
        self._disarm()
        if self.exchange is not None:
            self.exchange.body_ended()

    # Bounds.

    def _scope(self) -> dict[str, Any]:
        """The ASGI scope of the request whose head was just read."""
        parser = self.parser
        url = httptools.parse_url(self.url)
        # A target in absolute form may have no path: it is the root (RFC 9110 §4.2.3).
        raw_path = url.path or b"/"
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        return {
            "type": "http",
            "asgi": ASGI,
            "http_version": parser.get_http_version(),
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": "",
            "method": parser.get_method().decode("ascii"),
            "path": path,
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "headers": self.headers,
            "state": self.app_state.copy(),
            CONNECTION: self,
        }

    def _begin(self) -> None:
        self._phase = HEAD
        self._taken = 0
        self._head_ended = False
        self._discarding = False

    def _keep(self, seconds: float) -> None:
        """Close the connection if no request begins within `seconds` (kept alive idle)."""
        self._idle = self.loop.call_later(seconds, self.shed)

    def _keep_no_longer(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _refusal_of_head(self) -> bytes | None:
        headers = self.headers
        limit = self.limits.max_header_bytes
        # The reads it came in bound a head from above: counted exactly only past the bound.
        if self._taken + self._read > limit or len(headers) > MAX_HEADERS:
            size = len(self.url) + _fields_bytes(headers)
            if size > limit or len(headers) > MAX_HEADERS:
                return self._answer(self._too_large("the request line and headers"))
        if self.parser.should_upgrade():
            return self._answer(
                UpgradeNotServed("this service serves HTTP/1.1 only: no upgrade, no CONNECT")
            )
        hosts = 0
        host = b""
        length = b""
        chunked = False
        for name, value in headers:  # lower-cased as read (`on_header`)
            if name == b"host":
                hosts += 1
                host = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        # What the body says it is (httptools took the length as digits alone): the
        # largest taken when chunked; none when larger (refused 413 as it is read).
        declared = int(length) if length else self.limits.max_body_bytes if chunked else 0
        body = declared > 0 or chunked
        if hosts != 1 and (hosts or self.parser.get_http_version() != "1.0"):
            said = "no Host header" if hosts == 0 else f"{hosts} Host headers"
            return self._answer(
                AmbiguousRequest(f"{said}: an HTTP/1.1 request names its host once")
            )
        if self.loopback and hosts and _host_name(host) not in LOOPBACK_NAMES:
            return self._answer(
                MisdirectedRequest(
                    f"bound to {self.limits.host}, this service answers for localhost, "
                    f"127.0.0.1 and [::1] only, not {host[:80].decode('latin-1')!r}"
                )
            )
        if self._crowded and self.kept.crowded():
            return self._answer(
                TooManyConnections(
                    f"every one of the {self.kept.most} connections this instance keeps "
                    "(RECORDLINE_MAX_CONNECTIONS) carries a request"
                )
            )
        if self._in_flight and self._queued_too_much(len(self.url) + _fields_bytes(headers)):
            return self._answer(
                TooManyPipelined(
                    f"more than {MAX_PIPELINED} requests (or {limit} bytes of their heads) "
                    "waiting on one connection behind the one "
                    "being answered; send the rest again on a new connection"
                )
            )
        # A read's body is dropped unread (`on_body`), never charged nor kept.
        self._discarding = body and self.parser.get_method() in BODILESS
        # The head (at most the reads it came in); its body as it is read (`on_body`),
        # never by what it declares, which the app weighs against the room there is
        # (`app.http.head`: `Charge.vow`).
        if not self._head_charged(min(self._taken + self._read, limit)):
            return self._answer(self.budget.refusal())
        if declared <= self.limits.max_body_bytes and not self._discarding:
            self._charge.declared = declared  # type: ignore[union-attr]
        return None

    def _head_charged(self, size: int) -> bool:
        """Whether the request being read holds `size` bytes of the budget (taken now if
        there is room); if not, nothing more is taken."""
        charge = self._charge
        if charge is None:
            charge = self._charge = Charge(self.budget)
        return charge.take_request(size)

    def _release_head(self) -> None:
        """Give back what the request being read holds: it is refused, or its connection
        is gone."""
        charge = self._charge
        if charge is not None:
            charge.release()
            self._charge = None

    def _queued_too_much(self, head: int) -> bool:
        """Whether one more request, of a head of `head` bytes, is more than this connection
        may queue behind the one being answered (counted only when requests are queued)."""
        queued = self.pipeline
        if len(queued) >= MAX_PIPELINED:
            return True
        for exchange in queued:
            scope = exchange.scope
            head += len(scope["raw_path"]) + len(scope["query_string"])
            head += _fields_bytes(scope["headers"])
        return head > self.limits.max_header_bytes

    def _too_large(self, what: str) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"{what} are larger than {self.limits.max_header_bytes} bytes, "
            f"or than {MAX_HEADERS} fields"
        )

    def _answer(self, error: RecordlineError) -> bytes:
        """`error` as the answer that ends this connection, counted by its problem."""
        self._count(error.problem)
        return problem_bytes(error, self.problems)

    def _count(self, reason: str) -> None:
        if self.observer is not None:
            self.observer.refused(reason)

    def _refuse_with(self, error: RecordlineError) -> None:
        self._refusal = self._answer(error)
        self._refuse()

    def _refuse_in_body(self, error: RecordlineError, reason: str | None = None) -> None:
        """Refuse the request whose body is being read, now: answered, unless the app
        has begun its own answer, and closed; counted by `reason`, else its problem."""
        reading = self.exchange if self._phase == BODY else None
        started = reading is not None and reading.response_started
        self._count(reason or error.problem)
        if started:  # the app's answer is under way: the connection is only closed
            self._refusal = b""
        else:
            self._refusal = problem_bytes(error, self.problems)
        if reading is not None and not reading.response_complete:
            if self.pipeline and self.pipeline[0] is reading:
                # Queued behind answers not yet complete: never run, and refused after
                # them (answers go in the order of their requests).
                self.pipeline.popleft()
                reading.scope[CHARGE].release()
            else:
                # Its app learns that it is cut off (`receive`), and writes nothing more.
                reading.lost()
            self._in_flight = max(0, self._in_flight - 1)
        self._refuse()

    def _refuse(self) -> None:
        """Answer the refusal and close, once the requests ahead of it are answered
        (answers go in the order of their requests); what comes after it is dropped."""
        if self._lingering:
            return
        self._disarm()
        self._release_head()
        transport = self.transport
        if transport.is_closing() or self._in_flight:
            return
        if not self._refusal or not transport.can_write_eof():
            if self._refusal:
                transport.write(self._refusal)
            transport.close()
            return
        transport.write(self._refusal)
        transport.write_eof()
        # Read on a while, dropping it, then close (a client's EOF closes it sooner).
        self._lingering = True
        self.resume_reading()
        self._deadline = self.loop.call_later(LINGER_SECONDS, self.shed)

    def _arm(self, seconds: float) -> None:
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._phase != BODY:
            # A head not in within its time (or nothing at all since the connection opened).
            self._count("head-timeout")
            self.shed()
        elif self.read_paused:
            # The server holds the reading back (the app has not taken what came, or a
            # request ahead is not answered yet): that time is not the client's.
            self._arm(self.limits.body_timeout_seconds)
        else:
            seconds = self.limits.body_timeout_seconds
            self._refuse_in_body(
                RequestTimeout(f"the body did not arrive within {seconds:g} s of the headers")
            )


def _fields_bytes(headers: Any) -> int:
    return sum(len(name) + len(value) + HEADER_FRAMING for name, value in headers)


def bounded_connections(
    app: Any,
    limits: ServerSettings,
    observer: ConnectionObserver | None = None,
    budget: Budget | None = None,
) -> type[BoundedConnection]:
    """The protocol class uvicorn is given (`http=`), serving `app` with these bounds, for
    one server; `observer` is told of each connection a bound refused or closed;
    requests are charged to `budget`, the app's (by default one of
    RECORDLINE_MEMORY_BUDGET_BYTES of its own)."""
    return type(
        "BoundedConnection",
        (BoundedConnection,),
        {
            "__slots__": (),
            # Static: an app that is a plain function is not made a method of the class.
            "app": staticmethod(app),
            "limits": limits,
            "problems": Problems(max_body_bytes=limits.max_body_bytes),
            "kept": Connections(limits.max_connections),
            "observer": observer,
            "budget": budget if budget is not None else Budget(limits.memory_budget_bytes),
            "loopback": is_loopback(limits.host),
        },
    )


def _address(info: Any) -> tuple[str, int] | None:
    """A socket's address as ASGI has it (host, port), or None (a Unix socket)."""
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


# The names a loopback service answers for, in a Host header (RFC 3986's host).
LOOPBACK_NAMES: Final = frozenset({b"localhost", b"127.0.0.1", b"[::1]"})


def _host_name(host: bytes) -> bytes:
    """A Host header's name, without its port, lower-cased."""
    host = host.strip().lower()
    if host.startswith(b"["):
        return host.partition(b"]")[0] + b"]"
    return host.partition(b":")[0]

"""The access record: who read, exported, replayed or was refused what, a JSON line a
request on the `recordline.access` log: who (the identity a guard verified, admitted or
refused), the action, the request (its parameters bounded, a filter on a masked name by
its keyed hash), the rows read for it (app.query.served) or counted, the bytes sent and
whether a mask showed them. Every export, replay, pass, refusal, count and read answered
rows is a line; a follower's long-polls are summed, a line a minute for each who followed
what; a read answered no rows is none. Each line is kept in the system's own store too,
where it keeps one (a `Keeper`).

Design: docs/security.md#who-read-what
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl

from litestar.enums import ScopeType
from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from app.auth.guards import admitted_by_pass, proven_as
from app.http.head import HEAD_REQUEST
from app.query.served import SERVED, Served
from app.store.access import ANYONE
from app.telemetry.logs import line_system

log = logging.getLogger("recordline.access")
# Recorded whatever RECORDLINE_LOG_LEVEL says of the service's other lines.
log.setLevel(logging.INFO)

# What a request's parameters may take of a line: so many, each cut at so many
# characters (a parameter is the caller's to make as long as a URL goes).
MOST_PARAMETERS: Final = 16
MOST_CHARACTERS: Final = 256
# A path is cut at so many (a request's head may hold 16 KiB of one).
MOST_PATH: Final = 1024
# A client that left before it was answered (nginx's word for it).
CLIENT_GONE: Final = 499
# The parameters whose value is no one's to read: an opaque page token (it may carry
# a filter), said by its length.
OPAQUE: Final = frozenset({"page_token"})
# A follower's long-polls are summed this long, and for at most so many followers (by
# who, what and how masked) at once: a line a minute for each.
FOLLOWING_SECONDS: Final = 60.0
MOST_FOLLOWING: Final = 1000
# What differs from one poll of a follower to the next.
PER_POLL: Final = frozenset({"page_token", "offset", "cursor"})


class Keeper(Protocol):
    """Keeps each line beside the log (app.query.access.AccessKeeper)."""

    def add(self, entry: dict[str, Any]) -> None: ...


# What a line keeps of a parameter's value: the value, or its keyed hash where it names
# what a mask hides (Mask.parameter).
Shown = Callable[[str, str], str]


class AccessRecord:
    """The access record of one app: middleware recording each request of a route
    group, and the followers' polls summed until `flush` (FOLLOWING_SECONDS after the
    first of them, and as the app stops)."""

    def __init__(
        self, *, system: str = "", shown: Shown | None = None, keeper: Keeper | None = None
    ) -> None:
        self._system = system
        self._shown = shown
        # Where a line is kept beside the log: the system's own store (app.query.access).
        self._keeper = keeper
        self._following: dict[tuple[Any, ...], dict[str, Any]] = {}
        # Writes the sums a minute after the first of them, whether or not another
        # request comes (a follower that stopped is recorded then, not at the next
        # request or as the app stops, which may be days on or never).
        self._timer: asyncio.TimerHandle | None = None

    def middleware(self, action: str) -> DefineMiddleware:
        """Middleware recording each request of a route group as `action` (read, export,
        replay, pass)."""

        def recorded(app: ASGIApp) -> ASGIApp:
            async def record(scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] != ScopeType.HTTP:
                    await app(scope, receive, send)
                    return
                served = Served()
                token = SERVED.set(served)
                status, sent = 0, 0
                # A HEAD is answered as its GET, whose content is not sent (app.http.head).
                head = HEAD_REQUEST in scope
                started = time.monotonic()

                async def counting(message: Message) -> None:
                    nonlocal status, sent
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    elif message["type"] == "http.response.body" and not head:
                        sent += len(message.get("body", b""))
                    await send(message)

                try:
                    await app(scope, receive, counting)
                except asyncio.CancelledError:
                    status = status or CLIENT_GONE
                    raise
                except Exception as exc:
                    status = status or getattr(exc, "status_code", 500)
                    raise
                finally:
                    SERVED.reset(token)
                    # A read that told what it found without rows (a count) is one too.
                    told = served.facts is not None
                    if served.rows or told or status >= 400 or action != "read":
                        entry = line(scope, action, self._system, status, served, sent, self._shown)
                        entry["seconds"] = round(time.monotonic() - started, 6)
                        self._record(entry)

            return record

        return DefineMiddleware(recorded)

    def _record(self, entry: dict[str, Any]) -> None:
        if entry["status"] < 400 and following(entry["parameters"]):
            key = (
                entry["action"],
                entry["principal"],
                entry["method"],
                entry["path"],
                entry["masked"],
                tuple(tuple(p) for p in entry["parameters"] if p[0] not in PER_POLL),
            )
            summed = self._following.get(key)
            if summed is None:
                if len(self._following) >= MOST_FOLLOWING:
                    self.flush()
                if not self._following:
                    self._timer = asyncio.get_running_loop().call_later(
                        FOLLOWING_SECONDS, self.flush
                    )
                summed = self._following[key] = entry | {
                    "parameters": [p for p in entry["parameters"] if p[0] not in PER_POLL],
                    "requests": 0,
                    "rows": 0,
                    "bytes": 0,
                    "seconds": 0.0,
                    "first": _wall(),
                }
            summed["requests"] += 1
            summed["rows"] += entry["rows"]
            summed["bytes"] += entry["bytes"]
            summed["seconds"] = round(summed["seconds"] + entry["seconds"], 6)
            summed["last"] = _wall()
        else:
            _write(entry, self._keeper)

    def flush(self) -> None:
        """Write the followers' polls summed since the last flush, a line each."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        summed, self._following = self._following, {}
        for entry in summed.values():
            _write(entry, self._keeper)

    @asynccontextmanager
    async def lifespan(self, _: Any) -> AsyncIterator[None]:
        """Flush the followers' polls as the app stops."""
        try:
            yield
        finally:
            self.flush()


def following(parameters: list[list[str]]) -> bool:
    """Whether a request's parameters make it a follower's long-poll."""
    return any(
        name == "wait" or (name == "live" and value == "long-poll") for name, value in parameters
    )


def _write(entry: dict[str, Any], keeper: Keeper | None) -> None:
    log.info(
        "%s %s %s %d: %d rows for %s",
        entry["action"],
        entry["method"],  # one of the server's own tokens, as its parser read it
        _printable(entry["path"]),
        entry["status"],
        entry["rows"],
        entry["principal"] or ANYONE,  # a verified token's e-mail, or the service's words
        extra={"fields": {"access": entry}},
    )
    if keeper is not None:
        keeper.add(entry)


def _printable(text: str) -> str:
    """`text` with what is not printable ASCII escaped: a line of text on a terminal
    holds a path as its caller sent it, and a newline there would start a line of its
    own (the JSON line escapes it already)."""
    return text if text.isascii() and text.isprintable() else ascii(text)[1:-1]


def _wall() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def line(
    scope: HTTPScope,
    action: str,
    system: str,
    status: int,
    served: Served,
    sent: int,
    shown: Shown | None,
) -> dict[str, Any]:
    """The access record of one request."""
    principal = proven_as(scope)
    if principal is None and admitted_by_pass(scope):
        principal = "read pass"
    entry = {
        "action": action,
        # A cell's dispatcher says which system a request is for (`line_system`).
        "system": line_system.get() or system or None,
        "principal": principal,
        "method": "HEAD" if HEAD_REQUEST in scope else scope["method"],
        "path": _cut(scope["path"] if shown is None else shown("path", scope["path"]), MOST_PATH),
        "parameters": parameters(scope.get("query_string", b""), shown),
        "status": status,
        "rows": served.rows,
        "bytes": sent,
        "masked": served.masked,
    }
    if served.facts is not None:
        entry |= served.facts
    return entry


def parameters(query: bytes, shown: Shown | None) -> list[list[str]]:
    """A request's parameters as [name, value] pairs, bounded, a page token by its
    length and a filter on a masked name by its keyed hash."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    kept = []
    for name, value in pairs[:MOST_PARAMETERS]:
        if name in OPAQUE:
            value = f"[{len(value)} characters]"
        elif shown is not None:
            value = shown(name, value)
        kept.append([_cut(name), _cut(value)])
    if len(pairs) > MOST_PARAMETERS:
        kept.append(["…", f"{len(pairs) - MOST_PARAMETERS} more"])
    return kept


def _cut(text: str, most: int = MOST_CHARACTERS) -> str:
    return text if len(text) <= most else text[:most] + "…"

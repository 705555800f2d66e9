"""What followers are sent, encoded once for all of them: server-sent events, and the
one cache of what was made of each read.

Followers woken together are given the same read (`app.query.follow`), so what a
protocol makes of it (a page, its JSON, its event; a stream's chunk) is made once and
kept while someone holds what it was made of, ENCODED_BYTES at most, the least
recently used dropped first. (Once, 64 pages were kept whatever their size: six
pages of 4 MB records held 4 GB.) docs/reading.md#following-the-tail
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, Final, TypeVar

import cachetools

T = TypeVar("T")

# Encodings kept of what followers are being sent, in bytes at most.
ENCODED_BYTES: Final = 32 * 1024 * 1024
# What an idle stream sends now and then, so that its client and every proxy
# between know it is alive.
HEARTBEAT: Final = b": heartbeat\n\n"
# An answer's body is handed to the connection this much at a time, each slice once the
# connection has room for it: what is not sent yet stays with the answer, charged with
# it, and once the app has answered a connection holds at most one slice and what its
# transport keeps (`app.http.limits.WRITE_HIGH_WATER`). Written whole, a page its client
# never reads was held by the connection, uncounted, until it was cut off. An event's
# data larger than a slice is sent in pieces, not copied into a frame (`framed`).
SLICE_BYTES: Final = 64 * 1024

# What a stream sends at a time: an event, or the pieces of one too large to be copied
# into a frame of its own (its head, its data, its end), sent one after the other.
Event = bytes | tuple[bytes, ...]


def event(kind: bytes, data: bytes, event_id: str | None = None) -> bytes:
    """One server-sent event; `data` is JSON from msgspec, which is one line."""
    return _event_head(kind, event_id) + data + EVENT_END


def framed(kind: bytes, data: bytes, event_id: str | None = None) -> Event:
    """One server-sent event: whole, or, for `data` larger than a slice, its three
    pieces (a copy of the data would be the page's third)."""
    head = _event_head(kind, event_id)
    if len(data) > SLICE_BYTES:
        return (head, data, EVENT_END)
    return head + data + EVENT_END


def event_bytes(sent: Event) -> int:
    """The bytes of an event, whole or in pieces."""
    return len(sent) if isinstance(sent, bytes) else sum(map(len, sent))


EVENT_END: Final = b"\n\n"


def _event_head(kind: bytes, event_id: str | None) -> bytes:
    head = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
    return head + b"event: " + kind + b"\ndata: "


class Encodings:
    """What was made of each object followers share (a read, a page, a chunk), by what
    it was made for: made once, kept while the object lives, `max_bytes` at most."""

    def __init__(self, max_bytes: int = ENCODED_BYTES) -> None:
        # By the object's id: while it lives (`_Made`), and `max_bytes` at most.
        self._made: cachetools.LRUCache[int, _Made] = cachetools.LRUCache(
            maxsize=max_bytes, getsizeof=_Made.weight
        )

    @property
    def bytes(self) -> int:
        """What the encodings kept hold now (`max_bytes` at most), as they are counted."""
        return int(self._made.currsize)

    def of(
        self,
        source: object,
        key: Hashable,
        make: Callable[[], T],
        size: Callable[[T], int] = lambda _: 0,
        *,
        apart: bool = False,
    ) -> T:
        """What `make` makes of `source` for `key`, made once while `source` lives.
        The first made of it sizes the entry, by `size` (the bytes it holds); what is
        made `apart` from it (a projection of a page, and its event) adds its own."""
        made = self._made.get(id(source))
        if made is None or made.source() is not source:
            made = _Made(source, self._made, id(source))
        found: T | None = made.values.get(key)
        if found is not None:
            return found
        value = make()
        made.values[key] = value
        if apart:
            made.apart += size(value)
        elif not made.bytes:
            made.bytes = size(value)
        try:
            self._made[id(source)] = made  # counted anew, with what it holds now
        except ValueError:  # larger than them all: not kept (nor counted as it was)
            self._made.pop(id(source), None)
        return value


class _Made:
    """What was made of one object, kept while it lives: once nobody holds it, the
    entry leaves the cache, whatever room is left (`_forget`)."""

    __slots__ = ("apart", "bytes", "source", "values")

    def __init__(self, source: object, cache: cachetools.LRUCache[int, _Made], key: int) -> None:
        self.values: dict[Hashable, Any] = {}
        # The size of the first thing made of it (`weight`).
        self.bytes = 0
        # The sizes of what was made apart from it (`Encodings.of`).
        self.apart = 0
        self.source = weakref.ref(source, _forget(cache, key))

    def weight(self) -> int:
        # The first encoding, the event made of it, and what it was made of (a page's
        # views, about as many bytes as their JSON), counted whether or not they are
        # made yet; and what was made apart from them.
        return 3 * self.bytes + self.apart


def _forget(cache: cachetools.LRUCache[int, _Made], key: int) -> Callable[[weakref.ref[Any]], None]:
    """What drops an object's encodings from `cache` once the object is gone."""

    def gone(ref: weakref.ref[Any]) -> None:
        found = cache.get(key)
        if found is not None and found.source is ref:
            del cache[key]

    return gone

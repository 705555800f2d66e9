"""Copies of one message: which a store keeps, and when a later one says something else.

Delivery is at least once, so a message may arrive (and be stored, on
BigQuery) several times; every store keeps or shows its first copy only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import cachetools
import msgspec

from app.records import Record, Rejection
from app.store import MessageState


def message_states(found: Iterable[tuple[str, MessageState]]) -> dict[str, MessageState]:
    """`Store.seen`'s answer from (message_id, state) rows, a stored copy winning."""
    states: dict[str, MessageState] = {}
    for message_id, state in found:
        if states.get(message_id) != "stored":
            states[message_id] = state
    return states


# What makes two copies of a message the same message: a redelivery repeats them
# (its ingest time, trace and delivery attempt are its own).
_CONTENT: dict[type[Record | Rejection], tuple[str, ...]] = {
    Record: ("id", "data", "attributes"),
    Rejection: ("data", "attributes"),
}


def differing(kept: Record | Rejection, later: Record | Rejection) -> list[str]:
    """The content in which `later`, a copy of the message `kept` holds, differs from it.

    Empty for a redelivery. Pub/Sub never gives two messages one id, but a
    publisher-side replay, a topic recreated, or an emulator whose ids start
    from 1 again can: the store keeps its first copy, and the other is lost.
    """
    if type(kept) is not type(later):
        return []  # a record and a rejection of one message live side by side
    return [name for name in _CONTENT[type(kept)] if getattr(kept, name) != getattr(later, name)]


class ConflictObserver(Protocol):
    """Told of a later copy of a stored message whose content differs from the stored
    one (which stays; the later one is acknowledged and dropped): telemetry counts and
    logs it. Stores that see every copy as they write it (DuckDB, the serving tier)
    are given one."""

    def __call__(self, kept: Record | Rejection, later: Record | Rejection) -> None: ...


# Messages whose later copies `LaterCopies` keeps: the most recent, each a few hundred
# bytes at most (a message id is at most MAX_ID_LENGTH, 1 KiB), so ~1 MiB in all.
LATER_COPIES_KEPT = 1000


class LaterCopy(msgspec.Struct, kw_only=True, frozen=True):
    """Later copies of a stored message that said something else, acknowledged and not
    stored (the first copy is kept): as this instance saw them since it started."""

    count: int
    # What the last of them said otherwise: `id`, `data`, `attributes`.
    differs: list[str]
    # When the last arrived (µs since the epoch).
    last_seen: int


class LaterCopies:
    """A ConflictObserver that keeps, for the LATER_COPIES_KEPT messages seen most
    recently, their later copies that differed, so that `/v1/messages/{id}` can say
    what became of them: a log line is otherwise all that is left of such a copy.

    A sender controls these (a topic recreated, an emulator whose ids start from 1
    again), so the memory is bounded by the count of messages kept."""

    def __init__(self, *, kept: int = LATER_COPIES_KEPT, clock: Callable[[], float] = time.time):
        self._seen: cachetools.LRUCache[str, LaterCopy] = cachetools.LRUCache(maxsize=kept)
        # Stores call their observer from the event loop or from their own threads.
        self._lock = threading.Lock()
        self._clock = clock

    def __call__(self, kept: Record | Rejection, later: Record | Rejection) -> None:
        fields = differing(kept, later)
        if not fields:
            return
        now = int(self._clock() * 1_000_000)
        with self._lock:
            before = self._seen.get(kept.message_id)
            count = 1 if before is None else before.count + 1
            self._seen[kept.message_id] = LaterCopy(count=count, differs=fields, last_seen=now)

    def of(self, message_id: str) -> LaterCopy | None:
        with self._lock:
            return self._seen.get(message_id)


def told_all(*observers: ConflictObserver | None) -> ConflictObserver | None:
    """One ConflictObserver telling each of `observers` (None for none)."""
    present = [o for o in observers if o is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def tell(kept: Record | Rejection, later: Record | Rejection) -> None:
        for observer in present:
            observer(kept, later)

    return tell

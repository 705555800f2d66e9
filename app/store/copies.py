"""Copies of one message: which a store keeps, and when a later one says something else.

Delivery is at least once, so a message may arrive (and be stored, on
BigQuery) several times; every store keeps or shows its first copy only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

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

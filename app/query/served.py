"""What one request was served, counted where its rows are read, for its access record
(app.http.access): the request sets a `Served` current, and each read made for it adds
the rows it read and whether a mask showed them."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Served:
    """The rows read to answer one request, and whether a mask showed them."""

    rows: int = 0
    masked: bool = False
    # What the request did beyond reading rows, for its line (a replay's messages and
    # the note its operator gave): the line's own fields, beside the others.
    facts: dict[str, Any] | None = None


SERVED: ContextVar[Served | None] = ContextVar("served", default=None)


def served(rows: int, *, masked: bool) -> None:
    """Count `rows` read for the request in hand, if it keeps an access record."""
    current = SERVED.get()
    if current is not None:
        current.rows += rows
        current.masked = current.masked or masked


def told(**facts: Any) -> None:
    """Put `facts` on the access record of the request in hand, if it keeps one."""
    current = SERVED.get()
    if current is not None:
        current.facts = (current.facts or {}) | facts

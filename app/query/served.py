"""What one request was served, counted where its rows are read, for its access record
(app.http.access): the request sets a `Served` current, and each read made for it adds
the rows it read and whether a mask showed them."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class Served:
    """The rows read to answer one request, and whether a mask showed them."""

    rows: int = 0
    masked: bool = False


SERVED: ContextVar[Served | None] = ContextVar("served", default=None)


def served(rows: int, *, masked: bool) -> None:
    """Count `rows` read for the request in hand, if it keeps an access record."""
    current = SERVED.get()
    if current is not None:
        current.rows += rows
        current.masked = current.masked or masked

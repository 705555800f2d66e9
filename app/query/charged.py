"""What a read holds of the process's budget: the one policy every read the API answers
is charged by (a page, a stream's chunk, a follower's read, a look-up).

A read is charged READ_COPIES times its rows' bytes (`row_bytes`), before the store is
read, for as much of the most it may return as the budget has room for: given less, it
reads fewer bytes and the next goes on after it. What it holds is given back once
nothing made of it is held any more (`Charge.until_gone`).

Design: docs/security.md#memory-bound
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec

from app.budget import Budget, Charge, Share
from app.store import row_bytes, within

# The rows, and the answer made of them (a page's views share their rows' text; its
# JSON, or a stream's chunk, is the second copy, and an event frames it without copying
# once it is larger than a slice).
READ_COPIES: Final = 2
# What a read is given room for at the least (times READ_COPIES): a usual row's worth.
# A thousand followers of small rows are not refused for the 8 MiB each might bring.
READ_LEAST_BYTES: Final = 64 * 1024

T = TypeVar("T")
H = TypeVar("H")
# A store's read of at most so many bytes: its rows (in key order), the key the next
# read continues after, and up to when it is complete (µs).
Rows = tuple[list[Any], tuple[int, str], int]


class Charged(msgspec.Struct, frozen=True, gc=False):
    """A read's rows, as many as were given room for (`short`: fewer bytes than asked,
    for want of room), and what they hold (`size`, no less than their `row_bytes`)."""

    rows: list[Any]
    resume: tuple[int, str]
    horizon: int
    size: int
    short: bool


async def read_charged(
    budget: Budget | None,
    share: Share | None,
    max_bytes: int,
    read: Callable[[int], Awaitable[Rows]],
    make: Callable[[Charged, Charge | None], Awaitable[H]],
) -> H:
    """What `make` makes of `read` of at most `max_bytes` (the first row whatever its
    size), on a charge of its own in `share` of `budget` (None: not counted): for fewer
    bytes while the budget has less room, read again once there is room for a first row
    larger than was given. Charged, from before `make` on, for what the rows hold (not
    the room given: a rejections page's `make` asks the store), until what `make` made
    is gone; given back at once if the read or `make` fails."""
    charge = None if budget is None else Charge(budget, share)
    try:
        short = again = False
        if charge is not None:
            # Room for the most the read may bring before it holds a row, or for what
            # the budget has room for now: it reads no more bytes than that, a page cut
            # short as by its own budget, and as final.
            most = READ_COPIES * max_bytes
            given = await charge.read_up_to(READ_COPIES * READ_LEAST_BYTES, most)
            short = given < most
            max_bytes = given // READ_COPIES
        if charge is not None and short:
            # Past its charge by one row at most, for a moment: a few such reads at once.
            async with charge.budget.short_reads:
                rows, resume, horizon = await read(max_bytes)
                kept, size = within(rows, max_bytes)
                again = not charge.fits(READ_COPIES * size)
                if again:
                    rows = []  # let go before another read may take the slot
        else:
            rows, resume, horizon = await read(max_bytes)
            kept, size = within(rows, max_bytes)
        while charge is not None and (again or not charge.fits(READ_COPIES * size)):
            again = False
            # A first row larger than there was room for: let go, and read again once
            # there is room for it.
            rows = []
            await charge.read(READ_COPIES * size)
            rows, resume, horizon = await read(max_bytes)
            kept, size = within(rows, max_bytes)
        if kept < len(rows):
            # A store that read past the budget: the rest waits for the next read.
            rows = rows[:kept]
            resume = (rows[-1].ingest_time, rows[-1].message_id)
        if charge is not None:
            charge.shrink(READ_COPIES * size)
        made = await make(Charged(rows, resume, horizon, size, short), charge)
    except BaseException:
        if charge is not None:
            charge.release()
        raise
    if charge is not None:
        charge.until_gone(made)
    return made


async def look_up(
    charge: Charge | None,
    find: Callable[[], Awaitable[T]],
    row_of: Callable[[T], Any],
) -> T:
    """`find`'s answer, charged to `charge` (a request's, besides what it holds already)
    for the row in it (`row_of`: None for none): found again once there is room for a row
    larger than there is room for now."""
    base = 0 if charge is None else charge.size
    while True:
        found = await find()
        row = row_of(found)
        if charge is None or row is None:
            return found
        need = base + READ_COPIES * row_bytes(row)
        if charge.fits(need):
            return found
        # Larger than there is room for now: let go, and read again once there is.
        del found, row
        await charge.read(need)

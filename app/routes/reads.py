"""Room kept for pushes: reads in flight bounded below the connections, exports by the budget.

A reader may hold its connection for minutes: at the bound on connections, 50
streams once made every push 503. So reads in flight are at most
`ServerSettings.max_reads` (what PUSH_RESERVE, a fifth, leaves of the connections;
one more is 503 `too-many-reads`), and exports, which hold a chunk until taken, one
for each EXPORT_BYTES of the budget (`too-many-exports`); in a cell, each system's
share of both (`app.budget.Places`).

Design: docs/security.md#room-for-pushes
"""

from __future__ import annotations

from collections.abc import Callable

from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from app.budget import Places
from app.errors import RetryLater, TooManyExports, TooManyReads

# A full instance is asked again after this long: most reads end within it.
FULL_RETRY_SECONDS = 1
# An export holds a chunk of up to a page (4 MiB) until its client takes it, and its
# page's read (twice that) while it makes the next: the process sends at most one
# export for each this many bytes of its budget (RECORDLINE_MEMORY_BUDGET_BYTES), so
# that exports waiting on slow clients hold a bounded part of it.
EXPORT_BYTES = 16 * 1024 * 1024
# An export refused is asked again after this long: an export takes seconds.
EXPORT_RETRY_SECONDS = 5


def export_places(memory_budget_bytes: int) -> Places:
    """The exports a process sends at once: one for each EXPORT_BYTES of its budget, one
    at least."""
    return Places(max(1, memory_budget_bytes // EXPORT_BYTES))


def reads_middleware(places: Places) -> DefineMiddleware:
    """For the routers of reads: each request counted while in flight, and refused with
    TooManyReads while `places` are full."""

    def refusal() -> RetryLater:
        where = "this instance serves" if places.pool is None else "this system serves"
        return TooManyReads(
            f"{where} {places.open} reads at once, the most it keeps room for beside "
            "pushes (a fifth of RECORDLINE_MAX_CONNECTIONS); retry",
            retry_after=FULL_RETRY_SECONDS,
        )

    return held_while_in_flight(places, refusal)


def exports_middleware(places: Places) -> DefineMiddleware:
    """For the export route: each export counted while in flight, and refused with
    TooManyExports while `places` are full."""

    return held_while_in_flight(places, lambda: exports_refusal(places))


def exports_refusal(places: Places) -> TooManyExports:
    """The refusal of an export while `places` are full."""
    where = "this instance sends" if places.pool is None else "this system sends"
    return TooManyExports(
        f"{where} {places.open} exports at once, the most it may; retry",
        retry_after=EXPORT_RETRY_SECONDS,
    )


def held_while_in_flight(places: Places, refusal: Callable[[], RetryLater]) -> DefineMiddleware:
    """Middleware holding one of `places` while a request is in flight, its answer sent
    or its client gone; `refusal()` while there is none."""

    def counted(app: ASGIApp) -> ASGIApp:
        async def count(scope: Scope, receive: Receive, send: Send) -> None:
            # Below its own bound and not in a cell, it has room: the usual read asks
            # nothing more (`Places.full`, `take` and `give`, written out).
            pool = places.pool
            if (places.open >= places.most or pool is not None) and places.full():
                raise refusal()
            places.open += 1
            if pool is not None:
                pool.open += 1
            try:
                await app(scope, receive, send)
            finally:
                places.open -= 1
                if pool is not None:
                    pool.open -= 1

        return count

    return DefineMiddleware(counted)

"""A follower's seat is given back, and let go of, as the follower ends, whatever its
connection does after it, in a real `recordline serve`'s server."""

from __future__ import annotations

import gc

import httpx
import pytest

from app.asgi import create_app
from app.query.follow import Seat
from app.store.duckdb.store import DuckDBStore
from tests.conftest import served, settings

# Among the slowest: left out by `dev.py test --quick`.
pytestmark = pytest.mark.slow

# Streams of a range already complete, one after another on one connection: each ends
# at once, with its `end` event.
STREAMS = 50
ENDED = "/v1/records?until=2000-01-01T00:00:00Z"


def seats() -> int:
    """The followers' seats alive in this process now."""
    gc.collect()
    return sum(isinstance(thing, Seat) for thing in gc.get_objects())


async def test_streams_ended_on_one_kept_connection_hold_no_seat_each() -> None:
    # What it proves: a stream (of pages, and of a Durable Stream's SSE alike:
    # `app.routes.follow.stream`, `app.routes.streams._sse`) hangs the release of its seat
    # on its connection's `gone` future (`stop.add_done_callback(seat.release)`) and never
    # takes it off as the stream ends. On a kept connection every stream that ended
    # stays there, its seat with it, until the client closes the connection: a client
    # that opens streams of a complete range one after another on one connection grows
    # the process by every one (uncharged to the budget), its seats released long ago.
    app = create_app(settings(), store=DuckDBStore(":memory:"))
    async with served(app, bounded=True) as client:
        before = seats()
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=client.base_url, limits=limits) as one:
            for _ in range(STREAMS):
                answer = await one.get(ENDED, headers={"Accept": "text/event-stream"})
                assert answer.status_code == 200, answer.text
                assert "event: end" in answer.text
            # Every stream has ended, its connection still kept.
            held = seats() - before
        assert held < STREAMS // 10, f"{held} seats of {STREAMS} streams that ended"

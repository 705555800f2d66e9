"""Room kept for pushes: the reads in flight at once are bounded below the connections kept.

A reader may hold its connection for minutes (a waiting page, a stream): at the
bound on connections, 50 streams once made every push 503, and Pub/Sub then backs
off for the whole subscription. So reads, waiting pages, streams and replays in
flight are at most `ServerSettings.max_reads` (what RECORDLINE_PUSH_RESERVE leaves
of RECORDLINE_MAX_CONNECTIONS); one more is 503 `too-many-reads`.

Design: docs/security.md#room-for-pushes
"""

from __future__ import annotations

from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from app.errors import TooManyReads

# A full instance is asked again after this long: most reads end within it.
FULL_RETRY_SECONDS = 1


class Reads:
    """The reads one app serves at once, and the most it serves."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.open = 0

    def middleware(self) -> DefineMiddleware:
        """For the routers of reads: each request counted while in flight, and refused
        with TooManyReads while `most` are."""
        reads = self

        def counted(app: ASGIApp) -> ASGIApp:
            async def count(scope: Scope, receive: Receive, send: Send) -> None:
                if reads.open >= reads.most:
                    raise TooManyReads(
                        f"this instance serves {reads.open} reads at once, the most it keeps "
                        "room for beside pushes (RECORDLINE_MAX_CONNECTIONS, "
                        "RECORDLINE_PUSH_RESERVE); retry",
                        retry_after=FULL_RETRY_SECONDS,
                    )
                reads.open += 1
                try:
                    await app(scope, receive, send)
                finally:
                    reads.open -= 1

            return count

        return DefineMiddleware(counted)

"""Room kept for pushes: the reads in flight at once are bounded below the connections kept.

Each request holds its connection while it is in flight, and a reader may hold
one for minutes (a waiting page, a stream of pages): at the process's bound on
connections, 50 streams once made every push 503, and Pub/Sub then backs off
for the whole subscription. So reads, waiting pages, streams and replays in
flight at once are at most `ServerSettings.max_reads`, what the share of
RECORDLINE_MAX_CONNECTIONS kept for pushes (RECORDLINE_PUSH_RESERVE) leaves;
one more is answered 503 `too-many-reads` before it costs anything. The server
bounds the rest (`app.http.limits`): connections idle between requests, or
whose head is still arriving, are closed to make room. Within the reads,
waiting pages and streams have their own bound (RECORDLINE_MAX_FOLLOWERS).
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

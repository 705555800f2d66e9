"""recordline.read.duration and the reads' SLO events: what a reader waits for.

A read route's request to response, by route template, for answers a reader acts on
(2xx, and 404). Each read is also an `availability` event (good unless 5xx) and, if
it does not wait for rows (no `wait=`, `live=` or event stream), a `read_latency`
event (good within RECORDLINE_SLO_READ_LATENCY_SECONDS) of `recordline.slo.events`.
Synthetic reads (uptime checks, the smoke test, the canary) are left out.

Design: docs/operations.md#slis-and-slos
"""

from __future__ import annotations

import time
from collections import Counter

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.metrics import Histogram

from app.records import CANARY_ATTRIBUTE
from app.telemetry.metrics import SLO_READ

SYNTHETIC_USER_AGENTS = (b"GoogleStackdriverMonitoring-UptimeChecks", b"recordline-smoke")
_CANARY_PATH = f"/v1/records/{CANARY_ATTRIBUTE}"


def synthetic(scope: Scope) -> bool:
    """Whether a request is a probe's, the smoke test's or a read of the canary."""
    if scope["path"] == _CANARY_PATH:
        return True
    for name, value in scope["headers"]:
        if name == b"user-agent":
            return value.startswith(SYNTHETIC_USER_AGENTS)
    return False


def counted(status: int) -> bool:
    return 200 <= status < 300 or status == 404


def waits(scope: Scope) -> bool:
    """Whether a read may wait for rows (a long-poll or a stream): its latency is the
    follower's choice, not the service's."""
    query: bytes = scope["query_string"]
    if b"wait=" in query or b"live=" in query:
        return True
    for name, value in scope["headers"]:
        if name == b"accept" and b"text/event-stream" in value:
            return True
    return False


class ReadDurations:
    """Plain ASGI middleware on the read routes (after routing: the route template is
    known); `slo`, where given, counts each read's SLO events (`Metrics.slo`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        histogram: Histogram,
        slo: Counter[tuple[tuple[str, str], ...]] | None = None,
        latency_seconds: float = 1.0,
    ) -> None:
        self.app = app
        self.histogram = histogram
        self.slo = slo
        self.latency_seconds = latency_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if synthetic(scope):
            await self.app(scope, receive, send)
            return
        observed = _Observed(send, scope, self.histogram)
        try:
            await self.app(scope, receive, observed)
        finally:
            slo, status = self.slo, observed.status
            # Not answered at all (the client left first): no event.
            if slo is not None and status:
                slo[SLO_READ["availability", status < 500]] += 1
                took = observed.took
                if took is not None and counted(status) and not waits(scope):
                    fast = took - observed.started <= self.latency_seconds
                    slo[SLO_READ["read_latency", fast]] += 1


class _Observed:
    """A request's `send`, timing its answer: an object of slots, where a closure and
    its cells held twice as much for as long as the request (an idle follower's, hours)."""

    __slots__ = ("histogram", "scope", "send", "started", "status", "took")

    def __init__(self, send: Send, scope: Scope, histogram: Histogram) -> None:
        self.send = send
        self.scope = scope
        self.histogram = histogram
        self.started = time.perf_counter()
        self.status = 0
        # When the whole answer was sent (perf_counter), once it was.
        self.took: float | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)
        if message["type"] != "http.response.body" or message.get("more_body"):
            return
        took = self.took = time.perf_counter()
        if counted(self.status):
            self.histogram.record(took - self.started, {"route": self.scope["path_template"]})

"""recordline.read.duration: what a reader waits for, the read-latency SLI.

The time from a read request reaching a read route to its response being sent, by
route template, recorded for answers a reader acts on (2xx, and 404); errors
count against availability instead. Synthetic reads (uptime checks, the deploy's
smoke test, reads of the canary) are left out, so they neither dilute nor spend
the budget.

Design: docs/operations.md#slis-and-slos
"""

from __future__ import annotations

import time

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.metrics import Histogram

from app.records import CANARY_ATTRIBUTE

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


class ReadDurations:
    """Plain ASGI middleware on the read routes (after routing: the route template is known)."""

    def __init__(self, app: ASGIApp, *, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if synthetic(scope):
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Observed(send, scope, self.histogram))


class _Observed:
    """A request's `send`, timing its answer: an object of slots, where a closure and
    its cells held twice as much for as long as the request (an idle follower's, hours)."""

    __slots__ = ("histogram", "scope", "send", "started", "status")

    def __init__(self, send: Send, scope: Scope, histogram: Histogram) -> None:
        self.send = send
        self.scope = scope
        self.histogram = histogram
        self.started = time.perf_counter()
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)
        finished = message["type"] == "http.response.body" and not message.get("more_body")
        if finished and counted(self.status):
            self.histogram.record(
                time.perf_counter() - self.started, {"route": self.scope["path_template"]}
            )

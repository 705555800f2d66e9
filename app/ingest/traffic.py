"""Whether this instance serves a share of its service's push traffic.

The serving tier's exporter asks it: only a revision the push subscription
reaches may take the export (`app.store.tiered.exporter`), so a candidate
deployed with no traffic never exports with code that is not yet serving.
A push counts once it is acknowledged, and only when it came through the
service's own URL: Cloud Run's tag URLs (`TAG---SERVICE-….run.app`) reach one
tagged revision alone, which is how the deploy smoke-tests a candidate with no
traffic, so a push through one says nothing of the subscription's traffic.
"""

from __future__ import annotations

import time
from typing import Final

# An instance serves traffic while it has acknowledged a push within this long:
# Pub/Sub pushes a busy subscription many times a minute, and a revision that
# lost its traffic stops taking the export's lease within ten minutes.
TRAFFIC_SECONDS: Final = 600.0
# What separates a tag from the service's name in a Cloud Run tag URL's host.
TAG_SEPARATOR: Final = "---"


class Traffic:
    def __init__(self, *, window: float = TRAFFIC_SECONDS) -> None:
        self._window = window
        self._pushed_at = -float("inf")
        self._pushed_wall: float | None = None

    def pushed(self, host: str | None) -> None:
        """A push to `host` (its Host header) was acknowledged."""
        if host is not None and TAG_SEPARATOR in host:
            return
        self._pushed_at = time.monotonic()
        self._pushed_wall = time.time()

    def last_push(self) -> float | None:
        """When a push through the service's own URL was last acknowledged (seconds
        since the epoch, as other instances' clocks read it), None if never: the
        exporter's lease compares it with other revisions' (a rollback)."""
        return self._pushed_wall

    def serving(self) -> bool:
        """Whether a push through the service's own URL was acknowledged lately."""
        return time.monotonic() - self._pushed_at < self._window

"""A system's canary, looked for in its own store: `recordline.canary.age` per system.

Cloud Scheduler publishes a canary to each system's topic every minute (id and
attribute `recordline-canary`); the push path reports the newest it stores. In a
cell, one uptime check probes the cell, and whether each system's pipeline moves is
read here instead: every PROBE_SECONDS, the newest canary in the system's own store
(one look-up of its id), so that a system whose pushes stopped reaching this
instance (another instance stores them) still reports its age.

Design: docs/cells.md#telemetry
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

from app.errors import RetryLater
from app.records import CANARY_ATTRIBUTE, Record

log = logging.getLogger(__name__)

# Once a minute, as the canary is published: its age is read to within a minute,
# at one look-up a minute per system and instance.
PROBE_SECONDS: Final = 60.0
# The canary's record id, as the scheduler publishes it.
CANARY_ID: Final = CANARY_ATTRIBUTE


class Latest(Protocol):
    """The part of a store the probe asks."""

    async def latest(self, record_id: str) -> Record | None: ...


class CanaryProbe:
    """Tells `found` the publish time (µs) of the newest canary `store` holds, every
    `seconds`, for as long as it runs (a loop under the app's supervisor)."""

    def __init__(
        self, store: Latest, found: Callable[[int], None], *, seconds: float = PROBE_SECONDS
    ) -> None:
        self._store = store
        self._found = found
        self._seconds = seconds

    async def probe(self) -> None:
        """Look once; RetryLater if the store does not answer."""
        record = await self._store.latest(CANARY_ID)
        if record is not None:
            self._found(record.publish_time)

    async def run(self) -> None:
        while True:
            try:
                await self.probe()
            except RetryLater as exc:  # the store is down: readiness says so already
                log.warning("the canary was not looked for: %s", exc.detail)
            await asyncio.sleep(self._seconds)

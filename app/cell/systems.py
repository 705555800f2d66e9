"""One system of a cell: its app started, kept and stopped on its own.

A system's app is started under the cell's supervisor, as a loop of its own
(`system <name>`): a start that fails is logged, counted, and tried again after a
pause with a new app, while the others serve; meanwhile it answers 503
`system-unavailable`. One whose own settings cannot be used never starts, and says
why. A stop ends each app as `recordline serve` ends its one: rows drained, store closed.

Design: docs/cells.md#isolation
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from app.http.head import Recordline
from app.settings import SYSTEMS_OWN, SettingsError
from app.telemetry.logs import line_system

log = logging.getLogger(__name__)

# A system whose start failed is started again after 1 s, doubling to a minute.
START_RETRY_SECONDS: Final = 1.0
START_RETRY_MAX_SECONDS: Final = 60.0


class CellSystem:
    """A system of the cell: its name, how its app is made, and the app while it serves."""

    def __init__(
        self, name: str, build: Callable[[], Recordline], fault: SettingsError | None = None
    ) -> None:
        self.name = name
        self._build = build
        # Why its own settings cannot be used, if so: it never starts.
        self.fault = fault
        # Made once when the cell is made, again for each start after a failed one.
        self._next: Recordline | None = None
        if fault is None:
            try:
                self._next = build()
            except SettingsError as exc:
                if exc.var not in SYSTEMS_OWN:
                    raise  # the cell's own setting: the cell does not start
                self.fault = exc
                log.error("system %s does not serve: its settings: %s", name, exc)
        # The app while it serves requests; None while it starts, after a failed
        # start, and once it stops.
        self.app: Recordline | None = None
        # Why it does not serve, while it does not.
        self.why = "starting" if self.fault is None else f"its settings: {self.fault}"
        # Set once its first start is over, whether it started or not.
        self.tried = asyncio.Event()
        self._stop = asyncio.Event()
        # Set when the run in progress, if any, is over.
        self._ended: asyncio.Event | None = None

    async def run(self) -> None:
        """Start the system's app, serve until `stop`, then stop it (a supervised loop:
        a start that fails raises, and is tried again). One whose settings cannot be used
        never starts: nothing it could try again would change them."""
        if self._stop.is_set() or self.fault is not None:
            self.tried.set()
            return
        line_system.set(self.name)
        app, self._next = self._next or self._build(), None
        self._ended = asyncio.Event()
        try:
            async with app.lifespan():
                self.app, self.why = app, ""
                self.tried.set()
                log.info("system %s serves", self.name)
                await self._stop.wait()
                self.app, self.why = None, "stopping"
        except Exception as exc:
            self.why = f"it did not start: {said(exc)}"
            raise
        finally:
            self.app = None
            self.tried.set()
            self._ended.set()

    def stopping(self) -> None:
        """SIGTERM: the app's followers end and its batcher hurries now (`Lifespan.stopping`)."""
        app = self.app
        if app is not None and app.stopping is not None:
            app.stopping()

    async def stop(self, within: float) -> None:
        """End the app's lifespan (its rows drained, its store closed) within `within` s;
        a system not running (between two starts) has nothing to end."""
        self._stop.set()
        self.why = "stopping"
        ended = self._ended
        if ended is None or ended.is_set():
            return
        try:
            async with asyncio.timeout(within):
                await ended.wait()
        except TimeoutError:
            log.warning("system %s did not stop within %.1f s", self.name, within)


def said(exc: BaseException) -> str:
    """An exception in one line: each error a group of them holds (Litestar's lifespan
    raises a task group's), its type and what it says."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(said(inner) for inner in exc.exceptions)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

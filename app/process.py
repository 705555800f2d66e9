"""The process's stop: one budget from SIGTERM to exit, and the signal that starts it.

Cloud Run kills a container 10 s after SIGTERM, whatever it is doing; each step
of the stop takes what is left of one clock. Design: docs/contract.md (group commit, on SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

# Of the stop's budget, what is kept after in-flight writes are answered: the
# export lease handed back (1 s at most), the clients closed, and spans flushed.
CLOSING_SECONDS = 2.0
# The least given to flushing telemetry, last of all.
TELEMETRY_SECONDS = 0.5


class StopBudget:
    """One clock for the whole stop, started by SIGTERM (or by the lifespan's end,
    whichever comes first): each step takes what is left of it, so the process exits
    within `seconds` whatever its dependencies do. Cloud Run kills 10 s after SIGTERM.

    A cell's system stops `within` the cell's clock once the cell stops; before that (a
    start that failed, whose app is ended to be started again) on a clock of its own,
    which leaves the cell's untouched: once, a system's failed start began the cell's
    clock, and the cell's SIGTERM found no time left to drain anything."""

    def __init__(self, seconds: float, *, within: StopBudget | None = None) -> None:
        self.seconds = seconds
        self._within = within
        self._began: float | None = None

    @property
    def began(self) -> bool:
        """Whether the stop began."""
        return self._began is not None

    def begin(self) -> float:
        """When the stop began (now, the first time; the cell's, once the cell stops)."""
        within = self._within
        if within is not None and within.began:
            return within.begin()
        if self._began is None:
            self._began = time.monotonic()
        return self._began

    def left(self, *, keeping: float = 0.0) -> float:
        """Seconds left of the budget, less what later steps keep (never below 0)."""
        return max(0.0, self.begin() + self.seconds - keeping - time.monotonic())


@contextlib.contextmanager
def on_terminate(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` (on the event loop) when the process is asked to stop (SIGTERM,
    or SIGINT: Ctrl-C), then let the handler that was there (the server's: drain and
    stop) do its part, while inside.

    Only the main thread may handle signals: elsewhere (an app in a test's thread)
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in stops}

    def terminated(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        before = previous[signal.Signals(signum)]
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for signum in stops:
        signal.signal(signum, terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

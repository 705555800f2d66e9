"""One owner for a store's background loops: each restarted when it fails, counted,
and named by readiness while it stays down.

Every loop runs in one `asyncio.TaskGroup`; a failure of any kind is logged with
its traceback, counted (`recordline.loop.restarts`) and the loop started again
after a jittered backoff. A loop failing for longer than its own interval is
`down`, named by readiness, and its `on_down` called once per streak. A `finite`
loop ends when its body returns; `close` cancels them all and waits for them.

Design: docs/stores.md#serving-deadlines; alert: docs/operations.md#loop-restarting
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from app.errors import StoreUnavailable
from app.store.backoff import Backoff

log = logging.getLogger(__name__)

# A failed loop starts again after 0.5 s, doubling per failure in a row to 30 s:
# a loop that fails at once every time costs a wake-up a half-minute.
RESTART_SECONDS: Final = 0.5
RESTART_MAX_SECONDS: Final = 30.0
# How long a loop's `on_down` may take.
ON_DOWN_SECONDS: Final = 5.0


class LoopObserver(Protocol):
    """Told of each restart; telemetry implements it (`recordline.loop.restarts`)."""

    def restarted(self, loop: str) -> None: ...


class _Loop:
    """One supervised loop and the streak of failures it is in, if any."""

    def __init__(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        interval: float,
        now: float,
        on_down: Callable[[], Awaitable[None]] | None = None,
        *,
        finite: bool = False,
        pauses: Backoff | None = None,
    ) -> None:
        self.name = name
        self.body = body
        self.interval = interval
        self.on_down = on_down
        self.finite = finite
        # Whether `on_down` was called in the current streak of failures.
        self.said_down = False
        self.backoff = pauses or Backoff(RESTART_SECONDS, RESTART_MAX_SECONDS)
        # When the current run began (None while it waits to start again), and
        # when the streak of failures began.
        self.running_since: float | None = now
        self.failing_since: float | None = None
        self.error: str | None = None
        self.restarts = 0

    def settle(self, now: float) -> None:
        """A run that lasted its interval ends the streak of failures before it."""
        running = self.running_since
        if (
            self.failing_since is not None
            and running is not None
            and now - running >= self.interval
        ):
            self.failing_since = None
            self.error = None
            self.said_down = False
            self.backoff.reset()


class Supervisor:
    """Runs loops until `close`; see the module notes."""

    def __init__(
        self,
        *,
        observer: LoopObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._observer = observer
        self._monotonic = monotonic
        # Each loop running, with its task (two loops may share a name: a writer
        # replaced by another of the same table runs until it is stopped).
        self._loops: dict[_Loop, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        self._group = await self._stack.enter_async_context(asyncio.TaskGroup())

    def run(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        *,
        interval: float,
        on_down: Callable[[], Awaitable[None]] | None = None,
        finite: bool = False,
        pauses: Backoff | None = None,
    ) -> Callable[[], Awaitable[None]]:
        """Run `body()` (a coroutine that never returns, or, `finite`, one whose return
        ends the loop) until `close`, started again whenever it fails, after `pauses`
        (by default 0.5 s doubling to 30 s); `interval`: how long it may be down before
        readiness says so, and `on_down()` is called (once per streak of failures).
        Returns what stops this loop alone, and waits for it to end."""
        if self._group is None:
            raise RuntimeError("the supervisor is not started")
        loop = _Loop(name, body, interval, self._monotonic(), on_down, finite=finite, pauses=pauses)
        self._loops[loop] = self._group.create_task(self._keep(loop), name=name)

        async def stop() -> None:
            task = self._loops.pop(loop, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        return stop

    async def _keep(self, loop: _Loop) -> None:
        while True:
            loop.running_since = self._monotonic()
            try:
                await loop.body()
                if loop.finite:  # its work is done
                    self._loops.pop(loop, None)
                    return
                raise RuntimeError(f"the {loop.name} loop returned; it never should")
            except Exception as exc:  # any failure: logged, counted, restarted
                now = self._monotonic()
                loop.settle(now)
                loop.running_since = None
                if loop.failing_since is None:
                    loop.failing_since = now
                loop.error = f"{type(exc).__name__}: {exc}"
                loop.restarts += 1
                pause = loop.backoff.next()
                log.exception("the %s loop failed; starting it again in %.1f s", loop.name, pause)
                if self._observer is not None:
                    self._observer.restarted(loop.name)
                if now - loop.failing_since > loop.interval:
                    await self._say_down(loop)
            await asyncio.sleep(pause)

    async def _say_down(self, loop: _Loop) -> None:
        if loop.on_down is None or loop.said_down:
            return
        loop.said_down = True
        try:
            async with asyncio.timeout(ON_DOWN_SECONDS):
                await loop.on_down()
        except Exception:  # the loop's own failure is what is reported
            log.exception("the %s loop is down; what it does then failed too", loop.name)

    def down(self) -> list[str]:
        """Each loop failing for longer than its interval, as `name (error) for N s`."""
        now = self._monotonic()
        found = []
        for loop in self._loops:
            loop.settle(now)
            if loop.failing_since is not None and now - loop.failing_since > loop.interval:
                found.append(f"{loop.name} ({loop.error}) for {now - loop.failing_since:.0f} s")
        return found

    def check(self) -> None:
        """Readiness: StoreUnavailable naming each loop that is down, if any."""
        down = self.down()
        if down:
            raise StoreUnavailable(f"background work down: {'; '.join(down)}")

    def restarts(self, name: str) -> int:
        """How often the running loops named `name` were started again."""
        return sum(loop.restarts for loop in self._loops if loop.name == name)

    async def close(self) -> None:
        """Cancel every loop and wait for each to end."""
        for task in self._loops.values():
            task.cancel()
        self._loops.clear()
        self._group = None
        await self._stack.aclose()

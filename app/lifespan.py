"""The service's start and stop, in order, and undone in reverse.

Each step is undone even when one before it failed: a store that fails to
close still leaves telemetry flushed. The stop takes one budget
(`app.process.StopBudget`); design: docs/contract.md (group commit, on SIGTERM).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from litestar import Litestar

from app.health import Readiness
from app.ingest.batcher import Batcher
from app.ingest.schemas import Schemas
from app.process import CLOSING_SECONDS, TELEMETRY_SECONDS, StopBudget, on_terminate
from app.query.follow import Followers
from app.store import Store
from app.store.supervisor import Supervisor
from app.telemetry import Telemetry

log = logging.getLogger("recordline")

# The access record's last lines get at most this of the stop's budget.
KEEP_LAST_SECONDS = 2.0


@dataclass(frozen=True)
class Loop:
    """A background loop of the app's own, supervised while the service runs."""

    name: str
    body: Callable[[], Awaitable[None]]
    interval: float


class AppLoops:
    """The app's own background loops (beside the store's): the batcher's flusher and
    deadline sweep, and any added; each restarted if it fails, and named by readiness
    while it is down."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._loops: list[Loop] = []

    def add(self, loop: Loop) -> None:
        self._loops.append(loop)

    async def check(self) -> None:
        self.supervisor.check()

    async def start(self, stack: AsyncExitStack) -> None:
        await self.supervisor.start()
        stack.push_async_callback(self.supervisor.close)
        for loop in self._loops:
            self.supervisor.run(loop.name, loop.body, interval=loop.interval)


@dataclass(frozen=True)
class Lifespan:
    """What the service starts, in order, and how it stops within `budget`."""

    store: Store
    batcher: Batcher
    schemas: Schemas
    followers: Followers
    readiness: Readiness
    telemetry: Telemetry
    loops: AppLoops
    budget: StopBudget
    store_url: str
    # Clients of other services the app made as it ran, closed as it stops (the
    # topic's publisher, made by an operator's first test message).
    clients: tuple[Callable[[], Awaitable[None]], ...] = ()
    # Whether this app hears SIGTERM itself; a cell's systems hear it from the cell
    # (`stopping`), which installs one handler for them all.
    signals: bool = True
    # Written as the app stops, before the store closes, given what is left of the
    # stop's budget: the access record's lines still waiting (app.query.access).
    keep_last: Callable[[float], Awaitable[None]] | None = None
    # Set once the store closed in the stop's budget (a close cut short leaves it unset).
    store_closed: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @asynccontextmanager
    async def __call__(self, _: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._flush_telemetry)
            await self.store.start()
            stack.push_async_callback(self._close_store)
            if self.keep_last is not None:
                stack.push_async_callback(self._keep_last, self.keep_last)
            stack.push_async_callback(self.schemas.close)
            for close in self.clients:
                stack.push_async_callback(close)
            # The batcher's loops run under the app's supervisor: it is closed after them.
            await self.loops.start(stack)
            await self.batcher.start(self.loops.supervisor)
            stack.push_async_callback(self._drain)
            # uvicorn waits for open requests before the lifespan ends: waiting
            # pages and streams must hear of a SIGTERM or a Ctrl-C at once to end in the grace.
            if self.signals:
                stack.enter_context(on_terminate(self.stopping))
            log.info("recordline ready on store %s", self.store_url)
            yield
        closed = ", store closed" if self.store_closed.is_set() else ""
        log.info("recordline stopped: accepted rows drained%s", closed)

    def stopping(self) -> None:
        """SIGTERM: the stop's clock starts now, not once uvicorn is done waiting."""
        self.budget.begin()
        self.followers.stop()
        self.batcher.hurry(within=self.budget.left(keeping=CLOSING_SECONDS))

    async def _drain(self) -> None:
        self.readiness.stopping = True
        self.followers.stop()
        await self.batcher.close(grace=self.budget.left(keeping=CLOSING_SECONDS))

    async def _keep_last(self, keep: Callable[[float], Awaitable[None]]) -> None:
        await keep(min(KEEP_LAST_SECONDS, self.budget.left(keeping=CLOSING_SECONDS)))

    async def _close_store(self) -> None:
        # The clients are closed in what is left; a close cut short leaves
        # only daemon threads, which do not hold the process up.
        try:
            async with asyncio.timeout(self.budget.left(keeping=TELEMETRY_SECONDS)):
                await self.store.close()
            self.store_closed.set()
        except TimeoutError:
            log.warning("the store did not close within the stop's budget; exiting anyway")

    async def _flush_telemetry(self) -> None:
        await self.telemetry.shutdown(within=max(self.budget.left(), TELEMETRY_SECONDS))

"""The exporter service's process: each system's export opened, kept and stopped.

Each system is exported with its own settings (`system_settings`), telemetry and log
label. What fails in one system is that system's: a start that fails is tried again
after a pause, by a Supervisor that counts it (loop `export start`). The cell's
throttles file is read as its ingest service reads it (`app.cell.throttles`): a system
whose export on-call slowed waits between its batches. SIGTERM stops it within
SHUTDOWN_GRACE_SECONDS, every lease handed back.

Design: docs/operations.md#the-exporter-service
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from app.asgi import fetching_schemas, store_revisions
from app.cell.throttles import STALE_SECONDS, Throttles
from app.ingest.schemas import Schemas
from app.settings import Settings, SettingsError, system_settings
from app.store.backoff import Backoff
from app.store.open import open_export, spanner_clients
from app.store.supervisor import Supervisor
from app.store.tiered.balance import Balance
from app.store.tiered.exporter import LEASE_SECONDS, holder_name
from app.store.tiered.fleet import SystemExport
from app.telemetry import Telemetry
from app.telemetry.logs import line_system
from app.typed.revisions import Revisions

if TYPE_CHECKING:
    from app.store.spanner.calls import SpannerClients

__all__ = [
    "ExporterService",
    "Pool",
    "exported_systems",
    "pool_throttles",
    "serve",
    "system_settings",
]

log = logging.getLogger(__name__)

# A system whose start failed (its clients could not be opened) is started again
# after 1 s, doubling to a minute: a credentials problem logs a line a minute.
START_RETRY_SECONDS: Final = 1.0
START_RETRY_MAX_SECONDS: Final = 60.0
# Of the stop's budget, what is kept for flushing metrics, last of all.
TELEMETRY_SECONDS: Final = 0.5


@dataclass(slots=True)
class Exported:
    """One system of the exporter service: how its export is opened, and what reports
    on it (its metrics, its schema revisions)."""

    name: str
    open: Callable[[], SystemExport]
    telemetry: Telemetry
    schemas: Schemas
    export: SystemExport | None = None


@dataclass(frozen=True)
class Pool:
    """What one exporter instance shares among its systems: its name in the leases,
    one telemetry (each system's series its own), one Spanner client per project, and
    its view of the pool, by which it holds about its share of the leases."""

    name: str
    telemetry: Telemetry
    spanner: SpannerClients
    balance: Balance

    @classmethod
    def of(cls, settings: Settings, systems: int, *, instance: str | None = None) -> Pool:
        name = instance or holder_name()
        return cls(
            name,
            Telemetry.from_settings(settings, instance=name, by_system=True),
            spanner_clients(settings),
            Balance(name, systems, lease_seconds=LEASE_SECONDS),
        )


def pool_throttles(settings: Settings) -> Throttles | None:
    """What on-call slowed (RECORDLINE_THROTTLES), read as the cell's ingest service reads
    it: an entry of any system of the cell is one (an export slows only a system that
    has one); none if the setting is unset."""
    if not settings.cell.throttles:
        return None
    named = settings.systems().keys() | settings.cell.faults().keys()
    return Throttles(settings.cell.throttles, named)


def exported_systems(
    settings: Settings,
    *,
    instance: str | None = None,
    pool: Pool | None = None,
    throttles: Throttles | None = None,
) -> list[Exported]:
    """Every system of RECORDLINE_SYSTEMS with a serving tier, opened on `pool` (nothing
    connects yet), each export paced as `throttles` says; a system whose settings cannot
    be used is left out (logged)."""
    systems = {name: entry for name, entry in settings.systems().items() if entry.serving}
    # A system whose entry cannot be used is that system's fault: the others export.
    for name, fault in settings.cell.faults().items():
        log.error("system %s is not exported: %s", name, fault)
    pool = pool or Pool.of(settings, len(systems), instance=instance)
    found = []
    for name, system in systems.items():
        own = system_settings(settings, name, system)
        # Records name the revision their schema had; one no process decoded is
        # fetched from the Schema API, as the ingest service fetches it.
        try:
            schemas = fetching_schemas(own)
        except SettingsError as exc:
            # As the cell's ingest service takes it: that system's fault alone (its rows
            # wait in Spanner, its export's lag says so), the others export.
            log.error("system %s is not exported: %s", name, exc)
            continue
        telemetry = pool.telemetry.for_system(name)
        revisions = store_revisions(schemas)

        def make(
            name: str = name,
            own: Settings = own,
            telemetry: Telemetry = telemetry,
            revisions: Revisions = revisions,
        ) -> SystemExport:
            return open_export(
                name,
                own,
                revisions=revisions,
                observers=telemetry.store_observers(),
                spanner=pool.spanner,
                balance=pool.balance,
                throttle=None if throttles is None else throttles.export_pace(name),
            )

        found.append(Exported(name, make, telemetry, schemas))
    return found


class ExporterService:
    """Every system's export in this process, until `stop` is set; see the module notes."""

    def __init__(
        self,
        systems: list[Exported],
        *,
        grace_seconds: float,
        pool: Pool | None = None,
        throttles: Throttles | None = None,
    ) -> None:
        self.systems = systems
        self._grace = grace_seconds
        # What the systems share, stopped once they are (their telemetry is its views).
        self._pool = pool
        # What on-call slowed: the systems' exports are paced as it says (`exported_systems`).
        self.throttles = throttles
        # The process's own loops (the throttles' reads), and each system's, counting
        # its restarts in its metrics.
        self._own = Supervisor(observer=None if pool is None else pool.telemetry.loop_observer())
        self._supervisors: list[Supervisor] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Export until `stop` is set, then stop within the grace."""
        await self._own.start()
        if self.throttles is not None:
            # Read before any export starts: a system whose export is throttled as this
            # instance starts is paced from its first batch (within the read's deadline).
            await self.throttles.read()
            self._own.run("throttles", self.throttles.watch, interval=STALE_SECONDS)
        for system in self.systems:
            supervisor = Supervisor(observer=system.telemetry.loop_observer())
            await supervisor.start()
            self._supervisors.append(supervisor)
            # Each system's tasks, its loops included, inherit its name for their lines.
            context = contextvars.copy_context()
            context.run(line_system.set, system.name)
            context.run(
                supervisor.run,
                "export start",
                functools.partial(self._start, system),
                interval=START_RETRY_MAX_SECONDS,
                finite=True,
                pauses=Backoff(START_RETRY_SECONDS, START_RETRY_MAX_SECONDS),
            )
        log.info("exporting %d systems: %s", len(self.systems), ", ".join(self.names))
        await stop.wait()
        loop = asyncio.get_running_loop()
        ends = loop.time() + self._grace
        await self._close(within=max(0.0, ends - loop.time() - TELEMETRY_SECONDS))
        if self._pool is not None:
            await self._pool.spanner.close()
        telemetries = [s.telemetry for s in self.systems]
        if self._pool is not None:
            telemetries.append(self._pool.telemetry)
        await asyncio.gather(
            *(t.shutdown(within=max(TELEMETRY_SECONDS, ends - loop.time())) for t in telemetries)
        )
        log.info("the exporter stopped: every lease it held handed back")

    @property
    def names(self) -> list[str]:
        return [system.name for system in self.systems]

    async def _start(self, system: Exported) -> None:
        """Start the system's export; one that fails closes what it opened, and its
        supervisor starts it again after a pause (the other systems go on)."""
        # Kept before it starts: a stop meanwhile closes what it opened.
        export = system.export = system.open()
        try:
            await export.start()
        except Exception:
            system.export = None
            with contextlib.suppress(Exception):
                await export.close()
            raise
        log.info("exporting %s", system.name)

    async def _close(self, *, within: float) -> None:
        for supervisor in reversed(self._supervisors):
            await supervisor.close()
        await self._own.close()
        if self.throttles is not None:
            # Its read's thread let go, whatever a read that never returned holds.
            self.throttles.close()

        async def close(system: Exported) -> None:
            if system.export is not None:
                await system.export.close()
            await system.schemas.close()

        try:
            async with asyncio.timeout(within):
                # At once, every system: each hands its lease back within a second.
                results = await asyncio.gather(
                    *(close(s) for s in self.systems), return_exceptions=True
                )
        except TimeoutError:
            log.warning("the exports did not close within the stop's budget; exiting anyway")
            return
        for system, result in zip(self.systems, results, strict=True):
            if isinstance(result, BaseException):
                log.error("the export of %s did not close cleanly: %s", system.name, result)


async def serve(settings: Settings) -> None:
    """`recordline exporter`: every system's export, until SIGTERM or SIGINT."""
    serving = [name for name, entry in settings.systems().items() if entry.serving]
    pool = Pool.of(settings, len(serving))
    throttles = pool_throttles(settings)
    service = ExporterService(
        exported_systems(settings, pool=pool, throttles=throttles),
        grace_seconds=settings.server.shutdown_grace_seconds,
        pool=pool,
        throttles=throttles,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    try:
        await service.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)

"""create_cell: a cell's systems, each its own app, served as one (see the package notes).

`Cell` is plain ASGI: a request under `/systems/{system}/` goes to that system's app
with the prefix taken off its path, as if the system were served alone (the same
routes, guards, answers and problem documents); anything else to the cell's own
routes (`root.py`), which answer a system it does not serve 404 and one that does
not serve yet 503. Each system's store, batcher, guards, followers and bounds are
its own: a flood or failure of one is refused for that one alone.

Design: docs/cells.md
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Final

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import Receive, Scope, Send

from app.asgi import Shared, constants, create_app, http_app, in_flight
from app.auth.oidc import GoogleCerts
from app.budget import Budget, Places, Share
from app.cell.root import (
    CELL_METRICS_ERRORS,
    CELL_METRICS_REFUSAL,
    CellReadiness,
    Refusal,
    root_routes,
)
from app.cell.systems import START_RETRY_MAX_SECONDS, START_RETRY_SECONDS, CellSystem
from app.cell.throttles import STALE_SECONDS, Throttles
from app.http.head import Recordline
from app.http.limits import BODY_COPIES
from app.problems import Problems
from app.process import CLOSING_SECONDS, TELEMETRY_SECONDS, StopBudget, on_terminate
from app.query.access import ACCESS_SHARE_LEAST_BYTES, MOST_WAITING_BYTES
from app.query.service import EncodedViews
from app.routes.console import cell_console_router
from app.routes.reads import export_places
from app.settings import (
    SYSTEMS_PREFIX,
    ServerSettings,
    Settings,
    SettingsError,
    is_loopback,
    system_settings,
    system_shares,
)
from app.store import Store
from app.store.backoff import Backoff
from app.store.supervisor import Supervisor
from app.telemetry import Telemetry
from app.telemetry.logs import line_system

if TYPE_CHECKING:
    from app.http.limits import ConnectionObserver
    from app.store.spanner.calls import SpannerClients

log = logging.getLogger("recordline")

_RAW_PREFIX: Final = SYSTEMS_PREFIX.encode()
# How long the cell's start waits for each system's first start (a store that hangs
# on its start keeps the cell from serving the others no longer than this).
START_SECONDS: Final = 30.0


class Cell:
    """The ASGI app of a cell: each request to its system's app, or to the cell's own."""

    def __init__(
        self,
        root: Recordline,
        systems: Mapping[str, CellSystem],
        throttles: Throttles | None = None,
    ) -> None:
        self.root = root
        self.systems = systems
        # What on-call slowed (RECORDLINE_THROTTLES), read again by the cell's lifespan.
        self.throttles = throttles
        # Told of each connection a bound of the server refused or closed (app.http.limits).
        self.connections: ConnectionObserver | None = root.connections
        # What every system's requests and answers in flight are charged to: one budget
        # for the process (app.budget).
        self.budget: Budget | None = root.budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            path: str = scope["path"]
            if path.startswith(SYSTEMS_PREFIX):
                name, _, rest = path[len(SYSTEMS_PREFIX) :].partition("/")
                system = self.systems.get(name)
                app = None if system is None else system.app
                if app is not None:
                    await self._system(app, name, rest, scope, receive, send)
                    return
        await self.root(scope, receive, send)

    async def _system(
        self, app: Recordline, name: str, rest: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """`scope` to system `name`'s app, as if it were served alone: its path without
        the prefix (its raw path too, where it starts with it as sent). The prefix is not
        given as `root_path`: Litestar takes a path apart at the root path's first
        occurrence anywhere in it, so a record id holding `/systems/NAME` would be read
        as another path (what the app must know of its prefix is `Settings.mounted_at`)."""
        own = dict(scope)
        own["path"] = "/" + rest
        raw: bytes | None = scope.get("raw_path")
        if raw is not None:
            prefix = _RAW_PREFIX + name.encode()
            own["raw_path"] = raw[len(prefix) :] or b"/" if raw.startswith(prefix) else None
        token = line_system.set(name)
        try:
            await app(own, receive, send)  # type: ignore[arg-type]
        finally:
            line_system.reset(token)


class CellLifespan:
    """What the cell starts, in order, and how it stops within one budget: its key
    client and Spanner clients, then each system under its supervisor (each on its own:
    one that fails to start is tried again, the others serve)."""

    def __init__(
        self,
        systems: Mapping[str, CellSystem],
        readiness: CellReadiness,
        telemetry: Telemetry,
        budget: StopBudget,
        *,
        certs: GoogleCerts | None,
        spanner: SpannerClients | None,
        throttles: Throttles | None = None,
    ) -> None:
        self._systems = systems
        self._throttles = throttles
        self._readiness = readiness
        self._telemetry = telemetry
        self._budget = budget
        self._certs = certs
        self._spanner = spanner
        self.supervisor = Supervisor(observer=telemetry.loop_observer())

    @asynccontextmanager
    async def __call__(self, _: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._flush_telemetry)
            if self._certs is not None:
                await self._certs.open()
                stack.push_async_callback(self._certs.close)
            if self._spanner is not None:
                stack.push_async_callback(self._spanner.close)
            if self._throttles is not None:
                # Let go once its loop has stopped (below).
                stack.callback(self._throttles.close)
            await self.supervisor.start()
            stack.push_async_callback(self.supervisor.close)
            if self._throttles is not None:
                # Read before the first push is served: an instance started while a system
                # is throttled is throttled from its first push (within the read's deadline).
                await self._throttles.read()
                self.supervisor.run("throttles", self._throttles.watch, interval=STALE_SECONDS)
            for system in self._systems.values():
                # Each system's tasks carry its name on their log lines.
                context = contextvars.copy_context()
                context.run(line_system.set, system.name)
                context.run(
                    self.supervisor.run,
                    f"system {system.name}",
                    system.run,
                    interval=START_RETRY_MAX_SECONDS,
                    finite=True,
                    pauses=Backoff(START_RETRY_SECONDS, START_RETRY_MAX_SECONDS),
                )
            stack.push_async_callback(self._stop_systems)
            stack.enter_context(on_terminate(self._stopping))
            await self._first_starts()
            serving = [name for name, s in self._systems.items() if s.app is not None]
            log.info(
                "recordline cell ready: %d of %d systems serve", len(serving), len(self._systems)
            )
            yield
        log.info("recordline cell stopped: every system's accepted rows drained")

    async def _first_starts(self) -> None:
        """Wait for each system's first start to be over (started or not), at most
        START_SECONDS in all."""
        try:
            async with asyncio.timeout(START_SECONDS):
                for system in self._systems.values():
                    await system.tried.wait()
        except TimeoutError:
            slow = [name for name, s in self._systems.items() if not s.tried.is_set()]
            log.warning("systems still starting after %.0f s: %s", START_SECONDS, ", ".join(slow))

    def _stopping(self) -> None:
        # SIGTERM: the stop's clock starts now; every system hears of it at once.
        self._budget.begin()
        self._readiness.stopping = True
        for system in self._systems.values():
            system.stopping()

    async def _stop_systems(self) -> None:
        self._readiness.stopping = True
        within = self._budget.left(keeping=CLOSING_SECONDS - TELEMETRY_SECONDS)
        await asyncio.gather(*(s.stop(within) for s in self._systems.values()))

    async def _flush_telemetry(self) -> None:
        await self._telemetry.shutdown(within=max(self._budget.left(), TELEMETRY_SECONDS))


StoreMaker = Callable[[], Store]


def create_cell(
    settings: Settings | None = None,
    *,
    stores: Mapping[str, StoreMaker] | None = None,
    telemetry: Telemetry | None = None,
) -> Cell:
    """The cell RECORDLINE_CELL and RECORDLINE_SYSTEMS describe (nothing started yet);
    SettingsError for a system whose settings cannot be used. `stores` makes a
    system's store where given (tests), each start a new one."""
    settings = settings if settings is not None else Settings.load()
    entries = settings.systems()
    if not settings.cell.name or not (entries or settings.cell.faults()):
        raise SettingsError("a cell needs RECORDLINE_CELL and RECORDLINE_SYSTEMS")
    telemetry = telemetry if telemetry is not None else Telemetry.from_settings(settings)
    auth = settings.auth
    oidc = auth.read_audience or any(e.push_audience for e in entries.values())
    # One key client, one Spanner client per project, one stop: every system's.
    certs = GoogleCerts(auth.oidc_certs_url) if oidc else None
    spanner = _spanner_clients(settings) if any(e.serving for e in entries.values()) else None
    budget = StopBudget(settings.server.shutdown_grace_seconds)
    held = in_flight(settings.server)
    # Records' encoded views made once, one bound for the process: every system's.
    shared = Shared(
        certs=certs, spanner=spanner, budget=budget, in_flight=held, encoded=EncodedViews()
    )
    shares = system_shares(settings, entries)
    # Each system's share of the process's bytes (`app.budget.Share`), and of its reads,
    # followers and exports in flight (`app.budget.Places`): its own, and what quiet
    # systems leave; a follower holds its place for minutes, so a system's own followers
    # are admitted whatever the others borrowed (`keeps_own`).
    bytes_each = held_share(settings.server, held, max(1, len(entries)))
    reads = Places(settings.server.max_reads)
    followers = Places(settings.query.max_followers, keeps_own=True)
    exports = export_places(settings.server.memory_budget_bytes)
    # What on-call slowed, read again and again from the file every instance mounts.
    # (A system whose own settings cannot be used is the cell's too: its throttle holds once
    # it serves.)
    named = entries.keys() | settings.cell.faults().keys()
    throttles = Throttles(settings.cell.throttles, named) if settings.cell.throttles else None
    systems: dict[str, CellSystem] = {}
    for name, entry in entries.items():
        own = system_settings(settings, name, entry, shares[name])
        made = None if stores is None else stores.get(name)
        secret = system_token_secret(settings.query.page_token_secret, name)
        mine = dataclasses.replace(
            shared,
            page_token_secret=secret,
            share=Share(held, bytes_each),
            # A bound set in its entry is its own, no more; a share may borrow.
            reads=reads.share(own.server.max_reads, borrows=not entry.max_reads),
            followers=followers.share(own.query.max_followers, borrows=not entry.max_followers),
            exports=exports.share(exports.most // len(entries)),
            access_waiting_bytes=max(MOST_WAITING_BYTES // len(entries), ACCESS_SHARE_LEAST_BYTES),
            throttled=None if throttles is None else functools.partial(throttles.refused, name),
        )
        build = functools.partial(_system_app, own, telemetry.for_system(name), mine, made)
        systems[name] = CellSystem(name, build)
    # A system whose own entry cannot be used is served as unavailable, saying why.
    for name, fault in settings.cell.faults().items():
        log.error("system %s does not serve: %s", name, fault)
        systems[name] = CellSystem(name, _unusable, fault)
    readiness = CellReadiness(systems, certs=certs, throttles=throttles)
    lifespan = CellLifespan(
        systems, readiness, telemetry, budget, certs=certs, spanner=spanner, throttles=throttles
    )
    problems = Problems(max_body_bytes=settings.server.max_body_bytes)
    loopback = is_loopback(settings.server.host)
    if telemetry.serves_metrics and not loopback:
        log.warning("GET /metrics will answer 403: %s", CELL_METRICS_REFUSAL)
    root = http_app(
        [
            *root_routes(
                telemetry.metrics_routes(None if loopback else CELL_METRICS_ERRORS),
                loopback=loopback,
            ),
            cell_console_router(list(systems), problems),
        ],
        constants(readiness=readiness, refusal=Refusal(systems)),
        lifespan=[lifespan],
        after_exception=[],
        problems=problems,
        max_body_bytes=settings.server.max_body_bytes,
        signature_types=(CellReadiness, Refusal),
    )
    root.connections = telemetry.connection_observer()
    root.budget = held
    return Cell(root, systems, throttles)


def held_share(server: ServerSettings, held: Budget, systems: int) -> int:
    """What each of `systems` may hold of the process's budget as its own: an even part,
    and at least one push of the largest body (its head, and BODY_COPIES of the body).
    Beyond it a system borrows what quiet ones leave (`app.budget.Share`)."""
    largest_push = server.max_header_bytes + BODY_COPIES * server.max_body_bytes
    return max(held.most // systems, largest_push)


def system_token_secret(secret: str, system: str) -> str:
    """The key that signs a system's page tokens and stream offsets in a cell: derived
    from the cell's (RECORDLINE_PAGE_TOKEN_SECRET) and the system's name, so that a
    token one system made is refused by every other, and one secret serves them all."""
    return hmac.new(secret.encode(), b"system:" + system.encode(), "sha256").hexdigest()


def _unusable() -> Recordline:
    raise AssertionError("a system whose settings cannot be used is never built")


def _system_app(
    settings: Settings, telemetry: Telemetry, shared: Shared, store: StoreMaker | None
) -> Recordline:
    return create_app(
        settings, store=None if store is None else store(), telemetry=telemetry, shared=shared
    )


def _spanner_clients(settings: Settings) -> SpannerClients:
    from app.store.open import spanner_clients

    return spanner_clients(settings)

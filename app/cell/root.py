"""The cell's own routes: liveness, readiness, metrics, the API's description, and the
answer to a system the cell does not serve (or not yet).

`/readyz` names each system that is not ready and why; it is 503 only when the cell
cannot serve at all (no system ready, its token keys not fetched, or it is stopping):
a single system's failure is that system's 503s, not the cell's, so that a load
balancer keeps sending the others' requests.

Design: docs/cells.md#paths
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated, Any, Final
from urllib.parse import unquote

import msgspec
from litestar import HttpMethod, Router, get, route
from litestar.di import NamedDependency
from litestar.params import PathParameter
from litestar.types import HTTPScope

from app.auth.oidc import GoogleCerts
from app.cell.systems import CellSystem
from app.cell.throttles import Throttles
from app.docs import docs_assets
from app.errors import (
    CertsUnavailable,
    Forbidden,
    RecordlineError,
    RetryLater,
    SystemUnavailable,
    UnknownSystem,
)
from app.health import healthz
from app.problems import describe_problem, problem_responses
from app.settings import SYSTEMS_PREFIX, system_path

# Where each system is served (below it, `system_path`).
SYSTEMS_PATH: Final = SYSTEMS_PREFIX.rstrip("/")
# Systems' readiness asked at once, at most (each asks its store within 2 s).
_CHECKS_AT_ONCE: Final = 16


class CellHealth(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str
    # Each system that is not ready, and why (always said, `{}` for none).
    not_ready: dict[str, str]
    # What is degraded in each ready system (its /readyz's warnings); said if any.
    warnings: dict[str, list[str]] = msgspec.field(default_factory=dict)
    # Each system on-call throttled, and its throttle (RECORDLINE_THROTTLES); said if any.
    throttled: dict[str, str] = msgspec.field(default_factory=dict)
    # What keeps the throttles' file from being read or used; said if anything does.
    throttle_problems: list[str] = msgspec.field(default_factory=list)


class CellReadiness:
    """Whether the cell serves, and which of its systems do not (see the module notes)."""

    def __init__(
        self,
        systems: Mapping[str, CellSystem],
        *,
        certs: GoogleCerts | None,
        throttles: Throttles | None = None,
    ) -> None:
        self._systems = systems
        self._certs = certs
        self._throttles = throttles
        self.stopping = False

    async def check(self) -> CellHealth:
        if self.stopping:
            raise RetryLater("shutting down")
        if self._certs is not None:
            await self._certs.check()
        turns = asyncio.Semaphore(_CHECKS_AT_ONCE)

        warnings: dict[str, list[str]] = {}

        async def why(system: CellSystem) -> str:
            app = system.app
            if app is None or app.readiness is None:
                return system.why or "not serving"
            async with turns:
                try:
                    await app.readiness.check()
                except RecordlineError as exc:
                    return exc.detail
            said = app.readiness.warnings()
            if said:
                warnings[system.name] = said
            return ""

        found = await asyncio.gather(*(why(s) for s in self._systems.values()))
        not_ready = {name: why for name, why in zip(self._systems, found, strict=True) if why}
        if not_ready and len(not_ready) == len(self._systems):
            said = "; ".join(f"{name}: {why}" for name, why in not_ready.items())
            raise RetryLater(f"no system of the cell is ready: {said}")
        throttles = self._throttles
        return CellHealth(
            "ready",
            not_ready,
            dict(sorted(warnings.items())),
            throttled={} if throttles is None else throttles.in_force(),
            throttle_problems=[] if throttles is None else throttles.problems(),
        )


@get(
    "/readyz",
    summary=(
        "The cell serves: its token keys are fetched and at least one of its systems is "
        "ready; names each system that is not, and why"
    ),
    tags=["health"],
    responses=problem_responses(RetryLater, CertsUnavailable),
)
async def cell_readyz(readiness: NamedDependency[CellReadiness]) -> CellHealth:
    return await readiness.check()


class Refusal:
    """What the cell answers a request under `/systems/{system}/` it passes to no
    system: an unknown system (404), or one not serving yet (503)."""

    def __init__(self, systems: Mapping[str, CellSystem]) -> None:
        self._systems = systems

    def __call__(self, name: str, path: str) -> RecordlineError:
        """The refusal of `path`, which the router read as under system `name`."""
        system = self._systems.get(name)
        if system is None:
            return UnknownSystem(f"no system {name!r} is served here")
        own = system_path(name)
        if path != own and not path.startswith(own + "/"):
            # The router reads `/systems//alpha/…` as alpha's, which no system's path is.
            return UnknownSystem(f"{path!r} is no path of a system served here ({own}/…)")
        return SystemUnavailable(f"system {name!r} does not serve: {system.why or 'starting'}")


_System = Annotated[str, PathParameter(description="The system's name")]
_METHODS: Final = [
    HttpMethod.GET,
    HttpMethod.POST,
    HttpMethod.PUT,
    HttpMethod.PATCH,
    HttpMethod.DELETE,
    HttpMethod.OPTIONS,
]


@route("/{system:str}", http_method=_METHODS, include_in_schema=False)
async def refuse_system(
    system: _System, refusal: NamedDependency[Refusal], scope: HTTPScope
) -> None:
    raise refusal(system, _sent_path(scope))


@route("/{system:str}/{rest:path}", http_method=_METHODS, include_in_schema=False)
async def refuse_path(
    system: _System,
    rest: Annotated[str, PathParameter()],
    refusal: NamedDependency[Refusal],
    scope: HTTPScope,
) -> None:
    raise refusal(system, _sent_path(scope))


def _sent_path(scope: HTTPScope) -> str:
    """The path as sent: the router's own has `//` made `/`."""
    raw = scope.get("raw_path")
    return scope["path"] if raw is None else unquote(raw.decode("latin-1"))


# Why a cell's `/metrics` beyond loopback answers no one.
CELL_METRICS_REFUSAL: Final = (
    "A cell's /metrics beyond loopback answers no one: its figures and labels are every "
    "system's, and no one is told to operate them all. Send them to Cloud Monitoring "
    "(OTEL_METRICS_EXPORTER=gcp_monitoring), as Terraform does."
)


# What the cell's `/metrics` answers beyond loopback (`_refuse_metrics`), documented.
CELL_METRICS_ERRORS: Final = problem_responses(Forbidden)


async def _refuse_metrics(*_: Any) -> None:
    raise Forbidden(CELL_METRICS_REFUSAL)


def root_routes(metrics: list[Any], *, loopback: bool) -> list[Router]:
    """The cell's own routes at the root, `metrics` (the scrape, where served: on a
    loopback cell alone), and the refusals of what it passes to no system."""
    routes = [
        Router("/", route_handlers=[healthz, cell_readyz, describe_problem, docs_assets()]),
        Router(SYSTEMS_PATH, route_handlers=[refuse_system, refuse_path]),
    ]
    if metrics:
        guards = [] if loopback else [_refuse_metrics]
        routes.append(Router("/", route_handlers=metrics, guards=guards))
    return routes

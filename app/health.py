"""Liveness and readiness, for Cloud Run's probes and for operators."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from litestar import get
from litestar.di import NamedDependency

from app.errors import CertsUnavailable, RetryLater, StoreUnavailable
from app.problems import problem_responses
from app.store import Store

# A probe that hangs is worse than one that fails: Cloud Run waits for it.
_READY_TIMEOUT_SECONDS = 2.0


class Health(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str
    # What is degraded while the service is ready, each with how long it is said:
    # a topic schema revision pushes named that cannot be fetched (those pushes are
    # 503s), which a sender chooses and so never makes the service not ready.
    warnings: list[str] = msgspec.field(default_factory=list)


class Readiness:
    def __init__(
        self,
        store: Store,
        *,
        checks: Sequence[Callable[[], Awaitable[None]]] = (),
        warnings: Sequence[Callable[[], list[str]]] = (),
    ) -> None:
        self._store = store
        # Each raises a RecordlineError saying what is wrong: pushes could not be
        # verified (no token-signing keys), a background loop is down…
        self._checks = tuple(checks)
        # Each says what is degraded without making the service not ready.
        self._warnings = tuple(warnings)
        self.stopping = False

    def warnings(self) -> list[str]:
        return [warning for said in self._warnings for warning in said()]

    async def check(self) -> None:
        if self.stopping:
            raise RetryLater("shutting down")
        try:
            async with asyncio.timeout(_READY_TIMEOUT_SECONDS):
                await self._store.check()
        except TimeoutError:
            raise RetryLater(f"store did not answer within {_READY_TIMEOUT_SECONDS:g} s") from None
        for check in self._checks:
            await check()


@get("/healthz", summary="The process is alive", tags=["health"])
async def healthz() -> Health:
    return Health("ok")


@get(
    "/readyz",
    summary=(
        "The store is reachable, pushes can be verified and the service takes writes; "
        "warnings name what is degraded meanwhile (a topic schema that cannot be fetched)"
    ),
    tags=["health"],
    responses=problem_responses(RetryLater, StoreUnavailable, CertsUnavailable),
)
async def readyz(readiness: NamedDependency[Readiness]) -> Health:
    await readiness.check()
    return Health("ready", readiness.warnings())

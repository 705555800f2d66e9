"""Calls to Spanner: the client, its threads, and the deadline every request is given.

`SpannerCalls` opens the client and runs each call on a small pool of daemon
threads (the library's supported API is synchronous), with a `Deadline` that
bounds every request the call makes and ends the caller's wait; failures come
out as `StoreUnavailable`. Why each request needs its deadline, and what the
library does without one: docs/stores.md and `app.store.spanner.serving`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

from google.api_core.exceptions import (
    DeadlineExceeded,
    GoogleAPICallError,
    NotFound,
    RetryError,
    ServiceUnavailable,
)
from google.api_core.retry import Retry, if_exception_type
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from google.cloud import spanner

from app.errors import StoreUnavailable
from app.records import micros
from app.store.threads import DaemonThreads

log = logging.getLogger(__name__)

T = TypeVar("T")

_MULTIPLEXED_SWITCHES = ("GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS",)

# Calls in flight at once: a group commit per append slot and a few reads.
_THREADS: Final = 8

# A call's deadline unless it is given one. A read-write transaction that Spanner
# aborts is run again within it, after the delay the abort names (the client's
# own 2 s, then 4 s, and so on, where it names none, as the emulator does).
CALL_SECONDS: Final = 10.0

# A read or query that Spanner refuses (UNAVAILABLE) is tried again after
# 0.1 s, doubling to at most 2 s, jittered, until its call's deadline: the
# client's own retry settings for unary calls, with a shorter ceiling because
# every call here has a deadline of seconds, not minutes.
_RETRY_INITIAL: Final = 0.1
_RETRY_MAXIMUM: Final = 2.0
# The least time a request is given: one whose call's deadline has passed
# fails rather than going out with none.
_LEAST_SECONDS: Final = 0.01
# How long a stop waits for the channels to close (a local operation).
_CLOSE_SECONDS: Final = 2.0


class Deadline:
    """When one call to Spanner must be over: what each of its requests is given."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; DeadlineExceeded once none are."""
        left = self._end - time.monotonic()
        if left < _LEAST_SECONDS:
            passed = f"the call's deadline of {self.seconds:g} s passed"
            raise DeadlineExceeded(passed)  # type: ignore[no-untyped-call]
        return left

    def retry(self) -> Retry:
        """UNAVAILABLE retried with backoff until the deadline, then RetryError."""
        return Retry(
            predicate=if_exception_type(ServiceUnavailable),
            initial=_RETRY_INITIAL,
            maximum=_RETRY_MAXIMUM,
            multiplier=2.0,
            timeout=self.left(),
        )


def sql_rows(source: Any, deadline: Deadline, sql: str, **options: Any) -> Any:
    """`source.execute_sql`, within the deadline (a snapshot or a transaction)."""
    return source.execute_sql(sql, timeout=deadline.left(), retry=deadline.retry(), **options)


def key_rows(
    source: Any, deadline: Deadline, table: str, names: Any, keys: Any, **options: Any
) -> Any:
    """`source.read`, within the deadline (a snapshot or a transaction)."""
    left, retry = deadline.left(), deadline.retry()
    return source.read(table, names, keys, timeout=left, retry=retry, **options)


def statement(deadline: Deadline) -> Callable[..., Any]:
    """`sql_rows` within `deadline`, as `query(source, sql, **options)`."""

    def run(source: Any, sql: str, **options: Any) -> Any:
        return sql_rows(source, deadline, sql, **options)

    return run


def in_transaction(database: Any, deadline: Deadline, work: Callable[[Any], T]) -> tuple[T, int]:
    """`work(transaction)` in one read-write transaction of `database`, run again
    after an abort until the deadline: what its last attempt returned, and the
    commit time (µs)."""
    attempts: list[Any] = []

    def attempt(transaction: Any) -> T:
        attempts.append(transaction)
        return work(transaction)

    done: T = database.run_in_transaction(attempt, timeout_secs=deadline.left())
    return done, micros(attempts[-1].committed)


@dataclasses.dataclass(frozen=True)
class Accommodations:
    """What the service does differently against the Spanner emulator, each by name.

    Measured on the emulator (cloud-spanner-emulator of Cloud SDK 528): two
    read-write transactions at once fail the later one ("Invalid transaction
    ID", FAILED_PRECONDITION, which the client does not retry); a read on the
    client's default multiplexed session while a read-write transaction is
    open fails that transaction ("Transaction not found"); and the client's
    built-in metrics go to Cloud Monitoring, which an emulator has not. Spanner
    itself runs commits side by side (aborting one of two that touch the same
    keys, which the client retries), serves reads on multiplexed sessions, and
    takes the metrics for free: in production every one is off.
    """

    # This process's read-write transactions take turns (an asyncio lock).
    commit_turns: bool = False
    # Reads take pooled sessions, by the switch Google documents
    # (GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS=false; cloud.google.com/spanner/docs/sessions).
    pooled_sessions: bool = False
    # The client sends no metrics of its own.
    no_builtin_metrics: bool = False

    @classmethod
    def for_emulator(cls) -> Accommodations:
        return cls(commit_turns=True, pooled_sessions=True, no_builtin_metrics=True)

    @property
    def names(self) -> list[str]:
        return [name for name, on in dataclasses.asdict(self).items() if on]


class DatabaseName(Protocol):
    """Where a Spanner database is (`SpannerDatabase`)."""

    @property
    def project(self) -> str: ...

    @property
    def instance(self) -> str: ...

    @property
    def database(self) -> str: ...


class SpannerCalls:
    """One Spanner database's client, and every call to it: on this store's threads,
    within a deadline, its failures as StoreUnavailable."""

    def __init__(
        self,
        database: DatabaseName,
        *,
        emulator_host: str | None = None,
        accommodations: Accommodations | None = None,
        timeout_seconds: float = CALL_SECONDS,
    ) -> None:
        self.name = database
        self._emulator = emulator_host
        self.accommodations = accommodations or (
            Accommodations.for_emulator() if emulator_host else Accommodations()
        )
        # A call's deadline unless it is given one.
        self.timeout = timeout_seconds
        self._threads = DaemonThreads(_THREADS, prefix="spanner")
        self._client: spanner.Client | None = None
        self._db: Any = None
        self._turns: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.accommodations.commit_turns else contextlib.nullcontext()
        )

    async def start(self) -> None:
        """Open the client; nothing is asked of Spanner yet."""
        if self.accommodations.names:
            log.info("Spanner emulator accommodations: %s", ", ".join(self.accommodations.names))
        if self.accommodations.pooled_sessions:
            # The library reads its switch from the environment at each
            # transaction: set here, on the event loop's thread before any of
            # this store's threads runs, and never over what the user set.
            for switch in _MULTIPLEXED_SWITCHES:
                os.environ.setdefault(switch, "false")
        self._client, self._db = await self.call(self._open)

    def _open(self, _: Deadline) -> tuple[spanner.Client, Any]:
        project = self.name.project
        if self._emulator:
            client = spanner.Client(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": self._emulator},
                disable_builtin_metrics=self.accommodations.no_builtin_metrics,
            )
        else:
            client = spanner.Client(
                project=project, disable_builtin_metrics=self.accommodations.no_builtin_metrics
            )
        instance = client.instance(self.name.instance)  # type: ignore[no-untyped-call]
        db = instance.database(self.name.database)
        return client, db

    async def close(self) -> None:
        """Stop at once, whatever Spanner does: calls not started are dropped, the
        channels closed (a request in flight ends with them), and threads still
        inside a call are left to end on their own; they are daemons, so the
        process exits without them."""
        client, db, self._client, self._db = self._client, self._db, None, None
        self._threads.shutdown(wait=False, cancel_futures=True)
        if client is None:
            return
        closing = DaemonThreads(1, prefix="spanner-close")
        try:
            async with asyncio.timeout(_CLOSE_SECONDS):
                await asyncio.get_running_loop().run_in_executor(closing, _close, client, db)
        except TimeoutError:
            log.warning("Spanner's client did not close within %g s; left behind", _CLOSE_SECONDS)
        finally:
            closing.shutdown(wait=False)

    def database(self) -> Any:
        """The library's database, for a call's thread; StoreUnavailable before `start`."""
        if self._db is None:
            raise StoreUnavailable("the Spanner serving tier is not started")
        return self._db

    async def call(self, fn: Callable[..., T], *args: Any, within: float | None = None) -> T:
        """`fn(deadline, *args)` on this store's threads, its failures as StoreUnavailable.

        The thread is given the same deadline as the caller's wait, counted from
        now (time queued for a thread included), and stops its requests there."""
        loop = asyncio.get_running_loop()
        seconds = self.timeout if within is None else within
        deadline = Deadline(seconds)
        try:
            async with asyncio.timeout(seconds):
                return await loop.run_in_executor(self._threads, fn, deadline, *args)
        except (TimeoutError, DeadlineExceeded):
            raise StoreUnavailable(f"Spanner did not answer within {seconds:g} s") from None
        except NotFound as exc:
            raise StoreUnavailable(f"Spanner: {exc.message}") from exc
        except GoogleAuthError as exc:
            # No credentials here (a shell without application-default credentials),
            # or none that may be refreshed: nothing of Spanner can be asked.
            raise StoreUnavailable(f"Spanner: no usable credentials: {exc}") from exc
        except (GoogleAPICallError, RetryError, OSError) as exc:
            log.warning("Spanner call failed: %s", exc)
            raise StoreUnavailable(f"Spanner failed: {exc}") from exc
        except RuntimeError as exc:  # the pool is shut down
            raise StoreUnavailable(f"the Spanner serving tier is closed: {exc}") from exc

    async def transact(self, fn: Callable[..., T], *args: Any, within: float | None = None) -> T:
        """`call` for a read-write transaction: its turn first (`Accommodations`),
        the wait for it counted against `within` (by default the timeout)."""
        within = self.timeout if within is None else within
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        # When the turn came: never, until it does.
        turn = deadline
        try:
            async with asyncio.timeout(within), self._turns:
                turn = loop.time()
                left = max(deadline - turn, 0.0)
                return await self.call(fn, *args, within=left)
        except TimeoutError:
            raise StoreUnavailable(_no_answer(within, turn - (deadline - within))) from None
        except StoreUnavailable as exc:
            if not str(exc).startswith("Spanner did not answer"):
                raise
            # The call had what the wait for its turn left of the deadline: the whole of
            # it is said (the wait was not Spanner's), not "within 0.005 s".
            raise StoreUnavailable(_no_answer(within, turn - (deadline - within))) from None


# A wait for a turn shorter than this is not worth saying.
_SAID_WAIT_SECONDS = 0.001


def _no_answer(within: float, waited: float) -> str:
    """Why a transaction given `within` seconds failed, `waited` of them for its turn."""
    if waited < _SAID_WAIT_SECONDS:
        return f"Spanner did not answer within {within:g} s"
    return (
        f"Spanner did not answer within {within:g} s, {waited:.3g} s of which went to waiting "
        "for the transaction before it (the emulator runs one at a time)"
    )


def _close(client: spanner.Client, db: Any) -> None:
    """Close the database's channel (a request in flight on it ends) and the client."""
    if db is not None:
        db.spanner_api.transport.close()
    client.close()  # type: ignore[no-untyped-call]

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
import datetime
import functools
import logging
import os
import threading
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
from google.cloud.spanner_v1 import RequestOptions

from app.errors import StoreUnavailable
from app.records import micros
from app.threads import DaemonThreads

log = logging.getLogger(__name__)

T = TypeVar("T")

_MULTIPLEXED_SWITCHES = ("GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS",)

# A database's calls in flight at once: a group commit per append slot and a few
# reads (and the threads they hold: each call is one).
THREADS_PER_DATABASE: Final = 8

# The request options of the export's reads (its rows, its progress, the
# watermarks) and of a verification's: low priority, so that after an outage the
# catch-up of a hundred systems' exports yields to their pushes and reads (Spanner
# schedules high before low on a busy instance; its ceiling for high-priority load
# is 65% of CPU, the rest is what low priority catches up with).
LOW_PRIORITY: Final = RequestOptions(priority=RequestOptions.Priority.PRIORITY_LOW)

# How long a group commit lets Spanner hold it to batch it with others
# (throughput-optimized writes, https://cloud.google.com/spanner/docs/throughput-optimized-writes):
# a node then takes about 22,500 row writes a second rather than 3,500
# (https://cloud.google.com/spanner/docs/performance), which is what the serving tier's
# instances are sized by (infra/terraform/spanner.tf). A push's answer, and a
# follower's sight of it, may wait this much longer; the export's and the lease's
# transactions wait for nothing.
COMMIT_DELAY: Final = datetime.timedelta(milliseconds=100)

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
# A Spanner thread with no call for this long ends: a cell's pool, sized for every
# database's calls at once, keeps the threads its recent calls needed.
IDLE_THREAD_SECONDS: Final = 60.0
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


def in_transaction(
    database: Any,
    deadline: Deadline,
    work: Callable[[Any], T],
    *,
    commit_delay: datetime.timedelta | None = None,
) -> tuple[T, int]:
    """`work(transaction)` in one read-write transaction of `database`, run again
    after an abort until the deadline: what its last attempt returned, and the
    commit time (µs). `commit_delay`: how long Spanner may hold the commit to batch
    it with others (COMMIT_DELAY), none by default."""
    attempts: list[Any] = []

    def attempt(transaction: Any) -> T:
        attempts.append(transaction)
        return work(transaction)

    delay = {} if commit_delay is None else {"max_commit_delay": commit_delay}
    done: T = database.run_in_transaction(attempt, timeout_secs=deadline.left(), **delay)
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


class SpannerClients:
    """The process's Spanner clients, one per project, and the daemon threads every
    call to any of their databases runs on.

    A database's calls take at most THREADS_PER_DATABASE threads at once
    (`SpannerCalls`), and the pool grows by as many for each database opened, but
    starts a thread only when every one it has is busy: a cell of a hundred systems
    runs on as many threads as its calls in flight, and one database that hangs
    holds its own share, never another's.
    """

    def __init__(
        self,
        *,
        emulator_host: str | None = None,
        accommodations: Accommodations | None = None,
    ) -> None:
        self._emulator = emulator_host
        self.accommodations = accommodations or (
            Accommodations.for_emulator() if emulator_host else Accommodations()
        )
        self.threads = DaemonThreads(0, prefix="spanner", idle_seconds=IDLE_THREAD_SECONDS)
        self._clients: dict[str, spanner.Client] = {}
        self._lock = threading.Lock()
        self._said = False

    def reserve(self) -> None:
        """Room for one more database's calls (THREADS_PER_DATABASE threads at most)."""
        self.threads.grow(THREADS_PER_DATABASE)
        if self.accommodations.pooled_sessions:
            # The library reads its switch from the environment at each
            # transaction: set here, on the event loop's thread before any of
            # these threads runs, and never over what the user set.
            for switch in _MULTIPLEXED_SWITCHES:
                os.environ.setdefault(switch, "false")
        if self.accommodations.names and not self._said:
            self._said = True
            log.info("Spanner emulator accommodations: %s", ", ".join(self.accommodations.names))

    def database(self, name: DatabaseName) -> Any:
        """The library's handle on database `name`, its project's client opened first
        if it is not yet (on a call's thread: looking for credentials may block)."""
        with self._lock:
            client = self._clients.get(name.project)
            if client is None:
                client = self._clients[name.project] = self._client(name.project)
        instance = client.instance(name.instance)  # type: ignore[no-untyped-call]
        return instance.database(name.database)

    def _client(self, project: str) -> spanner.Client:
        metrics = self.accommodations.no_builtin_metrics
        if self._emulator:
            return spanner.Client(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": self._emulator},
                disable_builtin_metrics=metrics,
            )
        return spanner.Client(project=project, disable_builtin_metrics=metrics)

    @property
    def opened(self) -> int:
        """Clients opened (one per project)."""
        with self._lock:
            return len(self._clients)

    async def close(self) -> None:
        """Stop at once: calls not started dropped, each client closed within
        _CLOSE_SECONDS (a request in flight ends with its channel), threads still
        inside a call left to end on their own (daemons: the process exits)."""
        self.threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        await _closed([functools.partial(_close, client, None) for client in clients])


class SpannerCalls:
    """One Spanner database, and every call to it: on the process's Spanner threads
    (`SpannerClients`, its own unless given the process's), at most
    THREADS_PER_DATABASE at once, within a deadline, its failures as StoreUnavailable."""

    def __init__(
        self,
        database: DatabaseName,
        *,
        emulator_host: str | None = None,
        accommodations: Accommodations | None = None,
        timeout_seconds: float = CALL_SECONDS,
        clients: SpannerClients | None = None,
    ) -> None:
        self.name = database
        # The process's clients, or this database's own (closed with it).
        self._owns_clients = clients is None
        self.clients = clients or SpannerClients(
            emulator_host=emulator_host, accommodations=accommodations
        )
        self.accommodations = self.clients.accommodations
        # A call's deadline unless it is given one.
        self.timeout = timeout_seconds
        self._db: Any = None
        self._reserved = False
        # This database's calls in flight (each holds a thread until it returns).
        self._slots = asyncio.Semaphore(THREADS_PER_DATABASE)
        self._turns: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.accommodations.commit_turns else contextlib.nullcontext()
        )

    async def start(self) -> None:
        """Open the database's handle (its project's client first, if need be);
        nothing is asked of Spanner yet."""
        if not self._reserved:
            self._reserved = True
            self.clients.reserve()
        self._db = await self.call(self._open)

    def _open(self, _: Deadline) -> Any:
        return self.clients.database(self.name)

    async def close(self) -> None:
        """Stop at once, whatever Spanner does: this database's channel closed (a
        request in flight on it ends), its client too if it is its own; threads still
        inside a call are left to end on their own (daemons)."""
        db, self._db = self._db, None
        if self._owns_clients:
            await self.clients.close()
        if db is not None:
            await _closed([functools.partial(_close, None, db)])

    def database(self) -> Any:
        """The library's database, for a call's thread; StoreUnavailable before `start`."""
        if self._db is None:
            raise StoreUnavailable("the Spanner serving tier is not started")
        return self._db

    async def call(self, fn: Callable[..., T], *args: Any, within: float | None = None) -> T:
        """`fn(deadline, *args)` on the process's Spanner threads, its failures as
        StoreUnavailable.

        The thread is given the same deadline as the caller's wait, counted from
        now (time queued for a thread included), and stops its requests there.
        A call that finds this database's threads all busy waits its turn within
        that deadline too."""
        loop = asyncio.get_running_loop()
        seconds = self.timeout if within is None else within
        deadline = Deadline(seconds)
        try:
            async with asyncio.timeout(seconds):
                await self._slots.acquire()
                try:
                    work = self.clients.threads.submit(fn, deadline, *args)
                except BaseException:
                    self._slots.release()
                    raise
                # Freed when the thread is done with it (or when it never started),
                # not when the caller stops waiting: a call cut short still holds
                # its thread until its own deadline.
                work.add_done_callback(functools.partial(_free, loop, self._slots))
                return await asyncio.wrap_future(work)
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


def _free(loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore, _: object) -> None:
    """Give a database's slot back, from the thread that finished the call."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
        loop.call_soon_threadsafe(slots.release)


async def _closed(closes: list[Callable[[], None]]) -> None:
    """Each of `closes` run on a thread of its own, all within _CLOSE_SECONDS."""
    if not closes:
        return
    closing = DaemonThreads(len(closes), prefix="spanner-close")
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_CLOSE_SECONDS):
            await asyncio.gather(*(loop.run_in_executor(closing, close) for close in closes))
    except TimeoutError:
        log.warning("Spanner's client did not close within %g s; left behind", _CLOSE_SECONDS)
    finally:
        closing.shutdown(wait=False)


def _close(client: spanner.Client | None, db: Any) -> None:
    """Close the database's channel (a request in flight on it ends), or the client."""
    if db is not None:
        db.spanner_api.transport.close()
    if client is not None:
        client.close()  # type: ignore[no-untyped-call]

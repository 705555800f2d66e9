"""Group commit: many push requests, one append.

Each push puts its row on a bounded queue and awaits a future; one flusher task
drains the queue into store appends and resolves every future with its row's
outcome, knowing nothing of HTTP or of any one store. A batch is cut as soon as an
append slot is free: under load batches grow by themselves, and a lone request is
never held back by a timer (a 10 ms linger cut throughput by ~40%).
The flusher and the deadline sweep run under the app's Supervisor.

Design: docs/contract.md
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol

import msgspec

from app.errors import (
    QueueFull,
    RecordlineError,
    RetryLater,
    ShuttingDown,
    StoreUnavailable,
    WriteTimeout,
)
from app.records import Record, Rejection
from app.settings import BatchSettings
from app.store import RowOutcome
from app.store.supervisor import Supervisor

log = logging.getLogger(__name__)

StoredRow = Record | Rejection


class Appender(Protocol):
    """The part of a Store the batcher writes to."""

    async def append(self, rows: Sequence[StoredRow]) -> Sequence[RowOutcome]: ...


class FlushObserver(Protocol):
    """Told about every flush; telemetry implements it (one span per flush,
    linked to the requests it serves)."""

    def submitted(self) -> object:
        """Called in the submitting request's context; the result travels with
        the row to `flushing`."""
        ...

    def flushing(self, origins: Sequence[object]) -> AbstractContextManager[object]:
        """Wraps the append of the rows submitted with `origins`."""
        ...


# Deadlines are enforced by one sweep of the oldest waiting rows this often,
# not by a timer per request (~5 µs a push at thousands of pushes a second):
# a push may wait up to this much longer than the write deadline.
_SWEEP_SECONDS = 0.05
# A batch is one append of at most this many rows and bytes (a larger row goes alone):
# past a few hundred rows an append gains little, and one Storage Write request carries 8 MiB.
MAX_BATCH_ROWS = 1000
MAX_BATCH_BYTES = 8 * 1024 * 1024
# How many rows of failed appends are remembered (`_suspects`): more than a batch holds.
MAX_SUSPECTS = 2 * MAX_BATCH_ROWS
# How long the flusher or the sweep may be down (failing and started again)
# before readiness names it: meanwhile pushes wait, then fail with a 503.
LOOP_SECONDS = 1.0


class _Pending(msgspec.Struct):
    """A row waiting to be stored (a Struct: made in C, once per push)."""

    row: StoredRow
    size: int
    future: asyncio.Future[RowOutcome]
    origin: object
    deadline: float


class BatchLimits(NamedTuple):
    """How large a batch grows, and how much may queue behind the batches being
    appended before a push is refused (QueueFull)."""

    max_rows: int
    max_bytes: int
    queue_rows: int
    queue_bytes: int

    @classmethod
    def of(cls, batch: BatchSettings) -> BatchLimits:
        """A batch's own limits, and the queue's as `batch` sets them (QUEUE_MAX_ROWS,
        RECORDLINE_QUEUE_MAX_BYTES)."""
        return cls(
            MAX_BATCH_ROWS,
            MAX_BATCH_BYTES,
            batch.queue_rows,
            batch.queue_bytes,
        )


class Batcher:
    def __init__(
        self,
        store: Appender,
        limits: BatchLimits,
        *,
        deadline: float,
        max_in_flight: int = 1,
        observer: FlushObserver | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._max_rows = limits.max_rows
        self._max_bytes = limits.max_bytes
        self._queue_rows = limits.queue_rows
        self._queue_bytes = limits.queue_bytes
        self._deadline = deadline
        self._slots = asyncio.Semaphore(max_in_flight)
        self._observer = observer
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        # Room taken by pushes whose bodies are being read (`reserve`): bytes, and pushes.
        self._reserved = 0
        self._reading = 0
        # Oldest ingest_time of each append still running, by batch number:
        # the read horizon must stay behind them.
        self._in_flight: dict[int, int] = {}
        self._batches = 0
        self._last_stamp = 0
        # What the flusher waits on while the queue is empty; the next row resolves it.
        # (An asyncio.Event costs a call on every push and three on every batch.)
        self._arrival: asyncio.Future[None] | None = None
        self._closing = False
        # Done once the flusher stored every row accepted before `close`.
        self._drained: asyncio.Future[None] | None = None
        # What stops each of the two loops, once started.
        self._stops: list[Callable[[], Awaitable[None]]] = []
        self._appends: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every row not yet answered, in arrival (and so deadline) order.
        self._waiting: deque[_Pending] = deque()
        # Loop time by which every row is answered once the instance is stopping
        # (`hurry`), whatever its own deadline.
        self._cutoff = math.inf
        # The message ids of rows refused with others in one failed append, oldest
        # first: each is appended alone if it comes again, so that a row a store always
        # refuses takes no neighbour with it at every delivery (to the dead-letter topic).
        self._suspects: dict[str, None] = {}

    # -- producer side ---------------------------------------------------

    def _stamp(self) -> int:
        """A non-decreasing ingest time in microseconds."""
        now = self._clock() // 1000
        self._last_stamp = max(now, self._last_stamp)
        return self._last_stamp

    def refusal(self, size: int) -> RetryLater | None:
        """Why a row of `size` bytes would not be queued now, if it would not (`reserve`
        would refuse it), taking nothing."""
        if self._closing:
            return ShuttingDown("shutting down; retry on another instance")
        if (
            len(self._queue) + self._reading >= self._queue_rows
            or self._queued_bytes + self._reserved + size > self._queue_bytes
        ):
            return self._full()
        return None

    def reserve(self, size: int) -> None:
        """Take room for a row of at most `size` bytes whose push is still being read, so
        that a burst is refused on its heads rather than once each body is read: QueueFull
        (or ShuttingDown) if there is none. `submit` takes it on, or `unreserve` gives it
        back."""
        refusal = self.refusal(size)
        if refusal is not None:
            raise refusal
        self._reserved += size
        self._reading += 1

    def unreserve(self, size: int) -> None:
        """Give back the room `reserve` took for `size` bytes (none for 0)."""
        if size:
            self._reserved -= size
            self._reading -= 1

    def _full(self) -> QueueFull:
        said = f" and {self._reading} pushes are being read" if self._reading else ""
        return QueueFull(f"{len(self._queue)} rows are waiting to be stored{said}")

    async def submit(
        self, build: Callable[[int], StoredRow], size: int, reserved: int = 0
    ) -> tuple[StoredRow, RowOutcome]:
        """Build the row with its ingest time, queue it, and wait until it is durably stored;
        in the room `reserved` for it, if any (`reserve`).

        Raise a RetryLater if it is not. The row is stamped and queued in one
        step, with no await between, so the queue stays in ingest_time order
        and the read horizon holds whatever a caller does.
        """
        if reserved:
            self._reserved -= reserved
            self._reading -= 1
        if self._closing:
            raise ShuttingDown("shutting down; retry on another instance")
        if (
            len(self._queue) + self._reading >= self._queue_rows
            or self._queued_bytes + self._reserved + size > self._queue_bytes
        ):
            raise self._full()
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[RowOutcome] = loop.create_future()
        origin = self._observer.submitted() if self._observer is not None else None
        row = build(self._stamp())
        deadline = min(loop.time() + self._deadline, self._cutoff)
        pending = _Pending(row, size, future, origin, deadline)
        self._queue.append(pending)
        self._waiting.append(pending)
        self._queued_bytes += size
        if self._arrival is not None:  # the flusher waits for a row: this one
            self._arrive()
        # The sweeper fails the future with WriteTimeout at the deadline; a row
        # still queued then is dropped at the next flush: no answer, no need to
        # store it. A request that goes away cancels the future the same way.
        return row, await future

    def _arrive(self) -> None:
        """Wake the flusher if it waits for a row."""
        arrival, self._arrival = self._arrival, None
        if arrival is not None and not arrival.done():
            arrival.set_result(None)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def horizon(self) -> int:
        """Every record with an ingest_time below this is committed (µs)."""
        # The queue is in stamp order, so its head is its oldest row.
        oldest = [self._queue[0].row.ingest_time] if self._queue else []
        oldest.extend(self._in_flight.values())
        return min(oldest) if oldest else self._stamp()

    # -- lifecycle -----------------------------------------------------------

    async def start(self, supervisor: Supervisor) -> None:
        """Run the flusher and the deadline sweep under `supervisor` (started), until `close`."""
        self._loop = asyncio.get_running_loop()
        self._stops = [
            supervisor.run("batcher-flush", self._run, interval=LOOP_SECONDS),
            supervisor.run("batcher-deadlines", self._sweep_forever, interval=LOOP_SECONDS),
        ]

    async def _sweep_forever(self) -> None:
        # Every row has the same deadline after its arrival, so the waiting
        # rows expire in arrival order: only the oldest need looking at.
        waiting = self._waiting
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            now = self._loop.time() if self._loop is not None else 0.0
            while waiting and (waiting[0].future.done() or waiting[0].deadline <= now):
                pending = waiting.popleft()
                if pending.future.done():
                    continue
                if now >= self._cutoff:
                    pending.future.set_exception(
                        ShuttingDown("the instance stopped before the row was stored")
                    )
                else:
                    pending.future.set_exception(
                        WriteTimeout(f"not stored within {self._deadline:g} s")
                    )

    def hurry(self, within: float) -> None:
        """The instance is stopping: answer every row not stored `within` seconds
        from now (a 503, so Pub/Sub delivers it again elsewhere), whatever its own
        deadline, so that the process exits in its stop budget while a store hangs.
        Deadlines stay in arrival order: each becomes the earlier of the two."""
        loop = self._loop or asyncio.get_running_loop()
        self._cutoff = min(self._cutoff, loop.time() + within)
        for pending in self._waiting:
            pending.deadline = min(pending.deadline, self._cutoff)

    async def close(self, grace: float) -> None:
        """Refuse new rows, store what was accepted (within `grace`), then stop."""
        self._closing = True
        if not self._stops:
            return
        stop_flusher, stop_sweeper = self._stops
        drained = self._drained = asyncio.get_running_loop().create_future()
        self._arrive()
        try:
            if self._queue or self._appends:  # else nothing is left to store
                async with asyncio.timeout(grace):
                    await drained
        except TimeoutError:
            log.error("shutdown grace ran out with %d rows unstored", len(self._queue))
            await stop_flusher()
            for task in list(self._appends):
                task.cancel()
            await asyncio.gather(*self._appends, return_exceptions=True)
            self._fail(list(self._queue), ShuttingDown("shut down before the row was stored"))
            self._queue.clear()
        finally:
            self._stops = []
            await stop_flusher()
            await stop_sweeper()

    # -- flusher ---------------------------------------------------------------

    async def _run(self) -> None:
        """The flusher: each batch cut and handed to an append of its own, until `close`
        stops it once every accepted row is stored."""
        while True:
            if not self._queue:
                if self._drained is not None and not self._drained.done():
                    await asyncio.gather(*self._appends, return_exceptions=True)
                    self._drained.set_result(None)
                loop = self._loop or asyncio.get_running_loop()
                self._arrival = loop.create_future()
                await self._arrival
                continue
            await self._slots.acquire()
            self._flush(self._cut())

    def _flush(self, batch: list[_Pending]) -> None:
        """Start the append of `batch`, which holds an append slot. Should this fail, the
        batch was handed to no store: its rows fail with a 503 (Pub/Sub delivers them
        again) and the flusher, started again, goes on with the rows behind them."""
        if not batch:
            self._slots.release()
            return
        self._batches += 1
        number = self._batches
        # The queue is in stamp order: its first row is its oldest.
        self._in_flight[number] = batch[0].row.ingest_time
        try:
            observed: AbstractContextManager[object] = (
                self._observer.flushing([p.origin for p in batch])
                if self._observer is not None
                else contextlib.nullcontext()
            )
            task = asyncio.create_task(self._append(number, batch, observed))
        except Exception as exc:
            del self._in_flight[number]
            self._slots.release()
            self._fail(batch, StoreUnavailable(f"batch not stored: {type(exc).__name__}"))
            raise
        self._appends.add(task)
        task.add_done_callback(self._appends.discard)

    def _cut(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        queue = self._queue
        suspects = self._suspects
        while queue and len(batch) < self._max_rows:
            head = queue[0]
            if batch and size + head.size > self._max_bytes:
                break
            alone = head.row.message_id in suspects if suspects else False
            if batch and alone:
                break
            queue.popleft()
            self._queued_bytes -= head.size
            if head.future.done():  # the request timed out or went away
                continue
            batch.append(head)
            size += head.size
            if alone:
                break
        return batch

    async def _append(
        self, number: int, batch: list[_Pending], observed: AbstractContextManager[object]
    ) -> None:
        try:
            with observed:
                outcomes = await self._store.append([p.row for p in batch])
        except RecordlineError as exc:
            self._suspect(batch)
            self._fail(batch, exc)
        except Exception as exc:
            log.exception("append of %d rows failed", len(batch))
            self._suspect(batch)
            self._fail(batch, StoreUnavailable(f"store error: {type(exc).__name__}"))
        except asyncio.CancelledError:
            self._fail(batch, ShuttingDown("shut down before the row was stored"))
            raise
        else:
            if self._suspects:
                for pending in batch:
                    self._suspects.pop(pending.row.message_id, None)
            for pending, outcome in zip(batch, outcomes, strict=True):
                if not pending.future.done():
                    pending.future.set_result(outcome)
        finally:
            del self._in_flight[number]
            self._slots.release()

    def _suspect(self, batch: Sequence[_Pending]) -> None:
        """Remember the rows of a failed append of several: which of them the store
        refuses is not known, so each is appended alone if it comes again (after an outage,
        the last MAX_SUSPECTS rows it refused are appended one by one as they come back)."""
        if len(batch) < 2:
            return
        suspects = self._suspects
        for pending in batch:
            suspects[pending.row.message_id] = None
        while len(suspects) > MAX_SUSPECTS:
            del suspects[next(iter(suspects))]

    @staticmethod
    def _fail(batch: Sequence[_Pending], exc: BaseException) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

"""Group commit, on the batcher alone."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from app.errors import QueueFull, ShuttingDown, StoreUnavailable, WriteTimeout
from app.ingest.batcher import LOOP_SECONDS, Batcher, BatchLimits, StoredRow
from app.lifespan import AppLoops
from app.records import Record, Rejection
from app.store import RowOutcome
from app.store.supervisor import Supervisor
from tests.waiting import until


class Recorder:
    """An Appender that records each append and can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.entered: list[str] = []  # every row an append was called with, held or not
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        self.entered.extend(r.message_id for r in rows)
        await self.gate.wait()
        if self.error:
            raise self.error
        self.batches.append([r.message_id for r in rows])
        return [None if isinstance(r, Record) else "rejected" for r in rows]


@pytest.fixture
async def loops() -> AsyncIterator[Supervisor]:
    """The supervisor a batcher's loops run under, as the app's."""
    supervisor = Supervisor()
    await supervisor.start()
    yield supervisor
    await supervisor.close()


def record(n: int) -> Callable[[int], Record]:
    return lambda ingest_time: Record(
        message_id=f"m{n}", publish_time=0, ingest_time=ingest_time, id=str(n)
    )


async def outcome(batcher: Batcher, build: Callable[[int], StoredRow], size: int) -> RowOutcome:
    return (await batcher.submit(build, size))[1]


async def accepted(batcher: Batcher, store: Recorder, rows: int) -> None:
    """Until `rows` rows are in the batcher's queue or in an append the store holds."""
    await until(
        lambda: len(store.entered) + batcher.depth == rows,
        what=lambda: f"{rows} rows accepted ({store.entered} appending, {batcher.depth} queued)",
    )


async def begun(task: asyncio.Task[None]) -> None:
    """Until the task's coroutine ran to its first await."""
    coroutine = task.get_coro()
    assert inspect.iscoroutine(coroutine)
    await until(
        lambda: inspect.getcoroutinestate(coroutine) != inspect.CORO_CREATED,
        what=f"{task.get_name()} to begin",
    )


def make(store: Recorder, **overrides: float) -> Batcher:
    options = dict(
        max_rows=100,
        max_bytes=10_000,
        queue_rows=1000,
        queue_bytes=10**6,
        deadline=2.0,
    )
    options.update(overrides)
    limits = BatchLimits(**{name: options.pop(name) for name in BatchLimits._fields})  # type: ignore[arg-type]
    return Batcher(store, limits, **options)  # type: ignore[arg-type]


async def test_concurrent_submits_share_appends(loops: Supervisor) -> None:
    store = Recorder()
    batcher = make(store)
    await batcher.start(loops)
    store.gate.clear()
    results = asyncio.gather(*(outcome(batcher, record(n), 10) for n in range(250)))
    await accepted(batcher, store, 250)
    store.gate.set()
    assert await results == [None] * 250
    # Held appends let rows pile up: few appends, each at most max_rows.
    assert len(store.batches) <= 4
    assert max(len(b) for b in store.batches) <= 100
    assert sorted(m for b in store.batches for m in b) == sorted(f"m{n}" for n in range(250))
    await batcher.close(grace=1)


async def test_batches_are_cut_by_bytes(loops: Supervisor) -> None:
    store = Recorder()
    batcher = make(store, max_bytes=250)
    await batcher.start(loops)
    store.gate.clear()
    results = asyncio.gather(*(outcome(batcher, record(n), 100) for n in range(6)))
    await accepted(batcher, store, 6)
    store.gate.set()
    await results
    assert all(len(b) <= 2 for b in store.batches)
    await batcher.close(grace=1)


async def test_each_waiter_gets_its_own_outcome_and_failures_reach_all(loops: Supervisor) -> None:
    store = Recorder()
    batcher = make(store)
    await batcher.start(loops)

    def rejection(ingest_time: int) -> Rejection:
        return Rejection(message_id="bad", publish_time=0, ingest_time=ingest_time)

    assert await outcome(batcher, rejection, 10) == "rejected"
    store.error = StoreUnavailable("down")
    outcomes = await asyncio.gather(
        *(outcome(batcher, record(n), 10) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    store.error = RuntimeError("driver bug")  # unexpected errors are still a 503
    with pytest.raises(StoreUnavailable):
        await outcome(batcher, record(9), 10)
    await batcher.close(grace=1)


class Poisoned(Recorder):
    """A store that refuses every append holding the row `poison`, as a whole."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        if any(r.message_id == self.poison for r in rows):
            self.entered.extend(r.message_id for r in rows)
            raise StoreUnavailable("refused")
        return await super().append(rows)


async def test_a_row_the_store_always_refuses_takes_no_neighbour_with_it(
    loops: Supervisor,
) -> None:
    # Pub/Sub delivers every refused message again, often all at once: each delivery
    # here is the same rows pushed together, the poison among them.
    store = Poisoned("m3")
    batcher = make(store)
    await batcher.start(loops)
    deliveries = []
    for _ in range(3):
        store.gate.clear()
        pushes = asyncio.gather(
            *(outcome(batcher, record(n), 10) for n in range(6)), return_exceptions=True
        )
        await accepted(batcher, store, len(store.entered) + 6)
        store.gate.set()
        deliveries.append(
            {f"m{n}": not isinstance(o, Exception) for n, o in enumerate(await pushes)}
        )
    # The first delivery shares one append with the poison and is refused whole; from
    # the next, each row refused with it goes alone: only the poison is refused again.
    assert deliveries[0] == dict.fromkeys(deliveries[0], False)
    assert deliveries[1] == {f"m{n}": n != 3 for n in range(6)}
    assert deliveries[2] == deliveries[1]
    # Stored once alone each, then batched again as any row, only the poison kept apart.
    alone = [["m0"], ["m1"], ["m2"], ["m4"], ["m5"]]
    assert store.batches == [*alone, ["m0", "m1", "m2"], ["m4", "m5"]]
    await batcher.close(grace=1)


async def test_after_an_outage_its_rows_are_appended_alone_once_then_batched(
    loops: Supervisor,
) -> None:
    store = Recorder()
    batcher = make(store)
    await batcher.start(loops)
    store.error = StoreUnavailable("down")
    store.gate.clear()
    pushes = asyncio.gather(
        *(outcome(batcher, record(n), 10) for n in range(4)), return_exceptions=True
    )
    await accepted(batcher, store, 4)
    store.gate.set()
    assert all(isinstance(o, StoreUnavailable) for o in await pushes)
    store.error = None
    for delivery in range(2):
        store.gate.clear()
        pushes = asyncio.gather(*(outcome(batcher, record(n), 10) for n in range(4)))
        await accepted(batcher, store, len(store.entered) + 4)
        store.gate.set()
        assert await pushes == [None] * 4, delivery
    assert store.batches[:4] == [["m0"], ["m1"], ["m2"], ["m3"]]
    assert store.batches[4:] == [["m0", "m1", "m2", "m3"]]
    await batcher.close(grace=1)


async def test_queue_bound_and_deadline(loops: Supervisor) -> None:
    store = Recorder()
    batcher = make(store, queue_rows=3, deadline=0.2, max_rows=1)
    await batcher.start(loops)
    store.gate.clear()
    waiting = [asyncio.create_task(outcome(batcher, record(0), 10))]
    await until(lambda: store.entered == ["m0"], what="m0 in the held append")
    waiting += [asyncio.create_task(outcome(batcher, record(n), 10)) for n in (1, 2, 3)]
    await until(lambda: batcher.depth == 3, what="m1..m3 filling the queue")
    with pytest.raises(QueueFull):
        await outcome(batcher, record(99), 10)
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, WriteTimeout) for o in outcomes)
    # Rows whose requests gave up while still queued are not stored at all.
    store.gate.set()
    await until(lambda: batcher.depth == 0, what="the flusher to drop the abandoned rows")
    assert await outcome(batcher, record(100), 10) is None
    stored = [m for b in store.batches for m in b]
    assert "m100" in stored
    assert stored == ["m0", "m100"]  # m0 was already in the held append
    await batcher.close(grace=1)


async def test_close_drains_accepted_rows_then_refuses(loops: Supervisor) -> None:
    store = Recorder()
    batcher = make(store)
    await batcher.start(loops)
    store.gate.clear()
    waiting = [asyncio.create_task(outcome(batcher, record(n), 10)) for n in range(50)]
    await accepted(batcher, store, 50)
    closing = asyncio.create_task(batcher.close(grace=2))
    await begun(closing)
    with pytest.raises(ShuttingDown):
        await outcome(batcher, record(999), 10)
    store.gate.set()
    await closing
    assert await asyncio.gather(*waiting) == [None] * 50
    assert len([m for b in store.batches for m in b]) == 50


async def test_close_gives_up_after_grace(loops: Supervisor) -> None:
    store = Recorder()
    batcher = make(store, deadline=5)
    await batcher.start(loops)
    store.gate.clear()
    waiting = asyncio.create_task(outcome(batcher, record(1), 10))
    await accepted(batcher, store, 1)
    await batcher.close(grace=0.1)
    with pytest.raises(ShuttingDown):
        await waiting


async def test_a_stop_answers_rows_in_flight_within_its_budget(loops: Supervisor) -> None:
    # A store that hangs: without `hurry`, each push would wait out its own
    # 60 s deadline and the instance would be killed before it could answer.
    store = Recorder()
    batcher = make(store, deadline=60, max_rows=1)
    await batcher.start(loops)
    store.gate.clear()
    in_append = asyncio.create_task(outcome(batcher, record(1), 10))
    await until(lambda: store.entered == ["m1"], what="m1 in the held append")
    queued = asyncio.create_task(outcome(batcher, record(2), 10))
    await accepted(batcher, store, 2)
    loop = asyncio.get_running_loop()
    began = loop.time()
    batcher.hurry(within=0.2)
    # A row submitted after the stop began gets no more than what is left.
    late = asyncio.create_task(outcome(batcher, record(3), 10))
    answers = await asyncio.gather(in_append, queued, late, return_exceptions=True)
    assert [type(a) for a in answers] == [ShuttingDown] * 3, answers
    assert loop.time() - began < 1.0
    await batcher.close(grace=0.1)


async def test_horizon_stays_behind_unstored_rows(loops: Supervisor) -> None:
    store = Recorder()
    batcher = make(store)
    await batcher.start(loops)
    store.gate.clear()
    task = asyncio.create_task(batcher.submit(record(1), 10))
    await accepted(batcher, store, 1)
    held = batcher.horizon()
    store.gate.set()
    first, _ = await task
    assert held == first.ingest_time
    assert batcher.horizon() > first.ingest_time
    await batcher.close(grace=1)


class BrokenFlush:
    """A FlushObserver whose first `flushing` fails, as a bug in tracing would."""

    def __init__(self) -> None:
        self.calls = 0

    def submitted(self) -> object:
        return None

    def flushing(self, origins: Sequence[object]) -> contextlib.nullcontext[None]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("injected: a tracing bug")
        return contextlib.nullcontext()


async def test_a_flusher_that_fails_is_restarted_and_named_while_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    restarted: list[str] = []

    class Restarts:
        def restarted(self, loop: str) -> None:
            restarted.append(loop)
            # As if the loop stayed down past its interval: down until a run lasts as long.
            now[0] += LOOP_SECONDS + 1

    supervisor = Supervisor(observer=Restarts(), monotonic=lambda: now[0])
    await supervisor.start()
    store = Recorder()
    limits = BatchLimits(max_rows=1, max_bytes=10_000, queue_rows=10, queue_bytes=10**6)
    batcher = Batcher(store, limits, deadline=5.0, observer=BrokenFlush())
    await batcher.start(supervisor)
    # m1's batch fails before any store sees it: a 503, so Pub/Sub delivers it again.
    # m2, queued behind it, is stored by the flusher started again.
    outcomes = await asyncio.gather(
        outcome(batcher, record(1), 10), outcome(batcher, record(2), 10), return_exceptions=True
    )
    assert [type(o) for o in outcomes] == [StoreUnavailable, type(None)], outcomes
    assert restarted == ["batcher-flush"]
    [failed] = [r for r in caplog.records if "batcher-flush loop failed" in r.getMessage()]
    assert failed.exc_info is not None  # with its traceback
    assert supervisor.restarts("batcher-flush") == 1
    with pytest.raises(StoreUnavailable, match=r"down: batcher-flush \(RuntimeError: injected"):
        await AppLoops(supervisor).check()
    assert await outcome(batcher, record(3), 10) is None
    assert store.entered == ["m2", "m3"]  # m1 never reached the store
    assert store.batches == [["m2"], ["m3"]]
    now[0] += LOOP_SECONDS  # a run as long as its interval: up again
    await AppLoops(supervisor).check()
    await batcher.close(grace=1)
    await supervisor.close()

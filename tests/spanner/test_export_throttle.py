"""A hot system's export slowed by on-call (`export_rows_per_second` in the cell's
throttles file: app.cell.throttles), against the Spanner emulator and the Storage Write
fake.

Time here passes only when a paced export waits (a clock and a sleep of the test's own),
so what is checked is counted, not timed: the rows BigQuery holds against the seconds
the export waited. Each row is still in BigQuery once, and the watermark never passes a
row that is not, whatever the throttle does between two batches; another system's
export never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.cell.throttles import Throttles
from app.exporter.service import ExporterService, Pool, exported_systems
from app.records import Record, Rejection
from app.settings import Settings
from app.store.spanner.ledger import LeaseLost, ProgressMoved
from app.store.tiered.store import TieredStore
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import Abort, FakeBigQueryWrite
from tests.spanner.emulator import SpannerEmulator
from tests.spanner.exporting import copies, drain, exporter, settle_clock
from tests.spanner.test_serving import record
from tests.waiting import until

pytestmark = pytest.mark.emulator

Make = Callable[..., Any]
SLOW = {"by": "oncall@example.com", "reason": "alpha's export holds the instance at 90% CPU"}


class Waits:
    """A clock that moves only when a paced export waits, and each wait it took."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.taken: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.taken.append(seconds)
        self.now += seconds


class Batches:
    """Each batch exported (an ExportObserver): its rows, and the clock when it was in."""

    def __init__(self, waits: Waits) -> None:
        self._waits = waits
        self.taken: list[tuple[float, int]] = []

    def exported(self, table: str, rows: Sequence[Record | Rejection]) -> None:
        self.taken.append((self._waits.now, len(rows)))

    def blocked(self, table: str, reason: str) -> None:
        pass

    def unblocked(self, table: str) -> None:
        pass

    def watermark(self, table: str, micros: int) -> None:
        pass

    def released(self) -> None:
        pass


def throttle_file(tmp_path: Path, entries: dict[str, Any]) -> Path:
    path = tmp_path / "throttles.json"
    path.write_text(json.dumps(entries))
    return path


async def rows_of(store: TieredStore, count: int, prefix: str = "m", *, per: int = 0) -> list[str]:
    """`count` rows committed, `per` a commit (all in one by default)."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    per = per or count
    for first in range(0, count, per):
        await store.append([record(m) for m in ids[first : first + per]])
    return ids


async def test_a_throttled_export_takes_its_rows_a_second_and_no_more(
    make_tiered: Make, write_fake: FakeBigQueryWrite, tmp_path: Path
) -> None:
    store = await make_tiered()
    ids = await rows_of(store, 23)
    await settle_clock()
    waits = Waits()
    path = throttle_file(tmp_path, {"alpha": {"export_rows_per_second": 5, **SLOW}})
    throttles = Throttles(str(path), ["alpha"], clock=waits.clock, sleep=waits.sleep)
    await throttles.read()
    batches = Batches(waits)
    one = exporter(store, throttle=throttles.export_pace("alpha"), observer=batches)
    started = waits.now
    for _ in range(20):
        if sum(rows for _, rows in batches.taken) == len(ids):
            break
        await one.step()
    # Each batch a second's rows at most (the batch may take 1,000), and what BigQuery
    # held never more than a second's burst and five rows a second after it.
    assert [rows for _, rows in batches.taken] == [5, 5, 5, 5, 3]
    held = 0
    for at, rows in batches.taken:
        held += rows
        assert held <= 5 + 5 * (at - started)
    # No slower either: it waited for its rows' seconds, no more (23 rows: the burst, then
    # four seconds).
    assert batches.taken[-1][0] - started == pytest.approx((23 - 3) / 5)
    assert copies(write_fake, "records") == {m: 1 for m in ids}


async def test_a_throttle_changed_and_lifted_mid_export_exports_every_row_once(
    make_tiered: Make, write_fake: FakeBigQueryWrite, tmp_path: Path
) -> None:
    store = await make_tiered()
    # Commits of five rows: a batch ends within one commit's rows or at its end.
    ids = await rows_of(store, 60, per=5)
    await settle_clock()
    keys = sorted(
        (row.ingest_time, row.message_id)
        for row in await store.serving.rows_after(Record, (0, ""), time.time_ns() // 1000, 100)
    )
    waits = Waits()
    path = throttle_file(tmp_path, {"alpha": {"export_rows_per_second": 7, **SLOW}})
    throttles = Throttles(str(path), ["alpha"], clock=waits.clock, sleep=waits.sleep)
    await throttles.read()
    one = exporter(store, throttle=throttles.export_pace("alpha"), batch_rows=10)
    # Two appends land and their answers are lost: each batch is appended again at its
    # offset, as its intent in Spanner says, whatever the throttle is by then.
    write_fake.inject("records", Abort(commit=True), None, Abort(commit=True))

    async def step_checked(steps: int) -> None:
        for _ in range(steps):
            with contextlib.suppress(LeaseLost, ProgressMoved):
                await one.step()
            held = set(copies(write_fake, "records"))
            watermark = (await one.ledger.watermarks())["records"]
            # Every row before the watermark is in BigQuery, under any throttle.
            assert {m for t, m in keys if t < watermark} <= held

    await step_checked(3)
    # Slowed further, then lifted, between batches: a batch is as the pace was when it
    # began, and the next one is as the file says now.
    path.write_text(json.dumps({"alpha": {"export_rows_per_second": 2, **SLOW}}))
    await throttles.read()
    await step_checked(3)
    path.write_text(json.dumps({}))
    await throttles.read()
    await step_checked(2)
    await drain(one)
    assert copies(write_fake, "records") == {m: 1 for m in ids}
    assert (await one.ledger.watermarks())["records"] >= keys[-1][0]
    assert throttles.problems() == []


async def test_another_systems_export_never_waits_for_a_throttled_one(
    make_tiered: Make,
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    tmp_path: Path,
) -> None:
    alpha = await make_tiered()
    beta = await make_tiered(url=spanner_emulator.database())
    alphas = await rows_of(alpha, 12, "alpha")
    betas = await rows_of(beta, 30, "beta")
    await settle_clock()
    waits = Waits()
    path = throttle_file(
        tmp_path,
        {
            "alpha": {"export_rows_per_second": 2, **SLOW},
            # An export throttle that cannot be used: said, and gamma not slowed.
            "gamma": {"export_rows_per_second": 0, **SLOW},
        },
    )
    throttles = Throttles(
        str(path), ["alpha", "beta", "gamma"], clock=waits.clock, sleep=waits.sleep
    )
    await throttles.read()
    (problem,) = throttles.problems()
    assert problem.startswith("the throttle of 'gamma' cannot be used"), problem
    assert "export_rows_per_second" in problem
    slowed = exporter(alpha, holder="pool", throttle=throttles.export_pace("alpha"))
    other = exporter(beta, holder="pool", throttle=throttles.export_pace("beta"))
    assert await slowed.step()
    # Alpha's export waits for its next batch; beta's takes its 30 rows at once, and
    # waits for nothing, however alpha's goes.
    for _ in range(3):
        before = list(waits.taken)
        await other.step()
        assert waits.taken == before
        await slowed.step()
    held = copies(write_fake, "records")
    assert [held[m] for m in betas] == [1] * len(betas)
    assert 0 < sum(held[m] for m in alphas) < len(alphas)
    await drain(slowed)
    assert copies(write_fake, "records") == {m: 1 for m in alphas + betas}


async def test_a_stop_while_a_paced_export_waits_hands_the_lease_back_in_time(
    make_tiered: Make,
    database: str,
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    tmp_path: Path,
) -> None:
    store = await make_tiered()
    ids = await rows_of(store, 20)
    path = throttle_file(tmp_path, {"alpha": {"export_rows_per_second": 1, **SLOW}})
    settings = Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps(
                {"alpha": {"serving": database, "store": f"bigquery://{PROJECT}/{DATASET}"}}
            ),
            "RECORDLINE_THROTTLES": str(path),
            "SPANNER_EMULATOR_HOST": spanner_emulator.host,
            "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write_fake.address,
            "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
        }
    )
    waiting = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waiting.set()
        await asyncio.sleep(seconds)  # the pace's own wait, on the real clock

    throttles = Throttles(str(path), ["alpha"], sleep=sleep)
    pool = Pool.of(settings, 1, instance="pool-1")
    service = ExporterService(
        exported_systems(settings, pool=pool, throttles=throttles),
        grace_seconds=settings.server.shutdown_grace_seconds,
        pool=pool,
        throttles=throttles,
    )
    stop = asyncio.Event()  # what `serve` sets on SIGTERM
    running = asyncio.create_task(service.run(stop))
    try:
        await until(
            lambda: waiting.is_set() and copies(write_fake, "records"),
            timeout=60,
            what="the export paced, a batch in BigQuery",
        )
        assert "alpha" in throttles.in_force()
        waiting.clear()
        await until(waiting.is_set, timeout=10, what="the next paced wait")
        stopped = time.monotonic()
        stop.set()
        await asyncio.wait_for(running, timeout=15)
        took = time.monotonic() - stopped
    finally:
        if not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    # Within Cloud Run's 10 s, and the lease handed back at once.
    assert took < 10, took
    print(f"\nstopped {took:.2f} s after the stop, mid-wait")
    assert not [s for s in await store.serving.ledger.leases() if s.live]
    held = copies(write_fake, "records")
    assert 0 < len(held) < len(ids)
    # The rest by the next holder, unthrottled: every row once.
    await drain(exporter(store, holder="next"))
    assert copies(write_fake, "records") == {m: 1 for m in ids}

"""A hot system slowed: the throttle on-call sets in the cell's throttles file
(RECORDLINE_THROTTLES) without a deploy.

Two instances of one cell (two processes' worth: each its own app and DuckDB stores,
one file, as Cloud Run mounts one secret in every instance) behind the server
`recordline serve` runs: a throttled system's pushes past its pace are answered 429 with
`Retry-After`, on its head, nothing of them stored; the other systems' pushes are
answered 204; `/readyz` says who throttled what; a file that cannot be read or used
keeps what was read last and says why, and stops nobody's pushes. Then the file as a
careless operator writes it: each mistake refused, named, and the rest kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from app.cell.app import Cell, create_cell
from app.cell.throttles import Pace, Throttles
from app.settings import SECRET_MOST_BYTES, Settings, SettingsError
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, served
from tests.fakes import FaultyStore
from tests.waiting import until

SYSTEMS = ("alpha", "beta", "gamma")
RECORD = {"id": "r-1", "data": "x"}
SLOW = {"by": "oncall@example.com", "reason": "alpha holds cell-1-serving at 90% CPU"}


def throttle(rate: float, **extra: Any) -> dict[str, Any]:
    return {"instance_pushes_per_second": rate, **SLOW, **extra}


def write(path: Path, throttles: object) -> None:
    path.write_bytes(msgspec.json.encode(throttles))


def new_cell(path: Path) -> Cell:
    settings = Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps({name: {"store": "memory:"} for name in SYSTEMS}),
            "RECORDLINE_THROTTLES": str(path),
        }
    )
    return create_cell(
        settings,
        stores={name: (lambda: FaultyStore(DuckDBStore(":memory:"))) for name in SYSTEMS},
    )


@pytest.fixture
async def instances(
    tmp_path: Path,
) -> AsyncIterator[tuple[Path, list[tuple[Cell, httpx.AsyncClient]]]]:
    path = tmp_path / "throttles.json"
    # Alpha throttled before either instance starts: each takes it up before it serves.
    write(path, {"alpha": throttle(0.01)})
    async with AsyncExitStack() as stack:
        served_ = []
        for _ in range(2):
            cell = new_cell(path)
            client = await stack.enter_async_context(served(cell, bounded=True))  # type: ignore[arg-type]
            served_.append((cell, client))
        yield path, served_


async def push(client: httpx.AsyncClient, system: str, message_id: str) -> httpx.Response:
    return await client.post(
        f"/systems/{system}/pubsub/push", json=envelope(RECORD, message_id=message_id)
    )


async def stored(client: httpx.AsyncClient, system: str) -> set[str]:
    answer = await client.get(f"/systems/{system}/v1/records")
    assert answer.status_code == 200, answer.text
    return {r["message_id"] for r in answer.json()["records"]}


async def test_a_throttled_systems_pushes_are_refused_429_on_every_instance_the_others_stored(
    instances: tuple[Path, list[tuple[Cell, httpx.AsyncClient]]],
) -> None:
    path, served_ = instances
    for n, (_, client) in enumerate(served_):
        # One push of its burst, then refused: 429, Retry-After, nothing stored.
        assert (await push(client, "alpha", f"a-{n}-0")).status_code == 204
        refused = await push(client, "alpha", f"a-{n}-1")
        assert refused.status_code == 429, refused.text
        assert refused.json()["type"] == "/problems/system-throttled"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert f"a-{n}-1" not in await stored(client, "alpha")
        for other in ("beta", "gamma"):
            for m in range(5):
                assert (await push(client, other, f"{other}-{n}-{m}")).status_code == 204
        health = (await client.get("/readyz")).json()
        assert list(health["throttled"]) == ["alpha"], health
        assert "oncall@example.com" in health["throttled"]["alpha"]
        assert "90% CPU" in health["throttled"]["alpha"]
    # Lifted in the file: each instance admits alpha's pushes at its next read.
    write(path, {})
    for n, (cell, client) in enumerate(served_):
        assert cell.throttles is not None
        await cell.throttles.read()
        for m in range(5):
            assert (await push(client, "alpha", f"lifted-{n}-{m}")).status_code == 204
        assert "throttled" not in (await client.get("/readyz")).json()


async def test_a_throttle_file_that_cannot_be_read_or_used_keeps_the_last_and_stops_nobody(
    instances: tuple[Path, list[tuple[Cell, httpx.AsyncClient]]],
) -> None:
    path, served_ = instances
    broken: list[tuple[str, str]] = [
        ("gone", ""),
        ("not json", "{alpha: 1"),
        ("a list", "[]"),
        ("null", "null"),
        ("not a number", '{"alpha": {"instance_pushes_per_second": NaN}}'),
        (
            "too large",
            json.dumps({"alpha": throttle(0.01, reason="x" * 1000)}) + " " * SECRET_MOST_BYTES,
        ),
    ]
    for what, text in broken:
        if what == "gone":
            path.unlink()
        else:
            path.write_text(text)
        for cell, client in served_:
            assert cell.throttles is not None
            await cell.throttles.read()
            health = await client.get("/readyz")
            assert health.status_code == 200, what
            problems = health.json()["throttle_problems"]
            assert any("the throttles last read are kept" in p for p in problems), (what, problems)
            # Alpha's throttle is still the one read last; beta pushes on.
            assert "alpha" in health.json()["throttled"], what
            assert (await push(client, "beta", f"beta-{what}")).status_code == 204
            answers = {
                (await push(client, "alpha", f"alpha-{what}-{m}")).status_code for m in range(2)
            }
            assert 429 in answers, what


async def test_a_cell_whose_throttles_file_is_missing_at_start_serves_and_says_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    cell = new_cell(path)
    async with served(cell, bounded=True) as client:  # type: ignore[arg-type]
        for system in SYSTEMS:
            assert (await push(client, system, f"{system}-0")).status_code == 204
        health = await client.get("/readyz")
        assert health.status_code == 200
        (problem,) = health.json()["throttle_problems"]
        assert problem.startswith(f"{path} cannot be read: No such file or directory")
        # The file appears: taken up at the next read.
        write(path, {"gamma": throttle(0.01)})
        assert cell.throttles is not None
        await cell.throttles.read()
        assert (await push(client, "gamma", "gamma-1")).status_code == 204
        assert (await push(client, "gamma", "gamma-2")).status_code == 429
        assert "throttle_problems" not in (await client.get("/readyz")).json()


async def test_a_throttle_applies_to_its_own_system_alone(tmp_path: Path) -> None:
    path = tmp_path / "throttles.json"
    write(path, {"beta": throttle(0.01)})
    cell = new_cell(path)
    async with served(cell, bounded=True) as client:  # type: ignore[arg-type]
        assert (await push(client, "beta", "b-0")).status_code == 204
        assert (await push(client, "beta", "b-1")).status_code == 429
        for m in range(5):
            assert (await push(client, "alpha", f"a-{m}")).status_code == 204
        # Reads of a throttled system are not throttled.
        assert await stored(client, "beta") == {"b-0"}


def test_the_throttles_path_is_absolute() -> None:
    with pytest.raises(SettingsError, match="RECORDLINE_THROTTLES"):
        Settings.load(
            {
                "RECORDLINE_CELL": "cell-1",
                "RECORDLINE_SYSTEMS": json.dumps({"alpha": {"store": "memory:"}}),
                "RECORDLINE_THROTTLES": "throttles.json",
            }
        )


# --- the file as a careless operator writes it ---------------------------------------


class Clock:
    """A clock that moves when told, or when a paced export waits (`sleep`)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def throttles_of(path: Path, clock: Clock | None = None, **kwargs: Any) -> Throttles:
    return Throttles(str(path), SYSTEMS, clock=clock or Clock(), **kwargs)


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        (throttle(0), "instance_pushes_per_second"),
        (throttle(-5), "instance_pushes_per_second"),
        (throttle(1e12), "instance_pushes_per_second"),
        (throttle("fast"), "instance_pushes_per_second"),
        ({"instance_pushes_per_second": 5, "reason": "hot"}, "by"),
        (throttle(5, by=""), "by"),
        (throttle(5, reason=""), "reason"),
        ({"pushes_per_second": 5, **SLOW}, "pushes_per_second"),
        (throttle(5, until="tomorrow"), "until"),
        (throttle(5, reason="x" * 1001), "reason"),
        (
            msgspec.Raw(b'{"instance_pushes_per_second": 1e400, "by": "a", "reason": "b"}'),
            "instance_pushes_per_second",
        ),
        (5, "object"),
        (None, "object"),
        (SLOW, "names instance_pushes_per_second, export_rows_per_second or both"),
        ({"export_rows_per_second": 0.5, **SLOW}, "export_rows_per_second"),
        ({"export_rows_per_second": 1e6, **SLOW}, "export_rows_per_second"),
        (throttle(5, export_rows_per_second="slow"), "export_rows_per_second"),
        ({"export_rows_per_minute": 60, **SLOW}, "export_rows_per_minute"),
    ],
    ids=[
        "zero",
        "negative",
        "huge",
        "not a number",
        "nobody set it",
        "by nobody",
        "no reason",
        "misspelt field",
        "unknown field",
        "a reason too long",
        "past a float",
        "not an object",
        "null",
        "no pace",
        "an export slower than a row a second",
        "an export past any instance's",
        "an export that is no number",
        "an export's misspelt field",
    ],
)
async def test_an_entry_that_cannot_be_used_is_named_and_the_last_throttle_kept(
    tmp_path: Path, entry: object, named: str
) -> None:
    path = tmp_path / "throttles.json"
    throttles = throttles_of(path)
    write(path, {"alpha": throttle(2), "beta": throttle(3)})
    await throttles.read()
    write(path, {"alpha": entry, "beta": throttle(4)})
    await throttles.read()
    # Beta's change is taken up; alpha's last throttle is kept, and why said.
    assert throttles.in_force()["alpha"].startswith("2 pushes a second an instance")
    assert throttles.in_force()["beta"].startswith("4 pushes a second an instance")
    (problem,) = throttles.problems()
    assert problem.startswith("the throttle of 'alpha' cannot be used"), problem
    assert named in problem
    # An entry never good is no throttle, and said.
    write(path, {"gamma": entry})
    await throttles.read()
    assert throttles.in_force() == {}
    (problem,) = throttles.problems()
    assert problem.startswith("the throttle of 'gamma' cannot be used"), problem
    assert problem.endswith("; it is not throttled")
    assert throttles.refused("gamma") is None


async def test_a_throttle_of_a_system_the_cell_does_not_serve_is_said_and_ignored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    throttles = throttles_of(path)
    write(path, {"alhpa": throttle(1), "beta": throttle(1)})
    await throttles.read()
    assert list(throttles.in_force()) == ["beta"]
    assert throttles.problems() == ["'alhpa' is no system of the cell: its throttle is ignored"]


async def test_an_empty_file_and_an_empty_object_throttle_nothing(tmp_path: Path) -> None:
    path = tmp_path / "throttles.json"
    throttles = throttles_of(path)
    for text in ("", "{}", "\n"):
        path.write_text(text)
        await throttles.read()
        assert throttles.in_force() == {}
        assert throttles.problems() == []


async def test_a_read_that_hangs_ends_at_its_deadline_and_holds_one_thread(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    write(path, {"alpha": throttle(1)})
    hang = threading.Event()
    reads: list[str] = []

    readers: list[threading.Thread] = []

    def read(at: str) -> bytes:
        reads.append(at)
        readers.append(threading.current_thread())
        hang.wait(30)
        return path.read_bytes()

    throttles = throttles_of(path, read=read, deadline=0.05)
    try:
        for _ in range(3):
            await asyncio.wait_for(throttles.read(), timeout=5)
        (problem,) = throttles.problems()
        assert "was not read within 0.05 s" in problem
        assert len(reads) == 1  # the hung read waited on again, never another started
        assert throttles.in_force() == {}
        # Its thread is a daemon: a stop does not wait for it (app.threads).
        assert all(thread.daemon for thread in readers)
    finally:
        hang.set()

    # The read that hung returns: a read then takes it up.
    async def taken_up() -> bool:
        await throttles.read()
        return "alpha" in throttles.in_force()

    await until(taken_up, what="the hung read taken up")
    assert throttles.problems() == []
    assert len(reads) == 1
    throttles.close()


async def test_the_watch_reads_again_and_says_when_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "throttles.json"
    write(path, {})
    clock = Clock()
    throttles = throttles_of(path, clock, every=0.01)
    watching = asyncio.create_task(throttles.watch())
    try:
        write(path, {"alpha": throttle(1)})
        await until(lambda: "alpha" in throttles.in_force(), what="the throttle taken up")
        write(path, {})
        await until(lambda: not throttles.in_force(), what="the throttle lifted")
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    clock.now += 1.0
    assert throttles.problems() == [f"{path} not read for 1 s"]


async def test_each_throttle_taken_up_and_lifted_is_logged_with_who_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "throttles.json"
    throttles = throttles_of(path)
    caplog.set_level(logging.WARNING, logger="app.cell.throttles")
    write(path, {"alpha": throttle(5)})
    await throttles.read()
    await throttles.read()  # unchanged: said once
    write(path, {})
    await throttles.read()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "system alpha throttled: 5 pushes a second an instance, set by oncall@example.com: "
        "alpha holds cell-1-serving at 90% CPU",
        "system alpha no longer throttled (it was 5 pushes a second an instance, set by "
        "oncall@example.com: alpha holds cell-1-serving at 90% CPU)",
    ]
    fields = caplog.records[0].fields  # type: ignore[attr-defined]
    assert fields["throttled_by"] == "oncall@example.com"
    assert fields["instance_pushes_per_second"] == 5


async def test_pushes_and_export_are_throttled_each_alone_or_both(tmp_path: Path) -> None:
    path = tmp_path / "throttles.json"
    clock = Clock()
    slept = clock.slept
    throttles = throttles_of(path, clock, sleep=clock.sleep)
    write(
        path,
        {
            "alpha": {"export_rows_per_second": 100, **SLOW},
            "beta": throttle(0.01),
            "gamma": throttle(0.01, export_rows_per_second=10),
        },
    )
    await throttles.read()
    assert throttles.problems() == []
    assert throttles.in_force() == {
        "alpha": f"its export at 100 rows a second, set by {SLOW['by']}: {SLOW['reason']}",
        "beta": f"0.01 pushes a second an instance, set by {SLOW['by']}: {SLOW['reason']}",
        "gamma": "0.01 pushes a second an instance and its export at 10 rows a second, set by "
        f"{SLOW['by']}: {SLOW['reason']}",
    }
    # Alpha's pushes are not slowed; its export is.
    assert all(throttles.refused("alpha") is None for _ in range(50))
    assert await throttles.export_batch("alpha", 1000) == 100
    throttles.exported("alpha", 100)
    assert await throttles.export_batch("alpha", 1000) == 100
    assert slept == [1.0]
    # Beta's export is not slowed (nor waited for); its pushes are.
    throttles.exported("beta", 1000)
    assert await throttles.export_batch("beta", 1000) == 1000
    assert slept == [1.0]
    assert throttles.refused("beta") is None
    assert throttles.refused("beta") is not None
    # Gamma's both.
    assert await throttles.export_batch("gamma", 1000) == 10
    assert throttles.refused("gamma") is None
    assert throttles.refused("gamma") is not None


async def test_an_export_paced_waits_once_a_batch_and_holds_its_rate_to_the_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    clock = Clock()
    slept = clock.slept
    throttles = throttles_of(path, clock, sleep=clock.sleep)
    write(path, {"alpha": {"export_rows_per_second": 40, **SLOW}})
    await throttles.read()
    pace = throttles.export_pace("alpha")
    started = clock.now
    exported = 0
    # A system with 1,000 rows to export, in batches of at most 250.
    while exported < 1000:
        rows = await pace.batch(250)
        assert 1 <= rows <= 40  # one second's at most
        exported += rows
        pace.exported(rows)
        # Never past its rate, but for the first second's burst.
        assert exported <= 40 + 40 * (clock.now - started)
    # And no slower: every wait is for the batch's rows, and no more.
    assert clock.now - started == pytest.approx((1000 - 40) / 40)
    assert len(slept) == 1000 // 40 - 1
    # A batch that took fewer rows than it might is charged what it took: the next waits
    # for those rows alone.
    assert await pace.batch(250) == 40
    pace.exported(3)
    assert await pace.batch(250) == 40
    assert slept[-2:] == [1.0, pytest.approx(3 / 40)]


async def test_an_export_throttle_changed_or_lifted_during_a_wait_holds_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    clock = Clock()
    throttles: Throttles

    async def sleep(seconds: float) -> None:
        # While alpha's export waits, on-call lifts its throttle; the wait then ends.
        clock.now += seconds / 2
        write(path, {})
        await throttles.read()

    throttles = throttles_of(path, clock, sleep=sleep)
    write(path, {"alpha": {"export_rows_per_second": 1, **SLOW}})
    await throttles.read()
    assert await throttles.export_batch("alpha", 1000) == 1
    throttles.exported("alpha", 1)
    assert await throttles.export_batch("alpha", 1000) == 1000
    assert clock.now == 1000.5


async def test_the_docs_example_is_a_file_every_instance_takes_up_as_it_says(
    tmp_path: Path,
) -> None:
    text = (Path(__file__).parents[2] / "docs" / "cells.md").read_text()
    section = text[text.index("\n## Throttles\n") : text.index("\n## Telemetry\n")]
    (example,) = re.findall(r"```json\n(.*?)```", section, re.S)
    path = tmp_path / "throttles.json"
    path.write_text(example)
    throttles = Throttles(str(path), ["alpha", "beta"])
    await throttles.read()
    assert throttles.problems() == []
    said = throttles.in_force()
    assert said["alpha"].startswith("5 pushes a second an instance, set by")
    assert said["beta"].startswith("its export at 200 rows a second, set by")
    # Alpha's export and beta's pushes are not slowed.
    assert await throttles.export_batch("alpha", 1000) == 1000
    assert all(throttles.refused("beta") is None for _ in range(100))
    throttles.close()


def test_a_pace_admits_its_rate_in_bursts_of_one_seconds() -> None:
    pace = Pace(4.0, now=0.0)
    assert [pace.wait(0.0) for _ in range(5)] == [0.0, 0.0, 0.0, 0.0, 0.25]
    assert pace.wait(0.25) == 0.0
    assert pace.wait(0.25) == 0.25
    # Idle for long: one second's burst, no more.
    assert sum(pace.wait(100.0) == 0.0 for _ in range(10)) == 4
    slow = Pace(0.01, now=0.0)
    assert slow.wait(0.0) == 0.0
    assert slow.wait(0.0) == pytest.approx(100.0)


def test_an_exports_pace_lets_a_batch_begin_once_its_rows_are_due() -> None:
    pace = Pace(2.5, now=0.0)
    # Whole rows of one second's: two, then the wait for the next two and a half.
    assert pace.batch(0.0, 1000) == (2, 0.0)
    pace.spend(2)
    assert pace.batch(0.0, 1000) == (0, pytest.approx(0.8))
    assert pace.batch(0.8, 1000) == (2, 0.0)
    # A batch smaller than a second's waits for its own rows alone.
    pace.spend(2)
    assert pace.batch(0.8, 1) == (0, pytest.approx(0.2))
    # A fast pace lets whole batches go, a second's worth of them at once.
    fast = Pace(5000.0, now=0.0)
    for _ in range(5):
        assert fast.batch(0.0, 1000) == (1000, 0.0)
        fast.spend(1000)
    assert fast.batch(0.0, 1000) == (0, pytest.approx(0.2))
    # A batch begun before the pace (or under a faster one) leaves no debt past a second.
    slow = Pace(1.0, now=0.0)
    slow.spend(1000)
    assert slow.batch(0.0, 1000) == (0, pytest.approx(1.0))


async def test_a_refusal_asks_to_come_back_within_a_minute(tmp_path: Path) -> None:
    path = tmp_path / "throttles.json"
    throttles = throttles_of(path)
    write(path, {"alpha": throttle(0.01), "beta": throttle(2)})
    await throttles.read()
    assert throttles.refused("alpha") is None
    slow = throttles.refused("alpha")
    assert slow is not None
    assert slow.status == 429
    assert slow.headers == {"Retry-After": "60"}
    for _ in range(2):
        assert throttles.refused("beta") is None
    fast = throttles.refused("beta")
    assert fast is not None
    assert fast.headers == {"Retry-After": "1"}
    assert throttles.refused("gamma") is None

"""The exporter service on the Spanner emulator: two instances, three systems, a kill.

Two `recordline exporter` processes export three systems, each with a
database of its own on the emulator and a dataset of its own in the Storage
Write fake. Rows are acknowledged into every system all along (committed to
its database, as a push's 204 says). Midway, the instance holding the most
leases is killed outright (SIGKILL): the other must take each of its systems
over within a lease, and BigQuery must end up with every acknowledged row of
every system exactly once. Then one system's ingest, scaled to zero (no
process at all), is woken by a push: the process starts, answers it 204, and
the surviving exporter puts the row in BigQuery, though no ingest instance
exports anything. And a pool run as Terraform runs it, with the cell's throttles file:
the system whose export on-call slowed is paced, the others are not, and SIGTERM while
it waits stops it in time, nothing doubled. And the exporter's rollback drilled: a bad
release that hangs holding every lease (SIGSTOP), the last good revision started, in
BigQuery within the runbook's time, then the bad one resumed and stopped, nothing doubled.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import StoreUnavailable
from app.records import Record
from app.store.spanner.calls import CALL_SECONDS
from app.store.spanner.ledger import standing_of
from app.store.tiered.exporter import IDLE_MAX_SECONDS, LEASE_SECONDS
from app.store.tiered.store import TieredStore
from recordline_dev.processes import free_port, stop_group
from tests.bigquery.conftest import PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.e2e.conftest import PUSH_TOKEN
from tests.spanner.emulator import SpannerEmulator
from tests.spanner.exporting import tiered_store
from tests.spanner.test_serving import record
from tests.waiting import until

pytestmark = pytest.mark.emulator

SYSTEMS = ("alpha", "beta", "gamma")
# Batches acknowledged into each system before the kill and after it.
BATCHES_BEFORE, BATCHES_AFTER = 6, 6
ROWS_A_BATCH = 20


def dataset(system: str) -> str:
    return f"exp_{system}"


def table(system: str, name: str = "records") -> str:
    return f"projects/{PROJECT}/datasets/{dataset(system)}/tables/{name}"


class ExporterProcess:
    """`recordline exporter` as a real process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "exporter"],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        stop_group(self.process, timeout=15)


def holders(emulator: SpannerEmulator, databases: dict[str, str]) -> dict[str, int | None]:
    """Each system's lease holder's process id, None while nobody holds it."""
    found: dict[str, int | None] = {}
    for system, url in databases.items():
        db = emulator.database_of(url)
        with db.snapshot() as snapshot:
            rows = list(
                snapshot.execute_sql(
                    "SELECT holder FROM export_lease "
                    "WHERE name = 'bigquery' AND expires > CURRENT_TIMESTAMP()"
                )
            )
        found[system] = int(standing_of(rows[0][0])[1].split("/")[-2]) if rows else None
    return found


def in_bigquery(write_fake: FakeBigQueryWrite, system: str) -> Counter[str]:
    return Counter(row["message_id"] for row in write_fake.rows(table(system)))


def systems_setting(databases: dict[str, str]) -> dict[str, dict[str, str]]:
    """The systems an exporter pool exports: each one's database and dataset."""
    return {
        system: {"serving": databases[system], "store": f"bigquery://{PROJECT}/{dataset(system)}"}
        for system in SYSTEMS
    }


def pool_settings(databases: dict[str, str]) -> dict[str, str]:
    """As Terraform runs the exporter pool: the cell's name and its systems."""
    return {
        "RECORDLINE_CELL": "cell-1",
        "RECORDLINE_SYSTEMS": json.dumps(systems_setting(databases)),
    }


def emulated(
    spanner_emulator: SpannerEmulator, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> dict[str, str]:
    """A process's settings for the Spanner emulator and BigQuery's fakes."""
    return {
        "SPANNER_EMULATOR_HOST": spanner_emulator.host,
        "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write_fake.address,
        "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
    }


@pytest.fixture
def databases(spanner_emulator: SpannerEmulator) -> dict[str, str]:
    """Each system's serving database: its RECORDLINE_SERVING."""
    return {system: spanner_emulator.database() for system in SYSTEMS}


@pytest.fixture
async def stores(
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    databases: dict[str, str],
) -> AsyncIterator[dict[str, TieredStore]]:
    """Each system's serving tier, writing only (as its ingest service: no export)."""
    async with contextlib.AsyncExitStack() as stack:
        made = {}
        for system in SYSTEMS:
            store = tiered_store(
                databases[system],
                spanner_emulator.host,
                write_fake,
                jobs_fake.endpoint,
                dataset=dataset(system),
                export=False,
            )
            await store.start()
            stack.push_async_callback(store.close)
            made[system] = store
        yield made


# How often a refused push is delivered again here (Pub/Sub's fewest before a dead letter).
DELIVERY_ATTEMPTS = 5


async def commit(store: TieredStore, rows: list[Record]) -> None:
    """Group-commit `rows` as their pushes would be: one refused (answered 503; the
    emulator aborts a transaction while another is active, and the client's runs of it
    again within the write's deadline may all meet another) is delivered again after a
    backoff, as Pub/Sub's retry policy delivers it: 0.5 s, then twice as long each time
    (a run of the whole suite on two cores saw five refusals in a row at once)."""
    for attempt in range(1, DELIVERY_ATTEMPTS + 1):
        try:
            await store.append(rows)
            return
        except StoreUnavailable:
            if attempt == DELIVERY_ATTEMPTS:
                raise
            await asyncio.sleep(0.5 * 2 ** (attempt - 1))


async def acknowledge(
    stores: dict[str, TieredStore], batches: int, acknowledged: dict[str, set[str]], label: str
) -> None:
    """`batches` group commits into every system, each acknowledged once committed."""
    for batch in range(batches):
        for system, store in stores.items():
            ids = [f"{system}-{label}-{batch}-{i}" for i in range(ROWS_A_BATCH)]
            await commit(store, [record(message_id) for message_id in ids])
            acknowledged[system].update(ids)
        await asyncio.sleep(0.2)  # pushes keep arriving: a pause between group commits


def push_envelope(message_id: str) -> dict[str, Any]:
    data = json.dumps({"id": message_id, "data": {"woken": True}}).encode()
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "messageId": message_id,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "attributes": {},
        },
        "subscription": f"projects/{PROJECT}/subscriptions/alpha-push",
    }


async def push_from_cold(env: dict[str, str], log: Path, message_id: str) -> tuple[Any, float]:
    """Start `recordline serve` (nothing runs: an ingest scaled to zero) and push to it
    at once, as Cloud Run holds a request until the instance it starts listens: the
    process, and the seconds from its start to the push's answer."""
    port = free_port()
    started = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env={**os.environ, **env, "RECORDLINE_PUSH_TOKEN": PUSH_TOKEN},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/pubsub/push?token={PUSH_TOKEN}"
    async with httpx.AsyncClient(timeout=30) as client:

        async def delivered() -> httpx.Response | None:
            # Not listening yet (Cloud Run holds the request), or starting (a 503:
            # Pub/Sub delivers it again): delivered again until answered otherwise.
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                answer = await client.post(url, json=push_envelope(message_id))
            except httpx.TransportError:
                return None
            return None if answer.status_code == 503 else answer

        answer = await until(delivered, timeout=60, interval=0.02, what="the push delivered")
        assert answer.status_code == 204, answer.text
        return process, time.monotonic() - started


async def test_two_exporters_three_systems_one_killed_and_an_ingest_woken_from_zero(
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    stores: dict[str, TieredStore],
    databases: dict[str, str],
    tmp_path: Path,
) -> None:
    environment = {
        **emulated(spanner_emulator, write_fake, jobs_fake),
        "RECORDLINE_LOG_FORMAT": "json",
    }
    systems = systems_setting(databases)
    exporter_env = {**environment, **pool_settings(databases)}
    acknowledged: dict[str, set[str]] = {system: set() for system in SYSTEMS}
    exporters = [ExporterProcess(exporter_env, tmp_path / f"exporter-{n}.log") for n in (1, 2)]
    woken: subprocess.Popen[bytes] | None = None
    try:
        await acknowledge(stores, BATCHES_BEFORE, acknowledged, "before")

        # Every system exported by one instance or the other, each under its lease.
        async def exporting() -> dict[str, int] | None:
            held = await asyncio.to_thread(holders, spanner_emulator, databases)
            if any(pid is None for pid in held.values()):
                return None
            if not all(in_bigquery(write_fake, system) for system in SYSTEMS):
                return None
            return {system: pid for system, pid in held.items() if pid is not None}

        held = await until(exporting, timeout=60, interval=0.2, what="every system exported")
        assert set(held.values()) <= {e.pid for e in exporters}

        # Mid-export, rows still arriving: the instance holding the most leases killed.
        busiest = Counter(held.values()).most_common(1)[0][0]
        (killed,) = [e for e in exporters if e.pid == busiest]
        (survivor,) = [e for e in exporters if e is not killed]
        orphaned = {system for system, pid in held.items() if pid == busiest}
        writing = asyncio.create_task(acknowledge(stores, BATCHES_AFTER, acknowledged, "after"))
        await until(
            lambda: any("-after-" in m for ids in acknowledged.values() for m in ids),
            what="a row acknowledged after the export began",
        )
        killed.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(killed.process.wait, 10)

        taken: dict[str, float] = {}

        async def taken_over() -> bool:
            now = await asyncio.to_thread(holders, spanner_emulator, databases)
            for system in orphaned:
                if now[system] == survivor.pid and system not in taken:
                    taken[system] = time.monotonic() - killed_at
            return taken.keys() == orphaned

        await until(taken_over, timeout=3 * LEASE_SECONDS, interval=0.1, what="the takeover")
        print(f"\ntaken over after the kill (s): {taken}")
        # Within a lease of the kill, and a claim: the survivor claims each lease
        # again as it expires, a lease after the killed instance's last renewal. The
        # claim is a transaction, which the emulator aborts while another is active
        # and the client runs again 2 s later, then 4 s (the emulator names no delay,
        # where Spanner names one), within the call's deadline: 19.7 s was seen.
        assert max(taken.values()) < LEASE_SECONDS + CALL_SECONDS, taken
        await writing

        # One system's ingest, scaled to zero: woken by a push, answered 204 from cold.
        woken, took = await push_from_cold(
            {
                **environment,
                "RECORDLINE_STORE": systems["alpha"]["store"],
                "RECORDLINE_SERVING": databases["alpha"],
            },
            tmp_path / "ingest-alpha.log",
            "woken-1",
        )
        print(f"process start to the first push's 204: {took:.2f} s")
        acknowledged["alpha"].add("woken-1")

        # Every acknowledged row of every system in BigQuery, exactly once.
        def complete() -> bool:
            return all(
                in_bigquery(write_fake, system).keys() >= acknowledged[system] for system in SYSTEMS
            )

        await until(complete, timeout=60, interval=0.2, what="BigQuery to hold every row")
        for system in SYSTEMS:
            copies = in_bigquery(write_fake, system)
            assert copies.keys() == acknowledged[system], system
            assert set(copies.values()) == {1}, system
        # The ingest instance exported nothing: the survivor holds every lease.
        assert set((await asyncio.to_thread(holders, spanner_emulator, databases)).values()) == {
            survivor.pid
        }
    finally:
        # Off the loop: the Storage Write fake, on it, answers them as they stop.
        if woken is not None:
            await asyncio.to_thread(stop_group, woken, timeout=15)
        await asyncio.gather(*(asyncio.to_thread(e.close) for e in exporters))
    # Each kept its process's lines about a system under that system's label.
    lines = [json.loads(line) for line in survivor.log.read_text().splitlines() if line[:1] == "{"]
    labelled = {line.get("logging.googleapis.com/labels", {}).get("system") for line in lines}
    assert set(SYSTEMS) <= labelled, labelled
    # Stopped by SIGTERM, the survivor handed every lease back.
    assert all(pid is None for pid in holders(spanner_emulator, databases).values())
    assert survivor.process.returncode == 0


async def test_an_export_on_call_slowed_is_paced_and_stops_in_time_at_sigterm(
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    stores: dict[str, TieredStore],
    databases: dict[str, str],
    tmp_path: Path,
) -> None:
    throttles = tmp_path / "throttles.json"
    slow = {"by": "oncall@example.com", "reason": "alpha's export holds the instance at 90% CPU"}
    throttles.write_text(
        json.dumps(
            {
                "alpha": {"export_rows_per_second": 1, **slow},
                # Beta's cannot be used (under a row a second): said, and beta not slowed.
                "beta": {"export_rows_per_second": 0, **slow},
            }
        )
    )
    # As Terraform runs the pool: a cell's systems, and its throttles' file.
    environment = {
        **emulated(spanner_emulator, write_fake, jobs_fake),
        **pool_settings(databases),
        "RECORDLINE_LOG_FORMAT": "json",
        "RECORDLINE_THROTTLES": str(throttles),
    }
    acknowledged: dict[str, set[str]] = {system: set() for system in SYSTEMS}
    await acknowledge(stores, 1, acknowledged, "before")
    pool = ExporterProcess(environment, tmp_path / "exporter.log")
    try:
        await until(
            lambda: all(
                in_bigquery(write_fake, s).keys() == acknowledged[s] for s in ("beta", "gamma")
            ),
            timeout=60,
            interval=0.1,
            what="beta's and gamma's rows exported",
        )
        first = await until(
            lambda: sum(in_bigquery(write_fake, "alpha").values()), interval=0.05, what="alpha's"
        )
        since = time.monotonic()
        later = await until(
            lambda: (n := sum(in_bigquery(write_fake, "alpha").values())) >= first + 3 and n,
            timeout=30,
            interval=0.05,
            what="three more of alpha's rows",
        )
        took = time.monotonic() - since
        # A row a second, and a second's burst (one row) at most besides.
        assert later - first <= 1 + took, (later, first, took)
        stopped = time.monotonic()
        pool.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(pool.process.wait, 15)
        exited = time.monotonic() - stopped
        print(f"\nalpha: {later - first} rows in {took:.2f} s; SIGTERM to exit: {exited:.2f} s")
        # Cloud Run kills at 10 s; a paced export's wait is a second at most.
        assert exited < 10
        assert code == 0, pool.log.read_text()[-3000:]
    finally:
        await asyncio.to_thread(pool.close)
    held = in_bigquery(write_fake, "alpha")
    assert 0 < len(held) < len(acknowledged["alpha"])
    assert set(held.values()) == {1}
    assert all(pid is None for pid in holders(spanner_emulator, databases).values())
    said = pool.log.read_text()
    assert "system alpha throttled: its export at 1 rows a second" in said
    assert "the throttle of 'beta' cannot be used" in said


# The pool's revisions as Cloud Run names them (NAME-GENERATION-SUFFIX): the last good one,
# and the bad release deployed after it, which the lease ranks higher.
GOOD, BAD = "recordline-exporter-00002-w2p", "recordline-exporter-00003-b4d"


# A pause that lands inside one of the exporter's transactions leaves it open in the
# emulator, which runs one transaction at a time and, unlike Spanner (which aborts a
# transaction idle for 10 s), refuses every other until it ends: the pushes meanwhile
# are refused past their redeliveries. Seen once in a run of the whole suite; run again.
@pytest.mark.flaky(reruns=1)
async def test_a_hung_release_rolled_back_exports_every_row_once_within_the_runbooks_time(
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    stores: dict[str, TieredStore],
    databases: dict[str, str],
    tmp_path: Path,
) -> None:
    environment = {
        **emulated(spanner_emulator, write_fake, jobs_fake),
        **pool_settings(databases),
    }
    acknowledged: dict[str, set[str]] = {system: set() for system in SYSTEMS}

    def exported() -> bool:
        return all(in_bigquery(write_fake, s).keys() >= acknowledged[s] for s in SYSTEMS)

    async def holding() -> set[int | None]:
        return set((await asyncio.to_thread(holders, spanner_emulator, databases)).values())

    bad = ExporterProcess({**environment, "CLOUD_RUN_REVISION": BAD}, tmp_path / "bad.log")
    good: ExporterProcess | None = None
    try:
        await acknowledge(stores, 2, acknowledged, "before")
        await until(exported, timeout=60, interval=0.2, what="the bad release exporting")
        # It hangs, every lease held (paused, as Jepsen pauses a process): rows acknowledged
        # meanwhile wait in Spanner.
        bad.process.send_signal(signal.SIGSTOP)
        assert await holding() == {bad.pid}  # read at once: its leases run out in time
        await acknowledge(stores, 3, acknowledged, "hung")
        assert not exported()

        # The traffic shift starts the last good revision's instance: every system taken
        # over once the hung one's leases run out, and its rows exported.
        shifted = time.monotonic()
        good = ExporterProcess({**environment, "CLOUD_RUN_REVISION": GOOD}, tmp_path / "good.log")
        await until(exported, timeout=3 * LEASE_SECONDS, interval=0.1, what="the export back")
        took = time.monotonic() - shifted
        print(f"\nthe old revision's start to every row in BigQuery: {took:.2f} s")
        # docs/operations.md#rolling-the-exporter-back (tests/infra/test_runbook.py).
        assert took <= LEASE_SECONDS + IDLE_MAX_SECONDS
        assert await holding() == {good.pid}

        # Resumed, as Cloud Run lets an old instance finish before stopping it: the newer
        # deploy, it takes leases back (the lease ranks it higher), and SIGTERM hands them
        # back. Rows acknowledged all along.
        bad.process.send_signal(signal.SIGCONT)
        writing = asyncio.create_task(acknowledge(stores, 3, acknowledged, "resumed"))

        async def retaken() -> bool:
            return bad.pid in await holding()

        await until(retaken, timeout=LEASE_SECONDS, interval=0.1, what="a lease taken back")
        bad.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(bad.process.wait, 10) == 0, bad.log.read_text()[-3000:]
        await writing
        await acknowledge(stores, 2, acknowledged, "after")
        await until(exported, timeout=60, interval=0.2, what="every row in BigQuery")
        assert await holding() == {good.pid}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(bad.pid, signal.SIGCONT)  # stopped, it acts on no SIGTERM
        await asyncio.gather(*(asyncio.to_thread(e.close) for e in (bad, good) if e))
    for system in SYSTEMS:
        copies = in_bigquery(write_fake, system)
        assert copies.keys() == acknowledged[system], system
        assert set(copies.values()) == {1}, system

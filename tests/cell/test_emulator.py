"""A cell on the Spanner emulator and the BigQuery fakes: one ingest service serving
three systems, each with a database and a dataset of its own, and an exporter pool.

Every acknowledged push of each system ends up in its own database and its own
BigQuery table, exactly once; a token of one system is refused for another. Two
exporter instances share the three leases; the one holding more is killed
(SIGKILL), the other takes its systems over; a third starts, and the leases are
shared again, the survivor handing one over, with no row exported twice. Then one
system's database is dropped: its pushes are answered 503 while the other two are
stored and exported on.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.cell.app import create_cell
from app.settings import Settings
from tests.auth.fake_google import FakeGoogle
from tests.bigquery.conftest import PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.conftest import envelope, served
from tests.e2e.test_exporter_service import ExporterProcess, holders
from tests.spanner.emulator import SpannerEmulator
from tests.waiting import until

pytestmark = pytest.mark.emulator

SYSTEMS = ("alpha", "beta", "gamma")
CELL_URL = "https://cell-1.example"
# Pushes to each system at each step, one at a time.
PUSHES = 5
# How often a refused push is delivered again here (Pub/Sub's fewest before a dead letter).
DELIVERIES = 5


def dataset(system: str) -> str:
    return f"cell_{system}"


def audience(system: str) -> str:
    return f"{CELL_URL}/systems/{system}/pubsub/push"


def pusher(system: str) -> str:
    return f"push-{system}@cell-1.iam.gserviceaccount.com"


class Pushes:
    """Pushes to the cell, each system with its own token; what each acknowledged."""

    def __init__(self, client: httpx.AsyncClient, google: FakeGoogle) -> None:
        self.client = client
        self.tokens = {s: google.mint(aud=audience(s), email=pusher(s)) for s in SYSTEMS}
        self.acknowledged: dict[str, set[str]] = {s: set() for s in SYSTEMS}

    async def push(self, system: str, message_id: str, *, token: str | None = None) -> int:
        """Push as Pub/Sub does: delivered again while refused with 503 (the emulator
        aborts a transaction while another is active), up to DELIVERIES times."""
        headers = {"Authorization": f"Bearer {token or self.tokens[system]}"}
        body = envelope({"id": message_id, "data": system}, message_id=message_id)
        for _ in range(DELIVERIES):
            answer = await self.client.post(
                f"/systems/{system}/pubsub/push", json=body, headers=headers
            )
            if answer.status_code != 503:
                break
        if answer.status_code == 204:
            self.acknowledged[system].add(message_id)
        return answer.status_code

    async def round(self, label: str, systems: tuple[str, ...] = SYSTEMS) -> None:
        for n in range(PUSHES):
            for system in systems:
                assert await self.push(system, f"{system}-{label}-{n}") == 204


def in_bigquery(write_fake: FakeBigQueryWrite, system: str) -> Counter[str]:
    table = f"projects/{PROJECT}/datasets/{dataset(system)}/tables/records"
    return Counter(row["message_id"] for row in write_fake.rows(table))


def exported(write_fake: FakeBigQueryWrite, pushes: Pushes, systems: tuple[str, ...]) -> bool:
    return all(in_bigquery(write_fake, s).keys() >= pushes.acknowledged[s] for s in systems)


@pytest.fixture
async def google() -> AsyncIterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


async def test_a_cell_and_its_exporter_pool_on_the_emulator(
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    google: FakeGoogle,
    tmp_path: Path,
) -> None:
    databases = {system: spanner_emulator.database() for system in SYSTEMS}
    systems = {
        system: {
            "store": f"bigquery://{PROJECT}/{dataset(system)}",
            "serving": databases[system],
            "push_audience": audience(system),
            "push_service_accounts": pusher(system),
        }
        for system in SYSTEMS
    }
    environment = {
        "RECORDLINE_CELL": "cell-1",
        "RECORDLINE_SYSTEMS": json.dumps(systems),
        "SPANNER_EMULATOR_HOST": spanner_emulator.host,
        "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write_fake.address,
        "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
        "RECORDLINE_LOG_FORMAT": "json",
    }
    cell = create_cell(
        Settings.load({**environment, "RECORDLINE_OIDC_CERTS_URL": google.certs_url})
    )
    exporters = [ExporterProcess(environment, tmp_path / f"exporter-{n}.log") for n in (1, 2)]
    try:
        async with served(cell) as client:  # type: ignore[arg-type]
            pushes = Pushes(client, google)
            await pushes.round("first")
            # Alpha's token at beta's path: refused by beta's guard, nothing stored.
            crossed = await pushes.push("beta", "crossed", token=pushes.tokens["alpha"])
            assert crossed in (401, 403)

            # The two instances share the three leases (2 and 1), and export each
            # system's rows into its own dataset.
            pids = {e.pid for e in exporters}

            async def shared() -> dict[str, int] | None:
                held = await asyncio.to_thread(holders, spanner_emulator, databases)
                counts = Counter(held.values())
                if set(counts) != pids or not exported(write_fake, pushes, SYSTEMS):
                    return None
                return {system: pid for system, pid in held.items() if pid is not None}

            held = await until(shared, timeout=45, interval=0.2, what="the leases shared")
            assert sorted(Counter(held.values()).values()) == [1, 2]

            # The instance holding two is killed outright: the other takes them over.
            busiest = Counter(held.values()).most_common(1)[0][0]
            (killed,) = [e for e in exporters if e.pid == busiest]
            (survivor,) = [e for e in exporters if e is not killed]
            killed.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(killed.process.wait, 10)
            killed_at = time.monotonic()
            writing = asyncio.ensure_future(pushes.round("after-kill"))

            async def taken_over() -> bool:
                held = await asyncio.to_thread(holders, spanner_emulator, databases)
                return set(held.values()) == {survivor.pid}

            await until(taken_over, timeout=40, interval=0.2, what="the survivor's takeover")
            print(f"\ntaken over {time.monotonic() - killed_at:.1f} s after the kill")
            await writing

            # A third instance starts: the survivor hands it one lease.
            third = ExporterProcess(environment, tmp_path / "exporter-3.log")
            exporters.append(third)
            started = time.monotonic()
            writing = asyncio.ensure_future(pushes.round("rebalancing"))

            async def rebalanced() -> bool:
                held = await asyncio.to_thread(holders, spanner_emulator, databases)
                counts = Counter(held.values())
                return set(counts) == {survivor.pid, third.pid}

            await until(rebalanced, timeout=40, interval=0.2, what="the leases shared again")
            print(f"shared again {time.monotonic() - started:.1f} s after the third started")
            await writing
            held = await asyncio.to_thread(holders, spanner_emulator, databases)
            assert sorted(Counter(held.values()).values()) == [1, 2]
            await until(
                lambda: exported(write_fake, pushes, SYSTEMS),
                timeout=30,
                interval=0.2,
                what="every row exported",
            )

            # Alpha's database is gone: its pushes are answered 503 (to be delivered
            # again), while beta's and gamma's are stored and exported on.
            await asyncio.to_thread(spanner_emulator.database_of(databases["alpha"]).drop)
            assert await pushes.push("alpha", "alpha-gone") == 503
            await pushes.round("alpha-gone", ("beta", "gamma"))
            await until(
                lambda: exported(write_fake, pushes, ("beta", "gamma")),
                timeout=30,
                interval=0.2,
                what="beta and gamma exported on",
            )
            ready = (await client.get("/readyz")).json()
            assert set(ready["not_ready"]) == {"alpha"}
    finally:
        await asyncio.gather(*(asyncio.to_thread(e.close) for e in exporters))

    # Every acknowledged row of each system in its own table, exactly once.
    for system in SYSTEMS:
        copies = in_bigquery(write_fake, system)
        assert copies.keys() == pushes.acknowledged[system], system
        assert set(copies.values()) == {1}, system
    assert "crossed" not in in_bigquery(write_fake, "beta")

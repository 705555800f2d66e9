"""The serving tier end to end: two instances, the Pub/Sub and Spanner emulators, faults.

Two `recordline serve` processes share one Spanner database (the emulator)
and one BigQuery (the fakes, in a process of their own). The topic has two
push subscriptions, one to each instance, so every message is delivered to
both, concurrently: each instance takes the other's redeliveries. A follower
reads with no pause, its pages going to one instance and the other in turn
(a load balancer without affinity): it must meet every message exactly once,
and no page may say less than the one before it (`complete_until`, the
cursor). Meanwhile the exporter feeds BigQuery through the Storage Write
fake, which refuses some appends and loses the answer to others after storing
them, and the instance holding the export lease is killed outright halfway
and restarted. BigQuery must end up holding every message exactly once
(counted per message id), each at Spanner's commit time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from app.records import micros
from recordline_dev.devstack import Emulator, PubSubAdmin
from recordline_dev.processes import free_port
from recordline_dev.serving import BigQueryStandIn
from tests.bigquery.conftest import DATASET, PROJECT
from tests.e2e.conftest import PUSH_TOKEN, ServiceProcess, payloads, publish_all
from tests.spanner.emulator import SpannerEmulator
from tests.waiting import until

pytestmark = pytest.mark.emulator

MESSAGES = 2_000


@contextlib.contextmanager
def bigquery_fakes(log: Path) -> Iterator[tuple[str, str]]:
    """The BigQuery fakes in a process the instances share: (write address, jobs endpoint)."""
    # Every 25th append to records refused, every 40th stored with its answer
    # lost; 10 ms a round trip.
    faults = ("--refuse-every", "25", "--lose-every", "40", "--latency-ms", "10")
    with BigQueryStandIn(PROJECT, DATASET, log_path=log, extra=faults) as fakes:
        assert fakes.jobs.startswith("http://"), fakes.jobs
        yield fakes.write, fakes.jobs


def held_by_bigquery(jobs: str) -> dict[str, tuple[int, int]]:
    """Message id -> (copies, ingest time) in BigQuery's records table."""
    client = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": jobs},
    )
    rows = client.query_and_wait(
        f"SELECT message_id, COUNT(*) AS copies, UNIX_MICROS(MIN(ingest_time)) AS at "
        f"FROM `{PROJECT}.{DATASET}.records` GROUP BY message_id"
    )
    return {row["message_id"]: (row["copies"], row["at"]) for row in rows}


def lease_holder_pid(spanner_emulator: SpannerEmulator, database: str) -> int | None:
    """The process id of the exporter holding the lease (its name ends in pid/nonce)."""
    db = spanner_emulator.database_of(database)
    with db.snapshot() as snapshot:
        rows = list(snapshot.execute_sql("SELECT holder FROM export_lease"))
    return int(rows[0][0].split("/")[-2]) if rows else None


class AlternatingFollower:
    """A follower whose pages go to each instance in turn, with no pause between them."""

    def __init__(self, *clients: httpx.AsyncClient) -> None:
        self.clients = clients
        self.seen: Counter[str] = Counter()
        self.ingest_times: dict[str, int] = {}
        self.order: list[str] = []
        self.pages = 0
        self.regressions: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AlternatingFollower:
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _follow(self) -> None:
        token: str | None = None
        complete = datetime.min.replace(tzinfo=None)
        cursor_time = 0
        while True:
            client = self.clients[self.pages % len(self.clients)]
            self.pages += 1
            params: dict[str, Any] = {"limit": 200}
            if token is not None:
                params["page_token"] = token
            try:
                answer = await client.get("/v1/records", params=params)
            except httpx.TransportError:
                await asyncio.sleep(0.05)  # an instance restarting: the other answers next
                continue
            if answer.status_code != 200:
                await asyncio.sleep(0.05)  # a client's pause before asking again
                continue
            page = answer.json()
            until = datetime.fromisoformat(page["complete_until"]).replace(tzinfo=None)
            if until < complete:
                self.regressions.append(f"complete_until {until} after {complete}")
            complete = max(complete, until)
            for record in page["records"]:
                self.seen[record["message_id"]] += 1
                ingested = micros(datetime.fromisoformat(record["ingest_time"]))
                if ingested < cursor_time:
                    self.regressions.append(f"{record['message_id']} behind the cursor")
                cursor_time = max(cursor_time, ingested)
                self.ingest_times[record["message_id"]] = ingested
                self.order.append(record["message_id"])
            token = page["next_page_token"]

    def _seen_all(self, ids: set[str]) -> bool:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # the follower failed: say how
        return ids <= self.seen.keys()

    async def wait_for(self, ids: set[str], *, timeout: float) -> None:
        await until(
            lambda: self._seen_all(ids),
            timeout=timeout,
            what=lambda: f"{len(ids - self.seen.keys())} of {len(ids)} to become visible",
        )

    async def wait_count(self, count: int, *, timeout: float) -> None:
        await until(
            lambda: len(self.seen) >= count,
            timeout=timeout,
            what=lambda: f"{count} visible (have {len(self.seen)})",
        )


async def test_two_instances_a_follower_between_them_and_an_exporter_killed_halfway(
    emulator: Emulator, publisher: Any, spanner_emulator: SpannerEmulator, tmp_path: Path
) -> None:
    database = spanner_emulator.database()
    with bigquery_fakes(tmp_path / "bigquery.log") as (write, jobs):
        environment = {
            "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
            "RECORDLINE_SERVING": database,
            "SPANNER_EMULATOR_HOST": spanner_emulator.host,
            # Each instance exports too (the exporter service runs apart in the cloud:
            # tests/e2e/test_exporter_service.py); the lease is the same.
            "RECORDLINE_EXPORT_IN_SERVICE": "true",
            "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write,
            "BIGQUERY_EMULATOR_HOST": jobs,
            "RECORDLINE_WRITE_DEADLINE_SECONDS": "5",
        }
        services = [
            ServiceProcess(
                port=free_port(), store="", log=tmp_path / f"{name}.log", env=environment
            )
            for name in ("one", "two")
        ]
        try:
            for service in services:
                service.start()
            topic = f"serving-{uuid.uuid4().hex[:12]}"
            async with PubSubAdmin(emulator.host) as admin:
                await admin.create_topic(topic)
                for service, name in zip(services, ("one", "two"), strict=True):
                    await admin.create_push_subscription(
                        f"{topic}-{name}",
                        topic=topic,
                        endpoint=f"{service.url}/pubsub/push?token={PUSH_TOKEN}",
                        ack_deadline_seconds=10,
                    )
                data = payloads(topic, MESSAGES)
                async with (
                    httpx.AsyncClient(base_url=services[0].url, timeout=30) as first,
                    httpx.AsyncClient(base_url=services[1].url, timeout=30) as second,
                    AlternatingFollower(first, second) as follower,
                ):
                    publishing = asyncio.create_task(
                        publish_all(publisher, admin.topic_path(topic), data, rate=500)
                    )
                    # Halfway: the instance holding the export lease killed outright,
                    # whatever it was doing, and started again.
                    await follower.wait_count(MESSAGES // 2, timeout=120)
                    holder = await asyncio.to_thread(lease_holder_pid, spanner_emulator, database)
                    (killed,) = [s for s in services if s.process and s.process.pid == holder]
                    killed.signal(signal.SIGKILL)
                    killed.process.wait(10)  # type: ignore[union-attr]
                    killed.start()
                    message_ids = await publishing
                    await follower.wait_for(set(message_ids), timeout=180)
                    pages_then = follower.pages
                    # Anything read twice shows within 20 more pages.
                    await until(lambda: follower.pages >= pages_then + 20, what="20 more pages")
                    assert not follower.regressions, follower.regressions[:5]
                    assert follower.seen.keys() == set(message_ids)
                    repeated = {m: n for m, n in follower.seen.items() if n != 1}
                    assert not repeated, f"read more than once: {list(repeated.items())[:5]}"
                    times = [follower.ingest_times[m] for m in follower.order]
                    assert times == sorted(times)
                for name in ("one", "two"):
                    await admin.delete_subscription(f"{topic}-{name}")
                await admin.delete_topic(topic)

            # BigQuery: every message once, at Spanner's commit time, whatever failed
            # and whoever exported (the lease passed on after the kill).
            async def exported() -> dict[str, tuple[int, int]] | None:
                held = await asyncio.to_thread(held_by_bigquery, jobs)
                return held if len(held) >= MESSAGES else None

            held = await until(
                exported, timeout=120, interval=0.5, what="BigQuery to hold every message"
            )
            assert held.keys() == set(message_ids)
            doubled = {m: copies for m, (copies, _) in held.items() if copies != 1}
            assert not doubled, f"in BigQuery more than once: {list(doubled.items())[:5]}"
            for message_id, (_, at) in held.items():
                assert at == follower.ingest_times[message_id], message_id
        finally:
            for service in services:
                service.close()

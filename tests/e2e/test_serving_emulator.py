"""The serving tier end to end: two instances, the Pub/Sub and Spanner emulators, faults.

Two `recordline serve` processes share one Spanner database (the emulator)
and one BigQuery (the fakes, in a process of their own). The topic has two
push subscriptions, one to each instance, so every message is written by both,
concurrently: the duplicates a redelivery makes, at full rate. BigQuery
refuses some appends after Spanner committed (the push is answered 503 and
delivered again) and loses the answer to others after storing them (the
writer resends), and one instance is killed outright halfway and restarted.
Then a follower must read every message exactly once, in order, and BigQuery
must hold every one, each copy stamped with Spanner's commit time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from recordline_dev.devstack import Emulator, PubSubAdmin, free_port
from recordline_dev.serving import BigQueryStandIn
from tests.bigquery.conftest import DATASET, PROJECT
from tests.e2e.conftest import PUSH_TOKEN, Follower, ServiceProcess, payloads, publish_all
from tests.spanner.emulator import SpannerEmulator

pytestmark = pytest.mark.emulator

MESSAGES = 2_000


@contextlib.contextmanager
def bigquery_fakes(log: Path) -> Iterator[tuple[str, str]]:
    """The BigQuery fakes in a process the instances share: (write address, jobs endpoint)."""
    # Every 25th append to records refused after Spanner committed it, every
    # 40th stored with its answer lost; 10 ms a round trip.
    faults = ("--refuse-every", "25", "--lose-every", "40", "--latency-ms", "10")
    with BigQueryStandIn(PROJECT, DATASET, log_path=log, extra=faults) as fakes:
        assert fakes.jobs.startswith("http://"), fakes.jobs
        yield fakes.write, fakes.jobs


def held_by_bigquery(jobs: str) -> dict[str, tuple[int, int]]:
    """Message id -> (earliest, latest) ingest time of its copies in BigQuery."""
    client = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": jobs},
    )
    rows = client.query_and_wait(
        f"SELECT message_id, UNIX_MICROS(MIN(ingest_time)) AS first, "
        f"UNIX_MICROS(MAX(ingest_time)) AS last FROM `{PROJECT}.{DATASET}.records` "
        "GROUP BY message_id"
    )
    return {row["message_id"]: (row["first"], row["last"]) for row in rows}


async def test_two_instances_and_every_fault_between_the_stores_lose_and_repeat_nothing(
    emulator: Emulator, publisher: Any, spanner_emulator: SpannerEmulator, tmp_path: Path
) -> None:
    database = spanner_emulator.database()
    with bigquery_fakes(tmp_path / "bigquery.log") as (write, jobs):
        environment = {
            "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
            "RECORDLINE_SERVING": database,
            "SPANNER_EMULATOR_HOST": spanner_emulator.host,
            "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write,
            "BIGQUERY_EMULATOR_HOST": jobs,
            "RECORDLINE_WRITE_DEADLINE_SECONDS": "5",
        }
        one, two = (
            ServiceProcess(
                port=free_port(), store="", log=tmp_path / f"{name}.log", env=environment
            )
            for name in ("one", "two")
        )
        try:
            one.start()
            two.start()
            topic = f"serving-{uuid.uuid4().hex[:12]}"
            async with PubSubAdmin(emulator.host) as admin:
                await admin.create_topic(topic)
                for service, name in ((one, "one"), (two, "two")):
                    await admin.create_push_subscription(
                        f"{topic}-{name}",
                        topic=topic,
                        endpoint=f"{service.url}/pubsub/push?token={PUSH_TOKEN}",
                        ack_deadline_seconds=10,
                    )
                data = payloads(topic, MESSAGES)
                async with (
                    httpx.AsyncClient(base_url=one.url, timeout=30) as http,
                    Follower(http) as follower,
                ):
                    publishing = asyncio.create_task(
                        publish_all(publisher, admin.topic_path(topic), data, rate=500)
                    )
                    # Halfway: one instance killed outright, whatever it was
                    # doing between Spanner's commit and BigQuery's append.
                    await follower.wait_count(MESSAGES // 2, timeout=120)
                    two.signal(signal.SIGKILL)
                    two.process.wait(10)  # type: ignore[union-attr]
                    await asyncio.sleep(1)
                    two.start()
                    message_ids = await publishing
                    ids = {f"{topic}-{n}" for n in range(MESSAGES)}
                    await follower.wait_for(ids, timeout=180)
                    await asyncio.sleep(1)  # anything that would show twice does so by now
                    follower.assert_exactly_once(ids)
                    # In key order, as the follower met them.
                    times = [follower.ingest_times[m] for m in follower.order]
                    assert times == sorted(times)
                # BigQuery holds every message, every copy at Spanner's commit
                # time. A message whose copies Spanner took and BigQuery did not
                # (refused, or lost with the killed instance) is still
                # unacknowledged, so Pub/Sub delivers it again: the
                # subscriptions stay until BigQuery holds everything.
                deadline = time.monotonic() + 120
                while (held := await asyncio.to_thread(held_by_bigquery, jobs)).keys() != set(
                    message_ids
                ):
                    assert time.monotonic() < deadline, (
                        f"BigQuery misses {len(set(message_ids) - held.keys())} messages"
                    )
                    await asyncio.sleep(0.5)
                for name in ("one", "two"):
                    await admin.delete_subscription(f"{topic}-{name}")
                await admin.delete_topic(topic)
            for message_id, (first, last) in held.items():
                assert first == last == follower.ingest_times[message_id], message_id
        finally:
            one.close()
            two.close()

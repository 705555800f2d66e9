"""Topics with an Avro schema, through the Pub/Sub emulator, end to end.

The emulator keeps Avro schemas and their revisions, refuses a publish that
does not fit the topic's schema, and delivers each message with the schema,
revision and encoding attributes; the service fetches the revision from the
emulator's Schema API (PUBSUB_EMULATOR_HOST) and decodes with it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import grpc
import httpx
import pytest
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.schema_service import SchemaServiceClient
from google.pubsub_v1.services.schema_service.transports import SchemaServiceGrpcTransport
from google.pubsub_v1.types import Encoding, Schema

from app.asgi import create_app, fetching_schemas, store_revisions
from app.store.duckdb.store import DuckDBStore
from recordline_dev.client import (
    DEV_PROJECT,
    EXAMPLE_SCHEMAS,
    add_publish_arguments,
    publish_command,
)
from recordline_dev.devstack import Emulator
from recordline_dev.processes import free_port
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.test_bigquery_typed import RECORDS, RECORDS_JSON, TABLE, query
from tests.conftest import served, settings
from tests.e2e.conftest import (
    PUSH_TOKEN,
    Follower,
    RecordingStore,
    ServiceProcess,
    Wiring,
    publish_all,
)
from tests.fake_schema_api import FakeSchemaApi
from tests.spanner.emulator import SpannerEmulator
from tests.spanner.exporting import tiered_store
from tests.typed.bombs import avro_bomb
from tests.waiting import until

pytestmark = pytest.mark.emulator

ORDER_V1 = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "order_id", "type": "string"},
        {
            "name": "meta",
            "type": {
                "type": "record",
                "name": "Meta",
                "fields": [
                    {
                        "name": "created_at",
                        "type": {"type": "long", "logicalType": "timestamp-millis"},
                    }
                ],
            },
        },
        {"name": "amount", "type": "double"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
# The next revision adds a field with a default, as schema evolution does.
ORDER_V2 = {
    **ORDER_V1,
    "fields": [*ORDER_V1["fields"], {"name": "currency", "type": "string", "default": "EUR"}],
}
MAPPING = {"RECORDLINE_ID_FIELD": "order_id", "RECORDLINE_TIME_FIELD": "meta.created_at"}
BASE = datetime(2024, 4, 27, 12, 0, tzinfo=UTC)


def order(n: int, prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "order_id": f"{prefix}-{n}",
        "meta": {"created_at": BASE + timedelta(milliseconds=n)},
        "amount": n + 0.5,
        "note": None if n % 2 else f"note {n}",
        **extra,
    }


def encoded(value: dict[str, Any], schema: dict[str, Any], encoding: str) -> bytes:
    parsed = fastavro.parse_schema(schema)
    if encoding == "BINARY":
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, value)
        return out.getvalue()
    text = io.StringIO()  # Avro's JSON encoding: unions wrapped, as Pub/Sub wants
    fastavro.json_writer(text, parsed, [value])
    return text.getvalue().strip().encode()


class SchemaAdmin:
    """Schemas and schema-checked topics on the emulator (sync clients, in threads)."""

    def __init__(self, host: str) -> None:
        self._channel = grpc.insecure_channel(host)
        self.schemas = SchemaServiceClient(
            transport=SchemaServiceGrpcTransport(channel=self._channel)
        )
        self.publisher = pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=self._channel)
        )

    async def create(self, schema_id: str, definition: dict[str, Any]) -> Any:
        request = {
            "parent": f"projects/{DEV_PROJECT}",
            "schema_id": schema_id,
            "schema": {"type_": Schema.Type.AVRO, "definition": json.dumps(definition)},
        }
        return await asyncio.to_thread(self.schemas.create_schema, request=request)

    async def commit(self, name: str, definition: dict[str, Any]) -> Any:
        request = {
            "name": name,
            "schema": {
                "name": name,
                "type_": Schema.Type.AVRO,
                "definition": json.dumps(definition),
            },
        }
        return await asyncio.to_thread(self.schemas.commit_schema, request=request)

    async def topic(
        self, path: str, schema: str, encoding: str, first: str = "", last: str = ""
    ) -> None:
        settings_ = {
            "schema": schema,
            "encoding": Encoding[encoding],
            "first_revision_id": first,
            "last_revision_id": last,
        }
        request = {"name": path, "schema_settings": settings_}
        await asyncio.to_thread(self.publisher.create_topic, request=request)

    def close(self) -> None:
        self._channel.close()


@pytest.fixture
def schema_admin(emulator: Emulator) -> Iterator[SchemaAdmin]:
    admin = SchemaAdmin(emulator.host)
    yield admin
    admin.close()


@asynccontextmanager
async def service(store: Any, schema_host: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    app = create_app(
        settings(RECORDLINE_PUSH_TOKEN=PUSH_TOKEN, PUBSUB_EMULATOR_HOST=schema_host, **MAPPING),
        store=store,
    )
    async with served(app) as http:
        yield http, str(http.base_url).rstrip("/")


async def retried(http: httpx.AsyncClient, *, at_least: int) -> bool:
    """Whether the service answered `at_least` pushes with a retry (/metrics)."""
    text = (await http.get("/metrics")).text
    counts = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("recordline_messages_total{") and 'outcome="retried"' in line
    ]
    return sum(counts) >= at_least


def assert_stored(record: dict[str, Any], value: dict[str, Any], schema: str) -> None:
    """The record holds `value` decoded, its id and event time mapped."""
    created = value["meta"]["created_at"]
    assert record["id"] == value["order_id"]
    assert datetime.fromisoformat(record["timestamp"]) == created
    data = dict(record["data"])
    assert datetime.fromisoformat(data.pop("meta")["created_at"]) == created
    assert data == {k: v for k, v in value.items() if k != "meta"}
    assert record["schema"] == schema


@pytest.mark.parametrize("encoding", ["JSON", "BINARY"])
async def test_an_avro_topic_is_stored_decoded_with_the_mapped_id_and_time(
    wiring: Wiring, publisher: Any, emulator: Emulator, schema_admin: SchemaAdmin, encoding: str
) -> None:
    schema = await schema_admin.create(f"orders-{uuid.uuid4().hex[:8]}", ORDER_V1)
    await schema_admin.topic(wiring.topic_path, schema.name, encoding)
    values = [order(n, encoding) for n in range(40)]
    store = RecordingStore(DuckDBStore(":memory:"))
    async with service(store, emulator.host) as (http, url), Follower(http) as follower:
        await wiring.connect(url)
        await publish_all(
            publisher, wiring.topic_path, [encoded(v, ORDER_V1, encoding) for v in values]
        )
        await follower.wait_for({v["order_id"] for v in values}, timeout=60)
        records = [(await http.get(f"/v1/records/{v['order_id']}")).json() for v in values]
    follower.assert_exactly_once({v["order_id"] for v in values})
    for value, record in zip(values, records, strict=True):
        assert_stored(record, value, f"{schema.name}@{schema.revision_id}")
        assert record["attributes"]["googclient_schemaencoding"] == encoding


async def test_two_revisions_published_side_by_side_are_each_stored_with_their_own(
    wiring: Wiring, publisher: Any, emulator: Emulator, schema_admin: SchemaAdmin
) -> None:
    first = await schema_admin.create(f"orders-{uuid.uuid4().hex[:8]}", ORDER_V1)
    second = await schema_admin.commit(first.name, ORDER_V2)
    assert second.revision_id != first.revision_id
    await schema_admin.topic(
        wiring.topic_path, first.name, "BINARY", first.revision_id, second.revision_id
    )
    old = [order(n, "old") for n in range(20)]
    new = [order(n, "new", currency="USD") for n in range(20)]
    data = []
    for before, after in zip(old, new, strict=True):  # interleaved
        data += [encoded(before, ORDER_V1, "BINARY"), encoded(after, ORDER_V2, "BINARY")]
    store = RecordingStore(DuckDBStore(":memory:"))
    ids = {v["order_id"] for v in old + new}
    async with service(store, emulator.host) as (http, url), Follower(http) as follower:
        await wiring.connect(url)
        await publish_all(publisher, wiring.topic_path, data)
        await follower.wait_for(ids, timeout=60)
        stored = {i: (await http.get(f"/v1/records/{i}")).json() for i in ids}
    follower.assert_exactly_once(ids)
    for value in old:
        assert_stored(stored[value["order_id"]], value, f"{first.name}@{first.revision_id}")
        assert "currency" not in stored[value["order_id"]]["data"]
    for value in new:
        assert_stored(stored[value["order_id"]], value, f"{first.name}@{second.revision_id}")


async def test_while_the_schema_api_is_down_nothing_is_acknowledged_and_nothing_is_lost(
    wiring: Wiring, publisher: Any, schema_admin: SchemaAdmin
) -> None:
    """The service fetches from a fake Schema API (a copy of the emulator's revision)
    that is down while the emulator pushes: 503s, then all stored once it answers."""
    schema = await schema_admin.create(f"orders-{uuid.uuid4().hex[:8]}", ORDER_V1)
    await schema_admin.topic(wiring.topic_path, schema.name, "BINARY")
    fake = FakeSchemaApi()
    fake.add(schema.name, schema.revision_id, "AVRO", schema.definition)
    fake.failing = grpc.StatusCode.UNAVAILABLE
    await fake.start()
    values = [order(n, "down") for n in range(20)]
    ids = {v["order_id"] for v in values}
    store = RecordingStore(DuckDBStore(":memory:"))
    try:
        async with service(store, fake.address) as (http, url), Follower(http) as follower:
            await wiring.connect(url, dead_letters=False)
            await publish_all(
                publisher, wiring.topic_path, [encoded(v, ORDER_V1, "BINARY") for v in values]
            )
            # Until redeliveries were refused too: twice as many refused pushes as messages.
            await until(
                lambda: retried(http, at_least=2 * len(values)),
                interval=0.1,
                what=f"{2 * len(values)} pushes refused",
            )
            ready = await http.get("/readyz")
            refused_pushes = len(fake.calls)
            assert store.appends == []
            assert not follower.ids
            fake.failing = None
            await follower.wait_for(ids, timeout=60)
            await asyncio.sleep(1)  # a quiet second, for what it tests: no record shows twice
    finally:
        await fake.stop()
    assert refused_pushes >= 2, "the outage refused nothing: it did not test redelivery"
    # Ready all the same (a sender names the revision), with a warning naming it.
    assert ready.status_code == 200
    assert any(schema.name in warning for warning in ready.json()["warnings"])
    follower.assert_exactly_once(ids)


async def test_recordline_publish_with_a_schema_goes_the_whole_way(
    wiring: Wiring, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `recordline dev` shows it: publish makes the example schema the topic's,
    publishes in its encoding, and the service stores the records decoded."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    parser = argparse.ArgumentParser()
    add_publish_arguments(parser)
    store = RecordingStore(DuckDBStore(":memory:"))
    app = create_app(
        settings(RECORDLINE_PUSH_TOKEN=PUSH_TOKEN, PUBSUB_EMULATOR_HOST=emulator.host),
        store=store,
    )
    async with served(app) as http, Follower(http) as follower:
        await wiring.connect(str(http.base_url).rstrip("/"))
        for encoding in ("BINARY", "JSON"):
            args = parser.parse_args(
                ["--project", DEV_PROJECT, "--topic", wiring.topic, "--count", "5",
                 "--schema", str(EXAMPLE_SCHEMAS / "record.avsc"), "--encoding", encoding]
            )  # fmt: skip
            assert await asyncio.to_thread(publish_command, args) == 0
        await until(
            lambda: len(follower.message_ids) >= 10,
            timeout=60,
            what=lambda: f"10 stored, {len(follower.message_ids)} were",
        )
        page = (await http.get("/v1/records", params={"since": "2000-01-01T00:00:00Z"})).json()
    records = page["records"]
    assert len(records) == 10
    assert {r["attributes"]["googclient_schemaencoding"] for r in records} == {"BINARY", "JSON"}
    for record in records:
        assert record["schema"].startswith(f"projects/{DEV_PROJECT}/schemas/record@")
        assert record["timestamp"] is not None
        # Ids are the run's own prefix and the record's number.
        number = int(record["id"].rpartition("-")[2])
        assert record["data"]["data"] == {"n": number, "text": "Ejemplo de datos"}


async def test_a_revision_change_through_pubsub_reaches_typed_columns_behind_the_serving_tier(
    wiring: Wiring,
    publisher: Any,
    emulator: Emulator,
    schema_admin: SchemaAdmin,
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    """Published through the emulator in two revisions, the second adding a field with
    a default: Spanner keeps JSON, and the service's exporter projects each record onto
    `records.fields` in BigQuery, the new column there once the first message of its
    revision is exported; the Storage Write API learns it a second late."""
    first = await schema_admin.create(f"orders-{uuid.uuid4().hex[:8]}", ORDER_V1)
    second = await schema_admin.commit(first.name, ORDER_V2)
    await schema_admin.topic(
        wiring.topic_path, first.name, "BINARY", first.revision_id, second.revision_id
    )
    write_fake.define(RECORDS, json.loads(RECORDS_JSON.read_text()))
    write_fake.schema_lag = 1.0
    configured = settings(
        RECORDLINE_PUSH_TOKEN=PUSH_TOKEN, PUBSUB_EMULATOR_HOST=emulator.host, **MAPPING
    )
    schemas = fetching_schemas(configured)
    store = tiered_store(
        spanner_emulator.database(),
        spanner_emulator.host,
        write_fake,
        jobs_fake.endpoint,
        revisions=store_revisions(schemas),
    )
    old = [order(n, "old") for n in range(5)]
    new = [order(n, "new", currency="USD") for n in range(5)]
    app = create_app(configured, store=store, schemas=schemas)
    async with served(app) as http:
        await wiring.connect(str(http.base_url).rstrip("/"))
        await publish_all(
            publisher, wiring.topic_path, [encoded(v, ORDER_V1, "BINARY") for v in old]
        )
        await until(lambda: len(write_fake.rows("records")) == 5, timeout=60, interval=0.2)
        await publish_all(
            publisher, wiring.topic_path, [encoded(v, ORDER_V2, "BINARY") for v in new]
        )
        await until(lambda: len(write_fake.rows("records")) == 10, timeout=60, interval=0.2)

    rows = await query(
        jobs_fake,
        "SELECT id, fields.amount, fields.currency, ARRAY_LENGTH(projection_errors) "
        f"FROM {TABLE} ORDER BY id",
    )
    assert rows == sorted(
        [(v["order_id"], v["amount"], None, 0) for v in old]
        + [(v["order_id"], v["amount"], "USD", 0) for v in new]
    )
    assert sorted(r["id"] for r in write_fake.rows("records")) == sorted(r[0] for r in rows)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# A record whose two fields are the previous record, 17 levels down (each
# nullable, so a message of it is small): 393,214 typed fields once expanded.
BOMB = {
    **avro_bomb(17, 2),
    "fields": [{"name": "order_id", "type": "string"}, *avro_bomb(17, 2)["fields"]],
}
GOOD = {
    "type": "record",
    "name": "Good",
    "fields": [{"name": "order_id", "type": "string"}, {"name": "amount", "type": "long"}],
}


async def test_a_schema_bomb_committed_to_a_topic_costs_a_real_service_nothing_it_keeps(
    wiring: Wiring, publisher: Any, emulator: Emulator, schema_admin: SchemaAdmin, tmp_path: Path
) -> None:
    """The revision a 2.7 KB bomb of records names, committed beside a good one and
    published through the emulator to `recordline serve` on a DuckDB file: every
    message of both stored at once (the bomb's with no typed columns and a projection
    error naming the cap), none refused or redelivered, the process's memory flat, and
    a restart on the file ready in seconds."""
    good = await schema_admin.create(f"bomb-{uuid.uuid4().hex[:8]}", GOOD)
    bomb = await schema_admin.commit(good.name, BOMB)
    await schema_admin.topic(
        wiring.topic_path, good.name, "JSON", good.revision_id, bomb.revision_id
    )
    path = tmp_path / "records.duckdb"
    service = ServiceProcess(
        port=free_port(),
        store=f"duckdb://{path}",
        log=tmp_path / "service.log",
        env={"PUBSUB_EMULATOR_HOST": emulator.host, **MAPPING},
    )
    # Avro's JSON encoding: each revision's messages have keys only it has.
    data = []
    for n in range(20):
        data.append(json.dumps({"order_id": f"good-{n}", "amount": n}).encode())
        data.append(json.dumps({"order_id": f"bomb-{n}", "f0": None, "f1": None}).encode())
    ids = {f"{kind}-{n}" for kind in ("good", "bomb") for n in range(20)}
    try:
        await asyncio.to_thread(service.start)
        assert service.process is not None
        before = _rss_bytes(service.process.pid)
        await wiring.connect(service.url)
        async with (
            httpx.AsyncClient(base_url=service.url, timeout=30) as http,
            Follower(http) as follower,
        ):
            await publish_all(publisher, wiring.topic_path, data)
            await follower.wait_for(ids, timeout=60)
            growth = _rss_bytes(service.process.pid) - before
            assert not await retried(http, at_least=1)
        assert await asyncio.to_thread(service.terminate) in (0, -signal.SIGTERM)
        with duckdb.connect(str(path)) as con:
            rows = con.execute(
                "SELECT id, schema, fields, projection_errors FROM records_typed"
            ).fetchall()
        started = time.monotonic()
        await asyncio.to_thread(service.start)
        restart_seconds = time.monotonic() - started
    finally:
        service.close()
    follower.assert_exactly_once(ids)
    assert growth < 100 * 2**20, f"the process grew by {growth / 2**20:.0f} MB"
    assert restart_seconds < 20
    typed = {i: (schema, fields, errors) for i, schema, fields, errors in rows}
    for n in range(20):
        assert typed[f"good-{n}"] == (
            f"{good.name}@{good.revision_id}",
            {"order_id": f"good-{n}", "amount": n},
            [],
        )
        schema, _, errors = typed[f"bomb-{n}"]
        assert schema == f"{good.name}@{bomb.revision_id}"
        (error,) = errors
        assert error["reason"].startswith("no typed columns: the revision nests records more than")
    assert await wiring.admin.pull(wiring.dead_letters.rsplit("/", 1)[1]) == []

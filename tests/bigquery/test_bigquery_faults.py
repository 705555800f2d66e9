"""What the store promises when AppendRows fails: nothing acknowledged is lost,
duplicates stay invisible, a bad row rejects only itself."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from app.errors import StoreUnavailable, WriteTimeout
from app.records import Record
from app.store.bigquery.store import BigQueryStore
from tests.bigquery.conftest import BASE_TIME, record, walk
from tests.bigquery.fake_storage_write import (
    Abort,
    Drop,
    ErrorResponse,
    FakeBigQueryWrite,
    Fault,
    UpdatedSchema,
)
from tests.waiting import until

Factory = Callable[..., Any]

TRANSIENT = [
    pytest.param(Abort(grpc.StatusCode.UNAVAILABLE), id="abort-unavailable"),
    pytest.param(Abort(grpc.StatusCode.INTERNAL), id="abort-internal"),
    pytest.param(Abort(grpc.StatusCode.ABORTED), id="abort-aborted"),
    pytest.param(Abort(grpc.StatusCode.UNAVAILABLE, commit=True), id="commit-then-abort"),
    pytest.param(ErrorResponse(grpc.StatusCode.RESOURCE_EXHAUSTED), id="error-resource-exhausted"),
    pytest.param(ErrorResponse(grpc.StatusCode.INTERNAL), id="error-internal"),
    pytest.param(Drop(), id="drop"),
    pytest.param(UpdatedSchema(), id="updated-schema"),
]


def stored_ids(fake: FakeBigQueryWrite) -> list[str]:
    return [row["message_id"] for row in fake.rows("records")]


@pytest.mark.slow
@pytest.mark.parametrize("fault", TRANSIENT)
async def test_transient_faults_lose_nothing_and_show_no_duplicates(
    store: BigQueryStore, write_fake: FakeBigQueryWrite, fault: Fault
) -> None:
    rows = [record(f"m-{i}", BASE_TIME + i) for i in range(6)]
    await store.append(rows[:2])
    write_fake.inject("records", fault)

    # Several appends in flight at once, so the fault meets a full pipeline.
    results = await asyncio.gather(*(store.append([row]) for row in rows[2:]))

    assert results == [[None]] * 4
    assert set(stored_ids(write_fake)) == {r.message_id for r in rows}
    assert [r.message_id for r in await walk(store, limit=2)] == [r.message_id for r in rows]
    assert write_fake.protocol_errors == []
    # Every connection announced its writer schema once, on its first request.
    assert write_fake.schemas_received == write_fake.connections


@pytest.mark.slow
async def test_commit_then_abort_stores_a_copy_that_readers_never_see(
    store: BigQueryStore, write_fake: FakeBigQueryWrite
) -> None:
    write_fake.inject("records", Abort(grpc.StatusCode.UNAVAILABLE, commit=True))
    rows = [record(f"m-{i}", BASE_TIME + i, id="same") for i in range(3)]

    assert await store.append(rows) == [None] * 3

    assert sorted(stored_ids(write_fake)) == sorted(2 * [r.message_id for r in rows])
    for limit in (1, 2, 10):
        assert [r.message_id for r in await walk(store, limit=limit)] == ["m-0", "m-1", "m-2"]
    latest = await store.latest("same")
    assert latest is not None
    assert latest.message_id == "m-2"
    assert write_fake.connections == 2


async def test_a_refused_row_rejects_only_itself(
    store: BigQueryStore, write_fake: FakeBigQueryWrite
) -> None:
    write_fake.refuse = lambda row: "value too long" if row.get("id") == "bad" else None
    rows = [
        record("m-1", BASE_TIME + 1),
        record("m-2", BASE_TIME + 2, id="bad", timestamp=BASE_TIME, attributes='{"k":"v"}'),
        record("m-3", BASE_TIME + 3),
    ]

    outcomes = await store.append(rows)

    assert outcomes[0] is None
    assert outcomes[2] is None
    assert outcomes[1] is not None
    assert "value too long" in outcomes[1]
    assert sorted(stored_ids(write_fake)) == ["m-1", "m-3"]
    (rejected,) = write_fake.rows("rejected")
    assert rejected["message_id"] == "m-2"
    assert "value too long" in rejected["reason"]
    assert rejected["attributes"] == '{"k":"v"}'
    assert rejected["ingest_time"] == BASE_TIME + 2
    # The payload is rebuilt so that replaying it publishes the same record.
    assert (
        rejected["data"]
        == b'{"id":"bad","data":"Ejemplo de datos","timestamp":"2024-04-27T12:00:00Z"}'
    )
    status = await store.message("m-2")
    assert status is not None
    assert status.status == "rejected"
    assert [r.message_id for r in await walk(store, limit=10)] == ["m-1", "m-3"]


async def test_a_refused_schema_decoded_row_keeps_the_bytes_that_were_sent(
    store: BigQueryStore, write_fake: FakeBigQueryWrite
) -> None:
    """Its `data` is JSON decoded from binary Avro: only the original bytes replay."""
    sent = b"\x06o-1\xf6\xb9\xe9\xf6\xe3c"
    write_fake.refuse = lambda row: "value too long" if row.get("id") == "o-1" else None
    refused = record(
        "m-1",
        BASE_TIME,
        id="o-1",
        data='{"order_id": "o-1"}',
        attributes='{"googclient_schemaencoding":"BINARY"}',
        schema="projects/p/schemas/orders@r1",
        received=sent,
    )

    (outcome,) = await store.append([refused])

    assert outcome is not None
    (rejected,) = write_fake.rows("rejected")
    assert rejected["data"] == sent
    assert rejected["schema"] == "projects/p/schemas/orders@r1"
    assert rejected["attributes"] == '{"googclient_schemaencoding":"BINARY"}'
    assert "value too long" in rejected["reason"]


async def test_a_refused_rejection_is_not_acknowledged(
    store: BigQueryStore, write_fake: FakeBigQueryWrite
) -> None:
    write_fake.refuse = lambda row: "refused" if row.get("message_id") == "m-1" else None
    with pytest.raises(StoreUnavailable):
        await store.append([record("m-1", BASE_TIME)])


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            Abort(grpc.StatusCode.NOT_FOUND, details="Table not found"), id="abort-not-found"
        ),
        pytest.param(Abort(grpc.StatusCode.PERMISSION_DENIED), id="abort-permission-denied"),
        pytest.param(
            ErrorResponse(grpc.StatusCode.PERMISSION_DENIED), id="error-permission-denied"
        ),
        pytest.param(ErrorResponse(grpc.StatusCode.INVALID_ARGUMENT), id="error-invalid-argument"),
    ],
)
async def test_permanent_errors_fail_the_append_and_readiness(
    store: BigQueryStore,
    write_fake: FakeBigQueryWrite,
    fault: Fault,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_fake.inject("records", fault)
    with pytest.raises(StoreUnavailable) as failed:
        await store.append([record("m-1", BASE_TIME)])
    assert failed.value.status == 503
    assert "records" in failed.value.detail
    with pytest.raises(StoreUnavailable):
        await store.check()
    assert any(r.levelname == "ERROR" for r in caplog.records)

    # Once the operator fixes the table, the next append succeeds and
    # readiness recovers.
    assert await store.append([record("m-2", BASE_TIME + 1)]) == [None]
    await store.check()
    assert stored_ids(write_fake) == ["m-2"]


async def test_the_deadline_bounds_an_append(
    make_store: Factory, write_fake: FakeBigQueryWrite
) -> None:
    store: BigQueryStore = await make_store(write_deadline_seconds=0.3)
    write_fake.inject("records", *[Abort(grpc.StatusCode.UNAVAILABLE)] * 50)
    loop = asyncio.get_running_loop()
    # When this loop gets round to the deadline: on a loaded machine, well after 0.3 s.
    deadline: list[float] = []
    loop.call_at(loop.time() + 0.3, lambda: deadline.append(loop.time()))
    with pytest.raises(WriteTimeout) as timed_out:
        await store.append([record("m-1", BASE_TIME)])
    assert timed_out.value.status == 503
    # At the deadline, not once the retries run out: within 0.7 s of it.
    assert deadline, "timed out before the deadline"
    assert loop.time() - deadline[0] < 0.7
    assert stored_ids(write_fake) == []


async def test_a_slow_server_times_out_without_losing_later_rows(
    make_store: Factory, write_fake: FakeBigQueryWrite
) -> None:
    store: BigQueryStore = await make_store(write_deadline_seconds=0.2)
    # The connection is open first: m-1 times out waiting for its answer, not
    # for a connection.
    assert await store.append([record("m-0", BASE_TIME - 1)]) == [None]
    write_fake.latency = 0.5
    with pytest.raises(WriteTimeout):
        await store.append([record("m-1", BASE_TIME)])
    assert store.unanswered == 1  # sent; its answer is late
    write_fake.latency = 0.0
    # Answers come back in order: the late one arrives, then the writer carries on.
    await until(lambda: store.unanswered == 0, what="the late answer to arrive")
    assert await store.append([record("m-2", BASE_TIME + 1)]) == [None]
    # The timed-out row had been sent and landed; Pub/Sub's redelivery will
    # make a copy that readers hide.
    assert stored_ids(write_fake) == ["m-0", "m-1", "m-2"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_faults_under_load(
    make_store: Factory, write_fake: FakeBigQueryWrite, seed: int
) -> None:
    store: BigQueryStore = await make_store(write_deadline_seconds=10.0)
    chooser = random.Random(seed)
    faults: list[Fault | None] = [
        Abort(grpc.StatusCode.UNAVAILABLE),
        Abort(grpc.StatusCode.UNAVAILABLE, commit=True),
        ErrorResponse(grpc.StatusCode.INTERNAL),
        Drop(),
        UpdatedSchema(),
    ]
    write_fake.inject("records", *(chooser.choice([*faults, None, None, None]) for _ in range(40)))
    write_fake.latency = 0.002
    rows = [record(f"m-{i:03}", BASE_TIME + i) for i in range(200)]

    async def producer(mine: list[Record]) -> list[str]:
        acknowledged = []
        for row in mine:
            assert await store.append([row]) == [None]
            acknowledged.append(row.message_id)
        return acknowledged

    acknowledged = await asyncio.gather(*(producer(rows[i::20]) for i in range(20)))

    stored = set(stored_ids(write_fake))
    assert {m for ids in acknowledged for m in ids} <= stored
    assert [r.message_id for r in await walk(store, limit=37)] == [r.message_id for r in rows]
    assert write_fake.schemas_received == write_fake.connections
    assert write_fake.protocol_errors == []

"""StorageWriter on its own: batching, pipelining, the protocol on the wire."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.api_core import exceptions

from app.errors import StoreUnavailable, WriteTimeout
from app.records import Record
from app.store.bigquery.proto import RowEncoder
from app.store.bigquery.storage_write import StorageWriter, is_transient
from app.store.supervisor import Supervisor
from tests.bigquery.conftest import BASE_TIME, record
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.waiting import until

TABLE = "projects/fake-project/datasets/recordline/tables/records"
ENCODER = RowEncoder(Record)


def rows(count: int, *, start: int = 0, data: str = '"x"') -> list[bytes]:
    return [
        ENCODER.encode(record(f"m-{start + i}", BASE_TIME + start + i, data=data))
        for i in range(count)
    ]


async def started(client: Any, **options: Any) -> StorageWriter:
    writer = StorageWriter(client, TABLE, ENCODER.descriptor, **options)
    await writer.start()
    return writer


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_requests_are_cut_by_rows(write_client: Any, write_fake: FakeBigQueryWrite) -> None:
    writer = await started(write_client, max_request_rows=10)
    assert await writer.append(rows(25), deadline()) == [None] * 25
    assert write_fake.requests == 3
    assert [r["message_id"] for r in write_fake.rows("records")] == [f"m-{i}" for i in range(25)]
    await writer.close()


async def test_requests_are_cut_by_bytes(write_client: Any, write_fake: FakeBigQueryWrite) -> None:
    one_row = len(rows(1, data='"' + "x" * 1000 + '"')[0])
    writer = await started(write_client, max_request_bytes=3 * one_row + 20)
    await writer.append(rows(9, data='"' + "x" * 1000 + '"'), deadline())
    assert write_fake.requests == 3
    # A row larger than the budget still goes, alone.
    await writer.append(rows(1, start=100, data='"' + "y" * 10_000 + '"'), deadline())
    assert write_fake.requests == 4
    await writer.close()


async def test_routing_header_and_writer_schema_on_first_request_only(
    write_client: Any, write_fake: FakeBigQueryWrite
) -> None:
    writer = await started(write_client)
    for start in range(0, 30, 10):
        await writer.append(rows(10, start=start), deadline())
    assert write_fake.connections == 1
    assert write_fake.requests == 3
    assert write_fake.schemas_received == 1
    assert f"write_stream={TABLE}/streams/_default" in write_fake.routing_headers
    assert write_fake.protocol_errors == []
    await writer.close()


async def test_requests_in_flight_are_bounded_and_batches_grow_under_load(
    write_client: Any, write_fake: FakeBigQueryWrite
) -> None:
    write_fake.latency = 0.02
    writer = await started(write_client, max_in_flight=3)
    payload = rows(300)

    async def producer(mine: list[bytes]) -> None:
        for row in mine:
            assert await writer.append([row], deadline()) == [None]

    await asyncio.gather(*(producer(payload[i::30]) for i in range(30)))
    assert write_fake.max_unanswered == 3
    # Group commit: 30 producers appending one row at a time share requests.
    assert write_fake.requests < 100
    assert writer.rows_sent == 300
    assert len(write_fake.rows("records")) == 300
    await writer.close()


async def test_close_fails_what_cannot_finish(
    write_client: Any, write_fake: FakeBigQueryWrite
) -> None:
    write_fake.latency = 5.0
    writer = await started(write_client)
    pending = asyncio.ensure_future(writer.append(rows(1), deadline(30)))
    await until(lambda: write_fake.requests == 1, what="the request to reach BigQuery")
    await writer.close(grace=0.1)
    with pytest.raises(StoreUnavailable):
        await pending


async def test_an_abandoned_row_is_not_sent(
    write_client: Any, write_fake: FakeBigQueryWrite
) -> None:
    write_fake.latency = 0.3
    writer = await started(write_client, max_in_flight=1)
    first = asyncio.ensure_future(writer.append(rows(1), deadline()))
    await until(lambda: write_fake.requests == 1, what="the first request to reach BigQuery")
    # Waits behind the one request allowed in flight, then gives up.
    second = asyncio.ensure_future(writer.append(rows(1, start=1), deadline(0.1)))
    with pytest.raises(Exception, match="deadline"):
        await second
    assert await first == [None]
    # Requests go in order: had the abandoned row been sent, it would be stored
    # before (or with) this one, which is answered only after it.
    assert await writer.append(rows(1, start=2), deadline()) == [None]
    assert [r["message_id"] for r in write_fake.rows("records")] == ["m-0", "m-2"]
    await writer.close()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (exceptions.ServiceUnavailable("down"), True),
        (exceptions.InternalServerError("stream aborted"), True),
        (exceptions.Aborted("aborted"), True),
        (exceptions.TooManyRequests("quota"), True),
        (exceptions.DeadlineExceeded("slow"), True),
        (exceptions.Cancelled("cancelled"), True),
        (exceptions.Unknown("unknown"), True),
        (asyncio.InvalidStateError("RPC already finished"), True),
        (exceptions.NotFound("no table"), False),
        (exceptions.PermissionDenied("denied"), False),
        (exceptions.InvalidArgument("bad schema"), False),
        (exceptions.Unauthenticated("who"), False),
    ],
)
def test_error_classification(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_every_transient_code_is_retried() -> None:
    expected = {
        "UNAVAILABLE",
        "INTERNAL",
        "ABORTED",
        "RESOURCE_EXHAUSTED",
        "DEADLINE_EXCEEDED",
        "CANCELLED",
        "UNKNOWN",
    }
    retried = {
        code.name
        for code in grpc.StatusCode
        if is_transient(exceptions.from_grpc_status(code, "x"))
    }
    assert retried == expected


async def test_a_writer_whose_loop_fails_is_restarted(
    write_client: Any, write_fake: FakeBigQueryWrite
) -> None:
    restarted: list[str] = []

    class Observer:
        def restarted(self, loop: str) -> None:
            restarted.append(loop)

    loops = Supervisor(observer=Observer())
    await loops.start()
    writer = await started(write_client, loops=loops)
    try:
        # A row that is not bytes (a caller's bug) fails the loop as it builds the
        # request, with nothing on its path to catch it: that append has only its
        # deadline, and the loop is started again for the appends after it.
        not_bytes: list[Any] = ["not bytes"]
        with pytest.raises(WriteTimeout):
            await writer.append(not_bytes, deadline(0.5))
        await until(lambda: restarted == ["writer records"], what="the writer's loop restarted")
        assert await writer.append(rows(2), deadline()) == [None, None]
        assert [r["message_id"] for r in write_fake.rows("records")] == ["m-0", "m-1"]
    finally:
        await writer.close()
        await loops.close()

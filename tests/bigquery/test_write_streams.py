"""Application-created streams, through the real client: the fake follows the API
reference, and OffsetStream stores each row exactly once however often it resends."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.api_core.exceptions import GoogleAPICallError
from google.cloud.bigquery_storage_v1 import types

from app.errors import StoreUnavailable
from app.records import Record
from app.store.bigquery.proto import RowEncoder
from app.store.bigquery.stream import Appended, OffsetStream, RowsRefused, StreamBroken
from tests.bigquery.conftest import BASE_TIME, record
from tests.bigquery.fake_storage_write import Abort, FakeBigQueryWrite

TABLE = "projects/p/datasets/d/tables/records"
ENCODER = RowEncoder(Record)


def rows(*names: str) -> list[bytes]:
    return [ENCODER.encode(record(name, BASE_TIME)) for name in names]


def stored(fake: FakeBigQueryWrite) -> list[str]:
    return [row["message_id"] for row in fake.rows("records")]


async def test_offsets_store_each_row_once(
    write_fake: FakeBigQueryWrite, write_client: Any
) -> None:
    writer = OffsetStream(write_client, TABLE, ENCODER.descriptor)
    stream = await writer.create()
    assert await writer.append(stream, 0, rows("a", "b")) is Appended.STORED
    # A resend of what is stored already is refused, and changes nothing.
    assert await writer.append(stream, 0, rows("a", "b")) is Appended.ALREADY
    assert await writer.append(stream, 2, rows("c")) is Appended.STORED
    with pytest.raises(StreamBroken, match="OUT_OF_RANGE"):
        await writer.append(stream, 9, rows("z"))
    assert stored(write_fake) == ["a", "b", "c"]
    # The answer lost after the rows were stored: the resend learns they are there.
    write_fake.inject("records", Abort(commit=True))
    with pytest.raises(StoreUnavailable, match="injected abort"):
        await writer.append(stream, 3, rows("d"))
    assert await writer.append(stream, 3, rows("d")) is Appended.ALREADY
    assert stored(write_fake) == ["a", "b", "c", "d"]
    await writer.finalize(stream)
    with pytest.raises(StreamBroken, match="finalized"):
        await writer.append(stream, 4, rows("e"))
    writer.close()


async def test_a_refused_row_stores_nothing_of_its_append(
    write_fake: FakeBigQueryWrite, write_client: Any
) -> None:
    write_fake.refuse = lambda row: "too long" if row["message_id"] == "bad" else None
    writer = OffsetStream(write_client, TABLE, ENCODER.descriptor)
    stream = await writer.create()
    with pytest.raises(RowsRefused) as refused:
        await writer.append(stream, 0, rows("ok", "bad"))
    assert refused.value.reasons == {1: "too long"}
    assert stored(write_fake) == []
    writer.close()


async def test_an_unknown_stream_is_broken(write_client: Any) -> None:
    writer = OffsetStream(write_client, TABLE, ENCODER.descriptor)
    with pytest.raises(StreamBroken, match="NOT_FOUND"):
        await writer.append(f"{TABLE}/streams/nowhere", 0, rows("a"))
    writer.close()


async def test_pending_rows_show_once_finalized_and_committed(
    write_fake: FakeBigQueryWrite, write_client: Any
) -> None:
    pending = await write_client.create_write_stream(
        parent=TABLE, write_stream=types.WriteStream(type_=types.WriteStream.Type.PENDING)
    )
    writer = OffsetStream(write_client, TABLE, ENCODER.descriptor)
    assert await writer.append(pending.name, 0, rows("p1", "p2")) is Appended.STORED
    assert stored(write_fake) == []
    # Committing a stream that is not finalized commits nothing.
    early = await write_client.batch_commit_write_streams(
        request=types.BatchCommitWriteStreamsRequest(parent=TABLE, write_streams=[pending.name])
    )
    assert [e.code for e in early.stream_errors] == [
        types.StorageError.StorageErrorCode.INVALID_STREAM_STATE
    ]
    finalized = await write_client.finalize_write_stream(name=pending.name)
    assert finalized.row_count == 2
    committed = await write_client.batch_commit_write_streams(
        request=types.BatchCommitWriteStreamsRequest(parent=TABLE, write_streams=[pending.name])
    )
    assert not committed.stream_errors
    assert stored(write_fake) == ["p1", "p2"]
    again = await write_client.batch_commit_write_streams(
        request=types.BatchCommitWriteStreamsRequest(parent=TABLE, write_streams=[pending.name])
    )
    assert [e.code for e in again.stream_errors] == [
        types.StorageError.StorageErrorCode.STREAM_ALREADY_COMMITTED
    ]
    writer.close()


async def test_buffered_rows_show_up_to_the_flush(
    write_fake: FakeBigQueryWrite, write_client: Any
) -> None:
    buffered = await write_client.create_write_stream(
        parent=TABLE, write_stream=types.WriteStream(type_=types.WriteStream.Type.BUFFERED)
    )
    writer = OffsetStream(write_client, TABLE, ENCODER.descriptor)
    assert await writer.append(buffered.name, 0, rows("b1", "b2", "b3")) is Appended.STORED
    assert stored(write_fake) == []
    await write_client.flush_rows(request=flush(buffered.name, 1))
    assert stored(write_fake) == ["b1", "b2"]
    with pytest.raises(GoogleAPICallError) as beyond:
        await write_client.flush_rows(request=flush(buffered.name, 7))
    assert beyond.value.grpc_status_code is grpc.StatusCode.OUT_OF_RANGE
    writer.close()


async def test_a_stream_needs_a_type(write_client: Any) -> None:
    with pytest.raises(GoogleAPICallError) as refused:
        await write_client.create_write_stream(parent=TABLE, write_stream=types.WriteStream())
    assert refused.value.grpc_status_code is grpc.StatusCode.INVALID_ARGUMENT


def flush(stream: str, offset: int) -> types.FlushRowsRequest:
    request = types.FlushRowsRequest(write_stream=stream)
    request.offset = offset  # an Int64Value, set from an int by proto-plus
    return request

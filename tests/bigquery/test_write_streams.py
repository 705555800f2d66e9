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
from tests.bigquery.fake_storage_write import Abort, ErrorResponse, FakeBigQueryWrite, StreamGone

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


# --- every failure shape BigQuery returns, at the RPC level and in the response -------

_S = types.StorageError.StorageErrorCode
_C = grpc.StatusCode
# (status, StorageError code or None, message, what the writer makes of it)
SHAPES = [
    (_C.NOT_FOUND, None, "Requested entity was not found.", "gone"),
    (_C.NOT_FOUND, _S.STREAM_NOT_FOUND, "Stream not found", "gone"),
    (_C.INVALID_ARGUMENT, None, "Invalid stream name.", "gone"),
    (_C.INVALID_ARGUMENT, _S.STREAM_FINALIZED, "Stream is finalized", "gone"),
    (_C.INVALID_ARGUMENT, _S.INVALID_STREAM_STATE, "Stream is not open", "gone"),
    (_C.FAILED_PRECONDITION, None, "The stream is not in a state to take rows", "gone"),
    (_C.INVALID_ARGUMENT, _S.SCHEMA_MISMATCH_EXTRA_FIELDS, "Input schema has more", "refused"),
    (_C.NOT_FOUND, _S.TABLE_NOT_FOUND, "Not found: Table", "refused"),
    (_C.PERMISSION_DENIED, None, "Permission bigquery.tables.updateData denied", "refused"),
    (_C.RESOURCE_EXHAUSTED, None, "Exceeds quota: AppendRows throughput", "transient"),
    (_C.UNAVAILABLE, None, "The service is unavailable", "transient"),
    (_C.INTERNAL, _S.KMS_SERVICE_ERROR, "KMS unavailable", "transient"),
]


def shape_id(shape: tuple[Any, ...]) -> str:
    code, storage, _, _ = shape
    return code.name + (f"-{_S(storage).name}" if storage else "")


@pytest.mark.parametrize("rpc", [True, False], ids=["rpc", "response"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
async def test_every_failure_shape_is_read_alike_at_the_rpc_level_and_in_the_response(
    write_fake: FakeBigQueryWrite, write_client: Any, shape: tuple[Any, ...], rpc: bool
) -> None:
    code, storage, message, meant = shape
    fault: Any = (
        Abort(code, details=message, storage=storage)
        if rpc
        else ErrorResponse(code, message, storage=storage)
    )
    writer = OffsetStream(write_client, TABLE, ENCODER.descriptor)
    stream = await writer.create()
    write_fake.inject("records", fault)
    if meant == "transient":
        with pytest.raises(StoreUnavailable, match=code.name):
            await writer.append(stream, 0, rows("a"))
    else:
        with pytest.raises(StreamBroken, match=code.name) as broken:
            await writer.append(stream, 0, rows("a"))
        assert broken.value.gone is (meant == "gone")
        if storage is not None:
            assert _S(storage).name in str(broken.value)
    # Nothing of it was stored, and the stream takes the rows once the fault passed.
    assert stored(write_fake) == []
    assert await writer.append(stream, 0, rows("a")) is Appended.STORED
    writer.close()


@pytest.mark.parametrize("rpc", [True, False], ids=["rpc", "response"])
async def test_a_stream_gone_stays_gone_and_a_new_one_takes_the_rows(
    write_fake: FakeBigQueryWrite, write_client: Any, rpc: bool
) -> None:
    writer = OffsetStream(write_client, TABLE, ENCODER.descriptor)
    old = await writer.create()
    assert await writer.append(old, 0, rows("a")) is Appended.STORED
    write_fake.inject(
        "records", StreamGone(_C.INVALID_ARGUMENT, "Invalid stream name.", rpc=rpc, commit=True)
    )
    with pytest.raises(StreamBroken) as gone:
        await writer.append(old, 1, rows("b"))
    assert gone.value.gone
    # Every later append to it fails alike (as the stream BigQuery dropped does)...
    with pytest.raises(StreamBroken, match="INVALID_ARGUMENT"):
        await writer.append(old, 2, rows("c"))
    # ...FinalizeWriteStream says it is gone, so what it holds is BigQuery's to tell...
    assert await writer.finalize(old) is None
    assert stored(write_fake) == ["a", "b"]  # b landed before the stream went
    # ...and a new stream of the table takes rows.
    new = await writer.create()
    assert await writer.append(new, 0, rows("c")) is Appended.STORED
    assert stored(write_fake) == ["a", "b", "c"]
    writer.close()


async def test_a_stream_bigquery_finalized_tells_how_many_rows_it_holds(
    write_fake: FakeBigQueryWrite, write_client: Any
) -> None:
    writer = OffsetStream(write_client, TABLE, ENCODER.descriptor)
    stream = await writer.create()
    assert await writer.append(stream, 0, rows("a", "b")) is Appended.STORED
    write_fake.inject(
        "records",
        StreamGone(_C.INVALID_ARGUMENT, "Stream is finalized", _S.STREAM_FINALIZED, finalized=True),
    )
    with pytest.raises(StreamBroken, match="STREAM_FINALIZED") as gone:
        await writer.append(stream, 2, rows("c"))
    assert gone.value.gone
    assert await writer.finalize(stream) == 2
    writer.close()


async def test_a_table_that_cannot_take_a_stream_refuses_for_good(
    write_fake: FakeBigQueryWrite, write_client: Any
) -> None:
    writer = OffsetStream(write_client, TABLE, ENCODER.descriptor)
    write_fake.call_faults["CreateWriteStream"].append(_C.NOT_FOUND)
    with pytest.raises(StreamBroken, match="NOT_FOUND") as refused:
        await writer.create()
    assert not refused.value.gone
    write_fake.call_faults["CreateWriteStream"].append(_C.PERMISSION_DENIED)
    with pytest.raises(StreamBroken, match="PERMISSION_DENIED"):
        await writer.create()
    write_fake.call_faults["CreateWriteStream"].append(_C.RESOURCE_EXHAUSTED)
    with pytest.raises(StoreUnavailable):
        await writer.create()

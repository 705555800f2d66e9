"""Dead letters written as Pub/Sub's BigQuery subscription on the dead-letter topic
writes them: rows of `dead_letters` (Terraform's schema, whose columns are Pub/Sub's)
appended through the Storage Write API, to the fakes in this process or in another
(the BigQuery stand-in a served process reads)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from google.cloud.bigquery_storage_v1.services.big_query_write import BigQueryWriteAsyncClient
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
    BigQueryWriteGrpcAsyncIOTransport,
)

from app.records import Micros, Row
from app.store.bigquery.proto import RowEncoder
from app.store.bigquery.storage_write import StorageWriter
from app.store.dead_letters import DeadLetter
from app.store.supervisor import Supervisor


class DeadLetterRow(Row, frozen=True):
    """A row of `dead_letters`, each column NULLABLE as Terraform creates it."""

    subscription_name: str | None = None
    message_id: str | None = None
    publish_time: Micros | None = None
    data: bytes | None = None
    attributes: str | None = None


ENCODER = RowEncoder(DeadLetterRow)


def row_of(letter: DeadLetter) -> DeadLetterRow:
    return DeadLetterRow(
        subscription_name=letter.subscription_name,
        message_id=letter.message_id,
        publish_time=letter.publish_time,
        data=letter.data,
        attributes=letter.attributes,
    )


async def append(address: str, table: str, rows: Sequence[DeadLetterRow]) -> None:
    """Append `rows` to `table` (its full path) at the Storage Write API at `address`."""
    channel = grpc.aio.insecure_channel(address)
    client = BigQueryWriteAsyncClient(transport=BigQueryWriteGrpcAsyncIOTransport(channel=channel))
    loops = Supervisor()
    await loops.start()
    writer = StorageWriter(client, table, ENCODER.descriptor, loops=loops)
    try:
        await writer.start()
        deadline = asyncio.get_running_loop().time() + 30
        refused = await writer.append([ENCODER.encode(r) for r in rows], deadline)
        assert refused == [None] * len(rows), refused
    finally:
        await writer.close()
        await loops.close()
        await client.transport.close()

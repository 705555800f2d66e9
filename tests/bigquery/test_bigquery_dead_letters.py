"""Dead letters on BigQuery: `dead_letters`, as Pub/Sub's subscription on the
dead-letter topic writes it, read a page at a time by a query that bills the days its
bounds reach (the table is partitioned by day on `publish_time`, clustered on
`message_id`: bigquery.tf), and the newest day holding any found in partition metadata
for BigQuery's minimum; a table whose `data` is STRING (as the subscription may
write it) read as its bytes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from app.query.dead_letters import view
from app.settings import QuerySettings
from app.store.bigquery.schema import created_schema
from app.store.bigquery.store import BigQueryStore
from app.store.dead_letters import DeadLetter, DeadLetterQuery, day_of, page_of
from tests.bigquery.billing import MIB, BillingModel
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.dead_letters import DeadLetterRow, append, row_of
from tests.bigquery.fake_jobs import LAYOUTS, SCHEMAS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite

DAY = 86_400_000_000
NOW = 1_780_000_000_000_000
TABLE = f"projects/{PROJECT}/datasets/{DATASET}/tables/dead_letters"


def dead_letter(time: int, n: int) -> DeadLetter:
    """A dead letter of about a kilobyte, with the attributes Pub/Sub adds."""
    attributes = {
        "CloudPubSubDeadLetterSourceSubscription": "orders-push",
        "CloudPubSubDeadLetterSourceSubscriptionProject": "p",
        "CloudPubSubDeadLetterSourceDeliveryCount": "32",
    }
    return DeadLetter(
        publish_time=time,
        message_id=f"{17_000_000_000 + n}",
        subscription_name="projects/p/subscriptions/orders-dead-letters-bigquery",
        data=json.dumps({"id": f"order-{n}", "pad": "x" * 800}).encode(),
        attributes=json.dumps(attributes),
    )


def written(write_fake: FakeBigQueryWrite, letters: list[DeadLetter]) -> None:
    write_fake.tables[TABLE] = [{f: getattr(x, f) for f in x.__struct_fields__} for x in letters]


async def test_a_page_bills_the_day_it_reads(
    make_store: Callable[..., Any], write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    # The whole table is past the default cap (2 GiB), which refuses it: raised here.
    store: BigQueryStore = await make_store(QuerySettings(max_bytes_billed=1 << 40))
    # 30 days of dead letters, a row standing for 2,000 of about a kilobyte: some
    # 100 MiB a day, an outage's.
    letters = [
        dead_letter(NOW - day * DAY - n * 60_000_000, day * 1000 + n)
        for day in range(30)
        for n in range(50)
    ]
    written(write_fake, letters)
    jobs_fake.billing = BillingModel(
        layouts=LAYOUTS,
        kinds=jobs_fake.billing.kinds,
        row_weight=2_000,
        clock=lambda: NOW / 1e6 + 86_400,
    )

    async def billed(query: DeadLetterQuery) -> int:
        before = len(jobs_fake.queries)
        assert await store.dead_letter_page(query) == page_of(query, letters)
        (bill,) = [q.bill for q in jobs_fake.queries[before:]]
        assert bill is not None
        return bill.bytes_billed

    whole = await billed(DeadLetterQuery(since=0, until=NOW + 1, limit=50))
    one_day = await billed(DeadLetterQuery(since=day_of(NOW), until=NOW + 1, limit=50))
    # Its bounds prune the other days' partitions; the whole table bills every one.
    assert whole > 30 * 90 * MIB
    assert 90 * MIB < one_day < whole // 25
    # The cursor is a bound too: from the tenth day back, the days from there on.
    older = await billed(
        DeadLetterQuery(since=0, until=NOW + 1, before=(NOW - 10 * DAY, ""), limit=50)
    )
    assert older < whole * 21 // 30
    # Partition metadata says which day holds dead letters for BigQuery's minimum.
    before = len(jobs_fake.queries)
    assert await store.newest_dead_letter_day(0, day_of(NOW - 12 * DAY)) == day_of(NOW - 13 * DAY)
    (metadata,) = [q.bill for q in jobs_fake.queries[before:]]
    assert metadata is not None
    assert metadata.bytes_billed == 10 * MIB


def test_the_tests_dead_letter_rows_are_terraforms() -> None:
    # The rows the tests write (as Pub/Sub's subscription writes them) have the columns
    # Terraform creates the table with, each of its type and NULLABLE.
    terraform = json.loads((SCHEMAS / "dead_letters.json").read_text())
    made = created_schema(DeadLetterRow)
    assert [(c["name"], c["type"], c["mode"]) for c in made] == [
        (c["name"], c["type"], c["mode"]) for c in terraform
    ]


async def test_dead_letters_appended_through_the_storage_write_api_read_back_as_written(
    make_store: Callable[..., Any], write_fake: FakeBigQueryWrite
) -> None:
    store: BigQueryStore = await make_store()
    letters = [
        dead_letter(NOW - 1, 1),
        DeadLetter(publish_time=NOW - 2, data=b"\xff\x00", attributes="not json"),
        DeadLetter(publish_time=NOW - 3),
    ]
    await append(write_fake.address, TABLE, [row_of(x) for x in letters])
    query = DeadLetterQuery(since=0, until=NOW + 1)
    assert await store.dead_letter_page(query) == letters


async def test_a_table_holding_data_as_string_reads_it_as_its_bytes(
    make_store: Callable[..., Any], write_fake: FakeBigQueryWrite
) -> None:
    # Pub/Sub's BigQuery subscription writes `data` to a STRING column too, where the
    # table was made so (by hand, not by Terraform): each is read as its UTF-8 bytes,
    # and shown.
    store: BigQueryStore = await make_store()
    terraform = json.loads((SCHEMAS / "dead_letters.json").read_text())
    write_fake.define(
        TABLE, [{**c, "type": "STRING"} if c["name"] == "data" else c for c in terraform]
    )
    rows = [(NOW - 1, "1", "héllo <b>", "{}"), (NOW - 2, "2", None, None)]
    write_fake.tables[TABLE] = [
        {"subscription_name": None, "message_id": m, "publish_time": t, "data": d, "attributes": a}
        for t, m, d, a in rows
    ]
    read = await store.dead_letter_page(DeadLetterQuery(since=0, until=NOW + 1))
    assert [(x.message_id, x.data) for x in read] == [("1", "héllo <b>".encode()), ("2", None)]
    shown = view(read[0], stored=False)
    assert (shown.text, shown.unreplayable) == ("héllo <b>", None)

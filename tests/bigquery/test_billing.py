"""The billing model against the rules in BigQuery's pricing, partitioning,
clustering and search-index documentation, one worked example each."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from app.records import Kind
from tests.bigquery.billing import MIB, Bill, BillingModel, Layout, value_size

DAY = 86_400_000_000
MINUTE = 60_000_000
T0 = 1_714_176_000_000_000  # 2024-04-27T00:00:00Z
RANGE = "SELECT n FROM `p.d.events` WHERE ts >= TIMESTAMP_MICROS(@a) AND ts < TIMESTAMP_MICROS(@b)"
KINDS = {
    "events": {"ts": Kind.TIMESTAMP, "k": Kind.STRING, "m": Kind.STRING, "n": Kind.INT64},
    "other": {"ts": Kind.TIMESTAMP, "k": Kind.STRING, "m": Kind.STRING, "n": Kind.INT64},
}
SCHEMA = {"p": {"d": {t: {c: k.value for c, k in cols.items()} for t, cols in KINDS.items()}}}


def rows(days: int, per_day: int, *, start: int = T0) -> list[dict[str, Any]]:
    out = []
    for day in range(days):
        for i in range(per_day):
            out.append(
                {
                    "ts": start + day * DAY + i * (DAY // per_day),
                    "k": f"k{(day * per_day + i) % 97:03}",
                    "m": f"m{day * per_day + i:06}",
                    "n": i,
                }
            )
    return out


def model(layout: Layout, *, now: int, block_rows: int = 100, row_weight: int = 1) -> BillingModel:
    return BillingModel(
        layouts={"events": layout, "other": Layout()},
        kinds=KINDS,
        block_rows=block_rows,
        row_weight=row_weight,
        clock=lambda: now / 1_000_000,
    )


def bill(m: BillingModel, sql: str, data: dict[str, list[dict[str, Any]]], **params: Any) -> Bill:
    return m.bill(sql, params, lambda t: data.get(t, []), SCHEMA)


def scanned(b: Bill) -> int:
    return sum(n for _, n in b.scans)


LONG_AGO = T0 + 400 * DAY  # every row settled long ago: nothing write-optimized


def test_value_sizes_follow_the_data_type_table() -> None:
    # "STRING: 2 logical bytes + the UTF-8 encoded string size"; INT64 and
    # TIMESTAMP 8; BYTES 2 + bytes; NULL 0 whatever the type.
    assert value_size(Kind.STRING, "abc") == 5
    assert value_size(Kind.STRING, "año") == 2 + 4
    assert value_size(Kind.INT64, 7) == 8
    assert value_size(Kind.TIMESTAMP, T0) == 8
    assert value_size(Kind.BYTES, b"\x00\x01") == 4
    assert value_size(Kind.JSON, '{"a":1}') == 7
    assert value_size(Kind.STRING, None) == 0


def test_referenced_columns_only_whatever_the_limit_and_a_10_mib_minimum() -> None:
    data = {"events": rows(1, 1000)}
    m = model(Layout(), now=LONG_AGO)
    one = bill(m, "SELECT n FROM `p.d.events` LIMIT 1", data)
    assert one.bytes_processed == 8 * 1000  # LIMIT reads every row of the column
    assert one.bytes_billed == 10 * MIB
    both = bill(m, "SELECT n, ts FROM `p.d.events` WHERE k = 'x'", data)
    assert both.bytes_processed == 1000 * (8 + 8 + 6)  # k is read to filter
    star = bill(m, "SELECT * FROM `p.d.events`", data)
    assert star.bytes_processed == 1000 * (8 + 6 + 9 + 8)


def test_the_minimum_applies_per_table_and_bills_round_up_to_a_mib() -> None:
    big = [{"ts": T0, "k": "x" * (MIB - 2), "m": None, "n": 1} for _ in range(11)]
    m = model(Layout(), now=LONG_AGO)
    b = bill(m, "SELECT k FROM `p.d.events`", {"events": big})
    assert b.bytes_processed == 11 * MIB
    assert b.bytes_billed == 11 * MIB
    over = bill(m, "SELECT k, n FROM `p.d.events`", {"events": big})
    assert over.bytes_billed == 12 * MIB  # 11 MiB + 88 bytes rounds up
    join = bill(
        m,
        "SELECT e.n FROM `p.d.events` AS e JOIN `p.d.other` AS o ON e.k = o.k",
        {"events": rows(1, 10), "other": rows(1, 10)},
    )
    assert join.bytes_billed == 20 * MIB
    assert bill(m, "SELECT 1", {}).bytes_billed == 0


def test_partitions_prune_only_on_constant_filters_of_the_partition_column() -> None:
    data = {"events": rows(10, 100)}
    m = model(Layout(partition="ts"), now=LONG_AGO)
    everything = scanned(bill(m, "SELECT n FROM `p.d.events`", data))
    day = (
        "SELECT n FROM `p.d.events` WHERE ts >= TIMESTAMP_MICROS(@a) AND ts < TIMESTAMP_MICROS(@b)"
    )
    # One day's rows, of n and of ts (a column read to filter is billed too).
    assert everything == 1000 * 8
    assert scanned(bill(m, day, data, a=T0 + 3 * DAY, b=T0 + 4 * DAY)) == 100 * 16
    between = (
        "SELECT n FROM `p.d.events` WHERE ts BETWEEN TIMESTAMP_MICROS(@a) AND TIMESTAMP_MICROS(@b)"
    )
    assert scanned(bill(m, between, data, a=T0 + 3 * DAY, b=T0 + 4 * DAY - 1)) == 100 * 16
    # A subquery, or a comparison with another column, is not a constant.
    dynamic = "SELECT n FROM `p.d.events` WHERE ts >= (SELECT MAX(ts) FROM `p.d.other`)"
    assert max(n for _, n in bill(m, dynamic, {**data, "other": rows(1, 1)}).scans) == 1000 * 16
    assert scanned(bill(m, "SELECT n FROM `p.d.events` WHERE ts > TIMESTAMP_MICROS(n)", data)) == (
        1000 * 16
    )


def test_clustering_prunes_on_a_prefix_only() -> None:
    data = {"events": rows(1, 1000)}
    m = model(Layout(partition="ts", clustering=("k", "m")), now=LONG_AGO, block_rows=100)
    full = scanned(bill(m, "SELECT n FROM `p.d.events`", data))
    by_first = scanned(bill(m, "SELECT n FROM `p.d.events` WHERE k = @k", data, k="k005"))
    by_second = scanned(bill(m, "SELECT n FROM `p.d.events` WHERE m = @mid", data, mid="m000005"))
    # k005 holds ~10 rows, all in one block of 100 sorted by k.
    assert by_first <= 2 * 100 * (8 + 6)
    assert by_second == full + 1000 * 9  # m is read too, and nothing is pruned


def test_time_clustering_prunes_inside_a_day() -> None:
    data = {"events": rows(1, 1000)}
    m = model(Layout(partition="ts", clustering=("ts",)), now=LONG_AGO, block_rows=100)
    hour = (
        "SELECT n FROM `p.d.events` WHERE ts >= TIMESTAMP_MICROS(@a) AND ts < TIMESTAMP_MICROS(@b)"
    )
    # One hour of a day is ~42 rows: one block, or two where it straddles one.
    assert scanned(bill(m, hour, data, a=T0 + 60 * MINUTE, b=T0 + 120 * MINUTE)) <= 2 * 100 * 16


def test_a_bill_says_which_blocks_and_partitions_each_reference_read() -> None:
    # Ten days of 1,000 rows, each day cut into ten blocks of 100 sorted by ts: a day's
    # first hour reads one block of one partition; a filter on k, which the table is
    # not clustered by, one block of every partition (it prunes nothing).
    data = {"events": rows(10, 1000)}
    m = model(Layout(partition="ts", clustering=("ts",)), now=LONG_AGO, block_rows=100)
    hour = bill(m, RANGE, data, a=T0 + 3 * DAY, b=T0 + 3 * DAY + 60 * MINUTE)
    (reach,) = hour.reaches
    assert (reach.table, reach.blocks, reach.of_blocks) == ("events", 1, 100)
    assert (reach.partitions, reach.of_partitions) == (1, 10)
    (everything,) = bill(m, "SELECT n FROM `p.d.events` WHERE k = @k", data, k="k005").reaches
    assert (everything.blocks, everything.partitions) == (100, 10)
    # A self-join: one reach a reference.
    join = "SELECT a.n FROM `p.d.events` AS a JOIN `p.d.events` AS b ON a.m = b.m"
    assert [r.blocks for r in bill(m, join, data).reaches] == [100, 100]


def test_search_index_prunes_indexed_blocks_but_reads_rows_not_yet_indexed() -> None:
    data = {"events": rows(2, 1000)}
    layout = Layout(partition="ts", clustering=("ts",), search_index=frozenset({"m"}))
    settled = model(layout, now=LONG_AGO, block_rows=100)
    lookup = "SELECT n FROM `p.d.events` WHERE m IN UNNEST(@ids)"
    assert scanned(bill(settled, lookup, data, ids=["m000005", "m001500"])) == 2 * 100 * (9 + 8)
    # The last 30 minutes are write-optimized: one unclustered, unindexed
    # block, read by every query that reaches its partition.
    now = T0 + 2 * DAY
    fresh = model(layout, now=now, block_rows=100)
    recent = [r for r in data["events"] if r["ts"] >= now - 30 * MINUTE]
    assert len(recent) == 20
    assert scanned(bill(fresh, lookup, data, ids=["m000005"])) == 100 * 17 + len(recent) * 17
    not_indexed = model(Layout(partition="ts", clustering=("ts",)), now=LONG_AGO, block_rows=100)
    assert scanned(bill(not_indexed, lookup, data, ids=["m000005"])) == 2000 * 17


def test_row_weight_scales_bytes_and_block_sizes() -> None:
    data = {"events": rows(1, 1000)}
    layout = Layout(partition="ts", clustering=("ts",))
    plain = model(layout, now=LONG_AGO, block_rows=100)
    weighted = model(layout, now=LONG_AGO, block_rows=100 * 10, row_weight=10)
    query = "SELECT n FROM `p.d.events` WHERE ts < TIMESTAMP_MICROS(@b)"
    assert scanned(bill(weighted, query, data, b=T0 + 1)) == 10 * scanned(
        bill(plain, query, data, b=T0 + 1)
    )


def test_a_self_join_reads_the_table_once_per_reference() -> None:
    data = {"events": rows(1, 100)}
    m = model(Layout(), now=LONG_AGO)
    b = bill(
        m,
        "SELECT a.n FROM `p.d.events` AS a WHERE NOT EXISTS "
        "(SELECT 1 FROM `p.d.events` AS b WHERE b.m = a.m AND b.ts < a.ts)",
        data,
    )
    # a: n, and m and ts read by the correlated condition; b: m and ts.
    assert sorted(n for _, n in b.scans) == [100 * (9 + 8), 100 * (8 + 9 + 8)]
    assert b.bytes_billed == 10 * MIB


@pytest.mark.parametrize("limit", [10 * MIB - 1, 10 * MIB])
def test_maximum_bytes_billed_through_the_real_client(jobs_fake: Any, limit: int) -> None:
    from google.api_core.exceptions import BadRequest
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project="fake-project",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": jobs_fake.endpoint},
        default_job_creation_mode="JOB_CREATION_OPTIONAL",
    )
    config = bigquery.QueryJobConfig(maximum_bytes_billed=limit)
    sql = "SELECT message_id FROM `fake-project.recordline.records`"
    if limit < 10 * MIB:
        with pytest.raises(BadRequest) as refused:
            client.query_and_wait(sql, job_config=config)
        assert refused.value.errors[0]["reason"] == "bytesBilledLimitExceeded"
        assert "10485760 or higher required" in refused.value.message
    else:
        rows = client.query_and_wait(sql, job_config=config)
        assert rows.total_bytes_processed == 0
    assert jobs_fake.queries[-1].bill.bytes_billed == 10 * MIB


# A table with typed columns: `fields` a RECORD (one nested two levels deep, one
# repeated), `data` the same payload as JSON text.
ORDER_TYPE = (
    "STRUCT<amount NUMERIC, note STRING, "
    "buyer STRUCT<name STRING, address STRUCT<city STRING, zip STRING>>, "
    "lines ARRAY<STRUCT<sku STRING, qty INT64>>>"
)
ORDER_KINDS = {"orders": {"ts": Kind.TIMESTAMP, "data": Kind.JSON}}
ORDER_SCHEMA = {"p": {"d": {"orders": {"ts": "TIMESTAMP", "data": "JSON", "fields": ORDER_TYPE}}}}
NOTE = "n" * 100  # 102 bytes
CITY = "Lisboa"  # 8 bytes
ZIP = "1000-001"  # 10 bytes
NAME = "Ana"  # 5 bytes
LINES = [{"sku": "a", "qty": 1}, {"sku": "bb", "qty": 2}]  # sku 3 + 4, qty 8 + 8
# Every leaf of one row's `fields`: NUMERIC 16, note, name, city, zip, lines.
WHOLE = 16 + 102 + 5 + 8 + 10 + (3 + 8) + (4 + 8)


def orders(days: int, per_day: int) -> list[dict[str, Any]]:
    out = []
    for day in range(days):
        for i in range(per_day):
            fields = {
                "amount": f"{i}.50",
                "note": NOTE,
                "buyer": {"name": NAME, "address": {"city": CITY, "zip": ZIP}},
                "lines": LINES,
            }
            out.append({"ts": T0 + day * DAY + i, "data": '{"amount":"1.50"}', "fields": fields})
    return out


def order_bill(sql: str, data: list[dict[str, Any]], **params: Any) -> Bill:
    m = BillingModel(
        layouts={"orders": Layout(partition="ts")},
        kinds=ORDER_KINDS,
        clock=lambda: LONG_AGO / 1_000_000,
    )
    return m.bill(sql, params, lambda t: data if t == "orders" else [], ORDER_SCHEMA)


def test_one_leaf_of_a_record_bills_that_leaf_only() -> None:
    data = orders(1, 1000)
    leaf = order_bill("SELECT fields.amount FROM `p.d.orders`", data)
    whole = order_bill("SELECT fields FROM `p.d.orders`", data)
    # NUMERIC is 16 bytes, whatever its digits; the RECORD is every leaf.
    assert leaf.bytes_processed == 1000 * 16
    assert whole.bytes_processed == 1000 * WHOLE
    assert leaf.bytes_processed < whole.bytes_processed
    # Two leaves, the same one twice, and a leaf with its whole RECORD.
    two = order_bill("SELECT SUM(fields.amount), MAX(fields.note) FROM `p.d.orders`", data)
    assert two.bytes_processed == 1000 * (16 + 102)
    again = order_bill("SELECT fields.amount FROM `p.d.orders` WHERE fields.amount > 1", data)
    assert again.bytes_processed == 1000 * 16
    both = order_bill("SELECT fields, fields.amount FROM `p.d.orders`", data)
    assert both.bytes_processed == 1000 * WHOLE
    # The minimum per table still applies to a query of one small leaf.
    assert leaf.bytes_billed == 10 * MIB


def test_a_record_referenced_whole_bills_every_leaf() -> None:
    data = orders(1, 100)
    for sql in (
        "SELECT fields FROM `p.d.orders`",
        "SELECT o.fields FROM `p.d.orders` AS o",
        "SELECT fields.* FROM `p.d.orders`",
        "SELECT TO_JSON_STRING(fields) FROM `p.d.orders`",
    ):
        assert order_bill(sql, data).bytes_processed == 100 * WHOLE, sql
    star = order_bill("SELECT * FROM `p.d.orders`", data)
    assert star.bytes_processed == 100 * (8 + 17 + WHOLE)


def test_nested_leaves_bill_as_deep_as_the_query_names_them() -> None:
    data = orders(1, 100)
    city = order_bill("SELECT fields.buyer.address.city FROM `p.d.orders`", data)
    assert city.bytes_processed == 100 * 8
    address = order_bill("SELECT o.fields.buyer.address FROM `p.d.orders` AS o", data)
    assert address.bytes_processed == 100 * (8 + 10)
    buyer = order_bill("SELECT fields.buyer FROM `p.d.orders`", data)
    assert buyer.bytes_processed == 100 * (5 + 8 + 10)
    # A leaf of a repeated RECORD: that leaf of every element, whichever is picked.
    qty = order_bill("SELECT fields.lines[OFFSET(1)].qty FROM `p.d.orders`", data)
    assert qty.bytes_processed == 100 * (8 + 8)
    lines = order_bill("SELECT ARRAY_LENGTH(fields.lines) FROM `p.d.orders`", data)
    assert lines.bytes_processed == 100 * (3 + 8 + 4 + 8)


def test_a_leaf_of_a_record_is_pruned_by_partition_like_any_column() -> None:
    data = orders(10, 100)
    sql = (
        "SELECT SUM(fields.amount) FROM `p.d.orders` "
        "WHERE ts >= TIMESTAMP_MICROS(@a) AND ts < TIMESTAMP_MICROS(@b)"
    )
    week = order_bill(sql, data, a=T0 + 2 * DAY, b=T0 + 9 * DAY)
    # Seven days of the leaf, and of `ts` read to filter.
    assert week.bytes_processed == 7 * 100 * (16 + 8)
    json = order_bill(
        "SELECT SUM(CAST(JSON_VALUE(data, '$.amount') AS NUMERIC)) FROM `p.d.orders` "
        "WHERE ts >= TIMESTAMP_MICROS(@a) AND ts < TIMESTAMP_MICROS(@b)",
        data,
        a=T0 + 2 * DAY,
        b=T0 + 9 * DAY,
    )
    assert json.bytes_processed == 7 * 100 * (17 + 8)


def test_the_jobs_fake_bills_typed_leaves_through_the_real_client(jobs_fake: Any) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    from app.records import Record, columns

    table = "projects/fake-project/datasets/recordline/tables/records"
    own = [{"name": c.name, "type": c.kind.value, "mode": "NULLABLE"} for c in columns(Record)]
    typed = {
        "name": "fields",
        "type": "RECORD",
        "mode": "NULLABLE",
        "fields": [
            {"name": "amount", "type": "NUMERIC", "mode": "NULLABLE"},
            {"name": "note", "type": "STRING", "mode": "NULLABLE"},
        ],
    }
    jobs_fake.write.define(table, [*own, typed])
    row = {c.name: None for c in columns(Record)}
    jobs_fake.write.tables[table] = [
        {**row, "message_id": f"m{n}", "ingest_time": T0 + n, "id": f"o{n}", "data": "{}"}
        | {"fields": {"amount": "1.25", "note": NOTE}}
        for n in range(100)
    ]
    client = bigquery.Client(
        project="fake-project",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": jobs_fake.endpoint},
        default_job_creation_mode="JOB_CREATION_OPTIONAL",
    )
    records = "`fake-project.recordline.records`"
    leaf = client.query_and_wait(f"SELECT SUM(fields.amount) FROM {records}")
    # (The fake answers a DECIMAL as its text.)
    assert [Decimal(r[0]) for r in leaf] == [Decimal(125)]
    assert leaf.total_bytes_processed == 100 * 16
    whole = client.query_and_wait(f"SELECT fields FROM {records}")
    assert whole.total_bytes_processed == 100 * (16 + 102)


# -- partitions by another column than the write time --------------------------------

EVENTS = "SELECT n FROM `p.d.events` WHERE k >= 'k' AND m >= ''"


def _events(stamps: list[int | None], *, written: int) -> list[dict[str, Any]]:
    """Rows partitioned by `ts`, each written (its ingest_time) at `written`."""
    return [
        {"ts": ts, "k": f"k{i:03}", "m": f"m{i:06}", "n": i, "ingest_time": written}
        for i, ts in enumerate(stamps)
    ]


def test_month_and_year_partitions_prune_by_their_whole_unit() -> None:
    data = {"events": rows(90, 10)}  # 2024-04-27 to 2024-07-25
    one_day = {"a": T0 + 40 * DAY, "b": T0 + 41 * DAY}  # 2024-06-06
    by_day = bill(model(Layout(partition="ts"), now=LONG_AGO), RANGE, data, **one_day)
    by_month = bill(
        model(Layout(partition="ts", granularity="MONTH"), now=LONG_AGO), RANGE, data, **one_day
    )
    by_year = bill(
        model(Layout(partition="ts", granularity="YEAR"), now=LONG_AGO), RANGE, data, **one_day
    )
    assert scanned(by_day) == 10 * 16  # ts and n of its day
    assert scanned(by_month) == 30 * 10 * 16  # the whole of June
    assert scanned(by_year) == 90 * 10 * 16  # every row is in 2024


def test_null_and_out_of_range_times_have_partitions_of_their_own() -> None:
    # BigQuery keeps a NULL partitioning value in __NULL__ and one before 1960 or from
    # 2160 on in __UNPARTITIONED__: no row is refused for its time.
    year_1900 = -2_208_988_800_000_000
    year_2500 = 16_725_225_600_000_000
    stamps = [T0, T0 + 1, None, None, year_1900, year_2500]
    data = {"events": _events(stamps, written=T0)}
    m = model(Layout(partition="ts"), now=LONG_AGO)
    storage = m.storage("events", data["events"])
    assert sorted(str(b.partition) for b in storage) == [
        str(T0),
        "__NULL__",
        "__UNPARTITIONED__",
    ]
    # A day's filter reads its day: neither NULLs nor times out of range.
    day = bill(m, RANGE, data, a=T0, b=T0 + DAY)
    assert scanned(day) == 2 * 16
    # A filter reaching back before 1960 reads __UNPARTITIONED__ too, never __NULL__.
    since_1800 = bill(m, RANGE, data, a=year_1900 - DAY, b=T0 + DAY)
    assert scanned(since_1800) == 4 * 16  # its day, and both rows out of range
    # No filter on the column reads every partition.
    assert scanned(bill(m, EVENTS, data)) == 6 * (8 + 6 + 9)  # n, k, m


def test_recent_rows_are_write_optimized_by_when_they_were_written_not_their_partition() -> None:
    # Rows written a minute ago about events of three days: each sits unclustered in its
    # event's partition, whatever the partition's date, until BigQuery reorganises it.
    now = T0 + 10 * DAY
    stamps = [T0 + d * DAY + i for d in range(3) for i in range(50)]
    data = {"events": _events(stamps, written=now - MINUTE)}
    m = model(Layout(partition="ts", clustering=("k",)), now=now, block_rows=10)
    assert [b.clustered for b in m.storage("events", data["events"])] == [False] * 3
    later = model(Layout(partition="ts", clustering=("k",)), now=now + DAY, block_rows=10)
    assert all(b.clustered for b in later.storage("events", data["events"]))


def test_a_date_partition_prunes_by_days() -> None:
    layout = Layout(partition="d", partition_type="DATE", granularity="MONTH")
    kinds = {"orders": {"d": Kind.INT64, "n": Kind.INT64}}
    m = BillingModel(layouts={"orders": layout}, kinds=kinds, clock=lambda: LONG_AGO / 1e6)
    # Days since the epoch, as the write fake keeps a DATE: 2024-04-27 + 0..59 days.
    data = [{"d": 19_840 + i, "n": i} for i in range(60)]
    sql = "SELECT n FROM `p.d.orders` WHERE d = DATE '2024-05-03'"
    schema = {"p": {"d": {"orders": {"d": "DATE", "n": "INT64"}}}}
    found = m.bill(sql, {}, lambda _: data, schema)
    assert sum(n for _, n in found.scans) == 31 * 16  # May: its days' d and n

"""A system's layout of `records` (layouts.tf): partitioned by ingest time (the default,
as before), by the event's own time or by a typed DATE or TIMESTAMP field; clustered by up
to four columns, an attribute or a typed field through a top-level copy; and refused at
plan time, with the reason, where BigQuery could not have it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from app.cli import typed_columns_file
from app.records import Kind, Record, columns
from tests.bigquery.fake_jobs import DEFAULT_LAYOUT, LAYOUTS
from tests.infra.test_fleet import _module, _root_console
from tests.infra.test_terraform import MODULE, TERRAFORM, _load

# A JSON topic's declared schema with a field of each kind a layout meets.
ORDERS = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "placed_on", "type": {"type": "int", "logicalType": "date"}},
        {
            "name": "meta",
            "type": {
                "type": "record",
                "name": "Meta",
                "fields": [
                    {
                        "name": "created_at",
                        "type": {"type": "long", "logicalType": "timestamp-micros"},
                    }
                ],
            },
        },
        {"name": "weight", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "amount", "type": "long"},
    ],
}


def _files() -> tuple[tuple[str, bytes], ...]:
    """The schema file and its typed columns file, at the paths a system names them."""
    definition = json.dumps(ORDERS).encode()
    with tempfile.TemporaryDirectory() as work:
        source = Path(work, "orders.avsc")
        source.write_bytes(definition)
        generated = typed_columns_file(source, "AVRO")
    return (
        ("schemas/orders.avsc", definition),
        ("schemas/orders.avsc.bigquery.json", generated.encode()),
    )


def _system(layout: str, *, schema: bool = True) -> str:
    declared = 'json_schema = "schemas/orders.avsc", ' if schema else ""
    return f"{{ recordline = {{ {declared}layout = {layout} }} }}"


def _problems(layout: str, *, schema: bool = True, retention: int = 0) -> list[str]:
    found = _root_console(
        "local.layout_problems",
        _system(layout, schema=schema),
        (("retention_days", str(retention)),),
        _files(),
    )
    problems: list[str] = found["recordline"]
    return problems


def _layout(layout: str) -> dict[str, Any]:
    found = _root_console("local.layouts", _system(layout), (("retention_days", "0"),), _files())
    chosen: dict[str, Any] = found["recordline"]
    return chosen


def test_without_a_layout_records_is_laid_out_as_before() -> None:
    assert _root_console("local.layouts", "{}") == {
        "recordline": {
            "partition": "ingest_time",
            "granularity": "DAY",
            "clustering": ["ingest_time"],
            "columns": {},
            "pages_read_whole_partitions": False,
        }
    }
    assert _root_console("local.layout_problems", "{}") == {"recordline": []}


def test_an_event_time_layout_with_copies_of_an_attribute_and_typed_fields() -> None:
    layout = """{
      partition  = "timestamp"
      clustering = ["ingest_time", "customer", "placed_on", "id"]
      columns    = {
        customer  = "attributes.customer"
        placed_on = "fields.placed_on"
        created   = "fields.meta.created_at"
      }
    }"""
    assert _problems(layout) == []
    chosen = _layout(layout)
    assert chosen["partition"] == "timestamp"
    assert chosen["granularity"] == "DAY"
    assert chosen["clustering"] == ["ingest_time", "customer", "placed_on", "id"]
    # Each copy has its source's type: an attribute is a STRING, a field its own.
    assert chosen["columns"] == {
        "customer": {"source": "attributes.customer", "type": "STRING"},
        "placed_on": {"source": "fields.placed_on", "type": "DATE"},
        "created": {"source": "fields.meta.created_at", "type": "TIMESTAMP"},
    }


def test_a_typed_date_or_timestamp_partitions_by_month_or_year() -> None:
    for field, unit in (("placed_on", "MONTH"), ("meta.created_at", "YEAR")):
        copies = f'{{ day = "fields.{field}" }}'
        layout = f'{{ partition = "day", granularity = "{unit}", columns = {copies} }}'
        assert _problems(layout) == []


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        (
            '{ partition = "placed" }',
            "partition is placed, which records does not have (ingest_time, timestamp, "
            "publish_time, or a name of layout.columns)",
        ),
        (
            '{ partition = "customer", columns = { customer = "attributes.customer" } }',
            "partition is customer, a STRING column: a table is partitioned by time only by "
            "a DATE or TIMESTAMP column",
        ),
        (
            '{ partition = "id" }',
            "partition is id, a STRING column: a table is partitioned by time only by a DATE "
            "or TIMESTAMP column",
        ),
        (
            '{ clustering = ["ingest_time", "id", "timestamp", "message_id", "publish_time"] }',
            "clustering names 5 columns, and BigQuery clusters a table by at most four",
        ),
        (
            '{ clustering = ["ingest_time", "customer"] }',
            "clustering names customer, which records does not have (one of its columns "
            "delivery_attempt, id, ingest_time, message_id, publish_time, schema, "
            "subscription, timestamp, trace_id, or a name of layout.columns)",
        ),
        (
            '{ clustering = ["ingest_time", "data"] }',
            "clustering names data, which records does not have (one of its columns "
            "delivery_attempt, id, ingest_time, message_id, publish_time, schema, "
            "subscription, timestamp, trace_id, or a name of layout.columns)",
        ),
        (
            '{ columns = { weight = "fields.weight" } }',
            "columns.weight copies fields.weight, a FLOAT64 field, which BigQuery can "
            "neither partition nor cluster by",
        ),
        (
            '{ columns = { tags = "fields.tags" } }',
            "columns.tags copies fields.tags, a REPEATED field, which BigQuery can neither "
            "partition nor cluster by",
        ),
        (
            '{ columns = { shipped = "fields.shipped_on" } }',
            "columns.shipped copies fields.shipped_on, and the system's schema makes no "
            "typed field shipped_on (it has amount, customer_id, meta, meta.created_at, "
            "placed_on, tags, weight)",
        ),
        (
            '{ columns = { region = "data.region" } }',
            "columns.region copies data.region, which is neither attributes.KEY nor fields.PATH",
        ),
        (
            '{ columns = { Timestamp = "attributes.at" } }',
            "columns.Timestamp takes the name of a column of the service's own",
        ),
        (
            '{ columns = { "order-day" = "attributes.day" } }',
            "columns.order-day is no column name a copy can have: letters, digits and _, not "
            "a digit first, at most 300, not starting with _TABLE_, _FILE_ or _PARTITION",
        ),
        ('{ granularity = "WEEK" }', "granularity is WEEK, not DAY, MONTH or YEAR"),
        ('{ clustering = ["ingest_time", "ingest_time"] }', "clustering names a column twice"),
    ],
)
def test_a_layout_bigquery_could_not_have_is_refused_with_its_reason(
    layout: str, reason: str
) -> None:
    assert _problems(layout) == [reason]


def test_clustering_by_a_copy_of_the_wrong_type_says_both() -> None:
    layout = '{ clustering = ["ingest_time", "weight"], columns = { weight = "fields.weight" } }'
    assert _problems(layout) == [
        "clustering names weight, a FLOAT64 column: BigQuery clusters by top-level columns "
        "of type STRING, INT64, NUMERIC, BIGNUMERIC, BOOL, DATE, DATETIME, TIMESTAMP only",
        "columns.weight copies fields.weight, a FLOAT64 field, which BigQuery can neither "
        "partition nor cluster by",
    ]


def test_a_typed_field_needs_the_systems_schema() -> None:
    assert _problems('{ columns = { customer = "fields.customer_id" } }', schema=False) == [
        "columns.customer copies fields.customer_id, and the system's schema makes no typed "
        "field customer_id (it has no typed columns)"
    ]


def test_partitions_that_expire_by_an_events_own_time_are_refused() -> None:
    # An event older than the retention would land in a partition already expired.
    assert _problems('{ partition = "timestamp" }', retention=30) == [
        "partition is timestamp while retention_days is 30: partitions expire by their "
        "column's date, so an event older than that would be deleted as it landed; keep "
        "rows forever (retention_days = 0) or partition by ingest_time"
    ]
    assert _problems('{ clustering = ["ingest_time", "id"] }', retention=30) == []


def test_the_plan_stops_at_any_systems_problem_and_the_table_takes_the_layout() -> None:
    (data,) = [
        block["terraform_data"]["limits"]
        for block in _load(TERRAFORM / "limits.tf")["resource"]
        if "terraform_data" in block
    ]
    (check,) = [
        c for c in data["lifecycle"][0]["precondition"] if "layout_problems" in c["condition"]
    ]
    assert check["condition"] == "${length(flatten(values(local.layout_problems))) == 0}"
    assert "local.layout_problems" in check["error_message"]
    assert _module()["layout"] == "${local.layouts[each.key]}"
    tables = {
        name: table
        for block in _load(MODULE / "bigquery.tf")["resource"]
        for name, table in block.get("google_bigquery_table", {}).items()
    }
    records = tables["records"]
    assert records["clustering"] == "${var.layout.clustering}"
    (partitioning,) = records["time_partitioning"]
    assert partitioning["field"] == "${var.layout.partition}"
    assert partitioning["type"] == "${var.layout.granularity}"
    # Only partitions of ingest time expire (the plan refuses retention with others).
    assert partitioning["expiration_ms"] == (
        '${var.layout.partition == "ingest_time" ? local.partition_expiration_ms : null}'
    )
    # rejected keeps its ingest-time layout: the read API's alone reads it.
    assert tables["rejected"]["clustering"] == ["ingest_time"]


def test_the_fakes_default_layout_is_terraforms() -> None:
    (default,) = _root_console("local.layouts", "{}").values()
    assert default["partition"] == DEFAULT_LAYOUT.partition
    assert tuple(default["clustering"]) == DEFAULT_LAYOUT.clustering
    assert default["granularity"] == DEFAULT_LAYOUT.granularity
    records = LAYOUTS["records"]
    assert records == dataclasses.replace(DEFAULT_LAYOUT, search_index=records.search_index)


def test_the_service_columns_a_layout_may_name_are_a_records_own() -> None:
    named = _root_console("local.layout_service_columns", "{}")
    own = {
        c.name: c.kind.value
        for c in columns(Record)
        if c.kind is not Kind.JSON and c.kind is not Kind.BYTES
    }
    assert named == own


def test_records_is_created_with_each_copy_last_naming_its_source() -> None:
    from tests.infra.test_typed_columns import _records_schema

    copies = {
        "customer": {"source": "attributes.customer", "type": "STRING"},
        "placed_on": {"source": "fields.placed_on", "type": "DATE"},
    }
    schema = _records_schema(None, copies)
    assert schema[: -len(copies)] == _records_schema(None)
    assert schema[-2:] == [
        {
            "name": "customer",
            "type": "STRING",
            "mode": "NULLABLE",
            "description": "Recordline layout copy of attributes.customer",
        },
        {
            "name": "placed_on",
            "type": "DATE",
            "mode": "NULLABLE",
            "description": "Recordline layout copy of fields.placed_on",
        },
    ]
    # The service knows each by its description, and writes it.
    from google.cloud import bigquery

    from app.store.bigquery.layout import Copy, copy_of

    found = [copy_of(bigquery.SchemaField.from_api_repr(c)) for c in schema[-2:]]
    assert found == [
        Copy("customer", "customer", (), "STRING"),
        Copy("placed_on", None, ("placed_on",), "DATE"),
    ]


def test_a_delete_marker_is_a_field_path_and_a_value_sql_can_quote() -> None:
    from tests.infra.test_fleet import _root_console_run

    good = '{ recordline = { delete_marker = { field = "meta.op", value = "delete" } } }'
    assert _root_console("var.systems.recordline.delete_marker", good) == {
        "field": "meta.op",
        "value": "delete",
    }
    for bad in ('{ field = "op", value = "it\'s" }', '{ field = "a..b", value = "x" }'):
        run = _root_console_run("var.systems", f"{{ recordline = {{ delete_marker = {bad} }} }}")
        assert "A delete_marker's field is a field path" in " ".join(run.stderr.split())
    assert _module()["delete_marker"] == "${each.value.delete_marker}"


def test_a_clustering_not_led_by_ingest_time_is_meant_or_refused() -> None:
    # The read API's pages scan ranges of ingest_time: clustered first by a customer,
    # each reads whole partitions (docs/layouts.md), which a layout must say it means.
    customer = (
        '{ clustering = ["customer", "ingest_time"], '
        'columns = { customer = "attributes.customer" }%s }'
    )
    assert _problems(customer % "") == [
        "clustering starts with customer, not ingest_time, so the read API's pages, which "
        "scan ranges of ingest_time, would read whole partitions, every column "
        "(docs/layouts.md#the-read-api-on-each-layout): cluster by ingest_time first, or set "
        "pages_read_whole_partitions = true to mean it"
    ]
    assert _problems(customer % ", pages_read_whole_partitions = true") == []
    assert _problems("{ clustering = [] }") == [
        "clustering starts with nothing, not ingest_time, so the read API's pages, which "
        "scan ranges of ingest_time, would read whole partitions, every column "
        "(docs/layouts.md#the-read-api-on-each-layout): cluster by ingest_time first, or set "
        "pages_read_whole_partitions = true to mean it"
    ]


# --- tables of a system's own (records_NAME), filled hourly (fill.tf) ------------------


def _tables_of(tables: str, *, retention: int = 0) -> tuple[list[str], dict[str, Any]]:
    """The system's problems and its tables as the cell passes them to the module."""
    system = f'{{ recordline = {{ json_schema = "schemas/orders.avsc", tables = {tables} }} }}'
    found = _root_console(
        "{ problems = local.layout_problems, tables = local.tables }",
        system,
        (("retention_days", str(retention)),),
        _files(),
    )
    return found["problems"]["recordline"], found["tables"]["recordline"]


def test_a_table_of_its_own_is_laid_out_and_refused_as_a_layout_is() -> None:
    tables = """{
      by_customer = {
        clustering = ["customer", "ingest_time"]
        columns    = { customer = "attributes.customer" }
      }
      by_event    = { partition = "timestamp", granularity = "MONTH", clustering = ["placed"] }
    }"""
    problems, chosen = _tables_of(tables)
    # The same checks and reasons as `layout`'s, each after its table's name; no page of
    # the read API reads a table of its own, so its clustering may lead with a customer.
    assert problems == [
        "tables.by_event: clustering names placed, which records does not have (one of its "
        "columns delivery_attempt, id, ingest_time, message_id, publish_time, schema, "
        "subscription, timestamp, trace_id, or a name of tables.by_event.columns)"
    ]
    assert chosen["by_customer"] == {
        "partition": "ingest_time",
        "granularity": "DAY",
        "clustering": ["customer", "ingest_time"],
        "columns": {"customer": {"source": "attributes.customer", "type": "STRING"}},
    }
    assert chosen["by_event"]["granularity"] == "MONTH"
    # Retention is refused with an event-time table as with an event-time `records`.
    problems, _ = _tables_of('{ by_event = { partition = "timestamp" } }', retention=30)
    assert problems == [
        "tables.by_event: partition is timestamp while retention_days is 30: partitions "
        "expire by their column's date, so an event older than that would be deleted as it "
        "landed; keep rows forever (retention_days = 0) or partition by ingest_time"
    ]


def test_at_most_four_tables_each_named_as_bigquery_and_the_fill_take_it() -> None:
    five = "{ " + ", ".join(f"t{i} = {{}}" for i in range(5)) + " }"
    problems, _ = _tables_of(five)
    assert problems == [
        "tables declares 5 tables, and a system has at most four of its own: each holds "
        "every row again, filled and stored"
    ]
    problems, _ = _tables_of('{ "By-Customer" = {} }')
    assert problems == [
        "tables.By-Customer is no table name: 1 to 30 lower-case letters, digits and _, a "
        "letter first (the table is records_By-Customer)"
    ]
    assert _tables_of("{}") == ([], {})


def test_a_table_of_its_own_is_records_columns_then_its_copies_kept_and_filled() -> None:
    from tests.infra.test_typed_columns import _records_schema

    copies = {"customer": {"source": "attributes.customer", "type": "STRING"}}
    # records' own columns as Terraform creates records, then the table's copies, which
    # the fill knows by their description (app/store/bigquery/layout.py).
    schema = _records_schema(None, {"other": copies["customer"]}, table=("by_customer", copies))
    assert schema == [
        *_records_schema(None),
        {
            "name": "customer",
            "type": "STRING",
            "mode": "NULLABLE",
            "description": "Recordline layout copy of attributes.customer",
        },
    ]
    tables = {
        name: table
        for block in _load(MODULE / "bigquery.tf")["resource"]
        for name, table in block.get("google_bigquery_table", {}).items()
    }
    filled = tables["filled"]
    assert filled["table_id"] == "records_${each.key}"
    # The label the fill looks for (app/store/bigquery/fill.py).
    from app.store.bigquery.fill import FILL_LABEL, FILL_SOURCE, FILLED_THROUGH

    assert filled["labels"] == {FILL_LABEL: FILL_SOURCE}
    (partitioning,) = filled["time_partitioning"]
    assert partitioning["field"] == "${each.value.partition}"
    assert filled["clustering"] == "${each.value.clustering}"
    # What the fill changes (the schema it widens, its hint) no plan changes back.
    assert filled["lifecycle"] == [
        {"prevent_destroy": True, "ignore_changes": ["schema", f'${{labels["{FILLED_THROUGH}"]}}']}
    ]
    assert _module()["tables"] == "${local.tables[each.key]}"


def test_a_tables_copy_of_an_attribute_no_jsonpath_names_is_refused() -> None:
    """The fill reads an attribute by a quoted JSONPath member, which escapes nothing:
    `a"."b` would be read as member b of member a, and a control character would make
    every day's job refused (app/store/bigquery/fill.py copy_sql). `records`' own copies
    are written by the service from the key itself, and may hold them."""
    problems, _ = _tables_of(
        r'{ by_quote = { columns = { c = "attributes.a\".\"b", d = "attributes.it\u0027s.ok" } } }'
    )
    assert problems == [
        'tables.by_quote: columns.c copies attributes.a"."b, a key holding ", \\ or a control '
        "character, which the fill's JSONPath cannot name"
    ]
    problems, _ = _tables_of(r'{ by_slash = { columns = { c = "attributes.a\\b" } } }')
    assert len(problems) == 1
    assert _problems(r'{ columns = { c = "attributes.a\".\"b" } }') == []


def test_a_table_named_as_a_function_of_the_dataset_is_refused() -> None:
    """records_unique and records_latest are the dataset's table functions (modules/system
    /bigquery.tf): a table of the same name beside them is refused."""
    problems, _ = _tables_of("{ unique = {}, latest = {} }")
    assert problems == [
        "tables.latest is records_latest, the name of the dataset's table function: name it "
        "otherwise",
        "tables.unique is records_unique, the name of the dataset's table function: name it "
        "otherwise",
    ]

"""records_unique(since, until), the table function Terraform gives analysts: its body,
as Terraform renders it, run on the BigQuery fakes.

The jobs.query fake runs SQL, not routines, so the function's body is run as a query
with its two arguments bound as query parameters (BigQuery treats a function's
arguments as constants when it prunes, as it does parameters). Against rows with
copies of every kind it answers what the service's own pages answer over the same
range; on a month of rows its bill stays within the partitions of the range and the
dedupe window before it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from app.records import CLOCK_SKEW_MICROS, Record, columns
from app.settings import QuerySettings
from app.store import PageQuery
from tests.bigquery.billing import MIB, BillingModel, value_size
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import DAY, NOW, SECOND, make_stream
from tests.infra.console import console, require_terraform
from tests.infra.test_terraform import MODULE, _evaluate, _expression, _resources

RECORDS = f"projects/{PROJECT}/datasets/{DATASET}/tables/records"
QUERIES = f"/bigquery/v2/projects/{PROJECT}/queries"
HOUR = 3600 * SECOND


@cache
def routine_body(window_seconds: float) -> str:
    """The routine's definition_body as Terraform renders it for a system whose service
    runs with this dedupe window, in PROJECT.DATASET."""
    return rendered_routine("records_unique", f"  dedupe_window_seconds = {window_seconds}\n")


def rendered_routine(
    name: str, more_locals: str = "", variables: dict[str, str] | None = None
) -> str:
    """A routine's definition_body as Terraform renders it in PROJECT.DATASET, with
    `more_locals` (HCL lines) and `variables` (name: HCL value) it reads."""
    require_terraform()
    expression = _expression(_resources("google_bigquery_routine")[name]["definition_body"])
    for reference, local in {
        "var.project_id": "local.project_id",
        "google_bigquery_dataset.recordline.dataset_id": "local.dataset_id",
        "google_bigquery_table.records.table_id": "local.records_table_id",
    }.items():
        expression = expression.replace(reference, local)
    variables = variables or {}
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(MODULE / "sql", Path(work, "sql"))
        Path(work, "main.tf").write_text(
            "".join(f'variable "{v}" {{\n  type = any\n}}\n' for v in variables) + "locals {\n"
            f'  project_id = "{PROJECT}"\n'
            f'  dataset_id = "{DATASET}"\n'
            '  records_table_id = "records"\n'
            f"{more_locals}"
            "}\n"
        )
        Path(work, "values.tfvars").write_text(
            "".join(f"{v} = {x}\n" for v, x in variables.items())
        )
        return str(console(work, expression, var_file="values.tfvars"))


def callable_sql(body: str, select: str = "u.*") -> str:
    """A call of the function as a query: `SELECT <select> FROM (<body>) AS u`, its
    arguments `since` and `until` bound to the INT64 µs parameters @since and @until."""
    tree = sqlglot.parse_one(body, read="bigquery")

    def bind(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and not node.table and node.name in ("since", "until"):
            return sqlglot.parse_one(f"TIMESTAMP_MICROS(@{node.name})", read="bigquery")
        return node

    bound = tree.transform(bind).sql("bigquery")
    return f"SELECT {select} FROM ({bound}) AS u"


def query(jobs: FakeBigQueryJobs, sql: str, since: int, until: int) -> dict[str, Any]:
    status, answer = jobs.handle(
        QUERIES,
        {
            "query": sql,
            "useLegacySql": False,
            "parameterMode": "NAMED",
            "queryParameters": [
                {"name": n, "parameterType": {"type": "INT64"}, "parameterValue": {"value": str(v)}}
                for n, v in (("since", since), ("until", until))
            ],
        },
    )
    assert status == 200, answer
    return answer


# --- the function as written ------------------------------------------------------------------


@pytest.mark.slow
def test_the_function_takes_two_timestamps_and_its_columns_from_the_table() -> None:
    routine = _resources("google_bigquery_routine")["records_unique"]
    assert routine["routine_type"] == "TABLE_VALUED_FUNCTION"
    assert routine["language"] == "SQL"
    assert routine["dataset_id"] == "${google_bigquery_dataset.recordline.dataset_id}"
    types = [(a["name"], _evaluate(_expression(a["data_type"]))) for a in routine["arguments"]]
    assert [(name, json.loads(rendered)) for name, rendered in types] == [
        ("since", {"typeKind": "TIMESTAMP"}),
        ("until", {"typeKind": "TIMESTAMP"}),
    ]
    # Inferred at query time: a column added to records is returned without a change.
    assert "return_table_type" not in routine
    assert "serving tier" in routine["description"]
    # Its clock margin is the service's.
    assert f"clock_skew_micros = {CLOCK_SKEW_MICROS}" in routine["definition_body"]


def test_its_only_free_names_are_its_arguments() -> None:
    # A name that is both an argument and a column is read as the column
    # (https://cloud.google.com/bigquery/docs/table-functions, "Parameter names"): every
    # column is qualified, and no column of records is called since or until.
    tree = sqlglot.parse_one(routine_body(604_800), read="bigquery")
    free = {
        c.name
        for c in tree.find_all(exp.Column)
        if not c.table and c.find_ancestor(exp.Star) is None  # not `* EXCEPT (name)`
    }
    assert free == {"since", "until"}
    assert not {"since", "until"} & {c.name for c in columns(Record)}


@pytest.mark.parametrize(
    ("window", "micros"), [(604_800, 604_800_000_000), (3_600.5, 3_600_500_000)]
)
def test_it_looks_back_the_window_the_service_reads_with(window: float, micros: int) -> None:
    body = routine_body(window)
    assert f"INTERVAL {micros} MICROSECOND" in body
    assert f"`{PROJECT}.{DATASET}.records`" in body


# --- what it answers ---------------------------------------------------------------------------

SINCE = 1_714_176_000_000_000 + 6 * HOUR  # 2024-04-27T06:00:00Z
UNTIL = SINCE + 12 * HOUR
WINDOW = 86_400  # a day: the cases below sit on both sides of it


def row(message_id: str, ingest: int, publish: int | None = None, **fields: Any) -> dict[str, Any]:
    """A records row as the write fake stores it (TIMESTAMP as µs, JSON as text)."""
    return {
        "message_id": message_id,
        "publish_time": ingest - SECOND if publish is None else publish,
        "ingest_time": ingest,
        "id": f"id-{message_id}",
        "timestamp": None,
        "data": json.dumps({"m": message_id}),
        "attributes": "{}",
        "subscription": "projects/p/subscriptions/records-push",
        "delivery_attempt": 1,
        "trace_id": f"{ingest:032x}",
        "schema": None,
        **fields,
    }


def copies() -> list[dict[str, Any]]:
    return [
        # A redelivery within the range: the first copy only.
        row("a", SINCE + HOUR),
        row("a", SINCE + HOUR + 2 * SECOND, publish=SINCE + HOUR - SECOND),
        # Its first copy before the range, within the window: none in the range.
        row("b", SINCE - 2 * HOUR),
        row("b", SINCE + 3 * HOUR, publish=SINCE - 2 * HOUR - SECOND),
        # Its first copy before the window: a different message as far as reads go.
        row("c", SINCE - 2 * DAY),
        row("c", SINCE + HOUR, publish=SINCE - 2 * DAY - SECOND),
        # An id used again by a message published after the first was stored.
        row("d", SINCE + HOUR),
        row("d", SINCE + 5 * HOUR + SECOND, publish=SINCE + 5 * HOUR),
        # The range's bounds: since is in it, until is not.
        row("e", SINCE),
        row("f", UNTIL - 1),
        row("g", UNTIL),
        # A copy stored after the range does not hide the one in it.
        row("h", SINCE + 2 * HOUR),
        row("h", UNTIL + HOUR, publish=SINCE + 2 * HOUR - SECOND),
        # A resent batch: copies at the same instant, byte for byte but the subscription.
        row("i", SINCE + 6 * HOUR, subscription="projects/p/subscriptions/a"),
        row("i", SINCE + 6 * HOUR, subscription="projects/p/subscriptions/b"),
    ]


def first_copies(
    rows: list[dict[str, Any]], since: int, until: int, window: int
) -> set[tuple[str, int]]:
    """The rule, stated plainly: a row in the range is shown unless another copy of its
    message comes before it in (ingest, publish, trace, subscription) order and lies
    within its look-back (after its publish time less the margin, within the window)."""

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["ingest_time"], r["publish_time"], r["trace_id"], r["subscription"])

    shown = set()
    for r in rows:
        if not since <= r["ingest_time"] < until:
            continue
        look_back = max(r["publish_time"] - CLOCK_SKEW_MICROS, r["ingest_time"] - window * SECOND)
        earlier = [
            e
            for e in rows
            if e["message_id"] == r["message_id"]
            and key(e) < key(r)
            and e["ingest_time"] >= look_back
        ]
        if not earlier:
            shown.add((r["message_id"], r["ingest_time"]))
    return shown


@pytest.mark.slow
async def test_it_answers_the_first_copies_the_services_pages_answer(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_store: Callable[..., Any],
) -> None:
    write_fake.tables[RECORDS] = copies()
    answer = query(
        jobs_fake,
        callable_sql(routine_body(WINDOW), "u.message_id, UNIX_MICROS(u.ingest_time)"),
        SINCE,
        UNTIL,
    )
    found = {(r["f"][0]["v"], int(r["f"][1]["v"])) for r in answer.get("rows", [])}
    expected = first_copies(copies(), SINCE, UNTIL, WINDOW)
    assert found == expected
    assert {m for m, _ in found} == {"a", "c", "d", "e", "f", "h", "i"}
    assert len(found) == 8  # d twice: two messages under one id
    # The service's own pages over the same range, as a follower walks them.
    store = await make_store(QuerySettings(dedupe_window_seconds=WINDOW))
    paged: set[tuple[str, int]] = set()
    after = (SINCE, "")
    while after < (UNTIL, ""):
        page = await store.page(
            Record,
            PageQuery(after_time=after[0], after_message_id=after[1], before_time=UNTIL, limit=3),
        )
        paged |= {(r.message_id, r.ingest_time) for r in page.rows}
        after = (page.after_time, page.after_message_id)
    assert paged == found


def sequence(producer: str, epoch: int, number: int) -> str:
    return json.dumps(
        {
            "recordline-producer": producer,
            "recordline-epoch": str(epoch),
            "recordline-seq": str(number),
        }
    )


def producer_copies() -> list[dict[str, Any]]:
    return [
        # A publisher's retry: another message id, published and stored later.
        row("p1", SINCE + HOUR, attributes=sequence("a", 0, 1), id="a/0/1"),
        row("p2", SINCE + 2 * HOUR, attributes=sequence("a", 0, 1), id="a/0/1"),
        # Its first copy before the range, within the window: none in the range.
        row("p3", SINCE - 3 * HOUR, attributes=sequence("a", 0, 2), id="a/0/2"),
        row("p4", SINCE + HOUR, attributes=sequence("a", 0, 2), id="a/0/2"),
        # Its first copy before the window: as far as reads go, another message.
        row("p5", SINCE - 2 * DAY, attributes=sequence("a", 0, 3), id="a/0/3"),
        row("p6", SINCE + HOUR, attributes=sequence("a", 0, 3), id="a/0/3"),
        # The same sequence of another epoch, or of another producer: other messages.
        row("p7", SINCE + HOUR, attributes=sequence("a", 1, 1), id="a/1/1"),
        row("p8", SINCE + HOUR, attributes=sequence("b", 0, 1), id="b/0/1"),
        # Two copies stored at the same instant: the lesser message id.
        row("p9", SINCE + 4 * HOUR, attributes=sequence("c", 0, 0), id="c/0/0"),
        row("p10", SINCE + 4 * HOUR, attributes=sequence("c", 0, 0), id="c/0/0"),
        # The retry delivered twice itself: still left out.
        row("p2", SINCE + 2 * HOUR + SECOND, attributes=sequence("a", 0, 1), id="a/0/1"),
        # Another message under a taken sequence (another record, or other attributes):
        # a conflict, kept, as a serving tier stores it.
        row("p11", SINCE + 3 * HOUR, attributes=sequence("a", 0, 1), id="other"),
        row(
            "p12", SINCE + 3 * HOUR, attributes=sequence("a", 0, 1)[:-1] + ', "x": "y"}', id="a/0/1"
        ),
    ]


async def test_it_leaves_out_a_publishers_later_copies_which_the_services_pages_show(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_store: Callable[..., Any],
) -> None:
    rows = [*copies(), *producer_copies()]
    write_fake.tables[RECORDS] = rows
    answer = query(jobs_fake, callable_sql(routine_body(WINDOW), "u.message_id"), SINCE, UNTIL)
    found = {r["f"][0]["v"] for r in answer.get("rows", [])}
    plain = {m for m, _ in first_copies(copies(), SINCE, UNTIL, WINDOW)}
    assert found == plain | {"p1", "p6", "p7", "p8", "p10", "p11", "p12"}
    # BigQuery alone, the service's own pages leave out copies of a message id only:
    # a publisher's retry is there under its own id (a serving tier never stores it).
    store = await make_store(QuerySettings(dedupe_window_seconds=WINDOW))
    page = await store.page(
        Record, PageQuery(after_time=SINCE, after_message_id="", before_time=UNTIL, limit=100)
    )
    assert {"p2", "p4", "p9"} <= {r.message_id for r in page.rows}


# --- what it costs ------------------------------------------------------------------------------


@pytest.mark.slow
def test_its_bill_stays_within_the_range_and_the_window_before_it() -> None:
    # A month of 100 msg/s, every row settled (none in write-optimized storage).
    stream = make_stream(100, 30, stored_per_day=288)
    write = FakeBigQueryWrite()
    write.tables[RECORDS] = stream.records
    kinds = {c.name: c.kind for c in columns(Record)}
    jobs = FakeBigQueryJobs(
        write,
        project=PROJECT,
        dataset=DATASET,
        billing=BillingModel(
            layouts=LAYOUTS,
            kinds={"records": kinds},
            row_weight=stream.weight,
            clock=lambda: (NOW + DAY) / SECOND,
        ),
    )
    window = 7 * 86_400
    since = NOW - 20 * DAY + 5 * HOUR
    until = since + DAY
    answer = query(jobs, callable_sql(routine_body(window)), since, until)
    (received,) = jobs.queries
    assert received.bill is not None

    def size(r: dict[str, Any], names: list[str]) -> int:
        return sum(value_size(kinds[n], r[n]) for n in names)

    def scanned(whole: Callable[[int], bool], keys: Callable[[int], bool]) -> int:
        """Three scans: every column of the rows `whole` holds, message_id and
        ingest_time of those `keys` holds, and ingest_time, id, timestamp and attributes
        of those (where an earlier copy of a producer's sequence may lie)."""
        sequenced = ["ingest_time", "id", "timestamp", "attributes"]
        return stream.weight * sum(
            (size(r, list(kinds)) if whole(r["ingest_time"]) else 0)
            + (size(r, ["message_id", "ingest_time"]) if keys(r["ingest_time"]) else 0)
            + (size(r, sequenced) if keys(r["ingest_time"]) else 0)
            for r in stream.records
        )

    def day(at: int) -> int:
        return at // DAY * DAY

    start = since - window * SECOND
    # At most the partitions of the range and of the window before it (the clustering on
    # ingest_time trims their edge days to the blocks the range reaches), at least the
    # rows themselves.
    most = scanned(
        lambda t: day(since) <= t < day(until - 1) + DAY,
        lambda t: day(start) <= t < day(since - 1) + DAY,
    )
    least = scanned(lambda t: since <= t < until, lambda t: start <= t < since)
    assert least <= received.bill.bytes_processed <= most
    billed = int(answer["totalBytesBilled"])
    assert billed == max(10 * MIB, -(-received.bill.bytes_processed // MIB) * MIB)
    # Against a month of rows: two days' whole rows and a week of three narrow columns.
    everything = stream.weight * sum(size(r, list(kinds)) for r in stream.records)
    assert received.bill.bytes_processed < everything / 8
    # And it answers the range's rows, first copies only.
    assert int(answer["totalRows"]) == len(first_copies(stream.records, since, until, window))

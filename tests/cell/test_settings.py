"""A cell's settings: its systems read once (from the variable or a file), each with
what is its own, its share of the cell's bounds; what makes the whole unusable refused
before anything starts, and one system's entry that cannot be used that system's
fault alone."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

from app.settings import (
    FILE_READ_DEADLINE_SECONDS,
    FILE_READERS,
    SECRET_MOST_BYTES,
    Settings,
    SettingsError,
    queued_bytes,
    system_settings,
    system_shares,
)
from tests.waiting import until_blocking

ORDERS = {
    "store": "bigquery://recordline-prod/orders",
    "serving": "spanner://projects/recordline-prod/instances/cell-1/databases/orders",
    "push_audience": "https://cell-1.example/systems/orders/pubsub/push",
    "push_service_accounts": "push-orders@recordline-prod.iam.gserviceaccount.com",
    "read_principals": "orders-readers@example.com",
}
PAYMENTS = {
    **ORDERS,
    "store": "bigquery://recordline-prod/payments",
    "serving": "spanner://projects/recordline-prod/instances/cell-1/databases/payments",
    "push_audience": "https://cell-1.example/systems/payments/pubsub/push",
    "push_service_accounts": "push-payments@recordline-prod.iam.gserviceaccount.com",
    "rate": 30.0,
}


def cell(systems: object, **extra: str) -> Settings:
    return Settings.load(
        {"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": json.dumps(systems), **extra}
    )


def test_each_system_runs_with_what_is_its_own_and_the_cells_rest() -> None:
    loaded = cell(
        {"orders": ORDERS, "payments": PAYMENTS},
        RECORDLINE_READ_AUDIENCE="https://cell-1.example",
        RECORDLINE_QUERY_MAX_BYTES_BILLED=str(64 << 20),
    )
    systems = loaded.systems()
    assert list(systems) == ["orders", "payments"]
    own = system_settings(loaded, "payments", systems["payments"])
    assert own.store.url == PAYMENTS["store"]
    assert own.store.serving == PAYMENTS["serving"]
    assert own.auth.push_audience == PAYMENTS["push_audience"]
    assert own.auth.push_service_accounts == PAYMENTS["push_service_accounts"]
    assert own.auth.read_principals == ORDERS["read_principals"]
    assert own.telemetry.system == "payments"
    # The cell's: one read audience, one bytes cap.
    assert own.auth.read_audience == "https://cell-1.example"
    assert own.query.max_bytes_billed == 64 << 20


def test_the_systems_may_be_a_file_as_a_mounted_secret_is(tmp_path: Path) -> None:
    file = tmp_path / "systems.json"
    file.write_text(json.dumps({"orders": ORDERS}))
    loaded = Settings.load({"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": f"@{file}"})
    assert list(loaded.systems()) == ["orders"]
    with pytest.raises(SettingsError, match="cannot be read") as refused:
        Settings.load(
            {"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": f"@{tmp_path / 'gone.json'}"}
        )
    assert refused.value.var == "RECORDLINE_SYSTEMS"
    # No secret holds more: the file is not read past it.
    file.write_text(json.dumps({"orders": ORDERS}) + " " * SECRET_MOST_BYTES)
    with pytest.raises(SettingsError, match=f"{file} is over 65536 bytes") as refused:
        Settings.load({"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": f"@{file}"})
    assert refused.value.var == "RECORDLINE_SYSTEMS"


def test_a_systems_share_follows_its_rate_and_its_own_bound_wins() -> None:
    loaded = cell(
        {
            "orders": ORDERS,
            "payments": PAYMENTS,
            "audit": {"store": "memory:", "max_followers": 7, "queue_bytes": 1 << 30},
        },
        RECORDLINE_QUEUE_MAX_BYTES=str(500 << 20),
        RECORDLINE_MAX_FOLLOWERS="90",
    )
    shares = system_shares(loaded, loaded.systems())
    # By declared rate: 10, 30 and 10 of 50 pushes a second.
    assert shares["payments"].queue_bytes == 300 << 20
    assert shares["orders"].queue_bytes == 100 << 20
    # Followers evenly, but where the system sets its own.
    assert shares["orders"].max_followers == 30
    assert shares["audit"].max_followers == 7
    assert shares["audit"].queue_bytes == 1 << 30
    own = system_settings(loaded, "payments", loaded.systems()["payments"], shares["payments"])
    assert own.batch.queue_bytes == 300 << 20
    assert own.query.max_followers == 30
    assert own.server.max_reads == shares["payments"].max_reads < loaded.server.max_reads


def test_a_share_always_holds_the_largest_push() -> None:
    many = {f"s{n}": {"store": "memory:"} for n in range(100)}
    loaded = cell(many)
    shares = system_shares(loaded, loaded.systems())
    # The row of the largest body: its text and the data it came from, each at most the
    # body's length (a push of 260,196 bytes was once refused, queue-full, at a floor of
    # RECORDLINE_MAX_BODY_BYTES, with no row waiting).
    largest = queued_bytes(loaded.server.max_body_bytes)
    assert min(s.queue_bytes for s in shares.values()) == largest


@pytest.mark.parametrize(
    ("environ", "var"),
    [
        # Systems with no cell, and a cell with no systems.
        ({"RECORDLINE_SYSTEMS": json.dumps({"orders": ORDERS})}, "RECORDLINE_CELL"),
        ({"RECORDLINE_CELL": "cell-1"}, "RECORDLINE_SYSTEMS"),
        # A deployment of one system's variable, which no system of a cell would read.
        (
            {
                "RECORDLINE_CELL": "cell-1",
                "RECORDLINE_SYSTEMS": json.dumps({"orders": ORDERS}),
                "RECORDLINE_STORE": "memory:",
            },
            "RECORDLINE_STORE",
        ),
        # More systems than the cell is sized for.
        (
            {
                "RECORDLINE_CELL": "cell-1",
                "RECORDLINE_CELL_MAX_SYSTEMS": "1",
                "RECORDLINE_SYSTEMS": json.dumps({"orders": ORDERS, "payments": PAYMENTS}),
            },
            "RECORDLINE_SYSTEMS",
        ),
        # A payload's shape is each system's own (its entry's id_field, time_field).
        (
            {
                "RECORDLINE_CELL": "cell-1",
                "RECORDLINE_SYSTEMS": json.dumps({"orders": ORDERS}),
                "RECORDLINE_ID_FIELD": "order_id",
            },
            "RECORDLINE_ID_FIELD",
        ),
        # A bad name.
        (
            {"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": json.dumps({"Orders": ORDERS})},
            "RECORDLINE_SYSTEMS",
        ),
        (
            {"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": "@relative.json"},
            "RECORDLINE_SYSTEMS",
        ),
    ],
)
def test_a_cell_that_cannot_be_used_is_refused_naming_the_variable(
    environ: dict[str, str], var: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.load(environ)
    assert refused.value.var == var


@pytest.mark.parametrize(
    ("extra", "var"),
    [
        # One secret for every system: one system's publisher could write another's.
        ({"RECORDLINE_PUSH_TOKEN": "x" * 32}, "RECORDLINE_PUSH_TOKEN"),
        # Cloud Run's invoker check admits every system's readers: only the service
        # can tell whose records each may read.
        ({"RECORDLINE_PUBLIC_READS": "true"}, "RECORDLINE_PUBLIC_READS"),
    ],
)
def test_what_cannot_tell_the_systems_apart_is_refused_beyond_loopback(
    extra: dict[str, str], var: str
) -> None:
    from app.settings import check_access

    loaded = cell(
        {"orders": {**ORDERS, "read_principals": ""}},
        RECORDLINE_HOST="0.0.0.0",
        RECORDLINE_PAGE_TOKEN_SECRET="k" * 32,
        **extra,
    )
    own = system_settings(loaded, "orders", loaded.systems()["orders"])
    with pytest.raises(SettingsError) as refused:
        check_access(own)
    assert refused.value.var == var


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        # A field its entry misspells, or a value it cannot take.
        ({**ORDERS, "srtore": "memory:"}, "srtore"),
        ({**ORDERS, "id_field": "a..b"}, "id_field"),
        ({**ORDERS, "store": "mysql://x"}, "store"),
    ],
)
def test_one_systems_entry_that_cannot_be_used_is_that_systems_fault(
    entry: dict[str, object], said: str
) -> None:
    loaded = cell({"orders": ORDERS, "payments": entry})
    assert list(loaded.systems()) == ["orders"]
    (fault,) = loaded.cell.faults().items()
    assert fault[0] == "payments"
    assert fault[1].var == "RECORDLINE_SYSTEMS"
    assert said in str(fault[1]), str(fault[1])


def test_two_systems_in_one_place_are_both_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    relative = Path("shared.duckdb").resolve()
    same_places = [
        (f"duckdb:{tmp_path}/real/x.duckdb", f"duckdb://{tmp_path}/real/x.duckdb"),
        (f"duckdb:///{tmp_path}/real/x.duckdb", f"duckdb:{tmp_path}/link/x.duckdb"),
        ("duckdb:shared.duckdb", f"duckdb://{relative}"),
        ("bigquery://recordline-prod/orders", "bigquery://recordline-prod/orders/"),
    ]
    # Both are refused (neither serves, each saying why), whichever comes first: the
    # file does not say which of them the place was made for.
    for first, second in same_places:
        for systems in (
            {"alpha": {"store": first}, "beta": {"store": second}},
            {"beta": {"store": second}, "alpha": {"store": first}},
        ):
            loaded = cell({**systems, "gamma": {"store": "memory:"}})
            assert list(loaded.systems()) == ["gamma"]
            for name in ("alpha", "beta"):
                refused = loaded.cell.faults()[name]
                assert refused.var == "RECORDLINE_SYSTEMS"
                assert "'alpha' and 'beta'" in str(refused), str(refused)
    loaded = cell({"orders": ORDERS, "payments": {**PAYMENTS, "serving": ORDERS["serving"]}})
    assert loaded.systems() == {}
    for name in ("orders", "payments"):
        refused = loaded.cell.faults()[name]
        assert "'orders' and 'payments'" in str(refused)
        assert "Spanner database" in str(refused)
    # A token for one would open the other too.
    loaded = cell(
        {"orders": ORDERS, "payments": {**PAYMENTS, "push_audience": ORDERS["push_audience"]}}
    )
    assert loaded.systems() == {}
    assert all(
        "push_audience" in str(loaded.cell.faults()[name]) for name in ("orders", "payments")
    )
    # Places of their own: in memory, or files apart.
    apart = cell(
        {
            "alpha": {"store": "memory:"},
            "beta": {"store": "memory:"},
            "gamma": {"store": f"duckdb:{tmp_path}/real/x.duckdb"},
            "delta": {"store": f"duckdb:{tmp_path}/real/y.duckdb"},
        }
    )
    assert len(apart.systems()) == 4


def test_a_system_or_a_field_named_twice_is_refused() -> None:
    twice = (
        '{"alpha": {"store": "memory:"}, "alpha": {"store": "duckdb:a.duckdb"}}',
        '{"alpha": {"store": "memory:", "store": "duckdb:a.duckdb"}}',
    )
    for text in twice:
        with pytest.raises(SettingsError, match="given twice") as refused:
            Settings.load({"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": text})
        assert refused.value.var == "RECORDLINE_SYSTEMS"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            '{"alpha": {"storee": "memory:"}}',
            "system 'alpha': 'storee' is not a system's setting: did you mean 'store'?",
        ),
        ('{"alpha": {"store": "memory:", "rate": -1}}', "system 'alpha': 'rate': Expected"),
        (
            '{"alpha": {"store": "memcache:"}}',
            "system 'alpha': 'store': not accepted: expected what RECORDLINE_STORE accepts",
        ),
        ('{"alpha": 3}', "system 'alpha': expected an object of its settings"),
    ],
)
def test_a_bad_entry_is_refused_naming_its_system_and_field(text: str, said: str) -> None:
    # It was one message for every mistake, naming neither the field nor the JSON error.
    # The system's own fault: the others would serve (`faults`).
    loaded = Settings.load({"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": text})
    assert loaded.systems() == {}
    refused = loaded.cell.faults()["alpha"]
    assert refused.var == "RECORDLINE_SYSTEMS"
    assert said in str(refused)


def test_systems_that_are_not_json_are_refused_naming_the_error() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.load(
            {"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": '{"alpha": {"store": "memory:"},}'}
        )
    assert refused.value.var == "RECORDLINE_SYSTEMS"
    assert "JSON is malformed: trailing comma" in str(refused.value)


AVRO = json.dumps(
    {"type": "record", "name": "Order", "fields": [{"name": "total", "type": "double"}]}
)


def test_a_systems_schema_and_principals_may_each_be_a_file_of_their_own(tmp_path: Path) -> None:
    # A cell's file holds each system's settings, the bulky ones where it names them:
    # read as if they were written in the entry.
    (tmp_path / "orders.json").write_text(AVRO + "\n")
    (tmp_path / "orders.readers").write_text("a@example.com, domain:example.org\n")
    (tmp_path / "orders.operators").write_text("ops@example.com")
    referenced = {
        **ORDERS,
        "json_topic_schema": f"@{tmp_path / 'orders.json'}",
        "read_principals": f" @{tmp_path / 'orders.readers'}",
        "operator_principals": f"@{tmp_path / 'orders.operators'}",
    }
    inline = {
        **ORDERS,
        "json_topic_schema": AVRO,
        "read_principals": "a@example.com, domain:example.org",
        "operator_principals": "ops@example.com",
    }
    assert cell({"orders": referenced}).systems() == cell({"orders": inline}).systems()
    own = system_settings(
        loaded := cell({"orders": referenced}), "orders", loaded.systems()["orders"]
    )
    assert own.schema.json_topic_schema == AVRO
    assert own.auth.read_principals == "a@example.com, domain:example.org"


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        (
            "json_topic_schema",
            "@{tmp}/gone.json",
            "'json_topic_schema': {tmp}/gone.json cannot be read (No such file",
        ),
        (
            "json_topic_schema",
            "@gone.json",
            "'json_topic_schema': '@gone.json' is not accepted: expected `@` and an absolute path",
        ),
        (
            "json_topic_schema",
            "@{tmp}/list.json",
            "'json_topic_schema': not accepted: expected what RECORDLINE_JSON_TOPIC_SCHEMA "
            "accepts (`recordline config --reference`) (its value read from {tmp}/list.json)",
        ),
        (
            "read_principals",
            "@{tmp}/list.json",
            "'read_principals': not accepted: expected what RECORDLINE_READ_PRINCIPALS accepts "
            "(`recordline config --reference`) (its value read from {tmp}/list.json)",
        ),
        (
            "operator_principals",
            "@{tmp}",
            "'operator_principals': {tmp} cannot be read (Is a directory)",
        ),
        (
            "json_topic_schema",
            "@{tmp}/large.json",
            "'json_topic_schema': {tmp}/large.json is over 65536 bytes, more than a secret holds",
        ),
        (
            # A file without end is read no further than a secret holds.
            "read_principals",
            "@/dev/zero",
            "'read_principals': /dev/zero is over 65536 bytes, more than a secret holds",
        ),
    ],
)
def test_a_value_whose_file_cannot_be_used_is_its_systems_fault_naming_the_file(
    tmp_path: Path, field: str, value: str, said: str
) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    # A schema the entry would take, one byte more than a secret holds.
    (tmp_path / "large.json").write_text("{" + " " * (SECRET_MOST_BYTES - 1) + "}")
    tmp = str(tmp_path)
    loaded = cell({"orders": ORDERS, "payments": {**PAYMENTS, field: value.format(tmp=tmp)}})
    assert list(loaded.systems()) == ["orders"]
    refused = loaded.cell.faults()["payments"]
    assert refused.var == "RECORDLINE_SYSTEMS"
    assert f"RECORDLINE_SYSTEMS: system 'payments': {said.format(tmp=tmp)}" in str(refused), str(
        refused
    )


def test_a_mount_that_does_not_answer_costs_a_start_one_deadline_for_all_its_files(
    tmp_path: Path,
) -> None:
    # Each system's readers and exporters in files of a mount Secret Manager does not
    # answer for (FIFOs no one writes): read one after another, a start would wait a
    # deadline for each, 16 s here and minutes in a full cell.
    systems: dict[str, object] = {"payments": PAYMENTS}
    for n in range(8):
        for field in ("read_principals", "export_principals"):
            os.mkfifo(tmp_path / f"s{n}.{field}")
        systems[f"s{n}"] = {
            **ORDERS,
            "store": f"bigquery://recordline-prod/s{n}",
            "serving": f"spanner://projects/recordline-prod/instances/cell-1/databases/s{n}",
            "push_audience": f"https://cell-1.example/systems/s{n}/pubsub/push",
            "read_principals": f"@{tmp_path / f's{n}.read_principals'}",
            "export_principals": f"@{tmp_path / f's{n}.export_principals'}",
        }
    started = time.monotonic()
    loaded = cell(systems)
    assert list(loaded.systems()) == ["payments"]
    assert sorted(loaded.cell.faults()) == [f"s{n}" for n in range(8)]
    assert time.monotonic() - started < 2 * FILE_READ_DEADLINE_SECONDS
    for fifo in tmp_path.iterdir():  # the held reads end (a FIFO nobody reads: ENXIO)
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_more_systems_than_the_cell_takes_are_refused_before_a_file_of_theirs_is_read(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "readers"
    os.mkfifo(fifo)  # a read of it would wait its deadline
    started = time.monotonic()
    with pytest.raises(SettingsError, match="more than RECORDLINE_CELL_MAX_SYSTEMS=1"):
        cell(
            {"orders": {**ORDERS, "read_principals": f"@{fifo}"}, "payments": PAYMENTS},
            RECORDLINE_CELL_MAX_SYSTEMS="1",
        )
    assert time.monotonic() - started < FILE_READ_DEADLINE_SECONDS


def test_a_values_file_is_read_whole_up_to_what_a_secret_holds(tmp_path: Path) -> None:
    schema = "{" + " " * (SECRET_MOST_BYTES - 2) + "}"
    (tmp_path / "orders.json").write_text(schema)
    loaded = cell({"orders": {**ORDERS, "json_topic_schema": f"@{tmp_path / 'orders.json'}"}})
    assert loaded.systems()["orders"].json_topic_schema == "{" + " " * (SECRET_MOST_BYTES - 2) + "}"


def test_a_values_file_not_read_within_its_deadline_is_its_systems_fault(tmp_path: Path) -> None:
    # A FIFO no one writes stands for a mounted secret Secret Manager does not answer
    # for: its open never returns. The start waits its deadline once, not a read more.
    fifo = tmp_path / "orders.readers"
    os.mkfifo(fifo)
    started = time.monotonic()
    loaded = cell({"orders": {**ORDERS, "read_principals": f"@{fifo}"}, "payments": PAYMENTS})
    assert list(loaded.systems()) == ["payments"]
    refused = loaded.cell.faults()["orders"]
    assert (
        f"RECORDLINE_SYSTEMS: system 'orders': 'read_principals': {fifo} was not read within "
        f"{FILE_READ_DEADLINE_SECONDS:g} s"
    ) in str(refused), str(refused)
    # Asked three times (the load, `systems`, `faults`): one deadline waited, not three.
    assert time.monotonic() - started < 2 * FILE_READ_DEADLINE_SECONDS
    # One thread of the readers' is held by it, a daemon (a stop does not wait for it).
    assert FILE_READERS.busy == 1
    # It ends once the file has had a writer, and its end.
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    until_blocking(lambda: FILE_READERS.busy == 0, what="the held read to end")


def test_a_cells_files_are_read_once_however_often_its_systems_are_asked_for(
    tmp_path: Path,
) -> None:
    readers = tmp_path / "orders.readers"
    readers.write_text("alice@example.com")
    loaded = cell({"orders": {**ORDERS, "read_principals": f"@{readers}"}, "payments": PAYMENTS})
    first = loaded.systems()
    # Changed after the read (a new version mounted): this process keeps what it read,
    # the same in every answer, rather than one view of the files per question.
    readers.write_text("[not, principals]")
    assert loaded.systems() == first
    assert loaded.cell.faults() == {}
    assert first["orders"].read_principals == "alice@example.com"
    # A settings object of its own (a new start) reads them again.
    assert list(cell({"orders": {**ORDERS, "read_principals": f"@{readers}"}}).cell.faults())

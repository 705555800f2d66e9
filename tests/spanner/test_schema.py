"""The serving tier's schema changes by migrations: a baseline every database was created
with, then statements appended, never rewritten. Terraform's `ddl` for a database only
grows, which the google provider applies in place (a statement appended is run on the
existing database; any other change replaces it, which prevent_destroy refuses).

No emulator here: the statements are read as text. tests/spanner/test_serving.py runs
them on the emulator.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import msgspec
import pytest

import app.cli
from app.records import TABLES, Record
from app.store.spanner import schema
from app.store.spanner.schema import (
    BASELINE,
    MIGRATIONS,
    RETENTION_PLACEHOLDER,
    add_column,
    ddl,
    ddl_template,
    expected_columns,
    expected_indexes,
    split_statements,
    statements,
)

# Every statement released so far, in order: the first 16 hex digits of each one's
# sha256, as ddl_template() holds it (the retention still a placeholder). A released
# statement has been run on databases, so it is never edited, moved or removed. A
# migration is added by appending it to MIGRATIONS (and `recordline schema --write`);
# once merged, its fingerprint is appended here: fingerprint(statement).
RELEASED = [
    "5c7652f7ff65a949",  # CREATE TABLE records
    "93104816432b5bee",  # CREATE TABLE rejected
    "a77e9890fc8f155d",  # CREATE INDEX records_by_ingest_time
    "5a6a9e328370148f",  # CREATE INDEX rejected_by_ingest_time
    "92fbf7deef39e69d",  # CREATE INDEX records_by_id
    "27c53e66a7e1bf8e",  # CREATE TABLE export_progress
    "1cb808f415c4b362",  # CREATE TABLE export_lease
]


def fingerprint(statement: str) -> str:
    return hashlib.sha256(statement.encode()).hexdigest()[:16]


def test_no_released_statement_is_ever_rewritten_moved_or_removed() -> None:
    found = [fingerprint(s) for s in statements()]
    assert found[: len(RELEASED)] == RELEASED, (
        "a released statement changed: keep it and append a migration instead"
    )


def test_the_template_terraform_applies_is_these_statements_in_this_order() -> None:
    template = app.cli.SPANNER_TEMPLATE.read_text()
    assert split_statements(template) == list(statements())
    assert template == ddl_template()


# --- what the statements create ------------------------------------------------------------

_TYPE = r"(STRING\((?:MAX|\d+)\)|BYTES\((?:MAX|\d+)\)|INT64|TIMESTAMP|BOOL|FLOAT64|DATE|JSON)"
_ADD_COLUMN = rf"ALTER TABLE (\w+) ADD COLUMN `(\w+)` {_TYPE}( NOT NULL)?"
Columns = dict[tuple[str, str], tuple[str, bool]]
Indexes = dict[str, tuple[str, list[str]]]


def created(applied: tuple[str, ...]) -> tuple[Columns, Indexes]:
    """The columns ((table, name): (type, nullable)) and indexes (name: (table, keys)) a
    database has after `applied`, read from the forms these statements take."""
    columns: Columns = {}
    indexes: Indexes = {}
    for statement in applied:
        if table := re.match(r"CREATE TABLE (\w+) \(", statement):
            for name, kind, not_null in re.findall(
                rf"^  `(\w+)` {_TYPE}( NOT NULL)?", statement, re.M
            ):
                columns[table.group(1), name] = (kind, not not_null)
        elif added := re.match(_ADD_COLUMN, statement):
            table_name, name, kind, not_null = added.groups()
            columns[table_name, name] = (kind, not not_null)
        elif index := re.match(r"CREATE (?:UNIQUE )?INDEX (\w+) ON (\w+) \(([^)]*)\)", statement):
            name, table_name, keys = index.groups()
            indexes[name] = (table_name, [k.strip() for k in keys.split(",")])
        else:
            pytest.fail(f"a statement of a form this test cannot read: {statement[:80]}")
    return columns, indexes


def test_the_statements_create_every_column_and_index_the_service_checks() -> None:
    columns, indexes = created(statements())
    for column in expected_columns():
        assert columns.get((column.table, column.name)) == (
            column.spanner_type,
            column.nullable,
        ), f"{column.table}.{column.name}: append add_column({column.table!r}, {column.name!r})"
    for name, (table, keys) in expected_indexes().items():
        assert indexes.get(name) == (table, keys), name


def test_every_migration_only_adds() -> None:
    # So the image before a migration serves a migrated database as it served the old one.
    for statement in MIGRATIONS:
        assert re.match(
            r"(ALTER TABLE \w+ ADD COLUMN |CREATE TABLE |CREATE (UNIQUE )?INDEX )", statement
        ), statement
        assert "DROP" not in statement.upper()


class _RecordWithRegion(Record, kw_only=True, frozen=True):
    region: str | None = None


def test_a_new_column_is_one_migration_appended_after_what_was_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = 7 * 86_400.0
    before = ddl(window)
    # app/records.py gains a column, as its docstring says: at the end, nullable.
    monkeypatch.setitem(TABLES, "records", _RecordWithRegion)
    assert msgspec.structs.fields(_RecordWithRegion)[-1].name == "region"
    # The statements Terraform applies are unchanged until the migration is appended...
    assert ddl(window) == before
    columns, _ = created(statements())
    assert ("records", "region") not in columns  # the service would refuse: migrate first
    # ...which is one statement, appended: the provider runs it in place.
    migration = add_column("records", "region")
    assert migration == "ALTER TABLE records ADD COLUMN `region` STRING(MAX)"
    monkeypatch.setattr(schema, "MIGRATIONS", (*MIGRATIONS, migration))
    after = ddl(window)
    assert after[: len(before)] == before
    assert after[len(before) :] == [migration]
    columns, _ = created(statements())
    assert columns["records", "region"] == ("STRING(MAX)", True)


def test_a_not_null_column_is_added_with_a_default() -> None:
    # Spanner refuses a NOT NULL column without a default on a table that has rows.
    assert add_column("records", "id") == (
        "ALTER TABLE records ADD COLUMN `id` STRING(MAX) NOT NULL DEFAULT ('')"
    )
    assert add_column("rejected", "data").endswith("`data` BYTES(MAX) NOT NULL DEFAULT (b'')")
    assert RETENTION_PLACEHOLDER in BASELINE[0]


# --- recordline schema --write appends, never rewrites ----------------------------------------


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the schema files `recordline schema --write` writes, in a scratch checkout."""
    directory = tmp_path / "schemas"
    directory.mkdir()
    for path, text in app.cli.schema_files().items():
        (directory / path.name).write_text(text)
    monkeypatch.setattr(app.cli, "SCHEMA_DIR", directory)
    monkeypatch.setattr(app.cli, "SPANNER_TEMPLATE", directory / "spanner.sql.tftpl")
    monkeypatch.setattr(app.cli, "in_checkout", lambda: True)
    return directory


def test_schema_write_appends_a_migration(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TABLES, "records", _RecordWithRegion)
    monkeypatch.setattr(schema, "MIGRATIONS", (*MIGRATIONS, add_column("records", "region")))
    assert app.cli.main(["schema", "--write"]) == 0
    written = split_statements((checkout / "spanner.sql.tftpl").read_text())
    assert written[-1] == "ALTER TABLE records ADD COLUMN `region` STRING(MAX)"


def test_schema_write_refuses_to_rewrite_a_released_statement(
    checkout: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    template = checkout / "spanner.sql.tftpl"
    before = template.read_text()
    rewritten = BASELINE[0].replace("  `schema` STRING(MAX),\n", "")
    monkeypatch.setattr(schema, "BASELINE", (rewritten, *BASELINE[1:]))
    assert app.cli.main(["schema", "--write"]) == 2
    assert "statement 1 of spanner.sql.tftpl was released" in capsys.readouterr().err
    assert template.read_text() == before  # nothing written

"""A system's typed columns at apply time: `records` is created with the `fields` column
its schema file makes, generated beside the file by the service's own mapping
(`recordline schema typed FILE --type T --write`, `<file>.bigquery.json`), since HCL
cannot map a .proto or a nested Avro schema. The plan refuses a file without it or with
a stale one; the service's merge of that revision then changes nothing; and Terraform
still ignores the schema of a table that exists, so no plan drops what the service added.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
from google.cloud import bigquery

from app import cli
from app.cli import SYSTEM_SCHEMAS, TYPED_SUFFIX, main, typed_columns_file, typed_files
from app.ingest.schemas import revision_codec, typed_fields
from app.records import Record
from app.store.bigquery.schema import created_schema
from app.store.bigquery.typed import TypedTable
from tests.infra.console import console, require_terraform
from tests.infra.test_fleet import _module, _root_console, _root_console_run
from tests.infra.test_terraform import MODULE, TERRAFORM, _expression, _resources
from tests.typed.bombs import avro_bomb

ROOT = TERRAFORM.parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "README.md"]

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "order_id", "type": "string"},
        {
            "name": "total",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
        },
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {
            "name": "lines",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Line",
                    "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}],
                },
            },
        },
        {"name": "tags", "type": {"type": "map", "values": "long"}},
        {"name": "paid", "type": "boolean"},
        {"name": "ratio", "type": "double"},
    ],
}
AVRO = json.dumps(ORDER, indent=2).encode()
PROTO = b"""syntax = "proto3";
import "google/protobuf/timestamp.proto";
package shop;
message Payment {
  string payment_id = 1;
  uint64 cents = 2;
  google.protobuf.Timestamp at = 3;
  message Card { string brand = 1; fixed32 last4 = 2; }
  Card card = 4;
  repeated string labels = 5;
  map<string, double> rates = 6;
  Payment refund_of = 7;
}
"""
SCHEMAS = {"AVRO": ("orders.avsc", AVRO), "PROTOCOL_BUFFER": ("payments.proto", PROTO)}


def _generated(kind: str) -> tuple[bytes, str]:
    """A schema file of `kind` and the typed columns file `recordline schema typed` makes."""
    name, definition = SCHEMAS[kind]
    with tempfile.TemporaryDirectory() as work:
        source = Path(work, name)
        source.write_bytes(definition)
        return definition, typed_columns_file(source, kind)


# --- the generated file is the service's own column ------------------------------------


class _Tables:
    """What TypedTable asks of `bigquery.Client`: a table's schema, read (with BigQuery's
    legacy type names, as `tables.get` answers) and written back."""

    _LEGACY = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}

    def __init__(self, columns: list[dict[str, Any]]) -> None:
        self.columns = columns
        self.updates: list[list[dict[str, Any]]] = []

    def _legacy(self, column: dict[str, Any]) -> dict[str, Any]:
        kind = self._LEGACY.get(column["type"], column["type"])
        nested = [self._legacy(c) for c in column.get("fields", [])]
        return {**column, "type": kind, **({"fields": nested} if nested else {})}

    def get_table(self, table_id: str, **_: Any) -> bigquery.Table:
        schema = [bigquery.SchemaField.from_api_repr(self._legacy(c)) for c in self.columns]
        return bigquery.Table(table_id.replace(":", "."), schema=schema)

    def update_table(self, table: bigquery.Table, fields: list[str], **_: Any) -> bigquery.Table:
        assert fields == ["schema"]
        self.columns = [c.to_api_repr() for c in table.schema]
        self.updates.append(self.columns)
        return table


def _widened(columns: list[dict[str, Any]], kind: str) -> _Tables:
    """The table after the service merged in the revision of SCHEMAS[kind], as it does
    before the revision's first row is written."""
    tables = _Tables(columns)

    async def call(function: Any) -> Any:
        return function(tables)

    async def write_schema() -> list[Any]:
        return []

    _, definition = SCHEMAS[kind]
    fields = typed_fields(revision_codec(kind, definition.decode()))
    table = TypedTable("p.d.records", call=call, write_schema=write_schema, timeout=5.0)
    asyncio.run(table.widen("projects/p/schemas/s@r1", fields))
    assert table.failures == 0, table.last_failure
    return tables


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_generated_column_is_the_one_the_service_patches_in(kind: str) -> None:
    definition, text = _generated(kind)
    generated = json.loads(text)
    assert generated["source_sha256"] == hashlib.sha256(definition).hexdigest()
    assert generated["type"] == kind
    # A table created without it (as before): the service adds exactly this column.
    tables = _widened(created_schema(Record), kind)
    (update,) = tables.updates
    assert update[-1] == generated["column"]
    assert [c["name"] for c in update] == [*(c["name"] for c in created_schema(Record)), "fields"]


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_a_table_terraform_created_with_it_needs_no_patch_for_that_revision(kind: str) -> None:
    _, text = _generated(kind)
    tables = _widened([*created_schema(Record), json.loads(text)["column"]], kind)
    assert tables.updates == []


def test_the_generated_columns_cover_every_mapping_rule_the_schemas_use() -> None:
    # Nested, repeated, maps, decimals, timestamps, well-known types and recursion all
    # reach the column: what HCL could not have mapped.
    avro = {f["name"]: f for f in json.loads(_generated("AVRO")[1])["column"]["fields"]}
    assert avro["total"]["type"] == "NUMERIC"
    assert avro["at"]["type"] == "TIMESTAMP"
    assert (avro["lines"]["mode"], avro["lines"]["fields"][1]["type"]) == ("REPEATED", "INT64")
    assert [f["name"] for f in avro["tags"]["fields"]] == ["key", "value"]
    proto = {f["name"]: f for f in json.loads(_generated("PROTOCOL_BUFFER")[1])["column"]["fields"]}
    assert proto["cents"]["type"] == "NUMERIC"
    assert proto["at"]["type"] == "TIMESTAMP"
    assert proto["card"]["fields"][1] == {"name": "last4", "type": "INT64", "mode": "NULLABLE"}
    assert proto["refund_of"]["type"] == "JSON"  # recursive


def test_a_schema_that_makes_no_fields_makes_no_column(tmp_path: Path) -> None:
    source = tmp_path / "plain.avsc"
    source.write_text('"string"')
    assert json.loads(typed_columns_file(source, "AVRO"))["column"] is None


def test_the_command_writes_the_file_beside_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "payments.proto"
    source.write_bytes(PROTO)
    assert main(["schema", "typed", str(source), "--type", "PROTOCOL_BUFFER"]) == 0
    printed = capsys.readouterr().out
    assert printed == typed_columns_file(source, "PROTOCOL_BUFFER")
    assert main(["schema", "typed", str(source), "--type", "PROTOCOL_BUFFER", "--write"]) == 0
    assert (tmp_path / f"payments.proto{TYPED_SUFFIX}").read_text() == printed
    # What the service could not decode with, a file that is not there, a type left out.
    assert main(["schema", "typed", str(source), "--type", "AVRO"]) == 2
    assert f"{source} is no AVRO schema" in capsys.readouterr().err
    assert main(["schema", "typed", str(tmp_path / "nope.avsc"), "--type", "AVRO"]) == 2
    assert main(["schema", "typed", str(source)]) == 2
    assert "--type AVRO|PROTOCOL_BUFFER are required" in capsys.readouterr().err


def test_schema_write_makes_every_typed_columns_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only the typed columns files here (the table schemas' own test is test_units'), and
    # nothing of the checkout written.
    template = tmp_path / "spanner.sql.tftpl"
    monkeypatch.setattr(cli, "SPANNER_TEMPLATE", template)
    monkeypatch.setattr(cli, "schema_files", lambda: {template: ""})
    monkeypatch.setattr(cli, "SYSTEM_SCHEMAS", tmp_path)
    (tmp_path / "teams").mkdir()
    source = tmp_path / "teams" / "orders.avsc"
    source.write_bytes(AVRO)
    stale = tmp_path / "teams" / f"orders.avsc{TYPED_SUFFIX}"
    stale.write_text('{"type": "AVRO", "source_sha256": "0", "column": null}')
    assert main(["schema", "--write"]) == 0
    assert stale.read_text() == typed_columns_file(source, "AVRO")
    # One whose schema file is gone is said, and fails the command; the rest are written.
    (tmp_path / f"gone.avsc{TYPED_SUFFIX}").write_text('{"type": "AVRO"}')
    stale.write_text('{"type": "AVRO"}')
    assert main(["schema", "--write"]) == 2
    assert stale.read_text() == typed_columns_file(source, "AVRO")
    assert f"gone.avsc{TYPED_SUFFIX} has no schema file beside it" in capsys.readouterr().err


# --- every schema file the repository's systems name has an up-to-date file ---------------


def _unquoted(value: Any) -> str:
    return str(value).strip('"')


def _systems_in(text: str) -> Iterator[dict[str, Any]]:
    parsed = hcl2.loads(text)
    for system in parsed.get("systems", {}).values():
        if isinstance(system, dict):
            yield system


def _named_schema_files() -> set[tuple[str, str]]:
    """(file, type) of every schema file a system names, in the environments' tfvars
    and in the documentation's examples."""
    texts = [p.read_text() for p in sorted((TERRAFORM / "env").glob("*.tfvars"))]
    for path in DOCS:
        texts += [
            block
            for block in re.findall(r"```hcl\n(.*?)```", path.read_text(), flags=re.DOTALL)
            if "systems = {" in block
        ]
    named = set()
    for text in texts:
        for system in _systems_in(text):
            schema = system.get("schema")
            if isinstance(schema, dict):
                named.add((_unquoted(schema["file"]), _unquoted(schema["type"])))
            if "json_schema" in system:
                named.add((_unquoted(system["json_schema"]), "AVRO"))
    return named


def test_every_schema_file_a_system_names_has_its_typed_columns_up_to_date() -> None:
    named = _named_schema_files()
    # The collection reads the examples (README, "Your topic, your schema"; typed columns).
    assert {("schemas/orders.avsc", "AVRO"), ("schemas/payments.avsc", "AVRO")} <= named
    for file, kind in sorted(named):
        source = ROOT / file
        assert source.exists(), f"{file} is named by a system but not in the repository"
        generated = source.with_name(source.name + TYPED_SUFFIX)
        command = f"python3 dev.py schema typed {file} --type {kind} --write"
        assert generated.exists(), f"{generated} is missing: {command}"
        assert generated.read_text() == typed_columns_file(source, kind), f"stale: {command}"


def test_every_typed_columns_file_in_the_repository_is_what_the_code_makes() -> None:
    # A change of the mapping makes new columns from an unchanged file, which the plan's
    # SHA-256 check cannot see: `recordline schema --write` writes them all again.
    assert SYSTEM_SCHEMAS == ROOT / "schemas"
    # The examples' files at least (docs/schemas.md, docs/typed-columns.md).
    assert {p.name for p in typed_files()} >= {
        "orders.avsc.bigquery.json",
        "payments.avsc.bigquery.json",
    }
    for path, text in typed_files().items():
        assert text is not None, f"{path}: no schema file beside it, or no type"
        assert path.read_text() == text, f"{path} is stale: python3 dev.py schema --write"


# --- the plan: the file is read, and refused missing or stale ----------------------------


def _files(kind: str, *, sibling: str | None) -> tuple[tuple[str, bytes], ...]:
    name, definition = SCHEMAS[kind]
    files = [(f"schemas/{name}", definition)]
    if sibling is not None:
        files.append((f"schemas/{name}{TYPED_SUFFIX}", sibling.encode()))
    return tuple(files)


def _system(kind: str) -> str:
    name = SCHEMAS[kind][0]
    return (
        f'{{ recordline = {{}}, shop = {{ schema = {{ file = "schemas/{name}", type = "{kind}",'
        f' encoding = "BINARY" }}, canary_file = "schemas/{name}" }} }}'
    )


def _typed_columns_input(systems: str, files: tuple[tuple[str, bytes], ...]) -> dict[str, Any]:
    module = _module()
    expression = _expression(module["typed_columns"]).replace("each.key", "k")
    return dict(
        _root_console(f"{{for k, v in local.systems : k => {expression}}}", systems, files=files)
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_module_is_given_the_generated_column(kind: str) -> None:
    _, text = _generated(kind)
    given = _typed_columns_input(_system(kind), _files(kind, sibling=text))
    assert given["recordline"] is None  # no schema: no typed columns, as ever
    assert json.loads(given["shop"]) == json.loads(text)["column"]
    # A JSON topic's declared schema: the same, as Avro.
    systems = '{ recordline = {}, shop = { json_schema = "schemas/orders.avsc" } }'
    if kind == "AVRO":
        given = _typed_columns_input(systems, _files(kind, sibling=text))
        assert json.loads(given["shop"]) == json.loads(text)["column"]


def _refused(systems: str, files: tuple[tuple[str, bytes], ...]) -> str:
    run = _root_console_run("keys(var.systems)", systems, files=files)
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m|[│╷╵]", "", run.stdout + run.stderr).split())
    return text if "Invalid value for variable" in text else ""


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_a_missing_or_stale_file_fails_the_plan_naming_the_command(kind: str) -> None:
    name = SCHEMAS[kind][0]
    command = f"python3 dev.py schema typed schemas/{name} --type {kind} --write"
    definition, text = _generated(kind)
    assert _refused(_system(kind), _files(kind, sibling=text)) == ""
    # Missing.
    assert command in _refused(_system(kind), _files(kind, sibling=None))
    # Made from another version of the file (the file changed, a new revision).
    changed = text.replace(hashlib.sha256(definition).hexdigest(), "0" * 64)
    assert command in _refused(_system(kind), _files(kind, sibling=changed))
    # Made for another type.
    other = {"AVRO": "PROTOCOL_BUFFER", "PROTOCOL_BUFFER": "AVRO"}[kind]
    wrong = text.replace(f'"type": "{kind}"', f'"type": "{other}"')
    assert command in _refused(_system(kind), _files(kind, sibling=wrong))
    # Not JSON at all.
    assert command in _refused(_system(kind), _files(kind, sibling="{"))


def test_a_declared_json_schema_is_checked_the_same_way() -> None:
    systems = '{ recordline = {}, shop = { json_schema = "schemas/orders.avsc" } }'
    command = "python3 dev.py schema typed schemas/orders.avsc --type AVRO --write"
    assert command in _refused(systems, _files("AVRO", sibling=None))
    assert _refused(systems, _files("AVRO", sibling=_generated("AVRO")[1])) == ""


# --- the table: created with the column, its schema then the service's -------------------


def _records_schema(
    typed_columns: str | None,
    copies: dict[str, dict[str, str]] | None = None,
    *,
    table: tuple[str, dict[str, dict[str, str]]] | None = None,
) -> list[dict[str, Any]]:
    """`records`' schema as the module composes it (local.records_schema), by terraform,
    with a layout's `copies` (name: source and type); or, given `table` (a name and its
    copies), that table of the system's own's (google_bigquery_table.filled)."""
    require_terraform()
    (block,) = [
        b
        for b in re.findall(r"(?ms)^locals \{\n.*?^\}\n", (MODULE / "bigquery.tf").read_text())
        if "records_schema" in b
    ]
    with tempfile.TemporaryDirectory() as work:
        Path(work, "schemas").mkdir()
        Path(work, "schemas", "records.json").write_bytes(
            (MODULE / "schemas" / "records.json").read_bytes()
        )
        Path(work, "main.tf").write_text(
            f'variable "typed_columns" {{\n  type = string\n}}\n'
            f'variable "layout" {{\n  type = any\n}}\n'
            f'variable "tables" {{\n  type = any\n}}\n{block}'
        )
        value = "null" if typed_columns is None else json.dumps(typed_columns)
        layout = json.dumps({"columns": copies or {}})
        tables = json.dumps({} if table is None else {table[0]: {"columns": table[1]}})
        Path(work, "values.tfvars").write_text(
            f"typed_columns = {value}\nlayout = {layout}\ntables = {tables}\n"
        )
        expression = (
            "jsondecode(local.records_schema)"
            if table is None
            else f'concat(local.service_schema, local.copy_columns["{table[0]}"])'
        )
        return list(console(work, expression, var_file="values.tfvars"))


def test_records_is_created_with_the_service_columns_and_the_systems_typed_ones() -> None:
    assert _resources("google_bigquery_table")["records"]["schema"] == "${local.records_schema}"
    # Without a schema, exactly the schema file, as before.
    assert _records_schema(None) == created_schema(Record)
    # With one: `fields` last, where the service's own patch puts it.
    _, text = _generated("PROTOCOL_BUFFER")
    column = json.loads(text)["column"]
    assert _records_schema(json.dumps(column)) == [*created_schema(Record), column]


def test_terraform_never_plans_to_drop_a_column_the_service_added() -> None:
    # What the module composes only shapes a new table: the schema of one that exists
    # is the service's (a later revision's fields, a release's columns).
    lifecycle = _resources("google_bigquery_table")["records"]["lifecycle"]
    assert lifecycle == [{"prevent_destroy": True, "ignore_changes": ["schema"]}]


def test_the_command_says_which_cap_a_schema_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bomb.avsc"
    source.write_text(json.dumps(avro_bomb(17, 2)))
    assert main(["schema", "typed", str(source), "--type", "AVRO"]) == 2
    error = capsys.readouterr().err
    assert f"recordline schema typed: {source}: the revision nests records more than 14" in error

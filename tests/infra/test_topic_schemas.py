"""Topic schemas and the publisher's own shape in Terraform: a schema per system from a
file in the repository, on its topic without ever replacing the topic, read by the
service's account alone; the two mapping settings; and a canary in the topic's shape.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import pytest

from app.settings import _FIELD_PATH
from tests.infra.test_fleet import _module_inputs, _root_console, _root_console_run
from tests.infra.test_iam_coverage import _roles
from tests.infra.test_terraform import (
    _config,
    _expression,
    _locals,
    _resources,
    _root,
    _variables,
)

AVRO = json.dumps(
    {
        "type": "record",
        "name": "Order",
        "fields": [{"name": "order_id", "type": "string"}, {"name": "total", "type": "long"}],
    }
).encode()
CANARY = b'"recordline-canary\x02'  # an Order in Avro's binary encoding
# Each schema file with its typed columns beside it, as `recordline schema typed` makes
# them (tests/infra/test_typed_columns.py): the plan refuses one without.
TYPED = json.dumps(
    {
        "source_sha256": hashlib.sha256(AVRO).hexdigest(),
        "type": "AVRO",
        "column": {
            "name": "fields",
            "type": "RECORD",
            "mode": "NULLABLE",
            "fields": [
                {"name": "order_id", "type": "STRING", "mode": "NULLABLE"},
                {"name": "total", "type": "INT64", "mode": "NULLABLE"},
            ],
        },
    }
).encode()
FILES = (
    ("schemas/orders.avsc", AVRO),
    ("schemas/orders.avsc.bigquery.json", TYPED),
    ("schemas/orders-canary.bin", CANARY),
    ("schemas/payments.avsc", AVRO),
    ("schemas/payments.avsc.bigquery.json", TYPED),
)
ORDERS = (
    '{ file = "schemas/orders.avsc", type = "AVRO", encoding = "BINARY" }',
    'id_field = "order_id"',
    'time_field = "meta.created_at"',
    'canary_file = "schemas/orders-canary.bin"',
)
INPUTS = ["topic_schema", "canary_data"]


def _inputs(systems: str) -> dict[str, dict[str, Any]]:
    expression = f"{{for k, v in local.systems : k => {{ {_module_inputs(INPUTS)} }}}}"
    return dict(_root_console(expression, systems, files=FILES))


def _entries(systems: str) -> dict[str, dict[str, Any]]:
    """Each system's entry of the cell's systems' file (RECORDLINE_SYSTEMS)."""
    return dict(_root_console("local.systems_file", systems, files=FILES))


def _orders(schema: str = ORDERS[0], *rest: str) -> str:
    settings = ", ".join([f"schema = {schema}", *(rest or ORDERS[1:])])
    return f"{{ recordline = {{}}, orders = {{ {settings} }} }}"


# --- what a system declares --------------------------------------------------------------


@pytest.mark.slow
def test_a_system_declares_its_schema_mapping_and_canary_from_files_in_the_repository() -> None:
    found = _inputs(_orders())
    orders = found["orders"]
    assert orders["topic_schema"] == {
        "name": "orders",  # the system's name, unless it names an existing schema
        "definition": AVRO.decode(),
        "type": "AVRO",
        "encoding": "BINARY",
    }
    # Its payload's shape reaches the cell's service in its entry of the systems' file.
    entries = _entries(_orders())
    assert (entries["orders"]["id_field"], entries["orders"]["time_field"]) == (
        "order_id",
        "meta.created_at",
    )
    assert base64.b64decode(orders["canary_data"]) == CANARY  # its bytes, as they are
    # A system that declares nothing gets nothing: today's topic, shape and canary.
    assert found["recordline"] == dict.fromkeys(INPUTS)
    assert not {"id_field", "time_field", "json_topic_schema"} & set(entries["recordline"])
    (default,) = _inputs("{}").values()
    assert default == dict.fromkeys(INPUTS)


def test_a_json_topic_declares_the_schema_of_its_typed_columns() -> None:
    systems = '{ recordline = {}, payments = { json_schema = "schemas/payments.avsc" } }'
    payments = _inputs(systems)["payments"]
    # No topic schema; the file's text in its entry, as the service reads
    # json_topic_schema, and nothing where not set.
    assert payments == dict.fromkeys(INPUTS)
    entries = _entries(systems)
    assert entries["payments"]["json_topic_schema"] == AVRO.decode()
    assert "json_topic_schema" not in entries["recordline"]


def test_an_existing_schema_keeps_its_name() -> None:
    schema = '{ file = "schemas/orders.avsc", type = "AVRO", encoding = "JSON", name = "Orders" }'
    assert _inputs(_orders(schema))["orders"]["topic_schema"]["name"] == "Orders"


@pytest.mark.parametrize(
    ("systems", "refused"),
    [
        (_orders(), None),
        (_orders('{ file = "schemas/orders.avsc", type = "JSON", encoding = "BINARY" }'), "type"),
        (_orders('{ file = "schemas/orders.avsc", type = "AVRO", encoding = "TEXT" }'), "type"),
        (
            _orders('{ file = "a", type = "AVRO", encoding = "JSON", name = "goog orders" }'),
            "type",
        ),
        (_orders(ORDERS[0], 'id_field = "order..id"', ORDERS[3]), "field paths"),
        (_orders(ORDERS[0], 'time_field = "created at"', ORDERS[3]), "field paths"),
        # Neither today's canary fits: Pub/Sub refuses it, or the service rejects it.
        (_orders(ORDERS[0], ORDERS[1]), "canary_file"),
        ('{ recordline = {}, orders = { id_field = "order_id" } }', "canary_file"),
        # An event time elsewhere alone leaves today's canary a record (time may be absent).
        ('{ recordline = {}, orders = { time_field = "meta.created_at" } }', None),
        # A declared schema is a file under schemas/, and only for a topic with none.
        ('{ recordline = {}, orders = { json_schema = "app/orders.avsc" } }', "json_schema"),
        (_orders(ORDERS[0], *ORDERS[1:], 'json_schema = "schemas/payments.avsc"'), "not both"),
    ],
)
def test_what_pubsub_and_the_service_would_refuse_is_refused_at_plan(
    systems: str, refused: str | None
) -> None:
    run = _root_console_run("keys(var.systems)", systems, files=FILES)
    if refused is None:
        assert run.returncode == 0, run.stderr
        assert "Invalid value for variable" not in run.stderr, run.stderr
    else:
        assert "Invalid value for variable" in run.stderr, run.stderr
        assert refused in re.sub(r"\x1b\[[0-9;]*m", "", run.stderr)


def test_field_paths_are_checked_as_the_service_checks_them() -> None:
    (check,) = [
        c for c in _variables()["systems"]["validation"] if "s.time_field" in c["condition"]
    ]
    (pattern,) = re.findall(r'regex\("(.*?)", path\)', check["condition"])
    assert pattern.replace("\\\\", "\\") == _FIELD_PATH


# --- the topic and its schema --------------------------------------------------------------


def test_the_schema_is_the_systems_and_never_destroyed_by_a_plan() -> None:
    schema = _resources("google_pubsub_schema")["records"]
    assert _expression(schema["for_each"]) == (
        "var.topic_schema != null ? {(var.topic_schema.name) = var.topic_schema} : {}"
    )
    assert (schema["name"], schema["type"], schema["definition"]) == (
        "${each.key}",
        "${each.value.type}",
        "${each.value.definition}",
    )
    assert schema["lifecycle"] == [{"prevent_destroy": True}]


def test_the_topic_validates_against_its_schema_and_is_never_replaced_for_it() -> None:
    topic = _resources("google_pubsub_topic")["records"]
    (settings,) = topic["dynamic"]
    spec = settings["schema_settings"]
    assert spec["for_each"] == "${google_pubsub_schema.records}"
    (content,) = spec["content"]
    assert content == {
        "schema": "${schema_settings.value.id}",
        "encoding": "${var.topic_schema.encoding}",
    }
    # Provider 6.x updates schema_settings in place; a plan that would replace the
    # topic anyway (another provider, another setting) fails on prevent_destroy.
    assert topic["lifecycle"] == [{"prevent_destroy": True}]
    for block in _config()["terraform"]:
        for providers in block.get("required_providers", []):
            for name in ("google", "google-beta"):
                if name in providers:
                    assert providers[name]["version"].endswith("< 7.0"), name


def test_only_the_cells_accounts_read_the_schema_and_only_the_schema() -> None:
    grant = _resources("google_pubsub_schema_iam_member")["runtime_reads_schema"]
    assert grant["for_each"] == "${google_pubsub_schema.records}"
    assert grant["schema"] == "${each.value.name}"
    assert grant["member"] == "${local.runtime_member}"
    assert "pubsub.schemas.get" in _roles()[grant["role"]]
    exporter = _resources("google_pubsub_schema_iam_member")["exporter_reads_schema"]
    assert exporter["member"] == "${local.exporter_member}"
    # Nothing project-wide: no Pub/Sub role on the project for the cell's accounts.
    cell_accounts = _resources("google_project_iam_member")["cell_accounts"]
    assert "pubsub" not in json.dumps(cell_accounts["for_each"])


# --- the service and the canary ----------------------------------------------------------------


def test_the_mapping_reaches_the_service_only_where_it_is_set() -> None:
    entries = _entries(
        '{ recordline = {}, orders = { time_field = "meta.created_at" },'
        ' payments = { id_field = "payment.id", canary_file = "schemas/orders-canary.bin" } }'
    )
    assert entries["orders"]["time_field"] == "meta.created_at"
    assert "id_field" not in entries["orders"]
    assert entries["payments"]["id_field"] == "payment.id"
    assert "time_field" not in entries["payments"]
    assert not {"id_field", "time_field"} & set(entries["recordline"])  # no change


def _root_outputs_deploy() -> dict[str, Any]:
    (deploy,) = [
        block["deploy"]
        for block in _config()["output"]
        if "deploy" in block and isinstance(block["deploy"]["value"], dict)
    ]
    return dict(deploy["value"])


def test_the_canary_is_the_systems_own_message_where_it_has_one() -> None:
    (target,) = _resources("google_cloud_scheduler_job")["canary"]["pubsub_target"]
    assert _expression(target["data"]) == "local.canary_data"
    assert _expression(_locals()["canary_data"]) == (
        "var.canary_data != null ? var.canary_data : local.default_canary_data"
    )
    # The deploy's smoke test pushes the same message to each canary system
    # (modules/system/outputs.tf, `smoke`).
    deploy = _root_outputs_deploy()
    assert "module.system[name].smoke" in deploy["canary"]
    smoke = [b["smoke"] for b in _config()["output"] if "smoke" in b]
    assert smoke
    assert smoke[0]["value"]["canary_data"] == "${local.canary_data}"
    (module,) = [block["system"] for block in _root("module") if "system" in block]
    assert "filebase64(" in module["canary_data"]  # the file's bytes, binary encodings too

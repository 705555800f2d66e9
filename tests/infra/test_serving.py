"""The serving tier in Terraform: the cell's Spanner instances for the systems that opt
in, each sized and raised on its own, a database of each system's own with the
service's own schema, least privilege and tiles; and nothing at all for a system that
does not opt in.

Expressions are evaluated by `terraform console` where their value matters (which
systems opt in, the DDL, the units of each instance); the rest is the structure as
written. The instances' tickets and pages are the environment's (test_alerts.py).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from app.settings import QuerySettings
from app.store.open import spanner_database
from app.store.spanner.schema import ddl, retention_days
from app.store.spanner.serving import _OLDEST_READ_MICROS, SpannerDatabase
from tests.infra.console import console, require_terraform
from tests.infra.test_fleet import _cell, _module, _root_console
from tests.infra.test_iam_coverage import _roles
from tests.infra.test_terraform import (
    MODULE,
    TERRAFORM,
    _evaluate,
    _expression,
    _load,
    _locals,
    _resources,
    _validations_hold,
    _variables,
    _waits_for,
)

SETTINGS = (
    "{serving_systems = local.serving_systems, instances = local.spanner_instances, "
    "config = local.spanner_config}"
)


TWO_INSTANCES = (
    "{ recordline = { serving = true }, b-system = { serving = true, spanner_instance = 2 } }"
)


def _serving(systems: str, **overrides: str) -> dict[str, Any]:
    return dict(_root_console(SETTINGS, systems, tuple(sorted(overrides.items()))))


# --- who opts in ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("systems", "environment", "expected"),
    [
        ("{}", "false", []),  # today's configurations: no serving tier at all
        ("{ recordline = {}, orders = {} }", "false", []),
        ("{}", "true", ["recordline"]),  # the default system, through the environment's
        ("{ recordline = {}, orders = { serving = true } }", "false", ["orders"]),
        ("{ recordline = {}, orders = { serving = false } }", "true", ["recordline"]),
    ],
)
def test_a_system_has_a_serving_database_only_if_it_opts_in(
    systems: str, environment: str, expected: list[str]
) -> None:
    found = _serving(systems, serving=environment)
    assert found["serving_systems"] == expected
    # One instance for all of them, and none without any.
    assert found["instances"] == (["recordline-serving"] if expected else [])


def test_only_the_systems_that_opt_in_get_a_database() -> None:
    module = _module()
    given = _expression(module["serving"])
    assert given.startswith("contains(local.serving_systems, each.key) ? ")
    assert given.endswith(" : null")
    # Its database's instance is the one its entry names (test_a_system_past_the_first_90...).
    assert "google_spanner_instance.serving[local.serving_instance[each.key]].name" in given
    databases = _expression(_locals()["serving_databases"])
    bound = re.sub(r"\bvar\.", "local.", databases)
    assert _evaluate(bound, (("serving", "null"), ("service_name", '"orders"'))) == {}
    assert _evaluate(
        bound, (("serving", '{ instance = "recordline-serving" }'), ("service_name", '"orders"'))
    ) == {"orders": "recordline-serving"}
    assert _resources("google_spanner_database")["serving"]["for_each"] == (
        "${local.serving_databases}"
    )


# --- the instance ---------------------------------------------------------------------------


def test_the_instance_is_small_shared_and_never_destroyed_by_a_plan() -> None:
    instance = _resources("google_spanner_instance")["serving"]
    assert instance["for_each"] == "${local.spanner_instances}"
    assert instance["processing_units"] == "${local.spanner_processing_units[each.key]}"
    assert _variables()["spanner_processing_units"]["default"] == 100
    assert instance["config"] == "${local.spanner_config}"
    assert instance["default_backup_schedule_type"] == "NONE"  # every row is in BigQuery
    assert instance["lifecycle"][0]["prevent_destroy"] is True
    assert "google_project_service.enabled" in _waits_for("google_spanner_instance.serving")
    (apis,) = [b for b in _config_blocks("google_project_service") if "enabled" in b]
    assert '"spanner.googleapis.com"' in apis["enabled"]["for_each"]


def _units(serving_systems: int, **overrides: str) -> int:
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, serving_systems))]
    systems = "{ " + ", ".join(f'"{n}" = {{ serving = true }}' for n in names) + " }"
    expression = (
        "{ units = local.spanner_processing_units[local.spanner_instance_name],"
        " n = length(local.serving_systems) }"
    )
    # (Beyond 94 systems the project's service-account quota must be raised too.)
    values = {"service_account_quota": "200", **overrides}
    found = _root_console(expression, systems, tuple(sorted(values.items())))
    assert found["n"] == serving_systems
    return int(found["units"])


@pytest.mark.parametrize(
    ("databases", "units"),
    [(1, 100), (10, 100), (11, 200), (55, 600), (81, 900), (90, 900)],
)
def test_the_instance_holds_every_serving_database(databases: int, units: int) -> None:
    # Under 1,000 processing units an instance holds 10 databases per 100 units; from
    # 1,000 on, 100 (https://cloud.google.com/spanner/quotas): the eleventh serving
    # system would otherwise fail to create its database.
    assert _units(databases) == units
    instance = _resources("google_spanner_instance")["serving"]
    assert instance["processing_units"] == "${local.spanner_processing_units[each.key]}"


def _sized(systems: str, **overrides: str) -> dict[str, Any]:
    expression = (
        "{ units = local.spanner_total_units, stored = local.spanner_total_stored_bytes,"
        " capacity = sum(values(local.spanner_storage_bytes)),"
        " for_storage = sum(values(local.spanner_units_for_storage)),"
        " for_cpu = local.spanner_total_cpu_units }"
    )
    return dict(_root_console(expression, systems, tuple(sorted(overrides.items()))))


GIB = 1 << 30
TIB = 1 << 40


@pytest.mark.slow
def test_the_instance_is_sized_by_what_its_databases_store() -> None:
    # Spanner's storage per compute today (https://cloud.google.com/spanner/docs/compute-capacity,
    # "Data storage limits"): 1024 GiB per 100 processing units below a node, 10 TiB
    # per node. Twenty systems at 100 messages/s of 1 KiB: each keeps 9 days of rows and
    # 2 of old versions, about 135 GB; 2.71 TB in all, which 400 units hold at 62%. (Their
    # 2,000 pushes a second want 600 units of CPU: the instance has the more of the two.)
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, 20))]
    busy = "{ " + ", ".join(f'"{n}" = {{ serving = true, rate = 100 }}' for n in names) + " }"
    sized = _sized(busy)
    per_system = 100 * (1024 + 400) * 86400 * (9 + 2)
    assert sized["stored"] == pytest.approx(20 * per_system)
    assert sized["for_storage"] == 400
    assert sized["stored"] <= 400 * GIB / 100 * 1024 * 0.7
    assert (sized["for_cpu"], sized["units"]) == (600, 600)
    assert sized["capacity"] == 6 * 1024 * GIB
    # Below a node, in steps of 100 units: one system at 100/s fills 100 units to 13%;
    # six (886 GB) need 200.
    one = _sized("{ recordline = { serving = true, rate = 100 } }")
    assert (one["units"], one["capacity"]) == (100, 1024 * GIB)
    six = ("recordline", "b-system", "c-system", "d-system", "e-system", "f-system")
    sixfold = _sized(
        "{ " + ", ".join(f'"{n}" = {{ serving = true, rate = 100 }}' for n in six) + " }"
    )
    assert sixfold["stored"] == pytest.approx(6 * per_system)
    assert sixfold["for_storage"] == 200
    assert 2 * 1024 * GIB * 0.7 >= sixfold["stored"] > 1024 * GIB * 0.7
    # What a system declares of itself counts, and so does a longer dedupe window.
    big = _sized("{ recordline = { serving = true, rate = 10, message_bytes = 100000 } }")
    assert big["stored"] == pytest.approx(10 * 100400 * 86400 * 11)
    assert big["units"] == 200
    # Past nine hundred units, whole nodes of 10 TiB.
    huge = _sized("{ recordline = { serving = true, rate = 1000, message_bytes = 10000 } }")
    assert huge["stored"] == pytest.approx(1000 * 10400 * 86400 * 11)  # 9.9 TB
    assert huge["units"] == 2000
    assert huge["capacity"] == 20 * TIB
    # The default: ten messages a second of 1 KiB, well within the smallest instance.
    assert _sized("{ recordline = { serving = true } }")["units"] == 100


@pytest.mark.slow
def test_a_binary_topic_is_sized_by_the_json_spanner_stores() -> None:
    # A BINARY message is stored as the JSON it decodes to (app/ingest/payload.py), not
    # as the bytes Pub/Sub carried: the sizing counts that.
    days = 86400 * 11
    schema = (
        'canary_file = "schemas/orders.canary", '
        'schema = { file = "schemas/orders.avsc", type = "AVRO", encoding = "%s" }'
    )
    binary = _sized(
        "{ recordline = { serving = true, message_bytes = 200, " + schema % "BINARY" + " } }"
    )
    assert binary["stored"] == pytest.approx(10 * (200 * 3 + 400) * days)
    assert _variables()["binary_json_ratio"]["default"] == 3
    json_topic = _sized(
        "{ recordline = { serving = true, message_bytes = 200, " + schema % "JSON" + " } }"
    )
    assert json_topic["stored"] == pytest.approx(10 * (200 + 400) * days)
    # What a system declares it stores wins over the ratio.
    declared = _sized(
        "{ recordline = { serving = true, message_bytes = 200, json_bytes = 1500, "
        + schema % "BINARY"
        + " } }"
    )
    assert declared["stored"] == pytest.approx(10 * (1500 + 400) * days)


def test_more_units_than_the_databases_need_are_kept_and_past_90_databases_refused() -> None:
    assert _units(11, spanner_processing_units="2000") == 2000
    (lifecycle,) = _resources("google_spanner_instance")["serving"]["lifecycle"]
    (precondition,) = lifecycle["precondition"]
    assert precondition["condition"] == (
        "${length(local.spanner_databases[each.key]) <= local.spanner_databases_per_instance}"
    )
    assert _locals()["spanner_databases_per_instance"] == 90
    assert "spanner_instance = " in precondition["error_message"]


def test_a_system_past_the_first_90_databases_is_on_a_second_instance() -> None:
    # 100 serving systems: the ten added last name instance 2. Each instance is sized by
    # its own databases; moving a system between instances would replace its database,
    # so the number is the system's own, never its place in the list.
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, 100))]
    entries = [
        f'"{n}" = {{ serving = true{", spanner_instance = 2" if i >= 90 else ""} }}'
        for i, n in enumerate(names)
    ]
    expression = (
        "{ databases = { for k, v in local.spanner_databases : k => length(v) },"
        " units = local.spanner_processing_units, of = local.serving_instance }"
    )
    found = _root_console(
        expression, "{ " + ", ".join(entries) + " }", (("service_account_quota", "200"),)
    )
    assert found["databases"] == {"recordline-serving": 90, "recordline-serving-2": 10}
    assert found["units"] == {"recordline-serving": 900, "recordline-serving-2": 100}
    assert found["of"]["recordline"] == "recordline-serving"
    assert found["of"]["system-099"] == "recordline-serving-2"


@pytest.mark.slow
def test_one_instance_is_raised_alone_and_never_lowered_by_a_plan() -> None:
    # On-call raised the second instance by hand (its storage page); the plan job read
    # its units (spanner_live_units) and on-call merged its own figure
    # (spanner_instance_units): neither instance is lowered, and only the hot one
    # grows. One figure for every instance would have raised them all.
    systems = (
        "{ recordline = { serving = true }, b-system = { serving = true, spanner_instance = 2 } }"
    )
    units = "local.spanner_processing_units"
    assert _root_console(units, systems) == {
        "recordline-serving": 100,
        "recordline-serving-2": 100,
    }
    raised = _root_console(
        units, systems, (("spanner_live_units", '{ "recordline-serving-2" = 2000 }'),)
    )
    assert raised == {"recordline-serving": 100, "recordline-serving-2": 2000}
    merged = _root_console(
        units, systems, (("spanner_instance_units", '{ "recordline-serving-2" = 1000 }'),)
    )
    assert merged == {"recordline-serving": 100, "recordline-serving-2": 1000}


@pytest.mark.parametrize(
    ("config", "edition", "expected"),
    [
        ('""', '""', "STANDARD"),  # regional: the cheapest edition
        ('"regional-europe-west4"', '"ENTERPRISE"', "ENTERPRISE"),
        ('"eur3"', '""', "ENTERPRISE_PLUS"),  # multi-region exists in Enterprise Plus only
        ('"nam-eur-asia1"', '"ENTERPRISE_PLUS"', "ENTERPRISE_PLUS"),
    ],
)
def test_the_edition_is_one_the_configuration_exists_in(
    config: str, edition: str, expected: str
) -> None:
    found = _root_console(
        "local.spanner_edition",
        "{}",
        (("serving", "true"), ("spanner_config", config), ("spanner_edition", edition)),
    )
    assert found == expected
    assert _resources("google_spanner_instance")["serving"]["edition"] == "${local.spanner_edition}"


def test_a_multi_region_instance_in_the_standard_edition_is_refused_at_plan() -> None:
    values = {"spanner_config": '"eur3"', "spanner_edition": '"STANDARD"'}
    assert not _validations_hold("spanner_edition", values)
    assert _validations_hold("spanner_edition", {**values, "spanner_edition": '"ENTERPRISE_PLUS"'})


def _config_blocks(rtype: str) -> list[dict[str, Any]]:
    return [
        block[rtype]
        for path in sorted(TERRAFORM.glob("*.tf"))
        for block in _load(path).get("resource", [])
        if rtype in block
    ]


@pytest.mark.parametrize(
    ("units", "accepted"),
    [
        ("100", True),
        ("900", True),
        ("1000", True),
        ("3000", True),
        ("0", False),
        ("50", False),
        ("150", False),
        ("1500", False),
    ],
)
def test_processing_units_are_what_spanner_accepts(units: str, accepted: bool) -> None:
    assert _validations_hold("spanner_processing_units", {"spanner_processing_units": units}) is (
        accepted
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('""', "regional-europe-west1"),  # the service's region by default
        ('"regional-europe-west4"', "regional-europe-west4"),
        ('"eur3"', "eur3"),
    ],
)
def test_the_instance_configuration_is_the_cells_region_by_default(
    config: str, expected: str
) -> None:
    # The CPU ticket's threshold follows the instance's own configuration label
    # (environment tickets: 65% regional, 45% otherwise), whatever the cell declares.
    found = _serving("{}", serving="true", spanner_config=config)
    assert found["config"] == expected


# --- the database ---------------------------------------------------------------------------


def _module_locals(expression: str, values: dict[str, str]) -> Any:
    """`expression` over the locals of modules/system/spanner.tf, with its variables bound
    to HCL values and the module's schemas/ beside it, as templatefile reads them."""
    require_terraform()
    text = (MODULE / "spanner.tf").read_text()
    (block,) = re.findall(r"(?ms)^locals \{\n.*?^\}\n", text)
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(MODULE / "schemas", Path(work, "schemas"))
        variables = "".join(f'variable "{name}" {{}}\n' for name in values)
        Path(work, "main.tf").write_text(variables + block)
        Path(work, "values.tfvars").write_text(
            "".join(f"{name} = {value}\n" for name, value in values.items())
        )
        return console(work, expression, var_file="values.tfvars")


@pytest.mark.parametrize("window", [None, 86_400, 90_000, 3_600.5, 30 * 86_400])
def test_the_database_gets_the_statements_the_service_expects(window: float | None) -> None:
    # The dedupe window the cell runs with: extra_env's, else the service's own default.
    extra_env = "{}" if window is None else f'{{ RECORDLINE_DEDUPE_WINDOW_SECONDS = "{window}" }}'
    service_window = QuerySettings().dedupe_window_seconds if window is None else window
    cell_window = _root_console("local.dedupe_window_seconds", "{}", (("extra_env", extra_env),))
    assert cell_window == service_window
    values = {
        "cell": f"{{ dedupe_window_seconds = {cell_window} }}",
        "serving": '{ instance = "recordline-serving" }',
        "service_name": '"orders"',
    }
    found = _module_locals("{days = local.spanner_retention_days, ddl = local.spanner_ddl}", values)
    assert found["days"] == retention_days(service_window)
    # One statement an element, exactly what `recordline schema spanner` prints.
    assert found["ddl"] == ddl(service_window)
    given = _module()["cell"]
    assert isinstance(given, dict)
    assert given["dedupe_window_seconds"] == "${local.dedupe_window_seconds}"


def test_the_database_is_protected_in_terraform_and_in_spanner() -> None:
    database = _resources("google_spanner_database", MODULE)["serving"]
    assert database["ddl"] == "${local.spanner_ddl}"
    assert database["name"] == "${var.service_name}"
    assert database["instance"] == "${each.value}"
    assert database["deletion_protection"] is True
    assert database["enable_drop_protection"] is True
    assert database["lifecycle"] == [{"prevent_destroy": True}]
    # Old versions last as long as the environment says (point-in-time recovery), and
    # its least is longer than the oldest moment the service reads at.
    assert database["version_retention_period"] == "${var.serving.recovery_hours}h"
    recovery = _variables()["spanner_recovery_hours"]
    # A mistake made on a working day found by the next, or on a Saturday by Monday:
    # each day more is a twelfth of a system's Spanner storage (infra/fleet_cost.py).
    assert recovery["default"] == 48
    assert _validations_hold("spanner_recovery_hours", {"spanner_recovery_hours": "1"})
    assert 2 * _OLDEST_READ_MICROS <= 3600 * 1_000_000
    for refused in ("0", "169", "1.5"):
        assert not _validations_hold("spanner_recovery_hours", {"spanner_recovery_hours": refused})


# --- the service ------------------------------------------------------------------------------


def test_the_cell_is_told_where_each_database_is_and_nothing_without_one() -> None:
    cell = _cell(
        "{ recordline = {}, orders = { serving = true },"
        " later = { serving = true, spanner_instance = 2 } }",
        project_id='"recordline-prod"',
    )
    systems = cell["file"]
    assert spanner_database(systems["orders"]["serving"]) == SpannerDatabase(
        "recordline-prod", "recordline-serving", "orders"
    )
    assert spanner_database(systems["later"]["serving"]) == SpannerDatabase(
        "recordline-prod", "recordline-serving-2", "later"
    )
    assert "serving" not in systems["recordline"]
    # And on-call's directory names the same instance and database.
    assert cell["directory"]["later"]["instance"] == "recordline-serving-2"
    assert cell["directory"]["later"]["database"] == "later"


def test_the_runtime_account_uses_its_own_database_and_nothing_else() -> None:
    grant = _resources("google_spanner_database_iam_member", MODULE)["runtime_uses_database"]
    assert grant["for_each"] == "${google_spanner_database.serving}"
    assert (grant["instance"], grant["database"]) == (
        "${each.value.instance}",
        "${each.value.name}",
    )
    assert grant["role"] == "roles/spanner.databaseUser"
    assert grant["member"] == "${local.runtime_member}"
    assert _locals(MODULE)["runtime_member"] == "serviceAccount:${var.cell.runtime}"
    assert {"spanner.databases.read", "spanner.databases.write"} <= _roles()[
        "roles/spanner.databaseUser"
    ]
    # Nowhere else: no Spanner role on the project or an instance for the runtime account.
    for grant in _resources("google_project_iam_member").values():
        assert "runtime" not in json.dumps(grant["member"]) or "spanner" not in json.dumps(grant)
    for grant in _resources("google_spanner_instance_iam_member").values():
        assert "runtime" not in grant["member"]


def _custom(name: str) -> set[str]:
    return set(_resources("google_project_iam_custom_role")[name]["permissions"])


def test_on_call_may_add_capacity_at_once_and_only_that() -> None:
    # The break-glass path (capacity.tf): the operator account resizes each serving
    # instance itself, with no workflow and no queue to wait for.
    grant = _resources("google_spanner_instance_iam_member")["operator_capacity"]
    assert grant["for_each"] == "${google_spanner_instance.serving}"
    assert grant["instance"] == "${each.value.name}"
    assert grant["member"] == "${local.operator_member}"
    assert grant["role"] == "${google_project_iam_custom_role.operator_capacity.id}"
    assert _custom("operator_capacity") == {
        "spanner.instanceOperations.get",
        "spanner.instances.get",
        "spanner.instances.update",
    }
    # Each cell's roles are its own: several cells may share a project.
    role = _resources("google_project_iam_custom_role")["operator_capacity"]
    assert role["role_id"] == "recordlineOperatorCapacity_${local.role_suffix}"
    assert _root_console("local.role_suffix", "{}", (("cell", '"eu-cell-2"'),)) == "eu_cell_2"


def test_on_call_may_restore_rows_but_never_change_a_schema_or_drop_a_database() -> None:
    # Recovery (recovery.tf): backups and a scratch instance on the project, inserts into
    # each serving database; no DDL, no drop, nothing on another service's data.
    restore, rows = _custom("operator_restore"), _custom("operator_restore_rows")
    assert {
        "spanner.instances.create",
        "spanner.instances.delete",
        "spanner.backups.create",
        "spanner.databases.createBackup",
        "spanner.backups.restoreDatabase",
        "spanner.databases.create",
    } <= restore
    assert {"spanner.databases.write", "spanner.databases.beginOrRollbackReadWriteTransaction"} <= (
        rows
    )
    for permissions in (restore, rows):
        assert all(p.startswith("spanner.") for p in permissions)
        assert not {"spanner.databases.updateDdl", "spanner.databases.drop"} & permissions
    assert "spanner.databases.write" not in restore  # writes go to serving databases only
    project = _resources("google_project_iam_member")["operator_restore"]
    assert project["role"] == "${google_project_iam_custom_role.operator_restore.id}"
    assert project["member"] == "${local.operator_member}"
    grant = _resources("google_spanner_database_iam_member", MODULE)["operator_restores_rows"]
    assert grant["for_each"] == "${google_spanner_database.serving}"
    assert grant["role"] == "${var.serving.restore_role}"
    assert grant["member"] == "${local.operator_member}"
    given = _expression(_module()["serving"])
    assert "restore_role = google_project_iam_custom_role.operator_restore_rows.id" in given


def test_the_service_waits_for_its_secrets_grants_and_not_for_a_systems_database() -> None:
    # Cloud Run reads the systems' file and the values it names, the throttles, the
    # page-token key and the read passes' keys (where the cell has them) when it creates a
    # revision: those grants have propagated first. A new system's database grant does not
    # hold the cell's revision: /readyz is red only when no system can serve.
    pause = "time_sleep.secrets_propagation"
    assert pause in _waits_for("google_cloud_run_v2_service.ingest")
    triggers = _resources("time_sleep")["secrets_propagation"]["triggers"]
    assert triggers == {
        "page_token": "${google_secret_manager_secret_iam_member.runtime_reads_page_token.id}",
        "systems": '${google_secret_manager_secret_iam_member.reads_systems["runtime"].id}',
        "values": '${join(",", [for grant in'
        " google_secret_manager_secret_iam_member.reads_systems_values : grant.id])}",
        "throttles": '${google_secret_manager_secret_iam_member.throttles["runtime reads"].id}',
        "read_pass": '${join(",", [for grant in'
        " google_secret_manager_secret_iam_member.runtime_reads_read_pass : grant.id])}",
    }
    assert "google_spanner_database_iam_member.runtime_uses_database" not in _waits_for(
        "google_cloud_run_v2_service.ingest"
    )


# --- what on-call sees ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cell_with_serving_systems_has_spanner_tiles_by_instance_and_no_other_does() -> None:
    charts = "[for c in local.cell_charts : c.title]"
    with_serving = _root_console(
        charts,
        "{ recordline = { serving = true }, b-system = { serving = true, spanner_instance = 2 } }",
    )
    without = _root_console(charts, "{}")
    spanner = [t for t in with_serving if t.startswith("Spanner")]
    assert spanner
    assert not [t for t in without if t.startswith("Spanner")]
    assert not [t for t in without if t.startswith("Export")]
    filters = json.dumps(
        _root_console(
            "local.spanner_of_cell",
            TWO_INSTANCES,
        )
    )
    assert "recordline-serving" in filters
    assert "recordline-serving-2" in filters


# --- the exporter -----------------------------------------------------------------------------


def test_the_cells_exporter_pool_exists_with_the_first_serving_system() -> None:
    # The export is the pool's (exporter.tf), never the ingest service's: the service
    # scales with its traffic, to zero when billed by request and quiet.
    found = "{ pool = local.exporter, min = local.ingest_min_instances }"
    assert _root_console(found, "{ recordline = { rate = 1 } }") == {"pool": {}, "min": 0}
    serving = _root_console(found, "{ recordline = { serving = true, rate = 1 } }")
    assert serving["pool"] != {}
    assert serving["min"] == 0  # one push a second: billed by request, scaled to zero
    (scaling,) = _resources("google_cloud_run_v2_service")["ingest"]["template"][0]["scaling"]
    assert scaling["min_instance_count"] == "${local.ingest_min_instances}"


def test_a_cell_shows_its_export_lag_by_system_and_the_fleet_by_system() -> None:
    charts = {
        c["title"]: c
        for c in _root_console("local.cell_charts", "{ recordline = { serving = true } }")
    }
    (lag,) = [c for t, c in charts.items() if t.startswith("Export to BigQuery: lag")]
    ((legend, metric, aligner, reducer, group_by, worst),) = lag["sets"]
    assert 'resource.label."job"="recordline-exporter"' in metric
    assert "export/lag" in metric or "export.lag" in metric
    # The worst any instance reports, one line per system, the ten worst kept.
    assert (aligner, reducer, group_by, worst) == (
        "ALIGN_MAX",
        "REDUCE_MAX",
        ['resource.label."namespace"'],
        True,
    )
    assert legend == "${resource.labels.namespace}"

"""The serving tier in Terraform: one Spanner instance for the systems that opt in, a
database of each one's own with the service's own schema, least privilege, an alert and
tiles; and nothing at all for a system that does not opt in.

Expressions are evaluated by `terraform console` where their value matters (which
systems opt in, the DDL, the service's setting); the rest is the structure as written.
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
from tests.infra.test_fleet import _module, _root_console
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
    "config = local.spanner_config, threshold = local.spanner_cpu_threshold}"
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
        " capacity = sum(values(local.spanner_storage_bytes)) }"
    )
    return dict(_root_console(expression, systems, tuple(sorted(overrides.items()))))


GIB = 1 << 30
TIB = 1 << 40


def test_the_instance_is_sized_by_what_its_databases_store() -> None:
    # Spanner's storage per compute today (https://cloud.google.com/spanner/docs/compute-capacity,
    # "Data storage limits"): 1024 GiB per 100 processing units below a node, 10 TiB
    # per node. Twenty systems at 100 messages/s of 1 KiB: each keeps 9 days of rows and
    # 3 of old versions, about 148 GB; 2.95 TB in all, which 400 units hold at 67%.
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, 20))]
    busy = "{ " + ", ".join(f'"{n}" = {{ serving = true, rate = 100 }}' for n in names) + " }"
    sized = _sized(busy)
    per_system = 100 * (1024 + 400) * 86400 * (9 + 3)
    assert sized["stored"] == pytest.approx(20 * per_system)
    assert sized["units"] == 400
    assert sized["capacity"] == 4 * 1024 * GIB
    assert sized["capacity"] * 0.7 >= sized["stored"]
    # Below a node, in steps of 100 units: one system at 100/s fills 100 units to 13%;
    # six (886 GB) need 200.
    one = _sized("{ recordline = { serving = true, rate = 100 } }")
    assert (one["units"], one["capacity"]) == (100, 1024 * GIB)
    six = ("recordline", "b-system", "c-system", "d-system", "e-system", "f-system")
    sixfold = _sized(
        "{ " + ", ".join(f'"{n}" = {{ serving = true, rate = 100 }}' for n in six) + " }"
    )
    assert sixfold["stored"] == pytest.approx(6 * per_system)
    assert sixfold["units"] == 200
    assert sixfold["capacity"] * 0.7 >= sixfold["stored"] > 1024 * GIB * 0.7
    # What a system declares of itself counts, and so does a longer dedupe window.
    big = _sized("{ recordline = { serving = true, rate = 10, message_bytes = 100000 } }")
    assert big["stored"] == pytest.approx(10 * 100400 * 86400 * 12)
    assert big["units"] == 200
    # Past nine hundred units, whole nodes of 10 TiB.
    huge = _sized("{ recordline = { serving = true, rate = 1000, message_bytes = 10000 } }")
    assert huge["stored"] == pytest.approx(1000 * 10400 * 86400 * 12)  # 10.8 TB
    assert huge["units"] == 2000
    assert huge["capacity"] == 20 * TIB
    # The default: ten messages a second of 1 KiB, well within the smallest instance.
    assert _sized("{ recordline = { serving = true } }")["units"] == 100


def test_a_binary_topic_is_sized_by_the_json_spanner_stores() -> None:
    # A BINARY message is stored as the JSON it decodes to (app/ingest/payload.py), not
    # as the bytes Pub/Sub carried: the sizing counts that.
    days = 86400 * 12
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


def test_storage_is_ticketed_at_70_and_paged_at_90_percent() -> None:
    policy = _resources("google_monitoring_alert_policy")["spanner_storage"]
    alerts = _locals()["spanner_storage_alerts"]
    assert {k: (v["threshold"], v["severity"]) for k, v in alerts.items()} == {
        "ticket": (0.7, "WARNING"),
        "page": (0.9, "CRITICAL"),
    }
    assert alerts["page"]["channels"] == "${var.notification_channels}"
    assert alerts["ticket"]["channels"] == "${var.ticket_channels}"
    (condition,) = policy["conditions"]
    (threshold,) = condition["condition_threshold"]
    assert "spanner.googleapis.com/instance/storage/utilization" in threshold["filter"]
    assert threshold["comparison"] == "COMPARISON_GT"
    assert "docs/operations.md#spanner-storage" in policy["documentation"][0]["content"]


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
    # Each instance has its storage ticket and page.
    policies = _root_console(
        "keys(local.spanner_storage_policies)",
        "{ recordline = { serving = true }, b-system = { serving = true, spanner_instance = 2 } }",
    )
    assert sorted(policies) == [
        "recordline-serving page",
        "recordline-serving ticket",
        "recordline-serving-2 page",
        "recordline-serving-2 ticket",
    ]


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
    ("config", "expected", "threshold"),
    [
        ('""', "regional-europe-west1", 0.65),  # the service's region by default
        ('"regional-europe-west4"', "regional-europe-west4", 0.65),
        ('"eur3"', "eur3", 0.45),  # multi-region: 45% per region
        ('"nam-eur-asia1"', "nam-eur-asia1", 0.45),
    ],
)
def test_the_cpu_threshold_is_googles_for_the_instance_configuration(
    config: str, expected: str, threshold: float
) -> None:
    found = _serving("{}", serving="true", spanner_config=config)
    assert (found["config"], found["threshold"]) == (expected, threshold)


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
    # The dedupe window the service runs with: extra_env's, else its own default.
    extra_env = "{}" if window is None else f'{{ RECORDLINE_DEDUPE_WINDOW_SECONDS = "{window}" }}'
    service_window = QuerySettings().dedupe_window_seconds if window is None else window
    values = {
        "extra_env": extra_env,
        "serving": '{ instance = "recordline-serving" }',
        "service_name": '"orders"',
    }
    found = _module_locals("{days = local.spanner_retention_days, ddl = local.spanner_ddl}", values)
    assert found["days"] == retention_days(service_window)
    # One statement an element, exactly what `recordline schema spanner` prints.
    assert found["ddl"] == ddl(service_window)


def test_the_database_is_protected_in_terraform_and_in_spanner() -> None:
    database = _resources("google_spanner_database")["serving"]
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
    assert recovery["default"] == 72  # a mistake made on a Friday, found on Monday
    assert _validations_hold("spanner_recovery_hours", {"spanner_recovery_hours": "1"})
    assert 2 * _OLDEST_READ_MICROS <= 3600 * 1_000_000
    for refused in ("0", "169", "1.5"):
        assert not _validations_hold("spanner_recovery_hours", {"spanner_recovery_hours": refused})


# --- the service ------------------------------------------------------------------------------


def _serving_env(databases: str) -> dict[str, str]:
    expression = re.sub(
        r"\bgoogle_spanner_database\.serving\b",
        "local.databases",
        re.sub(r"\bvar\.", "local.", _expression(_locals()["serving_env"])),
    )
    return dict(
        _evaluate(
            expression,
            (
                ("databases", databases),
                ("project_id", '"recordline-prod"'),
                ("serving", '{ instance = "recordline-serving" }'),
            ),
        )
    )


def test_the_service_is_told_where_its_database_is_and_nothing_without_one() -> None:
    env = _serving_env('{ orders = { name = "orders" } }')
    assert spanner_database(env["RECORDLINE_SERVING"]) == SpannerDatabase(
        "recordline-prod", "recordline-serving", "orders"
    )
    assert _serving_env("{}") == {}
    # Terraform's value wins over extra_env's.
    service_env = re.sub(r"\s+", " ", _locals()["service_env"])
    assert "merge(var.extra_env, local.retention_env, local.serving_env," in service_env


def test_the_runtime_account_uses_its_own_database_and_nothing_else() -> None:
    grant = _resources("google_spanner_database_iam_member")["runtime_uses_database"]
    assert grant["for_each"] == "${google_spanner_database.serving}"
    assert (grant["instance"], grant["database"]) == (
        "${each.value.instance}",
        "${each.value.name}",
    )
    assert grant["role"] == "roles/spanner.databaseUser"
    assert grant["member"] == "${google_service_account.runtime.member}"
    assert {"spanner.databases.read", "spanner.databases.write"} <= _roles()[
        "roles/spanner.databaseUser"
    ]
    # Nowhere else: no Spanner role on the project or an instance for the runtime account.
    project_roles = json.dumps(_resources("google_project_iam_custom_role")["runtime"])
    assert "spanner" not in project_roles
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
    assert grant["member"] == "${google_service_account.operator.member}"
    assert grant["role"] == "${google_project_iam_custom_role.operator_capacity.id}"
    assert _custom("operator_capacity") == {
        "spanner.instanceOperations.get",
        "spanner.instances.get",
        "spanner.instances.update",
    }


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
    assert project["member"] == "${google_service_account.operator.member}"
    grant = _resources("google_spanner_database_iam_member")["operator_restores_rows"]
    assert grant["for_each"] == "${google_spanner_database.serving}"
    assert grant["role"] == "${var.serving.restore_role}"
    assert grant["member"] == "serviceAccount:${var.operator_service_account}"
    given = _expression(_module()["serving"])
    assert "restore_role = google_project_iam_custom_role.operator_restore_rows.id" in given


def test_the_service_waits_for_its_database_grant_to_propagate() -> None:
    # Its startup probe, /readyz, is red until Spanner answers it.
    pause = "time_sleep.iam_propagation"
    assert pause in _waits_for("google_cloud_run_v2_service.recordline")
    assert "google_spanner_database_iam_member.runtime_uses_database" in _waits_for(pause)
    # Without `serving` the pause's triggers are what they were: no new wait, no diff.
    triggers = _resources("time_sleep")["iam_propagation"]["triggers"]
    expression = re.sub(r"google_\w+\.(\w+)", r"local.\1", _expression(triggers)).replace(
        "local.runtime_uses_database", "local.grants"
    )
    for name in ("pubsub_writes_dead_letters", "runtime_reads_page_token"):
        assert f"local.{name}.id" in expression
    bound = (
        ("grants", "{}"),
        ("pubsub_writes_dead_letters", '{ id = "a" }'),
        ("runtime_reads_page_token", '{ id = "b" }'),
    )
    assert _evaluate(expression, bound) == {"dead_letters": "a", "page_token": "b"}
    with_grant = (*bound[1:], ("grants", '{ orders = { id = "c" } }'))
    assert _evaluate(expression, tuple(sorted(with_grant)))["serving"] == "c"


# --- what on-call sees ------------------------------------------------------------------------


def test_the_cpu_ticket_is_googles_recommended_alert() -> None:
    policy = _resources("google_monitoring_alert_policy")["spanner_cpu"]
    assert policy["for_each"] == "${google_spanner_instance.serving}"
    assert policy["severity"] == "WARNING"
    (condition,) = policy["conditions"]
    (threshold,) = condition["condition_threshold"]
    metric = 'metric.type=\\"spanner.googleapis.com/instance/cpu/utilization_by_priority\\"'
    assert metric in json.dumps(threshold["filter"])
    assert 'metric.label.\\"priority\\"=\\"high\\"' in json.dumps(threshold["filter"])
    assert 'resource.label.\\"instance_id\\"=\\"${each.value.name}\\"' in json.dumps(
        threshold["filter"]
    )
    assert threshold["comparison"] == "COMPARISON_GT"
    assert threshold["threshold_value"] == "${local.spanner_cpu_threshold}"
    assert int(threshold["duration"].removesuffix("s")) >= 300  # sustained, not a spike
    (aggregation,) = threshold["aggregations"]
    # Every database and system task of the instance, per region.
    assert aggregation["cross_series_reducer"] == "REDUCE_SUM"
    assert 'resource.label."instance_id"' in aggregation["group_by_fields"]
    assert "Runbook: docs/operations.md#spanner-cpu" in policy["documentation"][0]["content"]


def test_a_serving_system_has_spanner_tiles_and_no_other_does() -> None:
    titles = [c["title"] for c in _locals()["serving_charts"]]
    assert any(t.startswith("Spanner CPU by priority") for t in titles)
    assert any(t.startswith("Spanner request latency") for t in titles)
    filters = json.dumps(_locals()["serving_charts"])
    assert "instance/cpu/utilization_by_priority" in filters
    assert "api/request_latencies" in filters
    assert 'metric.label.\\"database\\"=\\"${var.service_name}\\"' in filters
    charts = _expression(_locals()["charts"])
    assert charts == (
        "concat(local.dashboard_charts, var.serving != null ? local.serving_charts : [])"
    )
    dashboard = _resources("google_monitoring_dashboard")["recordline"]["dashboard_json"]
    assert "for i, chart in local.charts" in dashboard


# --- the exporter -----------------------------------------------------------------------------


def test_a_serving_system_keeps_no_instance_for_an_exporter() -> None:
    # The exporter runs apart, in the exporter service (exporter.tf): a serving system's
    # service scales with its traffic like any other, to zero at rest by default, with
    # or without `serving` (nothing in the module keeps an instance for it).
    (scaling,) = _resources("google_cloud_run_v2_service")["recordline"]["template"][0]["scaling"]
    assert scaling["min_instance_count"] == "${var.min_instances}"
    assert "min_instances" not in _locals()
    assert _root_console("local.exporter", "{ recordline = { serving = true } }") != {}


def test_a_serving_system_shows_its_export_lag_by_table_and_the_fleet_by_system() -> None:
    charts = {c["title"]: c for c in _locals()["serving_charts"]}
    (lag,) = [c for t, c in charts.items() if t.startswith("Export to BigQuery: lag")]
    ((legend, metric, aligner, reducer, group_by),) = lag["sets"]
    assert metric == '${local.workload_metric["export.lag"]}'
    # The worst any instance reports, one line per table.
    assert (aligner, reducer, group_by) == ("ALIGN_MAX", "REDUCE_MAX", ['metric.label."table"'])
    assert legend == "$${metric.labels.table}"
    (moved,) = [c for t, c in charts.items() if t.startswith("Export to BigQuery: rows")]
    assert [s[1] for s in moved["sets"]] == [
        '${local.workload_metric["export.rows"]}',
        '${local.workload_metric["export.blocked"]}',
    ]
    # The fleet's: one line per system, its furthest-behind table, the ten worst kept.
    (fleet,) = [c for c in _locals()["fleet_charts"] if "export.lag" in json.dumps(c)]
    assert fleet[1:] == [
        '${local.fleet_metric["export.lag"]}',
        "ALIGN_MAX",
        "REDUCE_MAX",
        'resource.label."namespace"',
    ]

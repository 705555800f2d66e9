"""Fifty similar systems: a module per system, its name on every signal, one fleet view."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from tests.infra.console import console_run, decoded, require_terraform
from tests.infra.test_terraform import (
    MODULE,
    TERRAFORM,
    _expression,
    _load,
    _locals,
    _resources,
    _root,
    _variables,
)


def _module() -> dict[str, object]:
    (module,) = [block["system"] for block in _root("module") if "system" in block]
    return module


def _module_resources() -> list[str]:
    return [
        f"{rtype}.{name}"
        for path in sorted(MODULE.glob("*.tf"))
        for block in _load(path).get("resource", [])
        for rtype, named in block.items()
        for name in named
    ]


def test_the_module_is_instantiated_once_per_system() -> None:
    module = _module()
    assert module["source"] == "./modules/system"
    assert module["for_each"] == "${local.systems}"
    assert module["service_name"] == "${each.key}"
    # Every input the module declares is given, and nothing else.
    given = set(module) - {"source", "for_each", "depends_on"}
    assert given == set(_variables(MODULE))


# What `terraform console` needs besides `systems`: the root's required variables.
REQUIRED = {
    "project_id": '"recordline-dev"',
    "environment": '"dev"',
    "github_owner": '"recordline"',
    "github_repo": '"recordline"',
    "terraform_state_bucket": '"recordline-dev-tfstate"',
}


def _plain_locals(path: Path) -> str:
    """The `locals` blocks of a root file that name no resource, data source or module:
    what terraform console can evaluate without a provider."""
    blocks = re.findall(r"(?ms)^locals \{\n.*?^\}\n", path.read_text())
    resources = re.compile(r"\b(google_|data\.|module\.|time_sleep)")
    return "\n".join(b for b in blocks if not resources.search(b))


def _root_console_run(
    expression: str,
    systems: str,
    overrides: tuple[tuple[str, str], ...] = (),
    files: tuple[tuple[str, bytes], ...] = (),
    *,
    modules: bool = False,
) -> subprocess.CompletedProcess[str]:
    """terraform console over the root's variables and plain locals: the variables'
    defaults, `overrides` (HCL values), and `systems` converted to the variable's type and
    validated, as a plan would. The configuration sits at infra/terraform of a scratch
    tree holding `files` (paths from its root, as the repository's); with `modules`, the
    local modules those files call are installed first (terraform init, offline)."""
    require_terraform()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch, "infra", "terraform")
        work.mkdir(parents=True)
        for name, content in files:
            Path(scratch, name).parent.mkdir(parents=True, exist_ok=True)
            Path(scratch, name).write_bytes(content)
        shutil.copy(TERRAFORM / "variables.tf", work)
        (work / "locals.tf").write_text(
            "\n".join(_plain_locals(p) for p in sorted(TERRAFORM.glob("*.tf")))
        )
        values = {**REQUIRED, **dict(overrides), "systems": systems}
        (work / "values.tfvars").write_text(
            "\n".join(f"{k} = {v}" for k, v in values.items()) + "\n"
        )
        if modules:
            init = subprocess.run(
                ["terraform", "init", "-backend=false", "-input=false", "-no-color"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert init.returncode == 0, init.stderr
        return console_run(work, expression, var_file="values.tfvars")


def _root_console(
    expression: str,
    systems: str,
    overrides: tuple[tuple[str, str], ...] = (),
    files: tuple[tuple[str, bytes], ...] = (),
) -> Any:
    """`expression`'s value, as `_root_console_run` evaluates it."""
    run = _root_console_run(expression, systems, overrides, files)
    assert "Error" not in run.stderr, run.stderr
    return decoded(run)


def _module_inputs(names: list[str]) -> str:
    """The module's `name = expression` of each of `names`, over `k` and `v`, the key
    and entry of a system (for a `for k, v in local.systems` expression)."""
    inputs = {
        name: re.sub(r"\beach\.key\b", "k", re.sub(r"\beach\.value\b", "v", _expression(value)))
        for name, value in _module().items()
        if name in names
    }
    return ", ".join(f"{name} = ({expression})" for name, expression in inputs.items())


@cache
def _system_inputs(systems: str, **overrides: str) -> dict[str, dict[str, Any]]:
    """The module inputs each system reads from its entry of `systems` (an HCL value),
    those that name no resource, as terraform evaluates them (`_root_console`)."""
    names = [
        name
        for name, value in _module().items()
        if isinstance(value, str)
        and "each." in value
        and name != "service_name"
        and not re.search(r"\b(google_\w+\.|file\w*\()", value)
    ]
    expression = f"{{for k, v in local.systems : k => {{ {_module_inputs(names)} }}}}"
    return dict(_root_console(expression, systems, tuple(sorted(overrides.items()))))


def test_by_default_there_is_one_system_with_the_names_it_always_had() -> None:
    (one,) = _system_inputs("{}").items()
    assert one[0] == "recordline"
    assert one[1]["dataset_id"] == "recordline"
    two = _system_inputs("{ recordline = {}, orders = {} }")
    assert sorted(two) == ["orders", "recordline"]
    assert two["orders"]["dataset_id"] == "orders"


def test_the_default_system_takes_the_environments_settings() -> None:
    # Without `systems`, each setting a system may override reads null from the default
    # system's entry, and the environment's value is used: the entry has every setting.
    settings = {
        "readers": '["domain:example.com"]',
        "operators": '["user:ada@example.com"]',
        "min_instances": "1",
        "max_instances": "7",
        "extra_env": '{ RECORDLINE_BATCH_MAX_ROWS = "500" }',
    }
    (default,) = _system_inputs("{}", **settings).values()
    assert default["readers"] == ["domain:example.com"]
    assert default["operators"] == ["user:ada@example.com"]
    assert (default["min_instances"], default["max_instances"]) == (1, 7)
    assert default["extra_env"] == {"RECORDLINE_BATCH_MAX_ROWS": "500"}
    # A system of the map overrides what it sets and takes the rest from the environment.
    orders = _system_inputs("{ recordline = {}, orders = { max_instances = 3 } }", **settings)[
        "orders"
    ]
    assert (orders["min_instances"], orders["max_instances"]) == (1, 3)
    assert orders["readers"] == ["domain:example.com"]


def _top_level_attributes(declared: str) -> set[str]:
    """The attribute names of `map(object({...}))`, not those of the objects inside it."""
    body = declared.removeprefix("${map(object({").removesuffix("}))}")
    names, depth, start = set(), 0, 0
    for i, char in enumerate(body + ","):
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif char == "," and depth == 0:
            names.add(body[start:i].split("=")[0].strip())
            start = i + 1
    return names


def test_the_default_systems_entry_has_every_setting_a_system_may_override() -> None:
    settings = _top_level_attributes(_variables()["systems"]["type"])
    assert {"readers", "serving", "extra_env"} <= settings
    assert set(_locals()["system_defaults"]) == settings
    assert all(value is None for value in _locals()["system_defaults"].values())


# Resources the module gained after a single deployment's layout: nothing to move.
ADDED_WITH_THE_MODULE = {
    "google_monitoring_uptime_check_config.read_path",
    "google_cloud_run_v2_service_iam_member.uptime_invoker",
    "google_cloud_run_v2_service_iam_member.operator_invokers",
    "google_pubsub_subscription_iam_member.operators_pull_dead_letters",
    "google_cloud_run_v2_service_iam_member.operator_account_rolls_back",
    "google_service_account_iam_member.operator_account_acts_as_runtime",
    "google_monitoring_alert_policy.ticket",
    # The serving tier came later, with systems that opt in.
    "google_spanner_database.serving",
    "google_spanner_database_iam_member.runtime_uses_database",
    "google_spanner_database_iam_member.operator_reads_database",
    "google_spanner_database_iam_member.operator_restores_rows",
    # So did topic schemas, for systems that declare one.
    "google_pubsub_schema.records",
    "google_pubsub_schema_iam_member.runtime_reads_schema",
    # And on-call's read of the dead letters.
    "google_bigquery_table_iam_member.oncall_reads_dead_letters",
    # And, for analysts, the export's watermarks and the deduplicated records.
    "google_bigquery_table.export_watermarks",
    "google_bigquery_routine.records_unique",
    # And on-call's remedies for the export: its job, and the operator's grants.
    "google_cloud_run_v2_job.export",
    "google_cloud_run_v2_job_iam_member.operator_runs_export",
    "google_bigquery_table_iam_member.operator_reads_exported",
    # And the exporter service's grants on each serving system's database and tables.
    "google_spanner_database_iam_member.exporter_uses_database",
    "google_bigquery_table_iam_member.exporter_writes_tables",
    "google_pubsub_schema_iam_member.exporter_reads_schema",
}


# What a single deployment had and the module no longer holds: moved into the default
# system, then out of Terraform's state with nothing destroyed (a `removed` block), its
# place taken by an environment-wide resource. The runtime account's project roles are
# one binding for every system now (runtime_iam.tf).
MOVED_THEN_REMOVED = ("google_project_iam_member.runtime",)


# What came out of the default system's module into the environment, shared by every
# system: a single deployment's (at the root, where it always was) stays put, and the
# default system's moves back to the root.
SHARED_AGAIN = {
    "google_service_account.push": "google_service_account.push",
    "google_service_account.smoke": "google_service_account.smoke",
    "google_service_account_iam_member.pubsub_mints_push_token": (
        "google_service_account_iam_member.pubsub_mints_push_token"
    ),
    "google_service_account_iam_member.deployer_mints_smoke_tokens": (
        "google_service_account_iam_member.deployer_mints_smoke_tokens"
    ),
    'google_service_account_iam_member.terraform_apply_acts_as["push"]': (
        "google_service_account_iam_member.terraform_apply_acts_as_push"
    ),
}


def test_every_resource_of_a_single_deployment_moves_into_the_default_system() -> None:
    # (Moves within the environment's own resources, such as the serving tier's storage
    # policies to the first instance's keys or the image repository to its region's,
    # are not a system's.)
    moved = {
        (block["from"], block["to"])
        for block in _root("moved")
        if "module.system" in block["from"] + block["to"]
    }
    expected = {
        (f"${{{address}}}", f'${{module.system["recordline"].{address}}}')
        for address in [*_module_resources(), *MOVED_THEN_REMOVED]
        if address not in ADDED_WITH_THE_MODULE
    } | {
        (f'${{module.system["recordline"].{was}}}', f"${{{now}}}")
        for was, now in SHARED_AGAIN.items()
    }
    assert moved == expected, sorted(moved ^ expected)[:5]
    removed = {block["from"] for block in _root("removed")}
    for address in MOVED_THEN_REMOVED:
        assert f"${{module.system.{address}}}" in removed, address
        assert address not in _module_resources()
    # Nothing moved back is still in the module: each exists once, at the root.
    assert not {a.split("[")[0] for a in SHARED_AGAIN} & set(_module_resources()) - {
        "google_service_account_iam_member.terraform_apply_acts_as"
    }
    # The policies a single deployment had on one symptom each are gone, replaced by
    # the fleet's pages and the system's tickets: nothing of theirs is worth keeping.
    assert not {"${google_monitoring_alert_policy.slo_burn_rate}"} & {f for f, _ in moved}


def test_each_system_names_itself_on_its_metrics_and_logs() -> None:
    service_env = _locals()["service_env"]
    assert re.search(r"RECORDLINE_SYSTEM\s+= var\.service_name", service_env)
    # Its application metrics are its own: filtered by the namespace label.
    assert (
        'resource.label.\\"namespace\\"=\\"${var.service_name}\\"' in _locals()["workload_metric"]
    )


def test_the_fleet_dashboard_shows_every_slo_metric_by_system_worst_first() -> None:
    dashboard = _resources("google_monitoring_dashboard")["fleet"]
    text = json.dumps(dashboard)
    charts = _locals()["fleet_charts"]
    by_metric = {
        "freshness (ingest lag)": 'fleet_metric[\\"ingest.lag\\"]',
        "read latency (what readers wait for)": 'fleet_metric[\\"read.duration\\"]',
        "availability (Cloud Run answers)": "run.googleapis.com/request_count",
    }
    for slo, metric in by_metric.items():
        matching = [c for c in charts if metric in json.dumps(c)]
        assert len(matching) == 1, slo
        assert "resource.label" in json.dumps(matching[0]), slo  # grouped by the system
    # Each chart keeps the ten series that peak highest: the worst systems.
    assert (
        'pickTimeSeriesFilter = {rankingMethod = \\"METHOD_MAX\\", numTimeSeries = 10, '
        'direction = \\"TOP\\"}' in text
    )
    # Drill-down: a link to each system's own dashboard.
    assert "module.system[name].dashboard" in _locals()["fleet_links"]


def test_the_environment_root_has_no_system_resources_of_its_own() -> None:
    root = [
        f"{rtype}.{name}"
        for path in sorted(TERRAFORM.glob("*.tf"))
        for block in _load(path).get("resource", [])
        for rtype, named in block.items()
        for name in named
    ]
    per_system = {"google_pubsub_topic", "google_cloud_run_v2_service", "google_bigquery_table"}
    assert not [a for a in root if a.split(".")[0] in per_system]


def test_the_read_path_is_probed_from_outside_as_a_reader() -> None:
    check = _resources("google_monitoring_uptime_check_config")["read_path"]
    (http,) = check["http_check"]
    assert http["path"] == "${local.probe_path}"
    assert _locals()["probe_path"].startswith("/v1/records?")
    assert http["service_agent_authentication"] == [{"type": "OIDC_TOKEN"}]
    # The probe's token is for the service's URL: an audience the service accepts, from a
    # principal it admits, through Cloud Run's invoker check.
    service_env = _locals()["service_env"]
    assert "${local.read_audience},${local.service_url}" in service_env
    assert "local.monitoring_service_agent" in _locals()["read_principals"]
    invoker = _resources("google_cloud_run_v2_service_iam_member")["uptime_invoker"]
    assert invoker["member"] == "serviceAccount:${local.monitoring_service_agent}"
    # Its results are a symptom: the fleet pages on it, each system has a ticket.
    assert _locals()["pages"]["read_path"][1] == "${module.fleet_symptoms.read_path_failing}"
    assert "read_path = symptoms.read_path_failing" in re.sub(
        r"\s+", " ", _locals()["ticket_queries"]
    )
    assert "monitoring_googleapis_com:uptime_check_check_passed" in _locals()["read_path_failing"]

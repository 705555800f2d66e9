"""A fleet in cells: a module per system, a cell's one service and pool for up to a
hundred of them, each system's name on every signal, one fleet view.

The cell root's expressions are evaluated by `terraform console` over its variables and
its plain locals (those that name no resource), the project's number given, as a plan
would, offline.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.infra.console import console_run, decoded, require_terraform
from tests.infra.test_terraform import (
    ENVIRONMENT,
    METRICS,
    MODULE,
    TERRAFORM,
    _expression,
    _load,
    _locals,
    _resources,
    _root,
    _variables,
)

# The keys of a system's entry in RECORDLINE_SYSTEMS, as the cell's service reads them
# (docs/configuration.md): what it is stored to and served from, its audience, push
# accounts, principals and declared rate.
ENTRY_KEYS = {
    "serving",
    "store",
    "json_topic_schema",
    "push_audience",
    "push_service_accounts",
    "read_principals",
    "operator_principals",
    "rate",
}


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


def test_the_module_is_instantiated_once_per_system_of_the_cell() -> None:
    module = _module()
    assert module["source"] == "./modules/system"
    assert module["for_each"] == "${local.systems}"
    assert module["service_name"] == "${each.key}"
    # Every input the module declares is given, and nothing else.
    given = set(module) - {"source", "for_each", "depends_on"}
    assert given == set(_variables(MODULE))


# What `terraform console` needs besides `systems`: the cell root's required variables.
REQUIRED = {
    "project_id": '"recordline-dev"',
    "environment": '"dev"',
    "terraform_state_bucket": '"recordline-dev-tfstate"',
}
# The project's number, a data source's, stood in for (cell.tf keeps it in a block of
# its own for this).
PROJECT_NUMBER = "123456789012"
DEV_ACCOUNTS = "recordline-dev.iam.gserviceaccount.com"


def _plain_locals(path: Path) -> str:
    """The `locals` blocks of a root file that name no resource, data source or module:
    what terraform console can evaluate without a provider."""
    blocks = re.findall(r"(?ms)^locals \{\n.*?^\}\n", path.read_text())
    resources = re.compile(r"\b(google_|data\.|module\.|time_sleep)")
    return "\n".join(b for b in blocks if not resources.search(b))


@cache
def _metric_types() -> str:
    """The metrics module's `types` output as a local of the root (`metric_types`), from
    the module's own locals and expression."""
    text = (METRICS / "main.tf").read_text()
    (block,) = re.findall(r"(?ms)^locals \{\n.*?^\}\n", text)
    (types,) = re.findall(r'(?ms)^output "types" \{\n.*?^  value += (.*?)\n\}', text)
    return block.replace("locals {", "locals {\n  metric_types = " + types, 1)


def _root_console_run(
    expression: str,
    systems: str,
    overrides: tuple[tuple[str, str], ...] = (),
    files: tuple[tuple[str, bytes], ...] = (),
) -> subprocess.CompletedProcess[str]:
    """terraform console over the cell root's variables and plain locals: the variables'
    defaults, `overrides` (HCL values), and `systems` converted to the variable's type and
    validated, as a plan would. The configuration sits at infra/terraform of a scratch
    tree holding `files` (paths from its root, as the repository's)."""
    require_terraform()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch, "infra", "terraform")
        work.mkdir(parents=True)
        for name, content in files:
            Path(scratch, name).parent.mkdir(parents=True, exist_ok=True)
            Path(scratch, name).write_bytes(content)
        shutil.copy(TERRAFORM / "variables.tf", work)
        shutil.copy(TERRAFORM / "job.py", work)  # a local reads it (cell.tf's job_command)
        (work / "locals.tf").write_text(
            "\n".join(_plain_locals(p) for p in sorted(TERRAFORM.glob("*.tf")))
            + f'\nlocals {{\n  project_number = "{PROJECT_NUMBER}"\n}}\n'
            + _metric_types()
        )
        values = {**REQUIRED, **dict(overrides), "systems": systems}
        (work / "values.tfvars").write_text(
            "\n".join(f"{k} = {v}" for k, v in values.items()) + "\n"
        )
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
def _cell(systems: str, **overrides: str) -> dict[str, Any]:
    """The cell's systems' file (RECORDLINE_SYSTEMS) and its directory, as the plan
    writes them."""
    return dict(
        _root_console(
            "{ file = local.systems_file, directory = local.directory, cell = local.cell }",
            systems,
            tuple(sorted(overrides.items())),
        )
    )


def test_by_default_a_cell_of_one_system_with_the_names_it_always_had() -> None:
    cell = _cell("{}")
    assert cell["cell"] == "recordline"
    (one,) = cell["file"].items()
    assert one[0] == "recordline"
    assert one[1]["store"] == "bigquery://recordline-dev/recordline"
    two = _cell("{ recordline = {}, orders = {} }")
    assert sorted(two["file"]) == ["orders", "recordline"]
    assert two["file"]["orders"]["store"] == "bigquery://recordline-dev/orders"


def test_each_systems_entry_holds_what_the_cells_service_reads_of_it() -> None:
    url = f"https://recordline-{PROJECT_NUMBER}.europe-west1.run.app"
    cell = _cell(
        "{ recordline = { serving = true },"
        ' orders = { readers = ["user:ada@example.com"], rate = 2.5 } }',
        operators='["domain:example.com"]',
    )
    orders = cell["file"]["orders"]
    assert orders == {
        "store": "bigquery://recordline-dev/orders",
        "push_audience": f"{url}/systems/orders/pubsub/push",
        # Its own push account: the identity its tokens are signed as.
        "push_service_accounts": "orders-push@recordline-dev.iam.gserviceaccount.com",
        # Its readers, and the smoke test's account; its operators, and on-call's.
        "read_principals": f"ada@example.com,recordline-smoke@{DEV_ACCOUNTS}",
        "operator_principals": f"domain:example.com,recordline-operator@{DEV_ACCOUNTS}",
        "rate": 2.5,
    }
    assert cell["file"]["recordline"]["serving"] == (
        "spanner://projects/recordline-dev/instances/recordline-serving/databases/recordline"
    )
    assert cell["file"]["recordline"]["rate"] == 10
    # Every key is one the service reads, or the two a system's own payload shape needs
    # (its id and time fields, where it names them).
    for entry in cell["file"].values():
        assert set(entry) <= ENTRY_KEYS | {"id_field", "time_field"}, entry


@pytest.mark.slow
def test_a_systems_own_instances_and_environment_are_refused_in_a_cell() -> None:
    for setting in ("min_instances = 1", "max_instances = 3", 'extra_env = { A = "b" }'):
        run = _root_console_run("keys(var.systems)", f"{{ recordline = {{ {setting} }} }}")
        assert "are its cell's now" in run.stderr, setting


@pytest.mark.slow
def test_a_cell_holds_at_most_cell_max_systems() -> None:
    hundred = "{ " + ", ".join(f'"s{n:03d}" = {{}}' for n in range(100)) + ", recordline = {} }"
    run = _root_console_run("keys(var.systems)", hundred, (("service_account_quota", "200"),))
    assert "More systems than one cell holds (cell_max_systems, 100)" in run.stderr
    fits = "{ " + ", ".join(f'"s{n:03d}" = {{}}' for n in range(99)) + ", recordline = {} }"
    assert (
        len(
            decoded(
                _root_console_run("keys(var.systems)", fits, (("service_account_quota", "200"),))
            )
        )
        == 100
    )


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
    assert {"readers", "serving", "rate"} <= settings
    assert set(_locals(TERRAFORM)["system_defaults"]) == settings
    assert all(value is None for value in _locals(TERRAFORM)["system_defaults"].values())


def test_a_deployment_made_before_cells_becomes_its_first_cell_with_nothing_destroyed() -> None:
    moved = {(block["from"], block["to"]) for block in _root("moved")}
    # The default system's service, account, page-token key and SLO service are the
    # cell's; the shared push account is the default system's own again.
    for was, now in (
        (
            'module.system["recordline"].google_cloud_run_v2_service.recordline',
            "google_cloud_run_v2_service.ingest",
        ),
        (
            'module.system["recordline"].google_service_account.runtime',
            "google_service_account.runtime",
        ),
        (
            'module.system["recordline"].google_secret_manager_secret.page_token',
            "google_secret_manager_secret.page_token",
        ),
        (
            'module.system["recordline"].google_monitoring_custom_service.recordline',
            "google_monitoring_custom_service.cell",
        ),
        ("google_service_account.push", 'module.system["recordline"].google_service_account.push'),
    ):
        assert (f"${{{was}}}", f"${{{now}}}") in moved, (was, now)
    # What holds data never moves: its addresses are the module's as before.
    for address in (
        "google_pubsub_topic.records",
        "google_pubsub_subscription.push",
        "google_bigquery_dataset.recordline",
        "google_bigquery_table.records",
        "google_spanner_database.serving",
    ):
        assert address in _module_resources(), address
    # Every move lands on something declared.
    declared = {f'module.system["recordline"].{a}' for a in _module_resources()} | {
        f"{rtype}.{name}"
        for block in _root("resource")
        for rtype, named in block.items()
        for name in named
    }
    for _, to in moved:
        assert re.sub(r'\["[^"]*"\]$', "", to.strip("${}")) in declared, to
    # The environment's own resources are forgotten here, never destroyed: the
    # environment root takes them over (infra/README.md says how).
    removed = {block["from"].strip("${}") for block in _root("removed")}
    environment = {
        f"{rtype}.{name}"
        for block in _root("resource", ENVIRONMENT)
        for rtype, named in block.items()
        for name in named
    }
    assert {
        "google_iam_workload_identity_pool_provider.github",
        "google_service_account.deployer",
        "google_service_account.operator",
        "google_monitoring_alert_policy.page",
        "google_monitoring_alert_policy.ticket",
        "google_artifact_registry_repository.images",
    } <= removed
    # What neither root declares any more is the environment's state's to destroy.
    assert removed - environment <= {
        "google_project_iam_custom_role.runtime",
        "google_project_iam_binding.runtime",
        "google_monitoring_metric_descriptor.workload",  # module.metrics's, there
        "google_monitoring_alert_policy.spanner_cpu",
        "google_monitoring_alert_policy.spanner_storage",
    }
    for block in _root("removed"):
        assert block["lifecycle"] == [{"destroy": False}], block["from"]
    # And the environment's root forgets the cell's, never destroying them; its
    # descriptors are its metrics module's now.
    cell = declared | {f"module.{name}" for block in _root("module") for name in block}
    kept = {block["from"].strip("${}") for block in _root("removed", ENVIRONMENT)}
    assert "module.system" in kept
    assert kept - cell <= {
        "google_cloud_run_v2_worker_pool_iam_member.deployer_deploys_exporter",
        "google_cloud_run_v2_worker_pool_iam_member.operator_runs_exporter",
        "google_service_account.push",
        "google_service_account_iam_member.pubsub_mints_push_token",
        "google_service_account_iam_member.terraform_apply_acts_as_push",
    }  # moved within the cell's state to new addresses
    for block in _root("removed", ENVIRONMENT):
        assert block["lifecycle"] == [{"destroy": False}], block["from"]
    assert (
        "${google_monitoring_metric_descriptor.workload}",
        "${module.metrics.google_monitoring_metric_descriptor.workload}",
    ) in {(b["from"], b["to"]) for b in _root("moved", ENVIRONMENT)}


def test_each_system_names_itself_on_its_counters_and_the_cell_on_its_own() -> None:
    # The cell's metrics carry its name; each system's counters the system's, from the
    # service: each SLO filters its system's namespace.
    env = re.sub(r"\s+", " ", _locals(TERRAFORM)["service_env"]) + " "
    assert "RECORDLINE_CELL = local.cell" in env
    assert "OTEL_SERVICE_NAME = local.cell" in env
    assert "RECORDLINE_SYSTEM " not in env
    assert 'resource.label."namespace"="${var.service_name}"' in _locals(MODULE)["slo_events"]


def test_the_fleet_dashboard_shows_each_systems_slo_events_worst_first() -> None:
    dashboard = _resources("google_monitoring_dashboard", ENVIRONMENT)["fleet"]
    text = json.dumps(dashboard)
    charts = _locals(ENVIRONMENT)["fleet_charts"]
    by_metric = {
        "availability": 'metric.label.\\"slo\\"=\\"availability\\"',
        "read latency": 'metric.label.\\"slo\\"=\\"read_latency\\"',
        "freshness (the cell's ingest lag)": 'fleet_metric[\\"ingest.lag\\"]',
    }
    for slo, metric in by_metric.items():
        matching = [c for c in charts if metric in json.dumps(c)]
        assert len(matching) == 1, slo
        assert "resource.label" in json.dumps(matching[0]), slo  # grouped
    assert (
        'pickTimeSeriesFilter = {rankingMethod = \\"METHOD_MAX\\", numTimeSeries = 10, '
        'direction = \\"TOP\\"}' in text
    )
    # The cells, each with its project, region and dashboard's name.
    assert "for cell in sort(keys(local.cells))" in _locals(ENVIRONMENT)["fleet_cells"]


def test_the_cell_root_has_no_system_resources_of_its_own() -> None:
    root = [
        f"{rtype}.{name}"
        for path in sorted(TERRAFORM.glob("*.tf"))
        for block in _load(path).get("resource", [])
        for rtype, named in block.items()
        for name in named
    ]
    per_system = {
        "google_pubsub_topic",
        "google_bigquery_table",
        "google_spanner_database",
        "google_monitoring_slo",
    }
    # (The cell's reads' SLOs are the cell's: every instance serves every system's reads.)
    assert not [
        a for a in root if a.split(".")[0] in per_system and a != "google_monitoring_slo.cell"
    ]
    # And one of each of what a cell is: a service, a pool, two jobs, an uptime check.
    assert {
        "google_cloud_run_v2_service.ingest",
        "google_cloud_run_v2_worker_pool.exporter",
        "google_cloud_run_v2_job.export",
        "google_cloud_run_v2_job.ops",
        "google_monitoring_uptime_check_config.cell",
        "google_monitoring_custom_service.cell",
        "google_monitoring_dashboard.cell",
    } <= set(root)
    modules = {r.split(".")[0] for r in _module_resources()}
    assert not modules & {
        "google_cloud_run_v2_service",
        "google_cloud_run_v2_job",
        "google_monitoring_uptime_check_config",
        "google_monitoring_dashboard",
        "google_monitoring_alert_policy",
    }


def test_the_cell_is_probed_from_outside_as_a_reader_of_its_readiness() -> None:
    check = _resources("google_monitoring_uptime_check_config")["cell"]
    (http,) = check["http_check"]
    assert http["path"] == "/readyz"
    assert http["service_agent_authentication"] == [{"type": "OIDC_TOKEN"}]
    (resource,) = check["monitored_resource"]
    assert resource["labels"]["host"] == '${trimprefix(local.cell_url, "https://")}'
    # The probe's token is for the cell's URL: an audience the service accepts, from an
    # invoker of the cell.
    service_env = _locals(TERRAFORM)["service_env"]
    assert "${local.read_audience},${local.cell_url}" in service_env
    assert (
        'uptime-probe = "serviceAccount:${time_sleep.service_agents.triggers["monitoring"]}"'
        in (_locals(TERRAFORM)["ingest_invokers"])
    )
    # One a cell: the fleet pages on it, named by the cell.
    assert (
        _locals(ENVIRONMENT)["pages"]["cell_unready"][1] == "${module.fleet_symptoms.cell_unready}"
    )

"""Every limit a fleet of 10, 100 and 1,000 systems meets, with its source, and how long
its plan, first apply and rollout take, from the resources its plans hold.

    .venv/bin/python infra/fleet_limits.py    # the table docs/operations.md shows

A fleet is cells of up to cell_max_systems (100) systems, every system with `serving`
and the longest names the variables accept (24 characters; project ids of 30), the
first cell in the environment's project and each further one in a project of its own,
whose service-account quota is raised to 200 (the one quota a full cell needs asked
for: docs/operations.md, "Quotas to ask for"). Terraform evaluates it offline
(`terraform console`): each cell's own limits from the cell root (its systems' file,
its audiences), each project's from the environment root (environment/cells.tf, over the
cells' variable files). What a plan holds is counted from the configuration, resource by
resource (RULES: a test fails when a resource is added without a rule), and timed with
the estimates below: no real project was planned or applied for these figures.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import yaml

ROOT = Path(__file__).resolve().parent.parent
TERRAFORM = ROOT / "infra" / "terraform"
ENVIRONMENT = TERRAFORM / "environment"
MODULE = TERRAFORM / "modules" / "system"
WORKFLOWS = ROOT / ".github" / "workflows"

FLEETS = (10, 100, 1000)
ENVIRONMENT_PROJECT = "recordline-prod-abcdefghijklmn"  # 30 characters, the longest
GRANTED_SERVICE_ACCOUNTS = 200

# --- what a plan holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """What decides how many resources a cell's plan holds."""

    systems: int
    serving: bool = True
    own_project: bool = False
    oncall: int = 1
    readers: int = 0
    cdn: bool = False
    # Values its systems' file names rather than holds: schemas, long lists of principals.
    values: int = 0
    # Tables of its own each system has beside `records` (a system's `tables`, filled
    # hourly by the cell's fill job: fill.tf): none in the fleets here.
    tables: int = 0

    @property
    def instances(self) -> int:
        """Its serving instances: 90 databases on one (spanner.tf)."""
        return math.ceil(self.systems / 90) if self.serving else 0


# How many of each of a system's resources (modules/system), and of each of a cell's
# (the cell root), a plan creates: by address, for a cell and one of its systems.
SystemRule = Callable[[Cell], int]
SYSTEM_RULES: dict[str, SystemRule] = {
    "google_bigquery_dataset.recordline": lambda c: 1,
    "google_bigquery_dataset_iam_member.runtime_writes_dataset": lambda c: 1,
    "google_bigquery_job.search_index": lambda c: 2,
    "google_bigquery_routine.records_unique": lambda c: 1,
    "google_bigquery_routine.records_latest": lambda c: 1,
    "google_bigquery_table.access_record": lambda c: 1,
    "google_bigquery_table.dead_letters": lambda c: 1,
    "google_bigquery_table.export_watermarks": lambda c: 1,
    "google_bigquery_table.records": lambda c: 1,
    "google_bigquery_table.rejected": lambda c: 1,
    "google_bigquery_table.filled": lambda c: c.tables,
    "google_bigquery_dataset_iam_member.fill_reads_metadata": lambda c: min(1, c.tables),
    "google_bigquery_table_iam_member.fill_reads_records": lambda c: (
        min(1, c.tables) * (1 + c.serving)
    ),
    "google_bigquery_table_iam_member.fill_writes_tables": lambda c: c.tables,
    "google_cloud_scheduler_job.fill": lambda c: min(1, c.tables),
    "google_bigquery_table_iam_member.exporter_writes_tables": lambda c: 3 * c.serving,
    "google_bigquery_table_iam_member.oncall_reads_dead_letters": lambda c: c.oncall,
    "google_bigquery_table_iam_member.operator_reads_exported": lambda c: 2 * c.serving,
    "google_bigquery_table_iam_member.pubsub_writes_dead_letters": lambda c: 1,
    "google_cloud_run_v2_service_iam_member.push_invoker": lambda c: 1,
    "google_cloud_scheduler_job.canary": lambda c: 1,
    "google_monitoring_slo.system": lambda c: 2,
    # A topic schema is a system's own choice: none here.
    "google_pubsub_schema.records": lambda c: 0,
    "google_pubsub_schema_iam_member.exporter_reads_schema": lambda c: 0,
    "google_pubsub_schema_iam_member.runtime_reads_schema": lambda c: 0,
    "google_pubsub_subscription.dead_letter_replay": lambda c: 1,
    "google_pubsub_subscription.dead_letter_to_bigquery": lambda c: 1,
    "google_pubsub_subscription.push": lambda c: 1,
    "google_pubsub_subscription_iam_member.dead_letter_subscriber": lambda c: 1,
    "google_pubsub_subscription_iam_member.operators_pull_dead_letters": lambda c: 1,
    "google_pubsub_topic.dead_letter": lambda c: 1,
    "google_pubsub_topic.records": lambda c: 1,
    "google_pubsub_topic_iam_member.canary_publisher": lambda c: 1,
    "google_pubsub_topic_iam_member.dead_letter_publisher": lambda c: 1,
    "google_pubsub_topic_iam_member.runtime_publishes_test_messages": lambda c: 1,
    "google_service_account.push": lambda c: 1,
    "google_service_account_iam_member.deployer_mints_smoke_tokens": lambda c: 1,
    "google_service_account_iam_member.pubsub_mints_push_token": lambda c: 1,
    "google_service_account_iam_member.terraform_apply_acts_as_push": lambda c: 1,
    "google_spanner_database.serving": lambda c: c.serving,
    "google_spanner_database_iam_member.exporter_uses_database": lambda c: c.serving,
    "google_spanner_database_iam_member.operator_reads_database": lambda c: c.serving,
    "google_spanner_database_iam_member.operator_restores_rows": lambda c: c.serving,
    "google_spanner_database_iam_member.runtime_uses_database": lambda c: c.serving,
    "time_sleep.iam_propagation": lambda c: 1,
}
APIS_IN_ENVIRONMENT, APIS_OWN = 8, 15
DESCRIPTORS = 21
CELL_RULES: dict[str, SystemRule] = {
    "google_project_service.enabled": lambda c: (
        (APIS_OWN if c.own_project else APIS_IN_ENVIRONMENT) + c.cdn
    ),
    "google_project_service_identity.agents": lambda c: 3,
    "time_sleep.service_agents": lambda c: 1,
    "google_service_account.runtime": lambda c: 1,
    "google_service_account_iam_member.acts_as_runtime": lambda c: 2,
    "google_secret_manager_secret.page_token": lambda c: 1,
    "google_secret_manager_secret_version.page_token": lambda c: 1,
    "google_secret_manager_secret_iam_member.runtime_reads_page_token": lambda c: 1,
    "google_secret_manager_secret.systems": lambda c: 1,
    "google_secret_manager_secret_version.systems": lambda c: 1,
    "google_secret_manager_secret_iam_member.reads_systems": lambda c: (
        3 + c.serving + min(1, c.tables)
    ),
    "google_secret_manager_secret.systems_values": lambda c: min(1, c.values),
    "google_secret_manager_secret_version.systems_values": lambda c: c.values,
    "google_secret_manager_secret_iam_member.reads_systems_values": lambda c: (
        (2 + c.serving + min(1, c.tables)) * min(1, c.values)
    ),
    "time_sleep.secrets_propagation": lambda c: 1,
    # The systems on-call has slowed: read by the runtime and on-call, added to by on-call.
    "google_secret_manager_secret.throttles": lambda c: 1,
    "google_secret_manager_secret_version.throttles": lambda c: 1,
    "google_secret_manager_secret_iam_member.throttles": lambda c: 4,
    # Who reads and retires the versions the cell's revisions mount (on-call, the deploy
    # account): the systems' file's and its values', the canary systems' and the read
    # passes'.
    "google_secret_manager_secret_iam_member.versions": lambda c: (
        2 * (1 + c.serving + c.cdn + min(1, c.values))
    ),
    "google_cloud_run_v2_service.ingest": lambda c: 1,
    "google_cloud_run_v2_service_iam_member.invokers": lambda c: 3 + c.readers,
    "google_cloud_run_v2_service_iam_member.developers": lambda c: 1,
    "google_service_account.exporter": lambda c: c.serving,
    "google_secret_manager_secret.canary_systems": lambda c: c.serving,
    "google_secret_manager_secret_version.canary_systems": lambda c: c.serving,
    "google_secret_manager_secret_iam_member.exporter_reads_canary": lambda c: c.serving,
    "google_secret_manager_secret_iam_member.exporter_reads_throttles": lambda c: c.serving,
    "google_cloud_run_v2_worker_pool.exporter": lambda c: c.serving,
    "google_cloud_run_v2_worker_pool_iam_member.developers": lambda c: c.serving,
    "google_service_account_iam_member.acts_as_exporter": lambda c: 2 * c.serving,
    "google_cloud_run_v2_job.export": lambda c: c.serving,
    "google_cloud_run_v2_job_iam_member.export_developers": lambda c: c.serving,
    "google_cloud_run_v2_job_iam_member.export_executors": lambda c: c.serving,
    # The fill job, where a system has tables of its own (fill.tf).
    "google_service_account.fill": lambda c: min(1, c.tables),
    "google_service_account_iam_member.acts_as_fill": lambda c: 2 * min(1, c.tables),
    "google_service_account_iam_member.scheduler_mints_fill_token": lambda c: min(1, c.tables),
    "google_cloud_run_v2_job.fill": lambda c: min(1, c.tables),
    "google_cloud_run_v2_job_iam_member.fill_developers": lambda c: min(1, c.tables),
    "google_cloud_run_v2_job_iam_member.fill_executors": lambda c: 2 * min(1, c.tables),
    "google_cloud_run_v2_job.ops": lambda c: 1,
    "google_cloud_run_v2_job_iam_member.ops_developers": lambda c: 1,
    "google_cloud_run_v2_job_iam_member.ops_executors": lambda c: 1,
    "google_monitoring_uptime_check_config.cell": lambda c: 1,
    "google_monitoring_custom_service.cell": lambda c: 1,
    "google_monitoring_slo.cell": lambda c: 2,
    "google_monitoring_dashboard.cell": lambda c: 1,
    "google_spanner_instance.serving": lambda c: c.instances,
    "google_project_iam_custom_role.operator_capacity": lambda c: 1,
    "google_spanner_instance_iam_member.operator_capacity": lambda c: c.instances,
    "google_project_iam_custom_role.operator_restore": lambda c: 1,
    "google_project_iam_member.operator_restore": lambda c: 1,
    "google_project_iam_custom_role.operator_restore_rows": lambda c: 1,
    "google_project_iam_custom_role.operator_undrop": lambda c: 1,
    "google_project_iam_member.operator_undrop": lambda c: 1,
    "google_project_iam_member.cell_accounts": lambda c: 3 + 3 * c.serving + min(1, c.tables),
    "google_monitoring_metric_descriptor.workload": lambda c: DESCRIPTORS * c.own_project,
    "google_project_iam_member.own_project_apply": lambda c: 15 * c.own_project,
    "google_project_iam_member.own_project_plan": lambda c: 15 * c.own_project,
    "google_project_iam_member.own_project_oncall": lambda c: 3 * c.oncall * c.own_project,
    "google_project_iam_custom_role.own_project_scheduler": lambda c: c.own_project,
    "google_project_iam_member.own_project_operator": lambda c: 3 * c.own_project,
    "google_project_iam_member.own_project_deployer": lambda c: c.own_project,
    "google_artifact_registry_repository_iam_member.cell_pulls_images": lambda c: c.own_project,
    "google_logging_project_exclusion.successful_pushes": lambda c: c.own_project,
    "google_logging_project_exclusion.successful_reads": lambda c: c.own_project,
    "google_logging_project_exclusion.follower_reads": lambda c: c.own_project,
    "google_storage_bucket_object.directory": lambda c: 1,
    "terraform_data.limits": lambda c: 1,
    # Cloud CDN for followers (cdn.tf), where the cell has it: one of each.
    "google_compute_global_address.cdn": lambda c: c.cdn,
    "google_compute_region_network_endpoint_group.cdn": lambda c: c.cdn,
    "google_compute_backend_service.cdn_reads": lambda c: c.cdn,
    "google_compute_url_map.cdn": lambda c: c.cdn,
    "google_compute_ssl_policy.cdn": lambda c: c.cdn,
    "google_compute_managed_ssl_certificate.cdn": lambda c: c.cdn,
    "google_compute_target_https_proxy.cdn": lambda c: c.cdn,
    "google_compute_global_forwarding_rule.cdn": lambda c: c.cdn,
    # Its read passes (on with it by default): the catch-up backend, the backend without
    # the CDN, one signing key (two or three while one rotates) on each CDN backend, and
    # the keys' secret.
    "google_compute_backend_service.cdn_catch_up": lambda c: c.cdn,
    "google_compute_backend_service.cdn_direct": lambda c: c.cdn,
    "random_bytes.read_pass": lambda c: c.cdn,
    "google_compute_backend_service_signed_url_key.read_pass": lambda c: c.cdn,
    "google_compute_backend_service_signed_url_key.read_pass_catch_up": lambda c: c.cdn,
    "google_secret_manager_secret.read_pass": lambda c: c.cdn,
    "google_secret_manager_secret_version.read_pass": lambda c: c.cdn,
    "google_secret_manager_secret_iam_member.runtime_reads_read_pass": lambda c: c.cdn,
}


def declared(directory: Path, *, recursive: bool = False) -> set[str]:
    """The resources a directory's configuration declares, by address (type.name)."""
    paths = sorted(directory.rglob("*.tf") if recursive else directory.glob("*.tf"))
    found = set()
    for path in paths:
        with path.open() as f:
            parsed = hcl2.load(f)
        for block in parsed.get("resource", []):
            for rtype, named in block.items():
                found.update(f"{rtype.strip(chr(34))}.{name.strip(chr(34))}" for name in named)
    return found


def resources(cell: Cell) -> int:
    """The resources a first plan of `cell` creates."""
    per_system = sum(rule(cell) for rule in SYSTEM_RULES.values())
    return cell.systems * per_system + sum(rule(cell) for rule in CELL_RULES.values())


# --- how long each takes: estimates, not measurements ---------------------------------------

# Terraform runs 10 operations at once by default (-parallelism). A plan refreshes each
# resource in state with one or two reads of Google's API, a few hundred milliseconds
# each: 0.5 s a resource, an estimate.
PARALLELISM = 10
PLAN_SECONDS_A_RESOURCE = 0.5
# What creating a resource takes, by type, estimated: a database's statements and a Cloud
# Run service's first revision a minute or more, an IAM pause its minute, a BigQuery DDL
# job seconds, an IAM member a policy's read-modify-write (about 5 s), the rest 3 s.
CREATE_SECONDS = {
    "time_sleep": 60,
    "google_spanner_database": 90,
    "google_spanner_instance": 120,
    "google_cloud_run_v2_service": 60,
    "google_cloud_run_v2_worker_pool": 60,
    "google_cloud_run_v2_job": 20,
    "google_bigquery_job": 10,
    "google_service_account": 5,
}
CREATE_SECONDS_IAM = 5
CREATE_SECONDS_OTHER = 3


def _create_seconds(address: str) -> float:
    rtype = address.split(".")[0]
    if rtype in CREATE_SECONDS:
        return CREATE_SECONDS[rtype]
    return CREATE_SECONDS_IAM if rtype.endswith("_iam_member") else CREATE_SECONDS_OTHER


def operation_seconds(cell: Cell) -> float:
    """What creating `cell` from nothing takes, every operation one after the other."""
    per_system = sum(_create_seconds(a) * rule(cell) for a, rule in SYSTEM_RULES.items())
    own = sum(_create_seconds(a) * rule(cell) for a, rule in CELL_RULES.items())
    return cell.systems * per_system + own


def batch_minutes(budget: int, cell: Cell | None = None) -> float:
    """What applying `budget` resources of new systems takes, operations PARALLELISM at
    once: at the mean creation time of a system's resources."""
    cell = cell or Cell(systems=1)
    count = sum(rule(cell) for rule in SYSTEM_RULES.values())
    seconds = sum(_create_seconds(a) * rule(cell) for a, rule in SYSTEM_RULES.items())
    return budget * seconds / count / PARALLELISM / 60


def plan_minutes(cell: Cell) -> float:
    return resources(cell) * PLAN_SECONDS_A_RESOURCE / PARALLELISM / 60


def _workflow(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((WORKFLOWS / name).read_text()))


def apply_budget() -> int:
    """Resources one apply creates at most (terraform-environment.yml)."""
    return int(_workflow("terraform-environment.yml")["env"]["APPLY_BATCH_RESOURCES"])


def timeout(workflow: str, job: str) -> int:
    return int(_workflow(workflow)["jobs"][job]["timeout-minutes"])


def first_apply(cell: Cell) -> tuple[int, float]:
    """How many applies a cell's first apply takes (each a batch of new systems that fits
    the budget, with the cell's own resources in the first), and the longest one's
    minutes, operations PARALLELISM at once."""
    own = sum(rule(cell) for rule in CELL_RULES.values())
    per_system = sum(rule(cell) for rule in SYSTEM_RULES.values())
    fits = max(1, (apply_budget() - own) // per_system)
    batches = math.ceil(cell.systems / fits)
    first = Cell(min(fits, cell.systems), cell.serving, cell.own_project, cell.oncall, cell.readers)
    return batches, operation_seconds(first) / PARALLELISM / 60


# A cell's rollout (deploy-cell.yml): the exporter's canary deployed (a revision of a
# worker pool: about two minutes, an estimate), the soak, every instance, the soak again,
# then the ingest service deployed, smoke-tested on each canary system and promoted
# (about three minutes, an estimate).
EXPORTER_DEPLOY_MINUTES = 2
INGEST_DEPLOY_MINUTES = 3


def rollout(cells: int, soak_seconds: int) -> tuple[int, float]:
    """A rollout's waves of cells (deploy-environment.yml: the first alone, then a
    quarter of the others, at least one, then the rest, each max-parallel at once) and
    its minutes."""
    jobs = _workflow("deploy-environment.yml")["jobs"]
    parallel = int(jobs["rest"]["strategy"]["max-parallel"])
    assert int(jobs["second"]["strategy"]["max-parallel"]) == parallel
    second = math.ceil((cells - 1) / 4)
    waves = 1 + math.ceil(second / parallel) + math.ceil((cells - 1 - second) / parallel)
    per_cell = 2 * EXPORTER_DEPLOY_MINUTES + 2 * soak_seconds / 60 + INGEST_DEPLOY_MINUTES
    return waves, waves * per_cell


# --- evaluated limits ------------------------------------------------------------------------


def _plain_locals(path: Path) -> str:
    blocks = re.findall(r"(?ms)^locals \{\n.*?^\}\n", path.read_text())
    resources_re = re.compile(r"\b(google_|data\.|module\.|time_sleep)")
    return "\n".join(b for b in blocks if not resources_re.search(b))


def _console(work: Path, expression: str) -> Any:
    terraform = shutil.which("terraform")
    if terraform is None:
        raise SystemExit("terraform is not installed")
    run = subprocess.run(  # noqa: S603 - our own argv, no shell
        [terraform, "console", "-var-file=values.tfvars"],
        input=f"jsonencode({expression})\n",
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(f"terraform console failed:\n{run.stderr}")
    return json.loads(json.loads(run.stdout.strip().splitlines()[-1]))


def system_names(count: int, first: int = 0) -> list[str]:
    """`count` system names of 24 characters, the longest accepted."""
    return [f"s{first + n:05d}".ljust(24, "x") for n in range(count)]


def layout(systems: int, cell_max: int = 100) -> dict[str, dict[str, Any]]:
    """The fleet's cells as their variable files say: the first in the environment's
    project, each further one in a project of its own."""
    cells: dict[str, dict[str, Any]] = {}
    for index in range(math.ceil(systems / cell_max)):
        count = min(cell_max, systems - index * cell_max)
        name = f"c{index + 1:02d}"
        project = ENVIRONMENT_PROJECT if index == 0 else f"recordline-prod-cell-{index + 1:02d}"
        names = system_names(count, index * cell_max)
        cells[name] = {
            "cell": name,
            "environment": "prod",
            "project_id": project,
            **({"environment_project_id": ENVIRONMENT_PROJECT} if index else {}),
            "oncall": ["group:recordline-oncall@example.com"],
            "service_account_quota": GRANTED_SERVICE_ACCOUNTS,
            "systems": {
                n: {"serving": True, **({"spanner_instance": 2} if i >= 90 else {})}
                for i, n in enumerate(names)
            },
        }
    return cells


def _cell_console(systems: int, expression: str, entry: str = "") -> Any:
    """`expression` in the cell root of `systems` serving systems with the longest names,
    each with `entry` besides, evaluated offline (`terraform console`, its plain locals
    in a scratch tree beside the repository's schemas)."""
    entries = ", ".join(
        f'"{n}" = {{ serving = true{", spanner_instance = 2" if i >= 90 else ""}{entry} }}'
        for i, n in enumerate(system_names(systems))
    )
    values = {
        "project_id": f'"{ENVIRONMENT_PROJECT}"',
        "environment": '"prod"',
        "cell": '"c01"',
        "terraform_state_bucket": '"recordline-prod-tfstate"',
        "oncall": '["group:recordline-oncall@example.com"]',
        "service_account_quota": str(GRANTED_SERVICE_ACCOUNTS),
        "systems": "{ " + entries + " }",
    }
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch, "infra", "terraform")
        work.mkdir(parents=True)
        shutil.copytree(ROOT / "schemas", Path(scratch, "schemas"))
        shutil.copy(TERRAFORM / "variables.tf", work)
        plain = [_plain_locals(p) for p in sorted(TERRAFORM.glob("*.tf"))]
        plain.append('locals {\n  project_number = "123456789012"\n  policy_principals = 1500\n}\n')
        (work / "locals.tf").write_text("\n".join(plain))
        (work / "values.tfvars").write_text("\n".join(f"{k} = {v}" for k, v in values.items()))
        return _console(work, expression)


@cache
def cell_limits(systems: int) -> dict[str, Any]:
    """A cell of `systems` systems with the longest names, as the cell root evaluates it:
    its systems' file in bytes, its audiences in characters, its SLOs."""
    expression = (
        "{ file = local.systems_file_bytes, file_max = local.secret_bytes,"
        " audiences = length(jsonencode(local.custom_audiences)),"
        " audiences_max = local.custom_audience_max,"
        " slos = local.cell_slos, cell_max = var.cell_max_systems,"
        " instances = length(local.spanner_instances),"
        " databases = max([for i, d in local.spanner_databases : length(d)]...),"
        " databases_max = local.spanner_databases_per_instance,"
        " principals_max = 1500 }"
    )
    found: dict[str, Any] = _cell_console(systems, expression)
    # The service's principals: each system's push account, on-call's operator and the
    # smoke test's and the probe's accounts, the deploy and operator accounts as
    # developers (cell.tf).
    found["principals"] = systems + 3 + 2
    return found


# A realistic system's entry, beside the least one (`cell_limits`'): one reader and one
# operator of its own besides the cell's accounts, and a declared schema for its JSON
# topic (a file of its own, named in the entry: docs/cells.md#size).
REALISTIC = (
    'readers = ["user:analyst-of-this-system@example.com"],'
    ' operators = ["user:owner-of-this-system@example.com"],'
    ' json_schema = "schemas/orders.avsc"'
)
# A realistic entry of a system whose exports are a permission of their own: one
# exporter of its own besides (docs/security.md#who-exports); a system that names none
# has no export_principals in the file.
EXPORTING = f'{REALISTIC}, exporters = ["user:exporter-of-this-system@example.com"]'


@cache
def file_sizes(realistic: bool, systems: int = 100, *, exporting: bool = False) -> list[int]:
    """The bytes of a cell's systems' file holding its first 1, 2, … `systems` systems,
    each with the longest name, serving, and its entry the least one or a `REALISTIC`
    one (`EXPORTING`, with an exporter of its own, where `exporting`), as the cell root
    renders it; and the bytes a secret holds, last."""
    # The file of the first n systems, in the file's order (by name), as the cell root
    # counts its bytes (cell.tf, systems_file_bytes).
    ordered = "sort(keys(local.systems_file))"
    prefix = f"{{ for k in slice({ordered}, 0, n) : k => local.systems_file[k] }}"
    expression = (
        f"concat([for n in range(1, length({ordered}) + 1) :"
        f" length(base64encode(jsonencode({prefix}))) / 4 * 3], [local.secret_bytes])"
    )
    entry = f", {EXPORTING if exporting else REALISTIC}" if realistic else ""
    found: list[int] = _cell_console(systems, expression, entry)
    return found


def largest_cell(realistic: bool = True, *, exporting: bool = False) -> int:
    """The most systems a cell's systems' file holds within a secret (64 KiB), at the
    longest names, each entry the least one or a `REALISTIC` (or `EXPORTING`) one; at
    most cell_max_systems (100)."""
    *sizes, most = file_sizes(realistic, exporting=exporting)
    return sum(1 for size in sizes if size <= most)


@cache
def project_limits(systems: int) -> dict[str, Any]:
    """The projects of a fleet of `systems` systems, as the environment root evaluates
    them from the cells' files: what each holds, and may."""
    cells = layout(systems)
    quotas = {
        body["project_id"]: {"service_accounts": GRANTED_SERVICE_ACCOUNTS}
        for body in cells.values()
    }
    values = {
        "project_id": f'"{ENVIRONMENT_PROJECT}"',
        "environment": '"prod"',
        "github_owner": '"recordline"',
        "github_repo": '"recordline"',
        "github_repository_id": '"1"',
        "github_owner_id": '"2"',
        "terraform_state_bucket": '"recordline-prod-tfstate"',
        "oncall": '["group:recordline-oncall@example.com"]',
        "notification_channels": f'["projects/{ENVIRONMENT_PROJECT}/notificationChannels/1"]',
        "ticket_channels": f'["projects/{ENVIRONMENT_PROJECT}/notificationChannels/2"]',
        "project_quotas": json.dumps(quotas),
    }
    expression = (
        "{ usage = local.project_usage, limits = local.project_limits, over = local.over_limit,"
        " cells = length(local.cells), systems = length(local.system_names),"
        " distinct = length(distinct(local.system_names)) }"
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch, "infra", "terraform", "environment")
        work.mkdir(parents=True)
        cell_files = Path(scratch, "infra", "terraform", "env", "prod")
        cell_files.mkdir(parents=True)
        for name, body in cells.items():
            (cell_files / f"{name}.tfvars.json").write_text(json.dumps(body))
        shutil.copy(ENVIRONMENT / "variables.tf", work)
        (work / "locals.tf").write_text(_plain_locals(ENVIRONMENT / "cells.tf"))
        (work / "values.tfvars").write_text("\n".join(f"{k} = {v}" for k, v in values.items()))
        found: dict[str, Any] = _console(work, expression)
    return found


# Each row: the limit, what it is, where it is written, and how much of it a fleet uses.
@dataclass(frozen=True)
class Limit:
    name: str
    source: str
    value: Callable[[int], float]
    used: Callable[[int], float]


def kept_revisions() -> int:
    """How many revisions of a cell's service and of its pool a rollout keeps for a
    rollback (variables.tf's kept_revisions; deploy-cell.yml deletes the older ones that
    serve nothing, and retires the settings versions none of the rest mounts)."""
    with (TERRAFORM / "variables.tf").open() as f:
        variables = hcl2.load(f)["variable"]
    # python-hcl2 keeps a block's label with its quotes.
    (kept,) = [block['"kept_revisions"'] for block in variables if '"kept_revisions"' in block]
    return int(kept["default"])


def _most(systems: int, key: str) -> float:
    found = project_limits(systems)
    return max(usage[key] for usage in found["usage"].values())


def _limit(systems: int, key: str) -> float:
    found = project_limits(systems)
    return min(limits[key] for limits in found["limits"].values())


def _cells(systems: int) -> int:
    return len(layout(systems))


def _cell_size(systems: int) -> int:
    return min(systems, 100)


LIMITS = (
    Limit(
        "Service accounts a project holds (granted: 200)",
        "https://cloud.google.com/iam/quotas",
        lambda s: _limit(s, "service_accounts"),
        lambda s: _most(s, "service_accounts"),
    ),
    Limit(
        "Cloud Run services a project holds in a region",
        "https://cloud.google.com/run/quotas",
        lambda s: _limit(s, "run_services"),
        lambda s: _most(s, "run_services"),
    ),
    Limit(
        "Cloud Run jobs a project holds in a region",
        "https://cloud.google.com/run/quotas",
        lambda s: _limit(s, "run_jobs"),
        lambda s: _most(s, "run_jobs"),
    ),
    Limit(
        "Cloud Scheduler jobs a project holds in a region",
        "https://cloud.google.com/scheduler/quotas",
        lambda s: _limit(s, "scheduler_jobs"),
        lambda s: _most(s, "scheduler_jobs"),
    ),
    Limit(
        "Pub/Sub topics a project holds",
        "https://cloud.google.com/pubsub/quotas",
        lambda s: _limit(s, "topics"),
        lambda s: _most(s, "topics"),
    ),
    Limit(
        "Pub/Sub subscriptions a project holds",
        "https://cloud.google.com/pubsub/quotas",
        lambda s: _limit(s, "subscriptions"),
        lambda s: _most(s, "subscriptions"),
    ),
    Limit(
        "Uptime checks in the metrics scope (one a cell)",
        "https://cloud.google.com/monitoring/quotas",
        lambda s: 100,
        _cells,
    ),
    Limit(
        "Jobs of a matrix: the rollout's cells",
        "https://docs.github.com/en/actions/writing-workflows/choosing-what-your-workflow-does/running-variations-of-jobs-in-a-workflow",
        lambda s: 256,
        _cells,
    ),
    Limit(
        "Principals in the cell service's allow policy",
        "https://cloud.google.com/iam/quotas",
        lambda s: cell_limits(_cell_size(s))["principals_max"],
        lambda s: cell_limits(_cell_size(s))["principals"],
    ),
    Limit(
        "SLOs of a cell's service (two a system, the cell's reads' two)",
        "https://cloud.google.com/stackdriver/docs/solutions/slo-monitoring/ui/create-slo",
        lambda s: 500,
        lambda s: cell_limits(_cell_size(s))["slos"],
    ),
    Limit(
        "Bytes of a cell's systems' file (a secret's version)",
        "https://cloud.google.com/secret-manager/quotas",
        lambda s: cell_limits(_cell_size(s))["file_max"],
        lambda s: cell_limits(_cell_size(s))["file"],
    ),
    Limit(
        "Revisions of a cell's service or pool (the kept ones, what serves, a candidate)",
        "https://cloud.google.com/run/quotas",
        lambda s: 1000,
        lambda s: kept_revisions() + 2,
    ),
    Limit(
        "Characters of a cell's custom audiences",
        "https://cloud.google.com/run/docs/configuring/custom-audiences",
        lambda s: cell_limits(_cell_size(s))["audiences_max"],
        lambda s: cell_limits(_cell_size(s))["audiences"],
    ),
    Limit(
        "Databases on a Spanner instance (this configuration's 90 of 100)",
        "https://cloud.google.com/spanner/quotas",
        lambda s: cell_limits(_cell_size(s))["databases_max"],
        lambda s: cell_limits(_cell_size(s))["databases"],
    ),
    Limit(
        "Minutes of a cell's plan (plan job's timeout)",
        "terraform-environment.yml, PLAN_SECONDS_A_RESOURCE (estimate)",
        lambda s: timeout("terraform-environment.yml", "plan"),
        lambda s: round(plan_minutes(Cell(_cell_size(s))), 1),
    ),
    Limit(
        "Minutes of a first apply's batch (apply job's timeout)",
        "terraform-apply.yml, CREATE_SECONDS (estimate)",
        lambda s: timeout("terraform-apply.yml", "apply"),
        lambda s: round(first_apply(Cell(_cell_size(s)))[1], 1),
    ),
)


def table() -> str:
    header = (
        "| Limit | Source | Limit's value | " + " | ".join(f"{s:,} systems" for s in FLEETS) + " |"
    )
    rows = [header, "|---|---|---:|" + "---:|" * len(FLEETS)]
    for limit in LIMITS:
        values = {limit.value(s) for s in FLEETS}
        shown = " / ".join(f"{v:g}" for v in sorted(values))
        used = " | ".join(f"{limit.used(s):g}" for s in FLEETS)
        rows.append(
            f"| {limit.name} | [source]({limit.source}) | {shown} | {used} |"
            if limit.source.startswith("http")
            else f"| {limit.name} | {limit.source} | {shown} | {used} |"
        )
    return "\n".join(rows)


def times(soak_seconds: int = 300) -> str:
    rows = [
        "| | " + " | ".join(f"{s:,} systems" for s in FLEETS) + " |",
        "|---|" + "---:|" * len(FLEETS),
    ]
    cells = {s: Cell(_cell_size(s)) for s in FLEETS}
    rows.append("| Cells | " + " | ".join(str(_cells(s)) for s in FLEETS) + " |")
    rows.append(
        "| Resources in a cell's plan | "
        + " | ".join(f"{resources(cells[s]):,}" for s in FLEETS)
        + " |"
    )
    rows.append(
        "| A cell's plan (minutes) | "
        + " | ".join(f"{plan_minutes(cells[s]):.1f}" for s in FLEETS)
        + " |"
    )
    rows.append(
        "| A first apply: runs, each one approval for every cell | "
        + " | ".join(str(first_apply(cells[s])[0]) for s in FLEETS)
        + " |"
    )
    rows.append(
        "| A first apply: its longest batch (minutes) | "
        + " | ".join(f"{first_apply(cells[s])[1]:.1f}" for s in FLEETS)
        + " |"
    )
    rows.append(
        "| A rollout: waves of cells | "
        + " | ".join(str(rollout(_cells(s), soak_seconds)[0]) for s in FLEETS)
        + " |"
    )
    rows.append(
        "| A rollout (minutes) | "
        + " | ".join(f"{rollout(_cells(s), soak_seconds)[1]:.0f}" for s in FLEETS)
        + " |"
    )
    return "\n".join(rows)


def sizes() -> str:
    """The largest cell whose systems' file fits a secret, by what each entry holds."""
    rows = ["| A system's entry | Bytes a system | The largest cell that fits |", "|---|---:|---:|"]
    for realistic, exporting, said in (
        (False, False, "the least: serving, no reader or operator of its own, no schema"),
        (True, False, "realistic: serving, one reader and one operator of its own, a JSON schema"),
        (True, True, "realistic, and one exporter of its own (exports a permission of their own)"),
    ):
        found = file_sizes(realistic, exporting=exporting)
        first, *_, last = found[:-1]
        each = (last - first) / (len(found) - 2)
        rows.append(f"| {said} | {each:.0f} | {largest_cell(realistic, exporting=exporting)} |")
    return "\n".join(rows)


def main() -> int:
    print(table())
    print()
    print(times())
    print()
    print(sizes())
    return 0


if __name__ == "__main__":
    sys.exit(main())

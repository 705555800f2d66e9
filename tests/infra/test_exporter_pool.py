"""The exporter service in Terraform and in the workflows: a worker pool of two
instances or more exporting every serving system with what each system's ingest has,
granted only those systems' databases and tables; ingest at zero instances at rest;
and every rollout deploying the exporter before any system, stopping if it fails.

Expressions are evaluated by `terraform console` where their value matters; the
workflows' jobs start as GitHub starts them, from their own `needs` and `if`, and their
shell steps run against the fake cloud (tests/infra/fake_cloud.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.cli import typed_columns_file
from app.settings import Settings
from tests.infra.test_apply import APPLIER, apply, plan
from tests.infra.test_fleet import _root_console, _root_console_run
from tests.infra.test_rollout import (
    BUILT,
    EARLIER,
    EXPORTER,
    GITHUB,
    OPERATOR,
    PROJECT,
    REPOSITORY,
    VARIABLES,
    account,
    deploy_output,
    rollout,
    runs,
    world,
)
from tests.infra.test_terraform import MODULE, TERRAFORM, _load, _resources, _variables
from tests.infra.workflow_runner import Cloud, Expressions, interpolate, load, run_job

SERVING = "{ recordline = { serving = true }, orders-eu = { serving = true }, quiet = {} }"


def _pool() -> dict[str, Any]:
    return _resources("google_cloud_run_v2_worker_pool")["exporter"]


# --- the worker pool -----------------------------------------------------------------------


def test_the_exporter_is_a_worker_pool_of_two_instances_or_more() -> None:
    pool = _pool()
    assert pool["for_each"] == "${local.exporter}"
    (scaling,) = pool["scaling"]
    assert scaling == {
        "scaling_mode": "MANUAL",
        "manual_instance_count": "${var.exporter_instances}",
    }
    assert _variables()["exporter_instances"]["default"] == 2
    (template,) = pool["template"]
    assert template["service_account"] == "${google_service_account.exporter[each.key].email}"
    (container,) = template["containers"]
    assert {"name": "RECORDLINE_EXPORT_SYSTEMS", "value": "${local.exported_systems_json}"} in (
        container["env"]
    )
    # One instance is no failover: the plan refuses it.
    refused = _root_console_run("var.exporter_instances", "{}", (("exporter_instances", "1"),))
    assert "exporter_instances must be at least 2" in refused.stderr


def test_it_exists_once_a_system_has_serving() -> None:
    assert _root_console("local.exporter", "{ recordline = {} }") == {}
    assert _root_console("local.exporter", SERVING) == {"recordline": EXPORTER}


def test_each_serving_system_is_exported_with_what_its_ingest_service_has(
    tmp_path: Path,
) -> None:
    schema = b'{"type": "record", "name": "Order", "fields": [{"name": "n", "type": "long"}]}'
    (tmp_path / "o.avsc").write_bytes(schema)
    typed = typed_columns_file(tmp_path / "o.avsc", "AVRO").encode()
    systems = (
        "{ recordline = { serving = true }, quiet = {},"
        ' orders-eu = { serving = true, spanner_instance = 2, json_schema = "schemas/o.avsc" } }'
    )
    found = _root_console(
        "{ systems = local.exported_systems, text = local.exported_systems_json }",
        systems,
        files=(("schemas/o.avsc", schema), ("schemas/o.avsc.bigquery.json", typed)),
    )
    project = "recordline-dev"
    assert found["systems"] == {
        "recordline": {
            "serving": f"spanner://projects/{project}/instances/recordline-serving"
            "/databases/recordline",
            "store": f"bigquery://{project}/recordline",
        },
        "orders-eu": {
            "serving": f"spanner://projects/{project}/instances/recordline-serving-2"
            "/databases/orders-eu",
            # The module's dataset: its name with `_` for `-`.
            "store": f"bigquery://{project}/orders_eu",
            "json_topic_schema": schema.decode(),
        },
    }
    # The service reads it as Terraform writes it, and gives each system its settings.
    loaded = Settings.load({"RECORDLINE_EXPORT_SYSTEMS": found["text"]}).exporter.exported()
    assert set(loaded) == {"recordline", "orders-eu"}
    # The module is given the very datasets named here.
    assert "${local.dataset_ids[each.key]}" in json.dumps(
        [b["system"] for b in _load(TERRAFORM / "systems.tf")["module"]]
    )


def test_a_hundred_serving_systems_fit_one_variable() -> None:
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, 100))]
    entries = [
        f'"{n}" = {{ serving = true{", spanner_instance = 2" if i >= 90 else ""} }}'
        for i, n in enumerate(names)
    ]
    found = _root_console(
        "{ bytes = length(local.exported_systems_json), limit = local.env_value_bytes,"
        " systems = length(local.exported_systems) }",
        "{ " + ", ".join(entries) + " }",
        (("service_account_quota", "200"),),
    )
    assert found["systems"] == 100
    # About 180 bytes a system with names this long: 18 KB of Cloud Run's 32 KiB.
    assert found["bytes"] < 20_000 < found["limit"] == 32768, found
    (precondition,) = _pool()["lifecycle"][0]["precondition"]
    assert precondition["condition"] == (
        "${length(local.exported_systems_json) <= local.env_value_bytes}"
    )


def test_its_account_counts_against_the_projects_quota_once_a_system_has_serving() -> None:
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, 94))]

    def accepted(count: int, serving: bool) -> bool:
        entries = [f'"{n}" = {{ serving = {str(serving).lower()} }}' for n in names[:count]]
        run = _root_console_run("keys(var.systems)", "{ " + ", ".join(entries) + " }")
        return "Invalid value for variable" not in run.stderr

    assert accepted(94, serving=False)
    assert not accepted(94, serving=True)  # the exporter service's account is one more
    assert accepted(93, serving=True)


# --- least privilege -----------------------------------------------------------------------


def _grants_to(member: str) -> list[tuple[str, str, str]]:
    """(type, name, role) of every grant to `member`, root and module alike."""
    found = []
    for path in sorted(TERRAFORM.rglob("*.tf")):
        for block in _load(path).get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    if member in str(body.get("member", "")) + str(body.get("members", "")):
                        found.append((rtype, name, str(body.get("role"))))
    return sorted(found)


def test_the_exporter_may_use_each_serving_systems_database_and_tables_and_nothing_more() -> None:
    assert _grants_to("var.exporter_service_account") == [
        ("google_bigquery_table_iam_member", "exporter_writes_tables", "roles/bigquery.dataEditor"),
        ("google_pubsub_schema_iam_member", "exporter_reads_schema", "roles/pubsub.viewer"),
        (
            "google_spanner_database_iam_member",
            "exporter_uses_database",
            "roles/spanner.databaseUser",
        ),
    ]
    database = _resources("google_spanner_database_iam_member")["exporter_uses_database"]
    assert database["database"] == "${each.value.name}"  # each system's own database
    assert "google_spanner_database.serving" in database["for_each"]
    tables = _resources("google_bigquery_table_iam_member")["exporter_writes_tables"]
    named = set(re.findall(r"google_bigquery_table\.(\w+)", json.dumps(tables["for_each"])))
    assert named == {"records", "rejected", "export_watermarks"}  # not dead_letters
    assert tables["table_id"] == "${each.value.table_id}"
    # At the project, only the runtime role of query jobs and metrics (runtime_iam.tf).
    assert _grants_to("google_service_account.exporter") == [
        ("google_project_iam_binding", "runtime", "${google_project_iam_custom_role.runtime.id}")
    ]
    # Who may deploy it and act as it: the deploy account, on-call's, the apply account.
    pools = _resources("google_cloud_run_v2_worker_pool_iam_member")
    assert {b["role"] for b in pools.values()} == {"roles/run.developer"}
    acts = _resources("google_service_account_iam_member")["acts_as_exporter"]
    assert acts["role"] == "roles/iam.serviceAccountUser"


# --- ingest scales with its own traffic ---------------------------------------------------


def test_ingest_services_run_nothing_between_requests_and_rest_at_zero() -> None:
    (service,) = [
        body
        for block in _load(MODULE / "cloud_run.tf")["resource"]
        for rtype, named in block.items()
        if rtype == "google_cloud_run_v2_service"
        for body in named.values()
    ]
    (template,) = service["template"]
    assert template["scaling"][0]["min_instance_count"] == "${var.min_instances}"
    assert template["containers"][0]["resources"][0]["cpu_idle"] == "${var.min_instances == 0}"
    assert _variables()["min_instances"]["default"] == 0
    # A system may keep instances warm for its followers: its own `min_instances`.
    inputs = _root_console(
        "{ for k, v in local.systems : k => v.min_instances != null ? v.min_instances : "
        "var.min_instances }",
        "{ recordline = { serving = true }, busy = { serving = true, min_instances = 1 } }",
    )
    assert inputs == {"recordline": 0, "busy": 1}
    # Nothing tells a service to export: RECORDLINE_EXPORT_IN_SERVICE is off unless set.
    assert "RECORDLINE_EXPORT_IN_SERVICE" not in "".join(
        p.read_text() for p in sorted(TERRAFORM.rglob("*.tf"))
    )
    assert Settings.load({}).store.export_in_service is False


# --- the exporter first, in every rollout ---------------------------------------------------


@pytest.mark.parametrize(
    ("exporter", "first_runs"),
    [("success", True), ("skipped", True), ("failure", False), ("cancelled", False)],
)
def test_no_system_is_deployed_before_the_exporter_service(exporter: str, first_runs: bool) -> None:
    jobs = load("deploy-environment.yml")["jobs"]
    assert "exporter" in jobs["first"]["needs"]
    assert jobs["rest"]["needs"] == ["prepare", "first"]  # after the first, after it
    needs = {"prepare": {"result": "success", "outputs": {}}, "exporter": {"result": exporter}}
    assert runs(jobs["first"], needs, {"needs": needs, "inputs": {}}) is first_runs


def test_the_exporter_job_runs_only_where_there_is_an_exporter() -> None:
    job = load("deploy-environment.yml")["jobs"]["exporter"]
    assert job["needs"] == "prepare"
    for pool, expected in (("", False), (EXPORTER, True)):
        needs = {"prepare": {"result": "success", "outputs": {"exporter": pool}}}
        assert runs(job, needs, {"needs": needs, "inputs": {}}) is expected


def _deploys(cloud: Cloud) -> list[str]:
    """What each deploy call deployed, in order: the pool, or a system's service."""
    found = []
    for argv in cloud.calls():
        if argv[:4] == ["beta", "run", "worker-pools", "deploy"]:
            found.append(argv[4])
        elif argv[:2] == ["run", "deploy"]:
            found.append(argv[2])
    return found


def test_a_rollout_deploys_the_exporter_first_by_digest(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path, world(["recordline", "orders"], deployed=EARLIER, exporter=EARLIER))
    ran = rollout(cloud)
    assert all(j is None or j.result == "success" for j in ran.values()), ran
    assert _deploys(cloud) == [EXPORTER, "recordline", "orders"]
    pool = cloud.world["worker_pools"][EXPORTER]
    newest = pool["revisions"][-1]
    assert (newest["digest"], newest["command"], newest["args"]) == (
        BUILT,
        ["recordline"],
        ["exporter"],
    )
    assert pool["split"] == "latest"  # every instance on it


def test_an_exporter_that_fails_to_start_stops_the_rollout_before_any_system(
    tmp_path: Path,
) -> None:
    state = world(["recordline"], deployed=EARLIER, exporter=EARLIER)
    state["broken_digests"] = [BUILT]
    cloud = Cloud(tmp_path, state)
    ran = rollout(cloud)
    job = ran["exporter"]
    assert job is not None
    assert job.result == "failure"
    assert ran["first"] is None
    assert ran["rest"] is None
    assert _deploys(cloud) == [EXPORTER]
    # Every instance back on the revision that ran before, pinned there.
    assert cloud.world["worker_pools"][EXPORTER]["split"] == f"{EXPORTER}-00002-w2p"
    assert cloud.world["services"]["recordline"]["revisions"][-1]["digest"] == EARLIER


def test_an_apply_that_creates_the_exporter_deploys_it_before_its_new_systems(
    tmp_path: Path,
) -> None:
    earlier_tag = "e" * 40
    state = world(["recordline", "orders"], deployed=EARLIER, exporter="")
    state["iam"]["project"][f"serviceAccount:{APPLIER}"] = ["roles/run.admin"]
    state["services"]["orders"]["revisions"] = state["services"]["orders"]["revisions"][:1]
    state["registry"][REPOSITORY]["tags"] = {earlier_tag: EARLIER}
    cloud = Cloud(tmp_path, state)
    outputs = {
        "deploy": {"value": {s: deploy_output(s) for s in ("recordline", "orders")}},
        "deploy_first": {"value": "recordline"},
        "deploy_exporter": {"value": EXPORTER},
        "github_environment_variables": {"value": VARIABLES},
    }
    (cloud.work / "outputs.json").write_text(json.dumps(outputs))
    terraform = cloud.bin / "terraform"
    terraform.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = show ]; then cat "$3"; fi\n'
        'if [ "$1" = output ]; then cat "$HOME/outputs.json"; fi\n'
    )
    terraform.chmod(0o755)
    job, _ = apply(cloud, plan())
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert job.outputs["exporter"] == EXPORTER
    assert json.loads(job.outputs["new"]) == ["orders"]
    jobs = load("terraform-apply.yml")["jobs"]
    needs: dict[str, Any] = {"apply": {"outputs": job.outputs, "result": "success"}}
    context = {"needs": needs, "inputs": {"environment": "prod"}}
    status = {"failed": False, "cancelled": False}
    exporter = jobs["deploy-new-exporter"]
    assert runs(exporter, needs, context)
    given = {k: interpolate(v, Expressions(context, status)) for k, v in exporter["with"].items()}
    deployed = run_job(
        cloud, "deploy-exporter.yml", "rollout", inputs=given, variables={}, github=GITHUB
    )
    assert deployed.result == "success", [(s.name, s.stderr) for s in deployed.steps]
    assert cloud.world["worker_pools"][EXPORTER]["revisions"][-1]["digest"] == EARLIER
    # The new systems after it, and only once it succeeded.
    assert "deploy-new-exporter" in jobs["deploy-new"]["needs"]
    for result, expected in (("success", True), ("skipped", True), ("failure", False)):
        needs["deploy-new-exporter"] = {"result": result}
        assert runs(jobs["deploy-new"], needs, context) is expected


def test_on_call_may_move_the_exporter_back_as_the_operator_account(tmp_path: Path) -> None:
    # The runbook's rollback of the exporter service (docs/operations.md#the-exporter-service).
    state = world(["recordline"], deployed=EARLIER, exporter=EARLIER)
    cloud = Cloud(tmp_path, state)
    done = cloud.shell(
        f"gcloud beta run worker-pools update-instance-split {EXPORTER} --project={PROJECT} "
        f"--region=europe-west1 --impersonate-service-account={OPERATOR} "
        f"--to-revisions={EXPORTER}-00001-p1q=100"
    )
    assert done.returncode == 0, done.stderr
    assert cloud.world["worker_pools"][EXPORTER]["split"] == f"{EXPORTER}-00001-p1q"
    assert account(EXPORTER) in cloud.world["iam"]["service_accounts"]

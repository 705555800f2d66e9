"""terraform-apply.yml's apply job against the fake cloud: an approved saved plan is
applied only while every Cloud Run service it updates still has the revision and the
traffic the plan read.

The provider sends a service whole when it updates it, as the plan holds it: with the
image and traffic of plan time, whatever ignore_changes keeps out of the diff. A deploy
or an on-call rollback between the plan and its approval would be undone. terraform is
a stand-in here that shows a saved plan as `terraform show -json` does (its JSON
format: https://developer.hashicorp.com/terraform/internals/json-format) and records
what it was asked to apply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_rollout import EARLIER, GITHUB, PROJECT, REGION, VARIABLES, world
from tests.infra.workflow_runner import Cloud, Job, run_job

APPLIER = f"recordline-tf-apply@{PROJECT}.iam.gserviceaccount.com"
SERVICE = 'module.system["recordline"].google_cloud_run_v2_service.recordline'
LATEST = {
    "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST",
    "revision": "",
    "percent": 100,
    "tag": "",
}


def plan(*changes: dict[str, Any]) -> dict[str, Any]:
    return {"format_version": "1.2", "resource_changes": list(changes)}


def service_update(revision: str, traffic: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan's change to the service: an update, `before` as read at plan time."""
    before = {
        "project": PROJECT,
        "location": REGION,
        "name": "recordline",
        "latest_created_revision": revision,
        "traffic": traffic,
    }
    return {
        "address": SERVICE,
        "type": "google_cloud_run_v2_service",
        "change": {"actions": ["update"], "before": before, "after": before},
    }


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    state = world(["recordline"], deployed=EARLIER)
    # The apply account's project roles (variables.tf, terraform_apply_roles).
    state["iam"]["project"][f"serviceAccount:{APPLIER}"] = [
        "roles/run.admin",
        "roles/spanner.admin",
    ]
    cloud = Cloud(tmp_path, state)
    terraform = cloud.bin / "terraform"
    terraform.write_text(
        '#!/bin/sh\necho "$*" >> "$HOME/terraform.log"\nif [ "$1" = show ]; then cat "$3"; fi\n'
    )
    terraform.chmod(0o755)
    return cloud


def apply(cloud: Cloud, saved: dict[str, Any]) -> tuple[Job, list[str]]:
    artifact = cloud.artifacts / "tfplan-prod"
    artifact.mkdir(parents=True, exist_ok=True)
    (artifact / "tfplan").write_text(json.dumps(saved))
    job = run_job(
        cloud,
        "terraform-apply.yml",
        "apply",
        # What terraform.yml hands on from the approval (approve.yml, in terraform-prod).
        inputs={
            "environment": "prod",
            "workload_identity_provider": VARIABLES["GCP_WORKLOAD_IDENTITY_PROVIDER"],
            "apply_service_account": APPLIER,
        },
        variables={},
        github=GITHUB,
    )
    log = cloud.work / "terraform.log"
    return job, log.read_text().splitlines() if log.exists() else []


def _applied(calls: list[str]) -> bool:
    return "apply -input=false tfplan" in calls


def test_a_plan_of_what_still_serves_is_applied(cloud: Cloud) -> None:
    job, calls = apply(cloud, plan(service_update("recordline-00002-x2y", [LATEST])))
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert _applied(calls)


def test_a_plan_older_than_a_deploy_is_refused(cloud: Cloud) -> None:
    # Planned when 00001 was the newest revision; a deploy made 00002 since.
    job, calls = apply(cloud, plan(service_update("recordline-00001-x1y", [LATEST])))
    refused = job.step("Refuse a plan older than a deploy or a rollback")
    assert refused.outcome == "failure"
    assert "A deploy or a rollback came after this plan" in refused.stderr
    assert not _applied(calls)


def test_a_plan_older_than_a_rollback_is_refused(cloud: Cloud) -> None:
    # On-call pinned every request to 00001 after the plan was made.
    services = cloud.world["services"]
    services["recordline"]["traffic"] = [{"revision": "recordline-00001-x1y", "percent": 100}]
    cloud.update(services=services)
    job, calls = apply(cloud, plan(service_update("recordline-00002-x2y", [LATEST])))
    assert job.step("Refuse a plan older than a deploy or a rollback").outcome == "failure"
    assert not _applied(calls)
    # Planned again, with the pin it now reads, it is applied and keeps the pin.
    pinned = {**LATEST, "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"}
    pinned["revision"] = "recordline-00001-x1y"
    job, calls = apply(cloud, plan(service_update("recordline-00002-x2y", [pinned])))
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert _applied(calls)


def test_a_plan_that_changes_no_service_is_applied_whatever_serves(cloud: Cloud) -> None:
    other = {
        "address": 'module.system["recordline"].google_monitoring_dashboard.recordline',
        "type": "google_monitoring_dashboard",
        "change": {"actions": ["update"], "before": {}, "after": {}},
    }
    job, calls = apply(cloud, plan(other))
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert _applied(calls)


def test_a_prod_apply_is_not_approved_in_an_environment_without_a_reviewer(cloud: Cloud) -> None:
    # The approval, before the queue (approve.yml, called by terraform.yml's prod-approve):
    # in an environment GitHub created unprotected, nothing is approved, so no apply.
    from tests.infra.workflow_runner import load

    cloud.update(github_environments={"terraform-prod": ["branch_policy"]})
    approval = load("terraform.yml")["jobs"]["prod-approve"]
    job = run_job(
        cloud,
        "approve.yml",
        "approve",
        inputs=dict(approval["with"]),
        variables={"TF_APPLY_SERVICE_ACCOUNT": APPLIER},
        github=GITHUB,
    )
    check = job.step("Check that the environment requires a reviewer")
    assert check.outcome == "failure"
    assert "requires no reviewer" in check.stderr
    assert job.result == "failure"
    # With a reviewer it is approved, and hands the apply account on.
    cloud.update(github_environments={"terraform-prod": ["required_reviewers"]})
    job = run_job(
        cloud,
        "approve.yml",
        "approve",
        inputs=dict(approval["with"]),
        variables={"TF_APPLY_SERVICE_ACCOUNT": APPLIER},
        github=GITHUB,
    )
    assert job.result == "success"
    assert job.outputs["apply_service_account"] == APPLIER


# --- capacity added by hand ------------------------------------------------------------------


def instance_update(planned: int) -> dict[str, Any]:
    """The plan's change to a serving instance: its processing units set to `planned`."""
    before = {"project": PROJECT, "name": "recordline-serving", "processing_units": 100}
    return {
        "address": 'google_spanner_instance.serving["recordline-serving"]',
        "type": "google_spanner_instance",
        "change": {
            "actions": ["update"],
            "before": before,
            "after": {**before, "processing_units": planned},
        },
    }


@pytest.mark.parametrize(
    ("live", "planned", "applied"), [(100, 200, True), (400, 400, True), (400, 200, False)]
)
def test_a_plan_never_takes_back_capacity_on_call_added_by_hand(
    cloud: Cloud, live: int, planned: int, applied: bool
) -> None:
    # On-call raised the instance to `live` with the runbook's command (capacity.tf);
    # a plan made before that, or from tfvars not yet caught up, would lower it.
    cloud.update(spanner_instances={"recordline-serving": {"processing_units": live}})
    job, calls = apply(cloud, plan(instance_update(planned)))
    guard = job.step("Refuse a plan that lowers a serving instance's capacity")
    assert _applied(calls) is applied
    if not applied:
        assert guard.outcome == "failure"
        assert f"Set spanner_processing_units = {live}" in guard.stderr


# --- a system the apply created -------------------------------------------------------------


def test_a_system_an_apply_creates_is_deployed_right_after_it(tmp_path: Path) -> None:
    from tests.infra.test_rollout import DEPLOYER, REPOSITORY, VARIABLES, deploy_output, serving
    from tests.infra.workflow_runner import Expressions, interpolate, load

    earlier_tag = "e" * 40
    state = world(["recordline", "orders"], deployed=EARLIER)
    state["iam"]["project"][f"serviceAccount:{APPLIER}"] = ["roles/run.admin"]
    state["services"]["orders"]["revisions"] = state["services"]["orders"]["revisions"][:1]
    state["registry"][REPOSITORY]["tags"] = {earlier_tag: EARLIER}
    cloud = Cloud(tmp_path, state)
    outputs = {
        "deploy": {"value": {s: deploy_output(s) for s in ("recordline", "orders")}},
        "deploy_first": {"value": "recordline"},
        "github_environment_variables": {"value": VARIABLES},
    }
    (cloud.work / "outputs.json").write_text(json.dumps(outputs))
    terraform = cloud.bin / "terraform"
    terraform.write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "$HOME/terraform.log"\n'
        'if [ "$1" = show ]; then cat "$3"; fi\n'
        'if [ "$1" = output ]; then cat "$HOME/outputs.json"; fi\n'
    )
    terraform.chmod(0o755)
    created = {
        "address": 'module.system["orders"].google_cloud_run_v2_service.recordline',
        "type": "google_cloud_run_v2_service",
        "change": {"actions": ["create"], "before": None, "after": {}},
    }
    job, calls = apply(cloud, plan(created))
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert _applied(calls)
    assert json.loads(job.outputs["new"]) == ["orders"]
    assert (job.outputs["digest"], job.outputs["image_tag"]) == (EARLIER, earlier_tag)
    # deploy-new: each new system through deploy-system.yml, as a rollout's systems are.
    deploy_new = load("terraform-apply.yml")["jobs"]["deploy-new"]
    # After the exporter service this apply created, if it created one (here: none).
    assert deploy_new["needs"] == ["apply", "deploy-new-exporter"]
    assert job.outputs["exporter"] == ""
    context = {
        "needs": {
            "apply": {"outputs": job.outputs, "result": "success"},
            "deploy-new-exporter": {"result": "skipped"},
        },
        "inputs": {"environment": "prod"},
    }
    status = {"failed": False, "cancelled": False}
    assert interpolate(deploy_new["if"], Expressions(context, status)) is True
    (system,) = interpolate(
        deploy_new["strategy"]["matrix"]["system"], Expressions(context, status)
    )
    given = {
        k: interpolate(v, Expressions({**context, "matrix": {"system": system}}, status))
        for k, v in deploy_new["with"].items()
    }
    assert given["service_account"] == DEPLOYER
    rollout = run_job(
        cloud, "deploy-system.yml", "rollout", inputs=given, variables={}, github=GITHUB
    )
    assert rollout.result == "success", [(s.name, s.stderr) for s in rollout.steps]
    served = cloud.world["services"]["orders"]["revisions"][-1]
    assert (served["digest"], served["command"]) == (EARLIER, None)
    assert serving(cloud, "orders")[0][1:] == (100, True)


def test_nothing_is_deployed_by_an_apply_before_the_first_rollout(tmp_path: Path) -> None:
    from tests.infra.test_rollout import VARIABLES, deploy_output

    state = world(["recordline"])  # on the placeholder: the first deploy has not run
    state["iam"]["project"][f"serviceAccount:{APPLIER}"] = ["roles/run.admin"]
    cloud = Cloud(tmp_path, state)
    outputs = {
        "deploy": {"value": {"recordline": deploy_output("recordline")}},
        "deploy_first": {"value": "recordline"},
        "github_environment_variables": {"value": VARIABLES},
    }
    (cloud.work / "outputs.json").write_text(json.dumps(outputs))
    (cloud.bin / "terraform").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = show ]; then cat "$3"; fi\n'
        'if [ "$1" = output ]; then cat "$HOME/outputs.json"; fi\n'
    )
    (cloud.bin / "terraform").chmod(0o755)
    job, _ = apply(cloud, plan())
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert json.loads(job.outputs["new"]) == []

"""terraform-apply.yml's apply job against the fake cloud: an approved saved plan of a
cell is applied only while every Cloud Run service, worker pool and job it updates
still has the revision, image, traffic and instance split the plan read.

The provider sends a resource whole when it updates it, as the plan holds it: with the
image, traffic and split of plan time, whatever ignore_changes keeps out of the diff;
each new system of a cell changes its service's, pool's and jobs' templates (a new file
of its systems). A deploy or an on-call rollback of any of them between the plan and its
approval would be undone. terraform is a stand-in here that shows a saved plan as
`terraform show -json` does (its JSON format:
https://developer.hashicorp.com/terraform/internals/json-format) and records what it
was asked to apply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.infra.cell_world import (
    BUILT,
    DEPLOYER,
    EARLIER,
    GITHUB,
    PROJECT,
    REGION,
    REPOSITORY,
    STATE_BUCKET,
    VARIABLES,
    deploy_output,
    world,
)
from tests.infra.workflow_runner import Cloud, Job, load, run_job, run_workflow

APPLIER = f"recordline-tf-apply@{PROJECT}.iam.gserviceaccount.com"
SERVICE = "google_cloud_run_v2_service.ingest"
POOL = "recordline-exporter"
LATEST = {
    "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST",
    "revision": "",
    "percent": 100,
    "tag": "",
}


def plan(*changes: dict[str, Any]) -> dict[str, Any]:
    return {"format_version": "1.2", "resource_changes": list(changes)}


def service_update(revision: str, traffic: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan's change to the cell's service: an update, `before` as read at plan time."""
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


def pool_update(revision: str, image: str, splits: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan's change to the exporter pool, as the provider's state holds it."""
    path = f"projects/{PROJECT}/locations/{REGION}/workerPools/{POOL}/revisions/"
    before = {
        "project": PROJECT,
        "location": REGION,
        "name": POOL,
        "latest_created_revision": path + revision,
        "template": [{"containers": [{"image": image}]}],
        "instance_splits": splits,
    }
    return {
        "address": 'google_cloud_run_v2_worker_pool.exporter["recordline"]',
        "type": "google_cloud_run_v2_worker_pool",
        "change": {"actions": ["update"], "before": before, "after": before},
    }


def job_update(name: str, image: str) -> dict[str, Any]:
    before = {
        "project": PROJECT,
        "location": REGION,
        "name": name,
        "template": [{"template": [{"containers": [{"image": image}]}]}],
    }
    return {
        "address": f"google_cloud_run_v2_job.{name.removeprefix('recordline-')}",
        "type": "google_cloud_run_v2_job",
        "change": {"actions": ["update"], "before": before, "after": before},
    }


def _apply_roles(state: dict[str, Any]) -> None:
    # The apply account's project roles (environment/variables.tf, terraform_apply_roles).
    state["iam"]["project"][f"serviceAccount:{APPLIER}"] = [
        "roles/run.admin",
        "roles/spanner.admin",
        "roles/storage.admin",
    ]


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    state = world(
        {"recordline": ["recordline", "orders"]},
        deployed=EARLIER,
        exporter=EARLIER,
        serving={"recordline": ["orders"]},
    )
    _apply_roles(state)
    cloud = Cloud(tmp_path, state)
    terraform = cloud.bin / "terraform"
    terraform.write_text(
        '#!/bin/sh\necho "$*" >> "$HOME/terraform.log"\n'
        'if [ "$1" = show ]; then cat "$3"; fi\n'
        'if [ "$1" = output ]; then cat "$HOME/outputs.json"; fi\n'
    )
    terraform.chmod(0o755)
    (cloud.work / "outputs.json").write_text(
        json.dumps(deploy_output("recordline", ["recordline", "orders"], serving=["orders"]))
    )
    return cloud


def apply(cloud: Cloud, saved: dict[str, Any], root: str = "recordline") -> tuple[Job, list[str]]:
    artifact = cloud.artifacts / f"tfplan-prod-{root}"
    artifact.mkdir(parents=True, exist_ok=True)
    (artifact / "tfplan").write_text(json.dumps(saved))
    (artifact / ".terraform.lock.hcl").write_text("")
    job = run_job(
        cloud,
        "terraform-apply.yml",
        "apply",
        # What terraform.yml hands on from the approval (approve.yml, in terraform-prod).
        inputs={
            "environment": "prod",
            "root": root,
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


STALE = "Refuse a plan older than a deploy or a rollback"


@pytest.mark.slow
def test_a_plan_of_what_still_serves_is_applied(cloud: Cloud) -> None:
    image = f"{REPOSITORY}@{EARLIER}"
    job, calls = apply(
        cloud,
        plan(
            service_update("recordline-00002-x2y", [LATEST]),
            pool_update(
                f"{POOL}-00002-w2p",
                image,
                [{"type": "INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST", "percent": 100}],
            ),
            job_update("recordline-export", image),
            job_update("recordline-ops", image),
        ),
    )
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert _applied(calls)


@pytest.mark.slow
def test_a_plan_older_than_a_deploy_of_the_service_is_refused(cloud: Cloud) -> None:
    # Planned when 00001 was the newest revision; a deploy made 00002 since.
    job, calls = apply(cloud, plan(service_update("recordline-00001-x1y", [LATEST])))
    refused = job.step(STALE)
    assert refused.outcome == "failure"
    assert "A deploy or a rollback came after this plan" in refused.stderr
    assert not _applied(calls)


@pytest.mark.slow
def test_a_plan_older_than_the_last_deploy_of_the_exporter_is_refused(cloud: Cloud) -> None:
    # A new system changes the pool's file: the plan would send the pool whole, with
    # the image of plan time, rolling the exporter back to it silently.
    earlier = f"{REPOSITORY}@{EARLIER}"
    newer_digest = "sha256:" + "d" * 64
    state = cloud.world
    pool = state["worker_pools"][POOL]
    pool["revisions"].append(
        {
            **pool["revisions"][-1],
            "name": f"{POOL}-00003-w3p",
            "digest": newer_digest,
            "image": f"{REPOSITORY}@{newer_digest}",
        }
    )
    cloud.update(**state)
    latest = [{"type": "INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST", "percent": 100}]
    job, calls = apply(cloud, plan(pool_update(f"{POOL}-00002-w2p", earlier, latest)))
    refused = job.step(STALE)
    assert refused.outcome == "failure"
    assert (
        f'google_cloud_run_v2_worker_pool.exporter["recordline"]: planned with {POOL}-00002-w2p'
        in (refused.stderr)
    )
    assert not _applied(calls)
    # Planned again, it reads what runs now, and is applied.
    now = pool_update(f"{POOL}-00003-w3p", f"{REPOSITORY}@{newer_digest}", latest)
    job, calls = apply(cloud, plan(now))
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert _applied(calls)


@pytest.mark.slow
def test_a_plan_older_than_an_exporter_rollback_or_a_jobs_image_is_refused(cloud: Cloud) -> None:
    # On-call pinned every instance to the revision before (the runbook's rollback).
    state = cloud.world
    state["worker_pools"][POOL]["split"] = f"{POOL}-00001-p1q"
    cloud.update(**state)
    image = f"{REPOSITORY}@{EARLIER}"
    latest = [{"type": "INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST", "percent": 100}]
    job, calls = apply(cloud, plan(pool_update(f"{POOL}-00002-w2p", image, latest)))
    assert job.step(STALE).outcome == "failure"
    assert not _applied(calls)
    # The export job's image was set since the plan (a rollout, or the runbook).
    job, calls = apply(cloud, plan(job_update("recordline-export", f"{REPOSITORY}@{BUILT}")))
    refused = job.step(STALE)
    assert refused.outcome == "failure"
    assert f"image {REPOSITORY}@{BUILT}" in refused.stderr
    assert not _applied(calls)


@pytest.mark.slow
def test_a_plan_older_than_a_rollback_is_refused(cloud: Cloud) -> None:
    # On-call pinned every request to 00001 after the plan was made.
    services = cloud.world["services"]
    services["recordline"]["traffic"] = [{"revision": "recordline-00001-x1y", "percent": 100}]
    cloud.update(services=services)
    job, calls = apply(cloud, plan(service_update("recordline-00002-x2y", [LATEST])))
    assert job.step(STALE).outcome == "failure"
    assert not _applied(calls)
    # Planned again, with the pin it now reads, it is applied and keeps the pin.
    pinned = {**LATEST, "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"}
    pinned["revision"] = "recordline-00001-x1y"
    job, calls = apply(cloud, plan(service_update("recordline-00002-x2y", [pinned])))
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert _applied(calls)


def test_every_resource_a_deploy_changes_is_checked() -> None:
    # What a rollout or the runbook changes in a cell (deploy-cell.yml, operations.md):
    # the service, the pool and both jobs; each type is checked before an apply.
    step = next(
        s for s in load("terraform-apply.yml")["jobs"]["apply"]["steps"] if s.get("name") == STALE
    )["run"]
    for rtype in (
        "google_cloud_run_v2_service",
        "google_cloud_run_v2_worker_pool",
        "google_cloud_run_v2_job",
    ):
        assert f"updated {rtype})" in step, rtype
    deployed = (Path(__file__).parents[2] / ".github/workflows/deploy-cell.yml").read_text()
    assert "gcloud run deploy" in deployed
    assert "gcloud beta run worker-pools deploy" in deployed
    assert "gcloud run jobs update" in deployed


@pytest.mark.slow
def test_a_plan_that_changes_no_service_is_applied_whatever_serves(cloud: Cloud) -> None:
    other = {
        "address": "google_monitoring_dashboard.cell",
        "type": "google_monitoring_dashboard",
        "change": {"actions": ["update"], "before": {}, "after": {}},
    }
    job, calls = apply(cloud, plan(other))
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert _applied(calls)


def test_a_prod_apply_is_not_approved_in_an_environment_without_a_reviewer(cloud: Cloud) -> None:
    # The approval, before the queue (approve.yml, called by terraform.yml's prod-approve):
    # in an environment GitHub created unprotected, nothing is approved, so no apply.
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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("live", "planned", "applied"), [(100, 200, True), (400, 400, True), (400, 200, False)]
)
def test_a_plan_never_takes_back_capacity_on_call_added_by_hand(
    cloud: Cloud, live: int, planned: int, applied: bool
) -> None:
    # On-call raised the instance to `live` with the runbook's command (capacity.tf); a
    # plan made before that would lower it. (The plan job reads each instance's units
    # first, so a plan made since keeps them: planning again is all it takes.)
    cloud.update(spanner_instances={"recordline-serving": {"processing_units": live}})
    job, calls = apply(cloud, plan(instance_update(planned)))
    guard = job.step("Refuse a plan that lowers a serving instance's capacity")
    assert _applied(calls) is applied
    if not applied:
        assert guard.outcome == "failure"
        assert f"recordline-serving has {live} now" in guard.stderr
        assert "Run the workflow again: its plan keeps what the instance has" in guard.stderr


# --- a dataset deleted by mistake --------------------------------------------------------------


def _dataset(system: str, *, with_topic: bool) -> list[dict[str, Any]]:
    created = {"actions": ["create"], "before": None, "after": {}}
    changes = [
        {
            "address": f'module.system["{system}"].google_bigquery_dataset.recordline',
            "type": "google_bigquery_dataset",
            "change": created,
        }
    ]
    if with_topic:
        changes.append(
            {
                "address": f'module.system["{system}"].google_pubsub_topic.records',
                "type": "google_pubsub_topic",
                "change": created,
            }
        )
    return changes


@pytest.mark.slow
def test_a_plan_that_would_create_a_deleted_dataset_again_is_refused(cloud: Cloud) -> None:
    # The dataset was deleted; its topic is still there. An empty dataset of the same
    # name would keep UNDROP SCHEMA from bringing the deleted one back, rows and all.
    job, calls = apply(cloud, plan(*_dataset("orders", with_topic=False)))
    refused = job.step("Refuse a plan that creates again a dataset that was deleted")
    assert refused.outcome == "failure"
    assert "docs/operations.md#a-deleted-dataset" in refused.stderr
    assert not _applied(calls)
    # A new system creates its dataset with its topic: applied.
    job, calls = apply(cloud, plan(*_dataset("payments", with_topic=True)))
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert _applied(calls)


# --- a cell the apply created -----------------------------------------------------------------


def _outputs(cloud: Cloud, deploy: dict[str, Any]) -> None:
    (cloud.work / "outputs.json").write_text(json.dumps(deploy))
    environment = {"outputs": {"github_environment_variables": {"value": VARIABLES}}}
    objects = cloud.world["objects"]
    objects[f"gs://{STATE_BUCKET}/recordline/environment/default.tfstate"] = json.dumps(environment)
    cloud.update(objects=objects)


@pytest.mark.slow
def test_a_cell_an_apply_creates_is_deployed_right_after_it_with_what_serves(
    tmp_path: Path,
) -> None:
    earlier_tag = "e" * 40
    state = world(
        {"recordline": ["recordline"], "eu-2": ["orders"]},
        deployed=EARLIER,
        serving={"eu-2": ["orders"]},
    )
    _apply_roles(state)
    # The new cell is on the placeholders: its service's later revisions never existed.
    state["services"]["eu-2"]["revisions"] = state["services"]["eu-2"]["revisions"][:1]
    state["registry"][REPOSITORY]["tags"] = {earlier_tag: EARLIER}
    cloud = Cloud(tmp_path, state)
    cloud.files["infra/terraform/env/prod/eu-2.tfvars.json"] = json.dumps({"cell": "eu-2"})
    (cloud.bin / "terraform").write_text(
        '#!/bin/sh\necho "$*" >> "$HOME/terraform.log"\n'
        'if [ "$1" = show ]; then cat "$3"; fi\n'
        'if [ "$1" = output ]; then cat "$HOME/outputs.json"; fi\n'
    )
    (cloud.bin / "terraform").chmod(0o755)
    _outputs(cloud, deploy_output("eu-2", ["orders"], serving=["orders"]))
    artifact = cloud.artifacts / "tfplan-prod-eu-2"
    artifact.mkdir(parents=True)
    (artifact / "tfplan").write_text(json.dumps(plan()))
    (artifact / ".terraform.lock.hcl").write_text("")
    run = run_workflow(
        cloud,
        "terraform-apply.yml",
        inputs={
            "environment": "prod",
            "root": "eu-2",
            "workload_identity_provider": VARIABLES["GCP_WORKLOAD_IDENTITY_PROVIDER"],
            "apply_service_account": APPLIER,
        },
        variables={},
        github=GITHUB,
    )
    failed = [
        (p, s.name, s.stderr[-600:])
        for p, j in run.walk()
        for s in j.steps
        if s.outcome == "failure"
    ]
    assert run.result == "success", failed
    apply_job = run.job("apply")
    assert (apply_job.outputs["digest"], apply_job.outputs["image_tag"]) == (EARLIER, earlier_tag)
    assert apply_job.outputs["service_account"] == DEPLOYER
    # Through the same gated rollout as any cell's: exporter first, then the service.
    served = cloud.world["services"]["eu-2"]["revisions"][-1]
    assert (served["digest"], served["command"]) == (EARLIER, None)
    assert cloud.world["worker_pools"]["eu-2-exporter"]["revisions"][-1]["digest"] == EARLIER
    assert run.results["deploy-new"] == "success"


@pytest.mark.slow
def test_nothing_is_deployed_by_an_apply_before_the_first_rollout(cloud: Cloud) -> None:
    state = world({"recordline": ["recordline"]})  # on the placeholder: never deployed
    _apply_roles(state)
    cloud.update(**state)
    _outputs(cloud, deploy_output("recordline", ["recordline"]))
    job, _ = apply(cloud, plan())
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    assert job.outputs["digest"] == ""
    assert "the first rollout deploys recordline" in job.summary

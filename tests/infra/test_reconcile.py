"""drift.yml against the fake cloud and a fake of GitHub's runs and issues: a deploy or an
apply replaced while it waited in its environment's queue is started again (or ticketed
when a person acted since), never lost silently; and a system serving another image
than main's last deploy is ticketed, a rollback excepted.

GitHub keeps one pending run per concurrency group and cancels the older one when a
newer one arrives (https://docs.github.com/en/actions/how-tos/write-workflows/choose-when-workflows-run/control-workflow-concurrency):
the replaced run's conclusion is `cancelled`, with nothing of it started.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.cell_world import (
    BUILT,
    EARLIER,
    GITHUB,
    PROJECT,
    REGION,
    REPOSITORY,
    STATE_BUCKET,
    world,
)
from tests.infra.test_terraform import ENVIRONMENT, _resources
from tests.infra.workflow_runner import Cloud, Expressions, Job, interpolate, load, run_job

PLANNER = f"recordline-tf-plan@{PROJECT}.iam.gserviceaccount.com"
OLD, NEW = "a" * 40, "b" * 40


def run(
    workflow: str,
    conclusion: str,
    *,
    sha: str = NEW,
    event: str = "push",
    at: str = "10",
    title: str = "",
) -> dict[str, Any]:
    """A run as `gh run list --json` gives it."""
    return {
        "databaseId": int(at) * 10,
        "event": event,
        "status": "completed" if conclusion else "in_progress",
        "conclusion": conclusion,
        "headSha": sha,
        "createdAt": f"2026-11-20T{at}:00:00Z",
        "displayTitle": title or workflow.removesuffix(".yml"),
        "workflow": workflow,
    }


def rollback(conclusion: str, *, at: str, part: str = "service", to: str = "") -> dict[str, Any]:
    """A rollback.yml run by on-call, titled as its `run-name` titles it."""
    inputs = {"environment": "prod", "system": "orders", "part": part, "to": to}
    title = interpolate(load("rollback.yml")["run-name"], Expressions({"inputs": inputs}, {}))
    return run("rollback.yml", conclusion, sha=NEW, event="workflow_dispatch", at=at, title=title)


def history(*runs: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {
        "deploy.yml": [],
        "terraform.yml": [],
        "rollback.yml": [],
    }
    for r in runs:
        found[r.pop("workflow")].append(r)
    return found


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    return Cloud(
        tmp_path,
        world(
            {"recordline": ["recordline", "orders"]},
            deployed=EARLIER,
            exporter=EARLIER,
            serving={"recordline": ["orders"]},
        ),
    )


def reconcile(cloud: Cloud) -> Job:
    return run_job(
        cloud,
        "drift.yml",
        "reconcile",
        inputs={},
        variables={},
        github={**GITHUB, "repository": "recordline/recordline"},
    )


def dispatched(cloud: Cloud, workflow: str) -> int:
    runs = cloud.world.get("github_runs", {}).get(workflow, [])
    return sum(1 for r in runs if r["event"] == "workflow_dispatch" and r["status"] == "queued")


def tickets(cloud: Cloud) -> dict[str, list[str]]:
    return {i["title"]: i["comments"] for i in cloud.world.get("issues", {}).values()}


@pytest.mark.slow
def test_a_deploy_replaced_while_it_waited_is_started_again_and_said(cloud: Cloud) -> None:
    # The deploy of NEW waited in live-prod behind an apply and was replaced by the next
    # apply: cancelled, nothing of it started. The applies since all succeeded.
    cloud.update(
        github_runs=history(
            run("deploy.yml", "success", sha=OLD, at="08"),
            run("deploy.yml", "cancelled", sha=NEW, at="10"),
            run("terraform.yml", "success", at="11"),
        )
    )
    job = reconcile(cloud)
    assert job.result == "success", job.steps[-1].stderr
    assert dispatched(cloud, "deploy.yml") == 1
    assert dispatched(cloud, "terraform.yml") == 0
    ((title, (body,)),) = tickets(cloud).items()
    assert title == "drift: a deploy.yml run was replaced"
    assert NEW in body
    assert "started again" in body
    # The next round finds the new run waiting, and starts nothing more.
    assert reconcile(cloud).result == "success"
    assert dispatched(cloud, "deploy.yml") == 1


@pytest.mark.slow
def test_a_deploy_replaced_by_a_rollback_is_not_started_again_over_it(cloud: Cloud) -> None:
    # The deploy of NEW waited in the cell's queue; on-call's rollback, queued there too,
    # replaced it and moved the cell back. Starting the deploy again would undo that. A
    # rollback that only said what it would do (no `to`) changes nothing of this.
    cloud.update(
        github_runs=history(
            run("deploy.yml", "success", sha=OLD, at="08"),
            run("deploy.yml", "cancelled", sha=NEW, at="10"),
            rollback("success", at="11", to="recordline-00001-x1y"),
            rollback("success", at="12"),
        )
    )
    job = reconcile(cloud)
    assert job.result == "success", job.steps[-1].stderr
    assert dispatched(cloud, "deploy.yml") == 0
    ((title, (body,)),) = tickets(cloud).items()
    assert title == "drift: a deploy was cancelled and a rollback ran since"
    assert "/actions/runs/110" in body  # the rollback that acted
    # Only a dry run since: the deploy is started again.
    cloud.update(
        github_runs=history(
            run("deploy.yml", "cancelled", sha=NEW, at="10"),
            rollback("success", at="12"),
        ),
        issues={},
    )
    assert reconcile(cloud).result == "success"
    assert dispatched(cloud, "deploy.yml") == 1


@pytest.mark.slow
def test_an_apply_replaced_while_it_waited_is_started_again(cloud: Cloud) -> None:
    cloud.update(
        github_runs=history(
            run("terraform.yml", "cancelled", at="09"),
            run("deploy.yml", "success", at="10"),
        )
    )
    assert reconcile(cloud).result == "success"
    assert dispatched(cloud, "terraform.yml") == 1
    assert dispatched(cloud, "deploy.yml") == 0
    assert list(tickets(cloud)) == ["drift: a terraform.yml run was replaced"]


def test_nothing_is_reconciled_while_a_change_is_under_way(cloud: Cloud) -> None:
    cloud.update(
        github_runs=history(
            run("deploy.yml", "cancelled", at="09"),
            run("terraform.yml", "", at="10"),  # an apply in its queue, under way
        )
    )
    assert reconcile(cloud).result == "success"
    assert dispatched(cloud, "deploy.yml") == 0
    assert tickets(cloud) == {}


@pytest.mark.slow
def test_a_cancelled_rollback_is_ticketed_never_started_again_by_itself(cloud: Cloud) -> None:
    # A deploy started by hand (image_tag: a rollback) is a person's decision, and so is
    # its cancellation: it is said, not redone, and main's image is not redeployed
    # over what the person chose.
    cloud.update(
        github_runs=history(
            run("deploy.yml", "success", at="08"),
            run("deploy.yml", "cancelled", sha=OLD, event="workflow_dispatch", at="09"),
        )
    )
    assert reconcile(cloud).result == "success"
    assert dispatched(cloud, "deploy.yml") == 0
    ((title, (body,)),) = tickets(cloud).items()
    assert title == "drift: a deploy started by hand was cancelled"
    assert "not started again" in body


def test_runs_that_finished_leave_nothing_to_do(cloud: Cloud) -> None:
    cloud.update(
        github_runs=history(
            run("deploy.yml", "success", at="08"),
            run("deploy.yml", "failure", at="09"),  # a failed deploy is its run's to say
            run("terraform.yml", "success", at="10"),
        )
    )
    assert reconcile(cloud).result == "success"
    assert dispatched(cloud, "deploy.yml") == dispatched(cloud, "terraform.yml") == 0
    assert tickets(cloud) == {}


# --- what serves, against main's last deploy --------------------------------------------------


def _plan_account_can_read(cloud: Cloud) -> None:
    """The plan account's project roles and its read of the states, as Terraform grants
    them (environment/iam.tf)."""
    roles = re.findall(
        r'"(roles/[^"]+)"',
        _resources("google_project_iam_member", ENVIRONMENT)["terraform_plan"]["for_each"],
    )
    state = _resources("google_storage_bucket_iam_member", ENVIRONMENT)[
        "terraform_plan_reads_state"
    ]
    iam = cloud.world["iam"]
    iam["project"][f"serviceAccount:{PLANNER}"] = roles
    iam["objects"][f"{STATE_BUCKET}/"][f"serviceAccount:{PLANNER}"] = [state["role"]]
    registry = cloud.world["registry"]
    registry[REPOSITORY]["tags"] = {OLD: EARLIER, NEW: BUILT}
    registry[REPOSITORY]["digests"] = [EARLIER, BUILT]
    objects = cloud.world["objects"]
    environment = {
        "outputs": {
            "github_environment_variables": {
                "value": {
                    "GCP_PROJECT_ID": PROJECT,
                    "GCP_REGION": REGION,
                    "ARTIFACT_REPOSITORY": REPOSITORY.rsplit("/", 1)[0],
                    "IMAGE_NAME": "recordline",
                }
            }
        }
    }
    objects[f"gs://{STATE_BUCKET}/recordline/environment/default.tfstate"] = json.dumps(environment)
    cloud.update(iam=iam, registry=registry, objects=objects)


def _terraform(cloud: Cloud) -> None:
    """A stand-in for terraform: init, a plan that finds nothing to change, and the
    cell's outputs `deploy` and `systems` from its state (`terraform output -json NAME`)."""
    state = json.loads(
        cloud.world["objects"][f"gs://{STATE_BUCKET}/recordline/cells/recordline/default.tfstate"]
    )
    for output in ("deploy", "systems"):
        (cloud.work / f"{output}.json").write_text(json.dumps(state["outputs"][output]["value"]))
    terraform = cloud.bin / "terraform"
    terraform.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  output) cat "$HOME/$3.json" ;;\n'
        "  plan) echo 'No changes. Your infrastructure matches the configuration.' ;;\n"
        "esac\n"
    )
    terraform.chmod(0o755)


def drift_plan(cloud: Cloud) -> Job:
    return run_job(
        cloud,
        "drift.yml",
        "plan",
        inputs={},
        variables={
            "GCP_WORKLOAD_IDENTITY_PROVIDER_PROD": "p",
            "TF_PLAN_SERVICE_ACCOUNT_PROD": PLANNER,
        },
        github={**GITHUB, "repository": "recordline/recordline"},
        matrix={"state": {"environment": "prod", "root": "recordline"}},
    )


@pytest.mark.slow
def test_a_cell_left_on_an_earlier_image_is_ticketed(cloud: Cloud) -> None:
    # main's last deploy (NEW, its image BUILT) succeeded, yet the cell serves and
    # exports EARLIER (a deploy lost some other way, a revision pinned and forgotten).
    _plan_account_can_read(cloud)
    _terraform(cloud)
    cloud.update(github_runs=history(run("deploy.yml", "success", sha=NEW, at="10")))
    job = drift_plan(cloud)
    assert job.result == "success", job.steps[-1].stderr
    ((title, (body,)),) = tickets(cloud).items()
    assert title == "drift: prod differs from main"
    assert f"recordline serves {EARLIER}, not main's last deploy ({NEW}: {BUILT})" in body
    assert f"recordline-exporter exports with {EARLIER}, not main's last deploy ({NEW})" in body


@pytest.mark.slow
@pytest.mark.parametrize(
    "back",
    [
        run("deploy.yml", "success", sha=OLD, event="workflow_dispatch", at="11"),
        rollback("success", at="11", to="recordline-00001-x1y"),
        rollback("success", at="11", part="exporter", to="recordline-exporter-00001-w1p"),
    ],
    ids=["a deploy by hand", "the service's rollback", "the exporter's rollback"],
)
def test_a_rollback_since_main_s_last_deploy_is_not_drift(
    cloud: Cloud, back: dict[str, Any]
) -> None:
    _plan_account_can_read(cloud)
    _terraform(cloud)
    cloud.update(github_runs=history(run("deploy.yml", "success", sha=NEW, at="10"), dict(back)))
    job = drift_plan(cloud)
    assert job.result == "success", job.steps[-1].stderr
    assert tickets(cloud) == {}


@pytest.mark.slow
def test_a_rollback_that_did_nothing_or_ended_its_pin_leaves_the_image_compared(
    cloud: Cloud,
) -> None:
    # A rollback that only said what it would do, one refused, one in another
    # environment, one of another cell's system, and the end of a pin after a rollback:
    # the cell should serve main's.
    _plan_account_can_read(cloud)
    _terraform(cloud)
    ended = rollback("success", at="13", part="follow-latest", to="recordline-00002-x2y")
    elsewhere = rollback("success", at="14", to="recordline-00001-x1y")
    elsewhere["displayTitle"] = elsewhere["displayTitle"].replace(" in prod ", " in dev ")
    another_cell = rollback("success", at="15", to="payments-00001-x1y")
    another_cell["displayTitle"] = another_cell["displayTitle"].replace("(orders)", "(payments)")
    cloud.update(
        github_runs=history(
            run("deploy.yml", "success", sha=NEW, at="10"),
            rollback("success", at="11"),
            rollback("failure", at="12", to="recordline-00001-x1y"),
            elsewhere,
            another_cell,
        )
    )
    job = drift_plan(cloud)
    assert job.result == "success", job.steps[-1].stderr
    assert list(tickets(cloud)) == ["drift: prod differs from main"]
    # A rollback that acted, then the end of its pin: compared again.
    cloud.update(
        github_runs=history(
            run("deploy.yml", "success", sha=NEW, at="10"),
            rollback("success", at="11", to="recordline-00001-x1y"),
            ended,
        ),
        issues={},
    )
    assert drift_plan(cloud).result == "success"
    assert list(tickets(cloud)) == ["drift: prod differs from main"]


def test_every_state_is_planned_the_environments_and_each_cells() -> None:
    from tests.infra.workflow_runner import load

    plan = load("drift.yml")["jobs"]["plan"]
    assert plan["strategy"]["matrix"]["state"] == "${{ fromJSON(needs.roots.outputs.states) }}"
    assert plan["strategy"]["fail-fast"] is False

"""Who may act as the GitHub identities: the workload identity provider's condition, run on
the claims GitHub puts in its tokens (https://docs.github.com/en/actions/reference/security/oidc),
and the GitHub environments the workflows' jobs run in.

The condition is CEL, which Google evaluates on the token's claims
(https://cloud.google.com/iam/docs/workload-identity-federation#conditions). The forms it
uses (==, &&, ||, `in` a list, parentheses, string literals, startsWith) are evaluated by
translating them to Python; any other form fails the translation.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.infra.test_terraform import _locals, _resources
from tests.infra.workflow_runner import Expressions, interpolate, load

OWNER, REPO, REPO_ID, OWNER_ID = "recordline", "recordline", "123456789", "987654"
VALUES = {
    "github_owner": OWNER,
    "github_repo": REPO,
    "github_repository_id": REPO_ID,
    "github_owner_id": OWNER_ID,
    "github_deploy_branch": "main",
    "environment": "prod",
}
WORKFLOWS = f"{OWNER}/{REPO}/.github/workflows"


def condition() -> str:
    raw = _resources("google_iam_workload_identity_pool_provider")["github"]["attribute_condition"]
    return re.sub(r"\$\{var\.(\w+)\}", lambda m: VALUES[m.group(1)], raw)


def accepts(claims: dict[str, str]) -> bool:
    text = condition()
    if re.search(r"has\(|matches\(|\?", text):
        pytest.fail("a CEL form this test does not translate")
    python = (
        text.replace("&&", " and ").replace("||", " or ").replace(".startsWith(", ".startswith(")
    )
    python = re.sub(r"\bassertion\.(\w+)", r'claims.get("\1", "")', python)
    return bool(eval(python, {"__builtins__": {}}, {"claims": claims}))


def token(sub: str, workflow: str, ref: str = "refs/heads/main", **extra: str) -> dict[str, str]:
    """The claims of a job's token: its subject, the file the job is defined in."""
    return {
        "sub": f"repo:{OWNER}/{REPO}:{sub}",
        "ref": ref,
        "repository": f"{OWNER}/{REPO}",
        "repository_id": REPO_ID,
        "repository_owner_id": OWNER_ID,
        "job_workflow_ref": f"{WORKFLOWS}/{workflow}@{ref}",
        **extra,
    }


@pytest.mark.parametrize(
    "claims",
    [
        # A pull request's plans, main's plan before each apply, and the drift plan.
        token("pull_request", "terraform-environment.yml", "refs/pull/7/merge"),
        token("ref:refs/heads/main", "terraform-environment.yml"),
        token("ref:refs/heads/main", "drift.yml"),
        # A rollout's first job, then each cell's jobs and their export gates, the
        # break-glass rollout, then an apply: each after an approval given before the
        # queues (approve.yml), reviewer-free.
        token("environment:prod-rollout", "deploy-environment.yml"),
        token("environment:prod-rollout", "deploy-cell.yml"),
        token("environment:prod-rollout", "export-gate.yml"),
        token("environment:prod-rollout", "break-glass.yml"),
        token("environment:prod-rollout", "rollback.yml"),
        token("environment:terraform-prod-apply", "terraform-apply.yml"),
    ],
    ids=[
        "pr-plan",
        "main-plan",
        "drift-plan",
        "rollout",
        "cell",
        "gate",
        "break-glass",
        "rollback",
        "apply",
    ],
)
def test_the_workflows_own_jobs_are_accepted(claims: dict[str, str]) -> None:
    assert accepts(claims)


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        (
            token("environment:prod-rollout", "deploy-environment.yml", repository_id="555"),
            "a repository created again under the same name has another id",
        ),
        (
            token("environment:prod-rollout", "deploy-environment.yml", repository_owner_id="1"),
            "an owner renamed and the name taken by someone else",
        ),
        (
            token("environment:prod-rollout", "anything-else.yml"),
            "the reviewer-free environment from any other workflow file",
        ),
        (
            token("environment:prod", "deploy-environment.yml"),
            "the approval's environment: its job authenticates nowhere",
        ),
        (
            token("environment:prod-rollout", "deploy-environment.yml", "refs/heads/feature"),
            "the rollout environment from another branch",
        ),
        (
            token("pull_request", "deploy-cell.yml", "refs/pull/7/merge"),
            "a pull request's job other than a plan",
        ),
        (
            token("pull_request", "drift.yml", "refs/pull/7/merge"),
            "a pull request's copy of the drift workflow",
        ),
        (
            token("environment:terraform-prod-apply", "deploy-cell.yml"),
            "the apply environment from another workflow file",
        ),
        (
            token("environment:terraform-prod", "terraform-apply.yml"),
            "the apply's approval environment: its job authenticates nowhere",
        ),
        (
            token("environment:terraform-prod-apply", "terraform-apply.yml", "refs/heads/x"),
            "the apply environment from another branch",
        ),
    ],
)
def test_anything_else_is_refused(claims: dict[str, str], why: str) -> None:
    assert not accepts(claims), why


def test_the_deploy_and_apply_accounts_are_bound_to_their_reviewer_free_subjects() -> None:
    binding = _resources("google_service_account_iam_member")["github_workload_identity"]
    assert binding["for_each"] == "${local.github_identities}"
    assert binding["member"] == "${each.value.subject}"
    identities = _locals()["github_identities"]
    assert set(identities) == {"deployer_rollout", "terraform_apply"}
    assert identities["deployer_rollout"]["subject"].endswith(
        ":environment:${var.environment}-rollout"
    )
    assert identities["terraform_apply"]["subject"].endswith(
        ":environment:terraform-${var.environment}-apply"
    )


# --- one approval, then reviewer-free jobs bound to the same account ------------------------


def _evaluate(value: str, **context: Any) -> Any:
    return interpolate(value, Expressions(context, {"failed": False, "cancelled": False}))


def test_a_rollout_is_approved_once_before_its_queue_then_runs_without_reviewers() -> None:
    deploy = load("deploy.yml")["jobs"]
    environment = load("deploy-environment.yml")["jobs"]
    cell = load("deploy-cell.yml")["jobs"]
    gate = load("export-gate.yml")["jobs"]
    approve = load("approve.yml")["jobs"]["approve"]
    # The approval runs in prod (required reviewers), outside every queue, and reads
    # prod's variables; the rollout, in its cells' queues, takes them from it.
    assert deploy["approve-prod"]["uses"] == "./.github/workflows/approve.yml"
    assert deploy["approve-prod"]["with"] == {"environment": "prod", "reviewed": True}
    assert "concurrency" not in deploy["approve-prod"]
    assert _evaluate(approve["environment"], inputs={"environment": "prod"}) == "prod"
    assert "id-token" not in str(approve["permissions"])  # it authenticates nowhere
    assert "approve-prod" in deploy["prod"]["needs"]
    given = deploy["prod"]["with"]
    assert given["service_account"] == "${{ needs.approve-prod.outputs.deploy_service_account }}"
    assert approve["outputs"]["deploy_service_account"] == "${{ vars.GCP_DEPLOY_SERVICE_ACCOUNT }}"
    # Every job of the rollout that runs steps runs in prod-rollout, which has none.
    inputs = {"environment": "prod"}
    assert _evaluate(environment["prepare"]["environment"], inputs=inputs) == "prod-rollout"
    for job in [*cell.values(), *gate.values()]:
        if "steps" in job:
            assert _evaluate(job["environment"], inputs=inputs) == "prod-rollout"
    for wave in ("first", "rest"):
        assert environment[wave]["needs"] == "prepare" or "prepare" in environment[wave]["needs"]
        assert environment[wave]["with"]["service_account"] == (
            "${{ needs.prepare.outputs.service_account }}"
        )
    assert environment["prepare"]["outputs"]["service_account"] == "${{ inputs.service_account }}"
    # No job of the rollout reads an environment's variables: only the approval does.
    for jobs in (environment, cell, gate):
        assert not _reads_variables(jobs)


def _reads_variables(jobs: Any) -> bool:
    """Whether an expression of `jobs` reads an environment's variables (`vars.X`)."""
    return re.search(r"\$\{\{[^}]*\bvars\.", str(jobs)) is not None


def test_the_break_glass_rollout_is_approved_by_prods_reviewers_first() -> None:
    jobs = load("break-glass.yml")["jobs"]
    assert jobs["approve"]["uses"] == "./.github/workflows/approve.yml"
    assert jobs["approve"]["with"] == {"environment": "prod", "reviewed": True}
    assert jobs["prepare"]["needs"] == "approve"
    assert jobs["prepare"]["environment"] == "prod-rollout"
    assert not _reads_variables({k: v for k, v in jobs.items() if k != "approve"})


def test_an_apply_is_approved_before_its_queue_then_runs_without_reviewers() -> None:
    terraform = load("terraform.yml")["jobs"]
    apply = load("terraform-apply.yml")["jobs"]["apply"]
    for env in ("dev", "prod"):
        approval = terraform[f"{env}-approve"]
        assert approval["uses"] == "./.github/workflows/approve.yml"
        assert approval["with"]["environment"] == f"terraform-{env}"
        assert "concurrency" not in approval
        for applies in (f"{env}-environment", f"{env}-cells"):
            assert f"{env}-approve" in terraform[applies]["needs"]
            assert terraform[applies]["with"]["apply_service_account"] == (
                f"${{{{ needs.{env}-approve.outputs.apply_service_account }}}}"
            )
    assert terraform["prod-approve"]["with"]["reviewed"] is True
    assert _evaluate(apply["environment"], inputs={"environment": "prod"}) == (
        "terraform-prod-apply"
    )
    assert not _reads_variables(apply)


def test_a_rollback_never_cuts_a_change_short() -> None:
    # A rollback waits its turn in each cell's queue, which the cell's applies share
    # (tests/infra/test_workflows.py): cancelling what runs would cut an apply short.
    # GitHub keeps one pending run per concurrency group and replaces it with the next
    # (https://docs.github.com/en/actions/how-tos/write-workflows/choose-when-workflows-run/control-workflow-concurrency);
    # on-call's rollbacks (rollback.yml) wait in the cell's queue as well.
    queued = [
        (workflow, job, body["concurrency"])
        for workflow in (
            "deploy-environment.yml",
            "break-glass.yml",
            "terraform.yml",
            "rollback.yml",
        )
        for job, body in load(workflow)["jobs"].items()
        if "concurrency" in body
    ]
    assert len(queued) >= 8, queued
    for workflow, job, concurrency in queued:
        assert concurrency["cancel-in-progress"] is False, (workflow, job)
    assert "concurrency" not in load("deploy.yml")

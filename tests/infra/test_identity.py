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
        # A pull request's plans, and main's plan before each apply.
        token("pull_request", "terraform-environment.yml", "refs/pull/7/merge"),
        token("ref:refs/heads/main", "terraform-environment.yml"),
        # A rollout's approved first job, then each system's job, then an apply.
        token("environment:prod", "deploy-environment.yml"),
        token("environment:prod-rollout", "deploy-system.yml"),
        token("environment:terraform-prod", "terraform-environment.yml"),
    ],
    ids=["pr-plan", "main-plan", "rollout", "system", "apply"],
)
def test_the_workflows_own_jobs_are_accepted(claims: dict[str, str]) -> None:
    assert accepts(claims)


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        (
            token("environment:prod", "deploy-environment.yml", repository_id="555"),
            "a repository created again under the same name has another id",
        ),
        (
            token("environment:prod", "deploy-environment.yml", repository_owner_id="1"),
            "an owner renamed and the name taken by someone else",
        ),
        (
            token("environment:prod-rollout", "anything-else.yml"),
            "the reviewer-free environment from any other workflow file",
        ),
        (
            token("environment:prod-rollout", "deploy-environment.yml"),
            "the reviewer-free environment from the job that should have been approved",
        ),
        (
            token("environment:prod", "deploy-environment.yml", "refs/heads/feature"),
            "the deploy environment from another branch",
        ),
        (
            token("pull_request", "deploy-system.yml", "refs/pull/7/merge"),
            "a pull request's job other than a plan",
        ),
        (
            token("environment:terraform-prod", "deploy-system.yml"),
            "the apply environment from another workflow file",
        ),
    ],
)
def test_anything_else_is_refused(claims: dict[str, str], why: str) -> None:
    assert not accepts(claims), why


def test_the_deploy_account_is_bound_to_both_rollout_subjects() -> None:
    binding = _resources("google_service_account_iam_member")["github_workload_identity"]
    assert binding["for_each"] == "${local.github_identities}"
    assert binding["member"] == "${each.value.subject}"
    identities = _locals()["github_identities"]
    assert identities["deployer"]["subject"].endswith(":environment:${var.environment}")
    assert identities["deployer_rollout"]["subject"].endswith(
        ":environment:${var.environment}-rollout"
    )
    # The same account: the reviewer-free jobs act as the one the approved job acts as.
    assert identities["deployer_rollout"]["account"] == identities["deployer"]["account"]


# --- one approval, then reviewer-free jobs bound to the same account ------------------------


def _evaluate(value: str, **context: Any) -> Any:
    return interpolate(value, Expressions(context, {"failed": False, "cancelled": False}))


def test_a_rollout_asks_for_one_approval_then_runs_each_system_without_one() -> None:
    environment = load("deploy-environment.yml")["jobs"]
    system = load("deploy-system.yml")["jobs"]["rollout"]
    inputs = {"environment": "prod"}
    # The first job runs in prod (required reviewers): the one approval.
    assert _evaluate(environment["prepare"]["environment"], inputs=inputs) == "prod"
    # Every system's job runs in prod-rollout, which has none.
    assert _evaluate(system["environment"], inputs=inputs) == "prod-rollout"
    for wave in ("first", "rest"):
        assert environment[wave]["needs"] == "prepare" or "prepare" in environment[wave]["needs"]
        given = environment[wave]["with"]
        # As the account the approved job read from prod's variables.
        assert given["service_account"] == "${{ needs.prepare.outputs.service_account }}"
    outputs = environment["prepare"]["outputs"]
    assert outputs["service_account"] == "${{ vars.GCP_DEPLOY_SERVICE_ACCOUNT }}"
    (auth,) = [
        s for s in system["steps"] if s.get("uses", "").startswith("google-github-actions/auth@")
    ]
    assert auth["with"]["service_account"] == "${{ inputs.service_account }}"
    # No job of the rollout but the first names a reviewed environment.
    assert "vars." not in str(system)


def test_a_rollback_never_cuts_a_change_short() -> None:
    # A rollback waits its turn in the environment's queue, which an apply shares
    # (tests/infra/test_workflows.py): cancelling what runs would cut an apply short.
    # GitHub keeps one pending run per concurrency group and replaces it with the next
    # (https://docs.github.com/en/actions/how-tos/write-workflows/choose-when-workflows-run/control-workflow-concurrency);
    # the runbook's gcloud commands roll back at once, outside any queue.
    for job in ("dev", "prod"):
        concurrency = load("deploy.yml")["jobs"][job]["concurrency"]
        cancels = concurrency["cancel-in-progress"]
        assert _evaluate(cancels, inputs={"image_tag": "a" * 40}) is False
        assert _evaluate(cancels, inputs={"image_tag": ""}) is False
        assert _evaluate(cancels, inputs={}) is False  # a push has no inputs

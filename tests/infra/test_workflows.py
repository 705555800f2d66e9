"""Supply-chain and permission rules for .github/workflows that zizmor does not enforce."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.workflow_runner import Expressions, interpolate

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))

# owner/repo[/path]@<40 hex> # vX.Y.Z
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actions_are_pinned_to_a_commit_with_its_version(path: Path) -> None:
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*(?:-\s+)?uses:\s*(.+?)\s*$", line)
        if not match or match.group(1).startswith("./"):
            continue
        assert PINNED.match(match.group(1)), line.strip()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_top_level_permissions_are_read_only(path: Path) -> None:
    assert _load(path)["permissions"] == {"contents": "read"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_checkout_does_not_keep_credentials(path: Path) -> None:
    for step in _steps(_load(path)):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_expressions_do_not_reach_shell_scripts(path: Path) -> None:
    for step in _steps(_load(path)):
        assert "${{" not in step.get("run", ""), step.get("name", step["run"][:40])


def test_only_google_authenticating_jobs_get_an_id_token() -> None:
    for path in FILES:
        for name, job in _load(path)["jobs"].items():
            if job.get("permissions", {}).get("id-token") != "write":
                continue
            calls_reusable = job.get("uses", "").startswith("./")
            authenticates = any(
                s.get("uses", "").startswith("google-github-actions/auth@")
                for s in job.get("steps", [])
            )
            # Sigstore signs a build's attestations with the job's token.
            attests = job.get("permissions", {}).get("attestations") == "write" and any(
                s.get("uses", "").startswith("actions/attest-") for s in job.get("steps", [])
            )
            assert calls_reusable or authenticates or attests, f"{path.name}: {name}"


def test_ci_runs_the_project_commands_and_the_infra_checks() -> None:
    runs = [s.get("run", "") for s in _steps(_load(WORKFLOWS / "ci.yml"))]
    assert "python3 dev.py test" in runs
    assert "python3 dev.py lint" in runs
    assert "bash infra/check.sh" in runs


def test_ci_installs_what_the_emulator_tests_need_before_they_run() -> None:
    # With CI set, a test that needs an emulator fails instead of skipping
    # (tests/conftest.py), so GitHub's runners need Java and both emulators first.
    steps = _load(WORKFLOWS / "ci.yml")["jobs"]["test"]["steps"]
    runs = [s.get("run", "") for s in steps]
    (install,) = [i for i, run in enumerate(runs) if "google-cloud-cli-spanner-emulator" in run]
    assert install < runs.index("python3 dev.py test")
    script = runs[install]
    version = steps[install]["env"]["GCLOUD_VERSION"]
    for package in (
        "google-cloud-cli",
        "google-cloud-cli-pubsub-emulator",
        "google-cloud-cli-spanner-emulator",
    ):
        assert f'"{package}=$GCLOUD_VERSION-0"' in script, package  # pinned, all alike
    assert "openjdk-17-jre-headless" in script  # the Pub/Sub emulator is a Java program
    assert "https://packages.cloud.google.com/apt cloud-sdk main" in script
    # Where the tests look (recordline_dev/devstack.py, tests/spanner/emulator.py).
    assert "platform/pubsub-emulator/bin/cloud-pubsub-emulator" in script
    assert "bin/cloud_spanner_emulator/emulator_main" in script
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)


def test_one_pinned_gcloud_everywhere() -> None:
    (ci,) = [
        s["env"]["GCLOUD_VERSION"]
        for s in _load(WORKFLOWS / "ci.yml")["jobs"]["test"]["steps"]
        if "GCLOUD_VERSION" in s.get("env", {})
    ]
    setups = [
        (path.name, step.get("with", {}).get("version"))
        for path in FILES
        for step in _steps(_load(path))
        if step.get("uses", "").startswith("google-github-actions/setup-gcloud@")
    ]
    assert setups
    assert {version for _, version in setups} == {ci}, setups


def test_prod_deploys_and_applies_wait_for_an_environment() -> None:
    deploy = _load(WORKFLOWS / "deploy.yml")
    assert "dev" in deploy["jobs"]["approve-prod"]["needs"]
    assert "needs.dev.result == 'success'" in deploy["jobs"]["approve-prod"]["if"]
    assert "needs.approve-prod.result == 'success'" in deploy["jobs"]["prod"]["if"]
    assert deploy["jobs"]["prod"]["with"]["environment"] == "prod"
    approve = _load(WORKFLOWS / "approve.yml")["jobs"]["approve"]
    assert approve["environment"] == "${{ inputs.environment }}"
    rollout = _load(WORKFLOWS / "deploy-environment.yml")
    assert rollout["jobs"]["prepare"]["environment"] == "${{ inputs.environment }}-rollout"
    for workflow in ("deploy-cell.yml", "export-gate.yml"):
        for job in _load(WORKFLOWS / workflow)["jobs"].values():
            if "steps" in job:
                assert job["environment"] == "${{ inputs.environment }}-rollout", workflow
    assert deploy["jobs"]["approve-prod"]["with"]["reviewed"] is True
    assert "reviewed" not in deploy["jobs"]["approve-dev"]["with"]
    terraform = _load(WORKFLOWS / "terraform.yml")
    for dev in ("dev-plan", "dev-collect", "dev-environment", "dev-cells"):
        assert dev in terraform["jobs"]["prod-plan"]["needs"]
    assert "needs.dev-cells.result == 'success'" in terraform["jobs"]["prod-plan"]["if"]
    apply = _load(WORKFLOWS / "terraform-apply.yml")["jobs"]["apply"]
    assert apply["environment"] == "terraform-${{ inputs.environment }}-apply"


def _job_runs(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in job.get("steps", []))


def test_the_image_is_built_once_and_deployed_by_digest() -> None:
    deploy = _load(WORKFLOWS / "deploy.yml")
    build = deploy["jobs"]["build"]
    assert any("docker/build-push-action@" in s.get("uses", "") for s in build["steps"])
    # Every environment gets the digest of that one build...
    for name in ("dev", "prod"):
        job = deploy["jobs"][name]
        assert "build" in job["needs"], name
        assert job["with"]["image_digest"] == "${{ needs.build.outputs.digest }}", name
    # ...and builds nothing itself: it pushes the built archive with its digest kept,
    # and gives Cloud Run the digest, never a tag.
    prepare = _load(WORKFLOWS / "deploy-environment.yml")["jobs"]["prepare"]
    cell = _load(WORKFLOWS / "deploy-cell.yml")["jobs"]
    for job in (prepare, *cell.values()):
        assert not any("build-push-action" in s.get("uses", "") for s in job.get("steps", []))
    assert "skopeo copy --preserve-digests" in _job_runs(prepare)
    for name in ("exporter-canary", "exporter", "ingest"):
        assert '--image="$REPOSITORY@$DIGEST"' in _job_runs(cell[name]), name
    # A re-run finds its tag already holding the digest and pushes nothing.
    assert '"$existing" == "$BUILT_DIGEST"' in _job_runs(prepare)


def _live_groups(path: Path) -> dict[str, Any]:
    """Each job of a workflow that names a group of `live-`, and its concurrency."""
    return {
        name: job["concurrency"]
        for name, job in _load(path)["jobs"].items()
        if "live-" in str(job.get("concurrency", {}).get("group", ""))
    }


def _group(concurrency: dict[str, Any], **context: Any) -> str:
    """The group a job's concurrency names, its expression evaluated in `context`."""
    return str(interpolate(concurrency["group"], Expressions(context, {})))


def _if(job: dict[str, Any], **context: Any) -> bool:
    """Whether a job's `if:` holds in `context` (its needs' results and outputs)."""
    condition = str(job.get("if", "true")).strip()
    condition = re.sub(r"^\$\{\{(.*)\}\}$", r"\1", condition, flags=re.S)
    status = {"failed": False, "cancelled": False}
    return bool(Expressions(context, status).evaluate(condition))


MAIN = {"event_name": "push", "ref": "refs/heads/main"}


def test_one_queue_per_cell_for_every_change_to_what_runs() -> None:
    # A cell's rollouts and rollbacks (deploy-environment.yml, break-glass.yml) and its
    # applies (terraform.yml) share one group, live-<environment>-<cell>: whichever
    # starts second waits for the first; one cell's change never waits on another's.
    # The environment's root has its own, live-<environment>. Nothing in a queue is
    # ever cancelled half-way: a rollback that cut an apply short would leave it
    # half-made.
    for environment in ("dev", "prod"):
        cell = {"inputs": {"environment": environment}, "matrix": {"cell": "eu-2"}}
        for wave in ("first", "rest"):
            rollout = _load(WORKFLOWS / "deploy-environment.yml")["jobs"][wave]["concurrency"]
            assert _group(rollout, **cell) == f"live-{environment}-eu-2"
            assert rollout["cancel-in-progress"] is False
        terraform = _load(WORKFLOWS / "terraform.yml")["jobs"]
        applies = terraform[f"{environment}-cells"]["concurrency"]
        assert _group(applies, matrix={"cell": "eu-2"}) == f"live-{environment}-eu-2"
        assert applies["cancel-in-progress"] is False
        root = terraform[f"{environment}-environment"]["concurrency"]
        assert _group(root) == f"live-{environment}"
    glass = _load(WORKFLOWS / "break-glass.yml")["jobs"]["cells"]["concurrency"]
    assert _group(glass, matrix={"cell": "eu-2"}) == "live-prod-eu-2"
    # On-call's rollback (rollback.yml) waits in the queue of the cell its system is in.
    rollback = _load(WORKFLOWS / "rollback.yml")["jobs"]
    queued = {"rollback": rollback["rollback"]["concurrency"]}
    assert _live_groups(WORKFLOWS / "rollback.yml") == queued
    for environment in ("dev", "prod"):
        cell = {"cell": {"outputs": {"cell": "eu-2"}}}
        queue = rollback["rollback"]["concurrency"]
        assert _group(queue, inputs={"environment": environment}, needs=cell) == (
            f"live-{environment}-eu-2"
        )
        assert queue["cancel-in-progress"] is False
    # Only a run that acts (given `to`) enters it. One that only says what it found waits
    # for no rollout and, GitHub keeping one pending run per group, never replaces a
    # rollout or an apply waiting there: the act re-reads in the queue before it acts.
    for to, queued_too in (("", False), ("recordline-00001-x1y", True)):
        inputs = {"environment": "prod", "to": to}
        assert _if(rollback["rollback"], inputs=inputs) is queued_too, to
        assert _if(rollback["cell"], inputs=inputs), to
    said = [s for s in rollback["cell"]["steps"] if "infra/rollback.sh act" in s.get("run", "")]
    assert [_if(s, inputs={"to": ""}) for s in said] == [True], said
    assert [_if(s, inputs={"to": "recordline-00001-x1y"}) for s in said] == [False], said
    assert "concurrency" not in rollback["cell"]
    assert "concurrency" not in _load(WORKFLOWS / "deploy.yml")
    # The drift and reconcile jobs only read: they wait in no queue, so they never
    # replace a change waiting there (GitHub keeps one pending run per group).
    assert _live_groups(WORKFLOWS / "drift.yml") == {}
    # The workflows those jobs call never wait on the queue their caller holds: that
    # would be the queue waiting on itself.
    for called in (
        "deploy-cell.yml",
        "export-gate.yml",
        "terraform-environment.yml",
        "terraform-apply.yml",
        "terraform-collect.yml",
        "approve.yml",
    ):
        assert _live_groups(WORKFLOWS / called) == {}, called
    # terraform.yml's own group only serialises a pull request's plans; elsewhere it is
    # the run's own id, so it spans nothing.
    group = _load(WORKFLOWS / "terraform.yml")["concurrency"]["group"]
    assert group == (
        "terraform-${{ github.event_name == 'pull_request' && github.ref || github.run_id }}"
    )


# The environments whose reviewers approve, and the reviewer-free ones queued jobs run in.
REVIEWED = {"dev", "prod", "terraform-dev", "terraform-prod"}


def _environments(workflow: str, environment: str) -> set[str]:
    """The GitHub environments the jobs of a called workflow name, for `environment`."""
    found = set()
    for job in _load(WORKFLOWS / workflow)["jobs"].values():
        if "environment" in job:
            context = Expressions({"inputs": {"environment": environment}}, {})
            found.add(str(interpolate(job["environment"], context)))
        if job.get("uses", "").startswith("./.github/workflows/"):
            found |= _environments(job["uses"].rsplit("/", 1)[1], environment)
    return found


@pytest.mark.parametrize(
    "workflow", ["deploy.yml", "terraform.yml", "break-glass.yml", "rollback.yml"]
)
def test_approvals_are_given_before_a_change_enters_its_queue(workflow: str) -> None:
    # A change waiting for its reviewers must hold no queue: an emergency (a rollback,
    # an apply) queued behind it would wait for a person who may be asleep, and GitHub
    # replaces the older of two pending runs. So each queued job comes after an approval
    # job that runs outside every queue, and nothing inside a queue names an environment
    # with reviewers: the queued jobs run in reviewer-free environments.
    jobs = _load(WORKFLOWS / workflow)["jobs"]

    def queued_in(name: str) -> list[str]:
        """The queued jobs of `name`: its own, or those of the workflow it calls."""
        job = jobs[name]
        if "concurrency" in job:
            return [name]
        if job.get("uses", "").endswith("/deploy-environment.yml"):
            return [name]  # its waves are queued (test_one_queue_per_cell_...)
        return []

    queued = [q for name in jobs for q in queued_in(name)]
    assert queued, workflow

    def before(name: str) -> set[str]:
        needs = jobs[name].get("needs", [])
        direct = {needs} if isinstance(needs, str) else set(needs)
        return direct.union(*(before(n) for n in direct)) if direct else set()

    for name in queued:
        approvals = [n for n in before(name) if jobs[n].get("uses", "").endswith("/approve.yml")]
        assert approvals, name
        for approval in approvals:
            assert "concurrency" not in jobs[approval]
            for environment in ("dev", "prod"):
                context = Expressions({"inputs": {"environment": environment}}, {})
                asked = interpolate(jobs[approval]["with"]["environment"], context)
                assert asked in REVIEWED, (approval, asked)
        environment = "dev" if name.startswith("dev") else "prod"
        if "uses" in jobs[name]:
            named = _environments(jobs[name]["uses"].rsplit("/", 1)[1], environment)
        else:  # a job of its own (rollback.yml's)
            context = Expressions({"inputs": {"environment": environment}}, {})
            named = {str(interpolate(jobs[name]["environment"], context))}
        assert named, name
        assert not named & REVIEWED, named
        assert all(e.endswith(("-rollout", "-apply")) for e in named), named
    assert "concurrency" not in _load(WORKFLOWS / "approve.yml")["jobs"]["approve"]


def test_an_apply_is_asked_for_only_when_its_plans_change_something() -> None:
    jobs = _load(WORKFLOWS / "terraform.yml")["jobs"]
    for changes, wanted in (("true", True), ("false", False)):
        for env in ("dev", "prod"):
            needs = {f"{env}-collect": {"result": "success", "outputs": {"changes": changes}}}
            assert _if(jobs[f"{env}-approve"], github=MAIN, needs=needs) is wanted
    # A pull request's plans are never collected, approved nor applied.
    pull = {"event_name": "pull_request", "ref": "refs/pull/7/merge"}
    needs = {"dev-plan": {"result": "success"}}
    assert _if(jobs["dev-collect"], github=pull, needs=needs) is False
    # The environment's root only when its own plan changes something; the cells whose
    # plans do, each in its queue, after the root.
    approved = {"result": "success", "outputs": {}}
    for root, wanted in (("true", True), ("false", False)):
        needs = {
            "dev-collect": {"result": "success", "outputs": {"environment": root, "cells": "[]"}},
            "dev-approve": approved,
        }
        assert _if(jobs["dev-environment"], github=MAIN, needs=needs) is wanted
    for environment_result, cells, wanted in (
        ("success", '["eu-2"]', True),
        ("skipped", '["eu-2"]', True),
        ("failure", '["eu-2"]', False),
        ("success", "[]", False),
    ):
        needs = {
            "dev-collect": {"result": "success", "outputs": {"cells": cells}},
            "dev-approve": approved,
            "dev-environment": {"result": environment_result},
        }
        assert _if(jobs["dev-cells"], github=MAIN, needs=needs) is wanted
    # prod is planned after dev applied, or when dev had nothing to apply; not after a
    # failed dev apply.
    for environment_result, cells_result, wanted in (
        ("success", "success", True),
        ("skipped", "skipped", True),
        ("success", "failure", False),
        ("failure", "skipped", False),
    ):
        needs = {
            "roots": {"result": "success"},
            "dev-plan": {"result": "success"},
            "dev-collect": {"result": "success"},
            "dev-environment": {"result": environment_result},
            "dev-cells": {"result": cells_result},
        }
        assert _if(jobs["prod-plan"], github=MAIN, needs=needs) is wanted


def _paths_match(pattern: str, path: str) -> bool:
    """GitHub's `paths` filter for the forms deploy.yml uses: a file, or dir/**."""
    if pattern.endswith("/**"):
        return path.startswith(pattern[:-2])
    return path == pattern


def test_a_deploy_runs_only_when_the_image_or_how_it_is_deployed_changes() -> None:
    on = _load(WORKFLOWS / "deploy.yml")[True]  # YAML 1.1 reads the key `on` as true
    paths = on["push"]["paths"]
    # Every file the Dockerfile copies into the image...
    dockerfile = (WORKFLOWS.parents[1] / "Dockerfile").read_text()
    copied = [
        source.rstrip("/")
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert copied  # pyproject.toml, uv.lock, README.md, app
    for source in copied:
        probe = source if "." in source.rsplit("/", 1)[-1] else f"{source}/x.py"
        assert any(_paths_match(p, probe) for p in paths), source
    # ...and the deploy's own workflows start one; a tfvars merge, docs or tests do not
    # (an apply deploys the cells it creates itself, terraform-apply.yml).
    rollout = ("deploy-environment.yml", "deploy-cell.yml", "export-gate.yml")
    for workflow in ("deploy.yml", *rollout, "approve.yml"):
        assert any(_paths_match(p, f".github/workflows/{workflow}") for p in paths), workflow
    for unrelated in (
        "infra/terraform/env/prod/recordline.tfvars.json",
        "docs/operations.md",
        "tests/x.py",
    ):
        assert not any(_paths_match(p, unrelated) for p in paths), unrelated
    assert "paths-ignore" not in on["push"]


def test_the_drift_plan_tickets_a_project_that_differs_from_main() -> None:
    workflow = _load(WORKFLOWS / "drift.yml")
    job = workflow["jobs"]["plan"]
    assert workflow[True]["schedule"]  # YAML 1.1 reads the key `on` as true
    runs = _job_runs(job)
    assert "-detailed-exitcode" in runs
    assert "-lock=false" in runs  # the read-only plan account
    assert "gh issue create" in runs
    assert "gh issue comment" in runs
    assert job["permissions"]["issues"] == "write"
    (auth,) = [s for s in job["steps"] if "google-github-actions/auth@" in s.get("uses", "")]
    assert "vars.TF_PLAN_SERVICE_ACCOUNT_PROD" in auth["with"]["service_account"]
    assert "vars.TF_PLAN_SERVICE_ACCOUNT_DEV" in auth["with"]["service_account"]


def test_an_apply_applies_the_plan_approved_and_nothing_planned_since() -> None:
    # The plan is made outside the queue, before its approval, from the live project
    # (never -refresh=false); the apply, in the queue, applies that saved plan from this
    # run's own artifact (no run-id: never a plan another run saved). Should the state
    # have moved meanwhile (another apply queued first), Terraform refuses the saved
    # plan as stale and applies nothing of it.
    callers = _load(WORKFLOWS / "terraform.yml")["jobs"]
    plan = _load(WORKFLOWS / "terraform-environment.yml")["jobs"]["plan"]
    apply = _load(WORKFLOWS / "terraform-apply.yml")["jobs"]["apply"]
    for environment in ("dev", "prod"):
        assert "concurrency" not in callers[f"{environment}-plan"]
        assert callers[f"{environment}-plan"]["uses"].endswith("/terraform-environment.yml")
        for applies in (f"{environment}-environment", f"{environment}-cells"):
            assert callers[applies]["uses"].endswith("/terraform-apply.yml")
            assert f"{environment}-collect" in callers[applies]["needs"]
    assert "environment" not in plan  # the plan exists before anyone is asked to approve
    plan_runs = _job_runs(plan)
    assert "terraform plan " in plan_runs
    assert "-out=tfplan" in plan_runs
    assert "-refresh=false" not in plan_runs
    assert "terraform show -no-color tfplan" in plan_runs
    assert "GITHUB_STEP_SUMMARY" in plan_runs
    (upload,) = [
        s
        for s in plan["steps"]
        if "upload-artifact@" in s.get("uses", "") and "saved/tfplan" in s["with"]["path"]
    ]
    assert "saved/tfplan\n" in upload["with"]["path"]
    assert "saved/.terraform.lock.hcl" in upload["with"]["path"]
    (download,) = [s for s in apply["steps"] if "download-artifact@" in s.get("uses", "")]
    assert set(download["with"]) == {"name", "path"}
    assert download["with"]["name"] == upload["with"]["name"]
    assert upload["with"]["name"] == "tfplan-${{ inputs.environment }}-${{ inputs.root }}"
    runs = _job_runs(apply)
    assert "terraform plan" not in runs
    assert "terraform apply -input=false tfplan" in runs
    assert "-lockfile=readonly" in runs


def _uv_versions() -> dict[str, str]:
    root = WORKFLOWS.parents[1]
    dev = re.search(r'^UV_VERSION = "([^"]+)"', (root / "dev.py").read_text(), re.M)
    docker = re.findall(r"\buv(?:==|:)(\d[\w.]*)", (root / "Dockerfile").read_text())
    found = {"dev.py": dev.group(1) if dev else "", "Dockerfile": ",".join(sorted(set(docker)))}
    for path in FILES:
        for step in _steps(_load(path)):
            if step.get("uses", "").startswith("astral-sh/setup-uv@"):
                found[f"{path.name}: {step.get('name', 'setup-uv')}"] = step["with"]["version"]
    return found


def test_one_uv_version_everywhere() -> None:
    versions = _uv_versions()
    assert versions["dev.py"]
    assert set(versions.values()) == {versions["dev.py"]}, versions

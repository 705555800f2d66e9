"""The deploy workflows' shell steps, run against a fake cloud (tests/infra/fake_cloud.py).

deploy-environment.yml's `prepare` job (the image pushed once, the systems read from
Terraform's state), then its waves: one system first, then the rest, each a
deploy-system.yml job (deploy with no traffic under a tag, smoke test on the tag URL,
promote; traffic back to what served before if anything fails).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_terraform import _locals, _resources
from tests.infra.test_topic_schemas import AVRO as AVRO_ORDER
from tests.infra.test_topic_schemas import CANARY as AVRO_CANARY
from tests.infra.workflow_runner import Cloud, Expressions, Job, interpolate, load, run_job

PROJECT, NUMBER, REGION = "recordline-prod", "123456789012", "europe-west1"
REPOSITORY = f"{REGION}-docker.pkg.dev/{PROJECT}/recordline/recordline"
DEPLOYER = f"recordline-deploy@{PROJECT}.iam.gserviceaccount.com"
OPERATOR = f"recordline-operator@{PROJECT}.iam.gserviceaccount.com"
ONCALL = "user:oncall@example.com"
ONCALL_GROUP = "group:recordline-oncall@example.com"  # `oncall` in env/prod.tfvars
BUILT = "sha256:" + "b" * 64
EARLIER = "sha256:" + "e" * 64
SHA = "c0ffee" + "0" * 34
VARIABLES = {
    "GCP_PROJECT_ID": PROJECT,
    "GCP_REGION": REGION,
    "GCP_WORKLOAD_IDENTITY_PROVIDER": "projects/1/locations/global/workloadIdentityPools/github",
    "GCP_DEPLOY_SERVICE_ACCOUNT": DEPLOYER,
    "ARTIFACT_REPOSITORY": f"{REGION}-docker.pkg.dev/{PROJECT}/recordline",
    "IMAGE_NAME": "recordline",
}
GITHUB = {"sha": SHA, "run_id": "4242", "run_attempt": "1", "event_name": "push"}


def account(name: str) -> str:
    return f"{name}@{PROJECT}.iam.gserviceaccount.com"


# The default canary (modules/system/canary.tf): a record of the service's default shape.
DEFAULT_CANARY = json.dumps({"data": {"canary": True}, "id": "recordline-canary"}).encode()


def deploy_output(system: str, shape: dict[str, Any] | None = None) -> dict[str, str]:
    """Terraform's output `deploy` for one system (modules/system/outputs.tf)."""
    url = f"https://{system}-{NUMBER}.{REGION}.run.app"
    shape = shape or {}
    schema = shape.get("schema")
    return {
        "service": system,
        # The environment's push and smoke accounts, shared (root service_accounts.tf).
        "push_service_account": account("recordline-push"),
        "push_audience": f"{url}/pubsub/push",
        "smoke_service_account": account("recordline-smoke"),
        "read_audience": f"{url}/v1",
        "canary_data": base64.b64encode(shape.get("canary", DEFAULT_CANARY)).decode(),
        "schema": f"projects/{PROJECT}/schemas/{schema['name']}" if schema else "",
        "encoding": schema["encoding"] if schema else "",
    }


def placeholder(system: str) -> dict[str, Any]:
    return {
        "name": f"{system}-00001-x1y",
        "image": "docker.io/library/python:3.11.14-slim-bookworm@sha256:" + "6" * 64,
        "digest": "sha256:" + "0" * 64,
        "command": ["python3"],
        "args": ["-c", "placeholder.py"],
    }


def _role(rtype: str, name: str) -> str:
    role = _resources(rtype)[name]["role"]
    assert role.startswith("roles/"), role
    return str(role)


CUSTOM_ROLES = f"projects/{PROJECT}/roles/"


def terraform_iam(systems: list[str]) -> dict[str, Any]:
    """Who holds which role where, as Terraform grants it (read from infra/terraform, so a
    grant taken away there is taken away here), for the fake cloud to check. `oncall` is
    one group with one person in it, the person every runbook test runs as."""
    deployer, operator = f"serviceAccount:{DEPLOYER}", f"serviceAccount:{OPERATOR}"
    custom = {
        f"{CUSTOM_ROLES}{body['role_id']}": body["permissions"]
        for body in _resources("google_project_iam_custom_role").values()
    }
    granted = str(_resources("google_project_iam_member")["operator"]["for_each"])
    operator_roles = [
        m.group(0) if m.group(1) is None else f"{CUSTOM_ROLES}{_custom_id(m.group(1))}"
        for m in re.finditer(r"roles/[\w.]+|google_project_iam_custom_role\.(\w+)\.id", granted)
    ]
    project: dict[str, list[str]] = {
        operator: operator_roles,
        ONCALL_GROUP: list(_locals()["oncall_project_roles"]),
    }
    runner = "google_cloud_run_v2_service_iam_member"
    services = {
        s: {
            deployer: [_role(runner, "deployer_deploys")],
            operator: [
                _role(runner, "operator_account_rolls_back"),
                _role(runner, "operator_invokers"),
            ],
            f"serviceAccount:{account('recordline-push')}": [_role(runner, "push_invoker")],
            f"serviceAccount:{account('recordline-smoke')}": [_role(runner, "smoke_invoker")],
        }
        for s in systems
    }
    accounts_iam = "google_service_account_iam_member"
    service_accounts: dict[str, dict[str, list[str]]] = {
        OPERATOR: {ONCALL_GROUP: [_role(accounts_iam, "oncall_acts_as_operator")]},
        account("recordline-push"): {
            deployer: [_role(accounts_iam, "deployer_mints_smoke_tokens")]
        },
        account("recordline-smoke"): {
            deployer: [_role(accounts_iam, "deployer_mints_smoke_tokens")]
        },
    }
    for s in systems:
        service_accounts[account(f"{s}-run")] = {
            deployer: [_role(accounts_iam, "deployer_acts_as_runtime")],
            operator: [_role(accounts_iam, "operator_account_acts_as_runtime")],
        }
    tables = {
        f"{s.replace('-', '_')}.dead_letters": {
            ONCALL_GROUP: [_role("google_bigquery_table_iam_member", "oncall_reads_dead_letters")]
        }
        for s in systems
    }
    # Each system's serving database, were it to have `serving` (instance/database).
    databases = {
        f"recordline-serving/{s}": {
            operator: [_role("google_spanner_database_iam_member", "operator_reads_database")]
        }
        for s in systems
    }
    # Each system's export job, were it to have `serving`.
    jobs = {
        f"{s}-export": {
            operator: [_role("google_cloud_run_v2_job_iam_member", "operator_runs_export")]
        }
        for s in systems
    }
    return {
        "iam": {
            "project": project,
            "services": services,
            "service_accounts": service_accounts,
            "tables": tables,
            "databases": databases,
            "jobs": jobs,
        },
        "custom_roles": custom,
        "groups": {ONCALL_GROUP: [ONCALL]},
        "scheduler_jobs": {f"{s}-canary": "ENABLED" for s in systems},
        # The GitHub environments set up at bootstrap (infra/README.md, step 5).
        "github_environments": {
            "prod": ["required_reviewers", "branch_policy"],
            "prod-rollout": ["branch_policy"],
            "terraform-prod": ["required_reviewers", "branch_policy"],
        },
    }


def _custom_id(resource: str) -> str:
    return str(_resources("google_project_iam_custom_role")[resource]["role_id"])


EXPORTER = "recordline-exporter"


def exporter_iam() -> dict[str, Any]:
    """Who may deploy the exporter service's worker pool and act as its account, as
    Terraform grants it (exporter.tf)."""
    deployer, operator = f"serviceAccount:{DEPLOYER}", f"serviceAccount:{OPERATOR}"
    pools = "google_cloud_run_v2_worker_pool_iam_member"
    acts = _resources("google_service_account_iam_member")["acts_as_exporter"]
    assert set(re.findall(r"\b(deployer|operator|terraform_apply)\b", str(acts["for_each"]))) == {
        "deployer",
        "operator",
        "terraform_apply",
    }
    return {
        "worker_pools": {
            EXPORTER: {
                deployer: [_role(pools, "deployer_deploys_exporter")],
                operator: [_role(pools, "operator_runs_exporter")],
            }
        },
        "service_accounts": {
            account(EXPORTER): {deployer: [acts["role"]], operator: [acts["role"]]}
        },
    }


def world(
    systems: list[str],
    *,
    deployed: str | None = None,
    shapes: dict[str, dict[str, Any]] | None = None,
    exporter: str | None = None,
) -> dict[str, Any]:
    """A project after its apply: each system on the placeholder, or on `deployed`.
    `shapes`: a system's id_field, time_field, canary (bytes) and topic schema
    ({name, type, encoding, definition}), as its entry of `systems` declares them.
    `exporter`: the exporter service's worker pool (a system has `serving`), on the
    placeholder (""), or on that digest."""
    shapes = shapes or {}
    state = {
        "version": 4,
        "outputs": {
            "deploy": {"value": {s: deploy_output(s, shapes.get(s)) for s in systems}},
            "deploy_first": {"value": "recordline" if "recordline" in systems else systems[0]},
            "deploy_exporter": {"value": EXPORTER if exporter is not None else ""},
        },
    }
    services = {}
    for s in systems:
        revisions = [placeholder(s)]
        if deployed:
            revisions.append(
                {
                    "name": f"{s}-00002-x2y",
                    "image": f"{REPOSITORY}@{deployed}",
                    "digest": deployed,
                    "command": None,
                    "args": None,
                }
            )
        out = deploy_output(s)
        services[s] = {
            "revisions": revisions,
            "traffic": [{"latest": True, "percent": 100}],
            "runtime_account": account(f"{s}-run"),
            "push_audience": out["push_audience"],
            "read_audience": out["read_audience"],
            "push_accounts": [out["push_service_account"]],
            "readers": [out["smoke_service_account"], OPERATOR],
            # What the service is told (RECORDLINE_ID_FIELD, RECORDLINE_TIME_FIELD).
            "shape": {k: shapes.get(s, {}).get(k) for k in ("id_field", "time_field")},
        }
    made = {
        "project": PROJECT,
        "number": NUMBER,
        "region": REGION,
        "hash": "q2w3e4r5t6",
        "principal": ONCALL,
        "adc": None,
        **terraform_iam(systems),
        "registry": {REPOSITORY: {"tags": {}, "digests": [deployed] if deployed else []}},
        "objects": {"gs://recordline-prod-tfstate/recordline/default.tfstate": json.dumps(state)},
        "services": services,
        "broken_digests": [],
        "built_digest": BUILT,
        # Provenance GitHub holds: each image deploy.yml built (build job, attest).
        "attestations": {
            digest: {
                "repo": "recordline/recordline",
                "workflow": "recordline/recordline/.github/workflows/deploy.yml",
            }
            for digest in (BUILT, EARLIER)
        },
        # The topic schemas Terraform created (google_pubsub_schema), newest revision.
        "schemas": {
            deploy_output(s, shape)["schema"]: {
                "revision_id": "a1b2c3d4",
                "type": shape["schema"]["type"],
                "definition": shape["schema"]["definition"],
            }
            for s, shape in shapes.items()
            if shape.get("schema")
        },
    }
    if exporter is not None:
        granted = exporter_iam()
        made["iam"]["worker_pools"] = granted["worker_pools"]
        made["iam"]["service_accounts"].update(granted["service_accounts"])
        revisions = [{**placeholder(EXPORTER), "name": f"{EXPORTER}-00001-p1q"}]
        if exporter:
            revisions.append(
                {
                    "name": f"{EXPORTER}-00002-w2p",
                    "image": f"{REPOSITORY}@{exporter}",
                    "digest": exporter,
                    "command": ["recordline"],
                    "args": ["exporter"],
                }
            )
        made["worker_pools"] = {
            EXPORTER: {"revisions": revisions, "split": "latest", "account": account(EXPORTER)}
        }
    return made


def rollout(
    cloud: Cloud, *, image_tag: str = "", cancel_after: str | None = None
) -> dict[Any, Job | None]:
    """deploy.yml's prod jobs with the prod environment's usual variables."""
    return rollout_with(cloud, VARIABLES, image_tag=image_tag, cancel_after=cancel_after)


def rollout_with(
    cloud: Cloud,
    variables: dict[str, str],
    *,
    image_tag: str = "",
    cancel_after: str | None = None,
) -> dict[Any, Job | None]:
    """deploy.yml's prod jobs: approve-prod (approve.yml, in prod, outside the queue),
    then prod (deploy-environment.yml, its jobs in their order), given what deploy.yml
    hands on from one to the other."""
    ran: dict[Any, Job | None] = {}
    deploy = load("deploy.yml")["jobs"]
    assert deploy["approve-prod"]["uses"] == "./.github/workflows/approve.yml"
    approval = run_job(
        cloud,
        "approve.yml",
        "approve",
        inputs=dict(deploy["approve-prod"]["with"]),
        variables=variables,
        github=GITHUB,
    )
    ran["approve"] = approval
    if approval.result != "success":
        ran.update(prepare=None, first=None, rest=None)
        return ran
    status = {"failed": False, "cancelled": False}
    context = {
        "inputs": {"image_tag": image_tag},
        "needs": {
            "approve-prod": {"outputs": approval.outputs, "result": "success"},
            "build": {"outputs": {"digest": "" if image_tag else BUILT}},
        },
    }
    inputs = {
        k: interpolate(v, Expressions(context, status)) for k, v in deploy["prod"]["with"].items()
    }
    prepare = run_job(
        cloud,
        "deploy-environment.yml",
        "prepare",
        inputs=inputs,
        variables={},  # the rollout's environment has none: the approval handed them on
        github=GITHUB,
    )
    ran["prepare"] = prepare
    needs: dict[str, Any] = {"prepare": {"outputs": prepare.outputs, "result": prepare.result}}
    jobs = load("deploy-environment.yml")["jobs"]
    # The exporter service, where the environment has one, then the waves of systems:
    # each job as GitHub starts it, from its own `needs` and `if`.
    exporter = jobs["exporter"]
    context = {"needs": needs, "inputs": inputs}
    if runs(exporter, needs, context):
        assert exporter["uses"] == "./.github/workflows/deploy-exporter.yml"
        status = {"failed": False, "cancelled": False}
        given = {
            k: interpolate(v, Expressions(context, status)) for k, v in exporter["with"].items()
        }
        result = run_job(
            cloud,
            "deploy-exporter.yml",
            "rollout",
            inputs=given,
            variables={},
            github=GITHUB,
            cancel_after=cancel_after,
        )
        ran["exporter"] = result
        needs["exporter"] = {"result": result.result}
    else:
        ran["exporter"] = None
        needs["exporter"] = {"result": "skipped"}
    for wave in ("first", "rest"):
        job = jobs[wave]
        status = {"failed": False, "cancelled": False}
        context = {"needs": needs, "inputs": inputs}
        if not runs(job, needs, context):
            ran[wave] = None
            needs[wave] = {"result": "skipped"}
            continue
        systems = interpolate(job["strategy"]["matrix"]["system"], Expressions(context, status))
        results = []
        for system in systems:
            given = {
                k: interpolate(v, Expressions({**context, "matrix": {"system": system}}, status))
                for k, v in job["with"].items()
            }
            assert job["uses"] == "./.github/workflows/deploy-system.yml"
            result = run_job(
                cloud,
                "deploy-system.yml",
                "rollout",
                inputs=given,
                variables={},
                github=GITHUB,
                cancel_after=cancel_after,
            )
            ran[(wave, system)] = result
            results.append(result.result)
        needs[wave] = {"result": "failure" if "failure" in results else "success"}
    return ran


# A job whose `if` calls one of these decides alone whether it runs; without one, every
# job it needs must have succeeded too (GitHub's rule).
_STATUS_CHECKS = re.compile(r"\b(success|failure|cancelled|always)\(\)")


def runs(job: dict[str, Any], needs: dict[str, Any], context: dict[str, Any]) -> bool:
    """Whether GitHub starts `job`, given what the jobs it needs ended as."""
    needed = [job["needs"]] if isinstance(job["needs"], str) else job["needs"]
    results = [needs.get(n, {}).get("result") for n in needed]
    status = {"failed": "failure" in results, "cancelled": "cancelled" in results}
    condition = job.get("if")
    if condition is None:
        return all(r == "success" for r in results)
    decided = bool(interpolate(condition, Expressions(context, status)))
    if _STATUS_CHECKS.search(condition):
        return decided
    return decided and all(r == "success" for r in results)


def serving(cloud: Cloud, system: str) -> list[tuple[str, int, bool]]:
    """(revision, percent, follows the latest) of what carries traffic."""
    service = cloud.world["services"][system]
    latest = service["revisions"][-1]["name"]
    return [
        (latest if t.get("latest") else t["revision"], t["percent"], bool(t.get("latest")))
        for t in service["traffic"]
        if t["percent"] > 0
    ]


def tags(cloud: Cloud, system: str) -> list[str]:
    return [t["tag"] for t in cloud.world["services"][system]["traffic"] if t.get("tag")]


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    return Cloud(tmp_path, world(["recordline"]))


def _explain(ran: dict[Any, Job | None]) -> str:
    return "\n".join(
        f"{key}: {step.name}: {step.outcome}\n{step.stderr[-1500:]}"
        for key, job in ran.items()
        if job is not None
        for step in job.steps
        if step.outcome == "failure"
    )


# --- the first deploy ------------------------------------------------------------------


def test_the_first_deploy_replaces_the_placeholder_after_its_smoke_test(cloud: Cloud) -> None:
    ran = rollout(cloud)
    assert all(j is None or j.result == "success" for j in ran.values()), _explain(ran)
    # The image was pushed once, by digest, under the commit's tag.
    assert cloud.world["registry"][REPOSITORY]["tags"] == {SHA: BUILT}
    # The new revision runs the image's own command: the placeholder's is cleared.
    new = cloud.world["services"]["recordline"]["revisions"][-1]
    assert (new["digest"], new["command"], new["args"]) == (BUILT, None, None)
    # It serves everything, following the latest revision again; its tag is gone.
    assert serving(cloud, "recordline") == [(new["name"], 100, True)]
    assert tags(cloud, "recordline") == []
    # The smoke test's push reached it (the placeholder would have answered 503): the
    # system's canary message under a message id of this run's own.
    message = cloud.world["services"]["recordline"]["messages"]["smoke-4242-1-recordline"]
    assert message["status"] == "stored"
    assert message["record"]["id"] == "recordline-canary"
    # Every run command named its project and region.
    for argv in cloud.calls():
        if argv[0] == "run":
            assert any(a.startswith("--region=") for a in argv), argv


def test_the_candidate_gets_no_traffic_before_its_smoke_test(cloud: Cloud) -> None:
    seen: list[Any] = []
    ran = rollout(cloud)
    assert ran["prepare"] is not None
    # Replay the calls: the deploy is --no-traffic, and the push went to the tag URL.
    deploys = [a for a in cloud.calls() if a[:2] == ["run", "deploy"]]
    assert len(deploys) == 1
    assert "--no-traffic" in deploys[0]
    assert "--tag=sha-c0ffee0" in deploys[0]
    pushes = [a for a in cloud.calls("curl-answer") if a[1].endswith("/pubsub/push")]
    seen = [a[1] for a in pushes]
    assert seen
    assert all(url.startswith("https://sha-c0ffee0---recordline-") for url in seen)


# --- a smoke test that fails -------------------------------------------------------------


def test_a_failed_smoke_test_returns_traffic_and_stops_the_rollout(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path, world(["recordline", "orders", "payments"], deployed=EARLIER))
    cloud.update(broken_digests=[BUILT])  # the new image answers 500
    before = {s: serving(cloud, s) for s in ("recordline", "orders", "payments")}
    ran = rollout(cloud)
    first = ran[("first", "recordline")]
    assert first is not None
    assert first.result == "failure"
    assert first.step("Smoke test the candidate on its tag URL").outcome == "failure"
    assert first.step("Promote the candidate").outcome == "skipped"
    assert first.step("Return the traffic to what served before").outcome == "success"
    # The first system serves what it served before, and no tag is left behind.
    assert serving(cloud, "recordline") == [("recordline-00002-x2y", 100, False)]
    assert tags(cloud, "recordline") == []
    # Nor the candidate: it never served, so the revision before the serving one is
    # always one that served (what the runbook's rollback picks).
    assert [r["name"] for r in cloud.world["services"]["recordline"]["revisions"]] == [
        "recordline-00001-x1y",
        "recordline-00002-x2y",
    ]
    assert "traffic is back on recordline-00002-x2y=100" in first.summary
    # The rest were never touched.
    assert ran["rest"] is None
    for system in ("orders", "payments"):
        assert serving(cloud, system) == before[system]
        assert len(cloud.world["services"][system]["revisions"]) == 2


def test_a_cancelled_rollout_returns_traffic_too(cloud: Cloud) -> None:
    ran = rollout(cloud, cancel_after="Deploy with no traffic, under a tag")
    job = ran[("first", "recordline")]
    assert job is not None
    assert job.step("Return the traffic to what served before").outcome == "success"
    assert serving(cloud, "recordline") == [("recordline-00001-x1y", 100, False)]


# --- fifty systems ---------------------------------------------------------------------------


def test_systems_come_from_terraforms_state_one_first_then_the_rest(tmp_path: Path) -> None:
    systems = ["recordline", *(f"system-{n:02d}" for n in range(1, 12))]
    cloud = Cloud(tmp_path, world(systems, deployed=EARLIER))
    ran = rollout(cloud)
    assert all(j is None or j.result == "success" for j in ran.values()), _explain(ran)
    prepare = ran["prepare"]
    assert prepare is not None
    assert json.loads(prepare.outputs["first"]) == ["recordline"]
    assert json.loads(prepare.outputs["rest"]) == systems[1:]
    assert [k for k in ran if isinstance(k, tuple)] == [
        ("first", "recordline"),
        *(("rest", s) for s in systems[1:]),
    ]
    for system in systems:
        (_revision, percent, follows) = serving(cloud, system)[0]
        assert (percent, follows) == (100, True)
        assert cloud.world["services"][system]["revisions"][-1]["digest"] == BUILT
    # The list is Terraform's, read from the state bucket: no hand-kept variable.
    assert [
        "storage",
        "cat",
        "gs://recordline-prod-tfstate/recordline/default.tfstate",
    ] in cloud.calls()
    rest = load("deploy-environment.yml")["jobs"]["rest"]
    assert rest["strategy"]["max-parallel"] == 10
    assert rest["strategy"]["fail-fast"] is True


def test_no_job_timeout_grows_with_the_number_of_systems() -> None:
    # One system per job: a rollout of fifty is more jobs, not a longer one.
    for workflow, job in (("deploy-environment.yml", "prepare"), ("deploy-system.yml", "rollout")):
        assert load(workflow)["jobs"][job]["timeout-minutes"] <= 20
    assert "${{ vars.RECORDLINE_SYSTEMS }}" not in json.dumps(load("deploy-environment.yml"))


# --- systems with a shape of their own ----------------------------------------------------

# README, "Pointing Recordline at an existing topic": orders on an Avro topic, its id in
# order_id; payments in plain JSON with its id nested. Each canary in its own shape.
SHAPES: dict[str, dict[str, Any]] = {
    "orders": {
        "id_field": "order_id",
        "time_field": "meta.created_at",
        "canary": AVRO_CANARY,
        "schema": {
            "name": "orders",
            "type": "AVRO",
            "encoding": "BINARY",
            "definition": AVRO_ORDER.decode(),
        },
    },
    "payments": {
        "id_field": "payment.id",
        "canary": b'{"payment": {"id": "recordline-canary", "cents": 1}}',
    },
}


def test_systems_with_their_own_shape_are_deployed_with_their_own_canary(
    tmp_path: Path,
) -> None:
    systems = ["recordline", "orders", "payments"]
    cloud = Cloud(tmp_path, world(systems, deployed=EARLIER, shapes=SHAPES))
    ran = rollout(cloud)
    assert all(j is None or j.result == "success" for j in ran.values()), _explain(ran)
    for system in systems:
        service = cloud.world["services"][system]
        message = service["messages"][f"smoke-4242-1-{system}"]
        # Stored under the id its own field holds, not refused as a rejection.
        assert message["status"] == "stored", message
        assert message["record"]["id"] == "recordline-canary"
        assert serving(cloud, system)[0][1:] == (100, True)
    # The Avro canary was decoded with the topic's schema, as Pub/Sub would mark it.
    assert cloud.world["services"]["orders"]["records"]["recordline-canary"]["data"] == {
        "order_id": "recordline-canary",
        "total": 1,
    }


def test_a_canary_the_candidate_rejects_fails_its_smoke_test_with_the_reason(
    tmp_path: Path,
) -> None:
    # A canary_file without the record id where id_field says: the service would store
    # every such message as a rejection, so the candidate must not get the traffic.
    shapes = {"payments": {"id_field": "payment.id", "canary": b'{"id": "recordline-canary"}'}}
    cloud = Cloud(tmp_path, world(["recordline", "payments"], deployed=EARLIER, shapes=shapes))
    ran = rollout(cloud)
    job = ran[("rest", "payments")]
    assert job is not None
    smoke = job.step("Smoke test the candidate on its tag URL")
    assert smoke.outcome == "failure"
    assert "rejected its canary message" in smoke.stderr
    assert "`$.payment.id` (the record id, RECORDLINE_ID_FIELD): missing" in smoke.stderr
    assert serving(cloud, "payments") == [("payments-00002-x2y", 100, False)]


# --- after a rollback -------------------------------------------------------------------------


def test_a_deploy_after_a_rollback_serves_its_own_revision(tmp_path: Path) -> None:
    # On-call pinned traffic to an earlier revision (docs/operations.md#rolling-back).
    cloud = Cloud(tmp_path, world(["recordline"], deployed=EARLIER))
    services = cloud.world["services"]
    services["recordline"]["traffic"] = [{"revision": "recordline-00001-x1y", "percent": 100}]
    services["recordline"]["revisions"][0].update(command=None, args=None, digest=EARLIER)
    cloud.update(services=services)
    ran = rollout(cloud)
    assert all(j is None or j.result == "success" for j in ran.values()), _explain(ran)
    new = cloud.world["services"]["recordline"]["revisions"][-1]["name"]
    assert serving(cloud, "recordline") == [(new, 100, True)]


# --- an environment GitHub made on first use --------------------------------------------------


def test_a_prod_rollout_refuses_an_environment_without_a_reviewer(cloud: Cloud) -> None:
    # prod named by a job before anyone set it up: GitHub creates it, unprotected.
    cloud.update(github_environments={"prod": [], "prod-rollout": []})
    before = cloud.world
    ran = rollout(cloud)
    approval = ran["approve"]
    assert approval is not None
    check = approval.step("Check that the environment requires a reviewer")
    assert check.outcome == "failure"
    assert "requires no reviewer" in check.stderr
    # Nothing was pushed, nothing deployed: the rollout never entered its queue.
    assert cloud.world["registry"] == before["registry"]
    assert cloud.world["services"] == before["services"]
    assert ran["prepare"] is None
    assert ran["first"] is None


# --- supply chain ----------------------------------------------------------------------------


def test_an_image_without_this_repositorys_provenance_is_never_deployed(tmp_path: Path) -> None:
    # A digest pushed to the registry by hand, tagged as a commit: no provenance.
    cloud = Cloud(tmp_path, world(["recordline"], deployed=EARLIER))
    stranger = "sha256:" + "f" * 64
    registry = cloud.world["registry"]
    registry[REPOSITORY]["digests"].append(stranger)
    registry[REPOSITORY]["tags"][SHA] = stranger
    cloud.update(registry=registry)
    ran = rollout(cloud, image_tag=SHA)
    prepare = ran["prepare"]
    assert prepare is not None
    step = prepare.step("Push the built image, or find the requested one")
    assert step.outcome == "failure"
    assert "no attestations found" in step.stderr
    assert ran["first"] is None
    assert serving(cloud, "recordline") == [("recordline-00002-x2y", 100, True)]


def test_the_build_attests_provenance_and_sbom_of_the_digest_it_hands_on() -> None:
    build = load("deploy.yml")["jobs"]["build"]
    uses = {s.get("uses", "").split("@")[0]: s for s in build["steps"]}
    digest = "${{ steps.digest.outputs.digest }}"
    assert uses["actions/attest-build-provenance"]["with"]["subject-digest"] == digest
    assert uses["actions/attest-sbom"]["with"]["subject-digest"] == digest
    assert (
        uses["actions/attest-sbom"]["with"]["sbom-path"]
        == (uses["anchore/sbom-action"]["with"]["output-file"])
    )
    assert build["permissions"]["attestations"] == "write"


# --- the standby region's registry ----------------------------------------------------------

STANDBY_REGION = "europe-west4"
STANDBY = f"{STANDBY_REGION}-docker.pkg.dev/{PROJECT}/recordline"


def test_every_image_deployed_is_in_the_standby_registry_too(tmp_path: Path) -> None:
    # With standby_region (artifact_registry.tf), the image any system serves is also in
    # the other region's registry, same digest, same tag: a region lost takes none away.
    cloud = Cloud(tmp_path, world(["recordline"]))
    with_standby = {**VARIABLES, "ARTIFACT_STANDBY_REPOSITORY": STANDBY}
    ran = rollout_with(cloud, with_standby)
    assert all(job is None or job.result == "success" for job in ran.values()), _explain(ran)
    held = cloud.world["registry"][f"{STANDBY}/recordline"]
    assert held["tags"] == {SHA: BUILT}
    assert cloud.world["registry"][REPOSITORY]["tags"] == {SHA: BUILT}
    # A second rollout of the same image finds it there and copies nothing.
    again = rollout_with(cloud, with_standby)
    assert again["prepare"] is not None
    assert again["prepare"].result == "success"
    # One push of the archive, one copy to the standby, both in the first rollout.
    assert len(cloud.calls("skopeo")) == 2


def test_a_standby_registry_that_cannot_take_the_image_stops_the_rollout_first(
    tmp_path: Path,
) -> None:
    cloud = Cloud(tmp_path, world(["recordline"]))
    cloud.update(registry_down=[f"{STANDBY_REGION}-docker.pkg.dev"])
    before = cloud.world["services"]
    ran = rollout_with(cloud, {**VARIABLES, "ARTIFACT_STANDBY_REPOSITORY": STANDBY})
    prepare = ran["prepare"]
    assert prepare is not None
    assert prepare.step("Copy the image to the standby registry").outcome == "failure"
    assert ran["first"] is None  # no system runs an image the standby lacks
    assert cloud.world["services"] == before

"""A fake cloud's world of cells, as Terraform leaves it after its applies.

Each cell (infra/terraform: cell.tf, exporter.tf, ops.tf) has one ingest service whose
systems answer under /systems/NAME, an exporter pool when a system serves from Spanner,
its export and ops jobs, and each system's push account; its Terraform state holds the
output `deploy` the rollouts read, and the state bucket its directory. Who may do what
is read from Terraform's grants (both roots and the system module), so a grant taken
away there is taken away here. The world is tests/infra/fake_cloud.py's.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from tests.infra.test_terraform import ENVIRONMENT, MODULE, TERRAFORM, _resources
from tests.infra.workflow_runner import Cloud, Workflow, load, run_workflow

PROJECT, NUMBER, REGION = "recordline-prod", "123456789012", "europe-west1"
REPOSITORY = f"{REGION}-docker.pkg.dev/{PROJECT}/recordline/recordline"
DEPLOYER = f"recordline-deploy@{PROJECT}.iam.gserviceaccount.com"
OPERATOR = f"recordline-operator@{PROJECT}.iam.gserviceaccount.com"
SMOKE = f"recordline-smoke@{PROJECT}.iam.gserviceaccount.com"
ONCALL = "user:oncall@example.com"
ONCALL_GROUP = "group:recordline-oncall@example.com"  # `oncall` in env/prod.tfvars
STATE_BUCKET = "recordline-prod-tfstate"  # env/prod.backend.hcl
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
PLACEHOLDER = "docker.io/library/python:3.11.14-slim-bookworm@sha256:" + "6" * 64
# Where a cell's revisions read their systems (cell.tf, exporter.tf).
SYSTEMS_SETTING = "@/etc/recordline/systems/systems.json"
CANARY_SETTING = "@/etc/recordline/canary/systems.json"

# The default canary (modules/system/canary.tf): a record of the service's default shape.
DEFAULT_CANARY = json.dumps({"data": {"canary": True}, "id": "recordline-canary"}).encode()


def account(name: str) -> str:
    return f"{name}@{PROJECT}.iam.gserviceaccount.com"


def cell_url(cell: str) -> str:
    return f"https://{cell}-{NUMBER}.{REGION}.run.app"


def smoke(cell: str, system: str, shape: dict[str, Any] | None, serving: bool) -> dict[str, Any]:
    """What a canary system's smoke test pushes (modules/system/outputs.tf, `smoke`)."""
    shape = shape or {}
    schema = shape.get("schema")
    return {
        "push_service_account": account(f"{system}-push"),
        "push_audience": f"{cell_url(cell)}/systems/{system}/pubsub/push",
        "canary_data": base64.b64encode(shape.get("canary", DEFAULT_CANARY)).decode(),
        "schema": f"projects/{PROJECT}/schemas/{schema['name']}" if schema else "",
        "encoding": schema["encoding"] if schema else "",
        "serving": serving,
    }


def deploy_output(
    cell: str,
    systems: list[str],
    *,
    serving: list[str] = (),  # type: ignore[assignment]
    canary: list[str] | None = None,
    shapes: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The cell's Terraform output `deploy` (outputs.tf). Its canary systems: given, else
    the first two serving systems by name, else the first two systems (exporter.tf)."""
    shapes = shapes or {}
    candidates = sorted(serving) or sorted(systems)
    chosen = canary if canary is not None else candidates[:2]
    return {
        "cell": cell,
        "project": PROJECT,
        "region": REGION,
        "service": cell,
        "pool": f"{cell}-exporter" if serving else "",
        "export_job": f"{cell}-export" if serving else "",
        "ops_job": f"{cell}-ops",
        "canary_systems_setting": CANARY_SETTING,
        "systems_setting": SYSTEMS_SETTING,
        "read_audience": f"{cell_url(cell)}/v1",
        "smoke_service_account": SMOKE,
        "canary": {s: smoke(cell, s, shapes.get(s), s in serving) for s in chosen},
        "soak_seconds": 300,
        "gate_lag_seconds": 120,
    }


def _role(rtype: str, name: str, directory: Any = None) -> str:
    role = _resources(rtype, directory)[name]["role"]
    assert role.startswith("roles/"), role
    return str(role)


CUSTOM_ROLES = f"projects/{PROJECT}/roles/"


def _custom_roles(cell: str) -> dict[str, list[str]]:
    """Every custom role of both roots, by the name Google gives it (a cell's carry its
    name: capacity.tf's role_suffix)."""
    suffix = cell.replace("-", "_")
    return {
        CUSTOM_ROLES + body["role_id"].replace("${local.role_suffix}", suffix): body["permissions"]
        for body in _resources("google_project_iam_custom_role").values()
    }


def _custom_id(resource: str, cell: str, directory: Any = None) -> str:
    role_id = str(_resources("google_project_iam_custom_role", directory)[resource]["role_id"])
    return CUSTOM_ROLES + role_id.replace("${local.role_suffix}", cell.replace("-", "_"))


def terraform_iam(cells: dict[str, list[str]], serving: dict[str, list[str]]) -> dict[str, Any]:
    """Who holds which role where, as Terraform grants it, for the fake cloud to check.
    `oncall` is one group with one person in it, the person every runbook test runs as."""
    deployer, operator = f"serviceAccount:{DEPLOYER}", f"serviceAccount:{OPERATOR}"
    granted = str(_resources("google_project_iam_member", ENVIRONMENT)["operator"]["for_each"])
    operator_roles = [
        m.group(0) if m.group(1) is None else _custom_id(m.group(1), "", ENVIRONMENT)
        for m in re.finditer(r"roles/[\w.]+|google_project_iam_custom_role\.(\w+)\.id", granted)
    ]
    # The cells' own project roles for on-call (recovery.tf, capacity.tf): each cell's.
    for cell in cells:
        operator_roles += [
            _custom_id("operator_restore", cell, TERRAFORM),
            _custom_id("operator_undrop", cell, TERRAFORM),
        ]
    project: dict[str, list[str]] = {
        operator: operator_roles,
        ONCALL_GROUP: list(_locals_of(ENVIRONMENT)["oncall_project_roles"]),
        deployer: [_role("google_project_iam_member", "deployer_reads_metrics", ENVIRONMENT)],
    }
    accounts_iam = "google_service_account_iam_member"
    acts_as_operator = _role(accounts_iam, "acts_as_operator", ENVIRONMENT)
    service_accounts: dict[str, dict[str, list[str]]] = {
        OPERATOR: {
            ONCALL_GROUP: [_role(accounts_iam, "oncall_acts_as_operator", ENVIRONMENT)],
            deployer: [acts_as_operator],
            operator: [acts_as_operator],
        },
        SMOKE: {deployer: [_role(accounts_iam, "deployer_mints_smoke_tokens", ENVIRONMENT)]},
    }
    services: dict[str, Any] = {}
    worker_pools: dict[str, Any] = {}
    jobs: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    databases: dict[str, Any] = {}
    runner = "google_cloud_run_v2_service_iam_member"
    for cell, systems in cells.items():
        developers = _role(runner, "developers", TERRAFORM)
        invoker = _role(runner, "invokers", TERRAFORM)
        services[cell] = {
            deployer: [developers],
            operator: [developers, invoker],
            f"serviceAccount:{SMOKE}": [invoker],
            **{
                f"serviceAccount:{account(s + '-push')}": [_role(runner, "push_invoker", MODULE)]
                for s in systems
            },
        }
        runtime = _role(accounts_iam, "acts_as_runtime", TERRAFORM)
        service_accounts[account(f"{cell}-run")] = {deployer: [runtime], operator: [runtime]}
        for s in systems:
            service_accounts[account(f"{s}-push")] = {
                deployer: [_role(accounts_iam, "deployer_mints_smoke_tokens", MODULE)]
            }
            tables[f"{s.replace('-', '_')}.dead_letters"] = {
                ONCALL_GROUP: [
                    _role("google_bigquery_table_iam_member", "oncall_reads_dead_letters", MODULE)
                ]
            }
        jobs[f"{cell}-ops"] = {
            m: [_role("google_cloud_run_v2_job_iam_member", "ops_developers", TERRAFORM)]
            for m in (deployer, operator)
        }
        if serving.get(cell):
            pool = f"{cell}-exporter"
            acts = _role(accounts_iam, "acts_as_exporter", TERRAFORM)
            service_accounts[account(pool)] = {deployer: [acts], operator: [acts]}
            worker_pools[pool] = {
                m: [_role("google_cloud_run_v2_worker_pool_iam_member", "developers", TERRAFORM)]
                for m in (deployer, operator)
            }
            jobs[f"{cell}-export"] = {
                m: [_role("google_cloud_run_v2_job_iam_member", "export_developers", TERRAFORM)]
                for m in (deployer, operator)
            }
            reads = _role("google_spanner_database_iam_member", "operator_reads_database", MODULE)
            for s in serving[cell]:
                databases[f"{cell}-serving/{s}"] = {operator: [reads]}
    return {
        "iam": {
            "project": project,
            "services": services,
            "service_accounts": service_accounts,
            "worker_pools": worker_pools,
            "jobs": jobs,
            "tables": tables,
            "databases": databases,
            # The directory (environment/iam.tf): on-call and the operator account read
            # directory/ of the state bucket, the deploy account the whole bucket.
            "objects": {
                f"{STATE_BUCKET}/directory/": {
                    m: [_role("google_storage_bucket_iam_member", "directory_readers", ENVIRONMENT)]
                    for m in (ONCALL_GROUP, operator)
                },
                f"{STATE_BUCKET}/": {
                    deployer: [
                        _role(
                            "google_storage_bucket_iam_member", "deployer_reads_state", ENVIRONMENT
                        )
                    ]
                },
            },
        },
        "custom_roles": {
            **{k: v for cell in cells for k, v in _custom_roles(cell).items()},
            **_custom_roles(""),
        },
        "groups": {ONCALL_GROUP: [ONCALL]},
        "scheduler_jobs": {f"{s}-canary": "ENABLED" for systems in cells.values() for s in systems},
        # The GitHub environments set up at bootstrap (infra/README.md, step 5).
        "github_environments": {
            "prod": ["required_reviewers", "branch_policy"],
            "prod-rollout": ["branch_policy"],
            "terraform-prod": ["required_reviewers", "branch_policy"],
        },
    }


def _locals_of(directory: Any) -> dict[str, Any]:
    from tests.infra.test_terraform import _locals

    return _locals(directory)


def placeholder(name: str, suffix: str = "x1y") -> dict[str, Any]:
    return {
        "name": f"{name}-00001-{suffix}",
        "image": PLACEHOLDER,
        "digest": "sha256:" + "0" * 64,
        "command": ["python3"],
        "args": ["-c", "placeholder.py"],
    }


def world(
    cells: dict[str, list[str]],
    *,
    deployed: str | None = None,
    serving: dict[str, list[str]] | None = None,
    exporter: str | None = None,
    shapes: dict[str, dict[str, Any]] | None = None,
    canary: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """A project after its applies: each cell's service on the placeholder, or on
    `deployed`; its exporter pool (where `serving` names systems of it) on the
    placeholder, or on `exporter`. `shapes`: a system's id_field, time_field, canary
    (bytes) and topic schema ({name, type, encoding, definition}), as its entry of
    `systems` declares them. `canary`: a cell's canary systems, where not the default."""
    serving = serving or {}
    shapes = shapes or {}
    canary = canary or {}
    made: dict[str, Any] = {
        "project": PROJECT,
        "number": NUMBER,
        "region": REGION,
        "hash": "q2w3e4r5t6",
        "principal": ONCALL,
        "adc": None,
        **terraform_iam(cells, serving),
        "registry": {REPOSITORY: {"tags": {}, "digests": [d for d in (deployed, exporter) if d]}},
        "objects": {},
        "services": {},
        "worker_pools": {},
        "jobs": {},
        "spanner_instances": {},
        "broken_digests": [],
        "stalled_digests": [],
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
            f"projects/{PROJECT}/schemas/{shape['schema']['name']}": {
                "revision_id": "a1b2c3d4",
                "type": shape["schema"]["type"],
                "definition": shape["schema"]["definition"],
            }
            for shape in shapes.values()
            if shape.get("schema")
        },
    }
    for cell, systems in cells.items():
        served = serving.get(cell, [])
        deploy = deploy_output(
            cell, systems, serving=served, canary=canary.get(cell), shapes=shapes
        )
        state = {"version": 4, "outputs": {"deploy": {"value": deploy}}}
        made["objects"][f"gs://{STATE_BUCKET}/recordline/cells/{cell}/default.tfstate"] = (
            json.dumps(state)
        )
        revisions = [placeholder(cell)]
        if deployed:
            revisions.append(
                {
                    "name": f"{cell}-00002-x2y",
                    "image": f"{REPOSITORY}@{deployed}",
                    "digest": deployed,
                    "command": None,
                    "args": None,
                }
            )
        made["services"][cell] = {
            "revisions": revisions,
            "traffic": [{"latest": True, "percent": 100}],
            "runtime_account": account(f"{cell}-run"),
            "read_audience": deploy["read_audience"],
            "systems": {
                s: {
                    "push_audience": f"{cell_url(cell)}/systems/{s}/pubsub/push",
                    "push_accounts": [account(f"{s}-push")],
                    "readers": [SMOKE, OPERATOR],
                    # What the cell is told of its payload (its entry's id_field, time_field).
                    "shape": {k: shapes.get(s, {}).get(k) for k in ("id_field", "time_field")},
                }
                for s in systems
            },
        }
        ops_image = f"{REPOSITORY}@{deployed}" if deployed else PLACEHOLDER
        made["jobs"][f"{cell}-ops"] = _job(cell, ops_image, OPERATOR, ["audit", "--help"])
        if served:
            pool = f"{cell}-exporter"
            pool_revisions = [placeholder(pool, "p1q")]
            if exporter:
                pool_revisions.append(
                    {
                        "name": f"{pool}-00002-w2p",
                        "image": f"{REPOSITORY}@{exporter}",
                        "digest": exporter,
                        "command": ["recordline"],
                        "args": ["exporter"],
                        "env": {"RECORDLINE_SYSTEMS": SYSTEMS_SETTING, "OTEL_SERVICE_NAME": pool},
                    }
                )
            made["worker_pools"][pool] = {
                "revisions": pool_revisions,
                "split": "latest",
                "account": account(pool),
                # What each file it may read names: every serving system, or the canaries.
                "files": {
                    SYSTEMS_SETTING: sorted(served),
                    CANARY_SETTING: [s for s, c in deploy["canary"].items() if c["serving"]],
                },
            }
            export_image = f"{REPOSITORY}@{exporter}" if exporter else PLACEHOLDER
            made["jobs"][f"{cell}-export"] = _job(
                cell, export_image, account(pool), ["export", "status"]
            )
            made["spanner_instances"][f"{cell}-serving"] = {"processing_units": 100}
    return made


def _job(cell: str, image: str, runs_as: str, args: list[str]) -> dict[str, Any]:
    """A cell's job as Terraform creates it (ops.tf, exporter.tf)."""
    return {
        "image": image,
        "service_account": runs_as,
        "command": ["recordline"],
        "args": args,
        "env": {"RECORDLINE_CELL": cell, "RECORDLINE_SYSTEMS": SYSTEMS_SETTING},
    }


def rollout(
    cloud: Cloud,
    *,
    image_tag: str = "",
    variables: dict[str, str] | None = None,
    cancel_after: str | None = None,
) -> Workflow:
    """deploy.yml's prod jobs (its approval, then deploy-environment.yml and every cell's
    deploy-cell.yml), with the prod environment's usual variables, given what its build
    and dev jobs hand on: dev is not run here."""
    deploy = load("deploy.yml")["jobs"]
    assert deploy["prod"]["needs"] == ["build", "dev", "approve-prod"]
    return run_workflow(
        cloud,
        "deploy.yml",
        inputs={"image_tag": image_tag},
        variables=variables or VARIABLES,
        github=GITHUB,
        cancel_after=cancel_after,
        assume={
            "build": {
                "result": "skipped" if image_tag else "success",
                "outputs": {"digest": "" if image_tag else BUILT},
            },
            "approve-dev": {"result": "success"},
            "dev": {"result": "success"},
        },
    )


def cells_ran(run: Workflow) -> dict[str, dict[str, str]]:
    """Each cell's jobs of a rollout and their results: {cell: {job: result}}."""
    found: dict[str, dict[str, str]] = {}
    for path, job in run.walk():
        match = re.search(r"\b(first|rest|cells)\[([^\]]+)\]/(.+)", path)
        if match:
            found.setdefault(match.group(2), {})[match.group(3)] = job.result
    return found

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
SYSTEMS_DIRECTORY = "/etc/recordline/systems"
CANARY_DIRECTORY = "/etc/recordline/canary"


def systems_secret(cell: str) -> str:
    return f"{cell}-systems"


def throttles_secret(cell: str) -> str:
    return f"{cell}-throttles"


def canary_secret(cell: str) -> str:
    return f"{cell}-canary-systems"


def settings(systems: list[str]) -> str:
    """A version of a cell's systems' file as the fake reads it: each system's entry."""
    return json.dumps(
        {s: {"store": f"bigquery://{PROJECT}/{s.replace('-', '_')}"} for s in systems}
    )


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
    the first two serving systems by name (else the first two systems) and the first
    with a topic schema, serving ones first (exporter.tf; rates and typed columns are
    not modelled here)."""
    shapes = shapes or {}
    candidates = sorted(serving) or sorted(systems)
    order = list(dict.fromkeys([*candidates, *sorted(systems)]))
    schema = [s for s in order if shapes.get(s, {}).get("schema")]
    chosen = canary if canary is not None else list(dict.fromkeys(candidates[:2] + schema[:1]))
    return {
        "cell": cell,
        "project": PROJECT,
        "region": REGION,
        "service": cell,
        "pool": f"{cell}-exporter" if serving else "",
        "export_job": f"{cell}-export" if serving else "",
        "ops_job": f"{cell}-ops",
        "fill_job": "",
        "canary_systems_setting": CANARY_SETTING,
        "systems_setting": SYSTEMS_SETTING,
        "read_audience": f"{cell_url(cell)}/v1",
        "smoke_service_account": SMOKE,
        "canary": {s: smoke(cell, s, shapes.get(s), s in serving) for s in chosen},
        "soak_seconds": 300,
        "gate_lag_seconds": 120,
        "kept_revisions": 10,
        "serving_systems": sorted(serving),
        "secrets": [systems_secret(cell)] + ([canary_secret(cell)] if serving else []),
        "release": f"gs://{STATE_BUCKET}/directory/releases/{cell}.json",
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
        deployer: [
            _role("google_project_iam_member", name, ENVIRONMENT)
            for name in ("deployer_reads_metrics", "deployer_lists_revisions")
        ],
    }
    accounts_iam = "google_service_account_iam_member"
    acts_as_operator = _role(accounts_iam, "acts_as_operator", ENVIRONMENT)
    service_accounts: dict[str, dict[str, list[str]]] = {
        OPERATOR: {
            ONCALL_GROUP: [_role(accounts_iam, "oncall_acts_as_operator", ENVIRONMENT)],
            deployer: [acts_as_operator],
        },
        SMOKE: {deployer: [_role(accounts_iam, "deployer_mints_smoke_tokens", ENVIRONMENT)]},
    }
    services: dict[str, Any] = {}
    worker_pools: dict[str, Any] = {}
    jobs: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    databases: dict[str, Any] = {}
    secrets: dict[str, dict[str, list[str]]] = {}
    runner = "google_cloud_run_v2_service_iam_member"
    for cell, systems in cells.items():
        developers = _role(runner, "developers", TERRAFORM)
        invoker = _role(runner, "invokers", TERRAFORM)
        # The deploy account alone changes the service (cell.tf): on-call asks it to.
        assert set(_resources(runner, TERRAFORM)["developers"]["for_each"]) == {"deployer"}
        services[cell] = {
            deployer: [developers],
            operator: [invoker],
            f"serviceAccount:{SMOKE}": [invoker],
            **{
                f"serviceAccount:{account(s + '-push')}": [_role(runner, "push_invoker", MODULE)]
                for s in systems
            },
        }
        runtime = _role(accounts_iam, "acts_as_runtime", TERRAFORM)
        assert "operator" not in _resources(accounts_iam, TERRAFORM)["acts_as_runtime"]["for_each"]
        service_accounts[account(f"{cell}-run")] = {deployer: [runtime]}
        for s in systems:
            service_accounts[account(f"{s}-push")] = {
                deployer: [_role(accounts_iam, "deployer_mints_smoke_tokens", MODULE)]
            }
            tables[f"{s.replace('-', '_')}.dead_letters"] = {
                ONCALL_GROUP: [
                    _role("google_bigquery_table_iam_member", "oncall_reads_dead_letters", MODULE)
                ]
            }
        jobs_iam = "google_cloud_run_v2_job_iam_member"
        assert set(_resources(jobs_iam, TERRAFORM)["ops_developers"]["for_each"]) == {"deployer"}
        jobs[f"{cell}-ops"] = {
            deployer: [_role(jobs_iam, "ops_developers", TERRAFORM)],
            operator: [_role(jobs_iam, "ops_executors", TERRAFORM)],
        }
        if serving.get(cell):
            pool = f"{cell}-exporter"
            acts = _role(accounts_iam, "acts_as_exporter", TERRAFORM)
            pools_iam = "google_cloud_run_v2_worker_pool_iam_member"
            for name, rtype in (
                ("acts_as_exporter", accounts_iam),
                ("developers", pools_iam),
                ("export_developers", jobs_iam),
            ):
                assert "operator" not in str(_resources(rtype, TERRAFORM)[name]["for_each"])
            service_accounts[account(pool)] = {deployer: [acts]}
            worker_pools[pool] = {deployer: [_role(pools_iam, "developers", TERRAFORM)]}
            jobs[f"{cell}-export"] = {
                deployer: [_role(jobs_iam, "export_developers", TERRAFORM)],
                operator: [_role(jobs_iam, "export_executors", TERRAFORM)],
            }
            reads = _role("google_spanner_database_iam_member", "operator_reads_database", MODULE)
            for s in serving[cell]:
                databases[f"{cell}-serving/{s}"] = {operator: [reads]}
        # Who may read and retire the versions its revisions mount (cell.tf).
        for key, grant in _secret_grants().items():
            secret = {
                "systems": systems_secret(cell),
                "canary": canary_secret(cell),
                "read-pass": f"{cell}-read-pass",
                "values": f"{cell}-systems-values",
            }[key.split()[0]]
            member = {"operator": operator, "deployer": deployer}[key.split()[1]]
            secrets.setdefault(secret, {}).setdefault(member, []).append(grant)
        reader = _role("google_secret_manager_secret_iam_member", "reads_systems", TERRAFORM)
        for member in (operator, deployer):
            secrets.setdefault(systems_secret(cell), {}).setdefault(member, []).append(reader)
        # What the operator account may do with the throttles (cell.tf).
        secrets[throttles_secret(cell)] = {operator: _throttle_grants()}
    return {
        "iam": {
            "project": project,
            "services": services,
            "service_accounts": service_accounts,
            "worker_pools": worker_pools,
            "jobs": jobs,
            "tables": tables,
            "databases": databases,
            "secrets": secrets,
            # The directory (environment/iam.tf): on-call and the operator account read
            # directory/ of the state bucket, the deploy account the whole bucket.
            # A listing of the bucket under a prefix, where a grant's condition allows one
            # (its objectListPrefix clause): the directory's readers.
            "object_lists": {
                f"{STATE_BUCKET}/{prefix}": {
                    m: [_role("google_storage_bucket_iam_member", "directory_readers", ENVIRONMENT)]
                    for m in (ONCALL_GROUP, operator)
                }
                for prefix in _listed_prefixes("directory_readers")
            },
            "objects": {
                f"{STATE_BUCKET}/directory/": {
                    m: [_role("google_storage_bucket_iam_member", "directory_readers", ENVIRONMENT)]
                    for m in (ONCALL_GROUP, operator)
                },
                f"{STATE_BUCKET}/directory/releases/": {
                    deployer: [
                        _role(
                            "google_storage_bucket_iam_member",
                            "deployer_records_releases",
                            ENVIRONMENT,
                        )
                    ]
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


def _listed_prefixes(grant: str) -> list[str]:
    """The prefixes a bucket grant's condition lets its members list
    (`api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith(P)`)."""
    (condition,) = _resources("google_storage_bucket_iam_member", ENVIRONMENT)[grant]["condition"]
    return re.findall(
        r'objectListPrefix\\?", \\?""\)\.startsWith\(\\?"([^"\\]+)', condition["expression"]
    )


def _secret_grants() -> dict[str, str]:
    """cell.tf's grants on the secrets a cell's revisions mount: "<secret> <member>" ->
    role."""
    found = {}
    for_each = str(
        _resources("google_secret_manager_secret_iam_member", TERRAFORM)["versions"]["for_each"]
    )
    for key, role in re.findall(
        r'"?([a-z-]+ (?:operator|deployer))"?\s*=>?\s*\{[^}]*role\s*=\s*"([^"]+)"', for_each
    ):
        found[key] = role
    assert found, for_each
    return found


def _throttle_grants() -> list[str]:
    """cell.tf's roles for the operator account on the cell's throttles secret."""
    grants = _resources("google_secret_manager_secret_iam_member", TERRAFORM)["throttles"]
    found = [
        str(grant["role"])
        for grant in grants["for_each"].values()
        if grant["member"] == "${local.operator_member}"
    ]
    assert found, grants
    return found


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
        "secrets": {},
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
        # outputs.tf's `deploy`, and its `systems` by name (what drift.yml reads of it).
        outputs = {"deploy": {"value": deploy}, "systems": {"value": {s: {} for s in systems}}}
        state = {"version": 4, "outputs": outputs}
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
        # Version 1 of the cell's systems' file (and of its canary systems'), which
        # every revision and job mounts as Terraform made them (cell.tf, exporter.tf).
        made["secrets"][systems_secret(cell)] = {
            "versions": {"1": {"state": "ENABLED", "data": settings(systems)}}
        }
        # None throttled: the first version of the throttles, as Terraform made it.
        made["secrets"][throttles_secret(cell)] = {
            "versions": {"1": {"state": "ENABLED", "data": "{}"}}
        }
        mounts = {SYSTEMS_DIRECTORY: [systems_secret(cell), "1"]}
        for revision in revisions:
            revision.update(volumes=mounts, env={"RECORDLINE_SYSTEMS": SYSTEMS_SETTING})
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
            canaries = [s for s, c in deploy["canary"].items() if c["serving"]]
            made["secrets"][canary_secret(cell)] = {
                "versions": {"1": {"state": "ENABLED", "data": settings(canaries)}}
            }
            pool_mounts = {**mounts, CANARY_DIRECTORY: [canary_secret(cell), "1"]}
            pool_revisions = [{**placeholder(pool, "p1q"), "volumes": pool_mounts}]
            if exporter:
                pool_revisions.append(
                    {
                        "name": f"{pool}-00002-w2p",
                        "image": f"{REPOSITORY}@{exporter}",
                        "digest": exporter,
                        "command": ["recordline"],
                        "args": ["exporter"],
                        "env": {"RECORDLINE_SYSTEMS": SYSTEMS_SETTING, "OTEL_SERVICE_NAME": pool},
                        "volumes": pool_mounts,
                    }
                )
            made["worker_pools"][pool] = {
                "revisions": pool_revisions,
                "split": "latest",
                "account": account(pool),
            }
            export_image = f"{REPOSITORY}@{exporter}" if exporter else PLACEHOLDER
            made["jobs"][f"{cell}-export"] = _job(
                cell, export_image, account(pool), ["export", "status"]
            )
            made["spanner_instances"][f"{cell}-serving"] = {"processing_units": 100}
    return made


def _job(cell: str, image: str, runs_as: str, args: list[str]) -> dict[str, Any]:
    """A cell's job as Terraform creates it (ops.tf, exporter.tf): its settings in its
    command, none in its environment."""
    return {
        "image": image,
        "service_account": runs_as,
        "command": job_command({"RECORDLINE_CELL": cell, "RECORDLINE_SYSTEMS": SYSTEMS_SETTING}),
        "args": args,
        "env": {},
        "volumes": {SYSTEMS_DIRECTORY: [systems_secret(cell), "1"]},
    }


# How a cell's job starts its script (cell.tf's job_command; the fake cloud runs it).
JOB_COMMAND = ["/opt/venv/bin/python3", "-I", "-u", "-c"]


def job_command(settings: dict[str, str]) -> list[str]:
    """A job's command with `settings` (cell.tf's job_command, infra/terraform/job.py)."""
    script = (TERRAFORM / "job.py").read_text()
    return [*JOB_COMMAND, script, *(f"{k}={v}" for k, v in settings.items()), "--"]


def job_settings(job: dict[str, Any]) -> dict[str, str]:
    """The settings a job's command names."""
    words = job["command"][5:]
    return dict(word.split("=", 1) for word in words[: words.index("--")])


def rollout(
    cloud: Cloud,
    *,
    image_tag: str = "",
    variables: dict[str, str] | None = None,
    cancel_after: str | None = None,
    built: str = BUILT,
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
                "outputs": {"digest": "" if image_tag else built},
            },
            "approve-dev": {"result": "success"},
            "dev": {"result": "success"},
        },
    )


def cells_ran(run: Workflow) -> dict[str, dict[str, str]]:
    """Each cell's jobs of a rollout and their results: {cell: {job: result}}."""
    found: dict[str, dict[str, str]] = {}
    for path, job in run.walk():
        match = re.search(r"\b(first|second|rest|cells)\[([^\]]+)\]/(.+)", path)
        if match:
            found.setdefault(match.group(2), {})[match.group(3)] = job.result
    return found


# --- an apply, as Terraform and the provider make it -----------------------------------------


def _lifecycle(rtype: str, name: str) -> dict[str, Any]:
    body = _resources(rtype, TERRAFORM)[name]
    return dict((body.get("lifecycle") or [{}])[0])


def _ignored(rtype: str, name: str) -> set[str]:
    """What a resource's ignore_changes keeps out of an apply, as written."""
    ignored = _lifecycle(rtype, name).get("ignore_changes", [])
    return {re.sub(r"^\$\{(.*)\}$", r"\1", str(path)) for path in ignored}


def _new_version(world: dict[str, Any], secret: str, data: str) -> str:
    versions = world["secrets"][secret]["versions"]
    number = str(max(int(v) for v in versions) + 1)
    versions[number] = {"state": "ENABLED", "data": data}
    return number


def _let_go(world: dict[str, Any], secret: str, version: str, policy: str) -> None:
    """What the provider does with the version a replacement leaves behind, by the
    resource's deletion_policy (DELETE by default: it destroys it)."""
    held = world["secrets"][secret]["versions"][version]
    if policy == "DELETE":
        held.update(state="DESTROYED", data="")
    elif policy == "DISABLE":
        held["state"] = "DISABLED"
    else:
        assert policy == "ABANDON", policy


def _job_settings(kind: str) -> str:
    """The systems' file version a cell's job's template names, as written."""
    body = _resources("google_cloud_run_v2_job", TERRAFORM)[kind]
    (volume,) = [v for v in body["template"][0]["template"][0]["volumes"] if v["name"] == "systems"]
    return str(volume["secret"][0]["items"][0]["version"])


def pinned_settings(world: dict[str, Any], cell: str) -> dict[str, str]:
    """What terraform-environment.yml's plan reads as `pinned_settings`: the version of
    the systems' file the revision a rollback pinned the service's traffic (`ops`) or
    the pool's instances (`export`) to mounts, where one is pinned."""
    found: dict[str, str] = {}
    service = world["services"].get(cell)
    if service is not None:
        pins = [e for e in service["traffic"] if e["percent"] == 100 and not e.get("latest")]
        for entry in pins:
            (revision,) = [r for r in service["revisions"] if r["name"] == entry["revision"]]
            found["ops"] = str(revision["volumes"][SYSTEMS_DIRECTORY][1])
    pool = world.get("worker_pools", {}).get(f"{cell}-exporter")
    if pool is not None and isinstance(pool["split"], str) and pool["split"] != "latest":
        (revision,) = [r for r in pool["revisions"] if r["name"] == pool["split"]]
        found["export"] = str(revision["volumes"][SYSTEMS_DIRECTORY][1])
    return found


def apply_systems(cloud: Cloud, cell: str, systems: list[str]) -> str:
    """An apply of a cell whose systems' file changed (a system added, or a system's
    entry changed): what Terraform does, read from the cell root's configuration.

    The file's version is replaced (secret_data forces it): destroyed first unless
    create_before_destroy, and the old one left as deletion_policy says. The service's,
    the pool's and the jobs' templates name the new version (a job's, unless the plan read
    a rollback's pin of what it follows: pinned_settings), so each gets a new revision
    from its template as the provider sends it: what ignore_changes keeps (the image, the
    command and arguments a deploy set) as the live template has it, the rest (the pool's
    environment) as Terraform writes it; their traffic and split are left alone. Returns
    the new version."""
    world = cloud.world
    secret = systems_secret(cell)
    rtype = "google_secret_manager_secret_version"
    body = _resources(rtype, TERRAFORM)["systems"]
    policy = str(body.get("deletion_policy", "DELETE"))
    before = max(world["secrets"][secret]["versions"], key=int)
    first = bool(_lifecycle(rtype, "systems").get("create_before_destroy"))
    if not first:
        _let_go(world, secret, before, policy)
    version = _new_version(world, secret, settings(systems))

    service = world["services"][cell]
    ignored = _ignored("google_cloud_run_v2_service", "ingest")
    live = service["revisions"][-1]
    number = max(int(r["name"].split("-")[-2]) for r in service["revisions"]) + 1
    service["revisions"].append(
        {
            **live,
            "name": f"{cell}-{number:05d}-t{number}f",
            "image": live["image"] if "template[0].containers[0].image" in ignored else PLACEHOLDER,
            "volumes": {**live["volumes"], SYSTEMS_DIRECTORY: [secret, version]},
        }
    )
    service["revisions"][-1].pop("failed", None)
    for system in systems:
        service["systems"].setdefault(
            system,
            {
                "push_audience": f"{cell_url(cell)}/systems/{system}/pubsub/push",
                "push_accounts": [account(f"{system}-push")],
                "readers": [SMOKE, OPERATOR],
                "shape": {"id_field": None, "time_field": None},
            },
        )
    pool_name = f"{cell}-exporter"
    pool = world["worker_pools"].get(pool_name)
    if pool is not None:
        ignored = _ignored("google_cloud_run_v2_worker_pool", "exporter")
        live = pool["revisions"][-1]
        number = max(int(r["name"].split("-")[-2]) for r in pool["revisions"]) + 1
        pool["revisions"].append(
            {
                **live,
                "name": f"{pool_name}-{number:05d}-t{number}p",
                "image": live["image"]
                if "template[0].containers[0].image" in ignored
                else PLACEHOLDER,
                # exporter.tf's environment: every system, under the pool's own name.
                "env": {"RECORDLINE_SYSTEMS": SYSTEMS_SETTING, "OTEL_SERVICE_NAME": pool_name},
                "volumes": {**live["volumes"], SYSTEMS_DIRECTORY: [secret, version]},
            }
        )
        pool["revisions"][-1].pop("failed", None)
    pinned = pinned_settings(world, cell)
    for kind, name in (("ops", f"{cell}-ops"), ("export", f"{cell}-export")):
        job = world["jobs"].get(name)
        if job is None or job.get("volumes", {}).get(SYSTEMS_DIRECTORY, [""])[0] != secret:
            continue
        job["volumes"] = {**job["volumes"], SYSTEMS_DIRECTORY: [secret, version]}
        # The version as the job's template names it (ops.tf, exporter.tf): a rollback's
        # pin, where the template reads one and the plan found one, else the new file.
        if f'lookup(var.pinned_settings, "{kind}",' in _job_settings(kind) and kind in pinned:
            job["volumes"][SYSTEMS_DIRECTORY] = [secret, pinned[kind]]
    if first:
        _let_go(world, secret, before, policy)
    cloud.update(**world)
    return version

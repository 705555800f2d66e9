"""The plan and apply accounts can do what Terraform does with every type it manages.

Every plan refreshes every resource and data source (a read); every apply may create,
change or delete each one (a write). A type without the roles for that is a 403 on
the first plan or apply that meets it, so each type Terraform manages is mapped here
to the permissions the provider calls for it, and each permission must be in a role
the account holds (tests/infra/gcp_roles.json: Google's predefined roles). A new
type fails the first test until it is mapped, and a mapped permission no granted role
holds fails the others.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

from tests.infra.test_terraform import TERRAFORM, _load, _resources, _variables

ROLES_FILE = Path(__file__).with_name("gcp_roles.json")


def _crud(prefix: str, *, update: bool = True) -> frozenset[str]:
    verbs = ("create", "update", "delete") if update else ("create", "delete")
    return frozenset(f"{prefix}.{verb}" for verb in verbs)


def _iam(prefix: str) -> tuple[frozenset[str], frozenset[str]]:
    """An `*_iam_member`: the resource's policy, read and written."""
    return frozenset({f"{prefix}.getIamPolicy"}), frozenset({f"{prefix}.setIamPolicy"})


# type -> (what a plan reads, what an apply writes), as the google provider calls the API.
NEEDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "google_project_service": (
        frozenset({"serviceusage.services.get"}),
        # disable_on_destroy = false: an apply enables, never disables.
        frozenset({"serviceusage.services.enable"}),
    ),
    # generateServiceIdentity; the provider's read calls nothing (the identity is kept).
    "google_project_service_identity": (
        frozenset(),
        frozenset({"serviceusage.services.enable", "serviceusage.services.use"}),
    ),
    "google_artifact_registry_repository": (
        frozenset({"artifactregistry.repositories.get"}),
        _crud("artifactregistry.repositories"),
    ),
    "google_artifact_registry_repository_iam_member": _iam("artifactregistry.repositories"),
    "google_monitoring_metric_descriptor": (
        frozenset({"monitoring.metricDescriptors.get"}),
        _crud("monitoring.metricDescriptors", update=False),
    ),
    "google_monitoring_dashboard": (
        frozenset({"monitoring.dashboards.get"}),
        _crud("monitoring.dashboards"),
    ),
    "google_monitoring_alert_policy": (
        frozenset({"monitoring.alertPolicies.get"}),
        _crud("monitoring.alertPolicies"),
    ),
    "google_monitoring_custom_service": (
        frozenset({"monitoring.services.get"}),
        _crud("monitoring.services"),
    ),
    "google_monitoring_slo": (frozenset({"monitoring.slos.get"}), _crud("monitoring.slos")),
    "google_monitoring_uptime_check_config": (
        frozenset({"monitoring.uptimeCheckConfigs.get"}),
        _crud("monitoring.uptimeCheckConfigs"),
    ),
    "google_iam_workload_identity_pool": (
        frozenset({"iam.googleapis.com/workloadIdentityPools.get"}),
        _crud("iam.googleapis.com/workloadIdentityPools"),
    ),
    "google_iam_workload_identity_pool_provider": (
        frozenset({"iam.googleapis.com/workloadIdentityPoolProviders.get"}),
        _crud("iam.googleapis.com/workloadIdentityPoolProviders"),
    ),
    "google_service_account": (
        frozenset({"iam.serviceAccounts.get"}),
        _crud("iam.serviceAccounts"),
    ),
    "google_service_account_iam_member": _iam("iam.serviceAccounts"),
    "google_project_iam_member": _iam("resourcemanager.projects"),
    # The operator's role of exactly the Scheduler permissions on-call uses.
    "google_project_iam_custom_role": (frozenset({"iam.roles.get"}), _crud("iam.roles")),
    "google_logging_project_exclusion": (
        frozenset({"logging.exclusions.get"}),
        _crud("logging.exclusions"),
    ),
    # The state bucket's own policy (it lives in the environment's project).
    "google_storage_bucket_iam_member": _iam("storage.buckets"),
    "google_bigquery_dataset": (
        frozenset({"bigquery.datasets.get"}),
        _crud("bigquery.datasets"),
    ),
    "google_bigquery_table": (frozenset({"bigquery.tables.get"}), _crud("bigquery.tables")),
    # records_unique, the analysts' table function.
    "google_bigquery_routine": (
        frozenset({"bigquery.routines.get"}),
        _crud("bigquery.routines"),
    ),
    # The search-index DDL: a query job, refreshed on plan (it was run by the apply account).
    "google_bigquery_job": (
        frozenset({"bigquery.jobs.get"}),
        frozenset({"bigquery.jobs.create", "bigquery.tables.createIndex"}),
    ),
    "google_bigquery_dataset_iam_member": _iam("bigquery.datasets"),
    "google_bigquery_table_iam_member": _iam("bigquery.tables"),
    "google_cloud_scheduler_job": (
        frozenset({"cloudscheduler.jobs.get"}),
        _crud("cloudscheduler.jobs"),
    ),
    # A topic with schema_settings: attaching the schema to it.
    "google_pubsub_topic": (
        frozenset({"pubsub.topics.get"}),
        _crud("pubsub.topics") | {"pubsub.schemas.attach"},
    ),
    # A changed definition is committed as a new revision.
    "google_pubsub_schema": (
        frozenset({"pubsub.schemas.get"}),
        frozenset({"pubsub.schemas.create", "pubsub.schemas.commit", "pubsub.schemas.delete"}),
    ),
    "google_pubsub_schema_iam_member": _iam("pubsub.schemas"),
    "google_pubsub_topic_iam_member": _iam("pubsub.topics"),
    "google_pubsub_subscription": (
        frozenset({"pubsub.subscriptions.get"}),
        _crud("pubsub.subscriptions") | {"pubsub.topics.attachSubscription"},
    ),
    "google_pubsub_subscription_iam_member": _iam("pubsub.subscriptions"),
    # With read passes (cdn.tf) an apply turns the invoker check off, which Cloud Run
    # allows those who may set the service's IAM policy.
    "google_cloud_run_v2_service": (
        frozenset({"run.services.get"}),
        _crud("run.services") | {"run.services.setIamPolicy"},
    ),
    "google_cloud_run_v2_service_iam_member": _iam("run.services"),
    "google_cloud_run_v2_job": (frozenset({"run.jobs.get"}), _crud("run.jobs")),
    "google_cloud_run_v2_job_iam_member": _iam("run.jobs"),
    # The exporter service (exporter.tf): a worker pool, and who may deploy it.
    "google_cloud_run_v2_worker_pool": (
        frozenset({"run.workerpools.get"}),
        _crud("run.workerpools"),
    ),
    "google_cloud_run_v2_worker_pool_iam_member": _iam("run.workerpools"),
    "google_secret_manager_secret": (
        frozenset({"secretmanager.secrets.get"}),
        _crud("secretmanager.secrets"),
    ),
    # secret_data_wo: the payload is written, never read back.
    "google_secret_manager_secret_version": (
        frozenset({"secretmanager.versions.get"}),
        frozenset(
            {
                "secretmanager.versions.add",
                "secretmanager.versions.enable",
                "secretmanager.versions.disable",
                "secretmanager.versions.destroy",
            }
        ),
    ),
    "google_secret_manager_secret_iam_member": _iam("secretmanager.secrets"),
    # The serving tier. Creating or resizing an instance, and creating a database or
    # changing its DDL, are long-running operations the provider polls until done.
    "google_spanner_instance": (
        frozenset({"spanner.instances.get"}),
        _crud("spanner.instances") | {"spanner.instanceOperations.get"},
    ),
    "google_spanner_database": (
        frozenset({"spanner.databases.get"}),
        frozenset(
            {
                "spanner.databases.create",
                "spanner.databases.update",  # enable_drop_protection
                "spanner.databases.updateDdl",  # appended statements, version_retention_period
                "spanner.databases.drop",
                "spanner.databaseOperations.get",
            }
        ),
    ),
    "google_spanner_database_iam_member": _iam("spanner.databases"),
    # On-call's capacity role on each serving instance (capacity.tf).
    "google_spanner_instance_iam_member": _iam("spanner.instances"),
    # A cell's Cloud CDN and its load balancer (cdn.tf), where enabled: each resource is
    # used by the one it is attached to (the NEG by the backend service, the backend
    # service by the URL map, the URL map, certificate and SSL policy by the proxy, the
    # proxy and address by the forwarding rule), and each change is an operation polled.
    "google_compute_global_address": (
        frozenset({"compute.globalAddresses.get"}),
        _crud("compute.globalAddresses", update=False)
        | {"compute.globalAddresses.use", "compute.globalOperations.get"},
    ),
    "google_compute_region_network_endpoint_group": (
        frozenset({"compute.regionNetworkEndpointGroups.get"}),
        _crud("compute.regionNetworkEndpointGroups", update=False)
        | {"compute.regionNetworkEndpointGroups.use", "compute.regionOperations.get"},
    ),
    "google_compute_backend_service": (
        frozenset({"compute.backendServices.get"}),
        _crud("compute.backendServices")
        | {"compute.backendServices.use", "compute.globalOperations.get"},
    ),
    # Read passes' signing keys on the CDN's backend (cdn.tf): read with the backend.
    "google_compute_backend_service_signed_url_key": (
        frozenset({"compute.backendServices.get"}),
        frozenset(
            {
                "compute.backendServices.addSignedUrlKey",
                "compute.backendServices.deleteSignedUrlKey",
                "compute.globalOperations.get",
            }
        ),
    ),
    "google_compute_url_map": (
        frozenset({"compute.urlMaps.get"}),
        _crud("compute.urlMaps") | {"compute.urlMaps.use", "compute.globalOperations.get"},
    ),
    "google_compute_ssl_policy": (
        frozenset({"compute.sslPolicies.get"}),
        _crud("compute.sslPolicies") | {"compute.sslPolicies.use", "compute.globalOperations.get"},
    ),
    "google_compute_managed_ssl_certificate": (
        frozenset({"compute.sslCertificates.get"}),
        _crud("compute.sslCertificates", update=False)
        | {"compute.sslCertificates.use", "compute.globalOperations.get"},
    ),
    "google_compute_target_https_proxy": (
        frozenset({"compute.targetHttpsProxies.get"}),
        _crud("compute.targetHttpsProxies")
        | {
            "compute.targetHttpsProxies.use",
            "compute.targetHttpsProxies.setSslCertificates",
            "compute.targetHttpsProxies.setSslPolicy",
            "compute.targetHttpsProxies.setUrlMap",
            "compute.globalOperations.get",
        },
    ),
    "google_compute_global_forwarding_rule": (
        frozenset({"compute.globalForwardingRules.get"}),
        _crud("compute.globalForwardingRules")
        | {"compute.globalForwardingRules.setLabels", "compute.globalOperations.get"},
    ),
    "data.google_project": (frozenset({"resourcemanager.projects.get"}), frozenset()),
    "time_sleep": (frozenset(), frozenset()),
    # Read passes' keys (cdn.tf), made by the provider itself: no call to Google.
    "random_bytes": (frozenset(), frozenset()),
    # The cells' limits, checked at plan (environment/cells.tf, limits.tf): nothing called.
    "terraform_data": (frozenset(), frozenset()),
    # Each cell's directory, in the environment's state bucket (directory.tf).
    "google_storage_bucket_object": (
        frozenset({"storage.objects.get"}),
        frozenset({"storage.objects.create", "storage.objects.delete"}),
    ),
    # A cell's own project in the environment's metrics scope (environment/cells.tf):
    # linking needs monitoring.metricsScopes.link on both projects
    # (https://cloud.google.com/monitoring/api/ref_v3/rest/v1/locations.global.metricsScopes.projects/create);
    # reading the scope, resourcemanager.projects.get
    # (https://cloud.google.com/monitoring/api/ref_v3/rest/v1/locations.global.metricsScopes/get).
    "google_monitoring_monitored_project": (
        frozenset({"resourcemanager.projects.get"}),
        frozenset({"monitoring.metricsScopes.link"}),
    ),
}

# What a read-only account must never hold: writes, and the data itself.
WRITING = re.compile(
    r"\.(create|update|delete|setIamPolicy|enable|disable|add|destroy|undelete|publish|"
    r"attachSubscription|actAs|getAccessToken|getOpenIdToken|implicitDelegation|signBlob|signJwt)$"
    r"|\.getData$|\.versions\.access$|\.subscriptions\.consume$|\.routes\.invoke$"
    # Log entries are data too: a pull request's plan could print them.
    r"|^logging\.logEntries\.|^logging\.views\.access$|^logging\.privateLogEntries\."
)


@cache
def _roles() -> dict[str, frozenset[str]]:
    loaded = json.loads(ROLES_FILE.read_text())["roles"]
    return {name: frozenset(perms) for name, perms in loaded.items()}


def _permissions(roles: set[str]) -> frozenset[str]:
    known = {**_roles(), **_custom_roles()}
    unknown = roles - known.keys()
    assert not unknown, f"add these roles to {ROLES_FILE.name}: {sorted(unknown)}"
    return frozenset().union(*(known[r] for r in roles))


def _managed_types() -> set[str]:
    found: set[str] = set()
    for path in sorted(TERRAFORM.rglob("*.tf")):
        parsed = _load(path)
        found |= {t for block in parsed.get("resource", []) for t in block}
        found |= {f"data.{t}" for block in parsed.get("data", []) for t in block}
    return found


def _custom_roles() -> dict[str, frozenset[str]]:
    """This configuration's own roles, by the reference a grant names them with."""
    return {
        f"${{google_project_iam_custom_role.{name}.id}}": frozenset(role["permissions"])
        for name, role in _resources("google_project_iam_custom_role").items()
    }


def _plan_roles() -> set[str]:
    grant = _resources("google_project_iam_member")["terraform_plan"]
    roles = set(re.findall(r'"(roles/[^"]+)"', grant["for_each"]))
    roles.add(_resources("google_project_iam_member")["terraform_plan_logging"]["role"])
    bucket = _resources("google_storage_bucket_iam_member")["terraform_plan_reads_state"]
    return roles | {bucket["role"]}


def _apply_roles() -> set[str]:
    grant = _resources("google_project_iam_member")["terraform_apply"]
    assert grant["for_each"] == "${var.terraform_apply_roles}"
    bucket = _resources("google_storage_bucket_iam_member")["terraform_apply_owns_state"]
    return set(_variables()["terraform_apply_roles"]["default"]) | {bucket["role"]}


def test_every_type_terraform_manages_is_mapped_to_what_it_needs() -> None:
    managed = _managed_types()
    assert managed - NEEDS.keys() == set(), "map these types in NEEDS"
    assert NEEDS.keys() - managed == set(), "types no longer managed: remove them from NEEDS"


@pytest.mark.parametrize("rtype", sorted(NEEDS))
def test_the_plan_account_can_read_it(rtype: str) -> None:
    reads, _ = NEEDS[rtype]
    assert reads - _permissions(_plan_roles()) == set()


@pytest.mark.parametrize("rtype", sorted(NEEDS))
def test_the_apply_account_can_read_and_write_it(rtype: str) -> None:
    reads, writes = NEEDS[rtype]
    assert (reads | writes) - _permissions(_apply_roles()) == set()


def test_the_plan_account_reads_configuration_only() -> None:
    held = _permissions(_plan_roles())
    assert sorted(p for p in held if WRITING.search(p)) == []


def test_the_apply_account_may_act_as_what_its_resources_run_as() -> None:
    # A Cloud Run revision or job runs as its account and a push subscription mints
    # tokens as its push account: creating any needs iam.serviceAccounts.actAs on it.
    pool = _resources("google_cloud_run_v2_worker_pool")["exporter"]
    runs_as = {
        _resources("google_cloud_run_v2_service")["ingest"]["template"][0]["service_account"],
        pool["template"][0]["service_account"],
        _resources("google_pubsub_subscription")["push"]["push_config"][0]["oidc_token"][0][
            "service_account_email"
        ],
        *(
            job["template"][0]["template"][0]["service_account"]
            for job in _resources("google_cloud_run_v2_job").values()
        ),
    }
    assert runs_as == {
        "${google_service_account.runtime.email}",
        "${google_service_account.exporter[each.key].email}",
        "${google_service_account.push.email}",
        "${local.environment_accounts.operator}",
        "${google_service_account.fill[each.key].email}",
    }
    # Each system's fill Scheduler job mints its tokens as the fill account, which the
    # cell passes on from the apply account's grant on it (systems.tf).
    (fill_schedule,) = _resources("google_cloud_scheduler_job")["fill"]["http_target"]
    assert fill_schedule["oauth_token"][0]["service_account_email"] == "${each.value}"
    accounts = _resources("google_service_account_iam_member")
    fill = accounts["acts_as_fill"]
    assert "terraform_apply = local.apply_member" in fill["member"]
    assert "iam.serviceAccounts.actAs" in _roles()[fill["role"]]
    token = accounts["scheduler_mints_fill_token"]
    assert "iam.serviceAccounts.getAccessToken" in _roles()[token["role"]]
    # The cell's (cell.tf, exporter.tf), as the apply account.
    runtime = accounts["acts_as_runtime"]
    assert runtime["service_account_id"] == "${google_service_account.runtime.name}"
    assert runtime["for_each"]["terraform_apply"] == "${local.apply_member}"
    exporter = accounts["acts_as_exporter"]
    assert "terraform_apply" in json.dumps(exporter["for_each"])
    assert "terraform_apply = local.apply_member" in exporter["member"]
    # Each system's push account (modules/system/service_accounts.tf).
    push = accounts["terraform_apply_acts_as_push"]
    assert push["service_account_id"] == "${google_service_account.push.name}"
    assert push["member"] == "${var.terraform_apply_member}"
    # The operator account the ops job runs as (environment/iam.tf).
    operator = accounts["acts_as_operator"]
    assert operator["for_each"]["terraform_apply"] == (
        "${google_service_account.terraform_apply.member}"
    )
    for grant in (runtime, exporter, push, operator):
        assert "iam.serviceAccounts.actAs" in _roles()[grant["role"]]

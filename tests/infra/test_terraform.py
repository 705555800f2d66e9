"""Structure of infra/terraform that `terraform validate` cannot be run for offline.

The configuration is parsed with python-hcl2; values are the expressions as
written (`${var.x}`), not evaluated ones.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

from app.records import TABLES, bigquery_schema

TERRAFORM = Path(__file__).resolve().parents[2] / "infra" / "terraform"
ENVIRONMENTS = ("dev", "prod")


def _load(path: Path) -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        with_comments=False,
        explicit_blocks=False,
        preserve_heredocs=False,
        strip_string_quotes=True,
    )
    with path.open() as f:
        return hcl2.load(f, serialization_options=options)


@cache
def _config() -> dict[str, list[Any]]:
    merged: dict[str, list[Any]] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        for kind, blocks in _load(path).items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


def _variables() -> dict[str, dict[str, Any]]:
    return {name: body for block in _config()["variable"] for name, body in block.items()}


def _resources(rtype: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for block in _config()["resource"]:
        for kind, named in block.items():
            if kind == rtype:
                found.update(named)
    return found


def _locals() -> dict[str, Any]:
    return {k: v for block in _config()["locals"] for k, v in block.items()}


def _text() -> str:
    return "\n".join(p.read_text() for p in sorted(TERRAFORM.glob("*.tf")))


# --- variables ------------------------------------------------------------------


def test_every_variable_is_typed_and_described() -> None:
    untyped = [n for n, body in _variables().items() if not body.get("type")]
    undescribed = [
        n for n, body in _variables().items() if not str(body.get("description", "")).strip()
    ]
    assert (untyped, undescribed) == ([], [])


def test_every_variable_is_used() -> None:
    text = _text()
    unused = [n for n in _variables() if not re.search(rf"\bvar\.{n}\b", text)]
    assert unused == []


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_environment_files_set_every_required_variable_and_nothing_else(environment: str) -> None:
    values = _load(TERRAFORM / "env" / f"{environment}.tfvars")
    declared = _variables()
    required = {n for n, body in declared.items() if "default" not in body}
    assert required - values.keys() == set()
    assert values.keys() - declared.keys() == set()
    assert values["environment"] == environment


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_environment_has_its_own_state(environment: str) -> None:
    backend = _load(TERRAFORM / "env" / f"{environment}.backend.hcl")
    values = _load(TERRAFORM / "env" / f"{environment}.tfvars")
    assert backend["bucket"] == values["terraform_state_bucket"]
    assert backend["prefix"]


def test_backend_is_a_partial_gcs_configuration() -> None:
    (terraform,) = _config()["terraform"]
    assert terraform["backend"] == [{"gcs": {}}]


def test_provider_versions_are_bounded() -> None:
    (terraform,) = _config()["terraform"]
    assert re.fullmatch(r">= ?[\d.]+, ?< ?[\d.]+", terraform["required_version"])
    for providers in terraform["required_providers"]:
        for name, spec in providers.items():
            assert re.fullmatch(r">= ?[\d.]+, ?< ?[\d.]+", spec["version"]), name


# --- BigQuery -------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(TABLES))
def test_generated_schema_matches_the_code(table: str) -> None:
    on_disk = json.loads((TERRAFORM / "schemas" / f"{table}.json").read_text())
    assert on_disk == bigquery_schema(TABLES[table])


@pytest.mark.parametrize("table", [*sorted(TABLES), "dead_letters"])
def test_table_reads_its_schema_file(table: str) -> None:
    resource = _resources("google_bigquery_table")[table]
    assert resource["table_id"] == table
    assert resource["schema"] == f'${{file("${{path.module}}/schemas/{table}.json")}}'
    assert resource["deletion_protection"] is True


@pytest.mark.parametrize(
    ("table", "partition", "clustering"),
    [
        ("records", "ingest_time", ["id", "message_id"]),
        ("rejected", "ingest_time", ["message_id"]),
        ("dead_letters", "publish_time", ["message_id"]),
    ],
)
def test_table_is_partitioned_by_day_and_clustered(
    table: str, partition: str, clustering: list[str]
) -> None:
    resource = _resources("google_bigquery_table")[table]
    assert resource["time_partitioning"] == [{"type": "DAY", "field": partition}]
    assert resource["clustering"] == clustering
    columns = {c["name"] for c in json.loads((TERRAFORM / "schemas" / f"{table}.json").read_text())}
    assert {partition, *clustering} <= columns


def test_dead_letter_table_has_the_columns_a_bigquery_subscription_writes() -> None:
    # What Pub/Sub writes with write_metadata = true and no topic schema.
    allowed = {
        "subscription_name": {"STRING"},
        "message_id": {"STRING"},
        "publish_time": {"TIMESTAMP"},
        "data": {"BYTES", "STRING"},
        "attributes": {"STRING", "JSON"},
    }
    schema = json.loads((TERRAFORM / "schemas" / "dead_letters.json").read_text())
    assert {c["name"] for c in schema} == allowed.keys()
    for column in schema:
        assert column["type"] in allowed[column["name"]], column["name"]
        assert column["mode"] == "NULLABLE", column["name"]


# --- Pub/Sub --------------------------------------------------------------------


def test_push_subscription_targets_the_service_with_a_token() -> None:
    push = _resources("google_pubsub_subscription")["push"]
    (config,) = push["push_config"]
    assert config["push_endpoint"] == "${google_cloud_run_v2_service.recordline.uri}/pubsub/push"
    (token,) = config["oidc_token"]
    assert token == {
        "service_account_email": "${google_service_account.push.email}",
        "audience": "${var.push_audience}",
    }
    (retry,) = push["retry_policy"]
    assert retry.keys() == {"minimum_backoff", "maximum_backoff"}
    (dead_letter,) = push["dead_letter_policy"]
    assert dead_letter["dead_letter_topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert dead_letter["max_delivery_attempts"] == "${var.max_delivery_attempts}"


def test_ack_deadline_and_service_write_deadline_come_from_one_variable() -> None:
    push = _resources("google_pubsub_subscription")["push"]
    assert push["ack_deadline_seconds"] == "${local.ack_deadline_seconds}"
    assert "var.write_deadline_seconds" in _locals()["ack_deadline_seconds"]
    assert "max(10," in _locals()["ack_deadline_seconds"]
    env = _locals()["service_env"]
    assert "RECORDLINE_WRITE_DEADLINE_SECONDS = tostring(var.write_deadline_seconds)" in env


def test_dead_letters_are_kept_in_bigquery_with_metadata() -> None:
    sub = _resources("google_pubsub_subscription")["dead_letter_to_bigquery"]
    assert sub["topic"] == "${google_pubsub_topic.dead_letter.id}"
    (config,) = sub["bigquery_config"]
    assert config["write_metadata"] is True
    assert "google_bigquery_table.dead_letters.table_id" in config["table"]


def test_pubsub_service_agent_has_what_dead_lettering_and_push_tokens_need() -> None:
    agent = "${local.pubsub_service_agent}"
    grants = {
        (rtype, body["role"])
        for rtype in (
            "google_pubsub_topic_iam_member",
            "google_pubsub_subscription_iam_member",
            "google_service_account_iam_member",
            "google_bigquery_table_iam_member",
        )
        for body in _resources(rtype).values()
        if body["member"] == agent
    }
    assert grants == {
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),
        ("google_pubsub_subscription_iam_member", "roles/pubsub.subscriber"),
        ("google_service_account_iam_member", "roles/iam.serviceAccountTokenCreator"),
        ("google_bigquery_table_iam_member", "roles/bigquery.dataEditor"),
    }


# --- Cloud Run ------------------------------------------------------------------


def _container() -> dict[str, Any]:
    service = _resources("google_cloud_run_v2_service")["recordline"]
    (template,) = service["template"]
    (container,) = template["containers"]
    return container


def test_service_environment() -> None:
    env = _locals()["service_env"]
    for name in (
        "RECORDLINE_STORE",
        "RECORDLINE_WRITE_DEADLINE_SECONDS",
        "RECORDLINE_PUSH_AUDIENCE",
        "RECORDLINE_PUSH_SERVICE_ACCOUNTS",
        "RECORDLINE_READ_AUDIENCE",
        "RECORDLINE_READ_PRINCIPALS",
    ):
        assert re.search(rf"\b{name}\s*=", env), name
    for fixed in (
        'RECORDLINE_HOST = "0.0.0.0"',
        'RECORDLINE_LOG_FORMAT = "json"',
        'OTEL_TRACES_EXPORTER = "gcp_trace"',
        'OTEL_METRICS_EXPORTER = "gcp_monitoring"',
    ):
        assert fixed in re.sub(r"\s+", " ", env), fixed
    (secret,) = [e for e in _container()["env"] if e["name"] == "RECORDLINE_PAGE_TOKEN_SECRET"]
    (source,) = secret["value_source"]
    assert source["secret_key_ref"][0]["secret"] == (
        "${google_secret_manager_secret.page_token.secret_id}"
    )


def test_service_runs_with_cpu_outside_requests_and_probes_health() -> None:
    container = _container()
    (resources,) = container["resources"]
    assert resources["cpu_idle"] is False
    assert container["ports"] == [{"container_port": 8080}]
    assert container["startup_probe"][0]["http_get"] == [{"path": "/readyz"}]
    assert container["liveness_probe"][0]["http_get"] == [{"path": "/healthz"}]


def test_service_identity_and_access() -> None:
    service = _resources("google_cloud_run_v2_service")["recordline"]
    assert service["invoker_iam_disabled"] is False
    assert service["custom_audiences"] == ["${var.push_audience}", "${var.read_audience}"]
    assert service["template"][0]["service_account"] == "${google_service_account.runtime.email}"
    invokers = {
        body["member"]
        for body in _resources("google_cloud_run_v2_service_iam_member").values()
        if body["role"] == "roles/run.invoker"
    }
    assert "${google_service_account.push.member}" in invokers


# --- IAM ------------------------------------------------------------------------


def test_no_public_principals_anywhere() -> None:
    assert not re.search(r"\ball(Authenticated)?Users\b", _text())


def test_runtime_account_roles() -> None:
    dataset = _resources("google_bigquery_dataset_iam_member")["runtime_writes_dataset"]
    assert dataset["role"] == "roles/bigquery.dataEditor"
    assert dataset["member"] == "${google_service_account.runtime.member}"
    runtime = _resources("google_project_iam_member")["runtime"]
    assert set(re.findall(r'"(roles/[^"]+)"', runtime["for_each"])) == {
        "roles/bigquery.jobUser",
        "roles/cloudtrace.agent",
        "roles/monitoring.metricWriter",
    }
    secret = _resources("google_secret_manager_secret_iam_member")["runtime_reads_page_token"]
    assert secret["role"] == "roles/secretmanager.secretAccessor"


def test_deployer_is_granted_on_resources_only() -> None:
    deployer = "${google_service_account.deployer.member}"
    project_grants = [
        b for b in _resources("google_project_iam_member").values() if b["member"] == deployer
    ]
    assert project_grants == []
    registry = _resources("google_artifact_registry_repository_iam_member")
    assert registry["deployer_pushes_images"]["role"] == "roles/artifactregistry.writer"
    service = _resources("google_cloud_run_v2_service_iam_member")
    assert service["deployer_deploys"]["role"] == "roles/run.developer"
    acts_as = _resources("google_service_account_iam_member")["deployer_acts_as_runtime"]
    assert acts_as["role"] == "roles/iam.serviceAccountUser"
    assert acts_as["service_account_id"] == "${google_service_account.runtime.name}"


def test_no_count_over_lists() -> None:
    assert not re.search(r"^\s*count\s*=", _text(), re.M)


# --- Workload Identity Federation ----------------------------------------------


def test_github_provider_is_pinned_to_the_repository_and_deploy_branch() -> None:
    provider = _resources("google_iam_workload_identity_pool_provider")["github"]
    condition = provider["attribute_condition"]
    repository = "${var.github_owner}/${var.github_repo}"
    assert f"assertion.repository == '{repository}'" in condition
    assert "assertion.ref == 'refs/heads/${var.github_deploy_branch}'" in condition
    assert f"repo:{repository}:environment:${{var.environment}}" in condition
    assert f"repo:{repository}:pull_request" in condition

"""Structure of infra/terraform that `terraform validate` cannot be run for offline.

The configuration is parsed with python-hcl2; values are the expressions as
written (`${var.x}`), not evaluated ones.
"""

from __future__ import annotations

import json
import re
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

from app.records import BIGQUERY_TABLES
from app.store.bigquery.schema import created_schema
from tests.infra.console import console, require_terraform

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
    for path in sorted(TERRAFORM.rglob("*.tf")):
        for kind, blocks in _load(path).items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


MODULE = TERRAFORM / "modules" / "system"


def _root(kind: str) -> list[Any]:
    """Blocks of one kind in the environment root alone (not its modules)."""
    return [block for path in sorted(TERRAFORM.glob("*.tf")) for block in _load(path).get(kind, [])]


def _variables(directory: Path = TERRAFORM) -> dict[str, dict[str, Any]]:
    """The variables of one module: the environment root's by default."""
    return {
        name: body
        for path in sorted(directory.glob("*.tf"))
        for block in _load(path).get("variable", [])
        for name, body in block.items()
    }


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
    return "\n".join(p.read_text() for p in sorted(TERRAFORM.rglob("*.tf")))


# --- variables ------------------------------------------------------------------


@pytest.mark.parametrize("directory", [TERRAFORM, MODULE], ids=["root", "module"])
def test_every_variable_is_typed_and_described(directory: Path) -> None:
    variables = _variables(directory)
    untyped = [n for n, body in variables.items() if not body.get("type")]
    undescribed = [
        n for n, body in variables.items() if not str(body.get("description", "")).strip()
    ]
    assert (untyped, undescribed) == ([], [])


@pytest.mark.parametrize("directory", [TERRAFORM, MODULE], ids=["root", "module"])
def test_every_variable_is_used(directory: Path) -> None:
    text = "\n".join(p.read_text() for p in sorted(directory.glob("*.tf")))
    unused = [n for n in _variables(directory) if not re.search(rf"\bvar\.{n}\b", text)]
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
    (terraform,) = _root("terraform")
    assert terraform["backend"] == [{"gcs": {}}]


def test_provider_versions_are_bounded() -> None:
    (terraform,) = _root("terraform")
    assert re.fullmatch(r">= ?[\d.]+, ?< ?[\d.]+", terraform["required_version"])
    for providers in terraform["required_providers"]:
        for name, spec in providers.items():
            assert re.fullmatch(r">= ?[\d.]+, ?< ?[\d.]+", spec["version"]), name


# --- BigQuery -------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(BIGQUERY_TABLES))
def test_generated_schema_matches_the_code(table: str) -> None:
    on_disk = json.loads((MODULE / "schemas" / f"{table}.json").read_text())
    assert on_disk == created_schema(BIGQUERY_TABLES[table])


@pytest.mark.parametrize("table", [*sorted(BIGQUERY_TABLES), "dead_letters"])
def test_table_reads_its_schema_file(table: str) -> None:
    resource = _resources("google_bigquery_table")[table]
    assert resource["table_id"] == table
    read = f'file("${{path.module}}/schemas/{table}.json")'
    if table == "records":
        # With a system's typed columns after them (tests/infra/test_typed_columns.py).
        assert resource["schema"] == "${local.records_schema}"
        assert f"jsondecode({read})" in _locals()["records_schema"]
    else:
        assert resource["schema"] == f"${{{read}}}"
    assert resource["deletion_protection"] is True


@pytest.mark.parametrize(
    ("table", "partition", "clustering", "expiry"),
    [
        # Pages prune by ingest_time inside a day; lookups go through search indexes.
        ("records", "ingest_time", ["ingest_time"], "${local.partition_expiration_ms}"),
        ("rejected", "ingest_time", ["ingest_time"], "${local.partition_expiration_ms}"),
        ("dead_letters", "publish_time", ["message_id"], None),
    ],
)
def test_table_is_partitioned_by_day_and_clustered(
    table: str, partition: str, clustering: list[str], expiry: str | None
) -> None:
    resource = _resources("google_bigquery_table")[table]
    expected = {"type": "DAY", "field": partition}
    if expiry:
        expected["expiration_ms"] = expiry
    assert resource["time_partitioning"] == [expected]
    assert resource["clustering"] == clustering
    columns = {c["name"] for c in json.loads((MODULE / "schemas" / f"{table}.json").read_text())}
    assert {partition, *clustering} <= columns


def test_the_export_watermarks_table_is_small_whole_and_written_by_the_service() -> None:
    # The exporter appends to it with the serving tier (app/store/spanner/export.py):
    # two rows a minute at most, read whole by the analyst's query, kept for good.
    table = _resources("google_bigquery_table")["export_watermarks"]
    assert "time_partitioning" not in table
    assert "clustering" not in table
    assert table["lifecycle"] == [{"prevent_destroy": True}]
    assert table["dataset_id"] == "${google_bigquery_dataset.recordline.dataset_id}"
    columns = [
        c["name"] for c in json.loads((MODULE / "schemas/export_watermarks.json").read_text())
    ]
    assert columns == ["table_name", "watermark", "exported_at"]
    # The runtime account writes every table of its dataset: none of its own is needed.
    grant = _resources("google_bigquery_dataset_iam_member")["runtime_writes_dataset"]
    assert grant["role"] == "roles/bigquery.dataEditor"
    assert not [
        g
        for g in _resources("google_bigquery_table_iam_member").values()
        if "runtime" in str(g.get("member"))
    ]


def test_dead_letter_table_has_the_columns_a_bigquery_subscription_writes() -> None:
    # What Pub/Sub writes with write_metadata = true and no topic schema.
    allowed = {
        "subscription_name": {"STRING"},
        "message_id": {"STRING"},
        "publish_time": {"TIMESTAMP"},
        "data": {"BYTES", "STRING"},
        "attributes": {"STRING", "JSON"},
    }
    schema = json.loads((MODULE / "schemas" / "dead_letters.json").read_text())
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
        "service_account_email": "${var.push_service_account}",
        "audience": "${local.push_audience}",
    }
    # The environment's push account, shared: each system's audience is its own.
    (module,) = [block["system"] for block in _root("module") if "system" in block]
    assert module["push_service_account"] == "${google_service_account.push.email}"
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


def test_a_followers_request_ends_by_the_service_before_cloud_run_cuts_it() -> None:
    from app.query.service import MAX_WAIT_SECONDS
    from app.settings import QuerySettings

    variables = _variables()
    timeout = variables["request_timeout_seconds"]["default"]
    stream = variables["stream_seconds"]["default"]
    assert stream == QuerySettings().stream_seconds
    assert timeout >= max(stream, MAX_WAIT_SECONDS) + 10
    env = _locals()["service_env"]
    assert "RECORDLINE_STREAM_SECONDS = tostring(var.stream_seconds)" in env
    (template,) = _resources("google_cloud_run_v2_service")["recordline"]["template"]
    assert template["timeout"] == "${var.request_timeout_seconds}s"

    def accepted(timeout: int, stream: int = 300) -> bool:
        values = {"request_timeout_seconds": str(timeout), "stream_seconds": str(stream)}
        return _validations_hold("request_timeout_seconds", values)

    assert accepted(310)
    assert not accepted(309)  # Cloud Run would cut a stream as it ends
    assert accepted(70, stream=30)
    assert not accepted(69, stream=30)  # nor a long-poll of 60 s
    assert not accepted(3601, stream=300)
    # Followers hold requests, not CPU: a thousand of them fit on one instance.
    assert variables["concurrency"]["default"] == 1000


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
        ("google_bigquery_table_iam_member", "roles/bigquery.dataEditor"),
    }
    # Signing pushes as the shared push account: granted once, on that account.
    mints = _resources("google_service_account_iam_member")["pubsub_mints_push_token"]
    assert mints["service_account_id"] == "${google_service_account.push.name}"
    assert mints["role"] == "roles/iam.serviceAccountTokenCreator"
    assert mints["member"] == 'serviceAccount:${time_sleep.service_agents.triggers["pubsub"]}'


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
        # Sampled: every push starts a trace (infra/fleet_cost.py prices the spans).
        'OTEL_TRACES_SAMPLER = "parentbased_traceidratio"',
        "OTEL_TRACES_SAMPLER_ARG = tostring(var.trace_sample_ratio)",
    ):
        assert fixed in re.sub(r"\s+", " ", env), fixed
    (secret,) = [e for e in _container()["env"] if e["name"] == "RECORDLINE_PAGE_TOKEN_SECRET"]
    (source,) = secret["value_source"]
    assert source["secret_key_ref"][0]["secret"] == (
        "${google_secret_manager_secret.page_token.secret_id}"
    )


def test_service_is_billed_by_request_unless_kept_warm_and_probes_health() -> None:
    container = _container()
    (resources,) = container["resources"]
    # Nothing runs between requests (the export is the exporter service's): CPU only
    # while one is in flight, unless the system keeps instances warm for followers.
    assert resources["cpu_idle"] == "${var.min_instances == 0}"
    (scaling,) = _resources("google_cloud_run_v2_service")["recordline"]["template"][0]["scaling"]
    assert scaling["min_instance_count"] == "${var.min_instances}"
    assert _variables()["min_instances"]["default"] == 0
    assert container["ports"] == [{"container_port": 8080}]
    assert container["startup_probe"][0]["http_get"] == [{"path": "/readyz"}]
    assert container["liveness_probe"][0]["http_get"] == [{"path": "/healthz"}]


def test_service_identity_and_access() -> None:
    service = _resources("google_cloud_run_v2_service")["recordline"]
    assert service["invoker_iam_disabled"] is False
    assert service["custom_audiences"] == ["${local.push_audience}", "${local.read_audience}"]
    assert service["template"][0]["service_account"] == "${google_service_account.runtime.email}"
    invokers = {
        body["member"]
        for body in _resources("google_cloud_run_v2_service_iam_member").values()
        if body["role"] == "roles/run.invoker"
    }
    assert "serviceAccount:${var.push_service_account}" in invokers


# --- IAM ------------------------------------------------------------------------


def test_no_public_principals_anywhere() -> None:
    assert not re.search(r"\ball(Authenticated)?Users\b", _text())


def test_runtime_account_roles() -> None:
    dataset = _resources("google_bigquery_dataset_iam_member")["runtime_writes_dataset"]
    assert dataset["role"] == "roles/bigquery.dataEditor"
    assert dataset["member"] == "${google_service_account.runtime.member}"
    # At the project: one role of what three predefined ones give the service (query
    # jobs, spans, metrics), no more, bound once to every system's runtime account
    # (runtime_iam.tf): one policy change however many systems, not three members each.
    from tests.infra.test_iam_coverage import _roles

    role = _resources("google_project_iam_custom_role")["runtime"]
    cut_from = set().union(
        *(
            _roles()[r]
            for r in (
                "roles/bigquery.jobUser",
                "roles/cloudtrace.agent",
                "roles/monitoring.metricWriter",
            )
        )
    )
    assert set(role["permissions"]) <= cut_from
    assert {
        "bigquery.jobs.create",
        "cloudtrace.traces.patch",
        "monitoring.timeSeries.create",
        "monitoring.metricDescriptors.create",
    } <= set(role["permissions"])
    binding = _resources("google_project_iam_binding")["runtime"]
    assert binding["role"] == "${google_project_iam_custom_role.runtime.id}"
    every_runtime_account = "[for system in module.system : "
    # And the exporter service's account (exporter.tf), for its queries and metrics.
    assert binding["members"] == (
        f'${{sort(concat({every_runtime_account}"serviceAccount:'
        '${system.runtime_service_account}"], values(google_service_account.exporter)[*].member))}'
    )
    assert "google_project_iam_member" not in json.dumps(_load(MODULE / "iam.tf"))
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


# --- what the first apply on a new project needs ------------------------------------


def _references(body: Any) -> set[str]:
    """Resources a block refers to or depends on: `type.name`, as Terraform orders them."""
    text = json.dumps(body)
    return {
        f"{t}.{n}"
        for t, n in re.findall(r"\b((?:google|time)_[a-z0-9_]+|time_sleep)\.([a-z0-9_]+)", text)
        if not t.startswith("google_") or t in _all_resources()
    }


@cache
def _all_resources() -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for block in _config()["resource"]:
        for kind, named in block.items():
            found.setdefault(kind, {}).update(named)
    return found


@cache
def _module_waits() -> set[str]:
    """What every resource of the system module is created after: the module block's
    depends_on, and the root resources its inputs refer to."""
    (module,) = [block["system"] for block in _root("module") if "system" in block]
    return _references({k: v for k, v in module.items() if k != "source"})


def _waits_for(address: str) -> set[str]:
    """Every resource `address` is created after, directly or through others."""
    seen: set[str] = set()
    if address.split(".")[0] in _module_resource_types(address):
        seen |= _module_waits()
    todo = [address, *seen]
    while todo:
        rtype, name = todo.pop().split(".", 1)
        body = _all_resources().get(rtype, {}).get(name)
        if body is None:
            continue
        for ref in _references(body) - seen:
            seen.add(ref)
            todo.append(ref)
    return seen


def _module_resource_types(address: str) -> set[str]:
    """The resource's type when `address` is declared in the system module, else nothing."""
    rtype, name = address.split(".", 1)
    for path in sorted(MODULE.glob("*.tf")):
        for block in _load(path).get("resource", []):
            if name in block.get(rtype, {}):
                return {rtype}
    return set()


@cache
def _evaluate(expression: str, values: tuple[tuple[str, str], ...] = ()) -> Any:
    """`expression` evaluated by `terraform console` (no provider needed), with `local.x`
    bound to each given HCL value."""
    require_terraform()
    with tempfile.TemporaryDirectory() as work:
        bound = "\n".join(f"  {name} = {value}" for name, value in values)
        Path(work, "main.tf").write_text(f"locals {{\n{bound}\n}}\n")
        return console(work, expression)


def _template(raw: str) -> str:
    """A string as python-hcl2 keeps it, as an HCL string literal again: its literal
    parts come back unescaped, its interpolations as written."""
    out, depth, i = ['"'], 0, 0
    while i < len(raw):
        if raw.startswith("${", i):
            depth += 1
            out.append("${")
            i += 2
            continue
        char = raw[i]
        if depth:
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            out.append(char)
        else:
            out.append({'"': '\\"', "\\": "\\\\", "\n": "\\n"}.get(char, char))
        i += 1
    return "".join(out) + '"'


def _expression(value: Any) -> str:
    """An expression as python-hcl2 keeps it (`${...}`), without the interpolation."""
    assert isinstance(value, str), value
    assert value.startswith("${"), value
    assert value.endswith("}"), value
    return value[2:-1]


WORKLOAD = re.compile(
    r'workload\.googleapis\.com/recordline\.([a-z_.]+)|workload_metric\["([a-z_.]+)"\]'
)


def test_every_workload_metric_named_has_a_descriptor() -> None:
    named = {a or b for a, b in WORKLOAD.findall(_text())}
    assert named >= {"ingest.lag", "query.duration", "query.bytes_billed", "messages"}
    declared = _locals()["workload_metrics"]
    assert named - declared.keys() == set()
    descriptor = _resources("google_monitoring_metric_descriptor")["workload"]
    assert descriptor["for_each"] == "${local.workload_metrics}"
    assert descriptor["type"] == "workload.googleapis.com/recordline.${each.key}"
    # Filters name the resource the exporter writes Cloud Run metrics on.
    assert 'resource.type=\\"generic_task\\"' in _locals()["workload_metric"]


def _exported_descriptors() -> dict[str, dict[str, Any]]:
    """Kind, value type, unit and labels of each app metric, as the Cloud Monitoring
    exporter derives them from what the SDK collects."""
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

    from app.telemetry import Telemetry
    from app.telemetry.metrics import (
        ConnectionRefusals,
        ExportMetrics,
        LoopRestarts,
        TypedPatches,
    )
    from tests.telemetry.conftest import Exported

    exported = Exported()
    telemetry = Telemetry(metric_exporters=[exported])
    metrics = telemetry.metrics
    assert metrics.histograms is not None
    metrics.histograms.ingest_lag.record(0.2)
    metrics.histograms.append_rows.record(3)
    metrics.histograms.append_duration.record(0.004)
    metrics.query_duration.record(0.1, {"route": "/v1/records"})
    metrics.read_duration.record(0.2, {"route": "/v1/records"})
    metrics.query_bytes_billed.add(10 << 20, {"route": "/v1/records"})
    metrics.outcomes[(("outcome", "rejected"), ("reason", "schema"))] += 1
    metrics.conflicts[(("reason", "data"),)] += 1
    metrics.watch(queue_depth=lambda: 2, horizon=lambda: 0, followers=lambda: 3)
    # The canary's age is reported once a canary has been stored.
    metrics.canary_published = 0
    # The exporter's, as the serving tier reports them.
    export = ExportMetrics(metrics)
    export.watermark("records", 1_714_219_200_000_000)
    export.exported("records", 3)
    export.blocked("records", "BigQuery refused message 1 of records: too long")
    TypedPatches(metrics).refused("p.d.records")
    LoopRestarts(metrics).restarted("exporter")
    ConnectionRefusals(metrics).refused("headers-too-large")
    # The completeness ledger's, as its watch reads it (app.query.producers).
    metrics.producers_missing = lambda: {"orders-api": 3}
    metrics.producers_conflicts = lambda: {"orders-api": 1}
    assert telemetry.meter_provider is not None
    telemetry.meter_provider.force_flush()
    data = exported.data
    assert data is not None
    found: dict[str, dict[str, Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                point = metric.data.data_points[0]
                if isinstance(metric.data, Histogram):
                    kind, value = "CUMULATIVE", "DISTRIBUTION"
                else:
                    assert isinstance(metric.data, (Sum, Gauge))
                    monotonic = isinstance(metric.data, Sum) and metric.data.is_monotonic
                    kind = "CUMULATIVE" if monotonic else "GAUGE"
                    value = "INT64" if isinstance(point.value, int) else "DOUBLE"
                found[metric.name.removeprefix("recordline.")] = {
                    "kind": kind,
                    "value": value,
                    "unit": metric.unit,
                    "labels": sorted(point.attributes or {}),
                }
    return found


def test_descriptors_are_what_the_exporter_writes() -> None:
    declared = {
        name: {"kind": d["kind"], "value": d["value"], "unit": d["unit"], "labels": d["labels"]}
        for name, d in _locals()["workload_metrics"].items()
    }
    assert declared == _exported_descriptors()


def test_slos_and_the_bytes_alert_wait_for_the_descriptors() -> None:
    # Through the module's input: each filter names a descriptor's type.
    filters = {
        "read_latency": "local.read_duration",
        "freshness": 'local.workload_metric[\\"ingest.lag\\"]',
    }
    for name, metric in filters.items():
        slo = _resources("google_monitoring_slo")[name]
        assert "google_monitoring_metric_descriptor.workload" in _waits_for(
            f"google_monitoring_slo.{name}"
        ), name
        assert metric in json.dumps(slo), name
    # The PromQL policies (pages and tickets, the bytes billed among them) read the
    # descriptors' types through modules/symptoms.
    assert _locals()["metric"].startswith("${{for name, type in var.metric_types")
    for name in ("fleet_symptoms", "ticket_symptoms"):
        (module,) = [b[name] for b in _root("module") if name in b]
        assert "google_monitoring_metric_descriptor.workload" in module["metric_types"], name


@pytest.mark.parametrize(
    "address",
    [
        *(f"google_service_account.{n}" for n in sorted(_resources("google_service_account"))),
        *(
            f"google_project_iam_member.{n}"
            for n in sorted(_resources("google_project_iam_member"))
        ),
        *(
            f"google_project_iam_binding.{n}"
            for n in sorted(_resources("google_project_iam_binding"))
        ),
    ],
)
def test_accounts_and_project_grants_wait_for_the_enabled_apis(address: str) -> None:
    assert "google_project_service.enabled" in _waits_for(address)


AGENT_LOCALS = ("pubsub_service_agent", "scheduler_service_agent", "monitoring_service_agent")


def test_service_agents_are_created_before_any_grant_names_them() -> None:
    # No agent's e-mail is spelled out (service-NUMBER@gcp-sa-...): Google creates some
    # agents lazily, so each is created here and read from what creates it.
    assert "gcp-sa-" not in json.dumps(_config())
    agents = _resources("google_project_service_identity")["agents"]
    assert agents["provider"] == "google-beta"
    assert agents["for_each"] == "${local.service_agent_apis}"
    assert agents["service"] == "${google_project_service.enabled[each.value].service}"
    assert _locals()["service_agent_apis"] == {
        "pubsub": "pubsub.googleapis.com",
        "scheduler": "cloudscheduler.googleapis.com",
        "monitoring": "monitoring.googleapis.com",
    }
    pause = _all_resources()["time_sleep"]["service_agents"]
    assert "google_project_service_identity.agents" in json.dumps(pause["triggers"])
    assert int(pause["create_duration"].removesuffix("s")) >= 60
    # The system module reads the e-mails from the pause, so what names one waits for it.
    (module,) = [block["system"] for block in _root("module") if "system" in block]
    assert module["service_agents"] == "${time_sleep.service_agents.triggers}"
    for name, key in zip(AGENT_LOCALS, ("pubsub", "scheduler", "monitoring"), strict=True):
        assert f'var.service_agents["{key}"]' in _locals()[name], name
    grants = [
        f"{rtype}.{name}"
        for rtype, named in _all_resources().items()
        for name, body in named.items()
        if any(f"local.{agent}" in str(body.get("member", "")) for agent in AGENT_LOCALS)
        or "time_sleep.service_agents.triggers" in str(body.get("member", ""))
    ]
    # Pub/Sub's four (dead letters, push tokens at the root, the BigQuery subscription),
    # the Scheduler's publisher grant and the uptime check's invoker grant.
    assert len(grants) == 6, grants
    for grant in grants:
        assert {"time_sleep.service_agents", "google_project_service_identity.agents"} <= (
            _waits_for(grant)
        ), grant


@pytest.mark.parametrize(
    ("address", "grant"),
    [
        (
            "google_pubsub_subscription.dead_letter_to_bigquery",
            "google_bigquery_table_iam_member.pubsub_writes_dead_letters",
        ),
        (
            "google_cloud_run_v2_service.recordline",
            "google_secret_manager_secret_iam_member.runtime_reads_page_token",
        ),
    ],
)
def test_resources_checked_against_a_grant_wait_for_it_to_propagate(
    address: str, grant: str
) -> None:
    pauses = [
        (name, body)
        for name, body in _all_resources().get("time_sleep", {}).items()
        if f"time_sleep.{name}" in _waits_for(address) and grant in _waits_for(f"time_sleep.{name}")
    ]
    assert pauses, f"{address} does not wait after {grant}"
    for _, body in pauses:
        assert int(body["create_duration"].removesuffix("s")) >= 60


def test_read_slo_counts_what_readers_wait_for_at_a_bucket_boundary() -> None:
    from app.telemetry.metrics import SECONDS
    from app.telemetry.store import READ_ROUTES

    slo = _resources("google_monitoring_slo")["read_latency"]
    (sli,) = slo["request_based_sli"]
    (cut,) = sli["distribution_cut"]
    assert cut["distribution_filter"] == "${local.read_duration}"
    # The read routes' own duration (request to response, probes left out by the
    # service), not one store query's.
    read_filter = _locals()["read_duration"]
    assert read_filter.startswith('${local.workload_metric["read.duration"]} ')
    # The routes users read through, not replay's look-ups; the fleet chart and the
    # burn-rate alerts count the same.
    assert _locals()["read_routes"] == list(READ_ROUTES)
    routes = 'metric.label."route"=one_of(' + ",".join(f'"{r}"' for r in READ_ROUTES) + ")"
    for name in ("read_duration", "fleet_read_routes"):
        expression = re.sub(r"\blocal\.workload_metric\[[^]]*\]", '"M"', _locals()[name])
        value = _evaluate(_template(expression), (("read_routes", json.dumps(list(READ_ROUTES))),))
        assert value.endswith(routes), (name, value)
    assert cut["range"] == [{"max": "${var.read_latency_threshold_seconds}"}]
    threshold = _variables()["read_latency_threshold_seconds"]
    assert threshold["default"] in SECONDS
    # The variable's own check lists exactly the app's boundaries.
    (check,) = threshold["validation"]
    listed = _evaluate(re.search(r"contains\((\[[^\]]*\])", check["condition"]).group(1))  # type: ignore[union-attr]
    assert listed == list(SECONDS)


def test_freshness_threshold_is_a_lag_bucket_boundary() -> None:
    from app.telemetry.metrics import LAG_SECONDS

    variable = _variables()["freshness_threshold_seconds"]
    assert variable["default"] in LAG_SECONDS
    (check,) = variable["validation"]
    listed = _evaluate(re.search(r"contains\((\[[^\]]*\])", check["condition"]).group(1))  # type: ignore[union-attr]
    assert listed == list(LAG_SECONDS)


def _validations_hold(variable: str, values: dict[str, str]) -> bool:
    """Whether every validation of `variable` passes for the given HCL values."""
    results = []
    for check in _variables()[variable]["validation"]:
        condition = re.sub(r"\bvar\.", "local.", _expression(check["condition"]))
        results.append(_evaluate(condition, tuple(sorted(values.items()))))
    return all(results)


@pytest.mark.parametrize(
    ("variable", "values", "accepted"),
    [
        ("retry_minimum_backoff", {"retry_minimum_backoff": '"10s"'}, True),
        ("retry_minimum_backoff", {"retry_minimum_backoff": '"0s"'}, True),
        ("retry_minimum_backoff", {"retry_minimum_backoff": '"601s"'}, False),
        ("retry_minimum_backoff", {"retry_minimum_backoff": '"10m"'}, False),
        ("retry_maximum_backoff", {"retry_maximum_backoff": '"600s"'}, True),
        ("retry_maximum_backoff", {"retry_maximum_backoff": '"900s"'}, False),
        ("retry_maximum_backoff", {"retry_maximum_backoff": '"5s"'}, False),  # under minimum
        ("message_retention_duration", {"message_retention_duration": '"604800s"'}, True),
        ("message_retention_duration", {"message_retention_duration": '"2678400s"'}, True),
        ("message_retention_duration", {"message_retention_duration": '"2678401s"'}, False),
        ("message_retention_duration", {"message_retention_duration": '"599s"'}, False),
    ],
)
def test_pubsub_settings_google_would_refuse_fail_at_plan_time(
    variable: str, values: dict[str, str], accepted: bool
) -> None:
    values = {"retry_minimum_backoff": '"10s"', **values}
    assert _validations_hold(variable, values) is accepted


@pytest.mark.parametrize(
    ("environment", "channels", "accepted"),
    [
        ("prod", "[]", False),
        ("prod", '["projects/recordline-prod/notificationChannels/123"]', True),
        ("dev", "[]", True),
        ("prod", '["oncall@example.com"]', False),
    ],
)
def test_prod_requires_a_notification_channel(
    environment: str, channels: str, accepted: bool
) -> None:
    values = {"environment": f'"{environment}"', "notification_channels": channels}
    assert _validations_hold("notification_channels", values) is accepted


def test_dashboard_tiles_never_write_a_zero_position() -> None:
    dashboard = _resources("google_monitoring_dashboard")["recordline"]["dashboard_json"]
    assert "xPos" not in dashboard
    assert "yPos" not in dashboard
    assert "local.dashboard_tile_positions[i]" in dashboard
    assert "for i, chart in local.charts" in dashboard
    # Without the serving tier's charts, and with them.
    base = len(_locals()["dashboard_charts"])
    for charts in (base, base + len(_locals()["serving_charts"])):
        positions = _evaluate(
            _expression(_locals()["dashboard_tile_positions"]).replace(
                "length(local.charts)", str(charts)
            )
        )
        assert len(positions) == charts
        assert all(at != 0 for tile in positions for at in tile.values())
        cells = {(tile.get("xPos", 0), tile.get("yPos", 0)) for tile in positions}
        assert len(cells) == charts  # no two tiles on one spot


def test_dashboard_shows_bytes_billed_by_route() -> None:
    titles = [c["title"] for c in _locals()["dashboard_charts"]]
    assert any(t.startswith("BigQuery bytes billed by route") for t in titles)


def test_deploy_owned_template_fields_are_ignored() -> None:
    service = _resources("google_cloud_run_v2_service")["recordline"]
    (lifecycle,) = service["lifecycle"]
    ignored = set(lifecycle["ignore_changes"])
    assert {
        "${template[0].containers[0].image}",
        "${template[0].annotations}",
        "${template[0].labels}",
        "${template[0].revision}",
    } <= ignored
    assert {"client", "client_version"} <= {i.strip("${}") for i in ignored}


def test_audiences_are_full_urls_of_each_environment() -> None:
    for name in ("push_audience", "read_audience"):
        assert _variables()[name]["default"] == "", name  # no value shared by environments
        expression = _expression(_locals()[name])
        derived = _evaluate(
            re.sub(r"\b(var|local)\.", "local.", expression),
            (
                (name, '""'),
                ("service_url", '"https://recordline-123456.europe-west1.run.app"'),
            ),
        )
        assert derived.startswith("https://recordline-123456.europe-west1.run.app/"), derived
    # The base is Cloud Run's deterministic URL, which carries the project number.
    assert "var.project_number" in _locals()["service_url"]
    assert _locals()["service_url"].startswith("https://")
    assert _locals()["push_audience"] != _locals()["read_audience"]
    for environment in ENVIRONMENTS:
        values = _load(TERRAFORM / "env" / f"{environment}.tfvars")
        assert "push_audience" not in values
        assert "read_audience" not in values


def test_workload_identity_maps_only_what_is_used() -> None:
    provider = _resources("google_iam_workload_identity_pool_provider")["github"]
    assert provider["attribute_mapping"] == {"google.subject": "assertion.sub"}
    assert "attribute." not in provider["attribute_condition"]


# --- BigQuery read cost -----------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "table", "columns"),
    [
        ("records_keys", "records", "(id, message_id)"),
        ("rejected_keys", "rejected", "(message_id)"),
    ],
)
def test_lookup_keys_have_exact_match_search_indexes(index: str, table: str, columns: str) -> None:
    statement = _locals()["search_indexes"][index]
    assert statement.startswith(f"CREATE SEARCH INDEX IF NOT EXISTS {index} ON ")
    assert f"google_bigquery_table.{table}.table_id}}`{columns}" in statement
    assert statement.endswith("OPTIONS (analyzer = 'NO_OP_ANALYZER')")
    job = _resources("google_bigquery_job")["search_index"]
    assert job["for_each"] == "${local.search_indexes}"
    assert "sha256(each.value)" in job["job_id"]  # a new statement is a new job
    (query,) = job["query"]
    assert query["query"] == "${each.value}"
    assert (query["create_disposition"], query["write_disposition"]) == ("", "")


def test_query_cost_cap_and_retention_reach_the_service() -> None:
    env = re.sub(r"\s+", " ", _locals()["service_env"])
    assert "RECORDLINE_QUERY_MAX_BYTES_BILLED = tostring(var.query_max_bytes_billed)" in env
    assert _variables()["query_max_bytes_billed"]["default"] == 2 * 1024**3
    assert "local.retention_env" in env
    assert _evaluate(
        re.sub(r"\bvar\.", "local.", _expression(_locals()["retention_env"])),
        (("retention_days", "30"),),
    ) == {"RECORDLINE_RETENTION_DAYS": "30"}
    assert (
        _evaluate(
            re.sub(r"\bvar\.", "local.", _expression(_locals()["retention_env"])),
            (("retention_days", "0"),),
        )
        == {}
    )
    expiry = re.sub(r"\bvar\.", "local.", _expression(_locals()["partition_expiration_ms"]))
    assert _evaluate(expiry, (("retention_days", "30"),)) == 30 * 86_400_000
    assert _evaluate(expiry, (("retention_days", "0"),)) is None
    assert _validations_hold("retention_days", {"retention_days": "-1"}) is False
    assert _validations_hold("query_max_bytes_billed", {"query_max_bytes_billed": "0"}) is False


def test_daily_bytes_billed_alert() -> None:
    from tests.infra.test_alerts import _symptoms

    query = _symptoms(("orders",))["bytes_billed"]
    # The last 24 h of each system's reads' bytes (a PromQL alert looks back 24 h at
    # most), over the budget.
    assert "increase(workload_googleapis_com:recordline_query_bytes_billed{" in query
    assert "[1d]" in query
    assert query.endswith("> 1099511627776")
    assert _variables()["query_bytes_billed_daily_budget"]["default"] == 1024**4

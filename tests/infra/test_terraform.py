"""Structure of infra/terraform that `terraform validate` cannot be run for offline.

Two roots: the environment's (infra/terraform/environment: its identities, images and
alerts) and a cell's (infra/terraform, one state per cell, with modules/system for each
of its systems). The configuration is parsed with python-hcl2; values are the
expressions as written (`${var.x}`), not evaluated ones.
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

from app.records import BIGQUERY_TABLES, Record
from app.store.bigquery.schema import created_schema
from tests.infra.console import console, require_terraform

TERRAFORM = Path(__file__).resolve().parents[2] / "infra" / "terraform"
ENVIRONMENT = TERRAFORM / "environment"
ENVIRONMENTS = ("dev", "prod")


@cache
def _load(path: Path) -> dict[str, Any]:
    """A file's blocks as python-hcl2 reads them, once per run: read, never changed."""
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
    """Every block of both roots and their modules."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(TERRAFORM.rglob("*.tf")):
        for kind, blocks in _load(path).items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


MODULE = TERRAFORM / "modules" / "system"
METRICS = TERRAFORM / "modules" / "metrics"


def _root(kind: str, directory: Path = TERRAFORM) -> list[Any]:
    """Blocks of one kind in a root alone (not its modules): the cell's by default."""
    return [block for path in sorted(directory.glob("*.tf")) for block in _load(path).get(kind, [])]


def _variables(directory: Path = TERRAFORM) -> dict[str, dict[str, Any]]:
    """The variables of one module: the cell root's by default."""
    return {
        name: body
        for path in sorted(directory.glob("*.tf"))
        for block in _load(path).get("variable", [])
        for name, body in block.items()
    }


def _resources(rtype: str, directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """The resources of one type by name: in every root and module, or in `directory`."""
    found: dict[str, dict[str, Any]] = {}
    blocks = _config()["resource"] if directory is None else _root("resource", directory)
    for block in blocks:
        for kind, named in block.items():
            if kind == rtype:
                found.update(named)
    return found


def _locals(directory: Path | None = None) -> dict[str, Any]:
    """The locals by name: of every root and module, or of `directory`."""
    blocks = _config()["locals"] if directory is None else _root("locals", directory)
    return {k: v for block in blocks for k, v in block.items()}


def _text(directory: Path | None = None) -> str:
    paths = TERRAFORM.rglob("*.tf") if directory is None else directory.glob("*.tf")
    return "\n".join(p.read_text() for p in sorted(paths))


def _cell_file(environment: str, cell: str = "recordline") -> dict[str, Any]:
    """A cell's variables (env/<environment>/<cell>.tfvars.json)."""
    return dict(json.loads((TERRAFORM / "env" / environment / f"{cell}.tfvars.json").read_text()))


# --- variables ------------------------------------------------------------------


@pytest.mark.parametrize(
    "directory",
    [TERRAFORM, MODULE, ENVIRONMENT, METRICS],
    ids=["cell", "module", "environment", "metrics"],
)
def test_every_variable_is_typed_and_described(directory: Path) -> None:
    variables = _variables(directory)
    untyped = [n for n, body in variables.items() if not body.get("type")]
    undescribed = [
        n for n, body in variables.items() if not str(body.get("description", "")).strip()
    ]
    assert (untyped, undescribed) == ([], [])


@pytest.mark.parametrize(
    "directory",
    [TERRAFORM, MODULE, ENVIRONMENT, METRICS],
    ids=["cell", "module", "environment", "metrics"],
)
def test_every_variable_is_used(directory: Path) -> None:
    text = "\n".join(p.read_text() for p in sorted(directory.glob("*.tf")))
    unused = [n for n in _variables(directory) if not re.search(rf"\bvar\.{n}\b", text)]
    assert unused == []


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_environment_files_set_every_required_variable_and_nothing_else(environment: str) -> None:
    values = _load(ENVIRONMENT / "env" / f"{environment}.tfvars")
    declared = _variables(ENVIRONMENT)
    required = {n for n, body in declared.items() if "default" not in body}
    assert required - values.keys() == set()
    assert values.keys() - declared.keys() == set()
    assert values["environment"] == environment
    # Each cell's file is its root's variables, and names its environment.
    cells = sorted((TERRAFORM / "env" / environment).glob("*.tfvars.json"))
    assert cells
    declared = _variables()
    required = {n for n, body in declared.items() if "default" not in body}
    for path in cells:
        cell = json.loads(path.read_text())
        assert required - cell.keys() == set(), path.name
        assert cell.keys() - declared.keys() == set(), path.name
        assert cell["environment"] == environment
        assert cell.get("cell", path.name.removesuffix(".tfvars.json")) == path.name.removesuffix(
            ".tfvars.json"
        )


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_environment_and_cell_has_its_own_state(environment: str) -> None:
    backend = _load(TERRAFORM / "env" / f"{environment}.backend.hcl")
    values = _load(ENVIRONMENT / "env" / f"{environment}.tfvars")
    assert backend["bucket"] == values["terraform_state_bucket"]
    assert backend["prefix"]
    # The cells write their directory to the same bucket (directory.tf).
    assert _cell_file(environment)["terraform_state_bucket"] == backend["bucket"]
    # The workflows give each state a prefix of its own under the backend's.
    for workflow in ("terraform-environment.yml", "terraform-apply.yml", "drift.yml"):
        text = (TERRAFORM.parents[1] / ".github" / "workflows" / workflow).read_text()
        assert 'prefix="$base/environment"' in text, workflow
        assert 'prefix="$base/cells/$TF_ROOT"' in text, workflow


@pytest.mark.parametrize("directory", [TERRAFORM, ENVIRONMENT], ids=["cell", "environment"])
def test_backend_is_a_partial_gcs_configuration(directory: Path) -> None:
    (terraform,) = _root("terraform", directory)
    assert terraform["backend"] == [{"gcs": {}}]


@pytest.mark.parametrize("directory", [TERRAFORM, ENVIRONMENT], ids=["cell", "environment"])
def test_provider_versions_are_bounded(directory: Path) -> None:
    (terraform,) = _root("terraform", directory)
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
        # (and a system's tables of its own: the same columns, then their copies).
        assert "local.service_schema" in _locals()["records_schema"]
        assert f"jsondecode({read})" in str(_locals()["service_schema"])
    else:
        assert resource["schema"] == f"${{{read}}}"
    assert resource["deletion_protection"] is True


@pytest.mark.parametrize(
    ("table", "partition", "clustering", "expiry"),
    [
        # Pages prune by ingest_time inside a day; lookups go through search indexes.
        # (records is laid out as its system's layout says: tests/infra/test_layout_variables.py.)
        ("rejected", "ingest_time", ["ingest_time"], "${local.partition_expiration_ms}"),
        ("dead_letters", "publish_time", ["message_id"], None),
        # Pages of the access record read newest first by time; kept 400 days whatever
        # the records' retention (app.store.access.ACCESS_RETENTION_DAYS).
        ("access_record", "time", ["time"], "${400 * 24 * 60 * 60 * 1000}"),
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
    # The exporter appends to it with the serving tier (app/store/tiered/exporter.py):
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


def test_push_subscription_targets_the_cell_with_the_systems_own_token() -> None:
    push = _resources("google_pubsub_subscription")["push"]
    (config,) = push["push_config"]
    assert config["push_endpoint"] == "${local.push_endpoint}"
    assert (
        _locals(MODULE)["push_endpoint"]
        == "${var.cell.uri}/systems/${var.service_name}/pubsub/push"
    )
    assert (
        _locals(MODULE)["push_audience"]
        == "${var.cell.url}/systems/${var.service_name}/pubsub/push"
    )
    (token,) = config["oidc_token"]
    # Each system's own push account, with its own audience.
    assert token == {
        "service_account_email": "${google_service_account.push.email}",
        "audience": "${local.push_audience}",
    }
    assert _resources("google_service_account", MODULE)["push"]["account_id"] == (
        "${var.service_name}-push"
    )
    (retry,) = push["retry_policy"]
    assert retry.keys() == {"minimum_backoff", "maximum_backoff"}
    (dead_letter,) = push["dead_letter_policy"]
    assert dead_letter["dead_letter_topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert dead_letter["max_delivery_attempts"] == "${var.max_delivery_attempts}"


def test_ack_deadline_and_service_write_deadline_come_from_one_variable() -> None:
    push = _resources("google_pubsub_subscription")["push"]
    assert push["ack_deadline_seconds"] == "${local.ack_deadline_seconds}"
    assert "var.write_deadline_seconds" in _locals(MODULE)["ack_deadline_seconds"]
    assert "max(10," in _locals(MODULE)["ack_deadline_seconds"]
    (module,) = [block["system"] for block in _root("module") if "system" in block]
    assert module["write_deadline_seconds"] == "${var.write_deadline_seconds}"
    env = _locals(TERRAFORM)["service_env"]
    assert "RECORDLINE_WRITE_DEADLINE_SECONDS = tostring(var.write_deadline_seconds)" in env


def test_a_followers_request_ends_by_the_service_before_cloud_run_cuts_it() -> None:
    from app.query.follow import MAX_WAIT_SECONDS
    from app.settings import QuerySettings

    variables = _variables()
    timeout = variables["request_timeout_seconds"]["default"]
    stream = variables["stream_seconds"]["default"]
    assert stream == QuerySettings().stream_seconds
    assert timeout >= max(stream, MAX_WAIT_SECONDS) + 10
    env = _locals(TERRAFORM)["service_env"]
    assert "RECORDLINE_STREAM_SECONDS = tostring(var.stream_seconds)" in env
    (template,) = _resources("google_cloud_run_v2_service")["ingest"]["template"]
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
        for body in _resources(rtype, MODULE).values()
        if body["member"] == agent
    }
    assert grants == {
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),
        ("google_pubsub_subscription_iam_member", "roles/pubsub.subscriber"),
        ("google_bigquery_table_iam_member", "roles/bigquery.dataEditor"),
        ("google_service_account_iam_member", "roles/iam.serviceAccountTokenCreator"),
    }
    # Signing pushes as the system's own push account: granted on that account alone.
    mints = _resources("google_service_account_iam_member", MODULE)["pubsub_mints_push_token"]
    assert mints["service_account_id"] == "${google_service_account.push.name}"


# --- the cell's ingest service ------------------------------------------------------


def _container() -> dict[str, Any]:
    service = _resources("google_cloud_run_v2_service")["ingest"]
    (template,) = service["template"]
    (container,) = template["containers"]
    return container


def test_the_cells_service_reads_its_systems_from_one_file() -> None:
    env = re.sub(r"\s+", " ", _locals(TERRAFORM)["service_env"])
    for setting in (
        "RECORDLINE_CELL = local.cell",
        "RECORDLINE_SYSTEMS = local.systems_setting",
        "RECORDLINE_CELL_MAX_SYSTEMS = tostring(var.cell_max_systems)",
        "RECORDLINE_WRITE_DEADLINE_SECONDS",
        "RECORDLINE_READ_AUDIENCE",
        "RECORDLINE_SLO_READ_LATENCY_SECONDS = tostring(var.read_latency_threshold_seconds)",
        "RECORDLINE_SLO_FRESHNESS_SECONDS = tostring(var.freshness_threshold_seconds)",
        'RECORDLINE_HOST = "0.0.0.0"',
        'RECORDLINE_LOG_FORMAT = "json"',
        'OTEL_TRACES_EXPORTER = "gcp_trace"',
        'OTEL_METRICS_EXPORTER = "gcp_monitoring"',
        # Sampled: every push starts a trace (infra/fleet_cost.py prices the spans).
        'OTEL_TRACES_SAMPLER = "parentbased_traceidratio"',
        "OTEL_TRACES_SAMPLER_ARG = tostring(local.trace_sample_ratio)",
    ):
        assert setting in env, setting
    # Nothing per system is a variable of the service: each is in the file.
    for per_system in (
        "RECORDLINE_STORE",
        "RECORDLINE_SERVING",
        "RECORDLINE_PUSH_AUDIENCE",
        "RECORDLINE_PUSH_SERVICE_ACCOUNTS",
        "RECORDLINE_READ_PRINCIPALS",
        "RECORDLINE_OPERATOR_PRINCIPALS",
        "RECORDLINE_SYSTEM ",
    ):
        assert per_system not in env + " ", per_system
    assert _locals(TERRAFORM)["systems_setting"] == "@${local.systems_directory}/systems.json"
    mount, throttles_mount = _container()["volume_mounts"]
    assert mount == {"name": "systems", "mount_path": "${local.systems_directory}"}
    volume, throttles = _resources("google_cloud_run_v2_service")["ingest"]["template"][0][
        "volumes"
    ]
    (secret,) = volume["secret"]
    assert secret["secret"] == "${google_secret_manager_secret.systems.secret_id}"
    # The version the plan wrote, so that a new system makes a new revision that reads it.
    assert secret["items"] == [
        {
            "version": "${google_secret_manager_secret_version.systems.version}",
            "path": "systems.json",
        }
    ]
    (token,) = [e for e in _container()["env"] if e["name"] == "RECORDLINE_PAGE_TOKEN_SECRET"]
    (source,) = token["value_source"]
    assert source["secret_key_ref"][0]["secret"] == (
        "${google_secret_manager_secret.page_token.secret_id}"
    )
    # The throttles on-call sets: the latest version, read again by every instance, so a
    # throttle holds without a revision (docs/cells.md#throttles).
    assert 'RECORDLINE_THROTTLES = "${local.throttles_directory}/throttles.json"' in env
    assert throttles_mount == {"name": "throttles", "mount_path": "${local.throttles_directory}"}
    assert throttles["name"] == "throttles"
    (secret,) = throttles["secret"]
    assert secret["secret"] == "${google_secret_manager_secret.throttles.secret_id}"
    assert secret["items"] == [{"version": "latest", "path": "throttles.json"}]
    grants = _resources("google_secret_manager_secret_iam_member")["throttles"]["for_each"]
    assert {(g["role"], g["member"]) for g in grants.values()} == {
        ("roles/secretmanager.secretAccessor", "${google_service_account.runtime.member}"),
        ("roles/secretmanager.secretAccessor", "${local.operator_member}"),
        ("roles/secretmanager.secretVersionAdder", "${local.operator_member}"),
        ("roles/secretmanager.viewer", "${local.operator_member}"),
    }


@pytest.mark.slow
def test_billing_follows_the_cells_declared_rate_and_probes_health() -> None:
    container = _container()
    (resources,) = container["resources"]
    assert resources["cpu_idle"] == "${!local.instance_based}"
    (scaling,) = _resources("google_cloud_run_v2_service")["ingest"]["template"][0]["scaling"]
    assert scaling["min_instance_count"] == "${local.ingest_min_instances}"
    assert _variables()["min_instances"]["default"] == 0
    assert _variables()["billing_break_even_rate"]["default"] == 6.6
    assert container["ports"] == [{"container_port": 8080}]
    assert container["startup_probe"][0]["http_get"] == [{"path": "/readyz"}]
    assert container["liveness_probe"][0]["http_get"] == [{"path": "/healthz"}]

    def billing(rates: list[float], minimum: int = 0) -> tuple[bool, int]:
        found = _evaluate(
            "[local.instance_based, local.ingest_min_instances]",
            (
                ("rates", json.dumps({f"s{i}": r for i, r in enumerate(rates)})),
                ("billing_break_even_rate", "6.6"),
                ("min_instances", str(minimum)),
            ),
            lines=(
                _expression_line("cell_rate"),
                _expression_line("instance_based"),
                _expression_line("ingest_min_instances"),
            ),
        )
        return bool(found[0]), int(found[1])

    # A cell whose systems declare the break-even or more is billed instance-based, with
    # an instance at least; below it, by request, as few as min_instances.
    assert billing([10.0]) == (True, 1)
    assert billing([3.0, 3.0]) == (False, 0)
    assert billing([3.0, 3.0], minimum=2) == (False, 2)
    assert billing([3.3, 3.3]) == (True, 1)  # at the break-even
    assert billing([3.0, 3.0, 0.7]) == (True, 1)
    assert billing([1.0] * 100) == (True, 1)
    assert billing([6.5]) == (False, 0)


def _expression_line(name: str) -> tuple[str, str]:
    """A local of the cell root as a (name, expression) binding, with `var.` read as
    `local.` (the test binds both)."""
    return name, re.sub(r"\bvar\.", "local.", _expression(_locals(TERRAFORM)[name]))


def test_the_cells_identity_and_who_may_call_it() -> None:
    service = _resources("google_cloud_run_v2_service")["ingest"]
    assert service["name"] == "${local.cell}"
    # Off only with read passes (cdn.tf), where the service verifies every token itself.
    assert service["invoker_iam_disabled"] == "${local.cdn_passes}"
    assert service["custom_audiences"] == "${local.custom_audiences}"
    assert service["template"][0]["service_account"] == "${google_service_account.runtime.email}"
    assert _resources("google_service_account", TERRAFORM)["runtime"]["account_id"] == (
        "${local.cell}-run"
    )
    # Each system's push account invokes the cell (the module's grant); the readers and
    # operators each once, however many systems name them, and the accounts that read.
    push = _resources("google_cloud_run_v2_service_iam_member", MODULE)["push_invoker"]
    assert (push["name"], push["role"], push["member"]) == (
        "${var.cell.ingest}",
        "roles/run.invoker",
        "${google_service_account.push.member}",
    )
    invokers = _resources("google_cloud_run_v2_service_iam_member", TERRAFORM)["invokers"]
    assert invokers["role"] == "roles/run.invoker"
    assert invokers["for_each"] == "${local.ingest_invokers}"
    developers = _resources("google_cloud_run_v2_service_iam_member", TERRAFORM)["developers"]
    assert developers["role"] == "roles/run.developer"


def test_the_cells_limits_are_checked_at_plan_time() -> None:
    service = _resources("google_cloud_run_v2_service")["ingest"]
    (lifecycle,) = service["lifecycle"]
    conditions = " ".join(c["condition"] for c in lifecycle["precondition"])
    assert "local.custom_audience_max" in conditions
    assert "local.policy_principals" in conditions
    version = _resources("google_secret_manager_secret_version")["systems"]
    (check,) = version["lifecycle"][0]["precondition"]
    assert "local.secret_bytes" in check["condition"]
    assert _locals(TERRAFORM)["secret_bytes"] == 65536
    assert _locals(TERRAFORM)["custom_audience_max"] == 32768
    assert _locals(TERRAFORM)["policy_principals"] == 1500


# --- IAM ------------------------------------------------------------------------


def test_no_public_principals_anywhere() -> None:
    assert not re.search(r"\ball(Authenticated)?Users\b", _text())


def test_the_cells_accounts_hold_each_systems_data_through_its_own_grants() -> None:
    dataset = _resources("google_bigquery_dataset_iam_member", MODULE)["runtime_writes_dataset"]
    assert dataset["role"] == "roles/bigquery.dataEditor"
    assert dataset["member"] == "${local.runtime_member}"
    assert _locals(MODULE)["runtime_member"] == "serviceAccount:${var.cell.runtime}"
    database = _resources("google_spanner_database_iam_member", MODULE)["runtime_uses_database"]
    assert database["role"] == "roles/spanner.databaseUser"
    # At the project: query jobs, spans and metrics, two accounts a cell (six members,
    # whatever its number of systems), no custom role bound to every system.
    cell_accounts = _resources("google_project_iam_member", TERRAFORM)["cell_accounts"]
    assert all(
        role in cell_accounts["for_each"]
        for role in (
            "roles/bigquery.jobUser",
            "roles/cloudtrace.agent",
            "roles/monitoring.metricWriter",
        )
    )
    assert "google_project_iam_member" not in json.dumps(_load(MODULE / "iam.tf"))
    assert 'resource "google_project_iam_binding"' not in _text()
    secret = _resources("google_secret_manager_secret_iam_member")["runtime_reads_page_token"]
    assert secret["role"] == "roles/secretmanager.secretAccessor"


def test_deployer_is_granted_on_resources_only() -> None:
    deployer = "${google_service_account.deployer.member}"
    project_grants = [
        b
        for name, b in _resources("google_project_iam_member", ENVIRONMENT).items()
        if b["member"] == deployer
    ]
    # It reads the metrics its export gate watches and lists the revisions it keeps for a
    # rollback (Cloud Run checks listing on the project), and changes nothing there.
    assert [b["role"] for b in project_grants] == ["roles/monitoring.viewer", "roles/run.viewer"]
    registry = _resources("google_artifact_registry_repository_iam_member", ENVIRONMENT)
    assert registry["deployer_pushes_images"]["role"] == "roles/artifactregistry.writer"
    assert "local.deployer_member" in json.dumps(
        _resources("google_cloud_run_v2_service_iam_member", TERRAFORM)["developers"]
    )
    acts_as = _resources("google_service_account_iam_member", TERRAFORM)["acts_as_runtime"]
    assert acts_as["role"] == "roles/iam.serviceAccountUser"
    assert acts_as["service_account_id"] == "${google_service_account.runtime.name}"
    assert "local.deployer_member" in json.dumps(acts_as["for_each"])


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
        if not t.startswith("google_") or t in _all_resources(TERRAFORM)
    } | {f"module.{m}" for m in re.findall(r"\bmodule\.([a-z_]+)", text)}


@cache
def _all_resources(directory: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """A root's resources and its system module's (the cell's: both read by _waits_for)."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    paths = [*sorted(directory.glob("*.tf"))]
    if directory == TERRAFORM:
        paths += sorted(MODULE.glob("*.tf"))
    for path in paths:
        for block in _load(path).get("resource", []):
            for kind, named in block.items():
                found.setdefault(kind, {}).update(named)
    return found


@cache
def _module_waits() -> set[str]:
    """What every resource of the system module is created after: the module block's
    depends_on, and the root resources its inputs refer to."""
    (module,) = [block["system"] for block in _root("module") if "system" in block]
    return _waits_for_many(_references({k: v for k, v in module.items() if k != "source"}))


def _waits_for_many(start: set[str], directory: Path = TERRAFORM) -> set[str]:
    seen = set(start)
    todo = list(start)
    while todo:
        address = todo.pop()
        if address.startswith("module."):
            continue
        rtype, name = address.split(".", 1)
        body = _all_resources(directory).get(rtype, {}).get(name)
        if body is None:
            continue
        for ref in _references(body) - seen:
            seen.add(ref)
            todo.append(ref)
    return seen


def _waits_for(address: str, directory: Path = TERRAFORM) -> set[str]:
    """Every resource `address` is created after, directly or through others."""
    start = {address}
    if directory == TERRAFORM and _module_resource_types(address):
        start |= _module_waits()
    return _waits_for_many(start, directory) - {address}


def _module_resource_types(address: str) -> set[str]:
    """The resource's type when `address` is declared in the system module, else nothing."""
    rtype, name = address.split(".", 1)
    for path in sorted(MODULE.glob("*.tf")):
        for block in _load(path).get("resource", []):
            if name in block.get(rtype, {}):
                return {rtype}
    return set()


@cache
def _evaluate(
    expression: str,
    values: tuple[tuple[str, str], ...] = (),
    lines: tuple[tuple[str, str], ...] = (),
) -> Any:
    """`expression` evaluated by `terraform console` (no provider needed), with `local.x`
    bound to each given HCL value, and to each given expression (`lines`)."""
    require_terraform()
    with tempfile.TemporaryDirectory() as work:
        bound = "\n".join(f"  {name} = {value}" for name, value in (*values, *lines))
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
    r'workload\.googleapis\.com/recordline\.([a-z_.]+)|(?:metric_types|types|cell_metric|systems_metric|exported_metric|written_metric|fleet_metric)\["([a-z_.]+)"\]'
)


def test_every_workload_metric_named_has_a_descriptor() -> None:
    named = {a or b for a, b in WORKLOAD.findall(_text())}
    assert named >= {"ingest.lag", "slo.events", "canary.age", "export.lag", "messages"}
    declared = _locals(METRICS)["workload_metrics"]
    assert named - declared.keys() == set()
    descriptor = _resources("google_monitoring_metric_descriptor")["workload"]
    assert descriptor["for_each"] == "${var.create ? local.workload_metrics : {}}"
    assert descriptor["type"] == "workload.googleapis.com/recordline.${each.key}"
    # The environment makes its project's; a cell makes them only in a project of its own.
    (environment,) = [b["metrics"] for b in _root("module", ENVIRONMENT) if "metrics" in b]
    assert environment["create"] is True
    (cell,) = [b["metrics"] for b in _root("module") if "metrics" in b]
    assert cell["create"] == "${local.own_project}"


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
    export.exported(
        "records",
        [
            Record(message_id=f"m-{n}", publish_time=n, ingest_time=n + 1_000, id=f"r-{n}")
            for n in range(3)
        ],
    )
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


# The cells' SLO counter: a CUMULATIVE INT64 counter of unit {event}, labels
# `slo` and `good`, which the service writes per system once it runs in cells.
SLO_EVENTS = {"kind": "CUMULATIVE", "value": "INT64", "unit": "{event}", "labels": ["good", "slo"]}


def test_descriptors_are_what_the_exporter_writes() -> None:
    declared = {
        name: {
            "kind": d["kind"],
            "value": d["value"],
            "unit": d["unit"],
            "labels": sorted(d["labels"]),
        }
        for name, d in _locals(METRICS)["workload_metrics"].items()
    }
    exported = _exported_descriptors()
    for name, descriptor in exported.items():
        assert declared.get(name) == descriptor, name
    # The SLO counter is counted by pushes and reads, which this does not make: a cell's
    # systems write it, as declared (tests/infra/test_signals.py). Each SLO is a ratio of
    # it (slos.tf).
    assert set(declared) - set(exported) <= {"slo.events"}
    assert declared["slo.events"] == SLO_EVENTS


def test_each_systems_slos_are_ratios_counted_once_and_wait_for_the_descriptors() -> None:
    slo = _resources("google_monitoring_slo", MODULE)["system"]
    assert slo["for_each"] == "${local.slos}"
    assert slo["service"] == "${var.cell.slo_service}"
    assert slo["slo_id"] == "${var.service_name}-${each.key}"
    (sli,) = slo["request_based_sli"]
    (ratio,) = sli["good_total_ratio"]
    assert ratio["total_service_filter"] == "${each.value.total}"
    assert ratio["good_service_filter"] == "${each.value.good}"
    slos = _locals(MODULE)["slos"]
    # A system's two: its pushes, as Pub/Sub answered them (a 4xx is an answer), and
    # its messages' freshness, from its SLO counter under its own namespace. Its reads'
    # are its cell's.
    assert set(slos) == {"availability", "freshness"}
    pushes = _locals(MODULE)["pushes"]
    assert 'metric.type="pubsub.googleapis.com/subscription/push_request_count"' in pushes
    assert '"subscription_id"="${google_pubsub_subscription.push.name}"' in pushes
    assert slos["availability"]["total"] == "${local.pushes}"
    assert slos["availability"]["good"] == (
        '${local.pushes} metric.label."response_class"=one_of("ack", "remote_server_4xx")'
    )
    assert slos["freshness"]["total"] == '${local.slo_events} metric.label."slo"="freshness"'
    assert slos["freshness"]["good"] == (
        '${local.slo_events} metric.label."slo"="freshness" metric.label."good"="true"'
    )
    assert 'metric_types["slo.events"]' in _locals(MODULE)["slo_events"]
    assert 'resource.label."namespace"="${var.service_name}"' in _locals(MODULE)["slo_events"]
    # The cell's reads' two, under the cell's namespace, in the same service.
    cell = _resources("google_monitoring_slo", TERRAFORM)["cell"]
    assert cell["service"] == "${google_monitoring_custom_service.cell.service_id}"
    (sli,) = cell["request_based_sli"]
    (ratio,) = sli["good_total_ratio"]
    assert ratio["total_service_filter"].startswith("${local.cell_slo_events} ")
    assert 'metric.label."good"="true"' in ratio["good_service_filter"]
    found = _locals(TERRAFORM)
    assert {v["slo"] for v in found["cell_slos_by_key"].values()} == {
        "availability",
        "read_latency",
    }
    assert 'resource.label."namespace"="${local.cell}"' in found["cell_slo_events"]
    # The cell's service holds them, made after the descriptors; the systems' modules too.
    service = _resources("google_monitoring_custom_service", TERRAFORM)["cell"]
    assert service["depends_on"] == ["${module.metrics}"]
    (module,) = [block["system"] for block in _root("module") if "system" in block]
    assert "${module.metrics}" in module["depends_on"]
    assert module["metric_types"] == "${module.metrics.types}"
    # The PromQL policies (pages and tickets) read the descriptors' types too.
    for name in ("fleet_symptoms", "ticket_symptoms", "instance_symptoms"):
        (symptoms,) = [b[name] for b in _root("module", ENVIRONMENT) if name in b]
        assert symptoms["metric_types"] == "${module.metrics.types}", name


def _declared(rtype: str, directory: Path) -> list[str]:
    """The names of a root's resources of one type, read from its text: parametrizing by
    them costs the suite's collection no parse (the test itself reads the parsed blocks)."""
    found = re.findall(rf'^resource\s+"{rtype}"\s+"([\w-]+)"', _text(directory), re.MULTILINE)
    return sorted(found)


@pytest.mark.parametrize("directory", [TERRAFORM, ENVIRONMENT], ids=["cell", "environment"])
def test_resources_read_from_the_text_are_those_parsed(directory: Path) -> None:
    types = {rtype for block in _root("resource", directory) for rtype in block}
    assert types
    for rtype in types:
        assert _declared(rtype, directory) == sorted(_resources(rtype, directory)), rtype


@pytest.mark.parametrize(
    ("directory", "address"),
    [
        *(
            (TERRAFORM, f"google_service_account.{n}")
            for n in _declared("google_service_account", TERRAFORM)
        ),
        *(
            (TERRAFORM, f"google_project_iam_custom_role.{n}")
            for n in _declared("google_project_iam_custom_role", TERRAFORM)
        ),
        *(
            (ENVIRONMENT, f"google_service_account.{n}")
            for n in _declared("google_service_account", ENVIRONMENT)
        ),
        *(
            (ENVIRONMENT, f"google_project_iam_member.{n}")
            for n in _declared("google_project_iam_member", ENVIRONMENT)
        ),
    ],
)
def test_accounts_and_project_grants_wait_for_the_enabled_apis(
    directory: Path, address: str
) -> None:
    assert "google_project_service.enabled" in _waits_for(address, directory)


AGENT_LOCALS = ("pubsub_service_agent", "scheduler_service_agent")


def test_service_agents_are_created_before_any_grant_names_them() -> None:
    # No agent's e-mail is spelled out (service-NUMBER@gcp-sa-...): Google creates some
    # agents lazily, so each is created here and read from what creates it.
    assert "gcp-sa-" not in json.dumps(_config())
    agents = _resources("google_project_service_identity")["agents"]
    assert agents["provider"] == "google-beta"
    assert agents["for_each"] == "${local.service_agent_apis}"
    assert agents["depends_on"] == ["${google_project_service.enabled}"]
    assert _locals(TERRAFORM)["service_agent_apis"] == {
        "pubsub": "pubsub.googleapis.com",
        "scheduler": "cloudscheduler.googleapis.com",
        "monitoring": "monitoring.googleapis.com",
    }
    pause = _all_resources(TERRAFORM)["time_sleep"]["service_agents"]
    assert "google_project_service_identity.agents" in json.dumps(pause["triggers"])
    assert int(pause["create_duration"].removesuffix("s")) >= 60
    # The system module reads the e-mails from the pause, so what names one waits for it.
    (module,) = [block["system"] for block in _root("module") if "system" in block]
    assert module["service_agents"] == "${time_sleep.service_agents.triggers}"
    for name, key in zip(AGENT_LOCALS, ("pubsub", "scheduler"), strict=True):
        assert f'var.service_agents["{key}"]' in _locals(MODULE)[name], name
    # The uptime check's agent is an invoker of the cell (cell.tf).
    assert (
        'time_sleep.service_agents.triggers["monitoring"]' in _locals(TERRAFORM)["ingest_invokers"]
    )
    grants = [
        f"{rtype}.{name}"
        for rtype, named in _all_resources(TERRAFORM).items()
        for name, body in named.items()
        if any(f"local.{agent}" in str(body.get("member", "")) for agent in AGENT_LOCALS)
    ]
    # Pub/Sub's four (dead letters, push tokens, the BigQuery subscription) and the
    # Scheduler's publisher grant.
    assert len(grants) == 5, grants
    for grant in grants:
        assert "time_sleep.service_agents" in _waits_for(grant), grant


@pytest.mark.parametrize(
    ("address", "grant"),
    [
        (
            "google_pubsub_subscription.dead_letter_to_bigquery",
            "google_bigquery_table_iam_member.pubsub_writes_dead_letters",
        ),
        (
            "google_cloud_run_v2_service.ingest",
            "google_secret_manager_secret_iam_member.runtime_reads_page_token",
        ),
        (
            "google_cloud_run_v2_service.ingest",
            "google_secret_manager_secret_iam_member.reads_systems",
        ),
    ],
)
def test_resources_checked_against_a_grant_wait_for_it_to_propagate(
    address: str, grant: str
) -> None:
    pauses = [
        (name, body)
        for name, body in _all_resources(TERRAFORM).get("time_sleep", {}).items()
        if f"time_sleep.{name}" in _waits_for(address) and grant in _waits_for(f"time_sleep.{name}")
    ]
    assert pauses, f"{address} does not wait after {grant}"
    for _, body in pauses:
        assert int(body["create_duration"].removesuffix("s")) >= 60


def _validations_hold(variable: str, values: dict[str, str], directory: Path = TERRAFORM) -> bool:
    """Whether every validation of `variable` passes for the given HCL values."""
    results = []
    for check in _variables(directory)[variable]["validation"]:
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
    assert _validations_hold("notification_channels", values, ENVIRONMENT) is accepted


@pytest.mark.parametrize(
    ("units", "accepted"),
    [
        ("{}", True),
        ('{ "c1-serving" = 900 }', True),
        ('{ "c1-serving" = 2000 }', True),
        ('{ "c1-serving" = 1800 }', False),
        ('{ "c1-serving" = 150 }', False),
    ],
)
def test_an_instances_own_units_are_sizes_spanner_takes(units: str, accepted: bool) -> None:
    # Doubling 900 is 1,800, which Spanner refuses: 2,000 is the size that holds it.
    for variable in ("spanner_instance_units", "spanner_live_units"):
        assert _validations_hold(variable, {variable: units}) is accepted, variable


def test_dashboard_tiles_never_write_a_zero_position() -> None:
    dashboard = _resources("google_monitoring_dashboard", TERRAFORM)["cell"]["dashboard_json"]
    assert "xPos" not in dashboard
    assert "yPos" not in dashboard
    assert "local.cell_tile_positions[i]" in dashboard
    assert "for i, chart in local.cell_charts" in dashboard
    for charts in (10, 14):  # without the serving tier's charts, and with them
        positions = _evaluate(
            _expression(_locals(TERRAFORM)["cell_tile_positions"]).replace(
                "length(local.cell_charts)", str(charts)
            )
        )
        assert len(positions) == charts
        assert all(at != 0 for tile in positions for at in tile.values())
        cells = {(tile.get("xPos", 0), tile.get("yPos", 0)) for tile in positions}
        assert len(cells) == charts  # no two tiles on one spot


def test_the_cells_dashboard_keeps_to_its_own_series() -> None:
    charts = json.dumps(_locals(TERRAFORM)["cell_charts"])
    assert "BigQuery bytes billed by route" in charts
    # The cell's distributions under its name; its systems' series by who wrote them.
    cell = _locals(TERRAFORM)
    assert 'resource.label.\\"namespace\\"=\\"${local.cell}\\"' in cell["cell_metric"]
    assert 'resource.label.\\"job\\"=\\"${local.cell}\\"' in cell["systems_metric"]
    assert 'resource.label.\\"job\\"=\\"${local.cell}-exporter\\"' in cell["exported_metric"]


@pytest.mark.parametrize(
    ("rtype", "name", "fields"),
    [
        (
            "google_cloud_run_v2_service",
            "ingest",
            {
                "${template[0].containers[0].image}",
                "${template[0].annotations}",
                "${template[0].revision}",
                "${traffic}",
            },
        ),
        (
            "google_cloud_run_v2_worker_pool",
            "exporter",
            {"${template[0].containers[0].image}", "${template[0].revision}", "${instance_splits}"},
        ),
        ("google_cloud_run_v2_job", "export", {"${template[0].template[0].containers[0].image}"}),
        ("google_cloud_run_v2_job", "ops", {"${template[0].template[0].containers[0].image}"}),
    ],
)
def test_deploy_owned_fields_are_ignored(rtype: str, name: str, fields: set[str]) -> None:
    (lifecycle,) = _resources(rtype)[name]["lifecycle"]
    ignored = {i.removeprefix("${").removesuffix("}") for i in lifecycle["ignore_changes"]}
    assert {f.removeprefix("${").removesuffix("}") for f in fields} <= ignored
    assert {"client", "client_version"} <= ignored


def test_audiences_are_full_urls_of_each_cell_and_environment() -> None:
    assert _variables()["read_audience"]["default"] == ""  # no value shared by environments
    assert "push_audience" not in _variables()  # each system's own
    cell = _locals(TERRAFORM)
    assert cell["cell_url"] == "https://${local.cell}-${local.project_number}.${var.region}.run.app"
    assert (
        cell["read_audience"]
        == '${var.read_audience != "" ? var.read_audience : "${local.cell_url}/v1"}'
    )
    assert "${local.cell_url}/systems/${name}/pubsub/push" in cell["push_audiences"]
    assert cell["project_number"] == "${data.google_project.this.number}"
    for environment in ENVIRONMENTS:
        values = _cell_file(environment)
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
    statement = _locals(MODULE)["search_indexes"][index]
    assert statement.startswith(f"CREATE SEARCH INDEX IF NOT EXISTS {index} ON ")
    assert f"google_bigquery_table.{table}.table_id}}`{columns}" in statement
    assert statement.endswith("OPTIONS (analyzer = 'NO_OP_ANALYZER')")
    job = _resources("google_bigquery_job")["search_index"]
    assert job["for_each"] == "${local.search_indexes}"
    assert "sha256(each.value)" in job["job_id"]  # a new statement is a new job
    (query,) = job["query"]
    assert query["query"] == "${each.value}"
    assert (query["create_disposition"], query["write_disposition"]) == ("", "")


@pytest.mark.slow
def test_query_cost_cap_and_retention_reach_the_service() -> None:
    env = re.sub(r"\s+", " ", _locals(TERRAFORM)["service_env"])
    assert "RECORDLINE_QUERY_MAX_BYTES_BILLED = tostring(var.query_max_bytes_billed)" in env
    assert _variables()["query_max_bytes_billed"]["default"] == 2 * 1024**3
    assert "local.retention_env" in env
    assert _evaluate(
        re.sub(r"\bvar\.", "local.", _expression(_locals(TERRAFORM)["retention_env"])),
        (("retention_days", "30"),),
    ) == {"RECORDLINE_RETENTION_DAYS": "30"}
    assert (
        _evaluate(
            re.sub(r"\bvar\.", "local.", _expression(_locals(TERRAFORM)["retention_env"])),
            (("retention_days", "0"),),
        )
        == {}
    )
    expiry = re.sub(r"\bvar\.", "local.", _expression(_locals(MODULE)["partition_expiration_ms"]))
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
    assert _variables(ENVIRONMENT)["query_bytes_billed_daily_budget"]["default"] == 1024**4

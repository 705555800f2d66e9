"""The cell's exporter pool in Terraform and in the runbook: a worker pool of two
instances or more exporting every serving system of the cell with what the cell's
service has, granted only those systems' databases and tables; its canary systems'
file beside the full one; and on-call's way back, as the operator account.

Expressions are evaluated by `terraform console` where their value matters; the
runbook's commands run against the fake cloud (tests/infra/fake_cloud.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from app.settings import Settings
from tests.infra.cell_world import (
    CANARY_SETTING,
    DEPLOYER,
    EARLIER,
    JOB_COMMAND,
    OPERATOR,
    PROJECT,
    REGION,
    REPOSITORY,
    SYSTEMS_SETTING,
    world,
)
from tests.infra.test_fleet import _cell, _root_console, _root_console_run
from tests.infra.test_terraform import (
    MODULE,
    TERRAFORM,
    _load,
    _locals,
    _resources,
    _template,
    _variables,
)
from tests.infra.workflow_runner import Cloud

SERVING = "{ recordline = { serving = true }, orders-eu = { serving = true }, quiet = {} }"
POOL = "recordline-exporter"


def _pool() -> dict[str, Any]:
    return _resources("google_cloud_run_v2_worker_pool")["exporter"]


# --- the worker pool -----------------------------------------------------------------------


def test_the_exporter_is_a_worker_pool_of_two_instances_or_more() -> None:
    pool = _pool()
    assert pool["for_each"] == "${local.exporter}"
    (scaling,) = pool["scaling"]
    assert scaling == {
        "scaling_mode": "MANUAL",
        "manual_instance_count": "${var.exporter_instances}",
    }
    assert _variables()["exporter_instances"]["default"] == 2
    (template,) = pool["template"]
    assert template["service_account"] == "${google_service_account.exporter[each.key].email}"
    (container,) = template["containers"]
    assert container["dynamic"][0]["env"]["for_each"] == "${local.exporter_env}"
    # One instance is no failover: the plan refuses it.
    refused = _root_console_run("var.exporter_instances", "{}", (("exporter_instances", "1"),))
    assert "exporter_instances must be at least 2" in refused.stderr


def test_it_exists_once_a_system_of_the_cell_has_serving() -> None:
    assert _root_console("local.exporter", "{ recordline = {} }") == {}
    assert _root_console("local.exporter", SERVING) == {"recordline": POOL}


def test_it_reads_the_cells_systems_file_and_its_canary_systems_file_beside_it() -> None:
    env = _root_console("local.exporter_env", SERVING)
    assert env["RECORDLINE_SYSTEMS"] == SYSTEMS_SETTING
    assert env["OTEL_SERVICE_NAME"] == POOL  # its systems' metrics under its own job
    assert env["RECORDLINE_CELL"] == "recordline"
    volumes = {v["name"]: v for v in _pool()["template"][0]["volumes"]}
    assert volumes["systems"]["secret"][0]["secret"] == (
        "${google_secret_manager_secret.systems.secret_id}"
    )
    assert volumes["canary"]["secret"][0]["secret"] == (
        "${google_secret_manager_secret.canary_systems[each.key].secret_id}"
    )
    mounts = {
        m["name"]: m["mount_path"] for m in _pool()["template"][0]["containers"][0]["volume_mounts"]
    }
    assert mounts == {
        "systems": "${local.systems_directory}",
        "canary": "${local.canary_directory}",
        "throttles": "${local.throttles_directory}",
    }
    directories = _root_console("[local.systems_directory, local.canary_directory]", SERVING)
    assert [f"@{d}/systems.json" for d in directories] == [SYSTEMS_SETTING, CANARY_SETTING]


def test_it_reads_the_throttles_on_call_sets_as_the_ingest_service_does() -> None:
    # The file every ingest instance reads (cell.tf), at the same place and at its latest
    # version: a system's export is slowed with no deploy (docs/cells.md#throttles). The
    # export job's commands pace nothing: it mounts no file on-call writes (below).
    env = _root_console("local.exporter_env", SERVING)
    service = _root_console("local.service_env", SERVING)
    assert env["RECORDLINE_THROTTLES"] == service["RECORDLINE_THROTTLES"]
    assert env["RECORDLINE_THROTTLES"] == "/etc/recordline/throttles/throttles.json"
    (ingest,) = [
        v
        for v in _resources("google_cloud_run_v2_service")["ingest"]["template"][0]["volumes"]
        if v["name"] == "throttles"
    ]
    template = _pool()["template"][0]
    (volume,) = [v for v in template["volumes"] if v["name"] == "throttles"]
    assert volume == ingest
    (secret,) = volume["secret"]
    assert secret["items"] == [{"version": "latest", "path": "throttles.json"}]
    (container,) = template["containers"]
    assert {"name": "throttles", "mount_path": "${local.throttles_directory}"} in container[
        "volume_mounts"
    ]
    # Read as the exporter's own account, granted before the pool or the job exists.
    grant = _resources("google_secret_manager_secret_iam_member")["exporter_reads_throttles"]
    assert grant["for_each"] == "${local.exporter}"
    assert grant["secret_id"] == "${google_secret_manager_secret.throttles.secret_id}"
    assert grant["role"] == "roles/secretmanager.secretAccessor"
    assert grant["member"] == "${google_service_account.exporter[each.key].member}"
    assert (
        "${google_secret_manager_secret_iam_member.exporter_reads_throttles}"
        in (_pool()["depends_on"])
    )


def test_no_job_on_call_runs_mounts_a_file_on_call_writes() -> None:
    # On-call runs a cell's jobs with overrides (run.jobs.runWithOverrides), which set
    # their environment: the dynamic loader reads LD_PRELOAD before Python or job.py
    # runs, and loads any file it names. A file in the job whose bytes on-call writes
    # (a secret the operator account adds versions to: the throttles) would run as the
    # job's account, the export job's the exporter's.
    writes = {
        grant["secret_id"]
        for grant in _resources("google_secret_manager_secret_iam_member").values()
        if "roles/secretmanager.secretVersionAdder" in json.dumps(grant)
        and "local.operator_member" in json.dumps(grant)
    }
    assert writes == {"${google_secret_manager_secret.throttles.secret_id}"}
    for name, job in _resources("google_cloud_run_v2_job").items():
        (template,) = job["template"][0]["template"]
        secrets = [v["secret"][0]["secret"] for v in template.get("volumes", []) if "secret" in v]
        assert not writes & set(secrets), name
    assert "RECORDLINE_THROTTLES" not in _root_console("local.export_job_env", SERVING)
    assert _root_console("local.export_job_env", SERVING) == {
        name: value
        for name, value in _root_console("local.exporter_env", SERVING).items()
        if name != "RECORDLINE_THROTTLES"
    }


def test_the_canary_systems_are_serving_systems_of_the_cell_with_their_own_entries() -> None:
    found = _root_console(
        "{ canary = local.canary_systems, json = local.canary_json, file = local.systems_file }",
        SERVING,
    )
    # The first two serving systems by name, unless the cell names its own.
    assert found["canary"] == ["orders-eu", "recordline"]
    # Each with its entry of the full file, as the service reads it.
    canary = json.loads(found["json"])
    assert canary == {name: found["file"][name] for name in found["canary"]}
    named = _root_console("local.canary_systems", SERVING, (("canary_systems", '["quiet"]'),))
    assert named == ["quiet"]


# Two serving systems first by name, one busier than them, one with a topic schema, and
# one whose records have typed columns (json_schema), which does not serve.
SHAPES = (
    "{ recordline = { serving = true }, b-two = { serving = true },"
    " busy = { serving = true, rate = 50 },"
    ' orders = { serving = true, schema = { file = "schemas/orders.avsc", type = "AVRO",'
    ' encoding = "BINARY" }, id_field = "order_id", time_field = "meta.created_at",'
    ' canary_file = "schemas/orders-canary.bin" },'
    ' shop = { json_schema = "schemas/orders.avsc" }, quiet = {} }'
)


def test_the_canary_systems_represent_every_shape_of_the_cell() -> None:
    from tests.infra.test_topic_schemas import FILES

    found = _root_console("local.canary_systems", SHAPES, files=FILES)
    # The first two serving systems, then the busiest (one of them already), the first
    # with a topic schema, the first with typed columns: each shape once.
    assert found == ["b-two", "busy", "orders", "shop"]
    # A named set must hold one of each shape the cell has, or the plan stops.
    (check,) = _resources("terraform_data", TERRAFORM).values()
    (condition,) = [
        p for p in check["lifecycle"][0]["precondition"] if "canary_shapes" in p["condition"]
    ]
    covers = (
        f"{{ ok = {condition['condition'][2:-1]}, said = {_template(condition['error_message'])} }}"
    )
    named = _root_console(covers, SHAPES, (("canary_systems", '["recordline", "shop"]'),), FILES)
    assert named["ok"] is False
    assert "busiest: one of busy" in named["said"]
    assert "schema: one of orders" in named["said"]
    assert "typed" not in named["said"]
    every = _root_console(
        covers, SHAPES, (("canary_systems", '["busy", "orders", "shop"]'),), FILES
    )
    assert every["ok"] is True


def test_a_hundred_systems_fit_the_secret_that_holds_their_file() -> None:
    names = ["recordline", *(f"system-{n:03d}-{'x' * 13}" for n in range(1, 100))]
    entries = [
        f'"{n}" = {{ serving = true{", spanner_instance = 2" if i >= 90 else ""} }}'
        for i, n in enumerate(names)
    ]
    found = _root_console(
        "{ bytes = local.systems_file_bytes, limit = local.secret_bytes,"
        " systems = length(local.systems_file) }",
        "{ " + ", ".join(entries) + " }",
        (("service_account_quota", "200"),),
    )
    assert found["systems"] == 100
    # Names of 24 characters, the longest: about 640 bytes a system, within 64 KiB.
    assert found["bytes"] <= found["limit"] == 65536, found
    version = _resources("google_secret_manager_secret_version")["systems"]
    (precondition,) = version["lifecycle"][0]["precondition"]
    assert precondition["condition"] == "${local.systems_file_bytes <= local.secret_bytes}"


# A schema of sixty fields, about 2.5 KB: where each system's entry held its schema's
# text, thirty such systems were more than the secret holding their file holds.
WIDE = json.dumps(
    {
        "type": "record",
        "name": "Wide",
        "fields": [
            {"name": f"field_{n:02d}_of_a_wide_record", "type": ["null", "string"]}
            for n in range(60)
        ],
    }
).encode()
TOO_WIDE = WIDE.replace(b'"fields": [', b'"doc": "' + b"x" * 65536 + b'", "fields": [')


def _schema_files(name: str, schema: bytes) -> tuple[tuple[str, bytes], ...]:
    """A schema file and its typed columns, as `dev.py schema typed` writes them."""
    typed = {
        "source_sha256": hashlib.sha256(schema).hexdigest(),
        "type": "AVRO",
        "column": {"name": "fields", "type": "RECORD", "mode": "NULLABLE", "fields": []},
    }
    return (
        (f"schemas/{name}", schema),
        (f"schemas/{name}.bigquery.json", json.dumps(typed).encode()),
    )


def _sized(systems: str, files: tuple[tuple[str, bytes], ...] = ()) -> dict[str, Any]:
    """The plan's checks of a cell's sizes, as it evaluates them: the systems' file's
    (`file`, what it says when it refuses), each value's (`values`), and their bytes."""
    (check,) = _resources("google_secret_manager_secret_version")["systems"]["lifecycle"][0][
        "precondition"
    ]
    (value,) = _resources("google_secret_manager_secret_version")["systems_values"]["lifecycle"][0][
        "precondition"
    ]
    each = value["condition"][2:-1].replace("each.key", "k")
    return dict(
        _root_console(
            f"{{ file = {check['condition'][2:-1]}, said = {_template(check['error_message'])},"
            " bytes = local.systems_file_bytes,"
            f" values = {{ for k in keys(local.systems_values) : k => {each} }},"
            " value_bytes = local.values_bytes }",
            systems,
            (("service_account_quota", "200"), ("cell", '"c01"')),
            files,
        )
    )


def _longest(count: int, entry: str = "") -> str:
    """`count` serving systems of the longest names, each with `entry` besides."""
    names = [f"system-{n:03d}-{'x' * 13}" for n in range(count)]
    return (
        "{ "
        + ", ".join(
            f'"{n}" = {{ serving = true{", spanner_instance = 2" if i >= 90 else ""}{entry} }}'
            for i, n in enumerate(names)
        )
        + " }"
    )


def test_a_cells_file_holds_its_systems_and_names_their_schemas() -> None:
    found = _sized(
        _longest(60, ', json_schema = "schemas/wide.avsc"'), _schema_files("wide.avsc", WIDE)
    )
    # Sixty schemas would be 150 KB in the file; each is a value of its own, named.
    assert 60 * len(WIDE) > 2 * 65536
    assert found["file"] is True
    assert found["bytes"] < 60 * 800, found["bytes"]
    assert found["values"] == {f"system-{n:03d}-{'x' * 13}.schema": True for n in range(60)}
    # Counted as the file's is, from base 64: up to two bytes over.
    assert all(len(WIDE) <= size <= len(WIDE) + 2 for size in found["value_bytes"].values())


def test_a_cell_whose_file_a_secret_cannot_hold_is_refused_at_plan_time_saying_why() -> None:
    # A hundred systems each with two readers and an operator of its own: about 690
    # bytes each, past the 64 KiB a secret holds, within cell_max_systems (100).
    entry = (
        ', readers = ["user:an-analyst-of-this-system@example.com",'
        ' "user:another-analyst-of-it@example.com"],'
        ' operators = ["user:the-owner-of-this-system@example.com"]'
    )
    found = _sized(_longest(100, entry))
    assert found["bytes"] > 65536, found["bytes"]
    assert found["file"] is False
    said = found["said"]
    assert f"would be {found['bytes']} bytes for its 100 systems, over the 65536" in said, said
    assert "move systems to another cell" in said
    # Fewer of them fit.
    assert _sized(_longest(90, entry))["file"] is True
    # A schema a secret's version cannot hold is refused by its own check, naming it.
    too_wide = _sized(
        _longest(2, ', json_schema = "schemas/huge.avsc"'), _schema_files("huge.avsc", TOO_WIDE)
    )
    assert too_wide["file"] is True
    assert too_wide["values"] == {f"system-{n:03d}-{'x' * 13}.schema": False for n in range(2)}


# --- least privilege -----------------------------------------------------------------------


def _grants_to(member: str) -> list[tuple[str, str, str]]:
    """(type, name, role) of every grant to `member`, root and module alike."""
    found = []
    for path in sorted(TERRAFORM.rglob("*.tf")):
        for block in _load(path).get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    if member in str(body.get("member", "")) + str(body.get("members", "")):
                        found.append((rtype, name, str(body.get("role"))))
    return sorted(found)


def test_the_exporter_may_use_each_serving_systems_database_and_tables_and_nothing_more() -> None:
    assert _grants_to("local.exporter_member") == [
        ("google_bigquery_table_iam_member", "exporter_writes_tables", "roles/bigquery.dataEditor"),
        ("google_pubsub_schema_iam_member", "exporter_reads_schema", "roles/pubsub.viewer"),
        (
            "google_spanner_database_iam_member",
            "exporter_uses_database",
            "roles/spanner.databaseUser",
        ),
    ]
    database = _resources("google_spanner_database_iam_member", MODULE)["exporter_uses_database"]
    assert database["database"] == "${each.value.name}"  # each system's own database
    assert "google_spanner_database.serving" in database["for_each"]
    tables = _resources("google_bigquery_table_iam_member", MODULE)["exporter_writes_tables"]
    named = set(re.findall(r"google_bigquery_table\.(\w+)", json.dumps(tables["for_each"])))
    assert named == {"records", "rejected", "export_watermarks"}  # not dead_letters
    # At the project, only query jobs, spans and metrics (project_iam.tf); and the
    # systems', canary and throttles' files.
    granted = _grants_to("google_service_account.exporter")
    assert [(t, n) for t, n, _ in granted] == [
        ("google_project_iam_member", "cell_accounts"),
        ("google_secret_manager_secret_iam_member", "exporter_reads_canary"),
        ("google_secret_manager_secret_iam_member", "exporter_reads_throttles"),
    ]
    roles = _root_console(
        '[for k, v in { for pair in setproduct(concat(["runtime"], length(local.exporter) > 0'
        ' ? ["exporter"] : []), ["roles/bigquery.jobUser", "roles/cloudtrace.agent",'
        ' "roles/monitoring.metricWriter"]) : "${pair[0]} ${pair[1]}" => pair } : k]',
        SERVING,
    )
    assert sorted(k for k in roles if k.startswith("exporter ")) == [
        "exporter roles/bigquery.jobUser",
        "exporter roles/cloudtrace.agent",
        "exporter roles/monitoring.metricWriter",
    ]
    # Who may deploy it and act as it: the deploy account, on-call's, the apply account.
    pools = _resources("google_cloud_run_v2_worker_pool_iam_member")
    assert {b["role"] for b in pools.values()} == {"roles/run.developer"}
    acts = _resources("google_service_account_iam_member")["acts_as_exporter"]
    assert acts["role"] == "roles/iam.serviceAccountUser"


# --- the cell's ingest scales with its own traffic -----------------------------------------


def test_the_ingest_service_runs_nothing_between_requests_and_exports_nothing() -> None:
    (template,) = _resources("google_cloud_run_v2_service")["ingest"]["template"]
    resources = template["containers"][0]["resources"][0]
    assert resources["cpu_idle"] == "${!local.instance_based}"
    # Nothing tells the service to export: RECORDLINE_EXPORT_IN_SERVICE is off unless set.
    assert "RECORDLINE_EXPORT_IN_SERVICE" not in "".join(
        p.read_text() for p in sorted(TERRAFORM.rglob("*.tf"))
    )
    assert Settings.load({}).store.export_in_service is False


# --- the export job runs what the pool runs ---------------------------------------------------


def test_the_export_job_runs_as_the_exporter_with_the_pools_settings() -> None:
    job = _resources("google_cloud_run_v2_job")["export"]
    (template,) = job["template"][0]["template"]
    assert template["service_account"] == "${google_service_account.exporter[each.key].email}"
    (container,) = template["containers"]
    # The pool's settings are its command's (infra/terraform/job.py), none its
    # environment's: an execution's overrides change only its arguments (the fake cloud
    # runs that command: tests/infra/test_runbook_commands.py overrides its environment).
    assert container["command"] == (
        "${concat(local.job_command, "
        '[for name, value in local.export_job_env : "${name}=${value}"], ["--"])}'
    )
    assert "env" not in container
    assert all("env" not in block for block in container["dynamic"])
    assert _locals()["job_command"] == [*JOB_COMMAND, '${file("${path.module}/job.py")}']
    # The image's Python by its path, where the Dockerfile puts the environment: an
    # override of PATH picks no other interpreter.
    dockerfile = (TERRAFORM.parents[1] / "Dockerfile").read_text()
    venv = JOB_COMMAND[0].removesuffix("/bin/python3")
    assert f"UV_PROJECT_ENVIRONMENT={venv}" in dockerfile
    assert f"COPY --from=builder {venv} {venv}" in dockerfile
    # The rollouts set its image to the pool's (deploy-cell.yml), as does the runbook's
    # rollback: Terraform leaves it alone.
    assert "${template[0].template[0].containers[0].image}" in job["lifecycle"][0]["ignore_changes"]
    workflow = (TERRAFORM.parents[1] / ".github/workflows/deploy-cell.yml").read_text()
    assert 'gcloud run jobs update "$job" "${scope[@]}" --image="$REPOSITORY@$DIGEST"' in workflow


# --- on-call's way back ------------------------------------------------------------------------


def test_only_the_deploy_account_moves_the_exporter_back(tmp_path: Path) -> None:
    # The rollback of the exporter pool (docs/operations.md#rolling-the-exporter-back):
    # every instance to the revision before, the export job to its image. A split is
    # what a deploy of any image as the exporter's account is, so neither on-call nor
    # the operator account may; the deploy account does it (rollback.yml), and needs
    # nothing else.
    state = world(
        {"recordline": ["recordline", "orders"]},
        deployed=EARLIER,
        exporter=EARLIER,
        serving={"recordline": ["recordline", "orders"]},
    )
    newer = "sha256:" + "d" * 64
    pool = state["worker_pools"][POOL]
    pool["revisions"].append(
        {
            **pool["revisions"][-1],
            "name": f"{POOL}-00003-w3p",
            "digest": newer,
            "image": f"{REPOSITORY}@{newer}",
        }
    )
    state["registry"][REPOSITORY]["digests"].append(newer)
    state["jobs"]["recordline-export"]["image"] = f"{REPOSITORY}@{newer}"
    cloud = Cloud(tmp_path, state)
    scope = f"--project={PROJECT} --region={REGION}"
    roll_back = (
        f"gcloud beta run worker-pools update-instance-split {POOL} {{scope}} "
        f"--to-revisions={POOL}-00002-w2p=100 && "
        f"gcloud run jobs update recordline-export {{scope}} --image={REPOSITORY}@{EARLIER}"
    )
    for who in ("", f" --impersonate-service-account={OPERATOR}"):  # on-call
        refused = cloud.shell(roll_back.format(scope=scope + who))
        assert refused.returncode != 0
        assert "Permission 'run.workerpools.update' denied" in refused.stderr, who
    assert cloud.world["worker_pools"][POOL]["split"] != f"{POOL}-00002-w2p"
    cloud.update(principal=f"serviceAccount:{DEPLOYER}")
    done = cloud.shell(roll_back.format(scope=scope))
    assert done.returncode == 0, done.stderr
    assert cloud.world["worker_pools"][POOL]["split"] == f"{POOL}-00002-w2p"
    assert cloud.world["jobs"]["recordline-export"]["image"] == f"{REPOSITORY}@{EARLIER}"


def test_the_directory_names_the_pool_its_logs_and_its_account() -> None:
    directory = _cell(SERVING)["directory"]
    orders = directory["orders-eu"]
    assert orders["pool"] == POOL
    assert orders["export_job"] == "recordline-export"
    assert orders["exporter"] == f"{POOL}@recordline-dev.iam.gserviceaccount.com"
    # A worker pool's logs are not a revision's (cloud_run_revision).
    assert orders["pool_logs"] == (
        f'resource.type="cloud_run_worker_pool" resource.labels.worker_pool_name="{POOL}"'
    )
    assert directory["quiet"]["instance"] == ""

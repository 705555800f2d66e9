"""What reviewers see before they approve an apply, and what makes a plan at all.

The plan job's summary step runs against a stand-in terraform that shows a saved plan of
fifty systems (`terraform show -json`'s format:
https://developer.hashicorp.com/terraform/internals/json-format, and a text of that
size); GitHub drops a step summary over 1 MiB whole
(https://docs.github.com/en/actions/reference/workflows-and-actions/workflow-commands#adding-a-job-summary).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.infra.cell_world import GITHUB, VARIABLES, world
from tests.infra.test_fleet import _root_console_run
from tests.infra.test_terraform import ENVIRONMENT, TERRAFORM, _resources, _text
from tests.infra.workflow_runner import ROOT, Cloud, Job, run_job

PLANNER = "recordline-tf-plan@recordline-prod.iam.gserviceaccount.com"

MIB = 1 << 20


def planner_can_read(cloud: Cloud) -> None:
    """The plan account's project roles, as Terraform grants them (environment/iam.tf)."""
    roles = re.findall(
        r'"(roles/[^"]+)"',
        _resources("google_project_iam_member", ENVIRONMENT)["terraform_plan"]["for_each"],
    )
    iam = cloud.world["iam"]
    iam["project"][f"serviceAccount:{PLANNER}"] = roles
    cloud.update(iam=iam)


def plan_job(cloud: Cloud, root: str = "recordline") -> Job:
    """terraform-environment.yml's plan of one state of prod, for its apply."""
    return run_job(
        cloud,
        "terraform-environment.yml",
        "plan",
        inputs={
            "environment": "prod",
            "root": root,
            "apply": True,
            "plan_workload_identity_provider": VARIABLES["GCP_WORKLOAD_IDENTITY_PROVIDER"],
            "plan_service_account": PLANNER,
        },
        variables={},
        github=GITHUB,
    )


def _hundred_systems_plan(cloud: Cloud) -> None:
    changes = []
    for n in range(100):
        system = f'module.system["system-{n:02d}"]'
        for resource in range(40):
            changes.append(
                {
                    "address": f"{system}.google_monitoring_slo.slo_{resource}",
                    "type": "google_monitoring_slo",
                    "name": f"slo_{resource}",
                    "change": {"actions": ["update"]},
                }
            )
    changes.append(
        {
            "address": "google_cloud_run_v2_service.ingest",
            "type": "google_cloud_run_v2_service",
            "name": "ingest",
            "change": {"actions": ["delete", "create"]},
        }
    )
    (cloud.work / "plan.json").write_text(json.dumps({"resource_changes": changes}))
    line = '      ~ display_name = "an SLO of one system, as terraform shows it"\n'
    (cloud.work / "plan.txt").write_text(line * (3 * MIB // len(line)))
    terraform = cloud.bin / "terraform"
    terraform.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        '  "plan -input=false") touch tfplan ;;\n'
        '  "show -json") cat "$HOME/plan.json" ;;\n'
        '  "show -no-color") cat "$HOME/plan.txt" ;;\n'
        "esac\n"
    )
    terraform.chmod(0o755)


@pytest.mark.slow
def test_reviewers_see_every_destruction_of_a_hundred_system_cells_plan(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path, world({"recordline": ["recordline"]}))
    planner_can_read(cloud)
    _hundred_systems_plan(cloud)
    job = plan_job(cloud)
    step = job.step("Show the plan in the run summary")
    assert step.outcome == "success", step.stderr
    summary = job.summary
    assert len(summary.encode()) < MIB  # GitHub shows it
    assert "4001 resources change: 1 delete then create, 4000 update" in summary
    assert "- `google_cloud_run_v2_service.ingest` (delete then create)" in summary
    assert "the whole of it is the artifact tfplan-prod-recordline-text" in summary
    uploads = [
        s
        for s in yaml.safe_load((ROOT / ".github/workflows/terraform-environment.yml").read_text())[
            "jobs"
        ]["plan"]["steps"]
        if "upload-artifact@" in s.get("uses", "")
    ]
    assert any(
        u["with"]["name"] == "tfplan-${{ inputs.environment }}-${{ inputs.root }}-text"
        for u in uploads
    )


@pytest.mark.slow
def test_each_plan_reads_the_instances_units_so_no_apply_lowers_them(tmp_path: Path) -> None:
    # On-call raised the second instance by hand; the plan account reads every
    # instance of the cell and the plan keeps what each has (spanner_live_units).
    cloud = Cloud(tmp_path, world({"recordline": ["recordline"]}))
    planner_can_read(cloud)
    cloud.update(
        spanner_instances={
            "recordline-serving": {"processing_units": 100},
            "recordline-serving-2": {"processing_units": 2000},
            "other-serving": {"processing_units": 900},  # another cell's
        }
    )
    (cloud.bin / "terraform").write_text(
        '#!/bin/sh\necho "$*" >> "$HOME/terraform.log"\n'
        'if [ "$1" = plan ]; then touch tfplan; fi\n'
        'if [ "$1 $2" = "show -json" ]; then echo \'{"resource_changes": []}\'; fi\n'
        "exit 0\n"
    )
    (cloud.bin / "terraform").chmod(0o755)
    job = plan_job(cloud)
    assert job.result == "success", [(s.name, s.stderr) for s in job.steps]
    plans = [
        c for c in (cloud.work / "terraform.log").read_text().splitlines() if c.startswith("plan")
    ]
    assert plans
    assert all("-var-file=live.tfvars.json" in c for c in plans)
    read = job.step("Read the serving instances' processing units")
    assert 'Serving instances now: {"recordline-serving":100,"recordline-serving-2":2000}' in (
        read.stderr
    )


# --- what terraform.yml plans on ----------------------------------------------------------


def test_every_file_a_plan_reads_is_one_terraform_yml_plans_on() -> None:
    on = yaml.safe_load((ROOT / ".github/workflows/terraform.yml").read_text())[True]
    for event in ("pull_request", "push"):
        paths = on[event]["paths"]
        assert "infra/terraform/**" in paths
        # Files read from outside infra/terraform: the systems' schemas and canaries.
        assert "schemas/**" in paths
    outside = re.findall(r"\$\{path\.root\}/\.\./\.\./\$\{([^}]+)\}", _text())
    # A system's schema file and its typed columns beside it (<file>.bigquery.json, so
    # under schemas/ too): the module's input, and the plan's check of them, whose `f`
    # ranges over the same files; a JSON topic's declared schema in the cell's systems'
    # file (cell.tf).
    assert sorted(set(outside)) == [
        "coalesce(try(v.schema.file, null), v.json_schema)",
        "each.value.canary_file",
        "each.value.schema.file",
        "f",
        "s.json_schema",
    ]
    loops = re.findall(r"for (\w+) in compact\(\[([^\]]*)\]\)", _text())
    assert {files for name, files in loops if name == "f"} == {
        "try(s.schema.file, null), s.json_schema",
        "try(s.schema.file, null), s.canary_file, s.json_schema",  # the check of where
    }


def _accepted(schema_file: str, canary_file: str) -> bool:
    systems = (
        '{ recordline = {}, orders = { schema = { file = "'
        + schema_file
        + '", type = "AVRO", encoding = "JSON" }, canary_file = "'
        + canary_file
        + '" } }'
    )
    run = _root_console_run("keys(var.systems)", systems)
    refused = "Invalid value for variable" in run.stderr
    assert refused or run.returncode == 0, run.stderr
    return not refused


@pytest.mark.slow
def test_a_systems_files_must_be_where_a_change_makes_a_plan() -> None:
    assert _accepted("schemas/orders.avsc", "schemas/orders-canary.bin")
    assert not _accepted("app/orders.avsc", "schemas/orders-canary.bin")
    assert not _accepted("schemas/orders.avsc", "orders-canary.bin")
    assert not _accepted("schemas/../app/x.avsc", "schemas/orders-canary.bin")
    assert TERRAFORM.is_dir()

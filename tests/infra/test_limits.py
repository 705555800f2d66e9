"""Every limit a fleet of 10, 100 and 1,000 systems meets, evaluated by Terraform, with
its source; and plans, first applies and rollouts that fit their jobs' timeouts, timed
from the resources each plan holds (infra/fleet_limits.py).

Each cell's own limits are evaluated by `terraform console` over the cell root (its
systems' file, its audiences, its databases per instance), each project's over the
environment root's reading of the cells' files (environment/cells.tf), for the longest
names the variables accept. The times are estimates, per resource, stated in
fleet_limits.py: no real project was planned for them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from tests.infra.console import console_run, decoded, require_terraform
from tests.infra.test_terraform import ENVIRONMENT, METRICS, MODULE, TERRAFORM, _resources
from tests.infra.workflow_runner import load

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "operations.md"


@cache
def fleet_limits() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fleet_limits", ROOT / "infra" / "fleet_limits.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_resource_a_plan_can_hold_is_counted() -> None:
    limits = fleet_limits()
    assert set(limits.SYSTEM_RULES) == limits.declared(MODULE)
    # The cell root's own, and the metric descriptors of its modules/metrics (made in a
    # project of the cell's own).
    assert set(limits.CELL_RULES) == limits.declared(TERRAFORM) | limits.declared(METRICS)


@pytest.mark.slow
@pytest.mark.parametrize("systems", [10, 100, 1000])
def test_every_limit_is_respected_at(systems: int) -> None:
    require_terraform()
    for limit in fleet_limits().LIMITS:
        used, value = limit.used(systems), limit.value(systems)
        assert used <= value, (limit.name, systems, used, value)
        assert limit.source.startswith(
            ("https://cloud.google.com/", "https://docs.github.com/")
        ) or (limit.source.endswith("(estimate)")), limit.name
    # The projects as the environment root lays them out: nothing over any limit.
    found = fleet_limits().project_limits(systems)
    assert found["over"] == []
    assert found["systems"] == found["distinct"] == systems
    assert found["cells"] == math.ceil(systems / 100)


def test_the_limits_named_are_the_ones_a_thousand_systems_met() -> None:
    names = " ".join(limit.name for limit in fleet_limits().LIMITS)
    for limit in (
        "Cloud Run services",
        "Cloud Run jobs",
        "Jobs of a matrix",
        "Service accounts",
        "Uptime checks",
        "Principals in the cell service's allow policy",
        "Bytes of a cell's systems' file",
        "Minutes of a cell's plan",
        "Minutes of a first apply's batch",
    ):
        assert limit in names, limit


def test_the_environment_refuses_a_layout_past_a_projects_limit() -> None:
    require_terraform()
    # Two full cells in one project at the default service-account quota: refused.
    limits = fleet_limits()
    cells = limits.layout(200)
    second = cells["c02"]
    second["project_id"] = limits.ENVIRONMENT_PROJECT
    del second["environment_project_id"]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch, "infra", "terraform", "environment")
        work.mkdir(parents=True)
        files = Path(scratch, "infra", "terraform", "env", "prod")
        files.mkdir(parents=True)
        for name, body in cells.items():
            (files / f"{name}.tfvars.json").write_text(json.dumps(body))
        shutil.copy(ENVIRONMENT / "variables.tf", work)
        (work / "locals.tf").write_text(limits._plain_locals(ENVIRONMENT / "cells.tf"))
        values = {
            "project_id": f'"{limits.ENVIRONMENT_PROJECT}"',
            "environment": '"prod"',
            "github_owner": '"o"',
            "github_repo": '"r"',
            "github_repository_id": '"1"',
            "github_owner_id": '"2"',
            "terraform_state_bucket": '"b"',
            "oncall": '["group:o@example.com"]',
            "notification_channels": '["projects/p/notificationChannels/1"]',
            "ticket_channels": '["projects/p/notificationChannels/2"]',
        }
        (work / "values.tfvars").write_text("\n".join(f"{k} = {v}" for k, v in values.items()))
        run = console_run(work, "local.over_limit", var_file="values.tfvars")
    over = decoded(run)
    (said,) = over
    assert said.startswith(f"{limits.ENVIRONMENT_PROJECT}: ")
    assert "service accounts (at most 100)" in said
    # And the plan fails on it, before creating anything.
    (check,) = _resources("terraform_data", ENVIRONMENT).values()
    conditions = json.dumps(check["lifecycle"])
    assert "local.over_limit" in conditions


def test_plans_first_applies_and_rollouts_fit_their_jobs_at_a_thousand_systems() -> None:
    limits = fleet_limits()
    cell = limits.Cell(100)
    # A cell's plan: about 4,100 resources, at most 100 systems a state.
    assert 3_500 <= limits.resources(cell) <= 5_000
    assert limits.plan_minutes(cell) * 2 <= limits.timeout("terraform-environment.yml", "plan")
    # A cell's first apply: a few runs, each batch within the apply job with a margin
    # of two, every cell's batch under one approval of the run.
    runs, minutes = limits.first_apply(cell)
    assert runs <= 3
    assert minutes * 2 <= limits.timeout("terraform-apply.yml", "apply")
    # A rollout: ten cells in three waves (one, three, six), each cell's jobs within
    # their timeouts; no queue held for more than one cell's rollout.
    waves, total = limits.rollout(10, 300)
    assert waves == 3
    per_cell = total / waves
    for name, job in load("deploy-cell.yml")["jobs"].items():
        if "steps" in job:
            assert job["timeout-minutes"] >= 2 * limits.EXPORTER_DEPLOY_MINUTES, name
    assert per_cell <= 20
    assert total <= 60
    # Matrices: a job of each cell, far below GitHub's 256.
    assert limits.rollout(10, 300)[0] * 10 >= 10
    for workflow, job in (("deploy-environment.yml", "rest"), ("terraform.yml", "prod-cells")):
        assert "matrix" in load(workflow)["jobs"][job]["strategy"]


@pytest.mark.slow
def test_the_runbook_shows_the_limits_and_times_fleet_limits_prints() -> None:
    require_terraform()
    text = RUNBOOK.read_text()
    assert fleet_limits().table() in text, "paste `.venv/bin/python infra/fleet_limits.py`"
    assert fleet_limits().times() in text
    assert fleet_limits().sizes() in text


@pytest.mark.slow
def test_the_largest_cell_that_fits_is_reported_by_what_its_entries_hold() -> None:
    require_terraform()
    limits = fleet_limits()
    # The least entries: the hundred of cell_max_systems fit, just.
    least = limits.file_sizes(realistic=False)
    assert least[-1] == 65536
    assert limits.largest_cell(realistic=False) == 100
    assert least[99] <= 65536
    # Realistic ones (a reader, an operator, a schema each): fewer, the file of one more
    # past what a secret holds; each schema a file of its own, not in the file.
    sizes = limits.file_sizes(realistic=True)
    largest = limits.largest_cell(realistic=True)
    assert 50 < largest < 100
    assert sizes[largest - 1] <= 65536 < sizes[largest]
    assert sizes[0] < 1000
    assert f"| {largest} |" in limits.sizes()
    # With an exporter of its own each entry holds its export_principals besides.
    exporting = limits.file_sizes(realistic=True, exporting=True)
    assert all(more > size for more, size in zip(exporting[:-1], sizes[:-1], strict=True))
    assert limits.largest_cell(realistic=True, exporting=True) <= largest


def test_the_timing_estimates_are_stated_where_they_are_used() -> None:
    environment = (ROOT / ".github" / "workflows" / "terraform-environment.yml").read_text()
    assert "infra/fleet_limits.py" in environment
    budget = fleet_limits().apply_budget()
    assert re.search(rf'APPLY_BATCH_RESOURCES: "{budget}"', environment)

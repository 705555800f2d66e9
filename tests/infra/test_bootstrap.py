"""A cell's first apply of a hundred systems, in batches that each fit one apply job.

terraform-environment.yml's plan job runs here against a stand-in terraform whose plan
creates, for each new system, as many resources as the system module declares
(modules/system; its topic among them, by which the job knows a new system), plus the
cell's own, and whose plan with `-target` holds the targeted systems and what they
depend on (the cell's resources), as Terraform's does. Each apply takes the targeted
systems out of what is left to create; the next run's plan starts from there, as it
would from the state.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.infra.cell_world import world
from tests.infra.test_fleet import _module_resources
from tests.infra.test_plan_review import plan_job, planner_can_read
from tests.infra.workflow_runner import ROOT, Cloud, Job

# The cell's own resources a first apply creates besides its systems'.
SHARED = 120
# Runs a cell's first apply of a hundred systems takes (infra/README.md).
BATCHES_OF_A_HUNDRED = 3

STAND_IN = r"""#!/usr/bin/env python3
import json, os, re, sys
home = os.environ["HOME"]
state = json.load(open(f"{home}/world-plan.json"))
args = sys.argv[1:]
if args[0] == "plan":
    targets = [re.fullmatch(r'-target=module\.system\["(.+)"\]', a).group(1)
               for a in args if a.startswith("-target=")]
    with open(f"{home}/plans.log", "a") as log:
        log.write(json.dumps(targets) + "\n")
    json.dump(targets, open(f"{home}/targets.json", "w"))
    open("tfplan", "w").close()
elif args[:2] == ["show", "-json"]:
    targets = json.load(open(f"{home}/targets.json"))
    systems = [s for s in state["left"] if not targets or s in targets]
    changes = []
    for s in systems:
        for n in range(state["per_system"]):
            kind = "google_pubsub_topic" if n == 0 else "google_thing"
            name = "records" if n == 0 else f"r{n}"
            changes.append({"address": f'module.system["{s}"].{kind}.{name}', "type": kind,
                            "name": name, "change": {"actions": ["create"]}})
    for n in range(state["shared"]):
        changes.append({"address": f"google_shared.r{n}", "type": "google_shared",
                        "name": f"r{n}", "change": {"actions": ["create"]}})
    print(json.dumps({"resource_changes": changes}))
elif args[:2] == ["show", "-no-color"]:
    print("(the plan's text)")
"""


def _cloud(tmp_path: Path, systems: list[str], per_system: int) -> Cloud:
    cloud = Cloud(tmp_path, world({"recordline": ["recordline"]}))
    planner_can_read(cloud)
    (cloud.work / "world-plan.json").write_text(
        json.dumps({"left": systems, "per_system": per_system, "shared": SHARED})
    )
    terraform = cloud.bin / "terraform"
    terraform.write_text(STAND_IN.replace("/usr/bin/env python3", sys.executable))
    terraform.chmod(0o755)
    return cloud


def _plan(cloud: Cloud) -> Job:
    return plan_job(cloud)


def _applied(cloud: Cloud) -> list[str]:
    """What the saved plan creates is applied: its systems leave what is left, and the
    environment's resources are created with the first batch."""
    plan_state = json.loads((cloud.work / "world-plan.json").read_text())
    targets = json.loads((cloud.work / "targets.json").read_text())
    done = [s for s in plan_state["left"] if not targets or s in targets]
    plan_state["left"] = [s for s in plan_state["left"] if s not in done]
    plan_state["shared"] = 0
    (cloud.work / "world-plan.json").write_text(json.dumps(plan_state))
    return done


def _budget() -> int:
    workflow = yaml.safe_load((ROOT / ".github/workflows/terraform-environment.yml").read_text())
    return int(workflow["env"]["APPLY_BATCH_RESOURCES"])


def _run(cloud: Cloud) -> tuple[Job, int, list[str]]:
    """One run's plan job: the job, what its saved plan creates, the systems it applies."""
    job = _plan(cloud)
    step = job.step("Cut a plan too large for one apply to a batch of new systems")
    assert step.outcome == "success", step.stderr
    show = subprocess.run(
        [str(cloud.bin / "terraform"), "show", "-json", "tfplan"],
        env=cloud.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    creates = len(json.loads(show.stdout)["resource_changes"])
    return job, creates, _applied(cloud)


@pytest.mark.slow
def test_a_hundred_systems_start_with_a_batch_that_fits_and_end_whole(tmp_path: Path) -> None:
    # As many resources a system as the module declares: about forty.
    per_system = len(_module_resources())
    assert per_system >= 35
    systems = sorted(["recordline", *(f"system-{n:03d}" for n in range(1, 100))])
    cloud = _cloud(tmp_path, systems, per_system)
    budget = _budget()
    fits = (budget - SHARED) // per_system  # the cell's own resources come first
    job, creates, batch = _run(cloud)
    # The first run planned all 100 systems (some 3,800 resources, past what one apply
    # holds), then planned again for the first that fit, by name, and what they need.
    plans = [json.loads(line) for line in (cloud.work / "plans.log").read_text().splitlines()]
    assert plans == [[], systems[:fits]]
    assert batch == systems[:fits]
    assert creates == len(batch) * per_system + SHARED <= budget
    assert job.outputs["remaining"] == str(100 - fits)
    assert f"{100 - fits} new systems follow" in job.summary
    # The next runs plan the systems left, each batch in order and fitting, the last
    # one whole, and say when none is left.
    created, runs = list(batch), 1
    while len(created) < len(systems) and runs < 10:
        job, creates, batch = _run(cloud)
        runs += 1
        assert batch == systems[len(created) : len(created) + len(batch)]
        assert creates <= budget
        created += batch
        assert job.outputs["remaining"] == str(100 - len(created))
    assert created == systems
    assert json.loads((cloud.work / "plans.log").read_text().splitlines()[-1]) == []
    # A cell of 100 systems takes this many runs: each one approval for every cell.
    assert runs == 1 + math.ceil((100 - fits) * per_system / budget) == BATCHES_OF_A_HUNDRED


@pytest.mark.slow
def test_batches_follow_one_another_each_fitting_until_every_system_is_applied(
    tmp_path: Path,
) -> None:
    per_system = len(_module_resources())
    systems = sorted(f"system-{n:02d}" for n in range(120))
    cloud = _cloud(tmp_path, systems, per_system)
    budget = _budget()
    created: list[str] = []
    for run in range(1, 10):
        job, creates, batch = _run(cloud)
        assert creates <= budget, run
        # In order of their names, each once.
        assert batch == systems[len(created) : len(created) + len(batch)]
        created += batch
        assert job.outputs["remaining"] == str(len(systems) - len(created))
        assert job.outputs["changes"] == "true"
        if len(created) == len(systems):
            break
    assert created == systems
    assert run == math.ceil((len(systems) * per_system + SHARED) / budget)


@pytest.mark.slow
def test_a_plan_that_fits_is_applied_whole(tmp_path: Path) -> None:
    per_system = len(_module_resources())
    systems = ["orders", "payments", "recordline"]
    cloud = _cloud(tmp_path, systems, per_system)
    job = _plan(cloud)
    assert job.outputs["remaining"] == "0"
    plans = (cloud.work / "plans.log").read_text().splitlines()
    assert plans == ["[]"]  # one plan, no target: nothing is left out


@pytest.mark.slow
def test_a_single_system_larger_than_the_budget_is_still_applied(tmp_path: Path) -> None:
    # One new system is never cut: its own resources are the least an apply can create.
    cloud = _cloud(tmp_path, ["recordline"], _budget() + 50)
    job = _plan(cloud)
    assert job.outputs["remaining"] == "0"
    assert (cloud.work / "plans.log").read_text().splitlines() == ["[]"]


def test_the_apply_job_s_timeout_is_the_one_the_budget_was_measured_against() -> None:
    apply = yaml.safe_load((ROOT / ".github/workflows/terraform-apply.yml").read_text())
    assert apply["jobs"]["apply"]["timeout-minutes"] == 60
    text = (ROOT / ".github/workflows/terraform-environment.yml").read_text()
    assert re.search(r"The apply job has 60 minutes", text)
    assert "-parallelism" not in json.dumps(apply)  # Terraform's default: 10 at once
    # The budget's estimate (infra/fleet_limits.py) leaves the job a margin of two.
    from tests.infra.test_limits import fleet_limits

    minutes = fleet_limits().batch_minutes(_budget())
    assert minutes * 2 <= 60, minutes

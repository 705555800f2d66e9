"""A region lost: break-glass.yml rolls an image prod already ran out to prod's cells
alone, from the standby region's registry, where each cell's state now says it is.

Run against the fake cloud as GitHub would run it, with the primary region's registry
answering nothing and dev never asked for anything: the workflow names no dev job, and
none of its jobs reads anything of dev's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.cell_world import (
    BUILT,
    GITHUB,
    REGION,
    SHA,
    STATE_BUCKET,
    VARIABLES,
    cells_ran,
    world,
)
from tests.infra.workflow_runner import Cloud, load, run_job, run_workflow

STANDBY_REGION = "europe-west4"
STANDBY = f"{STANDBY_REGION}-docker.pkg.dev/recordline-prod/recordline"
PROD = {**VARIABLES, "ARTIFACT_STANDBY_REPOSITORY": STANDBY}


def _region_lost(tmp_path: Path) -> Cloud:
    """Prod's two cells after the region plan's apply moved them to the standby region
    (each service on the placeholder there), with the image prod ran in the standby
    registry under its commit's tag, and the primary region's registry down."""
    cells = {"recordline": ["recordline", "orders"], "eu-2": ["payments"]}
    state = _moved(world(cells, serving={"recordline": ["orders"]}), REGION, STANDBY_REGION)
    cloud = Cloud(tmp_path, state)
    cloud.files["infra/terraform/env/prod/eu-2.tfvars.json"] = json.dumps({"cell": "eu-2"})
    return cloud


def _moved(state: dict[str, Any], region: str, standby: str) -> dict[str, Any]:
    """A world after the region plan's apply moved every cell from `region` to
    `standby`, with the image prod ran in the standby registry, `region`'s down."""
    state["region"] = standby
    for url, text in list(state["objects"].items()):
        if url.endswith("default.tfstate"):
            parsed = json.loads(text)
            parsed["outputs"]["deploy"]["value"]["region"] = standby
            state["objects"][url] = json.dumps(parsed)
    registry = f"{standby}-docker.pkg.dev/recordline-prod/recordline/recordline"
    state["registry"] = {registry: {"tags": {SHA: BUILT}, "digests": [BUILT]}}
    state["registry_down"] = [f"{region}-docker.pkg.dev"]
    return state


def _break_glass(cloud: Cloud, **inputs: Any) -> Any:
    return run_workflow(
        cloud,
        "break-glass.yml",
        inputs={"image_tag": SHA, **inputs},
        variables=PROD,
        github={**GITHUB, "event_name": "workflow_dispatch"},
    )


@pytest.mark.slow
def test_prod_alone_is_rolled_out_from_the_standby_registry(tmp_path: Path) -> None:
    cloud = _region_lost(tmp_path)
    run = _break_glass(cloud)
    failed = [
        (p, s.name, s.stderr[-800:])
        for p, j in run.walk()
        for s in j.steps
        if s.outcome == "failure"
    ]
    assert run.result == "success", failed
    image = f"{STANDBY}/recordline@{BUILT}"
    for cell in ("recordline", "eu-2"):
        assert cloud.world["services"][cell]["revisions"][-1]["image"] == image
        assert cells_ran(run)[cell]["ingest"] == "success"
    assert cloud.world["worker_pools"]["recordline-exporter"]["revisions"][-1]["image"] == image
    # Every Cloud Run call named the region the cells are in now.
    for argv in cloud.calls():
        if argv[0] == "run" or argv[:2] == ["beta", "run"]:
            assert f"--region={STANDBY_REGION}" in argv, argv
    # Nothing was asked of the lost region's registry, nor pushed anywhere.
    assert cloud.calls("skopeo") == []
    assert not any(REGION + "-docker.pkg.dev" in " ".join(a) for a in cloud.calls())
    # Each cell was read from its own state.
    reads = [a[2] for a in cloud.calls() if a[:2] == ["storage", "cat"]]
    assert reads == [
        f"gs://{STATE_BUCKET}/recordline/cells/eu-2/default.tfstate",
        f"gs://{STATE_BUCKET}/recordline/cells/recordline/default.tfstate",
    ]


def test_only_an_image_prod_already_holds_is_rolled_out(tmp_path: Path) -> None:
    cloud = _region_lost(tmp_path)
    run = _break_glass(cloud, image_tag="d" * 40)
    step = run.job("prepare").step("Find the image in prod's standby registry")
    assert step.outcome == "failure"
    assert cells_ran(run) == {}


@pytest.mark.slow
def test_one_cell_failing_stops_no_other(tmp_path: Path) -> None:
    cloud = _region_lost(tmp_path)
    state = cloud.world
    del state["services"]["eu-2"]  # its apply has not recreated it yet
    cloud.update(**state)
    run = _break_glass(cloud)
    assert cells_ran(run)["recordline"]["ingest"] == "success"
    assert "failure" in cells_ran(run)["eu-2"].values()
    assert load("break-glass.yml")["jobs"]["cells"]["strategy"]["fail-fast"] is False


@pytest.mark.slow
def test_its_soak_reads_at_least_two_of_the_exporter_pools_points(tmp_path: Path) -> None:
    # The pool writes its metrics every two minutes: a gate watching less than two of
    # its points could find no row exported, and fail a good release in a lost region.
    # Break-glass accepts the soaks a cell's export_soak_seconds accepts (which holds
    # them to two points: tests/infra/test_cost.py), and by default watches as long as a
    # cell does, a minute past the least: a revision's first point is two minutes after
    # it starts, and the latest takes a while to be read.
    from tests.infra.test_terraform import _validations_hold, _variables

    cloud = _region_lost(tmp_path)

    def accepted(seconds: str) -> bool:
        job = run_job(
            cloud,
            "break-glass.yml",
            "prepare",
            inputs={"image_tag": SHA, "cells": "", "soak_seconds": seconds},
            variables=PROD,
            github={**GITHUB, "event_name": "workflow_dispatch"},
            needs={"approve": {"outputs": {"standby_repository": STANDBY}}},
            cancel_after="Check the request",
        )
        return job.step("Check the request").outcome == "success"

    # YAML 1.1 reads the key `on` as true.
    default = load("break-glass.yml")[True]["workflow_dispatch"]["inputs"]["soak_seconds"]
    assert default["default"] == str(_variables()["export_soak_seconds"]["default"]) == "300"
    for seconds in ("239", "240", "900", "901"):
        cell = _validations_hold("export_soak_seconds", {"export_soak_seconds": seconds})
        assert accepted(seconds) is cell, seconds
    assert accepted("240")


def test_the_break_glass_path_names_no_dev_job_and_reads_nothing_of_devs() -> None:
    workflow = load("break-glass.yml")
    text = json.dumps(workflow)
    # No job of dev, no dev environment, nothing of deploy.yml's (which builds in dev).
    named = re.findall(r".{30}(?<![/\w])dev\b.{30}", text)  # not /dev/null
    assert named == []
    assert "deploy.yml" not in text
    assert "deploy-environment.yml" not in text
    jobs = workflow["jobs"]
    assert jobs["approve"]["with"]["environment"] == "prod"
    assert jobs["prepare"]["environment"] == "prod-rollout"
    assert jobs["cells"]["with"]["environment"] == "prod"
    # What it calls is each cell's rollout, gated like any other, in the cell's queue.
    assert jobs["cells"]["uses"] == "./.github/workflows/deploy-cell.yml"
    assert jobs["cells"]["concurrency"] == {
        "group": "live-prod-${{ matrix.cell }}",
        "cancel-in-progress": False,
    }
    # Its images come from the standby registry only.
    assert jobs["cells"]["with"]["repository"] == (
        "${{ needs.approve.outputs.standby_repository }}"
    )
    # The called workflows name no dev job either.
    for called in ("deploy-cell.yml", "export-gate.yml", "approve.yml"):
        assert not re.search(r"needs\.dev\b|environment: dev\b", json.dumps(load(called)))


def _prod_settings() -> tuple[dict[str, str], dict[str, Any]]:
    """prod's environment (environment/env/prod.tfvars) and its cells' files."""
    import hcl2

    from tests.infra.test_terraform import ENVIRONMENT, TERRAFORM

    with (ENVIRONMENT / "env" / "prod.tfvars").open() as f:
        environment = {k: str(v).strip('"') for k, v in hcl2.load(f).items()}
    cells = {
        path.stem.removesuffix(".tfvars"): json.loads(path.read_text())
        for path in sorted((TERRAFORM / "env" / "prod").glob("*.tfvars.json"))
    }
    return environment, cells


@pytest.mark.slow
def test_drill_e_prod_moves_to_its_standby_region_on_its_own_settings(tmp_path: Path) -> None:
    # prod as its files set it: a standby region, and cells that can move there (their
    # data global or multi-regional: no regional Spanner instance left behind).
    environment, cells = _prod_settings()
    standby = environment.get("standby_region", "")
    assert standby, "prod has no standby_region"
    assert standby != environment["region"]
    for name, cell in cells.items():
        serving = cell.get("serving", False) or any(
            s.get("serving") for s in cell.get("systems", {}).values()
        )
        assert cell.get("dataset_location", "EU") in ("EU", "US"), name
        assert not serving or cell.get("spanner_config") == "eur3", name
    # The region plan's apply has moved every cell (its service, pool and jobs on the
    # placeholders in the standby region); the primary's registry answers nothing.
    registry = f"{standby}-docker.pkg.dev/{environment['project_id']}/recordline"
    state = world({name: [cell.get("service_name", name)] for name, cell in cells.items()})
    cloud = Cloud(tmp_path, _moved(state, environment["region"], standby))
    run = run_workflow(
        cloud,
        "break-glass.yml",
        inputs={"image_tag": SHA},
        variables={**VARIABLES, "ARTIFACT_STANDBY_REPOSITORY": registry},
        github={**GITHUB, "event_name": "workflow_dispatch"},
    )
    assert run.result == "success", [
        (p, s.name, s.stderr[-600:])
        for p, j in run.walk()
        for s in j.steps
        if s.outcome == "failure"
    ]
    for name in cells:
        service = cloud.world["services"][name]
        assert service["revisions"][-1]["image"] == f"{registry}/recordline@{BUILT}"
        assert cells_ran(run)[name]["ingest"] == "success"

"""The rollouts' shell steps and job conditions, run against a fake cloud
(tests/infra/fake_cloud.py) as GitHub would run them (tests/infra/workflow_runner.py).

deploy.yml's prod rollout: its approval, then deploy-environment.yml (the image pushed
once, the cells read from their Terraform states), then each cell's deploy-cell.yml, one
cell first, then the rest: the exporter's canary revision on the canary systems, the
export gate (export-gate.yml), the exporter on every system, the gate again, and only
then the ingest service (no traffic under a tag, smoke test of each canary system,
promotion); everything back to what ran before if anything fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.infra.cell_world import (
    BUILT,
    CANARY_SETTING,
    EARLIER,
    PROJECT,
    REPOSITORY,
    SHA,
    STATE_BUCKET,
    SYSTEMS_SETTING,
    VARIABLES,
    cells_ran,
    rollout,
    world,
)
from tests.infra.test_topic_schemas import AVRO as AVRO_ORDER
from tests.infra.test_topic_schemas import CANARY as AVRO_CANARY
from tests.infra.workflow_runner import Cloud, Workflow, load, runs

POOL = "recordline-exporter"


def serving(cloud: Cloud, service: str) -> list[tuple[str, int, bool]]:
    """(revision, percent, follows the latest) of what carries the cell's traffic."""
    found = cloud.world["services"][service]
    latest = found["revisions"][-1]["name"]
    return [
        (latest if t.get("latest") else t["revision"], t["percent"], bool(t.get("latest")))
        for t in found["traffic"]
        if t["percent"] > 0
    ]


def tags(cloud: Cloud, service: str) -> list[str]:
    return [t["tag"] for t in cloud.world["services"][service]["traffic"] if t.get("tag")]


def split(cloud: Cloud, pool: str = POOL) -> Any:
    return cloud.world["worker_pools"][pool]["split"]


def _explain(run: Workflow) -> str:
    return "\n".join(
        f"{path}: {step.name}: {step.outcome}\n{step.stderr[-1500:]}"
        for path, job in run.walk()
        for step in job.steps
        if step.outcome == "failure"
    )


def _serving_world(**given: Any) -> dict[str, Any]:
    """One cell of three systems, two serving from Spanner (the canary systems)."""
    return world(
        {"recordline": ["recordline", "orders", "quiet"]},
        serving={"recordline": ["recordline", "orders"]},
        **given,
    )


# --- the first deploy ------------------------------------------------------------------


@pytest.mark.slow
def test_the_first_deploy_replaces_both_placeholders_after_the_gate_and_smoke_test(
    tmp_path: Path,
) -> None:
    cloud = Cloud(tmp_path, _serving_world())
    run = rollout(cloud)
    assert run.result == "success", _explain(run)
    # The image was pushed once, by digest, under the commit's tag.
    assert cloud.world["registry"][REPOSITORY]["tags"] == {SHA: BUILT}
    # A pool on the placeholder exports nothing and has nothing to keep: no canary, the
    # new revision on every instance and every system, then the gate, then ingest.
    jobs = cells_ran(run)["recordline"]
    assert jobs == {
        "exporter-canary": "success",
        "exporter": "success",
        "export-gate/gate": "success",
        "ingest": "success",
        "release": "success",
    }
    pool = cloud.world["worker_pools"][POOL]
    newest = pool["revisions"][-1]
    assert (newest["digest"], newest["command"], newest["args"]) == (
        BUILT,
        ["recordline"],
        ["exporter"],
    )
    assert newest["env"] == {"RECORDLINE_SYSTEMS": SYSTEMS_SETTING, "OTEL_SERVICE_NAME": POOL}
    assert pool["split"] == "latest"
    # The cell's service runs the image's own command: the placeholder's is cleared; it
    # serves everything, following the latest revision again; its tag is gone.
    new = cloud.world["services"]["recordline"]["revisions"][-1]
    assert (new["digest"], new["command"], new["args"]) == (BUILT, None, None)
    assert serving(cloud, "recordline") == [(new["name"], 100, True)]
    assert tags(cloud, "recordline") == []
    # Each canary system's push reached it at its own path, as its own push account
    # (the placeholder would have answered 503), and was read back.
    for system in ("recordline", "orders"):
        stored = cloud.world["services"]["recordline"]["systems"][system]["messages"]
        message = stored[f"smoke-4242-1-{system}"]
        assert message["status"] == "stored"
        assert message["record"]["id"] == "recordline-canary"
    assert "messages" not in cloud.world["services"]["recordline"]["systems"]["quiet"]
    # The jobs run what the cell runs: the export job the pool's image, the ops job
    # the service's.
    image = f"{REPOSITORY}@{BUILT}"
    assert cloud.world["jobs"]["recordline-export"]["image"] == image
    assert cloud.world["jobs"]["recordline-ops"]["image"] == image
    # Every run command named its project and region.
    for argv in cloud.calls():
        if argv[0] == "run" or argv[:2] == ["beta", "run"]:
            assert any(a.startswith("--region=") for a in argv), argv


# --- the exporter first, on its canary systems ------------------------------------------


@pytest.mark.slow
def test_a_new_exporter_takes_the_canary_systems_first_and_ingest_waits_for_the_gates(
    tmp_path: Path,
) -> None:
    cloud = Cloud(tmp_path, _serving_world(deployed=EARLIER, exporter=EARLIER))
    run = rollout(cloud)
    assert run.result == "success", _explain(run)
    calls = [a for a in cloud.calls() if a[:3] == ["beta", "run", "worker-pools"]]
    deploys = [a for a in calls if a[3] == "deploy"]
    # The canary: the canary systems' file, its metrics under a name of its own.
    assert (
        f"--update-env-vars=RECORDLINE_SYSTEMS={CANARY_SETTING},OTEL_SERVICE_NAME={POOL}-canary"
        in (deploys[0])
    )
    splits = [a for a in calls if a[3] == "update-instance-split"]
    assert [next(x for x in s if x.startswith("--to")) for s in splits] == [
        f"--to-revisions={POOL}-00002-w2p=100",  # pinned where it ran
        f"--to-revisions={POOL}-00003-w3p=50,{POOL}-00002-w2p=50",  # half to the canary
        "--to-latest",  # the promotion
    ]
    # The gates read the canary systems' export, written by the revision on trial.
    queries = [a for a in cloud.calls("curl-answer") if "prometheus" in a[1]]
    assert len(queries) == 4  # lag and rows, for each gate
    assert deploys[1][-1] == (
        f"--update-env-vars=RECORDLINE_SYSTEMS={SYSTEMS_SETTING},OTEL_SERVICE_NAME={POOL}"
    )
    assert split(cloud) == "latest"
    newest = cloud.world["worker_pools"][POOL]["revisions"][-1]
    assert newest["env"]["RECORDLINE_SYSTEMS"] == SYSTEMS_SETTING
    # The ingest service's candidate got no traffic before its smoke test: deployed with
    # none, under a tag, and each canary system pushed on the tag URL.
    deploys = [a for a in cloud.calls() if a[:2] == ["run", "deploy"]]
    assert len(deploys) == 1
    assert "--no-traffic" in deploys[0]
    assert "--tag=sha-c0ffee0" in deploys[0]
    pushes = [a for a in cloud.calls("curl-answer") if a[1].endswith("/pubsub/push")]
    assert [url.split("/systems/")[1] for _, url in pushes] == [
        "orders/pubsub/push",
        "recordline/pubsub/push",
    ]
    assert all(url.startswith("https://sha-c0ffee0---recordline-") for _, url in pushes)
    # It was deployed only once both gates had passed.
    order = [
        "exporter-canary",
        "export-gate-canary/gate",
        "exporter",
        "export-gate/gate",
        "ingest",
        "release",
    ]
    assert list(cells_ran(run)["recordline"]) == order


@pytest.mark.slow
def test_an_exporter_that_stops_exporting_after_start_stops_the_rollout_and_goes_back(
    tmp_path: Path,
) -> None:
    # Ready (a worker pool has no probe), it takes the canary systems' leases, being the
    # newest code, and exports nothing: only the gate sees it.
    cloud = Cloud(tmp_path, _serving_world(deployed=EARLIER, exporter=EARLIER))
    cloud.update(stalled_digests=[BUILT])
    run = rollout(cloud)
    jobs = cells_ran(run)["recordline"]
    assert jobs == {
        "exporter-canary": "success",
        "export-gate-canary/gate": "failure",
        "exporter-back": "success",
    }
    gate = run.job("prod/first[recordline]/export-gate-canary/gate")
    watched = gate.step("Watch the systems' export for the soak")
    assert "reported no export" not in watched.stderr
    assert "no row exported" in watched.stderr or "lagged 3600" in watched.stderr
    # Every instance back on what ran before, which takes the leases back; the systems
    # not on trial never left it; the ingest service and the jobs were never touched.
    assert split(cloud) == f"{POOL}-00002-w2p"
    assert serving(cloud, "recordline") == [("recordline-00002-x2y", 100, True)]
    assert len(cloud.world["services"]["recordline"]["revisions"]) == 2
    assert cloud.world["jobs"]["recordline-export"]["image"] == f"{REPOSITORY}@{EARLIER}"
    back = run.job("prod/first[recordline]/exporter-back")
    assert f"every exporter instance is back on {POOL}-00002-w2p" in back.summary
    assert "docs/operations.md#rolling-the-exporter-back" in back.summary


@pytest.mark.slow
def test_the_second_gate_watches_every_serving_system_not_the_canaries_alone(
    tmp_path: Path,
) -> None:
    # Three serving systems: the canaries are the first two by name; the new image stops
    # the third's export alone (a shape no canary has), which only the promotion reaches.
    state = world(
        {"recordline": ["recordline", "orders", "quiet"]},
        serving={"recordline": ["recordline", "orders", "quiet"]},
        deployed=EARLIER,
        exporter=EARLIER,
    )
    cloud = Cloud(tmp_path, state)
    cloud.update(stalled_exports={BUILT: ["recordline"]})
    run = rollout(cloud)
    jobs = cells_ran(run)["recordline"]
    assert jobs == {
        "exporter-canary": "success",
        "export-gate-canary/gate": "success",
        "exporter": "success",
        "export-gate/gate": "failure",
        "exporter-back": "success",
    }
    watched = run.job("prod/first[recordline]/export-gate/gate").step(
        "Watch the systems' export for the soak"
    )
    assert "recordline: the export lagged 3600.0 s behind" in watched.stderr
    assert split(cloud) == f"{POOL}-00002-w2p"
    assert serving(cloud, "recordline") == [("recordline-00002-x2y", 100, True)]


@pytest.mark.slow
def test_an_exporter_that_fails_to_start_stops_the_rollout_before_ingest(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path, _serving_world(deployed=EARLIER, exporter=EARLIER))
    cloud.update(broken_digests=[BUILT])
    run = rollout(cloud)
    jobs = cells_ran(run)["recordline"]
    assert jobs == {"exporter-canary": "failure", "exporter-back": "success"}
    assert split(cloud) == f"{POOL}-00002-w2p"
    assert serving(cloud, "recordline") == [("recordline-00002-x2y", 100, True)]


@pytest.mark.parametrize(
    ("canary", "gate", "promoted", "gate_after", "ingest"),
    [
        ("success", "success", "success", "success", True),
        ("success", "failure", "skipped", "skipped", False),
        ("success", "success", "success", "failure", False),
        ("success", "success", "failure", "skipped", False),
        ("failure", "skipped", "skipped", "skipped", False),
        ("success", "cancelled", "skipped", "skipped", False),
    ],
)
def test_the_ingest_service_waits_for_the_export_health_gate(
    canary: str, gate: str, promoted: str, gate_after: str, ingest: bool
) -> None:
    jobs = load("deploy-cell.yml")["jobs"]
    assert jobs["ingest"]["needs"] == ["exporter-canary", "export-gate"]
    assert jobs["export-gate"]["uses"] == "./.github/workflows/export-gate.yml"
    needs = {
        "exporter-canary": {"result": canary, "outputs": {"pool": POOL, "canary": "c"}},
        "export-gate-canary": {"result": gate},
        "exporter": {"result": promoted},
        "export-gate": {"result": gate_after},
    }
    context = {"needs": needs, "inputs": {}}
    cancelled = gate == "cancelled"
    assert runs(jobs["ingest"], needs, context, cancelled=cancelled) is ingest
    # Without an exporter pool (no system serves from Spanner) the gate is skipped, and
    # ingest goes on.
    none = {**needs, "exporter-canary": {"result": "success", "outputs": {"pool": ""}}}
    none["export-gate"] = {"result": "skipped"}
    assert runs(jobs["ingest"], none, {"needs": none, "inputs": {}}) is True


@pytest.mark.slow
def test_every_gate_watches_the_canary_systems_for_the_soak_with_a_lag_bound(
    tmp_path: Path,
) -> None:
    # A lag over the bound fails the gate, however many rows moved.
    cloud = Cloud(tmp_path, _serving_world(deployed=EARLIER, exporter=EARLIER))
    deploy = json.loads(
        cloud.world["objects"][f"gs://{STATE_BUCKET}/recordline/cells/recordline/default.tfstate"]
    )["outputs"]["deploy"]["value"]
    assert (deploy["soak_seconds"], deploy["gate_lag_seconds"]) == (300, 120)
    deploy["gate_lag_seconds"] = 1  # what the fake's exporters lag: 2 s
    state = {"version": 4, "outputs": {"deploy": {"value": deploy}}}
    objects = cloud.world["objects"]
    objects[f"gs://{STATE_BUCKET}/recordline/cells/recordline/default.tfstate"] = json.dumps(state)
    cloud.update(objects=objects)
    run = rollout(cloud)
    gate = run.job("prod/first[recordline]/export-gate-canary/gate")
    watched = gate.step("Watch the systems' export for the soak")
    assert "the export lagged 2.0 s behind, over the 1 s bound" in watched.stderr
    assert split(cloud) == f"{POOL}-00002-w2p"
    # The soak is the cell's (its export_soak_seconds), slept before reading.
    assert "for 300 s" in watched.stderr


# --- the ingest service's smoke test ------------------------------------------------------


@pytest.mark.slow
def test_a_failed_smoke_test_returns_traffic_and_the_exporter_and_stops_the_rollout(
    tmp_path: Path,
) -> None:
    cells = {"recordline": ["recordline", "orders"], "eu-2": ["payments"]}
    cloud = Cloud(
        tmp_path,
        world(cells, deployed=EARLIER, exporter=EARLIER, serving={"recordline": ["orders"]}),
    )
    cloud.files.update(_cell_files(cells))
    # The new image answers 500 to every request of the ingest service, and exports well.
    cloud.update(broken_ingest=[BUILT])
    before = serving(cloud, "eu-2")
    run = rollout(cloud)
    first = run.job("prod/first[recordline]/ingest")
    assert first.result == "failure"
    assert first.step("Smoke test each canary system on the candidate's tag URL").outcome == (
        "failure"
    )
    assert first.step("Promote the candidate, and the cell's ops job to its image").outcome == (
        "skipped"
    )
    assert first.step("Return the traffic to what served before").outcome == "success"
    assert serving(cloud, "recordline") == [("recordline-00002-x2y", 100, False)]
    assert tags(cloud, "recordline") == []
    # Nor the candidate: it never served, so the revision before the serving one is
    # always one that served (what the runbook's rollback picks).
    assert [r["name"] for r in cloud.world["services"]["recordline"]["revisions"]] == [
        "recordline-00001-x1y",
        "recordline-00002-x2y",
    ]
    assert "traffic is back on recordline-00002-x2y=100" in first.summary
    # The exporter went back too: the release failed.
    assert split(cloud, "recordline-exporter") == "recordline-exporter-00002-w2p"
    assert cloud.world["jobs"]["recordline-export"]["image"] == f"{REPOSITORY}@{EARLIER}"
    # The rest were never touched.
    assert run.results["prod"] == "failure"
    assert "eu-2" not in cells_ran(run)
    assert serving(cloud, "eu-2") == before


@pytest.mark.slow
def test_a_cancelled_rollout_returns_traffic_and_the_exporter(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path, _serving_world(deployed=EARLIER, exporter=EARLIER))
    run = rollout(cloud, cancel_after="Deploy with no traffic, under a tag")
    ingest = run.job("prod/first[recordline]/ingest")
    assert ingest.step("Return the traffic to what served before").outcome == "success"
    assert serving(cloud, "recordline") == [("recordline-00002-x2y", 100, False)]
    assert cells_ran(run)["recordline"]["exporter-back"] == "success"
    assert split(cloud) == f"{POOL}-00002-w2p"


# --- many cells -------------------------------------------------------------------------------


@pytest.mark.slow
def test_cells_come_from_their_terraform_states_one_then_a_quarter_then_the_rest(
    tmp_path: Path,
) -> None:
    cells = {"recordline": ["recordline"], **{f"cell-{n:02d}": [f"sys-{n:02d}"] for n in range(2)}}
    cloud = Cloud(tmp_path, world(cells, deployed=EARLIER))
    cloud.files.update(_cell_files(cells))
    run = rollout(cloud)
    assert run.result == "success", _explain(run)
    prepare = run.job("prod/prepare")
    assert json.loads(prepare.outputs["first"]) == ["recordline"]
    assert json.loads(prepare.outputs["second"]) == ["cell-00"]
    assert json.loads(prepare.outputs["rest"]) == ["cell-01"]
    assert list(cells_ran(run)) == ["recordline", "cell-00", "cell-01"]
    for cell in cells:
        (_revision, percent, follows) = serving(cloud, cell)[0]
        assert (percent, follows) == (100, True)
        assert cloud.world["services"][cell]["revisions"][-1]["digest"] == BUILT
    # The list is the repository's cells, each read from its own state: no hand-kept list.
    assert [
        "storage",
        "cat",
        f"gs://{STATE_BUCKET}/recordline/cells/cell-01/default.tfstate",
    ] in cloud.calls()
    jobs = load("deploy-environment.yml")["jobs"]
    assert jobs["second"]["needs"] == ["prepare", "first"]
    assert jobs["rest"]["needs"] == ["prepare", "second"]
    for wave in (jobs["second"], jobs["rest"]):
        assert wave["strategy"]["max-parallel"] == 10
        assert wave["strategy"]["fail-fast"] is True
        # Each cell in its own queue, which its applies share.
        assert wave["concurrency"]["group"] == "live-${{ inputs.environment }}-${{ matrix.cell }}"


def _cell_files(cells: dict[str, list[str]]) -> dict[str, str]:
    """A checkout's env/prod/<cell>.tfvars.json for each cell."""
    return {
        f"infra/terraform/env/prod/{cell}.tfvars.json": json.dumps({"cell": cell}) for cell in cells
    }


def test_no_job_timeout_grows_with_the_number_of_systems() -> None:
    # One cell per job: a rollout of a thousand systems is more cells, not longer jobs.
    for workflow in ("deploy-environment.yml", "deploy-cell.yml", "export-gate.yml"):
        for name, job in load(workflow)["jobs"].items():
            if "steps" in job:
                assert job["timeout-minutes"] <= 20, (workflow, name)
    assert "${{ vars.RECORDLINE_SYSTEMS }}" not in json.dumps(load("deploy-environment.yml"))


# --- systems with a shape of their own ----------------------------------------------------

# README, "Pointing Recordline at an existing topic": orders on an Avro topic, its id in
# order_id; payments in plain JSON with its id nested. Each canary in its own shape.
SHAPES: dict[str, dict[str, Any]] = {
    "orders": {
        "id_field": "order_id",
        "time_field": "meta.created_at",
        "canary": AVRO_CANARY,
        "schema": {
            "name": "orders",
            "type": "AVRO",
            "encoding": "BINARY",
            "definition": AVRO_ORDER.decode(),
        },
    },
    "payments": {
        "id_field": "payment.id",
        "canary": b'{"payment": {"id": "recordline-canary", "cents": 1}}',
    },
}


@pytest.mark.slow
def test_canary_systems_with_their_own_shape_are_smoke_tested_with_their_own_canary(
    tmp_path: Path,
) -> None:
    systems = ["recordline", "orders", "payments"]
    cloud = Cloud(
        tmp_path,
        world(
            {"recordline": systems},
            deployed=EARLIER,
            shapes=SHAPES,
            canary={"recordline": ["orders", "payments"]},
        ),
    )
    run = rollout(cloud)
    assert run.result == "success", _explain(run)
    cell = cloud.world["services"]["recordline"]["systems"]
    for system in ("orders", "payments"):
        message = cell[system]["messages"][f"smoke-4242-1-{system}"]
        # Stored under the id its own field holds, not refused as a rejection.
        assert message["status"] == "stored", message
        assert message["record"]["id"] == "recordline-canary"
    # The Avro canary was decoded with the topic's schema, as Pub/Sub would mark it.
    assert cell["orders"]["records"]["recordline-canary"]["data"] == {
        "order_id": "recordline-canary",
        "total": 1,
    }


@pytest.mark.slow
def test_a_canary_the_candidate_rejects_fails_its_smoke_test_with_the_reason(
    tmp_path: Path,
) -> None:
    # A canary_file without the record id where id_field says: the service would store
    # every such message as a rejection, so the candidate must not get the traffic.
    shapes = {"payments": {"id_field": "payment.id", "canary": b'{"id": "recordline-canary"}'}}
    cloud = Cloud(
        tmp_path,
        world(
            {"recordline": ["recordline", "payments"]},
            deployed=EARLIER,
            shapes=shapes,
        ),
    )
    run = rollout(cloud)
    job = run.job("prod/first[recordline]/ingest")
    smoke = job.step("Smoke test each canary system on the candidate's tag URL")
    assert smoke.outcome == "failure"
    assert "payments: recordline-00003-x3y rejected its canary message" in smoke.stderr
    assert "`$.payment.id` (the record id, RECORDLINE_ID_FIELD): missing" in smoke.stderr
    assert serving(cloud, "recordline") == [("recordline-00002-x2y", 100, False)]


# --- after a rollback -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_deploy_after_a_rollback_serves_its_own_revision(tmp_path: Path) -> None:
    # On-call pinned traffic to an earlier revision (docs/operations.md#rolling-back).
    cloud = Cloud(tmp_path, world({"recordline": ["recordline"]}, deployed=EARLIER))
    services = cloud.world["services"]
    services["recordline"]["traffic"] = [{"revision": "recordline-00001-x1y", "percent": 100}]
    services["recordline"]["revisions"][0].update(command=None, args=None, digest=EARLIER)
    cloud.update(services=services)
    run = rollout(cloud)
    assert run.result == "success", _explain(run)
    new = cloud.world["services"]["recordline"]["revisions"][-1]["name"]
    assert serving(cloud, "recordline") == [(new, 100, True)]


# --- an environment GitHub made on first use --------------------------------------------------


def test_a_prod_rollout_refuses_an_environment_without_a_reviewer(tmp_path: Path) -> None:
    # prod named by a job before anyone set it up: GitHub creates it, unprotected.
    cloud = Cloud(tmp_path, world({"recordline": ["recordline"]}))
    cloud.update(github_environments={"prod": [], "prod-rollout": []})
    before = cloud.world
    run = rollout(cloud)
    check = run.job("approve-prod/approve").step("Check that the environment requires a reviewer")
    assert check.outcome == "failure"
    assert "requires no reviewer" in check.stderr
    # Nothing was pushed, nothing deployed: the rollout never entered a queue.
    assert cloud.world["registry"] == before["registry"]
    assert cloud.world["services"] == before["services"]
    assert run.results["prod"] == "skipped"


# --- supply chain ----------------------------------------------------------------------------


def test_an_image_without_this_repositorys_provenance_is_never_deployed(tmp_path: Path) -> None:
    # A digest pushed to the registry by hand, tagged as a commit: no provenance.
    cloud = Cloud(tmp_path, world({"recordline": ["recordline"]}, deployed=EARLIER))
    stranger = "sha256:" + "f" * 64
    registry = cloud.world["registry"]
    registry[REPOSITORY]["digests"].append(stranger)
    registry[REPOSITORY]["tags"][SHA] = stranger
    cloud.update(registry=registry)
    run = rollout(cloud, image_tag=SHA)
    step = run.job("prod/prepare").step("Push the built image, or find the requested one")
    assert step.outcome == "failure"
    assert "no attestations found" in step.stderr
    assert cells_ran(run) == {}
    assert serving(cloud, "recordline") == [("recordline-00002-x2y", 100, True)]


def test_the_build_attests_provenance_and_sbom_of_the_digest_it_hands_on() -> None:
    build = load("deploy.yml")["jobs"]["build"]
    uses = {s.get("uses", "").split("@")[0]: s for s in build["steps"]}
    digest = "${{ steps.digest.outputs.digest }}"
    assert uses["actions/attest-build-provenance"]["with"]["subject-digest"] == digest
    assert uses["actions/attest-sbom"]["with"]["subject-digest"] == digest
    assert (
        uses["actions/attest-sbom"]["with"]["sbom-path"]
        == (uses["anchore/sbom-action"]["with"]["output-file"])
    )
    assert build["permissions"]["attestations"] == "write"


# --- the standby region's registry ----------------------------------------------------------

STANDBY_REGION = "europe-west4"
STANDBY = f"{STANDBY_REGION}-docker.pkg.dev/{PROJECT}/recordline"


@pytest.mark.slow
def test_every_image_deployed_is_in_the_standby_registry_too(tmp_path: Path) -> None:
    # With standby_region (environment/artifact_registry.tf), the image any cell serves
    # is also in the other region's registry, same digest, same tag: a region lost takes
    # none away, and the break-glass rollout deploys from there.
    cloud = Cloud(tmp_path, world({"recordline": ["recordline"]}))
    with_standby = {**VARIABLES, "ARTIFACT_STANDBY_REPOSITORY": STANDBY}
    run = rollout(cloud, variables=with_standby)
    assert run.result == "success", _explain(run)
    held = cloud.world["registry"][f"{STANDBY}/recordline"]
    assert held["tags"] == {SHA: BUILT}
    assert cloud.world["registry"][REPOSITORY]["tags"] == {SHA: BUILT}
    # A second rollout of the same image finds it there and copies nothing.
    again = rollout(cloud, variables=with_standby)
    assert again.job("prod/prepare").result == "success"
    # One push of the archive, one copy to the standby, both in the first rollout.
    assert len(cloud.calls("skopeo")) == 2


@pytest.mark.slow
def test_a_standby_registry_that_cannot_take_the_image_stops_the_rollout_first(
    tmp_path: Path,
) -> None:
    cloud = Cloud(tmp_path, world({"recordline": ["recordline"]}))
    cloud.update(registry_down=[f"{STANDBY_REGION}-docker.pkg.dev"])
    before = cloud.world["services"]
    run = rollout(cloud, variables={**VARIABLES, "ARTIFACT_STANDBY_REPOSITORY": STANDBY})
    prepare = run.job("prod/prepare")
    assert prepare.step("Copy the image to the standby registry").outcome == "failure"
    assert cells_ran(run) == {}  # no cell runs an image the standby lacks
    assert cloud.world["services"] == before

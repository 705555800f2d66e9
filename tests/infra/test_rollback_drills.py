"""Rollback drills, end to end in the fake cloud: a release or a systems file that passed
its gates and turned out bad, an apply landing in between, and the runbook's recipes
(docs/operations.md#rolling-back, #rolling-the-exporter-back) run as written by a member
of `oncall`, then the fix they name.

Each drill starts from a cell as its applies and rollouts leave it, changes it as
Terraform does (tests/infra/cell_world.py's `apply_systems`, read from the cell root's
configuration: the settings version replaced as its lifecycle and deletion_policy say,
new revisions that keep the live image), and checks the state the recipe returns to by
image digest and settings version: which revision serves or exports each system, and
that a revision whose settings version is gone is never chosen.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.cell_world import (
    BUILT,
    EARLIER,
    ONCALL,
    OPERATOR,
    PROJECT,
    REGION,
    REPOSITORY,
    SHA,
    STATE_BUCKET,
    SYSTEMS_DIRECTORY,
    SYSTEMS_SETTING,
    apply_systems,
    rollout,
    systems_secret,
    world,
)
from tests.infra.test_limits import fleet_limits
from tests.infra.test_rollout import _explain
from tests.infra.test_runbook import RUNBOOK
from tests.infra.test_runbook_commands import (
    Asked,
    ask,
    asks,
    blocks,
    directory,
    rolled_back,
    where,
)
from tests.infra.test_terraform import TERRAFORM, _resources
from tests.infra.workflow_runner import Cloud

CELL, POOL = "recordline", "recordline-exporter"
GOOD_SHA = "900d" + "0" * 36  # the commit the last good image was built from
SYSTEMS = ["orders", "recordline"]
ADDED = "payments"  # the system an apply adds between the release and the rollback


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    """A cell of two serving systems on the last good release (EARLIER, built from
    GOOD_SHA): its service and pool on it, settings version 1, its directory where
    Terraform writes it."""
    state = world({CELL: SYSTEMS}, deployed=EARLIER, exporter=EARLIER, serving={CELL: SYSTEMS})
    state["registry"][REPOSITORY]["tags"] = {GOOD_SHA: EARLIER}
    state["objects"][f"gs://{STATE_BUCKET}/directory/{CELL}.json"] = json.dumps(directory())
    return Cloud(tmp_path, state)


def release(cloud: Cloud, image_tag: str = "") -> None:
    """A rollout of the built image (or of `image_tag`'s) that passes every gate."""
    run = rollout(cloud, image_tag=image_tag, built=cloud.world["built_digest"])
    assert run.result == "success", _explain(run)
    cloud.update(principal=ONCALL)  # on-call again, after the deploy account


def build(cloud: Cloud, digest: str) -> None:
    """The next commit's build: `digest`, attested, under the commit's tag (the last
    build's tag taken out of the registry's, as if the commit were another)."""
    state = cloud.world
    state["registry"][REPOSITORY]["tags"].pop(SHA, None)
    state["attestations"][digest] = state["attestations"][BUILT]
    state["built_digest"] = digest
    cloud.update(**state)


def exporters(cloud: Cloud) -> dict[str, list[tuple[str, str]]]:
    """Each system of the cell's file: the (revision, digest) of every running revision
    of the pool that exports it. A revision claims the systems of the file it reads, as
    the file's version it mounts holds them, if its instances can start."""
    # The fake's own reading of a pool (its module reads where its world is, unused here).
    os.environ.setdefault("FAKE_CLOUD_WORLD", str(cloud.world_file))
    from tests.infra import fake_cloud

    state = cloud.world
    pool = state["worker_pools"][POOL]
    found: dict[str, list[tuple[str, str]]] = {}
    held = fake_cloud.World.__new__(fake_cloud.World)
    held.data = state
    for revision in fake_cloud.running(held, pool):
        if revision["command"] == ["python3"] or fake_cloud.unavailable(held, revision):
            continue
        setting = revision["env"]["RECORDLINE_SYSTEMS"]
        for system in fake_cloud.settings_of(held, revision, setting) or []:
            found.setdefault(system, []).append((revision["name"], revision["digest"]))
    return found


def job_systems(cloud: Cloud, job: str) -> list[str]:
    """The systems a cell's job reads: the systems' file its template mounts, as that
    version holds them; none where its task cannot start."""
    os.environ.setdefault("FAKE_CLOUD_WORLD", str(cloud.world_file))
    from tests.infra import fake_cloud

    held = fake_cloud.World.__new__(fake_cloud.World)
    held.data = cloud.world
    found = cloud.world["jobs"][job]
    if fake_cloud.unavailable(held, found):
        return []
    return sorted(fake_cloud.settings_of(held, found, SYSTEMS_SETTING) or [])


def serving_revision(cloud: Cloud) -> dict[str, Any]:
    service = cloud.world["services"][CELL]
    (entry,) = [t for t in service["traffic"] if t["percent"] == 100]
    name = service["revisions"][-1]["name"] if entry.get("latest") else entry["revision"]
    (found,) = [r for r in service["revisions"] if r["name"] == name]
    return dict(found)


def read(cloud: Cloud, system: str) -> str:
    """A read of `system` as the operator account, through the cell's URL: the status."""
    (read_block,) = blocks("cell-not-ready")
    done = cloud.shell("\n".join([where("orders"), f"SYSTEM={system}", read_block]))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


def recipe(cloud: Cloud, section: str, by: str = "image", system: str = "orders") -> Asked:
    """A rollback section's step 2 as written, for `system`: the rollback workflow asked
    without `to`, then with the revision it said it would return to."""
    return rolled_back(cloud, section, by=by, system=system)


# --- (a) the exporter ------------------------------------------------------------------------


@pytest.mark.slow
def test_drill_a_bad_exporter_release_found_after_an_apply_is_undone_by_identity(
    cloud: Cloud,
) -> None:
    # A release whose exporter passes both gates and the smoke test...
    release(cloud)
    assert {s: d for s, [(_, d)] in exporters(cloud).items()} == {
        "orders": BUILT,
        "recordline": BUILT,
    }
    # ...the rollout deleted its canary revision once the pool was promoted...
    names = [r["name"] for r in cloud.world["worker_pools"][POOL]["revisions"]]
    assert f"{POOL}-00003-w3p" not in names  # the canary: the canary systems' file
    # ...an hour later an apply adds a system (a new settings version, and revisions
    # that keep the live image: BUILT)...
    version = apply_systems(cloud, CELL, [*SYSTEMS, ADDED])
    assert version == "2"
    newest = cloud.world["worker_pools"][POOL]["revisions"][-1]
    assert newest["digest"] == BUILT
    # ...and the export stops: BUILT holds every lease and exports nothing.
    cloud.update(stalled_digests=[BUILT])

    done = recipe(cloud, "rolling-the-exporter-back")
    assert done.returncode == 0, done.stderr
    # It said both states, and what it returns to exports, before it acted.
    assert f"now:     {newest['name']}, image {BUILT}, settings version 2" in done.stdout
    assert f"back to: {POOL}-00002-w2p, image {EARLIER}, settings version 1 (ENABLED)" in (
        done.stdout
    )
    assert f"{POOL}-00002-w2p will export: orders recordline; not: {ADDED}" in done.stdout
    # Every system the last good release exported is exported by it again, by one
    # revision; the export job runs its code.
    assert exporters(cloud) == {s: [(f"{POOL}-00002-w2p", EARLIER)] for s in SYSTEMS}
    assert cloud.world["jobs"]["recordline-export"]["image"] == f"{REPOSITORY}@{EARLIER}"

    # Step 4 of Rolling back: the last good image deployed by the pipeline, with the
    # cell's newest settings: every system, the one added too, on EARLIER, in the time
    # the runbook gives a cell's rollout (infra/fleet_limits.py's estimate).
    minutes = fleet_limits().rollout(1, 300)[1]
    assert f"about {minutes:.0f} minutes a cell with the default soak" in RUNBOOK.read_text()
    release(cloud, image_tag=GOOD_SHA)
    assert exporters(cloud) == {
        s: [(name, EARLIER)]
        for s in [*SYSTEMS, ADDED]
        for name in [cloud.world["worker_pools"][POOL]["revisions"][-1]["name"]]
    }
    assert cloud.world["worker_pools"][POOL]["revisions"][-1]["volumes"][
        "/etc/recordline/systems"
    ] == [systems_secret(CELL), "2"]


@pytest.mark.slow
def test_an_exporter_rollback_onto_a_revision_whose_settings_are_gone_is_refused(
    cloud: Cloud,
) -> None:
    release(cloud)
    apply_systems(cloud, CELL, [*SYSTEMS, ADDED])
    # Version 1, which the last good revision mounts, destroyed (as the provider's default
    # deletion_policy does when a file changes).
    secrets = cloud.world["secrets"]
    secrets[systems_secret(CELL)]["versions"]["1"].update(state="DESTROYED", data="")
    cloud.update(secrets=secrets, stalled_digests=[BUILT])
    before = cloud.world["worker_pools"][POOL]["split"]

    done = recipe(cloud, "rolling-the-exporter-back")
    assert done.returncode != 0
    assert (
        f"refused: {POOL}-00002-w2p cannot start, its version 1 of {systems_secret(CELL)} "
        "is DESTROYED; nothing was changed"
    ) in done.stderr
    assert cloud.world["worker_pools"][POOL]["split"] == before


# --- (b) the ingest service ------------------------------------------------------------------


@pytest.mark.slow
def test_drill_b_a_bad_ingest_release_found_after_an_apply_is_undone_by_identity(
    cloud: Cloud,
) -> None:
    release(cloud)
    version = apply_systems(cloud, CELL, [*SYSTEMS, ADDED])
    # The apply's revision runs the live image, and now serves (traffic follows the
    # latest): BUILT, with settings version 2.
    now = serving_revision(cloud)
    assert (now["digest"], now["volumes"]["/etc/recordline/systems"][1]) == (BUILT, version)
    # An hour after the release, the ingest service answers 500.
    cloud.update(broken_ingest=[BUILT])
    assert read(cloud, "orders") == "500"

    done = recipe(cloud, "rolling-back")
    assert done.returncode == 0, done.stderr
    assert f"now:     {now['name']}, image {BUILT}, settings version 2" in done.stdout
    assert "back to: recordline-00002-x2y, image " + EARLIER in done.stdout
    assert f"recordline-00002-x2y will serve: orders recordline; not: {ADDED}" in done.stdout
    back = serving_revision(cloud)
    assert (back["name"], back["digest"]) == ("recordline-00002-x2y", EARLIER)
    assert read(cloud, "orders") == "200"
    assert read(cloud, ADDED) == "404"  # not in its file: Pub/Sub keeps its messages
    assert cloud.world["jobs"]["recordline-ops"]["image"] == f"{REPOSITORY}@{EARLIER}"

    # Step 4: the last good image with the newest settings serves every system.
    release(cloud, image_tag=GOOD_SHA)
    now = serving_revision(cloud)
    assert (now["digest"], now["volumes"]["/etc/recordline/systems"][1]) == (EARLIER, "2")
    assert {s: read(cloud, s) for s in [*SYSTEMS, ADDED]} == dict.fromkeys([*SYSTEMS, ADDED], "200")


@pytest.mark.slow
def test_an_ingest_rollback_onto_a_revision_whose_read_pass_keys_are_gone_is_refused(
    cloud: Cloud,
) -> None:
    # Every secret version the target reads counts, not its settings alone: here the
    # read passes' keys (cdn.tf), a variable Cloud Run resolves before an instance starts.
    release(cloud)
    state = cloud.world
    keys = f"{CELL}-read-pass"
    state["secrets"][keys] = {
        "versions": {
            "1": {"state": "DESTROYED", "data": ""},
            "2": {"state": "ENABLED", "data": "k"},
        }
    }
    for revision in state["services"][CELL]["revisions"]:
        version = "2" if revision["digest"] == BUILT else "1"
        revision["env_secrets"] = {"RECORDLINE_READ_PASS_KEYS": [keys, version]}
    state["broken_ingest"] = [BUILT]
    cloud.update(**state)
    before = serving_revision(cloud)["name"]

    done = recipe(cloud, "rolling-back")
    assert done.returncode != 0
    assert (
        f"refused: recordline-00002-x2y cannot start, its version 1 of {keys} is DESTROYED; "
        "nothing was changed"
    ) in done.stderr
    assert serving_revision(cloud)["name"] == before


# --- (c) a bad systems file ------------------------------------------------------------------


@pytest.mark.slow
def test_drill_c_a_bad_systems_file_is_rolled_back_to_the_previous_file(cloud: Cloud) -> None:
    # The apply of a file that leaves orders out by mistake: every revision it makes
    # serves recordline alone.
    version = apply_systems(cloud, CELL, ["recordline"])
    assert read(cloud, "orders") == "404"
    assert exporters(cloud) == {"recordline": [(f"{POOL}-00003-t3p", EARLIER)]}

    done = recipe(cloud, "rolling-back", by="settings")
    assert done.returncode == 0, done.stderr
    assert f"settings version {version}" in done.stdout
    assert "back to: recordline-00002-x2y, image " + EARLIER + ", settings version 1" in (
        done.stdout
    )
    assert read(cloud, "orders") == "200"
    done = recipe(cloud, "rolling-the-exporter-back", by="settings")
    assert done.returncode == 0, done.stderr
    assert exporters(cloud) == {s: [(f"{POOL}-00002-w2p", EARLIER)] for s in SYSTEMS}


@pytest.mark.slow
def test_drill_c_the_jobs_return_to_the_previous_file_and_an_apply_keeps_them_there(
    cloud: Cloud,
) -> None:
    # The bad file's apply gives the cell's jobs its version too: the ops job can no
    # longer replay orders' dead letters, the export job no longer retry its export.
    ops, export, secret = f"{CELL}-ops", f"{CELL}-export", systems_secret(CELL)
    apply_systems(cloud, CELL, ["recordline"])
    assert job_systems(cloud, ops) == job_systems(cloud, export) == ["recordline"]

    # Both recipes by settings: each job runs what its service or pool now serves, its
    # image and its file.
    for section in ("rolling-back", "rolling-the-exporter-back"):
        done = recipe(cloud, section, by="settings")
        assert done.returncode == 0, done.stderr
    for job in (ops, export):
        assert cloud.world["jobs"][job]["volumes"][SYSTEMS_DIRECTORY] == [secret, "1"], job
        assert cloud.world["jobs"][job]["image"] == f"{REPOSITORY}@{EARLIER}", job
        assert job_systems(cloud, job) == SYSTEMS, job

    # An apply meanwhile, the bad file still on main (a system added to it): the plan
    # reads what the rollback pinned (pinned_settings) and leaves the jobs on its file,
    # as it leaves the traffic.
    apply_systems(cloud, CELL, ["recordline", ADDED])
    for job in (ops, export):
        assert cloud.world["jobs"][job]["volumes"][SYSTEMS_DIRECTORY] == [secret, "1"], job

    # The fix: the file reverted and applied; the next rollout serves it, and the jobs
    # follow what it promotes.
    fixed = apply_systems(cloud, CELL, [*SYSTEMS, ADDED])
    release(cloud)
    assert serving_revision(cloud)["volumes"][SYSTEMS_DIRECTORY] == [secret, fixed]
    for job in (ops, export):
        assert cloud.world["jobs"][job]["volumes"][SYSTEMS_DIRECTORY] == [secret, fixed], job
        assert job_systems(cloud, job) == sorted([*SYSTEMS, ADDED]), job


# --- what on-call may do themselves, and what the workflow refuses ---------------------------


def test_on_call_can_neither_deploy_nor_move_traffic_and_still_runs_the_jobs(
    cloud: Cloud,
) -> None:
    # As the operator account, which holds no right to change a service, a pool or a
    # job of the cell: a deploy of any image is refused, and so is a traffic change, the
    # same right (so on-call asks rollback.yml, run by the deploy account).
    release(cloud)
    before = {k: cloud.world[k] for k in ("services", "worker_pools", "jobs")}
    me = f"--project={PROJECT} --region={REGION} --impersonate-service-account={OPERATOR}"
    attempts = {
        f"gcloud run deploy {CELL} {me} --image={REPOSITORY}@{EARLIER}": "run.services.update",
        f"gcloud run services update-traffic {CELL} {me} --to-revisions=recordline-00002-x2y=100": (
            "run.services.update"
        ),
        f"gcloud beta run worker-pools deploy {POOL} {me} --image={REPOSITORY}@{EARLIER}": (
            "run.workerpools.update"
        ),
        f"gcloud beta run worker-pools update-instance-split {POOL} {me} "
        f"--to-revisions={POOL}-00002-w2p=100": "run.workerpools.update",
        f"gcloud run jobs update {CELL}-ops {me} --image={REPOSITORY}@{EARLIER}": (
            "run.jobs.update"
        ),
        f"gcloud run jobs update {CELL}-export {me} --image={REPOSITORY}@{EARLIER}": (
            "run.jobs.update"
        ),
    }
    for line, permission in attempts.items():
        done = cloud.shell(line)
        assert done.returncode != 0, line
        assert f"PERMISSION_DENIED: Permission '{permission}' denied" in done.stderr, line
    assert {k: cloud.world[k] for k in before} == before
    # Running a job with a command's arguments is still on-call's, with no acting as the
    # job's account (https://cloud.google.com/run/docs/reference/rest/v1/namespaces.jobs/run).
    state = cloud.world
    state["iam"]["service_accounts"][f"{CELL}-exporter@{PROJECT}.iam.gserviceaccount.com"] = {}
    cloud.update(**state, job_cli="recorder")
    job, _me = blocks("running-commands-as-a-cells-job")[0].splitlines()[:2]
    status = 'job "$EXPORT_JOB" export --system="$SYSTEM" status'
    done = cloud.shell("\n".join([where("orders"), job, status]))
    assert done.returncode == 0, done.stderr
    assert [e["job"] for e in cloud.world["executions"]] == [f"{CELL}-export"]


@pytest.mark.slow
def test_a_rollback_asked_for_a_revision_an_apply_overtook_changes_nothing(cloud: Cloud) -> None:
    # A bad systems file applied; on-call asks, and is told the previous file's revision...
    apply_systems(cloud, CELL, ["recordline"])
    dry, act = asks("rolling-back", "service", by="settings")
    said = ask(cloud, dry, **{"$SYSTEM": "orders"})
    assert said.returncode == 0, said.stdout
    assert "back to: recordline-00002-x2y, image " in said.stdout
    # ...then, before they act, an apply of another file lands: what serves is its
    # revision, and the state before it is the bad file's, not the one they were told.
    apply_systems(cloud, CELL, ["recordline", ADDED])
    now = serving_revision(cloud)
    before = {k: cloud.world[k] for k in ("services", "worker_pools", "jobs")}
    done = ask(cloud, act, **{"$SYSTEM": "orders", "PREV": "recordline-00002-x2y"})
    assert done.returncode != 0
    assert (
        "refused: the revision to return to is now recordline-00003-t3f, not "
        "recordline-00002-x2y (an apply or a rollout changed the revisions since): "
        "nothing was changed"
    ) in done.stdout, done.stdout
    assert {k: cloud.world[k] for k in before} == before
    assert serving_revision(cloud)["name"] == now["name"]


@pytest.mark.slow
def test_a_rollback_asked_for_a_system_no_cell_has_is_refused_saying_so(cloud: Cloud) -> None:
    release(cloud)
    before = {k: cloud.world[k] for k in ("services", "worker_pools", "jobs")}
    done = recipe(cloud, "rolling-back", system="ordres")
    assert done.returncode != 0
    assert (
        f"refused: no system ordres in the directory (gs://{STATE_BUCKET}/directory/): "
        "nothing was changed"
    ) in done.stdout
    assert {k: cloud.world[k] for k in before} == before
    # Nothing waited in a cell's queue: the cell was not found before it.
    assert "cell" in done.ran
    assert "rollback" not in done.ran


# --- what a rollout keeps for a rollback -----------------------------------------------------


@pytest.mark.slow
def test_a_rollout_records_what_was_live_before_it_by_digest_and_settings(cloud: Cloud) -> None:
    release(cloud)
    record = json.loads(
        cloud.world["objects"][f"gs://{STATE_BUCKET}/directory/releases/{CELL}.json"]
    )
    assert (record["image_tag"], record["digest"]) == (SHA, BUILT)
    assert record["before"] == {
        "ingest": {
            "revision": "recordline-00002-x2y",
            "digest": EARLIER,
            "settings": "1",
            "file": "@/etc/recordline/systems/systems.json",
        },
        "exporter": {
            "revision": f"{POOL}-00002-w2p",
            "digest": EARLIER,
            "settings": "1",
            "file": "@/etc/recordline/systems/systems.json",
        },
    }
    assert record["after"]["ingest"]["digest"] == record["after"]["exporter"]["digest"] == BUILT
    # On-call reads it as the directory: as a member of `oncall`.
    (look,) = [b for b in blocks("rolling-back") if "$RELEASE" in b]
    done = cloud.shell("\n".join([where("orders"), look]))
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_rollout_after_a_rollback_returns_a_failure_to_what_runs_not_to_the_newest(
    cloud: Cloud,
) -> None:
    release(cloud)
    apply_systems(cloud, CELL, [*SYSTEMS, ADDED])
    cloud.update(stalled_digests=[BUILT])
    assert recipe(cloud, "rolling-the-exporter-back").returncode == 0
    # The next release fails its gate: the pool goes back to what its instances ran (the
    # rollback's pin), not to the newest revision, the apply's, which runs BUILT.
    build(cloud, "sha256:" + "f" * 64)
    cloud.update(stalled_digests=[BUILT, "sha256:" + "f" * 64])
    run = rollout(cloud, built="sha256:" + "f" * 64)
    assert run.result == "failure"
    cloud.update(principal=ONCALL)
    assert cloud.world["worker_pools"][POOL]["split"] == f"{POOL}-00002-w2p"
    # The revisions it made are gone, the apply's and the rollback's target are not.
    held = {r["digest"] for r in cloud.world["worker_pools"][POOL]["revisions"]}
    assert "sha256:" + "f" * 64 not in held
    assert {EARLIER, BUILT} <= held


@pytest.mark.slow
def test_what_no_kept_revision_mounts_is_retired_a_release_later(cloud: Cloud) -> None:
    # kept_revisions of 3: three releases, each after an apply of a changed file.
    state = cloud.world
    deploy_key = f"gs://{STATE_BUCKET}/recordline/cells/{CELL}/default.tfstate"
    tfstate = json.loads(state["objects"][deploy_key])
    tfstate["outputs"]["deploy"]["value"]["kept_revisions"] = 3
    state["objects"][deploy_key] = json.dumps(tfstate)
    cloud.update(**state)
    secret = systems_secret(CELL)
    seen = []
    for n, extra in enumerate(["a", "b", "c"]):
        apply_systems(cloud, CELL, [*SYSTEMS, extra])
        build(cloud, "sha256:" + str(n + 1) * 64)
        release(cloud)
        versions = cloud.world["secrets"][secret]["versions"]
        seen.append({v: held["state"] for v, held in versions.items()})
        # Every version a remaining revision or job mounts is enabled; so is the newest.
        mounted = {
            r["volumes"]["/etc/recordline/systems"][1]
            for kind in ("services", "worker_pools")
            for holder in cloud.world[kind].values()
            for r in holder["revisions"]
        } | {j["volumes"]["/etc/recordline/systems"][1] for j in cloud.world["jobs"].values()}
        assert all(versions[v]["state"] == "ENABLED" for v in mounted), (mounted, versions)
        assert versions[max(versions, key=int)]["state"] == "ENABLED"
        for holder in [cloud.world["services"][CELL], cloud.world["worker_pools"][POOL]]:
            assert len(holder["revisions"]) <= 3 + 1  # the kept ones, and one that runs
    # Version 1 was mounted by no kept revision once the second release had deleted the
    # last good release's revisions (three newer ones kept): disabled then, destroyed at
    # the next release.
    assert [s["1"] for s in seen] == ["ENABLED", "DISABLED", "DESTROYED"]
    assert [s["2"] for s in seen] == ["ENABLED", "ENABLED", "DISABLED"]


def test_every_secret_version_a_revision_names_outlives_it() -> None:
    # The versions a service, pool or job template names (not through depends_on: the
    # page token's key is mounted as "latest"), read from the cell root: each created
    # before the one it replaces, which is left as it was (ABANDON), so a revision that
    # mounts the old one still starts. A rollout retires it (deploy-cell.yml).
    rtype = "google_secret_manager_secret_version"
    named: set[str] = set()
    for kind in (
        "google_cloud_run_v2_service",
        "google_cloud_run_v2_worker_pool",
        "google_cloud_run_v2_job",
    ):
        for body in _resources(kind, TERRAFORM).values():
            template = {k: v for k, v in body.items() if k != "depends_on"}
            named |= set(re.findall(rf"{rtype}\.(\w+)", json.dumps(template)))
    assert {"systems", "canary_systems", "read_pass"} <= named, named
    versions = _resources(rtype, TERRAFORM)
    for name in sorted(named):
        lifecycle = (versions[name].get("lifecycle") or [{}])[0]
        assert versions[name].get("deletion_policy") == "ABANDON", name
        assert lifecycle.get("create_before_destroy") is True, name


# --- (d) a deleted dataset -----------------------------------------------------------------


@pytest.mark.slow
def test_drill_d_a_deleted_dataset_is_undropped_and_its_export_retried_as_written(
    cloud: Cloud,
) -> None:
    # orders' dataset, in the EU as every prod dataset is, deleted by mistake; its
    # export blocked at the first batch since.
    cloud.update(
        datasets={"recordline": ["live", "EU"], "orders": ["dropped", "EU"]},
        job_cli="recorder",
    )
    undrop, retry = blocks("a-deleted-dataset")
    job, me = blocks("running-commands-as-a-cells-job")[0].splitlines()[:2]
    done = cloud.shell("\n".join([where("orders"), undrop, job, me, retry]))
    assert done.returncode == 0, done.stderr
    assert cloud.world["datasets"]["orders"] == ["live", "EU"]
    # Each export command ran as the export job, and is one `recordline` takes: a
    # decision carries its reason and who made it.
    log = cloud.work / "replays.jsonl"
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["command"], r["system"]) for r in ran] == [("export", "orders")] * 3
    retried = [r for r in ran if r.get("reason")]
    assert len(retried) == 2
    assert {r["operator"] for r in retried} == {ONCALL.removeprefix("user:")}
    assert all(
        "undropped after its deletion at 2026-11-24T09:00:00Z" in r["reason"] for r in retried
    )
    assert [e["job"] for e in cloud.world["executions"]] == ["recordline-export"] * 3

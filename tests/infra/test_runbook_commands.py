"""The runbook's commands, and those in the alerts, run as written against a fake cloud,
for a system on its cell's second Spanner instance.

The cell `recordline` holds `recordline` (on `recordline-serving`) and `orders` (on
`recordline-serving-2`); its directory is what Terraform writes (`terraform console`
over the cell root's `local.directory`), in the state bucket, and every command starts
from the system's name alone through it. docs/operations.md's shell blocks and each
ticket's commands (as the environment root fills them in) are run by bash with
tests/infra/fake_cloud.py as gcloud, curl and bq, as a member of `oncall`: a user
account that holds no role but may act as the operator account. The fake refuses what
Google refuses (a run command without --region, an ID token with --audiences for a user
account, a resource that does not exist, a permission not granted), so a command that
only looks right fails here; and every name a command uses is checked against the
directory. The cell's jobs run tests/infra/job_recorder.py, which parses the commands
as the runbook specifies them and records them.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from app.cell.throttles import Throttles
from tests.infra.cell_world import (
    CANARY_SETTING,
    EARLIER,
    GITHUB,
    NUMBER,
    ONCALL,
    OPERATOR,
    PROJECT,
    REGION,
    REPOSITORY,
    STATE_BUCKET,
    SYSTEMS_SETTING,
    VARIABLES,
    account,
    job_command,
    job_settings,
    world,
)
from tests.infra.test_fleet import _root_console
from tests.infra.test_runbook import RUNBOOK, slug
from tests.infra.test_terraform import (
    ENVIRONMENT,
    MODULE,
    TERRAFORM,
    _evaluate,
    _load,
    _locals,
    _template,
)
from tests.infra.workflow_runner import Cloud, run_workflow

BAD = "sha256:" + "d" * 64
URL = f"https://recordline-{NUMBER}.{REGION}.run.app"
SYSTEMS = "{ recordline = { serving = true }, orders = { serving = true, spanner_instance = 2 } }"
POOL = "recordline-exporter"


@cache
def directory() -> dict[str, dict[str, str]]:
    """The cell's directory as Terraform writes it (directory.tf), for prod."""
    return dict(
        _root_console(
            "local.directory",
            SYSTEMS,
            (
                ("environment", '"prod"'),
                ("project_id", f'"{PROJECT}"'),
                ("region", f'"{REGION}"'),
                ("terraform_state_bucket", f'"{STATE_BUCKET}"'),
                ("oncall", '["group:recordline-oncall@example.com"]'),
            ),
        )
    )


def blocks(section: str, language: str = "sh") -> list[str]:
    """The ```sh (or other `language`) blocks of one section of docs/operations.md."""
    text = RUNBOOK.read_text()
    found: list[str] = []
    current = None
    for part in re.split(r"(?m)^(#{2,4} .+)$", text):
        heading = re.match(r"#{2,4} (.+)$", part)
        if heading:
            current = slug(heading.group(1))
        elif current == section:
            found += [b.strip() for b in re.findall(rf"```{language}\n(.*?)```", part, re.S)]
    assert found, f"no {language} block in #{section}"
    return found


def where(system: str = "orders") -> str:
    """Where to look's lines, for `system`."""
    (look,) = [b for b in blocks("where-to-look-used-by-every-section") if "eval" in b]
    return re.sub(r"(?m)^SYSTEM=\S+", f"SYSTEM={system}", look)


JOB = blocks("running-commands-as-a-cells-job")[0].splitlines()[0]  # the `job` function


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    """The cell after its applies: its service's good revision (EARLIER) followed by a bad
    one that serves; its pool on EARLIER; both systems' databases, each on its instance;
    the directory where Terraform writes it."""
    state = world(
        {"recordline": ["recordline", "orders"]},
        deployed=EARLIER,
        exporter=EARLIER,
        serving={"recordline": ["recordline", "orders"]},
    )
    service = state["services"]["recordline"]
    service["revisions"][0].update(
        command=None, args=None, digest=EARLIER, image=f"{REPOSITORY}@{EARLIER}"
    )
    service["revisions"][1].update(
        digest=BAD, image=service["revisions"][1]["image"].replace(EARLIER, BAD)
    )
    state["registry"][REPOSITORY]["digests"].append(BAD)
    # orders is on the second instance (its entry's spanner_instance = 2).
    databases = state["iam"]["databases"]
    databases["recordline-serving-2/orders"] = databases.pop("recordline-serving/orders")
    state["spanner_instances"]["recordline-serving-2"] = {"processing_units": 900}
    capacity = f"projects/{PROJECT}/roles/recordlineOperatorCapacity_recordline"
    state["iam"]["instances"] = {
        name: {f"serviceAccount:{OPERATOR}": [capacity]} for name in state["spanner_instances"]
    }
    state["objects"][f"gs://{STATE_BUCKET}/directory/recordline.json"] = json.dumps(directory())
    # The last rollout's record (deploy-cell.yml, "release"): EARLIER replaced by BAD.
    state["objects"][f"gs://{STATE_BUCKET}/directory/releases/recordline.json"] = json.dumps(
        {
            "image_tag": "b" * 40,
            "digest": BAD,
            "before": {"ingest": {"revision": "recordline-00001-x1y", "digest": EARLIER}},
            "after": {"ingest": {"revision": "recordline-00002-x2y", "digest": BAD}},
        }
    )
    # Every prod dataset is in the EU (env/prod/<cell>.tfvars.json's dataset_location).
    state["datasets"] = {"recordline": ["live", "EU"], "orders": ["live", "EU"]}
    state["job_cli"] = "recorder"
    return Cloud(tmp_path, state)


def serving(cloud: Cloud) -> list[tuple[str, int, bool]]:
    service = cloud.world["services"]["recordline"]
    latest = service["revisions"][-1]["name"]
    return [
        (latest if t.get("latest") else t["revision"], t["percent"], bool(t.get("latest")))
        for t in service["traffic"]
        if t["percent"] > 0
    ]


def run(cloud: Cloud, *scripts: str) -> str:
    done = cloud.shell("\n".join(scripts))
    assert done.returncode == 0, done.stderr
    return done.stdout


def claims(token: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(token.removeprefix("fake."))))


def recorded(cloud: Cloud) -> list[dict[str, Any]]:
    log = cloud.work / "replays.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


PARTS = {"rolling-back": "service", "rolling-the-exporter-back": "exporter"}


@dataclass
class Asked:
    """What a run of the rollback workflow said (its jobs' output, in order) and whether
    it succeeded: as a shell's, 0 or 1."""

    returncode: int
    stdout: str
    ran: tuple[str, ...] = ()  # the jobs that ran, in order

    @property
    def stderr(self) -> str:
        return self.stdout


def ask(cloud: Cloud, line: str, **values: str) -> Asked:
    """The rollback workflow run as a line of the runbook's asks it (`gh workflow run
    rollback.yml -f NAME=VALUE ...`), `values` its variables ($SYSTEM, PREV): run by
    GitHub on main, as the deploy account; then on-call again."""
    words = shlex.split(line)
    assert words[:4] == ["gh", "workflow", "run", "rollback.yml"], line
    assert "--ref=main" in words, line
    inputs = {}
    for flag, field in itertools.pairwise(words):
        if flag == "-f":
            name, _, value = field.partition("=")
            inputs[name] = values.get(value, value)
    run = run_workflow(
        cloud,
        "rollback.yml",
        inputs=inputs,
        variables=VARIABLES,
        github={**GITHUB, "event_name": "workflow_dispatch", "ref": "refs/heads/main"},
    )
    cloud.update(principal=ONCALL)
    said = "\n".join(step.stderr for _, job in run.walk() for step in job.steps)
    ran = tuple(path for path, _ in run.walk())
    return Asked(0 if run.result == "success" else 1, said, ran)


def asks(section: str, part: str, by: str = "image") -> list[str]:
    """The lines of a section of the runbook that ask rollback.yml for `part` (`by`
    set): without `to`, then with it."""
    return [
        line.replace("-f by=image", f"-f by={by}")
        for block in blocks(section)
        for line in block.splitlines()
        if line.startswith("gh workflow run rollback.yml") and f"part={part}" in line
    ]


def rolled_back(cloud: Cloud, section: str, *, by: str = "image", system: str = "orders") -> Asked:
    """A rollback section's step 2 as written, for `system`: the workflow asked without
    `to` (it must change nothing), then with `to` the revision it said it would return
    to. What both runs said; the first's alone if it refused."""
    dry, act = asks(section, PARTS[section], by)
    before = {k: cloud.world[k] for k in ("services", "worker_pools", "jobs")}
    said = ask(cloud, dry, **{"$SYSTEM": system})
    assert {k: cloud.world[k] for k in before} == before, "a run without to= changed something"
    if said.returncode != 0:
        return said
    found = re.search(r"^back to: ([\w-]+),", said.stdout, re.M)
    assert found, said.stdout
    done = ask(cloud, act, **{"$SYSTEM": system, "PREV": found.group(1)})
    return Asked(done.returncode, said.stdout + "\n" + done.stdout)


# --- where each system is -------------------------------------------------------------------


@pytest.mark.slow
def test_the_directory_lookup_sets_what_terraform_made_for_the_system(cloud: Cloud) -> None:
    keys = sorted(directory()["orders"])
    printed = run(cloud, where(), *(f'echo "{k.upper()}=${k.upper()}"' for k in keys))
    found = dict(line.split("=", 1) for line in printed.splitlines())
    assert found == {k.upper(): str(v) for k, v in directory()["orders"].items()}
    assert found["INSTANCE"] == "recordline-serving-2"
    assert found["POOL_LOGS"].startswith('resource.type="cloud_run_worker_pool"')
    # The runbook's lookup is the one every page and ticket starts with (environment
    # fleet.tf), for this environment's state bucket.
    rendered = _evaluate(
        _template(re.sub(r"\bvar\.", "local.", _locals(ENVIRONMENT)["directory"])),
        (("terraform_state_bucket", f'"{STATE_BUCKET}"'),),
    )
    assert rendered in where()
    # A name the directory lacks is said, not guessed.
    done = cloud.shell(where("nosuch"))
    assert done.returncode != 0
    assert "no system nosuch in the directory" in done.stderr


def _names(cloud: Cloud) -> set[str]:
    """Every resource name the gcloud and bq calls used: positional names and the
    flags that name a resource."""
    found: set[str] = set()
    for argv in cloud.calls():
        words = [a for a in argv if not a.startswith("-")]
        command = next((c for c in COMMAND_WORDS if words[: len(c)] == list(c)), None)
        if command is not None:
            found.update(words[len(command) :])
        for flag in ("--instance", "--job", "--service", "--worker-pool", "--to-revisions"):
            found.update(a.split("=", 1)[1].split("=")[0] for a in argv if a.startswith(f"{flag}="))
    return found


COMMAND_WORDS = [
    ("run", "services", "describe"),
    ("run", "services", "update-traffic"),
    ("run", "jobs", "execute"),
    ("run", "jobs", "update"),
    ("beta", "run", "worker-pools", "describe"),
    ("beta", "run", "worker-pools", "update-instance-split"),
    ("spanner", "databases", "execute-sql"),
    ("spanner", "instances", "describe"),
    ("spanner", "instances", "update"),
    ("scheduler", "jobs", "resume"),
]


@pytest.mark.slow
def test_every_command_names_what_the_directory_names_for_a_system_on_the_second_instance(
    cloud: Cloud,
) -> None:
    # Each section on-call runs at 3 a.m., for orders, on recordline-serving-2: every
    # name it used is one Terraform made for orders (or a revision of its cell's).
    sections = [
        blocks("export-behind")[0],
        blocks("canary-stale")[0],
        blocks("cell-not-ready")[0],
        *blocks("adding-spanner-capacity-now"),
        blocks("rolling-back")[1],
        blocks("rolling-the-exporter-back")[0],
        JOB,
        'job "$EXPORT_JOB" export --system="$SYSTEM" status',
        'job "$OPS_JOB" audit --system="$SYSTEM" --since=24h',
    ]
    state = cloud.world
    state["spanner"] = {"recordline-serving-2/orders": {"export_progress": [], "export_lease": []}}
    state["scheduler_jobs"]["orders-canary"] = "PAUSED"
    cloud.update(**state)
    run(cloud, where(), *sections)
    # The rollback, asked for orders: the workflow's commands name its cell's too.
    assert rolled_back(cloud, "rolling-back").returncode == 0
    cloud.update(principal=ONCALL)
    orders = directory()["orders"]
    allowed = {str(v) for v in orders.values()} | {
        r["name"]
        for r in cloud.world["services"]["recordline"]["revisions"]
        + cloud.world["worker_pools"][POOL]["revisions"]
    }
    used = _names(cloud)
    assert used, "no command named anything"
    assert used <= allowed, sorted(used - allowed)
    assert {"recordline-serving-2", "orders", "recordline", "orders-canary"} <= used
    assert "recordline-serving" not in used  # the first instance is another system's
    # The jobs ran for orders, with the cell's settings.
    assert [(r["command"], r["system"]) for r in recorded(cloud)] == [
        ("export", "orders"),
        ("audit", "orders"),
    ]
    assert cloud.world["scheduler_jobs"]["orders-canary"] == "ENABLED"
    # The second instance was raised to the next size Spanner takes (900 to 1000), and
    # the first not at all.
    units = {n: i["processing_units"] for n, i in cloud.world["spanner_instances"].items()}
    assert units == {"recordline-serving": 100, "recordline-serving-2": 1000}
    assert cloud.world["principal"] == ONCALL  # all of it as a person in `oncall`


# --- rolling back -------------------------------------------------------------------------


@pytest.mark.slow
def test_rolling_back_at_3am_sends_every_request_of_the_cell_to_the_previous_revision(
    cloud: Cloud,
) -> None:
    who, look = blocks("rolling-back")[:2]
    out = run(cloud, who.replace("SYSTEM=recordline", "SYSTEM=orders"), look)
    assert f'"digest": "{BAD}"' in out  # the release record
    cloud.world_file.with_name("calls.jsonl").unlink()  # what on-call read, as themselves
    done = rolled_back(cloud, "rolling-back")
    assert done.returncode == 0, done.stdout
    # Both states, by image digest and settings version, and what the one it returns
    # to serves, before it acts.
    out = done.stdout
    assert f"now:     recordline-00002-x2y, image {BAD}, settings version 1" in out
    assert f"back to: recordline-00001-x1y, image {EARLIER}, settings version 1 (ENABLED)" in out
    assert "recordline-00001-x1y will serve: orders recordline; not:  (Rolling back's" in out
    assert serving(cloud) == [("recordline-00001-x1y", 100, False)]
    # The ops job runs the image it serves again.
    assert cloud.world["jobs"]["recordline-ops"]["image"] == f"{REPOSITORY}@{EARLIER}"
    # Every command ran as the deploy account itself (the workflow's credentials), in
    # the cell's project and region.
    for argv in cloud.calls():
        if argv[0] in ("run", "secrets"):
            assert not any(a.startswith("--impersonate-service-account") for a in argv), argv
            assert f"--region={REGION}" in argv or argv[0] == "secrets", argv
            assert f"--project={PROJECT}" in argv, argv
    # Ending the pin: traffic follows the newest revision again, and the ops job runs
    # its image and its systems' file again; asked first, then acted on.
    dry, act = asks("rolling-back", "follow-latest")
    said = ask(cloud, dry, **{"$SYSTEM": "orders"})
    assert said.returncode == 0, said.stdout
    assert serving(cloud) == [("recordline-00001-x1y", 100, False)]
    assert f"following: recordline-00002-x2y, image {BAD}, settings version 1" in said.stdout
    done = ask(cloud, act, **{"$SYSTEM": "orders", "LATEST": "recordline-00002-x2y"})
    assert done.returncode == 0, done.stdout
    assert serving(cloud) == [("recordline-00002-x2y", 100, True)]
    job = cloud.world["jobs"]["recordline-ops"]
    assert job["image"] == f"{REPOSITORY}@{BAD}"
    assert job["volumes"]["/etc/recordline/systems"] == ["recordline-systems", "1"]


def test_rolling_back_acts_as_the_cells_account_as_a_deploy_does(cloud: Cloud) -> None:
    # Cloud Run checks acting as the service's account for a traffic change too: the
    # deploy account holds it (acts_as_runtime), and without it the rollback stops.
    state = cloud.world
    state["iam"]["service_accounts"][account("recordline-run")] = {}
    cloud.update(**state)
    _dry, act = asks("rolling-back", "service")
    done = ask(cloud, act, **{"$SYSTEM": "orders", "PREV": "recordline-00001-x1y"})
    assert "iam.serviceAccounts.actAs" in done.stdout
    assert serving(cloud) == [("recordline-00002-x2y", 100, True)]


def test_the_old_rollback_command_is_refused(cloud: Cloud) -> None:
    # As the person's own account, which may not change the service; as the operator
    # account, which may not either (rollbacks are the pipeline's); by a system's name,
    # which is no service any more.
    done = cloud.shell(
        f"gcloud run services update-traffic recordline --project={PROJECT} --region={REGION} "
        "--to-revisions=recordline-00001-x1y=100"
    )
    assert "PERMISSION_DENIED" in done.stderr
    done = cloud.shell(
        f"gcloud run services update-traffic recordline --project={PROJECT} --region={REGION} "
        f"--impersonate-service-account={OPERATOR} --to-revisions=recordline-00001-x1y=100"
    )
    assert "Permission 'run.services.update' denied" in done.stderr
    done = cloud.shell(
        f"gcloud run services update-traffic orders --project={PROJECT} --region={REGION} "
        f"--impersonate-service-account={OPERATOR} --to-revisions=orders-00001-x1y=100"
    )
    assert "Cannot find service [orders]" in done.stderr
    assert serving(cloud) == [("recordline-00002-x2y", 100, True)]


def test_rolling_back_skips_a_candidate_that_never_served(cloud: Cloud) -> None:
    services = cloud.world["services"]
    service = services["recordline"]
    failed = {**service["revisions"][1], "name": "recordline-00003-x3y"}
    service["revisions"].append(failed)
    service["traffic"] = [{"revision": "recordline-00002-x2y", "percent": 100}]
    cloud.update(services=services)
    done = rolled_back(cloud, "rolling-back")
    assert "back to: recordline-00001-x1y" in done.stdout
    assert serving(cloud) == [("recordline-00001-x1y", 100, False)]


def test_rolling_back_again_never_returns_to_what_the_first_rollback_left(cloud: Cloud) -> None:
    # Pinned to the last good state, the bad revision is newer than what serves: a second
    # rollback (the state returned to is bad too) goes further back, never forward to it.
    assert rolled_back(cloud, "rolling-back").returncode == 0
    assert serving(cloud) == [("recordline-00001-x1y", 100, False)]
    dry, _act = asks("rolling-back", "service")
    for by in ("image", "settings"):
        said = ask(cloud, dry.replace("-f by=image", f"-f by={by}"), **{"$SYSTEM": "orders"})
        assert "back to: recordline-00002-x2y" not in said.stdout, said.stdout
        assert said.returncode == 1, said.stdout
        first = "recordline-00001-x1y"
        refused = f"no revision that started before {first} differs from it by its {by}"
        assert refused in said.stdout, said.stdout
    assert serving(cloud) == [("recordline-00001-x1y", 100, False)]


# --- the exporter, after a release that failed after start ------------------------------------


def _bad_exporter(cloud: Cloud) -> None:
    """A release promoted on every instance that stopped exporting after its gate."""
    state = cloud.world
    pool = state["worker_pools"][POOL]
    pool["revisions"].append(
        {
            **pool["revisions"][-1],
            "name": f"{POOL}-00003-w3p",
            "digest": BAD,
            "image": f"{REPOSITORY}@{BAD}",
        }
    )
    state["jobs"]["recordline-export"]["image"] = f"{REPOSITORY}@{BAD}"
    state["stalled_digests"] = [BAD]
    cloud.update(**state)


def test_the_exporter_is_rolled_back_with_its_export_job_as_the_operator_account(
    cloud: Cloud,
) -> None:
    _bad_exporter(cloud)
    (look,) = blocks("rolling-the-exporter-back")[:1]
    run(cloud, where(), look)
    out = rolled_back(cloud, "rolling-the-exporter-back").stdout
    assert f"now:     {POOL}-00003-w3p, image {BAD}, settings version 1" in out
    assert f"back to: {POOL}-00002-w2p, image {EARLIER}, settings version 1 (ENABLED)" in out
    assert cloud.world["worker_pools"][POOL]["split"] == f"{POOL}-00002-w2p"
    assert cloud.world["jobs"]["recordline-export"]["image"] == f"{REPOSITORY}@{EARLIER}"
    # As themselves, or as the operator account, on-call may not.
    for me in ("", f" --impersonate-service-account={OPERATOR}"):
        done = cloud.shell(
            f"gcloud beta run worker-pools update-instance-split {POOL} --project={PROJECT} "
            f"--region={REGION}{me} --to-revisions={POOL}-00003-w3p=100"
        )
        assert "Permission 'run.workerpools.update' denied" in done.stderr, me
    assert cloud.world["worker_pools"][POOL]["split"] == f"{POOL}-00002-w2p"


@pytest.mark.slow
def test_the_exporter_rollback_never_returns_to_a_canary_revision(cloud: Cloud) -> None:
    # A canary revision a rollout left (one made before rollouts deleted them), newer
    # than the last good one and of another image: it reads the canary systems' file
    # alone, so returning to it would leave every other system with no exporter.
    _bad_exporter(cloud)
    state = cloud.world
    revisions = state["worker_pools"][POOL]["revisions"]
    good, bad = revisions[-2], revisions[-1]
    other = "sha256:" + "c" * 64
    canary = {
        **good,
        "name": f"{POOL}-00003-c3p",
        "digest": other,
        "image": f"{REPOSITORY}@{other}",
        "env": {**good["env"], "RECORDLINE_SYSTEMS": CANARY_SETTING},
    }
    revisions[-1:] = [canary, {**bad, "name": f"{POOL}-00004-w4p"}]
    state["registry"][REPOSITORY]["digests"].append(other)
    cloud.update(**state)
    out = rolled_back(cloud, "rolling-the-exporter-back").stdout
    assert f"back to: {POOL}-00002-w2p, image {EARLIER}, settings version 1 (ENABLED)" in out
    assert cloud.world["worker_pools"][POOL]["split"] == f"{POOL}-00002-w2p"


def test_the_exporter_rollback_states_the_rule_across_a_migration() -> None:
    text = RUNBOOK.read_text()
    section = text[text.index("## Rolling the exporter back") : text.index("## Acting as")]
    assert "never takes a lease back" in section
    assert "the way back is\nforward" in section or "the way back is forward" in section
    ledger = (TERRAFORM.parents[1] / "app" / "store" / "spanner" / "ledger.py").read_text()
    assert "schema" in ledger


# --- acting as the operator account, the cell's jobs -------------------------------------------


def test_a_token_for_the_cell_is_minted_for_the_operator_account(cloud: Cloud) -> None:
    (acting,) = blocks("acting-as-the-operator-account")
    token_line = acting.splitlines()[0]
    token = run(cloud, where(), token_line, 'echo "$TOKEN"').strip()
    assert claims(token) == {"aud": f"{URL}/v1", "email": OPERATOR}
    # What the runbook said before fails for a person: gcloud refuses --audiences for a
    # user account.
    done = cloud.shell(f"gcloud auth print-identity-token --audiences={URL}/v1")
    assert "Invalid account type for `--audiences`" in done.stderr


@pytest.mark.slow
def test_replaying_dead_letters_runs_as_the_cells_ops_job(cloud: Cloud) -> None:
    (replay,) = blocks("replaying-dead-letters")
    run(cloud, where(), JOB, replay)
    dry, wet = recorded(cloud)
    assert (dry["what"], dry["system"], dry["dry_run"]) == ("dead-letters", "orders", True)
    assert (wet["what"], wet["system"], wet["dry_run"]) == ("dead-letters", "orders", False)
    # In the cell's job, which runs as the operator account with the cell's settings:
    # no checkout, no application-default login.
    assert cloud.world["adc"] is None
    assert [e["job"] for e in cloud.world["executions"]] == ["recordline-ops"] * 2
    job = cloud.world["jobs"]["recordline-ops"]
    assert job["service_account"] == OPERATOR
    assert dry["env"]["RECORDLINE_CELL"] == "recordline"


@pytest.mark.slow
def test_only_on_call_as_the_operator_account_runs_the_cells_jobs(cloud: Cloud) -> None:
    command = 'job "$EXPORT_JOB" export --system="$SYSTEM" status'
    # Someone not on call may not act as the operator account.
    cloud.update(principal="user:someone-else@example.com")
    done = cloud.shell("\n".join([where(), JOB, command]))
    assert done.returncode != 0
    cloud.update(principal=ONCALL)
    out = run(cloud, where(), JOB, command)
    assert "recorded: export" in out
    assert "Container called exit(0)." in out
    # Without its grant on the job, the operator account may not run it.
    state = cloud.world
    state["iam"]["jobs"] = {}
    cloud.update(**state)
    done = cloud.shell("\n".join([where(), JOB, command]))
    assert "run.jobs.run" in done.stderr


@pytest.mark.slow
def test_an_override_of_a_jobs_environment_runs_nothing_and_changes_no_setting(
    cloud: Cloud, tmp_path: Path
) -> None:
    # On-call may override an execution's environment as well as its arguments
    # (run.jobs.runWithOverrides), and the export job runs as the exporter's account.
    # The way in is real: PYTHONWARNINGS imports a module of the caller's choosing, and
    # `antigravity` opens $BROWSER, a command line.
    ran = tmp_path / "ran"
    hostile = {
        "PYTHONWARNINGS": "ignore::antigravity.x",
        "BROWSER": f"touch {ran} %s",
        "RECORDLINE_SYSTEMS": "@/elsewhere/systems.json",
        "SPANNER_EMULATOR_HOST": "attacker.example:9010",
    }
    subprocess.run(
        [sys.executable, "-c", "pass"], env={**os.environ, **hostile}, capture_output=True
    )
    assert ran.exists()
    ran.unlink()
    overrides = "|".join(f"{name}={value}" for name, value in hostile.items())
    run(  # exits 0: the execution ran and completed
        cloud,
        where(),
        'gcloud run jobs execute "$EXPORT_JOB" --project="$PROJECT" --region="$REGION" '
        '--impersonate-service-account="$OPERATOR" --wait '
        f"--update-env-vars='^|^{overrides}' --args=export,--system=orders,status",
    )
    (given,) = recorded(cloud)
    assert given["command"] == "export"
    # Nothing ran besides; the settings are the job's command's, not the override's.
    assert not ran.exists()
    assert given["env"]["RECORDLINE_SYSTEMS"] == SYSTEMS_SETTING
    assert given["env"]["CLOUD_RUN_EXECUTION"] == "recordline-export-00001"
    assert set(given["env"]) == {
        *job_settings(cloud.world["jobs"]["recordline-export"]),
        "CLOUD_RUN_JOB",
        "CLOUD_RUN_EXECUTION",
        "CLOUD_RUN_TASK_INDEX",
        "CLOUD_RUN_TASK_ATTEMPT",
        "CLOUD_RUN_TASK_COUNT",
    }
    # The job's log names what it left out.
    logs = [e.get("textPayload", "") for e in cloud.world["logs"]]
    (left,) = [line for line in logs if "left out of its environment" in line]
    named = set(left.split(": ", 1)[1].split(", "))
    # Besides the override's, the fake's own: its world and its image's code.
    assert named == {*hostile, "FAKE_CLOUD_WORLD", "PYTHONPATH"}


@pytest.mark.slow
def test_the_restore_commands_are_ones_recordline_takes(cloud: Cloud) -> None:
    lines = [
        line.strip()
        for block in blocks("recovering-a-serving-database")
        for line in block.splitlines()
        if line.strip().startswith('job "$OPS_JOB" restore')
    ]
    assert len(lines) == 3
    run(cloud, where(), JOB, "T=2026-11-24T09:00:00Z", *lines)
    parsed = recorded(cloud)
    assert [p["action"] for p in parsed] == ["rows"] * 3
    assert parsed[0]["dry_run"] is True
    assert (
        parsed[0]["source"]
        == f"spanner://projects/{PROJECT}/instances/recordline-serving-2/databases/orders"
    )
    assert parsed[1]["at"].startswith("2026-11-24 09:00:00")
    assert parsed[2]["source"].endswith("/instances/recordline-restore/databases/orders")


# --- what on-call looks at ---------------------------------------------------------------------


def test_on_call_looks_at_logs_and_dead_letters_as_themselves(cloud: Cloud) -> None:
    look, logs, dead_letters = blocks("where-to-look-used-by-every-section")
    run(cloud, where(), logs, dead_letters)
    queried = cloud.calls("bq")
    assert f"`{PROJECT}.orders.dead_letters`" in queried[0][-1]
    read = [a for a in cloud.calls() if a[:2] == ["logging", "read"]]
    assert any('resource.type="cloud_run_worker_pool"' in a[2] for a in read)
    assert any('resource.type="cloud_run_revision"' in a[2] for a in read)
    # Someone not on call may do none of it: the grants are what lets them.
    cloud.update(principal="user:someone-else@example.com")
    assert cloud.shell(where()).returncode != 0  # the directory is on-call's to read
    assert look.splitlines()[1] == where().splitlines()[1]


def test_the_directory_is_listed_through_its_grants_condition_on_the_listing(
    cloud: Cloud,
) -> None:
    # `directory/*.json` is a listing of the bucket under directory/: a condition on
    # the objects' names alone grants reading each one, never finding them.
    granted = cloud.world["iam"]
    cloud.update(iam={**granted, "object_lists": {}})
    done = cloud.shell(where())
    assert "Permission 'storage.objects.list' denied" in done.stderr
    # Each object, read by its exact name, still is on-call's.
    exact = f"gcloud storage cat gs://{STATE_BUCKET}/directory/recordline.json"
    assert cloud.shell(exact).returncode == 0
    # With the grant's listing clause: the directory, and no other prefix of the bucket.
    cloud.update(iam=granted)
    assert cloud.shell(where()).returncode == 0
    done = cloud.shell(f"gcloud storage cat 'gs://{STATE_BUCKET}/recordline/*/default.tfstate'")
    assert "storage.objects.list" in done.stderr


def test_why_the_export_stopped_and_who_holds_the_lease_is_read_as_the_operator_account(
    cloud: Cloud,
) -> None:
    blocked = "BigQuery refused message 1714219200000017 of records: too many fields"
    progress = [
        {
            "table_name": "records",
            "watermark": "2026-11-23T10:00:00Z",
            "pending_rows": 3,
            "pending_message_id": "1714219200000017",
            "blocked": blocked,
            "updated": "2026-11-23T10:41:00Z",
        }
    ]
    lease = [
        {
            "name": "export",
            "holder": "recordline-exporter-00002-w2p/7 schema 3",
            "expires": "2026-11-23T10:41:15Z",
        }
    ]
    cloud.update(
        spanner={
            "recordline-serving-2/orders": {"export_progress": progress, "export_lease": lease}
        }
    )
    (look,) = blocks("export-behind")
    out = run(cloud, where(), look)
    assert blocked in out
    assert "recordline-exporter-00002-w2p/7 schema 3" in out
    queries = [a for a in cloud.calls() if a[:3] == ["spanner", "databases", "execute-sql"]]
    assert {q[3] for q in queries} == {"orders"}
    assert all("--instance=recordline-serving-2" in q for q in queries)
    # On-call as themselves hold no Spanner role.
    as_themselves = re.sub(r" --impersonate-service-account=\S+", "", look)
    assert "spanner.sessions.create" in cloud.shell("\n".join([where(), as_themselves])).stderr


@pytest.mark.slow
def test_reading_a_system_of_the_cell_as_a_reader_does(cloud: Cloud) -> None:
    (read,) = blocks("cell-not-ready")
    # The bad revision answers 500; the good one, once rolled back to, 200.
    cloud.update(broken_digests=[BAD])
    assert run(cloud, where(), read).splitlines()[-1] == "500"
    assert rolled_back(cloud, "rolling-back").returncode == 0
    assert run(cloud, where(), read).splitlines()[-1] == "200"


@pytest.mark.slow
def test_a_page_names_the_systems_it_counts(cloud: Cloud) -> None:
    from tests.infra.test_alerts import _symptoms

    query = _symptoms(("orders", "payments", "recordline"))["backlog"]
    assert "'" not in query  # it goes inside single quotes
    raw = re.sub(r"\bvar\.", "local.", _locals(ENVIRONMENT)["which_systems"])
    template = _evaluate(_template(raw), (("project_id", f'"{PROJECT}"'),))
    cloud.update(prometheus={query: ["orders", "payments"]})
    assert run(cloud, template % query).split() == ["orders", "payments"]
    (command,) = [b for b in blocks("pages-and-tickets", "bash") if "prometheus" in b]
    out = run(cloud, f"PROJECT={PROJECT}", f"QUERY='{query}'", command)
    assert out.split() == ["orders", "payments"]


# --- the commands in the alerts ---------------------------------------------------------------


def _ticket_commands(system: str) -> dict[str, str]:
    """environment/tickets.tf's ticket_commands as Terraform fills them in, and as Cloud
    Monitoring fills in ${metric.label.system} for an incident of `system`."""
    env = _locals(ENVIRONMENT)

    def hcl(raw: str) -> str:
        return re.sub(r"\b(var|local)\.", "local.", raw)

    values: dict[str, str] = {"terraform_state_bucket": f'"{STATE_BUCKET}"'}
    values["directory"] = _template(hcl(env["directory"]))
    for name in ("ticket_system", "ticket_scope", "ticket_token", "ticket_job"):
        values[name] = _template(hcl(env[name]))
    commands = {}
    for key, raw in env["ticket_commands"].items():
        template = '"' + hcl(raw).replace("\n", "\\n") + '"'
        text = _evaluate(template, tuple(sorted(values.items())))
        commands[key] = text.replace("${metric.label.system}", system)
    return commands


def _sh(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, re.S)]


@pytest.mark.slow
def test_every_ticket_command_runs_as_written_for_a_system_on_the_second_instance(
    cloud: Cloud,
) -> None:
    commands = _ticket_commands("orders")
    state = cloud.world
    state["spanner"] = {"recordline-serving-2/orders": {"export_progress": [], "export_lease": []}}
    cloud.update(**state)
    for key in ("revisions", "read", "replay", "export", "producers", "loops", "typed"):
        (block,) = _sh(commands[key])
        run(cloud, block)
    assert [(r["command"], r["system"]) for r in recorded(cloud)] == [
        ("replay", "orders"),
        ("audit", "orders"),
    ]
    used = _names(cloud)
    orders = {str(v) for v in directory()["orders"].values()}
    assert used <= orders, sorted(used - orders)
    assert cloud.world["principal"] == ONCALL


# --- capacity, a dataset, a region -------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "next_units"), [(100, 200), (400, 800), (900, 1000), (2000, 3000)]
)
def test_capacity_is_raised_to_the_next_size_spanner_takes(
    cloud: Cloud, units: int, next_units: int
) -> None:
    cloud.update(
        spanner_instances={
            "recordline-serving": {"processing_units": 100},
            "recordline-serving-2": {"processing_units": units},
        }
    )
    run(cloud, where(), *blocks("adding-spanner-capacity-now"))
    assert (
        cloud.world["spanner_instances"]["recordline-serving-2"]["processing_units"] == next_units
    )
    assert cloud.world["spanner_instances"]["recordline-serving"]["processing_units"] == 100


def test_capacity_needs_the_operator_account(cloud: Cloud) -> None:
    (add,) = blocks("adding-spanner-capacity-now")
    as_themselves = re.sub(r" --impersonate-service-account=\S+", "", add)
    assert "spanner.instances" in cloud.shell("\n".join([where(), as_themselves])).stderr


@pytest.mark.slow
def test_a_deleted_dataset_is_undropped_before_anything_creates_it_again(cloud: Cloud) -> None:
    cloud.update(datasets={"recordline": ["live", "EU"], "orders": ["dropped", "EU"]})
    undrop = blocks("a-deleted-dataset")[0]
    run(cloud, where(), undrop)
    assert cloud.world["datasets"]["orders"] == ["live", "EU"]
    assert cloud.world.get("impersonate") is None  # the impersonation ended with it
    # Without the dataset's location the query runs in the US, where no dataset of that
    # name was deleted.
    cloud.update(datasets={"recordline": ["live", "EU"], "orders": ["dropped", "EU"]})
    done = cloud.shell("\n".join([where(), undrop.replace(' --location="$DATASET_LOCATION"', "")]))
    assert "was not found in location US" in done.stderr
    # Once a dataset of that name exists again, undropping is refused: why the apply job
    # refuses to create it first (test_apply.py).
    cloud.update(
        datasets={"recordline": ["live", "EU"], "orders": ["live", "EU"]}, impersonate=None
    )
    done = cloud.shell("\n".join([where(), undrop]))
    assert "Already Exists" in done.stderr
    # As themselves, on-call may not create a dataset. (The refused run above stopped
    # before its last line: at a prompt it would have ended the impersonation.)
    cloud.update(
        datasets={"recordline": ["live", "EU"], "orders": ["dropped", "EU"]}, impersonate=None
    )
    as_themselves = "\n".join(line for line in undrop.splitlines() if "config" not in line)
    assert "bigquery.datasets.create" in cloud.shell("\n".join([where(), as_themselves])).stderr


def test_the_region_plan_takes_every_regional_resource_and_only_those_out_of_a_cells_state() -> (
    None
):
    # The state edit of docs/operations.md#losing-a-zone-or-a-region, for a cell: what
    # lives in the lost region (a Cloud Run service, pool or job, a grant on one, a
    # canary's Scheduler job, the pause before the service) leaves the state; what is
    # global or multi-regional (Pub/Sub, BigQuery, Spanner, Monitoring, IAM on accounts,
    # secrets) stays.
    (state_edit,) = [b for b in blocks("losing-a-zone-or-a-region") if "state rm" in b]
    (pattern,) = re.findall(r"grep -E '([^']+)'", state_edit)
    regional, kept = set(), set()
    for path in [*sorted(TERRAFORM.glob("*.tf")), *sorted(MODULE.glob("*.tf"))]:
        module = 'module.system["orders"].' if path.parent == MODULE else ""
        for block in _load(path).get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    address = f"{module}{rtype}.{name}"
                    where_ = json.dumps({k: body.get(k) for k in ("location", "region", "name")})
                    lost = (
                        rtype.startswith("google_cloud_run_v2_")
                        or rtype == "google_cloud_scheduler_job"
                        or "var.region" in where_
                        or address == "time_sleep.secrets_propagation"
                    )
                    (regional if lost else kept).add(address)
    assert "google_cloud_run_v2_service.ingest" in regional
    assert "google_cloud_run_v2_worker_pool.exporter" in regional
    assert 'module.system["orders"].google_cloud_scheduler_job.canary' in regional
    for address in regional:
        assert re.search(pattern, address), address
    for address in kept:
        assert not re.search(pattern, address), address


def test_break_glass_is_what_the_region_section_runs() -> None:
    section = RUNBOOK.read_text().split("## Losing a zone or a region")[1].split("\n## ")[0]
    assert "break-glass" in section
    assert "**The drill**" in section
    assert "account" in account("x")  # the cells' accounts are the project's


# --- the export commands on the emulator (tests/spanner/test_export_runbook.py) ----------------


def with_export_job(env: dict[str, str]) -> dict[str, Any]:
    """The cell as the fixture above leaves it, its export job running this checkout's
    `recordline export …` (not the recorder) with `env`: the cell's settings (its name,
    its systems' file as a value where the job mounts a file) and where the emulator
    and the fakes answer, beside what Terraform gives the job."""
    state = world(
        {"recordline": ["recordline"]},
        deployed=EARLIER,
        exporter=EARLIER,
        serving={"recordline": ["recordline"]},
    )
    state["objects"][f"gs://{STATE_BUCKET}/directory/recordline.json"] = json.dumps(
        {"recordline": {**directory()["recordline"], "instance": "recordline-serving"}}
    )
    job = state["jobs"]["recordline-export"]
    job["command"] = job_command({**env, "RECORDLINE_LOG_FORMAT": "json"})
    return state


# --- every recipe ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_loop_and_producer_sections_run_as_written(cloud: Cloud) -> None:
    (token,) = [b.splitlines()[0] for b in blocks("acting-as-the-operator-account")]
    for section in ("loop-restarting", "producers-missing", "producers-in-conflict"):
        (look,) = blocks(section)
        run(cloud, where(), JOB, token, look)
    read = [a for a in cloud.calls("curl-answer") if "/v1/producers" in a[1]]
    assert [url for _, url in read] == [f"{URL}/systems/orders/v1/producers?limit=100"] * 2
    assert [(r["command"], r["system"]) for r in recorded(cloud)] == [("audit", "orders")] * 2


def test_what_pubsub_delivered_to_a_system_is_read_as_yourself(cloud: Cloud) -> None:
    (look,) = blocks("pushes-over-the-declared-rate", "bash")
    query = (
        "sum(rate(pubsub_googleapis_com:subscription_push_request_count{"
        'monitored_resource="pubsub_subscription",response_class="ack",'
        'subscription_id="orders-push"}[1h]))'
    )
    cloud.update(prometheus={query: ["orders"]})
    answer = json.loads(run(cloud, where(), look))
    assert answer["data"]["resultType"] == "matrix"
    (series,) = answer["data"]["result"]
    assert len(series["values"]) in (24, 25)  # a point an hour over the last day
    assert cloud.world["principal"] == ONCALL


def test_a_hot_system_is_seen_throttled_and_let_go_as_written(cloud: Cloud) -> None:
    (see,) = blocks("a-hot-system", "bash")
    throttle, hold, audit, lift = blocks("a-hot-system")
    query = (
        "topk(5, sum by (database) (avg_over_time("
        "spanner_googleapis_com:instance_cpu_utilization_by_priority{"
        'monitored_resource="spanner_instance",instance_id="recordline-serving-2",'
        'is_system="false"}[10m])))'
    )
    # Orders' database spends its instance's CPU: seen by name, as yourself.
    cloud.update(prometheus={query: [{"database": "orders"}]})
    assert run(cloud, where(), see).split() == ["orders", "1"]
    # Another system's throttle, set before: kept through orders' throttle and its lifting.
    other = {"instance_pushes_per_second": 2, "by": "a@example.com", "reason": "replay"}
    secrets = cloud.world["secrets"]
    secrets["recordline-throttles"]["versions"]["1"]["data"] = json.dumps({"recordline": other})
    cloud.update(secrets=secrets)
    run(cloud, where(), throttle)
    versions = cloud.world["secrets"]["recordline-throttles"]["versions"]
    why = {
        "by": ONCALL.partition(":")[2],
        "reason": "backfill holds the serving instance at 90% CPU",
    }
    written = json.loads(versions["2"]["data"])
    assert written == {"recordline": other, "orders": {"instance_pushes_per_second": 5, **why}}

    def taken_up(version: str) -> dict[str, str]:
        """What the cell and its exporter pool read of a version: every entry a throttle."""
        path = cloud.work / "throttled.json"
        throttles = Throttles(str(path), ["recordline", "orders"])
        path.write_text(versions[version]["data"])
        asyncio.run(throttles.read())
        assert throttles.problems() == []
        return throttles.in_force()

    assert sorted(taken_up("2")) == ["orders", "recordline"]

    def with_paces(rate: str, rows: str) -> str:
        """The block as on-call runs it with `RATE` and `ROWS` set so."""
        block = re.sub(r"(?m)^(\s*)RATE=\S*", rf"\g<1>RATE={rate}", throttle)
        return re.sub(r"(?m)^(\s*)ROWS=\S*", rf"\g<1>ROWS={rows}", block)

    # Its export slowed instead, its pushes let go: the entry is the system's whole throttle.
    run(cloud, where(), with_paces("", "200"))
    versions = cloud.world["secrets"]["recordline-throttles"]["versions"]
    assert json.loads(versions["3"]["data"])["orders"] == {"export_rows_per_second": 200, **why}
    assert taken_up("3")["orders"].startswith("its export at 200 rows a second, set by")
    # And both.
    run(cloud, where(), with_paces("5", "200"))
    versions = cloud.world["secrets"]["recordline-throttles"]["versions"]
    assert json.loads(versions["4"]["data"])["orders"] == {
        "instance_pushes_per_second": 5,
        "export_rows_per_second": 200,
        **why,
    }
    assert taken_up("4")["orders"].startswith(
        "5 pushes a second an instance and its export at 200 rows a second"
    )
    # A pace that is no number adds no version (an empty one would lift every throttle).
    failed = cloud.shell("\n".join([where(), with_paces("five", "")]))
    assert failed.returncode != 0
    assert "5" not in cloud.world["secrets"]["recordline-throttles"]["versions"]
    # It holds: each instance's line, the service's and the pool's, and who added the version.
    said = "system orders throttled: 5 pushes a second an instance"
    cloud.update(
        logs=[
            {
                "resource": {
                    "type": "cloud_run_revision",
                    "labels": {"service_name": "recordline"},
                },
                "timestamp": "2026-11-27T03:00:00Z",
                "jsonPayload": {"message": said, "throttled_by": "oncall@example.com"},
            },
            {
                "resource": {
                    "type": "cloud_run_worker_pool",
                    "labels": {"worker_pool_name": "recordline-exporter"},
                },
                "timestamp": "2026-11-27T03:00:01Z",
                "jsonPayload": {
                    "message": f"{said} and its export at 200 rows a second",
                    "throttled_by": "oncall@example.com",
                },
            },
            {
                "timestamp": "2026-11-27T03:00:00Z",
                "protoPayload": {
                    "methodName": (
                        "google.cloud.secretmanager.v1.SecretManagerService.AddSecretVersion"
                    ),
                    "resourceName": f"projects/{NUMBER}/secrets/recordline-throttles",
                    "authenticationInfo": {"principalEmail": OPERATOR},
                },
            },
        ]
    )
    shown = run(cloud, where(), hold)
    assert said in shown
    assert f"{said} and its export at 200 rows a second" in shown
    shown = run(cloud, where(), audit)
    assert "/secrets/recordline-throttles/versions/2" in shown
    assert OPERATOR in shown
    # And back: orders' throttle gone, both its paces, the other system's kept.
    run(cloud, where(), lift)
    versions = cloud.world["secrets"]["recordline-throttles"]["versions"]
    assert json.loads(versions["5"]["data"]) == {"recordline": other}
    assert cloud.world["principal"] == ONCALL


# Each section of the runbook with shell lines, and what runs them against the fake cloud
# (a test here, or a file of tests), or why they cannot run there.
RUN_BY: dict[str, Any] = {
    "pages-and-tickets": test_a_page_names_the_systems_it_counts,
    "where-to-look-used-by-every-section": (
        test_on_call_looks_at_logs_and_dead_letters_as_themselves
    ),
    "canary-stale": (
        test_every_command_names_what_the_directory_names_for_a_system_on_the_second_instance
    ),
    "cell-not-ready": test_reading_a_system_of_the_cell_as_a_reader_does,
    "export-behind": (
        test_why_the_export_stopped_and_who_holds_the_lease_is_read_as_the_operator_account
    ),
    "export-blocked": "tests/spanner/test_export_runbook.py",  # the Spanner emulator
    "loop-restarting": test_the_loop_and_producer_sections_run_as_written,
    "producers-missing": test_the_loop_and_producer_sections_run_as_written,
    "producers-in-conflict": test_the_loop_and_producer_sections_run_as_written,
    "pushes-over-the-declared-rate": test_what_pubsub_delivered_to_a_system_is_read_as_yourself,
    "a-hot-system": test_a_hot_system_is_seen_throttled_and_let_go_as_written,
    "adding-spanner-capacity-now": test_capacity_is_raised_to_the_next_size_spanner_takes,
    # Its job lines; Spanner's backups and point-in-time reads are in neither the
    # emulator nor the fake (the section says a first drill in dev proves them).
    "recovering-a-serving-database": test_the_restore_commands_are_ones_recordline_takes,
    "rolling-back": "tests/infra/test_rollback_drills.py",
    "rolling-the-exporter-back": "tests/infra/test_rollback_drills.py",
    "acting-as-the-operator-account": (
        test_a_token_for_the_cell_is_minted_for_the_operator_account
    ),
    "replaying-dead-letters": test_replaying_dead_letters_runs_as_the_cells_ops_job,
    "running-commands-as-a-cells-job": (
        test_only_on_call_as_the_operator_account_runs_the_cells_jobs
    ),
    "a-deleted-dataset": "tests/infra/test_rollback_drills.py",  # drill d
}
NOT_RUN = {
    # Its grep is checked against every regional resource (test_the_region_plan_...),
    # and the break-glass run that follows it is tests/infra/test_break_glass.py's.
    "losing-a-zone-or-a-region": "terraform state edits of a cell's state, by an owner",
    "an-apply-cut-short": "terraform state lock and imports of a cell's state, by an owner",
    "retiring-a-system": "terraform state edits of a cell's state, by an owner",
}


def test_every_section_with_commands_names_what_runs_them() -> None:
    text = RUNBOOK.read_text()
    sections = set()
    current = ""
    for part in re.split(r"(?m)^(#{2,4} .+)$", text):
        heading = re.match(r"#{2,4} (.+)$", part)
        if heading:
            current = slug(heading.group(1))
        elif re.search(r"```(sh|bash)\n", part):
            sections.add(current)
    assert sections == set(RUN_BY) | set(NOT_RUN), sorted(sections ^ (set(RUN_BY) | set(NOT_RUN)))
    for section, runner in RUN_BY.items():
        if isinstance(runner, str):  # a file of tests that runs the section's blocks
            assert f'"{section}"' in (RUNBOOK.parents[1] / runner).read_text(), (section, runner)
        else:
            assert runner.__name__.startswith("test_"), section
    # What is not run here is terraform's, on a state: no command of gcloud, bq or curl.
    for section in NOT_RUN:
        for block in blocks(section):
            assert not re.search(r"^(gcloud|bq|curl|job) ", block, re.M), section

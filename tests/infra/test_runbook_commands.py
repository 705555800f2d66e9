"""The runbook's commands, and those in the alerts, run as written against a fake cloud.

docs/operations.md's shell blocks (rolling back, acting as the operator account,
replaying dead letters, reading as the probe does) and each ticket's commands, with
the values Terraform fills in, are run by bash with tests/infra/fake_cloud.py as gcloud
and curl, as a member of `oncall`: a user account that holds no role but may act as
the operator account. The fake refuses what Google refuses (a run command without
--region, an ID token with --audiences for a user account, a revision that does not
exist), so a command that only looks right fails here. `recordline replay` is parsed by
the real command line, and records what it was asked.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_rollout import (
    EARLIER,
    NUMBER,
    ONCALL,
    OPERATOR,
    PROJECT,
    REGION,
    account,
    world,
)
from tests.infra.test_runbook import RUNBOOK, slug
from tests.infra.test_terraform import _evaluate, _locals, _resources, _template
from tests.infra.workflow_runner import ROOT, Cloud

BAD = "sha256:" + "d" * 64
URL = f"https://recordline-{NUMBER}.{REGION}.run.app"


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
    assert found, f"no sh block in #{section}"
    return found


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    """recordline, its good revision (EARLIER) followed by a bad one that serves."""
    state = world(["recordline"], deployed=EARLIER)
    service = state["services"]["recordline"]
    service["revisions"][0].update(command=None, args=None, digest=EARLIER)
    service["revisions"][1].update(
        digest=BAD, image=service["revisions"][1]["image"].replace(EARLIER, BAD)
    )
    cloud = Cloud(tmp_path, state)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    recorder = tmp_path / ".venv" / "bin" / "recordline"
    helper = Path(__file__).with_name("replay_recorder.py")
    recorder.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" "{helper}" "$@"\n')
    recorder.chmod(0o755)
    return cloud


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


# --- rolling back -------------------------------------------------------------------------


def test_rolling_back_at_3am_sends_every_request_to_the_previous_revision(cloud: Cloud) -> None:
    who, look, roll_back, unpin = blocks("rolling-back")
    out = run(cloud, who, look, roll_back)
    assert "rolling recordline back from recordline-00002-x2y to recordline-00001-x1y" in out
    assert serving(cloud) == [("recordline-00001-x1y", 100, False)]
    # Every command acted as the operator account, in the system's project and region.
    for argv in cloud.calls():
        if argv[0] == "run":
            assert f"--impersonate-service-account={OPERATOR}" in argv, argv
            assert f"--region={REGION}" in argv, argv
            assert f"--project={PROJECT}" in argv, argv
    # Ending the pin: traffic follows the newest revision again.
    run(cloud, who, unpin)
    assert serving(cloud) == [("recordline-00002-x2y", 100, True)]


def test_the_old_rollback_command_is_refused(cloud: Cloud) -> None:
    # What the runbook said before: no region, no project, a revision to guess, and as
    # the person's own account, which may not change the service.
    done = cloud.shell(
        "gcloud run services update-traffic recordline --to-revisions=recordline-00001-x1y=100"
    )
    assert done.returncode != 0
    done = cloud.shell(
        f"gcloud run services update-traffic recordline --project={PROJECT} --region={REGION} "
        "--to-revisions=recordline-00001-x1y=100"
    )
    assert done.returncode != 0
    assert "PERMISSION_DENIED" in done.stderr
    assert serving(cloud) == [("recordline-00002-x2y", 100, True)]


# --- acting as the operator account, replaying ---------------------------------------------


def test_a_token_for_the_service_is_minted_for_the_operator_account(cloud: Cloud) -> None:
    (acting,) = blocks("acting-as-the-operator-account")
    token = run(cloud, acting, 'echo "$TOKEN"').strip()
    assert claims(token) == {"aud": f"{URL}/v1", "email": OPERATOR}
    # What the runbook said before fails for a person: gcloud refuses --audiences
    # for a user account.
    done = cloud.shell(f"gcloud auth print-identity-token --audiences={URL}/v1")
    assert "Invalid account type for `--audiences`" in done.stderr


def test_replaying_dead_letters_as_written(cloud: Cloud) -> None:
    (acting,) = blocks("acting-as-the-operator-account")
    (replay,) = blocks("replaying-dead-letters")
    run(cloud, acting, replay)
    # Pub/Sub is pulled with Application Default Credentials of the operator account.
    assert cloud.world["adc"] == f"serviceAccount:{OPERATOR}"
    dry, wet = [
        json.loads(line) for line in (cloud.work / "replays.jsonl").read_text().splitlines()
    ]
    assert dry["dry_run"] is True
    assert wet["dry_run"] is False
    for args in (dry, wet):
        assert args["what"] == "dead-letters"
        assert (
            args["subscription"]
            == f"projects/{PROJECT}/subscriptions/recordline-dead-letter-replay"
        )
        assert args["url"] == URL
        assert claims(args["token"]) == {"aud": f"{URL}/v1", "email": OPERATOR}


def test_reading_as_the_probe_does(cloud: Cloud) -> None:
    (read,) = blocks("records-not-readable")
    # The bad revision answers 500; the good one, once rolled back to, 200.
    cloud.update(broken_digests=[BAD])
    assert run(cloud, read).splitlines()[-1] == "500"
    who, _look, roll_back, _ = blocks("rolling-back")
    run(cloud, who, roll_back)
    assert run(cloud, read).splitlines()[-1] == "200"


# --- the commands in the alerts ---------------------------------------------------------------


def _ticket_commands(system: str = "recordline") -> dict[str, str]:
    """tickets.tf's local.ticket_commands as Terraform fills them in, and as Cloud
    Monitoring fills in ${metric.label.system} for an incident of `system`."""

    def hcl(raw: str) -> str:
        bound = re.sub(r"\b(var|local)\.", "local.", raw)
        bound = bound.replace("google_service_account.operator.email", "local.operator")
        bound = bound.replace("data.google_project.this.number", "local.number")
        return bound.replace("values(module.system)[0].probe_path", "local.probe_path")

    values = {
        "project_id": f'"{PROJECT}"',
        "region": f'"{REGION}"',
        "operator": f'"{OPERATOR}"',
        "number": f'"{NUMBER}"',
        "read_audience": '""',
        "probe_path": json.dumps(_locals()["probe_path"]),
        "spanner_instance_name": '"recordline-serving"',
        # A fleet past one instance's databases: `orders` on the second (spanner.tf).
        "serving_instance": (
            '{ recordline = "recordline-serving", orders = "recordline-serving-2" }'
        ),
    }
    values["ticket_probe_path"] = "local.probe_path"
    for name in ("ticket_system", "ticket_scope", "ticket_service_url", "ticket_token"):
        values[name] = _template(hcl(_locals()[name]))
    values["ticket_audience"] = hcl(_locals()["ticket_audience"]).removeprefix("${")[:-1]
    values["ticket_instances"] = hcl(_locals()["ticket_instances"]).removeprefix("${")[:-1]
    commands = {}
    for key, raw in _locals()["ticket_commands"].items():
        # Heredocs come back from python-hcl2 escaped as a quoted string's body.
        template = '"' + hcl(raw).replace("\n", "\\n") + '"'
        text = _evaluate(template, tuple(sorted(values.items())))
        commands[key] = text.replace("${metric.label.system}", system)
    return commands


def _sh(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_every_ticket_command_runs_as_written_for_the_system(cloud: Cloud) -> None:
    commands = _ticket_commands()
    look, roll_back = _sh(commands["revisions"])
    run(cloud, look)
    # The one value a person chooses: the revision to return to.
    chosen = re.sub(r"(?m)^PREV=\S+", "PREV=recordline-00001-x1y", roll_back)
    assert chosen != roll_back
    run(cloud, chosen)
    assert serving(cloud) == [("recordline-00001-x1y", 100, False)]
    (read,) = _sh(commands["read"])
    assert run(cloud, read).splitlines()[-1] == "200"
    (replay,) = _sh(commands["replay"])
    run(cloud, replay)
    (args,) = [json.loads(line) for line in (cloud.work / "replays.jsonl").read_text().splitlines()]
    assert args["url"] == URL
    assert claims(args["token"]) == {"aud": f"{URL}/v1", "email": OPERATOR}
    assert cloud.world["principal"] == ONCALL  # all of it as a person in `oncall`


# --- the exporter's state, with a serving tier ---------------------------------------------

BLOCKED = "BigQuery refused message 1714219200000017 of records: too many fields"


def _exporter_stopped(cloud: Cloud) -> None:
    """recordline's serving database, its export of records stopped at a refused row."""
    progress = [
        {
            "table_name": "records",
            "watermark": "2026-11-23T10:00:00Z",
            "pending_rows": 3,
            "pending_message_id": "1714219200000017",
            "blocked": BLOCKED,
            "updated": "2026-11-23T10:41:00Z",
        },
        {
            "table_name": "rejected",
            "watermark": "2026-11-23T11:40:00Z",
            "pending_rows": None,
            "pending_message_id": None,
            "blocked": None,
            "updated": "2026-11-23T11:40:05Z",
        },
    ]
    cloud.update(spanner={"recordline-serving/recordline": {"export_progress": progress}})


def test_why_the_export_stopped_is_read_as_the_operator_account(cloud: Cloud) -> None:
    _exporter_stopped(cloud)
    (look,) = blocks("export-behind")
    out = run(cloud, look)
    assert BLOCKED in out
    assert "2026-11-23T11:40:00Z" in out  # the other table's watermark
    (query,) = [
        argv for argv in cloud.calls() if argv[:3] == ["spanner", "databases", "execute-sql"]
    ]
    assert f"--impersonate-service-account={OPERATOR}" in query
    assert query[3] == "recordline"  # the system's database, on the serving instance
    assert "--instance=recordline-serving" in query
    # On-call as themselves hold no Spanner role; someone not on call may not act as it.
    as_themselves = re.sub(r" --impersonate-service-account=\S+", "", look)
    assert "spanner.sessions.create" in cloud.shell(as_themselves).stderr
    cloud.update(principal="user:someone-else@example.com")
    assert cloud.shell(look).returncode != 0


def test_the_export_tickets_command_runs_as_written_for_the_system(cloud: Cloud) -> None:
    _exporter_stopped(cloud)
    (look,) = _sh(_ticket_commands()["export"])
    out = run(cloud, look)
    assert BLOCKED in out
    assert cloud.world["principal"] == ONCALL


# --- on-call looks as themselves, acts as the operator account ---------------------------


def test_the_export_ticket_reads_each_system_on_its_own_spanner_instance() -> None:
    for system, instance in (
        ("recordline", "recordline-serving"),
        ("orders", "recordline-serving-2"),
    ):
        (look,) = _sh(_ticket_commands(system)["export"])
        (line,) = [line for line in look.splitlines() if line.startswith("INSTANCE=")]
        said = subprocess.run(
            ["bash", "-c", f'SYSTEM={system}\n{line}\necho "$INSTANCE"'],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert said.strip() == instance
        assert '--instance="$INSTANCE"' in look


def test_on_call_looks_at_logs_and_dead_letters_as_themselves(cloud: Cloud) -> None:
    who, logs, dead_letters = blocks("where-to-look-used-by-every-section")
    run(cloud, who, logs, dead_letters)
    queried = [argv for argv in cloud.calls("bq")]
    assert queried
    assert f"`{PROJECT}.recordline.dead_letters`" in queried[0][-1]
    # Someone not on call may do neither: the grants are what lets them.
    cloud.update(principal="user:someone-else@example.com")
    assert cloud.shell("\n".join([who, logs])).returncode != 0
    assert cloud.shell("\n".join([who, dead_letters])).returncode != 0


def test_a_paused_canary_is_resumed_as_the_operator_account(cloud: Cloud) -> None:
    (who,) = blocks("where-to-look-used-by-every-section")[:1]
    (resume,) = blocks("canary-stale")
    cloud.update(scheduler_jobs={"recordline-canary": "PAUSED"})
    run(cloud, who, resume)
    assert cloud.world["scheduler_jobs"]["recordline-canary"] == "ENABLED"
    # What the runbook said before: as the person, who may change nothing.
    done = cloud.shell(
        f"gcloud scheduler jobs resume recordline-canary --location={REGION} --project={PROJECT}"
    )
    assert "cloudscheduler.jobs.enable" in done.stderr


def test_the_project_number_is_read_as_the_operator_account(cloud: Cloud) -> None:
    (acting,) = blocks("acting-as-the-operator-account")
    assert "NUMBER=" in acting
    run(cloud, acting)
    # Someone who is not on call may neither act as the operator nor read the project.
    cloud.update(principal="user:someone-else@example.com")
    assert "getAccessToken" in cloud.shell(acting).stderr
    done = cloud.shell(f"gcloud projects describe {PROJECT} --format='value(projectNumber)'")
    assert "resourcemanager.projects.get" in done.stderr


def test_rolling_back_skips_a_candidate_that_never_served(cloud: Cloud) -> None:
    # recordline-00002 (bad) serves; a later deploy's candidate failed its smoke test
    # and is still there, newest, without traffic.
    services = cloud.world["services"]
    service = services["recordline"]
    failed = {**service["revisions"][1], "name": "recordline-00003-x3y"}
    service["revisions"].append(failed)
    service["traffic"] = [{"revision": "recordline-00002-x2y", "percent": 100}]
    cloud.update(services=services)
    who, _look, roll_back, _ = blocks("rolling-back")
    out = run(cloud, who, roll_back)
    assert "back from recordline-00002-x2y to recordline-00001-x1y" in out
    assert serving(cloud) == [("recordline-00001-x1y", 100, False)]


def test_a_page_names_the_systems_it_counts(cloud: Cloud) -> None:
    from tests.infra.test_alerts import _symptoms

    query = _symptoms(("orders", "payments", "recordline"))["backlog"]
    assert "'" not in query  # it goes inside single quotes
    raw = re.sub(r"\bvar\.", "local.", _locals()["which_systems"])
    template = _evaluate(_template(raw), (("project_id", f'"{PROJECT}"'),))
    cloud.update(prometheus={query: ["orders", "payments"]})
    assert run(cloud, template % query).split() == ["orders", "payments"]
    content = _resources("google_monitoring_alert_policy")["page"]["documentation"][0]["content"]
    assert content == '${module.alert_documentation.texts["page ${each.key}"]}'
    assert "format(local.which_systems, page[1])" in _locals()["page_documentation"]
    # The runbook's own copy of the command runs too (a bash block: it calls Cloud
    # Monitoring, not the service whose API the sh blocks' curls are checked against).
    (command,) = [b for b in blocks("pages-and-tickets", "bash") if "prometheus" in b]
    who = blocks("where-to-look-used-by-every-section")[0]
    out = run(cloud, who, f"QUERY='{query}'", command)
    assert out.split() == ["orders", "payments"]


# --- the serving tier: capacity now, rows back ------------------------------------------------


def _serving_instance(cloud: Cloud, units: int) -> None:
    """recordline-serving at `units`, the operator account's capacity role on it, as
    Terraform grants it (capacity.tf)."""
    grant = _resources("google_spanner_instance_iam_member")["operator_capacity"]
    assert grant["role"] == "${google_project_iam_custom_role.operator_capacity.id}"
    role_id = _resources("google_project_iam_custom_role")["operator_capacity"]["role_id"]
    iam = cloud.world["iam"]
    iam["instances"] = {
        "recordline-serving": {
            f"serviceAccount:{OPERATOR}": [f"projects/{PROJECT}/roles/{role_id}"]
        }
    }
    cloud.update(iam=iam, spanner_instances={"recordline-serving": {"processing_units": units}})


def test_capacity_is_added_at_once_as_the_operator_account(cloud: Cloud) -> None:
    _serving_instance(cloud, 100)
    (who,) = blocks("acting-as-the-operator-account")
    (add,) = blocks("adding-spanner-capacity-now")
    out = run(cloud, who, add)
    assert out.splitlines()[-2:] == ["100", "Updated instance [recordline-serving]."]
    assert cloud.world["spanner_instances"]["recordline-serving"]["processing_units"] == 200
    # As themselves, on-call may not; nor may anyone not on call act as the account.
    as_themselves = re.sub(r" --impersonate-service-account=\S+", "", add)
    assert "spanner.instances" in cloud.shell("\n".join([who, as_themselves])).stderr
    cloud.update(principal="user:someone-else@example.com")
    assert cloud.shell("\n".join([who, add])).returncode != 0


def test_the_restore_commands_are_ones_recordline_takes(cloud: Cloud) -> None:
    # Each `recordline restore rows` of the runbook, parsed by the real command line.
    lines = [
        line.strip()
        for block in blocks("recovering-a-serving-database")
        for line in block.splitlines()
        if line.strip().startswith(".venv/bin/recordline restore")
    ]
    assert len(lines) == 3
    settings = (
        "SYSTEM=recordline PROJECT=recordline-prod INSTANCE=recordline-serving"
        " T=2026-11-24T09:00:00Z"
    )
    run(cloud, settings, *lines)
    parsed = [json.loads(line) for line in (cloud.work / "replays.jsonl").read_text().splitlines()]
    assert [p["action"] for p in parsed] == ["rows"] * 3
    assert parsed[0]["dry_run"] is True
    assert parsed[1]["at"].startswith("2026-11-24 09:00:00")
    assert parsed[2]["source"].endswith("/instances/recordline-restore/databases/recordline")


# --- a region lost ------------------------------------------------------------------------------


def test_the_region_plan_takes_every_regional_resource_and_only_those_out_of_the_state() -> None:
    # The state edit of docs/operations.md#losing-a-zone-or-a-region: what lives in the
    # lost region (its location or region is the environment's region, or a Cloud Run
    # service's or job's) leaves the state, so no plan waits on it; what is global or
    # multi-regional (Pub/Sub, BigQuery, Spanner, Monitoring, IAM on accounts) stays.
    (state_edit,) = blocks("losing-a-zone-or-a-region")
    (pattern,) = re.findall(r"grep -E '([^']+)'", state_edit)
    from tests.infra.test_terraform import MODULE, TERRAFORM, _load

    regional, kept = set(), set()
    for path in [*sorted(TERRAFORM.glob("*.tf")), *sorted(MODULE.glob("*.tf"))]:
        module = 'module.system["orders"].' if path.parent == MODULE else ""
        for block in _load(path).get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    key = '["europe-west1"]' if "for_each" in body else ""
                    address = f"{module}{rtype}.{name}{key}"
                    where = json.dumps({k: body.get(k) for k in ("location", "region")})
                    if rtype.startswith("google_artifact_registry_repository"):
                        # One per region, keyed by it: the standby's is kept.
                        regional.add(address)
                        kept.add(address.replace("europe-west1", "europe-west4"))
                        continue
                    # In the region, or where a Cloud Run resource is (a grant on each of
                    # a system's jobs is `for_each` over them; the exporter service's
                    # grant is on each.value, its worker pool).
                    on_job = body.get("for_each") == "${google_cloud_run_v2_job.export}"
                    on_pool = rtype.startswith("google_cloud_run_v2_") and "each.value" in where
                    in_region = "var.region" in where or "google_cloud_run_v2_" in where
                    lost = in_region or on_job or on_pool
                    (regional if lost else kept).add(address)
    assert 'module.system["orders"].google_cloud_run_v2_service.recordline' in regional
    assert 'module.system["orders"].google_cloud_scheduler_job.canary' in regional
    for address in regional:
        assert re.search(pattern, address), address
    for address in kept:
        assert not re.search(pattern, address), address


# --- the export commands, as the system's export job -------------------------------------

JOB = "recordline-export"


def with_export_job(env: dict[str, str]) -> dict[str, Any]:
    """recordline's project as Terraform leaves it with `serving`: the revision EARLIER
    serves, and the export job (modules/system/export_job.tf: its command, arguments and
    account) runs with the service's settings, `env` among them."""
    state = world(["recordline"], deployed=EARLIER)
    service = state["services"]["recordline"]
    service["revisions"][0].update(command=None, args=None, digest=EARLIER)
    service["traffic"] = [{"revision": service["revisions"][1]["name"], "percent": 100}]
    job = _resources("google_cloud_run_v2_job")["export"]
    assert job["name"] == "${var.service_name}-export"
    task = job["template"][0]["template"][0]
    (container,) = task["containers"]
    assert task["service_account"] == "${google_service_account.runtime.email}"
    assert task["max_retries"] == 0  # a decision is never run twice on its own
    assert container["dynamic"][0]["env"]["for_each"] == "${local.service_env}"
    state["jobs"] = {
        JOB: {
            "image": "python:3.11-slim",  # the placeholder, until the runbook sets it
            "command": container["command"],
            "args": container["args"],
            "service_account": account("recordline-run"),
            "env": {**env, "RECORDLINE_LOG_FORMAT": "json", "RECORDLINE_SYSTEM": "recordline"},
        }
    }
    return state


def test_only_on_call_as_the_operator_account_runs_the_export_job(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path, with_export_job({}))
    (running,) = blocks("running-export-commands")
    # Someone not on call may not act as the operator account.
    cloud.update(principal="user:someone-else@example.com")
    done = cloud.shell(running)
    assert done.returncode != 0
    assert "getAccessToken" in done.stderr
    # On call, acting as the operator account, which may set the job's image and run
    # it: the run happens (and fails here, with no serving database: exit 2, said).
    cloud.update(principal=ONCALL)
    done = cloud.shell(running)
    assert done.returncode == 0, done.stderr
    assert "no serving tier" in done.stdout
    assert "Container called exit(2)." in done.stdout
    (ran,) = cloud.world["executions"]
    assert ran["args"] == ["export", "status"]
    # Without its grant on the job, the operator account may do neither.
    state = cloud.world
    state["iam"]["jobs"] = {}
    cloud.update(**state)
    done = cloud.shell(running)
    assert done.returncode != 0
    assert "run.jobs.update" in done.stderr
    assert len(cloud.world["executions"]) == 1

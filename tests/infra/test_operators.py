"""Who may replay and roll back: each system's `operators`, and the operator account.

The cell's service lets each system's operator_principals (its entry of
RECORDLINE_SYSTEMS) replay that system; replaying also needs Cloud Run's invoker check
of the cell and a pull of the system's dead-letter subscription; rolling back needs a
change to the cell's service. Each is checked against the permissions of the role granted
(tests/infra/gcp_roles.json).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.infra.test_fleet import _cell, _root_console_run
from tests.infra.test_iam_coverage import _roles
from tests.infra.test_terraform import (
    ENVIRONMENT,
    MODULE,
    TERRAFORM,
    _load,
    _locals,
    _resources,
    _root,
    _validations_hold,
)

OPERATOR = "recordline-operator@recordline-dev.iam.gserviceaccount.com"


def test_each_system_takes_operators_and_the_service_hears_of_them() -> None:
    (module,) = [b["system"] for b in _root("module") if "system" in b]
    assert module["operators"] == "${toset(local.operators_of[each.key])}"
    assert module["operator_service_account"] == "${local.environment_accounts.operator}"
    operators = (
        '["user:ada@example.com", "serviceAccount:etl@p.iam.gserviceaccount.com",'
        ' "domain:example.com"]'
    )
    cell = _cell(
        f"{{ recordline = {{}}, orders = {{ operators = {operators} }} }}",
        operators='["user:bob@example.com"]',
    )
    # As the service reads them (app/auth/access.py): e-mails, and domain:DOMAIN; a
    # system's own replace the cell's; the operator account is an operator of each.
    assert cell["file"]["orders"]["operator_principals"] == ",".join(
        sorted(["ada@example.com", "etl@p.iam.gserviceaccount.com", "domain:example.com", OPERATOR])
    )
    assert cell["file"]["recordline"]["operator_principals"] == ",".join(
        sorted(["bob@example.com", OPERATOR])
    )


def test_exporters_reach_the_file_only_where_a_system_or_the_cell_names_them() -> None:
    exporters = '["user:ada@example.com", "domain:example.com"]'
    cell = _cell(
        f"{{ recordline = {{}}, orders = {{ exporters = {exporters} }}, books = {{}} }}",
    )
    # As the service reads them; no operator account: operators export either way.
    assert cell["file"]["orders"]["export_principals"] == "ada@example.com,domain:example.com"
    # A system that names none, in a cell that names none: every reader exports, as before.
    assert "export_principals" not in cell["file"]["recordline"]
    assert "export_principals" not in cell["file"]["books"]
    # The cell's own are every system's that names none; a system's own replace them.
    cell = _cell(
        f"{{ recordline = {{}}, orders = {{ exporters = {exporters} }} }}",
        exporters='["user:bob@example.com"]',
    )
    assert cell["file"]["recordline"]["export_principals"] == "bob@example.com"
    assert cell["file"]["orders"]["export_principals"] == "ada@example.com,domain:example.com"


def test_operators_get_what_replay_needs_on_their_system_only() -> None:
    members = _locals(MODULE)["operator_members"]
    assert "{for m in var.operators : m => m}" in members
    assert "operator-account = local.operator_member" in members
    pull = _resources("google_pubsub_subscription_iam_member", MODULE)[
        "operators_pull_dead_letters"
    ]
    assert pull["for_each"] == "${local.operator_members}"
    assert pull["subscription"] == "${google_pubsub_subscription.dead_letter_replay.name}"
    assert "pubsub.subscriptions.consume" in _roles()[pull["role"]]
    # Cloud Run's invoker check of the cell: each operator once, whichever systems name
    # them (the service then admits each to its own systems only).
    invokers = _locals(TERRAFORM)["ingest_invokers"]
    assert (
        "distinct(flatten([for name in keys(local.systems) :"
        " concat(local.readers_of[name], local.operators_of[name], local.exporters_of[name])]))"
        in invokers
    )
    assert "operator-account = local.operator_member" in invokers
    invoker = _resources("google_cloud_run_v2_service_iam_member")["invokers"]
    assert invoker["for_each"] == "${local.ingest_invokers}"
    assert "run.routes.invoke" in _roles()[invoker["role"]]


def test_the_operator_account_runs_the_jobs_changes_none_and_oncall_may_act_as_it() -> None:
    assert _resources("google_service_account", ENVIRONMENT)["operator"]["account_id"] == (
        "${var.service_name}-operator"
    )
    # Changing a service, a pool or a job of the cell, and acting as the account it runs
    # as, are the deploy account's alone (on-call asks rollback.yml to roll back): together
    # they are deploying any image with the cell's data.
    granted = json.dumps(
        {
            name: _resources(rtype)[name]
            for rtype, name in (
                ("google_cloud_run_v2_service_iam_member", "developers"),
                ("google_cloud_run_v2_worker_pool_iam_member", "developers"),
                ("google_cloud_run_v2_job_iam_member", "ops_developers"),
                ("google_cloud_run_v2_job_iam_member", "export_developers"),
                ("google_service_account_iam_member", "acts_as_runtime"),
                ("google_service_account_iam_member", "acts_as_exporter"),
            )
        }
    )
    assert "deployer" in granted
    assert "operator" not in granted
    # The jobs: run, with a command's arguments, and nothing else.
    for name in ("ops_executors", "export_executors"):
        runs = _resources("google_cloud_run_v2_job_iam_member")[name]
        assert runs["member"] == "${local.operator_member}", name
        assert _roles()[runs["role"]] == {
            "run.jobs.run",
            "run.jobs.runWithOverrides",
            "run.executions.cancel",
        }, name
    oncall = _resources("google_service_account_iam_member", ENVIRONMENT)["oncall_acts_as_operator"]
    assert oncall["for_each"] == "${var.oncall}"
    assert oncall["service_account_id"] == "${google_service_account.operator.name}"
    # An ID token for the service, an access token for Pub/Sub: nothing on the project.
    held = _roles()[oncall["role"]]
    assert {"iam.serviceAccounts.getOpenIdToken", "iam.serviceAccounts.getAccessToken"} <= held


# --- groups: Cloud Run could admit them, the service cannot ------------------------------


def _accepts(variable: str, members: list[str]) -> bool:
    """Whether the cell takes `members` as its `readers`, `operators` or `exporters`, and as a
    system's own."""
    cell = _validations_hold(variable, {variable: json.dumps(members)})
    entry = f"{{ recordline = {{}}, orders = {{ {variable} = {json.dumps(members)} }} }}"
    system = (
        "Invalid value for variable" not in _root_console_run("keys(var.systems)", entry).stderr
    )
    assert cell is system, (variable, members)
    return cell


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["readers", "operators", "exporters"])
def test_a_group_is_refused_where_the_service_checks_principals(variable: str) -> None:
    # A system's own readers and operators are checked too, not only the cell's.
    assert _accepts(variable, ["user:ada@example.com", "domain:example.com"]) is True
    assert _accepts(variable, ["group:analysts@example.com"]) is False


def test_groups_may_act_as_the_operator_account() -> None:
    values = {"oncall": '["group:oncall@example.com"]', "environment": '"dev"'}
    assert _validations_hold("oncall", values, ENVIRONMENT)


def _hcl_examples() -> list[tuple[str, str]]:
    root = Path(__file__).resolve().parents[2]
    found = []
    docs = ["README.md", *(f"docs/{page.name}" for page in (root / "docs").glob("*.md"))]
    for doc in (*docs, "infra/README.md"):
        for block in re.findall(r"```hcl\n(.*?)```", (root / doc).read_text(), re.S):
            if "systems" in block:
                found.append((doc, block))
    return found


def test_the_documented_systems_examples_are_accepted() -> None:
    examples = _hcl_examples()
    assert examples
    for doc, block in examples:
        for variable in ("readers", "operators"):
            for listed in re.findall(rf"\b{variable}\s*=\s*(\[[^\]]*\])", block):
                members = json.loads(listed)
                assert _accepts(variable, members), f"{doc}: {variable} = {listed}"


# --- prod has someone who can act, and tickets reach someone ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        ({}, False),  # what env/prod.tfvars held: nobody on call, tickets to nobody
        ({"ticket_channels": '["projects/p/notificationChannels/2"]'}, False),
        ({"oncall": '["group:oncall@example.com"]'}, False),
        (
            {
                "oncall": '["group:oncall@example.com"]',
                "ticket_channels": '["projects/p/notificationChannels/2"]',
            },
            True,
        ),
    ],
)
def test_prod_refuses_to_plan_without_oncall_and_ticket_channels(
    overrides: dict[str, str], accepted: bool
) -> None:
    values = {
        "environment": '"prod"',
        "notification_channels": '["projects/p/notificationChannels/1"]',
        "oncall": "[]",
        "ticket_channels": "[]",
        **overrides,
    }
    held = all(
        _validations_hold(variable, values, ENVIRONMENT)
        for variable in ("oncall", "ticket_channels")
    )
    assert held is accepted
    # dev may leave both empty.
    dev = {**values, "environment": '"dev"', "oncall": "[]", "ticket_channels": "[]"}
    assert _validations_hold("oncall", dev, ENVIRONMENT)
    assert _validations_hold("ticket_channels", dev, ENVIRONMENT)


def test_prod_tfvars_names_oncall_and_ticket_channels_to_fill_in() -> None:
    # Each is written out (empty until the bootstrap fills it), next to notification_channels.
    values = _load(ENVIRONMENT / "env" / "prod.tfvars")
    assert {"notification_channels", "ticket_channels", "oncall"} <= values.keys()

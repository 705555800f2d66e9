"""Who may replay and roll back: each system's `operators`, and the operator account.

The service lets RECORDLINE_OPERATOR_PRINCIPALS replay; replaying also needs Cloud Run's
invoker check and a pull of the system's dead-letter subscription; rolling back needs
a change to the service. Each is checked against the permissions of the role granted
(tests/infra/gcp_roles.json).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.infra.test_iam_coverage import _roles
from tests.infra.test_terraform import (
    MODULE,
    TERRAFORM,
    _evaluate,
    _load,
    _locals,
    _resources,
    _root,
    _validations_hold,
    _variables,
)

OPERATOR = "recordline-operator@recordline-prod.iam.gserviceaccount.com"


def _bound(name: str, **values: str) -> object:
    expression = re.sub(r"\b(var|local)\.", "local.", _locals()[name])
    return _evaluate(expression.removeprefix("${").removesuffix("}"), tuple(sorted(values.items())))


def test_each_system_takes_operators_and_the_service_hears_of_them() -> None:
    (module,) = [b["system"] for b in _root("module") if "system" in b]
    assert "var.operators" in module["operators"]
    assert "each.value.operators" in module["operators"]
    assert module["operator_service_account"] == "${google_service_account.operator.email}"
    env = re.sub(r"\s+", " ", _locals()["service_env"])
    assert "RECORDLINE_OPERATOR_PRINCIPALS = local.operator_principals" in env
    principals = _bound(
        "operator_principals",
        operators=json.dumps(
            [
                "user:ada@example.com",
                "serviceAccount:etl@p.iam.gserviceaccount.com",
                "domain:example.com",
            ]
        ),
        operator_service_account=json.dumps(OPERATOR),
    )
    # As the service reads them (app/auth/access.py): e-mails, and domain:DOMAIN.
    assert principals == ",".join(
        sorted(["ada@example.com", "etl@p.iam.gserviceaccount.com", "domain:example.com", OPERATOR])
    )


def test_operators_get_what_replay_needs_on_their_system_only() -> None:
    members = _bound(
        "operator_members",
        operators='["user:ada@example.com"]',
        operator_service_account=json.dumps(OPERATOR),
    )
    assert members == {
        "user:ada@example.com": "user:ada@example.com",
        "operator-account": f"serviceAccount:{OPERATOR}",
    }
    invoker = _resources("google_cloud_run_v2_service_iam_member")["operator_invokers"]
    assert invoker["for_each"] == "${local.operator_members}"
    assert invoker["name"] == "${google_cloud_run_v2_service.recordline.name}"
    assert "run.routes.invoke" in _roles()[invoker["role"]]
    pull = _resources("google_pubsub_subscription_iam_member")["operators_pull_dead_letters"]
    assert pull["for_each"] == "${local.operator_members}"
    assert pull["subscription"] == "${google_pubsub_subscription.dead_letter_replay.name}"
    assert "pubsub.subscriptions.consume" in _roles()[pull["role"]]


def test_the_operator_account_may_roll_back_and_oncall_may_act_as_it() -> None:
    assert _resources("google_service_account")["operator"]["account_id"] == (
        "${var.service_name}-operator"
    )
    rolls_back = _resources("google_cloud_run_v2_service_iam_member")["operator_account_rolls_back"]
    assert rolls_back["member"] == "serviceAccount:${var.operator_service_account}"
    assert "run.services.update" in _roles()[rolls_back["role"]]
    acts_as = _resources("google_service_account_iam_member")["operator_account_acts_as_runtime"]
    assert acts_as["service_account_id"] == "${google_service_account.runtime.name}"
    assert "iam.serviceAccounts.actAs" in _roles()[acts_as["role"]]
    oncall = _resources("google_service_account_iam_member")["oncall_acts_as_operator"]
    assert oncall["for_each"] == "${var.oncall}"
    assert oncall["service_account_id"] == "${google_service_account.operator.name}"
    # An ID token for the service, an access token for Pub/Sub: nothing on the project.
    held = _roles()[oncall["role"]]
    assert {"iam.serviceAccounts.getOpenIdToken", "iam.serviceAccounts.getAccessToken"} <= held
    project_grants = [b["member"] for b in _resources("google_project_iam_member").values()]
    assert "${each.value}" not in [m for m in project_grants if "oncall" in m]


# --- groups: Cloud Run could admit them, the service cannot ------------------------------


def _module_accepts(variable: str, members: list[str]) -> bool:
    (check,) = _variables(MODULE)[variable]["validation"]
    condition = re.sub(r"\bvar\.", "local.", check["condition"]).removeprefix("${")
    return bool(_evaluate(condition.removesuffix("}"), ((variable, json.dumps(members)),)))


@pytest.mark.parametrize("variable", ["readers", "operators"])
def test_a_group_is_refused_where_the_service_checks_principals(variable: str) -> None:
    # A system's own readers and operators are checked too, not only the environment's.
    assert _module_accepts(variable, ["user:ada@example.com", "domain:example.com"]) is True
    assert _module_accepts(variable, ["group:analysts@example.com"]) is False


def test_groups_may_act_as_the_operator_account() -> None:
    (check,) = [
        v for v in _variables()["oncall"]["validation"] if "var.environment" not in v["condition"]
    ]
    condition = re.sub(r"\bvar\.", "local.", check["condition"]).removeprefix("${")
    accepted = _evaluate(condition.removesuffix("}"), (("oncall", '["group:oncall@example.com"]'),))
    assert accepted is True


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
                assert _module_accepts(variable, members), f"{doc}: {variable} = {listed}"


# --- prod has someone who can act, and tickets reach someone ------------------------------


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
    held = all(_validations_hold(variable, values) for variable in ("oncall", "ticket_channels"))
    assert held is accepted
    # dev may leave both empty.
    dev = {**values, "environment": '"dev"', "oncall": "[]", "ticket_channels": "[]"}
    assert _validations_hold("oncall", dev)
    assert _validations_hold("ticket_channels", dev)


def test_prod_tfvars_names_oncall_and_ticket_channels_to_fill_in() -> None:
    # Each is written out (empty until the bootstrap fills it), next to notification_channels.
    values = _load(TERRAFORM / "env" / "prod.tfvars")
    assert {"notification_channels", "ticket_channels", "oncall"} <= values.keys()

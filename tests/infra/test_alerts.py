"""Alerting an on-call engineer can live with, at one system and at fifty.

- one page per symptom for the whole fleet (a count of the systems that have it), and
  each system's detail of the same symptom as a ticket;
- a severity on every policy;
- burn rates over two windows at once, judged only over a minimum of events;
- event alerts that close themselves;
- alert texts that agree with the runbook, with commands for the real service.

The symptoms are PromQL written once (modules/symptoms) and evaluated here by
`terraform console` for given systems, as the fleet and each system use them.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.infra.console import console, require_terraform
from tests.infra.test_runbook import RUNBOOK, slug
from tests.infra.test_terraform import (
    MODULE,
    TERRAFORM,
    _load,
    _locals,
    _resources,
    _root,
)

SYMPTOMS = TERRAFORM / "modules" / "symptoms"
PAGED = {"backlog", "canary_stale", "read_path", "availability", "freshness", "read_latency"}
METRICS = {
    name: f"workload.googleapis.com/recordline.{name}"
    for name in ("ingest.lag", "read.duration", "canary.age")
}
FAST = {"long": "1h", "short": "5m", "rate": 14.4}
SLOW = {"long": "6h", "short": "30m", "rate": 6}


def _hcl(value: Any) -> str:
    """A Python value as an HCL literal (JSON is one, keys quoted)."""
    return json.dumps(value)


@cache
def _symptoms(systems: tuple[str, ...], min_events: int = 100) -> dict[str, Any]:
    """Every output of modules/symptoms for these systems, evaluated by terraform."""
    require_terraform()
    values = {
        "systems": list(systems),
        "project_number": "123456789012",
        "region": "europe-west1",
        "metric_types": METRICS,
        "oldest_unacked_threshold_seconds": 120,
        "canary_age_threshold_seconds": 300,
        "read_path_failing_regions": 2,
        "read_routes": ["/v1/records", "/v1/records/{record_id}", "/v1/messages/{message_id}"],
        "burn_rates": {"fast": FAST, "slow": SLOW},
        "min_events": min_events,
        "slos": {
            "availability": {"goal": 0.999},
            "freshness": {"goal": 0.99, "threshold": 5},
            "read_latency": {"goal": 0.95, "threshold": 5},
        },
    }
    outputs = [name for block in _load(SYMPTOMS / "main.tf").get("output", []) for name in block]
    # Each output is the local of the same name.
    expression = "{" + ", ".join(f"{name} = local.{name}" for name in outputs) + "}"
    with tempfile.TemporaryDirectory() as work:
        shutil.copy(SYMPTOMS / "main.tf", work)
        Path(work, "values.tfvars").write_text(
            "\n".join(f"{k} = {_hcl(v)}" for k, v in values.items()) + "\n"
        )
        return dict(console(work, expression, var_file="values.tfvars"))


def _policies() -> dict[str, dict[str, Any]]:
    return _resources("google_monitoring_alert_policy")


def _module_policies() -> set[str]:
    return {
        name
        for path in sorted(MODULE.glob("*.tf"))
        for block in _load(path).get("resource", [])
        for name in block.get("google_monitoring_alert_policy", {})
    }


# --- pages and tickets ------------------------------------------------------------


# The fleet's pages (root fleet.tf). Every other policy is a ticket: each system's own
# (modules/system), and the serving tier's instance, one for the systems sharing it
# (root spanner.tf).
PAGES = "page"
ROOT_TICKETS = {"spanner_cpu"}


def test_every_policy_has_a_severity_pages_to_on_call_tickets_to_owners() -> None:
    for name, policy in _policies().items():
        paging = name == PAGES
        assert policy.get("severity") == ("CRITICAL" if paging else "WARNING"), name
        channels = "${var.notification_channels}" if paging else "${var.ticket_channels}"
        assert policy["notification_channels"] == channels, name
    root = {name for name in _policies() if name not in _module_policies()}
    assert root == {PAGES, *ROOT_TICKETS}


def test_one_page_per_symptom_for_the_whole_fleet() -> None:
    (page,) = [p for n, p in _policies().items() if p["severity"] == "CRITICAL"]
    assert page["for_each"] == "${local.pages}"
    assert set(_locals()["pages"]) == PAGED
    (condition,) = page["conditions"]
    (promql,) = condition["condition_prometheus_query_language"]
    # The count of systems with the symptom: one series, so one incident, whatever
    # the number of systems; its value is that number.
    assert promql["query"] == "count(${each.value[1]})"
    (fleet,) = [b["fleet_symptoms"] for b in _root("module") if "fleet_symptoms" in b]
    assert fleet["systems"] == "${local.fleet_system_names}"
    for key, page_spec in _locals()["pages"].items():
        assert "module.fleet_symptoms." in page_spec[1], key


def test_the_fleet_query_watches_every_system_and_a_ticket_one() -> None:
    fleet = _symptoms(("payments", "orders"))
    one = _symptoms(("orders",))
    for name in ("backlog", "canary_stale", "read_path_failing"):
        assert "(payments|orders)" in fleet[name], name
        assert "(orders)" in one[name], name
        assert "payments" not in one[name], name
        assert fleet[name].startswith("label_replace("), name  # series named by `system`
        assert ', "system", "$1", ' in fleet[name], name


def test_each_system_has_a_ticket_for_every_paged_symptom() -> None:
    tickets = _policies()["ticket"]
    assert tickets["for_each"] == "${local.tickets}"
    assert set(_locals()["tickets"]) == PAGED
    (module,) = [b["symptoms"] for b in _load(MODULE / "alerts.tf")["module"]]
    assert module["systems"] == ["${var.service_name}"]
    assert module["source"] == "../symptoms"


# --- burn rates and ratios ------------------------------------------------------------


@pytest.mark.parametrize("slo", ["availability", "freshness", "read_latency"])
@pytest.mark.parametrize(("speed", "windows"), [("fast", FAST), ("slow", SLOW)])
def test_burn_rates_take_two_windows_and_a_minimum_of_events(
    slo: str, speed: str, windows: dict[str, Any]
) -> None:
    query = _symptoms(("orders",), 250)["burning"][slo][speed]
    # Both windows, over the same budget and rate, and both must hold.
    long, short = f"[{windows['long']}]", f"[{windows['short']}]"
    assert query.count(f"> {windows['rate']}") == 2, query
    parts = query.split(" and ")
    assert len(parts) == 3, query
    assert long in parts[0]
    assert short not in parts[0]
    assert short in parts[1]
    assert long not in parts[1]
    # ...over at least min_events requests, messages or reads in the long window.
    assert re.search(rf"increase\(.*{re.escape(long)}\)\) >= 250,", parts[2]), parts[2]


def test_burn_rate_windows_are_the_workbooks() -> None:
    rates = _locals()["burn_rates"]
    assert rates == {"fast": FAST, "slow": SLOW}
    # Pages burn fast; tickets either.
    for key in ("availability", "freshness", "read_latency"):
        assert '["fast"]' in _locals()["pages"][key][1]
        ticket = _locals()["tickets"][key][1]
        assert '["fast"]' in ticket
        assert '["slow"]' in ticket


def test_every_ratio_is_judged_over_a_minimum_of_events() -> None:
    # The classic kind: a condition with a denominator has no place for a minimum.
    for name, policy in _policies().items():
        for condition in policy["conditions"]:
            for threshold in condition.get("condition_threshold", []):
                assert "denominator_filter" not in threshold, name
    # The PromQL kind: every division is a burn rate, with its minimum.
    for slo, speeds in _symptoms(("orders",))["burning"].items():
        for speed, query in speeds.items():
            assert " / " in query
            assert ">= 100," in query, (slo, speed)
    for name in ("backlog", "canary_stale", "read_path_failing"):
        assert " / " not in _symptoms(("orders",))[name], name


def test_event_alerts_close_themselves() -> None:
    # A count of events (dead letters) has no "back to normal" point: without
    # auto_close its incident would stay open for a week.
    events = [
        name
        for name, policy in _policies().items()
        for condition in policy["conditions"]
        for threshold in condition.get("condition_threshold", [])
        if threshold.get("threshold_value") == 0
        and threshold["aggregations"][0]["per_series_aligner"] == "ALIGN_DELTA"
    ]
    assert events == ["dead_letters"]
    for name in events:
        (strategy,) = _policies()[name]["alert_strategy"]
        assert strategy["auto_close"] == "1800s"


# --- what the alerts say -----------------------------------------------------------------


def _sections() -> dict[str, str]:
    """docs/operations.md's sections by anchor, each with its text."""
    text = RUNBOOK.read_text()
    found: dict[str, str] = {}
    heading = None
    for line in text.splitlines():
        match = re.match(r"^#{2,4} (.+)$", line)
        if match:
            heading = slug(match.group(1))
            found[heading] = ""
        elif heading is not None:
            found[heading] += line + "\n"
    return found


def _documentation() -> dict[str, str]:
    texts = {name: p["documentation"][0]["content"] for name, p in _policies().items()}
    texts["page commands"] = _locals()["page_commands"]
    texts.update({f"ticket command {k}": v for k, v in _locals()["commands"].items()})
    return texts


def test_no_alert_says_to_republish() -> None:
    # A message published again gets a new id: the service cannot deduplicate it.
    for name, text in _documentation().items():
        assert "republish" not in text.lower(), name


def test_every_command_in_an_alert_is_in_the_runbook_it_links() -> None:
    sections = _sections()
    runbook = RUNBOOK.read_text()
    for name, text in _documentation().items():
        for command in re.findall(
            r"(?m)^\s*((?:gcloud|\.venv/bin/recordline|curl)(?: [a-z-]+)*)", text
        ):
            words = command.split()
            verb = " ".join(words[: 4 if words[0] == "gcloud" else 3])
            assert verb in runbook, f"{name}: `{verb}` is not in docs/operations.md"
    for key, spec in _locals()["pages"].items():
        assert spec[3] in sections, key
    for key, spec in _locals()["tickets"].items():
        assert spec[3] in sections, key

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
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.infra.console import console, decoded, require_terraform
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
PAGED = {
    "backlog",
    "canary_stale",
    "read_path",
    "availability",
    "freshness",
    "read_latency",
    "export_lag",
}
METRICS = {
    name: f"workload.googleapis.com/recordline.{name}"
    for name in (
        "ingest.lag",
        "read.duration",
        "canary.age",
        "query.bytes_billed",
        "export.lag",
        "export.blocked",
        "loop.restarts",
        "typed.patches_refused",
        "producer.missing",
        "producer.conflicts",
    )
}
FAST = {"long": "1h", "short": "5m", "rate": 14.4}
SLOW = {"long": "6h", "short": "30m", "rate": 6}


def _hcl(value: Any) -> str:
    """A Python value as an HCL literal (JSON is one, keys quoted)."""
    return json.dumps(value)


@cache
def _symptoms(
    systems: tuple[str, ...], min_events: int = 100, export_lag: int = 3600, every: bool = False
) -> dict[str, Any]:
    """Every output of modules/symptoms for these systems, evaluated by terraform."""
    require_terraform()
    values = {
        "systems": list(systems),
        "every_system": every,
        "project_number": "123456789012",
        "region": "europe-west1",
        "metric_types": METRICS,
        "oldest_unacked_threshold_seconds": 120,
        "canary_age_threshold_seconds": 300,
        "read_path_failing_regions": 2,
        "read_routes": ["/v1/records", "/v1/records/{record_id}", "/v1/messages/{message_id}"],
        "burn_rates": {"fast": FAST, "slow": SLOW},
        "min_events": min_events,
        "query_bytes_billed_daily_budget": 1099511627776,
        "export_lag_threshold_seconds": export_lag,
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


# The fleet's pages (root fleet.tf). Every other policy is a ticket: one per symptom for
# the systems whose tickets go to the same channels (root tickets.tf), and the serving
# tier's instance, one for the systems sharing it (root spanner.tf). No system has a
# policy of its own: their number never grows with the fleet.
PAGES = "page"
TICKETS = {"ticket": "${local.ticket_groups[each.value.group].channels}"}
ROOT_TICKETS = {"spanner_cpu": "${var.ticket_channels}"}
# The serving tier's storage, one policy per level: a ticket and a page (their
# severities and channels: tests/infra/test_serving.py).
LEVELLED = {"spanner_storage": "${each.value.channels}"}


def test_every_policy_has_a_severity_pages_to_on_call_tickets_to_owners() -> None:
    for name, policy in _policies().items():
        if name in LEVELLED:
            assert policy["notification_channels"] == LEVELLED[name]
            assert policy["severity"] == "${each.value.severity}"
            continue
        paging = name == PAGES
        assert policy.get("severity") == ("CRITICAL" if paging else "WARNING"), name
        channels = "${var.notification_channels}" if paging else {**TICKETS, **ROOT_TICKETS}[name]
        assert policy["notification_channels"] == channels, name
    assert _module_policies() == set()
    assert set(_policies()) == {PAGES, *TICKETS, *ROOT_TICKETS, *LEVELLED}


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
    # Every system, named by no list: the queries stay one size however many there are.
    assert fleet["every_system"] is True
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


def test_the_fleet_query_is_one_size_whatever_the_number_of_systems() -> None:
    few = _symptoms(("payments", "orders"), every=True)
    many = _symptoms(tuple(f"system-{n:03d}".ljust(30, "x") for n in range(100)), every=True)
    # The tickets' canary_absent too: whom it expects is named by no list either.
    assert "canary_absent" in many
    for name, query in many.items():
        assert query == few[name], name
        text = json.dumps(query)
        assert "[a-z][a-z0-9-]*" in text, name
        assert "|" not in re.sub(r'route=~\\"[^"]*\\"', "", text), name  # no list of names


# A top-level locals block, or the call of the documentation's check.
BLOCK = r'(?ms)^(?:locals|module "alert_documentation") \{\n.*?^\}\n'


def _alert_documentation_run(
    systems: int, name_length: int, *overrides: tuple[str, str]
) -> subprocess.CompletedProcess[str]:
    """terraform console over every page's and ticket's documentation, as the root
    renders them for `systems` systems with names of `name_length` characters and a
    project id of 30 (the longest Google allows), passed through
    module.alert_documentation as the root passes them: each text's length in characters
    and in bytes, or the error of the module's check."""
    from tests.infra.test_fleet import _root_console_run

    blocks = [
        b
        for path in ("fleet.tf", "tickets.tf")
        for b in re.findall(
            r'(?ms)^(?:locals|module "alert_documentation") \{\n.*?^\}\n',
            (TERRAFORM / path).read_text(),
        )
        if "page_documentation" in b or "ticket_documentation" in b
    ]
    texts = "\n".join(blocks)
    # What a plan would know from the provider and the other modules, stood in for.
    texts = texts.replace("module.fleet_symptoms.", "local.symptoms.")
    texts = texts.replace("data.google_project.this.number", '"123456789012"')
    texts = texts.replace(
        "google_service_account.operator.email",
        '"recordline-operator@${var.project_id}.iam.gserviceaccount.com"',
    )
    texts = texts.replace("values(module.system)[0].probe_path", '"/v1/records?limit=1"')
    texts = texts.replace("module.ticket_symptoms", "{}")
    texts = texts.replace("./modules/alert_documentation", "./alert_documentation")
    symptoms = json.dumps(_symptoms(("payments", "orders"), every=True))
    texts += '\nlocals {\n  symptoms = jsondecode(file("symptoms.json"))\n}\n'
    names = [f"s{n:03d}".ljust(name_length, "x") for n in range(systems)]
    hcl = "{ " + ", ".join(f'"{n}" = {{}}' for n in [*names, "recordline"]) + " }"
    bytes_of = 'length(base64encode(v)) / 4 * 3 - length(regexall("=", base64encode(v)))'
    expression = (
        f"{{ for k, v in module.alert_documentation.texts : k => [length(v), {bytes_of}] }}"
    )
    project = "recordline-prod-abcdefghijklmn"  # 30 characters
    return _root_console_run(
        expression,
        hcl,
        (("project_id", f'"{project}"'), ("service_account_quota", "300"), *overrides),
        (
            ("infra/terraform/documentation.tf", texts.encode()),
            ("infra/terraform/symptoms.json", symptoms.encode()),
            (
                "infra/terraform/alert_documentation/main.tf",
                (TERRAFORM / "modules" / "alert_documentation" / "main.tf").read_bytes(),
            ),
        ),
        modules=True,
    )


def test_every_page_and_ticket_fits_cloud_monitoring_at_100_systems_with_the_longest_names() -> (
    None
):
    # Cloud Monitoring takes a documentation of at most 8,192 characters and 10,240
    # bytes. The texts name no system: at 100 systems of 24 characters each (the longest
    # name variables.tf accepts) each is as long as at one.
    many = dict(decoded(_alert_documentation_run(100, 24)))
    one = dict(decoded(_alert_documentation_run(1, 3)))
    assert set(many) == {f"page {p}" for p in PAGED} | {f"ticket {t}" for t in TICKETED}
    for key, (characters, size) in many.items():
        assert characters <= 8192, key
        assert size <= 10240, key
        assert many[key] == one[key], key


def test_a_documentation_past_cloud_monitorings_limit_fails_the_plan_naming_it() -> None:
    # A read audience of 9,000 characters (nothing else bounds it) goes into every
    # command that mints a reader's token: those texts pass the limit, and the plan
    # stops before any policy is sent, naming the limit and each text past it.
    audience = "https://" + "a" * 9000 + ".example.com"
    run = _alert_documentation_run(1, 3, ("read_audience", f'"{audience}"'))
    # The console prints the plan's error where its value would be.
    error = " ".join(re.sub(r"\x1b\[[0-9;]*m|[│╷╵]", "", run.stdout + run.stderr).split())
    assert "Error: Invalid value for variable" in error
    assert "at most 8,192 characters and 10,240 bytes" in error
    assert re.search(r"page backlog, 1\d{4} characters and 1\d{4} bytes", error), error
    assert "ticket read_path, " in error
    assert "ticket dead_letters, " in error  # the replay command's token
    assert "ticket bytes_billed" not in error  # no token in it: within the limit
    # Bytes, not characters: 4,500 two-byte characters keep a page under 8,192
    # characters and take it past 10,240 bytes.
    run = _alert_documentation_run(1, 3, ("read_audience", f'"https://{"é" * 4500}"'))
    error = " ".join(re.sub(r"\x1b\[[0-9;]*m|[│╷╵]", "", run.stdout + run.stderr).split())
    assert re.search(r"page backlog, [67]\d{3} characters and 1\d{4} bytes", error), error
    # Every text goes through the check on its way to its policy.
    policies = _policies()
    assert (
        policies[PAGES]["documentation"][0]["content"]
        == '${module.alert_documentation.texts["page ${each.key}"]}'
    )
    assert (
        policies["ticket"]["documentation"][0]["content"]
        == '${module.alert_documentation.texts["ticket ${each.value.symptom}"]}'
    )


def test_no_alert_documentation_names_the_systems_one_by_one() -> None:
    # A list of systems in a text grows it with the fleet; a count, or the incident's own
    # label, stays one size. The serving tier's texts are held to this here.
    listing = re.compile(r"join\(|[\[{]\s*for\s")
    texts = {n: p["documentation"][0]["content"] for n, p in _policies().items()}
    texts["page"] = _locals()["page_documentation"].split("=>", 1)[1]
    texts["ticket"] = _locals()["ticket_documentation"].split("=>", 1)[1]
    for name, text in texts.items():
        assert not listing.search(text), name
    assert listing.search('${join(", ", local.serving_systems)}')


TICKETED = PAGED | {
    "dead_letters",
    "bytes_billed",
    "canary_absent",
    "export_blocked",
    "typed_refused",
    "loop_restarts",
    "producers_missing",
    "producers_conflicts",
}


def test_each_system_has_a_ticket_for_every_paged_symptom() -> None:
    tickets = _policies()["ticket"]
    assert (
        "setproduct(sort(keys(local.ticket_groups)), sort(keys(local.ticket_specs)))"
        in (tickets["for_each"])
    )
    assert set(_locals()["ticket_specs"]) == TICKETED
    for symptom in TICKETED:  # every symptom has its query, in every group
        assert f"{symptom} = " in re.sub(r"\s+", " ", _locals()["ticket_queries"]), symptom
    (module,) = [b["ticket_symptoms"] for b in _root("module") if "ticket_symptoms" in b]
    assert module["for_each"] == "${local.ticket_groups}"
    # One group (the usual case) names no system; several name each its own.
    assert module["systems"] == "${each.value.systems}"
    assert module["every_system"] == "${length(local.ticket_groups) == 1}"
    assert module["source"] == "./modules/symptoms"
    # Each system in trouble is an incident of its own: no count() around the query.
    (condition,) = tickets["conditions"]
    (promql,) = condition["condition_prometheus_query_language"]
    assert promql["query"] == "${local.ticket_queries[each.value.group][each.value.symptom]}"
    assert "metric.label.system" in tickets["documentation"][0]["subject"]


def _ticket_groups(systems: str, **overrides: str) -> dict[str, Any]:
    from tests.infra.test_fleet import _root_console

    return dict(_root_console("local.ticket_groups", systems, tuple(sorted(overrides.items()))))


def test_the_number_of_policies_does_not_grow_with_the_fleet() -> None:
    # A project holds 500 alerting policies and each condition is billed: nine per
    # system (450 at fifty) would grow with every system, and stop the 56th.
    fifty = "{ " + ", ".join(f'"system-{n:02d}" = {{}}' for n in range(50)) + ", recordline = {} }"
    env = {"ticket_channels": '["projects/p/notificationChannels/1"]'}
    groups = _ticket_groups(fifty, **env)
    (group,) = groups.values()
    assert len(group["systems"]) == 51
    assert group["channels"] == ["projects/p/notificationChannels/1"]
    # Tickets, pages and the Spanner CPU ticket: the same for 1 system as for 51.
    policies = len(_locals()["ticket_specs"]) * len(groups) + len(_locals()["pages"]) + 1
    assert policies == 23
    # A system with owners of its own gets its tickets there, in a group of its own.
    own = (
        '{ recordline = {}, orders = { ticket_channels = ["projects/p/notificationChannels/9"] } }'
    )
    groups = sorted(_ticket_groups(own, **env).values(), key=lambda g: g["systems"])
    assert [(g["systems"], g["channels"]) for g in groups] == [
        (["orders"], ["projects/p/notificationChannels/9"]),
        (["recordline"], ["projects/p/notificationChannels/1"]),
    ]


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
        ticket = re.sub(r"\s+", " ", _locals()["ticket_queries"])
        assert f'{key} = "(${{symptoms.burning["{key}"]["fast"]}})' in ticket, key
        assert f'or (${{symptoms.burning["{key}"]["slow"]}})"' in ticket, key


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
    tickets = _policies()["ticket"]
    (dynamic,) = tickets["dynamic"]
    strategy = dynamic["alert_strategy"]
    assert strategy["for_each"] == '${each.value.symptom == "dead_letters" ? [1] : []}'
    assert strategy["content"][0]["auto_close"] == "1800s"
    assert (
        "increase(pubsub_googleapis_com:subscription_dead_letter_message_count"
        in (_symptoms(("orders",))["dead_letters"])
    )


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
    # The pages' and tickets' texts, as module.alert_documentation passes them on.
    texts["page"] = _locals()["page_documentation"]
    texts["ticket"] = _locals()["ticket_documentation"]
    texts["page commands"] = _locals()["page_commands"]
    texts.update({f"ticket command {k}": v for k, v in _locals()["ticket_commands"].items()})
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
    for key, spec in _locals()["ticket_specs"].items():
        assert spec[2] in sections, key


# --- what logging costs ------------------------------------------------------------------


def test_successful_pushes_are_not_logged_one_by_one() -> None:
    # One request log per push: 86.4 million a day per system at 1,000 msg/s.
    exclusion = _resources("google_logging_project_exclusion")["successful_pushes"]
    text = exclusion["filter"]
    for part in (
        'log_id(\\"run.googleapis.com/requests\\")',
        'httpRequest.requestUrl:\\"/pubsub/push\\"',
        "httpRequest.status<400",  # refused and failed pushes are kept whole
        "sample(insertId, 0.99)",  # a 1% sample of the rest is kept to look at
    ):
        assert part in text, part
    # Reads and the service's own lines are never excluded.
    assert "/v1/" not in text
    assert "severity" not in text


# --- the export to BigQuery (systems with `serving`) ----------------------------------------


def test_the_export_lag_is_the_freshest_reading_of_the_furthest_behind_table() -> None:
    query = _symptoms(("orders", "payments"), export_lag=7200)["export_lag"]
    lag = "workload_googleapis_com:recordline_export_lag"
    # Per table the least any instance reports (each reads the watermark from Spanner),
    # per system its furthest-behind table, named by `system`, over the threshold.
    assert query == (
        "label_replace(max by (namespace) (min by (namespace, table) ("
        f'{lag}{{monitored_resource="generic_task",namespace=~"(orders|payments)"}})), '
        '"system", "$1", "namespace", "(.*)") > 7200'
    )
    # Blocked: the most any instance reports, as only the lease's holder says 1 and a
    # former holder says 0 (the least would hide the holder's 1).
    blocked = _symptoms(("orders",))["export_blocked"]
    assert "max by (namespace, table) (workload_googleapis_com:recordline_export_blocked{" in (
        blocked
    )
    assert blocked.endswith('"system", "$1", "namespace", "(.*)") > 0')


def test_an_hour_behind_or_blocked_is_a_ticket_and_a_page_comes_before_spanner_deletes() -> None:
    from app.store.spanner.schema import retention_days
    from tests.infra.test_terraform import _validations_hold, _variables

    variables = _variables()
    ticket, page = (
        variables["export_lag_ticket_seconds"]["default"],
        variables["export_lag_page_seconds"]["default"],
    )
    assert (ticket, page) == (3600, 6 * 3600)
    # Spanner keeps a row retention_days(window) days, at least 3: the page leaves two
    # thirds of the shortest at least, and every page threshold the variable accepts does.
    shortest = retention_days(1) * 86_400
    assert shortest == 3 * 86_400
    assert page <= shortest / 3

    def accepted(page: int, ticket: int = 3600) -> bool:
        values = {"export_lag_page_seconds": str(page), "export_lag_ticket_seconds": str(ticket)}
        return _validations_hold("export_lag_page_seconds", values)

    assert accepted(21600)
    assert accepted(86400)
    assert not accepted(86401)  # past a third of the shortest retention
    assert not accepted(3600)  # not after the ticket
    # Each module instance with its threshold: the fleet's pages, the tickets.
    modules = {name: b[name] for b in _root("module") for name in b}
    assert modules["fleet_symptoms"]["export_lag_threshold_seconds"] == (
        "${var.export_lag_page_seconds}"
    )
    assert modules["ticket_symptoms"]["export_lag_threshold_seconds"] == (
        "${var.export_lag_ticket_seconds}"
    )
    pages, tickets = _locals()["pages"], _locals()["ticket_specs"]
    assert pages["export_lag"][1:] == [
        "${module.fleet_symptoms.export_lag}",
        "300s",
        "export-behind",
    ]
    assert tickets["export_lag"][1:3] == ["300s", "export-behind"]
    assert tickets["export_blocked"][1:3] == ["300s", "export-blocked"]  # blocked 5 minutes
    queries = re.sub(r"\s+", " ", _locals()["ticket_queries"])
    assert "export_lag = symptoms.export_lag" in queries
    assert "export_blocked = symptoms.export_blocked" in queries
    assert "export_lag_page_seconds / 3600" in pages["export_lag"][0]


# --- the completeness ledger (systems on DuckDB or with `serving`) ---------------------------


def test_a_producers_missing_sequences_are_a_ticket_summed_over_its_producers() -> None:
    query = _symptoms(("orders", "payments"))["producers_missing"]
    missing = "workload_googleapis_com:recordline_producer_missing"
    # Every instance reads the one ledger: per producer the most any reports, per system
    # the sum over its producers, named by `system`.
    assert query == (
        "label_replace(sum by (namespace) (max by (namespace, producer) ("
        f'{missing}{{monitored_resource="generic_task",namespace=~"(orders|payments)"}})), '
        '"system", "$1", "namespace", "(.*)") > 0'
    )
    tickets = _locals()["ticket_specs"]
    assert tickets["producers_missing"][1:3] == ["300s", "producers-missing"]
    assert "producers_missing" not in _locals()["pages"]  # what is lost is known: no page
    commands = _locals()["ticket_commands"]["producers"]
    assert "/v1/producers" in commands
    assert ".venv/bin/recordline audit --since=24h" in commands
    # The replay that closes the gaps dead letters hold comes with it.
    assert "ticket_commands.replay" in tickets["producers_missing"][3]


def test_sequences_two_messages_claimed_are_a_ticket_beside_the_missing() -> None:
    query = _symptoms(("orders", "payments"))["producers_conflicts"]
    conflicts = "workload_googleapis_com:recordline_producer_conflicts"
    assert query == (
        "label_replace(sum by (namespace) (max by (namespace, producer) ("
        f'{conflicts}{{monitored_resource="generic_task",namespace=~"(orders|payments)"}})), '
        '"system", "$1", "namespace", "(.*)") > 0'
    )
    tickets = _locals()["ticket_specs"]
    assert tickets["producers_conflicts"][1:3] == ["300s", "producers-in-conflict"]
    assert "producers_conflicts" not in _locals()["pages"]  # both messages are stored: no page
    commands = _locals()["ticket_commands"]["conflicts"]
    assert ".venv/bin/recordline audit --since=24h" in commands
    assert "/v1/producers?limit=100" in commands

"""Alerting an on-call engineer can live with, at one system and at a thousand in cells.

- one page per symptom for the whole fleet (a count of the systems, cells or serving
  instances that have it), and each one's detail of the same symptom as a ticket;
- a severity on every policy;
- burn rates over two windows at once, judged only over a minimum of events, on each
  system's SLO counter;
- event alerts that close themselves;
- alert texts that agree with the runbook, with commands that find each system's cell,
  project and services from its name.

The symptoms are PromQL written once (modules/symptoms) and evaluated here by
`terraform console` for given systems, as the environment's pages and tickets use them.
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

from tests.infra.console import console, console_run, decoded, require_terraform
from tests.infra.test_runbook import RUNBOOK, slug
from tests.infra.test_terraform import (
    ENVIRONMENT,
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
    "cell_unready",
    "availability",
    "freshness",
    "read_latency",
    "export_lag",
    "spanner_storage",
}
METRICS = {
    name: f"workload.googleapis.com/recordline.{name}"
    for name in (
        "ingest.lag",
        "slo.events",
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
    systems: tuple[str, ...],
    min_events: int = 100,
    export_lag: int = 3600,
    every: bool = False,
    declared: tuple[tuple[str, float], ...] = (),
) -> dict[str, Any]:
    """Every output of modules/symptoms for these systems, evaluated by terraform."""
    require_terraform()
    values = {
        "declared_rates": dict(declared),
        "systems": list(systems),
        "every_system": every,
        "metric_types": METRICS,
        "oldest_unacked_threshold_seconds": 120,
        "canary_age_threshold_seconds": 300,
        "unready_regions": 2,
        "burn_rates": {"fast": FAST, "slow": SLOW},
        "min_events": min_events,
        "query_bytes_billed_daily_budget": 1099511627776,
        "export_lag_threshold_seconds": export_lag,
        "slos": {
            "availability": {"goal": 0.999},
            "freshness": {"goal": 0.99},
            "read_latency": {"goal": 0.95},
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


# --- pages and tickets ------------------------------------------------------------


# The environment's pages (fleet.tf), or where the alerts are combined its one paging
# policy (combined.tf). Every other policy is a ticket: one per symptom for the systems
# whose tickets go to the same channels, and one per symptom for every serving instance
# of every cell (tickets.tf), or combined, one for each set of channels and one for the
# instances. No system, cell or instance has a policy of its own: their number never
# grows with the fleet.
PAGES = "page"
COMBINED_PAGE = "combined_page"
TICKETS = {
    "ticket": "${local.ticket_groups[each.value.group].channels}",
    "instance_ticket": "${var.ticket_channels}",
    "combined_ticket": "${each.value.channels}",
    "combined_instance_ticket": "${var.ticket_channels}",
}


def test_every_policy_has_a_severity_pages_to_on_call_tickets_to_owners() -> None:
    for name, policy in _policies().items():
        paging = name in (PAGES, COMBINED_PAGE)
        assert policy.get("severity") == ("CRITICAL" if paging else "WARNING"), name
        channels = "${var.notification_channels}" if paging else TICKETS[name]
        assert policy["notification_channels"] == channels, name
    # Only the environment has alert policies: no cell, no system.
    assert set(_policies()) == {PAGES, COMBINED_PAGE, *TICKETS}
    assert set(_resources("google_monitoring_alert_policy", ENVIRONMENT)) == set(_policies())


def test_one_page_per_symptom_for_the_whole_fleet() -> None:
    page = _policies()[PAGES]
    # Made where the alerts are a policy per symptom (combined.tf says where).
    assert page["for_each"] == "${local.combined ? {} : local.paged}"
    assert set(_locals(ENVIRONMENT)["pages"]) == PAGED
    (condition,) = page["conditions"]
    (promql,) = condition["condition_prometheus_query_language"]
    # The count of systems with the symptom: one series, so one incident, whatever
    # the number of systems; its value is that number.
    assert promql["query"] == "count(${each.value[1]})"
    (fleet,) = [b["fleet_symptoms"] for b in _root("module", ENVIRONMENT) if "fleet_symptoms" in b]
    # Every system, named by no list: the queries stay one size however many there are.
    assert fleet["every_system"] is True
    for key, page_spec in _locals(ENVIRONMENT)["pages"].items():
        assert "module.fleet_symptoms." in page_spec[1], key


def test_the_fleet_query_watches_every_system_and_a_ticket_one() -> None:
    fleet = _symptoms(("payments", "orders"))
    one = _symptoms(("orders",))
    for name in ("backlog", "canary_stale", "export_lag", "dead_letters"):
        assert "(payments|orders)" in fleet[name], name
        assert "(orders)" in one[name], name
        assert "payments" not in one[name], name
        assert fleet[name].startswith("label_replace("), name  # series named by `system`
        assert ', "system", "$1", ' in fleet[name], name


def test_the_fleet_query_is_one_size_whatever_the_number_of_systems() -> None:
    few = _symptoms(("payments", "orders"), every=True)
    many = _symptoms(tuple(f"system-{n:04d}".ljust(24, "x") for n in range(1000)), every=True)
    # The tickets' canary_absent too: whom it expects is named by no list either.
    assert "canary_absent" in many
    for name, query in many.items():
        assert query == few[name], name
        text = json.dumps(query)
        assert "|" not in re.sub(
            r'(?:slo|priority|instance_config|response_class)[=!]~?\\"[^"]*\\"', "", text
        ), name


def test_a_cell_that_cannot_serve_is_its_own_incident_named_by_its_cell() -> None:
    query = _symptoms(("orders",))["cell_unready"]
    # The cell's one uptime check of /readyz on its deterministic URL, whatever its
    # project or region; the series is named by the cell (the host's first label).
    assert "monitoring_googleapis_com:uptime_check_check_passed" in query
    assert 'host=~"[a-z][a-z0-9-]*-[0-9]+[.][a-z0-9-]+[.]run[.]app"' in query
    assert query.endswith('"cell", "$1", "host", "(.*)-[0-9]+[.].*") >= 2')
    # A system's pushes are its own SLO's, as Pub/Sub answered them; reads are the
    # cell's, each read answered 5xx an event under the cell's namespace.
    availability = _symptoms(("orders",))["burning"]["availability"]["fast"]
    assert 'subscription_id=~"(orders)-push",response_class!~"ack|remote_server_4xx"' in (
        availability
    )
    assert 'namespace=~"[a-z][a-z0-9-]*",slo="availability",good="false"' in availability


def test_each_serving_instance_is_an_incident_of_its_own() -> None:
    symptoms = _symptoms(("orders",))
    cpu, storage = symptoms["spanner_cpu"], symptoms["spanner_storage"]
    # Google's recommended maximum of high-priority CPU: 65% regional, 45% per region
    # for a dual- or multi-region configuration, from the instance's own label.
    assert 'priority="high",instance_config=~"regional-.*"' in cpu
    assert "> 0.65" in cpu
    assert 'instance_config!~"regional-.*"' in cpu
    assert "> 0.45" in cpu
    assert "by (project_id, instance_id" in cpu
    assert storage.startswith(
        "max by (project_id, instance_id) (spanner_googleapis_com:instance_storage_utilization"
    )
    assert storage.endswith("> 0.7")
    # The page at 90%, the ticket at 70%.
    modules = {name: b[name] for b in _root("module", ENVIRONMENT) for name in b}
    assert modules["fleet_symptoms"]["spanner_storage_threshold"] == 0.9
    assert modules["instance_symptoms"]["spanner_storage_threshold"] == 0.7
    tickets = _policies()["instance_ticket"]
    assert tickets["for_each"] == "${local.combined ? {} : local.instance_ticketed}"
    assert "metric.label.instance_id" in tickets["documentation"][0]["subject"]


@cache
def _alerts_run(
    cells: int,
    systems_a_cell: int,
    project: str,
    expression: str,
    serving: bool = False,
    combined: bool | None = None,
) -> Any:
    """`expression` over the environment root's alerting locals (cells.tf, fleet.tf,
    tickets.tf, combined.tf) and module.alert_documentation, for `cells` cells of
    `systems_a_cell` systems (names of 24 characters, the longest), each with `serving`
    or none, a project id `project` and combined_alerts = `combined`; the symptoms'
    queries are modules/symptoms' for every system, as the root's modules give them."""
    require_terraform()
    blocks = [
        b
        for path in ("cells.tf", "fleet.tf", "tickets.tf", "combined.tf")
        for b in re.findall(
            r'(?ms)^(?:locals|module "alert_documentation") \{\n.*?^\}\n',
            (ENVIRONMENT / path).read_text(),
        )
    ]
    texts = "\n".join(blocks)
    # What a plan would know from the provider and the other modules, stood in for.
    texts = re.sub(r"module\.(fleet|instance)_symptoms\.", "local.symptoms.", texts)
    texts = texts.replace(
        "module.ticket_symptoms", "{ for g in keys(local.ticket_groups) : g => local.symptoms }"
    )
    texts = texts.replace("module.metrics.types", "local.metric_types")
    texts = texts.replace(
        "google_service_account.operator.email",
        '"recordline-operator@${var.project_id}.iam.gserviceaccount.com"',
    )
    texts = texts.replace("../modules/alert_documentation", "./alert_documentation")
    assert not re.search(r"\b(google_[a-z_]+\.|data\.google_)", texts)
    symptoms = json.dumps(_symptoms(("payments", "orders"), every=True))
    texts += (
        '\nlocals {\n  symptoms = jsondecode(file("symptoms.json"))\n'
        f"  metric_types = {json.dumps(METRICS)}\n}}\n"
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch, "infra", "terraform", "environment")
        (work / "alert_documentation").mkdir(parents=True)
        shutil.copy(ENVIRONMENT / "variables.tf", work)
        (work / "alert_documentation" / "main.tf").write_bytes(
            (TERRAFORM / "modules" / "alert_documentation" / "main.tf").read_bytes()
        )
        (work / "alerts.tf").write_text(texts)
        (work / "symptoms.json").write_text(symptoms)
        files = Path(scratch, "infra", "terraform", "env", "prod")
        files.mkdir(parents=True)
        for c in range(cells):
            names = [f"c{c:02d}s{n:04d}".ljust(24, "x") for n in range(systems_a_cell)]
            (files / f"c{c:02d}.tfvars.json").write_text(
                json.dumps(
                    {
                        "cell": f"c{c:02d}",
                        "environment": "prod",
                        "project_id": project,
                        "systems": {n: {"serving": serving} for n in names},
                    }
                )
            )
        values = {
            "project_id": f'"{project}"',
            "environment": '"prod"',
            "github_owner": '"recordline"',
            "github_repo": '"recordline"',
            "github_repository_id": '"1"',
            "github_owner_id": '"2"',
            "terraform_state_bucket": '"recordline-prod-tfstate"',
            "oncall": '["group:recordline-oncall@example.com"]',
            "notification_channels": f'["projects/{project}/notificationChannels/1"]',
            "ticket_channels": f'["projects/{project}/notificationChannels/2"]',
            "combined_alerts": "null" if combined is None else json.dumps(combined),
        }
        (work / "values.tfvars").write_text("\n".join(f"{k} = {v}" for k, v in values.items()))
        init = subprocess.run(
            ["terraform", "init", "-backend=false", "-input=false", "-no-color"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert init.returncode == 0, init.stderr
        return decoded(console_run(work, expression, var_file="values.tfvars"))


def _documentation_run(cells: int, systems_a_cell: int, project: str, serving: bool = False) -> Any:
    """Every page's and ticket's documentation as the environment root renders it,
    passed through modules/alert_documentation as the root passes them: each text's
    length in characters and in bytes."""
    bytes_of = 'length(base64encode(v)) / 4 * 3 - length(regexall("=", base64encode(v)))'
    expression = (
        f"{{ for k, v in module.alert_documentation.texts : k => [length(v), {bytes_of}] }}"
    )
    return _alerts_run(cells, systems_a_cell, project, expression, serving)


TICKETED = PAGED - {"cell_unready", "spanner_storage"} | {
    "dead_letters",
    "bytes_billed",
    "canary_absent",
    "export_blocked",
    "typed_refused",
    "loop_restarts",
    "producers_missing",
    "producers_conflicts",
    "over_declared",
}
INSTANCE_TICKETS = {"spanner_cpu", "spanner_storage"}


def test_a_system_pushing_over_its_declared_rate_for_an_hour_is_ticketed() -> None:
    # What Pub/Sub delivered (acknowledged pushes) a second over the last hour, held to
    # each system's declared rate: the default's systems by any name, less those that
    # declare another, each of those in a term of its rate. One term a distinct rate, so
    # the query does not grow with the systems that declare the default.
    delivered = (
        "sum by (subscription_id) (rate(pubsub_googleapis_com:subscription_push_request_count"
        '{monitored_resource="pubsub_subscription",response_class="ack",subscription_id=~"%s-push"}'
        "[1h]))"
    )
    system = ', "system", "$1", "subscription_id", "(.*)-push")'
    plain = _symptoms(("orders", "payments"), every=True)["over_declared"]
    assert plain == f"label_replace(({delivered % '[a-z][a-z0-9-]*'} > 10){system}"
    found = _symptoms(
        ("orders", "payments", "clicks", "audit"),
        every=True,
        declared=(("clicks", 200), ("audit", 0.5), ("payments", 200)),
    )["over_declared"]
    assert found == " or ".join(
        [
            f"label_replace(({delivered % '[a-z][a-z0-9-]*'} > 10) unless on (subscription_id) "
            f"{delivered % '(audit|clicks|payments)'}{system}",
            f"label_replace({delivered % '(audit)'} > 0.5{system}",
            f"label_replace({delivered % '(clicks|payments)'} > 200{system}",
        ]
    )
    # A group of systems' tickets holds its own systems alone to their rates.
    grouped = _symptoms(("orders", "clicks"), declared=(("clicks", 200), ("audit", 0.5)))
    assert "audit" not in grouped["over_declared"]
    assert f"{delivered % '(clicks)'} > 200" in grouped["over_declared"]


@pytest.mark.slow
def test_every_page_and_ticket_fits_cloud_monitoring_at_a_thousand_systems() -> None:
    # Cloud Monitoring takes a documentation of at most 8,192 characters and 10,240
    # bytes. The texts name no system: at ten cells of 100 systems of 24 characters (the
    # longest name variables.tf accepts) and a project id of 30 (the longest Google
    # allows), each is as long as at one.
    many = dict(_documentation_run(10, 100, "recordline-prod-abcdefghijklmn"))
    one = dict(_documentation_run(1, 1, "recordline-prod-abcdefghijklmn"))
    assert set(many) == (
        {f"page {p}" for p in PAGED}
        | {f"ticket {t}" for t in TICKETED}
        | {f"ticket {t}" for t in INSTANCE_TICKETS}
        | {"page combined", "ticket combined", "ticket combined instances"}
    )
    for key, (characters, size) in many.items():
        assert characters <= 8192, key
        assert size <= 10240, key
        assert many[key] == one[key], key
    # With a serving tier the combined texts list its symptoms too, and still fit.
    serving = dict(_documentation_run(1, 1, "recordline-prod-abcdefghijklmn", serving=True))
    for key in ("page combined", "ticket combined"):
        assert serving[key][0] > one[key][0], key
    assert all(c <= 8192 and b <= 10240 for c, b in serving.values())


# The tickets made only where a system serves (cells.tf, serving_symptoms).
SERVING_TICKETS = {"export_lag", "export_blocked"}
COMBINED = (
    "{ combined = local.combined, pages = local.combined_pages, tickets = local.combined_tickets,"
    " instances = local.combined_instance_tickets, paged = local.paged,"
    " ticket_specs = local.ticket_specs, ticket_queries = local.ticket_queries,"
    " instance_tickets = local.instance_tickets, groups = local.ticket_groups,"
    " documentation = local.combined_documentation }"
)


def _held(query: str, duration: str) -> str:
    """A query as a combined condition holds it for `duration`: present at each minute
    step of that long."""
    seconds = int(duration.removesuffix("s"))
    if seconds == 0:
        return query
    return f"({query}) and count_over_time(({query})[{seconds}s:1m]) >= {seconds // 60}"


def _labelled(query: str, section: str) -> str:
    return (
        f'label_replace(label_replace({query}, "system", "$1", "cell", "(.+)"), '
        f'"symptom", "{section}", "symptom", ".*")'
    )


@pytest.mark.parametrize(
    ("systems", "serving", "combined", "conditions"),
    [
        (1, False, True, 2),  # a first deployment: one system on BigQuery alone
        (1, True, True, 3),  # and its serving instances' ticket
        (9, False, True, 2),
        (10, False, False, 19),  # from ten systems, a policy per symptom
        (10, True, False, 25),
    ],
)
def test_a_few_systems_have_every_symptom_in_one_page_and_one_ticket(
    systems: int, serving: bool, combined: bool, conditions: int
) -> None:
    # Each condition is billed $1.50 a month: below ten systems every symptom is in one
    # paging condition and one ticket condition (and one for the serving instances),
    # each symptom's series labelled with its runbook section, none hiding another.
    found = _alerts_run(1, systems, "recordline-prod", COMBINED, serving)
    assert found["combined"] is combined
    (group,) = found["groups"]
    # A policy per symptom: each page, each ticket and each instance ticket made.
    ticketed = [s for s in found["ticket_specs"] if serving or s not in SERVING_TICKETS]
    instances = len(found["instance_tickets"]) if serving else 0
    per_symptom = len(found["paged"]) + len(ticketed) + instances
    assert (2 + int(serving) if combined else per_symptom) == conditions
    # Every symptom that pages, or tickets, is in the combined condition, under its
    # runbook section, held as long as its own policy's duration holds it.
    pages = {page[3]: page for page in found["paged"].values()}
    assert set(found["pages"]) == set(pages)
    for section, (title, duration, query) in found["pages"].items():
        assert (title, duration) == (pages[section][0], pages[section][2])
        assert query == _labelled(_held(pages[section][1], duration), section)
    tickets = {
        spec[2]: (spec[0], spec[1], found["ticket_queries"][group][symptom])
        for symptom, spec in found["ticket_specs"].items()
        if serving or symptom not in SERVING_TICKETS
    }
    assert {s: q[:2] for s, q in found["tickets"][group].items()} == {
        s: list(t[:2]) for s, t in tickets.items()
    }
    for section, (_, duration, query) in found["tickets"][group].items():
        assert query == _labelled(_held(tickets[section][2], duration), section)
    # The instances' two, held ten minutes each.
    assert set(found["instances"]) == {"spanner-cpu", "spanner-storage"}
    assert all(
        "count_over_time((" in q and "[600s:1m]) >= 10" in q
        for _, _, q in found["instances"].values()
    )
    # Each text names the incident's system and symptom, lists every symptom by its
    # section, and links the incident's own section.
    for policy, text in found["documentation"].items():
        listed = found["pages"] if policy == "page" else found["tickets"][group]
        if policy == "instances":
            listed = found["instances"]
        for section in listed:
            assert f"- `{section}`: " in text, (policy, section)
        assert text.endswith("Runbook: docs/operations.md#${metric.label.symptom}")
    assert "SYSTEM=${metric.label.system}" in found["documentation"]["ticket"]


def test_a_combined_condition_is_one_size_whatever_the_number_of_systems() -> None:
    # Every system's tickets to the same channels (the usual case): each symptom's query
    # names no system, so the one condition joining them is as long for nine systems as
    # for one, and the texts too.
    expression = (
        '{ page = join(" or ", [for s, p in local.combined_pages : p[2]]),'
        ' tickets = [for g, t in local.combined_tickets : join(" or ", [for s, p in t : p[2]])],'
        " documentation = local.combined_documentation }"
    )
    one = _alerts_run(1, 1, "recordline-prod", expression, True)
    nine = _alerts_run(3, 3, "recordline-prod", expression, True)
    assert one == nine
    assert len(one["tickets"]) == 1


def test_the_combined_policies_are_made_where_the_alerts_are_combined() -> None:
    policies = _policies()
    assert policies[COMBINED_PAGE]["for_each"] == '${local.combined ? toset(["pages"]) : toset([])}'
    assert policies["combined_ticket"]["for_each"] == "${local.combined ? local.ticket_groups : {}}"
    assert policies["combined_instance_ticket"]["for_each"] == (
        '${local.combined && local.any_serving ? toset(["instances"]) : toset([])}'
    )
    for name, key in (
        (COMBINED_PAGE, "combined_pages"),
        ("combined_ticket", "combined_tickets[each.key]"),
        ("combined_instance_ticket", "combined_instance_tickets"),
    ):
        (condition,) = policies[name]["conditions"]
        (promql,) = condition["condition_prometheus_query_language"]
        # One condition: every symptom's series, joined; the holds are in the query.
        assert promql["query"].startswith('${join(" or ", [for section, ')
        assert f" in local.{key} : " in promql["query"]
        assert promql["duration"] == "0s"
        assert "${metric.label.symptom}" in policies[name]["documentation"][0]["subject"]
    # Dead letters are events among the tickets: their incident closes itself.
    (strategy,) = policies["combined_ticket"]["alert_strategy"]
    assert strategy["auto_close"] == "1800s"
    # The shape is the environment's choice, else its size's.
    combined = _locals(ENVIRONMENT)["combined"]
    assert combined == (
        "${var.combined_alerts != null ? var.combined_alerts : length(local.system_names) < 10}"
    )
    forced = _alerts_run(1, 1, "recordline-prod", "local.combined", False, False)
    assert forced is False
    assert _alerts_run(1, 10, "recordline-prod", "local.combined", False, True) is True


def test_a_documentation_past_cloud_monitorings_limit_fails_the_plan_naming_it() -> None:
    # The check every text goes through (modules/alert_documentation): a text of 9,000
    # characters, or of 4,500 two-byte ones (under 8,192 characters, past 10,240 bytes),
    # stops the plan, naming the limit and each text past it.
    def run(texts: dict[str, str]) -> str:
        with tempfile.TemporaryDirectory() as work:
            shutil.copy(TERRAFORM / "modules" / "alert_documentation" / "main.tf", work)
            Path(work, "values.tfvars").write_text(f"texts = {json.dumps(texts)}\n")
            done = console_run(work, "var.texts", var_file="values.tfvars")
            return " ".join(re.sub(r"\x1b\[[0-9;]*m|[│╷╵]", "", done.stdout + done.stderr).split())

    error = run({"page backlog": "a" * 9000, "ticket bytes_billed": "fine"})
    assert "at most 8,192 characters and 10,240 bytes" in error
    assert "page backlog, 9000 characters and 9000 bytes" in error
    assert "ticket bytes_billed," not in error
    # Bytes, not characters: 5,200 two-byte characters are under 8,192 characters and
    # past 10,240 bytes.
    error = run({"page backlog": "é" * 5200})
    assert "page backlog, 5200 characters and 10400 bytes" in error
    assert "Invalid value for variable" not in run({"page backlog": "é" * 5000})
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
    assert (
        policies["instance_ticket"]["documentation"][0]["content"]
        == '${module.alert_documentation.texts["ticket ${each.key}"]}'
    )


def test_no_alert_documentation_names_the_systems_one_by_one() -> None:
    # A list of systems in a text grows it with the fleet; a count, or the incident's own
    # label and the directory, stays one size.
    listing = re.compile(r"join\(|[\[{]\s*for\s")
    environment = _locals(ENVIRONMENT)
    texts = {
        "page": environment["page_documentation"].split("=>", 1)[1],
        "ticket": environment["ticket_documentation"].split("=>", 1)[1],
        "instance": environment["instance_ticket_documentation"].split("=>", 1)[1],
        "page commands": environment["page_commands"],
        "instance commands": environment["instance_commands"],
        **{f"ticket {k}": v for k, v in environment["ticket_commands"].items()},
    }
    for name, text in texts.items():
        assert not listing.search(text), name
    assert listing.search('${join(", ", local.serving_systems)}')


def _variable_default(name: str) -> Any:
    """A cell root variable's default."""
    for block in _load(TERRAFORM / "variables.tf").get("variable", []):
        if name in block:
            return block[name]["default"]
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("cells", "serving"),
    [
        ({"a": {}}, False),  # a first deployment: one system, BigQuery alone
        ({"a": {"systems": {"one": {}, "two": {"serving": False}}}}, False),
        ({"a": {"systems": {"one": {}, "two": {"serving": True}}}}, True),
        ({"a": {}, "b": {"serving": True, "systems": {"three": {}}}}, True),
        (
            {
                "a": {"serving_rate": 5, "systems": {"one": {}, "two": {"rate": 10}}},
                "b": {"systems": {"three": {"rate": 50}, "four": {}}},
            },
            False,
        ),
    ],
)
def test_the_export_and_spanner_alerts_exist_only_where_a_system_serves(
    cells: dict[str, Any], serving: bool
) -> None:
    # Each condition is billed ($1.50 a month): an environment on BigQuery alone has none
    # of the six that only a serving tier can raise.
    require_terraform()
    environment = _locals(ENVIRONMENT)
    assert "local.any_serving" in environment["paged"]
    assert "!contains(local.serving_symptoms, key)" in environment["paged"]
    assert environment["instance_ticketed"] == (
        "${local.any_serving ? local.instance_tickets : {}}"
    )
    assert (
        "if !local.combined && (local.any_serving || !contains(local.serving_symptoms, pair[1]))"
        in (_policies()["ticket"]["for_each"])
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch, "infra", "terraform", "environment")
        work.mkdir(parents=True)
        shutil.copy(ENVIRONMENT / "variables.tf", work)
        blocks = re.findall(r"(?ms)^locals \{\n.*?^\}\n", (ENVIRONMENT / "cells.tf").read_text())
        (work / "cells.tf").write_text("\n".join(b for b in blocks if "google_" not in b))
        files = Path(scratch, "infra", "terraform", "env", "prod")
        files.mkdir(parents=True)
        for name, body in cells.items():
            (files / f"{name}.tfvars.json").write_text(json.dumps({"cell": name, **body}))
        (work / "values.tfvars").write_text(
            'project_id = "p"\nenvironment = "prod"\ngithub_owner = "o"\ngithub_repo = "r"\n'
            'github_repository_id = "1"\ngithub_owner_id = "2"\n'
            'terraform_state_bucket = "b"\n'
        )
        found = console(
            work,
            "{ any = local.any_serving, symptoms = local.serving_symptoms,"
            " declared = local.declared_rates, default = local.default_rate }",
            var_file="values.tfvars",
        )
    assert found["any"] is serving
    # Each system's declared rate where it is not the default (its own, else its cell's
    # serving_rate): what its ticket of pushes over the declared rate holds it to.
    expected = {"one": 5, "three": 50} if "serving_rate" in cells["a"] else {}
    assert found["declared"] == expected
    assert found["default"] == float(_variable_default("serving_rate"))
    assert set(found["symptoms"]) == {
        "export_lag",
        "export_blocked",
        "spanner_storage",
        "spanner_cpu",
    }
    pages, tickets = set(environment["pages"]), set(environment["ticket_specs"])
    assert {"export_lag", "spanner_storage"} <= pages
    assert {"export_lag", "export_blocked"} <= tickets
    assert set(environment["instance_tickets"]) == {"spanner_cpu", "spanner_storage"}


def test_each_system_has_a_ticket_for_every_paged_symptom_it_has() -> None:
    tickets = _policies()["ticket"]
    assert (
        "setproduct(sort(keys(local.ticket_groups)), sort(keys(local.ticket_specs)))"
        in (tickets["for_each"])
    )
    assert set(_locals(ENVIRONMENT)["ticket_specs"]) == TICKETED
    assert set(_locals(ENVIRONMENT)["instance_tickets"]) == INSTANCE_TICKETS
    for symptom in TICKETED:  # every symptom has its query, in every group
        assert f"{symptom} = " in re.sub(r"\s+", " ", _locals(ENVIRONMENT)["ticket_queries"]), (
            symptom
        )
    (module,) = [
        b["ticket_symptoms"] for b in _root("module", ENVIRONMENT) if "ticket_symptoms" in b
    ]
    assert module["for_each"] == "${local.ticket_groups}"
    # One group (the usual case) names no system; several name each its own.
    assert module["systems"] == "${each.value.systems}"
    assert module["every_system"] == "${length(local.ticket_groups) == 1}"
    assert module["source"] == "../modules/symptoms"
    # Each system in trouble is an incident of its own: no count() around the query.
    (condition,) = tickets["conditions"]
    (promql,) = condition["condition_prometheus_query_language"]
    assert promql["query"] == "${local.ticket_queries[each.value.group][each.value.symptom]}"
    assert "metric.label.system" in tickets["documentation"][0]["subject"]


def _environment_console(
    expression: str, cells: dict[str, dict[str, Any]], **overrides: str
) -> Any:
    """`expression` over the environment root's plain locals (cells.tf, tickets.tf's
    groups), with these cells' files."""
    require_terraform()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch, "infra", "terraform", "environment")
        work.mkdir(parents=True)
        shutil.copy(ENVIRONMENT / "variables.tf", work)
        plain = []
        for path in ("cells.tf", "tickets.tf"):
            for block in re.findall(r"(?ms)^locals \{\n.*?^\}\n", (ENVIRONMENT / path).read_text()):
                if not re.search(r"\b(google_|module\.|data\.)", block):
                    plain.append(block)
        (work / "locals.tf").write_text("\n".join(plain))
        files = Path(scratch, "infra", "terraform", "env", "dev")
        files.mkdir(parents=True)
        for name, body in cells.items():
            (files / f"{name}.tfvars.json").write_text(
                json.dumps({"cell": name, "environment": "dev", **body})
            )
        values = {
            "project_id": '"recordline-dev"',
            "environment": '"dev"',
            "github_owner": '"recordline"',
            "github_repo": '"recordline"',
            "github_repository_id": '"1"',
            "github_owner_id": '"2"',
            "terraform_state_bucket": '"recordline-dev-tfstate"',
            **overrides,
        }
        (work / "values.tfvars").write_text("\n".join(f"{k} = {v}" for k, v in values.items()))
        return console(work, expression, var_file="values.tfvars")


def test_the_number_of_policies_does_not_grow_with_the_fleet() -> None:
    # A project holds 500 alerting policies and each condition is billed: nine per
    # system would grow with every system, and stop the 56th.
    cells = {
        f"c{c}": {
            "project_id": "recordline-dev",
            "systems": {f"c{c}-s{n:03d}": {} for n in range(100)},
        }
        for c in range(3)
    }
    groups = dict(
        _environment_console(
            "local.ticket_groups", cells, ticket_channels='["projects/p/notificationChannels/1"]'
        )
    )
    (group,) = groups.values()
    assert len(group["systems"]) == 300
    assert group["channels"] == ["projects/p/notificationChannels/1"]
    # Tickets, pages and the instances' two tickets: the same for 1 system as for 300.
    environment = _locals(ENVIRONMENT)
    policies = (
        len(environment["ticket_specs"]) * len(groups)
        + len(environment["pages"])
        + len(environment["instance_tickets"])
    )
    assert policies == 25
    # A system with owners of its own gets its tickets there, in a group of its own.
    own = {
        "recordline": {
            "systems": {
                "recordline": {},
                "orders": {"ticket_channels": ["projects/p/notificationChannels/9"]},
            }
        },
    }
    groups = sorted(
        dict(
            _environment_console(
                "local.ticket_groups", own, ticket_channels='["projects/p/notificationChannels/1"]'
            )
        ).values(),
        key=lambda g: g["systems"],
    )
    assert [(g["systems"], g["channels"]) for g in groups] == [
        (["orders"], ["projects/p/notificationChannels/9"]),
        (["recordline"], ["projects/p/notificationChannels/1"]),
    ]


# --- burn rates and ratios ------------------------------------------------------------


PUSHES = (
    "pubsub_googleapis_com:subscription_push_request_count"
    '{monitored_resource="pubsub_subscription",subscription_id=~"(orders)-push"'
)


def _events(namespace: str, slo: str) -> str:
    return (
        "workload_googleapis_com:recordline_slo_events"
        f'{{monitored_resource="generic_task",namespace=~"{namespace}",slo="{slo}"'
    )


# Each SLO's parts: its bad events and all of them. A system's pushes as Pub/Sub
# answered them; its stored messages' freshness; each cell's reads, under the cell's
# namespace (any name: only a cell writes them).
PARTS = {
    "availability": [
        (f'{PUSHES},response_class!~"ack|remote_server_4xx"}}', f"{PUSHES}}}"),
        (
            f'{_events("[a-z][a-z0-9-]*", "availability")},good="false"}}',
            f"{_events('[a-z][a-z0-9-]*', 'availability')}}}",
        ),
    ],
    "freshness": [
        (
            f'{_events("(orders)", "freshness")},good="false"}}',
            f"{_events('(orders)', 'freshness')}}}",
        )
    ],
    "read_latency": [
        (
            f'{_events("[a-z][a-z0-9-]*", "read_latency")},good="false"}}',
            f"{_events('[a-z][a-z0-9-]*', 'read_latency')}}}",
        )
    ],
}


@pytest.mark.parametrize("slo", ["availability", "freshness", "read_latency"])
@pytest.mark.parametrize(("speed", "windows"), [("fast", FAST), ("slow", SLOW)])
def test_burn_rates_take_two_windows_and_a_minimum_of_events(
    slo: str, speed: str, windows: dict[str, Any]
) -> None:
    query = _symptoms(("orders",), 250)["burning"][slo][speed]
    ors = query.split(" or ")
    assert len(ors) == len(PARTS[slo]), query
    for part, (bad, every) in zip(ors, PARTS[slo], strict=True):
        # Both windows, over the same budget and rate, and both must hold, on the
        # part's own events: its bad events over all of them.
        assert bad in part, part
        assert every in part, part
        long, short = f"[{windows['long']}]", f"[{windows['short']}]"
        assert part.count(f"> {windows['rate']}") == 2, part
        parts = part.split(" and ")
        assert len(parts) == 3, part
        assert long in parts[0]
        assert short not in parts[0]
        assert short in parts[1]
        assert long not in parts[1]
        # ...over at least min_events requests, messages or reads in the long window.
        assert re.search(rf"increase\(.*{re.escape(long)}\)\) >= 250,", parts[2]), parts[2]
        assert part.startswith("label_replace(")
        assert ', "system", "$1", ' in part


def test_burn_rate_windows_are_the_workbooks() -> None:
    environment = _locals(ENVIRONMENT)
    assert environment["burn_rates"] == {"fast": FAST, "slow": SLOW}
    # Pages burn fast; tickets either.
    for key in ("availability", "freshness", "read_latency"):
        assert '["fast"]' in environment["pages"][key][1]
        ticket = re.sub(r"\s+", " ", environment["ticket_queries"])
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
    for name in ("backlog", "canary_stale", "cell_unready", "spanner_cpu", "spanner_storage"):
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
    environment = _locals(ENVIRONMENT)
    texts = {name: p["documentation"][0]["content"] for name, p in _policies().items()}
    # The pages' and tickets' texts, as module.alert_documentation passes them on.
    texts["page"] = environment["page_documentation"]
    texts["ticket"] = environment["ticket_documentation"]
    texts["page commands"] = environment["page_commands"]
    texts["instance commands"] = environment["instance_commands"]
    texts.update({f"ticket command {k}": v for k, v in environment["ticket_commands"].items()})
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
            r"(?m)^\s*((?:gcloud|\.venv/bin/recordline|curl|job|eval)(?: [a-z\"$(-]+)*)", text
        ):
            words = command.split()
            verb = " ".join(words[: 4 if words[0] == "gcloud" else 2])
            assert verb in runbook, f"{name}: `{verb}` is not in docs/operations.md"
    environment = _locals(ENVIRONMENT)
    for key, spec in environment["pages"].items():
        assert spec[3] in sections, key
    for key, spec in environment["ticket_specs"].items():
        assert spec[2] in sections, key
    for key, spec in environment["instance_tickets"].items():
        assert spec[3] in sections, key


def test_every_command_finds_the_system_from_its_name_alone() -> None:
    # The runbook's commands start from the directory the cells write (their
    # directory.tf), read as on-call: no case over a list of systems, no name spelled out.
    environment = _locals(ENVIRONMENT)
    assert "gs://${var.terraform_state_bucket}/directory/*.json" in environment["directory"]
    for key, text in environment["ticket_commands"].items():
        if "SYSTEM=" in text or "$SYSTEM" in text:
            assert "${local.ticket_system}" in text, key
    assert "${local.directory}" in environment["ticket_system"]
    assert "${local.directory}" in environment["page_commands"]
    assert "recordline-serving" not in json.dumps(environment)


# --- what logging costs ------------------------------------------------------------------


EXCLUSIONS = TERRAFORM / "modules" / "request_log_exclusions"


@cache
def _exclusions(prefix: str = "recordline") -> dict[str, dict[str, str]]:
    """modules/request_log_exclusions' exclusions for `prefix`, evaluated by terraform."""
    require_terraform()
    with tempfile.TemporaryDirectory() as work:
        shutil.copy(EXCLUSIONS / "main.tf", work)
        Path(work, "values.tfvars").write_text(f"prefix = {_hcl(prefix)}\n")
        return dict(console(work, "local.exclusions", var_file="values.tfvars"))


def excluded(directory: Path) -> dict[str, str]:
    """Each request log exclusion of a root, by its resource's name, to its filter: the
    module's, which the root's resource is made of (name, description and filter)."""
    (call,) = [
        body
        for block in _root("module", directory)
        for name, body in block.items()
        if name == "request_log_exclusions"
    ]
    assert call["source"].endswith("/modules/request_log_exclusions")
    resources = _resources("google_logging_project_exclusion", directory)
    assert resources.keys() == _exclusions().keys()
    for name, body in resources.items():
        for field in ("name", "description", "filter"):
            taken = f"${{module.request_log_exclusions.exclusions.{name}.{field}}}"
            assert body[field] == taken, (name, field)
    return {name: exclusion["filter"] for name, exclusion in _exclusions().items()}


def test_an_exclusion_is_named_after_the_service_or_the_cell() -> None:
    assert [e["name"] for e in _exclusions("cell-1").values()] == [
        "cell-1-follower-reads",
        "cell-1-successful-pushes",
        "cell-1-successful-reads",
    ]


@pytest.mark.parametrize("directory", [ENVIRONMENT, TERRAFORM], ids=["environment", "own project"])
def test_successful_pushes_are_not_logged_one_by_one(directory: Path) -> None:
    # One request log per push: 86.4 million a day per system at 1,000 msg/s.
    text = excluded(directory)["successful_pushes"]
    for part in (
        'log_id("run.googleapis.com/requests")',
        'httpRequest.requestUrl:"/pubsub/push"',  # /systems/NAME/pubsub/push too
        "httpRequest.status<400",  # refused and failed pushes are kept whole
        "sample(insertId, 0.999)",  # one in a thousand of the rest is kept to look at
    ):
        assert part in text, part
    # Reads are another exclusion's; the service's own lines are never excluded.
    assert "/v1/" not in text
    assert "severity" not in text


@pytest.mark.parametrize("directory", [ENVIRONMENT, TERRAFORM], ids=["environment", "own project"])
def test_successful_reads_are_not_logged_one_by_one(directory: Path) -> None:
    # A busy system's follower reads about once a second: two followers of each of a
    # hundred systems were some 600 GiB of request logs a month (infra/fleet_cost.py).
    text = excluded(directory)["successful_reads"]
    for part in (
        'log_id("run.googleapis.com/requests")',
        'httpRequest.requestMethod="GET"',
        "httpRequest.status<400",  # refused and failed reads are kept whole
        "sample(insertId, 0.99)",  # a 1% sample of the rest is kept to look at
    ):
        assert part in text, part
    assert "severity" not in text


@pytest.mark.parametrize("directory", [ENVIRONMENT, TERRAFORM], ids=["environment", "own project"])
def test_followers_long_polls_are_not_logged(directory: Path) -> None:
    # A follower asks again as soon as it is answered: two followers of each of a
    # thousand systems, 1% kept, were a sixth of the request logs (infra/fleet_cost.py).
    # Every successful long-poll is excluded, none sampled; a failed one is kept.
    text = excluded(directory)["follower_reads"]
    for part in (
        'log_id("run.googleapis.com/requests")',
        'httpRequest.requestMethod="GET"',
        'httpRequest.requestUrl:"wait="',  # the long-poll's parameter (docs/reading.md)
        "httpRequest.status<400",
    ):
        assert part in text, part
    assert "sample(" not in text
    assert "severity" not in text


# --- the export to BigQuery (systems with `serving`) ----------------------------------------


def test_the_export_lag_is_the_freshest_reading_of_the_furthest_behind_table() -> None:
    query = _symptoms(("orders", "payments"), export_lag=7200)["export_lag"]
    lag = "workload_googleapis_com:recordline_export_lag"
    # Per table the least any instance reports (the holder writes it), per system its
    # furthest-behind table, named by `system`, over the threshold.
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

    variables = _variables(ENVIRONMENT)
    ticket, page = (
        variables["export_lag_ticket_seconds"]["default"],
        variables["export_lag_page_seconds"]["default"],
    )
    assert (ticket, page) == (3600, 6 * 3600)
    shortest = retention_days(1) * 86_400
    assert shortest == 3 * 86_400
    assert page <= shortest / 3

    def accepted(page: int, ticket: int = 3600) -> bool:
        values = {"export_lag_page_seconds": str(page), "export_lag_ticket_seconds": str(ticket)}
        return _validations_hold("export_lag_page_seconds", values, ENVIRONMENT)

    assert accepted(21600)
    assert accepted(86400)
    assert not accepted(86401)  # past a third of the shortest retention
    assert not accepted(3600)  # not after the ticket
    modules = {name: b[name] for b in _root("module", ENVIRONMENT) for name in b}
    assert modules["fleet_symptoms"]["export_lag_threshold_seconds"] == (
        "${var.export_lag_page_seconds}"
    )
    assert modules["ticket_symptoms"]["export_lag_threshold_seconds"] == (
        "${var.export_lag_ticket_seconds}"
    )
    environment = _locals(ENVIRONMENT)
    pages, tickets = environment["pages"], environment["ticket_specs"]
    assert pages["export_lag"][1:] == [
        "${module.fleet_symptoms.export_lag}",
        "300s",
        "export-behind",
    ]
    assert tickets["export_lag"][1:3] == ["300s", "export-behind"]
    assert tickets["export_blocked"][1:3] == ["300s", "export-blocked"]
    queries = re.sub(r"\s+", " ", environment["ticket_queries"])
    assert "export_lag = symptoms.export_lag" in queries
    assert "export_blocked = symptoms.export_blocked" in queries
    # On-call reads who holds each system's lease, and its logs where a pool writes them.
    export = environment["ticket_commands"]["export"]
    assert "FROM export_lease" in export
    assert "$POOL_LOGS" in export
    assert "cloud_run_revision" not in export


# --- the completeness ledger (systems on DuckDB or with `serving`) ---------------------------


def test_a_producers_missing_sequences_are_a_ticket_summed_over_its_producers() -> None:
    query = _symptoms(("orders", "payments"))["producers_missing"]
    missing = "workload_googleapis_com:recordline_producer_missing"
    assert query == (
        "label_replace(sum by (namespace) (max by (namespace, producer) ("
        f'{missing}{{monitored_resource="generic_task",namespace=~"(orders|payments)"}})), '
        '"system", "$1", "namespace", "(.*)") > 0'
    )
    environment = _locals(ENVIRONMENT)
    tickets = environment["ticket_specs"]
    assert tickets["producers_missing"][1:3] == ["300s", "producers-missing"]
    assert "producers_missing" not in environment["pages"]  # what is lost is known: no page
    commands = environment["ticket_commands"]["producers"].replace('\\"', '"')
    # As the cell's ops job: no checkout, no login.
    assert 'job "$OPS_JOB" audit --system="$SYSTEM" --since=24h' in commands
    assert ".venv/bin/recordline" not in commands
    assert "ticket_commands.replay" in tickets["producers_missing"][3]


def test_no_cell_or_system_module_has_alert_policies() -> None:
    for directory in (TERRAFORM, MODULE):
        assert _resources("google_monitoring_alert_policy", directory) == {}, directory


def test_sequences_two_messages_claimed_are_a_ticket_beside_the_missing() -> None:
    query = _symptoms(("orders", "payments"))["producers_conflicts"]
    conflicts = "workload_googleapis_com:recordline_producer_conflicts"
    assert query == (
        "label_replace(sum by (namespace) (max by (namespace, producer) ("
        f'{conflicts}{{monitored_resource="generic_task",namespace=~"(orders|payments)"}})), '
        '"system", "$1", "namespace", "(.*)") > 0'
    )
    environment = _locals(ENVIRONMENT)
    tickets = environment["ticket_specs"]
    assert tickets["producers_conflicts"][1:3] == ["300s", "producers-in-conflict"]
    assert "producers_conflicts" not in environment["pages"]  # both messages are stored: no page
    commands = environment["ticket_commands"]["conflicts"].replace('\\"', '"')
    assert 'job "$OPS_JOB" audit --system="$SYSTEM" --since=24h' in commands
    assert "/v1/producers?limit=100" in commands

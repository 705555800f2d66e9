"""Every alert policy points the person paged at a section of docs/operations.md."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from app.settings import QuerySettings
from app.store.spanner.schema import retention_days
from tests.infra.test_terraform import (
    ENVIRONMENT,
    METRICS,
    TERRAFORM,
    _locals,
    _resources,
    _variables,
)

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
LINK = re.compile(r"Runbook: docs/operations\.md#([^\s\"`)]+)")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors() -> frozenset[str]:
    text = RUNBOOK.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return frozenset(slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE))


def _each(body: dict[str, Any]) -> dict[str | None, Any]:
    """The `each.key` and `each.value` of a for_each policy, or {None: None} for a single one."""
    if "for_each" not in body:
        return {None: None}
    expression = body["for_each"]
    if "local.ticket_specs" in expression:
        # One per symptom and channel set: each.value.symptom keys local.ticket_specs.
        return {k: {"symptom": k} for k in _locals(ENVIRONMENT)["ticket_specs"]}
    # A policy per symptom is made where the alerts are not combined (combined.tf).
    expression = expression.replace("local.combined ? {} : ", "")
    found = re.fullmatch(r"\$\{local\.(\w+)\}", expression)
    assert found is not None, expression
    # Those made only where a system serves are each of a map made always: every one.
    every = {"paged": "pages", "instance_ticketed": "instance_tickets"}
    return dict(_locals(ENVIRONMENT)[every.get(found.group(1), found.group(1))])


def _runbook_links() -> dict[str, str]:
    """Alert policy (with each.key) -> the anchor its documentation names."""
    links: dict[str, str] = {}
    for name, body in _resources("google_monitoring_alert_policy").items():
        documentation = body.get("documentation")
        assert documentation, f"{name} has no documentation block"
        content = documentation[0]["content"]
        if content == '${module.alert_documentation.texts["page ${each.key}"]}':
            # The pages' texts, one per page (fleet.tf): its runbook section is page[3].
            content = _locals(ENVIRONMENT)["page_documentation"].replace("page[3]", "each.value[3]")
        if content == '${module.alert_documentation.texts["ticket ${each.value.symptom}"]}':
            # The tickets' texts, one per symptom (tickets.tf): its section is spec[2].
            content = _locals(ENVIRONMENT)["ticket_documentation"].replace(
                "spec[2]", "local.ticket_specs[each.value.symptom][2]"
            )
        if content == '${module.alert_documentation.texts["ticket ${each.key}"]}':
            # The serving instances' tickets (tickets.tf): its section is spec[3].
            content = _locals(ENVIRONMENT)["instance_ticket_documentation"].replace(
                "spec[3]", "each.value[3]"
            )
        combined = re.fullmatch(
            r'\$\{module\.alert_documentation\.texts\["(page|ticket) combined( instances)?"\]\}',
            content,
        )
        if combined:
            # Where the alerts are combined (combined.tf), each incident's text links the
            # section its label `symptom` names: each symptom's of the policy.
            link = _locals(ENVIRONMENT)["combined_list"]
            assert link.endswith("Runbook: docs/operations.md#$${metric.label.symptom}"), link
            texts = _locals(ENVIRONMENT)["combined_documentation"]
            assert all(text.startswith("${format(local.combined_list,") for text in texts.values())
            specs = _locals(ENVIRONMENT)
            sections = {
                "page": [page[3] for page in specs["pages"].values()],
                "ticket": [spec[2] for spec in specs["ticket_specs"].values()],
                "ticket instances": [spec[3] for spec in specs["instance_tickets"].values()],
            }[combined.group(1) + (combined.group(2) or "")]
            for section in sections:
                links[f"{name}[{section}]"] = section
            continue
        found = LINK.search(content)
        assert found, f"{name}: documentation has no `Runbook: docs/operations.md#...` link"
        for key, value in _each(body).items():
            anchor = found.group(1)
            assert key is not None or "each." not in anchor, name
            if key is not None:
                anchor = anchor.replace("${each.key}", key)
                item = re.fullmatch(r"\$\{each\.value\[(\d+)\]\}", anchor)
                if item:
                    anchor = value[int(item.group(1))]
                spec = re.fullmatch(
                    r"\$\{local\.ticket_specs\[each\.value\.symptom\]\[(\d+)\]\}", anchor
                )
                if spec:
                    anchor = _locals(ENVIRONMENT)["ticket_specs"][value["symptom"]][
                        int(spec.group(1))
                    ]
            links[name if key is None else f"{name}[{key}]"] = anchor
    return links


def test_slug_is_the_github_anchor() -> None:
    assert slug("Server errors (5xx)") == "server-errors-5xx"
    assert slug("SLO burn: read_latency") == "slo-burn-read_latency"


def test_every_alert_policy_links_an_existing_runbook_section() -> None:
    links = _runbook_links()
    # Every policy of the system module and the fleet, each SLO's burn alert counted once.
    assert len(links) >= 7
    missing = {policy: anchor for policy, anchor in links.items() if anchor not in anchors()}
    assert not missing, f"runbook sections not in docs/operations.md: {missing}"


def test_the_readme_links_the_runbook() -> None:
    readme = (RUNBOOK.parents[1] / "README.md").read_text()
    assert "docs/operations.md" in readme


def test_every_tile_the_runbook_names_is_on_a_dashboard() -> None:
    titles = [c["title"] for c in _cell_charts()]
    titles += [c[0] for c in _locals(ENVIRONMENT)["fleet_charts"]]
    named = re.findall(r'\btiles? "([^"]+)"', RUNBOOK.read_text())
    assert named
    missing = [t for t in named if not any(title.startswith(t) for title in titles)]
    assert missing == []


def _cell_charts() -> list[dict[str, Any]]:
    """The cell's dashboard's charts, those of the serving tier among them."""
    text = str(_locals(TERRAFORM)["cell_charts"])
    return [{"title": title} for title in re.findall(r'title = "([^"]+)"', text)]


def _seconds(duration: str) -> int:
    """A Terraform duration such as "600s" in seconds."""
    assert duration.endswith("s"), duration
    return int(duration[:-1])


def _spoken(seconds: int) -> str:
    """Seconds as the outage table says them: whole days, else hours and minutes."""
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def test_the_outage_table_is_what_the_terraform_defaults_absorb() -> None:
    variables = {name: body.get("default") for name, body in _variables().items()}
    # Pub/Sub waits between a message's deliveries from the minimum backoff, doubling,
    # up to the maximum: the dead-letter topic gets it after the last of them.
    attempts = variables["max_delivery_attempts"]
    least, most = (_seconds(variables[f"retry_{e}_backoff"]) for e in ("minimum", "maximum"))
    absorbed = sum(min(least * 2**k, most) for k in range(attempts - 1))
    assert absorbed >= 4 * 3600  # a 4-hour outage dead-letters nothing
    retention = _seconds(variables["message_retention_duration"])
    window = QuerySettings().dedupe_window_seconds
    spanner_days = retention_days(window)
    text = RUNBOOK.read_text()
    table = text.split("## Outages, and what to run after", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    said = [re.findall(r"\*\*([^*]+)\*\*", row.split(" | ")[0]) for row in rows[1:]]
    assert said == [
        [_spoken(absorbed)],
        [_spoken(absorbed), _spoken(retention)],
        [_spoken(retention)],
        [f"{spanner_days} days"],
        [f"{spanner_days} days"],
    ]
    flat = " ".join(table.split())
    assert f"{attempts} deliveries with backoff from {least} s doubling to {most} s" in flat
    assert f"refused {attempts} times" in flat


def _section(heading: str) -> str:
    text = RUNBOOK.read_text()
    return " ".join(
        text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0].split("\n### ")[0].split()
    )


def test_the_runbook_diagram_is_what_terraform_and_the_code_do() -> None:
    variables = {name: body.get("default") for name, body in _variables().items()}
    text = RUNBOOK.read_text()
    diagram = text.split("## Tool and collection", 1)[1].split("```mermaid", 1)[1]
    diagram = diagram.split("```", 1)[0]
    # Pub/Sub dead-letters a message after max_delivery_attempts deliveries.
    assert f"after {variables['max_delivery_attempts']} deliveries" in diagram
    assert re.findall(r"after (\d+) (?:attempts|deliveries)", diagram) == [
        str(variables["max_delivery_attempts"])
    ]
    # The canary is published every minute (modules/system/canary.tf).
    canary = _resources("google_cloud_scheduler_job")["canary"]
    assert canary["schedule"] == "* * * * *"
    assert "canary every minute" in diagram
    # With serving, pushes go to Spanner and the exporter feeds BigQuery; every metric
    # the diagram names is one the service reports (metrics.tf).
    assert "group commit, with serving" in diagram
    assert "SP -->|exporter" in diagram
    ours = {f"recordline.{name}" for name in _locals(METRICS)["workload_metrics"]}
    named = {
        name if name.startswith("recordline.") else f"recordline.{name}"
        for label in re.findall(r"<i>([^<]+)</i>", diagram)
        for name in (n.strip() for n in label.split(","))
        if "." in name and not name.startswith("run ")
    }
    assert named
    assert named <= ours, named - ours


def test_the_exporters_numbers_in_the_runbook_are_the_codes() -> None:
    from app.store import supervisor
    from app.store.tiered import exporter

    renewal = exporter.LEASE_SECONDS / 3
    behind = _section("### Export behind")
    assert f"renewed every {renewal:g} s" in behind
    assert f"an instance that dies is taken over within {exporter.LEASE_SECONDS:g} s" in behind
    # The lease ranks code versions alone (app/store/spanner/ledger.py), no traffic.
    assert "code of an older row schema never takes it back" in behind
    assert "no push" not in behind
    retry = f"{exporter.RETRY_SECONDS:g} s, doubling to {exporter.RETRY_MAX_SECONDS:g} s"
    assert f"that table retries after {retry}" in behind
    # A bad instance that hangs: its leases run out, then the old revision's first rounds.
    back = _section("## Rolling the exporter back")
    lease, idle = exporter.LEASE_SECONDS, exporter.IDLE_MAX_SECONDS
    assert f"within {lease + idle:g} s of the old revision's instances starting" in back
    assert f"(a lease, {lease:g} s, and {idle:g} s, the longest an exporter waits" in back
    blocked = _section("### Export blocked")
    every = "minute" if exporter.BLOCKED_RETRY_SECONDS == 60 else "other"
    assert f"tries that very batch again every {every}" in blocked
    loops = _section("### Loop restarting")
    variables = {name: body.get("default") for name, body in _variables(ENVIRONMENT).items()}
    count = variables["loop_restarts_ticket_count"]
    assert f"restarted over {count} times in 10 minutes" in loops
    assert "[10m]" in _locals_symptom("loop_restarts")
    restarts = f"{supervisor.RESTART_SECONDS:g} s doubling to {supervisor.RESTART_MAX_SECONDS:g} s"
    assert restarts in loops
    assert f"longer than a lease ({exporter.LEASE_SECONDS:g} s)" in loops
    spoken = {1: "one lease", 2: "two leases", 3: "three leases"}[exporter.STEP_DOWN_LEASES]
    assert f"claims none for {spoken}" in loops


def _locals_symptom(name: str) -> str:
    from tests.infra.test_terraform import TERRAFORM, _load

    for block in _load(TERRAFORM / "modules" / "symptoms" / "main.tf").get("locals", []):
        if name in block:
            return str(block[name])
    raise AssertionError(f"no local {name} in modules/symptoms")

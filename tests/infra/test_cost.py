"""The cost table of docs/operations.md is what infra/fleet_cost.py computes from the
Terraform defaults, every billed item a row: a change of a default, of the Spanner
sizing, of a metric, of an alert or of a price changes the table, or this fails."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from tests.infra.console import require_terraform
from tests.infra.test_terraform import _locals

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "operations.md"


@cache
def fleet_cost() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_cost", ROOT / "infra" / "fleet_cost.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _table() -> str:
    require_terraform()
    return str(fleet_cost().table())


def _rows() -> dict[str, list[float]]:
    """Each row's dollars: before the exporter service 1, 10, 100, then now 1, 10, 100."""
    found = {}
    for line in _table().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        values = [c.strip("*") for c in cells[2:]]
        if all(v.startswith(("$", "<$")) for v in values):
            found[cells[0].strip("*")] = [
                0.5 if v == "<$1" else float(v.strip("$").replace(",", "")) for v in values
            ]
    return found


def test_the_runbook_cost_table_is_the_one_the_defaults_give() -> None:
    text = RUNBOOK.read_text()
    assert _table() in text, (
        "docs/operations.md's cost table is stale: paste `.venv/bin/python infra/fleet_cost.py`"
    )
    assert fleet_cost().break_even() in text
    assert fleet_cost().region_plan() in text


def test_every_billed_item_has_a_row_with_its_source() -> None:
    names = [name for name, _ in fleet_cost().ROWS]
    for item in (
        "Spanner compute",
        "Spanner storage",
        "Cloud Run: ingest",
        "Cloud Run: exporter",
        "Pub/Sub throughput",
        "Storage Write",
        "BigQuery storage, first month",
        "BigQuery storage, twelfth month",
        "uptime probes",
        "custom metrics, by bytes",
        "uptime check executions",
        "alerting conditions",
        "Cloud Trace",
        "Cloud Logging",
        "Cloud Scheduler",
        "Secret Manager",
        "Artifact Registry",
    ):
        assert any(item in n for n in names), item
    for _, source in fleet_cost().ROWS:
        assert source.startswith("https://cloud.google.com/")
        assert source.endswith("/pricing")


def test_the_totals_add_up() -> None:
    rows = _rows()
    items = {k: v for k, v in rows.items() if not k.startswith(("Total", "Per system"))}
    first = {k: v for k, v in items.items() if "twelfth month" not in k}
    twelfth = {k: v for k, v in items.items() if "first month" not in k}
    for label, summed in (("Total, first month", first), ("Total, twelfth month", twelfth)):
        for column, total in enumerate(rows[label]):
            parts = sum(v[column] for v in summed.values())
            # Each cell is rounded to the dollar: the sum may differ by that much a row.
            assert abs(parts - total) <= len(summed), (label, column)
    fleets = fleet_cost().FLEETS * 2
    for column, per_system in enumerate(rows["Per system, twelfth month"]):
        assert per_system == pytest.approx(
            rows["Total, twelfth month"][column] / fleets[column], abs=1
        )


def test_spanner_compute_follows_the_databases_and_a_second_instance_past_90() -> None:
    (units,) = [line for line in _table().splitlines() if line.startswith("| Spanner processing")]
    assert units.split("|")[3:6] == [" 100 ", " 100 ", " 1000 "]
    # 100 systems: 90 databases on the first instance (900 units) and 10 on a second (100).
    found = fleet_cost().evaluate(100)
    assert found["instances"] == 2
    assert found["units"] == 1000


def test_now_an_exporter_service_exports_and_ingest_is_billed_by_request() -> None:
    cost = fleet_cost()
    rows = _rows()
    always_on = 1 * cost.RUN_VCPU_SECOND * cost.SECONDS_A_MONTH + 1 * cost.RUN_GIB_SECOND * (
        cost.SECONDS_A_MONTH
    )
    assert always_on == pytest.approx(52.56)
    exporter = rows["Cloud Run: exporter service"]
    assert exporter[:3] == [0, 0, 0]  # before, the exporter ran in each ingest service
    assert exporter[3:] == [round(2 * always_on)] * 3  # two instances, whatever the fleet
    ingest = rows["Cloud Run: ingest services"]
    assert ingest[:3] == [round(n * always_on) for n in (1, 10, 100)]
    # At 10 pushes a second an instance billed by request is busy all the time: dearer.
    assert all(now > before for now, before in zip(ingest[3:], ingest[:3], strict=True))
    assert "below 6.6 pushes a second" in cost.break_even()
    # A system at rest costs nothing billed by request.
    found = {**cost.evaluate(1), "rate": 0}
    assert cost.month(1, found)["Cloud Run: ingest services"][1] == 0


def test_the_exporter_service_is_priced_from_its_terraform_size() -> None:
    cost = fleet_cost()
    found = cost.evaluate(10)
    assert (found["exporter_instances"], found["exporter_cpu"], found["exporter_memory"]) == (
        2,
        "1",
        "1Gi",
    )
    assert found["min_instances"] == 0
    two = cost.month(10, found)["Cloud Run: exporter service"][1]
    bigger = {**found, "exporter_instances": 3, "exporter_memory": "2Gi"}
    three = cost.month(10, bigger)["Cloud Run: exporter service"][1]
    per_second = cost.RUN_VCPU_SECOND + 2 * cost.RUN_GIB_SECOND
    assert three == pytest.approx(3 * per_second * cost.SECONDS_A_MONTH)
    assert three > 1.5 * two
    # Each instance standing by writes every system's export lag: a third costs more.
    metrics = cost.month(100, {**cost.evaluate(100), "exporter_instances": 3})
    name = "Cloud Run: exporter service"
    assert metrics[name][1] > cost.month(100, cost.evaluate(100))[name][1]
    monitoring = "Cloud Monitoring: custom metrics, by bytes"
    assert metrics[monitoring][1] > cost.month(100, cost.evaluate(100))[monitoring][1]
    # Ingest kept warm is not what the table prices: it says so rather than lie.
    with pytest.raises(ValueError, match="zero instances"):
        cost.month(1, {**found, "min_instances": 1})


def test_monitoring_is_billed_by_the_bytes_of_the_points_written() -> None:
    cost = fleet_cost()
    # Cloud Monitoring's tiers: 150 MiB free, then $0.258, $0.151 and $0.061 a MiB.
    assert cost._monitoring(150 * cost.MIB) == 0
    assert cost._monitoring(1150 * cost.MIB) == pytest.approx(1000 * 0.258)
    assert cost._monitoring(200_000 * cost.MIB) == pytest.approx(
        (100_000 - 150) * 0.258 + 100_000 * 0.151
    )
    # Every metric the service writes is counted, by its descriptor's value type.
    metrics = cost.evaluate(1)["metrics"]
    assert set(cost.INGEST_SERIES) | set(cost.EXPORT_SERIES) == set(metrics)
    assert not set(cost.INGEST_SERIES) & set(cost.EXPORT_SERIES)
    assert metrics["ingest.lag"] == "DISTRIBUTION"
    assert cost._point_bytes(metrics, {"ingest.lag": 1, "queue.depth": 1}) == 80 + 8
    # A hundred systems write hundreds of MiB a month: far more than samples priced
    # as Managed Prometheus would suggest.
    assert _rows()["Cloud Monitoring: custom metrics, by bytes"][2] > 400


def test_alert_conditions_are_counted_from_the_policies_terraform_makes() -> None:
    pages, tickets = len(_locals()["pages"]), len(_locals()["ticket_specs"])
    assert fleet_cost().alert_conditions(1) == pages + tickets + 3
    assert fleet_cost().alert_conditions(2) == pages + tickets + 6


def test_the_figures_the_issue_of_the_old_table_named_are_in_it() -> None:
    # Uptime checks: 3 checkers every 5 minutes, 100 systems: 2.6 million executions,
    # past the first million at $0.30 a thousand. The probes' queries: 10 MiB each.
    rows = _rows()
    assert rows["Cloud Monitoring: uptime check executions"][2] == 488
    assert rows["BigQuery queries: the uptime probes' 10 MiB minimum"][2] == 150
    assert 200 <= rows["Pub/Sub throughput (published and pushed)"][2] <= 220
    # BigQuery's storage grows every month rows are kept.
    assert (
        rows["BigQuery storage, twelfth month (rows kept)"][2]
        > 5 * rows["BigQuery storage, first month"][2]
    )


def test_the_region_plan_is_priced_at_least_at_eur3_s_list_price() -> None:
    text = fleet_cost().region_plan()
    figures = [float(x.replace(",", "")) for x in re.findall(r"\$([\d,]+)", text)]
    regional, eur3 = figures
    assert eur3 > 2 * regional


def test_the_runbook_says_how_many_series_an_instance_writes() -> None:
    cost = fleet_cost()
    metrics = cost.evaluate(1)["metrics"]
    series = {**cost.INGEST_SERIES, **cost.EXPORT_SERIES}
    distributions = sum(n for m, n in series.items() if metrics[m] == "DISTRIBUTION")
    numbers = sum(n for m, n in series.items() if metrics[m] != "DISTRIBUTION")
    text = re.sub(r"\s+", " ", RUNBOOK.read_text())
    assert f"{distributions} distributions and {numbers} numbers an instance" in text

"""The cost table of docs/operations.md is what infra/fleet_cost.py computes from the
Terraform defaults, every billed item a row: a change of a default, of the Spanner
sizing, of a metric, of an alert or of a price changes the table, or this fails."""

from __future__ import annotations

import importlib.util
import math
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
    """Each row's dollars, for 1, 10, 100 and 1,000 systems."""
    found = {}
    for line in _table().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        values = [c.strip("*") for c in cells[2:]]
        if all(v.startswith(("$", "<$")) for v in values):
            found[cells[0].strip("*")] = [
                0.005 if v == "<$0.01" else float(v.strip("$").replace(",", "")) for v in values
            ]
    return found


@pytest.mark.slow
def test_the_runbook_cost_table_is_the_one_the_defaults_give() -> None:
    text = RUNBOOK.read_text()
    assert _table() in text, (
        "docs/operations.md's cost table is stale: paste `.venv/bin/python infra/fleet_cost.py`"
    )
    assert fleet_cost().notes() in text


@pytest.mark.slow
def test_a_systems_cost_at_100_and_1000_systems_is_stated_against_the_25_dollars_asked() -> None:
    rows = _rows()
    cost = fleet_cost()
    per_system = dict(zip(cost.FLEETS, rows["Per system, twelfth month"], strict=True))
    assert cost.TARGET_PER_SYSTEM == 25
    # Alone, a system pays for a whole cell: the service, the pool, the alerts.
    assert per_system[1] > 200
    # The per-system figure is the twelfth month's total over the systems.
    for column, systems in enumerate(cost.FLEETS):
        assert per_system[systems] == pytest.approx(
            rows["Total, twelfth month"][column] / systems, rel=0.01
        )
    # The notes say what a system costs at 100 and 1,000, and whether that is within
    # the $25 asked, with what makes it: a full cell's instances and their series.
    stated = cost.target()
    assert f"{cost._dollars(per_system[100])} a month at 100 systems" in stated
    assert f"{cost._dollars(per_system[1000])} at 1,000" in stated
    met = per_system[100] <= 25 and per_system[1000] <= 25
    assert ("within the $25.00 asked" in stated) is met
    assert ("over the $25.00 asked" in stated) is not met
    full = cost.evaluate(100)
    assert f"runs {cost.ingest_instances(full)} ingest instances" in stated
    assert stated in RUNBOOK.read_text()


def test_every_billed_item_has_a_row_with_its_source() -> None:
    names = [name for name, _ in fleet_cost().ROWS]
    for item in (
        "Spanner compute",
        "Spanner storage",
        "Cloud Run: the cells' ingest",
        "Cloud Run: the cells' exporter",
        "Pub/Sub throughput",
        "Storage Write",
        "BigQuery storage, first month",
        "BigQuery storage, twelfth month",
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


@pytest.mark.slow
def test_the_totals_add_up() -> None:
    rows = _rows()
    items = {k: v for k, v in rows.items() if not k.startswith(("Total", "Per system"))}
    first = {k: v for k, v in items.items() if "twelfth month" not in k}
    twelfth = {k: v for k, v in items.items() if "first month" not in k}
    for label, summed in (("Total, first month", first), ("Total, twelfth month", twelfth)):
        for column, total in enumerate(rows[label]):
            parts = sum(v[column] for v in summed.values())
            # Each cell is rounded: the sum may differ by a dollar a row.
            assert abs(parts - total) <= len(summed), (label, column)


def test_a_thousand_systems_are_ten_cells_each_with_one_service_and_one_pool() -> None:
    cost = fleet_cost()
    assert cost.cells_of(1000, 100) == [100] * 10
    assert cost.cells_of(250, 100) == [100, 100, 50]
    (cells,) = [line for line in _table().splitlines() if line.startswith("| Cells")]
    assert cells.split("|")[3:7] == [" 1 ", " 1 ", " 1 ", " 10 "]
    rows = _rows()
    pool = rows["Cloud Run: the cells' exporter pools"]
    always_on = (
        cost.RUN_VCPU_SECOND * cost.SECONDS_A_MONTH + cost.RUN_GIB_SECOND * cost.SECONDS_A_MONTH
    )
    assert always_on == pytest.approx(52.56)
    assert pool == [
        round(2 * always_on),
        round(2 * always_on),
        round(2 * always_on),
        round(20 * always_on),
    ]


def test_spanner_compute_follows_each_instances_databases() -> None:
    (units,) = [line for line in _table().splitlines() if line.startswith("| Spanner processing")]
    assert units.split("|")[3:7] == [" 100 ", " 100 ", " 1000 ", " 10000 "]
    # 100 systems: 90 databases on the first instance (900 units) and 10 on a second (100).
    found = fleet_cost().evaluate(100)
    assert found["instances"] == 2
    assert found["units"] == 1000


@pytest.mark.slow
@pytest.mark.parametrize(("rate", "instance_based"), [(1.0, False), (5.0, False), (10.0, True)])
def test_billing_follows_the_declared_rate_against_the_break_even(
    rate: float, instance_based: bool
) -> None:
    cost = fleet_cost()
    found = cost.evaluate(1, rate)
    assert found["break_even"] == pytest.approx(round(cost.break_even(), 1))
    assert bool(found["instance_based"]) is instance_based
    # And the plan picks the cheaper of the two, each priced.
    by_request = cost.ingest_month(found, False)
    instance = cost.ingest_month(found, True)
    assert (instance <= by_request) is instance_based
    assert f"| {rate:g} pushes a second |" in cost.single_system()


def test_the_break_even_is_the_one_terraform_declares() -> None:
    # 1 vCPU, 1 GiB: a push holds a 100 ms slice billed by request, plus its share of
    # a million requests; always on, a second of both.
    cost = fleet_cost()
    assert cost.break_even() == pytest.approx(6.6, abs=0.05)
    assert cost.evaluate(1)["break_even"] == 6.6


def test_monitoring_is_billed_by_the_bytes_of_the_points_written() -> None:
    cost = fleet_cost()
    # Cloud Monitoring's tiers: 150 MiB free, then $0.258, $0.151 and $0.061 a MiB.
    assert cost._monitoring(150 * cost.MIB) == 0
    assert cost._monitoring(1150 * cost.MIB) == pytest.approx(1000 * 0.258)
    # Every metric the service writes is counted once, by its descriptor's value type:
    # a system's own are counters and gauges, the distributions are the cell's.
    metrics = cost.evaluate(1)["metrics"]
    per_system = (cost.INSTANCE_SERIES, cost.HOLDER_SERIES, cost.EXPORT_SERIES)
    counted = set().union(*per_system) | set(cost.CELL_SERIES)
    assert counted == set(metrics)
    assert not any(metrics[m] == "DISTRIBUTION" for series in per_system for m in series)
    assert metrics["ingest.lag"] == "DISTRIBUTION"
    # What every ingest instance writes of a system on an ordinary day: nothing. What
    # its store holds is its export lease holder's, once; what reads do, the cell's
    # (tests/cell/test_telemetry.py holds the service to these tables).
    assert cost._point_bytes(metrics, cost.INSTANCE_SERIES) == 0
    assert cost._point_bytes(metrics, cost.HOLDER_SERIES) <= 32


@pytest.mark.slow
def test_alert_conditions_are_counted_from_the_policies_terraform_makes() -> None:
    from tests.infra.test_terraform import ENVIRONMENT

    environment = _locals(ENVIRONMENT)
    expected = (
        len(environment["pages"])
        + len(environment["ticket_specs"])
        + len(environment["instance_tickets"])
    )
    assert fleet_cost().alert_conditions() == expected


def test_one_uptime_check_a_cell_stays_in_the_free_executions() -> None:
    rows = _rows()
    assert rows["Cloud Monitoring: uptime check executions"] == [0, 0, 0, 0]
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


def test_the_capacity_it_prices_is_what_bench_cell_measured() -> None:
    import json

    cost = fleet_cost()
    cpu, source = cost.capacity()
    # What `bench cell --write` writes, and docs/benchmarks.md#cells reads from it.
    measured = json.loads((ROOT / "bench" / "cell.json").read_text())
    planning = measured["planning_pushes_per_vcpu_second"]
    assert cpu == pytest.approx(1 / planning)
    assert f"{planning:g} pushes a second per vCPU" in source
    assert measured["measured"] in source
    # The least of the cells' figures: the plan is made with the worst of them.
    cells = [v for k, v in measured["pushes_per_vcpu_second"].items() if k.startswith("cell_")]
    assert planning <= min(cells)
    # A full cell's instances are what its declared rate needs of that CPU at Cloud
    # Run's target utilisation.
    full = cost.evaluate(100)
    needed = full["cell_rate"] * cpu / (float(full["cpu"]) * cost.INGEST_TARGET_UTILISATION)
    assert cost.ingest_instances(full) == max(int(full["min_instances"]), math.ceil(needed))
    assert cost.ingest_instances(full) > 1

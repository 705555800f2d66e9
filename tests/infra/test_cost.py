"""The cost tables of docs/operations.md are what infra/fleet_cost.py computes from the
Terraform defaults, every billed item a row: a change of a default, of the Spanner
sizing, of a metric, of an alert, of a price, a rate or a capacity figure changes the
tables, or this fails. Spanner's sizing is one formula in Terraform and in the model."""

from __future__ import annotations

import importlib.util
import math
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from tests.infra.console import require_terraform
from tests.infra.test_alerts import excluded
from tests.infra.test_terraform import ENVIRONMENT, TERRAFORM, _locals

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
    assert fleet_cost().notes() in text, (
        "docs/operations.md's cost notes are stale: paste "
        "`.venv/bin/python infra/fleet_cost.py --notes`"
    )


def _documented(cost: ModuleType) -> bool:
    """Whether the runbook holds what the model prints now."""
    text = RUNBOOK.read_text()
    return bool(cost.table() in text and cost.notes() in text)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "changed"),
    [
        ("SPANNER_NODE_HOUR", 0.90),  # a price
        ("SPANNER_NODE_WRITES", 3_500),  # a capacity figure
        ("FOLLOWERS_A_SYSTEM", 3),  # a rate
    ],
)
def test_a_price_a_rate_or_a_capacity_changed_without_the_docs_fails(
    name: str, changed: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runbook's tables are what the model prints: change one figure and they are not.
    require_terraform()
    cost = fleet_cost()
    assert getattr(cost, name) != changed
    monkeypatch.setattr(cost, name, changed)
    assert not _documented(cost)


def test_the_measured_capacity_changed_without_the_docs_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    require_terraform()
    cost = fleet_cost()
    measured = json.loads(cost.CAPACITY.read_text())
    measured["planning_pushes_per_vcpu_second"] = 150
    (tmp_path / "cell.json").write_text(json.dumps(measured))
    monkeypatch.setattr(cost, "CAPACITY", tmp_path / "cell.json")
    assert not _documented(cost)


def test_it_prices_the_region_every_environment_deploys_to() -> None:
    # europe-west1 and the EU multi-region (infra/terraform/env): the prices are theirs.
    cost = fleet_cost()
    assert cost.deployed_regions() == {"europe-west1"}
    assert "europe-west1" in cost.__doc__
    assert cost.SPANNER_NODE_HOUR > 0.90  # us-central1's is $0.90


@pytest.mark.slow
def test_costs_at_100_and_1000_systems_and_alone_are_stated_against_what_was_asked() -> None:
    rows = _rows()
    cost = fleet_cost()
    assert cost.TARGET_PER_SYSTEM == 25
    assert cost.TARGET_STARTER == 15
    for label, months in (("twelfth month", 12), ("twenty-fourth month", 24)):
        per_system = dict(zip(cost.FLEETS, rows[f"Per system, {label}"], strict=True))
        # The per-system figure is the month's total over the systems.
        for column, systems in enumerate(cost.FLEETS):
            assert per_system[systems] == pytest.approx(
                rows[f"Total, {label}"][column] / systems, rel=0.01
            )
        assert cost.per_system(100, months) == pytest.approx(per_system[100], abs=0.01)
    stated = cost.target()
    twelfth = {s: cost.per_system(s, 12) for s in (1, 100, 1000)}
    fourth = {s: cost.per_system(s, 24) for s in (1, 100, 1000)}
    assert f"{cost._dollars(twelfth[100])} a month at 100 systems" in stated
    assert f"{cost._dollars(twelfth[1000])} at 1,000 in the twelfth month" in stated
    assert f"{cost._dollars(fourth[100])} and {cost._dollars(fourth[1000])}" in stated
    met = all(v <= 25 for d in (twelfth, fourth) for k, v in d.items() if k > 1)
    assert ("within the $25.00 asked" in stated) is met
    assert ("over the $25.00 asked" in stated) is not met
    # One system alone: at a message a second, and at the default rate, each against
    # the $15 asked, and the most it may send within it.
    slow = cost.month(1, cost.Shape(1, False, cost.SLOW_STARTER_RATE))
    slow_met = all(cost._total(slow, m) <= 15 for m in (12, 24))
    alone = all(v <= 15 for v in (twelfth[1], fourth[1]))
    said = f"{cost._dollars(cost._total(slow, 12))} and {cost._dollars(cost._total(slow, 24))}"
    assert f"{said} at 1 message a second, {'within' if slow_met else 'over'} the $15.00" in (
        stated
    )
    assert f"at 10, {'within it' if alone else 'over it'}" in stated
    ceiling = cost.starter_ceiling()
    assert f"up to {ceiling:g} messages a second" in stated
    for rate, within in ((ceiling, True), (ceiling + 0.1, False)):
        month = cost.month(1, cost.Shape(1, False, rate))
        assert all(cost._total(month, m) <= 15 for m in (12, 24)) is within, rate
    full = cost.evaluate(100)
    assert f"runs {cost.ingest_instances(full)} ingest instances" in stated
    # A commitment on Spanner's compute is an option, stated beside the list price.
    compute = cost.month(1000)["Spanner compute (processing units)"] / 1000
    committed = fourth[1000] - compute * 0.20
    assert f"{cost._dollars(committed)} at 1,000 in the twenty-fourth month." in stated
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
        "BigQuery storage, twelfth month",
        "BigQuery storage, twenty-fourth month",
        "BigQuery queries",
        "Internet data transfer out",
        "custom metrics, by bytes",
        "uptime check executions",
        "alerting conditions",
        "Cloud Trace",
        "Cloud Logging",
        "Cloud Scheduler",
        "Secret Manager",
        "Artifact Registry",
        "GitHub Actions",
    ):
        assert any(item in n for n in names), item
    for _, source in fleet_cost().ROWS:
        assert source.startswith(("https://cloud.google.com/", "https://docs.github.com/"))
    # And what is left out is said: backups, transfer within the region, CI of changes.
    left_out = " ".join(fleet_cost().LEFT_OUT)
    for item in ("backups", "within the region", "CI on changes", "Cloud CDN"):
        assert item in left_out, item


@pytest.mark.slow
def test_the_totals_add_up() -> None:
    rows = _rows()
    items = {k: v for k, v in rows.items() if not k.startswith(("Total", "Per system"))}
    twelfth = {k: v for k, v in items.items() if "twenty-fourth month" not in k}
    fourth = {k: v for k, v in items.items() if "twelfth month" not in k}
    for label, summed in (
        ("Total, twelfth month", twelfth),
        ("Total, twenty-fourth month", fourth),
    ):
        for column, total in enumerate(rows[label]):
            parts = sum(v[column] for v in summed.values())
            # Each cell is rounded: the sum may differ by a dollar a row.
            assert abs(parts - total) <= len(summed), (label, column)
    # Storage grows: the twenty-fourth month keeps twice the rows.
    assert rows["Total, twenty-fourth month"][3] > rows["Total, twelfth month"][3]


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
    # One system alone starts without a serving tier: no pool, no Spanner.
    assert pool == [0, round(2 * always_on), round(2 * always_on), round(20 * always_on)]
    assert rows["Spanner compute (processing units)"][0] == 0


def test_a_first_deployment_from_the_readme_creates_no_spanner_instance_and_no_pool() -> None:
    # README's deploy steps apply env/<environment>/recordline.tfvars.json: whatever those
    # files say, no system serves unless one asks.
    import json

    from tests.infra.test_fleet import _root_console

    for path in sorted((ROOT / "infra" / "terraform" / "env").glob("*/*.tfvars.json")):
        given = json.loads(path.read_text())
        overrides = tuple(
            (k, json.dumps(v))
            for k, v in given.items()
            if k in ("region", "dataset_location", "min_instances", "max_instances")
        )
        found = _root_console(
            "{ instances = local.spanner_instances, pool = local.exporter }",
            json.dumps(given.get("systems", {})).replace(":", " ="),
            overrides,
        )
        assert found == {"instances": [], "pool": {}}, path


def test_spanner_is_sized_by_databases_storage_and_cpu() -> None:
    (units,) = [line for line in _table().splitlines() if line.startswith("| Spanner processing")]
    assert units.split("|")[3:7] == [" 0 ", " 100 ", " 1000 ", " 10000 "]
    # 100 systems: 90 databases on the first instance (900 units) and 10 on a second (100).
    found = fleet_cost().evaluate(100)
    assert found["instances"] == 2
    assert found["units"] == 1000
    # Their CPU needs less than the databases hold them to.
    assert 0 < found["cpu_units"] < found["units"]
    # Had commits not been held to be batched, CPU would have sized them: 2,200 units.
    assert fleet_cost().unbatched_units(100) == 2200


@pytest.mark.parametrize(
    ("systems", "rate", "reads"),
    [(1, 10.0, 20.0), (10, 100.0, 20.0), (50, 300.0, 0.0), (90, 10.0, 2000.0), (3, 5000.0, 50.0)],
)
def test_terraform_and_the_model_size_spanners_cpu_by_one_formula(
    systems: int, rate: float, reads: float
) -> None:
    # The model's figure (spanner_cpu_units) is Terraform's (spanner.tf), for what the
    # databases write and read: a change to either alone fails here.
    cost = fleet_cost()
    found = cost.evaluate(systems, rate, True, reads)
    assert found["cpu_units"] == cost.spanner_cpu_units([rate] * systems, [reads] * systems)
    # And the instance has at least what its CPU needs.
    assert found["units"] >= found["cpu_units"]


def test_the_cpu_sizing_follows_the_published_throughput_and_the_schema() -> None:
    from app.store.spanner.calls import COMMIT_DELAY
    from app.store.spanner.schema import expected_indexes

    cost = fleet_cost()
    spanner = (ROOT / "infra" / "terraform" / "spanner.tf").read_text()
    # A push writes its row and an entry in each index of `records`.
    indexes = [n for n, (table, _) in expected_indexes().items() if table == "records"]
    assert cost.SPANNER_WRITES_PER_PUSH == 1 + len(indexes) == 3
    for name, value in (
        ("spanner_writes_per_push", cost.SPANNER_WRITES_PER_PUSH),
        ("spanner_reads_per_push", cost.SPANNER_READS_PER_PUSH),
    ):
        assert re.search(rf"\b{name}\s*=\s*{value}\b", spanner), name
    # Google's figures for a regional node, at 100% CPU: 3,500 row writes a second,
    # 22,500 with throughput-optimized writes (a commit delay of 100 ms), 22,500 reads;
    # at most 65% high-priority CPU.
    assert "regional ? 22500 : 15000" in spanner
    assert "regional ? 0.65 : 0.45" in spanner
    assert cost.SPANNER_NODE_WRITES == cost.SPANNER_NODE_READS == 22_500
    assert cost.SPANNER_NODE_WRITES_UNBATCHED == 3_500
    assert cost.SPANNER_CPU_CEILING == 0.65
    assert COMMIT_DELAY.total_seconds() == 0.1
    # A busy system alone needs CPU, not databases or storage: 5,000 pushes a second
    # write 15,000 rows, two thirds of a node, which at 65% is 2 nodes.
    busy = cost.evaluate(1, 5000.0)
    assert busy["cpu_units"] == 2000
    assert busy["units"] == 2000


def test_committed_use_discounts_are_an_option_not_the_price() -> None:
    cost = fleet_cost()
    assert cost.SPANNER_CUD == {"one year": 0.20, "three years": 0.40}
    sizing = cost.spanner_sizing()
    assert "with a commitment of one year (-20%)" in sizing
    assert "with a commitment of three years (-40%)" in sizing
    rows = _rows()
    compute = rows["Spanner compute (processing units)"][2]
    assert compute == pytest.approx(1000 / 1000 * cost.SPANNER_NODE_HOUR * 730, abs=1)


@pytest.mark.slow
@pytest.mark.parametrize(("rate", "instance_based"), [(1.0, False), (5.0, False), (10.0, True)])
def test_billing_follows_the_declared_rate_against_the_break_even(
    rate: float, instance_based: bool
) -> None:
    cost = fleet_cost()
    found = cost.evaluate(1, rate, False)
    assert found["break_even"] == pytest.approx(round(cost.break_even(), 1))
    assert bool(found["instance_based"]) is instance_based
    # And the plan picks the cheaper of the two, each priced.
    by_request = cost.ingest_month(found, False)
    instance = cost.ingest_month(found, True)
    assert (instance <= by_request) is instance_based
    assert f"| {rate:g} message{'' if rate == 1 else 's'} a second |" in cost.starter()


def test_the_break_even_is_the_one_terraform_declares() -> None:
    # 1 vCPU, 1 GiB: a push holds a 100 ms slice billed by request, plus its share of
    # a million requests; always on, a second of both.
    cost = fleet_cost()
    assert cost.break_even() == pytest.approx(6.6, abs=0.05)
    assert cost.evaluate(1)["break_even"] == 6.6


def test_monitoring_is_billed_by_the_bytes_of_the_points_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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
    # But a counter is cumulative: a series an instance wrote once it writes at each
    # export to its end, and every instance meets a duplicate or a 503 of some system:
    # the cell's, a few series an instance whatever its systems.
    assert cost.CELL_SERIES["messages"] == 2
    assert not hasattr(cost, "INCIDENT_SERIES")
    # The ingest service and the exporter pool export every two minutes: what the model
    # prices, from Terraform; each at every minute would cost more.
    found = cost.evaluate(100)
    assert (found["ingest_interval"], found["exporter_interval"]) == ("120000", "120000")
    row = "Cloud Monitoring: custom metrics, by bytes"
    every_two = cost.month(1000)[row]
    original = cost.evaluate
    for interval in ("ingest_interval", "exporter_interval"):
        monkeypatch.setattr(
            cost, "evaluate", lambda *a, i=interval, **k: {**original(*a, **k), i: "60000"}
        )
        assert cost.month(1000)[row] > 1.3 * every_two, interval
    monkeypatch.setattr(cost, "evaluate", original)


def test_a_cell_traces_about_a_push_a_second_whatever_its_size() -> None:
    # trace_sample_ratio (1%) is the most: one system at ten pushes a second keeps it, a
    # cell of a hundred (1,000 a second) a tenth of it, a trace a second, and the spans
    # the model prices are those.
    require_terraform()
    cost = fleet_cost()
    assert float(cost.evaluate(1)["trace_sample_ratio"]) == pytest.approx(0.01)
    full = cost.evaluate(100)
    assert float(full["trace_sample_ratio"]) * float(full["cell_rate"]) == pytest.approx(1)
    spans = 1000 * 10 * cost.SECONDS_A_MONTH * cost.SPANS_PER_PUSH / 1000
    assert cost.month(1000)["Cloud Trace spans"] == pytest.approx(
        (spans - cost.TRACE_FREE_SPANS) / 1e6 * cost.TRACE_MILLION_SPANS
    )


@pytest.mark.parametrize("directory", ["environment", "own project"])
def test_the_request_logs_it_prices_are_those_the_exclusions_keep(directory: str) -> None:
    # One successful push in a thousand, 1% of other successful reads, no follower's
    # long-poll: what each exclusion's filter leaves is what the model counts.
    cost = fleet_cost()
    root = ENVIRONMENT if directory == "environment" else TERRAFORM
    exclusions = excluded(root)

    def kept(name: str) -> float:
        found = re.findall(r"sample\(insertId, ([0-9.]+)\)", exclusions[name])
        return 1 - float(found[0]) if found else 0.0

    assert kept("successful_pushes") == pytest.approx(cost.LOGGED_SHARE_OF_PUSHES)
    assert kept("successful_reads") == pytest.approx(cost.LOGGED_SHARE_OF_READS)
    assert "wait=" in exclusions["follower_reads"]
    assert kept("follower_reads") == cost.LOGGED_SHARE_OF_LONG_POLLS == 0


def test_the_options_not_made_are_priced_by_terraform_with_their_variable_set() -> None:
    # Point-in-time recovery of a day keeps 10 days of rows' versions in Spanner, not 11;
    # a dedupe window of a day 5 (3 days of rows, 2 of recovery): Terraform's sizing,
    # which the model prices, with each variable set.
    from tests.infra.test_terraform import _variables

    cost = fleet_cost()
    variables = _variables()
    for name, _ in (*cost.RECOVERY_OF_A_DAY, *cost.DEDUPE_WINDOW_OF_A_DAY):
        assert name in variables, name
    stored = cost.evaluate(100)["stored"]
    recovery = cost.evaluate(100, None, True, None, cost.RECOVERY_OF_A_DAY)["stored"]
    window = cost.evaluate(100, None, True, None, cost.DEDUPE_WINDOW_OF_A_DAY)["stored"]
    assert recovery / stored == pytest.approx(10 / 11)
    assert window / stored == pytest.approx(5 / 11)
    said = cost.options()
    for variables_set in (cost.RECOVERY_OF_A_DAY, cost.DEDUPE_WINDOW_OF_A_DAY):
        for systems in (100, 1000):
            price = cost.option_per_system(systems, variables_set, 24)
            assert price < cost.per_system(systems, 24)
            assert cost._dollars(price) in said
    assert said in RUNBOOK.read_text()


def test_a_rollouts_soak_reads_at_least_two_of_the_exporter_pools_points() -> None:
    # The pool writes every two minutes: a soak of less than two points could read no
    # rows exported at all, and fail a good release.
    from tests.infra.test_terraform import _validations_hold, _variables

    interval = int(fleet_cost().evaluate(100)["exporter_interval"]) // 1000
    soak = _variables()["export_soak_seconds"]["default"]
    assert soak >= 2 * interval

    def accepted(seconds: int) -> bool:
        return _validations_hold("export_soak_seconds", {"export_soak_seconds": str(seconds)})

    assert accepted(2 * interval)
    assert not accepted(2 * interval - 1)
    assert accepted(900)
    assert not accepted(901)


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
    # An environment with no serving system has none of the export's or the Spanner
    # instances' pages and tickets: six conditions fewer.
    cells = (ROOT / "infra" / "terraform" / "environment" / "cells.tf").read_text()
    (declared,) = re.findall(r"serving_symptoms = toset\(\[([^]]*)\]\)", cells)
    assert set(re.findall(r'"([a-z_]+)"', declared)) == fleet_cost().SERVING_SYMPTOMS
    assert fleet_cost().alert_conditions(False) == expected - 6
    # Below ten systems every symptom is in one page and one ticket policy, and the
    # serving instances' one (combined.tf): a condition each.
    assert fleet_cost().combined_below() == 10
    assert fleet_cost().alert_conditions(False, 1) == 2
    assert fleet_cost().alert_conditions(True, 9) == 3
    assert fleet_cost().alert_conditions(True, 10) == expected
    assert _rows()["Cloud Monitoring: alerting conditions"][0] == 2 * fleet_cost().ALERT_CONDITION


def test_one_uptime_check_a_cell_stays_in_the_free_executions() -> None:
    rows = _rows()
    assert rows["Cloud Monitoring: uptime check executions"] == [0, 0, 0, 0]
    assert 200 <= rows["Pub/Sub throughput (published and pushed)"][2] <= 220
    # BigQuery's storage grows every month rows are kept.
    assert (
        rows["BigQuery storage, twenty-fourth month (rows kept, the access record)"][2]
        > 1.5 * rows["BigQuery storage, twelfth month (rows kept, the access record)"][2]
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


def test_bigquery_storage_is_billed_compressed_at_what_bench_storage_measures() -> None:
    # The datasets bill physical (compressed) bytes; the model prices a row at its
    # logical size over PHYSICAL_RATIO, which the rows `bench storage` writes (seeded,
    # a small run here) compress at least by.
    from bench.storage import measure

    cost = fleet_cost()
    dataset = (ROOT / "infra" / "terraform" / "modules" / "system" / "bigquery.tf").read_text()
    assert 'storage_billing_model = "PHYSICAL"' in dataset
    # The time-travel window stays BigQuery's 7 days: undropping a dataset needs it.
    assert "max_time_travel_hours" not in dataset
    found = measure(3000)
    assert 900 <= found["data_bytes"] <= 1100  # about 1 KiB, as the fleet's messages
    assert found["ratio"] >= cost.PHYSICAL_RATIO
    # Physical prices are 2.2 times the logical ones: compressed more than that, cheaper.
    assert pytest.approx(2.2) == cost.BIGQUERY_ACTIVE_GIB_MONTH / 0.02
    assert cost.PHYSICAL_RATIO > 2.2


def test_the_access_record_is_priced_at_the_lines_bench_access_keeps() -> None:
    # Each kind of line the service keeps (a follower's sums, a filtered page, an export,
    # a refusal, callers named by service accounts' e-mails) fits the bytes the model
    # prices a kept line at, and every kind was kept.
    from bench.access import measure

    found = measure(2.0)
    assert all(found["kinds"].values()), found["kinds"]
    assert found["ratio"] <= 1.0
    assert found["most"] <= fleet_cost().ACCESS_KEPT_LINE_BYTES

"""The cost table of docs/operations.md is what infra/fleet_cost.py computes from the
Terraform defaults: a change of a default, of the Spanner sizing or of a price changes
the table, or this fails."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.infra.console import require_terraform

ROOT = Path(__file__).resolve().parents[2]


def test_the_runbook_cost_table_is_the_one_the_defaults_give() -> None:
    require_terraform()
    spec = importlib.util.spec_from_file_location("fleet_cost", ROOT / "infra" / "fleet_cost.py")
    assert spec is not None
    assert spec.loader is not None
    fleet_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fleet_cost)
    table = fleet_cost.table()
    assert table in (ROOT / "docs" / "operations.md").read_text(), (
        "docs/operations.md's cost table is stale: paste `.venv/bin/python infra/fleet_cost.py`"
    )
    # Spanner's compute follows the databases: a whole node at 100 systems.
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert [(r[0].strip("| "), r[1]) for r in rows] == [
        ("1", "100"),
        ("10", "100"),
        ("100", "1000"),
    ]

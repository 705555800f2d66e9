"""The cell's fill job (fill.tf, modules/system/fill.tf): each system with tables of its
own has its Scheduler job run `recordline tables fill` for it, hourly, as the cell's fill
account, which holds what the fill reads and writes and nothing more.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path
from typing import Any

from app.commands.tables import add_arguments
from tests.infra.console import console, require_terraform
from tests.infra.test_fleet import _root_console
from tests.infra.test_iam_coverage import _roles
from tests.infra.test_terraform import MODULE, _resources

ORDERS = "{ recordline = {}, orders = { tables = { by_customer = {}, by_day = {} } } }"


def _fill_locals(service: str, tables: list[str]) -> dict[str, Any]:
    """The module's fill locals (modules/system/fill.tf) for a system and its tables."""
    require_terraform()
    (block,) = re.findall(r"(?ms)^locals \{\n.*?^\}\n", (MODULE / "fill.tf").read_text())
    with tempfile.TemporaryDirectory() as work:
        Path(work, "main.tf").write_text(
            'variable "service_name" {\n  type = string\n}\n'
            'variable "tables" {\n  type = any\n}\n'
            'variable "cell" {\n  type = any\n}\n' + block
        )
        tables_value = "{ " + ", ".join(f"{t} = {{}}" for t in tables) + " }"
        Path(work, "values.tfvars").write_text(
            f'service_name = "{service}"\ntables = {tables_value}\n'
            'cell = { fill = "c-fill@p.iam.gserviceaccount.com", fill_job = "c-fill" }\n'
        )
        found: dict[str, Any] = console(
            work,
            "{ fill = local.fill, args = local.fill_args, minute = local.fill_minute }",
            var_file="values.tfvars",
        )
        return found


def test_each_hourly_run_names_the_system_and_its_tables_as_the_command_takes_them() -> None:
    found = _fill_locals("orders", ["by_day", "by_customer"])
    assert found["fill"] == {"orders": "c-fill@p.iam.gserviceaccount.com"}
    parser = argparse.ArgumentParser()
    add_arguments(parser.add_subparsers(dest="command").add_parser("tables"))
    args = parser.parse_args(found["args"])
    assert (args.command, args.action, args.system) == ("tables", "fill", "orders")
    assert args.table == ["records_by_customer", "records_by_day"]
    assert 0 <= found["minute"] < 60
    # A system without tables has no Scheduler job.
    assert _fill_locals("orders", [])["fill"] == {}
    (schedule,) = [_resources("google_cloud_scheduler_job")["fill"]]
    assert re.fullmatch(r"\$\{local\.fill_minute\} \* \* \* \*", schedule["schedule"])
    (target,) = schedule["http_target"]
    assert target["uri"].endswith("/jobs/${var.cell.fill_job}:run")
    assert "local.fill_args" in target["body"]


def test_the_job_runs_once_an_hour_at_most_as_its_own_account() -> None:
    job = _resources("google_cloud_run_v2_job")["fill"]
    (template,) = job["template"][0]["template"]
    assert template["service_account"] == "${google_service_account.fill[each.key].email}"
    # The next hour's run is the retry; a run never reaches the next one.
    assert template["max_retries"] == 0
    assert int(template["timeout"].removesuffix("s")) < 3600
    executors = _resources("google_cloud_run_v2_job_iam_member")["fill_executors"]
    assert "run.jobs.runWithOverrides" in _roles()[executors["role"]]


def test_the_fill_account_reads_records_and_writes_its_tables_alone() -> None:
    dataset = _resources("google_bigquery_dataset_iam_member")["fill_reads_metadata"]
    # The routine its jobs call, no row of any table.
    assert "bigquery.routines.get" in _roles()[dataset["role"]]
    assert not any(p.endswith("getData") for p in _roles()[dataset["role"]])
    tables = _resources("google_bigquery_table_iam_member")
    assert "bigquery.tables.getData" in _roles()[tables["fill_reads_records"]["role"]]
    assert tables["fill_writes_tables"]["role"] == "roles/bigquery.dataEditor"
    assert "google_bigquery_table.filled" in tables["fill_writes_tables"]["for_each"]


def test_a_cell_has_a_fill_job_once_a_system_has_tables() -> None:
    assert _root_console("local.fill", "{}") == {}
    found = _root_console("{ fill = local.fill, systems = local.fill_systems }", ORDERS)
    assert found["systems"] == ["orders"]
    ((cell, job),) = found["fill"].items()
    assert job == f"{cell}-fill"

"""What a month of Recordline costs, per system and for a fleet, from the Terraform defaults.

    .venv/bin/python infra/fleet_cost.py            # the table docs/operations.md shows

Terraform itself (`terraform console`, offline) evaluates the environment's
variables and the Spanner sizing of spanner.tf for fleets of 1, 10 and 100
systems with `serving`, each at the default rate and message size; the list
prices below, with their sources, turn that into dollars a month. A test keeps
the table in docs/operations.md equal to what this prints.

Prices are the list prices of a regional deployment in us-central1 (europe-west1
is within a few percent), before free tiers unless said, and change: check them
against the pricing pages before a budget is made of this.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TERRAFORM = Path(__file__).resolve().parent / "terraform"

SECONDS_A_MONTH = 730 * 3600
# Spanner, regional, Standard edition: $0.90 a node-hour (1,000 processing units),
# $0.30 a GB-month of storage (https://cloud.google.com/spanner/pricing).
SPANNER_NODE_HOUR = 0.90
SPANNER_GB_MONTH = 0.30
# Cloud Run, instance-based billing (CPU always allocated: cpu_idle = false in
# modules/system/cloud_run.tf), tier 1: $0.000018 a vCPU-second, $0.000002 a
# GiB-second (https://cloud.google.com/run/pricing).
RUN_VCPU_SECOND = 0.000018
RUN_GIB_SECOND = 0.000002
# BigQuery: $0.02 a GB-month of active logical storage; the Storage Write API
# $0.025 a GB ingested, the first 2 TiB a month free per billing account
# (https://cloud.google.com/bigquery/pricing).
BIGQUERY_GB_MONTH = 0.02
STORAGE_WRITE_GB = 0.025
# What a row holds in BigQuery besides its data: ids, times, attributes,
# subscription, trace id (about 200 bytes; app/records.py's columns).
BIGQUERY_ROW_OVERHEAD = 200
# Cloud Monitoring: custom metrics sent as OpenTelemetry samples, $0.06 a million
# (https://cloud.google.com/stackdriver/pricing). An instance exports about 60
# series (the instruments of app/telemetry/metrics.py by their label values) once
# a minute: an estimate, not a count.
MONITORING_MILLION_SAMPLES = 0.06
SERIES_PER_INSTANCE = 60
SAMPLES_A_MONTH = SERIES_PER_INSTANCE * SECONDS_A_MONTH // 60

FLEETS = (1, 10, 100)


def _plain_locals(path: Path) -> str:
    """The `locals` blocks of a root file that name no resource, data source or module."""
    blocks = re.findall(r"(?ms)^locals \{\n.*?^\}\n", path.read_text())
    resources = re.compile(r"\b(google_|data\.|module\.|time_sleep)")
    return "\n".join(b for b in blocks if not resources.search(b))


def evaluate(systems: int) -> dict[str, Any]:
    """The variables and the Spanner sizing for `systems` serving systems at the defaults."""
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, systems))]
    hcl = "{ " + ", ".join(f'"{n}" = {{ serving = true }}' for n in names) + " }"
    values = {
        "project_id": '"recordline-prod"',
        "environment": '"prod"',
        "github_owner": '"recordline"',
        "github_repo": '"recordline"',
        "terraform_state_bucket": '"recordline-prod-tfstate"',
        "service_account_quota": "300",
        "systems": hcl,
    }
    expression = (
        "{ units = local.spanner_processing_units, stored = local.spanner_stored_bytes,"
        " rate = var.serving_rate, message_bytes = var.serving_message_bytes,"
        " cpu = var.cpu, memory = var.memory, min_instances = var.min_instances,"
        " retention_days = var.retention_days }"
    )
    terraform = shutil.which("terraform")
    if terraform is None:
        raise SystemExit("terraform is not installed")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        shutil.copy(TERRAFORM / "variables.tf", work)
        (work / "locals.tf").write_text(
            "\n".join(_plain_locals(p) for p in sorted(TERRAFORM.glob("*.tf")))
        )
        (work / "values.tfvars").write_text("\n".join(f"{k} = {v}" for k, v in values.items()))
        run = subprocess.run(  # noqa: S603 - our own argv, no shell
            [terraform, "console", "-var-file=values.tfvars"],
            input=f"jsonencode({expression})\n",
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if run.returncode != 0:
        raise SystemExit(f"terraform console failed:\n{run.stderr}")
    found: dict[str, Any] = json.loads(json.loads(run.stdout.strip().splitlines()[-1]))
    return found


def _gib(memory: str) -> float:
    number = float(re.sub(r"[A-Za-z]+$", "", memory))
    return number if memory.endswith("Gi") else number / 1024


def table() -> str:
    rows = [
        "| Systems (each 10 msg/s of 1 KiB, `serving`) | Spanner units | Spanner compute | "
        "Spanner storage | Cloud Run (1 instance each) | BigQuery storage, per month kept | "
        "Storage Write | Cloud Monitoring | Total a month | Per system |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for systems in FLEETS:
        found = evaluate(systems)
        spanner = found["units"] / 1000 * SPANNER_NODE_HOUR * 730
        stored = found["stored"] / 1e9 * SPANNER_GB_MONTH
        # A serving system keeps at least one instance (modules/system/cloud_run.tf).
        instances = systems * max(1, found["min_instances"])
        instance_second = float(found["cpu"]) * RUN_VCPU_SECOND + _gib(found["memory"]) * (
            RUN_GIB_SECOND
        )
        run = instances * instance_second * SECONDS_A_MONTH
        month_gb = (
            systems
            * found["rate"]
            * (found["message_bytes"] + BIGQUERY_ROW_OVERHEAD)
            * SECONDS_A_MONTH
            / 1e9
        )
        bigquery = month_gb * BIGQUERY_GB_MONTH
        free_gb = 2 * 1024**4 / 1e9
        write = max(0.0, month_gb - free_gb) * STORAGE_WRITE_GB
        monitoring = instances * SAMPLES_A_MONTH / 1e6 * MONITORING_MILLION_SAMPLES
        total = spanner + stored + run + bigquery + write + monitoring
        cells = [spanner, stored, run, bigquery, write, monitoring, total, total / systems]
        rows.append(
            f"| {systems} | {found['units']} | " + " | ".join(f"${c:,.0f}" for c in cells) + " |"
        )
    return "\n".join(rows)


def main() -> int:
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

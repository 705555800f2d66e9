"""What a month of Recordline costs, item by item, for fleets of 1, 10 and 100 systems.

    .venv/bin/python infra/fleet_cost.py            # the table docs/operations.md shows
    .venv/bin/python infra/fleet_cost.py --notes    # and the two figures below it

Terraform itself (`terraform console`, offline) evaluates the environment's variables
and the serving tier's sizing of spanner.tf for 1, 10 and 100 systems with `serving`,
each at the default rate and message size, the exporter service's size (exporter.tf)
and the metric descriptors of metrics.tf; the alert policies are counted from fleet.tf
and tickets.tf. The list prices below, each with its source, turn that into dollars a
month, for two topologies:

- before the exporter service, where each system's service ran its own exporter to
  BigQuery and so kept one instance always on, CPU always allocated (instance-based
  billing);
- now: the exporter service, a worker pool of `exporter_instances` always-on
  instances (two), exports every system, and each system's ingest service scales with
  its traffic from zero instances (`min_instances`, 0), billed by request.

Every billed item is a row; free allotments are counted once, for this environment
alone (they are per billing account or per project, as each row says). Prices are the
list prices of a regional deployment in us-central1 (tier 1; europe-west1 is within a
few percent), and change: check them against the pricing pages before a budget is made
of this. A test keeps the table in docs/operations.md equal to what this prints.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import hcl2

TERRAFORM = Path(__file__).resolve().parent / "terraform"

HOURS_A_MONTH = 730
SECONDS_A_MONTH = HOURS_A_MONTH * 3600
MINUTES_A_MONTH = HOURS_A_MONTH * 60
GIB = 1 << 30
TIB = 1 << 40
MIB = 1 << 20

# --- list prices, each with its source ---------------------------------------------------

# Spanner, regional, Standard edition: $0.90 a node-hour (1,000 processing units), $0.30
# a GB-month of storage (https://cloud.google.com/spanner/pricing).
SPANNER_NODE_HOUR = 0.90
SPANNER_GB_MONTH = 0.30
# The multi-region configuration eur3 (the region plan:
# docs/operations.md#losing-a-zone-or-a-region) exists in the Enterprise Plus edition
# only. Its list prices before editions were $3.00 a node-hour and $0.50 a GB-month;
# Enterprise Plus is priced at least that. The stored copies of the pricing page read
# here have no table of today's: check it.
EUR3_NODE_HOUR_AT_LEAST = 3.00
EUR3_GB_MONTH_AT_LEAST = 0.50
# Cloud Run, tier 1 (https://cloud.google.com/run/pricing). Instance-based billing (CPU
# always allocated): $0.000018 a vCPU-second, $0.000002 a GiB-second, no request fee.
# Request-based: $0.000024 a vCPU-second, $0.0000025 a GiB-second while an instance
# handles a request, each stretch rounded up to 100 ms, and $0.40 a million requests.
RUN_VCPU_SECOND = 0.000018
RUN_GIB_SECOND = 0.000002
RUN_REQUEST_VCPU_SECOND = 0.000024
RUN_REQUEST_GIB_SECOND = 0.0000025
RUN_MILLION_REQUESTS = 0.40
RUN_ROUNDING_SECONDS = 0.1
# Pub/Sub: $40 a TiB of throughput, published and delivered each counted, the first 10
# GiB a month free per billing account (https://cloud.google.com/pubsub/pricing).
PUBSUB_TIB = 40.0
PUBSUB_FREE_BYTES = 10 * GIB
# What a message weighs in Pub/Sub's count besides its data: its attributes, id and
# publish time (about 100 bytes: an estimate).
PUBSUB_MESSAGE_OVERHEAD = 100
# BigQuery (https://cloud.google.com/bigquery/pricing): storage $0.02 a GiB-month while a
# partition is active, $0.01 once it has not changed for 90 days (long-term), the first
# 10 GiB a month free; the Storage Write API $0.025 a GiB, the first 2 TiB a month free;
# on-demand queries $6.25 a TiB billed, the first TiB a month free, at least 10 MiB per
# table a query references.
BIGQUERY_ACTIVE_GIB_MONTH = 0.02
BIGQUERY_LONG_TERM_GIB_MONTH = 0.01
BIGQUERY_FREE_STORAGE = 10 * GIB
STORAGE_WRITE_GIB = 0.025
STORAGE_WRITE_FREE = 2 * TIB
QUERY_TIB = 6.25
QUERY_FREE = TIB
QUERY_MINIMUM = 10 * MIB
# What a row holds in BigQuery besides its data: ids, times, attributes, subscription,
# trace id (about 200 bytes; app/records.py's columns).
BIGQUERY_ROW_OVERHEAD = 200
# Cloud Monitoring (https://cloud.google.com/stackdriver/pricing): metrics written with
# CreateTimeSeries (workload.googleapis.com/*, what the service's OpenTelemetry exporter
# writes) are billed by the bytes ingested, each point of a number 8 bytes and of a
# distribution 80: $0.258 a MiB from 150 to 100,000 MiB a month, $0.151 to 250,000,
# $0.061 past it; the first 150 MiB free per billing account. (Samples are the unit of
# Managed Service for Prometheus only.) Uptime checks: $0.30 a thousand executions past
# the first million a month. Alerting: $1.50 a condition a month (and $0.35 a million
# time series a query returns: the pages return one each, the tickets one per system in
# trouble, cents at most).
MONITORING_TIERS = ((150, 0.0), (100_000, 0.258), (250_000, 0.151), (math.inf, 0.061))
POINT_BYTES = {"DISTRIBUTION": 80, "INT64": 8, "DOUBLE": 8, "BOOL": 8}
UPTIME_THOUSAND = 0.30
UPTIME_FREE = 1_000_000
ALERT_CONDITION = 1.50
# Cloud Trace: $0.20 a million spans ingested past the first 2.5 million a month.
TRACE_MILLION_SPANS = 0.20
TRACE_FREE_SPANS = 2_500_000
# Cloud Logging: $0.50 a GiB ingested past the first 50 GiB a month per project.
LOGGING_GIB = 0.50
LOGGING_FREE = 50 * GIB
# Cloud Scheduler (https://cloud.google.com/scheduler/pricing): $0.10 a job a month, 3
# jobs free per billing account.
SCHEDULER_JOB = 0.10
SCHEDULER_FREE = 3
# Secret Manager (https://cloud.google.com/secret-manager/pricing): $0.06 an active
# secret version a month (automatic replication counts once), 6 free; accesses
# ($0.03 per 10,000) happen when an instance starts: none to speak of.
SECRET_VERSION = 0.06
SECRET_FREE = 6
# Artifact Registry (https://cloud.google.com/artifact-registry/pricing): $0.10 a GiB-month
# past the first 0.5 GiB; pulls within the region are free.
REGISTRY_GIB_MONTH = 0.10
REGISTRY_FREE = GIB // 2

# --- what the service does, from the code ---------------------------------------------------

# Spans a push leaves when it is traced: its request, and the flush of the group commit
# it is in with the store's append (app/telemetry/traces.py, store.py). At ten pushes a
# second a flush carries one or two rows: three a push.
SPANS_PER_PUSH = 3
# The read path's uptime check: three checkers, every five minutes (modules/system/uptime.tf),
# each probe one BigQuery query of the 10 MiB minimum.
UPTIME_CHECKERS = 3
UPTIME_PERIOD_MINUTES = 5
# Request log entries kept a month per system: the 1% of successful pushes the
# exclusion keeps (logging.tf), the probes', the canary's; about 1.2 KiB each.
LOG_ENTRY_BYTES = 1200
LOGGED_SHARE_OF_PUSHES = 0.01
# An image, compressed, as the registry stores it (Python, the service's dependencies):
# an estimate, about 200 MiB.
IMAGE_BYTES = 200 * MIB
# The series an instance writes each minute, by metric (metrics.tf's descriptors; a
# test keeps these keys equal to them): a number of series from the labels' values a
# system has on an ordinary day. The read routes three (the probe's and two look-ups),
# outcomes two (stored, and a rejection's reason), tables two (records, rejected), no
# conflicting copies. The exporter's are written for each system it exports.
INGEST_SERIES = {
    "ingest.lag": 1,
    "append.rows": 1,
    "append.duration": 1,
    "query.duration": 3,
    "read.duration": 3,
    "messages": 2,
    "query.bytes_billed": 3,
    "queue.depth": 1,
    "watermark.lag": 1,
    "followers": 1,
    "conflicts": 0,
    # Written only by a loop that failed and was started again: none in a healthy month.
    "loop.restarts": 0,
    # Written per reason once a bound of the server refused a connection: scanners and
    # clients that stall reach any service on the internet, two reasons on an ordinary day.
    "connections.refused": 2,
    "canary.age": 1,
    # Written per producer with sequences missing (and once more at zero when they are
    # found): none on an ordinary day.
    "producer.missing": 0,
    # Written per producer whose sequences two messages claimed: none on an ordinary day.
    "producer.conflicts": 0,
}
# The export's, written by the instance exporting a system. Every other instance that
# reads the system's watermark writes its lag too (LAG_SERIES): the exporter service's
# instance standing by, and the ingest service's, which reads it to know where Spanner's
# reads begin (so that a system's lag is reported while either runs).
EXPORT_SERIES = {"export.rows": 2, "export.lag": 2, "export.blocked": 2, "typed.patches_refused": 1}
LAG_SERIES = {"export.lag": 2}

FLEETS = (1, 10, 100)


def _plain_locals(path: Path) -> str:
    """The `locals` blocks of a root file that name no resource, data source or module."""
    blocks = re.findall(r"(?ms)^locals \{\n.*?^\}\n", path.read_text())
    resources = re.compile(r"\b(google_|data\.|module\.|time_sleep)")
    return "\n".join(b for b in blocks if not resources.search(b))


@cache
def evaluate(systems: int) -> dict[str, Any]:
    """The variables, the serving tier's sizing and the metric descriptors, for `systems`
    serving systems at the defaults, as `terraform console` evaluates them."""
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, systems))]
    # Past 90 databases the systems added last name a second instance (spanner.tf).
    entries = [
        f'"{n}" = {{ serving = true{", spanner_instance = 2" if i >= 90 else ""} }}'
        for i, n in enumerate(names)
    ]
    values = {
        "project_id": '"recordline-prod"',
        "environment": '"dev"',
        "github_owner": '"recordline"',
        "github_repo": '"recordline"',
        "terraform_state_bucket": '"recordline-prod-tfstate"',
        "service_account_quota": "300",
        "systems": "{ " + ", ".join(entries) + " }",
    }
    expression = (
        "{ units = local.spanner_total_units, stored = local.spanner_total_stored_bytes,"
        " instances = length(local.spanner_instances),"
        " rate = var.serving_rate, message_bytes = var.serving_message_bytes,"
        " cpu = var.cpu, memory = var.memory, min_instances = var.min_instances,"
        " exporter_instances = var.exporter_instances, exporter_cpu = var.exporter_cpu,"
        " exporter_memory = var.exporter_memory,"
        " retention_days = var.retention_days, trace_sample_ratio = var.trace_sample_ratio,"
        " kept_images = var.kept_image_versions,"
        " metrics = { for k, v in local.workload_metrics : k => v.value } }"
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


def alert_conditions(spanner_instances: int) -> int:
    """Conditions of every alert policy (one each): a page per symptom (fleet.tf), a ticket
    per symptom for the one set of ticket channels (tickets.tf), and per serving
    instance its CPU ticket and its storage ticket and page (spanner.tf)."""

    def local(path: Path, name: str) -> Any:
        with path.open() as f:
            parsed = hcl2.load(f)
        (value,) = [block[name] for block in parsed.get("locals", []) if name in block]
        return value

    pages = len(local(TERRAFORM / "fleet.tf", "pages"))
    tickets = len(local(TERRAFORM / "tickets.tf", "ticket_specs"))
    return pages + tickets + 3 * spanner_instances


def _gib(memory: str) -> float:
    number = float(re.sub(r"[A-Za-z]+$", "", memory))
    return number if memory.endswith("Gi") else number / 1024


def _monitoring(bytes_a_month: float) -> float:
    """Cloud Monitoring's bill for this many bytes ingested, tier by tier."""
    mib, cost, floor = bytes_a_month / MIB, 0.0, 0.0
    for ceiling, price in MONITORING_TIERS:
        cost += max(0.0, min(mib, ceiling) - floor) * price
        floor = ceiling
    return cost


def _point_bytes(metrics: dict[str, str], series: dict[str, int]) -> int:
    """Bytes a minute of these series: a point each."""
    return sum(count * POINT_BYTES[metrics[name]] for name, count in series.items())


# Each row: what is billed, where its price is.
ROWS = (
    ("Spanner compute (processing units)", "https://cloud.google.com/spanner/pricing"),
    (
        "Spanner storage (rows, indexes, 3 days of old versions)",
        "https://cloud.google.com/spanner/pricing",
    ),
    ("Cloud Run: ingest services", "https://cloud.google.com/run/pricing"),
    ("Cloud Run: exporter service", "https://cloud.google.com/run/pricing"),
    ("Pub/Sub throughput (published and pushed)", "https://cloud.google.com/pubsub/pricing"),
    ("BigQuery Storage Write API", "https://cloud.google.com/bigquery/pricing"),
    ("BigQuery storage, first month", "https://cloud.google.com/bigquery/pricing"),
    ("BigQuery storage, twelfth month (rows kept)", "https://cloud.google.com/bigquery/pricing"),
    (
        "BigQuery queries: the uptime probes' 10 MiB minimum",
        "https://cloud.google.com/bigquery/pricing",
    ),
    ("Cloud Monitoring: custom metrics, by bytes", "https://cloud.google.com/stackdriver/pricing"),
    ("Cloud Monitoring: uptime check executions", "https://cloud.google.com/stackdriver/pricing"),
    ("Cloud Monitoring: alerting conditions", "https://cloud.google.com/stackdriver/pricing"),
    ("Cloud Trace spans", "https://cloud.google.com/stackdriver/pricing"),
    (
        "Cloud Logging (request logs past the exclusion)",
        "https://cloud.google.com/stackdriver/pricing",
    ),
    ("Cloud Scheduler (a canary job each)", "https://cloud.google.com/scheduler/pricing"),
    ("Secret Manager (a page-token key each)", "https://cloud.google.com/secret-manager/pricing"),
    (
        "Artifact Registry (kept images, one region)",
        "https://cloud.google.com/artifact-registry/pricing",
    ),
)


def month(systems: int, found: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Each billed item, in dollars a month: (before the exporter service, now)."""
    rate, message = float(found["rate"]), float(found["message_bytes"])
    cpu, memory = float(found["cpu"]), _gib(found["memory"])
    pushes = systems * rate * SECONDS_A_MONTH
    items: dict[str, tuple[float, float]] = {}

    spanner = found["units"] / 1000 * SPANNER_NODE_HOUR * HOURS_A_MONTH
    stored = found["stored"] / GIB * SPANNER_GB_MONTH
    items[ROWS[0][0]] = (spanner, spanner)
    items[ROWS[1][0]] = (stored, stored)

    # Before: one instance always on per serving system (its exporter), instance-based.
    always_on = (cpu * RUN_VCPU_SECOND + memory * RUN_GIB_SECOND) * SECONDS_A_MONTH
    # Now: billed only while a request is in flight (min_instances 0), each stretch
    # rounded up to 100 ms. Pushes of a few milliseconds rarely overlap at these rates,
    # so each is billed 100 ms: busy a tenth of a second per push, at most all the time.
    # (Even with overlaps merged, 10 pushes a second keep an instance billed three
    # quarters of the time.)
    if found["min_instances"] != 0:
        raise ValueError("the table prices ingest at zero instances at rest (min_instances 0)")
    busy = min(1.0, rate * RUN_ROUNDING_SECONDS)
    by_request = busy * (cpu * RUN_REQUEST_VCPU_SECOND + memory * RUN_REQUEST_GIB_SECOND)
    ingest_after = systems * by_request * SECONDS_A_MONTH + pushes / 1e6 * RUN_MILLION_REQUESTS
    items[ROWS[2][0]] = (systems * always_on, ingest_after)
    # The worker pool's instances, every one billed all the time at the instance-based
    # rate (https://cloud.google.com/run/docs/configuring/workerpools/manual-scaling:
    # "billed as active instances, even if they happen to be idle").
    exporters = int(found["exporter_instances"])
    exporter = (
        float(found["exporter_cpu"]) * RUN_VCPU_SECOND
        + _gib(found["exporter_memory"]) * RUN_GIB_SECOND
    ) * SECONDS_A_MONTH
    items[ROWS[3][0]] = (0.0, exporters * exporter)

    pubsub_bytes = 2 * pushes * (message + PUBSUB_MESSAGE_OVERHEAD)
    pubsub = max(0.0, pubsub_bytes - PUBSUB_FREE_BYTES) / TIB * PUBSUB_TIB
    items[ROWS[4][0]] = (pubsub, pubsub)

    row_bytes = pushes * (message + BIGQUERY_ROW_OVERHEAD)  # a month of rows
    write = max(0.0, row_bytes - STORAGE_WRITE_FREE) / GIB * STORAGE_WRITE_GIB
    items[ROWS[5][0]] = (write, write)
    first = max(0.0, row_bytes - BIGQUERY_FREE_STORAGE) / GIB * BIGQUERY_ACTIVE_GIB_MONTH
    # Month twelve, retention_days = 0 (kept): twelve months of rows, the newest three
    # active, nine long-term (a day's partition is not written again once exported).
    kept = 12 if found["retention_days"] == 0 else min(12, found["retention_days"] / 30)
    active, long_term = min(kept, 3) * row_bytes, max(0.0, kept - 3) * row_bytes
    twelfth = (
        max(0.0, active - BIGQUERY_FREE_STORAGE) / GIB * BIGQUERY_ACTIVE_GIB_MONTH
        + long_term / GIB * BIGQUERY_LONG_TERM_GIB_MONTH
    )
    items[ROWS[6][0]] = (first, first)
    items[ROWS[7][0]] = (twelfth, twelfth)

    probes = systems * UPTIME_CHECKERS * MINUTES_A_MONTH / UPTIME_PERIOD_MINUTES
    probe_bytes = probes * QUERY_MINIMUM
    queries = max(0.0, probe_bytes - QUERY_FREE) / TIB * QUERY_TIB
    items[ROWS[8][0]] = (queries, queries)

    metrics = found["metrics"]
    ingest_minute = _point_bytes(metrics, INGEST_SERIES)
    export_minute = _point_bytes(metrics, EXPORT_SERIES)
    lag_minute = _point_bytes(metrics, LAG_SERIES)
    # Before: one instance a system, exporting it. Now: an ingest instance a system,
    # which reads the lag; the exporting instance; the others standing by, which read it.
    before = systems * (ingest_minute + export_minute) * MINUTES_A_MONTH
    standing_by = (exporters - 1) * lag_minute
    after = systems * (ingest_minute + lag_minute + export_minute + standing_by)
    after *= MINUTES_A_MONTH
    items[ROWS[9][0]] = (_monitoring(before), _monitoring(after))
    uptime = max(0.0, probes - UPTIME_FREE) / 1000 * UPTIME_THOUSAND
    items[ROWS[10][0]] = (uptime, uptime)
    alerts = alert_conditions(found["instances"]) * ALERT_CONDITION
    items[ROWS[11][0]] = (alerts, alerts)

    spans = pushes * SPANS_PER_PUSH * float(found["trace_sample_ratio"])
    trace = max(0.0, spans - TRACE_FREE_SPANS) / 1e6 * TRACE_MILLION_SPANS
    items[ROWS[12][0]] = (trace, trace)
    logged = (pushes * LOGGED_SHARE_OF_PUSHES + probes) * LOG_ENTRY_BYTES
    logging = max(0.0, logged - LOGGING_FREE) / GIB * LOGGING_GIB
    items[ROWS[13][0]] = (logging, logging)

    scheduler = max(0, systems - SCHEDULER_FREE) * SCHEDULER_JOB
    secrets = max(0, systems - SECRET_FREE) * SECRET_VERSION
    registry = (
        max(0.0, found["kept_images"] * IMAGE_BYTES - REGISTRY_FREE) / GIB * (REGISTRY_GIB_MONTH)
    )
    items[ROWS[14][0]] = (scheduler, scheduler)
    items[ROWS[15][0]] = (secrets, secrets)
    items[ROWS[16][0]] = (registry, registry)
    return items


def _dollars(value: float) -> str:
    return f"${value:,.0f}" if value >= 0.5 or value == 0 else "<$1"


def table() -> str:
    found = {systems: evaluate(systems) for systems in FLEETS}
    months = {systems: month(systems, found[systems]) for systems in FLEETS}
    header = (
        "| Billed item | Price | "
        + " | ".join(f"{s} before" for s in FLEETS)
        + " | "
        + " | ".join(f"{s} now" for s in FLEETS)
        + " |"
    )
    rows = [header, "|---|---|" + "---:|" * (2 * len(FLEETS))]
    for name, source in ROWS:
        cells = [months[s][name][0] for s in FLEETS] + [months[s][name][1] for s in FLEETS]
        rows.append(f"| {name} | [list]({source}) | " + " | ".join(map(_dollars, cells)) + " |")

    def total(systems: int, which: int, skip: str) -> float:
        return sum(v[which] for k, v in months[systems].items() if k != skip)

    twelfth, first = ROWS[7][0], ROWS[6][0]
    for label, skip in (("**Total, first month**", twelfth), ("**Total, twelfth month**", first)):
        cells = [total(s, 0, skip) for s in FLEETS] + [total(s, 1, skip) for s in FLEETS]
        rows.append(f"| {label} | | " + " | ".join(f"**{_dollars(c)}**" for c in cells) + " |")
    cells = [total(s, 0, first) / s for s in FLEETS] + [total(s, 1, first) / s for s in FLEETS]
    rows.append("| Per system, twelfth month | | " + " | ".join(map(_dollars, cells)) + " |")
    units = [str(found[s]["units"]) for s in FLEETS] * 2
    rows.append("| Spanner processing units | | " + " | ".join(units) + " |")
    return "\n".join(rows)


def region_plan(systems: int = 100) -> str:
    """What the serving tier costs in eur3 (Enterprise Plus) against today's regional
    Standard instance, for the region plan, at `systems` systems."""
    found = evaluate(systems)
    regional = found["units"] / 1000 * SPANNER_NODE_HOUR * HOURS_A_MONTH + (
        found["stored"] / GIB * SPANNER_GB_MONTH
    )
    eur3 = found["units"] / 1000 * EUR3_NODE_HOUR_AT_LEAST * HOURS_A_MONTH + (
        found["stored"] / GIB * EUR3_GB_MONTH_AT_LEAST
    )
    return (
        f"At {systems} systems the serving tier ({found['units']} processing units) costs "
        f"{_dollars(regional)} a month regional (Standard) and at least {_dollars(eur3)} "
        "in eur3 (Enterprise Plus)."
    )


def break_even() -> str:
    """The rate below which an ingest service billed by request costs less than one
    instance always on, at the defaults' size."""
    found = evaluate(1)
    cpu, memory = float(found["cpu"]), _gib(found["memory"])
    always_on = cpu * RUN_VCPU_SECOND + memory * RUN_GIB_SECOND  # a second
    per_push = (
        RUN_ROUNDING_SECONDS * (cpu * RUN_REQUEST_VCPU_SECOND + memory * RUN_REQUEST_GIB_SECOND)
        + RUN_MILLION_REQUESTS / 1e6
    )
    return (
        f"An ingest service billed by request costs less than one instance always on below "
        f"{always_on / per_push:.1f} pushes a second (at {found['rate']:g} a second, the "
        "default, it costs more)."
    )


def main() -> int:
    print(table())
    if "--notes" in sys.argv[1:]:
        print()
        print(break_even())
        print()
        print(region_plan())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a month of Recordline costs, item by item and per system, for fleets of 1, 10, 100
and 1,000 systems in cells.

    .venv/bin/python infra/fleet_cost.py            # the table docs/operations.md shows
    .venv/bin/python infra/fleet_cost.py --notes    # and the figures below it
    .venv/bin/python infra/fleet_cost.py --cdn      # and followers through Cloud CDN

Terraform itself (`terraform console`, offline) evaluates a cell of the fleet's size
(infra/terraform: its Spanner sizing, its ingest service's billing mode and instances,
its exporter pool's size, the metrics' value types of modules/metrics), each system at
the default rate and message size with `serving`; a fleet is as many full cells as it
fills (cell_max_systems, 100) and one with the rest. The alert policies are counted
from the environment root (infra/terraform/environment). The list prices below, each
with its source, turn that into dollars a month; what the service does (CPU a push,
spans a push, the series it writes) is each a named input below with its source.

Every billed item is a row; free allotments are counted once, for the environment's
project alone (they are per billing account or per project, as each row says). Prices
are the list prices of a regional deployment in us-central1 (tier 1; europe-west1 is
within a few percent), and change: check them against the pricing pages before a budget
is made of this. A test keeps the table in docs/operations.md equal to what this prints.
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

ROOT = Path(__file__).resolve().parent.parent
TERRAFORM = ROOT / "infra" / "terraform"
ENVIRONMENT = TERRAFORM / "environment"

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
# A worker pool's instances are billed as instance-based ones, all the time
# (https://cloud.google.com/run/docs/configuring/workerpools/manual-scaling).
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
# $0.061 past it; the first 150 MiB free per billing account. Uptime checks: $0.30 a
# thousand executions past the first million a month. Alerting: $1.50 a condition a
# month (and $0.35 a million time series a query returns: the pages return one each,
# the tickets one per system in trouble, cents at most).
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

# --- what the service does ------------------------------------------------------------------

# CPU one push costs an ingest instance: what `python3 dev.py bench cell --write` measured
# and wrote to bench/cell.json, a cell of 10 and of 100 systems on the serving tier
# (Spanner's emulator, the real client libraries, `recordline serve` as a process):
# its `planning_pushes_per_vcpu_second`, the least of the cells' figures, as CPU a push
# (docs/benchmarks.md#cells). A push on the serving tier is its Spanner transaction's
# client work, about ten times what the same service spends on DuckDB.
CAPACITY = ROOT / "bench" / "cell.json"
# Cloud Run adds instances to keep each at about 60% of its CPU
# (https://cloud.google.com/run/docs/about-instance-autoscaling).
INGEST_TARGET_UTILISATION = 0.6
# Spans a push leaves when it is traced: its request, and the flush of the group commit
# it is in with the store's append (app/telemetry/traces.py, store.py). At ten pushes a
# second a flush carries one or two rows: three a push.
SPANS_PER_PUSH = 3
# The cell's uptime check: three checkers, every five minutes (uptime.tf).
UPTIME_CHECKERS = 3
UPTIME_PERIOD_MINUTES = 5
# Request log entries kept a month per system: the 1% of successful pushes the
# exclusion keeps (logging.tf), about 1.2 KiB each.
LOG_ENTRY_BYTES = 1200
LOGGED_SHARE_OF_PUSHES = 0.01
# An image, compressed, as the registry stores it (Python, the service's dependencies):
# an estimate, about 200 MiB.
IMAGE_BYTES = 200 * MIB
# A system's own series are counters and gauges, each from one writer wherever one
# can be: what grew with the ingest instances times the systems was every instance
# writing every system's counts (each serves some of every system's pushes and reads).
# - Its pushes' answers: Pub/Sub's own `subscription/push_request_count` (by
#   `response_class`: ack, remote_server_4xx, remote_server_5xx, deadline_exceeded,
#   unreachable, https://cloud.google.com/pubsub/docs/push-troubleshooting), per push
#   subscription, a system's; a Google Cloud metric, not billed (the free allotment
#   holds "all non-chargeable Google Cloud metrics",
#   https://cloud.google.com/stackdriver/pricing). Not a row here.
# - What its store holds: the exporter instance holding its lease, once a row as it is
#   exported (HOLDER_SERIES).
# - What reads do: the cell's (CELL_SERIES), each instance serving every system's.
# What is left of a system's from every ingest instance of its cell that served it, a
# number of series by metric from the labels' values a system has on an ordinary day:
# none. A retry, a refusal, a publisher's duplicate, a conflicting copy or a producer's
# gap writes one while it happens (and freshness where a system has no serving tier).
INSTANCE_SERIES = {
    "messages": 0,
    "slo.events": 0,
    "canary.age": 0,
    "conflicts": 0,
    # Written per producer with sequences missing: none on an ordinary day.
    "producer.missing": 0,
    # Written per producer whose sequences two messages claimed: none on an ordinary day.
    "producer.conflicts": 0,
}
# What the store holds, from the exporter instance holding the system's lease alone:
# each row is counted once, as it is exported (app/telemetry/metrics.py, ExportMetrics).
# Outcomes two (stored, and a rejection's reason); freshness's good events one; its
# canary's age one (the newest canary exported).
HOLDER_SERIES = {"messages": 2, "slo.events": 1, "canary.age": 1}
# Its export's, from the same instance: two tables.
EXPORT_SERIES = {"export.rows": 2, "export.lag": 2, "export.blocked": 2, "typed.patches_refused": 1}
# The cell's own, from each of its ingest instances: the distributions (the read and
# query routes three each) and the gauges that describe the process (the read horizon's
# lag among them: the furthest behind of its systems, app/telemetry/metrics.py);
# connections a bound refused, two reasons on an ordinary day; loops restarted, none.
# And what every system's reads do, the cell's: their service level events two (good
# events of availability and read_latency; a 5xx's bad one is not an ordinary day's),
# bytes billed one (reads from Spanner bill nothing, a read past its retention one
# route).
CELL_SERIES = {
    "ingest.lag": 1,
    "append.rows": 1,
    "append.duration": 1,
    "query.duration": 3,
    "read.duration": 3,
    "queue.depth": 1,
    "followers": 1,
    "watermark.lag": 1,
    "memory.held": 1,
    "connections.refused": 2,
    "loop.restarts": 0,
    "slo.events": 2,
    "query.bytes_billed": 1,
}

FLEETS = (1, 10, 100, 1000)
TARGET_PER_SYSTEM = 25.0


def _plain_locals(path: Path) -> str:
    """The `locals` blocks of a file that name no resource, data source or module."""
    blocks = re.findall(r"(?ms)^locals \{\n.*?^\}\n", path.read_text())
    resources = re.compile(r"\b(google_|data\.|module\.|time_sleep)")
    return "\n".join(b for b in blocks if not resources.search(b))


def _load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        parsed: dict[str, Any] = hcl2.load(f)
    return parsed


def capacity() -> tuple[float, str]:
    """CPU seconds a push costs an ingest instance, and where the figure is from
    (bench/cell.json, which `bench cell --write` writes)."""
    measured = json.loads(CAPACITY.read_text())
    per_vcpu = float(measured["planning_pushes_per_vcpu_second"])
    if per_vcpu <= 0:
        raise SystemExit(f"{CAPACITY.relative_to(ROOT)}: no pushes a second per vCPU measured")
    source = (
        f"{per_vcpu:g} pushes a second per vCPU, bench/cell.json's planning figure, "
        f"measured {measured['measured']}"
    )
    return 1 / per_vcpu, source


@cache
def evaluate(systems: int, rate: float | None = None) -> dict[str, Any]:
    """A cell of `systems` serving systems at the defaults (or at `rate` pushes a second
    each), as `terraform console` evaluates the cell root: its Spanner sizing, billing,
    sizes, and the metrics' value types."""
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, systems))]
    # Past 90 databases the systems added last name a second instance (spanner.tf).
    entries = [
        f'"{n}" = {{ serving = true{", spanner_instance = 2" if i >= 90 else ""}'
        + (f", rate = {rate}" if rate is not None else "")
        + " }"
        for i, n in enumerate(names)
    ]
    values = {
        "project_id": '"recordline-prod"',
        "environment": '"dev"',
        "terraform_state_bucket": '"recordline-prod-tfstate"',
        "service_account_quota": "300",
        "systems": "{ " + ", ".join(entries) + " }",
    }
    expression = (
        "{ units = local.spanner_total_units, stored = local.spanner_total_stored_bytes,"
        " instances = length(local.spanner_instances),"
        " rate = var.serving_rate, message_bytes = var.serving_message_bytes,"
        " cpu = var.cpu, memory = var.memory, min_instances = local.ingest_min_instances,"
        " instance_based = local.instance_based, cell_rate = local.cell_rate,"
        " break_even = var.billing_break_even_rate, cell_max_systems = var.cell_max_systems,"
        " exporter_instances = var.exporter_instances, exporter_cpu = var.exporter_cpu,"
        " exporter_memory = var.exporter_memory, exporters = length(local.exporter),"
        " retention_days = var.retention_days, trace_sample_ratio = var.trace_sample_ratio,"
        " metrics = { for k, v in local.workload_metrics : k => v.value } }"
    )
    return _console(values, expression, modules=("metrics",))


def _console(
    values: dict[str, str], expression: str, *, modules: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`expression` as `terraform console` evaluates it over the cell root's variables
    (set to `values`) and the locals that name no resource, with those of `modules`."""
    terraform = shutil.which("terraform")
    if terraform is None:
        raise SystemExit("terraform is not installed")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        shutil.copy(TERRAFORM / "variables.tf", work)
        plain = [_plain_locals(p) for p in sorted(TERRAFORM.glob("*.tf"))]
        plain += [_plain_locals(TERRAFORM / "modules" / m / "main.tf") for m in modules]
        # The project's number (a data source) stood in for: no price depends on it.
        plain.append('locals {\n  project_number = "123456789012"\n}\n')
        (work / "locals.tf").write_text("\n".join(plain))
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


def kept_images() -> int:
    """Images the environment's repository keeps (environment/variables.tf)."""
    for block in _load(ENVIRONMENT / "variables.tf").get("variable", []):
        for name, body in block.items():
            if name.strip('"') == "kept_image_versions":
                return int(body["default"])
    raise SystemExit("no kept_image_versions in the environment's variables")


def alert_conditions() -> int:
    """Conditions of every alert policy (one each), the environment's, whatever the
    number of cells: a page per symptom (fleet.tf), a ticket per symptom for the one set
    of ticket channels, and the serving instances' two tickets (tickets.tf)."""

    def local(path: Path, name: str) -> Any:
        (value,) = [block[name] for block in _load(path).get("locals", []) if name in block]
        return value

    pages = len(local(ENVIRONMENT / "fleet.tf", "pages"))
    tickets = len(local(ENVIRONMENT / "tickets.tf", "ticket_specs"))
    instances = len(local(ENVIRONMENT / "tickets.tf", "instance_tickets"))
    return pages + tickets + instances


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


def cells_of(systems: int, cell_max: int) -> list[int]:
    """The cells a fleet of `systems` fills: full ones, and one with the rest."""
    full, rest = divmod(systems, cell_max)
    return [cell_max] * full + ([rest] if rest else [])


def always_on(found: dict[str, Any]) -> float:
    """One ingest instance billed instance-based, a month."""
    return (
        float(found["cpu"]) * RUN_VCPU_SECOND + _gib(found["memory"]) * RUN_GIB_SECOND
    ) * SECONDS_A_MONTH


def ingest_instances(found: dict[str, Any]) -> int:
    """The instances a cell's ingest service runs: its minimum, or what its declared
    rate keeps at Cloud Run's target utilisation, whichever is more."""
    cpu_a_push, _ = capacity()
    needed = math.ceil(
        float(found["cell_rate"]) * cpu_a_push / (float(found["cpu"]) * INGEST_TARGET_UTILISATION)
    )
    return max(int(found["min_instances"]), needed)


def ingest_month(found: dict[str, Any], instance_based: bool) -> float:
    """A cell's ingest service a month, billed either way. Instance-based: every running
    instance all the time. By request: an instance is billed while it handles a request,
    each stretch rounded up to 100 ms, so at a rate r a second each instance's billed
    share of the time is at most r x 0.1 over the instances (all of it once pushes keep
    it busy), and $0.40 a million requests."""
    rate = float(found["cell_rate"])
    instances = max(1, ingest_instances(found))
    if instance_based:
        return instances * always_on(found)
    busy = instances * min(1.0, rate * RUN_ROUNDING_SECONDS / instances)
    per_second = float(found["cpu"]) * RUN_REQUEST_VCPU_SECOND + _gib(found["memory"]) * (
        RUN_REQUEST_GIB_SECOND
    )
    return busy * per_second * SECONDS_A_MONTH + rate * SECONDS_A_MONTH / 1e6 * RUN_MILLION_REQUESTS


# Each row: what is billed, where its price is.
ROWS = (
    ("Spanner compute (processing units)", "https://cloud.google.com/spanner/pricing"),
    (
        "Spanner storage (rows, indexes, 3 days of old versions)",
        "https://cloud.google.com/spanner/pricing",
    ),
    ("Cloud Run: the cells' ingest services", "https://cloud.google.com/run/pricing"),
    ("Cloud Run: the cells' exporter pools", "https://cloud.google.com/run/pricing"),
    ("Pub/Sub throughput (published and pushed)", "https://cloud.google.com/pubsub/pricing"),
    ("BigQuery Storage Write API", "https://cloud.google.com/bigquery/pricing"),
    ("BigQuery storage, first month", "https://cloud.google.com/bigquery/pricing"),
    ("BigQuery storage, twelfth month (rows kept)", "https://cloud.google.com/bigquery/pricing"),
    ("Cloud Monitoring: custom metrics, by bytes", "https://cloud.google.com/stackdriver/pricing"),
    ("Cloud Monitoring: uptime check executions", "https://cloud.google.com/stackdriver/pricing"),
    ("Cloud Monitoring: alerting conditions", "https://cloud.google.com/stackdriver/pricing"),
    ("Cloud Trace spans", "https://cloud.google.com/stackdriver/pricing"),
    (
        "Cloud Logging (request logs past the exclusion)",
        "https://cloud.google.com/stackdriver/pricing",
    ),
    ("Cloud Scheduler (a canary job each)", "https://cloud.google.com/scheduler/pricing"),
    (
        "Secret Manager (each cell's page-token key and systems' files)",
        "https://cloud.google.com/secret-manager/pricing",
    ),
    (
        "Artifact Registry (kept images, one region)",
        "https://cloud.google.com/artifact-registry/pricing",
    ),
)


def month(systems: int) -> dict[str, float]:
    """Each billed item, in dollars a month, for a fleet of `systems` systems in cells."""
    cell_max = int(evaluate(1)["cell_max_systems"])
    cells = [evaluate(size) for size in cells_of(systems, cell_max)]
    base = cells[0]
    rate, message = float(base["rate"]), float(base["message_bytes"])
    pushes = systems * rate * SECONDS_A_MONTH
    items: dict[str, float] = {}

    items[ROWS[0][0]] = sum(c["units"] / 1000 * SPANNER_NODE_HOUR * HOURS_A_MONTH for c in cells)
    items[ROWS[1][0]] = sum(c["stored"] / GIB * SPANNER_GB_MONTH for c in cells)
    items[ROWS[2][0]] = sum(ingest_month(c, bool(c["instance_based"])) for c in cells)
    items[ROWS[3][0]] = sum(
        int(c["exporters"])
        * int(c["exporter_instances"])
        * (float(c["exporter_cpu"]) * RUN_VCPU_SECOND + _gib(c["exporter_memory"]) * RUN_GIB_SECOND)
        * SECONDS_A_MONTH
        for c in cells
    )

    pubsub_bytes = 2 * pushes * (message + PUBSUB_MESSAGE_OVERHEAD)
    items[ROWS[4][0]] = max(0.0, pubsub_bytes - PUBSUB_FREE_BYTES) / TIB * PUBSUB_TIB

    row_bytes = pushes * (message + BIGQUERY_ROW_OVERHEAD)  # a month of rows
    items[ROWS[5][0]] = max(0.0, row_bytes - STORAGE_WRITE_FREE) / GIB * STORAGE_WRITE_GIB
    items[ROWS[6][0]] = (
        max(0.0, row_bytes - BIGQUERY_FREE_STORAGE) / GIB * BIGQUERY_ACTIVE_GIB_MONTH
    )
    # Month twelve, retention_days = 0 (kept): twelve months of rows, the newest three
    # active, nine long-term (a day's partition is not written again once exported).
    kept = 12 if base["retention_days"] == 0 else min(12, base["retention_days"] / 30)
    active, long_term = min(kept, 3) * row_bytes, max(0.0, kept - 3) * row_bytes
    items[ROWS[7][0]] = (
        max(0.0, active - BIGQUERY_FREE_STORAGE) / GIB * BIGQUERY_ACTIVE_GIB_MONTH
        + long_term / GIB * BIGQUERY_LONG_TERM_GIB_MONTH
    )

    metrics = base["metrics"]
    per_minute = 0.0
    for c, size in zip(cells, cells_of(systems, cell_max), strict=True):
        instances = max(1, ingest_instances(c))
        per_minute += size * (
            instances * _point_bytes(metrics, INSTANCE_SERIES)
            + _point_bytes(metrics, HOLDER_SERIES)
            + _point_bytes(metrics, EXPORT_SERIES)
        )
        per_minute += instances * _point_bytes(metrics, CELL_SERIES)
    items[ROWS[8][0]] = _monitoring(per_minute * MINUTES_A_MONTH)
    probes = len(cells) * UPTIME_CHECKERS * MINUTES_A_MONTH / UPTIME_PERIOD_MINUTES
    items[ROWS[9][0]] = max(0.0, probes - UPTIME_FREE) / 1000 * UPTIME_THOUSAND
    items[ROWS[10][0]] = alert_conditions() * ALERT_CONDITION

    spans = pushes * SPANS_PER_PUSH * float(base["trace_sample_ratio"])
    items[ROWS[11][0]] = max(0.0, spans - TRACE_FREE_SPANS) / 1e6 * TRACE_MILLION_SPANS
    logged = pushes * LOGGED_SHARE_OF_PUSHES * LOG_ENTRY_BYTES
    items[ROWS[12][0]] = max(0.0, logged - LOGGING_FREE) / GIB * LOGGING_GIB

    items[ROWS[13][0]] = max(0, systems - SCHEDULER_FREE) * SCHEDULER_JOB
    secrets = sum(2 + int(c["exporters"]) for c in cells)
    items[ROWS[14][0]] = max(0, secrets - SECRET_FREE) * SECRET_VERSION
    items[ROWS[15][0]] = (
        max(0.0, kept_images() * IMAGE_BYTES - REGISTRY_FREE) / GIB * REGISTRY_GIB_MONTH
    )
    return items


def _dollars(value: float) -> str:
    if value == 0:
        return "$0"
    if value < 0.005:
        return "<$0.01"
    return f"${value:,.0f}" if value >= 100 else f"${value:,.2f}"


def _total(items: dict[str, float], month_of: str) -> float:
    """The items of the first month (`first`) or the twelfth (`twelfth`)."""
    skip = ROWS[7][0] if month_of == "first" else ROWS[6][0]
    return sum(v for k, v in items.items() if k != skip)


def table() -> str:
    months = {systems: month(systems) for systems in FLEETS}
    cell_max = int(evaluate(1)["cell_max_systems"])
    header = (
        "| Billed item | Price | "
        + " | ".join(f"{s:,} system{'s' if s > 1 else ''}" for s in FLEETS)
        + " |"
    )
    rows = [header, "|---|---|" + "---:|" * len(FLEETS)]
    for name, source in ROWS:
        cells = [months[s][name] for s in FLEETS]
        rows.append(f"| {name} | [list]({source}) | " + " | ".join(map(_dollars, cells)) + " |")
    for label, which in (
        ("**Total, first month**", "first"),
        ("**Total, twelfth month**", "twelfth"),
    ):
        cells = [_total(months[s], which) for s in FLEETS]
        rows.append(f"| {label} | | " + " | ".join(f"**{_dollars(c)}**" for c in cells) + " |")
    cells = [_total(months[s], "twelfth") / s for s in FLEETS]
    rows.append(
        "| **Per system, twelfth month** | | "
        + " | ".join(f"**{_dollars(c)}**" for c in cells)
        + " |"
    )
    counts = [str(len(cells_of(s, cell_max))) for s in FLEETS]
    rows.append("| Cells | | " + " | ".join(counts) + " |")
    units = [str(sum(evaluate(n)["units"] for n in cells_of(s, cell_max))) for s in FLEETS]
    rows.append("| Spanner processing units | | " + " | ".join(units) + " |")
    return "\n".join(rows)


def per_system(systems: int) -> float:
    """A system's share of the fleet's twelfth month."""
    return _total(month(systems), "twelfth") / systems


def break_even() -> float:
    """The pushes a second above which an instance billed by request costs more than
    one always on, at the cell's cpu and memory."""
    found = evaluate(1)
    cpu, memory = float(found["cpu"]), _gib(found["memory"])
    always = cpu * RUN_VCPU_SECOND + memory * RUN_GIB_SECOND  # a second
    per_push = (
        RUN_ROUNDING_SECONDS * (cpu * RUN_REQUEST_VCPU_SECOND + memory * RUN_REQUEST_GIB_SECOND)
        + RUN_MILLION_REQUESTS / 1e6
    )
    return always / per_push


def single_system() -> str:
    """One system alone in a cell, at a few rates: its ingest service billed either way,
    and what the cell's plan bills it by (cell.tf)."""
    lines = [
        "| A system alone in its cell | billed by request | instance-based | the plan bills it |",
        "|---|---:|---:|---|",
    ]
    for rate in (1.0, 5.0, 10.0, 50.0):
        found = evaluate(1, rate)
        chosen = "instance-based" if found["instance_based"] else "by request"
        lines.append(
            f"| {rate:g} pushes a second | {_dollars(ingest_month(found, False))} |"
            f" {_dollars(ingest_month(found, True))} | {chosen} |"
        )
    return "\n".join(lines)


def region_plan(systems: int = 100) -> str:
    """What the serving tier costs in eur3 (Enterprise Plus) against today's regional
    Standard instance, for the region plan, at `systems` systems."""
    cell_max = int(evaluate(1)["cell_max_systems"])
    cells = [evaluate(n) for n in cells_of(systems, cell_max)]
    units = sum(c["units"] for c in cells)
    stored = sum(c["stored"] for c in cells)
    regional = units / 1000 * SPANNER_NODE_HOUR * HOURS_A_MONTH + stored / GIB * SPANNER_GB_MONTH
    eur3 = (
        units / 1000 * EUR3_NODE_HOUR_AT_LEAST * HOURS_A_MONTH
        + stored / GIB * EUR3_GB_MONTH_AT_LEAST
    )
    return (
        f"At {systems} systems the serving tier ({units} processing units) costs "
        f"{_dollars(regional)} a month regional (Standard) and at least {_dollars(eur3)} "
        "in eur3 (Enterprise Plus)."
    )


def target() -> str:
    """What a system costs at 100 and 1,000 systems against TARGET_PER_SYSTEM, and the
    figures that make it: a full cell's ingest instances and what they write."""
    cell_max = int(evaluate(1)["cell_max_systems"])
    full = evaluate(cell_max)
    instances = ingest_instances(full)
    metrics = full["metrics"]
    costs = {systems: per_system(systems) for systems in (100, 1000)}
    met = all(cost <= TARGET_PER_SYSTEM for cost in costs.values())
    return (
        f"A system costs {_dollars(costs[100])} a month at 100 systems and "
        f"{_dollars(costs[1000])} at 1,000 (twelfth month), "
        + ("within" if met else "over")
        + f" the {_dollars(TARGET_PER_SYSTEM)} asked. A full cell ({cell_max} systems, "
        f"{float(full['cell_rate']):g} pushes a second) runs {instances} ingest instances "
        f"of {float(full['cpu']):g} vCPU, "
        + ("instance-based" if full["instance_based"] else "billed by request")
        + f", each writing the cell's {sum(CELL_SERIES.values())} series "
        f"({_point_bytes(metrics, CELL_SERIES)} bytes a minute) and "
        f"{sum(INSTANCE_SERIES.values())} of each system's on an ordinary day; the "
        f"holder of a system's export lease writes its "
        f"{sum(HOLDER_SERIES.values()) + sum(EXPORT_SERIES.values())} series (of what "
        f"its store holds and exports) once, and Pub/Sub counts its pushes' answers "
        f"free; Spanner {full['units']} processing units."
    )


def notes() -> str:
    cpu_a_push, source = capacity()
    return "\n\n".join(
        [
            f"An ingest instance billed by request costs more than one always on from "
            f"{break_even():.1f} pushes a second (1 vCPU, 1 GiB, list prices): "
            f"billing_break_even_rate in infra/terraform/variables.tf.",
            single_system(),
            f"A push costs an ingest instance {cpu_a_push * 1e6:.0f} µs of CPU ({source}); "
            f"a cell's instances are those that keep each at "
            f"{INGEST_TARGET_UTILISATION:.0%} of its CPU, and at least its minimum.",
            target(),
            region_plan(),
        ]
    )


# --- Cloud CDN for followers (infra/terraform/cdn.tf): off by default, priced apart ----------
#
# Not in the table above, nor in any total: a cell has no load balancer until `cdn.enabled`.
# What follows compares, for one system's followers, serving them on the run.app URL with
# serving them through the cell's CDN, from the values Terraform gives (cdn_settings).

# Cloud CDN (https://cloud.google.com/cdn/pricing): $0.0075 per 10,000 cache lookups, every
# GET through it, hit or miss; cache data transfer out $0.08 a GiB to Europe and North
# America (the first 10 TiB a month); cache fill $0.01 to $0.04 a GiB, priced at $0.04.
CDN_LOOKUPS_10K = 0.0075
CDN_EGRESS_GIB = 0.08
CDN_FILL_GIB = 0.04
# Cloud Load Balancing (https://cloud.google.com/load-balancing/pricing): a global
# forwarding rule $0.025 an hour (each of the first five), data the load balancer processes
# $0.008 a GiB each way, billed on the CDN's misses.
LB_FORWARDING_RULE_HOUR = 0.025
LB_PROCESSED_GIB = 0.008
# Cloud Run's own internet data transfer out (https://cloud.google.com/run/pricing: Premium
# Tier, at Google Cloud's networking prices, https://cloud.google.com/vpc/network-pricing):
# $0.12 a GiB for the first TiB a month. Nothing is billed for what it sends to Cloud CDN.
RUN_EGRESS_GIB = 0.12
# A follower's long-poll: held up to its `wait=` (at most 60 s, docs/reading.md), then asked
# again from where the answer ends; a quiet system answers every 60 s, a busy one sooner.
FOLLOWER_ANSWER_SECONDS = 60
# An answer's bytes as sent (headers and a page of rows, compressed): an estimate, 4 KiB;
# a request's, 1 KiB.
FOLLOWER_ANSWER_BYTES = 4 * 1024
FOLLOWER_REQUEST_BYTES = 1024
# Where the CDN coalesces: each of its caches asks the service once for a URL many
# followers ask at once. How many caches a system's followers reach: an estimate, 40
# (followers spread over a continent or two).
CDN_CACHES_REACHED = 40
CDN_FOLLOWERS = (1_000, 10_000, 100_000)


@cache
def cdn_settings() -> dict[str, Any]:
    """The CDN as Terraform declares it for a cell that enables it: its forwarding rules,
    cache settings and read paths, and the ingest service's concurrency and size."""
    values = {
        "project_id": '"recordline-prod"',
        "environment": '"dev"',
        "terraform_state_bucket": '"recordline-prod-tfstate"',
        "cdn": '{ enabled = true, domains = ["records.example.com"] }',
    }
    expression = (
        "{ enabled = local.cdn_enabled, forwarding_rules = local.cdn_forwarding_rules,"
        " cache = local.cdn_cache, read_paths = local.cdn_read_paths,"
        " bypass_headers = local.cdn_bypass_headers, concurrency = var.concurrency,"
        " cpu = var.cpu, memory = var.memory }"
    )
    return _console(values, expression)


def _instance_second(found: dict[str, Any]) -> float:
    """An ingest instance billed instance-based, a second."""
    return float(found["cpu"]) * RUN_VCPU_SECOND + _gib(found["memory"]) * RUN_GIB_SECOND


def follower_requests(followers: int) -> float:
    """The requests `followers` long-polling followers make a month."""
    return followers * SECONDS_A_MONTH / FOLLOWER_ANSWER_SECONDS


def cdn_hit_ratio(followers: int) -> float:
    """The share of followers' requests a cache answers: all but one a cache reached for
    each answer, which coalesces the rest onto it."""
    return 1 - min(followers, CDN_CACHES_REACHED) / followers


def run_app_month(followers: int) -> dict[str, float]:
    """One system's followers on the run.app URL, a month: their share of the instances
    their held requests keep up (a request each, Terraform's concurrency to an instance,
    whatever their CPU), and what they are sent."""
    found = cdn_settings()
    held = followers / int(found["concurrency"])
    sent = follower_requests(followers) * FOLLOWER_ANSWER_BYTES / GIB
    return {
        "Cloud Run: instances' share holding followers' requests": held
        * _instance_second(found)
        * SECONDS_A_MONTH,
        "Cloud Run internet data transfer out": sent * RUN_EGRESS_GIB,
    }


def cdn_month(followers: int) -> dict[str, float]:
    """The same followers through the cell's CDN, a month: its forwarding rules, lookups,
    what its caches send and fill, what the load balancer processes on a miss, and the
    share of instances the requests it coalesces keep up."""
    found = cdn_settings()
    requests = follower_requests(followers)
    misses = requests * (1 - cdn_hit_ratio(followers))
    held = min(followers, CDN_CACHES_REACHED) / int(found["concurrency"])
    return {
        "Load balancer forwarding rule": int(found["forwarding_rules"])
        * LB_FORWARDING_RULE_HOUR
        * HOURS_A_MONTH,
        "Cloud CDN cache lookups": requests / 10_000 * CDN_LOOKUPS_10K,
        "Cloud CDN cache data transfer out": requests
        * FOLLOWER_ANSWER_BYTES
        / GIB
        * CDN_EGRESS_GIB,
        "Cloud CDN cache fill": misses * FOLLOWER_ANSWER_BYTES / GIB * CDN_FILL_GIB,
        "Load balancer data processed (misses)": misses
        * (FOLLOWER_ANSWER_BYTES + FOLLOWER_REQUEST_BYTES)
        / GIB
        * LB_PROCESSED_GIB,
        "Cloud Run: instances' share holding coalesced requests": held
        * _instance_second(found)
        * SECONDS_A_MONTH,
    }


def cdn_per_million(followers: int) -> tuple[float, float]:
    """A million follower requests' cost through the CDN and on run.app, at `followers`:
    what grows with requests (the forwarding rule's hours left out), instance-seconds
    held counted at Terraform's concurrency."""
    found = cdn_settings()
    million = 1e6
    misses = million * (1 - cdn_hit_ratio(followers))
    per_request_held = FOLLOWER_ANSWER_SECONDS / int(found["concurrency"]) * _instance_second(found)
    through = (
        million / 10_000 * CDN_LOOKUPS_10K
        + million * FOLLOWER_ANSWER_BYTES / GIB * CDN_EGRESS_GIB
        + misses * FOLLOWER_ANSWER_BYTES / GIB * CDN_FILL_GIB
        + misses * (FOLLOWER_ANSWER_BYTES + FOLLOWER_REQUEST_BYTES) / GIB * LB_PROCESSED_GIB
        + misses * per_request_held
    )
    direct = million * FOLLOWER_ANSWER_BYTES / GIB * RUN_EGRESS_GIB + million * per_request_held
    return through, direct


def cdn_table() -> str:
    """One system's followers a month on the run.app URL and through the CDN, item by item,
    and a million follower requests' cost each way."""
    direct = {f: run_app_month(f) for f in CDN_FOLLOWERS}
    through = {f: cdn_month(f) for f in CDN_FOLLOWERS}
    header = (
        "| One system's followers, a month | Price | "
        + " | ".join(f"{f:,} followers" for f in CDN_FOLLOWERS)
        + " |"
    )
    rows = [header, "|---|---|" + "---:|" * len(CDN_FOLLOWERS)]
    sources = {
        "Cloud Run": "https://cloud.google.com/run/pricing",
        "Cloud CDN": "https://cloud.google.com/cdn/pricing",
        "Load balancer": "https://cloud.google.com/load-balancing/pricing",
    }
    for label, months in (("run.app", direct), ("CDN", through)):
        for name in months[CDN_FOLLOWERS[0]]:
            source = next(url for prefix, url in sources.items() if name.startswith(prefix))
            cells = [months[f][name] for f in CDN_FOLLOWERS]
            rows.append(
                f"| {label}: {name} | [list]({source}) | " + " | ".join(map(_dollars, cells)) + " |"
            )
        totals = [sum(months[f].values()) for f in CDN_FOLLOWERS]
        rows.append(
            f"| **Total on {label}** | | " + " | ".join(f"**{_dollars(c)}**" for c in totals) + " |"
        )
    ratios = [f"{cdn_hit_ratio(f):.2%}" for f in CDN_FOLLOWERS]
    rows.append("| CDN hits | | " + " | ".join(ratios) + " |")
    per_million = [cdn_per_million(f) for f in CDN_FOLLOWERS]
    rows.append(
        "| Per million follower requests, CDN / run.app | | "
        + " | ".join(f"{_dollars(c)} / {_dollars(d)}" for c, d in per_million)
        + " |"
    )
    return "\n".join(rows)


def cdn_break_even() -> int:
    """The fewest followers of one system (in hundreds) for which the CDN costs less a
    month than the run.app URL, where its caches answer what the service marks public."""
    for followers in range(100, 1_000_001, 100):
        if sum(cdn_month(followers).values()) < sum(run_app_month(followers).values()):
            return followers
    raise SystemExit("the CDN never costs less than the run.app URL up to a million followers")


def main() -> int:
    print(table())
    if "--notes" in sys.argv[1:]:
        print()
        print(notes())
    if "--cdn" in sys.argv[1:]:
        print()
        print(cdn_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

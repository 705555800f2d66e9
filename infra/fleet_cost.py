"""What a month of Recordline costs, item by item and per system, for fleets of 1, 10, 100
and 1,000 systems in cells, in the twelfth month and the twenty-fourth.

    .venv/bin/python infra/fleet_cost.py            # the table docs/operations.md shows
    .venv/bin/python infra/fleet_cost.py --notes    # and the figures below it
    .venv/bin/python infra/fleet_cost.py --cdn      # and followers through Cloud CDN

Terraform itself (`terraform console`, offline) evaluates a cell of the fleet's size
(infra/terraform: its Spanner sizing, its ingest service's billing mode and instances,
its exporter pool's size, the metrics' value types of modules/metrics), each system at
the default rate and message size; a fleet is as many full cells as it fills
(cell_max_systems, 100) and one with the rest. Each size has its shape: one system alone
starts without a serving tier (BigQuery alone, what a first deployment creates), every
system of a fleet of 10 or more has `serving`. The alert policies are counted from the
environment root (infra/terraform/environment). The list prices below, each with its
source, turn that into dollars a month; what the service and its users do (CPU a push,
spans a push, the series it writes, what readers read) is each a named input below with
its source.

Every billed item is a row; free allotments are counted once, for the environment's
project alone (they are per billing account or per project, as each row says). Prices
are the list prices of europe-west1 and the EU multi-region, where every environment
deploys (infra/terraform/env), and change: check them against the pricing pages before
a budget is made of this. What is not billed, or not priced here, is listed (LEFT_OUT).
A test keeps the tables in docs/operations.md equal to what this prints, and fails when
a price, a rate or a capacity figure here changes without them.
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
from typing import Any, NamedTuple

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

# Spanner, regional, Standard edition, europe-west1 (https://cloud.google.com/spanner/pricing):
# $0.99 a node-hour (1,000 processing units), $0.33 a GB-month of storage, a tenth above
# us-central1's $0.90 and $0.30. The stored copies of the pricing page read here show no
# region table: check both before a budget.
SPANNER_NODE_HOUR = 0.99
SPANNER_GB_MONTH = 0.33
# Committed use discounts on Spanner compute (not storage), spend-based, for the region:
# 20% for one year, 40% for three (https://cloud.google.com/spanner/docs/cuds). Shown as
# an option in the notes, never in the table: a commitment is a decision with a term.
SPANNER_CUD = {"one year": 0.20, "three years": 0.40}
# The multi-region configuration eur3 (the region plan:
# docs/operations.md#losing-a-zone-or-a-region) exists in the Enterprise Plus edition
# only. Its list prices before editions were $3.00 a node-hour and $0.50 a GB-month;
# Enterprise Plus is priced at least that. The stored copies of the pricing page read
# here have no table of today's: check it.
EUR3_NODE_HOUR_AT_LEAST = 3.00
EUR3_GB_MONTH_AT_LEAST = 0.50
# Cloud Run, tier 1, which europe-west1 is (https://cloud.google.com/run/pricing).
# Instance-based billing (CPU always allocated): $0.000018 a vCPU-second, $0.000002 a
# GiB-second, no request fee. Request-based: $0.000024 a vCPU-second, $0.0000025 a
# GiB-second while an instance handles a request, each stretch rounded up to 100 ms, and
# $0.40 a million requests. A worker pool's instances are billed as instance-based ones,
# all the time (https://cloud.google.com/run/docs/configuring/workerpools/manual-scaling).
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
# A BigQuery subscription's delivery, instead of a push: $50 a TiB written
# (https://cloud.google.com/pubsub/pricing), no Storage Write API charge of its own.
PUBSUB_BIGQUERY_TIB = 50.0
# What a message weighs in Pub/Sub's count besides its data: its attributes, id and
# publish time (about 100 bytes: an estimate).
PUBSUB_MESSAGE_OVERHEAD = 100
# BigQuery, EU multi-region (https://cloud.google.com/bigquery/pricing): physical
# (compressed) storage, the datasets' billing model (modules/system/bigquery.tf), $0.044 a
# GiB-month while a partition is active, $0.022 once it has not changed for 90 days
# (long-term), the first 10 GiB a month free (logical storage is $0.02 and $0.01 of the
# uncompressed bytes); the Storage Write API $0.025 a GiB,
# the first 2 TiB a month free; on-demand queries $6.25 a TiB billed, the first TiB a
# month free, at least 10 MiB per table a query references.
BIGQUERY_ACTIVE_GIB_MONTH = 0.044
BIGQUERY_LONG_TERM_GIB_MONTH = 0.022
BIGQUERY_FREE_STORAGE = 10 * GIB
STORAGE_WRITE_GIB = 0.025
STORAGE_WRITE_FREE = 2 * TIB
QUERY_TIB = 6.25
QUERY_FREE = TIB
QUERY_MINIMUM = 10 * MIB
# What a row holds in BigQuery besides its data: ids, times, attributes, subscription,
# trace id (about 200 bytes; app/records.py's columns).
BIGQUERY_ROW_OVERHEAD = 200
# How much smaller a row is compressed than its logical size: 4.6 for order-like JSON of
# about 1 KiB as zstd Parquet (`python3 dev.py bench storage`, a stand-in for BigQuery's
# own format, which shreds JSON columns and compresses as well or better), priced at 4.5.
# Time travel and fail-safe bill only changed and deleted bytes: the tables are appended
# to, so none are priced.
PHYSICAL_RATIO = 4.5
# Internet data transfer out of europe-west1, Premium Tier, to destinations other than
# China and Australia (https://cloud.google.com/vpc/network-pricing, which Cloud Run's
# pricing page points to): $0.12 a GiB for the first TiB a month, $0.11 to 10 TiB, $0.08
# past it. What stays in Google Cloud's region is free.
EGRESS_TIERS = ((1024, 0.12), (10 * 1024, 0.11), (math.inf, 0.08))
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
# GitHub Actions, a private repository on the Team plan
# (https://docs.github.com/en/billing/concepts/product-billing/github-actions): 3,000
# minutes a month included, then $0.008 a minute of a Linux 2-core runner, each job
# rounded up to the minute. A public repository's are free.
ACTIONS_MINUTE = 0.008
ACTIONS_FREE_MINUTES = 3000

# --- what the service does ------------------------------------------------------------------

# CPU one push costs an ingest instance: what `python3 dev.py bench cell --write` measured
# and wrote to bench/cell.json, a cell of 10 and of 100 systems on the serving tier
# (Spanner's emulator, the real client libraries, `recordline serve` as a process):
# its `planning_pushes_per_vcpu_second`, the least of the cells' figures, as CPU a push
# (docs/benchmarks.md#cells). A push on the serving tier is its Spanner transaction's
# client work, about ten times what the same service spends on DuckDB; a BigQuery-only
# system's is priced at the same, which overstates it.
CAPACITY = ROOT / "bench" / "cell.json"
# Cloud Run adds instances to keep each at about 60% of its CPU
# (https://cloud.google.com/run/docs/about-instance-autoscaling).
INGEST_TARGET_UTILISATION = 0.6
# What a push costs Spanner, as spanner.tf sizes it: three row writes (its row in
# `records` and an entry in each of its indexes, app/store/spanner/schema.py) and one
# read (the export's of the row; a group commit of new messages reads nothing); a node
# takes 22,500 row writes a second with throughput-optimized writes (the group commit's
# COMMIT_DELAY, app/store/spanner/calls.py), 3,500 without, and 22,500 reads, at 100%
# CPU; Google recommends at most 65% high-priority CPU for a regional instance
# (https://cloud.google.com/spanner/docs/performance,
# https://cloud.google.com/spanner/docs/cpu-utilization). A test holds these to
# spanner.tf's and the schema's.
SPANNER_WRITES_PER_PUSH = 3
SPANNER_READS_PER_PUSH = 1
SPANNER_NODE_WRITES = 22_500
SPANNER_NODE_WRITES_UNBATCHED = 3_500
SPANNER_NODE_READS = 22_500
SPANNER_CPU_CEILING = 0.65
# Spans a push leaves when it is traced: its request, and the flush of the group commit
# it is in with the store's append (app/telemetry/traces.py, store.py). At ten pushes a
# second a flush carries one or two rows: three a push.
SPANS_PER_PUSH = 3
# The cell's uptime check: three checkers, every five minutes (uptime.tf).
UPTIME_CHECKERS = 3
UPTIME_PERIOD_MINUTES = 5
# Request log entries kept a month (environment/logging.tf, project_iam.tf), about 1.2
# KiB each: one in a thousand successful pushes, 1% of the other successful reads (a
# reader polling without `wait=`), none of the followers' successful long-polls; every
# refused or failed request and the service's own lines are kept whole, and few. A test
# holds these to the exclusions' filters.
LOG_ENTRY_BYTES = 1200
LOGGED_SHARE_OF_PUSHES = 0.001
LOGGED_SHARE_OF_READS = 0.01
LOGGED_SHARE_OF_LONG_POLLS = 0.0
# The access record (docs/security.md#who-read-what): a line for each read answered rows,
# a follower's long-polls summed a line a minute by each instance that answered them,
# about a KiB each as Cloud Logging stores it. Each follower of a system: a line a minute
# (without a serving tier it polls once a minute, answered rows; with one, a line a
# minute from each ingest instance its polls reach). Exports, replays and refusals are
# few beside them. Kept in the _Default bucket with the request logs.
ACCESS_LINE_BYTES = 1024
# The same lines kept in each system's own store (app/store/access.py), 400 days
# (ACCESS_RETENTION_DAYS): a line's JSON, its key and columns beside it, as `bench
# access` measures them with service accounts' e-mails for callers: a follower's summed
# line about 430 bytes, a filtered page's 385, an export's 350, a refusal's 330; in the
# system's BigQuery dataset, with a serving tier or without one (billed whole, active:
# the free 10 GiB left to the rows).
ACCESS_KEPT_LINE_BYTES = 450
ACCESS_KEPT_MONTHS = 400 / 30.4
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
#   exported (HOLDER_SERIES); without a serving tier, its one ingest instance.
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
# But the service's counters are cumulative, the one temporality Cloud Monitoring takes
# for a custom metric (the exporter, opentelemetry-exporter-gcp-monitoring, writes every
# counter as CUMULATIVE): a series an instance wrote once is written at every export until
# the instance ends. Pub/Sub delivers at least once, and at ten pushes a second every
# system sees a redelivery, a publisher's retry or a 503 on every instance within a day
# or so: those are counted as the cell's (app/telemetry/metrics.py, PushOutcomes), not
# the system's, which would have left each instance a series of each system it served
# from then on, and are among CELL_SERIES.
# What the store holds, from the exporter instance holding the system's lease alone:
# each row is counted once, as it is exported (app/telemetry/metrics.py, ExportMetrics).
# Outcomes two (stored, and a rejection's reason); freshness's good events one; its
# canary's age one (the newest canary exported).
HOLDER_SERIES = {"messages": 2, "slo.events": 1, "canary.age": 1}
# Its export's, from the same instance: two tables. Whether a table is blocked, and a
# system's refused changes of its typed columns, are written once one was
# (app/telemetry/metrics.py): none on an ordinary day.
EXPORT_SERIES = {"export.rows": 2, "export.lag": 2, "export.blocked": 0, "typed.patches_refused": 0}
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
    # What a push costs without becoming a row, every system's: a publisher's duplicate
    # and a 503 (retried, its cause) on an ordinary day, each a series of the instance
    # from then on (cumulative). An estimate.
    "messages": 2,
    "slo.events": 2,
    "query.bytes_billed": 1,
}

# --- what its users do: each an input, stated ---------------------------------------------

# Followers of each system, each holding a long-poll (`wait=`, docs/reading.md) that the
# service answers as rows arrive: at ten rows a second, about a request a second each.
# Two: an application and a dashboard. An estimate.
FOLLOWERS_A_SYSTEM = 2
FOLLOWER_REQUEST_SECONDS = 1.0
# Each system's month of rows is read once from outside Google Cloud (a downstream
# service, an export to another cloud), as pages of JSON gzip-compressed eightfold: a
# 100-row page of varied order-like records is 57,069 bytes plain and 7,101 gzipped
# (`bench cost`, docs/benchmarks.md, "A month of followers"). A record as served: its
# data and about 300 bytes of ids, times and attributes.
READS_OF_A_MONTH = 1
GZIP_RATIO = 8.0
SERVED_ROW_OVERHEAD = 300
# Without a serving tier a follower's read is a BigQuery query, billed at least 10 MiB
# (QUERY_MINIMUM): a reader polling once a minute, the freshness a first system is
# offered (docs/operations.md#what-it-costs).
STARTER_POLL_SECONDS = 60
# BigQuery queries beside: reads past the serving tier's retention (a day of a system's
# rows each, what a partition holds: a reader catching up on older history) once a day;
# `export verify` over the Spanner window once a month (its ids and times, about 40
# bytes a row); and an analyst allowance of 100 GiB scanned a system a month. Estimates.
HORIZON_READS_A_MONTH = 30
VERIFY_BYTES_A_ROW = 40
VERIFY_DAYS = 9
ANALYST_BYTES = 100 * GIB
# GitHub Actions minutes the fleet's own workflows spend without a change merged
# (.github/workflows/drift.yml): reconcile every hour, one job of a minute; plan every
# six hours, a job listing the states (a minute) and a job per state: dev's root and
# one cell, prod's root and every cell, each about 2 minutes of setup and its plan
# (infra/fleet_limits.py's 0.5 s a resource, ten at once; about 40 resources a system
# and 70 a cell, docs/operations.md's limits table). CI of changes follows development,
# not the fleet: left out.
RECONCILE_MINUTES = 1
PLAN_SETUP_MINUTES = 2
PLAN_SECONDS_A_RESOURCE = 0.5
PLAN_PARALLELISM = 10
RESOURCES_A_SYSTEM = 40
RESOURCES_A_CELL = 70

# Not billed, or not priced here, and why.
LEFT_OUT = (
    "Spanner backups: none are taken (`default_backup_schedule_type = NONE`, spanner.tf); "
    "a restore's scratch instance and backup are priced in "
    "docs/operations.md#recovering-a-serving-database",
    "Spanner and BigQuery reads within the region, Pub/Sub pushes to Cloud Run, the "
    "services' calls to Google APIs: no data transfer charge within the region",
    "Pub/Sub message storage: no topic retention and no retained acknowledged messages "
    "are configured (modules/system/pubsub.tf); unacknowledged messages are kept free",
    "the dead-letter topic's throughput and replays: what fails, not an ordinary month",
    "the CPU followers' reads take on the ingest instances: answered from each "
    "instance's tail in memory, within the 40% of CPU Cloud Run's target leaves",
    "Cloud CDN: off by default, priced apart (`--cdn`)",
    "GitHub Actions minutes of CI on changes, and the Terraform state bucket (cents)",
    "support plans and taxes",
)

FLEETS = (1, 10, 100, 1000)
TARGET_PER_SYSTEM = 25.0
# One system alone, in its starter shape, at most this a month.
TARGET_STARTER = 15.0
MONTHS = (12, 24)


class Shape(NamedTuple):
    """A fleet as priced: its systems, whether each has a serving tier, its declared
    rate (None: the default, serving_rate), and cell variables set other than their
    defaults (name, HCL value), for an option priced beside the defaults."""

    systems: int
    serving: bool
    rate: float | None = None
    variables: tuple[tuple[str, str], ...] = ()


def shape_of(systems: int) -> Shape:
    """The shape a fleet of `systems` is priced in: one system alone starts on
    BigQuery alone, a fleet of 10 or more serves every system."""
    return Shape(systems, systems > 1)


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
def evaluate(
    systems: int,
    rate: float | None = None,
    serving: bool = True,
    reads: float | None = None,
    variables: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """A cell of `systems` systems at the defaults (or at `rate` pushes a second and
    `reads` rows read from Spanner a second each, and the cell `variables` given), each
    with `serving` or none, as `terraform console` evaluates the cell root: its Spanner
    sizing, billing, sizes, and the metrics' value types."""
    names = ["recordline", *(f"system-{n:03d}" for n in range(1, systems))]
    # Past 90 databases the systems added last name a second instance (spanner.tf).
    entries = [
        f'"{n}" = {{ serving = {str(serving).lower()}'
        + (", spanner_instance = 2" if serving and i >= 90 else "")
        + (f", rate = {rate}" if rate is not None else "")
        + (f", reads = {reads}" if reads is not None else "")
        + " }"
        for i, n in enumerate(names)
    ]
    values = {
        "project_id": '"recordline-prod"',
        "environment": '"dev"',
        "terraform_state_bucket": '"recordline-prod-tfstate"',
        "service_account_quota": "300",
        "systems": "{ " + ", ".join(entries) + " }",
        **dict(variables),
    }
    expression = (
        "{ units = local.spanner_total_units, stored = local.spanner_total_stored_bytes,"
        " cpu_units = local.spanner_total_cpu_units, instances = length(local.spanner_instances),"
        " rate = var.serving_rate, message_bytes = var.serving_message_bytes,"
        " reads = var.serving_reads, region = var.region,"
        " cpu = var.cpu, memory = var.memory, min_instances = local.ingest_min_instances,"
        " instance_based = local.instance_based, cell_rate = local.cell_rate,"
        " break_even = var.billing_break_even_rate, cell_max_systems = var.cell_max_systems,"
        " exporter_instances = var.exporter_instances, exporter_cpu = var.exporter_cpu,"
        " exporter_memory = var.exporter_memory, exporters = length(local.exporter),"
        " retention_days = var.retention_days, trace_sample_ratio = local.trace_sample_ratio,"
        ' ingest_interval = lookup(local.service_env, "OTEL_METRIC_EXPORT_INTERVAL", "60000"),'
        ' exporter_interval = lookup(local.exporter_env, "OTEL_METRIC_EXPORT_INTERVAL", "60000"),'
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


def deployed_regions() -> set[str]:
    """The regions the environments' cells deploy to (infra/terraform/env)."""
    return {
        json.loads(path.read_text()).get("region", "")
        for path in sorted((TERRAFORM / "env").glob("*/*.tfvars.json"))
    }


def spanner_cpu_units(
    rates: list[float], reads: list[float], node_writes: float = SPANNER_NODE_WRITES
) -> int:
    """The processing units an instance needs for its databases' CPU, as spanner.tf
    computes them: each system's pushes (rows written and read) and rows its readers
    read, at a node's published throughput, kept under the recommended ceiling."""
    nodes = sum(
        rate * SPANNER_WRITES_PER_PUSH / node_writes
        + (rate * SPANNER_READS_PER_PUSH + read) / SPANNER_NODE_READS
        for rate, read in zip(rates, reads, strict=True)
    )
    needed = nodes / SPANNER_CPU_CEILING
    if needed <= 0.9:
        return max(100, math.ceil(round(needed * 10, 9)) * 100)
    return math.ceil(round(needed, 9)) * 1000


def unbatched_units(systems: int) -> int:
    """Processing units a fleet's instances would need were commits not held to be
    batched (3,500 row writes a node), at the defaults: the larger of that and what
    Terraform sizes each instance at."""
    cell_max = int(evaluate(1)["cell_max_systems"])
    total = 0
    for size in cells_of(systems, cell_max):
        found = evaluate(size)
        rate, reads = float(found["rate"]), float(found["reads"])
        per_instance = [min(size, 90), size - 90] if size > 90 else [size]
        for count in per_instance:
            cpu = spanner_cpu_units([rate] * count, [reads] * count, SPANNER_NODE_WRITES_UNBATCHED)
            databases = min(math.ceil(count / 10) * 100, 1000)
            total += max(cpu, databases)
    return total


@cache
def kept_images() -> int:
    """Images the environment's repository keeps (environment/variables.tf)."""
    for block in _load(ENVIRONMENT / "variables.tf").get("variable", []):
        for name, body in block.items():
            if name.strip('"') == "kept_image_versions":
                return int(body["default"])
    raise SystemExit("no kept_image_versions in the environment's variables")


# The symptoms whose pages and tickets exist only where a system has `serving`
# (environment/cells.tf, serving_symptoms: a test holds the two equal).
SERVING_SYMPTOMS = frozenset({"export_lag", "export_blocked", "spanner_storage", "spanner_cpu"})


@cache
def combined_below() -> int:
    """The number of systems from which an environment's alerts are a policy per symptom
    (environment/combined.tf): below it, every symptom is in one paging policy and one
    ticket policy (and the serving instances' one), a condition each."""
    text = (ENVIRONMENT / "combined.tf").read_text()
    (below,) = re.findall(r"length\(local\.system_names\) < (\d+)", text)
    return int(below)


@cache
def alert_conditions(serving: bool = True, systems: int | None = None) -> int:
    """Conditions of every alert policy (one each), the environment's, for `systems`
    systems in one set of ticket channels (None: as many as make a policy per symptom).
    A policy per symptom, whatever the number of cells: a page per symptom (fleet.tf), a
    ticket per symptom for the one set of ticket channels, and the serving instances'
    two tickets (tickets.tf); without a serving system, none of the export's or the
    instances'. Combined (combined.tf, below combined_below() systems): a page, a ticket
    and, with a serving system, the instances' ticket."""
    if systems is not None and systems < combined_below():
        return 2 + int(serving)

    def local(path: Path, name: str) -> Any:
        (value,) = [block[name] for block in _load(path).get("locals", []) if name in block]
        return value

    specs = [
        *local(ENVIRONMENT / "fleet.tf", "pages"),
        *local(ENVIRONMENT / "tickets.tf", "ticket_specs"),
        *local(ENVIRONMENT / "tickets.tf", "instance_tickets"),
    ]
    return len([s for s in specs if serving or s not in SERVING_SYMPTOMS])


def _gib(memory: str) -> float:
    number = float(re.sub(r"[A-Za-z]+$", "", memory))
    return number if memory.endswith("Gi") else number / 1024


def _tiered(amount: float, tiers: tuple[tuple[float, float], ...]) -> float:
    """The bill for `amount` (in the tiers' unit), tier by tier: each (ceiling, price)."""
    cost, floor = 0.0, 0.0
    for ceiling, price in tiers:
        cost += max(0.0, min(amount, ceiling) - floor) * price
        floor = ceiling
    return cost


def _monitoring(bytes_a_month: float) -> float:
    """Cloud Monitoring's bill for this many bytes ingested, tier by tier."""
    return _tiered(bytes_a_month / MIB, MONITORING_TIERS)


def _egress(bytes_a_month: float) -> float:
    """Internet data transfer out of the region for this many bytes, tier by tier."""
    return _tiered(bytes_a_month / GIB, EGRESS_TIERS)


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


def _plan_job_minutes(systems_in_cell: int) -> int:
    resources = RESOURCES_A_CELL + RESOURCES_A_SYSTEM * systems_in_cell
    return math.ceil(
        PLAN_SETUP_MINUTES + resources * PLAN_SECONDS_A_RESOURCE / PLAN_PARALLELISM / 60
    )


def drift_minutes(sizes: list[int]) -> float:
    """Minutes a month of .github/workflows/drift.yml for a fleet whose prod cells are
    `sizes`: the hourly reconcile, and every six hours a listing job and a plan job per
    state (dev's root and one cell of one system, prod's root and each cell)."""
    rounds = MINUTES_A_MONTH / (6 * 60)
    reconcile = MINUTES_A_MONTH / 60 * RECONCILE_MINUTES
    roots = 2 * _plan_job_minutes(0)
    per_round = 1 + roots + _plan_job_minutes(1) + sum(_plan_job_minutes(s) for s in sizes)
    return reconcile + rounds * per_round


# Each row: what is billed, where its price is.
ROWS = (
    ("Spanner compute (processing units)", "https://cloud.google.com/spanner/pricing"),
    (
        "Spanner storage (rows, indexes, 2 days of old versions)",
        "https://cloud.google.com/spanner/pricing",
    ),
    ("Cloud Run: the cells' ingest services", "https://cloud.google.com/run/pricing"),
    ("Cloud Run: the cells' exporter pools", "https://cloud.google.com/run/pricing"),
    ("Pub/Sub throughput (published and pushed)", "https://cloud.google.com/pubsub/pricing"),
    ("BigQuery Storage Write API", "https://cloud.google.com/bigquery/pricing"),
    (
        "BigQuery storage, twelfth month (rows kept, the access record)",
        "https://cloud.google.com/bigquery/pricing",
    ),
    (
        "BigQuery storage, twenty-fourth month (rows kept, the access record)",
        "https://cloud.google.com/bigquery/pricing",
    ),
    (
        "BigQuery queries (followers without a serving tier, reads past its retention, "
        "export verify, analysts)",
        "https://cloud.google.com/bigquery/pricing",
    ),
    (
        "Internet data transfer out (each month's rows read once, gzipped)",
        "https://cloud.google.com/vpc/network-pricing",
    ),
    ("Cloud Monitoring: custom metrics, by bytes", "https://cloud.google.com/stackdriver/pricing"),
    ("Cloud Monitoring: uptime check executions", "https://cloud.google.com/stackdriver/pricing"),
    ("Cloud Monitoring: alerting conditions", "https://cloud.google.com/stackdriver/pricing"),
    ("Cloud Trace spans", "https://cloud.google.com/stackdriver/pricing"),
    (
        "Cloud Logging (request logs past the exclusions, the access record)",
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
    (
        "GitHub Actions minutes (drift checks)",
        "https://docs.github.com/en/billing/concepts/product-billing/github-actions",
    ),
)
# The rows that hold one month alone: the twelfth's, then the twenty-fourth's.
MONTH_ROWS = {12: ROWS[6][0], 24: ROWS[7][0]}


def _kept_storage(row_bytes: float, months: int, retention_days: int) -> float:
    """BigQuery's storage in month `months` for a month of rows of `row_bytes` (the
    fleet's, logical), retention_days = 0 keeping every month: the newest three active,
    the rest long-term (a day's partition is not written again once its day is over),
    billed as they are stored, compressed."""
    kept = months if retention_days == 0 else min(months, retention_days / 30)
    stored = row_bytes / PHYSICAL_RATIO
    active, long_term = min(kept, 3) * stored, max(0.0, kept - 3) * stored
    return (
        max(0.0, active - BIGQUERY_FREE_STORAGE) / GIB * BIGQUERY_ACTIVE_GIB_MONTH
        + long_term / GIB * BIGQUERY_LONG_TERM_GIB_MONTH
    )


def month(systems: int, shape: Shape | None = None) -> dict[str, float]:
    """Each billed item, in dollars a month, for a fleet of `systems` systems in cells,
    in its shape (shape_of): the twelfth month's storage and the twenty-fourth's each a
    row of its own."""
    shape = shape or shape_of(systems)
    serving = shape.serving
    cell_max = int(evaluate(1)["cell_max_systems"])
    sizes = cells_of(systems, cell_max)
    cells = [evaluate(size, shape.rate, serving, None, shape.variables) for size in sizes]
    base = cells[0]
    rate, message = (
        float(base["rate"]) if shape.rate is None else shape.rate,
        float(base["message_bytes"]),
    )
    pushes = systems * rate * SECONDS_A_MONTH
    rows_a_system = rate * SECONDS_A_MONTH
    items: dict[str, float] = {}

    # The access record's lines a month (docs/security.md#who-read-what): a follower's a
    # minute, from each ingest instance its polls reach where there is a serving tier.
    access_lines = sum(
        size
        * FOLLOWERS_A_SYSTEM
        * MINUTES_A_MONTH
        * (max(1, ingest_instances(c)) if serving else 1)
        for c, size in zip(cells, sizes, strict=True)
    )
    items[ROWS[0][0]] = sum(c["units"] / 1000 * SPANNER_NODE_HOUR * HOURS_A_MONTH for c in cells)
    items[ROWS[1][0]] = sum(c["stored"] / GIB * SPANNER_GB_MONTH for c in cells)
    items[ROWS[2][0]] = sum(ingest_month(c, bool(c["instance_based"])) for c in cells)
    # Followers' requests billed by request too, where the cell is: a request and its
    # 100 ms each (BigQuery alone, a poll a minute).
    if not serving:
        polls = FOLLOWERS_A_SYSTEM * SECONDS_A_MONTH / STARTER_POLL_SECONDS
        items[ROWS[2][0]] += sum(
            size
            * polls
            * (
                RUN_ROUNDING_SECONDS
                * (
                    float(c["cpu"]) * RUN_REQUEST_VCPU_SECOND
                    + _gib(c["memory"]) * RUN_REQUEST_GIB_SECOND
                )
                + RUN_MILLION_REQUESTS / 1e6
            )
            for c, size in zip(cells, sizes, strict=True)
            if not c["instance_based"]
        )
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
    for months, name in MONTH_ROWS.items():
        items[name] = _kept_storage(row_bytes, months, int(base["retention_days"]))
        kept = access_lines * ACCESS_KEPT_LINE_BYTES * min(months, ACCESS_KEPT_MONTHS)
        items[name] += kept / PHYSICAL_RATIO / GIB * BIGQUERY_ACTIVE_GIB_MONTH

    # Queries: without a serving tier every follower's read is one, billed at least
    # 10 MiB; reads past the serving tier's retention a day of rows each; a monthly
    # verification of the window; the analysts' allowance.
    day_bytes = rate * 86400 * (message + BIGQUERY_ROW_OVERHEAD)
    followers = (
        0.0
        if serving
        else FOLLOWERS_A_SYSTEM * SECONDS_A_MONTH / STARTER_POLL_SECONDS * QUERY_MINIMUM
    )
    horizon = HORIZON_READS_A_MONTH * day_bytes if serving else 0.0
    verify = rate * 86400 * VERIFY_DAYS * VERIFY_BYTES_A_ROW if serving else 0.0
    scanned = systems * (followers + horizon + verify + ANALYST_BYTES)
    items[ROWS[8][0]] = max(0.0, scanned - QUERY_FREE) / TIB * QUERY_TIB

    served = systems * READS_OF_A_MONTH * rows_a_system * (message + SERVED_ROW_OVERHEAD)
    items[ROWS[9][0]] = _egress(served / GZIP_RATIO)

    # Every series is a point at each export: the ingest service's every
    # OTEL_METRIC_EXPORT_INTERVAL (cell.tf), the exporter pool's at its own (exporter.tf).
    metrics = base["metrics"]
    ingest_exports = SECONDS_A_MONTH * 1000 / float(base["ingest_interval"])
    pool_exports = SECONDS_A_MONTH * 1000 / float(base["exporter_interval"])
    written = 0.0
    for c, size in zip(cells, sizes, strict=True):
        instances = max(1, ingest_instances(c))
        by_ingest = size * instances * _point_bytes(metrics, INSTANCE_SERIES)
        by_ingest += instances * _point_bytes(metrics, CELL_SERIES)
        # What the store holds: its export lease holder's, or without a serving tier
        # each ingest instance's.
        if serving:
            by_pool = size * (
                _point_bytes(metrics, HOLDER_SERIES) + _point_bytes(metrics, EXPORT_SERIES)
            )
        else:
            by_pool = 0
            by_ingest += size * instances * _point_bytes(metrics, HOLDER_SERIES)
        written += by_ingest * ingest_exports + by_pool * pool_exports
    items[ROWS[10][0]] = _monitoring(written)
    probes = len(cells) * UPTIME_CHECKERS * MINUTES_A_MONTH / UPTIME_PERIOD_MINUTES
    items[ROWS[11][0]] = max(0.0, probes - UPTIME_FREE) / 1000 * UPTIME_THOUSAND
    items[ROWS[12][0]] = alert_conditions(serving, systems) * ALERT_CONDITION

    spans = pushes * SPANS_PER_PUSH * float(base["trace_sample_ratio"])
    items[ROWS[13][0]] = max(0.0, spans - TRACE_FREE_SPANS) / 1e6 * TRACE_MILLION_SPANS
    # Followers of a serving system long-poll (`wait=`); without a serving tier a reader
    # polls once a minute.
    reads = (
        systems
        * FOLLOWERS_A_SYSTEM
        * SECONDS_A_MONTH
        / (FOLLOWER_REQUEST_SECONDS if serving else STARTER_POLL_SECONDS)
    )
    read_share = LOGGED_SHARE_OF_LONG_POLLS if serving else LOGGED_SHARE_OF_READS
    logged = (pushes * LOGGED_SHARE_OF_PUSHES + reads * read_share) * LOG_ENTRY_BYTES
    access = ACCESS_LINE_BYTES * access_lines
    items[ROWS[14][0]] = max(0.0, logged + access - LOGGING_FREE) / GIB * LOGGING_GIB

    items[ROWS[15][0]] = max(0, systems - SCHEDULER_FREE) * SCHEDULER_JOB
    secrets = sum(2 + int(c["exporters"]) for c in cells)
    items[ROWS[16][0]] = max(0, secrets - SECRET_FREE) * SECRET_VERSION
    items[ROWS[17][0]] = (
        max(0.0, kept_images() * IMAGE_BYTES - REGISTRY_FREE) / GIB * REGISTRY_GIB_MONTH
    )
    minutes = drift_minutes(sizes)
    items[ROWS[18][0]] = max(0.0, minutes - ACTIONS_FREE_MINUTES) * ACTIONS_MINUTE
    return items


def _dollars(value: float) -> str:
    if value == 0:
        return "$0"
    if value < 0.005:
        return "<$0.01"
    return f"${value:,.0f}" if value >= 100 else f"${value:,.2f}"


def _total(items: dict[str, float], months: int) -> float:
    """The items of month `months` (12 or 24)."""
    skip = {name for m, name in MONTH_ROWS.items() if m != months}
    return sum(v for k, v in items.items() if k not in skip)


def _label(systems: int) -> str:
    shape = shape_of(systems)
    if systems == 1:
        return "1 system" + ("" if shape.serving else ", starter")
    return f"{systems:,} systems"


def table() -> str:
    months = {systems: month(systems) for systems in FLEETS}
    cell_max = int(evaluate(1)["cell_max_systems"])
    header = "| Billed item | Price | " + " | ".join(_label(s) for s in FLEETS) + " |"
    rows = [header, "|---|---|" + "---:|" * len(FLEETS)]
    for name, source in ROWS:
        cells = [months[s][name] for s in FLEETS]
        rows.append(f"| {name} | [list]({source}) | " + " | ".join(map(_dollars, cells)) + " |")
    for label, which in (
        ("**Total, twelfth month**", 12),
        ("**Total, twenty-fourth month**", 24),
    ):
        cells = [_total(months[s], which) for s in FLEETS]
        rows.append(f"| {label} | | " + " | ".join(f"**{_dollars(c)}**" for c in cells) + " |")
    for label, which in (
        ("**Per system, twelfth month**", 12),
        ("**Per system, twenty-fourth month**", 24),
    ):
        cells = [_total(months[s], which) / s for s in FLEETS]
        rows.append(f"| {label} | | " + " | ".join(f"**{_dollars(c)}**" for c in cells) + " |")
    counts = [str(len(cells_of(s, cell_max))) for s in FLEETS]
    rows.append("| Cells | | " + " | ".join(counts) + " |")
    units = [
        str(sum(evaluate(n, None, shape_of(s).serving)["units"] for n in cells_of(s, cell_max)))
        for s in FLEETS
    ]
    rows.append("| Spanner processing units | | " + " | ".join(units) + " |")
    return "\n".join(rows)


def per_system(systems: int, months: int = 12) -> float:
    """A system's share of the fleet's month `months`."""
    return _total(month(systems), months) / systems


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


STARTER_RATES = (0.5, 1.0, 2.0, 5.0, 10.0)
# A first topic's rate, below the break-even, where ingest is billed by request.
SLOW_STARTER_RATE = 1.0


@cache
def starter_ceiling() -> float:
    """The most messages a second (to a tenth) at which one system alone, in its starter
    shape, costs at most TARGET_STARTER in both months: its ingest billed by request grows
    with its rate, and none of its other items falls."""

    def within(rate: float) -> bool:
        items = month(1, Shape(1, False, rate))
        return all(_total(items, m) <= TARGET_STARTER for m in MONTHS)

    low, high = 0, 100  # in tenths of a message a second
    if not within(low / 10 or 0.1):
        return 0.0
    while high - low > 1:
        middle = (low + high) // 2
        if within(middle / 10):
            low = middle
        else:
            high = middle
    return low / 10


def starter() -> str:
    """One system alone in its starter shape (BigQuery alone), at a few rates: its
    ingest service billed either way, what the cell's plan bills it by (cell.tf), and
    its month's total."""
    lines = [
        "| A system alone, BigQuery alone | billed by request | instance-based"
        " | the plan bills it | twelfth month | twenty-fourth month |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for rate in sorted({*STARTER_RATES, starter_ceiling()}):
        found = evaluate(1, rate, False)
        chosen = "instance-based" if found["instance_based"] else "by request"
        items = month(1, Shape(1, False, rate))
        lines.append(
            f"| {rate:g} message{'' if rate == 1 else 's'} a second |"
            f" {_dollars(ingest_month(found, False))} |"
            f" {_dollars(ingest_month(found, True))} | {chosen} |"
            f" {_dollars(_total(items, 12))} | {_dollars(_total(items, 24))} |"
        )
    return "\n".join(lines)


def subscription_month(rate: float, months: int) -> float:
    """One topic landed by a Pub/Sub BigQuery subscription, with a read API of its own
    on Cloud Run billed by request, scaling to zero, that a reader polls once a minute
    (a query billed at least 10 MiB each, a request of 100 ms): what the starter is
    weighed against, at the same list prices and message size."""
    found = evaluate(1, rate, False)
    message = float(found["message_bytes"])
    pushes = rate * SECONDS_A_MONTH
    carried = pushes * (message + PUBSUB_MESSAGE_OVERHEAD)
    published = max(0.0, carried - PUBSUB_FREE_BYTES) / TIB * PUBSUB_TIB
    delivered = carried / TIB * PUBSUB_BIGQUERY_TIB
    storage = _kept_storage(pushes * (message + BIGQUERY_ROW_OVERHEAD), months, 0)
    polls = SECONDS_A_MONTH / STARTER_POLL_SECONDS
    queries = max(0.0, polls * QUERY_MINIMUM - QUERY_FREE) / TIB * QUERY_TIB
    reader = polls * (
        RUN_ROUNDING_SECONDS * (RUN_REQUEST_VCPU_SECOND + RUN_REQUEST_GIB_SECOND)
        + RUN_MILLION_REQUESTS / 1e6
    )
    return published + delivered + storage + queries + reader


def shapes() -> str:
    """Each shape a system runs in, what it gives and what it costs a month (the twelfth
    and the twenty-fourth), with a BigQuery subscription beside them, at the default
    message size."""
    rate = float(evaluate(1)["rate"])
    starter_rate = 1.0
    rows = [
        "| Shape | What it gives | A month, twelfth / twenty-fourth |",
        "|---|---|---:|",
    ]

    def months(items: dict[str, float], systems: int = 1) -> str:
        return " / ".join(_dollars(_total(items, m) / systems) for m in MONTHS)

    rows.append(
        f"| **Starter**: one system alone, BigQuery alone (no `serving`), ingest billed by "
        f"request, no exporter pool, no Spanner instance | every push validated, stored "
        f"within the freshness SLO (99% within 5 s) or kept as a rejection, copies dropped "
        f"on read, the read API; a follower sees a row after the 15 s settle window, a "
        f"reader polling once a minute within about 75 s | "
        f"{months(month(1, Shape(1, False, starter_rate)))} at {starter_rate:g} message a "
        f"second (at most {_dollars(TARGET_STARTER)} up to {starter_ceiling():g} messages a "
        f"second), {months(month(1, Shape(1, False, rate)))} at {rate:g} |"
    )
    rows.append(
        f"| **Serving, alone**: one system with `serving` (a Spanner instance of 100 units, "
        f"an exporter pool of two) | the starter's, and followers within about a tenth of "
        f"a second of a push (a commit may wait 100 ms to be batched), every row exported "
        f"to BigQuery exactly once | "
        f"{months(month(1, Shape(1, True)))} at {rate:g} |"
    )
    for systems in (100, 1000):
        rows.append(
            f"| **Serving, in cells**: each of {systems:,} systems with `serving` | the same, "
            f"a cell's service, pool and alerts shared by up to 100 | "
            f"{months(month(systems), systems)} a system at {rate:g} |"
        )
    rows.append(
        f"| A Pub/Sub **BigQuery subscription** and a read API of your own (Cloud Run, "
        f"scaled to zero) | rows land in BigQuery within seconds, as published: no "
        f"validation, no rejections kept, no copies dropped, no alerts, the read API "
        f"yours to write | {_dollars(subscription_month(starter_rate, 12))} / "
        f"{_dollars(subscription_month(starter_rate, 24))} at {starter_rate:g}, "
        f"{_dollars(subscription_month(rate, 12))} / "
        f"{_dollars(subscription_month(rate, 24))} at {rate:g} |"
    )
    return "\n".join(rows)


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


def spanner_sizing(systems: int = 100) -> str:
    """What sizes the serving tier's instances at `systems` systems: their databases,
    their storage and their CPU, and what commitments would take off its compute."""
    cell_max = int(evaluate(1)["cell_max_systems"])
    cells = [evaluate(n) for n in cells_of(systems, cell_max)]
    units = sum(int(c["units"]) for c in cells)
    cpu = sum(int(c["cpu_units"]) for c in cells)
    full = cells[0]
    compute = units / 1000 * SPANNER_NODE_HOUR * HOURS_A_MONTH
    discounts = ", ".join(
        f"{_dollars(compute * (1 - off))} with a commitment of {term} (-{off:.0%})"
        for term, off in SPANNER_CUD.items()
    )
    return (
        f"Spanner's processing units are, per instance, the most of what its databases "
        f"need (10 databases per 100 units below a node), what they store (filled to 70%) "
        f"and what they do: {SPANNER_WRITES_PER_PUSH} row writes and "
        f"{SPANNER_READS_PER_PUSH} read{'' if SPANNER_READS_PER_PUSH == 1 else 's'} a push "
        f"and each system's {float(full['reads']):g} rows read a second, at "
        f"{SPANNER_NODE_WRITES:,} row writes (throughput-optimized) or "
        f"{SPANNER_NODE_READS:,} reads a second a node, under {SPANNER_CPU_CEILING:.0%} "
        f"high-priority CPU (spanner.tf). At {systems} systems their CPU needs {cpu} "
        f"units of the {units} their databases hold them to; with commits not held to be "
        f"batched ({SPANNER_NODE_WRITES_UNBATCHED:,} row writes a node) the fleet would "
        f"need {unbatched_units(systems)}. Its compute, {_dollars(compute)} a month at "
        f"list price, is {discounts} (spend-based committed use discounts, compute alone)."
    )


def target() -> str:
    """What a system costs at 100 and 1,000 systems against TARGET_PER_SYSTEM, one
    alone against TARGET_STARTER, and the figures that make it: a full cell's ingest
    instances and what they write."""
    cell_max = int(evaluate(1)["cell_max_systems"])
    full = evaluate(cell_max)
    instances = ingest_instances(full)
    metrics = full["metrics"]
    costs = {(s, m): per_system(s, m) for s in (100, 1000) for m in MONTHS}
    committed = {
        (s, m): costs[s, m] - month(s)[ROWS[0][0]] * SPANNER_CUD["one year"] / s
        for s in (100, 1000)
        for m in MONTHS
    }
    met = all(cost <= TARGET_PER_SYSTEM for cost in costs.values())
    alone = {m: per_system(1, m) for m in MONTHS}
    slow_month = month(1, Shape(1, False, SLOW_STARTER_RATE))
    slow = {m: _total(slow_month, m) for m in MONTHS}
    alone_met = all(cost <= TARGET_STARTER for cost in alone.values())
    slow_met = all(cost <= TARGET_STARTER for cost in slow.values())
    conditions = alert_conditions(False, 1)
    ceiling = starter_ceiling()
    ingest = ingest_month(evaluate(1, None, False), True)
    return (
        f"A system costs {_dollars(costs[100, 12])} a month at 100 systems and "
        f"{_dollars(costs[1000, 12])} at 1,000 in the twelfth month, "
        f"{_dollars(costs[100, 24])} and {_dollars(costs[1000, 24])} in the "
        "twenty-fourth, "
        + ("within" if met else "over")
        + f" the {_dollars(TARGET_PER_SYSTEM)} asked; one system alone, in its starter "
        f"shape, {_dollars(slow[12])} and {_dollars(slow[24])} at "
        f"{SLOW_STARTER_RATE:g} message a second, "
        + ("within" if slow_met else "over")
        + f" the {_dollars(TARGET_STARTER)} asked"
        + (f" up to {ceiling:g} messages a second" if ceiling else "")
        + f" (its {conditions} alert conditions {_dollars(conditions * ALERT_CONDITION)}: "
        f"every symptom in one page and one ticket, environment/combined.tf), "
        f"{_dollars(alone[12])} and {_dollars(alone[24])} at "
        f"{float(full['rate']):g}, "
        + ("within it" if alone_met else "over it")
        + f" (its ingest instance, always on, {_dollars(ingest)} alone). A full "
        f"cell ({cell_max} systems, "
        f"{float(full['cell_rate']):g} pushes a second) runs {instances} ingest instances "
        f"of {float(full['cpu']):g} vCPU, "
        + ("instance-based" if full["instance_based"] else "billed by request")
        + f", each writing the cell's {sum(CELL_SERIES.values())} series "
        f"({_point_bytes(metrics, CELL_SERIES)} bytes an export, every "
        f"{float(full['ingest_interval']) / 1000:g} s), none of a system's on an ordinary "
        f"day (a duplicate, a 503 or a refusal is counted as the cell's); the "
        f"holder of a system's export lease writes its "
        f"{sum(HOLDER_SERIES.values()) + sum(EXPORT_SERIES.values())} series (of what "
        f"its store holds and exports) once, and Pub/Sub counts its pushes' answers "
        f"free; Spanner {full['units']} processing units. With a one-year commitment on "
        f"Spanner's compute (-{SPANNER_CUD['one year']:.0%}, an option, not the list price "
        f"above) a system costs {_dollars(committed[100, 24])} at 100 systems and "
        f"{_dollars(committed[1000, 24])} at 1,000 in the twenty-fourth month."
    )


# Changes of what the system does that would take the twenty-fourth month further down,
# none of them made by default, each priced by Terraform with its variable set: what
# each gives up is said beside its price (options()).
RECOVERY_OF_A_DAY = (("spanner_recovery_hours", "24"),)
DEDUPE_WINDOW_OF_A_DAY = (("extra_env", '{ RECORDLINE_DEDUPE_WINDOW_SECONDS = "86400" }'),)


def option_per_system(systems: int, variables: tuple[tuple[str, str], ...], months: int) -> float:
    """A system's share of the fleet's month `months` with the cell `variables` set."""
    shape = shape_of(systems)._replace(variables=variables)
    return _total(month(systems, shape), months) / systems


def options() -> str:
    """What the twenty-fourth month would cost at 100 and 1,000 systems with each change
    not made by default, and what each gives up."""
    recovery = {s: option_per_system(s, RECOVERY_OF_A_DAY, 24) for s in (100, 1000)}
    window = {s: option_per_system(s, DEDUPE_WINDOW_OF_A_DAY, 24) for s in (100, 1000)}
    return (
        "Not made by default, each priced in the twenty-fourth month: with point-in-time "
        "recovery of a day (`spanner_recovery_hours` = 24, not 48) a system costs "
        f"{_dollars(recovery[100])} at 100 systems and {_dollars(recovery[1000])} at 1,000, "
        "and an operator's mistake in a serving database found after a day, over a "
        "weekend, can no longer be undone from Spanner (BigQuery still holds every row "
        "exported, but reads within Spanner's reach miss what was deleted until it ages "
        "out); with a dedupe window of a day (RECORDLINE_DEDUPE_WINDOW_SECONDS = 86400 in "
        f"a cell's `extra_env`) {_dollars(window[100])} and {_dollars(window[1000])}: "
        "Spanner keeps 3 days of rows, not 9, reads older than two to three days are "
        "BigQuery's queries, and a copy Pub/Sub delivers more than a day after the first (its "
        "dead-letter policy gives up on a message after about 4 h 20 min of deliveries; "
        "a seek to a snapshot does not) is stored again, and with a serving tier exported "
        "again. A serving database keeps the row deletion policy it was created with (a "
        "changed window would replace it, which Terraform refuses), so only a new cell "
        "can be given it; an existing one would need a migration that shortens its "
        "retention only once no revision that reads further back can be rolled back to."
    )


def notes() -> str:
    cpu_a_push, source = capacity()
    return "\n\n".join(
        [
            f"An ingest instance billed by request costs more than one always on from "
            f"{break_even():.1f} pushes a second (1 vCPU, 1 GiB, list prices): "
            f"billing_break_even_rate in infra/terraform/variables.tf.",
            starter(),
            shapes(),
            f"A push costs an ingest instance {cpu_a_push * 1e6:.0f} µs of CPU ({source}); "
            f"a cell's instances are those that keep each at "
            f"{INGEST_TARGET_UTILISATION:.0%} of its CPU, and at least its minimum.",
            spanner_sizing(),
            target(),
            options(),
            region_plan(),
            "Not in the table: " + "; ".join(LEFT_OUT) + ".",
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

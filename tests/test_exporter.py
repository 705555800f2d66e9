"""The exporter service's configuration and process, without a cloud: each system read
from RECORDLINE_SYSTEMS with its ingest service's own settings, its metrics on its own
series, its log lines under its own name, a configuration that cannot be used refused
before anything starts (one system's entry that cannot be used left unexported, said in
the log), and the cell's throttles file read before any export starts (one the pool
cannot use said in its log, and stopping no export)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAMESPACE

from app.cell.throttles import Throttles
from app.exporter.service import Exported, ExporterService, exported_systems, system_settings
from app.ingest.schemas import Schemas, SchemaSource
from app.settings import Settings, SettingsError
from app.store.tiered.fleet import SystemExport
from app.telemetry import Telemetry, _resource
from app.telemetry.logs import CloudLoggingFormatter, TextFormatter, line_system
from tests.waiting import until

SERVING = "spanner://projects/recordline-prod/instances/recordline-serving/databases"
AVRO = json.dumps(
    {"type": "record", "name": "Order", "fields": [{"name": "total", "type": "double"}]}
)


def entry(system: str, **more: str) -> dict[str, str]:
    """A system's entry with a serving tier: a database and a dataset of its own."""
    return {
        "serving": f"{SERVING}/{system}",
        "store": f"bigquery://recordline-prod/{system}",
        **more,
    }


def settings(systems: object, **extra: str) -> Settings:
    """The pool's settings, as Terraform runs it: a cell's name and its systems."""
    return Settings.load(
        {"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": json.dumps(systems), **extra}
    )


def test_each_system_is_exported_with_its_ingest_services_own_settings() -> None:
    loaded = settings(
        {"orders": entry("orders"), "payments": entry("payments", json_topic_schema=AVRO)},
        RECORDLINE_QUERY_MAX_BYTES_BILLED=str(64 << 20),
    )
    systems = loaded.systems()
    assert list(systems) == ["orders", "payments"]
    own = system_settings(loaded, "payments", systems["payments"])
    assert own.store.url == entry("payments")["store"]
    assert own.store.serving == entry("payments")["serving"]
    assert own.schema.json_topic_schema == AVRO
    assert own.telemetry.system == "payments"
    # What is not the system's own is the process's.
    assert own.query.max_bytes_billed == 64 << 20
    assert system_settings(loaded, "orders", systems["orders"]).schema.json_topic_schema == ""


@pytest.mark.parametrize(
    "systems",
    [
        [entry("orders")],  # not an object of systems
        {"Orders": entry("orders")},  # not a system's name
    ],
)
def test_a_configuration_that_cannot_be_used_is_refused_when_read(systems: object) -> None:
    with pytest.raises(SettingsError) as refused:
        settings(systems)
    assert refused.value.var == "RECORDLINE_SYSTEMS"


@pytest.mark.parametrize(
    ("alpha", "said"),
    [
        (
            {**entry("alpha"), "srtore": "bigquery://recordline-prod/alpha"},
            "RECORDLINE_SYSTEMS: system 'alpha': 'srtore'",
        ),
        ({"serving": entry("alpha")["serving"]}, "RECORDLINE_SYSTEMS: system 'alpha': "),
        (
            {**entry("alpha"), "store": "duckdb:alpha.duckdb"},
            "RECORDLINE_SYSTEMS: system 'alpha' has a serving tier",
        ),
        (
            entry("alpha", json_topic_schema="[]"),
            "RECORDLINE_SYSTEMS: system 'alpha': 'json_topic_schema'",
        ),
        (entry("alpha", json_topic_schema='{"type": "string"}'), "RECORDLINE_JSON_TOPIC_SCHEMA"),
    ],
)
def test_a_system_whose_entry_cannot_be_used_is_left_unexported_and_said(
    alpha: dict[str, str], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    cell = settings({"alpha": alpha, "beta": entry("beta", json_topic_schema=AVRO)})
    with caplog.at_level(logging.ERROR):
        exported = exported_systems(cell, instance="test")
    # That system's fault alone, as the cell's ingest service takes it: the others export.
    assert [system.name for system in exported] == ["beta"]
    [line] = [r.getMessage() for r in caplog.records if "not exported" in r.getMessage()]
    assert line.startswith(f"system alpha is not exported: {said}")


@pytest.mark.slow
def test_nothing_to_export_is_a_usage_error_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "exporter"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("recordline exporter: RECORDLINE_SYSTEMS names no system")


def test_every_system_writes_series_of_its_own_under_this_instance() -> None:
    loaded = settings({"orders": entry("orders")}, OTEL_METRICS_EXPORTER="gcp_monitoring")
    own = system_settings(loaded, "orders", loaded.systems()["orders"])
    resource = _resource(own.telemetry, "host/rev/42/abcd")
    # generic_task, as the alerts read it: the system as its namespace, this process
    # as its task; never a VM's series (what a worker pool looks like to the detector).
    assert resource.attributes[SERVICE_NAMESPACE] == "orders"
    assert resource.attributes[SERVICE_INSTANCE_ID] == "host/rev/42/abcd"
    assert "cloud.platform" not in resource.attributes


def test_a_line_about_a_system_carries_its_name() -> None:
    record = logging.LogRecord("app.x", logging.WARNING, __file__, 1, "export paused", (), None)
    context = contextvars.copy_context()
    context.run(line_system.set, "orders")
    line = json.loads(context.run(CloudLoggingFormatter("p", None).format, record))
    assert line["logging.googleapis.com/labels"] == {"system": "orders"}
    assert context.run(TextFormatter().format, record).startswith("[orders] ")
    # Outside a system's tasks: the process's own label, if it has one.
    line = json.loads(CloudLoggingFormatter("p", "recordline").format(record))
    assert line["logging.googleapis.com/labels"] == {"system": "recordline"}


class Export:
    """A system's export that fails to start while `exports.failing` says so."""

    def __init__(self, exports: Exports) -> None:
        self.exports = exports
        self.started = False
        self.closed = False

    async def start(self) -> None:
        self.exports.labels.append(line_system.get(None))
        if self.exports.failing:
            self.exports.failing -= 1
            raise RuntimeError("injected: no credentials")
        self.started = True

    async def close(self) -> None:
        self.closed = True


class Exports:
    """Every export a system opened, the first `failing` of which fail to start."""

    def __init__(self, failing: int) -> None:
        self.failing = failing
        self.opened: list[Export] = []
        self.labels: list[str | None] = []  # the log label each start ran under

    def open(self) -> SystemExport:
        self.opened.append(Export(self))
        return self.opened[-1]  # type: ignore[return-value]


class NoSchemas:
    async def revision(self, name: str, revision_id: str) -> object:
        raise AssertionError("no schema is fetched here")

    async def close(self) -> None:
        pass


@pytest.mark.slow
async def test_a_system_whose_start_fails_is_started_again_and_its_restart_counted() -> None:
    exports = Exports(failing=1)
    telemetry = Telemetry()
    source: SchemaSource = NoSchemas()  # type: ignore[assignment]
    system = Exported("orders", exports.open, telemetry, Schemas(source, timeout=1.0))
    service = ExporterService([system], grace_seconds=2.0)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    # Started again after a pause of 0.5 to 1 s (a minute at most).
    await until(lambda: [e.started for e in exports.opened] == [False, True], what="a start")
    assert exports.opened[0].closed  # what the failed start opened is closed
    assert telemetry.metrics.loop_restarts == {"export start": 1}
    assert exports.labels == ["orders", "orders"]  # its lines carry its name
    stop.set()
    await asyncio.wait_for(running, timeout=10)
    assert exports.opened[1].closed


# --- the throttles' file, as the cell's ingest service reads it --------------------------


class Paced:
    """A system's export that says, as it starts, what throttles the pool had read."""

    def __init__(self, throttles: Throttles) -> None:
        self.throttles = throttles
        self.seen: list[dict[str, str]] = []
        self.closed = False

    def open(self) -> SystemExport:
        return self  # type: ignore[return-value]

    async def start(self) -> None:
        self.seen.append(self.throttles.in_force())

    async def close(self) -> None:
        self.closed = True


SLOW = {"by": "oncall@example.com", "reason": "orders' export holds the instance at 90% CPU"}


def exporting(throttles: Throttles) -> tuple[ExporterService, Paced]:
    export = Paced(throttles)
    source: SchemaSource = NoSchemas()  # type: ignore[assignment]
    system = Exported("orders", export.open, Telemetry(), Schemas(source, timeout=1.0))
    return ExporterService([system], grace_seconds=2.0, throttles=throttles), export


async def test_the_pool_reads_the_throttles_before_any_export_starts_and_again_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    path.write_text(json.dumps({"orders": {"export_rows_per_second": 50, **SLOW}}))
    throttles = Throttles(str(path), ["orders"], every=0.02)
    service, export = exporting(throttles)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    await until(lambda: export.seen, what="the export started")
    assert list(export.seen[0]) == ["orders"]  # paced from its first batch
    # Lifted in the file: taken up at a read after, with no restart.
    path.write_text("{}")
    await until(lambda: not throttles.in_force(), what="the throttle lifted")
    stop.set()
    await asyncio.wait_for(running, timeout=10)
    assert export.closed


@pytest.mark.parametrize(
    "what",
    ["a read that never returns", "nested past the decoder", "larger than a secret", "bad entry"],
)
async def test_a_throttles_file_the_pool_cannot_use_is_said_and_stops_no_export(
    tmp_path: Path, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "throttles.json"
    if what == "a read that never returns":
        # A FIFO no one writes: its open never returns, as a mounted secret's read whose
        # Secret Manager does not answer.
        os.mkfifo(path)
    elif what == "nested past the decoder":
        path.write_text("[" * 5000 + "]" * 5000)
    elif what == "larger than a secret":
        path.write_text(json.dumps({"orders": {"export_rows_per_second": 5, **SLOW}}) + " " * 65536)
    else:
        path.write_text(json.dumps({"orders": {"export_rows_per_second": 0, **SLOW}}))
    caplog.set_level(logging.WARNING, logger="app.cell.throttles")
    throttles = Throttles(str(path), ["orders"], deadline=0.1)
    service, export = exporting(throttles)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    try:
        await until(lambda: export.seen, what="the export started")
        assert export.seen == [{}]
        (problem,) = throttles.problems()
        # Said where the pool says things: its log (a worker pool answers no probe).
        said = re.split(r" \(|;", problem)[0]
        assert any(said in r.getMessage() for r in caplog.records), problem
        stop.set()
        await asyncio.wait_for(running, timeout=10)
    finally:
        if what == "a read that never returns":
            # Let the read's thread go.
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert export.closed

"""The exporter service's configuration and process, without a cloud: each system read
from RECORDLINE_EXPORT_SYSTEMS with its ingest service's own settings, its metrics on
its own series, its log lines under its own name, and a configuration that cannot be
used refused before anything starts."""

from __future__ import annotations

import contextvars
import json
import logging
import subprocess
import sys

import pytest
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAMESPACE

from app.exporter.service import exported_systems, system_settings
from app.settings import ExportedSystem, Settings, SettingsError
from app.telemetry import _resource
from app.telemetry.logs import CloudLoggingFormatter, TextFormatter, line_system

ORDERS = {
    "serving": "spanner://projects/recordline-prod/instances/recordline-serving/databases/orders",
    "store": "bigquery://recordline-prod/orders",
}
AVRO = json.dumps(
    {"type": "record", "name": "Order", "fields": [{"name": "total", "type": "double"}]}
)


def settings(systems: object, **extra: str) -> Settings:
    return Settings.load({"RECORDLINE_EXPORT_SYSTEMS": json.dumps(systems), **extra})


def test_each_system_is_exported_with_its_ingest_services_own_settings() -> None:
    loaded = settings(
        {"orders": ORDERS, "payments": {**ORDERS, "json_topic_schema": AVRO}},
        RECORDLINE_QUERY_MAX_BYTES_BILLED=str(64 << 20),
    )
    systems = loaded.exporter.exported()
    assert list(systems) == ["orders", "payments"]
    own = system_settings(loaded, "payments", systems["payments"])
    assert own.store.url == ORDERS["store"]
    assert own.store.serving == ORDERS["serving"]
    assert own.schema.json_topic_schema == AVRO
    assert own.telemetry.system == "payments"
    # What is not the system's own is the process's.
    assert own.query.max_bytes_billed == 64 << 20
    assert system_settings(loaded, "orders", systems["orders"]).schema.json_topic_schema == ""


@pytest.mark.parametrize(
    "systems",
    [
        [ORDERS],  # not an object of systems
        {"Orders": ORDERS},  # not a system's name
        {"orders": {**ORDERS, "srtore": "bigquery://recordline-prod/orders"}},  # misspelt
        {"orders": {"serving": ORDERS["serving"]}},  # no store
        {"orders": {**ORDERS, "store": "duckdb:orders.duckdb"}},
        {"orders": {**ORDERS, "json_topic_schema": "[]"}},
    ],
)
def test_a_configuration_that_cannot_be_used_is_refused_when_read(systems: object) -> None:
    with pytest.raises(SettingsError) as refused:
        settings(systems)
    assert refused.value.var == "RECORDLINE_EXPORT_SYSTEMS"


def test_a_declared_schema_that_is_none_stops_the_process_before_it_starts() -> None:
    loaded = settings({"orders": {**ORDERS, "json_topic_schema": '{"type": "string"}'}})
    with pytest.raises(SettingsError) as refused:
        exported_systems(loaded, instance="test")
    assert refused.value.var == "RECORDLINE_JSON_TOPIC_SCHEMA"


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
    assert line.startswith("recordline exporter: RECORDLINE_EXPORT_SYSTEMS names no system")


def test_every_system_writes_series_of_its_own_under_this_instance() -> None:
    loaded = settings({"orders": ORDERS}, OTEL_METRICS_EXPORTER="gcp_monitoring")
    own = system_settings(loaded, "orders", ExportedSystem(**ORDERS))
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

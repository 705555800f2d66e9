"""Log lines Cloud Logging files under their trace, and a shutdown that never hangs."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from litestar.testing import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from app.asgi import create_app
from app.http.head import Recordline
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from app.telemetry import CloudLoggingFormatter, Telemetry, google_project
from tests.conftest import envelope, settings
from tests.fakes import FaultyStore
from tests.telemetry.conftest import RECORD, Observed

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def logged() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """JSON lines as configure_logging prints them, parsed on demand."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(CloudLoggingFormatter(project="demo"))
    logger = logging.getLogger("recordline")
    logger.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)


def test_rejection_is_logged_with_message_id_reason_and_trace(
    client: TestClient[Recordline], observed: Observed, logged: Callable[[], list[dict[str, Any]]]
) -> None:
    client.post("/pubsub/push", json=envelope({"id": True}), headers={"traceparent": TRACEPARENT})
    (server,) = observed.finished("POST /pubsub/push")
    (line,) = [x for x in logged() if x.get("message_id") == "m-1"]
    assert line["severity"] == "WARNING"
    assert line["reason"] == "id"
    assert line["logging.googleapis.com/trace"] == f"projects/demo/traces/{TRACE_ID}"
    assert line["logging.googleapis.com/spanId"] == f"{server.context.span_id:016x}"
    assert line["logging.googleapis.com/trace_sampled"] is True


def test_a_rejection_the_caller_did_not_sample_is_logged_under_the_callers_span(
    client: TestClient[Recordline], observed: Observed, logged: Callable[[], list[dict[str, Any]]]
) -> None:
    # No server span: the line belongs to the caller's span, as Cloud Run's
    # own request log line does.
    unsampled = f"00-{TRACE_ID}-b7ad6b7169203331-00"
    client.post("/pubsub/push", json=envelope({"id": True}), headers={"traceparent": unsampled})
    assert observed.finished("POST /pubsub/push") == []
    (line,) = [x for x in logged() if x.get("message_id") == "m-1"]
    assert line["logging.googleapis.com/trace"] == f"projects/demo/traces/{TRACE_ID}"
    assert line["logging.googleapis.com/spanId"] == "b7ad6b7169203331"
    assert line["logging.googleapis.com/trace_sampled"] is False


def test_503_is_logged_with_message_id_and_cause(
    client: TestClient[Recordline], store: FaultyStore, logged: Callable[[], list[dict[str, Any]]]
) -> None:
    store.failing = True
    client.post("/pubsub/push", json=envelope(RECORD), headers={"traceparent": TRACEPARENT})
    (line,) = [x for x in logged() if x.get("message_id") == "m-1"]
    assert line["severity"] == "WARNING"
    assert line["reason"] == "store"
    assert line["logging.googleapis.com/trace"] == f"projects/demo/traces/{TRACE_ID}"


@pytest.mark.slow
def test_a_stored_push_logs_nothing_at_info(
    client: TestClient[Recordline], logged: Callable[[], list[dict[str, Any]]]
) -> None:
    client.post("/pubsub/push", json=envelope(RECORD))
    assert [x for x in logged() if x.get("message_id")] == []


def test_without_a_project_the_trace_field_is_the_bare_id() -> None:
    formatter = CloudLoggingFormatter(project=None)
    record = logging.LogRecord("recordline", logging.INFO, __file__, 1, "hello", None, None)
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("s") as span:
        entry = json.loads(formatter.format(record))
    assert entry["logging.googleapis.com/trace"] == f"{span.get_span_context().trace_id:032x}"
    assert entry["message"] == "hello"


def test_project_comes_from_the_setting_or_the_bigquery_store() -> None:
    assert google_project(Settings.load({"GOOGLE_CLOUD_PROJECT": "p1"})) == "p1"
    assert (
        google_project(Settings.load({"RECORDLINE_STORE": "bigquery://proj-2/records"})) == "proj-2"
    )
    assert google_project(Settings.load({"RECORDLINE_STORE": "memory:"})) is None


class _HangingExporter(SpanExporter):
    """An exporter whose backend never answers, like Cloud Trace without a network."""

    def __init__(self) -> None:
        self.stuck = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.stuck.wait(60)
        return SpanExportResult.FAILURE


@pytest.mark.slow
def test_shutdown_is_bounded_when_the_exporter_hangs() -> None:
    exporter = _HangingExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    app = create_app(settings(), store=DuckDBStore(":memory:"), telemetry=telemetry)
    started = time.monotonic()
    with TestClient(app) as client:
        assert client.post("/pubsub/push", json=envelope(RECORD)).status_code == 204
    assert time.monotonic() - started < 6
    exporter.stuck.set()

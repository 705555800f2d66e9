"""Each system's access record is routed into its own dataset: the sink selects the lines
the service writes on the access log, labelled with that system's name, and its writer
may write that dataset and nothing else."""

from __future__ import annotations

import io
import json
import logging

from app.http.access import log as access_log
from app.telemetry.logs import LABELS_FIELD, CloudLoggingFormatter
from tests.infra.test_terraform import _resources


def test_the_sink_selects_the_lines_the_service_writes_for_its_system() -> None:
    sink = _resources("google_logging_project_sink")["access"]
    clauses = sink["filter"].removeprefix("${join(").split(",")
    text = " ".join(clauses)
    # What a system's access line is, as the service's formatter writes it.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter(project="p", system="orders"))
    access_log.addHandler(handler)
    try:
        access_log.info("read", extra={"fields": {"access": {"action": "read"}}})
    finally:
        access_log.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert f'jsonPayload.logger=\\"{line["logger"]}\\"' in text
    (label,) = line[LABELS_FIELD]
    assert f'labels.{label}=\\"${{var.service_name}}\\"' in text
    assert line[LABELS_FIELD][label] == "orders"
    assert sink["unique_writer_identity"] is True
    assert sink["destination"].endswith("datasets/${google_bigquery_dataset.recordline.dataset_id}")


def test_the_sinks_writer_edits_its_systems_dataset_alone() -> None:
    grant = _resources("google_bigquery_dataset_iam_member")["access_sink_writes_dataset"]
    assert grant["member"] == "${google_logging_project_sink.access.writer_identity}"
    assert grant["dataset_id"] == "${google_bigquery_dataset.recordline.dataset_id}"
    assert grant["role"] == "roles/bigquery.dataEditor"

"""Logs: JSON lines in Cloud Logging's format, or text on a terminal.

Cloud Run ships stdout to Cloud Logging, which reads `severity`, `message`,
`httpRequest` and the `logging.googleapis.com/*` trace fields from each JSON
line; with those, the Logs Explorer shows a line under its trace and Cloud
Trace shows the trace's lines.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import msgspec

from app.telemetry.traces import current_caller

_encode = msgspec.json.encode

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
LABELS_FIELD = "logging.googleapis.com/labels"

# The system a line is about where one process works for several (the exporter
# service sets it for each system's tasks, which inherit it); unset, the process's
# own (RECORDLINE_SYSTEM).
line_system: ContextVar[str | None] = ContextVar("line_system", default=None)


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line with the fields Cloud Logging reads.

    Structured fields travel in `extra={"fields": {...}}`. The trace is the
    span current where the line was logged: the request's server span in a
    handler, the flush span in the batcher.
    """

    def __init__(self, project: str | None = None, system: str | None = None) -> None:
        super().__init__()
        # Fifty systems may log to one project: each line names its own.
        self._labels = {"system": system} if system else None
        # Cloud Logging links a line to Cloud Trace only through the full
        # resource name; a bare trace id still groups a request's lines.
        self._trace_prefix = f"projects/{project}/traces/" if project else ""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        current = line_system.get()
        if current is not None:
            entry[LABELS_FIELD] = {"system": current}
        elif self._labels:
            entry[LABELS_FIELD] = self._labels
        if record.exc_info:
            entry["message"] += "\n" + self.formatException(record.exc_info)
        span = current_caller()
        if span is not None:
            entry[TRACE_FIELD] = f"{self._trace_prefix}{span.trace_id:032x}"
            entry[SPAN_FIELD] = f"{span.span_id:016x}"
            entry[SAMPLED_FIELD] = span.trace_flags.sampled
        for key, value in getattr(record, "fields", {}).items():
            entry[key] = value
        return _encode(entry).decode()


class TextFormatter(logging.Formatter):
    """Lines for a terminal, each led by its system where a process works for several."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        current = line_system.get()
        text = super().format(record)
        return text if current is None else f"[{current}] {text}"


def configure_logging(
    level: str, fmt: str, *, project: str | None = None, system: str | None = None
) -> None:
    text = fmt == "text" or (fmt == "auto" and sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(TextFormatter() if text else CloudLoggingFormatter(project, system))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

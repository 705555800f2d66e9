"""Logs: JSON lines in Cloud Logging's format, or text on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec

_encode = msgspec.json.encode


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line with the fields Cloud Logging reads."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        if record.exc_info:
            entry["message"] += "\n" + self.formatException(record.exc_info)
        for key, value in getattr(record, "fields", {}).items():
            entry[key] = value
        return _encode(entry).decode()


def configure_logging(level: str, fmt: str) -> None:
    text = fmt == "text" or (fmt == "auto" and sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        if text
        else CloudLoggingFormatter()
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

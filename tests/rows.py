"""Rows for tests: what a test row leaves out (the stored fields it leaves at their
defaults), and a stored row as the API shows it, of what a test sets."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from app.query.service import RecordView, RejectionView
from app.records import Record, Rejection, columns

# When a view built here was published and stored, unless it says.
VIEWED_AT = datetime(2024, 1, 1, tzinfo=UTC)


def defaulted(row: Record | Rejection) -> set[str]:
    """The stored fields of `row` (its table's columns) that hold their default: a row
    built to show every field round trips must leave none, so that a field added to
    the rows fails such a test until the test, and then every store, fills it."""
    stored = {c.name for c in columns(type(row))}
    return {
        field.name
        for field in msgspec.structs.fields(row)
        if field.name in stored and getattr(row, field.name) == field.default
    }


def shown_record(
    data: bytes,
    *,
    attributes: bytes = b"{}",
    at: datetime = VIEWED_AT,
    message_id: str = "m",
    record_id: str = "r",
) -> RecordView:
    """A record as a read shows it: its `data` and `attributes` (JSON), published and
    stored `at`, none of its optional fields set."""
    return RecordView(
        message_id=message_id,
        id=record_id,
        timestamp=None,
        data=msgspec.Raw(data),
        attributes=msgspec.Raw(attributes),
        publish_time=at,
        ingest_time=at,
        subscription=None,
        delivery_attempt=None,
        trace_id=None,
        schema=None,
    )


def shown_rejection(
    data: bytes, *, reason: str = "r", attributes: bytes = b"{}", at: datetime = VIEWED_AT
) -> RejectionView:
    """A rejection as a read shows it: its payload `data` as received, and why."""
    return RejectionView(
        message_id="m",
        reason=reason,
        data=data,
        attributes=msgspec.Raw(attributes),
        publish_time=at,
        ingest_time=at,
        subscription=None,
        delivery_attempt=None,
        schema=None,
    )

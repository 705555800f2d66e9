"""What a test row leaves out: the stored fields it leaves at their defaults."""

from __future__ import annotations

import msgspec

from app.records import Record, Rejection, columns


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

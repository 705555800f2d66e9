"""The publisher's own message shape: where a decoded payload keeps its id and event time.

`RECORDLINE_ID_FIELD` and `RECORDLINE_TIME_FIELD` are field paths (`order_id`,
`meta.created_at`) into the payload as decoded: JSON, or a topic schema's
Avro or Protocol Buffers message turned into the same tree of objects. A
payload that does not fit is rejected with a reason naming the path and the
setting, so the fix is plain: the publisher's, or the mapping's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from app.records import (
    MAX_MICROS,
    MIN_MICROS,
    TIME_RANGE,
    AwareDatetime,
    TimeOutOfRange,
    micros,
    unaddressable,
)


class Invalid(ValueError):
    """The payload cannot become a record; the message says which rule it broke."""


def contract_id(value: str | int) -> str:
    """The contract's `id`: text as it is, an integer as its digits, as under a mapping."""
    return value if isinstance(value, str) else str(value)


def _time_text(text: str) -> datetime:
    return msgspec.convert(text, AwareDatetime)


class FieldPaths:
    """Reads the record id and event time at their field paths."""

    def __init__(self, *, id_field: str, time_field: str) -> None:
        self.id_field = id_field
        self.time_field = time_field
        self._id_path = tuple(id_field.split("."))
        self._time_path = tuple(time_field.split("."))

    @property
    def is_contract(self) -> bool:
        """Whether these are the `{"id", "timestamp", "data"}` contract's own paths."""
        return self.id_field == "id" and self.time_field == "timestamp"

    def record_id(self, payload: Any) -> str:
        where = f"`$.{self.id_field}` (the record id, RECORDLINE_ID_FIELD)"
        found, value = _lookup(payload, self._id_path, where)
        if not found or value is None:
            raise Invalid(f"{where}: missing")
        # An integer id (Avro `long`, a JSON number) is kept as its digits; a
        # protobuf int64 arrives as those digits already (its JSON mapping).
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise Invalid(f"{where}: expected text or an integer, got {_kind(value)}")
        problem = unaddressable(value)
        if problem is not None:
            raise Invalid(f"{where}: {problem}")
        return value

    def event_time(self, payload: Any) -> int | None:
        """The event time in µs since the epoch, or None when the payload has none."""
        where = f"`$.{self.time_field}` (the event time, RECORDLINE_TIME_FIELD)"
        found, value = _lookup(payload, self._time_path, where)
        if not found or value is None:
            return None
        try:
            return _event_time(where, value)
        except TimeOutOfRange as exc:
            raise Invalid(f"{where}: {exc}") from None


def _event_time(where: str, value: Any) -> int:
    match value:
        case datetime() if value.tzinfo is not None:
            return micros(value)  # Avro timestamp-millis/-micros, decoded
        case datetime():
            raise Invalid(f"{where}: a local time without an offset (Avro local-timestamp)")
        case str():
            try:
                return micros(_time_text(value))
            except msgspec.ValidationError:
                # Its length, not its text: a reason names the rule and the field, never
                # a value (a reader may be one who must not see it).
                raise Invalid(
                    f"{where}: not an RFC 3339 time with an offset ({len(value)} characters)"
                ) from None
        case {"seconds": seconds, **rest} if set(rest) <= {"nanos"}:
            return _timestamp(where, seconds, rest.get("nanos", 0))
        case _:
            raise Invalid(
                f"{where}: expected RFC 3339 text, an Avro timestamp or a protobuf "
                f"Timestamp, got {_kind(value)}"
            )


def _timestamp(where: str, seconds: Any, nanos: Any) -> int:
    """A protobuf Timestamp's fields (int64 seconds arrive as digits in its JSON mapping)."""
    try:
        whole = int(seconds)
        fraction = int(nanos)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        raise Invalid(f"{where}: a Timestamp whose seconds or nanos are not integers") from None
    us = whole * 1_000_000 + fraction // 1000
    if not (MIN_MICROS <= us <= MAX_MICROS and 0 <= fraction < 1_000_000_000):
        raise Invalid(f"{where}: a Timestamp outside {TIME_RANGE}")
    return us


def _lookup(payload: Any, path: tuple[str, ...], where: str) -> tuple[bool, Any]:
    value = payload
    for depth, name in enumerate(path):
        if not isinstance(value, dict):
            above = f"`$.{'.'.join(path[:depth])}`" if depth else "the payload"
            raise Invalid(f"{where}: {above} is {_kind(value)}, not an object")
        if name not in value:
            return False, None
        value = value[name]
    return True, value


def _kind(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "text"
        case list():
            return "an array"
        case dict():
            return "an object"
        case bytes():
            return "bytes"
        case _:
            return type(value).__name__

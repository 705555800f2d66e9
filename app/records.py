"""The stored rows: the one definition every schema is derived from.

`Record` and `Rejection` are the rows of the `records` and `rejected` tables.
The DuckDB DDL, the Storage Write API protobuf descriptor and the BigQuery
table schemas (JSON, read by Terraform) are all computed from these Structs by
`columns()`, so a column is added in exactly one place. A new column goes at
the end of its Struct and is nullable: tables made before it get it appended.
"""

from __future__ import annotations

import argparse
import enum
import functools
import inspect
import re
import typing
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from msgspec import Meta


class Kind(enum.StrEnum):
    """A column's type, named as BigQuery names it."""

    STRING = "STRING"
    INT64 = "INT64"
    TIMESTAMP = "TIMESTAMP"
    JSON = "JSON"
    BYTES = "BYTES"


# Timestamps travel as int microseconds since the Unix epoch (UTC) from the push
# decoder to the store: it is what the Storage Write API takes for TIMESTAMP,
# what DuckDB stores, and it costs nothing to compare or order.
Micros = Annotated[int, Meta(extra={"kind": Kind.TIMESTAMP})]

# The longest record id and message id stored, and so the longest one looked up
# or replayed: every id the push path takes round-trips. Pub/Sub's message ids
# are ~16 digits, so a longer message id is no push at all (400, nothing stored
# or acknowledged: Pub/Sub would keep the message, then dead-letter it under a
# fresh id); a longer record id is a producer bug, kept as a rejection. Both
# bloat an index, and 1024 characters of UTF-8 (4 KiB at most) stay well within
# Spanner's 8 KiB keys.
MAX_ID_LENGTH = 1024


# unaddressable()'s rule as a JSON Schema (and msgspec) pattern, which is searched,
# not matched: a character other than `/` somewhere. Lengths are said apart.
ID_PATTERN = "[^/]"


def unaddressable(value: str) -> str | None:
    """Why `value` cannot be an id (empty, too long, or no path can name it), or None.

    A look-up names its id in a path (`/v1/records/{id}`), percent-encoded. An id of
    slashes only (`/`, `//`) cannot be one: servers read `%2F` as `/`, and the
    router drops a path's trailing slashes, so it names the list instead.
    """
    if not value:
        return "empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{len(value)} characters, more than {MAX_ID_LENGTH}"
    if not value.strip("/"):
        return "only slashes, which no path can name"
    return None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A time that says which offset it is in: a naive one would be read in the
# server's zone, which a publisher cannot know.
AwareDatetime = Annotated[datetime, Meta(tz=True)]
_ONE_MICROSECOND = timedelta(microseconds=1)

# The attribute that marks a synthetic canary (Cloud Scheduler publishes one a
# minute, infra/terraform/modules/system/canary.tf; `recordline dev --canary` too).
CANARY_ATTRIBUTE = "recordline-canary"

# The times every store holds and every reader represents: years 1 to 9999 in
# UTC (BigQuery's and Spanner's TIMESTAMP range, and Python's datetime). RFC 3339
# text with an offset names times outside it (`9999-12-31T23:59:59-14:00` is in
# year 10000 once in UTC), so every time is checked as it becomes microseconds.
MIN_MICROS = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_MICROS = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
TIME_RANGE = "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"
DAY_MICROS = 86_400_000_000
# Every copy of a message is stored after Pub/Sub published it; this covers the
# clocks of Pub/Sub and of this service disagreeing (NTP keeps them within
# milliseconds). A publish time later than its ingest time by more is no
# publish time at all, and would defeat the deduplication that relies on it.
CLOCK_SKEW_MICROS = 60_000_000


class TimeOutOfRange(ValueError):
    """A time outside the years 1 to 9999 once in UTC: no store can hold it."""


def micros(moment: datetime) -> int:
    """`moment` as the stores keep time: microseconds since the Unix epoch.

    Raises TimeOutOfRange for a time no store holds, so no such time is ever stored.
    """
    us = (moment - EPOCH) // _ONE_MICROSECOND
    if not MIN_MICROS <= us <= MAX_MICROS:
        raise TimeOutOfRange(f"{moment.isoformat()} is outside {TIME_RANGE} once in UTC")
    return us


def moment(us: int) -> datetime:
    """The UTC datetime of `us` microseconds since the Unix epoch (`micros`' inverse)."""
    return EPOCH + timedelta(microseconds=us)


def in_range(when: datetime) -> datetime:
    """`when` in UTC, a time outside the years every store holds as the first or the
    last one they hold (a bound beyond them reads from the start, or to the end, as
    the API's `since` and `until` do): `0001-01-01T00:00:00+01:00` is the first."""
    try:
        return moment(micros(when))
    except TimeOutOfRange:
        ahead = (when.utcoffset() or timedelta(0)) > timedelta(0)
        return moment(MIN_MICROS if ahead else MAX_MICROS)


def ago(seconds: float, now: datetime) -> datetime:
    """`seconds` before `now`; longer ago than every store reaches back: the first
    time they hold."""
    before = micros(now) - seconds * 1_000_000
    return moment(MIN_MICROS if before < MIN_MICROS else int(before))


# The two forms every `since` and `until` takes, in the API and on the command line
# alike: RFC 3339's date-time (its section 5.6, a space allowed for the T as its 5.6
# note allows), whatever its numbers, and how long ago.
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
AGO_PATTERN = r"^[0-9]+(\.[0-9]+)?[smhd]$"
TIME_FORMS = (
    "an RFC 3339 time with an offset (2024-04-27T12:00:00Z) or how long ago (30s, 15m, 2h, 7d)"
)
_RFC3339 = re.compile(RFC3339_PATTERN)
_AGO = re.compile(AGO_PATTERN)
_AGO_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_decode_time = msgspec.json.Decoder(AwareDatetime).decode


class NotATime(argparse.ArgumentTypeError, ValueError):
    """Text that names a time in neither form; its message says why, naming both. An
    argparse type error too: a command takes `time_or_ago` as an argument's type, and
    refuses such text in one line (exit 2)."""


def time_or_ago(text: str, *, now: datetime | None = None) -> datetime:
    """The time `text` names: an RFC 3339 time with an offset, or how long before `now`
    (30s, 15m, 2h, 7d). Beyond the years every store holds, the first or the last one
    (`in_range`), as a bound beyond them reads from the start or to the end."""
    if _AGO.fullmatch(text):
        seconds = float(text[:-1]) * _AGO_SECONDS[text[-1]]
        return ago(seconds, now or datetime.now(UTC))
    if not _RFC3339.fullmatch(text):
        raise NotATime(f"{text[:80]!r} is not {TIME_FORMS}")
    try:
        when = _decode_time(msgspec.json.encode(text))
    except msgspec.DecodeError:
        # Written right, naming no time: year 0, month 13, February 30…
        raise NotATime(f"{text!r} names no date and time in {TIME_RANGE}") from None
    return in_range(when)


def rfc3339(when: datetime) -> str:
    """`when` as RFC 3339 text, UTC written `Z`, as the API writes every time."""
    return when.isoformat().replace("+00:00", "Z")


def rfc3339_micros(us: int) -> str:
    """`us` microseconds since the epoch as RFC 3339 text to the microsecond, UTC written
    `Z`: every year a store holds in four digits, so that such times sort as text."""
    d = moment(us)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        f".{d.microsecond:06d}Z"
    )


# JSON columns hold JSON text exactly as the publisher sent it: the payload's
# `data` is passed through without being decoded and encoded again.
JsonText = Annotated[str, Meta(extra={"kind": Kind.JSON})]


def _doc(text: str) -> Meta:
    return Meta(description=text)


# Marks a field a row carries to the store but that is no column of its table.
NOT_STORED = Meta(extra={"stored": False})


class Row(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Base for stored rows: immutable once built, and not tracked by the garbage
    collector (`gc=False`): a frozen row of plain values can be in no cycle, and a
    reader far behind makes thousands of them at once."""


# What every stored row says about its delivery, declared once for both tables.
MessageId = Annotated[str, _doc("Pub/Sub message id; the deduplication key")]
PublishTime = Annotated[Micros, _doc("When Pub/Sub accepted the message")]
IngestTime = Annotated[Micros, _doc("When Recordline stored the row; the `since` axis")]
Attributes = Annotated[JsonText, _doc("Pub/Sub message attributes, a JSON object")]
Subscription = Annotated[str | None, _doc("Full name of the delivering subscription")]
DeliveryAttempt = Annotated[
    int | None, _doc("Delivery attempt, set when the subscription has a dead-letter policy")
]
TraceId = Annotated[str | None, _doc("Trace that wrote the row (32 hex digits)")]
RevisionName = Annotated[
    str | None,
    _doc(
        "Topic schema revision the message named and was decoded with, "
        "`projects/P/schemas/S@REVISION`; null for JSON without a schema"
    ),
]


class Record(Row, frozen=True):
    """One accepted message: a row of `records`."""

    message_id: MessageId
    publish_time: PublishTime
    ingest_time: IngestTime
    id: Annotated[str, _doc("The record's own id, from the payload")]
    timestamp: Annotated[Micros | None, _doc("The record's event time, from the payload")] = None
    data: Annotated[JsonText, _doc("The payload's `data`, any JSON value")] = "null"
    attributes: Attributes = "{}"
    subscription: Subscription = None
    delivery_attempt: DeliveryAttempt = None
    trace_id: TraceId = None
    schema: RevisionName = None
    # The message data as received. Not stored with the record: it is there for
    # a store that refuses the row and keeps it as a rejection, so that a replay
    # decodes the very bytes the publisher sent, whatever their encoding.
    received: Annotated[bytes | None, NOT_STORED] = None


class Rejection(Row, frozen=True):
    """One message whose payload was invalid: a row of `rejected`.

    The raw bytes are kept so that nothing acknowledged is ever lost: a fixed
    consumer can replay them.
    """

    message_id: MessageId
    publish_time: PublishTime
    ingest_time: IngestTime
    data: Annotated[bytes, _doc("The message data exactly as received")] = b""
    reason: Annotated[str, _doc("Why the payload was rejected, naming the field")] = ""
    attributes: Attributes = "{}"
    subscription: Subscription = None
    delivery_attempt: DeliveryAttempt = None
    trace_id: TraceId = None
    schema: RevisionName = None


# The fields both rows declare alike (their columns keep each table's order; both
# also have a `data`, which means the payload in one and the raw bytes in the other).
DELIVERY_FIELDS = (
    "message_id",
    "publish_time",
    "ingest_time",
    "attributes",
    "subscription",
    "delivery_attempt",
    "trace_id",
    "schema",
)


def delivery(row: Row) -> dict[str, Any]:
    """The delivery fields of `row`, to build the other kind of row from it."""
    return {name: getattr(row, name) for name in DELIVERY_FIELDS}


class _Payload(msgspec.Struct, omit_defaults=True):
    id: str
    data: msgspec.Raw
    timestamp: str | None = None


def rejected_record(record: Record, reason: str) -> Rejection:
    """The rejection stored for a record a store would not take, saying `reason`.

    It keeps the message data as the record received it, so that a replay
    decodes it as a push would, whatever its encoding (a topic schema's, the
    publisher's own shape). A record built without it has its payload rebuilt
    in the default contract: replaying that publishes the same id, event time
    and data.
    """
    if record.received is not None:
        return Rejection(**delivery(record), data=record.received, reason=reason)
    timestamp = None if record.timestamp is None else rfc3339(moment(record.timestamp))
    payload = _Payload(id=record.id, data=msgspec.Raw(record.data.encode()), timestamp=timestamp)
    return Rejection(**delivery(record), data=msgspec.json.encode(payload), reason=reason)


R = typing.TypeVar("R", bound=Row)


def row_of(row_type: type[R], values: Sequence[Any]) -> R:
    """A row from its column values, in column order (as both stores select them)."""
    names = column_names(row_type)
    if len(values) != len(names):
        raise ValueError(f"{row_type.__name__} has {len(names)} columns, not {len(values)}")
    if _by_position(row_type):
        return row_type(*values)
    return row_type(**dict(zip(names, values, strict=True)))


@functools.cache
def _by_position(row_type: type[Row]) -> bool:
    """Whether a row's columns are its first fields, in order, none keyword-only: then it
    is made from them by position, a fifth of the time (a reader far behind makes one a
    row)."""
    leading = list(inspect.signature(row_type).parameters.values())[: len(column_names(row_type))]
    return [(p.name, p.kind) for p in leading] == [
        (name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in column_names(row_type)
    ]


@functools.cache
def column_names(row_type: type[Row]) -> tuple[str, ...]:
    return tuple(c.name for c in columns(row_type))


class Column(msgspec.Struct, frozen=True):
    name: str
    kind: Kind
    nullable: bool
    description: str


_PLAIN_KINDS: dict[type, Kind] = {str: Kind.STRING, int: Kind.INT64, bytes: Kind.BYTES}


def _stored(hint: Any) -> bool:
    return NOT_STORED not in typing.get_args(hint)[1:]


def _column(name: str, hint: Any) -> Column:
    nullable = False
    kind: Kind | None = None
    description = ""
    # Peel Annotated layers (a field may carry a description around an alias
    # that carries the kind) and an `X | None` union, collecting what each says.
    while True:
        if typing.get_origin(hint) is Annotated:
            base, *metas = typing.get_args(hint)
            for meta in metas:
                if isinstance(meta, Meta):
                    description = description or (meta.description or "")
                    kind = kind or (meta.extra or {}).get("kind")
            hint = base
            continue
        args = typing.get_args(hint)
        if type(None) in args:
            nullable = True
            (hint,) = [a for a in args if a is not type(None)]
            continue
        break
    kind = kind or _PLAIN_KINDS[hint]
    return Column(name=name, kind=kind, nullable=nullable, description=description)


@functools.cache
def columns(row_type: type[Row]) -> tuple[Column, ...]:
    """The table's columns, in declaration order (fields marked NOT_STORED are none)."""
    hints = typing.get_type_hints(row_type, include_extras=True)
    return tuple(
        _column(name, hints[name]) for name in row_type.__struct_fields__ if _stored(hints[name])
    )


TABLES: dict[str, type[Row]] = {"records": Record, "rejected": Rejection}


class ExportWatermark(Row, frozen=True):
    """How far the serving tier's export to BigQuery got: a row of `export_watermarks`.

    The exporter appends one as its watermark moves on, so an analyst asks BigQuery
    itself up to when a table is complete:
    `SELECT MAX(watermark) FROM export_watermarks WHERE table_name = 'records'`.
    """

    table_name: Annotated[str, _doc("The table exported: records or rejected")]
    watermark: Annotated[Micros, _doc("Every row with an ingest_time before this is in the table")]
    exported_at: Annotated[Micros, _doc("When the exporter said so")]


class AccessRow(Row, frozen=True):
    """A line of the access record (`app.store.access.AccessLine`) as a row of
    `access_record`, in BigQuery and in the serving tier's Spanner alike: the line
    whole, as logged, and the few fields a read of the record filters on beside it."""

    time: Annotated[Micros, _doc("When the request ended")]
    id: Annotated[str, _doc("The line's id, its instance's own then a counter: with time, its key")]
    action: Annotated[str, _doc("What was asked: read, export, replay or pass")]
    principal: Annotated[str | None, _doc("Who asked, as the line names them; null for no one")]
    status: Annotated[int, _doc("The answer's HTTP status")]
    entry: Annotated[str, _doc("The line as logged, a JSON object, its text as written")]


# Tables BigQuery holds besides the messages' own.
BIGQUERY_TABLES: dict[str, type[Row]] = {
    **TABLES,
    "export_watermarks": ExportWatermark,
    "access_record": AccessRow,
}

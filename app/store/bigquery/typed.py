"""Typed columns in BigQuery: each record's payload projected into `records.fields`.

`records` holds `fields`, one RECORD of the table's typed fields (the merge of
every revision's, learned from the table itself), and `projection_errors`. A new
revision changes the table first (read, merge, write back with `If-Match`), and
its rows wait, up to a bound, for the Storage Write API to learn the new schema
(`writable`); past it they are written with the fields it has, the rest in
`projection_errors`.

Design: docs/typed-columns.md#on-bigquery
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol

from google.api_core.exceptions import GoogleAPIError, PreconditionFailed
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import descriptor_pb2

from app.errors import StoreUnavailable
from app.records import Record
from app.store.bigquery.proto import add_field, proto_name, row_descriptor
from app.typed.evolution import merge, merge_within_cap
from app.typed.mapping import Field, Mode, OverCap, Type
from app.typed.projection import ByIdentity, ProjectionError, project_stored, projector
from app.typed.revisions import Revisions

log = logging.getLogger(__name__)

FIELDS: Final = "fields"
ERRORS: Final = "projection_errors"
ERRORS_FIELD: Final = Field(
    name=ERRORS,
    type=Type.RECORD,
    mode=Mode.REPEATED,
    fields=tuple(Field(name=n, type=Type.STRING) for n in ("field", "reason", "revision")),
)

# BigQuery's legacy type names, as `tables.get` may spell them, and the
# Storage Write API's (TableFieldSchema.Type), onto the names used here.
_REST_TYPES: Final = {
    "INTEGER": Type.INT64,
    "FLOAT": Type.FLOAT64,
    "BOOLEAN": Type.BOOL,
    "STRUCT": Type.RECORD,
}
_WRITE_TYPES: Final = {"DOUBLE": Type.FLOAT64, "STRUCT": Type.RECORD}

_Proto = descriptor_pb2.FieldDescriptorProto
# How a typed value travels to the Storage Write API (its documented proto
# conversions): NUMERIC and BIGNUMERIC as their decimal text, DATE as days
# since the epoch, TIME and DATETIME as their canonical text, TIMESTAMP as
# microseconds since the epoch, JSON as its text.
_PROTO_TYPES: Final = {
    Type.STRING: _Proto.TYPE_STRING,
    Type.BYTES: _Proto.TYPE_BYTES,
    Type.INT64: _Proto.TYPE_INT64,
    Type.FLOAT64: _Proto.TYPE_DOUBLE,
    Type.NUMERIC: _Proto.TYPE_STRING,
    Type.BIGNUMERIC: _Proto.TYPE_STRING,
    Type.BOOL: _Proto.TYPE_BOOL,
    Type.TIMESTAMP: _Proto.TYPE_INT64,
    Type.DATE: _Proto.TYPE_INT32,
    Type.TIME: _Proto.TYPE_STRING,
    Type.DATETIME: _Proto.TYPE_STRING,
    Type.JSON: _Proto.TYPE_STRING,
}
_EPOCH: Final = dt.date(1970, 1, 1)

# A patch BigQuery refused (permissions, a bad field) is tried again after this.
RETRY_PATCH_SECONDS: Final = 30.0
# How often the write path's schema is asked for while rows wait on it.
_POLL_SECONDS: Final = 0.5
# A read that names a typed field (a filter) reads the table's fields again once what
# this instance last saw is this old: another instance may have widened the table.
_READ_FIELDS_SECONDS: Final = 60.0
# Read-modify-write rounds lost to other instances' changes before giving up.
_PATCH_ROUNDS: Final = 8


def created_columns() -> list[dict[str, Any]]:
    """The typed columns `records` is created with (`bigquery_schema` gives the rest):
    `projection_errors` alone, so that from a system's first row on, a value the
    write path cannot take in `fields` yet is named there. `fields` comes with the
    first revision (BigQuery has no RECORD without fields)."""
    column = column_of(ERRORS_FIELD).to_api_repr()
    column["description"] = (
        "Each value of the payload that is not in its typed field under `fields`, and why "
        "(it is always in `data`)"
    )
    return [column]


class PatchObserver(Protocol):
    """Told of each change of the typed columns BigQuery refused; telemetry counts them
    (an operator is ticketed), the store logs why."""

    def refused(self, table: str) -> None: ...


# The table's schema, both ways


def field_of(column: bigquery.SchemaField) -> Field:
    kind = _REST_TYPES.get(column.field_type, None) or Type(column.field_type)
    mode = Mode.REPEATED if column.mode == "REPEATED" else Mode.NULLABLE
    return Field(
        name=column.name, type=kind, mode=mode, fields=tuple(field_of(f) for f in column.fields)
    )


def column_of(field: Field) -> bigquery.SchemaField:
    return bigquery.SchemaField(
        field.name,
        field.type.value,
        mode=field.mode.value,
        fields=[column_of(f) for f in field.fields],
    )


def write_path_field(column: Any) -> Field:
    """A `TableFieldSchema` of the Storage Write API as a Field."""
    name = types.TableFieldSchema.Type(column.type_).name
    kind = _WRITE_TYPES.get(name) or Type(name)
    mode = Mode.REPEATED if column.mode == types.TableFieldSchema.Mode.REPEATED else Mode.NULLABLE
    return Field(
        name=column.name,
        type=kind,
        mode=mode,
        fields=tuple(write_path_field(f) for f in column.fields),
    )


def typed_of(columns: Sequence[Field]) -> tuple[Field, ...] | None:
    """The typed fields among a table's columns; None when it has no `fields` column."""
    for column in columns:
        if column.name == FIELDS and column.type is Type.RECORD:
            return column.fields
    return None


# Rows


def typed_descriptor(fields: Sequence[Field] | None) -> descriptor_pb2.DescriptorProto:
    """A record's row with its typed columns: `Record`'s, then `fields` (None: the
    write path has none yet), then the errors."""
    message = row_descriptor(Record)
    number = len(message.field)
    names = iter(range(1, 1_000_000))
    typed = [] if fields is None else [Field(name=FIELDS, type=Type.RECORD, fields=tuple(fields))]
    for column in (*typed, ERRORS_FIELD):
        number += 1
        _add(message, column, number, names)
    return message


def keyed_descriptor(fields: Sequence[Field] | None) -> descriptor_pb2.DescriptorProto:
    """A row of a record's typed columns alone, keyed by its `message_id` (a
    backfill's staging rows): `message_id`, then `fields` (None: none), then the errors."""
    message = descriptor_pb2.DescriptorProto(name="TypedColumns")
    message.field.add(
        name="message_id", number=1, type=_Proto.TYPE_STRING, label=_Proto.LABEL_REQUIRED
    )
    names = iter(range(1, 1_000_000))
    typed = [] if fields is None else [Field(name=FIELDS, type=Type.RECORD, fields=tuple(fields))]
    for number, column in enumerate((*typed, ERRORS_FIELD), start=2):
        _add(message, column, number, names)
    return message


def _add(message: descriptor_pb2.DescriptorProto, field: Field, number: int, names: Any) -> None:
    label = _Proto.LABEL_REPEATED if field.mode is Mode.REPEATED else _Proto.LABEL_OPTIONAL
    if field.type is not Type.RECORD:
        add_field(message, field.name, number=number, type=_PROTO_TYPES[field.type], label=label)
        return
    nested = message.nested_type.add(name=f"R{next(names)}")
    for inner, child in enumerate(field.fields, start=1):
        _add(nested, child, inner, names)
    add_field(
        message,
        field.name,
        number=number,
        type=_Proto.TYPE_MESSAGE,
        type_name=nested.name,
        label=label,
    )


def proto_values(values: dict[str, Any], fields: Sequence[Field]) -> dict[str, Any]:
    """Projected values (see `app.typed.projection.project`; only those a payload has
    are needed) as the row message takes them, each under its field's proto name
    (`proto.proto_name`). What it costs follows the values, not the fields."""
    named = _by_name(tuple(fields))
    out: dict[str, Any] = {}
    for name, value in values.items():
        field = named.get(name)
        if field is None or value is None or value == []:
            continue
        if field.mode is Mode.REPEATED:
            out[proto_name(name)] = [_proto_value(v, field) for v in value]
        else:
            out[proto_name(name)] = _proto_value(value, field)
    return out


def _named(fields: tuple[Field, ...]) -> dict[str, Field]:
    return {f.name: f for f in fields}


# Each record's fields by name, found again by the fields' identity (see ByIdentity).
_by_name: ByIdentity[tuple[Field, ...], dict[str, Field]] = ByIdentity(_named, size=4096)


def _proto_value(value: Any, field: Field) -> Any:
    match field.type:
        case Type.RECORD:
            return proto_values(value, field.fields)
        case Type.NUMERIC | Type.BIGNUMERIC:
            return format(value, "f")
        case Type.TIMESTAMP:
            moment: dt.datetime = value
            return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
        case Type.DATE:
            return (value - _EPOCH).days
        case Type.TIME | Type.DATETIME:
            return value.isoformat(sep=" ") if field.type is Type.DATETIME else value.isoformat()
        case _:
            return value


def typed_columns(
    record: Record,
    revision: str | None,
    writable: Sequence[Field] | None,
    known: bool,
    unmapped: str | None = None,
) -> dict[str, Any]:
    """The typed columns of `record`'s row (`typed_descriptor(writable)`'s): its
    payload projected onto the fields the write path takes (None: none yet, so every
    value is an error), under `revision` (None: the record has none, and no typed
    values; `known`: whose fields this process has, `unmapped`: why it has none),
    and every value not there."""
    if revision is None:
        return {ERRORS: []} if writable is None else {FIELDS: {}, ERRORS: []}
    return typed_values(record.data, revision, writable, known, unmapped)


def typed_values(
    data: str,
    revision: str,
    writable: Sequence[Field] | None,
    known: bool,
    unmapped: str | None = None,
) -> dict[str, Any]:
    """`typed_columns` of a payload (`Record.data`) that names `revision`."""
    fields = () if writable is None else tuple(writable)
    if known:
        values, projected = projector(fields).stored_sparse(data, revision)
    else:
        values, projected = None, project_stored(data, None, revision, unmapped).errors
    errors = {ERRORS: error_values(projected)}
    if writable is None:
        return errors
    return {FIELDS: proto_values(values or {}, fields), **errors}


def error_values(errors: Sequence[ProjectionError]) -> list[dict[str, str]]:
    return [
        {"field": e.field, "reason": e.reason, **({"revision": e.revision} if e.revision else {})}
        for e in errors
    ]


# The table


def _get_table(table_id: str, seconds: float) -> Callable[[bigquery.Client], bigquery.Table]:
    retry = DEFAULT_RETRY.with_timeout(seconds)

    def get(client: bigquery.Client) -> bigquery.Table:
        return client.get_table(table_id, retry=retry, timeout=seconds)

    return get


def _update_schema(table: bigquery.Table, seconds: float) -> Callable[[bigquery.Client], Any]:
    """Write `table`'s schema back; `table` carries the ETag it was read with, so
    BigQuery refuses the write (412) if another change landed since."""
    retry = DEFAULT_RETRY.with_timeout(seconds)

    def update(client: bigquery.Client) -> Any:
        return client.update_table(table, ["schema"], retry=retry, timeout=seconds)

    return update


async def add_missing_columns(
    call: Callable[[Callable[[bigquery.Client], Any]], Any],
    table_id: str,
    wanted: Sequence[bigquery.SchemaField],
    seconds: float,
) -> list[str]:
    """Append to the table the columns of `wanted` it lacks (a release's new
    `Record` columns: after creating `records`, Terraform leaves its schema to
    the service, whose typed columns it would otherwise try to drop), with the
    ETag read; the names added."""
    for _ in range(_PATCH_ROUNDS):
        table: bigquery.Table = await call(_get_table(table_id, seconds))
        have = {c.name.casefold() for c in table.schema}
        missing = [c for c in wanted if c.name.casefold() not in have]
        if not missing:
            return []
        table.schema = [*table.schema, *missing]
        try:
            await call(_update_schema(table, seconds))
        except PreconditionFailed:
            continue
        return [c.name for c in missing]
    raise TimeoutError(f"{_PATCH_ROUNDS} changes of {table_id} raced this one")


class TypedTable:
    """The typed fields of one `records` table: in the table, and writable yet.

    `call` runs a function of the `bigquery.Client` in a thread within a
    deadline; `write_schema` answers the `_default` stream's schema as the
    Storage Write API sees it (its columns as Fields). Both are the store's.
    """

    def __init__(
        self,
        table: str,
        *,
        call: Callable[[Callable[[bigquery.Client], Any]], Any],
        write_schema: Callable[[], Any],
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        observer: PatchObserver | None = None,
    ) -> None:
        self.table = table  # project.dataset.records
        self._observer = observer
        self._call = call
        self._timeout = timeout
        self._write_schema = write_schema
        self._clock = clock
        # The typed fields the table holds, as last read or written here; None
        # until read.
        self.fields: tuple[Field, ...] | None = None
        self._fields_read = -_READ_FIELDS_SECONDS  # when `readable` last read them
        # Those the Storage Write API accepts in a row yet, and whether it takes
        # `projection_errors` (created with the table; else added at start).
        self.writable: tuple[Field, ...] | None = None
        self.errors_writable = False
        # Revisions whose fields the table holds; revisions refused until a time;
        # revisions with no typed columns here, and why.
        self._merged: set[str] = set()
        self._refused: dict[str, float] = {}
        self._unmapped: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._polled = 0.0
        self.patches = 0  # tables.patch calls that succeeded here
        self.conflicts = 0  # …and those another instance's change beat
        self.failures = 0  # patches refused for another reason
        self.last_failure: str | None = None

    async def widen(self, revision: str, fields: Sequence[Field]) -> None:
        """Make the table hold `fields` (a revision's). Never raises: a refusal is
        logged, counted and tried again later; rows go on meanwhile."""
        if (
            revision in self._merged
            or revision in self._unmapped
            or self._clock() < self._refused.get(revision, 0.0)
        ):
            return
        async with self._lock:
            if revision in self._merged:
                return
            try:
                await self._patch(fields)
            except OverCap as exc:
                self._unmapped[revision] = f"no typed columns: {exc}"
                log.error("typed columns of %s are not added to %s: %s", revision, self.table, exc)
                return
            except (GoogleAPIError, OSError, TimeoutError) as exc:
                self.failures += 1
                self.last_failure = f"{type(exc).__name__}: {exc}"
                self._refused[revision] = self._clock() + RETRY_PATCH_SECONDS
                if self._observer is not None:
                    self._observer.refused(self.table)
                log.error(
                    "typed columns of %s could not be added to %s (tried again in %g s): %s",
                    revision,
                    self.table,
                    RETRY_PATCH_SECONDS,
                    self.last_failure,
                )
                return
            self._merged.add(revision)
            self._refused.pop(revision, None)

    async def _patch(self, fields: Sequence[Field]) -> None:
        for _ in range(_PATCH_ROUNDS):
            table: bigquery.Table = await self._call(_get_table(self.table, self._timeout))
            columns = [field_of(c) for c in table.schema]
            current = typed_of(columns)
            self.fields = current
            merged = merge_within_cap(current or (), fields, widen=False)
            has_errors = any(c.name == ERRORS for c in columns)
            if current is not None and merged == current and has_errors:
                return
            # Columns keep their places (BigQuery reorders none): `fields` changes
            # where it is, and what the table lacks goes at the end.
            typed = column_of(Field(name=FIELDS, type=Type.RECORD, fields=merged))
            schema = [typed if c.name == FIELDS else c for c in table.schema]
            if current is None:
                schema.append(typed)
            if not has_errors:
                schema.append(column_of(ERRORS_FIELD))
            table.schema = schema
            try:
                await self._call(_update_schema(table, self._timeout))
            except PreconditionFailed:
                self.conflicts += 1
                continue
            self.patches += 1
            self.fields = merged
            log.info("typed columns of %s: %d fields", self.table, len(merged))
            return
        raise TimeoutError(f"{_PATCH_ROUNDS} changes of {self.table} raced this one")

    async def readable(self) -> tuple[Field, ...]:
        """The typed fields the table holds, for a read that names one: as this instance
        last saw them, read from the table when it never did or saw them over a minute
        ago. StoreUnavailable if the table cannot be read."""
        now = self._clock()
        if self.fields is None or now - self._fields_read >= _READ_FIELDS_SECONDS:
            try:
                table: bigquery.Table = await self._call(_get_table(self.table, self._timeout))
            except (GoogleAPIError, OSError, TimeoutError) as exc:
                raise StoreUnavailable(f"the typed fields of {self.table}: {exc}") from exc
            self.fields = typed_of([field_of(c) for c in table.schema])
            self._fields_read = now
        return self.fields or ()

    async def hold(self, revisions: Revisions, names: Iterable[str | None]) -> dict[str, bool]:
        """Make the table hold the fields of each revision named (`widen`); of each,
        whether its fields are known here (fetched if need be: StoreUnavailable
        while they cannot be)."""
        known: dict[str, bool] = {}
        for name in dict.fromkeys(n for n in names if n):
            fields = await revisions.lookup(name)
            if fields is None:
                unmapped = revisions.unmapped(name)
                if unmapped is not None:
                    self._unmapped[name] = unmapped
            else:
                await self.widen(name, fields)
            known[name] = fields is not None and name not in self._unmapped
        return known

    def unmapped(self, revision: str | None) -> str | None:
        """Why `revision` has no typed columns here, if `hold` found it has none."""
        return None if revision is None else self._unmapped.get(revision)

    @property
    def caught_up(self) -> bool:
        """Whether the write path takes every typed field the table holds, as last seen."""
        return self.fields is None or (
            self.writable is not None
            and merge(self.writable, self.fields, widen=False) == self.writable
        )

    @property
    def takes_typed_rows(self) -> bool:
        """Whether the write path takes a typed column at all (`fields` or the errors)."""
        return self.writable is not None or self.errors_writable

    async def catch_up(self, until: float) -> tuple[Field, ...] | None:
        """The typed fields the write path takes (None: it has no `fields` column),
        once they hold the table's, or at `until` (the clock's)."""
        while True:
            if self._polled and self.caught_up:
                return self.writable
            now = self._clock()
            if now >= until and self._polled:
                return self.writable
            wait = self._polled + _POLL_SECONDS - now
            if wait > 0 and self._polled:
                await asyncio.sleep(min(wait, max(until - now, 0.0)))
                if self._clock() >= until:
                    return self.writable
                continue
            self._polled = now
            try:
                columns = await self._write_schema()
            except (GoogleAPIError, OSError, TimeoutError) as exc:
                log.warning("the write path's schema of %s: %s", self.table, exc)
                continue
            self.writable = typed_of(columns)
            self.errors_writable = any(c.name == ERRORS for c in columns)

"""Typed columns in DuckDB: each record's payload projected onto its topic schema's fields.

The projection lives in a table of its own, `record_fields`, joined to `records`
by the view `records_typed`; its STRUCT column `fields` changes type with every
revision that adds or widens a field. Each revision's fields are kept in
`typed_revisions`, in the transaction that changes `fields` for it, so the merge
is the same after a restart and journal replay never asks the Schema API.
Everything here runs on the store's single writer thread.

Design: docs/typed-columns.md#on-duckdb
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from decimal import Context, Decimal
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from app.records import Record
from app.typed.evolution import merge, merge_within_cap
from app.typed.mapping import (
    NUMERIC_SCALE,
    Field,
    Mode,
    OverCap,
    Type,
    fields_from_json,
    fields_json,
    unholdable,
)
from app.typed.projection import ByIdentity, Sparse, project_stored, projector
from app.typed.revisions import Revisions

log = logging.getLogger(__name__)

VIEW = "records_typed"
_SQL_TYPES = {
    Type.STRING: "VARCHAR",
    Type.BYTES: "BLOB",
    Type.INT64: "BIGINT",
    Type.FLOAT64: "DOUBLE",
    Type.NUMERIC: f"DECIMAL(38, {NUMERIC_SCALE})",
    # DuckDB's decimals stop at 38 digits: BIGNUMERIC's 76 are kept exactly as text.
    Type.BIGNUMERIC: "VARCHAR",
    Type.BOOL: "BOOLEAN",
    Type.TIMESTAMP: "TIMESTAMPTZ",
    Type.DATE: "DATE",
    Type.TIME: "TIME",
    Type.DATETIME: "TIMESTAMP",
    Type.JSON: "JSON",
}
_ARROW_TYPES = {
    Type.STRING: pa.string(),
    Type.BYTES: pa.binary(),
    Type.INT64: pa.int64(),
    Type.FLOAT64: pa.float64(),
    Type.NUMERIC: pa.decimal128(38, NUMERIC_SCALE),
    Type.BIGNUMERIC: pa.string(),
    Type.BOOL: pa.bool_(),
    Type.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    Type.DATE: pa.date32(),
    Type.TIME: pa.time64("us"),
    Type.DATETIME: pa.timestamp("us"),
    Type.JSON: pa.string(),
}
_ERRORS_ARROW = pa.list_(
    pa.struct([("field", pa.string()), ("reason", pa.string()), ("revision", pa.string())])
)
_ERRORS_SQL = "STRUCT(field VARCHAR, reason VARCHAR, revision VARCHAR)[]"
# DuckDB keeps each field of a STRUCT as a column of its own, so every insert
# (and every ALTER, for every stored row) pays for each typed field the table
# has, whichever fields the rows hold. Measured here, 64 rows an insert: no
# typed fields 6 ms; 100: 39 ms; 1,000: 170 ms; 9,984 (BigQuery's cap): 1.8 s,
# and an ALTER adding one field to 640 rows 7.7 s. So a DuckDB table holds far
# fewer typed fields than a BigQuery one: past this, a revision has no typed
# columns here, and its records say why.
MAX_FIELDS = 1_000
_CAP_WHY = "DuckDB pays for every typed field of the table at every insert"
_NUMERIC_STEP = Decimal(1).scaleb(-NUMERIC_SCALE)
# Room for NUMERIC's 38 digits (Python's default context holds 28).
_NUMERIC_CONTEXT = Context(prec=38)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_type(field: Field) -> str:
    if field.type is Type.RECORD:
        inner = ", ".join(f"{_quoted(f.name)} {sql_type(f)}" for f in field.fields)
        base = f"STRUCT({inner})"
    else:
        base = _SQL_TYPES[field.type]
    return f"{base}[]" if field.mode is Mode.REPEATED else base


def _widened(value: str, new: Field, old: Field | None) -> str:
    """SQL for `value`, of `old`'s type, as `new`'s: an array or map `old` lacks is
    `[]` (not NULL) wherever the record holding it is not NULL, as a row projected
    after it exists has it, and as BigQuery, whose REPEATED fields are never NULL,
    reads it. A record that is NULL stays NULL."""
    if old is None:
        return f"[]::{sql_type(new)}" if new.mode is Mode.REPEATED else f"NULL::{sql_type(new)}"
    if not _adds_collections(new, old):
        # A cast: DuckDB casts a STRUCT by its fields' names, each it lacks NULL. Made
        # of CASE and struct_pack at every level, the same change of a thousand fields
        # nested three deep took DuckDB 27 s to plan, every read waiting on it.
        return f"{value}::{sql_type(new)}"
    if new.type is Type.RECORD and old.type is Type.RECORD and new.mode is old.mode:
        if new.mode is Mode.REPEATED:
            item = Field(name=new.name, type=new.type, fields=new.fields)
            was = Field(name=old.name, type=old.type, fields=old.fields)
            return f"list_transform({value}, lambda x: {_widened('x', item, was)})"
        olds = {f.name: f for f in old.fields}
        members = ", ".join(
            f"{_quoted(f.name)} := "
            + _widened(f"struct_extract({value}, {_literal(f.name)})", f, olds.get(f.name))
            for f in new.fields
        )
        return f"CASE WHEN {value} IS NULL THEN NULL ELSE struct_pack({members}) END"
    return f"{value}::{sql_type(new)}"


def _holds_collections(field: Field) -> bool:
    return field.mode is Mode.REPEATED or any(_holds_collections(f) for f in field.fields)


def _adds_collections(new: Field, old: Field | None) -> bool:
    """Whether `new` has an array or map, at any depth, where `old` has none: one a cast
    would make NULL, and `_widened` makes `[]`."""
    if old is None:
        return _holds_collections(new)
    if new.type is Type.RECORD and old.type is Type.RECORD and new.mode is old.mode:
        olds = {f.name: f for f in old.fields}
        return any(_adds_collections(f, olds.get(f.name)) for f in new.fields)
    return False


def _filled(value: str, field: Field) -> str:
    """SQL for `value`, of `field`'s type, with every array or map it lacks as `[]`
    wherever the record holding it is not NULL: BigQuery's REPEATED fields are never
    NULL, and a row is stored with only the fields its payload has (the rest NULL)."""
    if field.mode is Mode.REPEATED:
        item = Field(name=field.name, type=field.type, fields=field.fields)
        if field.type is Type.RECORD and _holds_collections(item):
            value = f"list_transform({value}, lambda x: {_filled('x', item)})"
        return f"coalesce({value}, []::{sql_type(field)})"
    if field.type is not Type.RECORD or not _holds_collections(field):
        return value
    members = ", ".join(
        f"{_quoted(f.name)} := " + _filled(f"struct_extract({value}, {_literal(f.name)})", f)
        for f in field.fields
    )
    return f"CASE WHEN {value} IS NULL THEN NULL ELSE struct_pack({members}) END"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _arrow_type(field: Field) -> pa.DataType:
    if field.type is Type.RECORD:
        base = pa.struct([(f.name, _arrow_type(f)) for f in field.fields])
    else:
        base = _ARROW_TYPES[field.type]
    return pa.list_(base) if field.mode is Mode.REPEATED else base


def _fields_type(fields: Sequence[Field]) -> Field:
    return Field(name="fields", type=Type.RECORD, fields=tuple(fields))


def _for_arrow(value: Any, field: Field) -> Any:
    """A projected value as Arrow takes it for the field's DuckDB type."""
    if value is None:
        return None
    if field.mode is Mode.REPEATED:
        item = Field(name=field.name, type=field.type, fields=field.fields)
        return [_for_arrow(v, item) for v in value]
    match field.type:
        case Type.RECORD:
            return {f.name: _for_arrow(value.get(f.name), f) for f in field.fields}
        case Type.NUMERIC:
            return value.quantize(_NUMERIC_STEP, context=_NUMERIC_CONTEXT)
        case Type.BIGNUMERIC:
            # Positional, as BigQuery writes it: str() gives `-1E-12` for -0.000000000001.
            return format(value, "f")
        case _:
            return value


def _as_is(field: Field) -> bool:
    """Whether Arrow takes a field's projected values as they are (no decimal in it)."""
    if field.type is Type.RECORD:
        return all(_as_is(f) for f in field.fields)
    return field.type not in (Type.NUMERIC, Type.BIGNUMERIC)


def _to_arrow_of(field: Field) -> Callable[[Any], Any]:
    """`_for_arrow` of one field's values, compiled: a RECORD's by the names its
    value has, not by every field the table gave it."""
    if field.mode is Mode.REPEATED:
        item = _to_arrow_of(Field(name=field.name, type=field.type, fields=field.fields))
        return lambda value: None if value is None else [item(v) for v in value]
    match field.type:
        case Type.RECORD:
            inner = {f.name: _to_arrow_of(f) for f in field.fields}
            return lambda value: (
                None if value is None else {k: inner[k](v) for k, v in value.items() if k in inner}
            )
        case Type.NUMERIC:
            return lambda value: (
                None if value is None else value.quantize(_NUMERIC_STEP, context=_NUMERIC_CONTEXT)
            )
        case Type.BIGNUMERIC:
            # Positional, as `_for_arrow`: str() gives `1.3E+16` for a float's 13000000000000000.
            return lambda value: None if value is None else format(value, "f")
        case _:
            return lambda value: value


class _Columns:
    """How the `fields` column of one table's fields is built from sparse rows
    (`app.typed.projection.Sparse`), made once per change of the fields.

    Only the fields some row of the batch has become Arrow columns (a row that
    lacks one has NULL there); DuckDB casts the STRUCT to the table's by name,
    and fills every other field with NULL. So what Python does for a batch
    follows its rows' fields, never the table's width.
    """

    def __init__(self, fields: tuple[Field, ...]) -> None:
        self.fields = fields
        self._place = {f.name: i for i, f in enumerate(fields)}
        self._types = [_arrow_type(f) for f in fields]
        self._converts = [None if _as_is(f) else _to_arrow_of(f) for f in fields]

    def array(self, rows: Sequence[Sparse | None]) -> pa.StructArray:
        names: set[str] = set()
        for row in rows:
            if row:
                names.update(row)
        # An Arrow STRUCT has a field at least: the first, NULL, when no row has any.
        places = sorted(self._place[n] for n in names) or [0]
        arrays = []
        for place in places:
            name = self.fields[place].name
            values = [None if row is None else row.get(name) for row in rows]
            convert = self._converts[place]
            if convert is not None:
                values = [convert(v) for v in values]
            arrays.append(pa.array(values, type=self._types[place]))
        fields = [
            pa.field(self.fields[p].name, a.type) for p, a in zip(places, arrays, strict=True)
        ]
        return pa.StructArray.from_arrays(arrays, fields=fields)


_columns: ByIdentity[tuple[Field, ...], _Columns] = ByIdentity(_Columns, size=8)


def _unholdable_in(fields: Sequence[Field]) -> str | None:
    for field in fields:
        problem = unholdable(field.name) or _unholdable_in(field.fields)
        if problem is not None:
            return f"`{field.name}`: {problem}"
    return None


class TypedColumns:
    """The typed fields of one DuckDB store's records."""

    def __init__(self, revisions: Revisions | None) -> None:
        # Where the push path tells each revision's fields; None: no typed columns.
        self._revisions = revisions
        self._known: dict[str, tuple[Field, ...]] = {}
        # Revisions this table has no typed columns for, and why.
        self._unmapped: dict[str, str] = {}
        self.fields: tuple[Field, ...] = ()

    def open(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            "CREATE TABLE IF NOT EXISTS typed_revisions ("
            "schema VARCHAR PRIMARY KEY, position BIGINT NOT NULL, fields JSON NOT NULL)"
        )
        con.execute(
            "CREATE TABLE IF NOT EXISTS record_fields ("
            f"message_id VARCHAR PRIMARY KEY, projection_errors {_ERRORS_SQL})"
        )
        rows = con.execute(
            "SELECT schema, fields::VARCHAR FROM typed_revisions ORDER BY position"
        ).fetchall()
        for schema, text in rows:
            fields = fields_from_json(text)
            problem = _unholdable_in(fields)
            if problem is not None:
                # Kept by an earlier release, whose ALTER then failed: its records
                # have no typed columns, and the table never took its fields.
                log.warning("typed columns of %s are left out: %s", schema, problem)
                continue
            self._known[schema] = fields
            self.fields = merge(self.fields, fields)
        has_fields = con.execute(
            "SELECT count(*) FROM duckdb_columns() WHERE schema_name = 'main' "
            "AND table_name = 'record_fields' AND column_name = 'fields'"
        ).fetchone()
        if self.fields and not (has_fields and has_fields[0]):
            con.execute(f"ALTER TABLE record_fields ADD COLUMN fields {sql_type(self._type)}")
        self._view(con)

    @property
    def _type(self) -> Field:
        return _fields_type(self.fields)

    def _view(
        self, con: duckdb.DuckDBPyConnection, fields: tuple[Field, ...] | None = None
    ) -> None:
        typed = (
            "f.fields" if (self.fields if fields is None else fields) else "NULL::JSON AS fields"
        )
        con.execute(
            f"CREATE OR REPLACE VIEW {VIEW} AS SELECT r.*, {typed}, f.projection_errors "
            "FROM records r LEFT JOIN record_fields f USING (message_id)"
        )

    def arrow(self, con: duckdb.DuckDBPyConnection, records: Sequence[Record]) -> pa.Table | None:
        """The `record_fields` rows of the records that name a schema revision, or None.

        A revision seen for the first time widens the table's fields first.
        """
        typed: list[tuple[Record, str]] = []
        for record in records:
            schema = self._revision(record)
            if schema is not None:
                typed.append((record, schema))
        if not typed:
            return None
        for schema in dict.fromkeys(schema for _, schema in typed):
            self._learn(con, schema)
        onto = projector(self.fields)
        rows: list[Sparse | None] = []
        errors: list[list[dict[str, Any]]] = []
        for record, schema in typed:
            if schema in self._known:
                row, why = onto.stored_sparse(record.data, schema)
            else:
                # A revision past a cap, or decoded by an earlier process whose
                # catalogue this one never saw, has no fields here: kept in
                # `data`, and said so.
                unmapped = self._unmapped.get(schema)
                if unmapped is None and self._revisions is not None:
                    unmapped = self._revisions.unmapped(schema)
                row, why = None, project_stored(record.data, None, schema, unmapped).errors
            rows.append(row)
            errors.append([msgspec.structs.asdict(e) for e in why] if why else [])
        columns: dict[str, pa.Array] = {
            "message_id": pa.array([r.message_id for r, _ in typed], type=pa.string()),
            "projection_errors": pa.array(errors, type=_ERRORS_ARROW),
        }
        if self.fields:
            columns["fields"] = _columns(self.fields).array(rows)
        return pa.table(columns)

    def insert(
        self, con: duckdb.DuckDBPyConnection, rows: pa.Table, *, ignore_copies: bool = False
    ) -> None:
        """Insert `record_fields` rows (`arrow`'s), each collection a row lacks as `[]`."""
        verb = "INSERT OR IGNORE INTO" if ignore_copies else "INSERT INTO"
        con.register("typed_rows", rows)
        try:
            if "fields" not in rows.column_names:
                con.execute(f"{verb} record_fields BY NAME SELECT * FROM typed_rows")
                return
            kind = self._type
            con.execute(
                f"{verb} record_fields BY NAME SELECT message_id, projection_errors, "
                f"{_filled('f', kind)} AS fields FROM (SELECT message_id, projection_errors, "
                f"fields::{sql_type(kind)} AS f FROM typed_rows)"
            )
        finally:
            con.unregister("typed_rows")

    def replace(self, con: duckdb.DuckDBPyConnection, records: Sequence[Record]) -> int:
        """Project stored `records` again and replace their `record_fields` rows, each in
        one transaction with its delete, so none ever shows twice (or without a row) in
        `records_typed`; how many were projected."""
        typed = self.arrow(con, records)
        if typed is None:
            return 0
        con.register("reprojected", typed)
        con.begin()
        try:
            con.execute(
                "DELETE FROM record_fields WHERE message_id IN (SELECT message_id FROM reprojected)"
            )
            self.insert(con, typed)
            con.commit()
        except BaseException:
            con.rollback()
            raise
        finally:
            con.unregister("reprojected")
        return int(typed.num_rows)

    def unprojected(self, records: Sequence[Record], reason: str) -> pa.Table | None:
        """`record_fields` rows that only say why `records` have no typed columns."""
        typed = [r for r in records if self._revision(r) is not None]
        if not typed:
            return None
        errors = [[{"field": "$", "reason": reason, "revision": self._revision(r)}] for r in typed]
        columns: dict[str, pa.Array] = {
            "message_id": pa.array([r.message_id for r in typed], type=pa.string()),
            "projection_errors": pa.array(errors, type=_ERRORS_ARROW),
        }
        if self.fields:
            columns["fields"] = pa.nulls(len(typed), type=_arrow_type(self._type))
        return pa.table(columns)

    def _revision(self, record: Record) -> str | None:
        """The revision a record is projected under; none at all for a store given
        no revisions, which projects nothing."""
        if self._revisions is None:
            return None
        return self._revisions.revision_of(record.schema)

    def _learn(self, con: duckdb.DuckDBPyConnection, schema: str) -> None:
        if schema in self._known or schema in self._unmapped or self._revisions is None:
            return
        fields = self._revisions.fields(schema)
        if fields is None:
            return
        try:
            merged = merge_within_cap(self.fields, fields, cap=MAX_FIELDS, why=_CAP_WHY)
        except OverCap as exc:
            self._unmap(schema, f"no typed columns: {exc}")
            return
        # The revision and the change it makes, both or neither.
        con.begin()
        try:
            con.execute(
                "INSERT OR IGNORE INTO typed_revisions VALUES ("
                "$schema, (SELECT count(*) FROM typed_revisions), $fields)",
                {"schema": schema, "fields": fields_json(fields).decode()},
            )
            if merged != self.fields:
                if not self.fields:
                    con.execute(
                        "ALTER TABLE record_fields ADD COLUMN fields "
                        f"{sql_type(_fields_type(merged))}"
                    )
                else:
                    # Rows stored before a collection existed get it empty, not NULL.
                    wider = _fields_type(merged)
                    con.execute(
                        "ALTER TABLE record_fields ALTER COLUMN fields SET DATA TYPE "
                        f"{sql_type(wider)} USING {_widened('fields', wider, self._type)}"
                    )
                self._view(con, merged)
            con.commit()
        except Exception as exc:
            con.rollback()
            self._unmap(schema, f"no typed columns: the table's change for them failed ({exc})")
            return
        if merged != self.fields:
            log.info("typed columns of %s: %d fields", schema, len(merged))
            self.fields = merged
        self._known[schema] = fields

    def _unmap(self, schema: str, reason: str) -> None:
        log.error("typed columns of %s: %s", schema, reason)
        self._unmapped[schema] = reason

"""A table's typed fields after a new revision: what BigQuery lets a schema update do.

The merged fields keep every field the table has (a field a revision removed
stays, NULLABLE), add the revision's new ones at the end, widen a type where
coercion allows it, and otherwise keep the table's type: a value of the other
type is then a projection error, never a blocked or dropped row. BigQuery cannot
change a field of a RECORD in place, so its tables merge with `widen=False`;
DuckDB changes a STRUCT's field types in place, so it widens.

Design: docs/typed-columns.md#schema-changes
"""

from __future__ import annotations

from collections.abc import Sequence

from app.typed.mapping import BIGQUERY_MAX_COLUMNS, MAX_FIELDS, Field, OverCap, Type, field_count

# https://cloud.google.com/bigquery/docs/reference/standard-sql/conversion_rules
# ("Coerce to"): INT64 → NUMERIC, BIGNUMERIC, FLOAT64; NUMERIC → BIGNUMERIC,
# FLOAT64; BIGNUMERIC → FLOAT64; DATE → DATETIME. These are the changes ALTER
# COLUMN SET DATA TYPE accepts.
WIDENINGS: dict[Type, frozenset[Type]] = {
    Type.INT64: frozenset({Type.NUMERIC, Type.BIGNUMERIC, Type.FLOAT64}),
    Type.NUMERIC: frozenset({Type.BIGNUMERIC, Type.FLOAT64}),
    Type.BIGNUMERIC: frozenset({Type.FLOAT64}),
    Type.DATE: frozenset({Type.DATETIME}),
}


def merge(
    table: Sequence[Field], revision: Sequence[Field], *, widen: bool = True
) -> tuple[Field, ...]:
    """The table's fields once it also holds `revision`'s; `widen`: a type the
    revision widens changes (else the table's stays)."""
    theirs = {f.name: f for f in revision}
    merged = [_merge_field(f, theirs[f.name], widen) if f.name in theirs else f for f in table]
    # Column names are case-insensitive: a field whose name differs from a
    # column's only in case is no new column (its values are projection errors).
    ours = {f.name.casefold() for f in table}
    merged += [f for f in revision if f.name.casefold() not in ours]
    return tuple(merged)


def _merge_field(ours: Field, theirs: Field, widen: bool) -> Field:
    if ours.mode is not theirs.mode:
        return ours  # NULLABLE and REPEATED never change into each other
    if ours.type is Type.RECORD and theirs.type is Type.RECORD:
        fields = merge(ours.fields, theirs.fields, widen=widen)
        return (
            ours
            if fields == ours.fields
            else Field(name=ours.name, type=ours.type, mode=ours.mode, fields=fields)
        )
    if widen and theirs.type in WIDENINGS.get(ours.type, frozenset()):
        return Field(name=ours.name, type=theirs.type, mode=ours.mode)
    return ours


def widened(before: Type, after: Type) -> bool:
    return after in WIDENINGS.get(before, frozenset())


def merge_within_cap(
    table: Sequence[Field],
    revision: Sequence[Field],
    *,
    widen: bool = True,
    cap: int = MAX_FIELDS,
    why: str = (
        f"BigQuery holds {BIGQUERY_MAX_COLUMNS:,} columns in a table, nested ones included"
    ),
) -> tuple[Field, ...]:
    """`merge`, or OverCap when the table would then hold more than `cap` typed fields
    (`why` says why a table may have no more): each revision is within the mapping's
    caps, but many of them together may not be, and a table past its cap would make
    every later write pay for every field."""
    merged = merge(table, revision, widen=widen)
    count = field_count(merged)
    if count > cap:
        raise OverCap(
            f"with this revision's fields the table would have {count:,} typed fields, more "
            f"than the {cap:,} it may have ({why})"
        )
    return merged

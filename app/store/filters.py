"""Which rows a page keeps: a filter every store applies where it reads.

A `RowFilter` travels in the `PageQuery` a reader asks a store with, and in the
page token of every page that follows. Each store applies it where it reads (its
SQL, and its tail in memory through `matches`), so a page of `limit` rows is
`limit` rows that match, and resumes after the last row the store examined. Every
condition must hold; attributes compare as exact strings, a typed field as its
column's type (`typed_value`), `where` as the filter language says (`where.py`).

Design: docs/reading.md#filters
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from app.errors import BadParameter
from app.records import MAX_ID_LENGTH, Record, Rejection
from app.store.where import MAX_WHERE_BYTES, Expression, matches, parse, reads
from app.typed.mapping import Field, Mode, Type

# Conditions one filter may hold: a console's or a script's few, never a query language.
MAX_CONDITIONS: Final = 8
# Pub/Sub's own bounds on an attribute: a key of 256 bytes, a value of 1,024.
MAX_KEY_LENGTH: Final = 256
MAX_VALUE_LENGTH: Final = 1024
# A filter's names and values, all together (UTF-8): a page token carries its filter,
# and this keeps a token within its 2,048 characters (app/query/page_token.py).
MAX_FILTER_BYTES: Final = 1024
# BigQuery nests RECORDs 15 deep at most, so no typed field's path is longer.
MAX_PATH_DEPTH: Final = 15
# An attribute key is put into a JSONPath (`$."key"`) as a query parameter: every
# store's JSONPath quotes a key in `"` and none escapes one inside it, so a key with
# `"` or `\` (or a control character) cannot be asked for. DuckDB, which reads `$."*"`
# as every member, is asked with a JSON pointer instead (app/store/duckdb/sql.py).
KEY_PATTERN: Final = r'^[^"\\\x00-\x1f\x7f]+$'
# A typed field's name, as Avro and Protocol Buffers name fields (and BigQuery columns).
FIELD_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,299}$"
# The typed fields a filter compares: an equality on FLOAT64 is a trap, and the others
# (bytes, times, JSON, records, arrays) have no one text a value is written in.
FILTERABLE: Final = (Type.STRING, Type.INT64, Type.NUMERIC, Type.BOOL, Type.DATE)

Key = Annotated[str, Meta(min_length=1, max_length=MAX_KEY_LENGTH, pattern=KEY_PATTERN)]
Value = Annotated[str, Meta(max_length=MAX_VALUE_LENGTH)]
Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Segment = Annotated[str, Meta(pattern=FIELD_NAME_PATTERN)]


class AttributeIs(msgspec.Struct, array_like=True, frozen=True):
    """The message's attribute `key` is exactly `value`."""

    key: Key
    value: Value

    @property
    def path(self) -> str:
        """The attribute as a JSONPath into the `attributes` object."""
        return f'$."{self.key}"'


class FieldIs(msgspec.Struct, array_like=True, frozen=True):
    """The typed field at `path` (`customer.email` is `("customer", "email")`) equals
    `value`, read as the field's type."""

    path: Annotated[tuple[Segment, ...], Meta(min_length=1, max_length=MAX_PATH_DEPTH)]
    value: Value

    @property
    def name(self) -> str:
        return ".".join(self.path)


class RowFilter(msgspec.Struct, array_like=True, frozen=True):
    """The rows a page keeps: each condition holds. Empty, it keeps every row (a page
    asks with None instead: `of`)."""

    attributes: Annotated[tuple[AttributeIs, ...], Meta(max_length=MAX_CONDITIONS)] = ()
    record_id: Id | None = None
    message_id: Id | None = None
    fields: Annotated[tuple[FieldIs, ...], Meta(max_length=MAX_CONDITIONS)] = ()
    # An expression of the filter language (app/store/where.py), as it was given: a
    # token carries its text, and each reader parses it again (once, cached).
    where: Annotated[str, Meta(max_length=MAX_WHERE_BYTES)] | None = None

    def __bool__(self) -> bool:
        return bool(
            self.attributes or self.record_id or self.message_id or self.fields or self.where
        )

    def reads(self, column: str, listing: str = "records") -> bool:
        """Whether checking a row reads its JSON column `column` (`data`, `attributes`):
        a page must read it whatever a reader shows of it."""
        if column == "attributes" and self.attributes:
            return True
        return reads(self.expression(listing), column)

    def expression(self, listing: str) -> Expression | None:
        """The `where` expression, parsed for `listing`; None without one."""
        return None if self.where is None else parse(self.where, listing)

    def matches(self, row: Record | Rejection) -> bool:
        """Whether `row` holds to every condition but the typed fields' (which only a
        store's SQL reads: a store with a tail in memory reads past it for them)."""
        if self.message_id is not None and row.message_id != self.message_id:
            return False
        if self.record_id is not None and getattr(row, "id", None) != self.record_id:
            return False
        if self.attributes:
            try:
                attributes = _decode_attributes(row.attributes)
            except msgspec.DecodeError:
                return False
            if not isinstance(attributes, dict):
                return False
            for condition in self.attributes:
                if attributes.get(condition.key) != condition.value:
                    return False
        if self.where is not None:
            listing = "records" if isinstance(row, Record) else "rejections"
            return matches(parse(self.where, listing), row)
        return True


_decode_attributes = msgspec.json.Decoder().decode


def filter_bytes(row_filter: RowFilter) -> int:
    """What a filter's names and values take (UTF-8), which MAX_FILTER_BYTES bounds."""
    texts = [row_filter.record_id or "", row_filter.message_id or "", row_filter.where or ""]
    texts += [c.key + c.value for c in row_filter.attributes]
    texts += [c.name + c.value for c in row_filter.fields]
    return sum(len(t.encode()) for t in texts)


def typed_field(fields: Sequence[Field], condition: FieldIs) -> Field:
    """The typed field `condition` names among a store's `fields`; BadParameter
    (`field`) naming why it cannot be compared: none of that name, or of a type no
    equality reads."""
    found: Field | None = None
    level: Sequence[Field] = fields
    for depth, name in enumerate(condition.path):
        found = next((f for f in level if f.name == name), None)
        last = depth == len(condition.path) - 1
        if found is None or (not last and (found.type is not Type.RECORD or found.fields == ())):
            known = ", ".join(sorted(f.name for f in level)[:20]) or "none"
            where = ".".join(condition.path[:depth]) or "the top level"
            raise BadParameter(
                "field", f"no typed field {condition.name!r} here ({where} has: {known})"
            )
        if found.mode is Mode.REPEATED:
            raise BadParameter("field", f"{found.name!r} is repeated: only single values filter")
        level = found.fields
    assert found is not None  # a path has at least one name
    if found.type not in FILTERABLE:
        kinds = ", ".join(FILTERABLE)
        raise BadParameter(
            "field", f"{condition.name!r} is {found.type}: only {kinds} fields filter"
        )
    return found


def typed_value(field: Field, condition: FieldIs) -> Any:
    """`condition`'s value as a value of the field's type; BadParameter (`field`) naming
    the type if it is none (so no store is ever asked a comparison it cannot make)."""
    text = condition.value
    written = _WRITTEN.get(field.type)
    if written is None or written[0].fullmatch(text):
        try:
            match field.type:
                case Type.STRING:
                    return text
                case Type.INT64:
                    number = int(text)
                    if -(2**63) <= number < 2**63:
                        return number
                case Type.NUMERIC:
                    return Decimal(text)
                case Type.BOOL:
                    return text == "true"
                case Type.DATE:
                    return date.fromisoformat(text)
        except (ValueError, InvalidOperation):
            pass
    shape = "" if written is None else f" ({written[1]})"
    raise BadParameter(
        "field", f"{condition.name!r} is {field.type}: {condition.value!r} is not one{shape}"
    )


# How a value of each type is written in a filter, and the words that say so.
_WRITTEN: Final = {
    Type.INT64: (re.compile(r"-?[0-9]{1,19}"), "an integer"),
    # NUMERIC's 29 digits before the point and 9 after (BigQuery's, and DuckDB's column).
    Type.NUMERIC: (re.compile(r"-?[0-9]{1,29}(\.[0-9]{1,9})?"), "up to 29 digits, 9 decimals"),
    Type.BOOL: (re.compile(r"true|false"), "true or false"),
    Type.DATE: (re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), "YYYY-MM-DD"),
}

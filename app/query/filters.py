"""A list's filter as a client asks for it: query parameters, read into a `RowFilter`.

`attribute=KEY:VALUE` (repeatable; the key ends at the first `:`), `producer=ID`
(the `recordline-producer` attribute), `record_id=`, `message_id=`, where the
store has typed columns `field=PATH:VALUE` (repeatable; `customer.email:a@b.c`), and
`where=` an expression of the filter language (app/store/where.py).
Every condition must hold. A filter is input: each part is bounded and checked
here, before any store is asked, and refused with a 400 naming the parameter.

Design: docs/reading.md#filters
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from app.errors import BadParameter
from app.records import MAX_ID_LENGTH
from app.store.filters import (
    FIELD_NAME_PATTERN,
    KEY_PATTERN,
    MAX_CONDITIONS,
    MAX_FILTER_BYTES,
    MAX_KEY_LENGTH,
    MAX_PATH_DEPTH,
    MAX_VALUE_LENGTH,
    AttributeIs,
    FieldIs,
    RowFilter,
    filter_bytes,
)
from app.store.producers import MAX_PRODUCER_LENGTH, PRODUCER_ATTRIBUTE
from app.store.where import parse

# The parameters that make a filter, besides a page's own.
FILTER_PARAMETERS: Final = frozenset(
    {"attribute", "producer", "record_id", "message_id", "field", "where"}
)
# Those that may be given more than once (each time one more condition).
REPEATABLE: Final = frozenset({"attribute", "field"})
_KEY = re.compile(KEY_PATTERN)
_FIELD_NAME = re.compile(FIELD_NAME_PATTERN)
# What `attribute` and `field` take, for the OpenAPI document (the checks below say
# which part is wrong; the filter's size in all is beyond a pattern).
ATTRIBUTE_PATTERN: Final = (
    rf'^[^:"\\\x00-\x1f\x7f]{{1,{MAX_KEY_LENGTH}}}:[\s\S]{{0,{MAX_VALUE_LENGTH}}}$'
)
_NAME = "[A-Za-z_][A-Za-z0-9_]{0,299}"
FIELD_PATTERN: Final = (
    rf"^{_NAME}(\.{_NAME}){{0,{MAX_PATH_DEPTH - 1}}}:[\s\S]{{0,{MAX_VALUE_LENGTH}}}$"
)


def row_filter(
    listing: str,
    *,
    attribute: Sequence[str] = (),
    producer: str | None = None,
    record_id: str | None = None,
    message_id: str | None = None,
    field: Sequence[str] = (),
    where: str | None = None,
) -> RowFilter | None:
    """The filter these parameters ask of `listing` (`records`, `rejections`), None if
    they ask none; BadParameter naming the parameter at fault."""
    singles = (producer, record_id, message_id, where)
    count = len(attribute) + len(field) + sum(value is not None for value in singles)
    if count > MAX_CONDITIONS:
        where = "attribute" if len(attribute) > len(field) else "field"
        raise BadParameter(where, f"{count} conditions; a filter holds {MAX_CONDITIONS} at most")
    attributes = [_attribute(text) for text in attribute]
    if producer is not None:
        _id("producer", producer, MAX_PRODUCER_LENGTH)
        attributes.append(AttributeIs(PRODUCER_ATTRIBUTE, producer))
    if record_id is not None:
        if listing != "records":
            raise BadParameter(
                "record_id", f"/v1/{listing} has no record id (a rejection's payload was refused)"
            )
        _id("record_id", record_id)
    if message_id is not None:
        _id("message_id", message_id)
    if where is not None:
        parse(where, listing)  # a 400 naming what is wrong, before any store is asked
    if field and listing != "records":
        raise BadParameter("field", f"/v1/{listing} has no typed fields")
    found = RowFilter(
        attributes=tuple(attributes),
        record_id=record_id,
        message_id=message_id,
        fields=tuple(_field(text) for text in field),
        where=where,
    )
    if not found:
        return None
    if filter_bytes(found) > MAX_FILTER_BYTES:
        raise BadParameter(
            "where" if where is not None else "attribute" if attribute else "field",
            f"the filter's names and values take {filter_bytes(found):,} bytes; "
            f"{MAX_FILTER_BYTES:,} at most",
        )
    return found


def _attribute(text: str) -> AttributeIs:
    key, colon, value = text.partition(":")
    if not colon:
        raise BadParameter("attribute", f"{_shown(text)} is not KEY:VALUE")
    if not key:
        raise BadParameter("attribute", "the key before `:` is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise BadParameter("attribute", f"a key of {len(key)} characters; {MAX_KEY_LENGTH} at most")
    if not _KEY.fullmatch(key):
        raise BadParameter(
            "attribute", f'the key {_shown(key)} holds `"`, `\\` or a control character'
        )
    if len(value) > MAX_VALUE_LENGTH:
        raise BadParameter(
            "attribute", f"a value of {len(value)} characters; {MAX_VALUE_LENGTH} at most"
        )
    return AttributeIs(key, value)


def _field(text: str) -> FieldIs:
    path, colon, value = text.partition(":")
    if not colon:
        raise BadParameter("field", f"{_shown(text)} is not PATH:VALUE (`customer.email:a@b.c`)")
    names = tuple(path.split("."))
    if len(names) > MAX_PATH_DEPTH:
        raise BadParameter("field", f"a path {len(names)} deep; {MAX_PATH_DEPTH} at most")
    bad = next((name for name in names if not _FIELD_NAME.fullmatch(name)), None)
    if bad is not None:
        raise BadParameter(
            "field",
            f"{_shown(bad)} in {_shown(path)} is no field name (a letter or `_`, then letters, "
            "digits or `_`)",
        )
    if len(value) > MAX_VALUE_LENGTH:
        raise BadParameter(
            "field", f"a value of {len(value)} characters; {MAX_VALUE_LENGTH} at most"
        )
    return FieldIs(names, value)


def _id(name: str, value: str, longest: int = MAX_ID_LENGTH) -> None:
    if not value:
        raise BadParameter(name, "empty")
    if len(value) > longest:
        raise BadParameter(name, f"{len(value)} characters; {longest} at most")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else f"{text[:40]}…")

"""One stored payload projected onto a table's typed fields.

The payload is the JSON the service stores as `data`, decoded: a JSON topic's
own text; an Avro datum as fastavro reads it and msgspec writes it (bytes as
base64, decimals as their text, times as RFC 3339); a Protocol Buffers message
in its JSON mapping (64-bit integers as digits, bytes as base64, NaN as
"NaN"). Every value lands in its typed field, or in a `ProjectionError`
saying where it was and why it did not fit: a typed value is NULL only where
the payload had none or an error says why. Nothing here raises, whatever the
payload and the fields.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import functools
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec

from app.records import MAX_MICROS, MIN_MICROS
from app.typed.mapping import (
    BIGNUMERIC_INTEGER_DIGITS,
    BIGNUMERIC_SCALE,
    NUMERIC_INTEGER_DIGITS,
    NUMERIC_SCALE,
    Field,
    Mode,
    Type,
    is_entries,
    unholdable,
)

_INT64 = (-(2**63), 2**63 - 1)
# [types] BIGNUMERIC's range is exactly -2^255e-38 to (2^255 - 1)e-38.
_BIGNUMERIC_UNSCALED = (-(2**255), 2**255 - 1)
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Enough digits for any value the two decimal types hold; a longer text is
# out of range anyway, and parsing a million digits is a cost no payload sets.
_MAX_DECIMAL_TEXT = 200
_DECIMALS = decimal.Context(prec=_MAX_DECIMAL_TEXT, traps=[decimal.InvalidOperation])
_encode_json = msgspec.json.encode
_decode_json = msgspec.json.decode
# Each decimal type's digits after the point, and its smallest step.
_DECIMAL_STEPS = {
    kind: (scale, decimal.Decimal(1).scaleb(-scale))
    for kind, scale in ((Type.NUMERIC, NUMERIC_SCALE), (Type.BIGNUMERIC, BIGNUMERIC_SCALE))
}


class ProjectionError(msgspec.Struct, kw_only=True, frozen=True):
    """A value that is in `data` but not in its typed field, and why."""

    field: str  # its path in the payload: `amount`, `items[2].sku`, `$` for the payload itself
    reason: str
    revision: str | None = None  # the schema revision the message was decoded with


class Projection(NamedTuple):
    values: dict[str, Any]
    errors: list[ProjectionError]


class _Misfit(Exception):
    """A value that does not fit its field; the message says why."""


def project(payload: Any, fields: Sequence[Field], revision: str | None = None) -> Projection:
    """The typed value of each field in `payload`, and every value that did not fit.

    Typed values are Python's: int, float, bool, str, bytes, decimal.Decimal,
    aware datetime (TIMESTAMP), date, time, naive datetime (DATETIME), JSON as
    its text, a dict per RECORD and a list per REPEATED field.
    """
    return projector(tuple(fields))(payload, revision)


def project_stored(
    data: bytes | str, fields: Sequence[Field] | None, revision: str, unmapped: str | None = None
) -> Projection:
    """`project` of a stored payload (`Record.data`, JSON text) under `revision`, whose
    fields are `fields` (the table's, which hold the revision's) or None when
    the revision's own are unknown here, or it has none (`unmapped` says why):
    the payload is then one error, kept in `data` as always."""
    if fields is None:
        reason = unmapped or "the revision's fields are unknown here"
        return Projection({}, [ProjectionError(field="$", reason=reason, revision=revision)])
    return projector(tuple(fields)).stored(data, revision)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByIdentity(Generic[K, V]):
    """What `make` makes of a key, kept by the key object's identity, then its value.

    The keys are a table's fields: the same tuple object for every row of a
    batch, and hashing its whole tree for each row would cost as much as the
    table is wide, what compiling saves. Each key is held while kept, so its
    identity is not another's; a few hundred at most are kept.
    """

    def __init__(self, make: Callable[[K], V], size: int = 256) -> None:
        self._make = functools.lru_cache(maxsize=size)(make)
        self._size = size
        self._kept: dict[int, tuple[K, V]] = {}

    def __call__(self, key: K) -> V:
        kept = self._kept.get(id(key))
        if kept is not None and kept[0] is key:
            return kept[1]
        value = self._make(key)
        if len(self._kept) >= self._size:
            self._kept.clear()
        self._kept[id(key)] = (key, value)
        return value


def _projector(fields: tuple[Field, ...]) -> Projector:
    return Projector(fields)


# The `Projector` of these fields, compiled once for every payload projected onto them.
projector: ByIdentity[tuple[Field, ...], Projector] = ByIdentity(_projector, size=64)


Row = list[Any]  # a record's typed values, in the order of its fields
# A record's typed values by field name, only for the fields its payload has
# (`Projector.sparse`): what a store writes, at a cost that follows the payload,
# never the table's width. A RECORD's value is such a dict too.
Sparse = dict[str, Any]


class Projector:
    """`project` onto one tuple of fields, compiled once into a closure per field.

    Walking the field tree for every payload (matching each field's mode and
    type, joining every path) cost more than the values themselves; a table's
    fields change only with a revision, so the walk is done once, here, and a
    payload only meets the closures. A payload's values are then looked up by
    its own keys, so its projection costs what it holds, however many fields
    other revisions added to the table. Paths are still joined as the walk
    would join them and errors come in the walk's order (the table's fields',
    then the keys no field has): a payload's projection is the same whichever
    way it is made.
    """

    def __init__(self, fields: tuple[Field, ...]) -> None:
        self.fields = fields
        self.names = tuple(f.name for f in fields)
        self._record = _record_of(fields)

    def __call__(self, payload: Any, revision: str | None = None) -> Projection:
        row, errors = self.row(payload, revision)
        return Projection(dict(zip(self.names, row, strict=True)), errors)

    def stored(self, data: bytes | str, revision: str) -> Projection:
        """`project_stored` onto these fields."""
        row, errors = self.stored_row(data, revision)
        values = {} if row is None else dict(zip(self.names, row, strict=True))
        return Projection(values, errors)

    def row(self, payload: Any, revision: str | None = None) -> tuple[Row, list[ProjectionError]]:
        """`project`, its values as a list in the order of the fields, every one there
        (None, or an empty list, where the payload has none)."""
        values, errors = self.sparse(payload, revision)
        return [
            _filled(values[f.name], f) if f.name in values else _empty(f) for f in self.fields
        ], errors

    def sparse(
        self, payload: Any, revision: str | None = None
    ) -> tuple[Sparse, list[ProjectionError]]:
        """`project`, with only the fields the payload has (see `Sparse`)."""
        errors: list[ProjectionError] = []
        if not isinstance(payload, dict):
            if payload is not None:
                reason = f"the payload is {_kind(payload)}, not an object"
                errors.append(ProjectionError(field="$", reason=reason, revision=revision))
            return {}, errors
        try:
            return self._record(payload, "", _Sink(errors, revision)), errors
        except RecursionError:  # deeper than Python recurses: kept whole in `data`
            errors.append(ProjectionError(field="$", reason="nested too deep", revision=revision))
            return {}, errors

    def stored_row(
        self, data: bytes | str, revision: str
    ) -> tuple[Row | None, list[ProjectionError]]:
        """`stored`, its values as `row` gives them, or None where `stored` gives none
        (a payload that is no JSON)."""
        payload, errors = _stored_payload(data, revision)
        if errors:
            return None, errors
        return self.row(payload, revision)

    def stored_sparse(
        self, data: bytes | str, revision: str
    ) -> tuple[Sparse | None, list[ProjectionError]]:
        """`stored_row`, as `sparse` gives the values."""
        payload, errors = _stored_payload(data, revision)
        if errors:
            return None, errors
        return self.sparse(payload, revision)


def _stored_payload(data: bytes | str, revision: str) -> tuple[Any, list[ProjectionError]]:
    try:
        return _decode_json(data), []
    except (msgspec.DecodeError, RecursionError):
        reason = "the stored payload is not JSON this process can read"
        return None, [ProjectionError(field="$", reason=reason, revision=revision)]


def _filled(value: Any, field: Field) -> Any:
    """A sparse value with every field of its records there (None, or [])."""
    if field.type is not Type.RECORD or value is None:
        return value
    if field.mode is Mode.REPEATED:
        return [_filled_record(item, field.fields) for item in value]
    return _filled_record(value, field.fields)


def _filled_record(values: Sparse, fields: Sequence[Field]) -> dict[str, Any]:
    return {f.name: _filled(values[f.name], f) if f.name in values else _empty(f) for f in fields}


def _empty(field: Field) -> Any:
    return [] if field.mode is Mode.REPEATED else None


class _Sink:
    """Where one payload's errors go, each saying the revision it was decoded with."""

    __slots__ = ("errors", "revision")

    def __init__(self, errors: list[ProjectionError], revision: str | None) -> None:
        self.errors = errors
        self.revision = revision

    def fail(self, path: str, reason: str) -> None:
        self.errors.append(ProjectionError(field=path, reason=reason, revision=self.revision))


# A compiled field: its value in a payload (None where absent), the value's
# path, and where errors go; returns the typed value.
_Convert = Callable[[Any, str, _Sink], Any]
# A compiled record: an object's typed values, by name, for the fields it has.
_Record = Callable[[dict[str, Any], str, _Sink], Sparse]
# Exactly these Python types are their typed values as they are, and in range
# (an int only with its range checked, below): no need to ask `_scalar`.
_AS_IS: dict[Type, type] = {Type.STRING: str, Type.BOOL: bool, Type.FLOAT64: float}


def _record_of(fields: Sequence[Field]) -> _Record:
    # Each field's place (errors come in the fields' order), name and conversion.
    entries = {f.name: (i, f.name, _convert_of(f)) for i, f in enumerate(fields)}

    def record(value: dict[str, Any], path: str, sink: _Sink) -> Sparse:
        present = []
        unknown = False
        for name in value:
            entry = entries.get(name)
            if entry is None:
                unknown = True
            else:
                present.append(entry)
        present.sort()  # by place: no two entries share one
        if path:
            row = {
                name: convert(value[name], f"{path}.{name}", sink) for _, name, convert in present
            }
        else:
            row = {name: convert(value[name], name, sink) for _, name, convert in present}
        if unknown:
            for name, item in value.items():
                if name not in entries and item is not None:
                    sink.fail(_join(path, str(name)), _no_field(str(name)))
        return row

    return record


def _convert_of(field: Field) -> _Convert:
    return _repeated_of(field) if field.mode is Mode.REPEATED else _single_of(field)


def _single_of(field: Field) -> _Convert:
    """A field's one value (or an array's item): a record's or a scalar's."""
    if field.type is Type.RECORD:
        record = _record_of(field.fields)

        def nested(value: Any, path: str, sink: _Sink) -> Any:
            if value is None:
                return None
            if isinstance(value, dict):
                return record(value, path, sink)
            sink.fail(path, f"expected a record (an object), got {_kind(value)}")
            return None

        return nested
    kind = field.type
    as_is = _AS_IS.get(kind)
    low, high = _INT64

    def scalar(value: Any, path: str, sink: _Sink) -> Any:
        if value is None:
            return None
        cls = type(value)
        if cls is as_is or (cls is int and kind is Type.INT64 and low <= value <= high):
            return value
        try:
            return _scalar(value, kind)
        except _Misfit as exc:
            sink.fail(path, str(exc))
            return None

    return scalar


def _repeated_of(field: Field) -> _Convert:
    single = _single_of(field)
    if is_entries(field):
        key_type = field.fields[0].type
        entry_value = _convert_of(field.fields[1])
    else:
        entry_value = None

    def repeated(value: Any, path: str, sink: _Sink) -> list[Any]:
        if value is None:
            return []
        if entry_value is not None and isinstance(value, dict):
            # A map: its entries, in the payload's order.
            entries = []
            for key, item in value.items():
                where = _join(path, str(key))
                try:
                    typed_key = _scalar(key, key_type)
                except _Misfit as exc:
                    sink.fail(where, f"key: {exc}")
                    continue
                entries.append({"key": typed_key, "value": entry_value(item, where, sink)})
            return entries
        if not isinstance(value, list):
            sink.fail(path, f"expected an array, got {_kind(value)}")
            return []
        items = []
        for i, item in enumerate(value):
            if item is None:
                # [types] an ARRAY cannot hold NULL elements.
                sink.fail(f"{path}[{i}]", "null in an array, which BigQuery's arrays cannot hold")
                continue
            typed = single(item, f"{path}[{i}]", sink)
            if typed is not None:
                items.append(typed)
        return items

    return repeated


def _no_field(name: str) -> str:
    why = unholdable(name)
    if why is None:
        return "no typed field of this name in the table"
    return f"no typed field can hold it: {why}"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _scalar(value: Any, kind: Type) -> Any:
    match kind:
        case Type.STRING:
            if isinstance(value, str):
                return value
        case Type.BOOL:
            if isinstance(value, bool):
                return value
            if value in ("true", "false"):  # a protobuf map's bool keys are text
                return value == "true"
        case Type.INT64:
            return _int64(value)
        case Type.FLOAT64:
            return _float64(value)
        case Type.NUMERIC | Type.BIGNUMERIC:
            return _decimal(value, kind)
        case Type.BYTES:
            if isinstance(value, str):
                try:
                    return base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise _Misfit("expected base64 text (bytes), got other text") from None
        case Type.TIMESTAMP:
            return _timestamp(value)
        case Type.DATE:
            return _parsed(value, dt.date.fromisoformat, "a date (YYYY-MM-DD)")
        case Type.TIME:
            return _parsed(value, dt.time.fromisoformat, "a time of day")
        case Type.DATETIME:
            moment = _parsed(value, dt.datetime.fromisoformat, "a date and time")
            if moment.tzinfo is None:
                return moment
            raise _Misfit("expected a date and time without an offset (DATETIME)")
        case Type.JSON:
            try:
                return _encode_json(value).decode()
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                raise _Misfit(f"not representable as JSON: {exc}") from None
        case _:
            raise _Misfit(f"no value fits a {kind} field")
    raise _Misfit(f"expected {_expected(kind)}, got {_kind(value)}")


def _expected(kind: Type) -> str:
    return {
        Type.STRING: "text",
        Type.BOOL: "a boolean",
        Type.BYTES: "base64 text (bytes)",
        Type.TIMESTAMP: "an RFC 3339 time with an offset",
    }.get(kind, kind.value)


def _int64(value: Any) -> int:
    if isinstance(value, bool):
        raise _Misfit("expected an integer, got a boolean")
    number: int
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _is_digits(value):
        # 64-bit integers travel as digits in the protobuf JSON mapping.
        number = int(value)
    else:
        raise _Misfit(f"expected an integer, got {_kind(value)}")
    if not _INT64[0] <= number <= _INT64[1]:
        raise _Misfit(f"{number} is out of INT64's range")
    return number


def _is_digits(text: str) -> bool:
    digits = text[1:] if text[:1] == "-" else text
    return 0 < len(digits) <= 20 and digits.isascii() and digits.isdigit()


def _float64(value: Any) -> float:
    if isinstance(value, bool):
        raise _Misfit("expected a number, got a boolean")
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        number = float(value) if abs(value) < 2**1023 else math.inf
        if math.isinf(number):
            raise _Misfit("an integer out of FLOAT64's range")
        return number
    if isinstance(value, str) and value in _FLOAT_WORDS:
        return _FLOAT_WORDS[value]
    raise _Misfit(f"expected a number, got {_kind(value)}")


def _decimal(value: Any, kind: Type) -> decimal.Decimal:
    if isinstance(value, bool):
        raise _Misfit("expected a decimal number, got a boolean")
    try:
        if isinstance(value, int):
            number = _DECIMALS.create_decimal(value)
        elif isinstance(value, float):
            number = _DECIMALS.create_decimal(repr(value))
        elif isinstance(value, str) and len(value) <= _MAX_DECIMAL_TEXT:
            number = _DECIMALS.create_decimal(value.strip())
        else:
            raise _Misfit(f"expected a decimal number, got {_kind(value)}")
    except (decimal.InvalidOperation, ValueError):
        raise _Misfit(f"expected a decimal number, got {_kind(value)}") from None
    if not number.is_finite():
        raise _Misfit(f"{value} is no finite number, which {kind} cannot hold")
    # The range first: a number this wide is never quantized to its scale below.
    if kind is Type.NUMERIC and number.adjusted() >= NUMERIC_INTEGER_DIGITS:
        raise _Misfit(f"{number} is out of NUMERIC's range")
    if kind is Type.BIGNUMERIC and number.adjusted() > BIGNUMERIC_INTEGER_DIGITS:
        raise _Misfit(f"{number} is out of BIGNUMERIC's range")
    scale, step = _DECIMAL_STEPS[kind]
    if number != number.quantize(step, context=_DECIMALS):
        raise _Misfit(f"{number} has more than {scale} digits after the point, as {kind} holds")
    if kind is Type.BIGNUMERIC:
        unscaled = int(number.scaleb(BIGNUMERIC_SCALE, _DECIMALS))
        if not _BIGNUMERIC_UNSCALED[0] <= unscaled <= _BIGNUMERIC_UNSCALED[1]:
            raise _Misfit(f"{number} is out of BIGNUMERIC's range")
    return number


def _timestamp(value: Any) -> dt.datetime:
    moment: dt.datetime = _parsed(
        value, dt.datetime.fromisoformat, "an RFC 3339 time with an offset"
    )
    if moment.tzinfo is None:
        raise _Misfit("expected an RFC 3339 time with an offset, got one without")
    try:
        us = (moment - _EPOCH) // dt.timedelta(microseconds=1)
    except OverflowError:
        us = MAX_MICROS + 1
    if not MIN_MICROS <= us <= MAX_MICROS:
        raise _Misfit(f"{value} is outside the years 1 to 9999 once in UTC")
    return moment.astimezone(dt.UTC)


def _parsed(value: Any, parse: Any, what: str) -> Any:
    if not isinstance(value, str):
        raise _Misfit(f"expected {what}, got {_kind(value)}")
    try:
        # Python reads `Z` and up to 6 fractional digits; protobuf writes up to 9.
        return parse(_nanos_to_micros(value))
    except ValueError:
        raise _Misfit(f"expected {what}, got {value[:64]!r}") from None


def _nanos_to_micros(text: str) -> str:
    point = text.find(".")
    if point < 0:
        return text
    end = point + 1
    while end < len(text) and text[end].isdigit():
        end += 1
    if end - point - 1 <= 6:
        return text
    return text[: point + 7] + text[end:]


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
        case _:
            return type(value).__name__

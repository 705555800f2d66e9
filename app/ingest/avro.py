"""Avro topic schemas: a message's data, binary or JSON, decoded by fastavro.

A BINARY message is Avro's binary encoding of one datum, with no container-file
header (fastavro's schemaless reader, ~5 µs for a 300-byte record). A JSON
message is Avro's JSON encoding (a union value wrapped in its branch's name),
checked against the schema here (`_mismatch`, so a rejection names the field),
then written in the binary encoding and read back as a BINARY message is.

Design: docs/schemas.md
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
import msgspec

from app.ingest.codec import SchemaError
from app.ingest.limits import TOO_DEEP
from app.ingest.shape import Invalid

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_NAMED = ("record", "error", "enum", "fixed")


class AvroCodec:
    """Decodes data written with one revision of an Avro schema."""

    def __init__(self, definition: str) -> None:
        try:
            # The definition, decoded: what the typed columns are mapped from.
            self.definition: Any = msgspec.json.decode(definition)
            self._schema = fastavro.parse_schema(self.definition)
            self._named: dict[str, Any] = {}
            _collect(self.definition, "", self._named)
        except (msgspec.DecodeError, ValueError, TypeError, KeyError) as exc:
            # fastavro raises SchemaParseException (a ValueError) and, for some
            # malformed definitions, plain KeyError or TypeError.
            raise SchemaError(f"not an Avro schema fastavro can read: {exc}") from None
        except RecursionError:
            # msgspec, fastavro and _collect each read a definition by recursion.
            raise SchemaError("an Avro schema nested too deeply to read") from None

    def binary(self, data: bytes) -> Any:
        buffer = io.BytesIO(data)
        try:
            value = fastavro.schemaless_reader(buffer, self._schema, None)
        except Exception as exc:
            # Hostile bytes make the reader fail in many ways (EOFError, an
            # IndexError for a union branch out of range, UnicodeDecodeError,
            # RecursionError for a recursive type nested without end…).
            raise Invalid(f"not Avro binary of this revision: {_said(exc)}") from None
        left = len(data) - buffer.tell()
        if left:
            raise Invalid(f"not Avro binary of this revision: {left} bytes after the record")
        return value

    def json(self, data: bytes) -> Any:
        # fastavro's JSON reader takes one datum per line; a message may be
        # spread over several, so it is made one line first.
        try:
            datum = msgspec.json.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise Invalid(f"not JSON: {exc}") from None
        except RecursionError:
            raise Invalid(f"not Avro JSON of this revision: {TOO_DEEP}") from None
        try:
            problem = _mismatch(self.definition, datum, "$", self._named, "")
        except RecursionError:
            problem = TOO_DEEP
        if problem is not None:
            raise Invalid(f"not Avro JSON of this revision: {problem}")
        # Written in the binary encoding and read back: both encodings of a datum are
        # the same values. fastavro's JSON reader is not used: it expands every use of
        # a named type before reading a byte, per message (a 1,000-field record cost
        # 34 ms a message; records that each hold the previous one twice double with
        # each level: 14 levels, 20 s), where checking and writing here follow the datum.
        buffer = io.BytesIO()
        try:
            writable = _writable(self.definition, datum, self._named, "", default=False)
            fastavro.schemaless_writer(buffer, self._schema, writable)
        except RecursionError:
            raise Invalid(f"not Avro JSON of this revision: {TOO_DEEP}") from None
        except Exception as exc:
            raise Invalid(f"not Avro JSON of this revision: {_said(exc)}") from None
        return self.binary(buffer.getvalue())


def _said(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _full_name(schema: dict[str, Any], namespace: str) -> str:
    name: str = schema["name"]
    if "." in name:
        return name
    space = schema.get("namespace", namespace)
    return f"{space}.{name}" if space else name


def _collect(schema: Any, namespace: str, named: dict[str, Any]) -> None:
    """Every named type the schema defines, by full name, in the namespace it defines."""
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, namespace, named)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in _NAMED:
            full = _full_name(schema, namespace)
            named[full] = (schema, full.rpartition(".")[0])
            namespace = full.rpartition(".")[0]
        for field in schema.get("fields", ()) if kind in ("record", "error") else ():
            _collect(field["type"], namespace, named)
        for key in ("items", "values"):
            if key in schema:
                _collect(schema[key], namespace, named)
        if isinstance(kind, (dict, list)):
            _collect(kind, namespace, named)


def _kind(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a number"
        case str():
            return "text"
        case list():
            return "an array"
        case _:
            return "an object"


def _resolve(schema: Any, named: dict[str, Any], namespace: str) -> tuple[Any, str]:
    """A reference to a named type as its definition, and the namespace it lives in."""
    if isinstance(schema, str) and schema in named:
        found: tuple[Any, str] = named[schema]
        return found
    if isinstance(schema, str) and namespace and f"{namespace}.{schema}" in named:
        found = named[f"{namespace}.{schema}"]
        return found
    return schema, namespace


def _branch_name(schema: Any, namespace: str) -> str:
    if isinstance(schema, str):
        return schema
    kind = schema.get("type") if isinstance(schema, dict) else "union"
    if kind in _NAMED:
        return _full_name(schema, namespace)
    return kind if isinstance(kind, str) else _branch_name(kind, namespace)


def _mismatch(schema: Any, value: Any, path: str, named: dict[str, Any], space: str) -> str | None:
    """Where `value`, in Avro's JSON encoding, does not fit `schema`, or None if it does."""
    schema, space = _resolve(schema, named, space)
    if isinstance(schema, list):
        return _union(schema, value, path, named, space)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, (dict, list)) or kind in named:
            return _mismatch(kind, value, path, named, space)
    else:
        kind = schema
    expected = f"`{path}`: expected {kind}, got {_kind(value)}"
    match kind:
        case "null":
            return None if value is None else expected
        case "boolean":
            return None if isinstance(value, bool) else expected
        case "int" | "long":
            low, high = _INT32 if kind == "int" else _INT64
            if not isinstance(value, int) or isinstance(value, bool):
                return expected
            return None if low <= value <= high else f"`{path}`: {value} is out of {kind}'s range"
        case "float" | "double":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            return None if ok else expected
        case "string":
            return None if isinstance(value, str) else expected
        case "bytes" | "fixed":
            if not (isinstance(value, str) and _latin1(value)):
                return f"`{path}`: expected {kind} (text of code points up to U+00FF)"
            size = schema.get("size") if isinstance(schema, dict) else None
            if size is not None and len(value) != size:
                return f"`{path}`: expected {size} bytes, got {len(value)}"
            return None
        case "enum":
            symbols = schema["symbols"]
            if isinstance(value, str) and value in symbols:
                return None
            return f"`{path}`: expected one of {', '.join(symbols)}"
        case "array":
            if not isinstance(value, list):
                return expected
            for i, item in enumerate(value):
                problem = _mismatch(schema["items"], item, f"{path}[{i}]", named, space)
                if problem is not None:
                    return problem
            return None
        case "map":
            if not isinstance(value, dict):
                return expected
            for key, item in value.items():
                problem = _mismatch(schema["values"], item, f"{path}.{key}", named, space)
                if problem is not None:
                    return problem
            return None
        case "record" | "error":
            if not isinstance(value, dict):
                return f"`{path}`: expected a record (an object), got {_kind(value)}"
            # Names inside a record resolve in its namespace.
            space = _full_name(schema, space).rpartition(".")[0]
            for field in schema["fields"]:
                name = field["name"]
                where = f"{path}.{name}"
                if name not in value:
                    if "default" in field:
                        continue
                    return f"`{where}`: missing, and the schema gives it no default"
                problem = _mismatch(field["type"], value[name], where, named, space)
                if problem is not None:
                    return problem
            return None
        case _:
            return f"`{path}`: the schema's type {kind!r} is not one Avro defines"


def _writable(schema: Any, value: Any, named: dict[str, Any], space: str, *, default: bool) -> Any:
    """A datum in Avro's JSON encoding (one `_mismatch` found fit), or a field's
    default (`default`: a union's is its first branch's, unwrapped), as fastavro's
    writer takes it: a union's value as (branch, value), bytes and fixed as bytes,
    a record's missing fields as their defaults."""
    schema, space = _resolve(schema, named, space)
    if isinstance(schema, list):
        if value is None and "null" in schema:
            return None
        if default:
            branch = schema[0]
            inner = value
        else:
            ((name, inner),) = value.items()
            branch = {_branch_name(_resolve(b, named, space)[0], space): b for b in schema}[name]
        resolved = _resolve(branch, named, space)[0]
        return (
            _branch_name(resolved, space),
            _writable(branch, inner, named, space, default=default),
        )
    if isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, (dict, list)) or kind in named:
            return _writable(kind, value, named, space, default=default)
    else:
        kind = schema
    match kind:
        case "bytes" | "fixed":
            return value.encode("latin-1")
        case "array":
            return [_writable(schema["items"], v, named, space, default=default) for v in value]
        case "map":
            return {
                k: _writable(schema["values"], v, named, space, default=default)
                for k, v in value.items()
            }
        case "record" | "error":
            space = _full_name(schema, space).rpartition(".")[0]
            record = {}
            for field in schema["fields"]:
                name = field["name"]
                if name in value:
                    record[name] = _writable(
                        field["type"], value[name], named, space, default=default
                    )
                else:
                    record[name] = _writable(
                        field["type"], field["default"], named, space, default=True
                    )
            return record
        case _:
            return value


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _union(
    branches: list[Any], value: Any, path: str, named: dict[str, Any], space: str
) -> str | None:
    if value is None:
        if "null" in branches:
            return None
        return f"`{path}`: null is not one of this union's branches"
    names = {_branch_name(_resolve(b, named, space)[0], space): b for b in branches}
    # A value of a non-null branch is an object of one key, the branch's name
    # (a named type's full name, namespace included).
    if isinstance(value, dict) and len(value) == 1:
        ((name, inner),) = value.items()
        branch = names.get(name)
        if branch is not None:
            return _mismatch(branch, inner, f"{path}.{name}", named, space)
    listed = ", ".join(n for n in names if n != "null")
    return f"`{path}`: a union value is an object naming its branch ({listed}), got {_kind(value)}"

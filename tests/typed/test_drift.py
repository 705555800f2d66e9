"""The drift matrix, at the level of the mapping: for each schema change, the table's
merged fields, and a message of each revision projected onto them with nothing dropped
silently (every value not in its typed field is in `projection_errors`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

import pytest

from app.ingest.protobuf import ProtobufCodec
from app.typed.evolution import merge
from app.typed.mapping import Field, Mode, Type, avro_fields, protobuf_fields
from app.typed.projection import project
from tests.typed.accounting import unaccounted
from tests.typed.stored import avro_stored, protobuf_stored


class Change(NamedTuple):
    before: list[dict[str, Any]]  # Avro fields of the first revision
    after: list[dict[str, Any]]  # …and of the second
    first: dict[str, Any]  # a message of the first revision
    second: dict[str, Any]  # …and of the second
    check: Callable[[dict[str, Field], list[Any], list[Any]], None]


def _field(name: str, kind: Type, mode: Mode = Mode.NULLABLE, *fields: Field) -> Field:
    return Field(name=name, type=kind, mode=mode, fields=fields)


def _errors(projection: Any) -> list[str]:
    return [e.field for e in projection.errors]


ID = {"name": "id", "type": "string"}
CUSTOMER = {"type": "record", "name": "Customer", "fields": [{"name": "name", "type": "string"}]}
CUSTOMER_EMAIL = {
    "type": "record",
    "name": "Customer",
    "fields": [
        {"name": "name", "type": "string"},
        {"name": "email", "type": ["null", "string"], "default": None},
    ],
}
LINE = {
    "type": "record",
    "name": "Line",
    "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}],
}
STATUS = {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}
STATUS_MORE = {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "REFUNDED"]}


def _typed(name: str, value: Any) -> Callable[[list[Any]], None]:
    def check(projected: list[Any]) -> None:
        assert projected[1].values[name] == value

    return check


def _check_add_optional(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["note"] == _field("note", Type.STRING)
    assert p[0].values["note"] is None
    assert p[1].values["note"] == "hi"


def _check_add_default(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["currency"] == _field("currency", Type.STRING)
    assert p[1].values["currency"] == "USD"


def _check_remove(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["legacy"] == _field("legacy", Type.STRING)  # kept, NULLABLE
    assert p[0].values["legacy"] == "old"
    assert p[1].values["legacy"] is None


def _check_rename(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert {"cust", "customer"} <= set(merged)
    assert p[0].values["cust"] == "Ada"
    assert p[1].values["customer"] == "Bob"


def _check_int_long(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["n"] == _field("n", Type.INT64)
    assert p[1].values["n"] == 2**40


def _check_long_string(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["n"] == _field("n", Type.INT64)  # STRING is no widening of INT64
    assert p[0].values["n"] == 7
    assert p[1].values["n"] is None
    assert _errors(p[1]) == ["n"]


def _check_string_int(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["code"] == _field("code", Type.STRING)
    assert p[1].values["code"] is None
    assert _errors(p[1]) == ["code"]


def _check_enum(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["status"] == _field("status", Type.STRING)
    assert p[1].values["status"] == "REFUNDED"


def _check_nested(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert [f.name for f in merged["customer"].fields] == ["name", "email"]
    assert p[1].values["customer"] == {"name": "Bob", "email": "b@example.com"}


def _check_array_of_records(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    line = merged["lines"]
    assert (line.type, line.mode) == (Type.RECORD, Mode.REPEATED)
    assert p[1].values["lines"] == [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]


def _check_union(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["v"] == _field("v", Type.INT64)  # JSON is no widening of INT64
    assert p[1].values["v"] is None
    assert _errors(p[1]) == ["v"]


def _check_early_field(merged: dict[str, Field], p: list[Any], early: list[Any]) -> None:
    assert merged["extra"] == _field("extra", Type.INT64)
    # Before the revision declared it, the value was an error, not a column…
    assert _errors(early[0]) == ["extra"]
    # …and once it is declared, the same stored payload projects it.
    assert p[0].values["extra"] == 3


def _check_int_double(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["n"] == _field("n", Type.FLOAT64)  # INT64 → FLOAT64 is a widening
    assert p[0].values["n"] == 7.0
    assert p[1].values["n"] == 0.5


def _check_decimal_wider(merged: dict[str, Field], p: list[Any], _: list[Any]) -> None:
    assert merged["amount"] == _field("amount", Type.BIGNUMERIC)
    assert p[1].values["amount"] == Decimal("1.0000000001")


def _decimal(precision: int, scale: int) -> dict[str, Any]:
    return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}


CHANGES: dict[str, Change] = {
    "add an optional field": Change(
        [ID],
        [ID, {"name": "note", "type": ["null", "string"], "default": None}],
        {"id": "1"},
        {"id": "2", "note": "hi"},
        _check_add_optional,
    ),
    "add a required field with a default": Change(
        [ID],
        [ID, {"name": "currency", "type": "string", "default": "EUR"}],
        {"id": "1"},
        {"id": "2", "currency": "USD"},
        _check_add_default,
    ),
    "remove a field": Change(
        [ID, {"name": "legacy", "type": "string"}],
        [ID],
        {"id": "1", "legacy": "old"},
        {"id": "2"},
        _check_remove,
    ),
    "rename a field": Change(
        [ID, {"name": "cust", "type": "string"}],
        [ID, {"name": "customer", "type": "string", "aliases": ["cust"]}],
        {"id": "1", "cust": "Ada"},
        {"id": "2", "customer": "Bob"},
        _check_rename,
    ),
    "int to long": Change(
        [ID, {"name": "n", "type": "int"}],
        [ID, {"name": "n", "type": "long"}],
        {"id": "1", "n": 7},
        {"id": "2", "n": 2**40},
        _check_int_long,
    ),
    "long to string": Change(
        [ID, {"name": "n", "type": "long"}],
        [ID, {"name": "n", "type": "string"}],
        {"id": "1", "n": 7},
        {"id": "2", "n": "seven"},
        _check_long_string,
    ),
    "string to int": Change(
        [ID, {"name": "code", "type": "string"}],
        [ID, {"name": "code", "type": "long"}],
        {"id": "1", "code": "A7"},
        {"id": "2", "code": 7},
        _check_string_int,
    ),
    "enum symbol added": Change(
        [ID, {"name": "status", "type": STATUS}],
        [ID, {"name": "status", "type": STATUS_MORE}],
        {"id": "1", "status": "PAID"},
        {"id": "2", "status": "REFUNDED"},
        _check_enum,
    ),
    "nested field added": Change(
        [ID, {"name": "customer", "type": CUSTOMER}],
        [ID, {"name": "customer", "type": CUSTOMER_EMAIL}],
        {"id": "1", "customer": {"name": "Ada"}},
        {"id": "2", "customer": {"name": "Bob", "email": "b@example.com"}},
        _check_nested,
    ),
    "array of records added": Change(
        [ID],
        [ID, {"name": "lines", "type": {"type": "array", "items": LINE}, "default": []}],
        {"id": "1"},
        {"id": "2", "lines": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]},
        _check_array_of_records,
    ),
    "union changed": Change(
        [ID, {"name": "v", "type": ["null", "long"]}],
        [ID, {"name": "v", "type": ["null", "long", "string"]}],
        {"id": "1", "v": 5},
        {"id": "2", "v": "five"},
        _check_union,
    ),
    "a field in a message before the revision declares it": Change(
        [ID],
        [ID, {"name": "extra", "type": ["null", "long"], "default": None}],
        {"id": "1", "extra": 3},
        {"id": "2", "extra": 4},
        _check_early_field,
    ),
    "int to double (a widening)": Change(
        [ID, {"name": "n", "type": "long"}],
        [ID, {"name": "n", "type": "double"}],
        {"id": "1", "n": 7},
        {"id": "2", "n": 0.5},
        _check_int_double,
    ),
    "decimal wider than NUMERIC (a widening)": Change(
        [ID, {"name": "amount", "type": _decimal(12, 2)}],
        [ID, {"name": "amount", "type": _decimal(40, 10)}],
        {"id": "1", "amount": Decimal("10.25")},
        {"id": "2", "amount": Decimal("1.0000000001")},
        _check_decimal_wider,
    ),
}


def _schema(fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": "Order", "fields": fields}


def _stored(kind: str, fields: list[dict[str, Any]], message: dict[str, Any]) -> Any:
    if kind == "avro":
        declared = {f["name"] for f in fields}
        stored = avro_stored(_schema(fields), {k: v for k, v in message.items() if k in declared})
        # A value Avro's encoding cannot carry (a field the revision lacks) is no
        # part of the payload stored; keep it as a JSON topic's own payload would.
        return {**{k: v for k, v in message.items() if k not in declared}, **stored}
    # A declared JSON schema: the payload is the JSON the publisher sent.
    return json.loads(json.dumps(message, default=str))


@pytest.mark.parametrize("kind", ["avro", "declared JSON"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_drift(change: str, kind: str) -> None:
    case = CHANGES[change]
    first_fields = avro_fields(_schema(case.before))
    table = merge(merge((), first_fields), avro_fields(_schema(case.after)))
    payloads = [
        _stored(kind, case.before, case.first),
        _stored(kind, case.after, case.second),
    ]
    # Each message as the table stood when it arrived, and re-projected onto the merged table.
    early = [project(payloads[0], first_fields, "s@1")]
    projected = [project(p, table, f"s@{n}") for n, p in enumerate(payloads, 1)]
    for payload, projection in [*zip(payloads, projected, strict=True), (payloads[0], early[0])]:
        assert unaccounted(payload, projection) == [], change
    assert all(e.revision for p in projected for e in p.errors)
    case.check({f.name: f for f in table}, projected, early)


# The same changes in Protocol Buffers: (the first revision's fields, the second's,
# a message of each in the JSON mapping, the field to look at, its merged type, and
# whether the second message's value is a projection error).
PROTO_CHANGES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any], str, Type, bool]] = {
    "add an optional field": (
        "string id = 1;",
        "string id = 1; optional string note = 2;",
        {"id": "1"},
        {"id": "2", "note": "hi"},
        "note",
        Type.STRING,
        False,
    ),
    "add a field with a default": (
        "string id = 1;",
        "string id = 1; int64 qty = 2;",
        {"id": "1"},
        {"id": "2", "qty": "0"},
        "qty",
        Type.INT64,
        False,
    ),
    "remove a field": (
        "string id = 1; string legacy = 2;",
        "string id = 1;",
        {"id": "1", "legacy": "old"},
        {"id": "2"},
        "legacy",
        Type.STRING,
        False,
    ),
    "rename a field": (
        "string id = 1; string cust = 2;",
        "string id = 1; string customer = 2;",
        {"id": "1", "cust": "Ada"},
        {"id": "2", "customer": "Bob"},
        "customer",
        Type.STRING,
        False,
    ),
    "int32 to int64": (
        "string id = 1; int32 n = 2;",
        "string id = 1; int64 n = 2;",
        {"id": "1", "n": 7},
        {"id": "2", "n": str(2**40)},
        "n",
        Type.INT64,
        False,
    ),
    "int64 to string": (
        "string id = 1; int64 n = 2;",
        "string id = 1; string n = 2;",
        {"id": "1", "n": "7"},
        {"id": "2", "n": "seven"},
        "n",
        Type.INT64,
        True,
    ),
    "string to int64": (
        "string id = 1; string code = 2;",
        "string id = 1; int64 code = 2;",
        {"id": "1", "code": "A7"},
        {"id": "2", "code": "7"},
        "code",
        Type.STRING,
        # An int64 is stored as its digits (the JSON mapping): text, which fits.
        False,
    ),
    "enum value added": (
        "enum S { NEW = 0; PAID = 1; } string id = 1; S status = 2;",
        "enum S { NEW = 0; PAID = 1; REFUNDED = 2; } string id = 1; S status = 2;",
        {"id": "1", "status": "PAID"},
        {"id": "2", "status": "REFUNDED"},
        "status",
        Type.STRING,
        False,
    ),
    "nested field added": (
        "message C { string name = 1; } string id = 1; C customer = 2;",
        "message C { string name = 1; string email = 2; } string id = 1; C customer = 2;",
        {"id": "1", "customer": {"name": "Ada"}},
        {"id": "2", "customer": {"name": "Bob", "email": "b@example.com"}},
        "customer",
        Type.RECORD,
        False,
    ),
    "repeated message added": (
        "string id = 1;",
        "message L { string sku = 1; int32 qty = 2; } string id = 1; repeated L lines = 2;",
        {"id": "1"},
        {"id": "2", "lines": [{"sku": "a", "qty": 2}]},
        "lines",
        Type.RECORD,
        False,
    ),
    "oneof changed": (
        "string id = 1; oneof v { int64 number = 2; }",
        "string id = 1; oneof v { int64 number = 2; string text = 3; }",
        {"id": "1", "number": "5"},
        {"id": "2", "text": "five"},
        "text",
        Type.STRING,
        False,
    ),
    "uint64 after int64 (a widening)": (
        "string id = 1; int64 n = 2;",
        "string id = 1; uint64 n = 2;",
        {"id": "1", "n": "-7"},
        {"id": "2", "n": str(2**64 - 1)},
        "n",
        Type.NUMERIC,
        False,
    ),
}


def _proto(body: str) -> ProtobufCodec:
    return ProtobufCodec(f'syntax = "proto3";\nmessage Order {{ {body} }}\n')


@pytest.mark.parametrize("change", list(PROTO_CHANGES))
def test_protobuf_drift(change: str) -> None:
    before, after, first, second, name, kind, misfit = PROTO_CHANGES[change]
    codecs = [_proto(before), _proto(after)]
    table = merge(protobuf_fields(codecs[0].descriptor), protobuf_fields(codecs[1].descriptor))
    merged = {f.name: f for f in table}
    assert merged[name].type is kind
    payloads = [protobuf_stored(c, m) for c, m in zip(codecs, (first, second), strict=True)]
    projected = [project(p, table, f"s@{n}") for n, p in enumerate(payloads, 1)]
    for payload, projection in zip(payloads, projected, strict=True):
        assert unaccounted(payload, projection) == [], change
    assert (name in _errors(projected[1])) is misfit
    if not misfit:  # the value is typed, in whichever message carries it
        carrier = 1 if name in second else 0
        assert projected[carrier].values[name] not in (None, [])


def test_bigquery_s_merge_only_adds_fields() -> None:
    """BigQuery changes no field of a RECORD in place: without widening, a wider type
    keeps the table's, nested too, and new fields are still added."""
    table = (
        _field("n", Type.INT64),
        Field(name="r", type=Type.RECORD, fields=(_field("d", Type.DATE),)),
    )
    revision = (
        _field("n", Type.FLOAT64),
        Field(
            name="r", type=Type.RECORD, fields=(_field("d", Type.DATETIME), _field("e", Type.BOOL))
        ),
        _field("note", Type.STRING),
    )
    merged = merge(table, revision, widen=False)
    assert merged == (
        _field("n", Type.INT64),
        Field(name="r", type=Type.RECORD, fields=(_field("d", Type.DATE), _field("e", Type.BOOL))),
        _field("note", Type.STRING),
    )
    # DuckDB's merge widens the same types.
    assert [f.type for f in merge(table, revision)][:1] == [Type.FLOAT64]

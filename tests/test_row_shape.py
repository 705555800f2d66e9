"""A field added to the rows is not done until it is everywhere a row goes: the
API's views, the row a pushed message becomes, and (in the store contract's round
trip, whose rows fill every field) every store."""

from __future__ import annotations

import json

from app.ingest.envelope import PushedMessage
from app.ingest.payload import CONTRACT, PayloadValues
from app.ingest.service import to_row
from app.query.service import RecordView, RejectionView, record_view, view
from app.records import Record, Rejection, columns
from tests.rows import defaulted

NOW = 1_700_000_000_000_000
SCHEMA = "projects/p/schemas/s@r1"


class NamedRevision:
    """The contract's payloads, as of a topic schema revision."""

    schema = SCHEMA

    def read(self, data: bytes) -> PayloadValues:
        return CONTRACT.read(data)


def _message(data: bytes) -> PushedMessage:
    return PushedMessage(
        message_id="m-1",
        publish_time=NOW - 1_000_000,
        data=data,
        raw_data=data,
        attributes={"origin": "test"},
        subscription="projects/p/subscriptions/s",
        delivery_attempt=2,
    )


def test_the_api_shows_every_column_of_a_row() -> None:
    assert set(RecordView.__struct_fields__) == {c.name for c in columns(Record)}
    # A rejection's view has never shown its trace id; it says besides whether the
    # message was stored since. Any other column is shown.
    shown = set(RejectionView.__struct_fields__) - {"stored"}
    assert shown == {c.name for c in columns(Rejection)} - {"trace_id"}


def test_the_quick_view_of_a_record_shows_every_field_the_general_one_does() -> None:
    payload = {"id": "r-1", "timestamp": "2026-01-02T03:04:05Z", "data": {"k": 1}}
    record = to_row(
        _message(json.dumps(payload).encode()), NOW, trace_id="ab" * 16, reader=NamedRevision()
    )
    assert isinstance(record, Record)
    assert record_view(record) == view(RecordView, record)


def test_a_pushed_message_fills_every_field_of_its_row() -> None:
    payload = {"id": "r-1", "timestamp": "2026-01-02T03:04:05Z", "data": {"k": 1}}
    record = to_row(
        _message(json.dumps(payload).encode()), NOW, trace_id="ab" * 16, reader=NamedRevision()
    )
    assert isinstance(record, Record)
    assert defaulted(record) == set()
    assert record.received is not None  # kept for a store that refuses the row
    refused = to_row(_message(b"not json"), NOW, trace_id="ab" * 16, reader=NamedRevision())
    assert isinstance(refused, Rejection)
    assert defaulted(refused) == set()


def test_a_row_or_view_the_collector_does_not_track_holds_no_container() -> None:
    """Rows and their views are made with `gc=False`: one that held a list, a dict or any
    value that may be one could be in a reference cycle the collector never frees. Every
    field of each (and of the structs within them) is a plain immutable value."""
    import msgspec.inspect as mi

    from app.records import Row
    from app.store.spanner import ledger

    plain = (mi.StrType, mi.IntType, mi.FloatType, mi.BoolType, mi.BytesType, mi.NoneType)
    plain += (mi.DateTimeType, mi.RawType, mi.LiteralType, mi.EnumType)

    def untracked(struct: type) -> list[type]:
        return [struct, *(s for sub in struct.__subclasses__() for s in untracked(sub))]

    def check(where: str, info: mi.Type) -> None:
        if isinstance(info, mi.Metadata):
            check(where, info.type)
        elif isinstance(info, mi.UnionType):
            for member in info.types:
                check(where, member)
        elif isinstance(info, mi.StructType):
            assert not info.cls.__struct_config__.gc, f"{where}: {info.cls.__name__} is tracked"
            for field in info.fields:
                check(f"{where}.{field.name}", field.type)
        else:
            assert isinstance(info, plain), f"{where} may hold a container: {info}"

    structs = [*untracked(Row), RecordView, RejectionView]
    assert ledger.Progress in structs
    for struct in structs:
        assert not struct.__struct_config__.gc, struct
        check(struct.__name__, mi.type_info(struct))

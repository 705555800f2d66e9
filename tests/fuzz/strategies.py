"""What a sender can push, as Hypothesis strategies: envelopes, payloads, ids and times.

Every format the service accepts is covered: wrapped and unwrapped deliveries,
the `{"id", "timestamp", "data"}` contract, the publisher's own JSON shape, and
topic schemas (Avro and Protocol Buffers, each in its BINARY and JSON
encodings). Each payload strategy mixes inputs that fit (and must be stored
exactly) with near misses and junk (which must be rejected, never answered
5xx). A `Push` says which it is, so the test can hold the service to it.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastavro
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from hypothesis import strategies as st

from app.ingest.protobuf import compile_proto
from app.ingest.schemas import SchemaRevision

SCHEMA_PROJECT = "projects/fuzz/schemas"
AVRO_SCHEMA = f"{SCHEMA_PROJECT}/avro-events"
PROTO_SCHEMA = f"{SCHEMA_PROJECT}/proto-events"
REVISION = "r1"

# Both schemas keep the contract's field names, `id` and `timestamp`, so the
# default mapping reads them.
AVRO_DEFINITION: dict[str, Any] = {
    "type": "record",
    "name": "Event",
    "namespace": "fuzz",
    "fields": [
        {"name": "id", "type": "string"},
        {
            "name": "timestamp",
            "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
        },
        {"name": "count", "type": "long"},
        {"name": "ratio", "type": "double"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]}},
        {"name": "blob", "type": "bytes"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "labels", "type": {"type": "map", "values": "int"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {
            "name": "child",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Child",
                    "fields": [
                        {"name": "depth", "type": "int"},
                        {"name": "name", "type": "string"},
                    ],
                },
            ],
            "default": None,
        },
    ],
}
PROTO_DEFINITION = """
syntax = "proto3";
message Event {
  message Timestamp {
    int64 seconds = 1;
    int32 nanos = 2;
  }
  string id = 1;
  Timestamp timestamp = 2;
  int64 count = 3;
  double ratio = 4;
  repeated string tags = 5;
  map<string, int32> labels = 6;
  bytes blob = 7;
  oneof choice {
    string text = 8;
    int32 number = 9;
  }
}
"""

_AVRO = fastavro.parse_schema(AVRO_DEFINITION)


def _proto_class() -> Any:
    pool = DescriptorPool()
    files = compile_proto(PROTO_DEFINITION).file
    for file in files:
        pool.Add(file)
    top = next(iter(pool.FindFileByName(files[-1].name).message_types_by_name.values()))
    return message_factory.GetMessageClass(top)


_PROTO = _proto_class()


class SchemaRevisions:
    """The Schema API as an in-process fake of the SchemaSource protocol: both revisions."""

    def __init__(self) -> None:
        self._revisions = {
            (AVRO_SCHEMA, REVISION): SchemaRevision(
                name=AVRO_SCHEMA,
                revision_id=REVISION,
                type="AVRO",
                definition=json.dumps(AVRO_DEFINITION),
            ),
            (PROTO_SCHEMA, REVISION): SchemaRevision(
                name=PROTO_SCHEMA,
                revision_id=REVISION,
                type="PROTOCOL_BUFFER",
                definition=PROTO_DEFINITION,
            ),
        }

    async def revision(self, name: str, revision_id: str) -> SchemaRevision:
        from app.ingest.schemas import SchemaNotFound

        found = self._revisions.get((name, revision_id or REVISION))
        if found is None:
            raise SchemaNotFound(f"{name}@{revision_id}")
        return found

    async def close(self) -> None:
        return None


@dataclass
class Push:
    """One delivery: its format, whether its payload fits, and how it is sent."""

    fmt: str
    message_id: str
    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    publish_time: str = "2024-04-27T12:00:01Z"
    # True: the payload fits its format and must be stored; False: it must not
    # be; None: the fuzzer makes no claim (junk that may happen to fit).
    fits: bool | None = None
    # The JSON text `data` must be stored as, when the format keeps the text sent.
    stored_text: str | None = None
    unwrapped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def request(self) -> tuple[dict[str, bytes], bytes]:
        """Headers and body of the HTTP request Pub/Sub would make."""
        if self.unwrapped:
            # Header values travel as bytes; servers read them as latin-1.
            headers = {
                "x-goog-pubsub-message-id": self.message_id,
                "x-goog-pubsub-publish-time": self.publish_time,
                **self.attributes,
            }
            return {name: value.encode("latin-1") for name, value in headers.items()}, self.data
        message = {
            "data": base64.b64encode(self.data).decode(),
            "messageId": self.message_id,
            "message_id": self.message_id,
            "publishTime": self.publish_time,
            "publish_time": self.publish_time,
            "attributes": self.attributes,
        }
        body = {
            "message": message,
            "subscription": "projects/fuzz/subscriptions/push",
            **self.extra,
        }
        return {"content-type": b"application/json"}, json.dumps(body).encode()


# -- the parts -----------------------------------------------------------------------

# Pub/Sub's ids are digits; a sender may put anything there (the service takes
# up to 1,024 characters), and the id must still round-trip through a path.
message_ids = st.one_of(
    st.integers(min_value=1, max_value=10**17).map(str),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40),
    st.sampled_from(
        ["a/b", "%2F", "..", ".", "/", "//", "a b", "?x=1", "#", "\u00ff", "\x00", "~"]
    ),
)
# Header values arrive as latin-1 text with no line breaks.
header_ids = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
    min_size=1,
    max_size=40,
)
# Ids that fit: slashes alone are no id (no path can name one).
record_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda text: text.strip("/")
)

_offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_any_datetimes = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
)
# Times inside years 1 to 9999 once in UTC: storable.
storable_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).flatmap(lambda t: _offsets.map(lambda tz: t.astimezone(tz)))
# Any RFC 3339 text, at the edges of the range too (an offset can push a time
# outside it), and text that is no time at all.
time_texts = st.one_of(
    storable_times.map(lambda t: t.isoformat()),
    st.builds(lambda t, tz: t.replace(tzinfo=tz).isoformat(), _any_datetimes, _offsets),
    st.sampled_from(
        [
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59.999999Z",
            "0001-01-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-04-27T12:00:60Z",
            "2024-04-27t12:00:00z",
            "2024-04-27T12:00:00.123456789Z",
            "2024-04-27 12:00:00Z",
            "2024-04-27T12:00:00",
            "",
        ]
    ),
    st.text(max_size=30),
)

_strings = st.text(max_size=30) | st.sampled_from(
    ["\x00", "\u2028", "\U0001f600", "\\", '"', "[[[[", "]}", "\ufeff", "é"]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_strings, inner, max_size=4),
    max_leaves=12,
)


def nested_text(depth: int) -> str:
    return "[" * depth + "]" * depth


def _json_text(value: Any, indent: int | None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


# JSON text as publishers write it: compact, pretty, ASCII-escaped.
json_texts = st.builds(
    lambda value, style: (
        _json_text(value, None)
        if style == 0
        else _json_text(value, 2)
        if style == 1
        else json.dumps(value)
    ),
    json_values,
    st.integers(0, 2),
)
# Nesting around BigQuery's limit of 500 levels, and far past any decoder's.
deep_texts = st.sampled_from([499, 500, 501, 999, 1000, 3000]).map(nested_text)


@st.composite
def broken_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` damaged the way transport and buggy publishers damage bytes."""
    how = draw(st.integers(0, 4))
    if not base:
        return draw(st.binary(max_size=40))
    at = draw(st.integers(0, len(base)))
    match how:
        case 0:  # cut short
            return base[:at]
        case 1:  # a byte no UTF-8 text holds, spliced in
            return (
                base[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + base[at:]
            )
        case 2:  # a lone surrogate escape
            return base[:at] + b"\\ud800" + base[at:]
        case 3:
            return base + draw(st.binary(max_size=8))
        case _:
            return draw(st.binary(max_size=60))


# -- payloads, per format --------------------------------------------------------------


@st.composite
def contract_payloads(draw: st.DrawFn) -> tuple[bytes, bool | None, str | None]:
    """`{"id", "timestamp", "data"}`: (bytes, fits, the data text to be stored)."""
    kind = draw(st.integers(0, 5))
    if kind <= 2:  # fits
        data = draw(json_texts)
        # An integer id is kept as its digits.
        payload = {"id": draw(record_ids | st.integers(-(2**63), 2**64 - 1))}
        text = "{" + f'"id": {json.dumps(payload["id"])}'
        if draw(st.booleans()):
            text += f', "timestamp": {json.dumps(draw(storable_times).isoformat())}'
        text += f', "data": {data}' + "}"
        return text.encode(), True, data
    if kind == 3:  # a field that breaks a rule
        bad = draw(
            st.sampled_from(
                [
                    '{"id": ""}',
                    '{"id": true}',
                    '{"id": 1.5}',
                    '{"id": "/"}',
                    '{"timestamp": "2024-04-27T12:00:00Z"}',
                    '{"id": "x", "timestamp": "9999-12-31T23:59:59-14:00"}',
                    '{"id": "x", "timestamp": "0001-01-01T00:00:00+00:01"}',
                    '{"id": "x", "timestamp": "2024-04-27T12:00:00"}',
                    '{"id": "x", "timestamp": 1714219200}',
                    '{"id": "' + "i" * 1025 + '"}',
                    '{"id": "x", "data": ' + nested_text(501) + "}",
                    '{"id": "x", "data": ' + nested_text(2000) + "}",
                    '{"id": "x", "data": "\\ud800"}',
                    "[]",
                    "null",
                    "",
                ]
            )
        )
        return bad.encode(), False, None
    if kind == 4:
        return ('{"id": "deep", "data": ' + draw(deep_texts) + "}").encode(), None, None
    good = ('{"id": "x", "data": ' + draw(json_texts) + "}").encode()
    return draw(broken_bytes(good)), None, None


@st.composite
def mapped_payloads(draw: st.DrawFn) -> tuple[bytes, bool | None, str | None]:
    """The publisher's own shape (`order.key`, `at`): the whole payload is `data`."""
    kind = draw(st.integers(0, 4))
    if kind <= 2:
        body: dict[str, Any] = {"order": {"key": draw(record_ids)}, "extra": draw(json_values)}
        if draw(st.booleans()):
            body["at"] = draw(storable_times).isoformat()
        text = _json_text(body, draw(st.sampled_from([None, 2])))
        return text.encode(), True, text
    if kind == 3:
        bad = draw(
            st.sampled_from(
                [
                    '{"order": {}}',
                    '{"order": "k"}',
                    '{"order": {"key": []}}',
                    '{"order": {"key": "k"}, "at": "9999-12-31T23:59:59-14:00"}',
                    '{"order": {"key": "k"}, "x": ' + nested_text(600) + "}",
                    "[1, 2]",
                ]
            )
        )
        return bad.encode(), False, None
    good = json.dumps({"order": {"key": "k"}, "x": draw(json_values)}).encode()
    return draw(broken_bytes(good)), None, None


_avro_values = st.fixed_dictionaries(
    {
        "id": record_ids,
        "timestamp": st.none()
        | st.datetimes(
            min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
        ),
        "count": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "ratio": st.floats(allow_nan=False, allow_infinity=False),
        "kind": st.sampled_from(["A", "B", "C"]),
        "blob": st.binary(max_size=20),
        "tags": st.lists(st.text(max_size=10), max_size=3),
        # fastavro's JSON writer fails on an empty map key ("No key was set"):
        # messages with one are made by hand below.
        "labels": st.dictionaries(
            st.text(min_size=1, max_size=5), st.integers(-(2**31), 2**31 - 1), max_size=3
        ),
        "note": st.none() | st.text(max_size=10),
        "child": st.none()
        | st.fixed_dictionaries(
            {"depth": st.integers(-(2**31), 2**31 - 1), "name": st.text(max_size=10)}
        ),
    }
)


def avro_binary(value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, _AVRO, value)
    return out.getvalue()


def avro_json(value: dict[str, Any]) -> bytes:
    out = io.StringIO()
    fastavro.json_writer(out, _AVRO, [value])
    return out.getvalue().strip().encode()


@st.composite
def avro_payloads(draw: st.DrawFn, encoding: str) -> tuple[bytes, bool | None, str | None]:
    value = draw(_avro_values)
    encoded = avro_binary(value) if encoding == "BINARY" else avro_json(value)
    kind = draw(st.integers(0, 3))
    if kind <= 1:
        return encoded, True, None
    if kind == 2 and encoding == "JSON":
        # A field of the wrong type, or missing: Pub/Sub would have refused it
        # at publish, a push or a replay may still carry it.
        wrong = json.loads(encoded)
        key = draw(st.sampled_from(sorted(wrong)))
        if draw(st.integers(0, 4)) == 0:
            wrong["labels"] = {"": 1}
            fits = True
        elif draw(st.booleans()):
            del wrong[key]
            fits = key in ("note", "child")  # these have defaults
        else:
            wrong[key] = draw(st.sampled_from(["text", 1.5, [], {}, None]))
            fits = None
        return json.dumps(wrong).encode(), fits, None
    return draw(broken_bytes(encoded)), None, None


_proto_values = st.fixed_dictionaries(
    {
        "id": record_ids,
        "count": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "ratio": st.floats(allow_nan=False, allow_infinity=False),
        "tags": st.lists(st.text(max_size=10), max_size=3),
        "labels": st.dictionaries(
            st.text(max_size=5), st.integers(-(2**31), 2**31 - 1), max_size=3
        ),
        "blob": st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
    },
    optional={
        "timestamp": st.fixed_dictionaries(
            {
                "seconds": st.integers(-62_135_596_800, 253_402_300_799).map(str),
                "nanos": st.integers(0, 999_999_999),
            }
        ),
        "text": st.text(max_size=10),
        "number": st.integers(-(2**31), 2**31 - 1),
    },
).filter(lambda v: not ("text" in v and "number" in v))


@st.composite
def proto_payloads(draw: st.DrawFn, encoding: str) -> tuple[bytes, bool | None, str | None]:
    value = draw(_proto_values)
    message = json_format.ParseDict(value, _PROTO())
    if encoding == "BINARY":
        encoded = bytes(message.SerializeToString())
    else:
        encoded = json_format.MessageToJson(message, indent=None).encode()
    if draw(st.integers(0, 2)) <= 1:
        return encoded, True, None
    return draw(broken_bytes(encoded)), None, None


def _schema_attributes(name: str, encoding: str) -> dict[str, str]:
    return {
        "googclient_schemaname": name,
        "googclient_schemarevisionid": REVISION,
        "googclient_schemaencoding": encoding,
    }


# Format name: (payload strategy, attributes its messages carry).
FORMATS: dict[str, tuple[Callable[[], st.SearchStrategy[Any]], dict[str, str]]] = {
    "contract": (contract_payloads, {}),
    "avro-binary": (lambda: avro_payloads("BINARY"), _schema_attributes(AVRO_SCHEMA, "BINARY")),
    "avro-json": (lambda: avro_payloads("JSON"), _schema_attributes(AVRO_SCHEMA, "JSON")),
    "proto-binary": (lambda: proto_payloads("BINARY"), _schema_attributes(PROTO_SCHEMA, "BINARY")),
    "proto-json": (lambda: proto_payloads("JSON"), _schema_attributes(PROTO_SCHEMA, "JSON")),
}
# With RECORDLINE_ID_FIELD=order.key and RECORDLINE_TIME_FIELD=at.
MAPPED = {"mapped": (mapped_payloads, {})}

_user_attributes = st.dictionaries(
    st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=8),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    max_size=3,
)


def _header_safe(text: str) -> bool:
    """Whether HTTP can carry `text` as a header value, as it is."""
    return text == text.strip() and all(0x20 <= ord(c) <= 0xFF and c != "\x7f" for c in text)


@st.composite
def pushes(draw: st.DrawFn, formats: dict[str, Any]) -> Push:
    fmt = draw(st.sampled_from(sorted(formats)))
    strategy, schema_attributes = formats[fmt]
    data, fits, stored_text = draw(strategy())
    unwrapped = fmt in ("contract", "mapped") and draw(st.integers(0, 3)) == 0
    attributes = {**draw(_user_attributes), **schema_attributes}
    if unwrapped:
        # HTTP trims a header value's surrounding whitespace: Pub/Sub cannot send it.
        attributes = {name: value.strip() for name, value in attributes.items()}
    push = Push(
        fmt=fmt,
        message_id=draw(header_ids if unwrapped else message_ids),
        data=data,
        attributes=attributes,
        fits=fits,
        stored_text=stored_text,
        unwrapped=unwrapped,
    )
    if not push.message_id.strip("/"):
        push.fits = None  # an unusable envelope: 400
    # The envelope itself, now and then out of what it may hold: a 400.
    envelope = draw(st.integers(0, 9))
    if envelope == 0:
        push.publish_time = draw(time_texts.filter(_header_safe) if unwrapped else time_texts)
        push.fits = None
    elif envelope == 1 and not unwrapped:
        push.extra["deliveryAttempt"] = draw(st.integers(-5, 2**64) | json_values)
        push.fits = None
    elif envelope == 2 and not unwrapped:
        push.extra["deliveryAttempt"] = draw(st.integers(1, 100))
    return push


# -- schema revisions ------------------------------------------------------------------

# Field names of every kind a publisher may write: plain, Unicode (BigQuery's
# flexible names), names only in case apart, and names no column can have
# (reserved prefixes, punctuation, empty, too long). Never `id` or `timestamp`,
# which the generated record has as its contract's.
_field_names = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
    st.sampled_from(["café", "日付", "prix-total", "a b", "Key", "KEY", "value", "1st", "x" * 300]),
    st.sampled_from(
        ["_TABLE_x", "_PARTITIONTIME", "__root__", "_CHANGE_TYPE", "x.y", "a$", "", "é" * 301]
    ),
    st.text(max_size=5),
).filter(lambda name: name not in ("id", "timestamp"))
_PRIMITIVES = ["boolean", "int", "long", "float", "double", "bytes", "string"]
_LOGICAL = [
    {"type": "long", "logicalType": "timestamp-micros"},
    {"type": "int", "logicalType": "date"},
    {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
    {"type": "string", "logicalType": "uuid"},
]


@dataclass
class AvroRevision:
    """A generated Avro schema and a datum of it (None where none is written)."""

    definition: Any
    datum: Any = None


class _Types:
    """The named types a schema being generated has defined so far, and the records
    it is inside (which a field may name again: recursion)."""

    def __init__(self) -> None:
        self.defined: dict[str, Any] = {}
        self.enclosing: list[str] = []
        self.count = 0

    def name(self) -> str:
        self.count += 1
        return f"T{self.count}"


def _avro_type(draw: st.DrawFn, types: _Types, depth: int) -> Any:
    kinds = ["primitive"] * 4 + ["logical", "enum", "fixed", "array", "map", "union", "unions"]
    kinds += ["record"] * 2 if depth < 18 else []
    kinds += ["again"] if types.defined else []
    kinds += ["recursive"] if types.enclosing else []
    match draw(st.sampled_from(kinds)):
        case "primitive":
            return draw(st.sampled_from(_PRIMITIVES))
        case "logical":
            return draw(st.sampled_from(_LOGICAL))
        case "enum":
            name = types.name()
            enum = {"type": "enum", "name": name, "symbols": ["A", "B", "C"]}
            types.defined[name] = enum
            return enum
        case "fixed":
            name = types.name()
            fixed = {"type": "fixed", "name": name, "size": draw(st.integers(1, 4))}
            types.defined[name] = fixed
            return fixed
        case "array":
            return {"type": "array", "items": _avro_type(draw, types, depth + 1)}
        case "map":
            return {"type": "map", "values": _avro_type(draw, types, depth + 1)}
        case "union":
            return ["null", _avro_type(draw, types, depth + 1)]
        case "unions":  # more than one branch besides null: typed as JSON
            return ["null", "string", "long"]
        case "again":  # a named type used again: the expansion grows
            return draw(st.sampled_from(sorted(types.defined)))
        case "recursive":
            return ["null", draw(st.sampled_from(types.enclosing))]
        case _:
            return _avro_record(draw, types, depth + 1, draw(st.integers(1, 4)))


def _avro_record(draw: st.DrawFn, types: _Types, depth: int, width: int) -> dict[str, Any]:
    name = types.name()
    types.enclosing.append(name)
    names = list(dict.fromkeys(draw(st.lists(_field_names, min_size=1, max_size=width))))
    fields = [{"name": n, "type": _avro_type(draw, types, depth)} for n in names]
    types.enclosing.pop()
    record = {"type": "record", "name": name, "fields": fields}
    types.defined[name] = record
    return record


def _avro_chain(draw: st.DrawFn, types: _Types) -> Any:
    """Records that each hold the previous one `width` times (nullable, so a datum
    stays small): a few hundred bytes that name width**levels records, or nest
    levels deep."""
    levels, width = draw(st.integers(2, 20)), draw(st.integers(1, 4))
    record: Any = {
        "type": "record",
        "name": types.name(),
        "fields": [{"name": "v", "type": "long"}],
    }
    for _ in range(levels):
        previous = record
        fields = [{"name": "f0", "type": ["null", previous], "default": None}]
        fields += [
            {"name": f"f{i}", "type": ["null", previous["name"]], "default": None}
            for i in range(1, width)
        ]
        record = {"type": "record", "name": types.name(), "fields": fields}
    return record


def _avro_datum(draw: st.DrawFn, schema: Any, types: dict[str, Any], depth: int) -> Any:
    """A value of `schema`, small: deep or recursive parts are null where they may be."""
    if isinstance(schema, str) and schema in types:
        return _avro_datum(draw, types[schema], types, depth)
    if isinstance(schema, list):
        if depth > 3 or draw(st.booleans()):
            return None
        if schema == ["null", "string", "long"]:
            return draw(st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1))
        return _avro_datum(draw, schema[1], types, depth + 1)
    kind = schema.get("type") if isinstance(schema, dict) else schema
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    match kind, logical:
        case "long", "timestamp-micros":
            return draw(st.integers(0, 2**50))
        case "int", "date":
            return draw(st.integers(0, 2_900_000))
        case "bytes", "decimal":
            return draw(st.decimals(-(10**7), 10**7, places=2, allow_nan=False))
        case "string", "uuid":
            return str(draw(st.uuids()))
        case "boolean", _:
            return draw(st.booleans())
        case "int", _:
            return draw(st.integers(-(2**31), 2**31 - 1))
        case "long", _:
            return draw(st.integers(-(2**63), 2**63 - 1))
        case "float" | "double", _:
            return draw(st.floats(allow_nan=False, allow_infinity=False, width=32))
        case "bytes", _:
            return draw(st.binary(max_size=6))
        case "string", _:
            return draw(st.text(max_size=6))
        case "enum", _:
            return draw(st.sampled_from(schema["symbols"]))
        case "fixed", _:
            return draw(st.binary(min_size=schema["size"], max_size=schema["size"]))
        case "array", _:
            items = st.lists(st.just(None), max_size=0 if depth > 3 else 2)
            return [_avro_datum(draw, schema["items"], types, depth + 1) for _ in draw(items)]
        case "map", _:
            keys = draw(st.lists(st.text(min_size=1, max_size=3), max_size=0 if depth > 3 else 2))
            return {k: _avro_datum(draw, schema["values"], types, depth + 1) for k in keys}
        case "record", _:
            return {
                f["name"]: _avro_datum(draw, f["type"], types, depth + 1) for f in schema["fields"]
            }
    raise AssertionError(f"no datum for {schema!r}")


@st.composite
def avro_revisions(draw: st.DrawFn) -> AvroRevision:
    """An Avro revision a publisher might commit, hostile or not: named types used
    again (the expansion grows), recursion, depth, width, Unicode and reserved names,
    enums, fixed, unions, maps and arrays; with a datum of it that fastavro writes.
    Its top record has the contract's `id` (text) first."""
    types = _Types()
    if draw(st.integers(0, 4)) == 0:
        inner = _avro_chain(draw, types)
        top = {
            "type": "record",
            "name": "Revision",
            "fields": [{"name": "bomb", "type": ["null", inner], "default": None}],
        }
    else:
        top = _avro_record(draw, types, 0, draw(st.integers(1, 8)))
    definition = {
        **top,
        "namespace": "fuzz",
        "fields": [
            {"name": "id", "type": "string"},
            *(f for f in top["fields"] if f["name"] != "id"),
        ],
    }
    datum = _avro_datum(draw, definition, _defined(definition), 0)
    datum["id"] = draw(record_ids)
    return AvroRevision(definition, datum)


def _defined(schema: Any, found: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type `schema` defines, by name."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _defined(branch, found)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            found[schema["name"]] = schema
        for field in schema.get("fields", ()):
            _defined(field["type"], found)
        for key in ("items", "values"):
            if key in schema:
                _defined(schema[key], found)
    return found

"""The schema fuzzer: generated Avro revisions, hostile or not, never break the service.

Each example commits one generated revision (named types used again, recursion,
depth, width, Unicode and reserved names, enums, unions; now and then a chain
of records that names millions of fields in a few hundred bytes) to the
Schema API, pushes a datum of it, then a push of a revision the service already
knows. The service must:
- answer both 204, never 5xx, and store the datum (a revision is never a reason
  to reject a message its decoder reads);
- give the datum typed columns, or a projection error naming the cap it passed,
  every value of it in a typed field or an error;
- go on giving the known revision's push its typed columns, within its bound;
and the mapping must stay within its caps and do work in proportion to them,
whatever the revision expands to.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from app.asgi import create_app, fetching_schemas
from app.ingest.schemas import SchemaNotFound, SchemaRevision
from app.settings import Settings
from app.typed.mapping import MAX_DEPTH, MAX_FIELDS, Field, OverCap, Type, avro_fields, field_count
from tests.conftest import served_in_thread
from tests.fuzz.budget import EXAMPLES
from tests.fuzz.strategies import SCHEMA_PROJECT, AvroRevision, Push, avro_revisions
from tests.typed.accounting import unaccounted_row
from tests.typed.bombs import python_calls

SCHEMA = f"{SCHEMA_PROJECT}/generated"
KNOWN = {
    "type": "record",
    "name": "Known",
    "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "long"}],
}
# A push of a revision the service knows is answered within this, whatever came
# before it (the unbounded mapping held the event loop for minutes).
PUSH_SECONDS = 10.0
# Python calls per field the mapping makes at most (tests/typed/test_mapping.py).
CALLS_PER_FIELD = 40


class GeneratedRevisions:
    """The Schema API as an in-process SchemaSource: revisions added as they are made."""

    def __init__(self) -> None:
        self.revisions: dict[str, SchemaRevision] = {}
        self.calls: list[str] = []

    def add(self, revision_id: str, definition: str) -> None:
        self.revisions[revision_id] = SchemaRevision(
            name=SCHEMA, revision_id=revision_id, type="AVRO", definition=definition
        )

    async def revision(self, name: str, revision_id: str) -> SchemaRevision:
        self.calls.append(revision_id)
        found = self.revisions.get(revision_id)
        if name != SCHEMA or found is None:
            raise SchemaNotFound(f"{name}@{revision_id}")
        return found

    async def close(self) -> None:
        return None


class Service:
    def __init__(self, client: httpx.Client, path: Path, source: GeneratedRevisions) -> None:
        self.client = client
        self.path = path
        self.source = source
        self.numbers = itertools.count(1)

    def push(
        self, revision_id: str, data: bytes, message_id: str, encoding: str = "BINARY"
    ) -> float:
        """Seconds the push took; it must be answered 204."""
        push = Push(
            fmt="avro-binary",
            message_id=message_id,
            data=data,
            attributes={
                "googclient_schemaname": SCHEMA,
                "googclient_schemarevisionid": revision_id,
                "googclient_schemaencoding": encoding,
            },
        )
        headers, body = push.request()
        started = time.monotonic()
        response = self.client.post("/pubsub/push", content=body, headers=headers)
        assert response.status_code == 204, (message_id, response.status_code, response.text)
        return time.monotonic() - started

    def typed(self, message_id: str) -> tuple[Any, Any, list[dict[str, Any]]]:
        """The record's payload, typed fields and projection errors, as stored."""
        # A point read waits until every earlier append is applied; under load it
        # may be answered 503 with Retry-After (its read deadline), as any client
        # is told to come back.
        deadline = time.monotonic() + PUSH_SECONDS
        while True:
            response = self.client.get(f"/v1/messages/{message_id}")
            if response.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        assert response.status_code == 200, (message_id, response.status_code, response.text)
        assert response.json()["status"] == "stored"
        with duckdb.connect(str(self.path)) as con:
            ((data, fields, errors),) = con.execute(
                "SELECT data, fields, projection_errors FROM records_typed WHERE message_id = $m",
                {"m": message_id},
            ).fetchall()
        return json.loads(data), fields, errors or []


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    path = tmp_path_factory.mktemp("schemas") / "fuzz.duckdb"
    source = GeneratedRevisions()
    source.add("known", json.dumps(KNOWN))
    config = Settings.load({"RECORDLINE_STORE": f"duckdb:{path}"})
    app = create_app(config, schemas=fetching_schemas(config, source))
    with served_in_thread(app) as client:
        yield Service(client, path, source)


def _avro(definition: Any, datum: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(definition), datum)
    return out.getvalue()


def _avro_json(definition: Any, datum: Any) -> bytes | None:
    out = io.StringIO()
    try:
        fastavro.json_writer(out, fastavro.parse_schema(definition), [datum])
    except Exception:  # RecursionError among others: what fastavro's JSON writer cannot write
        return None
    return out.getvalue().strip().encode()


def _depth(fields: tuple[Field, ...]) -> int:
    """How many records deep the fields nest (1: a top-level field's record)."""
    return max((1 + _depth(f.fields) for f in fields if f.type is Type.RECORD), default=0)


def _mapped_within_caps(definition: Any) -> str | None:
    """The cap the revision passes, or None; its fields within the caps either way,
    for work in proportion to them."""
    outcome: list[str | None] = []

    def mapping() -> None:
        try:
            fields = avro_fields(definition)
        except OverCap as exc:
            outcome.append(str(exc))
            return
        assert field_count(fields) <= MAX_FIELDS
        assert _depth(fields) <= MAX_DEPTH
        outcome.append(None)

    assert python_calls(mapping) < CALLS_PER_FIELD * MAX_FIELDS
    return outcome[0]


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.slow
@FUZZ
@given(revision=avro_revisions())
def test_no_revision_breaks_a_push_or_the_pushes_after_it(
    service: Service, revision: AvroRevision
) -> None:
    n = next(service.numbers)
    definition = msgspec.json.encode(revision.definition).decode()
    service.source.add(f"g{n}", definition)
    cap = _mapped_within_caps(revision.definition)

    service.push(f"g{n}", _avro(revision.definition, revision.datum), f"g-{n}")
    payload, fields, errors = service.typed(f"g-{n}")
    assert payload["id"] == revision.datum["id"]
    if cap is not None:
        assert fields is None or not any(fields.values())
        assert [(e["field"], e["reason"]) for e in errors] == [("$", f"no typed columns: {cap}")]
    else:
        assert unaccounted_row(payload, fields, errors) == [], (fields, errors)
        # The same datum in Avro's JSON encoding is the same record, where
        # fastavro's JSON writer can write it: it expands named types (so only a
        # revision within the caps), recurses without end on a recursive record,
        # and writes no empty key ("No key was set").
        encoded = _avro_json(revision.definition, revision.datum)
        if encoded is not None:
            service.push(f"g{n}", encoded, f"j-{n}", "JSON")
            assert service.typed(f"j-{n}") == (payload, fields, errors)

    seconds = service.push("known", _avro(KNOWN, {"id": f"k-{n}", "amount": n}), f"k-{n}")
    assert seconds < PUSH_SECONDS
    _, known, known_errors = service.typed(f"k-{n}")
    assert (known["id"], known["amount"], known_errors) == (f"k-{n}", n, [])
    # Each revision is fetched once, however it went.
    assert service.source.calls.count(f"g{n}") == 1

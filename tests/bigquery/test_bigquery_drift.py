"""The drift matrix on BigQuery alone: pushes to the service, stored through the
Storage Write fake, read back through the real `bigquery.Client` against the
`jobs.query` fake.

Each change of tests/typed/test_drift.py, for a topic's Avro schema (two revisions
served by the fake Schema API), for a Protocol Buffers one, and for a JSON topic's
declared schema (the service restarted with the second declaration, as a deploy
does), on a Storage Write API that learns each table change late (`schema_lag`):
a second, within the store's bounded wait; and, for Avro's matrix, the second
revision's changes longer than the wait. For each: 0 messages lost (each in
`records` exactly once, its payload in `data`), 0 stuck (each push answered 204
the first time, so none is redelivered or dead-lettered), 0 silent drops (every
value of the stored payload is in its typed column under `fields` or named in
`projection_errors`), and each revision's fields columns of the table
(`tables.get`) as soon as its first message is acknowledged.

The changes of one kind run side by side, each on a dataset and a service of its
own (sharing the Storage Write fake): each waits on the write path for seconds.

Not held yet (an expected failure below): a table's first typed columns reaching
the write path after the wait. `projection_errors` is one of them, so its rows
carry neither typed values nor errors; the values are in `data` alone.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from app.asgi import create_app, fetching_schemas, store_revisions
from app.ingest.protobuf import ProtobufCodec
from app.settings import QuerySettings, StoreSettings
from app.store.bigquery.store import TYPED_WAIT_SECONDS, BigQueryStore
from app.store.bigquery.typed import FIELDS, field_of, typed_of
from app.store.open import bigquery_options
from app.typed.mapping import Field, avro_fields, protobuf_fields
from app.typed.projection import project
from tests.bigquery.conftest import PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.conftest import served, settings
from tests.fake_schema_api import FakeSchemaApi
from tests.typed.accounting import unaccounted_row
from tests.typed.pushing import Push, avro_push, json_push, order, proto, protobuf_push, pushed
from tests.typed.test_drift import CHANGES, PROTO_CHANGES

RECORDS_JSON = (
    Path(__file__).resolve().parents[2] / "infra/terraform/modules/system/schemas/records.json"
)
# The write path learns a table change this late: within the store's wait…
LAG_SECONDS = 1.0
# …or long after it (minutes, as BigQuery may take).
LONG_LAG_SECONDS = 600.0
assert LAG_SECONDS < TYPED_WAIT_SECONDS < LONG_LAG_SECONDS
# What a value the write path could not take yet is said to be.
NOT_WRITABLE = "no typed field of this name in the table"


class Step(NamedTuple):
    """One message: the service's settings it is pushed to, the push, and the
    fields of its revision."""

    env: dict[str, str]
    push: Push
    fields: tuple[Field, ...]


class Stored(NamedTuple):
    """What one case left in its table: its rows, by message id (message id, payload
    in `data`, `fields`, `projection_errors`), and the table's typed fields."""

    rows: list[tuple[str, Any, Any, Any]]
    columns: tuple[Field, ...]


class World:
    """One change's own dataset: its `records` table, the `jobs.query` fake that reads
    it, and the service on it (restarted when a step's settings change)."""

    def __init__(self, name: str, dataset: str, write: FakeBigQueryWrite) -> None:
        self.name = name
        self.dataset = dataset
        self.write = write
        self.table = f"projects/{PROJECT}/datasets/{dataset}/tables/records"
        write.define(self.table, json.loads(RECORDS_JSON.read_text()))
        self.jobs = FakeBigQueryJobs(write, project=PROJECT, dataset=dataset)
        self.jobs.start()
        self._service: tuple[dict[str, str], httpx.AsyncClient, AsyncExitStack] | None = None

    async def push(self, step: Step) -> None:
        """Push it once; then the table has the revision's fields."""
        if self._service is None or self._service[0] != step.env:
            await self.stop_service()
            stack = AsyncExitStack()
            http = await stack.enter_async_context(self._served(step.env))
            self._service = (step.env, http, stack)
        await pushed(self._service[1], step.push)
        await self.landed(step)
        columns = await asyncio.to_thread(self.typed_columns)
        assert columns is not None, f"{self.name}: no typed columns after {step.push.record_id}"
        missing = _missing(step.fields, columns)
        assert not missing, f"{self.name}: {missing} not columns once its message was stored"

    async def landed(self, step: Step) -> None:
        """Once its push is answered, a message is in `records` here (the store writes
        it there before it answers)."""

    @asynccontextmanager
    async def _served(self, env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
        configured = settings(**env)
        schemas = fetching_schemas(configured)
        store = BigQueryStore(
            PROJECT,
            self.dataset,
            options=bigquery_options(
                StoreSettings(bigquery_write_endpoint=self.write.address, settle_seconds=0.0),
                QuerySettings(),
            ),
            query_endpoint=self.jobs.endpoint,
            revisions=store_revisions(schemas),
        )
        app = create_app(configured, store=store, schemas=schemas)
        async with served(app) as http:
            yield http

    async def stop_service(self) -> None:
        if self._service is not None:
            await self._service[2].aclose()
            self._service = None

    def _client(self) -> bigquery.Client:
        return bigquery.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.jobs.endpoint},
        )

    def typed_columns(self) -> tuple[Field, ...] | None:
        """The typed fields of `records`, as `tables.get` shows them."""
        client = self._client()
        try:
            table = client.get_table(f"{PROJECT}.{self.dataset}.records")
        finally:
            client.close()  # type: ignore[no-untyped-call]
        return typed_of([field_of(c) for c in table.schema])

    def rows(self) -> list[tuple[str, Any, Any, Any]]:
        """Each row of `records`: message id, payload (`data`), typed fields, errors."""
        client = self._client()
        try:
            rows = client.query_and_wait(
                f"SELECT message_id, data, TO_JSON_STRING({FIELDS}), "
                "TO_JSON_STRING(projection_errors) "
                f"FROM `{PROJECT}.{self.dataset}.records`"
            )
            return [
                (message_id, *(json.loads(v) if v is not None else None for v in values))
                for message_id, *values in (tuple(row.values()) for row in rows)
            ]
        finally:
            client.close()  # type: ignore[no-untyped-call]

    def stored(self) -> Stored:
        return Stored(sorted(self.rows()), self.typed_columns() or ())

    def close(self) -> None:
        self.jobs.stop()


def _missing(wanted: Sequence[Field], columns: Sequence[Field], path: str = "") -> list[str]:
    """The fields of `wanted` (recursively, by name) that `columns` lack."""
    have = {c.name: c for c in columns}
    missing: list[str] = []
    for field in wanted:
        column = have.get(field.name)
        if column is None:
            missing.append(f"{path}{field.name}")
        else:
            missing += _missing(field.fields, column.fields, f"{path}{field.name}.")
    return missing


async def _run(
    write: FakeBigQueryWrite,
    cases: dict[str, list[Step]],
    *,
    lags: Sequence[float] = (LAG_SECONDS, LAG_SECONDS),
    world: Callable[[str, str, FakeBigQueryWrite], World] = World,
) -> dict[str, Stored]:
    """Push each case's steps to a world of its own, all cases side by side, step by
    step: the write path learns the changes each step makes to the table `lags[n]`
    seconds late. What each case stored, read once every push is answered."""
    worlds = {name: world(name, f"drift_{i}", write) for i, name in enumerate(cases)}
    try:
        for n, lag in enumerate(lags):
            write.schema_lag = lag
            outcomes = await asyncio.gather(
                *(w.push(cases[name][n]) for name, w in worlds.items()), return_exceptions=True
            )
            failed = {
                name: repr(o) for name, o in zip(worlds, outcomes, strict=True) if o is not None
            }
            assert not failed, f"message {n + 1} of these changes: {failed}"
        await asyncio.gather(*(w.stop_service() for w in worlds.values()))
        read = await asyncio.gather(*(asyncio.to_thread(w.stored) for w in worlds.values()))
        return dict(zip(worlds, read, strict=True))
    finally:
        await asyncio.gather(*(w.stop_service() for w in worlds.values()), return_exceptions=True)
        for world in worlds.values():
            world.close()


def _check(cases: dict[str, list[Step]], stored: dict[str, Stored]) -> None:
    """Each message stored once, whole in `data`, and none of its values dropped silently."""
    for name, steps in cases.items():
        rows = stored[name].rows
        counted = collections.Counter(message_id for message_id, *_ in rows)
        assert counted == {s.push.body["message"]["messageId"]: 1 for s in steps}, (name, rows)
        payloads = {s.push.body["message"]["messageId"]: s.push.payload for s in steps}
        for message_id, payload, fields, errors in rows:
            # Always whole in `data`…
            assert payload == payloads[message_id], (name, message_id, payload)
            # …and each value in its typed field or in an error that says why not.
            assert unaccounted_row(payload, fields, errors) == [], (name, message_id, errors)
            assert all(e["revision"] for e in errors or []), (name, errors)


def _types(wanted: Sequence[Field], columns: Sequence[Field]) -> dict[str, str]:
    """The type of each of `wanted`'s fields (by path) as `columns` have it."""
    have = {c.name: c for c in columns}
    found: dict[str, str] = {}
    for field in wanted:
        column = have.get(field.name)
        if column is not None:
            found[field.name] = column.type.value
            found |= {
                f"{field.name}.{k}": v for k, v in _types(field.fields, column.fields).items()
            }
    return found


def _reasons(row: tuple[str, Any, Any, Any]) -> list[tuple[str, str]]:
    return [(e["field"], e["reason"]) for e in row[3] or []]


def _avro_cases(schema_api: FakeSchemaApi) -> dict[str, list[Step]]:
    cases = {}
    env = {"PUBSUB_EMULATOR_HOST": schema_api.address}
    for i, (change, case) in enumerate(CHANGES.items()):
        schema = f"projects/shop/schemas/drift-{i}"
        steps = []
        for n, (revision, fields, message) in enumerate(
            [("r1", case.before, case.first), ("r2", case.after, case.second)], 1
        ):
            schema_api.add(schema, revision, "AVRO", json.dumps(order(fields)))
            push = avro_push(n, revision, fields, message, schema)
            steps.append(Step(env, push, avro_fields(order(fields))))
        cases[change] = steps
    return cases


def _protobuf_cases(schema_api: FakeSchemaApi) -> dict[str, list[Step]]:
    cases = {}
    env = {"PUBSUB_EMULATOR_HOST": schema_api.address}
    for i, (change, (before, after, first, second, *_)) in enumerate(PROTO_CHANGES.items()):
        schema = f"projects/shop/schemas/drift-{i}"
        steps = []
        for n, (revision, body, message) in enumerate(
            [("r1", before, first), ("r2", after, second)], 1
        ):
            schema_api.add(schema, revision, "PROTOCOL_BUFFER", proto(body))
            push = protobuf_push(n, revision, proto(body), message, schema)
            fields = protobuf_fields(ProtobufCodec(proto(body)).descriptor)
            steps.append(Step(env, push, fields))
        cases[change] = steps
    return cases


def _declared_cases(_: FakeSchemaApi) -> dict[str, list[Step]]:
    cases = {}
    for change, case in CHANGES.items():
        cases[change] = [
            # Each declaration deployed in turn: the service restarted with the next one.
            Step(
                {"RECORDLINE_JSON_TOPIC_SCHEMA": json.dumps(order(fields))},
                json_push(n, message),
                avro_fields(order(fields)),
            )
            for n, (fields, message) in enumerate(
                [(case.before, case.first), (case.after, case.second)], 1
            )
        ]
    return cases


KINDS: dict[str, Callable[[FakeSchemaApi], dict[str, list[Step]]]] = {
    "avro": _avro_cases,
    "protobuf": _protobuf_cases,
    "declared JSON": _declared_cases,
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
async def test_drift_on_bigquery_with_a_lagging_write_path(
    kind: str, write_fake: FakeBigQueryWrite, schema_api: FakeSchemaApi
) -> None:
    cases = KINDS[kind](schema_api)
    stored = await _run(write_fake, cases)
    _check(cases, stored)
    # Within the wait, the second message is typed on the table as its revision left
    # it: its errors are the matrix's own (a value that does not fit its column),
    # never that the write path lagged.
    for name, (rows, columns) in stored.items():
        _, payload, _, _ = rows[1]
        expected = project(payload, columns, "r2").errors
        assert _reasons(rows[1]) == [(e.field, e.reason) for e in expected], (name, rows[1])
    # BigQuery widens no typed field in place (each is a field of the `fields`
    # RECORD): a widened type keeps the table's, and its columns never change type.
    for name, (_, columns) in stored.items():
        first = cases[name][0].fields
        assert _types(first, columns) == _types(first, first), name
    if kind == "protobuf":
        for change, (*_, name, _kind, misfit) in PROTO_CHANGES.items():
            errors = [field for field, _ in _reasons(stored[change].rows[1])]
            # A widening's wider value is a misfit here when the old type cannot hold
            # it (uint64's largest in INT64); on DuckDB the column widens instead.
            if "(a widening)" in change and change.startswith("uint64"):
                misfit = True
            assert (name in errors) is misfit, (change, stored[change].rows[1])


@pytest.mark.slow
async def test_drift_on_bigquery_with_a_write_path_later_than_the_wait(
    write_fake: FakeBigQueryWrite, schema_api: FakeSchemaApi
) -> None:
    """The second revision's changes reach the write path minutes late (Avro's matrix)."""
    cases = _avro_cases(schema_api)
    stored = await _run(write_fake, cases, lags=(LAG_SECONDS, LONG_LAG_SECONDS))
    _check(cases, stored)
    # Its new fields are columns of the table (checked on each push), not yet of the
    # write path: their values are in `projection_errors`, saying so…
    lagged = {
        name: [field for field, reason in _reasons(s.rows[1]) if reason == NOT_WRITABLE]
        for name, s in stored.items()
    }
    assert {name: fields for name, fields in lagged.items() if fields} == {
        "add an optional field": ["note"],
        "add a required field with a default": ["currency"],
        "rename a field": ["customer"],
        "nested field added": ["customer.email"],
        "array of records added": ["lines"],
        "a field in a message before the revision declares it": ["extra"],
    }
    # …and a value of a widened field does not fit the narrower column the write
    # path still has: an error too.
    widened = {name: _reasons(stored[name].rows[1]) for name in ("int to double (a widening)",)}
    assert [field for field, _ in widened["int to double (a widening)"]] == ["n"], widened


@pytest.mark.slow
async def test_a_table_s_first_typed_columns_later_than_the_wait(
    write_fake: FakeBigQueryWrite, schema_api: FakeSchemaApi
) -> None:
    """The first revision's message alone, of the first change of Avro's matrix: the
    table was created with `projection_errors`, so every value the write path cannot
    take in `fields` yet is named there."""
    cases = {"add an optional field": _avro_cases(schema_api)["add an optional field"][:1]}
    stored = await _run(write_fake, cases, lags=(LONG_LAG_SECONDS,))
    _check(cases, stored)
    ((_, payload, fields, errors),) = stored["add an optional field"].rows
    assert fields is None
    assert {e["field"] for e in errors} == set(payload)
    assert {e["reason"] for e in errors} == {NOT_WRITABLE}

"""Two `recordline serve` processes widening one BigQuery `records` table at once.

Two deploys side by side (an old and a new one, say), each on a schema of its own
(served by the fake Schema API), store into the same dataset: the BigQuery
stand-in (tests/bigquery/fake_storage_write.py with its `jobs.query` and `tables`
fake) in a process of its own. Round after round, each schema gains a field in a
new revision, and the first messages of both new revisions are pushed to the
two processes at once, so each round's two read-modify-write patches of the
table race: both read the same ETag, one write lands, the other is refused
(412) and merged again from a fresh read. `tables.get` and `tables.patch` take
a while to answer, as BigQuery's do, and the Storage Write API learns each
change late, as BigQuery's does, within the store's bounded wait.

Then, read through the real `bigquery.Client`: every push answered 204 the
first time, every message in `records` exactly once, whole in `data`, each of
its values in its typed column or named in `projection_errors`; the table has
every field of every revision (no column lost to the race); and the stand-in
says, once stopped, how many patches it refused for a stale ETag: the race
happened.

It needs no emulator: the fakes run here and in the stand-in's process.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import fastavro
import httpx
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from app.store.bigquery.typed import FIELDS, field_of, typed_of
from recordline_dev.processes import free_port
from recordline_dev.serving import BigQueryStandIn
from tests.conftest import envelope
from tests.e2e.conftest import PUSH_TOKEN, ServiceProcess
from tests.fake_schema_api import FakeSchemaApi
from tests.typed.accounting import unaccounted_row
from tests.typed.pushing import order
from tests.typed.stored import avro_stored

PROJECT = "race-project"
DATASET = "race"
TABLE = f"{PROJECT}.{DATASET}.records"
ROUNDS = 10
# Messages of each new revision pushed at once to its process, per round.
FIRST_MESSAGES = 3
# BigQuery's REST calls take a while; the write path learns a change late, within
# the store's wait (TYPED_WAIT_SECONDS).
TABLES_LATENCY_MS = 150
SCHEMA_LAG_SECONDS = 0.5
BASE = [{"name": "id", "type": "string"}, {"name": "amount", "type": "long"}]


class Side(NamedTuple):
    """One deploy: its topic schema, and the type of the field each revision adds."""

    name: str  # `a` or `b`: its fields are a0, a1, … or b0, b1, …
    schema: str
    avro_type: str


SIDES = (
    Side("a", "projects/shop/schemas/race-a", "long"),
    Side("b", "projects/shop/schemas/race-b", "string"),
)


def fields(side: Side, n: int) -> list[dict[str, Any]]:
    """Revision `n` of a side's schema: the base fields, and one more per revision."""
    added = [
        {"name": f"{side.name}{k}", "type": ["null", side.avro_type], "default": None}
        for k in range(n + 1)
    ]
    return [*BASE, *added]


class Push(NamedTuple):
    message_id: str
    body: dict[str, Any]
    payload: Any  # as the service stores it in `data`


def push(side: Side, n: int, k: int) -> Push:
    """Message `k` of revision `n` of a side's schema, Avro binary as Pub/Sub delivers it."""
    message_id = f"{side.name}-{n}-{k}"
    datum: dict[str, Any] = {"id": message_id, "amount": n * 100 + k}
    for j in range(n + 1):
        value = n * 10 + j
        datum[f"{side.name}{j}"] = value if side.avro_type == "long" else f"v{value}"
    schema = order(fields(side, n))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    attributes = {
        "googclient_schemaname": side.schema,
        "googclient_schemarevisionid": f"{side.name}{n}",
        "googclient_schemaencoding": "BINARY",
    }
    body = envelope(None, message_id=message_id, attributes=attributes, raw_data=out.getvalue())
    return Push(message_id, body, avro_stored(schema, datum))


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[BigQueryStandIn]:
    extra = [
        "--schema-lag",
        str(SCHEMA_LAG_SECONDS),
        "--tables-latency-ms",
        str(TABLES_LATENCY_MS),
    ]
    with BigQueryStandIn(
        PROJECT, DATASET, log_path=tmp_path / "bigquery.log", extra=extra
    ) as running:
        yield running


@pytest.fixture
def services(
    tmp_path: Path, stand_in: BigQueryStandIn, schema_api: FakeSchemaApi
) -> Iterator[dict[str, ServiceProcess]]:
    """One `recordline serve` per side, both on the stand-in's dataset (not started)."""
    env = {**stand_in.settings, "PUBSUB_EMULATOR_HOST": schema_api.address}
    started = {
        side.name: ServiceProcess(
            port=free_port(), store="", log=tmp_path / f"service-{side.name}.log", env=env
        )
        for side in SIDES
    }
    try:
        yield started
    finally:
        for service in started.values():
            service.close()


def _client(stand_in: BigQueryStandIn) -> bigquery.Client:
    return bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": stand_in.jobs},
    )


def read_back(stand_in: BigQueryStandIn) -> tuple[list[tuple[Any, ...]], set[str]]:
    """Every row of `records` (message id, `data`, `fields`, `projection_errors`,
    decoded), and the names of the table's typed fields, as an analyst reads them."""
    client = _client(stand_in)
    try:
        rows = [
            (message_id, *(json.loads(v) if v is not None else None for v in values))
            for message_id, *values in (
                tuple(row.values())
                for row in client.query_and_wait(
                    f"SELECT message_id, data, TO_JSON_STRING({FIELDS}), "
                    f"TO_JSON_STRING(projection_errors) FROM `{TABLE}`"
                )
            )
        ]
        table = client.get_table(TABLE)
    finally:
        client.close()  # type: ignore[no-untyped-call]
    typed = typed_of([field_of(c) for c in table.schema]) or ()
    return rows, {f.name for f in typed}


@pytest.mark.slow
async def test_two_processes_widening_at_once_lose_no_column_and_no_message(
    stand_in: BigQueryStandIn,
    services: dict[str, ServiceProcess],
    schema_api: FakeSchemaApi,
) -> None:
    # Both at once: the Schema API fake serves them from this loop meanwhile.
    await asyncio.gather(*(asyncio.to_thread(s.start) for s in services.values()))
    sent: dict[str, Push] = {}
    answers: list[tuple[str, int, str]] = []
    async with httpx.AsyncClient(timeout=30) as http:

        async def deliver(side: Side, one: Push) -> None:
            url = f"{services[side.name].url}/pubsub/push?token={PUSH_TOKEN}"
            answer = await http.post(url, json=one.body)
            answers.append((one.message_id, answer.status_code, answer.text))

        for n in range(ROUNDS):
            pushes = []
            for side in SIDES:
                definition = json.dumps(order(fields(side, n)))
                schema_api.add(side.schema, f"{side.name}{n}", "AVRO", definition)
                pushes += [(side, push(side, n, k)) for k in range(FIRST_MESSAGES)]
            sent |= {one.message_id: one for _, one in pushes}
            # The first messages of both new revisions, to both processes at once.
            await asyncio.gather(*(deliver(side, one) for side, one in pushes))

    # Every push answered 204 the first time: none refused, none to redeliver.
    refused = [(m, status, text[:200]) for m, status, text in answers if status != 204]
    assert not refused, refused
    assert len(answers) == len(sent) == ROUNDS * FIRST_MESSAGES * len(SIDES)

    rows, typed = await asyncio.to_thread(read_back, stand_in)
    # Every message in `records` exactly once.
    counted = collections.Counter(message_id for message_id, *_ in rows)
    assert counted == dict.fromkeys(sent, 1), sorted(
        (m, c) for m, c in (counted - collections.Counter(sent)).items()
    )
    # No column lost: every field of every revision of both schemas.
    wanted = {"id", "amount"} | {f"{s.name}{n}" for s in SIDES for n in range(ROUNDS)}
    assert wanted - typed == set(), f"columns lost: {sorted(wanted - typed)}"
    # Each message whole in `data`, each of its values typed or named in an error.
    errors = 0
    for message_id, data, typed_values, projection_errors in rows:
        assert data == sent[message_id].payload, (message_id, data)
        assert unaccounted_row(data, typed_values, projection_errors) == [], (
            message_id,
            typed_values,
            projection_errors,
        )
        errors += len(projection_errors or [])

    # Each process widened the table for each of its revisions…
    for name, service in services.items():
        log = service.log.read_text()
        assert log.count(f"typed columns of {TABLE}:") == ROUNDS, (name, log[-3000:])
        assert "could not be added" not in log, (name, log[-3000:])
    for service in services.values():
        service.close()
    # …and the stand-in, stopped, says how many patches it applied and refused: one
    # per revision applied, and at least one refused for a stale ETag (If-Match).
    stand_in.stop()
    summary = re.search(
        r"tables\.patch: (\d+) applied, (\d+) refused for a stale ETag",
        stand_in.log_path.read_text(),
    )
    assert summary is not None, stand_in.log_path.read_text()[-3000:]
    applied, stale = int(summary[1]), int(summary[2])
    assert applied == ROUNDS * len(SIDES), summary[0]
    assert stale >= 1, f"no patch raced another: {summary[0]}"
    print(f"{summary[0]}; {errors} projection errors in {len(rows)} rows")

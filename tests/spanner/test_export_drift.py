"""The drift matrix behind the serving tier: each change's messages pushed to a
service on Spanner (the emulator), whose own exporter projects them into BigQuery's
`records` as it exports them (tests/bigquery/test_bigquery_drift.py's matrix and
checks, on a Storage Write API that learns each table change a second late).

For each change, Avro and Protocol Buffers (revisions from the fake Schema API) and
a JSON topic's declared schema (the service restarted with the next declaration):
0 messages lost (each in `records` exactly once, its payload in `data`), 0 stuck
(each push answered 204 the first time), 0 silent drops (every value in its typed
column or named in `projection_errors`), and the revision's fields columns of the
table once its message is exported, within a minute of its push.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from app.asgi import create_app, fetching_schemas, store_revisions
from app.typed.projection import project
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.test_bigquery_drift import KINDS, Step, World, _check, _reasons, _run
from tests.conftest import served, settings
from tests.fake_schema_api import FakeSchemaApi
from tests.spanner.emulator import SpannerEmulator
from tests.spanner.exporting import tiered_store
from tests.waiting import until

pytestmark = pytest.mark.emulator

# The bound: a new column is queryable this soon after its first message.
QUERYABLE_SECONDS = 60.0


class ServingWorld(World):
    """One change's own Spanner database and BigQuery dataset, and the service on them."""

    def __init__(
        self,
        name: str,
        dataset: str,
        write: FakeBigQueryWrite,
        *,
        database: str,
        emulator_host: str,
    ) -> None:
        super().__init__(name, dataset, write)
        self.database = database
        self.emulator_host = emulator_host

    async def landed(self, step: Step) -> None:
        """Acknowledged once Spanner has it; in `records` once the exporter took it."""
        message_id = step.push.body["message"]["messageId"]
        await until(
            lambda: any(row["message_id"] == message_id for row in self.write.rows(self.table)),
            timeout=QUERYABLE_SECONDS,
            interval=0.1,
            what=f"{self.name}: {message_id} exported",
        )

    @asynccontextmanager
    async def _served(self, env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
        configured = settings(**env)
        schemas = fetching_schemas(configured)
        store = tiered_store(
            self.database, self.emulator_host, self.write, self.jobs.endpoint,
            dataset=self.dataset, revisions=store_revisions(schemas),
        )  # fmt: skip
        app = create_app(configured, store=store, schemas=schemas)
        async with served(app) as http:
            yield http


def serving_worlds(
    emulator: SpannerEmulator,
) -> Callable[[str, str, FakeBigQueryWrite], World]:
    def make(name: str, dataset: str, write: FakeBigQueryWrite) -> World:
        return ServingWorld(
            name, dataset, write, database=emulator.database(), emulator_host=emulator.host
        )

    return make


@pytest.mark.parametrize("kind", list(KINDS))
async def test_drift_behind_the_serving_tier(
    kind: str,
    write_fake: FakeBigQueryWrite,
    schema_api: FakeSchemaApi,
    spanner_emulator: SpannerEmulator,
) -> None:
    cases: dict[str, list[Step]] = KINDS[kind](schema_api)
    stored = await _run(write_fake, cases, world=serving_worlds(spanner_emulator))
    _check(cases, stored)
    # The exporter waits in Spanner for the write path: the second message is typed
    # on the table as its revision left it, its errors only the matrix's own.
    for name, (rows, columns) in stored.items():
        _, payload, _, _ = rows[1]
        expected = project(payload, columns, "r2").errors
        assert _reasons(rows[1]) == [(e.field, e.reason) for e in expected], (name, rows[1])

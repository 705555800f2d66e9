"""`recordline restore rows` against the Spanner emulator: the rows an operator's mistake
removed from a serving database written back from the database as it was before it
(point-in-time recovery), or from a restored copy, and nothing else touched."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import spanner

from app.cli import _main
from app.records import Record, Rejection
from app.store.open import spanner_database
from app.store.spanner.schema import expected_columns, shard_of
from app.store.spanner.serving import SpannerServing
from tests.spanner.emulator import SpannerEmulator

pytestmark = pytest.mark.emulator


def _record(message_id: str) -> Record:
    now = time.time_ns() // 1000
    return Record(
        message_id=message_id,
        publish_time=now - 1_000,
        ingest_time=now,
        id=f"record-{message_id}",
        data='{"n": 1}',
    )


def _rejection(message_id: str) -> Rejection:
    now = time.time_ns() // 1000
    return Rejection(
        message_id=message_id,
        publish_time=now - 1_000,
        ingest_time=now,
        data=b"\x00not json",
        reason="payload: not JSON",
    )


class Databases:
    """Direct access to the emulator's databases, in any project: what the test reads and
    breaks."""

    def __init__(self, emulator: SpannerEmulator) -> None:
        self._host = emulator.host
        self._clients: dict[str, Any] = {}

    def of(self, url: str) -> Any:
        where = spanner_database(url)
        client = self._clients.get(where.project)
        if client is None:
            client = self._clients[where.project] = spanner.Client(
                project=where.project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": self._host},
                disable_builtin_metrics=True,
            )
        return client.instance(where.instance).database(where.database)

    def rows(self, url: str, table: str) -> dict[str, tuple[Any, ...]]:
        names = [c.name for c in expected_columns() if c.table == table]
        with self.of(url).snapshot() as snapshot:
            found = snapshot.execute_sql(f"SELECT {', '.join(names)} FROM {table}")
            return {row[names.index("message_id")]: tuple(row) for row in found}

    def delete(self, url: str, table: str, message_ids: list[str]) -> None:
        keys = spanner.KeySet(keys=[[shard_of(m), m] for m in message_ids])  # type: ignore[no-untyped-call]
        self.of(url).run_in_transaction(lambda t: t.delete(table, keys))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


@pytest.fixture
def databases(spanner_emulator: SpannerEmulator) -> Any:
    found = Databases(spanner_emulator)
    yield found
    found.close()


@pytest.fixture
async def store(database: str, spanner_emulator: SpannerEmulator) -> AsyncIterator[SpannerServing]:
    serving = SpannerServing(spanner_database(database), emulator_host=spanner_emulator.host)
    await serving.start()
    yield serving
    await serving.close()


@pytest.fixture(autouse=True)
def emulator_environment(
    spanner_emulator: SpannerEmulator, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command reads its settings from the environment, as an operator's shell has them.
    monkeypatch.setenv("SPANNER_EMULATOR_HOST", spanner_emulator.host)
    monkeypatch.setenv("RECORDLINE_STORE", "bigquery://recordline-test/recordline")
    monkeypatch.setenv("RECORDLINE_SERVING", database)


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def test_rows_a_mistake_deleted_are_written_back_as_they_were_and_only_them(
    store: SpannerServing,
    database: str,
    databases: Databases,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [f"m-{n:02d}" for n in range(9)]
    await store.commit([_record(m) for m in ids] + [_rejection("bad-1")], within=10)
    time.sleep(0.05)
    before_the_mistake = _now()
    time.sleep(0.05)
    held = databases.rows(database, "records")
    rejected = databases.rows(database, "rejected")
    # The mistake: five records and the rejection deleted. Then life goes on: a push
    # stores a new record, and one of the deleted ones is delivered again and stored.
    gone = ids[2:7]
    databases.delete(database, "records", gone)
    databases.delete(database, "rejected", ["bad-1"])
    await store.commit([_record("m-new"), _record("m-04")], within=10)
    again = databases.rows(database, "records")["m-04"]
    argv = ["restore", "rows", "--from", database, "--at", before_the_mistake, "--page", "2"]
    assert _main(argv) == 0
    said = capsys.readouterr().out
    assert "records: 9 rows read" in said
    assert "wrote back 4 " in said  # m-04 is there again, as the new push stored it
    assert "rejected: 1 rows read" in said
    now = databases.rows(database, "records")
    for message_id in gone:
        if message_id != "m-04":
            assert now[message_id] == held[message_id]  # ingest_time and all, as it was
    assert now["m-04"] == again  # what a later push stored is left as it is
    assert "m-new" in now
    assert databases.rows(database, "rejected") == rejected  # bytes as they were
    # A second run writes nothing twice.
    assert _main(argv) == 0
    assert "wrote back 0 " in capsys.readouterr().out
    assert databases.rows(database, "records") == now


async def test_a_dry_run_counts_and_writes_nothing(
    store: SpannerServing, database: str, databases: Databases, capsys: pytest.CaptureFixture[str]
) -> None:
    await store.commit([_record(f"m-{n}") for n in range(3)], within=10)
    time.sleep(0.05)
    at = _now()
    databases.delete(database, "records", ["m-1"])
    argv = ["restore", "rows", "--from", database, "--at", at, "--table", "records", "--dry-run"]
    assert _main(argv) == 0
    assert "would write back 1 " in capsys.readouterr().out
    assert "m-1" not in databases.rows(database, "records")


async def test_rows_are_copied_from_a_restored_database_into_the_live_one(
    store: SpannerServing,
    database: str,
    spanner_emulator: SpannerEmulator,
    databases: Databases,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # What a backup restored into a scratch instance holds: another database, read as
    # it is (nothing writes to it).
    restored = spanner_emulator.database()
    copy = SpannerServing(spanner_database(restored), emulator_host=spanner_emulator.host)
    await copy.start()
    try:
        await copy.commit([_record(f"m-{n}") for n in range(4)], within=10)
    finally:
        await copy.close()
    await store.commit([_record("m-0"), _record("m-live")], within=10)
    live_m0 = databases.rows(database, "records")["m-0"]
    assert _main(["restore", "rows", "--from", restored, "--to", database]) == 0
    assert "wrote back 3 " in capsys.readouterr().out
    now = databases.rows(database, "records")
    assert set(now) == {"m-0", "m-1", "m-2", "m-3", "m-live"}
    assert now["m-0"] == live_m0
    assert now["m-2"] == databases.rows(restored, "records")["m-2"]


async def test_a_destination_in_another_project_is_written_there_and_nowhere_else(
    store: SpannerServing,
    database: str,
    spanner_emulator: SpannerEmulator,
    databases: Databases,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The same instance and database names in another project: once resolved in the
    # source's project, so the source was read now and written into itself, and the
    # command said it wrote back 0 having touched nothing it was asked to.
    await store.commit([_record(f"m-{n}") for n in range(3)], within=10)
    source = databases.rows(database, "records")
    elsewhere = spanner_emulator.database_in("recordline-other", like=database)
    assert spanner_database(elsewhere)[1:] == spanner_database(database)[1:]
    assert _main(["restore", "rows", "--from", database, "--to", elsewhere]) == 0
    said = capsys.readouterr().out
    assert f"wrote back 3 to {spanner_database(elsewhere).path}" in said
    assert databases.rows(elsewhere, "records") == source
    assert databases.rows(database, "records") == source


@pytest.mark.parametrize("named", [False, True], ids=["RECORDLINE_SERVING", "--to"])
def test_reading_the_live_database_needs_a_time_before_the_mistake(
    database: str, capsys: pytest.CaptureFixture[str], named: bool
) -> None:
    to = ["--to", database] if named else []
    assert _main(["restore", "rows", "--from", database, *to]) == 2
    said = capsys.readouterr().err
    assert "the source is the destination" in said
    assert "give --at" in said

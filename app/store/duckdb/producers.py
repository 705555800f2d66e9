"""The completeness ledger on DuckDB: one table, written with the rows it accounts for.

The store is one process that sees every write, so its ledger lives in memory
(`Tally`), decided on as each append is journaled: the entries an append changes
travel in its journal frame with its rows, and a recovery replays both. "Two
instances" here means one after another on the same file (a restart, a recovery
after a kill): the second continues the first's ledger.

Design: docs/producers.md#exactly-once-by-producer-sequence
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import pyarrow as pa

from app.store.producers import EpochEntry, ProducerEntries, Tally, decode_entry, encode_entry

TABLE = "producer_epochs"
DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  producer VARCHAR NOT NULL,
  epoch BIGINT NOT NULL,
  entry BLOB NOT NULL,
  last_seen TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (producer, epoch)
)"""
_SCHEMA = pa.schema(
    [
        ("producer", pa.string()),
        ("epoch", pa.int64()),
        ("entry", pa.binary()),
        ("last_seen", pa.timestamp("us", tz="UTC")),
    ]
)


def load(con: duckdb.DuckDBPyConnection) -> list[EpochEntry]:
    rows = con.execute(f"SELECT entry FROM {TABLE} ORDER BY producer, epoch").fetchall()
    return [decode_entry(data) for (data,) in rows]


# The applier writes the entries to `producer_epochs` every 64 frames that changed
# some, at most once a second (every entry changed since, in one statement), and on
# close; the journal keeps the segments of frames whose entries are not written
# yet, and a start replays them before it reads the table back.
def write(
    con: duckdb.DuckDBPyConnection,
    changed: Iterable[EpochEntry],
    forgotten: Iterable[tuple[str, int]],
) -> None:
    """Upsert `changed` and delete `forgotten`, in the caller's transaction."""
    entries = list(changed)
    for producer, epoch in forgotten:
        con.execute(
            f"DELETE FROM {TABLE} WHERE producer = $producer AND epoch = $epoch",
            {"producer": producer, "epoch": epoch},
        )
    if not entries:
        return
    table = pa.table(
        [
            pa.array([e.producer for e in entries], pa.string()),
            pa.array([e.epoch for e in entries], pa.int64()),
            pa.array([encode_entry(e) for e in entries], pa.binary()),
            pa.array([e.last_seen for e in entries], pa.timestamp("us", tz="UTC")),
        ],
        schema=_SCHEMA,
    )
    con.register("ledger_entries", table)
    try:
        con.execute(f"INSERT OR REPLACE INTO {TABLE} SELECT * FROM ledger_entries")
    finally:
        con.unregister("ledger_entries")


def expire(con: duckdb.DuckDBPyConnection, before: int) -> list[tuple[str, int]]:
    """Delete the entries not heard of since `before` (µs); their keys."""
    rows = con.execute(
        f"DELETE FROM {TABLE} WHERE last_seen < make_timestamptz($before) "
        "RETURNING producer, epoch",
        {"before": before},
    ).fetchall()
    return [(producer, epoch) for producer, epoch in rows]


class TallyBook:
    """The Completeness reads of a store whose ledger is a Tally in memory."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def producers(self, after: str, limit: int) -> list[ProducerEntries]:
        names = sorted(p for p in self.tally.producers() if p > after)[:limit]
        return [self._entries(name) for name in names]

    async def producer(self, producer: str) -> ProducerEntries | None:
        if not self.tally.entries(producer):
            return None
        return self._entries(producer)

    def _entries(self, producer: str) -> ProducerEntries:
        epochs = self.tally.entries(producer)
        return ProducerEntries(producer, [epochs[e] for e in sorted(epochs)])

"""Rows into a DuckDB store's tables, the first copy of each message kept: the
records that are new, and the later copies that differ from the one kept.

Runs on the store's writer thread (database.py), one insert at a time.
Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import duckdb
import pyarrow as pa

from app.records import Kind, Record, Rejection, Row, columns, row_of
from app.store.copies import differing
from app.store.duckdb import producers as book
from app.store.duckdb.producers import Changes
from app.store.duckdb.sql import RECORDS_BY_MESSAGES_SQL, REJECTIONS_BY_MESSAGES_SQL
from app.store.duckdb.typed import TypedColumns
from app.store.tally import Held

log = logging.getLogger(__name__)

_ARROW_TYPES = {
    Kind.STRING: pa.string(),
    Kind.INT64: pa.int64(),
    Kind.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    Kind.JSON: pa.string(),
    Kind.BYTES: pa.binary(),
}


def _arrow(rows: Sequence[Row], row_type: type[Row]) -> pa.Table:
    cols = columns(row_type)
    return pa.table(
        {
            c.name: pa.array([getattr(r, c.name) for r in rows], type=_ARROW_TYPES[c.kind])
            for c in cols
        }
    )


def _insert_table(
    con: duckdb.DuckDBPyConnection, table: str, arrow: pa.Table, *, ignore_copies: bool
) -> None:
    if not ignore_copies:  # the usual append: the Arrow table goes straight in
        con.from_arrow(arrow).insert_into(table)
        return
    con.register("incoming", arrow)
    try:
        con.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM incoming")
    finally:
        con.unregister("incoming")


class Inserted(NamedTuple):
    """What one insert did: the records it stored, and the differing copies it dropped."""

    records: list[Record]
    conflicts: list[tuple[Record | Rejection, Record | Rejection]]


@dataclass(slots=True)
class Inserter:
    """Inserts through `connection` (the writer thread's), with the typed columns
    `typed` projects; `clock` stamps the messages held under producer sequences."""

    connection: Callable[[], duckdb.DuckDBPyConnection]
    typed: TypedColumns
    clock: Callable[[], int]

    def insert(
        self,
        rows: Sequence[Record | Rejection],
        copies: Sequence[Held] = (),
        changes: Changes | None = None,
    ) -> Inserted:
        """Insert the first copy of each message and the messages held under producer
        sequences (and, replaying the journal, the ledger's changes its frames made, in
        the same transaction): the records that are new, and the later copies whose
        content differs from the copy kept, with it (to report on the event loop)."""
        # First copy wins, within the batch as across batches.
        firsts: dict[tuple[type, str], Record | Rejection] = {}
        conflicts: list[tuple[Record | Rejection, Record | Rejection]] = []
        for row in rows:
            first = firsts.setdefault((type(row), row.message_id), row)
            if first is not row and differing(first, row):
                conflicts.append((first, row))
        records = [r for r in firsts.values() if isinstance(r, Record)]
        rejections = [r for r in firsts.values() if isinstance(r, Rejection)]
        ledger = (copies, changes or None)
        try:
            self._insert_rows(records, rejections, ledger, ignore_copies=False)
        except duckdb.ConstraintException:
            # A redelivery of a message stored earlier. `INSERT OR IGNORE` costs
            # ~4x a plain INSERT on a VARCHAR key (12.8 against 3.6 ms for 64
            # rows into 200k), so it is only the fallback for this rare case,
            # and so is asking which of the copies differ from what is stored.
            stored, differ = self._stored_copies(records, rejections)
            conflicts += differ
            self._insert_rows(records, rejections, ledger, ignore_copies=True)
            records = [r for r in records if r.message_id not in stored]
        return Inserted(records, conflicts)

    def _stored_copies(
        self, records: list[Record], rejections: list[Rejection]
    ) -> tuple[set[str], list[tuple[Record | Rejection, Record | Rejection]]]:
        """The message ids among `records` stored already, and the copies of both
        whose content differs from the stored one."""
        con = self.connection()
        stored: set[str] = set()
        found: list[tuple[Record | Rejection, Record | Rejection]] = []
        tables: tuple[tuple[str, Sequence[Record | Rejection], type[Record | Rejection]], ...] = (
            (RECORDS_BY_MESSAGES_SQL, records, Record),
            (REJECTIONS_BY_MESSAGES_SQL, rejections, Rejection),
        )
        for sql, rows, row_type in tables:
            if not rows:
                continue
            given = {r.message_id: r for r in rows}
            for values in con.execute(sql, {"ids": list(given)}).fetchall():
                kept = row_of(row_type, values)
                if row_type is Record:
                    stored.add(kept.message_id)
                later = given[kept.message_id]
                if differing(later, kept):
                    found.append((kept, later))
        return stored, found

    def _insert_rows(
        self,
        records: list[Record],
        rejections: list[Rejection],
        ledger: tuple[Sequence[Held], Changes | None] = ((), None),
        *,
        ignore_copies: bool,
    ) -> None:
        copies, changes = ledger
        con = self.connection()
        incoming = [
            (table, _arrow(rows, row_type))
            for table, rows, row_type in (
                ("records", records, Record),
                ("rejected", rejections, Rejection),
            )
            if rows
        ]
        try:
            typed = self.typed.arrow(con, records)
        except Exception as exc:
            # A fault of the typed columns, whatever it is, never holds a record
            # back (the applier would retry it for ever): the record is stored,
            # its payload in `data`, and its projection error says why.
            log.exception("typed columns for %d records failed", len(records))
            typed = self.typed.unprojected(records, f"typed columns failed: {exc}")
        if typed is not None:
            # In the records' own transaction: a record is never without its
            # typed columns, nor replayed from the journal into a second copy.
            incoming.append(("record_fields", typed))
        # Autocommit: one statement, one commit.
        if len(incoming) == 1 and typed is None and not copies and changes is None:
            _insert_table(con, *incoming[0], ignore_copies=ignore_copies)
            return
        con.begin()
        try:
            for table, arrow in incoming:
                if table == "record_fields":
                    self.typed.insert(con, arrow, ignore_copies=ignore_copies)
                else:
                    _insert_table(con, table, arrow, ignore_copies=ignore_copies)
            if copies:
                book.insert_copies(con, copies, self.clock() // 1000)
            if changes is not None:
                book.write(con, changes)
            con.commit()
        except BaseException:
            con.rollback()
            raise

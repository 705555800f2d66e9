"""The export's state in Spanner: a lease (`export_lease`) and each table's progress
(`export_progress`), as the serving database holds them.

What they mean, and who writes them when, is the exporter's
(`app.store.tiered.exporter`); this module only reads and writes the rows,
each within the deadline of the call it serves, for `SpannerServing`'s
public methods (`claim_lease`, `release_lease`, `progress`, `record_progress`,
`watermarks`). The progress row's columns are derived from `Progress` and
`Intent` (a pending batch's columns are the Intent's, prefixed `pending_`),
as `app.records.columns` derives a table's from its row: the schema check
(`schema.expected_columns`) reads them from here too.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from google.cloud import spanner
from google.cloud.spanner_v1 import param_types

from app.records import NOT_STORED, TABLES, Column, Micros, Row, columns, micros, moment

PROGRESS_TABLE: Final = "export_progress"
LEASE_TABLE: Final = "export_lease"
# The progress row's last column: when it was written (Spanner's commit time).
UPDATED: Final = "updated"


class LeaseLost(Exception):
    """This exporter no longer holds the lease: another one works now."""


class Intent(Row, frozen=True):
    """A batch whose append may have happened: its last row's key, its row count,
    and the table's watermark once it is done."""

    time: Micros
    message_id: str
    rows: int
    watermark: Micros


class Progress(Row, frozen=True):
    """How far the export of one table got (times in µs since the epoch)."""

    table_name: str
    # The stream rows are appended to, and the offset the next batch goes at.
    stream: str | None = None
    next_offset: int = 0
    # The key of the last row exported; (0, "") before the first.
    done_time: Micros = 0
    done_message_id: str = ""
    # Every row with an ingest time before this is in BigQuery.
    watermark: Micros = 0
    # The batch being appended, None between batches (columns `pending_*`).
    pending: Annotated[Intent | None, NOT_STORED] = None
    # Why the export of this table stopped at a row, if it did.
    blocked: str | None = None


_PENDING: Final = "pending"


@functools.cache
def progress_columns() -> tuple[Column, ...]:
    """`export_progress`'s columns but `updated`, in order: Progress's own, the
    Intent's in the place of `pending` (prefixed, nullable: none between batches)."""
    pending = tuple(
        msgspec.structs.replace(c, name=f"{_PENDING}_{c.name}", nullable=True)
        for c in columns(Intent)
    )
    own = {c.name: c for c in columns(Progress)}
    found: list[Column] = []
    for name in Progress.__struct_fields__:
        found += pending if name == _PENDING else [own[name]]
    return tuple(found)


_NAMES: Final = tuple(c.name for c in progress_columns())
_TIMES: Final = frozenset(c.name for c in progress_columns() if c.kind == "TIMESTAMP")
_INTENT_FIELDS: Final = Intent.__struct_fields__


def progress_of(table: str, rows: list[Any]) -> Progress:
    """The progress row read (columns as `progress_columns`), or a new one if none."""
    if not rows:
        return Progress(table_name=table)
    values = {
        name: micros(v) if isinstance(v, datetime) else v
        for name, v in zip(_NAMES, rows[0], strict=True)
    }
    intent = {f: values.pop(f"{_PENDING}_{f}") for f in _INTENT_FIELDS}
    pending = None if intent["rows"] is None else msgspec.convert(intent, Intent)
    return msgspec.convert({**values, _PENDING: pending}, Progress)


def progress_values(progress: Progress) -> list[Any]:
    """The progress row to write: `progress_columns`' values, then `updated`."""
    values: dict[str, Any] = {n: getattr(progress, n) for n in Progress.__struct_fields__}
    pending = values.pop(_PENDING)
    for field in _INTENT_FIELDS:
        values[f"{_PENDING}_{field}"] = None if pending is None else getattr(pending, field)
    row = [
        moment(values[n]) if n in _TIMES and values[n] is not None else values[n] for n in _NAMES
    ]
    return [*row, spanner.COMMIT_TIMESTAMP]


def claim(transaction: Any, query: Any, name: str, holder: str, lease_micros: int) -> bool:
    """Take or renew lease `name` for `holder` in `transaction`; whether it holds it.

    `query(transaction, sql, **options)` runs a statement within the call's deadline.
    """
    ((now,),) = list(query(transaction, "SELECT CURRENT_TIMESTAMP()"))
    rows = list(
        query(
            transaction,
            f"SELECT holder, expires FROM {LEASE_TABLE} WHERE name = @name",
            params={"name": name},
            param_types={"name": param_types.STRING},
        )
    )
    if rows and rows[0][0] != holder and rows[0][1] > now:
        return False
    expires = moment(micros(now) + lease_micros)
    transaction.insert_or_update(
        LEASE_TABLE, ["name", "holder", "expires"], [[name, holder, expires]]
    )
    return True


def release(transaction: Any, query: Any, name: str, holder: str) -> bool:
    """Hand lease `name` back if `holder` holds it, so that the next claim takes it at
    once rather than once it expires; whether it did."""
    if not holds(transaction, query, name, holder):
        return False
    transaction.delete(LEASE_TABLE, spanner.KeySet(keys=[[name]]))  # type: ignore[no-untyped-call]
    return True


def holds(transaction: Any, query: Any, name: str, holder: str) -> bool:
    rows = list(
        query(
            transaction,
            f"SELECT holder FROM {LEASE_TABLE} "
            "WHERE name = @name AND expires > CURRENT_TIMESTAMP()",
            params={"name": name},
            param_types={"name": param_types.STRING},
        )
    )
    return bool(rows) and rows[0][0] == holder


def record(transaction: Any, query: Any, name: str, holder: str, progress: Progress) -> None:
    """Write `progress` if `holder` holds lease `name`, in the same transaction; else LeaseLost."""
    if not holds(transaction, query, name, holder):
        raise LeaseLost(f"the export lease is not {holder}'s")
    transaction.insert_or_update(PROGRESS_TABLE, [*_NAMES, UPDATED], [progress_values(progress)])


def watermark_keys() -> Any:
    return spanner.KeySet(all_=True)  # type: ignore[no-untyped-call]


def progress_key(table: str) -> Any:
    return spanner.KeySet(keys=[[table]])  # type: ignore[no-untyped-call]


def progress_names() -> list[str]:
    return list(_NAMES)


def watermarks_of(rows: Any) -> dict[str, int]:
    """Each table's watermark from `(table_name, watermark)` rows; 0 where none."""
    found = {table: micros(watermark) for table, watermark in rows}
    return {table: found.get(table, 0) for table in TABLES}

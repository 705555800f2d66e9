"""The export's state in Spanner: a lease (`export_lease`) and each table's progress
(`export_progress`), as the serving database holds them.

What they mean, and who writes them when, is the exporter's; this module reads and
writes the rows, each within its call's deadline, for `SpannerLedger`
(`export_ledger.py`). Every progress write is a compare-and-set on the row its
writer read, in the lease's transaction (`record`). The progress row's columns are
derived from `Progress` and `Intent`, and the schema check reads them from here too.

Design: docs/stores.md#the-exporter
"""

from __future__ import annotations

import dataclasses
import functools
import re
from datetime import datetime
from typing import Annotated, Any, Final, NamedTuple

import msgspec
from google.cloud import spanner
from google.cloud.spanner_v1 import param_types

from app.records import NOT_STORED, TABLES, Column, Micros, Row, columns, micros, moment

PROGRESS_TABLE: Final = "export_progress"
LEASE_TABLE: Final = "export_lease"
DECISIONS_TABLE: Final = "export_decisions"
# The progress row's last column: when it was written (Spanner's commit time).
UPDATED: Final = "updated"


class LeaseLost(Exception):
    """This exporter no longer holds the lease: another one works now."""


class ProgressMoved(Exception):
    """The progress row is no longer the one this write was made from: another
    write came first (this exporter's own, committed late, or another's). Nothing
    was written; the exporter reads the row again."""


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
    # When the row read was written (its `updated` column), None if there was
    # none: what a write made from this progress expects to find (see `record`).
    updated: Annotated[Micros | None, NOT_STORED] = None


_PENDING: Final = "pending"


@functools.cache
def progress_columns() -> tuple[Column, ...]:
    """`export_progress`'s columns but `updated`, in order: Progress's own, the
    Intent's in the place of `pending` (prefixed, nullable: none between batches).
    (`Progress.updated` is the `updated` column as read, never written from.)"""
    pending = tuple(
        msgspec.structs.replace(c, name=f"{_PENDING}_{c.name}", nullable=True)
        for c in columns(Intent)
    )
    own = {c.name: c for c in columns(Progress)}
    found: list[Column] = []
    for name in Progress.__struct_fields__:
        if name == UPDATED:
            continue
        found += pending if name == _PENDING else [own[name]]
    return tuple(found)


_NAMES: Final = tuple(c.name for c in progress_columns())
_TIMES: Final = frozenset(c.name for c in progress_columns() if c.kind == "TIMESTAMP")
_INTENT_FIELDS: Final = Intent.__struct_fields__


def progress_of(table: str, rows: list[Any]) -> Progress:
    """The progress row read (columns as `progress_names`), or a new one if none."""
    if not rows:
        return Progress(table_name=table)
    values = {
        name: micros(v) if isinstance(v, datetime) else v
        for name, v in zip([*_NAMES, UPDATED], rows[0], strict=True)
    }
    intent = {f: values.pop(f"{_PENDING}_{f}") for f in _INTENT_FIELDS}
    pending = None if intent["rows"] is None else msgspec.convert(intent, Intent)
    return msgspec.convert({**values, _PENDING: pending}, Progress)


def progress_values(progress: Progress) -> list[Any]:
    """The progress row to write: `progress_columns`' values, then `updated`."""
    values: dict[str, Any] = {n: getattr(progress, n) for n in Progress.__struct_fields__}
    values.pop(UPDATED)
    pending = values.pop(_PENDING)
    for field in _INTENT_FIELDS:
        values[f"{_PENDING}_{field}"] = None if pending is None else getattr(pending, field)
    row = [
        moment(values[n]) if n in _TIMES and values[n] is not None else values[n] for n in _NAMES
    ]
    return [*row, spanner.COMMIT_TIMESTAMP]


class Standing(NamedTuple):
    """Which exporter should hold the lease, compared field by field (greater wins):
    the newer row schema (released migrations), then the newer revision (Cloud Run's
    revision generation: the order of deploys)."""

    schema: int
    revision: int


# A holder is written `1.<schema>.<revision>|<name>@<µs>`. The leading `1.` and the
# trailing time are what versions of the code before the exporter service wrote (an
# instance that served traffic, and when it last had a push): written so, a holder of
# this version is one those versions neither take the lease from nor count as
# traffic gone, while both run during the move to the exporter service.
_STANDING: Final = re.compile(r"^[01]\.(\d+)\.(\d+)\|(.*?)(?:@\d+)?$", re.DOTALL)
# A holder written without a standing (before there was one): below every other.
_UNKNOWN: Final = Standing(schema=0, revision=0)


def lease_holder(standing: Standing, name: str, now: int = 0) -> str:
    """The lease's `holder` value: the exporter's standing and its name (`now`, µs
    since the epoch, rides at its end for the versions before it: see `_STANDING`)."""
    return f"1.{standing.schema}.{standing.revision}|{name}@{now}"


def standing_of(holder: str) -> tuple[Standing, str]:
    """A `holder` value's standing and the exporter's name."""
    found = _STANDING.match(holder)
    if found is None:
        return _UNKNOWN, holder
    schema, revision, name = found.groups()
    return Standing(int(schema), int(revision)), name


class Lease(NamedTuple):
    """One exporter's claim on the export: the lease's name, the exporter's own name
    and standing, and how long a claim holds (s)."""

    name: str
    holder: str
    standing: Standing
    seconds: float


class LeaseClaim(NamedTuple):
    """What a claim found: whether the claimant holds the lease now, and if another
    exporter's live lease stopped it, in how long that lease expires (µs, by Spanner's
    clock): a claim then may take it. None: not at its expiry (an older schema).
    `holder` names the exporter holding the lease now (None: nobody), and `wanted_by`
    the other exporter that asked for it (`claim`'s `want`), `wanted_in` µs more."""

    held: bool
    expires_in: int | None = None
    holder: str | None = None
    wanted_by: str | None = None
    wanted_in: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseState:
    """A system's lease as an operator reads it (`recordline export leases`), times in
    µs: the exporter holding it (None: nobody ever claimed it) and its standing, until
    when, whether that is still ahead; since when that exporter holds it (`since`, or
    already at `since` and before, as far back as was looked: `since_earlier`); and
    the exporter that asked for it (`wanted_name`'s row), until when."""

    name: str
    holder: str | None = None
    standing: Standing | None = None
    expires: int | None = None
    live: bool = False
    since: int | None = None
    since_earlier: bool = False
    wanted_by: str | None = None
    wanted_standing: Standing | None = None
    wanted_until: int | None = None


# What `wanted_name` adds to a lease's name.
WANTED_SUFFIX: Final = ".wanted"


def wanted_name(name: str) -> str:
    """The row beside lease `name` where an exporter with less than its share of a
    pool's leases says it wants this one (`claim`'s `want`)."""
    return f"{name}{WANTED_SUFFIX}"


def claim(
    transaction: Any,
    query: Any,
    name: str,
    holder: str,
    lease_micros: int,
    *,
    take_free: bool = True,
    want: bool = False,
) -> LeaseClaim:
    """Take or renew lease `name` for `holder` (`lease_holder`'s) in `transaction`.

    A live lease of another exporter is taken over only by one that stands higher
    (`Standing`): after a deploy the newer code takes the export at its next claim,
    and the older never takes it back while it lives. A lease that expired (or was
    handed back, which expires it) goes to whoever claims it (with `take_free`: an
    exporter of a pool that holds its share already leaves it to one that has not),
    unless its last holder knew a newer row schema: code that does not know a column
    never exports after code that writes it has (it would export those rows without
    it). Instances of one version never take it from each other while the holder
    lives; one that wants it (`want`) says so in the row beside it (`wanted_name`),
    for `lease_micros`, and the holder may hand it back (`app.store.tiered.balance`).

    `query(transaction, sql, **options)` runs a statement within the call's deadline.
    """
    ((now,),) = list(query(transaction, "SELECT CURRENT_TIMESTAMP()"))
    wanted = wanted_name(name)
    rows = {
        row[0]: (row[1], row[2])
        for row in query(
            transaction,
            f"SELECT name, holder, expires FROM {LEASE_TABLE} WHERE name = @name OR name = @wanted",
            params={"name": name, "wanted": wanted},
            param_types={"name": param_types.STRING, "wanted": param_types.STRING},
        )
    }
    mine, me = standing_of(holder)
    wanted_by = wanted_in = None
    if wanted in rows and rows[wanted][1] > now:
        wanter = standing_of(rows[wanted][0])[1]
        if wanter != me:
            wanted_by, wanted_in = wanter, micros(rows[wanted][1]) - micros(now)
    if name in rows:
        held_by, expires = rows[name]
        theirs, them = standing_of(held_by)
        live = expires > now
        if them != me and mine.schema < theirs.schema:
            return LeaseClaim(False, None, them if live else None, wanted_by, wanted_in)
        if them != me and live and mine <= theirs:
            if want:
                until = moment(micros(now) + lease_micros)
                transaction.insert_or_update(
                    LEASE_TABLE, ["name", "holder", "expires"], [[wanted, holder, until]]
                )
            return LeaseClaim(False, micros(expires) - micros(now), them, wanted_by, wanted_in)
        if them != me and not live and not take_free:
            return LeaseClaim(False, None, None, wanted_by, wanted_in)
    elif not take_free:
        return LeaseClaim(False, None, None, wanted_by, wanted_in)
    expires = moment(micros(now) + lease_micros)
    transaction.insert_or_update(
        LEASE_TABLE, ["name", "holder", "expires"], [[name, holder, expires]]
    )
    if wanted in rows and standing_of(rows[wanted][0])[1] == me:
        transaction.delete(LEASE_TABLE, spanner.KeySet(keys=[[wanted]]))  # type: ignore[no-untyped-call]
    return LeaseClaim(True, None, me, wanted_by, wanted_in)


def release(transaction: Any, query: Any, name: str, holder: str) -> bool:
    """Hand lease `name` back if `holder` holds it, so that the next claim takes it at
    once rather than once it expires; whether it did. The row stays, expired: the
    standing of its last holder still speaks for the schema (see `claim`)."""
    if not holds(transaction, query, name, holder):
        return False
    ((now,),) = list(query(transaction, "SELECT CURRENT_TIMESTAMP()"))
    transaction.update(LEASE_TABLE, ["name", "expires"], [[name, now]])
    return True


def holds(transaction: Any, query: Any, name: str, holder: str) -> bool:
    """Whether the exporter `holder` names (whatever its standing) holds lease `name`."""
    rows = list(
        query(
            transaction,
            f"SELECT holder FROM {LEASE_TABLE} "
            "WHERE name = @name AND expires > CURRENT_TIMESTAMP()",
            params={"name": name},
            param_types={"name": param_types.STRING},
        )
    )
    return bool(rows) and standing_of(rows[0][0])[1] == standing_of(holder)[1]


def record(transaction: Any, query: Any, name: str, holder: str, progress: Progress) -> None:
    """Write `progress` in `transaction` if `holder` holds lease `name` (else LeaseLost)
    and the row is still the one `progress` was made from (`progress.updated`; else
    ProgressMoved). Both are read in the transaction, so Spanner commits it only if
    neither changed before the commit: run again after an abort, however late, it
    finds the newer row and writes nothing."""
    if not holds(transaction, query, name, holder):
        raise LeaseLost(f"the export lease is not {holder}'s")
    found = _written_at(transaction, query, progress.table_name)
    if found != progress.updated:
        raise ProgressMoved(
            f"the progress of {progress.table_name} was written at {found}, "
            f"not at {progress.updated} as read"
        )
    transaction.insert_or_update(PROGRESS_TABLE, [*_NAMES, UPDATED], [progress_values(progress)])


def overwrite(transaction: Any, query: Any, read: Progress, moved: Progress) -> bool:
    """Write `moved` in `transaction` if the row is still `read` (its `updated`): an
    operator's decision (`recordline export resync`), made from what they read
    while the export was blocked; whether it was written. Like `record`, a
    compare-and-set: a commit that lands late finds a newer row and writes nothing."""
    if _written_at(transaction, query, read.table_name) != read.updated:
        return False
    transaction.insert_or_update(PROGRESS_TABLE, [*_NAMES, UPDATED], [progress_values(moved)])
    return True


def _written_at(transaction: Any, query: Any, table: str) -> int | None:
    """When `table`'s progress row was last written (µs), None if it has none."""
    rows = list(
        query(
            transaction,
            f"SELECT UNIX_MICROS({UPDATED}) FROM {PROGRESS_TABLE} WHERE table_name = @table",
            params={"table": table},
            param_types={"table": param_types.STRING},
        )
    )
    return rows[0][0] if rows else None


class Decision(msgspec.Struct, frozen=True):
    """An operator's decision about a table's export (`recordline export …`), kept
    in `export_decisions` beside the change it made, in the same transaction:
    what was done, by whom (as they named themselves, and the Cloud Run job
    execution that ran it, whose audit log names the caller), and why."""

    table_name: str
    action: str
    operator: str
    reason: str
    # What it found and did, as the command printed it.
    detail: str = ""


DECISION_COLUMNS: Final = ("table_name", "decided", "action", "operator", "reason", "detail")


def decide(transaction: Any, decision: Decision) -> None:
    """Keep `decision` in `transaction`, stamped with its commit time."""
    values = [
        decision.table_name,
        spanner.COMMIT_TIMESTAMP,
        decision.action,
        decision.operator,
        decision.reason,
        decision.detail,
    ]
    transaction.insert(DECISIONS_TABLE, list(DECISION_COLUMNS), [values])


def unblock(transaction: Any, query: Any, table: str, reason: str) -> bool:
    """Clear `table`'s `blocked` if it still says `reason` (an operator's retry), in
    `transaction`; whether it did. Only that column and `updated` change: the
    holder's next write finds a newer row, reads it again, and tries the table."""
    rows = list(
        query(
            transaction,
            f"SELECT blocked FROM {PROGRESS_TABLE} WHERE table_name = @table",
            params={"table": table},
            param_types={"table": param_types.STRING},
        )
    )
    if not rows or rows[0][0] != reason:
        return False
    names = ["table_name", "blocked", UPDATED]
    transaction.update(PROGRESS_TABLE, names, [[table, None, spanner.COMMIT_TIMESTAMP]])
    return True


def progress_in(transaction: Any, rows: Any, table: str) -> Progress:
    """`table`'s progress from a key read of `progress_names` made in `transaction`."""
    return progress_of(table, list(rows))


def write_past_refused(transaction: Any, progress: Progress) -> None:
    """Write `progress` with its batch and its stop cleared, in `transaction` (an
    operator moved the row BigQuery refused to the rejections): the next round
    cuts a new batch at the same offset, where nothing was appended."""
    cleared = msgspec.structs.replace(progress, pending=None, blocked=None)
    transaction.insert_or_update(PROGRESS_TABLE, [*_NAMES, UPDATED], [progress_values(cleared)])


def watermark_keys() -> Any:
    return spanner.KeySet(all_=True)  # type: ignore[no-untyped-call]


def progress_key(table: str) -> Any:
    return spanner.KeySet(keys=[[table]])  # type: ignore[no-untyped-call]


def lease_key(name: str) -> Any:
    return spanner.KeySet(keys=[[name]])  # type: ignore[no-untyped-call]


def lease_states(rows: list[tuple[str, str, datetime]], now: datetime) -> list[LeaseState]:
    """Each lease of the `export_lease` rows read at `now` (its `wanted_name` row beside
    it), `since` not yet known."""
    found = {name: (holder, expires) for name, holder, expires in rows}
    states = []
    for name in sorted(found):
        if name.endswith(WANTED_SUFFIX):
            continue
        holder, expires = found[name]
        standing, who = standing_of(holder)
        state = LeaseState(name, who, standing, micros(expires), live=expires > now)
        wanted = found.get(wanted_name(name))
        if wanted is not None and wanted[1] > now:
            wanted_standing, wanter = standing_of(wanted[0])
            state = dataclasses.replace(
                state,
                wanted_by=wanter,
                wanted_standing=wanted_standing,
                wanted_until=micros(wanted[1]),
            )
        states.append(state)
    return states


def progress_names() -> list[str]:
    """The columns a progress read asks for: `progress_columns`', then `updated`."""
    return [*_NAMES, UPDATED]


def watermarks_of(rows: Any) -> dict[str, int]:
    """Each table's watermark from `(table_name, watermark)` rows; 0 where none."""
    found = {table: micros(watermark) for table, watermark in rows}
    return {table: found.get(table, 0) for table in TABLES}

"""The completeness ledger in Spanner: written in each group commit, read by SQL.

A commit with producer sequences reads their producers' entries (and the messages
held under seen sequences), settles the batch (`app.store.tally.Tally`) and writes
what changed with the rows: entries, their ranges, the messages held, the hour's
counts. Spanner aborts one of two instances committing one producer's messages.
The audit and the watch query ranges by time and the hours: never every producer.

Design: docs/producers.md#exactly-once-by-producer-sequence
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterable
from typing import Any, Final

from google.cloud import spanner
from google.cloud.spanner_v1 import param_types

from app.records import moment
from app.store.producers import (
    HOUR_MICROS,
    MAX_EPOCHS,
    MAX_PRODUCER_LENGTH,
    MAX_RETIRED,
    EpochEntry,
    HourCount,
    LedgerAudit,
    LedgerRange,
    ProducerEntries,
    Worst,
    decode_entry,
    encode_entry,
    entry_ranges,
    grouped,
    hours_of,
)
from app.store.spanner.calls import Deadline, SpannerCalls, key_rows, sql_rows
from app.store.tally import SequenceKey, Settled

# One row per producer and epoch, its state a msgpack value (`encode_entry`), so its
# fields change without a schema change; `last_seen` carries the row deletion
# policy: an epoch not heard of for the retention goes with its rows, and with it
# its ranges and the messages held under its sequences (interleaved in it).
TABLE: Final = "producer_epochs"
NAMES: Final = ["producer", "epoch", "entry", "last_seen"]
RANGES: Final = "producer_ranges"
RANGE_NAMES: Final = ["producer", "epoch", "kind", "first", "last", "opened"]
RANGES_BY_OPENED: Final = "producer_ranges_by_opened"
COPIES: Final = "producer_sequences"
COPY_NAMES: Final = ["producer", "epoch", "sequence", "message_id", "ingest_time"]
HOURS: Final = "producer_hours"
HOUR_NAMES: Final = ["hour", "shard", "stored", "rejected", "duplicates", "conflicts", "updated"]
# Rows each hour's counts are spread over: a commit adds to one of them, at random,
# so commits of different producers seldom wait for one another on a count.
HOUR_SHARDS: Final = 16
# Column, type and nullable, as INFORMATION_SCHEMA names them.
COLUMNS: Final = {
    TABLE: [
        ("producer", f"STRING({MAX_PRODUCER_LENGTH})", False),
        ("epoch", "INT64", False),
        ("entry", "BYTES(MAX)", False),
        ("last_seen", "TIMESTAMP", False),
    ],
    RANGES: [
        ("producer", f"STRING({MAX_PRODUCER_LENGTH})", False),
        ("epoch", "INT64", False),
        ("kind", "STRING(16)", False),
        ("first", "INT64", False),
        ("last", "INT64", False),
        ("opened", "INT64", False),
    ],
    COPIES: [
        ("producer", f"STRING({MAX_PRODUCER_LENGTH})", False),
        ("epoch", "INT64", False),
        ("sequence", "INT64", False),
        ("message_id", "STRING(MAX)", False),
        ("ingest_time", "TIMESTAMP", False),
    ],
    HOURS: [
        ("hour", "INT64", False),
        ("shard", "INT64", False),
        ("stored", "INT64", False),
        ("rejected", "INT64", False),
        ("duplicates", "INT64", False),
        ("conflicts", "INT64", False),
        ("updated", "TIMESTAMP", False),
    ],
}
INDEXES: Final = {RANGES_BY_OPENED: (RANGES, ["kind", "opened"])}


def keys_of(producers: Iterable[str]) -> Any:
    """Every epoch of each of these producers: a key range per producer."""
    return spanner.KeySet(  # type: ignore[no-untyped-call]
        ranges=[
            spanner.KeyRange(start_closed=[p], end_closed=[p])  # type: ignore[no-untyped-call]
            for p in sorted(set(producers))
        ]
    )


def _prefixes(keys: Iterable[tuple[Any, ...]]) -> Any:
    return spanner.KeySet(  # type: ignore[no-untyped-call]
        ranges=[
            spanner.KeyRange(start_closed=list(k), end_closed=list(k))  # type: ignore[no-untyped-call]
            for k in sorted(set(keys))
        ]
    )


def entries_of(found: Iterable[list[Any]]) -> list[EpochEntry]:
    """Entries from rows read with NAMES (the client hands BYTES back base64)."""
    return [decode_entry(base64.b64decode(row[2])) for row in found]


def held_ids(
    transaction: Any, deadline: Deadline, keys: Iterable[SequenceKey]
) -> dict[SequenceKey, set[str]]:
    """The message ids held under these sequences, read in `transaction`."""
    found: dict[SequenceKey, set[str]] = {}
    for producer, epoch, sequence, message_id, _ in key_rows(
        transaction, deadline, COPIES, COPY_NAMES, _prefixes(keys)
    ):
        found.setdefault((producer, epoch, sequence), set()).add(message_id)
    return found


def write(transaction: Any, deadline: Deadline, settled: Settled) -> None:
    """The batch's changes to the ledger, as mutations of the caller's transaction (and
    one read: the hour's count it adds to)."""
    changed = settled.changed
    if changed:
        transaction.insert_or_update(
            TABLE,
            NAMES,
            [
                [e.producer, e.epoch, base64.b64encode(encode_entry(e)), moment(e.last_seen)]
                for e in changed.values()
            ],
        )
        # Each changed entry's ranges, as they are now.
        transaction.delete(RANGES, _prefixes(changed))
        ranges = [
            [r.producer, r.epoch, r.kind, r.first, r.last, r.opened]
            for (producer, _), entry in changed.items()
            for r in entry_ranges(entry, settled.newest.get(producer, entry.epoch))
        ]
        if ranges:
            transaction.insert(RANGES, RANGE_NAMES, ranges)
    if settled.dropped:
        # Their ranges and held messages go with them (ON DELETE CASCADE).
        transaction.delete(
            TABLE,
            spanner.KeySet(keys=[list(key) for key in sorted(settled.dropped)]),  # type: ignore[no-untyped-call]
        )
    if settled.copies:
        transaction.insert_or_update(
            COPIES,
            COPY_NAMES,
            [[*held, spanner.COMMIT_TIMESTAMP] for held in settled.copies],
        )
    _count(transaction, deadline, settled.counts)


def _count(transaction: Any, deadline: Deadline, counts: HourCount) -> None:
    """Add a batch's counts to its hour's, in one of HOUR_SHARDS rows."""
    if not (counts.stored or counts.rejected or counts.duplicates):
        return
    shard = random.randrange(HOUR_SHARDS)
    key = spanner.KeySet(keys=[[counts.hour, shard]])  # type: ignore[no-untyped-call]
    found = list(key_rows(transaction, deadline, HOURS, HOUR_NAMES, key))
    if found:
        _, _, stored, rejected, duplicates, conflicts, _ = found[0]
        was = HourCount(
            hour=counts.hour,
            stored=int(stored),
            rejected=int(rejected),
            duplicates=int(duplicates),
            conflicts=int(conflicts),
        )
        counts = was.plus(counts)
    transaction.insert_or_update(
        HOURS,
        HOUR_NAMES,
        [
            [
                counts.hour,
                shard,
                counts.stored,
                counts.rejected,
                counts.duplicates,
                counts.conflicts,
                spanner.COMMIT_TIMESTAMP,
            ]
        ],
    )


# Past every epoch of a producer: a key range from (producer, MAX_EPOCH) on, open,
# starts at the next producer.
MAX_EPOCH: Final = 2**63 - 1
_RANGES_FROM: Final = f"{RANGES}@{{FORCE_INDEX={RANGES_BY_OPENED}}}"
# Sizes are summed as NUMERIC: a gap may hold 2^63 - 1 sequences, and INT64 sums overflow.
_SIZE: Final = "(CAST(last AS NUMERIC) - first + 1)"
_IN_RANGE: Final = "opened >= @since AND opened < @until"
_HOURS_SQL: Final = (
    f"SELECT hour, SUM(stored), SUM(rejected), SUM(duplicates), SUM(conflicts) FROM {HOURS} "
    "WHERE hour >= @first AND hour <= @last GROUP BY hour ORDER BY hour"
)
_MISSING_BY_HOUR_SQL: Final = (
    f"SELECT DIV(opened, {HOUR_MICROS}) AS h, SUM({_SIZE}), COUNT(*) FROM {_RANGES_FROM} "
    f"WHERE kind = 'gap' AND {_IN_RANGE} AND opened <= @cutoff GROUP BY h"
)
_OLDEST_SQL: Final = (
    f"SELECT producer, epoch, kind, first, last, opened FROM {_RANGES_FROM} "
    f"WHERE kind IN UNNEST(@kinds) AND {_IN_RANGE} AND opened <= @cutoff "
    "ORDER BY opened, producer, epoch, first LIMIT @limit"
)
_CONFLICTS_SQL: Final = (
    f"SELECT COUNT(*), SUM(IF(kind = 'conflict', {_SIZE}, 0)), COUNTIF(kind = 'ends') "
    f"FROM {_RANGES_FROM} WHERE kind IN ('conflict', 'ends') AND {_IN_RANGE}"
)
_UNKNOWN_SQL: Final = f"SELECT COUNT(*) FROM {_RANGES_FROM} WHERE kind = 'unknown' AND {_IN_RANGE}"
_WORST_MISSING_SQL: Final = (
    f"SELECT producer, SUM({_SIZE}) AS n FROM {_RANGES_FROM} "
    "WHERE kind = 'gap' AND opened <= @cutoff GROUP BY producer ORDER BY n DESC, producer "
    "LIMIT @top"
)
_WORST_CONFLICTS_SQL: Final = (
    f"SELECT producer, SUM(IF(kind = 'conflict', {_SIZE}, 1)) AS n FROM {_RANGES_FROM} "
    "WHERE kind IN ('conflict', 'ends') AND opened >= @since "
    "GROUP BY producer ORDER BY n DESC, producer LIMIT @top"
)
_INT = param_types.INT64
_STRINGS = param_types.Array(param_types.STRING)  # type: ignore[no-untyped-call]
_WINDOW_TYPES: Final = {"since": _INT, "until": _INT, "cutoff": _INT, "limit": _INT}


def _whole(value: Any) -> int:
    """A NUMERIC (or NULL) sum as an int."""
    return 0 if value is None else int(value)


class SpannerCompleteness:
    """`Completeness` on the ledger's tables: strong reads, each counted (`count`)."""

    def __init__(self, calls: SpannerCalls, count: Callable[[int], None]) -> None:
        self._calls = calls
        self._count = count

    async def producers(self, after: str, limit: int) -> list[ProducerEntries]:
        # A producer has at most MAX_EPOCHS + MAX_RETIRED entries: one row more than
        # `limit` of them can hold starts the next producer, if there is one, so the
        # first `limit` read are whole.
        rows = limit * (MAX_EPOCHS + MAX_RETIRED) + 1
        entries = await self._calls.call(self._entries, after, rows)
        return grouped(entries)[:limit]

    def _entries(self, deadline: Deadline, after: str, limit: int) -> list[EpochEntry]:
        """Every entry past producer `after`, in (producer, epoch) order: at most `limit`.
        A read of the key range from `after` on, which stops at `limit` rows, where a
        query ordered by the key was sorted whole by the emulator (9 s at a million)."""
        self._count(1)
        past = spanner.KeySet(  # type: ignore[no-untyped-call]
            ranges=[spanner.KeyRange(start_open=[after, MAX_EPOCH], end_closed=[])]  # type: ignore[no-untyped-call]
        )
        with self._calls.database().snapshot() as snapshot:
            return entries_of(key_rows(snapshot, deadline, TABLE, NAMES, past, limit=limit))

    async def producer(self, producer: str) -> ProducerEntries | None:
        entries = await self._calls.call(self._producer, producer)
        return ProducerEntries(producer, entries) if entries else None

    def _producer(self, deadline: Deadline, producer: str) -> list[EpochEntry]:
        """One producer's entries, oldest epoch first."""
        self._count(1)
        with self._calls.database().snapshot() as snapshot:
            found = key_rows(snapshot, deadline, TABLE, NAMES, keys_of([producer]))
            return sorted(entries_of(found), key=lambda e: e.epoch)

    async def audit(self, since: int, until: int, *, cutoff: int, limit: int) -> LedgerAudit:
        return await self._calls.call(self._audit, since, until, cutoff, limit)

    def _audit(
        self, deadline: Deadline, since: int, until: int, cutoff: int, limit: int
    ) -> LedgerAudit:
        self._count(6)
        first_hour, last_hour = hours_of(since, until)
        window = {"since": since, "until": until, "cutoff": cutoff, "limit": limit}
        with self._calls.database().snapshot(multi_use=True) as snapshot:

            def query(sql: str, **more: Any) -> list[Any]:
                params = {**window, **more}
                types = {name: _WINDOW_TYPES[name] for name in window}
                if "kinds" in more:
                    types["kinds"] = _STRINGS
                for name in ("first", "last"):
                    if name in more:
                        types[name] = _INT
                # Only the parameters the statement names.
                used = {k: v for k, v in params.items() if f"@{k}" in sql}
                return list(
                    sql_rows(
                        snapshot,
                        deadline,
                        sql,
                        params=used,
                        param_types={k: types[k] for k in used},
                    )
                )

            hours = [
                HourCount(
                    hour=int(h),
                    stored=_whole(s),
                    rejected=_whole(r),
                    duplicates=_whole(d),
                    conflicts=_whole(c),
                )
                for h, s, r, d, c in query(_HOURS_SQL, first=first_hour, last=last_hour)
            ]
            by_hour: dict[int, int] = {}
            missing_ranges = 0
            for hour, size, count in query(_MISSING_BY_HOUR_SQL):
                by_hour[int(hour)] = _whole(size)
                missing_ranges += int(count)
            missing = [LedgerRange(*row) for row in query(_OLDEST_SQL, kinds=["gap"])]
            end = window["until"]
            conflicts = [
                LedgerRange(*row)
                for row in query(_OLDEST_SQL, kinds=["conflict", "ends"], cutoff=end)
            ]
            ((ranges, sequences, ends),) = query(_CONFLICTS_SQL)
            ((unknown,),) = query(_UNKNOWN_SQL)
        return LedgerAudit(
            hours=hours,
            missing_by_hour=by_hour,
            missing=missing,
            missing_ranges=missing_ranges,
            conflicts=conflicts,
            conflict_ranges=int(ranges),
            conflicting_sequences=_whole(sequences),
            conflicting_ends=_whole(ends),
            unknown_ends=int(unknown),
        )

    async def worst(self, *, cutoff: int, since: int, top: int) -> Worst:
        return await self._calls.call(self._worst, cutoff, since, top)

    def _worst(self, deadline: Deadline, cutoff: int, since: int, top: int) -> Worst:
        self._count(2)
        with self._calls.database().snapshot(multi_use=True) as snapshot:
            missing = sql_rows(
                snapshot,
                deadline,
                _WORST_MISSING_SQL,
                params={"cutoff": cutoff, "top": top},
                param_types={"cutoff": _INT, "top": _INT},
            )
            missing_by = {p: _whole(n) for p, n in missing}
            conflicts = sql_rows(
                snapshot,
                deadline,
                _WORST_CONFLICTS_SQL,
                params={"since": since, "top": top},
                param_types={"since": _INT, "top": _INT},
            )
            return Worst(missing=missing_by, conflicts={p: _whole(n) for p, n in conflicts})

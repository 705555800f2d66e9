"""The completeness ledger on DuckDB: the live producers in memory, every producer in tables.

One process sees every write: it settles each append against a `Tally` in memory
as the append is journaled, the changes in its frame; the applier writes them to
tables. Memory holds the producers heard of most recently (`LIVE_PRODUCERS`);
the audit and the watch query the tables, never every producer. "Two instances"
are one after another on the same file: the second continues the first's ledger.

Design: docs/producers.md#exactly-once-by-producer-sequence
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeVar

import duckdb
import pyarrow as pa

from app.store.producers import (
    HOUR_MICROS,
    HOURS_KEPT,
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
from app.store.tally import Held, SequenceKey, Settled, Tally

T = TypeVar("T")

TABLE: Final = "producer_epochs"
RANGES: Final = "producer_ranges"
HOURS: Final = "producer_hours"
COPIES: Final = "producer_sequences"
# Producers whose entries memory holds at most: ~1 KB each with their dictionaries,
# so ~100 MB. Past it, those heard of longest ago are let go once written, and read
# back (one query by key) when they publish again.
LIVE_PRODUCERS: Final = 100_000
# Producers handled in one step of the event loop where there may be very many
# (those let go, those expired): ~1 ms of work each time.
_STEP: Final = 2_000
DDL: Final = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  producer VARCHAR NOT NULL,
  epoch BIGINT NOT NULL,
  entry BLOB NOT NULL,
  last_seen TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (producer, epoch)
)""",
    # What the audit reads of each entry (`entry_ranges`): a row per gap, range in
    # conflict, disagreement on its end, and unknown end; written with the entries.
    f"""CREATE TABLE IF NOT EXISTS {RANGES} (
  producer VARCHAR NOT NULL,
  epoch BIGINT NOT NULL,
  kind VARCHAR NOT NULL,
  first BIGINT NOT NULL,
  last BIGINT NOT NULL,
  opened BIGINT NOT NULL
)""",
    # Messages with a producer sequence, by hour of ingest: the audit's counts.
    f"""CREATE TABLE IF NOT EXISTS {HOURS} (
  hour BIGINT PRIMARY KEY,
  stored BIGINT NOT NULL,
  rejected BIGINT NOT NULL,
  duplicates BIGINT NOT NULL,
  conflicts BIGINT NOT NULL
)""",
    # The messages stored under each sequence: a later copy is a retry (dropped) only
    # if it is one of them (`message_digest`, of the stored rows). `key` is a hash of
    # the sequence, the one column indexed: a look-up by it reads a few rows.
    f"""CREATE TABLE IF NOT EXISTS {COPIES} (
  key BIGINT NOT NULL,
  producer VARCHAR NOT NULL,
  epoch BIGINT NOT NULL,
  sequence BIGINT NOT NULL,
  message_id VARCHAR NOT NULL,
  ingest_time TIMESTAMPTZ NOT NULL
)""",
    f"CREATE INDEX IF NOT EXISTS {COPIES}_key ON {COPIES} (key)",
)
_ENTRY_SCHEMA = pa.schema(
    [
        ("producer", pa.string()),
        ("epoch", pa.int64()),
        ("entry", pa.binary()),
        ("last_seen", pa.timestamp("us", tz="UTC")),
    ]
)
_KEY_SCHEMA = pa.schema([("producer", pa.string()), ("epoch", pa.int64())])
_RANGE_SCHEMA = pa.schema(
    [
        ("producer", pa.string()),
        ("epoch", pa.int64()),
        ("kind", pa.string()),
        ("first", pa.int64()),
        ("last", pa.int64()),
        ("opened", pa.int64()),
    ]
)
_COPY_SCHEMA = pa.schema(
    [
        ("key", pa.int64()),
        ("producer", pa.string()),
        ("epoch", pa.int64()),
        ("sequence", pa.int64()),
        ("message_id", pa.string()),
        ("ingest_time", pa.timestamp("us", tz="UTC")),
    ]
)


def sequence_key(producer: str, epoch: int, sequence: int) -> int:
    """A signed 64-bit hash of a sequence: what `producer_sequences` is indexed by."""
    digest = hashlib.blake2b(
        f"{epoch}:{sequence}:{producer}".encode(errors="surrogatepass"), digest_size=8
    )
    return int.from_bytes(digest.digest(), "big", signed=True)


@dataclass(slots=True)
class Changes:
    """What frames change of the ledger, the latest change of each entry winning: the
    entries (None: dropped), each changed entry's ranges, and the hours' counts."""

    entries: dict[tuple[str, int], EpochEntry | None] = field(default_factory=dict)
    ranges: dict[tuple[str, int], list[LedgerRange]] = field(default_factory=dict)
    hours: dict[int, HourCount] = field(default_factory=dict)

    def add(
        self,
        entries: Iterable[EpochEntry],
        forgotten: Iterable[tuple[str, int]],
        ranges: Iterable[LedgerRange],
        hours: Iterable[HourCount],
    ) -> None:
        for entry in entries:
            key = (entry.producer, entry.epoch)
            self.entries[key] = entry
            self.ranges[key] = []
        for key in forgotten:
            self.entries[key] = None
            self.ranges[key] = []
        for found in ranges:
            self.ranges.setdefault((found.producer, found.epoch), []).append(found)
        for count in hours:
            self.hours[count.hour] = count

    def merge(self, later: Changes) -> None:
        self.entries.update(later.entries)
        self.ranges.update(later.ranges)
        self.hours.update(later.hours)

    def __bool__(self) -> bool:
        return bool(self.entries or self.hours)


def write(con: duckdb.DuckDBPyConnection, changes: Changes) -> None:
    """Write `changes`, in the caller's transaction."""
    # Each changed entry's ranges as they are now: the old ones go first (a table of
    # what is owed and in conflict, small beside the entries'). The entries themselves
    # are replaced by key, and only dropped ones deleted: a join with every entry
    # would read all of them at each write.
    _delete(con, RANGES, list(changes.entries))
    _delete(con, TABLE, [k for k, e in changes.entries.items() if e is None])
    entries = [e for e in changes.entries.values() if e is not None]
    if entries:
        _insert(
            con,
            TABLE,
            pa.table(
                [
                    pa.array([e.producer for e in entries], pa.string()),
                    pa.array([e.epoch for e in entries], pa.int64()),
                    pa.array([encode_entry(e) for e in entries], pa.binary()),
                    pa.array([e.last_seen for e in entries], pa.timestamp("us", tz="UTC")),
                ],
                schema=_ENTRY_SCHEMA,
            ),
        )
    ranges = [r for found in changes.ranges.values() for r in found]
    if ranges:
        _insert(con, RANGES, _ranges_table(ranges))
    if changes.hours:
        hours = list(changes.hours.values())
        con.executemany(
            f"INSERT OR REPLACE INTO {HOURS} VALUES (?, ?, ?, ?, ?)",
            [[h.hour, h.stored, h.rejected, h.duplicates, h.conflicts] for h in hours],
        )
        oldest = max(h.hour for h in hours) - HOURS_KEPT
        con.execute(f"DELETE FROM {HOURS} WHERE hour < $oldest", {"oldest": oldest})


def _ranges_table(ranges: Sequence[LedgerRange]) -> pa.Table:
    return pa.table(
        [
            pa.array([r.producer for r in ranges], pa.string()),
            pa.array([r.epoch for r in ranges], pa.int64()),
            pa.array([r.kind for r in ranges], pa.string()),
            pa.array([r.first for r in ranges], pa.int64()),
            pa.array([r.last for r in ranges], pa.int64()),
            pa.array([r.opened for r in ranges], pa.int64()),
        ],
        schema=_RANGE_SCHEMA,
    )


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    verb = "INSERT OR REPLACE" if table == TABLE else "INSERT"
    con.register("ledger_rows", rows)
    try:
        con.execute(f"{verb} INTO {table} SELECT * FROM ledger_rows")
    finally:
        con.unregister("ledger_rows")


def _delete(con: duckdb.DuckDBPyConnection, table: str, keys: list[tuple[str, int]]) -> None:
    if not keys:
        return
    con.register(
        "ledger_keys",
        pa.table(
            [
                pa.array([k[0] for k in keys], pa.string()),
                pa.array([k[1] for k in keys], pa.int64()),
            ],
            schema=_KEY_SCHEMA,
        ),
    )
    try:
        con.execute(
            f"DELETE FROM {table} USING ledger_keys WHERE {table}.producer = ledger_keys.producer "
            f"AND {table}.epoch = ledger_keys.epoch"
        )
    finally:
        con.unregister("ledger_keys")


def insert_copies(con: duckdb.DuckDBPyConnection, copies: Sequence[Held], now: int) -> None:
    """Note the messages stored under sequences, in the caller's transaction (a frame
    replayed after a crash may note them twice: a look-up reads both, alike)."""
    _insert(
        con,
        COPIES,
        pa.table(
            [
                pa.array([sequence_key(c[0], c[1], c[2]) for c in copies], pa.int64()),
                pa.array([c[0] for c in copies], pa.string()),
                pa.array([c[1] for c in copies], pa.int64()),
                pa.array([c[2] for c in copies], pa.int64()),
                pa.array([c[3] for c in copies], pa.string()),
                pa.array([now] * len(copies), pa.timestamp("us", tz="UTC")),
            ],
            schema=_COPY_SCHEMA,
        ),
    )


_COPIES_SQL: Final = (
    f"SELECT producer, epoch, sequence, message_id FROM {COPIES} "
    "WHERE key IN (SELECT unnest($keys))"
)


def held_ids(
    cur: duckdb.DuckDBPyConnection, keys: Iterable[SequenceKey]
) -> dict[SequenceKey, set[str]]:
    """The message ids DuckDB holds under these sequences."""
    wanted = set(keys)
    found: dict[SequenceKey, set[str]] = {}
    params = {"keys": [sequence_key(*k) for k in wanted]}
    for producer, epoch, sequence, message_id in cur.execute(_COPIES_SQL, params).fetchall():
        key = (producer, epoch, sequence)
        if key in wanted:  # not another sequence of the same hash
            found.setdefault(key, set()).add(message_id)
    return found


def load(cur: duckdb.DuckDBPyConnection, producers: Sequence[str]) -> list[EpochEntry]:
    rows = cur.execute(
        f"SELECT entry FROM {TABLE} WHERE producer IN (SELECT unnest($names))",
        {"names": list(producers)},
    ).fetchall()
    return [decode_entry(data) for (data,) in rows]


def load_hours(con: duckdb.DuckDBPyConnection) -> list[HourCount]:
    rows = con.execute(
        f"SELECT hour, stored, rejected, duplicates, conflicts FROM {HOURS} ORDER BY hour"
    ).fetchall()
    return [HourCount(*row) for row in rows]


def expire(con: duckdb.DuckDBPyConnection, before: int) -> list[tuple[str, int]]:
    """Delete the entries not heard of since `before` (µs), their ranges, and the
    messages held under sequences stored before it; the entries' keys."""
    rows = con.execute(
        f"DELETE FROM {TABLE} WHERE last_seen < make_timestamptz($before) "
        "RETURNING producer, epoch",
        {"before": before},
    ).fetchall()
    expired = [(producer, epoch) for producer, epoch in rows]
    if expired:
        write(con, Changes(entries=dict.fromkeys(expired)))
    con.execute(
        f"DELETE FROM {COPIES} WHERE ingest_time < make_timestamptz($before)", {"before": before}
    )
    return expired


# -- what the audit and the watch read --------------------------------------------------------

_PAGE_SQL: Final = f"""
SELECT entry FROM {TABLE}
WHERE producer IN (
  SELECT DISTINCT producer FROM {TABLE} WHERE producer > $after ORDER BY producer LIMIT $limit
)
ORDER BY producer, epoch
"""
# Sizes are summed as HUGEINT: a gap may hold 2^63 - 1 sequences.
_SIZE: Final = "(CAST(last AS HUGEINT) - first + 1)"
_IN_RANGE: Final = "opened >= $since AND opened < $until"
_MISSING_BY_HOUR_SQL: Final = f"""
SELECT opened // {HOUR_MICROS} AS hour, SUM({_SIZE}), COUNT(*) FROM {RANGES}
WHERE kind = 'gap' AND {_IN_RANGE} AND opened <= $cutoff GROUP BY hour
"""
_OLDEST_SQL: Final = f"""
SELECT producer, epoch, kind, first, last, opened FROM {RANGES}
WHERE kind IN (SELECT unnest($kinds)) AND {_IN_RANGE} AND opened <= $cutoff
ORDER BY opened, producer, epoch, first LIMIT $limit
"""
_CONFLICTS_SQL: Final = f"""
SELECT COUNT(*), COALESCE(SUM(CASE WHEN kind = 'conflict' THEN {_SIZE} END), 0),
       COUNT(*) FILTER (WHERE kind = 'ends')
FROM {RANGES} WHERE kind IN ('conflict', 'ends') AND {_IN_RANGE}
"""
_UNKNOWN_SQL: Final = f"SELECT COUNT(*) FROM {RANGES} WHERE kind = 'unknown' AND {_IN_RANGE}"
_WORST_MISSING_SQL: Final = f"""
SELECT producer, SUM({_SIZE}) AS n FROM {RANGES}
WHERE kind = 'gap' AND opened <= $cutoff GROUP BY producer ORDER BY n DESC, producer LIMIT $top
"""
_WORST_CONFLICTS_SQL: Final = f"""
SELECT producer, SUM(CASE WHEN kind = 'conflict' THEN {_SIZE} ELSE 1 END) AS n FROM {RANGES}
WHERE kind IN ('conflict', 'ends') AND opened >= $since
GROUP BY producer ORDER BY n DESC, producer LIMIT $top
"""
# The most a 128-bit sum is shown as: far past anything owed (2^63 per gap).
_MAX_SHOWN = 2**100


def _audit(
    cur: duckdb.DuckDBPyConnection, start: int, end: int, cutoff: int, limit: int
) -> tuple[dict[int, int], int, list[LedgerRange], list[LedgerRange], tuple[int, int, int], int]:
    window = {"since": start, "until": end}
    by_hour: dict[int, int] = {}
    missing_ranges = 0
    for hour, size, count in cur.execute(
        _MISSING_BY_HOUR_SQL, {**window, "cutoff": cutoff}
    ).fetchall():
        by_hour[hour] = min(int(size), _MAX_SHOWN)
        missing_ranges += count
    oldest = {
        name: [
            LedgerRange(*row)
            for row in cur.execute(
                _OLDEST_SQL, {**window, "cutoff": cutoff_, "limit": limit, "kinds": kinds}
            ).fetchall()
        ]
        for name, kinds, cutoff_ in (
            ("missing", ["gap"], cutoff),
            ("conflicts", ["conflict", "ends"], end),
        )
    }
    found = cur.execute(_CONFLICTS_SQL, window).fetchone()
    ranges, sequences, ends = found if found else (0, 0, 0)
    unknown = cur.execute(_UNKNOWN_SQL, window).fetchone()
    return (
        by_hour,
        missing_ranges,
        oldest["missing"],
        oldest["conflicts"],
        (int(ranges), min(int(sequences), _MAX_SHOWN), int(ends)),
        int(unknown[0]) if unknown else 0,
    )


class DuckDBLedger:
    """The ledger of a DuckDB store: its live producers, the hours' counts, the changes
    owed to DuckDB, and the `Completeness` reads. `write` and `read` run a function on
    the store's writer thread and on a reader thread; `settled` returns once every
    append acknowledged is applied and its changes written."""

    def __init__(
        self,
        *,
        write: Callable[[Callable[[], T]], Awaitable[T]],
        read: Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Awaitable[Any]],
        connection: Callable[[], duckdb.DuckDBPyConnection],
        settled: Callable[[], Awaitable[None]],
        live: int = LIVE_PRODUCERS,
    ) -> None:
        self.tally = Tally()
        self._write: Callable[[Callable[[], Any]], Awaitable[Any]] = write
        self._read = read
        self._connection = connection
        self._settled = settled
        self._live = live
        # Every hour's counts, as of the last append journaled.
        self.hours: dict[int, HourCount] = {}
        # Each live producer, and the frame that last changed it (oldest first).
        self._recent: collections.OrderedDict[str, int] = collections.OrderedDict()
        # Changes of frames applied and not written yet, and of the first such frame;
        # those being written, and of theirs; the frames written through.
        self.owed = Changes()
        self.owed_from = 0
        self._writing: tuple[Changes, int] | None = None
        # Whether a write of owed changes is under way.
        self.writing = False
        self.written_through = 0
        self._lock = asyncio.Lock()
        # The producers of the batch being settled: held in memory until it is.
        self._pinned: set[str] = set()

    # -- appending -----------------------------------------------------------------

    async def start(self) -> None:
        found = await self._write(lambda: load_hours(self._connection()))
        self.hours = {h.hour: h for h in found}

    async def load(self, producers: Iterable[str]) -> None:
        """Read back the entries of these producers that memory does not hold, and keep
        them all in memory until `release` (the batch that names them is settled)."""
        self._pinned = {*producers}
        cold = sorted(p for p in self._pinned if not self.tally.holds(p))
        if not cold:
            return
        entries = await self._read(lambda cur: load(cur, cold))
        # An append is settled one at a time, so none of them came back meanwhile.
        self.tally.add(entries)

    def release(self) -> None:
        self._pinned = set()

    def hours_after(self, settled: Settled) -> list[HourCount]:
        """The hour's counts with the batch's added: what its frame carries."""
        counts = settled.counts
        if not (counts.stored or counts.rejected or counts.duplicates):
            return []
        was = self.hours.get(counts.hour)
        return [was.plus(counts) if was is not None else counts]

    def committed(self, settled: Settled, hours: list[HourCount], frame: int) -> None:
        """A batch is journaled (frame `frame`): its changes are the ledger's now."""
        self.tally.commit(settled)
        for count in hours:
            if count.hour not in self.hours:
                for old in [h for h in self.hours if h < count.hour - HOURS_KEPT]:
                    del self.hours[old]
            self.hours[count.hour] = count
        recent = self._recent
        for producer in settled.newest:
            recent[producer] = frame
            recent.move_to_end(producer)
        for producer, _ in settled.dropped:
            if not self.tally.holds(producer):
                recent.pop(producer, None)

    @property
    def held(self) -> int:
        """How many producers memory holds."""
        return len(self.tally)

    async def forget(self, keys: Sequence[tuple[str, int]], before: int) -> None:
        """Entries expired in DuckDB: forgotten here too, unless heard of since."""
        for start in range(0, len(keys), _STEP):
            for producer, epoch in keys[start : start + _STEP]:
                entry = self.tally.entries(producer).get(epoch)
                if entry is not None and entry.last_seen < before:
                    self.tally.forget(producer, epoch)
                    if not self.tally.holds(producer):
                        self._recent.pop(producer, None)
            await asyncio.sleep(0)  # a million expired at once is many steps, not one

    # -- writing what is owed ---------------------------------------------------------

    def owe(self, frame: int, changes: Changes) -> None:
        """Note the changes of a frame applied, to write at the next `flush`."""
        if not changes:
            return
        if not self.owed:
            self.owed_from = frame
        self.owed.merge(changes)

    @property
    def unwritten_from(self) -> int | None:
        """The first frame whose changes are not in DuckDB yet (owed, or being written),
        None if none: the journal keeps it and every frame after it."""
        first = self.owed_from if self.owed else None
        if self._writing is not None and (first is None or self._writing[1] < first):
            first = self._writing[1]
        return first

    async def flush(self, applied: int) -> None:
        """Write what is owed (every frame through `applied` is) in one transaction;
        StoreUnavailable, owing it still, if the write fails. Then let go of the
        producers heard of longest ago past LIVE_PRODUCERS."""
        async with self._lock:
            if self.owed:
                await self._write_owed()
            self.written_through = applied
        await self._let_go()

    async def _write_owed(self) -> None:
        owed, self.owed = self.owed, Changes()
        self._writing = (owed, self.owed_from)
        self.writing = True

        def run() -> None:
            con = self._connection()
            con.begin()
            try:
                write(con, owed)
                con.commit()
            except BaseException:
                con.rollback()
                raise

        try:
            await self._write(run)
        except BaseException:
            # Owed again, before anything owed since.
            owed.merge(self.owed)
            if self.owed:
                self.owed_from = min(self.owed_from, self._writing[1])
            else:
                self.owed_from = self._writing[1]
            self.owed = owed
            raise
        finally:
            self._writing = None
            self.writing = False

    async def _let_go(self) -> None:
        # _STEP at a time: a burst of new producers is let go in many short steps of
        # the event loop, not one long one.
        recent = self._recent
        while len(recent) > self._live:
            for _ in range(min(_STEP, len(recent) - self._live)):
                producer, frame = next(iter(recent.items()))
                if frame > self.written_through:
                    return  # its changes are not all in DuckDB yet
                if producer in self._pinned:
                    return  # a batch being settled holds it: another flush lets it go
                del recent[producer]
                self.tally.drop(producer)
            await asyncio.sleep(0)

    # -- Completeness -------------------------------------------------------------------

    async def producer(self, producer: str) -> ProducerEntries | None:
        epochs = self.tally.entries(producer)
        if not epochs:
            # Not live: all of it is in DuckDB (a producer leaves memory once written).
            entries = await self._read(lambda cur: load(cur, [producer]))
            if not entries:
                return None
            epochs = {e.epoch: e for e in entries}
        return ProducerEntries(producer, [epochs[e] for e in sorted(epochs)])

    async def producers(self, after: str, limit: int) -> list[ProducerEntries]:
        await self._settled()
        params = {"after": after, "limit": limit}
        rows = await self._read(lambda cur: cur.execute(_PAGE_SQL, params).fetchall())
        return grouped(decode_entry(data) for (data,) in rows)

    async def audit(self, since: int, until: int, *, cutoff: int, limit: int) -> LedgerAudit:
        await self._settled()
        start, end = since, until
        first_hour, last_hour = hours_of(since, until)
        by_hour, missing_ranges, missing, conflicts, counted, unknown = await self._read(
            lambda cur: _audit(cur, start, end, cutoff, limit)
        )
        conflict_ranges, conflicting, ends = counted
        return LedgerAudit(
            hours=[h for hour, h in sorted(self.hours.items()) if first_hour <= hour <= last_hour],
            missing_by_hour=by_hour,
            missing=missing,
            missing_ranges=missing_ranges,
            conflicts=conflicts,
            conflict_ranges=conflict_ranges,
            conflicting_sequences=conflicting,
            conflicting_ends=ends,
            unknown_ends=unknown,
        )

    async def worst(self, *, cutoff: int, since: int, top: int) -> Worst:
        await self._settled()

        def run(cur: duckdb.DuckDBPyConnection) -> Worst:
            missing = cur.execute(_WORST_MISSING_SQL, {"cutoff": cutoff, "top": top}).fetchall()
            params = {"since": since, "top": top}
            conflicts = cur.execute(_WORST_CONFLICTS_SQL, params).fetchall()
            return Worst(
                missing={p: min(int(n), _MAX_SHOWN) for p, n in missing},
                conflicts={p: min(int(n), _MAX_SHOWN) for p, n in conflicts},
            )

        result: Worst = await self._read(run)
        return result


class FrameLedger(NamedTuple):
    """What one frame changes of the ledger (as `Frame` carries it)."""

    entries: Sequence[EpochEntry] = ()
    forgotten: Sequence[tuple[str, int]] = ()
    ranges: Sequence[LedgerRange] = ()
    hours: Sequence[HourCount] = ()
    copies: Sequence[Held] = ()

    def changes(self) -> Changes:
        changes = Changes()
        changes.add(self.entries, self.forgotten, self.ranges, self.hours)
        return changes


def frame_ledger(settled: Settled, hours: list[HourCount]) -> FrameLedger:
    """A settled batch's changes, as its frame carries them."""
    ranges = [
        found
        for (producer, _), entry in settled.changed.items()
        for found in entry_ranges(entry, settled.newest.get(producer, entry.epoch))
    ]
    return FrameLedger(
        list(settled.changed.values()), sorted(settled.dropped), ranges, hours, settled.copies
    )

"""The exporter: Spanner's rows into BigQuery, each exactly once, by one instance at a time.

It reads closed windows of rows in `(ingest_time, message_id)` order, writes an
intent to Spanner before each append at an offset of a COMMITTED Storage Write
stream, and moves progress only by compare-and-set under the lease
(`app.store.spanner.ledger`). Each table is a round of its own: a failure pauses
or blocks that table alone; only the lease is shared.

Design: docs/stores.md#the-exporter
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple, Protocol, TypeVar

import msgspec
from google.protobuf import descriptor_pb2

from app.errors import RetryLater, StoreUnavailable
from app.records import TABLES, ExportWatermark, Record, Rejection, Row
from app.store.backoff import Backoff
from app.store.bigquery.layout import NO_COPIES, Copies
from app.store.bigquery.proto import RowEncoder
from app.store.bigquery.stream import Appended, OffsetStream, RowsRefused, StreamBroken
from app.store.spanner.ledger import (
    Intent,
    Lease,
    LeaseClaim,
    LeaseLost,
    Progress,
    ProgressMoved,
    Standing,
)
from app.store.spanner.schema import MIGRATIONS
from app.store.tiered.balance import Share
from app.store.tiered.typed import Encoding, TypedExport

log = logging.getLogger(__name__)

# The lease's only row: one exporter per serving database (per system).
LEASE_NAME: Final = "bigquery"
# An exporter whose instance died is taken over at most this long after its last
# renewal, plus one claim: the holder renews three times per lease, and every other
# instance asks for it as often. A claim is a transaction, which Spanner may abort
# and the client runs again within the call's deadline (`CALL_SECONDS`). One that
# stops hands it back (`Exporter.stop`), and the next claim takes it.
LEASE_SECONDS: Final = 15.0
# Another exporter's lease is claimed this long after it expires (by Spanner's
# clock, which the claim's answer measured), so that the claim finds it expired.
CLAIM_AFTER_EXPIRY_SECONDS: Final = 0.1
# Batch committed at least this long ago are exported: a read at a timestamp
# that old is served at once (a read at "now" may wait out Spanner's clock
# uncertainty). The exporter's lag is at least this.
SETTLED_MICROS: Final = 1_000_000
# A batch: one Spanner read, one append. 1,000 rows of ~1 KB append in one
# request well within AppendRows' 10 MB; a payload of several MB is cut by size.
BATCH_ROWS: Final = 1000
BATCH_BYTES: Final = 8 * 1024 * 1024
# Between rounds that found nothing to export: from 0.5 s, doubling while rounds keep
# finding nothing, to 8 s; a row found starts the next streak at once. A quiet system
# is one of a hundred an exporter service instance holds, and each round reads each
# table's progress and its rows: at 0.5 s a rest, a quiet system took an instance 0.03
# of a core here (`python3 dev.py bench exporter`). Once quiet, a row waits at most
# 8 s more before it is exported: the export's alerts are an hour behind.
IDLE_SECONDS: Final = 0.5
IDLE_MAX_SECONDS: Final = 8.0
# An idle exporter moves the watermark on in steps this large: one progress write
# (a transaction) per table every 30 s, not one per round. A quiet system's export lag
# reads up to about this much more than its rows' (its alerts are at an hour).
WATERMARK_STEP_MICROS: Final = 30_000_000
# BigQuery is told the watermark (`export_watermarks`) as it moves on by this much.
PUBLISH_MICROS: Final = 60_000_000
# After an error (BigQuery or Spanner unavailable), before trying again: from
# 1 s, doubling per failure to at most 30 s, jittered (`app.store.backoff`), per
# table (a claim that fails pauses both). A Spanner that refuses connections is
# asked about twice a minute per instance.
RETRY_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 30.0
# How long a watermark row may take to reach BigQuery (it is best effort).
PUBLISH_SECONDS: Final = 10.0
BLOCKED_RETRY_SECONDS: Final = 60.0
# How long a stopping exporter tries to hand its lease back.
RELEASE_SECONDS: Final = 1.0
# An exporter that stepped down (its loop down for longer than a lease) claims
# no lease for this many leases, so that another instance takes the export.
STEP_DOWN_LEASES: Final = 2

# Cloud Run's revision names: the service's, its generation, a random suffix.
_GENERATION: Final = re.compile(r"-(\d+)-[a-z0-9]+$")
_TABLES_OF: Final = {row_type: table for table, row_type in TABLES.items()}
# The rows of either table, and either table's row type.
Batch = list[Record | Rejection]
RowType = type[Record] | type[Rejection]
R = TypeVar("R", bound=Row)
# A batch as it is appended: its writer schema and its rows' bytes.
Encoded = tuple[descriptor_pb2.DescriptorProto, list[bytes]]
Key = tuple[int, str]

# How a stop at one row reads (`recordline export reject` finds the row in it).
_ROW_AT_FAULT: Final = re.compile(
    r"^(?:BigQuery refused message (?P<refused>\S+) of (?P<table>\w+):"
    r"|message (?P<unexported>\S+) of (?P<in>\w+) cannot be exported)"
)


def row_at_fault(blocked: str) -> tuple[str, str] | None:
    """The (table, message id) a stop names as the row at fault: one BigQuery
    refused, or one that could not be read or encoded; None for any other stop."""
    found = _ROW_AT_FAULT.match(blocked)
    if found is None:
        return None
    if found["refused"] is not None:
        return found["table"], found["refused"]
    return found["in"], found["unexported"]


class ExportObserver(Protocol):
    """Told what the exporter does; telemetry implements it (metrics)."""

    def exported(self, table: str, rows: Sequence[Record | Rejection]) -> None:
        """`rows` of `table` are in BigQuery, each exported once (what the store holds
        is counted here, once a row)."""
        ...

    def blocked(self, table: str, reason: str) -> None: ...

    def unblocked(self, table: str) -> None:
        """The export of `table` goes on, or this instance no longer exports it."""
        ...

    def watermark(self, table: str, micros: int) -> None:
        """Every row of `table` before `micros` is in BigQuery (as the lease's holder
        reads it: `app.store.tiered.watermarks.while_leading`)."""
        ...

    def released(self) -> None:
        """This instance no longer holds the lease (lost, handed back, or never held):
        what it said of the export is the holder's to say now."""
        ...


class ExportThrottle(Protocol):
    """How fast on-call lets this system's export go, when it slowed it (a cell's
    throttle: `app.cell.throttles`). Asked between batches only: nothing the exporter
    holds (a transaction, an append) is open while it waits."""

    async def batch(self, rows: int) -> int:
        """How many of `rows` the next batch may take (one at least), once it may start:
        waited for here."""
        ...

    def exported(self, rows: int) -> None:
        """A batch took `rows` (appended, once)."""
        ...


class ExportLedger(Protocol):
    """The export's lease and progress as one exporter asks for them, where they are
    kept (the serving database: `app.store.spanner.export_ledger`)."""

    @property
    def expires_in(self) -> float | None:
        """After a claim another exporter's live lease refused: in how long (s) that
        lease expires, when known."""
        ...

    @property
    def claimed(self) -> LeaseClaim | None:
        """What the last claim found: who holds the lease, who asked for it."""
        ...

    async def claim(self, *, take_free: bool = True, want: bool = False) -> bool:
        """Take or renew the lease; whether this exporter holds it now. Without
        `take_free` a lease nobody holds is left to others; with `want` another's is
        asked for (an exporter pool's balance: `app.store.tiered.balance`)."""
        ...

    async def release(self, *, within: float) -> bool:
        """Hand the lease back if this exporter holds it; whether it did."""
        ...

    async def progress(self, table: str) -> Progress:
        """The table's progress now (a strong read); a new one if it has none."""
        ...

    async def record(self, progress: Progress) -> Progress:
        """Write `progress`, if this exporter still holds the lease (else LeaseLost)
        and the row is still the one it was made from (else ProgressMoved); the
        progress as written, what the next write is made from."""
        ...

    async def watermarks(self) -> dict[str, int]:
        """Each table's watermark (0 before its first export), in one read."""
        ...


class ExportRows(Protocol):
    """The rows to export, in `(ingest_time, message_id)` order (the serving database)."""

    async def rows_after(
        self, kind: type[R], after: Key, until: int, limit: int, *, seen: int = 0
    ) -> list[R]: ...

    async def keys_after(
        self, kind: type[R], after: Key, until: int, limit: int, *, seen: int = 0
    ) -> list[Key]: ...


class ExportSource(ExportRows, Protocol):
    """What the exporter reads and writes in the serving database."""

    def export_ledger(self, lease: Lease) -> ExportLedger:
        """The ledger as the exporter holding `lease` asks it."""
        ...


class Held(Protocol):
    """What BigQuery holds (`app.store.tiered.held`)."""

    async def held(self, table: str, since: int) -> list[Key]:
        """The keys of `table`'s rows with `ingest_time >= since` (µs)."""
        ...


def revision_name() -> str:
    """The Cloud Run revision this process runs as: `K_REVISION` in a service,
    `CLOUD_RUN_REVISION` in a worker pool (the exporter service); empty elsewhere."""
    return os.environ.get("K_REVISION") or os.environ.get("CLOUD_RUN_REVISION", "")


def code_version() -> tuple[int, int]:
    """This code's place in the order of versions: its row schema (how many
    migrations it knows were released) and its Cloud Run revision's generation
    (a revision is named `NAME-GENERATION-SUFFIX`, the generation counting the
    deploys of its service or worker pool; 0 outside Cloud Run or for a revision
    named by hand)."""
    found = _GENERATION.search(revision_name())
    return len(MIGRATIONS), int(found.group(1)) if found else 0


def exporter_lease(
    holder: str | None = None,
    *,
    version: tuple[int, int] | None = None,
    seconds: float = LEASE_SECONDS,
) -> Lease:
    """This process's claim on the export: named `holder` (by default `holder_name`),
    standing at `version` (by default `code_version`), for `seconds` a claim."""
    standing = Standing(*(version or code_version()))
    return Lease(LEASE_NAME, holder or holder_name(), standing, seconds)


def holder_name() -> str:
    """This exporter's name in the lease: where it runs, and a nonce for this process."""
    revision = revision_name()
    return f"{socket.gethostname()}/{revision}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class WatermarkSink(Protocol):
    """Where the exporter tells BigQuery its watermarks (`export_watermarks`)."""

    async def publish(self, row: ExportWatermark, *, within: float) -> None: ...


class Destination(NamedTuple):
    """Where the exporter puts rows, in BigQuery: each table's offset stream, and
    what it is told or asked besides."""

    streams: dict[RowType, OffsetStream]
    # Told each table's watermark (`export_watermarks`).
    watermarks: WatermarkSink | None = None
    # Records' typed columns (`typed.py`), where the table has them.
    typed: TypedExport | None = None
    # What BigQuery holds, to settle a batch whose stream is gone; without it
    # such a batch blocks its table for an operator's `export resync`.
    held: Held | None = None
    # The copies a layout of `records` has its rows carry (`app.store.bigquery.layout`),
    # asked for each batch: StoreUnavailable (the table paused) until they are known.
    copies: Callable[[], Copies] = lambda: NO_COPIES


class Pace(NamedTuple):
    """How much a batch takes, and how long a table waits after a failure."""

    batch_rows: int = BATCH_ROWS
    batch_bytes: int = BATCH_BYTES
    # A passing failure's first pause (doubling to RETRY_MAX_SECONDS).
    retry_seconds: float = RETRY_SECONDS
    # Between tries of a blocked table.
    blocked_retry_seconds: float = BLOCKED_RETRY_SECONDS


class _Unreadable(NamedTuple):
    """A row of a batch that could not be read: its key, if known, and why."""

    key: Key | None
    error: Exception


class _Stop(Exception):
    """This table's round ends here: the table was blocked (or will wait) with a
    reason, already said."""


class Exporter:
    """Feeds BigQuery from Spanner: see the module notes."""

    def __init__(
        self,
        source: ExportSource,
        bigquery: Destination,
        *,
        lease: Lease | None = None,
        pace: Pace | None = None,
        observer: ExportObserver | None = None,
        clock: Callable[[], int] = time.time_ns,
        share: Share | None = None,
        throttle: ExportThrottle | None = None,
    ) -> None:
        pace = pace or Pace()
        # This system's place in an exporter pool's balance, if it is one's.
        self._share = share
        # On-call's pace for this system's export, if it set one.
        self._throttle = throttle
        self._source = source
        self._streams = streams = bigquery.streams
        self._encoders: dict[RowType, RowEncoder] = {kind: RowEncoder(kind) for kind in streams}
        self._copies = bigquery.copies
        self._encoded_copies: Copies | None = None
        self.typed = bigquery.typed
        self._held = bigquery.held
        lease = lease or exporter_lease()
        self.ledger = source.export_ledger(lease)
        self._lease_seconds = lease.seconds
        self._renew_seconds = lease.seconds / 3
        self._observer = observer
        self._clock = clock
        self._batch_rows = pace.batch_rows
        self._batch_bytes = pace.batch_bytes
        # Whether this exporter held the lease at its last claim, and when it claims
        # next (monotonic).
        self.leading = False
        self._next_claim = -float("inf")
        # Until when this exporter claims no lease (monotonic), having stepped down.
        self._stepped_down_until = -float("inf")
        # Why each table's export is stopped, while it is.
        self.blocked: dict[str, str] = {}
        # When a blocked table is tried again (monotonic seconds).
        self._retry_at: dict[str, float] = {}
        self._blocked_retry_seconds = pace.blocked_retry_seconds
        # Each table's pause after a passing failure, and until when it waits.
        self._backoff = {
            _TABLES_OF[kind]: Backoff(pace.retry_seconds, RETRY_MAX_SECONDS) for kind in streams
        }
        self._paused_until: dict[str, float] = {}
        self._watermarks = bigquery.watermarks
        # The last watermark told to BigQuery, per table.
        self._published: dict[str, int] = {}

    def paused(self) -> dict[str, float]:
        """Each table paused after a passing failure, and for how long more (seconds)."""
        now = time.monotonic()
        return {t: until - now for t, until in self._paused_until.items() if until > now}

    # -- the loop --------------------------------------------------------------

    async def run(self) -> None:
        """Export for as long as it runs: cancel it to stop (an intent left behind
        is finished by whichever exporter holds the lease next; `stop` hands the
        lease back so that it is taken at once)."""
        backoff = Backoff(RETRY_SECONDS, RETRY_MAX_SECONDS)
        quiet = Backoff(IDLE_SECONDS, IDLE_MAX_SECONDS)
        while True:
            try:
                busy = await self.step()
            except (StoreUnavailable, LeaseLost) as exc:
                # The lease itself: Spanner refused the claim, or another exporter
                # holds it now. Both tables wait.
                pause = backoff.next()
                log.warning("export paused for %.1f s: %s", pause, exc)
                if isinstance(exc, LeaseLost):
                    self._stop_leading()
                await asyncio.sleep(pause)
                continue
            backoff.reset()
            if busy:
                quiet.reset()
            else:
                # Blocked and paused tables wait for their own time (see
                # `_round`); the lease is renewed meanwhile.
                await asyncio.sleep(self._idle(quiet))

    def _idle(self, quiet: Backoff | None = None) -> float:
        """How long a round that exported nothing waits: a holder the next wait of the
        quiet streak it is in (`quiet`; IDLE_SECONDS without one), any other exporter
        until its next claim."""
        if self.leading:
            return IDLE_SECONDS if quiet is None else quiet.next()
        due = self._next_claim - time.monotonic()
        return max(IDLE_SECONDS, min(due, self._renew_seconds))

    async def stop(self) -> None:
        """Hand the lease back, if held, within RELEASE_SECONDS: another instance
        exports at its next claim instead of once the lease expires. Best effort:
        if Spanner does not answer, the lease expires on its own."""
        if not self.leading:
            return
        self._stop_leading()
        try:
            if await self.ledger.release(within=RELEASE_SECONDS):
                log.info("export lease handed back")
        except StoreUnavailable as exc:
            log.warning("export lease not handed back (it expires on its own): %s", exc)

    async def step_down(self) -> None:
        """This exporter's loop has been failing for longer than a lease: hand the
        lease back and claim none for STEP_DOWN_LEASES leases, so that another
        instance takes the export over (the supervisor calls it)."""
        self._stepped_down_until = time.monotonic() + STEP_DOWN_LEASES * self._lease_seconds
        log.error(
            "the exporter keeps failing: the export lease is handed back, and not "
            "claimed again for %.0f s",
            STEP_DOWN_LEASES * self._lease_seconds,
        )
        await self.stop()

    def _stop_leading(self) -> None:
        """This exporter no longer holds the lease (lost, or handed back): what it knew
        of blocked tables is the new holder's to say."""
        was_leading, self.leading = self.leading, False
        for table in list(self.blocked):
            self._unblock(table)
        if was_leading and self._observer is not None:
            self._observer.released()

    async def step(self) -> bool:
        """One batch of each table, if this exporter holds the lease; whether any
        rows were exported (True: there may be more at once)."""
        if not await self._lead():
            return False
        exported = 0
        for kind in self._streams:
            exported += await self._round(kind)
        return exported > 0

    async def _lead(self) -> bool:
        """Whether this exporter holds the lease, claimed (taken or renewed) once per
        renewal, by holders and the others alike; another exporter's live lease is
        claimed again as it expires, if that is sooner: an instance that died is taken
        over within a lease of its last renewal."""
        now = time.monotonic()
        if now < self._stepped_down_until:
            return False
        if now < self._next_claim:
            return self.leading
        share = self._share
        if share is None:
            leading = await self.ledger.claim()
        else:
            asks = share.asks()
            leading = await self.ledger.claim(take_free=asks.take_free, want=asks.want)
            if self.ledger.claimed is not None:
                share.found(self.ledger.claimed)
        claimed = time.monotonic()
        expires_in = self.ledger.expires_in
        wait = self._renew_seconds
        if not leading and expires_in is not None:
            wait = min(wait, expires_in + CLAIM_AFTER_EXPIRY_SECONDS)
        self._next_claim = claimed + wait
        if not leading:
            self._stop_leading()
        self.leading = leading
        if leading and share is not None and share.hands_back():
            # More than this instance's share, and another asked for this one: handed
            # back here, between two batches; the other takes it at its next claim.
            log.info("export lease handed over: this instance holds more than its share")
            await self.stop()
            share.handed_back()
            return False
        return leading

    async def _round(self, kind: RowType) -> int:
        """One batch of one table, its failures its own (see the module notes)."""
        table = _TABLES_OF[kind]
        if time.monotonic() < self._paused_until.get(table, -float("inf")):
            return 0
        # A throttled export waits here, before its batch begins: every transaction and
        # append of the batch before is over, and the next is not begun.
        limit = self._batch_rows
        if self._throttle is not None:
            limit = await self._throttle.batch(limit)
        try:
            exported = await self._export(kind, limit)
        except _Stop:
            return 0
        except ProgressMoved as exc:
            # Another write came first (this exporter's own, committed late): the
            # next round reads the row again.
            log.info("export of %s: %s; read again", table, exc)
            return 0
        except StoreUnavailable as exc:
            pause = self._backoff[table].next()
            self._paused_until[table] = time.monotonic() + pause
            log.warning("export of %s paused for %.1f s: %s", table, pause, exc)
            return 0
        self._backoff[table].reset()
        return exported

    # -- one table ---------------------------------------------------------------

    async def _export(self, kind: RowType, limit: int) -> int:
        """A batch of up to `limit` new rows of `kind` (a pending batch is the one its
        intent names, whatever its size), exported once; how many."""
        table = _TABLES_OF[kind]
        progress = await self.ledger.progress(table)
        if progress.blocked is None and table in self._retry_at:
            # An operator cleared it (`recordline export retry`): tried at once.
            log.warning("export of %s tried again as an operator asked", table)
            self._retry_at.pop(table)
        if time.monotonic() < self._retry_at.get(table, -float("inf")):
            return 0
        if progress.blocked is not None:
            self.blocked[table] = progress.blocked
        if progress.pending is not None:
            # A batch that may have been appended: the very same rows, at the very
            # same offset, so it is stored once or refused as already there.
            pending = progress.pending
            rows = await self._pending_rows(kind, progress, pending)
            encoding = await self._encoding(kind, progress, rows)
            if encoding is None:
                return 0  # the batch waits in Spanner (see `typed.py`)
            cut, batch = await self._cut(progress, encoding, rows, whole=True)
            return await self._append(kind, progress, pending, cut, batch, repeat=True)
        if progress.stream is None:
            stream = await self._create(kind, progress)
            progress = msgspec.structs.replace(progress, stream=stream, next_offset=0)
            progress = await self.ledger.record(progress)
            log.info("exporting %s to %s", table, stream)
        until = self._clock() // 1000 - SETTLED_MICROS
        found = await self._read(
            kind,
            progress,
            (progress.done_time, progress.done_message_id),
            until,
            limit,
            seen=progress.updated or 0,
        )
        encoding = await self._encoding(kind, progress, found) if found else None
        if encoding is None:
            if found:
                return 0  # the batch waits in Spanner (see `typed.py`)
            if until - progress.watermark >= WATERMARK_STEP_MICROS:
                await self.ledger.record(msgspec.structs.replace(progress, watermark=until + 1))
                await self._publish(table, until + 1)
            return 0
        rows, batch = await self._cut(progress, encoding, found, whole=False)
        last = rows[-1]
        full = len(found) == limit or len(rows) < len(found)
        # Rows committed with the last one's timestamp may remain when the batch
        # is full: the watermark stops short of them.
        watermark = last.ingest_time if full else until + 1
        pending = Intent(
            time=last.ingest_time,
            message_id=last.message_id,
            rows=len(rows),
            watermark=max(watermark, progress.watermark),
        )
        intent = await self.ledger.record(msgspec.structs.replace(progress, pending=pending))
        return await self._append(kind, intent, pending, rows, batch, repeat=False, replace=True)

    async def _create(self, kind: RowType, progress: Progress) -> str:
        """A new stream of the table; the table blocked if BigQuery will make none."""
        try:
            return await self._streams[kind].create()
        except StreamBroken as exc:
            await self._block(progress, f"BigQuery makes no stream of the table: {exc}")
            raise _Stop from exc

    async def _read(
        self,
        kind: RowType,
        progress: Progress,
        after: Key,
        until: int,
        limit: int,
        *,
        seen: int,
        whole: bool = False,
    ) -> Batch:
        """Up to `limit` rows after `after`, read as `rows_after` does. Should a row
        not read (any exception but Spanner unavailable), the rows before it are
        the batch, and with none before it (or with `whole`: a batch that must be
        read as it was) the table is blocked naming it."""
        source = self._source
        try:
            found: Batch = list(await source.rows_after(kind, after, until, limit, seen=seen))
            return found
        except StoreUnavailable:
            raise
        except Exception as exc:  # a row that cannot be read: which one?
            unreadable = await self._unreadable(kind, after, until, limit, seen, exc)
        readable, (key, error) = unreadable
        if readable and not whole:
            return readable
        table = _TABLES_OF[kind]
        where = (
            f"message {key[1]} of {table} cannot be exported (read): "
            if key is not None
            else f"the rows of {table} after message {after[1] or '(the first)'} cannot be read: "
        )
        await self._block(progress, where + _said(error))
        raise _Stop

    async def _unreadable(
        self, kind: RowType, after: Key, until: int, limit: int, seen: int, error: Exception
    ) -> tuple[Batch, _Unreadable]:
        """The longest start of the read that reads (a read of `n` rows fails exactly
        when a row that cannot be read is among the first `n`), and the row after it."""
        good, bad = 0, limit
        while bad - good > 1:
            middle = (good + bad) // 2
            try:
                await self._source.rows_after(kind, after, until, middle, seen=seen)
            except StoreUnavailable:
                raise
            except Exception as exc:
                bad, error = middle, exc
            else:
                good = middle
        readable: Batch = (
            list(await self._source.rows_after(kind, after, until, good, seen=seen)) if good else []
        )
        start = (readable[-1].ingest_time, readable[-1].message_id) if readable else after
        keys = await self._source.keys_after(kind, start, until, 1, seen=seen)
        return readable, _Unreadable(keys[0] if keys else None, error)

    async def _encoding(self, kind: RowType, progress: Progress, rows: Batch) -> Encoding | None:
        """How `rows` are appended: with records' typed columns where the table has
        them; None while they wait in Spanner for BigQuery to take new ones."""
        if kind is Record and self.typed is not None:
            try:
                return await self.typed.encoding([r for r in rows if isinstance(r, Record)])
            except StoreUnavailable:
                raise
            except Exception as exc:
                first, last = rows[0].message_id, rows[-1].message_id
                await self._block(
                    progress,
                    f"the batch of records from message {first} to message {last} cannot be "
                    f"encoded: {_said(exc)}",
                )
                raise _Stop from exc
        if kind is Record:
            copies = self._copies()
            if copies is not self._encoded_copies:
                self._encoders[Record] = RowEncoder(Record, derived=copies)
                self._encoded_copies = copies
        encoder = self._encoders[kind]
        return encoder.descriptor, encoder.encode

    async def _cut(
        self, progress: Progress, encoding: Encoding, rows: Batch, *, whole: bool
    ) -> tuple[Batch, Encoded]:
        """The longest start of `rows` within a batch's bytes (one row at least), and
        its writer schema and bytes. A row that cannot be encoded ends the start
        before it; with none before it (or with `whole`: a batch that must be sent
        as it was), the table is blocked naming it."""
        descriptor, encode = encoding
        encoded: list[bytes] = []
        size = 0
        for index, row in enumerate(rows):
            try:
                encoded.append(encode(row))
            except Exception as exc:
                if index and not whole:
                    return rows[:index], (descriptor, encoded)
                table = progress.table_name
                await self._block(
                    progress,
                    f"message {row.message_id} of {table} cannot be exported (encoded): "
                    f"{_said(exc)}",
                )
                raise _Stop from exc
            size += len(encoded[-1]) + 6  # framing: a tag and a length varint
            if size > self._batch_bytes and index and not whole:
                return rows[:index], (descriptor, encoded[:index])
        return rows, (descriptor, encoded)

    async def _pending_rows(self, kind: RowType, progress: Progress, pending: Intent) -> Batch:
        # Read as Spanner is now, not as it was at the batch's last row: the batch
        # may be hours old (BigQuery down meanwhile), past the versions Spanner
        # keeps (an hour), and a row deleted since must be seen as gone.
        found = await self._read(
            kind,
            progress,
            (progress.done_time, progress.done_message_id),
            pending.time,
            pending.rows + 1,
            seen=self._clock() // 1000 - SETTLED_MICROS,
            whole=True,
        )
        last = (pending.time, pending.message_id)
        rows = [r for r in found if (r.ingest_time, r.message_id) <= last]
        if len(rows) != pending.rows:
            await self._block(
                progress,
                f"the batch of {pending.rows} rows ending at message {pending.message_id} "
                f"is {len(rows)} rows in Spanner now: rows were deleted before they were "
                "exported",
            )
            raise _Stop
        return rows

    async def _append(
        self,
        kind: RowType,
        intent: Progress,
        pending: Intent,
        rows: Batch,
        batch: Encoded,
        *,
        repeat: bool,
        replace: bool = False,
    ) -> int:
        """Append the batch `intent` names (`pending`): `rows`, as `batch` encodes them
        (writer schema, bytes). `repeat`: an attempt at it may have come before (so
        ALREADY_EXISTS means stored); `replace`: none did, and a stream gone may
        be replaced by a new one."""
        table = _TABLES_OF[kind]
        stream = intent.stream
        if stream is None:  # every intent is recorded with its stream
            raise StoreUnavailable(f"{table}: a pending batch without a stream")
        offset_stream = self._streams[kind]
        resends = offset_stream.resends
        try:
            appended = await offset_stream.append(stream, intent.next_offset, batch[1], batch[0])
        except StreamBroken as exc:
            # Sent again on a new connection meanwhile: the first send may have landed.
            sent_before = repeat or offset_stream.resends != resends
            if exc.gone and sent_before:
                return await self._settle(kind, intent, pending, rows, batch, exc)
            if not (replace and exc.gone):
                await self._block(intent, f"the stream cannot take the batch: {exc}")
                return 0
            # The stream is gone or finalized (idle for long, say) and no attempt at
            # this batch came before: none of its rows are in BigQuery, so a new
            # stream takes it from offset 0.
            log.info("%s: %s; exporting to a new stream from now on", table, exc)
            return await self._on_new_stream(kind, intent, pending, rows, batch)
        except RowsRefused as exc:
            index = min(exc.reasons)
            await self._block(
                intent,
                f"BigQuery refused message {rows[index].message_id} of {table}: "
                f"{exc.reasons[index]}",
            )
            return 0
        except StoreUnavailable:
            raise
        except Exception as exc:  # anything else: this table's, named
            await self._block(
                intent,
                f"the batch of {len(rows)} rows of {table} ending at message "
                f"{rows[-1].message_id} could not be appended: {_said(exc)}",
            )
            return 0
        if appended is Appended.ALREADY and not repeat and offset_stream.resends == resends:
            # Sent once, and refused as there: the stream holds rows at this offset
            # that no intent of this progress put there. Marking the batch done
            # would skip rows; appending elsewhere could double them.
            await self._block(
                intent,
                f"the stream already holds rows at offset {intent.next_offset}, where a "
                f"batch of {table} was sent for the first time: the progress is behind "
                "the stream",
            )
            return 0
        if appended is Appended.ALREADY:
            log.info(
                "%s: %d rows at offset %d were appended before; not again",
                table,
                len(rows),
                intent.next_offset,
            )
        return await self._done(
            kind,
            msgspec.structs.replace(
                intent, next_offset=intent.next_offset + len(rows), watermark=pending.watermark
            ),
            rows,
        )

    async def _on_new_stream(
        self, kind: RowType, intent: Progress, pending: Intent, rows: Batch, batch: Encoded
    ) -> int:
        """The batch, none of which is in BigQuery, appended to a new stream at 0."""
        stream = await self._create(kind, intent)
        moved = await self.ledger.record(
            msgspec.structs.replace(intent, stream=stream, next_offset=0)
        )
        return await self._append(kind, moved, pending, rows, batch, repeat=False)

    async def _settle(
        self,
        kind: RowType,
        intent: Progress,
        pending: Intent,
        rows: Batch,
        batch: Encoded,
        cause: StreamBroken,
    ) -> int:
        """The stream is gone under a batch that may be in it: whether it is, from the
        stream's row count once finalized, or from what BigQuery holds past the
        progress if the stream is no more; the export goes on past the batch or
        with it, or the table is blocked saying why neither is sure."""
        table = _TABLES_OF[kind]
        stream = intent.stream
        assert stream is not None
        before, after = intent.next_offset, intent.next_offset + len(rows)
        count = await self._finalize(kind, intent, stream)
        if count is not None:
            if count not in (before, after):
                await self._block(
                    intent,
                    f"the stream cannot take the batch ({cause}), and holds {count} rows "
                    f"where the progress says {before}, or {after} with the batch: the "
                    "progress and the stream disagree",
                )
                return 0
            stored = count == after
            how = f"the stream held {count} rows when finalized"
        else:
            found = await self._held_in(intent, rows, cause)
            if found is None:
                return 0
            stored = found
            how = "BigQuery's query of the rows past the progress"
        if not stored:
            log.warning(
                "%s: %s; the batch of %d rows ending at message %s is not in it (%s): "
                "appended to a new stream",
                table,
                cause,
                len(rows),
                rows[-1].message_id,
                how,
            )
            return await self._on_new_stream(kind, intent, pending, rows, batch)
        log.warning(
            "%s: %s; the batch of %d rows ending at message %s is in BigQuery (%s): "
            "the export goes on after it, on a new stream",
            table,
            cause,
            len(rows),
            rows[-1].message_id,
            how,
        )
        moved = msgspec.structs.replace(
            intent, stream=None, next_offset=0, watermark=pending.watermark
        )
        return await self._done(kind, moved, rows)

    async def _finalize(self, kind: RowType, intent: Progress, stream: str) -> int | None:
        try:
            return await self._streams[kind].finalize(stream)
        except StreamBroken as exc:
            await self._block(intent, f"the stream cannot be finalized to settle a batch: {exc}")
            raise _Stop from exc

    async def _held_in(self, intent: Progress, rows: Batch, cause: StreamBroken) -> bool | None:
        """Whether BigQuery holds the whole batch (True) or none of it (False); None
        once the table is blocked for anything else."""
        table = intent.table_name
        if self._held is None:
            await self._block(intent, f"the stream cannot take the batch: {cause}")
            return None
        done = (intent.done_time, intent.done_message_id)
        batch = [(r.ingest_time, r.message_id) for r in rows]
        # From the batch's first row: what BigQuery holds from before it (rows of a time
        # before the serving tier, say) says nothing of the batch, and is not billed.
        held = {key for key in await self._held.held(table, batch[0][0]) if key > done}
        past = sorted(key for key in held if key > batch[-1])
        among = [key for key in batch if key in held]
        if not past and len(among) in (0, len(batch)):
            return bool(among)
        await self._block(
            intent,
            f"the stream cannot take the batch ({cause}), and BigQuery holds {len(among)} "
            f"of its {len(batch)} rows and {len(past)} rows after it: the progress and "
            "BigQuery disagree",
        )
        return None

    async def _done(self, kind: RowType, done: Progress, rows: Batch) -> int:
        """The batch is in BigQuery: the progress past it (`done` says where the next
        goes), BigQuery told the watermark, the table no longer blocked."""
        table = _TABLES_OF[kind]
        if self._throttle is not None:
            self._throttle.exported(len(rows))
        done = msgspec.structs.replace(
            done,
            done_time=rows[-1].ingest_time,
            done_message_id=rows[-1].message_id,
            pending=None,
            blocked=None,
        )
        done = await self.ledger.record(done)
        await self._publish(table, done.watermark)
        if table in self.blocked:
            log.info("export of %s goes on", table)
            self._unblock(table)
        if self._observer is not None:
            self._observer.exported(table, rows)
        return len(rows)

    async def _publish(self, table: str, watermark: int) -> None:
        """Tell BigQuery the watermark, at most every PUBLISH_MICROS of it: an analyst
        asks `export_watermarks` up to when a table is complete. Best effort: the
        next one says the same and more."""
        if self._watermarks is None or watermark - self._published.get(table, 0) < PUBLISH_MICROS:
            return
        row = ExportWatermark(
            table_name=table, watermark=watermark, exported_at=self._clock() // 1000
        )
        try:
            await self._watermarks.publish(row, within=PUBLISH_SECONDS)
        except RetryLater as exc:  # not taken, or not within its deadline (WriteTimeout)
            log.warning("the export watermark of %s not told to BigQuery: %s", table, exc)
            return
        self._published[table] = watermark

    async def _block(self, progress: Progress, reason: str) -> None:
        """Stop `table` at this batch: written first, so that only the lease holder,
        writing from the progress it read, says a table is blocked (one that lost
        the lease meanwhile, or read an older row, is refused and says nothing)."""
        table = progress.table_name
        if progress.blocked != reason:
            await self.ledger.record(msgspec.structs.replace(progress, blocked=reason))
        if self.blocked.get(table) != reason:
            log.error("export of %s stopped: %s", table, reason)
        self.blocked[table] = reason
        self._retry_at[table] = time.monotonic() + self._blocked_retry_seconds
        if self._observer is not None:
            self._observer.blocked(table, reason)

    def _unblock(self, table: str) -> None:
        self.blocked.pop(table, None)
        self._retry_at.pop(table, None)
        if self._observer is not None:
            self._observer.unblocked(table)


def _said(exc: BaseException) -> str:
    """An exception in one line: its type and what it says."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

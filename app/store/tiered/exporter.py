"""The exporter: Spanner's rows into BigQuery, each exactly once, by one instance at a time.

With a serving tier, Spanner is the system of record: a push is acknowledged
once its group commit is durable there, and BigQuery is fed from Spanner by
this exporter, never from the push path.

Closed windows. Every row's `ingest_time` is its commit timestamp, and a read
at an exact timestamp `T` sees every commit at or before `T` (a commit still
in flight gets a later timestamp, or the read waits for it). So the rows with
`ingest_time <= T`, read at `T`, are final: no row can appear among them
later. The exporter reads such windows, `SETTLED_MICROS` behind now so that
the read never waits, in `(ingest_time, message_id)` order after the last row
it exported.

Exactly once. Each table is appended to one application-created COMMITTED
Storage Write stream at offsets (`OffsetStream`): an append at an offset
already written to is refused as `ALREADY_EXISTS`. Before appending a batch
the exporter writes to Spanner which rows it is (the key of its last row and
their count: an intent) and at which offset; after BigQuery acknowledged it
(or refused it as already there), it writes the batch done. An exporter that
restarts, or another that takes over, finds the intent and appends exactly
those rows at exactly that offset again: stored once, or refused as there.
Progress is kept per table in `export_progress`.

Progress never goes back. Every progress write is a compare-and-set on the
row its writer read, in the same transaction as the lease check
(`app.store.spanner.ledger.record`): a transaction that Spanner aborted and
the client library ran again after its caller stopped waiting, or whose
commit lands late, finds a newer row and writes nothing (`ProgressMoved`);
the exporter then reads the row again. And `ALREADY_EXISTS` counts as
"stored" only for a batch that may have been appended before (an intent read
back from Spanner, or one the stream itself sent again): for a batch sent for
the first time it means the stream holds rows the progress does not know of,
and the table is blocked with that reason, nothing marked done.

One at a time. The exporter runs in every instance and works only while it
holds the lease in `export_lease` (`LEASE_SECONDS`, renewed three times
as often); one whose instance died is taken over once its lease
expires.

One code version. The lease names its holder's standing
(`app.store.spanner.ledger.Standing`): whether its instance serves traffic,
its row schema, its revision (`code_version`). An exporter whose instance
serves traffic and stands higher takes a live lease over at its next claim:
after a deploy, the new revision holds the export within one renewal, and
an older one never takes it back. An instance serves traffic while it has
acknowledged a push through its service's own URL within ten minutes
(`app.ingest.traffic`; a push to a tag URL, the deploy's smoke test, does not
count): pushes reach only revisions with a share of the traffic, so a
candidate deployed `--no-traffic` never claims the lease, and a holder that
traffic left is taken over by one that has it. A holder with no pushes
lately keeps renewing (a quiet system's watermark moves on), but one with
none never takes a lease that is free.

Every progress write checks the lease in the same transaction, so an
exporter that lost it (paused, partitioned) cannot move progress; and since its
appends repeat an intent the new holder repeats too, neither can double a row.

Never a row skipped. A row BigQuery refuses stops the export of its table at
that row: the exporter names the message and the reason (`blocked`), logs
it, and tries that table again every `BLOCKED_RETRY_SECONDS` while the other
goes on; the lag alert fires while it waits. So does a batch whose rows are no
longer in Spanner (deleted by the row deletion policy before they were
exported), or a stream that no longer holds what the progress says it does.
A stream BigQuery no longer has, or has finalized, is replaced by a new one
when the batch is new (none of its rows can be in the old stream); a batch
that may have been appended before stays blocked, since only the old stream
knew whether it was.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from typing import Final, Protocol

import msgspec
from google.protobuf import descriptor_pb2

from app.errors import StoreUnavailable
from app.records import TABLES, ExportWatermark, Record, Rejection
from app.store.backoff import Backoff
from app.store.bigquery.proto import RowEncoder
from app.store.bigquery.stream import Appended, OffsetStream, RowsRefused, StreamBroken
from app.store.spanner.ledger import (
    Intent,
    LeaseLost,
    Progress,
    ProgressMoved,
    Standing,
    lease_holder,
)
from app.store.spanner.schema import MIGRATIONS
from app.store.spanner.serving import SpannerServing
from app.store.tiered.typed import Encoding, TypedExport

log = logging.getLogger(__name__)

# The lease's only row: one exporter per serving database (per system).
LEASE_NAME: Final = "bigquery"
# An exporter whose instance died is taken over this long after its last
# renewal at most; the holder renews three times per lease. One that stops
# hands it back (`Exporter.stop`), and the next claim takes it at once.
LEASE_SECONDS: Final = 15.0
# Batch committed at least this long ago are exported: a read at a timestamp
# that old is served at once (a read at "now" may wait out Spanner's clock
# uncertainty). The exporter's lag is at least this.
SETTLED_MICROS: Final = 1_000_000
# A batch: one Spanner read, one append. 1,000 rows of ~1 KB append in one
# request well within AppendRows' 10 MB; a payload of several MB is cut by size.
BATCH_ROWS: Final = 1000
BATCH_BYTES: Final = 8 * 1024 * 1024
# Between rounds that found nothing to export.
IDLE_SECONDS: Final = 0.5
# An idle exporter moves the watermark on in steps this large: one progress
# write per table every few seconds, not one per round.
WATERMARK_STEP_MICROS: Final = 5_000_000
# BigQuery is told the watermark (`export_watermarks`) as it moves on by this much.
PUBLISH_MICROS: Final = 60_000_000
# After an error (BigQuery or Spanner unavailable), before trying again: from
# 1 s, doubling per failure to at most 30 s, jittered (`app.store.backoff`). A
# Spanner that refuses connections is asked about twice a minute per instance.
RETRY_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 30.0
# How long a watermark row may take to reach BigQuery (it is best effort).
PUBLISH_SECONDS: Final = 10.0
BLOCKED_RETRY_SECONDS: Final = 60.0
# How long a stopping exporter tries to hand its lease back.
RELEASE_SECONDS: Final = 1.0

# Cloud Run's revision names: the service's, its generation, a random suffix.
_GENERATION: Final = re.compile(r"-(\d+)-[a-z0-9]+$")
_TABLES_OF: Final = {row_type: table for table, row_type in TABLES.items()}
# The rows of either table, and either table's row type.
Batch = list[Record | Rejection]
RowType = type[Record] | type[Rejection]
# A batch as it is appended: its writer schema and its rows' bytes.
Encoded = tuple[descriptor_pb2.DescriptorProto, list[bytes]]


class ExportObserver(Protocol):
    """Told what the exporter does; telemetry implements it (metrics)."""

    def exported(self, table: str, rows: int) -> None: ...

    def blocked(self, table: str, reason: str) -> None: ...

    def unblocked(self, table: str) -> None:
        """The export of `table` goes on, or this instance no longer exports it."""
        ...

    def watermark(self, table: str, micros: int) -> None:
        """Every row of `table` before `micros` is in BigQuery (each instance reads it)."""
        ...


class Ledger:
    """The exporter's state in Spanner: its lease, and each table's progress."""

    def __init__(
        self,
        serving: SpannerServing,
        holder: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        standing: Callable[[], Standing] | None = None,
    ) -> None:
        self._serving = serving
        self.holder = holder
        self._lease_seconds = lease_seconds
        self._standing = standing or (lambda: Standing(True, *code_version()))

    def _holder(self) -> str:
        return lease_holder(self._standing(), self.holder)

    async def claim(self) -> bool:
        """Take or renew the lease; whether this exporter holds it now."""
        return await self._serving.claim_lease(LEASE_NAME, self._holder(), self._lease_seconds)

    async def release(self, *, within: float = RELEASE_SECONDS) -> bool:
        """Hand the lease back if this exporter holds it; whether it did."""
        return await self._serving.release_lease(LEASE_NAME, self._holder(), within=within)

    async def progress(self, table: str) -> Progress:
        """The table's progress now (a strong read); a new one if it has none."""
        return await self._serving.progress(table)

    async def watermarks(self) -> dict[str, int]:
        """Each table's watermark (0 before its first export), in one read."""
        return await self._serving.watermarks()

    async def record(self, progress: Progress) -> Progress:
        """Write `progress`, if this exporter still holds the lease (else LeaseLost)
        and the row is still the one it was made from (else ProgressMoved); the
        progress as written, what the next write is made from."""
        return await self._serving.record_progress(LEASE_NAME, self._holder(), progress)


def code_version() -> tuple[int, int]:
    """This code's place in the order of versions: its row schema (how many
    migrations it knows were released) and its Cloud Run revision's generation
    (`K_REVISION` is `SERVICE-GENERATION-SUFFIX`, the generation counting the
    service's revisions; 0 outside Cloud Run or for a revision named by hand)."""
    found = _GENERATION.search(os.environ.get("K_REVISION", ""))
    return len(MIGRATIONS), int(found.group(1)) if found else 0


def holder_name() -> str:
    """This exporter's name in the lease: where it runs, and a nonce for this process."""
    revision = os.environ.get("K_REVISION", "")
    return f"{socket.gethostname()}/{revision}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class WatermarkSink(Protocol):
    """Where the exporter tells BigQuery its watermarks (`export_watermarks`)."""

    async def publish(self, row: ExportWatermark, *, within: float) -> None: ...


class Exporter:
    """Feeds BigQuery from Spanner: see the module notes."""

    def __init__(
        self,
        serving: SpannerServing,
        streams: dict[RowType, OffsetStream],
        *,
        watermarks: WatermarkSink | None = None,
        holder: str | None = None,
        observer: ExportObserver | None = None,
        clock: Callable[[], int] = time.time_ns,
        batch_rows: int = BATCH_ROWS,
        batch_bytes: int = BATCH_BYTES,
        lease_seconds: float = LEASE_SECONDS,
        blocked_retry_seconds: float = BLOCKED_RETRY_SECONDS,
        version: tuple[int, int] | None = None,
        serving_traffic: Callable[[], bool] | None = None,
        typed: TypedExport | None = None,
    ) -> None:
        self._serving = serving
        self._streams = streams
        self._encoders = {kind: RowEncoder(kind) for kind in streams}
        # Records' typed columns (`typed.py`), where the table has them.
        self.typed = typed
        # Whether this instance serves traffic (by default, it does): one that
        # does not never takes the lease, free or not; it only renews one it
        # holds (see `step`).
        self._serving_traffic = serving_traffic or (lambda: True)
        schema, revision = version or code_version()
        self.ledger = Ledger(
            serving,
            holder or holder_name(),
            lease_seconds=lease_seconds,
            standing=lambda: Standing(self._serving_traffic(), schema, revision),
        )
        self._renew_seconds = lease_seconds / 3
        self._observer = observer
        self._clock = clock
        self._batch_rows = batch_rows
        self._batch_bytes = batch_bytes
        # Whether this exporter held the lease at its last claim.
        self.leading = False
        self._claimed_at = -float("inf")
        # Why each table's export is stopped, while it is.
        self.blocked: dict[str, str] = {}
        # When a blocked table is tried again (monotonic seconds), and how long after.
        self._retry_at: dict[str, float] = {}
        self._blocked_retry_seconds = blocked_retry_seconds
        self._watermarks = watermarks
        # The last watermark told to BigQuery, per table.
        self._published: dict[str, int] = {}

    # -- the loop --------------------------------------------------------------

    async def run(self) -> None:
        """Export for as long as it runs: cancel it to stop (an intent left behind
        is finished by whichever exporter holds the lease next; `stop` hands the
        lease back so that it is taken at once)."""
        backoff = Backoff(RETRY_SECONDS, RETRY_MAX_SECONDS)
        while True:
            try:
                busy = await self.step()
            except (StoreUnavailable, LeaseLost, ProgressMoved) as exc:
                pause = backoff.next()
                log.warning("export paused for %.1f s: %s", pause, exc)
                if isinstance(exc, LeaseLost):
                    self._follow()
                await asyncio.sleep(pause)
                continue
            backoff.reset()
            if not busy:
                # Blocked tables wait for their own retry (see _export); the
                # lease is renewed meanwhile.
                await asyncio.sleep(IDLE_SECONDS)

    async def stop(self) -> None:
        """Hand the lease back, if held, within RELEASE_SECONDS: another instance
        exports at its next round instead of once the lease expires. Best effort:
        if Spanner does not answer, the lease expires on its own."""
        if not self.leading:
            return
        self.leading = False
        try:
            if await self.ledger.release(within=RELEASE_SECONDS):
                log.info("export lease handed back")
        except StoreUnavailable as exc:
            log.warning("export lease not handed back (it expires on its own): %s", exc)

    def _follow(self) -> None:
        """This exporter no longer holds the lease: what it knew of blocked tables is
        the new holder's to say."""
        self.leading = False
        for table in list(self.blocked):
            self._unblock(table)

    async def step(self) -> bool:
        """One batch of each table, if this exporter holds the lease; whether any
        rows were exported (True: there may be more at once)."""
        if not self.leading and not self._serving_traffic():
            # An instance that serves no traffic (a revision deployed without,
            # or one traffic has left) never takes the export: only renews it.
            return False
        if time.monotonic() - self._claimed_at >= self._renew_seconds or not self.leading:
            leading = await self.ledger.claim()
            self._claimed_at = time.monotonic()
            if not leading:
                self._follow()
            self.leading = leading
        if not self.leading:
            return False
        exported = 0
        for kind in self._streams:
            exported += await self._export(kind)
        return exported > 0

    # -- one table ---------------------------------------------------------------

    async def _export(self, kind: RowType) -> int:
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
            rows = await self._pending_rows(kind, progress, progress.pending)
            if rows is None:
                return 0
            encoding = await self._encoding(kind, rows)
            if encoding is None:
                return 0  # the batch waits in Spanner (see `typed.py`)
            batch = (encoding[0], [encoding[1](r) for r in rows])
            return await self._append(kind, progress, progress.pending, rows, batch, repeat=True)
        if progress.stream is None:
            stream = await self._streams[kind].create()
            progress = msgspec.structs.replace(progress, stream=stream, next_offset=0)
            progress = await self.ledger.record(progress)
            log.info("exporting %s to %s", table, stream)
        until = self._clock() // 1000 - SETTLED_MICROS
        found = await self._serving.rows_after(
            kind,
            (progress.done_time, progress.done_message_id),
            until,
            self._batch_rows,
            seen=progress.updated or 0,
        )
        encoding = await self._encoding(kind, found) if found else None
        if encoding is None:
            if found:
                return 0  # the batch waits in Spanner (see `typed.py`)
            if until - progress.watermark >= WATERMARK_STEP_MICROS:
                await self.ledger.record(msgspec.structs.replace(progress, watermark=until + 1))
                await self._publish(table, until + 1)
            return 0
        rows, batch = self._cut(encoding, found)
        last = rows[-1]
        full = len(found) == self._batch_rows or len(rows) < len(found)
        # Batch committed with the last one's timestamp may remain when the batch
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

    async def _encoding(self, kind: RowType, rows: Batch) -> Encoding | None:
        """How `rows` are appended: with records' typed columns where the table has
        them; None while they wait in Spanner for BigQuery to take new ones."""
        if kind is Record and self.typed is not None:
            return await self.typed.encoding([r for r in rows if isinstance(r, Record)])
        encoder = self._encoders[kind]
        return encoder.descriptor, encoder.encode

    def _cut(self, encoding: Encoding, rows: Batch) -> tuple[Batch, Encoded]:
        """The longest start of `rows` within a batch's bytes (one row at least), and
        its writer schema and bytes."""
        descriptor, encode = encoding
        encoded: list[bytes] = []
        size = 0
        for index, row in enumerate(rows):
            encoded.append(encode(row))
            size += len(encoded[-1]) + 6  # framing: a tag and a length varint
            if size > self._batch_bytes and index:
                return rows[:index], (descriptor, encoded[:index])
        return rows, (descriptor, encoded)

    async def _pending_rows(
        self, kind: RowType, progress: Progress, pending: Intent
    ) -> Batch | None:
        # Read as Spanner is now, not as it was at the batch's last row: the batch
        # may be hours old (BigQuery down meanwhile), past the versions Spanner
        # keeps (an hour), and a row deleted since must be seen as gone.
        rows = await self._serving.rows_after(
            kind,
            (progress.done_time, progress.done_message_id),
            pending.time,
            pending.rows + 1,
            seen=self._clock() // 1000 - SETTLED_MICROS,
        )
        last = (pending.time, pending.message_id)
        rows = [r for r in rows if (r.ingest_time, r.message_id) <= last]
        if len(rows) != pending.rows:
            await self._block(
                progress,
                f"the batch of {pending.rows} rows ending at message {pending.message_id} "
                f"is {len(rows)} rows in Spanner now: rows were deleted before they were "
                "exported",
            )
            return None
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
            if not (replace and exc.gone):
                await self._block(intent, f"the stream cannot take the batch: {exc}")
                return 0
            # The stream is gone or finalized (idle for long, say) and no attempt at
            # this batch came before: none of its rows are in BigQuery, so a new
            # stream takes it from offset 0.
            stream = await self._streams[kind].create()
            log.info("%s: %s; exporting to %s from now on", table, exc, stream)
            intent = msgspec.structs.replace(intent, stream=stream, next_offset=0)
            intent = await self.ledger.record(intent)
            return await self._append(kind, intent, pending, rows, batch, repeat=False)
        except RowsRefused as exc:
            index = min(exc.reasons)
            await self._block(
                intent,
                f"BigQuery refused message {rows[index].message_id} of {table}: "
                f"{exc.reasons[index]}",
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
        done = msgspec.structs.replace(
            intent,
            next_offset=intent.next_offset + len(rows),
            done_time=rows[-1].ingest_time,
            done_message_id=rows[-1].message_id,
            watermark=pending.watermark,
            pending=None,
            blocked=None,
        )
        done = await self.ledger.record(done)
        await self._publish(table, done.watermark)
        if table in self.blocked:
            log.info("export of %s goes on", table)
            self._unblock(table)
        if appended is Appended.ALREADY:
            log.info(
                "%s: %d rows at offset %d were appended before; not again",
                table,
                len(rows),
                intent.next_offset,
            )
        if self._observer is not None:
            self._observer.exported(table, len(rows))
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
        except StoreUnavailable as exc:
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

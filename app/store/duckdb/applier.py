"""A DuckDB store's write path after the ledger: each append journaled (durable), its
new records shown to followers at once where any wait (early_tail.py), queued in frame
order, moved into DuckDB many at a time through the writer thread; and the reads that
wait for them. The applier alone keeps its queue, what it holds and when it runs.

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from app.errors import StoreUnavailable
from app.records import Record, Rejection
from app.store.backoff import Backoff
from app.store.copies import ConflictObserver
from app.store.duckdb.early_tail import EarlyTail, Read
from app.store.duckdb.frames import Frames
from app.store.duckdb.inserts import Inserted
from app.store.duckdb.journal import Frame
from app.store.duckdb.ledger_writes import LedgerWriter
from app.store.duckdb.producers import Changes, FrameLedger
from app.store.live import Live
from app.store.supervisor import Supervisor
from app.store.tally import Held

log = logging.getLogger(__name__)

# Journaled rows not yet in DuckDB, at most: past it, appends wait for the
# applier, and pushes get 503 by their deadline rather than memory growing.
MAX_UNAPPLIED_ROWS: Final = 100_000
# The applier moves journaled rows into DuckDB at most this often while nobody
# reads them. DuckDB spends ~2.8 ms of CPU per INSERT whatever its size (89 µs a
# row in 32-row batches, 19 µs in 256-row ones), CPU the event loop needs, and
# its writer thread takes the GIL from the loop: at 64 connections, applying
# every 50 ms cost a push ~30 µs of CPU beside the loop's ~150, every 250 ms
# ~12 µs. A read never waits for it: a point read's barrier, or a page or a
# follower waiting for rows the tail was not given when they were journaled,
# asks for an apply now; so does a page read while such a row has waited longer
# than _FRESH_SECONDS, so that a client polling pages finds rows as soon as it
# did when the applier ran every 50 ms.
APPLY_EVERY_SECONDS: Final = 0.25
_FRESH_SECONDS = 0.05
_FRESH_MICROS = int(_FRESH_SECONDS * 1_000_000)
# Rows per INSERT when the applier catches up: larger batches amortise
# DuckDB's fixed cost per statement, and 20k rows (~10 MB) insert in ~80 ms.
_APPLY_MAX_ROWS = 20_000
# A point read waits this long for earlier appends to become readable.
READ_BARRIER_SECONDS: Final = 5.0
# Sleeps between attempts to apply journaled rows: up to 50 ms, doubling to 5 s.
_APPLY_RETRY_SECONDS = (0.05, 5.0)
# The ingest time of an append with no rows (only the ledger's count of duplicates):
# it holds no read back.
_NO_ROWS = 2**62

# What an insert is given: the rows, the messages held under producer sequences, and
# (replaying the journal) the ledger's changes.
Insert = Callable[[Sequence[Record | Rejection], Sequence[Held], Changes | None], Inserted]


class Unapplied:
    """One journaled frame, queued until DuckDB has its rows."""

    __slots__ = ("frame_number", "ledger", "oldest", "rows", "shown", "shown_ids")

    def __init__(
        self,
        frame_number: int,
        rows: Sequence[Record | Rejection],
        ledger: FrameLedger | None = None,
        *,
        shown: Sequence[Record] | None = None,
    ) -> None:
        self.frame_number = frame_number
        self.rows = rows
        # What the append changed of the ledger of producer sequences, if anything.
        self.ledger = ledger
        self.oldest = min([r.ingest_time for r in rows], default=_NO_ROWS)
        # Its new records went to the tail once durable (`append`), before DuckDB has
        # them: they hold the read horizon back no more, and are not added again once
        # applied. Its other records are copies of messages journaled before, which the
        # applier adds with the first copy (not shown: none of this frame's rows are).
        self.shown = shown is not None
        self.shown_ids = frozenset([r.message_id for r in shown or ()])


@dataclass(slots=True, kw_only=True)
class Applier:
    """Journals each append through `frames` and queues it; applies the frames queued
    through `insert` on the writer thread (`write`), every `every` seconds or at once
    when a read waits; then reports their rows readable to `live`, tells `conflicts` of
    differing copies, and has `ledger` write the producers' changes and release the
    journal. With followers, an append's new records are shown once journaled, as
    `read` (DuckDB's) finds which of them DuckDB will keep (`early`)."""

    write: Callable[..., Awaitable[Any]]
    read: Read
    insert: Insert
    frames: Frames
    ledger: LedgerWriter
    live: Live
    clock: Callable[[], int]
    conflicts: ConflictObserver | None
    every: float = APPLY_EVERY_SECONDS
    # Whether the applier runs (`start`, `stop`): a read waits for it only then.
    _running: bool = field(default=False, init=False)
    _unapplied: deque[Unapplied] = field(default_factory=deque, init=False)
    # Frames journaled whose entry is not in `_unapplied` yet (an append that
    # waits for its early read): none from them on is applied before they are,
    # so `applied` never passes a frame not in DuckDB (`_apply_next`).
    _queuing: set[int] = field(default_factory=set, init=False)
    _rows: int = field(default=0, init=False)  # rows journaled and not yet applied
    # The message ids of the records journaled and not yet applied (with how many
    # copies): a record shown to followers before DuckDB has it must be the copy
    # DuckDB will keep, and so not the later copy of one still to be applied.
    _pending: collections.Counter[str] = field(default_factory=collections.Counter, init=False)
    # Appends under way, each until its message ids are pending: an append that
    # starts before then (two are in flight) shows nothing early, as it cannot know them.
    _appending: int = field(default=0, init=False)
    applied: int = field(default=0, init=False)  # appends whose rows are all in DuckDB
    error: str | None = field(default=None, init=False)
    early: EarlyTail = field(init=False)
    _hurry: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _progress: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    # A batch inserted into DuckDB and not yet accounted for (the tail, the
    # journal): what the applier finishes first when it is restarted.
    _half_applied: tuple[list[Unapplied], Inserted] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.early = EarlyTail(self.read, self._pending, self.live, self.clock)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def backlog(self) -> int:
        """Rows journaled and not yet applied."""
        return self._rows

    def journaled(self) -> Iterable[Unapplied]:
        """The frames journaled and not yet applied, in frame order."""
        return self._unapplied

    def start(self, loops: Supervisor) -> None:
        """Apply what is journaled from now on, under `loops`: down once it fails for
        longer than it lets appends wait to be applied."""
        self._running = True
        loops.run("applier", self.forever, interval=self.every)

    async def stop(self, within: float) -> bool:
        """Apply what is journaled, for at most `within` seconds, and stop applying:
        whether every append was applied (the rest stays in the journal)."""
        self._hurry.set()
        try:
            async with asyncio.timeout(within):
                await self.caught_up(self.frames.number)
        except (TimeoutError, StoreUnavailable):
            return False
        finally:
            self._running = False
        return True

    async def journal(
        self, rows: Sequence[Record | Rejection], ledger: FrameLedger | None = None
    ) -> int:
        """Make `rows` and the ledger's changes durable (one journal frame), then queue
        them to be applied; the frame's number, or StoreUnavailable, having kept
        nothing, if the write fails. Waits first while MAX_UNAPPLIED_ROWS are queued."""
        if self._rows >= MAX_UNAPPLIED_ROWS:
            await self.room()
        records = [r for r in rows if type(r) is Record]
        # With followers, the records go to the tail as soon as they are durable
        # (journaled), not once DuckDB has them: which of them DuckDB will keep is
        # asked meanwhile (early_tail.py), unless another append is under way (it
        # could hold a copy of the same message).
        followed = self.live.followed
        early = self.early
        asked = early.ask(records) if records and followed and not self._appending else None
        self._appending += 1
        try:
            try:
                number = await self.frames.write(rows, records, ledger)
            except BaseException:
                if asked is not None:
                    asked.cancel()
                raise
            shown: list[Record] | None = None
            queuing = self._queuing
            queuing.add(number)
            try:
                if asked is not None:
                    shown = await early.answer(asked)
            finally:
                # Journaled: queued whatever happens meanwhile, in frame order (a later
                # append may have been queued while this one waited for its early read).
                queuing.discard(number)
                self._queue(Unapplied(number, rows, ledger, shown=shown), records)
        finally:
            self._appending -= 1
        if shown:
            early.show(shown)
        elif followed:
            self._hurry.set()  # followers see these rows once applied: now, not in 250 ms
        return number

    async def replay(self, frame: Frame) -> None:
        """Insert a frame the journal held at start, with its ledger's changes."""
        # Replayed whether or not it was applied before the stop, so a
        # conflicting copy in it was most likely told already: telling
        # it again would count it at every restart.
        ledger = FrameLedger(
            frame.producers, frame.forgotten, frame.ranges, frame.hours, frame.copies
        )
        await self.write(
            self.insert, [*frame.records, *frame.rejections], frame.copies, ledger.changes()
        )

    async def room(self) -> None:
        """Return once fewer than MAX_UNAPPLIED_ROWS rows wait to be applied."""
        while self._rows >= MAX_UNAPPLIED_ROWS:
            await self._progress.wait()

    def _queue(self, entry: Unapplied, records: list[Record]) -> None:
        """Queue a journaled frame (`records`: its rows that are records), the queue
        kept in frame order."""
        unapplied = self._unapplied
        at = len(unapplied)
        while at and unapplied[at - 1].frame_number > entry.frame_number:
            at -= 1
        unapplied.insert(at, entry)
        self._rows += len(entry.rows)
        self._pending.update([r.message_id for r in records])
        self._wake.set()

    def _appliable(self) -> int:
        """How many queued frames, from the first, may be applied now: those before
        the first frame journaled and not yet queued."""
        if not self._queuing:
            return len(self._unapplied)
        first = min(self._queuing)
        count = 0
        for entry in self._unapplied:
            if entry.frame_number > first:
                break
            count += 1
        return count

    def horizon(self, now: int) -> int:
        """The ingest time of the oldest row neither applied nor in the tail (`now` if
        none): a page reads DuckDB no further."""
        # Not just the first entry: appends may arrive out of stamp order when
        # a caller runs several at once, and any unapplied row holds reads back,
        # but those already in the tail: a read of the tail has them, and every
        # other read first waits for what was journaled to be applied (`applied_now`).
        horizon = min((entry.oldest for entry in self._unapplied if not entry.shown), default=now)
        if now - horizon > _FRESH_MICROS:
            # A reader: what has waited this long is applied now, for its next page.
            self._hurry.set()
        return horizon

    def everything_applied(self) -> bool:
        return not self._unapplied and self.applied == self.frames.number and self.error is None

    async def forever(self) -> None:
        delays = Backoff(*_APPLY_RETRY_SECONDS)
        while True:
            if self._half_applied is None:
                if not self._appliable():
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                done = await self._apply_next()
                if done is None:
                    await asyncio.sleep(delays.next())
                    continue
                delays.reset()
                self._half_applied = done
            # A run the supervisor restarts after a failure past the insert finishes
            # that batch from here: inserted again, its records would be taken for
            # stored copies and never reach the tail.
            batch, inserted = self._half_applied
            self._account(batch, inserted.records)
            self._half_applied = None
            if self.ledger.due():
                with contextlib.suppress(StoreUnavailable):
                    await self.flush_ledger()
            self.ledger.release(self.applied)
            # Last: an observer that fails leaves the batch applied all the same.
            self._report(inserted.conflicts)

    async def _apply_next(self) -> tuple[list[Unapplied], Inserted] | None:
        """Insert the next batch of journaled rows into DuckDB: the batch and what the
        insert did, or None if it failed (the rows stay journaled, to try again)."""
        if self._rows < _APPLY_MAX_ROWS and not self._hurry.is_set():
            # Let appends accumulate: see APPLY_EVERY_SECONDS. A read waiting on
            # its barrier, or an append that followers see only once applied (not
            # shown when journaled), cuts this short.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await self._hurry.wait()
        self._hurry.clear()
        batch: list[Unapplied] = []
        count = 0
        for entry in itertools.islice(self._unapplied, self._appliable()):
            if batch and count + len(entry.rows) > _APPLY_MAX_ROWS:
                break
            batch.append(entry)
            count += len(entry.rows)
        rows = [row for entry in batch for row in entry.rows]
        copies: list[Held] = []
        for entry in batch:
            if entry.ledger is not None:
                copies += entry.ledger.copies
        try:
            inserted: Inserted = await self.write(self.insert, rows, copies, None)
        except Exception as exc:
            # The rows are safe in the journal; keep trying, and say so:
            # readiness is red until they are applied. Anything but a DuckDB
            # error (which `write` turns into StoreUnavailable) is a row
            # validation let through, logged whole.
            self.error = str(exc) or type(exc).__name__
            log.error(
                "applying %d journaled rows failed, retrying: %s",
                len(rows),
                exc,
                exc_info=not isinstance(exc, StoreUnavailable),
            )
            return None
        return batch, inserted

    def _account(self, batch: list[Unapplied], records: list[Record]) -> None:
        """Account for a batch now in DuckDB (`records`: the new records it stored):
        nothing is changed if the tail's clock fails, and nothing else can."""
        now = self.clock() // 1000
        # Records shown when they were journaled are in the tail already: the
        # copies DuckDB kept of a shown frame's new records are exactly those
        # (`EarlyTail.new_records`). Not its other records: a copy of a message whose
        # first copy was journaled unshown and is applied in this batch too (a push
        # held up, and its redelivery) is in the tail only once added here.
        shown = frozenset().union(*(e.shown_ids for e in batch))
        fresh: list[Record | Rejection] = [r for r in records if r.message_id not in shown]
        self.error = None
        for entry in batch:
            self._unapplied.popleft()
            for row in entry.rows:
                if type(row) is Rejection:
                    fresh.append(row)  # every rejection is read
                elif type(row) is Record:
                    left = self._pending[row.message_id] - 1
                    if left:
                        self._pending[row.message_id] = left
                    else:
                        del self._pending[row.message_id]
            self._rows -= len(entry.rows)
        self.applied = batch[-1].frame_number
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()
        # Readable now: waiting followers read again, new records from the tail. A batch
        # with nothing new (copies, or records shown already) lets reads past its rows.
        self.live.readable(fresh, now=now)
        if not fresh:
            self.live.arrived([row for entry in batch for row in entry.rows])
        for entry in batch:
            self.ledger.owe(entry.frame_number, entry.ledger)

    async def flush_ledger(self) -> None:
        """Write the ledger's changes owed to DuckDB in one transaction; StoreUnavailable,
        owing them still, if it fails (the journal keeps them meanwhile)."""
        await self.ledger.flush(self.applied)
        self.ledger.release(self.applied)

    def _report(self, conflicts: list[tuple[Record | Rejection, Record | Rejection]]) -> None:
        if self.conflicts is not None:
            for kept, later in conflicts:
                self.conflicts(kept, later)

    async def caught_up(self, frame_number: int) -> None:
        """Return once frames up to `frame_number` are applied; StoreUnavailable once
        the applier stops."""
        while self.applied < frame_number:
            progress = self._progress
            if not self._running:
                raise StoreUnavailable("the DuckDB store is not applying writes")
            await progress.wait()

    async def barrier(self) -> None:
        """Return once the rows not shown to the tail when journaled are applied."""
        if self.applied >= self.frames.number:
            return  # as nearly always: nothing to look for
        # Rows shown to the tail once journaled are readable already: a read waits
        # for the others. Each read of DuckDB itself then waits for everything
        # journaled to be applied (`applied_now`).
        await self.applied_through(
            max((e.frame_number for e in self._unapplied if not e.shown), default=0)
        )

    async def applied_now(self) -> None:
        """Return once every append made so far is in DuckDB."""
        number = self.frames.number
        if self.applied < number:
            await self.applied_through(number)

    async def applied_through(self, frame_number: int) -> None:
        if self.applied >= frame_number:
            return
        self._hurry.set()
        try:
            async with asyncio.timeout(READ_BARRIER_SECONDS):
                await self.caught_up(frame_number)
        except TimeoutError:
            raise StoreUnavailable("recent writes are not readable yet") from None

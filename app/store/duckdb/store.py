"""The embedded default store: one DuckDB file (or memory), one process, its parts
composed here. An append is durable once its frame is in the commit journal
(frames.py); the Applier owns the write path from there: it journals each append,
shows followers its new records once journaled (early_tail.py) and moves journaled
rows into DuckDB (inserts.py) on the one writer thread (database.py). Reads
run on reader threads, never past the oldest row not yet applied (reads.py).
Appends with producer sequences are settled first (sequencing.py), then journaled
by the Applier. One process sees every write: message_id is unique on insert.

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from app.errors import StoreUnavailable
from app.records import Record, Rejection
from app.store import CountQuery, MessageState, MessageStatus, Page, PageQuery, R, RowOutcome
from app.store.access import AccessLine, AccessQuery
from app.store.copies import ConflictObserver
from app.store.duckdb import producers as book
from app.store.duckdb.access import DuckDBAccess
from app.store.duckdb.applier import (
    APPLY_EVERY_SECONDS,
    READ_BARRIER_SECONDS,
    Applier,
)
from app.store.duckdb.database import READ_SECONDS, Database
from app.store.duckdb.frames import Frames
from app.store.duckdb.inserts import Inserter
from app.store.duckdb.journal_process import JournalProcess
from app.store.duckdb.ledger_writes import LedgerWriter
from app.store.duckdb.producers import DuckDBLedger
from app.store.duckdb.reads import DuckDBReads
from app.store.duckdb.retention import EXPIRE_EVERY_SECONDS, Retention
from app.store.duckdb.sequencing import Sequencer
from app.store.duckdb.typed import TypedColumns
from app.store.live import Live
from app.store.producers import Completeness, sequence_of
from app.store.supervisor import LoopObserver, Supervisor
from app.store.tail import Tail
from app.typed.revisions import Revisions

log = logging.getLogger(__name__)


class DuckDBStore:
    """A Store on one DuckDB database (`:memory:` for a throwaway one, with no journal)."""

    # The journal writer takes frames one at a time, each synced before it is
    # answered. A second append in flight waits in its pipe, so the writer goes
    # on to it as soon as it answers the first, not once the event loop has read
    # that answer and cut the next batch: on a busy two-core machine that raised
    # pushes a second at 64 connections by 5-10%. Answers come in frame order,
    # so the appends still complete in order.
    max_in_flight = 2
    # Rows keep the time the batcher stamped them with.
    stamps_at_commit = False

    def __init__(
        self,
        path: str,
        *,
        retention_days: int = 0,
        expire_every: float = EXPIRE_EVERY_SECONDS,
        apply_every: float = APPLY_EVERY_SECONDS,
        clock: Callable[[], int] = time.time_ns,
        conflicts: ConflictObserver | None = None,
        revisions: Revisions | None = None,
        loops: LoopObserver | None = None,
        live_producers: int = book.LIVE_PRODUCERS,
        read_seconds: float = READ_SECONDS,
    ) -> None:
        self.path = path
        # Records of a topic schema's revisions get typed columns (typed.py);
        # `revisions` is where the push path tells each revision's fields.
        self._typed = TypedColumns(revisions)
        self._clock = clock
        # The applier and the expirer: restarted if they fail, named by readiness
        # while they stay down, each restart told to `loops`.
        self._loops = Supervisor(observer=loops)
        self._db = Database(path, read_seconds=read_seconds)
        self._journal = None if path == ":memory:" else JournalProcess(Path(f"{path}.journal"))
        self._frames = Frames(self._journal)
        # The newest records, which followers at the tail read with no query:
        # this store sees every write, so the tail is complete up to what is applied.
        self.live = Live(Tail())
        # The completeness ledger (app.store.producers), decided on as appends are
        # journaled (see producers.py); one append at a time decides and journals.
        self._ledger = DuckDBLedger(
            write=self._db.write,
            read=self._db.read,
            connection=self._db.connection,
            settled=self._ledger_settled,
            live=live_producers,
        )
        self.completeness: Completeness | None = self._ledger
        self._retention = Retention(
            retention_days, self._db.write, self._db.connection, self._ledger, clock, expire_every
        )
        self._applier = Applier(
            write=self._db.write,
            read=self._db.read,
            insert=Inserter(self._db.connection, self._typed, clock).insert,
            frames=self._frames,
            ledger=LedgerWriter(self._ledger, self._journal),
            live=self.live,
            clock=clock,
            conflicts=conflicts,
            every=apply_every,
        )
        self._sequencer = Sequencer(
            ledger=self._ledger,
            store=self._applier.journal,
            journaled=self._applier.journaled,
            database=self._db,
            seen=self.seen,
            clock=clock,
        )
        self._access = DuckDBAccess(
            write=self._db.write, read=self._db.read, connection=self._db.connection
        )
        self._reads = DuckDBReads(self._db, self._applier.applied_now, self.live, self._typed)

    @property
    def live_producers(self) -> int:
        """Producers whose ledger entries memory holds."""
        return self._ledger.held

    async def start(self) -> None:
        await self._db.write(self._db.open, self._typed)
        if self._journal is not None:
            frames = await self._journal.open()
            if frames:
                # A store closed cleanly leaves no journal (see close): these
                # frames are a stop that never closed it.
                log.warning(
                    "recovering: the last run stopped without closing the store (killed, or "
                    "the machine went down), so its journal is replayed: %d frames, %d rows it "
                    "acknowledged, each stored once (rows it had applied already are skipped)",
                    len(frames),
                    sum(len(f.records) + len(f.rejections) for f in frames),
                )
                for frame in frames:
                    await self._applier.replay(frame)
            await self._journal.discard_replayed()
        # Producers' entries are read as they publish; the hours' counts now.
        await self._ledger.start()
        await self._reads.warm_tail(self._clock() // 1000)
        await self._loops.start()
        self._applier.start(self._loops)
        retention = self._retention
        # Once now, for a store that was closed longer than the interval; the access
        # record's lines expire whatever the rows' retention.
        await retention.expire()
        self._loops.run("expirer", retention.forever, interval=retention.every)

    async def close(self) -> None:
        applier = self._applier
        if applier.running:
            # Whatever is not applied now stays in the journal for the next start.
            if not await applier.stop(READ_BARRIER_SECONDS):
                if self._journal is not None:
                    log.warning(
                        "closing with %d journaled rows not applied: the next start recovers "
                        "them from the journal",
                        applier.backlog,
                    )
                else:
                    log.error(
                        "closing with %d rows not applied: a memory store keeps no journal, "
                        "so they are lost",
                        applier.backlog,
                    )
            await self._loops.close()
        if self._ledger.owed and self._db.con is not None:
            with contextlib.suppress(StoreUnavailable):  # logged; the journal keeps them
                await applier.flush_ledger()
        con = self._db.close_reads()
        if self._journal is not None:
            await self._journal.close()
        if con is not None:
            # DuckDB checkpoints on close: every applied row is in the file now.
            await self._db.write(con.close)
            if self._journal is not None and self._everything_applied():
                # So a clean stop leaves nothing to replay, and the next start
                # recovers only after a stop that never got here.
                await self._journal.discard()
        self._db.close_writes()

    def _everything_applied(self) -> bool:
        return (
            self._applier.everything_applied()
            and not self._ledger.owed
            and (self._journal is None or self._journal.failure is None)
        )

    async def check(self) -> None:
        if self._journal is not None and self._journal.failure is not None:
            raise StoreUnavailable(self._journal.failure)
        error = self._applier.error
        if error is not None:
            raise StoreUnavailable(f"journaled rows cannot be applied: {error}")
        if not self._applier.running:
            raise StoreUnavailable("the DuckDB store is not applying writes")
        self._loops.check()
        await self._db.read(lambda cur: cur.execute("SELECT 1").fetchall())

    # -- writing ---------------------------------------------------------------

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        if self._db.con is None:
            raise StoreUnavailable("the DuckDB store is closed")
        sequences = [sequence_of(r) for r in rows]
        if sequences.count(None) != len(sequences):  # some row claims a sequence
            return await self._sequencer.append(rows, sequences)
        await self._applier.journal(rows)
        return [None] * len(rows)

    async def _ledger_settled(self) -> None:
        """Return once every append acknowledged is applied and its ledger changes are
        in DuckDB: what the ledger's queries read."""
        await self._applier.applied_now()
        if self._ledger.owed:
            await self._applier.flush_ledger()

    def read_horizon(self, now: int) -> int:
        return self._applier.horizon(now)

    async def barrier(self) -> None:
        await self._applier.barrier()

    async def expire(self) -> int:
        """Delete records and rejections older than the retention; how many rows went."""
        return await self._retention.expire()

    # -- reading ---------------------------------------------------------------

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        return await self._reads.page(kind, query)

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        return await self._reads.counts(kind, query)

    async def latest(self, record_id: str) -> Record | None:
        return await self._reads.latest(record_id)

    async def message(self, message_id: str) -> MessageStatus | None:
        return await self._reads.message(message_id)

    async def seen(self, message_ids: Sequence[str]) -> dict[str, MessageState]:
        return await self._reads.seen(message_ids)

    async def rejections(self, message_ids: Sequence[str]) -> dict[str, Rejection]:
        return await self._reads.rejections(message_ids)

    async def keep_access(self, lines: Sequence[AccessLine]) -> None:
        await self._access.keep(lines)

    async def access_page(self, query: AccessQuery) -> list[AccessLine]:
        return await self._access.page(query)

    async def reproject(self, records: Sequence[Record]) -> int:
        """Project these stored records again, as the code and revisions are now, and
        replace their typed fields; returns how many were projected.

        For a mapping fixed since they were stored, or records stored before their
        system declared a schema. `record_fields` is keyed by message id, and each
        record's row is replaced in one transaction, so no record ever shows twice
        (or without a row) in `records_typed`. Records that name no revision, where
        none is declared, have nothing to project.
        """

        db = self._db
        return await db.write(lambda: self._typed.replace(db.connection(), records))

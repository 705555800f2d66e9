"""A DuckDB store's appends with producer sequences: the ledger's verdict on each row
(kept, refused, or a publisher's duplicate), from what is held under those sequences,
journaled or in DuckDB; one such append at a time decides and journals.

Design: docs/producers.md
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from app.records import Record, Rejection, rejected_record
from app.store import MessageState, PublisherDuplicate, RowOutcome
from app.store.duckdb import producers as book
from app.store.duckdb.applier import Unapplied
from app.store.duckdb.database import Database
from app.store.duckdb.producers import DuckDBLedger, FrameLedger, frame_ledger
from app.store.duckdb.sql import stored_rows
from app.store.producers import ProducerSequence, message_digest
from app.store.tally import Copy, Sequenced, SequenceKey


@dataclass(slots=True, kw_only=True)
class Sequencer:
    """Settles appends against `ledger`, then journals and queues what is kept through
    `store` (the frame's number); what is held is looked for in what is `journaled`
    (the applier's queue), then in DuckDB (`database`, `seen`: the store's look-up)."""

    ledger: DuckDBLedger
    store: Callable[[Sequence[Record | Rejection], FrameLedger | None], Awaitable[int]]
    journaled: Callable[[], Iterable[Unapplied]]
    database: Database
    seen: Callable[[Sequence[str]], Awaitable[dict[str, MessageState]]]
    clock: Callable[[], int]
    _sequencing: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def append(
        self, rows: Sequence[Record | Rejection], sequences: list[ProducerSequence | None]
    ) -> Sequence[RowOutcome]:
        """`rows` appended, `sequences` their producer sequences (one at least)."""
        async with self._sequencing:
            return await self._append(rows, sequences)

    async def _append(
        self, rows: Sequence[Record | Rejection], sequences: list[ProducerSequence | None]
    ) -> Sequence[RowOutcome]:
        """An append with producer sequences: the ledger's verdict on each row, journaled
        with the rows kept. The ledger in memory changes only once the frame is durable:
        a failed write leaves every sequence unseen, so the redelivery is stored."""
        settling = [
            Sequenced(s, r.message_id, type(r) is Record)
            for r, s in zip(rows, sequences, strict=True)
        ]
        ledger = self.ledger
        try:
            return await self._settle(rows, sequences, settling)
        finally:
            ledger.release()

    async def _settle(
        self,
        rows: Sequence[Record | Rejection],
        sequences: list[ProducerSequence | None],
        settling: list[Sequenced],
    ) -> Sequence[RowOutcome]:
        ledger = self.ledger
        await ledger.load(s.producer for s in sequences if s is not None)
        # Only a row whose sequence is seen already may be a redelivery of a stored
        # message or a copy of one: what is held under those sequences decides, in one read.
        seen = ledger.tally.seen_rows(settling)
        stored_before: set[str] = set()
        rejected_before: set[str] = set()
        copies: dict[SequenceKey, list[Copy]] = {}
        if seen:
            stored_before, rejected_before, copies = await self._held(seen)
        settled = ledger.tally.settle(
            settling,
            copies=copies,
            stored_before=stored_before,
            rejected_before=rejected_before,
            now=self.clock() // 1000,
            digest=lambda index: message_digest(rows[index]),
        )
        hours = ledger.hours_after(settled)
        part = frame_ledger(settled, hours)
        if not settled.duplicates and not settled.reasons:
            # Every row kept as it came, as nearly every batch is.
            frame = await self.store(rows, part)
            ledger.committed(settled, hours, frame)
            return [None] * len(rows)
        kept: list[Record | Rejection] = []
        outcomes: list[RowOutcome] = []
        for index, (row, sequence, verdict) in enumerate(
            zip(rows, sequences, settled.verdicts, strict=True)
        ):
            if verdict == "duplicate" and sequence is not None:
                outcomes.append(
                    PublisherDuplicate(sequence.producer, sequence.epoch, sequence.sequence)
                )
                continue
            if verdict == "refuse" and isinstance(row, Record):
                reason = settled.reasons[index]
                kept.append(rejected_record(row, reason))
                outcomes.append(reason)
                continue
            kept.append(row)
            outcomes.append(None)
        frame = await self.store(kept, part)
        ledger.committed(settled, hours, frame)
        return outcomes

    async def _held(
        self, rows: Sequence[Sequenced]
    ) -> tuple[set[str], set[str], dict[SequenceKey, list[Copy]]]:
        """Which of these rows' messages are stored (a record or a rejection), which as
        rejections alone, and the messages held under their sequences, with their
        digests. The journaled frames not
        applied yet are looked at first: a frame leaves them only once it is in DuckDB,
        so nothing is missed between the two looks."""
        wanted = {r.message_id for r in rows}
        keys = {(s.producer, s.epoch, s.sequence) for s, *_ in rows if s is not None}
        stored = set[str]()
        records = set[str]()
        ids: dict[SequenceKey, set[str]] = {}
        for entry in self.journaled():
            stored.update(r.message_id for r in entry.rows if r.message_id in wanted)
            records.update(
                r.message_id for r in entry.rows if r.message_id in wanted and isinstance(r, Record)
            )
            if entry.ledger is not None:
                for held in entry.ledger.copies:
                    if held[:3] in keys:
                        ids.setdefault(held[:3], set()).add(held[3])
        rest = wanted - records
        if rest:
            states = await self.seen(sorted(rest))
            stored |= set(states)
            records |= {m for m, state in states.items() if state == "stored"}
        for key, found in (await self.database.read(lambda cur: book.held_ids(cur, keys))).items():
            ids.setdefault(key, set()).update(found)
        # The messages themselves, where they are: journaled, or in DuckDB.
        every = {i for found in ids.values() for i in found}
        messages: dict[str, list[Record | Rejection]] = {}
        for entry in self.journaled():
            for row in entry.rows:
                if row.message_id in every:
                    messages.setdefault(row.message_id, []).append(row)
        missing = sorted(every - set(messages))
        if missing:
            for row in await self.database.read(lambda cur: stored_rows(cur, missing)):
                messages.setdefault(row.message_id, []).append(row)
        copies = {
            key: [
                Copy(message_id, message_digest(row))
                for message_id in sorted(found)
                for row in messages.get(message_id, ())
            ]
            for key, found in ids.items()
        }
        return stored, stored - records, copies

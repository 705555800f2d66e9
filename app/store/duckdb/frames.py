"""A DuckDB store's appends as numbered frames, each durable in the commit journal
once written there (a memory store keeps no journal, and only numbers them).

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.errors import StoreUnavailable
from app.records import Record, Rejection
from app.store.duckdb.journal import Frame, encode
from app.store.duckdb.journal_process import JournalProcess
from app.store.duckdb.producers import FrameLedger

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Frames:
    """Writes each append as the next frame of `journal` (None: numbers it only)."""

    journal: JournalProcess | None
    # Appends accepted: the number of the last one's frame.
    number: int = field(default=0, init=False)

    async def write(
        self,
        rows: Sequence[Record | Rejection],
        records: list[Record],
        ledger: FrameLedger | None = None,
    ) -> int:
        """Make the rows (`records`: those of them that are records), and the ledger's
        changes, durable; the number of their frame."""
        if self.journal is not None:
            rejections = [r for r in rows if type(r) is Rejection]
            if ledger is None:
                frame = Frame(records=records, rejections=rejections)
            else:
                frame = Frame(
                    records=records,
                    rejections=rejections,
                    producers=list(ledger.entries),
                    forgotten=list(ledger.forgotten),
                    ranges=list(ledger.ranges),
                    hours=list(ledger.hours),
                    copies=list(ledger.copies),
                )
            try:
                self.number = await self.journal.append(encode(frame))
            except OSError as exc:
                log.error("journal write failed: %s", exc)
                raise StoreUnavailable(f"journal write failed: {exc}") from exc
        else:
            self.number += 1
        return self.number

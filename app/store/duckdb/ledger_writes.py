"""The producers' ledger as a DuckDB store writes it: the changes of applied frames
owed to DuckDB, written together, and the journal's segments let go once both their
rows and their ledger changes are in DuckDB.

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Final

from app.errors import StoreUnavailable
from app.store.duckdb.journal_process import JournalProcess
from app.store.duckdb.producers import DuckDBLedger, FrameLedger

log = logging.getLogger(__name__)

# The ledger of producer sequences goes to DuckDB once this many frames with
# changes to it are applied, and at most once a second: one statement for every
# entry changed since, where writing it with every apply paid DuckDB's fixed cost
# per statement (~1-3 ms, ~100,000 instructions a record in group commits of 100)
# each time. The journal holds each change from its append on (the durable word,
# what a push waits for) and keeps the segments of frames whose changes are not
# written here yet, which a recovery replays; a close writes what is owed.
_LEDGER_FRAMES: Final = 64
_LEDGER_EVERY_SECONDS: Final = 1.0


@dataclass(slots=True)
class LedgerWriter:
    """Writes what `ledger` owes DuckDB, and releases the segments of `journal` (None
    for a memory store) that nothing owed is in."""

    ledger: DuckDBLedger
    journal: JournalProcess | None
    # Frames applied whose ledger changes are owed to DuckDB (the journal keeps
    # their segments until written), and when they were last written.
    _frames: int = field(default=0, init=False)
    _written: float = field(default_factory=time.monotonic, init=False)

    def owe(self, frame_number: int, changed: FrameLedger | None) -> None:
        """Note the ledger's changes of an applied frame, to write at the next flush."""
        if changed is not None and (changed.entries or changed.forgotten):
            self.ledger.owe(frame_number, changed.changes())
            self._frames += 1

    def due(self) -> bool:
        """Whether enough is owed, for long enough, to write it now."""
        return (
            self._frames >= _LEDGER_FRAMES
            and time.monotonic() - self._written >= _LEDGER_EVERY_SECONDS
        )

    async def flush(self, applied: int) -> None:
        """Write the ledger's changes owed to DuckDB (of frames up to `applied`) in one
        transaction; StoreUnavailable, owing them still, if it fails (the journal keeps
        them meanwhile). The journal's segments are released apart (`release`)."""
        try:
            await self.ledger.flush(applied)
        except StoreUnavailable as exc:
            log.error("writing the ledger's changes failed, retrying: %s", exc)
            raise
        self._frames = 0
        self._written = time.monotonic()

    def release(self, applied: int) -> None:
        """Let the journal delete the segments of frames applied (up to `applied`),
        ledger entries included."""
        if self.journal is None:
            return
        releasable = applied
        # Only while some are (a check of one attribute: this runs at every apply).
        if self._frames or self.ledger.writing:
            unwritten = self.ledger.unwritten_from
            if unwritten is not None:
                releasable = min(releasable, unwritten - 1)
        with contextlib.suppress(OSError):  # a failed writer is reported by `check`
            self.journal.release(releasable)

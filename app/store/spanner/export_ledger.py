"""The export's ledger in the serving database: its lease and each table's progress.

`SpannerLedger` makes each of `ledger.py`'s reads and writes one call within a
deadline (`calls.py`), a write one bounded transaction. Bound to an exporter's
`Lease` it is what that exporter asks (`app.store.tiered.exporter.ExportLedger`);
unbound, what operators and every instance's watermark read ask. What the rows
mean, and who writes them when: docs/stores.md.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import msgspec

from app.records import Record, micros, moment, rejected_record
from app.store.spanner import ledger
from app.store.spanner.calls import (
    LOW_PRIORITY,
    Deadline,
    SpannerCalls,
    in_transaction,
    key_rows,
    sql_rows,
    statement,
)
from app.store.spanner.ledger import Decision, Lease, LeaseClaim, LeaseState, Progress
from app.store.spanner.rows import NAMES, insert_columns, insert_values, message_keys, stored_row

# How far back `leases` looks for the time a lease's holder took it, by reads of the
# lease at earlier times: within the version retention every database has (an hour
# at least: https://cloud.google.com/spanner/docs/pitr), and to the second.
SINCE_SEARCH_SECONDS = 3600.0
SINCE_PRECISION_SECONDS = 1.0


class SpannerLedger:
    """The export's lease and progress, as one exporter (`lease`) or an operator asks."""

    def __init__(self, calls: SpannerCalls, lease: Lease | None = None) -> None:
        self._calls = calls
        self.lease = lease
        # After a claim another exporter's live lease refused: in how long (s) that
        # lease expires, when known.
        self.expires_in: float | None = None
        # What the last claim found (who holds the lease, who asked for it).
        self.claimed: LeaseClaim | None = None

    def _holder(self) -> tuple[Lease, str]:
        """The lease, and its `holder` value now (`ledger.lease_holder`)."""
        if self.lease is None:
            raise TypeError("the export's lease is claimed by an exporter's ledger (`Lease`)")
        lease = self.lease
        return lease, ledger.lease_holder(lease.standing, lease.holder, time.time_ns() // 1000)

    # -- the exporter's ----------------------------------------------------------

    async def claim(self, *, take_free: bool = True, want: bool = False) -> bool:
        """Take or renew the lease for its `seconds` from Spanner's now; whether this
        exporter holds it now (if not, `expires_in` says when the one that stopped
        it expires, when known). Without `take_free`, a lease nobody holds is left
        to others; with `want`, another's is asked for (`ledger.claim`). What the
        claim found is `claimed`."""
        lease, holder = self._holder()
        found = await self._calls.transact(
            self._claim, lease.name, holder, int(lease.seconds * 1_000_000), take_free, want
        )
        self.claimed = found
        self.expires_in = None if found.expires_in is None else found.expires_in / 1_000_000
        return found.held

    def _claim(
        self,
        deadline: Deadline,
        name: str,
        holder: str,
        lease_micros: int,
        take_free: bool,
        want: bool,
    ) -> LeaseClaim:
        def work(transaction: Any) -> LeaseClaim:
            return ledger.claim(
                transaction,
                statement(deadline),
                name,
                holder,
                lease_micros,
                take_free=take_free,
                want=want,
            )

        claimed, _ = in_transaction(self._calls.database(), deadline, work)
        return claimed

    async def release(self, *, within: float) -> bool:
        """Hand the lease back if this exporter holds it; whether it did."""
        lease, holder = self._holder()
        return await self._calls.transact(self._release, lease.name, holder, within=within)

    def _release(self, deadline: Deadline, name: str, holder: str) -> bool:
        def work(transaction: Any) -> bool:
            return ledger.release(transaction, statement(deadline), name, holder)

        released, _ = in_transaction(self._calls.database(), deadline, work)
        return released

    async def record(self, progress: Progress) -> Progress:
        """Write `progress` if this exporter holds the lease (else LeaseLost) and the
        row is still the one it was made from (else ProgressMoved), both checked in
        the same transaction; the progress as written, its `updated` the commit's
        time: what the next write is made from."""
        lease, holder = self._holder()
        return await self._calls.transact(self._record, lease.name, holder, progress)

    def _record(self, deadline: Deadline, name: str, holder: str, progress: Progress) -> Progress:
        def work(transaction: Any) -> None:
            ledger.record(transaction, statement(deadline), name, holder, progress)

        _, committed = in_transaction(self._calls.database(), deadline, work)
        return msgspec.structs.replace(progress, updated=committed)

    # -- everyone's --------------------------------------------------------------

    async def progress(self, table: str) -> Progress:
        """The export progress of `table` now (a strong read); a new one if it has none."""
        return await self._calls.call(self._progress, table)

    def _progress(self, deadline: Deadline, table: str) -> Progress:
        with self._calls.database().snapshot() as snapshot:
            found = key_rows(
                snapshot,
                deadline,
                ledger.PROGRESS_TABLE,
                ledger.progress_names(),
                ledger.progress_key(table),
                request_options=LOW_PRIORITY,
            )
            return ledger.progress_of(table, list(found))

    async def watermarks(self) -> dict[str, int]:
        """Each table's export watermark (0 before its first export), in one read."""
        return await self._calls.call(self._watermarks)

    def _watermarks(self, deadline: Deadline) -> dict[str, int]:
        with self._calls.database().snapshot() as snapshot:
            names = ["table_name", "watermark"]
            keys = ledger.watermark_keys()
            return ledger.watermarks_of(
                key_rows(
                    snapshot,
                    deadline,
                    ledger.PROGRESS_TABLE,
                    names,
                    keys,
                    request_options=LOW_PRIORITY,
                )
            )

    async def leases(self) -> list[LeaseState]:
        """Each lease of the export, read now (`LeaseState`): who holds it and who asked
        for it, and since when its holder has held it, found by reads of the lease at
        earlier times (its versions are kept an hour at least: SINCE_SEARCH_SECONDS)."""
        return await self._calls.call(self._leases)

    def _leases(self, deadline: Deadline) -> list[LeaseState]:
        database = self._calls.database()
        with database.snapshot(multi_use=True) as snapshot:
            ((now,),) = list(sql_rows(snapshot, deadline, "SELECT CURRENT_TIMESTAMP()"))
            rows = list(
                sql_rows(
                    snapshot,
                    deadline,
                    f"SELECT name, holder, expires FROM {ledger.LEASE_TABLE}",
                    request_options=LOW_PRIORITY,
                )
            )
        states = ledger.lease_states([tuple(row) for row in rows], now)
        now_micros = micros(now)
        return [self._since(deadline, s, now_micros) if s.live else s for s in states]

    def _since(self, deadline: Deadline, state: LeaseState, now: int) -> LeaseState:
        """`state` with since when its holder holds it: the earliest time within the
        search whose read finds it the holder, to SINCE_PRECISION_SECONDS (about a
        dozen reads of one row). A holder that handed it back and took it again within
        the hour counts from its first time."""
        held = now
        furthest = now - int(SINCE_SEARCH_SECONDS * 1_000_000)
        if self._holder_at(deadline, state.name, furthest) == state.holder:
            return dataclasses.replace(state, since=furthest, since_earlier=True)
        free, step = furthest, int(SINCE_PRECISION_SECONDS * 1_000_000)
        while held - free > step:
            middle = (free + held) // 2
            if self._holder_at(deadline, state.name, middle) == state.holder:
                held = middle
            else:
                free = middle
        return dataclasses.replace(state, since=held)

    def _holder_at(self, deadline: Deadline, name: str, at: int) -> str | None:
        """Who held lease `name` at `at` (µs), as a read at that time finds it; None
        before its row, or the database, existed."""
        from google.api_core.exceptions import FailedPrecondition, InvalidArgument

        try:
            with self._calls.database().snapshot(read_timestamp=moment(at)) as snapshot:
                found = list(
                    key_rows(
                        snapshot,
                        deadline,
                        ledger.LEASE_TABLE,
                        ["holder"],
                        ledger.lease_key(name),
                        request_options=LOW_PRIORITY,
                    )
                )
        except (FailedPrecondition, InvalidArgument):
            # A time before the database, or past its version retention.
            return None
        return ledger.standing_of(found[0][0])[1] if found else None

    # -- operators' ----------------------------------------------------------------

    async def unblock(self, table: str, reason: str, decision: Decision | None = None) -> bool:
        """Clear the export of `table`'s `blocked` if it still says `reason`, keeping
        `decision` in the same transaction; whether it did (an operator's retry:
        `recordline export retry`)."""
        change = functools.partial(_unblock, table=table, reason=reason)
        return await self._calls.transact(self._decided, change, decision)

    async def move(self, read: Progress, moved: Progress, decision: Decision | None = None) -> bool:
        """Write `moved` over `read`, a table's progress as an operator read it, if
        nothing wrote it since, keeping `decision` in the same transaction; whether
        it did (`recordline export resync`). No lease is checked: the holder of a
        blocked table writes nothing until its progress changes, and any write it
        makes first turns this one into a no-op."""
        change = functools.partial(_overwrite, read=read, moved=moved)
        return await self._calls.transact(self._decided, change, decision)

    async def reject_refused(
        self, message_id: str, reason: str, blocked: str, decision: Decision | None = None
    ) -> bool:
        """Move record `message_id`, at which the export of `records` is blocked
        (saying `blocked`: BigQuery refused it, or it could not be read or encoded),
        to the rejections with `reason`, and clear the export's batch, if it has
        one, and its stop, keeping `decision`; all in one transaction, only if the
        progress still says `blocked`. Whether it did (`recordline export reject`)."""
        change = functools.partial(_reject, message_id=message_id, reason=reason, blocked=blocked)
        return await self._calls.transact(self._decided, change, decision)

    def _decided(
        self, deadline: Deadline, change: Callable[..., bool], decision: Decision | None
    ) -> bool:
        """`change(transaction, deadline)` in one transaction, keeping `decision` in it
        if it changed anything; whether it did."""

        def work(transaction: Any) -> bool:
            done = change(transaction, deadline)
            if done and decision is not None:
                ledger.decide(transaction, decision)
            return done

        done, _ = in_transaction(self._calls.database(), deadline, work)
        return done


# Each operator's change, as `SpannerLedger._decided` makes it in a transaction.


def _unblock(transaction: Any, deadline: Deadline, table: str, reason: str) -> bool:
    return ledger.unblock(transaction, statement(deadline), table, reason)


def _overwrite(transaction: Any, deadline: Deadline, read: Progress, moved: Progress) -> bool:
    return ledger.overwrite(transaction, statement(deadline), read, moved)


def _reject(
    transaction: Any, deadline: Deadline, message_id: str, reason: str, blocked: str
) -> bool:
    names, keys = ledger.progress_names(), ledger.progress_key("records")
    found = key_rows(transaction, deadline, ledger.PROGRESS_TABLE, names, keys)
    progress = ledger.progress_in(transaction, found, "records")
    if progress.blocked != blocked:
        return False
    message = message_keys([message_id])
    held = [
        stored_row(Record, values)
        for values in key_rows(transaction, deadline, "records", NAMES["records"], message)
    ]
    if not held:
        return False
    transaction.delete("records", message)
    rejection = rejected_record(held[0], reason)
    transaction.insert(
        "rejected", insert_columns("rejected"), [insert_values("rejected", rejection)]
    )
    ledger.write_past_refused(transaction, progress)
    return True

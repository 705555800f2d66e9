"""Several publishers at once, honest and not, against a DuckDB file's ledger (Hypothesis).

Two honest producers publish in order, one numbering its epochs 1, 2, 3, the other by
its start time in microseconds; some of their messages are lost, some delivered again
(Pub/Sub's redelivery, the same message id) or published again (the client's retry,
a new id). Meanwhile another publisher claims their sequences with messages of its own,
forges epochs (near 2^63, and a day ahead at most, with and without gaps) and says
anything of how an epoch ended; and the store stops and starts again on its file (the
second instance DuckDB allows). Whatever the order, in batches of any size:

- no honest message is dropped: some copy of it is stored (or kept, if its gap could not
  be opened), and, while its epoch is in the ledger, exactly one;
- every sequence two different stored messages claim is named in conflict, and no other;
- every honest sequence lost before a later one arrived, or before the count its next
  epoch said, is owed (missing once old enough), unless another message took it or its
  epoch found no place in the ledger (the eight kept all live: none ended or quiet for
  an hour), which the ledger counts as untracked;
- the audit (SQL over the ledger's tables) says what the entries say.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from app.ingest.envelope import PushedMessage
from app.ingest.service import to_row
from app.store.duckdb.store import DuckDBStore
from app.store.producers import (
    HOUR_MICROS,
    MAX_EPOCHS,
    EpochEntry,
    HourCount,
    LedgerAudit,
    LedgerRange,
    entry_ranges,
    hours_of,
)
from tests.fuzz.budget import EXAMPLES

# Messages share one key format: (producer, epoch, sequence).
Key = tuple[str, int, int]


@dataclass
class Message:
    message_id: str
    key: Key
    payload: bytes
    attributes: dict[str, str]
    honest: bool
    # The message ids it was sent under (its own, and a retry's).
    ids: list[str] = field(default_factory=list)

    def content(self) -> tuple[bytes, tuple[tuple[str, str], ...]]:
        return self.payload, tuple(sorted(self.attributes.items()))


@dataclass
class Producer:
    name: str
    epochs: list[int]
    published: int = 0  # in the current epoch
    # Per epoch: sequences published and never delivered.
    lost: dict[int, set[int]] = field(default_factory=dict)
    # Per epoch, the count its next epoch said it published.
    said: dict[int, int] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return self.epochs[-1]


def model_audit(
    ranges: Iterable[LedgerRange], hours: Iterable[HourCount], since: int, until: int, cutoff: int
) -> tuple[dict[int, int], int, set[tuple[str, int, str, int, int]], int]:
    """What the audit must say of these ranges: missing by hour, how many missing
    ranges, the conflicts (kind, producer, epoch, first, last), the unknown ends."""
    by_hour: dict[int, int] = {}
    missing = unknown = 0
    conflicts: set[tuple[str, int, str, int, int]] = set()
    for found in ranges:
        if not since <= found.opened < until:
            continue
        if found.kind == "gap" and found.opened <= cutoff:
            hour = found.opened // HOUR_MICROS
            by_hour[hour] = by_hour.get(hour, 0) + found.last - found.first + 1
            missing += 1
        elif found.kind in ("conflict", "ends"):
            conflicts.add((found.producer, found.epoch, found.kind, found.first, found.last))
        elif found.kind == "unknown":
            unknown += 1
    del hours
    return by_hour, missing, conflicts, unknown


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = tempfile.TemporaryDirectory()
        self.path = str(Path(self.directory.name) / "records.duckdb")
        self.store = self._start()
        now = time.time_ns() // 1000
        self.producers = {
            "alpha": Producer("alpha", [1]),
            "beta": Producer("beta", [now - 60_000_000]),
        }
        self.names = itertools.count()
        self.messages: list[Message] = []
        self.pending: list[Message] = []
        self.gapped_forgeries = 0
        self.restarts = 0
        self.checked = True

    # -- the store ---------------------------------------------------------------------

    def _start(self) -> DuckDBStore:
        store = DuckDBStore(self.path)
        self.loop.run_until_complete(store.start())
        return store

    def teardown(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        self.directory.cleanup()

    def _message(self, key: Key, payload: bytes, *, honest: bool, **more: str) -> Message:
        producer, epoch, sequence = key
        attributes = {
            "recordline-producer": producer,
            "recordline-epoch": str(epoch),
            "recordline-seq": str(sequence),
            **more,
        }
        message = Message(f"m-{next(self.names)}", key, payload, attributes, honest)
        self.messages.append(message)
        return message

    def _send(self, message: Message, message_id: str) -> None:
        if message_id not in message.ids:
            message.ids.append(message_id)
        self.pending.append(
            Message(message_id, message.key, message.payload, message.attributes, message.honest)
        )

    # -- honest producers --------------------------------------------------------------

    @initialize()
    def a_loss(self) -> None:
        """Each producer starts having lost one message, so that there is always evidence
        of loss for the others to push out."""
        for name in self.producers:
            self.publish(name, delivered=True)
            self.publish(name, delivered=False)
            self.publish(name, delivered=True)

    @rule(name=st.sampled_from(["alpha", "beta"]), delivered=st.booleans())
    def publish(self, name: str, delivered: bool) -> None:
        producer = self.producers[name]
        sequence = producer.published
        producer.published += 1
        key = (name, producer.epoch, sequence)
        more = {}
        if sequence == 0 and len(producer.epochs) > 1:
            previous = producer.epochs[-2]
            more["recordline-epoch-ended"] = f"{previous}:{producer.said[previous]}"
        payload = json.dumps({"id": f"{name}-{key[1]}-{sequence}", "data": sequence}).encode()
        message = self._message(key, payload, honest=True, **more)
        if delivered:
            self._send(message, message.message_id)
        else:
            producer.lost.setdefault(producer.epoch, set()).add(sequence)

    @precondition(lambda self: any(m.honest and m.ids for m in self.messages))
    @rule(data=st.data(), retry=st.booleans())
    def again(self, data: st.DataObject, retry: bool) -> None:
        """Pub/Sub delivers a message again, or the publisher's client publishes it again."""
        sent = [m for m in self.messages if m.honest and m.ids]
        message = data.draw(st.sampled_from(sent))
        message_id = f"{message.message_id}-r{len(message.ids)}" if retry else message.ids[0]
        self._send(message, message_id)

    @precondition(lambda self: min(len(p.epochs) for p in self.producers.values()) < 4)
    @rule(name=st.sampled_from(["alpha", "beta"]))
    def restart(self, name: str) -> None:
        """The producer starts without its state; it kept how far the last epoch got."""
        producer = self.producers[name]
        if len(producer.epochs) >= 4:
            return
        producer.said[producer.epoch] = producer.published
        step = 1 if name == "alpha" else 1_000
        producer.epochs.append(producer.epoch + step)
        producer.published = 0

    # -- another publisher ---------------------------------------------------------------

    @rule(name=st.sampled_from(["alpha", "beta"]), ahead=st.integers(-3, 3), data=st.data())
    def claim(self, name: str, ahead: int, data: st.DataObject) -> None:
        """A message of its own under one of the producer's sequences, taken or not."""
        producer = self.producers[name]
        epoch = data.draw(st.sampled_from(producer.epochs))
        sequence = max(0, producer.published + ahead)
        payload = json.dumps({"id": f"forged-{next(self.names)}", "data": "x"}).encode()
        message = self._message((name, epoch, sequence), payload, honest=False)
        self._send(message, message.message_id)

    @rule(
        name=st.sampled_from(["alpha", "beta"]),
        how=st.sampled_from(["huge", "settled", "gap"]),
        count=st.sampled_from([1, MAX_EPOCHS, MAX_EPOCHS + 2]),
    )
    def forge_epochs(self, name: str, how: str, count: int) -> None:
        """Epochs of its own for the producer: near 2^63, or ahead of the producer's by
        less than a day, each one message (settled), or a few with a gap each."""
        producer = self.producers[name]
        if how == "gap":
            count = min(count, 2 - self.gapped_forgeries)
            self.gapped_forgeries += count
        for _ in range(count):
            if how == "huge":
                epoch = 2**63 - 1 - next(self.names)
            else:
                epoch = producer.epochs[0] + 10_000 + next(self.names)
            sequence = 3 if how == "gap" else 0
            payload = json.dumps({"id": f"epoch-{epoch}", "data": "x"}).encode()
            message = self._message((name, epoch, sequence), payload, honest=False)
            self._send(message, message.message_id)

    @rule(
        name=st.sampled_from(["alpha", "beta"]),
        count=st.sampled_from([0, 1, 5, 40, 2**63 - 1]),
        data=st.data(),
    )
    def declare(self, name: str, count: int, data: st.DataObject) -> None:
        """Says, from a forged later epoch, how many messages one of its epochs published."""
        producer = self.producers[name]
        ended = data.draw(st.sampled_from(producer.epochs))
        epoch = producer.epochs[0] + 10_000 + next(self.names)
        payload = json.dumps({"id": f"declared-{epoch}", "data": "x"}).encode()
        message = self._message(
            (name, epoch, 0),
            payload,
            honest=False,
            **{"recordline-epoch-ended": f"{ended}:{count}"},
        )
        self._send(message, message.message_id)

    # -- delivery and the store --------------------------------------------------------------

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """What is pending, in group commits of any size, in any order."""
        pending = data.draw(st.permutations(self.pending))
        self.pending = []
        now = time.time_ns() // 1000
        rows = [
            to_row(
                PushedMessage(
                    message_id=m.message_id,
                    publish_time=now,
                    data=m.payload,
                    raw_data=m.payload,
                    attributes=m.attributes,
                ),
                now,
                trace_id=None,
            )
            for m in pending
        ]
        cut = data.draw(st.integers(0, len(rows)))
        for part in (rows[:cut], rows[cut:]):
            if part:
                self.loop.run_until_complete(self.store.append(part))
        self.checked = False

    # A start costs ~0.1 s: a few in each run are enough to meet every state after one.
    @precondition(lambda self: self.restarts < 2)
    @rule()
    def restart_store(self) -> None:
        """The next instance on the file: the ledger goes on where it was."""
        self.restarts += 1
        self.loop.run_until_complete(self.store.close())
        self.store = self._start()

    # -- what must hold ---------------------------------------------------------------------

    def _ask(self) -> tuple[dict[str, str], dict[str, dict[int, EpochEntry]]]:
        async def ask() -> tuple[dict[str, str], dict[str, dict[int, EpochEntry]]]:
            await self.store.barrier()
            ids = sorted({i for m in self.messages for i in m.ids})
            seen = await self.store.seen(ids)
            assert self.store.completeness is not None
            ledger = {}
            for name in self.producers:
                found = await self.store.completeness.producer(name)
                ledger[name] = {e.epoch: e for e in found.epochs} if found else {}
            return dict(seen), ledger

        return self.loop.run_until_complete(ask())

    @invariant()
    def nothing_honest_lost_and_everything_named(self) -> None:
        if self.checked or self.pending:
            return
        self.checked = True
        seen, ledger = self._ask()
        # Stored contents under each sequence, from what the store holds.
        held: dict[Key, set[tuple[bytes, tuple[tuple[str, str], ...]]]] = {}
        for message in self.messages:
            if any(seen.get(i) == "stored" for i in message.ids):
                held.setdefault(message.key, set()).add(message.content())
        for message in self.messages:
            if not (message.honest and message.ids):
                continue
            kept = [i for i in message.ids if i in seen]
            assert kept, f"honest {message.key} dropped: {message.ids}"
            entry = ledger[message.key[0]].get(message.key[1])
            if entry is not None and not entry.retired:
                assert len(kept) == 1, f"honest {message.key} stored as {kept}"
        for name, producer in self.producers.items():
            entries = ledger[name]
            live = [e for e in entries.values() if not e.retired]
            assert len(live) <= MAX_EPOCHS
            for epoch, entry in entries.items():
                # Every count said of the epoch is kept, whoever said it, in whatever order.
                said_of = {
                    int(m.attributes["recordline-epoch-ended"].split(":")[1])
                    for m in self.messages
                    if m.ids
                    and m.key[0] == name
                    and m.attributes.get("recordline-epoch-ended", "").startswith(f"{epoch}:")
                }
                assert set(entry.counts_said()) == said_of, (name, epoch, entry.ends, said_of)
                assert entry.end_conflict == (
                    len(said_of) > 1
                    or any(c <= entry.highest or c > entry.highest + 1 + 10**6 for c in said_of)
                )
                if entry.retired:
                    continue
                conflicted = {s for g in entry.conflicted for s in range(g.first, g.last + 1)}
                twice = {k[2] for k, v in held.items() if k[:2] == (name, epoch) and len(v) > 1}
                assert conflicted == twice, (name, epoch, conflicted, twice)
            for epoch in producer.epochs:
                owed_now = self._owed(name, producer, epoch, held)
                if not owed_now:
                    continue
                # Evidence of loss: never retired, never forgotten, every sequence named;
                # or the epoch had no place (its messages stored untracked, and counted).
                entry = entries.get(epoch)
                if entry is None:
                    untracked = sum(e.untracked for e in entries.values())
                    assert untracked > 0, (name, epoch, owed_now)
                    continue
                assert not entry.retired, (name, epoch, owed_now, entry)
                owed = {s for g in entry.owed() for s in range(g.first, min(g.last, 10**6) + 1)}
                assert owed_now <= owed, (name, epoch, owed_now, entry)
        self._audit_says_what_the_entries_say(ledger)

    def _owed(
        self, name: str, producer: Producer, epoch: int, held: Mapping[Key, object]
    ) -> set[int]:
        """The honest sequences of an epoch lost before a later one arrived, or before the
        count its next epoch said (once that came), that no other message took."""
        taken = {k[2] for k in held if k[:2] == (name, epoch)}
        highest = max(
            (m.key[2] for m in self.messages if m.honest and m.ids and m.key[:2] == (name, epoch)),
            default=-1,
        )
        said = 0
        if epoch in producer.said:
            following = producer.epochs[producer.epochs.index(epoch) + 1]
            if any(m.honest and m.ids and m.key == (name, following, 0) for m in self.messages):
                said = producer.said[epoch]
        return {
            s
            for s in producer.lost.get(epoch, set())
            if s not in taken and (s < highest or s < said)
        }

    def _audit_says_what_the_entries_say(self, ledger: dict[str, dict[int, EpochEntry]]) -> None:
        now = time.time_ns() // 1000
        since, until = now - 3 * HOUR_MICROS, now + 60_000_000
        ranges = []
        for entries in ledger.values():
            if not entries:
                continue
            live = [e for e, entry in entries.items() if not entry.retired]
            newest = max(live or entries)
            ranges += [r for entry in entries.values() for r in entry_ranges(entry, newest)]

        async def audit() -> LedgerAudit:
            assert self.store.completeness is not None
            return await self.store.completeness.audit(since, until, cutoff=now, limit=1000)

        found = self.loop.run_until_complete(audit())
        by_hour, missing, conflicts, unknown = model_audit(ranges, [], since, until, now)
        assert found.missing_by_hour == by_hour
        assert found.missing_ranges == missing
        assert {
            (r.producer, r.epoch, r.kind, r.first, r.last) for r in found.conflicts
        } == conflicts
        assert found.unknown_ends == unknown
        first, last = hours_of(since, until)
        assert all(first <= h.hour <= last for h in found.hours)


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine.pytestmark = [pytest.mark.slow]

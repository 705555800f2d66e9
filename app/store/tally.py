"""Settling a batch of sequenced rows against the ledger: stored, a retry, or a conflict.

A row under a sequence not seen is stored; under a seen one it is a redelivery
(its message id stored already), a publisher's retry (the digest of a message
held under it: not stored) or another message (stored, a conflict). Digests are
asked only of rows under a seen sequence: the rare path, not every push's.
Nothing changes until the store commits the batch and takes the changes.

Design: docs/producers.md#exactly-once-by-producer-sequence
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import msgspec

from app.store.producers import (
    HOUR_MICROS,
    MAX_ENDS,
    MAX_EPOCHS,
    MAX_GAPS,
    MAX_RETIRED,
    SEQUENCE_ATTRIBUTE,
    EpochEntry,
    Gap,
    HourCount,
    ProducerSequence,
)

SequenceKey = tuple[str, int, int]
# A message stored under a producer sequence, as a store notes it: producer, epoch,
# sequence, message id (a plain tuple: one is made for every sequenced row).
Held = tuple[str, int, int, str]


class Copy(NamedTuple):
    """A message a store holds under a producer sequence, and its digest
    (`message_digest`): what a later copy is told by."""

    message_id: str
    digest: bytes


class Sequenced(NamedTuple):
    """A row as the ledger settles it."""

    sequence: ProducerSequence | None
    message_id: str
    is_record: bool


Verdict = Literal["store", "conflict", "duplicate", "refuse", "again"]
"""What becomes of a sequenced row: stored (and its sequence seen); stored as a
conflict (its sequence was taken by another message); not stored (a publisher's
copy of a message held); kept as a rejection (`refuse`: its gap would pass the
bound); or stored as any redelivery of a message stored already (`again`: the
store's own first-copy rule keeps one, and the ledger is not told twice)."""


@dataclass(slots=True)
class Settled:
    """One batch's verdicts and the changes it makes, for the store to write with its rows."""

    verdicts: list[Verdict | None]
    # Why each refused row is kept as a rejection (by position).
    reasons: dict[int, str]
    # The entries as they are after the batch, and the ones it dropped.
    changed: dict[tuple[str, int], EpochEntry]
    dropped: set[tuple[str, int]] = field(default_factory=set)
    # The messages the batch stores under a sequence (not its redeliveries).
    copies: list[Held] = field(default_factory=list)
    # The batch's counts, at the hour it was settled.
    counts: HourCount = field(default_factory=lambda: HourCount(hour=0))
    # How many rows are publishers' copies, not stored, and how many conflicts.
    duplicates: int = 0
    conflicts: int = 0
    # Each producer the batch touched: its newest epoch after it.
    newest: dict[str, int] = field(default_factory=dict)


_NO_EPOCHS: Mapping[int, EpochEntry] = {}
_NO_COPIES: Sequence[Copy] = ()


def newest_of(epochs: Mapping[int, EpochEntry]) -> int:
    """A producer's newest epoch: of those not retired (of any, if all are)."""
    if len(epochs) == 1:  # as most producers have
        return next(iter(epochs))
    live = [epoch for epoch, entry in epochs.items() if not entry.retired]
    return max(live or epochs)


class Tally:
    """The ledger's entries of some producers (all those of a batch, at least), and
    the verdicts on a batch of their rows; nothing changes until the store commits
    the batch and takes `settle`'s changes."""

    def __init__(self, entries: Iterable[EpochEntry] = ()) -> None:
        self._epochs: dict[str, dict[int, EpochEntry]] = {}
        self.add(entries)

    def add(self, entries: Iterable[EpochEntry]) -> None:
        for entry in entries:
            self._epochs.setdefault(entry.producer, {})[entry.epoch] = entry

    def entries(self, producer: str) -> dict[int, EpochEntry]:
        return self._epochs.get(producer, {})

    def holds(self, producer: str) -> bool:
        return producer in self._epochs

    def producers(self) -> Iterator[str]:
        return iter(self._epochs)

    def __len__(self) -> int:
        return len(self._epochs)

    def seen_rows(self, rows: Sequence[Sequenced]) -> list[Sequenced]:
        """The rows whose sequence is seen already: only those may be redeliveries or
        copies, which the store tells apart by the messages it holds under them."""
        found: list[Sequenced] = []
        epochs = self._epochs
        for row in rows:
            sequence = row.sequence
            if sequence is None:
                continue
            entry = epochs.get(sequence.producer, _NO_EPOCHS).get(sequence.epoch)
            if (
                entry is not None
                and not entry.retired
                and sequence.sequence <= entry.highest
                and entry.seen(sequence.sequence)
            ):
                found.append(row)
        return found

    def settle(
        self,
        rows: Sequence[Sequenced],
        *,
        copies: Mapping[SequenceKey, Sequence[Copy]],
        stored_before: Set[str],
        rejected_before: Set[str] = frozenset(),
        now: int,
        digest: Callable[[int], bytes],
    ) -> Settled:
        """The verdict on each of `rows`, in order, as one batch: `copies` are the
        messages held under the seen sequences among them, `stored_before` which of
        their message ids are stored already (as records or rejections),
        `rejected_before` which as rejections alone, `digest` the digest of a row of the batch
        by its position (asked only of rows under a seen sequence, and of the rows of
        the batch stored under it before them)."""
        batch = _Batch(self._epochs, now)
        verdicts: list[Verdict | None] = []
        reasons: dict[int, str] = {}
        # The batch's rows stored so far, by message id: their positions.
        ids_in_batch: dict[str, int] = {}
        out: list[Held] = []
        # Positions in the batch of the rows stored under each sequence, made at the first
        # row under a seen sequence (a retry or a conflict, rare): only then are they
        # looked for.
        held: dict[SequenceKey, list[int]] | None = None
        stored = rejected = duplicates = conflicts = 0
        # A batch's rows come in runs of one producer's epoch (a producer publishes
        # in order, and the batch holds what arrived together), so the entry and the
        # producer's newest epoch are looked up once a run, not once a row. Within a
        # run neither changes: only a row of another epoch makes or retires an entry
        # (an epoch's end names an earlier epoch than its row's, which may make an
        # entry but never a newer one, nor retire the newest).
        producer: str | None = None
        epoch = newest = 0
        entry: EpochEntry | None = None
        for index, (sequence, message_id, is_record) in enumerate(rows):
            if sequence is None:
                verdicts.append(None)
                continue
            again = message_id in stored_before or message_id in ids_in_batch
            if sequence.ended_epoch is not None and sequence.ended_count is not None:
                batch.end(sequence.producer, sequence.ended_epoch, sequence.ended_count)
                producer = None  # it may have made or retired an entry: look again
            if sequence.producer != producer or sequence.epoch != epoch:
                producer, epoch = sequence.producer, sequence.epoch
                entry = batch.entry(producer, epoch)
                newest = batch.newest(producer)
                if entry is not None:
                    entry.last_seen = max(entry.last_seen, now)
            if entry is None or entry.retired:
                # No place in the ledger (none of its producer's epochs is done
                # with), or an epoch retired: stored, without deduplication.
                if again:
                    verdicts.append("again")
                    continue
                if entry is None:
                    kept = batch.entry(sequence.producer, newest)
                    assert kept is not None
                    kept.untracked += 1
                    kept.last_seen = max(kept.last_seen, now)
                else:
                    entry.zombies += 1
                ids_in_batch[message_id] = index
                if is_record:
                    stored += 1
                else:
                    rejected += 1
                verdicts.append("store")
                continue
            number = sequence.sequence
            verdict: Verdict = "store"
            if number <= entry.highest and entry.seen(number):
                key = (sequence.producer, epoch, number)
                if held is None:
                    held = {}
                    for copy in out:
                        held.setdefault(copy[:3], []).append(ids_in_batch[copy[3]])
                known = copies.get(key, _NO_COPIES)
                mine = held.get(key, ())
                held_here = any(c.message_id == message_id for c in known)
                if again or held_here:
                    if is_record and held_here and message_id in rejected_before:
                        if message_id not in ids_in_batch:
                            # Kept as a rejection under this very sequence, stored now
                            # (fixed and replayed under its id): the epoch counts it stored,
                            # once; the hour counts the store (its rejection stays in its
                            # own). Under another sequence it is counted as ever.
                            entry.rejected = max(0, entry.rejected - 1)
                            entry.stored += 1
                            stored += 1
                        ids_in_batch[message_id] = index
                    verdicts.append("again")
                    continue
                this = digest(index)
                if any(c.digest == this for c in known) or any(digest(i) == this for i in mine):
                    entry.duplicates += 1
                    duplicates += 1
                    verdicts.append("duplicate")
                    continue
                # Another message under a taken sequence (or one whose message is no
                # longer held to compare with): stored, and named as a conflict.
                entry.conflicts += 1
                conflicts += 1
                _conflict(entry, number, now)
                verdict = "conflict"
            elif number == entry.highest + 1:
                # The next in order, as most are: no gap to open or close.
                entry.highest = number
            elif not _take(entry, number, now):
                entry.refused += 1
                entry.rejected += 1
                rejected += 1
                reasons[index] = (
                    f"{SEQUENCE_ATTRIBUTE}: {number} of producer "
                    f"{sequence.producer!r} epoch {epoch} would open a gap past the "
                    f"{MAX_GAPS} an epoch may hold; kept to replay once its gaps close"
                )
                verdicts.append("refuse")
                continue
            ids_in_batch[message_id] = index
            out.append((sequence.producer, epoch, number, message_id))
            if held is not None:
                held.setdefault((sequence.producer, epoch, number), []).append(index)
            if epoch < newest:
                entry.zombies += 1
            if is_record:
                entry.stored += 1
                stored += 1
            else:
                entry.rejected += 1
                rejected += 1
            verdicts.append(verdict)
        counts = HourCount(
            hour=now // HOUR_MICROS,
            stored=stored,
            rejected=rejected,
            duplicates=duplicates,
            conflicts=conflicts,
        )
        return Settled(
            verdicts,
            reasons,
            batch.changed,
            batch.dropped,
            out,
            counts,
            duplicates,
            conflicts,
            batch.newest_epochs(),
        )

    def commit(self, settled: Settled) -> None:
        """Take a committed batch's changes (they are this tally's from now on)."""
        for (producer, epoch), entry in settled.changed.items():
            self._epochs.setdefault(producer, {})[epoch] = entry
        for producer, epoch in settled.dropped:
            self.forget(producer, epoch)

    def forget(self, producer: str, epoch: int) -> None:
        epochs = self._epochs.get(producer)
        if epochs is not None:
            epochs.pop(epoch, None)
            if not epochs:
                del self._epochs[producer]

    def drop(self, producer: str) -> None:
        """Let go of a producer's entries (a store that keeps them elsewhere too)."""
        self._epochs.pop(producer, None)


def _copy(entry: EpochEntry) -> EpochEntry:
    return msgspec.structs.replace(
        entry, gaps=list(entry.gaps), conflicted=list(entry.conflicted), ends=list(entry.ends)
    )


class _Batch:
    """The entries one batch works on: copies of those it changes, made on first touch,
    so that the tally is untouched until the batch is committed."""

    def __init__(self, committed: Mapping[str, dict[int, EpochEntry]], now: int) -> None:
        self._committed = committed
        self._now = now
        # Each producer's epochs as the batch has them so far.
        self._views: dict[str, dict[int, EpochEntry]] = {}
        self.changed: dict[tuple[str, int], EpochEntry] = {}
        self.dropped: set[tuple[str, int]] = set()

    def _view(self, producer: str) -> dict[int, EpochEntry]:
        view = self._views.get(producer)
        if view is None:
            view = self._views[producer] = dict(self._committed.get(producer, {}))
        return view

    def newest(self, producer: str) -> int:
        return newest_of(self._view(producer))

    def newest_epochs(self) -> dict[str, int]:
        return {producer: newest_of(view) for producer, view in self._views.items() if view}

    def _touch(self, producer: str, found: EpochEntry) -> EpochEntry:
        key = (producer, found.epoch)
        entry = self.changed.get(key)
        if entry is None:
            entry = self.changed[key] = _copy(found)
            self._view(producer)[found.epoch] = entry
        return entry

    def entry(self, producer: str, epoch: int) -> EpochEntry | None:
        """The batch's own copy of the entry (made, retiring a done epoch past
        MAX_EPOCHS, if need be); None when the producer holds MAX_EPOCHS epochs and
        none of them may be retired (each holds evidence of loss or is still
        publishing: `EpochEntry.done`)."""
        key = (producer, epoch)
        entry = self.changed.get(key)
        if entry is not None:
            return entry
        view = self._view(producer)
        found = view.get(epoch)
        if found is not None:
            return self._touch(producer, found)
        if view:  # a producer's first epoch skips all of this
            live = [e for e in view.values() if not e.retired]
            if len(live) >= MAX_EPOCHS:
                top = max(epoch, *(e.epoch for e in live))
                done = [e for e in live if e.epoch != top and e.done(self._now)]
                if not done:
                    return None
                self._retire(producer, min(done, key=lambda e: (e.last_seen, e.epoch)))
            if live:
                newest = max(e.epoch for e in live)
                if epoch > newest and view[newest].end is None:
                    # No longer the newest, and not said to have ended: its end is unknown.
                    self._touch(producer, view[newest])
        now = self._now
        entry = EpochEntry(producer=producer, epoch=epoch, first_seen=now, last_seen=now)
        self.dropped.discard(key)
        self.changed[key] = entry
        view[epoch] = entry
        return entry

    def _retire(self, producer: str, settled: EpochEntry) -> None:
        """Keep `settled` as a marker only, and the newest MAX_RETIRED markers."""
        marker = self._touch(producer, settled)
        marker.retired = True
        marker.hours = []
        view = self._view(producer)
        retired = sorted(e.epoch for e in view.values() if e.retired)
        for epoch in retired[: max(0, len(retired) - MAX_RETIRED)]:
            self.dropped.add((producer, epoch))
            self.changed.pop((producer, epoch), None)
            del view[epoch]

    def end(self, producer: str, epoch: int, count: int) -> None:
        """Note a count said of an earlier epoch: every distinct one is kept (MAX_ENDS,
        the largest kept), the largest is what is owed, and more than one is a conflict."""
        known = self._view(producer).get(epoch)
        if known is not None and count in known.counts_said():
            return
        ended = self.entry(producer, epoch)
        if ended is None:
            return
        ends = ended.ends = ended.counts_said()
        if len(ends) < MAX_ENDS:
            ends.append(count)
        elif count > max(ends):
            ends.remove(min(ends))
            ends.append(count)
        else:
            return
        ended.end = max(ends)
        if ended.end_said is None:
            ended.end_said = self._now
        ended.last_seen = max(ended.last_seen, self._now)


def _conflict(entry: EpochEntry, sequence: int, now: int) -> None:
    """Add `sequence` to the ranges in conflict (a new range only within MAX_GAPS)."""
    ranges = entry.conflicted
    i = bisect.bisect_right(ranges, sequence, key=_first) - 1
    if i >= 0 and ranges[i].first <= sequence <= ranges[i].last:
        return
    before = ranges[i] if i >= 0 and ranges[i].last == sequence - 1 else None
    after = ranges[i + 1] if i + 1 < len(ranges) and ranges[i + 1].first == sequence + 1 else None
    if before is not None and after is not None:
        ranges[i : i + 2] = [Gap(first=before.first, last=after.last, opened=before.opened)]
    elif before is not None:
        ranges[i] = Gap(first=before.first, last=sequence, opened=before.opened)
    elif after is not None:
        ranges[i + 1] = Gap(first=sequence, last=after.last, opened=after.opened)
    elif len(ranges) < MAX_GAPS:
        ranges.insert(i + 1, Gap(first=sequence, last=sequence, opened=now))


def _first(gap: Gap) -> int:
    return gap.first


def _take(entry: EpochEntry, sequence: int, now: int) -> bool:
    """Mark an unseen `sequence` seen; False, changing nothing, if that would open a gap
    past MAX_GAPS."""
    gaps = entry.gaps
    if sequence > entry.highest:
        if sequence > entry.highest + 1:
            if len(gaps) >= MAX_GAPS:
                return False
            # A gap an epoch's end already named opened then, not now.
            opened = now
            if entry.end_said is not None and entry.end is not None and sequence <= entry.end:
                opened = min(now, entry.end_said)
            gaps.append(Gap(first=entry.highest + 1, last=sequence - 1, opened=opened))
        entry.highest = sequence
        return True
    i = bisect.bisect_right(gaps, sequence, key=_first) - 1
    gap = gaps[i]
    if gap.first == gap.last:
        del gaps[i]
    elif sequence == gap.first:
        gaps[i] = Gap(first=sequence + 1, last=gap.last, opened=gap.opened)
    elif sequence == gap.last:
        gaps[i] = Gap(first=gap.first, last=sequence - 1, opened=gap.opened)
    else:
        if len(gaps) >= MAX_GAPS:
            return False
        gaps[i : i + 1] = [
            Gap(first=gap.first, last=sequence - 1, opened=gap.opened),
            Gap(first=sequence + 1, last=gap.last, opened=gap.opened),
        ]
    return True

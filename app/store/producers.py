"""Producer sequences and the completeness ledger: what publishers sent, against what was stored.

A publisher opts in per message with four attributes (`recordline-producer`,
`-epoch`, `-seq`, `-epoch-ended`); a store with a system of record drops a
publisher's retry of a stored sequence in the transaction that commits the rows.
The ledger keeps, per producer and epoch (`EpochEntry`), the highest sequence
seen and the gaps below it, bounded whatever a producer sends (`MAX_GAPS`,
`MAX_EPOCHS`, `HOURS_KEPT`).

Design: docs/producers.md#the-ledger
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import msgspec

from app.records import Record, Rejection, unaddressable

PRODUCER_ATTRIBUTE: Final = "recordline-producer"
EPOCH_ATTRIBUTE: Final = "recordline-epoch"
SEQUENCE_ATTRIBUTE: Final = "recordline-seq"
EPOCH_ENDED_ATTRIBUTE: Final = "recordline-epoch-ended"
SEQUENCE_ATTRIBUTES: Final = (
    PRODUCER_ATTRIBUTE,
    EPOCH_ATTRIBUTE,
    SEQUENCE_ATTRIBUTE,
    EPOCH_ENDED_ATTRIBUTE,
)

# A producer id is a key in every store and a path segment of /v1/producers/{id}:
# 256 characters name any host, pod or job, and keep a key small.
MAX_PRODUCER_LENGTH: Final = 256
# Epochs and sequences are INT64 wherever they are stored.
MAX_NUMBER: Final = 2**63 - 1
# Gaps one epoch may hold at once. Pub/Sub pushes out of order, so a busy producer
# has gaps open for as long as its messages are in flight: 1,000 covers a thousand
# messages in flight in the worst order (every other one missing), and an entry at
# the bound is ~28 KB.
MAX_GAPS: Final = 1000
# Epochs kept per producer: a producer that restarts without its state opens one,
# and a zombie (an older epoch still publishing) is told apart only while its
# epoch is kept.
MAX_EPOCHS: Final = 8
# Hours of counts kept per epoch, for `recordline audit`: a week.
HOURS_KEPT: Final = 7 * 24
HOUR_MICROS: Final = 3_600_000_000

_EPOCH_ENDED = re.compile(r"([0-9]{1,19}):([0-9]{1,19})")


class ProducerSequence(msgspec.Struct, frozen=True):
    """Where one message stands in its producer's sequence."""

    producer: str
    epoch: int
    sequence: int
    # From `recordline-epoch-ended`: an earlier epoch, and how many messages it published.
    ended_epoch: int | None = None
    ended_count: int | None = None


class SequenceError(ValueError):
    """A producer sequence attribute that cannot be read; the message names it."""


def _number(name: str, value: str) -> int:
    # ASCII digits only (str.isdigit alone takes other scripts' digits), 19 at most.
    if (
        not (value.isascii() and value.isdigit() and len(value) <= 19)
        or (number := int(value)) > MAX_NUMBER
    ):
        raise SequenceError(
            f"{name}: {_shown(value)} is not a decimal integer from 0 to 2^63-1 ({MAX_NUMBER})"
        )
    return number


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else f"{value[:40]}…")


def read_sequence(attributes: Mapping[str, str]) -> ProducerSequence | None:
    """The producer sequence `attributes` carry, None if they carry none; SequenceError
    naming the attribute when one is malformed or missing from a partial set."""
    return _read(
        attributes.get(PRODUCER_ATTRIBUTE),
        attributes.get(EPOCH_ATTRIBUTE),
        attributes.get(SEQUENCE_ATTRIBUTE),
        attributes.get(EPOCH_ENDED_ATTRIBUTE),
    )


def _read(
    producer: str | None, epoch: str | None, sequence: str | None, ended: str | None
) -> ProducerSequence | None:
    if producer is None and epoch is None and sequence is None and ended is None:
        return None
    if producer is None or epoch is None or sequence is None:
        given = (producer, epoch, sequence, ended)
        required = zip(SEQUENCE_ATTRIBUTES, given[:3], strict=True)
        absent = next(name for name, value in required if value is None)
        named = next(n for n, v in zip(SEQUENCE_ATTRIBUTES, given, strict=True) if v is not None)
        raise SequenceError(f"{absent}: missing; a message with {named} needs all three")
    # A well-formed sequence is checked in line: every sequenced message is read
    # twice (as it is validated, and as the store settles it), and a call each for
    # the id and the two numbers was most of a read. Anything else goes through the
    # checks below, which name the attribute at fault.
    if (
        0 < len(producer) <= MAX_PRODUCER_LENGTH
        and producer.strip("/")
        and epoch.isascii()
        and epoch.isdigit()
        and len(epoch) <= 19
        and sequence.isascii()
        and sequence.isdigit()
        and len(sequence) <= 19
        and (epoch_number := int(epoch)) <= MAX_NUMBER
        and (sequence_number := int(sequence)) <= MAX_NUMBER
    ):
        read = ProducerSequence(producer, epoch_number, sequence_number)
    else:
        problem = unaddressable(producer)
        if problem is None and len(producer) > MAX_PRODUCER_LENGTH:
            problem = f"{len(producer)} characters, more than {MAX_PRODUCER_LENGTH}"
        if problem is not None:
            raise SequenceError(f"{PRODUCER_ATTRIBUTE}: {problem}")
        read = ProducerSequence(
            producer=producer,
            epoch=_number(EPOCH_ATTRIBUTE, epoch),
            sequence=_number(SEQUENCE_ATTRIBUTE, sequence),
        )
    if ended is None:
        return read
    match = _EPOCH_ENDED.fullmatch(ended)
    if match is None:
        raise SequenceError(
            f"{EPOCH_ENDED_ATTRIBUTE}: {_shown(ended)} is not EPOCH:COUNT (an earlier epoch "
            "and how many messages it published)"
        )
    ended_epoch = _number(EPOCH_ENDED_ATTRIBUTE, match[1])
    ended_count = _number(EPOCH_ENDED_ATTRIBUTE, match[2])
    if ended_epoch >= read.epoch:
        raise SequenceError(
            f"{EPOCH_ENDED_ATTRIBUTE}: epoch {ended_epoch} is not before the message's "
            f"epoch {read.epoch}"
        )
    return msgspec.structs.replace(read, ended_epoch=ended_epoch, ended_count=ended_count)


def sequence_problem(attributes: Mapping[str, str]) -> str | None:
    """Why a message's sequence attributes cannot be read (naming the attribute), or
    None: they are absent, or fine. Validation rejects a message with such a reason."""
    if not (
        PRODUCER_ATTRIBUTE in attributes
        or EPOCH_ATTRIBUTE in attributes
        or SEQUENCE_ATTRIBUTE in attributes
        or EPOCH_ENDED_ATTRIBUTE in attributes
    ):
        return None
    try:
        _read(
            attributes.get(PRODUCER_ATTRIBUTE),
            attributes.get(EPOCH_ATTRIBUTE),
            attributes.get(SEQUENCE_ATTRIBUTE),
            attributes.get(EPOCH_ENDED_ATTRIBUTE),
        )
    except SequenceError as exc:
        return str(exc)
    return None


class _Attributes(msgspec.Struct):
    """The sequence attributes in a row's attribute JSON, the rest skipped unread."""

    producer: str | None = msgspec.field(default=None, name=PRODUCER_ATTRIBUTE)
    epoch: str | None = msgspec.field(default=None, name=EPOCH_ATTRIBUTE)
    sequence: str | None = msgspec.field(default=None, name=SEQUENCE_ATTRIBUTE)
    ended: str | None = msgspec.field(default=None, name=EPOCH_ENDED_ATTRIBUTE)


_decode_attributes = msgspec.json.Decoder(_Attributes).decode
# Attributes are stored as compact JSON text (msgspec writes them), so a row that
# carries no producer is told in one substring search, without decoding anything.
_PRODUCER_KEY: Final = f'"{PRODUCER_ATTRIBUTE}"'


def sequence_of(row: Record | Rejection) -> ProducerSequence | None:
    """The producer sequence a stored row's attributes carry, if a valid one.

    A malformed one is never on a record (validation rejected its message, naming
    the attribute), and a rejection with one has no place in the ledger.
    """
    text = row.attributes
    if _PRODUCER_KEY not in text:
        return None
    try:
        found = _decode_attributes(text)
        return _read(found.producer, found.epoch, found.sequence, found.ended)
    except (msgspec.DecodeError, SequenceError):
        return None


# -- the ledger ---------------------------------------------------------------------------


class Gap(msgspec.Struct, array_like=True, frozen=True):
    """Sequences `first` to `last` not seen yet; `opened` (µs) when a later one arrived."""

    first: int
    last: int
    opened: int


class HourCount(msgspec.Struct, array_like=True, frozen=True):
    """What one hour (since the Unix epoch) brought of an epoch's messages."""

    hour: int
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0


class EpochEntry(msgspec.Struct, array_like=True, kw_only=True):
    """The ledger's entry for one producer's epoch; see the module notes.

    Seen sequences are 0 to `highest` less the gaps, in order and apart. Stored
    as msgpack (`encode_entry`) in every store: a field is added at the end, with
    a default, so entries written before it still decode.
    """

    producer: str
    epoch: int
    highest: int = -1
    gaps: list[Gap] = []
    # Messages stored as records, kept as rejections, and deliveries of later copies
    # not stored (a copy Pub/Sub delivers twice counts twice: none of it is kept).
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0
    # Messages stored while a newer epoch of the producer was known.
    zombies: int = 0
    # Messages kept as rejections because they would have opened a gap past MAX_GAPS:
    # their sequences stay in gaps (counted in `rejected` too).
    refused: int = 0
    # How many messages the epoch published, as a later epoch said, and when (µs).
    end: int | None = None
    end_said: int | None = None
    first_seen: int = 0
    last_seen: int = 0
    hours: list[HourCount] = []

    @property
    def contiguous(self) -> int:
        """The highest sequence with every one below it seen (-1: not even 0)."""
        return self.gaps[0].first - 1 if self.gaps else self.highest

    def seen(self, sequence: int) -> bool:
        if sequence > self.highest:
            return False
        gaps = self.gaps
        if not gaps or sequence < gaps[0].first:
            return True
        i = bisect.bisect_right(gaps, sequence, key=_first) - 1
        return not (i >= 0 and gaps[i].first <= sequence <= gaps[i].last)

    def missing(self, now: int, grace: int) -> list[Gap]:
        """The gaps opened at least `grace` µs before `now`, and the end the epoch is
        said to have past what was seen: sequences presumed lost."""
        ranges = [g for g in self.gaps if g.opened <= now - grace]
        if (
            self.end is not None
            and self.end_said is not None
            and self.end - 1 > self.highest
            and self.end_said <= now - grace
        ):
            ranges.append(Gap(first=self.highest + 1, last=self.end - 1, opened=self.end_said))
        return ranges


def _first(gap: Gap) -> int:
    return gap.first


_encode = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(EpochEntry).decode


def encode_entry(entry: EpochEntry) -> bytes:
    return _encode(entry)


def decode_entry(data: bytes) -> EpochEntry:
    return _decode_entry(data)


def _copy(entry: EpochEntry) -> EpochEntry:
    return msgspec.structs.replace(
        entry,
        gaps=list(entry.gaps),
        # Each hour's count is replaced, never changed: the list alone is copied.
        hours=list(entry.hours),
    )


Verdict = Literal["store", "duplicate", "refuse", "again"]
"""What becomes of a sequenced row: stored (and its sequence seen), not stored (a
publisher's later copy), kept as a rejection (`refuse`: its gap would pass the
bound), or stored as any redelivery of a message stored already (`again`: the
store's own first-copy rule keeps one, and the ledger is not told twice)."""


@dataclass(slots=True)
class Settled:
    """One batch's verdicts and the entries it changed, for the store to write with its rows."""

    verdicts: list[Verdict | None]
    # Why each refused row is kept as a rejection (by position).
    reasons: dict[int, str]
    # The entries as they are after the batch, and the ones it dropped (MAX_EPOCHS).
    changed: dict[tuple[str, int], EpochEntry]
    dropped: set[tuple[str, int]] = field(default_factory=set)
    # How many rows are publishers' copies, not stored.
    duplicates: int = 0


_NO_EPOCHS: Mapping[int, EpochEntry] = {}


class Tally:
    """The ledger's entries of some producers (all those of a batch, at least), and
    the verdicts on a batch of their rows; nothing changes until the store commits
    the batch and takes `settle`'s changes."""

    def __init__(self, entries: Iterable[EpochEntry]) -> None:
        self._epochs: dict[str, dict[int, EpochEntry]] = {}
        for entry in entries:
            self._epochs.setdefault(entry.producer, {})[entry.epoch] = entry

    def entries(self, producer: str) -> dict[int, EpochEntry]:
        return self._epochs.get(producer, {})

    def producers(self) -> Iterator[str]:
        return iter(self._epochs)

    def redeliveries(self, rows: Sequence[tuple[ProducerSequence | None, str, bool]]) -> list[str]:
        """The message ids of `rows` (as `settle` takes them) whose sequence is seen
        already: only those may be redeliveries of a stored message rather than a
        publisher's copies, which the store tells apart by message id."""
        found: list[str] = []
        epochs = self._epochs
        for sequence, message_id, _ in rows:
            if sequence is None:
                continue
            entry = epochs.get(sequence.producer, _NO_EPOCHS).get(sequence.epoch)
            if (
                entry is not None
                and sequence.sequence <= entry.highest
                and entry.seen(sequence.sequence)
            ):
                found.append(message_id)
        return found

    def settle(
        self,
        rows: Sequence[tuple[ProducerSequence | None, str, bool]],
        *,
        stored_before: set[str],
        now: int,
    ) -> Settled:
        """The verdict on each of `rows` (sequence, message id, whether a record), in
        order, as one batch: a row whose sequence is seen is a duplicate unless its
        message id is stored already (`stored_before`, or earlier in the batch)."""
        batch = _Batch(self._epochs, now)
        verdicts: list[Verdict | None] = []
        reasons: dict[int, str] = {}
        ids_in_batch: set[str] = set()
        duplicates = 0
        # A batch's rows come in runs of one producer's epoch (a producer publishes
        # in order, and the batch holds what arrived together), so the entry, the
        # producer's newest epoch and the hour's counts are looked up once a run, not
        # once a row. Within a run none of them changes: only a row of another epoch
        # makes or drops an entry (an epoch's end names an earlier epoch than its row's,
        # so it drops none newer and makes none newer than that row's).
        producer: str | None = None
        epoch = newest = 0
        entry: EpochEntry | None = None
        counts = [0, 0, 0]
        for index, (sequence, message_id, is_record) in enumerate(rows):
            if sequence is None:
                verdicts.append(None)
                continue
            # Stored already, or by an earlier row of the batch: a redelivery. A copy
            # that was not stored is counted again if delivered again: `duplicates`
            # counts deliveries, which is what a store that keeps no copy can count.
            again = message_id in stored_before or message_id in ids_in_batch
            if sequence.ended_epoch is not None and sequence.ended_count is not None:
                batch.end(sequence.producer, sequence.ended_epoch, sequence.ended_count)
            if sequence.producer != producer or sequence.epoch != epoch:
                producer, epoch = sequence.producer, sequence.epoch
                entry = batch.entry(producer, epoch)
                newest = batch.newest(producer)
                if entry is not None:
                    entry.last_seen = max(entry.last_seen, now)
                    # This batch's counts for the hour, added to the entry once, at the end.
                    counts = batch.counts(entry)
            if entry is None:
                # Older than every epoch kept: stored, without deduplication.
                kept = batch.entry(sequence.producer, newest)
                assert kept is not None
                kept.zombies += 1
                kept.last_seen = max(kept.last_seen, now)
                ids_in_batch.add(message_id)
                verdicts.append("store")
                continue
            number = sequence.sequence
            if number <= entry.highest and entry.seen(number):
                if again:
                    verdicts.append("again")
                    continue
                entry.duplicates += 1
                counts[2] += 1
                duplicates += 1
                verdicts.append("duplicate")
                continue
            ids_in_batch.add(message_id)
            # The next in order, as most are: no gap to open or close.
            if number == entry.highest + 1:
                entry.highest = number
            elif not _take(entry, number, now):
                entry.refused += 1
                entry.rejected += 1
                counts[1] += 1
                reasons[index] = (
                    f"{SEQUENCE_ATTRIBUTE}: {number} of producer "
                    f"{sequence.producer!r} epoch {epoch} would open a gap past the "
                    f"{MAX_GAPS} an epoch may hold; kept to replay once its gaps close"
                )
                verdicts.append("refuse")
                continue
            if epoch < newest:
                entry.zombies += 1
            if is_record:
                entry.stored += 1
                counts[0] += 1
            else:
                entry.rejected += 1
                counts[1] += 1
            verdicts.append("store")
        batch.add_counts(now // HOUR_MICROS)
        return Settled(verdicts, reasons, batch.changed, batch.dropped, duplicates)

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
        # Per entry changed: stored, rejected and duplicates in this batch.
        self._counts: dict[tuple[str, int], list[int]] = {}

    def counts(self, entry: EpochEntry) -> list[int]:
        key = (entry.producer, entry.epoch)
        found = self._counts.get(key)
        if found is None:
            found = self._counts[key] = [0, 0, 0]
        return found

    def add_counts(self, hour: int) -> None:
        """Add the batch's counts to the hour's of each entry it changed."""
        for key, (stored, rejected, duplicates) in self._counts.items():
            entry = self.changed.get(key)
            if entry is not None:
                _count_hour(entry, hour, stored, rejected, duplicates)

    def _view(self, producer: str) -> dict[int, EpochEntry]:
        view = self._views.get(producer)
        if view is None:
            view = self._views[producer] = dict(self._committed.get(producer, {}))
        return view

    def newest(self, producer: str) -> int:
        return max(self._view(producer))

    def entry(self, producer: str, epoch: int) -> EpochEntry | None:
        """The batch's own copy of the entry, made (dropping the oldest past MAX_EPOCHS)
        if need be; None for an epoch older than all MAX_EPOCHS kept."""
        key = (producer, epoch)
        entry = self.changed.get(key)
        if entry is not None:
            return entry
        view = self._view(producer)
        found = view.get(epoch)
        if found is not None:
            entry = _copy(found)
        else:
            if len(view) >= MAX_EPOCHS:
                oldest = min(view)
                if epoch < oldest:
                    return None
                self.dropped.add((producer, oldest))
                self.changed.pop((producer, oldest), None)
                del view[oldest]
            now = self._now
            entry = EpochEntry(producer=producer, epoch=epoch, first_seen=now, last_seen=now)
        self.dropped.discard(key)
        self.changed[key] = entry
        view[epoch] = entry
        return entry

    def end(self, producer: str, epoch: int, count: int) -> None:
        """Note where an earlier epoch ended (the first word on it wins)."""
        known = self._view(producer).get(epoch)
        if known is not None and known.end is not None:
            return
        ended = self.entry(producer, epoch)
        if ended is None:
            return
        ended.end = count
        ended.end_said = self._now
        ended.last_seen = max(ended.last_seen, self._now)


def _count_hour(entry: EpochEntry, hour: int, stored: int, rejected: int, duplicates: int) -> None:
    """Add to `hour`'s counts of `entry` (made if need be); hours past HOURS_KEPT go."""
    hours = entry.hours
    i = len(hours) - 1 if hours and hours[-1].hour == hour else None
    if i is None:
        i = bisect.bisect_left(hours, hour, key=_hour_of)
        if i == len(hours) or hours[i].hour != hour:
            hours.insert(i, HourCount(hour=hour))
    was = hours[i]
    hours[i] = HourCount(
        hour=hour,
        stored=was.stored + stored,
        rejected=was.rejected + rejected,
        duplicates=was.duplicates + duplicates,
    )
    oldest = hour - HOURS_KEPT
    while hours and hours[0].hour <= oldest:
        hours.pop(0)


def _hour_of(count: HourCount) -> int:
    return count.hour


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


# -- reading the ledger ---------------------------------------------------------------------


class ProducerEntries(msgspec.Struct, frozen=True):
    """A producer's entries, oldest epoch first."""

    producer: str
    epochs: list[EpochEntry]


class Completeness(Protocol):
    """What a store with a system of record tells of its ledger."""

    async def producers(self, after: str, limit: int) -> list[ProducerEntries]:
        """At most `limit` producers after `after`, in id order."""

    async def producer(self, producer: str) -> ProducerEntries | None:
        """One producer's entries; None if the ledger has none."""


def grouped(entries: Iterable[EpochEntry]) -> list[ProducerEntries]:
    """Entries in (producer, epoch) order, grouped by producer."""
    out: list[ProducerEntries] = []
    for entry in entries:
        if out and out[-1].producer == entry.producer:
            out[-1].epochs.append(entry)
        else:
            out.append(ProducerEntries(entry.producer, [entry]))
    return out

"""Producer sequences and the completeness ledger: what publishers sent, against what was stored.

The four `recordline-` attributes are claims, not an identity: Pub/Sub does not
say who published a message. Per producer and epoch (`EpochEntry`) the ledger
keeps the highest sequence seen, the gaps below it, the sequences two different
messages claimed and what later epochs said of its end, bounded whatever a
producer sends; a store settles each batch against it (app/store/tally.py).

Design: docs/producers.md#the-ledger
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Final, Literal, Protocol

import msgspec

from app.records import DAY_MICROS, Record, Rejection, moment, rfc3339, unaddressable

PRODUCER_ATTRIBUTE: Final = "recordline-producer"
EPOCH_ATTRIBUTE: Final = "recordline-epoch"
SEQUENCE_ATTRIBUTE: Final = "recordline-seq"
EPOCH_ENDED_ATTRIBUTE: Final = "recordline-epoch-ended"
# Where an operator sets a producer's key (app/ingest/signing.py): its signature.
SIGNATURE_ATTRIBUTE: Final = "recordline-signature"
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
# How far an epoch may be past its message's publish time read as microseconds.
# `SequencedPublisher`'s epoch is its start time in microseconds, before any of its
# publish times; counters (0, 1, 2), seconds and milliseconds are far below theirs.
# An epoch later than that is no start time and no counter a publisher reached: an
# epoch near 2^63 would outrank every real one for good. A day leaves a publisher's
# clock room to be wrong; an epoch of nanoseconds is past it, and refused.
EPOCH_LEAD_MICROS: Final = DAY_MICROS
# Gaps one epoch may hold at once. Pub/Sub pushes out of order, so a busy producer
# has gaps open for as long as its messages are in flight: 1,000 covers a thousand
# messages in flight in the worst order (every other one missing), and an entry at
# the bound is ~28 KB. Ranges of sequences in conflict are held to the same bound.
MAX_GAPS: Final = 1000
# Epochs kept per producer: a producer that restarts without its state opens one,
# and a zombie (an older epoch still publishing) is told apart only while its
# epoch is kept. A new epoch past them retires a settled one (no gap, nothing
# owed at its end) that is done: its end declared, or not heard of for
# EPOCH_QUIET_MICROS; the one heard of longest ago. An epoch with evidence of loss,
# or one still publishing, is never retired to make room: newer epochs are forged
# as easily as they are opened.
MAX_EPOCHS: Final = 8
# Retired epochs remembered per producer (a few bytes each): a late message of one
# is a zombie's, stored without deduplication, and opens no false gap.
MAX_RETIRED: Final = 32
# Different counts later epochs may say an epoch published: more than one is a
# conflict, and a ninth is kept only if larger than every one kept.
MAX_ENDS: Final = 8
# The most sequences a declaration (`recordline-epoch-ended`) can add to what is
# missing past the highest one seen. A publisher's tail lost in a crash is what it
# had in flight (the client's batches and flow control: thousands); a count of more
# is no count the producer could have reached unseen: it adds nothing, and is
# named as a conflict.
MAX_DECLARED_TAIL: Final = 1_000_000
# Hours of counts the audit reads: a week.
HOURS_KEPT: Final = 7 * 24
HOUR_MICROS: Final = 3_600_000_000
# How long an epoch with no end declared is not heard of before a newer one may
# retire it: a publisher that is still up publishes (or is idle) within the hour,
# one that restarted without its state has gone quiet by then.
EPOCH_QUIET_MICROS: Final = HOUR_MICROS

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


def read_sequence(
    attributes: Mapping[str, str], publish_time: int | None = None
) -> ProducerSequence | None:
    """The producer sequence `attributes` carry, None if they carry none; SequenceError
    naming the attribute when one is malformed or missing from a partial set, or when
    the epoch is past what `publish_time` (µs, if given) allows."""
    return _read(
        attributes.get(PRODUCER_ATTRIBUTE),
        attributes.get(EPOCH_ATTRIBUTE),
        attributes.get(SEQUENCE_ATTRIBUTE),
        attributes.get(EPOCH_ENDED_ATTRIBUTE),
        publish_time,
    )


def _read(
    producer: str | None,
    epoch: str | None,
    sequence: str | None,
    ended: str | None,
    publish_time: int | None = None,
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
    if publish_time is not None and read.epoch > publish_time + EPOCH_LEAD_MICROS:
        raise SequenceError(
            f"{EPOCH_ATTRIBUTE}: {read.epoch} is more than a day past the message's publish "
            f"time ({rfc3339(moment(publish_time))}) read as microseconds since 1970: no "
            "publisher started an epoch then (a counter, or a start time in seconds, "
            "milliseconds or microseconds, is below it)"
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


def sequence_problem(attributes: Mapping[str, str], publish_time: int | None = None) -> str | None:
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
        read_sequence(attributes, publish_time)
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
_UNSIGNED: Final = f"{SIGNATURE_ATTRIBUTE}:"


def sequence_of(row: Record | Rejection) -> ProducerSequence | None:
    """The producer sequence a stored row's attributes carry, if a valid one.

    A malformed one is never on a record (validation rejected its message, naming
    the attribute), and a rejection with one has no place in the ledger; nor has a
    message rejected for its signature: an impostor's, it claims nothing.
    """
    text = row.attributes
    if _PRODUCER_KEY not in text:
        return None
    if type(row) is Rejection and row.reason.startswith(_UNSIGNED):
        return None
    try:
        found = _decode_attributes(text)
        return _read(found.producer, found.epoch, found.sequence, found.ended, row.publish_time)
    except (msgspec.DecodeError, SequenceError):
        return None


# -- what a message is, to tell a retry from another message ----------------------------------

_decode_attribute_map = msgspec.json.Decoder(dict[str, str]).decode
_encode_sorted = msgspec.json.Encoder(order="sorted").encode


def message_digest(row: Record | Rejection) -> bytes:
    """16 bytes that differ between two messages unless they are stored alike: the same
    payload as stored (a record's id, event time and data; a rejection's bytes as
    received) and the same attributes. A publisher's retry of a message has its digest,
    another message has not. The attributes are taken in key order (Pub/Sub gives
    none); every part is length-prefixed, so no two messages' parts run together alike.

    It is computed from stored rows as from incoming ones, so a store keeps no digest:
    only rows under a sequence seen already are ever digested.
    """
    if isinstance(row, Rejection):
        parts = [b"rejection", row.data]
    else:
        timestamp = b"" if row.timestamp is None else str(row.timestamp).encode()
        parts = [b"record", row.id.encode(errors="surrogatepass"), timestamp, row.data.encode()]
    parts.append(_encode_sorted(_decode_attribute_map(row.attributes)))
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


# -- the ledger ---------------------------------------------------------------------------


class Gap(msgspec.Struct, array_like=True, frozen=True):
    """Sequences `first` to `last`; `opened` (µs) when they were first owed (a gap) or
    first claimed twice (a conflict)."""

    first: int
    last: int
    opened: int


class HourCount(msgspec.Struct, array_like=True, frozen=True):
    """What one hour (since the Unix epoch) brought of messages with a producer sequence:
    stored as records, kept as rejections, not stored as a publisher's copies, and of
    those stored or kept, how many under a sequence another message had taken."""

    hour: int
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0
    conflicts: int = 0

    def plus(self, other: HourCount) -> HourCount:
        return HourCount(
            hour=self.hour,
            stored=self.stored + other.stored,
            rejected=self.rejected + other.rejected,
            duplicates=self.duplicates + other.duplicates,
            conflicts=self.conflicts + other.conflicts,
        )


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
    # Messages stored while a newer epoch of the producer was known, or after this
    # one was retired.
    zombies: int = 0
    # Messages kept as rejections because they would have opened a gap past MAX_GAPS:
    # their sequences stay in gaps (counted in `rejected` too).
    refused: int = 0
    # The largest count later epochs said this one published, and when one was first
    # said (µs); every count said is in `ends`, and `published` is what is owed.
    end: int | None = None
    end_said: int | None = None
    first_seen: int = 0
    last_seen: int = 0
    # Per-hour counts, kept by entries written before the audit's hours were kept
    # for the whole ledger; read by nothing now.
    hours: list[HourCount] = []
    # Messages stored under a sequence another message (another payload or other
    # attributes) had taken, and those sequences, as ranges (at most MAX_GAPS).
    conflicts: int = 0
    conflicted: list[Gap] = []
    # Every count later epochs said this one published (at most MAX_ENDS, the
    # largest kept): more than one, or one below a sequence seen, is a conflict.
    ends: list[int] = []
    # Retired to make room for a newer epoch (settled: nothing owed): kept as a
    # marker so that a late message of it is a zombie's, not a new epoch.
    retired: bool = False
    # Messages stored with no place in the ledger: their epoch was new while the
    # producer held MAX_EPOCHS epochs none of which was done with (each with
    # evidence of loss, or heard of within EPOCH_QUIET_MICROS and no end declared),
    # counted on its newest epoch.
    untracked: int = 0

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

    def counts_said(self) -> list[int]:
        """Every count later epochs said this one published."""
        # An entry written before every count was kept holds its one in `end`.
        return list(self.ends) if self.ends or self.end is None else [self.end]

    @property
    def published(self) -> int | None:
        """The largest count said that can be believed: at most MAX_DECLARED_TAIL past
        the highest sequence seen."""
        limit = self.highest + 1 + MAX_DECLARED_TAIL
        return max((c for c in self.counts_said() if c <= limit), default=None)

    def tail(self) -> Gap | None:
        """The sequences a later epoch said this one published past the highest seen,
        owed since it was said."""
        end = self.published
        if end is None or self.end_said is None or end - 1 <= self.highest:
            return None
        return Gap(first=self.highest + 1, last=end - 1, opened=self.end_said)

    def owed(self) -> list[Gap]:
        """Every range of sequences not seen: the gaps, then the tail said."""
        tail = self.tail()
        return [*self.gaps, tail] if tail is not None else list(self.gaps)

    def missing(self, now: int, grace: int) -> list[Gap]:
        """The ranges owed since at least `grace` µs before `now`: presumed lost."""
        return [g for g in self.owed() if g.opened <= now - grace]

    @property
    def settled(self) -> bool:
        """Nothing owed: no gap, and nothing said past the highest sequence seen."""
        return not self.gaps and self.tail() is None

    def done(self, now: int) -> bool:
        """Settled, and over: its end declared without conflict, or not heard of for
        EPOCH_QUIET_MICROS. Only such an epoch is retired to make room."""
        if not self.settled:
            return False
        ended = self.end is not None and not self.end_conflict
        return ended or self.last_seen <= now - EPOCH_QUIET_MICROS

    @property
    def end_conflict(self) -> bool:
        """Later epochs disagree on how many messages this one published, or one said
        fewer than were seen, or more than can be believed (MAX_DECLARED_TAIL)."""
        ends = self.counts_said()
        if not ends:
            return False
        return (
            len(ends) > 1
            or min(ends) <= self.highest
            or max(ends) > self.highest + 1 + MAX_DECLARED_TAIL
        )


def _first(gap: Gap) -> int:
    return gap.first


_encode = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(EpochEntry).decode


def encode_entry(entry: EpochEntry) -> bytes:
    return _encode(entry)


def decode_entry(data: bytes) -> EpochEntry:
    return _decode_entry(data)


# -- what the audit reads -------------------------------------------------------------------

RangeKind = Literal["gap", "conflict", "ends", "unknown"]


class LedgerRange(msgspec.Struct, array_like=True, frozen=True):
    """One finding of the ledger on one producer's epoch, as the audit reads them:
    `gap`, sequences `first` to `last` owed since `opened` (missing once older than
    the grace period); `conflict`, sequences `first` to `last` claimed by two
    different messages, first at `opened`; `ends`, later epochs said it published
    from `first` to `last` messages (they disagree, or with what was seen), first at
    `opened`; `unknown`, an epoch a later one began without saying how it ended,
    last heard of at `opened` (`first` and `last` are -1)."""

    producer: str
    epoch: int
    kind: RangeKind
    first: int
    last: int
    opened: int


def entry_ranges(entry: EpochEntry, newest: int) -> list[LedgerRange]:
    """What `entry` holds for the audit, `newest` being its producer's newest epoch."""
    out = [
        LedgerRange(entry.producer, entry.epoch, "gap", g.first, g.last, g.opened)
        for g in entry.owed()
    ]
    out += [
        LedgerRange(entry.producer, entry.epoch, "conflict", g.first, g.last, g.opened)
        for g in entry.conflicted
    ]
    if entry.end_conflict and entry.end_said is not None:
        ends = entry.counts_said()
        out.append(
            LedgerRange(entry.producer, entry.epoch, "ends", min(ends), max(ends), entry.end_said)
        )
    if entry.end is None and entry.epoch < newest:
        out.append(LedgerRange(entry.producer, entry.epoch, "unknown", -1, -1, entry.last_seen))
    return out


class ProducerEntries(msgspec.Struct, frozen=True):
    """A producer's entries, oldest epoch first."""

    producer: str
    epochs: list[EpochEntry]


class LedgerAudit(msgspec.Struct, kw_only=True, frozen=True):
    """What the ledger says of hours `first_hour` to `last_hour`, gaps counted missing up
    to `cutoff` (µs: now less the grace period)."""

    # Counts of the hours that have any, in hour order.
    hours: list[HourCount]
    # Sequences missing now, by the hour their gap opened.
    missing_by_hour: dict[int, int]
    # The oldest missing ranges and conflicts opened in the range (at most `limit`
    # each), and how many there are.
    missing: list[LedgerRange]
    missing_ranges: int
    conflicts: list[LedgerRange]
    conflict_ranges: int
    # Sequences in conflict among those ranges, and epochs whose declared ends disagree.
    conflicting_sequences: int
    conflicting_ends: int
    unknown_ends: int


class Worst(msgspec.Struct, kw_only=True, frozen=True):
    """The producers missing most (sequences missing now) and in conflict most
    (sequences claimed twice, and epochs whose ends disagree, first seen lately), at
    most `top` each."""

    missing: dict[str, int]
    conflicts: dict[str, int]


class Completeness(Protocol):
    """What a store with a system of record tells of its ledger."""

    async def producers(self, after: str, limit: int) -> list[ProducerEntries]:
        """At most `limit` producers after `after`, in id order."""

    async def producer(self, producer: str) -> ProducerEntries | None:
        """One producer's entries; None if the ledger has none."""

    async def audit(self, since: int, until: int, *, cutoff: int, limit: int) -> LedgerAudit:
        """The hours from `since` to `until` (µs), and the ranges opened in that time;
        whatever the number of producers, one pass over what was counted by hour and
        over the ranges found, never over every producer."""

    async def worst(self, *, cutoff: int, since: int, top: int) -> Worst:
        """The producers missing most (gaps opened by `cutoff`, µs) and in conflict
        most (conflicts first seen from `since`)."""


def grouped(entries: Iterable[EpochEntry]) -> list[ProducerEntries]:
    """Entries in (producer, epoch) order, grouped by producer."""
    out: list[ProducerEntries] = []
    for entry in entries:
        if out and out[-1].producer == entry.producer:
            out[-1].epochs.append(entry)
        else:
            out.append(ProducerEntries(entry.producer, [entry]))
    return out


def hours_of(since: int, until: int) -> tuple[int, int]:
    """The first and last hour (since the Unix epoch) of the time from `since` to `until`."""
    return since // HOUR_MICROS, (until - 1) // HOUR_MICROS

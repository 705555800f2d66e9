"""Reading the completeness ledger: producers, their epochs, gaps and conflicts, and the audit.

The ledger (app.store.producers) says per producer and epoch which sequences
were seen; here it becomes what an operator reads: the gaps, which of them are
missing (older than the grace period, RECORDLINE_PRODUCER_GRACE_SECONDS), the
sequences two different messages claimed, how each epoch ended, and per hour
what was received, stored, rejected, dropped as a publisher's copy, stored in
conflict and found missing (`GET /v1/audit`, `recordline audit`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal

import msgspec

from app.errors import BadParameter, MaskedLookUp, NotFound, RetryLater
from app.query.mask import Pseudonyms
from app.query.page_token import PageToken, PageTokens
from app.query.served import served
from app.records import micros, moment
from app.store import Store
from app.store.producers import (
    HOUR_MICROS,
    HOURS_KEPT,
    Completeness,
    EpochEntry,
    HourCount,
    ProducerEntries,
    Worst,
    hours_of,
)
from app.store.tally import newest_of

log = logging.getLogger(__name__)

DEFAULT_PRODUCERS = 20
MAX_PRODUCERS = 100
# Gaps a listing shows per epoch: a producer's own page shows them all (at most
# MAX_GAPS an epoch), a page of a hundred producers would show 800,000.
LISTED_GAPS = 10
# Missing ranges an audit names: the oldest first, which is what an operator
# starts with; the counts cover every one.
AUDIT_RANGES = 100
# The longest range an audit covers: the hours the ledger keeps counts for.
MAX_AUDIT_HOURS = HOURS_KEPT
# Conflicts stay in the ledger; the metric counts those first seen within a day, so
# that its alert closes a day after the last one (the audit still names them all).
CONFLICTS_WATCHED_SECONDS = 86_400.0

EpochEnd = Literal["open", "said", "unknown"]


class GapView(msgspec.Struct, kw_only=True, frozen=True):
    """Sequences `first` to `last` of an epoch, not seen."""

    first: int
    last: int
    count: int
    # When a later sequence (or a later epoch naming this one's end) showed them owed.
    opened_at: datetime
    # Older than the grace period: presumed lost until they arrive.
    missing: bool


class ConflictView(msgspec.Struct, kw_only=True, frozen=True):
    """Sequences `first` to `last` of an epoch, each claimed by two different messages
    (another payload, or other attributes), both stored."""

    first: int
    last: int
    count: int
    # When the first of them was claimed again.
    opened_at: datetime


class EpochView(msgspec.Struct, kw_only=True, frozen=True):
    epoch: int
    # The highest sequence with every one from 0 seen (-1: not even 0 yet).
    contiguous: int
    highest: int
    # `open`: the producer's newest epoch; `said`: a later epoch said how many messages
    # it published (`published`); `unknown`: a later epoch began without saying, so a
    # gap at its end cannot be seen.
    end: EpochEnd
    # The most messages later epochs said it published that can be believed (at most
    # a million past `highest`): what is owed past `highest`; and every count said.
    published: int | None
    ends_said: list[int]
    # Later epochs said different counts, or one said fewer than were seen, or more
    # than can be believed: a conflict, whatever the audit counts as missing.
    end_conflict: bool
    gaps: list[GapView]
    # How many gaps there are (a listing shows the first LISTED_GAPS).
    gap_count: int
    # Sequences in missing gaps.
    missing: int
    stored: int
    rejected: int
    duplicates: int
    # Messages stored under a sequence another message had taken, and those sequences
    # (a listing shows the first LISTED_GAPS ranges; `conflict_range_count` how many).
    conflicts: int
    conflicted: list[ConflictView]
    conflict_range_count: int
    # Stored while a newer epoch of the producer was known (a zombie publisher, or the
    # last of this epoch's messages arriving late), or once it was retired.
    zombies: int
    # Kept as rejections because they would have opened a gap past the bound.
    refused: int
    # Stored with no place in the ledger: a new epoch came while every epoch kept
    # held evidence of loss.
    untracked: int
    # Settled and retired to make room for newer epochs: kept so that a late message
    # of it is a zombie's.
    retired: bool
    first_seen: datetime
    last_seen: datetime


class ProducerView(msgspec.Struct, kw_only=True, frozen=True):
    producer: str
    newest_epoch: int
    missing: int
    # Messages stored under a sequence another had taken, and epochs whose ends disagree.
    conflicts: int
    end_conflicts: int
    epochs: list[EpochView]


class ProducersPage(msgspec.Struct, kw_only=True, frozen=True):
    producers: list[ProducerView]
    # Follow it for the next producers; null after the last.
    next_page_token: str | None


class AuditHour(msgspec.Struct, kw_only=True, frozen=True):
    hour: datetime
    # Messages with a producer sequence delivered that hour: stored, rejected, or not
    # stored as a publisher's copy.
    received: int
    stored: int
    rejected: int
    duplicates: int
    # Of those stored or rejected, how many under a sequence another message had taken.
    conflicts: int
    # Sequences missing now whose gap opened that hour.
    missing: int


class MissingRange(msgspec.Struct, kw_only=True, frozen=True):
    producer: str
    epoch: int
    first: int
    last: int
    opened_at: datetime


class ConflictRange(msgspec.Struct, kw_only=True, frozen=True):
    """`sequences`: sequences `first` to `last` claimed by two different messages;
    `ends`: later epochs said the epoch published from `first` to `last` messages
    (they disagree, or with the sequences seen)."""

    producer: str
    epoch: int
    kind: Literal["sequences", "ends"]
    first: int
    last: int
    opened_at: datetime


class AuditReport(msgspec.Struct, kw_only=True, frozen=True):
    since: datetime
    until: datetime
    hours: list[AuditHour]
    missing: int
    # The oldest missing ranges opened in the range (at most AUDIT_RANGES of them).
    missing_ranges: list[MissingRange]
    missing_range_count: int
    # Epochs that ended (a later one began) without saying how many messages they
    # published, last heard of in the range: a gap at their end cannot be seen.
    unknown_ends: int
    # Sequences claimed by two different messages, and epochs whose ends disagree,
    # first seen in the range; the oldest of them (at most AUDIT_RANGES).
    conflicts: int = 0
    conflicting_ends: int = 0
    conflict_ranges: list[ConflictRange] = []
    conflict_range_count: int = 0


def epoch_view(
    entry: EpochEntry, *, newest: int, now: int, grace: int, gaps: int | None
) -> EpochView:
    """An entry as the API shows it, with its first `gaps` gaps and ranges in conflict
    (None: all of them)."""
    missing = entry.missing(now, grace)
    listed = entry.owed()
    cutoff = now - grace
    end: EpochEnd = (
        "said" if entry.end is not None else "open" if entry.epoch == newest else "unknown"
    )
    return EpochView(
        epoch=entry.epoch,
        contiguous=entry.contiguous,
        highest=entry.highest,
        end=end,
        published=entry.published,
        ends_said=sorted(entry.counts_said()),
        end_conflict=entry.end_conflict,
        gaps=[
            GapView(
                first=g.first,
                last=g.last,
                count=g.last - g.first + 1,
                opened_at=moment(g.opened),
                missing=g.opened <= cutoff,
            )
            for g in listed[:gaps]
        ],
        gap_count=len(listed),
        missing=sum(g.last - g.first + 1 for g in missing),
        stored=entry.stored,
        rejected=entry.rejected,
        duplicates=entry.duplicates,
        conflicts=entry.conflicts,
        conflicted=[
            ConflictView(
                first=g.first, last=g.last, count=g.last - g.first + 1, opened_at=moment(g.opened)
            )
            for g in entry.conflicted[:gaps]
        ],
        conflict_range_count=len(entry.conflicted),
        zombies=entry.zombies,
        refused=entry.refused,
        untracked=entry.untracked,
        retired=entry.retired,
        first_seen=moment(entry.first_seen),
        last_seen=moment(entry.last_seen),
    )


def producer_view(
    found: ProducerEntries,
    *,
    now: int,
    grace: int,
    gaps: int | None,
    named: Callable[[str], str] = str,
) -> ProducerView:
    epochs_by = {e.epoch: e for e in found.epochs}
    newest = newest_of(epochs_by)
    epochs = [epoch_view(e, newest=newest, now=now, grace=grace, gaps=gaps) for e in found.epochs]
    return ProducerView(
        producer=named(found.producer),
        newest_epoch=newest,
        missing=sum(e.missing for e in epochs),
        conflicts=sum(e.conflicts for e in epochs),
        end_conflicts=sum(e.end_conflict for e in epochs),
        epochs=epochs,
    )


class Producers:
    """The ledger's reads for the API, the audit and the `missing` metric."""

    def __init__(
        self,
        store: Store,
        *,
        tokens: PageTokens,
        grace_seconds: float,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._grace = int(grace_seconds * 1_000_000)
        self._clock = clock
        # Where a producer's id is masked (the producer attribute is), for readers who
        # are not operators: each id as its pseudonym, page tokens sealed (their cursor
        # is an id), and no look-up by id.
        self._pseudonyms: Pseudonyms | None = None

    def masked(self, pseudonyms: Pseudonyms) -> Producers:
        """The same ledger as readers who may not see producers' ids read it."""
        masked = copy.copy(self)
        masked._tokens = self._tokens.sealed()
        masked._pseudonyms = pseudonyms
        return masked

    def _named(self, producer: str) -> str:
        return producer if self._pseudonyms is None else self._pseudonyms.of(producer)

    def _now(self) -> int:
        return self._clock() // 1000

    def _book(self) -> Completeness:
        ledger = self._store.completeness
        if ledger is None:
            raise NotFound(
                "this store keeps no ledger of producer sequences: BigQuery alone stores "
                "every copy it is given (records_unique(since, until) leaves later copies "
                "out); a serving tier or DuckDB keeps one"
            )
        return ledger

    async def page(self, *, limit: int, page_token: str | None) -> ProducersPage:
        if not 1 <= limit <= MAX_PRODUCERS:
            raise BadParameter("limit", f"must be between 1 and {MAX_PRODUCERS}")
        after = ""
        if page_token is not None:
            token = self._tokens.decode(page_token)
            if token.listing != "producers":
                raise BadParameter("page_token", f"was issued by /v1/{token.listing or 'records'}")
            after = token.after_message_id
        found = await self._book().producers(after, limit)
        now = self._now()
        views = [
            producer_view(p, now=now, grace=self._grace, gaps=LISTED_GAPS, named=self._named)
            for p in found
        ]
        token_next = None
        if len(found) == limit:
            token_next = self._tokens.encode(PageToken(0, found[-1].producer, listing="producers"))
        served(len(views), masked=self._pseudonyms is not None)
        return ProducersPage(producers=views, next_page_token=token_next)

    async def producer(self, producer: str) -> ProducerView:
        if self._pseudonyms is not None:
            raise MaskedLookUp(
                "a producer's id is masked for readers who are not operators "
                "(RECORDLINE_MASK_ATTRIBUTES names recordline-producer): /v1/producers "
                "lists each by its pseudonym"
            )
        found = await self._book().producer(producer)
        if found is None:
            raise NotFound(f"no producer {producer!r} in the ledger")
        served(1, masked=False)
        return producer_view(found, now=self._now(), grace=self._grace, gaps=None)

    async def worst(self, top: int) -> Worst:
        """The `top` producers missing most, and in conflict most (conflicts first seen
        within CONFLICTS_WATCHED_SECONDS: the metric falls once they stop coming)."""
        now = self._now()
        since = now - int(CONFLICTS_WATCHED_SECONDS * 1_000_000)
        return await self._book().worst(cutoff=now - self._grace, since=since, top=top)

    async def audit(self, since: datetime, until: datetime | None = None) -> AuditReport:
        now = self._now()
        start = micros(since)
        end = now if until is None else micros(until)
        if end <= start:
            raise BadParameter("until", "must be later than since")
        first_hour, last_hour = hours_of(start, end)
        if last_hour - first_hour + 1 > MAX_AUDIT_HOURS:
            raise BadParameter(
                "until",
                f"at most {MAX_AUDIT_HOURS} hours after since: the ledger keeps counts by "
                "hour for a week",
            )
        found = await self._book().audit(start, end, cutoff=now - self._grace, limit=AUDIT_RANGES)
        counted = {h.hour: h for h in found.hours}
        hours = []
        for hour in range(first_hour, last_hour + 1):
            count = counted.get(hour) or HourCount(hour=hour)
            hours.append(
                AuditHour(
                    hour=moment(hour * HOUR_MICROS),
                    received=count.stored + count.rejected + count.duplicates,
                    stored=count.stored,
                    rejected=count.rejected,
                    duplicates=count.duplicates,
                    conflicts=count.conflicts,
                    missing=found.missing_by_hour.get(hour, 0),
                )
            )
        # Its rows are the hours it counts (the ranges it lists are of those hours).
        served(len(hours), masked=self._pseudonyms is not None)
        return AuditReport(
            since=since,
            until=moment(end) if until is None else until,
            hours=hours,
            missing=sum(found.missing_by_hour.values()),
            missing_ranges=[
                MissingRange(
                    producer=self._named(r.producer),
                    epoch=r.epoch,
                    first=r.first,
                    last=r.last,
                    opened_at=moment(r.opened),
                )
                for r in found.missing
            ],
            missing_range_count=found.missing_ranges,
            unknown_ends=found.unknown_ends,
            conflicts=found.conflicting_sequences,
            conflicting_ends=found.conflicting_ends,
            conflict_ranges=[
                ConflictRange(
                    producer=self._named(r.producer),
                    epoch=r.epoch,
                    kind="sequences" if r.kind == "conflict" else "ends",
                    first=r.first,
                    last=r.last,
                    opened_at=moment(r.opened),
                )
                for r in found.conflicts
            ],
            conflict_range_count=found.conflict_ranges,
        )


# How often each instance reads the ledger for the `missing` and `conflicts`
# metrics: a gap turns missing at the grace period's end, so a minute more is
# nothing, and the read is of what is owed and in conflict (one query each), not
# of every producer.
WATCH_SECONDS = 60.0
# Producers each metric names at most, those worst off: one series each, and a
# producer id is whatever a publisher sent. The others still count in the audit.
WATCHED_PRODUCERS = 100


class MissingWatch:
    """Keeps `missing` (sequences missing per producer) and `conflicts` (sequences in
    conflict, and epochs whose ends disagree), for the `WATCHED_PRODUCERS` worst of
    each, as the ledger says, every WATCH_SECONDS: what `recordline.producer.missing`
    and `recordline.producer.conflicts` report. A producer no longer named is
    reported at 0 once, so its series falls to 0 (an alert on it closes) before it
    stops."""

    def __init__(self, producers: Producers, *, seconds: float = WATCH_SECONDS) -> None:
        self._producers = producers
        self._seconds = seconds
        self.missing: dict[str, int] = {}
        self.conflicts: dict[str, int] = {}

    async def refresh(self) -> None:
        found = await self._producers.worst(WATCHED_PRODUCERS)
        self.missing = _closed_once(self.missing, found.missing)
        self.conflicts = _closed_once(self.conflicts, found.conflicts)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except RetryLater as exc:  # the store is down: readiness says so already
                log.warning("producers' missing sequences not read: %s", exc.detail)
            await asyncio.sleep(self._seconds)


def _closed_once(was: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    closed = {p: 0 for p, count in was.items() if count and p not in now}
    return {**closed, **now}

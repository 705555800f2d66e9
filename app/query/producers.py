"""Reading the completeness ledger: producers, their epochs and gaps, and the audit by hour.

The ledger (app.store.producers) says per producer and epoch which sequences
were seen; here it becomes what an operator reads: the gaps, which of them are
missing (older than the grace period, RECORDLINE_PRODUCER_GRACE_SECONDS), how
each epoch ended, and per hour what was received, stored, rejected, dropped as a
publisher's copy and found missing (`GET /v1/audit`, `recordline audit`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Literal

import msgspec

from app.errors import BadParameter, NotFound, RetryLater
from app.query.page_token import PageToken, PageTokens
from app.records import micros, moment
from app.store import Store
from app.store.producers import (
    HOUR_MICROS,
    HOURS_KEPT,
    Completeness,
    EpochEntry,
    Gap,
    ProducerEntries,
)

log = logging.getLogger(__name__)

DEFAULT_PRODUCERS = 20
MAX_PRODUCERS = 100
# Gaps a listing shows per epoch: a producer's own page shows them all (at most
# MAX_GAPS an epoch), a page of a hundred producers would show 800,000.
LISTED_GAPS = 10
# Producers read per store call when every one is wanted (the audit, the metric).
_SWEEP = 500
# Missing ranges an audit names: the oldest first, which is what an operator
# starts with; the counts cover every one.
AUDIT_RANGES = 100
# The longest range an audit covers: the hours the ledger keeps counts for.
MAX_AUDIT_HOURS = HOURS_KEPT

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


class EpochView(msgspec.Struct, kw_only=True, frozen=True):
    epoch: int
    # The highest sequence with every one from 0 seen (-1: not even 0 yet).
    contiguous: int
    highest: int
    # `open`: the producer's newest epoch; `said`: a later epoch said how many messages
    # it published (`published`); `unknown`: a later epoch began without saying, so a
    # gap at its end cannot be seen.
    end: EpochEnd
    published: int | None
    gaps: list[GapView]
    # How many gaps there are (a listing shows the first LISTED_GAPS).
    gap_count: int
    # Sequences in missing gaps.
    missing: int
    stored: int
    rejected: int
    duplicates: int
    # Stored while a newer epoch of the producer was known: a zombie publisher, or
    # the last of this epoch's messages arriving late.
    zombies: int
    # Kept as rejections because they would have opened a gap past the bound.
    refused: int
    first_seen: datetime
    last_seen: datetime


class ProducerView(msgspec.Struct, kw_only=True, frozen=True):
    producer: str
    newest_epoch: int
    missing: int
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
    # Sequences missing now whose gap opened that hour.
    missing: int


class MissingRange(msgspec.Struct, kw_only=True, frozen=True):
    producer: str
    epoch: int
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
    # published, active in the range: a gap at their end cannot be seen.
    unknown_ends: int


def epoch_view(
    entry: EpochEntry, *, newest: int, now: int, grace: int, gaps: int | None
) -> EpochView:
    """An entry as the API shows it, with its first `gaps` gaps (None: all of them)."""
    missing = entry.missing(now, grace)
    listed = list(entry.gaps)
    if entry.end is not None and entry.end - 1 > entry.highest and entry.end_said is not None:
        listed.append(Gap(first=entry.highest + 1, last=entry.end - 1, opened=entry.end_said))
    cutoff = now - grace
    end: EpochEnd = (
        "said" if entry.end is not None else "open" if entry.epoch == newest else "unknown"
    )
    return EpochView(
        epoch=entry.epoch,
        contiguous=entry.contiguous,
        highest=entry.highest,
        end=end,
        published=entry.end,
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
        zombies=entry.zombies,
        refused=entry.refused,
        first_seen=moment(entry.first_seen),
        last_seen=moment(entry.last_seen),
    )


def producer_view(
    found: ProducerEntries, *, now: int, grace: int, gaps: int | None
) -> ProducerView:
    newest = max(e.epoch for e in found.epochs)
    epochs = [epoch_view(e, newest=newest, now=now, grace=grace, gaps=gaps) for e in found.epochs]
    return ProducerView(
        producer=found.producer,
        newest_epoch=newest,
        missing=sum(e.missing for e in epochs),
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
        views = [producer_view(p, now=now, grace=self._grace, gaps=LISTED_GAPS) for p in found]
        token_next = None
        if len(found) == limit:
            token_next = self._tokens.encode(PageToken(0, found[-1].producer, listing="producers"))
        return ProducersPage(producers=views, next_page_token=token_next)

    async def producer(self, producer: str) -> ProducerView:
        found = await self._book().producer(producer)
        if found is None:
            raise NotFound(f"no producer {producer!r} in the ledger")
        return producer_view(found, now=self._now(), grace=self._grace, gaps=None)

    async def every(self) -> AsyncIterator[ProducerEntries]:
        """Every producer's entries, a page of them per store call."""
        book = self._book()
        after = ""
        while True:
            found = await book.producers(after, _SWEEP)
            for entries in found:
                yield entries
            if len(found) < _SWEEP:
                return
            after = found[-1].producer

    async def missing(self, top: int) -> dict[str, int]:
        """Sequences missing now per producer, for the `top` producers missing most."""
        now = self._now()
        counts: list[tuple[int, str]] = []
        async for found in self.every():
            count = sum(
                g.last - g.first + 1 for e in found.epochs for g in e.missing(now, self._grace)
            )
            if count:
                counts.append((count, found.producer))
        return {producer: count for count, producer in heapq.nlargest(top, counts)}

    async def audit(self, since: datetime, until: datetime) -> AuditReport:
        start, end = micros(since), micros(until)
        if end <= start:
            raise BadParameter("until", "must be later than since")
        first_hour, last_hour = start // HOUR_MICROS, (end - 1) // HOUR_MICROS
        if last_hour - first_hour + 1 > MAX_AUDIT_HOURS:
            raise BadParameter(
                "until",
                f"at most {MAX_AUDIT_HOURS} hours after since: the ledger keeps counts by "
                "hour for a week",
            )
        now = self._now()
        hours = {h: [0, 0, 0, 0] for h in range(first_hour, last_hour + 1)}
        ranges: list[tuple[int, str, int, int, int]] = []
        missing = unknown_ends = 0
        async for found in self.every():
            newest = max(e.epoch for e in found.epochs)
            for entry in found.epochs:
                for count in entry.hours:
                    tally = hours.get(count.hour)
                    if tally is not None:
                        tally[0] += count.stored
                        tally[1] += count.rejected
                        tally[2] += count.duplicates
                for gap in entry.missing(now, self._grace):
                    if not start <= gap.opened < end:
                        continue
                    size = gap.last - gap.first + 1
                    hours[gap.opened // HOUR_MICROS][3] += size
                    missing += size
                    ranges.append((gap.opened, found.producer, entry.epoch, gap.first, gap.last))
                if (
                    entry.end is None
                    and entry.epoch != newest
                    and entry.last_seen >= start
                    and entry.first_seen < end
                ):
                    unknown_ends += 1
        oldest = heapq.nsmallest(AUDIT_RANGES, ranges)
        return AuditReport(
            since=since,
            until=until,
            hours=[
                AuditHour(
                    hour=moment(h * HOUR_MICROS),
                    received=stored + rejected + duplicates,
                    stored=stored,
                    rejected=rejected,
                    duplicates=duplicates,
                    missing=lost,
                )
                for h, (stored, rejected, duplicates, lost) in sorted(hours.items())
            ],
            missing=missing,
            missing_ranges=[
                MissingRange(
                    producer=producer, epoch=epoch, first=first, last=last, opened_at=moment(opened)
                )
                for opened, producer, epoch, first, last in oldest
            ],
            missing_range_count=len(ranges),
            unknown_ends=unknown_ends,
        )


# How often each instance reads the whole ledger for the `missing` metric: a gap
# turns missing at the grace period's end, so a minute more is nothing, and a
# read of the ledger a minute per instance is cheap (a row per producer epoch).
WATCH_SECONDS = 60.0
# Producers the metric names at most, those missing most: one series each, and a
# producer id is whatever a publisher sent. The others still count in the audit.
WATCHED_PRODUCERS = 100


class MissingWatch:
    """Keeps `missing` (sequences missing per producer, the `WATCHED_PRODUCERS` worst)
    as the ledger says, every WATCH_SECONDS: what `recordline.producer.missing` reports.
    A producer whose gaps closed is reported at 0 once, so its series falls to 0
    (an alert on it closes) before it stops."""

    def __init__(self, producers: Producers, *, seconds: float = WATCH_SECONDS) -> None:
        self._producers = producers
        self._seconds = seconds
        self.missing: dict[str, int] = {}

    async def refresh(self) -> None:
        found = await self._producers.missing(WATCHED_PRODUCERS)
        closed = {p: 0 for p, count in self.missing.items() if count and p not in found}
        self.missing = {**closed, **found}

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except RetryLater as exc:  # the store is down: readiness says so already
                log.warning("producers' missing sequences not read: %s", exc.detail)
            await asyncio.sleep(self._seconds)

"""Metrics: the names Terraform's dashboards and SLOs are built on.

Cloud Monitoring shows each as `workload.googleapis.com/<name>`; Prometheus
(`GET /metrics`) as the name with dots turned into underscores and the unit
appended (`recordline_ingest_lag_seconds`). Renaming one breaks a dashboard.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

from app.errors import RetryLater
from app.records import CANARY_ATTRIBUTE, Record, Rejection
from app.store import PublisherDuplicate, RowOutcome
from app.store.copies import differing
from app.telemetry.distribution import Distribution

log = logging.getLogger("recordline.ingest")

# Latencies from a DuckDB append (~4 ms) to a BigQuery query near its 10 s
# timeout, and Cloud Run's 30 s ceiling on a slow request.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1, 2.5, 5, 10, 30)
# Freshness also has to show a backlog draining after an outage, which is
# measured in minutes: the lag buckets go on to an hour.
LAG_SECONDS = (*SECONDS, 60, 120, 300, 600, 1800, 3600)
# Rows per append ≈ concurrent pushes; the batcher caps it at 1,000 by default.
ROWS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

_STORED = (("outcome", "stored"),)
_DUPLICATE = (("outcome", "duplicate"),)

# Attributes are stored as compact JSON text, so the canary's key is found as
# `"recordline-canary":` without decoding it.
_CANARY_KEY = f'"{CANARY_ATTRIBUTE}":'


class PushHistograms(NamedTuple):
    """Recorded for every stored row and every append (under light load, every
    push): counted in plain Python (app.telemetry.distribution)."""

    ingest_lag: Distribution
    append_rows: Distribution
    append_duration: Distribution


def push_histograms() -> PushHistograms:
    return PushHistograms(
        Distribution(
            "recordline.ingest.lag",
            unit="s",
            description="Publish to durable storage (ingest_time - publish_time): freshness SLI",
            boundaries=LAG_SECONDS,
        ),
        Distribution(
            "recordline.append.rows",
            unit="{row}",
            description="Rows per store append",
            boundaries=ROWS,
        ),
        Distribution(
            "recordline.append.duration",
            unit="s",
            description="Duration of one store append",
            boundaries=SECONDS,
        ),
    )


# The attribute that names a system's series in a cell: an exporter writes each
# system's series under its own namespace (`app.telemetry.cell.BySystem`), Prometheus
# keeps it as a label.
SYSTEM_ATTRIBUTE = "system"

# The SLO events (`recordline.slo.events`), by SLO and verdict: attribute sets built once.
_SLO = {
    (slo, good): (("slo", slo), ("good", "true" if good else "false"))
    for slo in ("availability", "read_latency", "freshness")
    for good in (True, False)
}


_SLO_FRESH = _SLO["freshness", True]
_SLO_STALE = _SLO["freshness", False]
# What a read's events add to (app.telemetry.reads).
SLO_READ = {
    (slo, good): _SLO[slo, good]
    for slo in ("availability", "read_latency")
    for good in (True, False)
}


class Watched(NamedTuple):
    """What the process gauges read from one app: its queue, its read horizon, its
    followers, and what the process's budget holds (`app.budget`, one for every app)."""

    queue_depth: Callable[[], int]
    horizon: Callable[[], int]
    followers: Callable[[], int]
    held: Callable[[], int]


class Metrics:
    """Every instrument Recordline reports, created once per process, and what one app
    counted; `histograms` None when nothing reads them.

    In a cell each system's app counts into a `member` of the cell's: the instruments
    are the cell's, and each reads its members' counts under their system's name
    (counters, and the few gauges only a system can say: its canary, its export).
    Distributions, the process's gauges and what reads do (their SLO events, the
    bytes they bill) are the cell's alone: every instance serves every system's
    reads, and what they cost does not grow with the systems."""

    # The SDK's instruments, the cell's in a system's member.
    query_duration: Histogram
    read_duration: Histogram
    query_bytes_billed: Adds

    def __init__(
        self,
        meter: Meter,
        histograms: PushHistograms | None,
        *,
        clock: Callable[[], float] = time.time,
        freshness_seconds: float = 10.0,
        system: str | None = None,
        parent: Metrics | None = None,
    ) -> None:
        self.meter = meter
        self.histograms = histograms
        # Seconds since the epoch: the gauges that read "now minus a time".
        self._clock = clock
        # A stored message is fresh (a good `freshness` event) within this of its
        # publish time (µs).
        self._fresh_micros = int(freshness_seconds * 1_000_000)
        self.system = system
        self._parent = parent
        # Whether what the store holds (rows stored and rejected, their freshness, the
        # newest canary) is counted by the store's export, once a row by the holder of
        # its lease (`ExportMetrics`), rather than by every instance that pushes:
        # set for a system with a serving tier (app.asgi), whose rows are all exported.
        self.counted_at_export = False
        # Each system's counts, in a cell (this is the cell's): read by the callbacks.
        self._members: list[Metrics] = []
        # What each app watched (by system: an app made again replaces its own).
        self._watched: dict[str | None, Watched] = {}
        # Outcomes are tallied in plain ints and read at collection time: a
        # synchronous SDK counter costs ~5 µs per add, 3% of a push.
        self.outcomes: Counter[tuple[tuple[str, str], ...]] = Counter()
        # Later copies of a stored message that differ from it, by the first
        # field that differs: the first copy is kept, the later one dropped.
        self.conflicts: Counter[tuple[tuple[str, str], ...]] = Counter()
        # Publish time (µs) of the newest canary stored. Its age grows when the
        # pipeline stalls even with no real traffic; until a canary is stored
        # there is no point at all, which the absence alert catches.
        self.canary_published: int | None = None
        # Each SLO's events, good and bad (`recordline.slo.events`).
        self.slo: Counter[tuple[tuple[str, str], ...]] = Counter()
        # The serving tier's exporter (app.store.tiered.exporter), by table: rows
        # appended to BigQuery, how far behind now its watermark is, and whether
        # a row BigQuery refused has stopped it.
        self.exported: Counter[str] = Counter()
        self.export_watermarks: dict[str, int] = {}
        self.export_blocked: dict[str, bool] = {}
        # Changes of the typed columns of `records` BigQuery refused (permissions,
        # a field it would not take): each is tried again 30 s later, and the
        # rows meanwhile go without the new columns (app.store.bigquery.typed).
        self.typed_patches_refused = 0
        # Sequences presumed lost, per producer (app.query.producers.MissingWatch):
        # read from the ledger every minute, for the producers missing most.
        self.producers_missing: Callable[[], dict[str, int]] = dict
        # Sequences two different messages claimed, and epochs whose declared ends
        # disagree, per producer (the same watch).
        self.producers_conflicts: Callable[[], dict[str, int]] = dict
        # Background loops of a store started again after a failure, by loop
        # (app.store.supervisor): any is a bug or an unforeseen error.
        self.loop_restarts: Counter[str] = Counter()
        # Connections a bound of the server refused or closed, by reason: the
        # problem answered (`headers-too-large`, `upgrade-not-served`…) or
        # `head-timeout`, `idle-evicted`, `malformed` (app.http.limits).
        self.connections_refused: Counter[str] = Counter()
        if parent is not None:
            parent._members.append(self)
            self.query_duration = parent.query_duration
            self.read_duration = parent.read_duration
            # The cell's: each instance serves every system's reads, and a series of
            # each system's from each instance would grow with both.
            self.query_bytes_billed = parent.query_bytes_billed
            return
        self._instruments(meter)

    @property
    def cell(self) -> Metrics:
        """The cell's counts this system's are reported beside (its own, outside a cell)."""
        return self._parent if self._parent is not None else self

    def member(self, system: str, *, freshness_seconds: float | None = None) -> Metrics:
        """What system `system`'s app counts into, reported through these instruments."""
        fresh = self._fresh_micros / 1_000_000 if freshness_seconds is None else freshness_seconds
        return Metrics(
            self.meter,
            self.histograms,
            clock=self._clock,
            freshness_seconds=fresh,
            system=system,
            parent=self,
        )

    def _instruments(self, meter: Meter) -> None:
        meter.create_observable_counter(
            "recordline.messages",
            callbacks=[self._observe_outcomes],
            unit="{message}",
            description=(
                "Push deliveries by outcome: stored, rejected (reason), retried (reason), "
                "duplicate (a publisher's retry, not stored)"
            ),
        )
        meter.create_observable_counter(
            "recordline.conflicts",
            callbacks=[self._observe_conflicts],
            unit="{message}",
            description="Later copies of a stored message whose content differs; the first is kept",
        )
        meter.create_observable_gauge(
            "recordline.canary.age",
            callbacks=[self._observe_canary],
            unit="s",
            description="Now minus the publish time of the newest canary stored",
        )
        meter.create_observable_counter(
            "recordline.slo.events",
            callbacks=[self._observe_slo],
            unit="{event}",
            description=(
                "Events of each SLO (`slo`: availability, read_latency, freshness), "
                "good or not (`good`): an SLO is good events over all"
            ),
        )
        # Per query, and by route: the SDK's (reads are far fewer than pushes).
        self.query_duration = meter.create_histogram(
            "recordline.query.duration",
            unit="s",
            description="Duration of one store query, by the API route it serves",
            explicit_bucket_boundaries_advisory=SECONDS,
        )
        # What a reader waits for, by read route (app.telemetry.reads): the
        # read-latency SLI, probes and the canary left out.
        self.read_duration = meter.create_histogram(
            "recordline.read.duration",
            unit="s",
            description="From a read request to its response, by route; synthetic reads left out",
            explicit_bucket_boundaries_advisory=SECONDS,
        )
        # What reads cost, by route: BigQuery's bytes billed (on-demand
        # queries are priced by them), so an operator sees the bill coming.
        self.query_bytes_billed = meter.create_counter(
            "recordline.query.bytes_billed",
            unit="By",
            description="Bytes billed by the store's queries, by the API route they serve",
        )
        meter.create_observable_counter(
            "recordline.export.rows",
            callbacks=[self._observe_exported],
            unit="{row}",
            description="Rows the exporter appended to BigQuery, by table",
        )
        meter.create_observable_gauge(
            "recordline.export.lag",
            callbacks=[self._observe_export_lag],
            unit="s",
            description="Now minus the export watermark: every row before it is in BigQuery",
        )
        meter.create_observable_gauge(
            "recordline.export.blocked",
            callbacks=[self._observe_export_blocked],
            unit="1",
            description="1 while a row BigQuery refused stops the export of its table",
        )
        meter.create_observable_counter(
            "recordline.typed.patches_refused",
            callbacks=[self._observe_typed_patches_refused],
            unit="{patch}",
            description="Changes of the typed columns BigQuery refused; each is tried again",
        )
        meter.create_observable_gauge(
            "recordline.producer.missing",
            callbacks=[self._observe_producers_missing],
            unit="{message}",
            description="Sequences of a producer missing past the grace period, by producer",
        )
        # Sequences two different messages claimed, and epochs whose declared ends
        # disagree, per producer (the same watch): for the producers in conflict most.
        meter.create_observable_gauge(
            "recordline.producer.conflicts",
            callbacks=[self._observe_producers_conflicts],
            unit="{sequence}",
            description="Sequences of a producer claimed by two different messages, and epochs "
            "whose declared ends disagree, by producer",
        )
        meter.create_observable_counter(
            "recordline.loop.restarts",
            callbacks=[self._observe_loop_restarts],
            unit="{restart}",
            description="Background loops started again after a failure, by loop",
        )
        meter.create_observable_counter(
            "recordline.connections.refused",
            callbacks=[self._observe_connections_refused],
            unit="{connection}",
            description="Connections a bound of the server refused or closed, by reason",
        )

    def _each(self) -> Iterator[tuple[Metrics, dict[str, str]]]:
        """This app's counts (no system named), then each system's, with its name."""
        yield self, {}
        for member in list(self._members):
            yield member, {SYSTEM_ATTRIBUTE: member.system or ""}

    def _observe_typed_patches_refused(self, _: CallbackOptions) -> Iterable[Observation]:
        for metrics, system in self._each():
            if metrics.typed_patches_refused or metrics is self:
                yield Observation(metrics.typed_patches_refused, system)

    def _observe_producers_missing(self, _: CallbackOptions) -> Iterable[Observation]:
        for metrics, system in self._each():
            for producer, missing in list(metrics.producers_missing().items()):
                yield Observation(missing, {**system, "producer": producer})

    def _observe_producers_conflicts(self, _: CallbackOptions) -> Iterable[Observation]:
        for metrics, system in self._each():
            for producer, conflicts in list(metrics.producers_conflicts().items()):
                yield Observation(conflicts, {**system, "producer": producer})

    def _observe_loop_restarts(self, _: CallbackOptions) -> Iterable[Observation]:
        for metrics, system in self._each():
            for loop, restarts in list(metrics.loop_restarts.items()):
                yield Observation(restarts, {**system, "loop": loop})

    def _observe_connections_refused(self, _: CallbackOptions) -> Iterable[Observation]:
        for reason, count in list(self.connections_refused.items()):
            yield Observation(count, {"reason": reason})

    def _observe_exported(self, _: CallbackOptions) -> Iterable[Observation]:
        for metrics, system in self._each():
            for table, rows in list(metrics.exported.items()):
                yield Observation(rows, {**system, "table": table})

    def _observe_export_lag(self, _: CallbackOptions) -> Iterable[Observation]:
        now = self._clock()
        for metrics, system in self._each():
            for table, watermark in list(metrics.export_watermarks.items()):
                yield Observation(max(0.0, now - watermark / 1e6), {**system, "table": table})

    def _observe_export_blocked(self, _: CallbackOptions) -> Iterable[Observation]:
        for metrics, system in self._each():
            for table, blocked in list(metrics.export_blocked.items()):
                yield Observation(int(blocked), {**system, "table": table})

    def appended(self, rows: Sequence[Record | Rejection], seconds: float, stored: bool) -> None:
        """One append: its size and duration; if `stored`, the ingest lag of its
        rows (now durable), and, unless the export counts them, their freshness and
        the newest canary among them. One call per append, and no call per row but
        the lag's."""
        histograms = self.histograms
        if histograms is not None:
            _, size, duration = histograms
            size.record(len(rows))
            duration.record(seconds)
        if not stored:
            return
        lag = None if histograms is None else histograms.ingest_lag
        if lag is not None:
            for row in rows:
                lag.record((row.ingest_time - row.publish_time) / 1e6)
        if not self.counted_at_export:
            self.held(rows, canaries=lag is not None)

    def held(self, rows: Sequence[Record | Rejection], *, canaries: bool = True) -> None:
        """Rows now held by the store: each a `freshness` event (good within the
        threshold of its publish time), and, with `canaries`, the newest canary
        among them (pushes arrive out of order: the newest is kept)."""
        limit = self._fresh_micros
        fresh = stale = 0
        newest = self.canary_published or 0
        for row in rows:
            if row.ingest_time - row.publish_time <= limit:
                fresh += 1
            else:
                stale += 1
            if canaries and isinstance(row, Record) and _CANARY_KEY in row.attributes:
                newest = max(row.publish_time, newest)
        if newest:
            self.canary_published = newest
        slo = self.slo
        if fresh:
            slo[_SLO_FRESH] += fresh
        if stale:
            slo[_SLO_STALE] += stale

    def answered(self, slo: str, good: bool) -> None:
        """One read's event of `slo` (`availability` or `read_latency`), good or not."""
        self.reads_slo[_SLO[slo, good]] += 1

    @property
    def reads_slo(self) -> Counter[tuple[tuple[str, str], ...]]:
        """What reads' SLO events count into: the cell's in a cell (its reads' SLOs
        are the cell's: every instance serves every system's reads), else the app's."""
        return self._root().slo

    def canary(self, published: int) -> None:
        """A canary published at `published` (µs) is stored (found by the probe)."""
        self.canary_published = max(published, self.canary_published or 0)

    def _observe_canary(self, _: CallbackOptions) -> Iterable[Observation]:
        now = self._clock()
        for metrics, system in self._each():
            if metrics.canary_published is not None:
                yield Observation(max(0.0, now - metrics.canary_published / 1e6), system)

    def _observe_outcomes(self, _: CallbackOptions) -> Iterable[Observation]:
        for metrics, system in self._each():
            for attributes, count in list(metrics.outcomes.items()):
                yield Observation(count, {**system, **dict(attributes)})

    def _observe_conflicts(self, _: CallbackOptions) -> Iterable[Observation]:
        for metrics, system in self._each():
            for attributes, count in list(metrics.conflicts.items()):
                yield Observation(count, {**system, **dict(attributes)})

    def _observe_slo(self, _: CallbackOptions) -> Iterable[Observation]:
        for metrics, system in self._each():
            for attributes, count in list(metrics.slo.items()):
                yield Observation(count, {**system, **dict(attributes)})

    def watch(
        self,
        *,
        queue_depth: Callable[[], int],
        horizon: Callable[[], int],
        followers: Callable[[], int],
        held: Callable[[], int] = lambda: 0,
    ) -> None:
        """Gauges read at collection time (every export, or each /metrics scrape): of
        the process, so in a cell each system's app adds to the cell's (the queues'
        and followers' sums, the horizon furthest behind, the budget they share)."""
        root = self._root()
        first = not root._watched
        root._watched[self.system] = Watched(queue_depth, horizon, followers, held)
        if not first:
            return
        every = root._watched

        def depth(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(sum(w.queue_depth() for w in list(every.values())))

        def waiting(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(sum(w.followers() for w in list(every.values())))

        def budget_held(_: CallbackOptions) -> Iterable[Observation]:
            # One budget for the process: every app reads the same one.
            yield Observation(max(w.held() for w in list(every.values())))

        def watermark_lag(_: CallbackOptions) -> Iterable[Observation]:
            oldest = min(w.horizon() for w in list(every.values()))
            yield Observation(max(0.0, root._clock() - oldest / 1e6))

        root.meter.create_observable_gauge(
            "recordline.queue.depth",
            callbacks=[depth],
            unit="{row}",
            description="Rows accepted and waiting to be stored",
        )
        root.meter.create_observable_gauge(
            "recordline.watermark.lag",
            callbacks=[watermark_lag],
            unit="s",
            description="Now minus the read horizon (complete_until)",
        )
        root.meter.create_observable_gauge(
            "recordline.followers",
            callbacks=[waiting],
            unit="{request}",
            description="Pages waiting for a row (wait=) and streams of pages open",
        )
        root.meter.create_observable_gauge(
            "recordline.memory.held",
            callbacks=[budget_held],
            unit="By",
            description="Bytes requests and answers in flight hold of "
            "RECORDLINE_MEMORY_BUDGET_BYTES",
        )

    def _root(self) -> Metrics:
        return self._parent if self._parent is not None else self


class Adds(Protocol):
    """A counter's `add` (the SDK's synchronous counter)."""

    def add(self, amount: int, attributes: Mapping[str, str] | None = None) -> None: ...


class PushOutcomes:
    """Ingest's observer: counts each delivery's outcome and logs the ones that need a look.

    A push's answer is no SLO event of the service's: Pub/Sub counts every push of
    each subscription by how it was answered (`push_request_count`, free), timeouts
    and Cloud Run's own refusals included, which the service never sees.

    Success is logged at DEBUG only: at thousands of pushes per second an INFO
    line each would cost more than the push.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._outcomes = metrics.outcomes
        # What a push costs without becoming a row (a publisher's duplicate, a 503, a
        # refusal) is counted as the cell's: a cumulative series is written at every
        # export to its instance's end, so each system's, on each instance that met
        # one, grew with both (infra/fleet_cost.py). Which system: Pub/Sub's count of
        # its pushes by response class (free) and the log line of each, with its
        # system and reason.
        self._incidents = metrics.cell.outcomes

    def stored(self, row: Record | Rejection, outcome: RowOutcome) -> None:
        # Where the export counts what the store holds, rows stored and rejected are
        # its to count (`ExportMetrics`); the lines are still logged here.
        counted = not self._metrics.counted_at_export
        if isinstance(outcome, PublisherDuplicate):
            # A publisher's retry of a message stored already: acknowledged, not stored.
            self._incidents[_DUPLICATE] += 1
            log.info(
                "message %s not stored: a copy of producer %r epoch %d sequence %d",
                row.message_id,
                outcome.producer,
                outcome.epoch,
                outcome.sequence,
                extra={"fields": {"message_id": row.message_id, "producer": outcome.producer}},
            )
            return
        if outcome is not None:
            # The store refused the row and kept it as a rejection (BigQuery
            # row errors): acknowledged, but not a record.
            detail, reason = outcome, "store"
        elif isinstance(row, Rejection):
            detail, reason = row.reason, coarse_reason(row.reason)
        else:
            if counted:
                self._outcomes[_STORED] += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("stored", extra={"fields": {"message_id": row.message_id}})
            return
        if counted:
            self._outcomes[_rejected(reason)] += 1
        log.warning(
            "message %s rejected: %s",
            row.message_id,
            detail,
            extra={"fields": {"message_id": row.message_id, "reason": reason, "detail": detail}},
        )

    def retried(self, message_id: str, error: RetryLater) -> None:
        self._incidents[_retried(error.cause)] += 1
        log.warning(
            "message %s not stored, answered 503: %s",
            message_id,
            error.detail,
            extra={"fields": {"message_id": message_id, "reason": error.cause}},
        )

    def refused(self, status: int, reason: str, detail: str) -> None:
        # Not acknowledged: Pub/Sub delivers it again, then dead-letters it. The
        # log line is where a dead letter's cause is found.
        self._incidents[_refused(reason)] += 1
        if status in (401, 403):
            return  # logged by the guard that refused it, with the token's fault
        log.warning(
            "push refused with %d (%s): %s",
            status,
            reason,
            detail,
            extra={"fields": {"status": status, "reason": reason, "detail": detail}},
        )


class Conflicts:
    """A store's conflict observer: counts and logs each later copy of a stored message
    whose content differs from it (app.store.copies.ConflictObserver).

    Such a copy is acknowledged like any redelivery (retrying would never store
    it: the message id is taken), so the log line is all that is left of it.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._counts = metrics.conflicts

    def __call__(self, kept: Record | Rejection, later: Record | Rejection) -> None:
        fields = differing(kept, later)
        if not fields:
            return
        self._counts[_conflict(fields[0])] += 1
        table = "records" if isinstance(kept, Record) else "rejected"
        log.warning(
            "message %s: a later copy differs from the one stored in %s (%s); the first "
            "copy is kept and the later one dropped",
            kept.message_id,
            table,
            ", ".join(fields),
            extra={
                "fields": {
                    "message_id": kept.message_id,
                    "reason": "conflict",
                    "table": table,
                    "differs": fields,
                    "kept_trace_id": kept.trace_id,
                    "later_trace_id": later.trace_id,
                }
            },
        )


@functools.cache
def _conflict(field: str) -> tuple[tuple[str, str], ...]:
    return (("reason", field),)


# Attribute sets are built once per reason, not per message: the reasons are few.
@functools.cache
def _rejected(reason: str) -> tuple[tuple[str, str], ...]:
    return (("outcome", "rejected"), ("reason", reason))


@functools.cache
def _retried(cause: str) -> tuple[tuple[str, str], ...]:
    return (("outcome", "retried"), ("reason", cause))


@functools.cache
def _refused(reason: str) -> tuple[tuple[str, str], ...]:
    return (("outcome", "refused"), ("reason", reason))


# How app.ingest.service begins the reason of a message with no data.
_NO_DATA = "message.data: absent or empty"
_FIELD_AT = re.compile(r"at `\$\.([A-Za-z0-9_]+)")
_MISSING_FIELD = re.compile(r"missing required field `([A-Za-z0-9_]+)`")


@functools.lru_cache(maxsize=256)
def coarse_reason(reason: str) -> str:
    """A metric label from a rejection's reason: the payload field, `json`, `base64` or
    `empty` (a message with no data).

    Only fields of the payload schema can appear (unknown ones are ignored, not
    refused), so the label's values stay few.
    """
    if reason.startswith(_NO_DATA):
        return "empty"
    if reason.startswith("message.data"):
        return "base64"
    if reason.startswith("payload is not JSON"):
        return "json"
    found = _FIELD_AT.search(reason) or _MISSING_FIELD.search(reason)
    return found.group(1) if found else "payload"


class ExportMetrics:
    """The exporter's observer: rows exported, its watermark and whether it is blocked;
    and what the store holds, counted once a row as it is exported (each row is
    exported once, by the holder of the lease): messages stored and rejected, their
    freshness, the newest canary."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def exported(self, table: str, rows: Sequence[Record | Rejection]) -> None:
        metrics = self._metrics
        metrics.exported[table] += len(rows)
        self.unblocked(table)
        outcomes = metrics.outcomes
        for row in rows:
            if isinstance(row, Rejection):
                outcomes[_rejected(coarse_reason(row.reason))] += 1
            else:
                outcomes[_STORED] += 1
        metrics.held(rows)

    def blocked(self, table: str, reason: str) -> None:
        # The exporter logs the reason itself, once per distinct reason.
        self._metrics.export_blocked[table] = True

    def unblocked(self, table: str) -> None:
        # A table is reported blocked or not once it was blocked under this lease, and
        # never before: a gauge of 0 for each table of each system, written at every
        # export, cost a fifth of what the lease holder writes (infra/fleet_cost.py),
        # and the alert reads a missing series as not blocked.
        blocked = self._metrics.export_blocked
        if table in blocked:
            blocked[table] = False

    def watermark(self, table: str, micros: int) -> None:
        self._metrics.export_watermarks[table] = micros

    def released(self) -> None:
        # Another instance holds the lease now: the export's gauges are its to report,
        # the canary's age among them.
        self._metrics.export_watermarks.clear()
        self._metrics.export_blocked.clear()
        self._metrics.canary_published = None


class TypedPatches:
    """The BigQuery store's patch observer: counts each change of its typed columns
    BigQuery refused (the store logs why)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def refused(self, table: str) -> None:
        self._metrics.typed_patches_refused += 1


class LoopRestarts:
    """A store's loop observer: counts each restart, by loop (the supervisor logs it)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def restarted(self, loop: str) -> None:
        self._metrics.loop_restarts[loop] += 1


class ConnectionRefusals:
    """The server's connection observer (app.http.limits): counts each connection a
    bound refused or closed, by reason."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def refused(self, reason: str) -> None:
        self._metrics.connections_refused[reason] += 1

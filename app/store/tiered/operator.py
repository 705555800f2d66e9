"""`recordline export …`: what an operator asks of the export, from a shell with the
service's settings (see docs/operations.md, "Export blocked").

- `status`: each table's export progress: its stream and offset, its watermark,
  the batch in flight, and, if it is blocked, why and since when (exit 1 if one is).
- `retry TABLE`: clear a blocked table's reason, so that the exporter holding
  the lease tries it again at its next round instead of within a minute (after
  a table or a permission is fixed). The decision is logged with what it cleared.
- `reject MESSAGE_ID --reason TEXT`: where `records` is blocked at a row BigQuery
  refused, move that record to the rejections (its reason says an operator did,
  why, and what BigQuery said) and let the export go on without it. BigQuery
  appended none of a batch it refused rows of (AppendRowsResponse.row_errors:
  "no rows in the batch will be appended"), so the next batch is cut again at
  the same offset. The record leaves `records` and the API answers for it as a
  rejection, which the export copies to BigQuery's `rejected`; the decision is
  logged.
- `resync TABLE --reason TEXT`: where a table is blocked with its progress and
  BigQuery's stream at odds (the stream holds rows past the progress, or is
  finalized or gone while a batch's answer was unknown, or rows were deleted
  before they were exported), ask BigQuery which rows past the progress it
  holds, and, if they are every row Spanner has up to the last of them (rows
  since deleted from Spanner aside), move the progress past them onto a new
  stream: nothing doubled, nothing skipped that Spanner still has. Otherwise
  nothing moves, and it says which row breaks the run. The decision is logged
  with the reason given.
- `verify --since T`: Spanner against BigQuery, window by window
  (`app.store.tiered.verify`); exit 1 if a window differs.

Each opens its own Spanner client (and BigQuery's, to verify): never an exporter.
This module imports neither client until a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from app.records import TABLES, Record, Rejection, moment
from app.settings import Settings

if TYPE_CHECKING:
    from app.store.bigquery.queries import QueryRunner
    from app.store.spanner.ledger import Progress
    from app.store.spanner.serving import SpannerServing

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="each table's export progress, and why it is blocked")
    retry = actions.add_parser("retry", help="try a blocked table again now")
    retry.add_argument("table", choices=sorted(TABLES))
    reject = actions.add_parser(
        "reject", help="move the record BigQuery refuses, where records is blocked, to rejected"
    )
    reject.add_argument("message_id", help="the message the blocked reason names")
    reject.add_argument("--reason", required=True, help="why, kept in the rejection")
    resync = actions.add_parser(
        "resync",
        help="move a blocked table's progress past the rows BigQuery holds, onto a new stream",
    )
    resync.add_argument("table", choices=sorted(TABLES))
    resync.add_argument("--reason", required=True, help="why, kept in the log")
    check = actions.add_parser("verify", help="compare Spanner and BigQuery window by window")
    check.add_argument(
        "--since",
        required=True,
        type=_instant,
        help="ISO 8601 time (UTC unless it says otherwise) the first window contains",
    )
    check.add_argument(
        "--window",
        type=float,
        default=1.0,
        help="hours per window (default 1)",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: the clients take most of a second to import, which the
    # parser of every other command need not pay.
    from app.store.bigquery.queries import QueryRunner
    from app.store.bigquery.store import BigQueryStore
    from app.store.spanner.serving import SpannerDatabase, SpannerServing

    if not settings.store.serving:
        print("recordline export: no serving tier (RECORDLINE_SERVING is not set)")
        return 2
    serving = SpannerServing(
        SpannerDatabase.from_url(settings.store.serving),
        emulator_host=settings.store.spanner_emulator_host or None,
        timeout_seconds=settings.store.query_timeout_seconds,
    )
    async with contextlib.AsyncExitStack() as stack:
        await serving.start()
        stack.push_async_callback(serving.close)
        match args.action:
            case "status":
                return await _status(serving)
            case "retry":
                return await _retry(serving, args.table)
            case "reject":
                return await _reject(serving, args.message_id, args.reason)
        analytics = BigQueryStore.from_url(
            settings.store.url,
            settings,
            emulator=settings.store.bigquery_query_endpoint or None,
        )
        queries = QueryRunner(
            analytics.project,
            timeout=settings.store.query_timeout_seconds,
            max_bytes_billed=settings.query.max_bytes_billed,
            endpoint=settings.store.bigquery_query_endpoint or None,
        )
        await queries.start()
        stack.push_async_callback(queries.close)
        names = {t: f"`{analytics.project}.{analytics.dataset}.{t}`" for t in TABLES}
        if args.action == "resync":
            return await _resync(serving, queries, names[args.table], args.table, args.reason)
        return await _verify(serving, queries, names, args.since, args.window)


async def _status(serving: SpannerServing) -> int:
    blocked = 0
    for table in TABLES:
        progress = await serving.progress(table)
        print(_describe(progress))
        blocked += progress.blocked is not None
    return 1 if blocked else 0


def _describe(p: Progress) -> str:
    lines = [
        f"{p.table_name}: stream {p.stream or '(none yet)'} at offset {p.next_offset}; "
        f"complete before {_time(p.watermark)}"
    ]
    if p.pending is not None:
        lines.append(f"  in flight: {p.pending.rows} rows ending at message {p.pending.message_id}")
    if p.blocked is not None:
        lines.append(f"  BLOCKED since {_time(p.updated or 0)}: {p.blocked}")
    return "\n".join(lines)


async def _retry(serving: SpannerServing, table: str) -> int:
    progress = await serving.progress(table)
    if progress.blocked is None:
        print(f"{table}: not blocked; nothing to retry")
        return 0
    if not await serving.unblock_export(table, progress.blocked):
        print(f"{table}: its progress changed meanwhile; run `recordline export status`")
        return 1
    log.warning(
        "operator retry of the export of %s, blocked since %s: %s",
        table,
        _time(progress.updated or 0),
        progress.blocked,
    )
    print(f"{table}: cleared; the exporter tries it again at its next round")
    return 0


async def _reject(serving: SpannerServing, message_id: str, reason: str) -> int:
    progress = await serving.progress("records")
    refused = f"BigQuery refused message {message_id} of records:"
    if progress.blocked is None or not progress.blocked.startswith(refused):
        print(
            f"records: not blocked at a row BigQuery refused named {message_id}; "
            "nothing moved (see `recordline export status`)"
        )
        return 1
    said = f"moved to the rejections by an operator: {reason} ({progress.blocked})"
    if not await serving.reject_refused(message_id, said, progress.blocked):
        print("records: its progress changed meanwhile; nothing moved")
        return 1
    log.warning("operator moved record %s to the rejections: %s", message_id, said)
    print(f"{message_id}: now a rejection; the export of records goes on at its next round")
    return 0


# What BigQuery holds past a table's progress: the rows' keys, from the progress's
# own partition on (billed for these two columns of those partitions).
_HELD_SQL = (
    "SELECT UNIX_MICROS(ingest_time) AS t, message_id FROM {table} "
    "WHERE ingest_time >= TIMESTAMP_MICROS(@since)"
)
# Spanner's rows are read this many at a time, up to the last row BigQuery holds.
_PAGE_ROWS = 1000
_KINDS: dict[str, type[Record] | type[Rejection]] = {"records": Record, "rejected": Rejection}


async def _resync(
    serving: SpannerServing, queries: QueryRunner, name: str, table: str, reason: str
) -> int:
    progress = await serving.progress(table)
    if progress.blocked is None:
        print(f"{table}: not blocked; nothing to resync")
        return 0
    after = (progress.done_time, progress.done_message_id)
    rows = await queries.run(_HELD_SQL.format(table=name), {"since": progress.done_time})
    held = sorted({key for key in ((int(t), str(m)) for t, m in rows) if key > after})
    moved = msgspec.structs.replace(
        progress, stream=None, next_offset=0, pending=None, blocked=None
    )
    if held:
        # Every row Spanner has up to the last one BigQuery holds must be held too:
        # then the progress moves past them all and nothing is doubled or skipped.
        # (A row BigQuery holds that Spanner no longer has was deleted since.)
        kept = set(held)
        cursor, last = after, held[-1]
        # Read as Spanner is now (a second ago, served at once), not as it was then.
        now = time.time_ns() // 1000 - 1_000_000
        while True:
            page = await serving.rows_after(_KINDS[table], cursor, last[0], _PAGE_ROWS, seen=now)
            keys = [(r.ingest_time, r.message_id) for r in page]
            gap = next((k for k in keys if k <= last and k not in kept), None)
            if gap is not None:
                print(
                    f"{table}: BigQuery holds rows past the progress up to message {last[1]}, "
                    f"but not message {gap[1]} before it: moving on would skip it, and "
                    "exporting it again would double the rows after it. Nothing moved; "
                    "`recordline export verify` shows the windows that differ."
                )
                return 1
            if len(page) < _PAGE_ROWS or keys[-1] >= last:
                break
            cursor = keys[-1]
        moved = msgspec.structs.replace(moved, done_time=last[0], done_message_id=last[1])
    if not await serving.move_export(progress, moved):
        print(f"{table}: its progress changed meanwhile; nothing moved (see `export status`)")
        return 1
    log.warning(
        "operator resync of the export of %s, blocked since %s (%s): BigQuery held %d rows "
        "past message %r; exporting from message %r on a new stream. Reason: %s",
        table,
        _time(progress.updated or 0),
        progress.blocked,
        len(held),
        progress.done_message_id,
        moved.done_message_id,
        reason,
    )
    print(
        f"{table}: BigQuery holds {len(held)} rows past the progress; the export goes on "
        f"after message {moved.done_message_id or '(the first)'} on a new stream at its next round"
    )
    return 0


async def _verify(
    serving: SpannerServing,
    queries: QueryRunner,
    names: dict[str, str],
    since: int,
    hours: float,
) -> int:
    from app.store.tiered.exporter import SETTLED_MICROS
    from app.store.tiered.verify import verify

    window = int(hours * 3_600_000_000)
    settled = time.time_ns() // 1000 - SETTLED_MICROS
    watermarks = await serving.watermarks()
    until = {table: min(watermarks[table], settled) for table in TABLES}
    windows = await verify(serving, queries, names, since, until, window=window)
    first = None
    for w in windows:
        mark = "same" if w.same else "DIFFERS"
        print(
            f"{w.table} {_time(w.start)} spanner {w.spanner[0]} {w.spanner[1]:015x} "
            f"bigquery {w.bigquery[0]} {w.bigquery[1]:015x} {mark}"
        )
        if first is None and not w.same:
            first = w
    for table in TABLES:
        print(f"{table}: compared up to the export watermark, {_time(until[table])}")
    if first is not None:
        print(f"first window that differs: {first.table} from {_time(first.start)}")
        return 1
    return 0


def _instant(text: str) -> int:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1_000_000)


def _time(micros: int) -> str:
    return moment(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

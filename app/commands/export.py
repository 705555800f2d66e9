"""`recordline export …`: what an operator asks of the export (`status`, `leases`, `retry`,
`reject`, `resync`, `verify`), run where the exporter's settings and identity are: the
cell's Cloud Run job (`<cell>-export`, each for one system: `--system`), or a shell
with the same settings.

Each decision (`retry`, `reject`, `resync`) is written to `export_decisions` in the
transaction of the change it makes, and logged with who asked and why.

Design: docs/operations.md#running-export-commands, and when to run which:
docs/operations.md#export-blocked
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Final

import msgspec

from app.records import (
    DAY_MICROS,
    TABLES,
    TIME_FORMS,
    Record,
    Rejection,
    micros,
    moment,
    time_or_ago,
)

if TYPE_CHECKING:
    from app.store.bigquery.queries import QueryRunner
    from app.store.open import Operated
    from app.store.spanner.ledger import Decision, LeaseState, Progress, Standing
    from app.store.spanner.serving import SpannerServing
    from app.store.tiered.held import QueryHeld

log = logging.getLogger(__name__)

EXIT_DONE: Final = 0
EXIT_BLOCKED: Final = 1
EXIT_USAGE: Final = 2
EXIT_REFUSED: Final = 3
EXIT_UNAVAILABLE: Final = 4
EXIT_BUG: Final = 70
# The commands that change the export, each a decision kept with its reason.
DECIDING: Final = ("retry", "reject", "resync")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="each table's export progress, and why it is blocked")
    actions.add_parser(
        "leases",
        help="who holds the export's lease (instance, code revision, row schema), since and "
        "until when, and which instance asked for it (exit 1 while nobody holds it)",
    )
    retry = actions.add_parser("retry", help="try a blocked table again now")
    retry.add_argument("table", choices=sorted(TABLES))
    reject = actions.add_parser(
        "reject", help="move the record at which records is blocked to the rejections"
    )
    reject.add_argument("message_id", help="the message the blocked reason names")
    resync = actions.add_parser(
        "resync",
        help="move a blocked table's progress past the rows BigQuery holds, onto a new stream",
    )
    resync.add_argument("table", choices=sorted(TABLES))
    for deciding in (retry, reject, resync):
        deciding.add_argument(
            "--reason", required=True, help="why, kept with the decision (and in a rejection)"
        )
        deciding.add_argument(
            "--operator",
            required=True,
            help="who decides (an e-mail), kept with the decision",
        )
    check = actions.add_parser("verify", help="compare Spanner and BigQuery window by window")
    check.add_argument(
        "--since",
        required=True,
        type=_instant,
        help=f"a time the first window contains: {TIME_FORMS}",
    )
    check.add_argument(
        "--window",
        type=float,
        default=1.0,
        help="hours per window (default 1)",
    )


async def run(args: argparse.Namespace, operated: Operated) -> int:
    """The command `args` asks for: its exit code (docs/operations.md#running-export-commands)."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    from app.errors import QueryTooCostly, StoreUnavailable

    what = f"recordline export {args.action}"
    if operated.serving is None:
        _error(what, "no serving tier (RECORDLINE_SERVING is not set)")
        return EXIT_USAGE
    try:
        return await _run(args, operated.serving(), operated)
    except QueryTooCostly as exc:
        _error(what, f"refused: {exc}")
        return EXIT_REFUSED
    except (StoreUnavailable, GoogleAuthError, GoogleAPIError, OSError, TimeoutError) as exc:
        _error(what, f"unavailable: {_line(exc)}")
        return EXIT_UNAVAILABLE
    except Exception as exc:  # a bug: said in one line, and its exit code
        _error(what, f"failed: {type(exc).__name__}: {_line(exc)}")
        return EXIT_BUG


async def _run(args: argparse.Namespace, serving: SpannerServing, operated: Operated) -> int:
    from app.store.tiered.held import QueryHeld

    async with contextlib.AsyncExitStack() as stack:
        await serving.start()
        stack.push_async_callback(serving.close)
        match args.action:
            case "status":
                return await _status(serving)
            case "leases":
                return await _leases(serving)
            case "retry":
                return await _retry(serving, args.table, _decision(args, args.table))
            case "reject":
                return await _reject(serving, args.message_id, _decision(args, "records"))
        analytics = operated.analytics()
        queries = operated.queries(analytics.project)
        await queries.start()
        stack.push_async_callback(queries.close)
        names = {t: analytics.table_name(t) for t in TABLES}
        if args.action == "resync":
            held = QueryHeld(queries, names)
            return await _resync(serving, held, args.table, _decision(args, args.table))
        return await _verify(
            serving,
            queries,
            names,
            args.since,
            args.window,
            operated.dedupe_window_seconds,
        )


def _error(what: str, said: str) -> None:
    print(f"{what}: {said}", file=sys.stderr)


def _line(exc: BaseException) -> str:
    """What an exception says, on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _decision(args: argparse.Namespace, table: str) -> Decision:
    from app.store.spanner.ledger import Decision

    operator = " ".join(str(args.operator).split())
    execution = os.environ.get("CLOUD_RUN_EXECUTION")
    if execution:
        operator += f" (Cloud Run job execution {execution})"
    reason = " ".join(str(args.reason).split())
    return Decision(table_name=table, action=args.action, operator=operator, reason=reason)


def _logged(decision: Decision) -> None:
    """Log a decision once it was written, with its fields for the log's readers."""
    log.warning(
        "operator %s decided to %s the export of %s: %s. Reason: %s",
        decision.operator,
        decision.action,
        decision.table_name,
        decision.detail,
        decision.reason,
        extra={
            "fields": {
                "operator": decision.operator,
                "reason": decision.reason,
                "table": decision.table_name,
                "action": decision.action,
            }
        },
    )


async def _status(serving: SpannerServing) -> int:
    blocked = 0
    for table in TABLES:
        progress = await serving.ledger.progress(table)
        print(_describe(progress))
        blocked += progress.blocked is not None
    return EXIT_BLOCKED if blocked else EXIT_DONE


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


async def _leases(serving: SpannerServing) -> int:
    states = await serving.ledger.leases()
    if not states:
        print("no lease yet: no exporter has claimed this system's export")
        return EXIT_BLOCKED
    for state in states:
        print(_describe_lease(state))
    return EXIT_DONE if all(s.live for s in states) else EXIT_BLOCKED


def _describe_lease(s: LeaseState) -> str:
    """A lease in a line (and its asker in a second): who, which code, since and until."""
    # One lease a system: its export of both tables (app.store.tiered.exporter).
    what = f"{s.name} (the export of {' and '.join(TABLES)})"
    if s.holder is None or s.expires is None:
        return f"{what}: held by nobody"
    who = f"{s.holder} ({_standing(s.standing)})"
    if not s.live:
        line = f"{what}: held by nobody since {_time(s.expires)}; last held by {who}"
    else:
        since = "" if s.since is None else f" since {'before ' if s.since_earlier else ''}"
        since += "" if s.since is None else _time(s.since)
        line = f"{what}: held by {who}{since}, until {_time(s.expires)}"
    if s.wanted_by is not None and s.wanted_until is not None:
        line += (
            f"\n  asked for by {s.wanted_by} ({_standing(s.wanted_standing)}), until "
            f"{_time(s.wanted_until)}"
        )
    return line


def _standing(standing: Standing | None) -> str:
    if standing is None or tuple(standing) == (0, 0):  # written before there were any
        return "code of unknown revision"
    return f"code revision {standing.revision}, row schema {standing.schema}"


async def _retry(serving: SpannerServing, table: str, decision: Decision) -> int:
    progress = await serving.ledger.progress(table)
    if progress.blocked is None:
        print(f"{table}: not blocked; nothing to retry")
        return EXIT_DONE
    detail = f"cleared the stop since {_time(progress.updated or 0)}: {progress.blocked}"
    decision = msgspec.structs.replace(decision, detail=detail)
    if not await serving.ledger.unblock(table, progress.blocked, decision):
        _error("recordline export retry", f"{table}: its progress changed meanwhile; see status")
        return EXIT_REFUSED
    _logged(decision)
    print(f"{table}: cleared; the exporter tries it again at its next round")
    return EXIT_DONE


async def _reject(serving: SpannerServing, message_id: str, decision: Decision) -> int:
    from app.store.tiered.exporter import row_at_fault

    progress = await serving.ledger.progress("records")
    if progress.blocked is None or row_at_fault(progress.blocked) != ("records", message_id):
        _error(
            "recordline export reject",
            f"records is not blocked at message {message_id}; nothing moved (see status)",
        )
        return EXIT_REFUSED
    said = f"moved to the rejections by an operator: {decision.reason} ({progress.blocked})"
    detail = f"moved message {message_id} to the rejections; the stop was: {progress.blocked}"
    decision = msgspec.structs.replace(decision, detail=detail)
    if not await serving.ledger.reject_refused(message_id, said, progress.blocked, decision):
        _error("recordline export reject", "records: its progress changed meanwhile; nothing moved")
        return EXIT_REFUSED
    _logged(decision)
    print(f"{message_id}: now a rejection; the export of records goes on at its next round")
    return EXIT_DONE


# Spanner's rows are read this many at a time, up to the last row BigQuery holds.
_PAGE_ROWS = 1000
_KINDS: dict[str, type[Record] | type[Rejection]] = {"records": Record, "rejected": Rejection}


async def _resync(serving: SpannerServing, held: QueryHeld, table: str, decision: Decision) -> int:
    progress = await serving.ledger.progress(table)
    if progress.blocked is None:
        print(f"{table}: not blocked; nothing to resync")
        return EXIT_DONE
    after = (progress.done_time, progress.done_message_id)
    found = [key for key in await held.held(table, progress.done_time) if key > after]
    moved = msgspec.structs.replace(
        progress, stream=None, next_offset=0, pending=None, blocked=None
    )
    if found:
        # Every row Spanner has up to the last one BigQuery holds must be held too:
        # then the progress moves past them all and nothing is doubled or skipped.
        # (A row BigQuery holds that Spanner no longer has was deleted since.)
        kept = set(found)
        cursor, last = after, found[-1]
        # Read as Spanner is now (a second ago, served at once), not as it was then.
        now = time.time_ns() // 1000 - 1_000_000
        while True:
            page = await serving.rows_after(_KINDS[table], cursor, last[0], _PAGE_ROWS, seen=now)
            keys = [(r.ingest_time, r.message_id) for r in page]
            gap = next((k for k in keys if k <= last and k not in kept), None)
            if gap is not None:
                _error(
                    "recordline export resync",
                    f"{table}: BigQuery holds rows past the progress up to message {last[1]}, "
                    f"but not message {gap[1]} before it: moving on would skip it, and "
                    "exporting it again would double the rows after it. Nothing moved; "
                    "`recordline export verify` shows the windows that differ.",
                )
                return EXIT_REFUSED
            if len(page) < _PAGE_ROWS or keys[-1] >= last:
                break
            cursor = keys[-1]
        moved = msgspec.structs.replace(moved, done_time=last[0], done_message_id=last[1])
    detail = (
        f"BigQuery held {len(found)} rows past message {progress.done_message_id!r}; "
        f"exporting from message {moved.done_message_id!r} on a new stream "
        f"(the stop since {_time(progress.updated or 0)} was: {progress.blocked})"
    )
    decision = msgspec.structs.replace(decision, detail=detail)
    if not await serving.ledger.move(progress, moved, decision):
        _error(
            "recordline export resync",
            f"{table}: its progress changed meanwhile; nothing moved (see status)",
        )
        return EXIT_REFUSED
    _logged(decision)
    print(
        f"{table}: BigQuery holds {len(found)} rows past the progress; the export goes on "
        f"after message {moved.done_message_id or '(the first)'} on a new stream at its next round"
    )
    return EXIT_DONE


async def _verify(
    serving: SpannerServing,
    queries: QueryRunner,
    names: dict[str, str],
    since: int,
    hours: float,
    dedupe_window_seconds: float,
) -> int:
    from app.store.spanner.schema import retention_days
    from app.store.tiered.exporter import SETTLED_MICROS
    from app.store.tiered.verify import verify

    window = int(hours * 3_600_000_000)
    settled = time.time_ns() // 1000 - SETTLED_MICROS
    watermarks = await serving.ledger.watermarks()
    until = {table: min(watermarks[table], settled) for table in TABLES}
    # Older rows are deleted from Spanner (its row deletion policy): nothing there
    # to compare BigQuery with.
    days = retention_days(dedupe_window_seconds)
    oldest = settled - days * DAY_MICROS
    if since < oldest:
        print(f"Spanner keeps rows {days} days: compared from {_time(oldest)}")
        since = oldest
    first = None
    async for w in verify(serving, queries, names, since, until, window=window):
        mark = "same" if w.same else "DIFFERS"
        print(
            f"{w.table} {_time(w.start)} spanner {w.spanner[0]} {w.spanner[1]:015x} "
            f"bigquery {w.bigquery[0]} {w.bigquery[1]:015x} {mark}",
            flush=True,
        )
        if first is None and not w.same:
            first = w
    for table in TABLES:
        print(f"{table}: compared up to the export watermark, {_time(until[table])}")
    if first is not None:
        print(f"first window that differs: {first.table} from {_time(first.start)}")
        return EXIT_BLOCKED
    return EXIT_DONE


def _time(micros: int) -> str:
    return moment(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _instant(text: str) -> int:
    """`--since` (`time_or_ago`), in µs since the epoch."""
    return micros(time_or_ago(text))

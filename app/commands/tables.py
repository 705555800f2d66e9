"""`recordline tables fill`: copy each whole day of `records` into a system's tables of
its own (`records_<name>`, declared in Terraform as the system's `tables`), once each.
Run hourly by the cell's Cloud Run job `<cell>-fill`, or from a shell with the same
settings.

Design: app/store/bigquery/fill.py, docs/layouts.md#records-as-today-beside-tables-of-your-own
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from app.commands.target import TargetError, add_system_argument, one_system

if TYPE_CHECKING:
    from app.settings import Settings
    from app.store.bigquery.fill import Filled

log = logging.getLogger(__name__)

EXIT_DONE: Final = 0
# A day was left: its job still runs, or failed this run (said on stderr).
EXIT_LEFT: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 4
_GIB: Final = 1 << 30
# The longest a run waits for one day's job (and BigQuery lets it run): the fill job's
# run lasts 55 minutes (infra/terraform/fill.tf).
_MOST_WAIT: Final = 3300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    fill = actions.add_parser(
        "fill",
        help="copy each whole day of records not yet copied into the system's own tables "
        "(those labelled recordline-fill=records), each day once",
    )
    add_system_argument(fill, "whose tables (its dataset)")
    fill.add_argument(
        "--table",
        action="append",
        help="only this table, which must be labelled recordline-fill=records (repeatable; "
        "default: every table of the dataset so labelled)",
    )
    fill.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="seconds (1 to 3300) to wait for one day's job before leaving it to the next run "
        "(BigQuery stops the job then too; default 600)",
    )
    fill.add_argument(
        "--max-bytes-billed",
        type=int,
        default=50 * _GIB,
        help="refuse a day's job, or the read of which days records holds, that would "
        "bill more than this many bytes "
        "(default 50 GiB: a day at about 1,000 messages a second)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    prog = "recordline tables fill"
    try:
        settings = one_system(settings, args.system)
    except TargetError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    url = settings.store.url
    if not url.startswith("bigquery://"):
        print(
            f"{prog}: RECORDLINE_STORE is {url!r}: tables are filled on BigQuery alone",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # NaN passes `<= 0`, and infinity no job timeout takes.
    if not 1 <= args.wait <= _MOST_WAIT or args.max_bytes_billed <= 0:
        print(
            f"{prog}: --wait is seconds from 1 to {_MOST_WAIT:g}, and --max-bytes-billed "
            "must be positive",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from app.store.bigquery.fill import TABLE_NAME

    for table in args.table or ():
        if not TABLE_NAME.match(table):
            print(f"{prog}: --table={table!r} is not a table's name", file=sys.stderr)
            return EXIT_USAGE
    return asyncio.run(_fill(args, settings))


async def _fill(args: argparse.Namespace, settings: Settings) -> int:
    from app.errors import FillFailed, StoreUnavailable
    from app.store.bigquery.fill import Filler, FillOptions
    from app.store.bigquery.queries import QueryRunner

    project, dataset = settings.store.url.removeprefix("bigquery://").split("/", 1)
    store = settings.store
    options = FillOptions(
        wait_seconds=args.wait,
        max_bytes_billed=args.max_bytes_billed,
        serving=bool(store.serving),
        settle_micros=int(store.settle_seconds * 1_000_000),
    )
    runner = QueryRunner(
        project,
        timeout=max(store.query_timeout_seconds, options.call_seconds),
        # Its reads of records' ingest_time too: one cap for a run, raised by hand.
        max_bytes_billed=args.max_bytes_billed,
        endpoint=store.bigquery_query_endpoint or None,
    )
    code = EXIT_DONE
    try:
        await runner.start()
        filler = Filler(runner, dataset, options, clock=lambda: time.time_ns() // 1000)
        tables = args.table or await filler.tables()
        if not tables:
            print(f"{dataset}: no table labelled recordline-fill=records: nothing to fill")
        for table in tables:
            try:
                done = await filler.fill(table)
            except FillFailed as exc:
                print(f"{dataset}.{table}: {exc}", file=sys.stderr)
                code = EXIT_LEFT
                continue
            print(said(dataset, done))
            if done.left is not None:
                print(f"{dataset}.{table}: left {done.left}", file=sys.stderr)
                code = EXIT_LEFT
    except StoreUnavailable as exc:
        print(f"recordline tables fill: BigQuery unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        await runner.close()
    return code


def said(dataset: str, done: Filled) -> str:
    """One line of what a run did for a table."""
    through = "nothing yet" if done.through is None else _iso(done.through)
    return (
        f"{dataset}.{done.table}: {len(done.copied)} days copied "
        f"({done.bytes_billed / _GIB:.2f} GiB billed), {len(done.found)} found copied; "
        f"whole through {through}"
    )


def _iso(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")

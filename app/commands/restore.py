"""`recordline restore rows`: write back into a serving database the rows it lost.

Spanner copies nothing from one database to another, so this does, a page at a
time, from a source read at one timestamp (the live database `--at T` before a
mistake, or a backup restored into a scratch instance). Each page inserts only
the rows the destination lacks, exactly as read, so the command can run again
after any failure and writes nothing twice. Spanner's client is imported when a
command runs, not when the parser is made.

Design: docs/operations.md#recovering-a-serving-database
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from app.records import TABLES, TIME_FORMS, time_or_ago

if TYPE_CHECKING:
    from google.cloud import spanner

    from app.store.spanner.serving import SpannerDatabase

log = logging.getLogger(__name__)

# Rows per page: one query of the source, one transaction of the destination. A
# transaction takes at most 80,000 mutations (https://cloud.google.com/spanner/quotas):
# a row of records is one insert of 14 columns and its two index entries, so 500 rows
# stay far below it while a page of 1 KiB messages is about half a megabyte.
PAGE_ROWS: Final = 500
# Seconds each page may take, its source query and its destination transaction each.
PAGE_SECONDS: Final = 30.0


@dataclass
class Copied:
    """What one table's copy did."""

    table: str
    read: int = 0
    written: int = 0
    present: int = 0
    # The key of the last page done: where a run that failed stopped.
    last_key: tuple[int, str] | None = None


class RowCopier:
    """Copies the rows `destination` lacks from `source` read at `read_at`."""

    def __init__(
        self,
        source: Any,
        destination: Any,
        *,
        read_at: datetime,
        page_rows: int = PAGE_ROWS,
        page_seconds: float = PAGE_SECONDS,
        dry_run: bool = False,
    ) -> None:
        self._source = source
        self._destination = destination
        self.read_at = read_at
        self._page_rows = page_rows
        self._seconds = page_seconds
        self._dry_run = dry_run

    def copy(
        self, table: str, since: datetime | None = None, until: datetime | None = None
    ) -> Copied:
        """Every row of `table` (ingested in [since, until) if given) the destination lacks."""
        from app.store.spanner.schema import expected_columns

        names = [c.name for c in expected_columns() if c.table == table]
        done = Copied(table)
        for page in self._pages(table, names, since, until):
            done.read += len(page)
            written = self._write(table, names, page)
            done.written += written
            done.present += len(page) - written
            done.last_key = (page[-1][0], page[-1][names.index("message_id")])
            log.info("%s: %d rows read, %d written back so far", table, done.read, done.written)
        return done

    def _pages(
        self, table: str, names: list[str], since: datetime | None, until: datetime | None
    ) -> Iterator[list[list[Any]]]:
        from google.cloud.spanner_v1 import param_types

        from app.store.spanner.calls import Deadline, sql_rows

        conditions = ["(shard > @shard OR (shard = @shard AND message_id > @after))"]
        params: dict[str, Any] = {"limit": self._page_rows}
        types: dict[str, Any] = {
            "shard": param_types.INT64,
            "after": param_types.STRING,
            "limit": param_types.INT64,
        }
        if since is not None:
            conditions.append("ingest_time >= @since")
            params["since"], types["since"] = since, param_types.TIMESTAMP
        if until is not None:
            conditions.append("ingest_time < @until")
            params["until"], types["until"] = until, param_types.TIMESTAMP
        # In key order: each page starts after the last key of the one before.
        sql = (
            f"SELECT {', '.join(f'`{n}`' for n in names)} FROM {table}"
            f" WHERE {' AND '.join(conditions)} ORDER BY shard, message_id LIMIT @limit"
        )
        shard, after = -1, ""
        message_id = names.index("message_id")
        while True:
            deadline = Deadline(self._seconds)
            with self._source.snapshot(read_timestamp=self.read_at) as snapshot:
                page = [
                    list(row)
                    for row in sql_rows(
                        snapshot,
                        deadline,
                        sql,
                        params={**params, "shard": shard, "after": after},
                        param_types=types,
                    )
                ]
            if not page:
                return
            yield page
            if len(page) < self._page_rows:
                return
            shard, after = page[-1][0], page[-1][message_id]

    def _write(self, table: str, names: list[str], page: list[list[Any]]) -> int:
        """Insert the rows of `page` the destination lacks; how many (or would, dry)."""
        from google.cloud import spanner

        from app.store.spanner.calls import Deadline, in_transaction, key_rows

        message_id = names.index("message_id")
        keys = spanner.KeySet(keys=[[row[0], row[message_id]] for row in page])  # type: ignore[no-untyped-call]
        deadline = Deadline(self._seconds)

        def missing(source: Any) -> list[list[Any]]:
            held = {values[0] for values in key_rows(source, deadline, table, ["message_id"], keys)}
            return [row for row in page if row[message_id] not in held]

        if self._dry_run:
            with self._destination.snapshot() as snapshot:
                return len(missing(snapshot))

        def work(transaction: Any) -> int:
            lacking = missing(transaction)
            if lacking:
                transaction.insert(table, names, lacking)
            return len(lacking)

        written, _ = in_transaction(self._destination, deadline, work)
        return written


# --- the command ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    rows = actions.add_parser(
        "rows",
        help="write back into a serving database the rows it lacks, from itself as it was "
        "(--at) or from a restored copy",
    )
    rows.add_argument(
        "--from",
        dest="source",
        required=True,
        help="spanner://projects/P/instances/I/databases/D to read: the live database with "
        "--at, or one restored from a backup",
    )
    rows.add_argument(
        "--to",
        dest="destination",
        help="spanner://… to write into (default: RECORDLINE_SERVING)",
    )
    rows.add_argument(
        "--at",
        type=time_or_ago,
        help="when to read the source, within its version retention: before the mistake "
        f"(required when the source is the destination): {TIME_FORMS}",
    )
    rows.add_argument("--table", choices=sorted(TABLES), help="one table (default: both)")
    rows.add_argument(
        "--since", type=time_or_ago, help=f"only rows ingested at or after it: {TIME_FORMS}"
    )
    rows.add_argument(
        "--until", type=time_or_ago, help=f"only rows ingested before it: {TIME_FORMS}"
    )
    rows.add_argument(
        "--timeout",
        type=float,
        default=PAGE_SECONDS,
        help=f"seconds each page may take (default {PAGE_SECONDS:g})",
    )
    rows.add_argument(
        "--page", type=int, default=PAGE_ROWS, help=f"rows per page (default {PAGE_ROWS})"
    )
    rows.add_argument(
        "--dry-run", action="store_true", help="count what would be written back; write nothing"
    )


def run(args: argparse.Namespace, *, serving: str, emulator_host: str) -> int:
    """The command `args` asks for, `serving` being RECORDLINE_SERVING (the default
    destination) and `emulator_host` the Spanner emulator's address (empty: none)."""
    from google.api_core.exceptions import GoogleAPICallError, RetryError

    from app.store.open import spanner_database

    destination_url = args.destination or serving
    if not destination_url:
        print("recordline restore: give --to, or set RECORDLINE_SERVING", file=sys.stderr)
        return 2
    try:
        source_db = spanner_database(args.source)
        destination_db = spanner_database(destination_url)
    except ValueError as exc:
        print(f"recordline restore: {exc}", file=sys.stderr)
        return 2
    if source_db == destination_db and args.at is None:
        # Read now, the database holds every row it would be given: nothing to do, and a
        # run that "wrote back 0" would look like one that found nothing missing.
        print(
            f"recordline restore: the source is the destination ({source_db.path}): give "
            "--at, a time before the mistake, or --to another database",
            file=sys.stderr,
        )
        return 2
    if args.page < 1 or args.timeout <= 0:
        print("recordline restore: --page and --timeout must be positive", file=sys.stderr)
        return 2
    # Without --at, a restored database is read as the command starts: one exact
    # timestamp, so every page reads the same database.
    read_at = args.at or datetime.now(UTC)
    # A client per project: a client's instances are of its own project, whatever the
    # URL named (one client once wrote a destination in another project into the source).
    clients = {
        project: _client(project, emulator_host)
        for project in {source_db.project, destination_db.project}
    }
    try:
        copier = RowCopier(
            _database(clients[source_db.project], source_db),
            _database(clients[destination_db.project], destination_db),
            read_at=read_at,
            page_rows=args.page,
            page_seconds=args.timeout,
            dry_run=args.dry_run,
        )
        verb = "would write back" if args.dry_run else "wrote back"
        for table in [args.table] if args.table else sorted(TABLES):
            done = Copied(table)
            try:
                done = copier.copy(table, args.since, args.until)
            except (GoogleAPICallError, RetryError) as exc:
                stopped = f"after the key {done.last_key}" if done.last_key else "at its start"
                print(
                    f"recordline restore: {table} stopped {stopped}: {exc}. Nothing is written "
                    "twice: run the same command again.",
                    file=sys.stderr,
                )
                return 1
            print(
                f"{table}: {done.read} rows read in {source_db.path} at "
                f"{read_at.isoformat()}, {verb} {done.written} to {destination_db.path}, "
                f"{done.present} there already"
            )
    finally:
        for client in clients.values():
            client.close()  # type: ignore[no-untyped-call]
    return 0


def _client(project: str, emulator_host: str) -> spanner.Client:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import spanner

    if emulator_host:
        return spanner.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": emulator_host},
            disable_builtin_metrics=True,
        )
    return spanner.Client(project=project)


def _database(client: spanner.Client, where: SpannerDatabase) -> Any:
    instance = client.instance(where.instance)  # type: ignore[no-untyped-call]
    return instance.database(where.database)

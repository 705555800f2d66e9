"""The `recordline` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, cast

from app.records import BIGQUERY_TABLES, TIME_FORMS, time_or_ago
from app.settings import Settings, SettingsError, effective, reference
from app.store.bigquery.schema import created_schema

if TYPE_CHECKING:
    from app.commands.replay import StatusLine
    from app.typed.revisions import Revisions

# ASGI, as uvicorn calls an app.
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Adds a subcommand's parser (`add_subparsers().add_parser`).
AddParser = Callable[..., argparse.ArgumentParser]

# The checkout this module runs from, if it does: installed from a wheel, the
# directory above app/ is site-packages.
CHECKOUT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = CHECKOUT / "infra" / "terraform" / "modules" / "system" / "schemas"
# The serving tier's statements as Terraform applies them: append only.
SPANNER_TEMPLATE = SCHEMA_DIR / "spanner.sql.tftpl"
# Where the systems' topic schemas live (infra/terraform/variables.tf refuses others),
# and the typed columns generated beside each (`recordline schema typed`).
SYSTEM_SCHEMAS = CHECKOUT / "schemas"
TYPED_SUFFIX = ".bigquery.json"
SCHEMA_TYPES = ("AVRO", "PROTOCOL_BUFFER")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `recordline schema | head -1`: the reader left. Nothing more can be said
        # there, at exit included: the rest goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        # A command that does not say more itself (the long ones say what they did):
        # stopped in the middle, it still says so, not a traceback or nothing.
        command = _asked(sys.argv[1:] if argv is None else argv) or ""
        print(f"\n{_typed_as()} {command}: interrupted", file=sys.stderr)
        return 130


# Where each parser puts itself among the parsed arguments: the deepest subcommand's,
# set last, is the one an unrecognized argument is said against.
_PARSER = "command_parser"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is said in one line: its usage, several lines for some
    commands, is one `--help` away. Every subcommand's parser is one too (argparse
    makes them of their parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(**{_PARSER: self})

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (`{self.prog} --help` shows every option)\n")

    def parse_command(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """The arguments, an unrecognized one said by the subcommand it was given to
        (`recordline serve: unrecognized arguments: --prot`, pointing at `recordline serve
        --help`), where argparse would say it as the top command's."""
        args, unknown = self.parse_known_args(argv)
        if unknown:
            parser: argparse.ArgumentParser = getattr(args, _PARSER, self)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return args


def _service_commands(add_parser: AddParser) -> argparse.ArgumentParser:
    """`serve`, `exporter`, `schema`, `config` and `sql`; returns `schema`'s parser (its
    arguments are checked together once parsed)."""
    serve = add_parser("serve", help="run the service")
    serve.add_argument("--host", help="address to bind (RECORDLINE_HOST; default 127.0.0.1)")
    serve.add_argument("--port", help="port (PORT; default 8080)")
    serve.add_argument(
        "--store", help="store URL (RECORDLINE_STORE; default duckdb:recordline.duckdb)"
    )

    add_parser(
        "exporter",
        help="the exporter pool: every system of RECORDLINE_SYSTEMS with a serving tier "
        "exported from Spanner to BigQuery, one lease per system, each instance about its "
        "share of them, until SIGTERM",
    )

    schema = add_parser("schema", help="the table schemas, derived from the code")
    schema.add_argument(
        "target",
        nargs="?",
        choices=["bigquery", "spanner", "typed"],
        default="bigquery",
        help="BigQuery's JSON schemas (the default), the serving tier's Spanner DDL "
        "(statements ended by `;`, for RECORDLINE_DEDUPE_WINDOW_SECONDS as set), or the "
        "typed columns a system's schema FILE gives `records` when Terraform creates it",
    )
    schema.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help="with typed: a system's schema file (its schema.file, or its json_schema)",
    )
    schema.add_argument(
        "--type",
        dest="schema_type",
        choices=SCHEMA_TYPES,
        help="with typed: the schema's type (a json_schema is AVRO)",
    )
    schema.add_argument(
        "--write",
        action="store_true",
        help=f"write every schema file Terraform reads to {SCHEMA_DIR}, and regenerate "
        f"every FILE{TYPED_SUFFIX} under {SYSTEM_SCHEMAS}; with typed: write "
        f"FILE{TYPED_SUFFIX}",
    )

    config = add_parser(
        "config", help="every setting's value here and where it came from (secrets hidden)"
    )
    config.add_argument(
        "--reference",
        action="store_true",
        help="every setting's default and meaning instead, as docs/configuration.md's table",
    )

    sql = add_parser(
        "sql",
        help="query a DuckDB store with SQL, read-only (`records_typed` holds the typed "
        "columns), while its service runs too; or the running `dev --serving` stack's "
        "BigQuery stand-in (`records.fields` holds them)",
    )
    sql.add_argument("query", metavar="SQL", help='e.g. "SELECT * FROM records_typed LIMIT 10"')
    where = sql.add_mutually_exclusive_group()
    where.add_argument(
        "--store", help="store URL (RECORDLINE_STORE; default duckdb:recordline.duckdb)"
    )
    where.add_argument(
        "--dev",
        action="store_true",
        help=f"the DuckDB store of the newest `recordline dev` session here ({DEV_SESSIONS}/); "
        "refused while a newer session runs (on another store)",
    )
    where.add_argument(
        "--serving",
        action="store_true",
        help="the BigQuery stand-in of the `recordline dev --serving` stack running here, in "
        "BigQuery's SQL, its dataset the default (`records`, `recordline.records` and "
        "`recordline-dev.recordline.records` name one table)",
    )
    return schema


def add_operator_commands(add_parser: AddParser) -> None:
    """`export`, `restore`, `typed`, `audit`, `replay` and `tables`: the operators' remedies and
    checks, each of which a cell's job runs (`--system`: one system of the cell)."""
    from app.commands.target import add_system_argument

    export = add_parser(
        "export",
        help="the serving tier's export to BigQuery: status, leases, retry, reject, resync, verify",
    )
    add_system_argument(export, "whose export (its serving database and dataset)")
    from app.commands import export as exporting

    exporting.add_arguments(export)

    restore = add_parser(
        "restore", help="the serving tier: write back the rows a serving database lost"
    )
    from app.commands import restore as restoring

    restoring.add_arguments(restore)

    typed = add_parser(
        "typed", help="typed columns: project stored records again (DuckDB, BigQuery)"
    )
    typed_commands = typed.add_subparsers(dest="typed", required=True)
    backfill = typed_commands.add_parser(
        "backfill",
        help="project the records stored in a range again, as the code and schemas are now "
        "(after a mapping fix, or for records stored before a json_schema was declared); "
        "on DuckDB with the service stopped, on BigQuery while it runs",
    )
    backfill.add_argument(
        "--store", help="store URL (RECORDLINE_STORE; default duckdb:recordline.duckdb)"
    )
    backfill.add_argument(
        "--since", type=time_or_ago, help=f"records ingested at or after it: {TIME_FORMS}"
    )
    backfill.add_argument(
        "--until",
        type=time_or_ago,
        help=f"records ingested before it (default: now): {TIME_FORMS}",
    )
    backfill.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="BigQuery: seconds each statement may run (BigQuery stops it then; default 3600)",
    )
    backfill.add_argument(
        "--max-bytes-billed",
        type=int,
        help="BigQuery: refuse any statement that would bill more than this many bytes",
    )
    backfill.add_argument(
        "--reason",
        help="why (required on BigQuery, where the service's own table changes): logged "
        "with the range and the operator",
    )
    backfill.add_argument(
        "--operator", help="who runs it (an e-mail; required on BigQuery), logged with the reason"
    )

    audit = add_parser(
        "audit",
        help="per hour, messages with a producer sequence received, stored, rejected, "
        "dropped as copies, and missing (exit 1 naming the first missing range)",
    )
    from app.commands import audit as auditing

    auditing.add_arguments(audit)
    add_system_argument(audit, "whose producers")
    # Where it asks: --url, else RECORDLINE_URL, else the local default (`_target`).
    audit.set_defaults(url=None)

    replay = add_parser(
        "replay",
        help="replay rejected or dead-lettered messages through today's validation, once",
    )
    from app.commands import replay as replaying

    replaying.add_arguments(replay)

    tables = add_parser(
        "tables", help="a system's tables of its own beside records: fill them, each day once"
    )
    from app.commands import tables as filling

    filling.add_arguments(tables)


def _main(argv: list[str] | None) -> int:
    parser = OneLineParser(prog=_typed_as(), description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    schema = _service_commands(commands.add_parser)
    add_operator_commands(commands.add_parser)
    from app.commands import tail as tailing

    tailing.add_arguments(
        commands.add_parser("tail", help="follow the records as they are stored, as JSON lines")
    )
    dev = _dev_tools()
    tools = {} if dev is None else dict(dev.commands())
    asked = _asked(sys.argv[1:] if argv is None else argv)
    if asked in DEV_TOOLS and asked not in tools:
        # Said before its arguments are parsed: a placeholder knows none of them, and
        # `recordline publish --topic t` would end in argparse's "unrecognized arguments".
        return _not_installed(asked)
    runs: dict[str, Callable[[argparse.Namespace], int]] = {}
    for name, tool in tools.items():
        tool_parser = commands.add_parser(name, help=tool.help)
        if name == asked:
            # Only the command asked for imports its module (and its libraries).
            try:
                add_arguments, runs[name] = tool.load()
            except ImportError:  # installed without the dev dependency group
                return _not_installed(name)
            add_arguments(tool_parser)

    args = parser.parse_command(argv)
    match args.command:
        case "serve":
            return _serve(args)
        case "exporter":
            return _exporter()
        case "schema" if args.target == "typed":
            return _typed_schema(args.file, args.schema_type, write=args.write)
        case "schema":
            if args.file is not None or args.schema_type is not None:
                schema.error("FILE and --type go with `recordline schema typed`")
            return _schema(args.target, write=args.write)
        case "export":
            return _export(args)
        case "audit":
            return _audit(args)
        case "replay":
            return _replay(args)
        case "tables":
            return _tables(args)
        case "tail":
            return _tail(args)
        case "restore":
            return _restore(args)
        case "sql":
            return _sql(args)
        case "typed":
            return _backfill(args)
        case "config":
            if args.reference:
                print(config_table())
                return 0
            return _config()
        case name if name in runs:
            return runs[name](args)
    return 2


def _typed_as() -> str:
    """This command as the user typed it: through dev.py, usage lines and advice say
    `python3 dev.py COMMAND`, which is what works there (a bare `recordline` is not on
    PATH)."""
    return os.environ.get("RECORDLINE_DEV_COMMAND") or "recordline"


def _not_installed(name: str) -> int:
    print(
        f"recordline {name}: a development tool, not installed with the service; "
        f"from a checkout, run `python3 dev.py {name}` (see README.md)",
        file=sys.stderr,
    )
    return 2


# The local tools' commands (recordline_dev/, beside the service, not in its image), in
# the order `--help` lists them where they are installed (absent from it elsewhere): a
# set's order changes from one run to the next.
DEV_TOOLS = ("dev", "publish")


class DevTool(Protocol):
    @property
    def help(self) -> str: ...
    def load(
        self,
    ) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]: ...


def _asked(argv: Sequence[str]) -> str | None:
    """The command in `argv`: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


class DevTools(Protocol):
    """The local tools (recordline_dev/tools.py), beside the service and not in its
    image: found by their entry point, so that the service's code imports none of them."""

    def commands(self) -> Mapping[str, DevTool]: ...

    def dev_file(self, typed_as: str) -> Path | str: ...

    def sql_serving(self, query: str, typed_as: str) -> int: ...

    def replay_status_line(self) -> StatusLine: ...


def _dev_tools() -> DevTools | None:
    """The local tools, where they are installed. Absent from the wheel and the image
    (the entry point is there, its package is not); in a checkout installed without
    the dev dependency group (`pip install -e .`) the package imports but its modules
    do not: either way the service's own commands must still run."""
    for entry in entry_points(group="recordline.tools"):
        try:
            return cast("DevTools", entry.load())
        except ImportError:
            return None
    return None


def _settings(environ: dict[str, str], flags: dict[str, str] | None = None) -> Settings | None:
    """The settings, or None once a bad one is said, in one line, on stderr. A value
    given by a flag (`flags`: variable → flag) is named by the flag the user typed."""
    try:
        return Settings.load(environ)
    except SettingsError as exc:
        flag = (flags or {}).get(exc.var or "")
        if flag is not None and exc.var is not None:
            value = environ[exc.var]
            print(
                f"recordline: {flag} {value!r} is not accepted: expected {exc.accepts} "
                f"(it sets {exc.var})",
                file=sys.stderr,
            )
        else:
            print(f"recordline: {exc}", file=sys.stderr)
        return None


def _as_typed(exc: SettingsError, flags: dict[str, str]) -> str:
    """`exc`'s message, naming the flag the user typed where it begins with the variable
    that flag set (`RECORDLINE_HOST='0.0.0.0' is not…` as `--host '0.0.0.0' is not…`)."""
    text, flag = str(exc), flags.get(exc.var or "")
    if flag is None or not text.startswith(f"{exc.var}="):
        return text
    return f"{flag} {text.removeprefix(f'{exc.var}=')}"


# Where `recordline dev` keeps its sessions, below where it runs (recordline_dev.sessions).
DEV_SESSIONS = ".recordline-dev"


def _duckdb_file(args: argparse.Namespace) -> Path | str:
    """The DuckDB file `recordline sql` reads, or why there is none."""
    if args.dev:
        dev = _dev_tools()
        if dev is None:
            return "--dev reads the dev stack's sessions: a development tool, not installed here"
        return dev.dev_file(_typed_as())
    environ = dict(os.environ)
    if args.store:
        environ["RECORDLINE_STORE"] = args.store
    settings = _settings(environ, {"RECORDLINE_STORE": "--store"})
    if settings is None:
        return ""
    scheme, _, rest = settings.store.url.partition(":")
    if scheme != "duckdb":
        return (
            f"reads a DuckDB file (duckdb:…); the store is {settings.store.url!r} "
            "(memory: lives inside its service; BigQuery has its own console and `bq query`)"
        )
    return Path(rest.removeprefix("//") or "recordline.duckdb")


def _sql(args: argparse.Namespace) -> int:
    """`recordline sql`: one statement against a DuckDB store's file, read-only; a
    consistent copy of it when a running service holds it (app.store.duckdb.snapshot).
    With --serving, against the dev stack's BigQuery stand-in instead."""
    import duckdb

    from app.store.duckdb.snapshot import SnapshotError, reading

    if args.serving:
        return _sql_serving(args.query)
    path = _duckdb_file(args)
    if isinstance(path, Path) and not path.exists():
        path = (
            f"{path} does not exist: name the store's file (--store duckdb:PATH), or use --dev "
            "for the dev stack's"
        )
    if isinstance(path, str):
        if path:  # a refused setting said its own line
            print(f"recordline sql: {path}", file=sys.stderr)
        return 2
    try:
        with reading(path) as (con, copied):
            if copied:
                print(
                    f"recordline sql: {path} is open in a running service: reading a copy "
                    "of it taken now",
                    file=sys.stderr,
                )
            # Read-only beyond the store too: no file written or read, no extension
            # fetched, no database attached; and no statement may set it back.
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            answer = con.sql(args.query)
            if answer is not None:
                answer.show(max_rows=1000)
    except SnapshotError as exc:
        print(f"recordline sql: {exc}", file=sys.stderr)
        return 1
    except duckdb.Error as exc:
        print(f"recordline sql: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def _sql_serving(query: str) -> int:
    """`recordline sql --serving`: the dev stack's BigQuery stand-in, asked by the local
    tools (recordline_dev/tools.py)."""
    dev = _dev_tools()
    try:
        if dev is not None:
            return dev.sql_serving(query, _typed_as())
    except ImportError:
        pass
    print(
        "recordline sql: --serving queries the dev stack: a development tool, not installed here",
        file=sys.stderr,
    )
    return 2


def _export(args: argparse.Namespace) -> int:
    from app.commands import export as exporting
    from app.commands.target import TargetError, one_system
    from app.store.open import operated
    from app.telemetry import configure_logging, google_project

    settings = _settings(dict(os.environ))
    if settings is None:
        return 2
    try:
        settings = one_system(settings, args.system)
    except TargetError as exc:
        print(f"recordline export {args.action}: {exc}", file=sys.stderr)
        return 2
    # As the service logs (JSON lines where it runs as a Cloud Run job, so that a
    # decision's operator and reason are fields of its entry), warnings and up.
    configure_logging(
        "WARNING",
        settings.server.log_format,
        project=google_project(settings),
        system=settings.telemetry.system,
    )
    return asyncio.run(exporting.run(args, operated(settings)))


def _audit(args: argparse.Namespace) -> int:
    """`recordline audit`, asking the service `--url`, RECORDLINE_URL or the local
    default names; in a cell, the system's paths (`--system`), with a token minted
    where it runs as the cell's job (`app.commands.target`)."""
    from app.commands import audit as auditing
    from app.commands.credentials import NoCredentials
    from app.commands.target import TargetError, service_target

    settings = _settings(dict(os.environ))
    if settings is None:
        return 2
    try:
        target = service_target(settings, system=args.system, url=args.url, token=args.token)
        args.url, args.token = target.url, target.token()
    except (TargetError, NoCredentials) as exc:
        print(f"recordline audit: {exc}", file=sys.stderr)
        return 2
    return auditing.run(args)


def _tables(args: argparse.Namespace) -> int:
    """`recordline tables fill` (app/commands/tables.py), for one system of a cell."""
    from app.commands import tables as filling
    from app.telemetry import configure_logging, google_project

    settings = _settings(dict(os.environ))
    if settings is None:
        return 2
    configure_logging(
        "INFO",
        settings.server.log_format,
        project=google_project(settings),
        system=settings.telemetry.system,
    )
    return filling.run(args, settings)


def _tail(args: argparse.Namespace) -> int:
    """`recordline tail` (app/commands/tail.py), asking the service as `audit` does."""
    from app.commands import tail as tailing

    settings = _settings(dict(os.environ))
    if settings is None:
        return 2
    return tailing.run(args, settings)


def _replay(args: argparse.Namespace) -> int:
    """`recordline replay` (app/commands/replay.py), with a status line on a terminal
    where the local tools are installed."""
    from app.commands import replay as replaying

    settings = _settings(dict(os.environ))
    if settings is None:
        return 2
    status: replaying.StatusLine = replaying.no_status_line
    dev = _dev_tools() if sys.stderr.isatty() else None
    if dev is not None:
        with contextlib.suppress(ImportError):  # without rich: its lines are a log's
            status = dev.replay_status_line()
    return replaying.run(args, settings, status=status)


def _exporter() -> int:
    """`recordline exporter` (app/exporter): a process of its own, apart from `serve`.
    It serves no request (a Cloud Run worker pool has no port), and exports every
    system of RECORDLINE_SYSTEMS that has a serving tier."""
    from app.exporter import service
    from app.telemetry import configure_logging, google_project

    settings = _settings(dict(os.environ))
    if settings is None:
        return 2
    if not any(entry.serving for entry in settings.systems().values()):
        print(
            "recordline exporter: RECORDLINE_SYSTEMS names no system with a serving tier to "
            "export (`recordline config --reference` says what it holds)",
            file=sys.stderr,
        )
        return 2
    configure_logging(
        settings.server.log_level, settings.server.log_format, project=google_project(settings)
    )
    try:
        asyncio.run(service.serve(settings))
    except SettingsError as exc:
        print(f"recordline exporter: {exc}", file=sys.stderr)
        return 2
    return 0


def _restore(args: argparse.Namespace) -> int:
    from app.commands import restore

    settings = _settings(dict(os.environ))
    if settings is None:
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return restore.run(
            args,
            serving=settings.store.serving,
            emulator_host=settings.store.spanner_emulator_host,
        )
    except DefaultCredentialsError:
        print(
            "recordline restore: no Google credentials here: sign in as the operator "
            "(`gcloud auth application-default login --impersonate-service-account=…`, see "
            "docs/operations.md), or set SPANNER_EMULATOR_HOST for an emulator's databases",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            "\nrecordline restore: interrupted; what it wrote back is kept (each row is "
            "written once), run it again to go on",
            file=sys.stderr,
        )
        return 130


def _backfill(args: argparse.Namespace) -> int:
    """`recordline typed backfill`: every first copy of a record in the range, its
    typed fields projected again, a page at a time."""
    from datetime import UTC, datetime

    import msgspec

    from app.asgi import declared, fetching_schemas, store_revisions
    from app.errors import StoreUnavailable
    from app.records import Record, micros, rfc3339
    from app.store import PageQuery
    from app.store.open import open_reprojecting
    from app.typed.revisions import Revisions

    environ = dict(os.environ)
    if args.store:
        environ["RECORDLINE_STORE"] = args.store
    settings = _settings(environ, {"RECORDLINE_STORE": "--store"})
    if settings is None:
        return 2
    on_bigquery = settings.store.url.startswith("bigquery:")
    if not settings.store.url.startswith("duckdb:") and not on_bigquery:
        print(
            "recordline typed backfill: runs on a DuckDB file (duckdb:…) or on BigQuery "
            f"(bigquery://…); RECORDLINE_STORE is {settings.store.url!r}",
            file=sys.stderr,
        )
        return 2
    since = 0 if args.since is None else micros(args.since)
    until = micros(args.until or datetime.now(UTC))
    try:
        # On BigQuery, a revision no process of this run decoded is fetched; a
        # DuckDB file keeps each revision's fields itself (`typed_revisions`).
        revisions = (
            store_revisions(fetching_schemas(settings))
            if on_bigquery
            else declared(settings, Revisions())
        )
    except SettingsError as exc:
        print(f"recordline: {exc}", file=sys.stderr)
        return 2
    if on_bigquery:
        if not args.reason or not args.operator:
            print(
                "recordline typed backfill: on BigQuery, --reason and --operator are required "
                "(the service's own table changes, and whoever reads its logs asks why)",
                file=sys.stderr,
            )
            return 2
        logging.getLogger("app.cli").warning(
            "operator %s backfills the typed columns of records from %s to %s. Reason: %s",
            args.operator,
            "the first record" if args.since is None else rfc3339(args.since),
            "now" if args.until is None else rfc3339(args.until),
            args.reason,
            extra={"fields": {"operator": args.operator, "reason": args.reason}},
        )
        return _backfill_bigquery(args, settings, revisions, since, until)
    try:
        store = open_reprojecting(settings, revisions=revisions)
    except SettingsError as exc:
        print(f"recordline typed backfill: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        await store.start()
        try:
            projected = 0
            # Every row after (since, ""): those ingested at `since` included.
            query = PageQuery(after_time=since, after_message_id="", before_time=until, limit=1000)
            while True:
                page = await store.page(Record, query)
                projected += await store.reproject(page.rows)
                resume = (page.after_time, page.after_message_id)
                if resume[0] >= until or resume == (query.after_time, query.after_message_id):
                    return projected  # the whole range was examined
                query = msgspec.structs.replace(
                    query, after_time=resume[0], after_message_id=resume[1]
                )
        finally:
            await store.close()

    try:
        projected = asyncio.run(run())
    except StoreUnavailable as exc:
        print(
            f"recordline typed backfill: {exc} (a DuckDB file is open in one process at a "
            "time: stop the service first)",
            file=sys.stderr,
        )
        return 1
    print(f"recordline typed backfill: {projected} records projected again", file=sys.stderr)
    return 0


def _backfill_bigquery(
    args: argparse.Namespace, settings: Settings, revisions: Revisions, since: int, until: int
) -> int:
    """`recordline typed backfill` on BigQuery's `records` (alone or behind the serving
    tier), in place, while the service runs (app/store/bigquery/backfill.py)."""
    from google.auth.exceptions import GoogleAuthError

    from app.errors import StoreUnavailable
    from app.store.bigquery.backfill import BackfillError
    from app.store.open import open_bigquery

    store = open_bigquery(settings, revisions=revisions)

    async def run() -> Any:
        await store.start()
        try:
            return await store.backfill(
                since,
                until,
                statement_seconds=args.timeout,
                max_bytes_billed=args.max_bytes_billed,
            )
        finally:
            await store.close()

    try:
        done = asyncio.run(run())
    except (BackfillError, StoreUnavailable, GoogleAuthError) as exc:
        print(f"recordline typed backfill: {exc}", file=sys.stderr)
        return 1
    print(
        f"recordline typed backfill: {done.projected} records projected again, "
        f"{done.updated} rows updated, {done.unknown} left as they were (revision unknown), "
        f"{done.bytes_billed} bytes billed",
        file=sys.stderr,
    )
    return 0


def _config() -> int:
    environ = dict(os.environ)
    settings = _settings(environ)
    if settings is None:
        return 2
    rows = effective(settings, environ)
    width = max(len(row.var) for row in rows)
    value_width = min(60, max(len(row.value) for row in rows))
    print(f"{'VARIABLE':<{width}}  {'VALUE':<{value_width}}  FROM")
    for row in rows:
        print(f"{row.var:<{width}}  {row.value:<{value_width}}  {row.source}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    overrides = {"RECORDLINE_HOST": args.host, "PORT": args.port, "RECORDLINE_STORE": args.store}
    given = {k: v for k, v in overrides.items() if v is not None}
    environ = {**os.environ, **given}
    flags = {"RECORDLINE_HOST": "--host", "PORT": "--port", "RECORDLINE_STORE": "--store"}
    typed = {var: flags[var] for var in given}
    settings = _settings(environ, typed)
    if settings is None:
        return 2
    return serve(settings, typed)


def serve(settings: Settings, typed: dict[str, str] | None = None) -> int:
    """`recordline serve` with `settings`, until stopped; its exit status. (What is a
    constant in the service, a test that needs a real process builds otherwise here.)
    `typed`: the flags that set variables, which a refusal names as the user typed them."""
    typed = typed or {}
    import uvicorn

    from app.asgi import create_app
    from app.cell.app import Cell, create_cell
    from app.http.head import Recordline
    from app.http.limits import bounded_connections
    from app.process import CLOSING_SECONDS
    from app.telemetry import configure_logging, google_project

    configure_logging(
        settings.server.log_level,
        settings.server.log_format,
        project=google_project(settings),
        # A cell's own lines under its name; each system's under the system's (app.cell).
        system=settings.cell.name or settings.telemetry.system,
    )
    try:
        # create_app refuses settings that would leave the service open (app.auth);
        # a cell is one app per system, each refusing its own (app.cell).
        app: Recordline | Cell = (
            create_cell(settings) if settings.cell.name else create_app(settings)
        )
    except SettingsError as exc:
        print(f"recordline: {_as_typed(exc, typed)}", file=sys.stderr)
        return 2
    # The port first: taken, nothing else starts (no store is opened or made),
    # and it is said in one line.
    try:
        listening = bind(settings.server.host, settings.server.port)
    except OSError as exc:
        start_log.error(
            "cannot start: %s:%d cannot be listened on (%s); stop what holds it, or choose "
            "another port (--port, PORT)",
            settings.server.host,
            settings.server.port,
            exc.strerror or exc,
        )
        return STARTUP_FAILED
    server = settings.server
    errors = StartErrors()
    for handler in logging.getLogger().handlers:
        handler.addFilter(errors)
    served = OneLineStartFailure(app, errors, url=_url(listening))
    config = uvicorn.Config(
        served,
        # An ASGI 3 app whose __call__ returns the app's awaitable (not a coroutine
        # function, which is what uvicorn would look for).
        interface="asgi3",
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        # Every byte of every request bounded in size and time, and connections at once
        # (app.http.limits), which answers past its bound itself: no limit_concurrency.
        http=bounded_connections(served, server, app.connections, app.budget),
        # No WebSocket route: an upgrade is refused (app.http.limits), never handed over.
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        # Open requests get the stop's grace less what the drain and the store's close
        # keep (pushes are answered by then, app.lifespan): a reader that takes nothing is
        # cut off there, and the steps after it still have their time.
        timeout_graceful_shutdown=max(
            1, math.floor(server.shutdown_grace_seconds - CLOSING_SECONDS)
        ),
    )
    stop_on_hangup()
    quiet_garbage_collector()
    # A failure to start exits with uvicorn's status for it, 3.
    try:
        uvicorn.Server(config).run(sockets=[listening])
    except KeyboardInterrupt:
        # Ctrl-C: uvicorn drained and stopped, then raised it again; said already.
        return 130
    finally:
        # Objects frozen at start-up are never collected, and DuckDB's bindings
        # report each one still alive at exit as leaked (~50 lines on stderr).
        gc.unfreeze()
    return 0


def stop_on_hangup() -> None:
    """Stop on SIGHUP (the terminal closing) as on SIGTERM: drain, then exit.

    uvicorn handles SIGINT and SIGTERM only, and SIGHUP's default would end the
    process mid-request. Left alone where it is ignored (`nohup`).
    """
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return
    signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGTERM))


start_log = logging.getLogger("recordline")
# uvicorn's exit status for a start that failed, which `recordline serve` keeps.
STARTUP_FAILED = 3
# The most an error logged while the service starts waits to be said (StartErrors).
HOLD_SECONDS = 5.0
# What uvicorn logs once the app's start failed; the `cannot start:` line says more.
_UVICORN_START_FAILED = "Application startup failed. Exiting."


def bind(host: str, port: int) -> socket.socket:
    """The listening socket's address, bound as uvicorn binds one (SO_REUSEADDR, IPv6
    for a host with a colon); OSError if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


class StartErrors(logging.Filter):
    """Errors the service logs while it starts, held until the start is over.

    A store that cannot be opened logs why, then raises it; the start fails,
    and its one line (`cannot start: …`) says it again, as uvicorn would once
    more. A held line that the failure repeats is dropped, and so is uvicorn's;
    any other is said when the start ends, or HOLD_SECONDS after it began,
    whichever is first: a slow start hides nothing for long.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._held: list[logging.LogRecord] | None = []
        self.failed = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.failed and record.name == "uvicorn.error":
            return record.getMessage() != _UVICORN_START_FAILED
        if record.levelno < logging.ERROR or not record.name.startswith("app."):
            return True
        with self._lock:
            if self._held is None:
                return True
            self._held.append(record)
            return False

    def release(self, said: Sequence[str] = ()) -> None:
        """Say what was held, but for what one of `said` repeats; hold nothing more."""
        with self._lock:
            held, self._held = self._held or [], None
        for record in held:
            if not any(record.getMessage() in reason for reason in said):
                logging.getLogger(record.name).handle(record)


class OneLineStartFailure:
    """The app, but a failure to start it that the service expects is said in one line.

    Litestar reports a lifespan that raised with its whole traceback, for a store
    that cannot be opened an ExceptionGroup of some 30 lines. A failure the
    service raises on purpose (a RecordlineError, such as a store that cannot be
    reached, or Misconfigured, such as a Spanner schema that differs) is said
    by its message, once (StartErrors); anything else is a bug and keeps its
    traceback.
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        errors: StartErrors | None = None,
        *,
        url: str | None = None,
    ) -> None:
        self.app = app
        self.errors = errors or StartErrors()
        # Where the server listens once started (it says nothing of a socket it is given).
        self.url = url

    def __call__(self, scope: Message, receive: Receive, send: Send) -> Awaitable[None]:
        # A request is the app's own call, awaited by the server: no frame of this
        # wrapper is held for as long as it lasts (an idle follower's, hours).
        if scope["type"] != "lifespan":
            return self.app(scope, receive, send)
        return self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Message, receive: Receive, send: Send) -> None:
        errors = self.errors
        failed: list[Message] = []
        # However long the start takes, what it logged is said by then.
        timer = asyncio.get_running_loop().call_later(HOLD_SECONDS, errors.release)

        async def held(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                failed.append(message)
                return
            if message["type"] == "lifespan.startup.complete":
                timer.cancel()
                errors.release()
                if self.url is not None:
                    start_log.info("serving on %s", self.url)
            await send(message)

        try:
            await self.app(scope, receive, held)
        except BaseException as exc:
            timer.cancel()
            reasons = _expected(exc)
            if not failed or reasons is None:
                errors.release()
                for message in failed:
                    await send(message)
                raise
            errors.failed = True
            errors.release(reasons)
            start_log.error("cannot start: %s", "; ".join(reasons))
            # An empty message: the server says no more than that start-up failed.
            await send({"type": "lifespan.startup.failed", "message": ""})
        finally:
            timer.cancel()
            errors.release()


def _expected(exc: BaseException) -> list[str] | None:
    """The messages of the failures the service raises on purpose, or None for any other."""
    from app.errors import Misconfigured, RecordlineError

    if isinstance(exc, BaseExceptionGroup):
        found: list[str] = []
        for inner in exc.exceptions:
            reasons = _expected(inner)
            if reasons is None:
                return None
            found += reasons
        return found
    if isinstance(exc, RecordlineError | Misconfigured):
        return [str(exc)]
    return None


def quiet_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the hot path.

    The service loads ~1M long-lived objects (DuckDB, Arrow, Google clients),
    and every full collection walks them all: under load, collection took 17%
    of the event loop. Freezing what exists after start-up takes it out of
    every later collection; most request objects die by reference counting,
    so a larger first generation costs little memory.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def schema_files() -> dict[Path, str]:
    """Every schema file Terraform reads, as the code derives it."""
    from app.store.spanner.schema import ddl_template

    files = {
        SCHEMA_DIR / f"{name}.json": json.dumps(created_schema(row_type), indent=2) + "\n"
        for name, row_type in BIGQUERY_TABLES.items()
    }
    files[SPANNER_TEMPLATE] = ddl_template()
    return files


def typed_columns_file(source: Path, kind: str) -> str:
    """The text of `source`'s typed columns file (`source` + TYPED_SUFFIX), which
    Terraform creates a system's `records` with: the `fields` column that the
    schema's fields make (null when they make none), exactly as the service patches
    it into the table on the revision's first row, so that its merge of that
    revision then changes nothing; the schema's type; and the SHA-256 of the
    file's bytes, which the plan compares with the file's (filesha256). Raises
    SchemaError when the service could not decode with the schema, OverCap when
    its fields pass a cap of the mapping (the service gives it no typed columns)."""
    import hashlib

    from app.ingest.schemas import revision_codec, typed_fields
    from app.store.bigquery.typed import FIELDS, column_of
    from app.typed.mapping import Field, Type

    definition = source.read_bytes()
    fields = typed_fields(revision_codec(kind, definition.decode()))
    column = (
        column_of(Field(name=FIELDS, type=Type.RECORD, fields=fields)).to_api_repr()
        if fields
        else None
    )
    generated = {
        "source_sha256": hashlib.sha256(definition).hexdigest(),
        "type": kind,
        "column": column,
    }
    return json.dumps(generated, indent=2) + "\n"


def typed_files() -> dict[Path, str | None]:
    """Every typed columns file under SYSTEM_SCHEMAS, as the code derives it from its
    schema file and the type it names; None for one whose schema file is gone, that
    names no type, or whose schema file does not decode as that type."""
    files: dict[Path, str | None] = {}
    for path in sorted(SYSTEM_SCHEMAS.rglob(f"*{TYPED_SUFFIX}")):
        source = path.with_name(path.name.removesuffix(TYPED_SUFFIX))
        try:
            kind = json.loads(path.read_text()).get("type")
            files[path] = typed_columns_file(source, kind) if kind in SCHEMA_TYPES else None
        except (OSError, ValueError, AttributeError):  # SchemaError is a ValueError
            files[path] = None
    return files


def _typed_schema(file: str | None, kind: str | None, *, write: bool) -> int:
    from app.ingest.codec import SchemaError
    from app.typed.mapping import OverCap

    if file is None or kind is None:
        print(
            "recordline schema typed: FILE and --type AVRO|PROTOCOL_BUFFER are required, "
            "e.g. `recordline schema typed schemas/orders.avsc --type AVRO --write`",
            file=sys.stderr,
        )
        return 2
    source = Path(file)
    try:
        text = typed_columns_file(source, kind)
    except OSError as exc:
        print(f"recordline schema typed: {file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except OverCap as exc:
        print(f"recordline schema typed: {file}: {exc}", file=sys.stderr)
        return 2
    except (SchemaError, UnicodeDecodeError) as exc:
        print(f"recordline schema typed: {file} is no {kind} schema: {exc}", file=sys.stderr)
        return 2
    if not write:
        print(text, end="")
        return 0
    target = source.with_name(source.name + TYPED_SUFFIX)
    target.write_text(text)
    print(f"wrote {target}")
    return 0


def _rewrites_released_statements(text: str) -> str | None:
    """Why writing `text` over the Spanner statements Terraform applies would rewrite a
    released one, or None when it keeps every one of them and only appends."""
    from app.store.spanner.schema import split_statements

    if not SPANNER_TEMPLATE.exists():
        return None
    released = split_statements(SPANNER_TEMPLATE.read_text())
    now = split_statements(text)
    for index, statement in enumerate(released):
        if index >= len(now) or now[index] != statement:
            return (
                f"statement {index + 1} of {SPANNER_TEMPLATE.name} was released and would be "
                "rewritten or removed, which replaces every serving database: keep BASELINE "
                "and MIGRATIONS in app/store/spanner/schema.py as they were and append a "
                f"migration instead. Released: {statement.splitlines()[0]}"
            )
    return None


def in_checkout() -> bool:
    """Whether this module runs from a checkout of Recordline, beside the files Terraform reads."""
    import tomllib

    try:
        project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return False
    return bool(project.get("name") == "recordline") and SCHEMA_DIR.is_dir()


def _schema(target: str, *, write: bool) -> int:
    if write:
        if not in_checkout():
            print(
                f"recordline schema --write: {CHECKOUT} is not a checkout of Recordline (no "
                "pyproject.toml and infra/terraform/modules/system/schemas/ beside app/): "
                "the files it writes belong to the repository. Run it from a clone, or "
                "print the schemas with `recordline schema`",
                file=sys.stderr,
            )
            return 2
        files = schema_files()
        refused = _rewrites_released_statements(files[SPANNER_TEMPLATE])
        if refused:
            print(f"recordline schema --write: {refused}", file=sys.stderr)
            return 2
        for path, text in files.items():
            path.write_text(text)
            print(f"wrote {path}")
        lost = []
        for path, typed in typed_files().items():
            if typed is None:
                lost.append(path)
                continue
            path.write_text(typed)
            print(f"wrote {path}")
        for path in lost:
            print(
                f"recordline schema --write: {path} has no schema file beside it that "
                f"decodes as the type it names ({' or '.join(SCHEMA_TYPES)}): delete it, or "
                "write it again with `recordline schema typed FILE --type TYPE --write`",
                file=sys.stderr,
            )
        return 2 if lost else 0
    if target == "spanner":
        from app.store.spanner.schema import ddl_text

        settings = _settings(dict(os.environ))
        if settings is None:
            return 2
        print(ddl_text(settings.query.dedupe_window_seconds), end="")
        return 0
    for path, text in schema_files().items():
        if path.suffix == ".json":
            print(f"# {path.name}\n{text}")
    return 0


def config_table() -> str:
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    lines += [f"| `{var}` | `{default}` | {doc} |" for var, default, doc in reference()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

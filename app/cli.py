"""The `recordline` command."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Protocol

from app.records import TABLES, bigquery_schema
from app.settings import Settings, SettingsError, effective, reference

# ASGI, as uvicorn calls an app.
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The checkout this module runs from, if it does: installed from a wheel, the
# directory above app/ is site-packages.
CHECKOUT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = CHECKOUT / "infra" / "terraform" / "modules" / "system" / "schemas"
# The serving tier's statements as Terraform applies them: append only.
SPANNER_TEMPLATE = SCHEMA_DIR / "spanner.sql.tftpl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recordline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--host", help="address to bind (RECORDLINE_HOST; default 127.0.0.1)")
    serve.add_argument("--port", help="port (PORT; default 8080)")
    serve.add_argument(
        "--store", help="store URL (RECORDLINE_STORE; default duckdb:recordline.duckdb)"
    )

    schema = commands.add_parser("schema", help="the table schemas, derived from the code")
    schema.add_argument(
        "target",
        nargs="?",
        choices=["bigquery", "spanner"],
        default="bigquery",
        help="BigQuery's JSON schemas (the default), or the serving tier's Spanner DDL "
        "(statements ended by `;`, for RECORDLINE_DEDUPE_WINDOW_SECONDS as set)",
    )
    schema.add_argument(
        "--write",
        action="store_true",
        help=f"write every schema file Terraform reads to {SCHEMA_DIR}",
    )

    config = commands.add_parser(
        "config", help="every setting's value here and where it came from (secrets hidden)"
    )
    config.add_argument(
        "--reference",
        action="store_true",
        help="every setting's default and meaning instead, as the README's Markdown table",
    )

    tools = _dev_tools()
    for name, tool in tools.items():
        tool.add_arguments(commands.add_parser(name, help=tool.help))
    for name in DEV_TOOLS.difference(tools):
        commands.add_parser(name, help="(a development tool: not installed here)")

    args = parser.parse_args(argv)
    match args.command:
        case "serve":
            return _serve(args)
        case "schema":
            return _schema(args.target, write=args.write)
        case "config":
            if args.reference:
                print(config_table())
                return 0
            return _config()
        case name if name in tools:
            return tools[name].run(args)
        case name if name in DEV_TOOLS:
            print(
                f"recordline {name}: a development tool, not installed with the service; "
                f"from a checkout, run `python3 dev.py {name}` (see README.md)",
                file=sys.stderr,
            )
            return 2
    return 2


# The local tools' commands (recordline_dev/, beside the service, not in its image).
DEV_TOOLS = frozenset({"dev", "publish", "tail", "replay"})


class DevTool(Protocol):
    @property
    def help(self) -> str: ...
    @property
    def add_arguments(self) -> Callable[[argparse.ArgumentParser], None]: ...
    @property
    def run(self) -> Callable[[argparse.Namespace], int]: ...


def _dev_tools() -> dict[str, DevTool]:
    # Absent from the wheel and the image; in a checkout installed without the
    # dev dependency group (`pip install -e .`) the package imports but its
    # modules do not: either way the service's own commands must still run.
    try:
        from recordline_dev import commands

        return dict(commands())
    except ImportError:
        return {}


def _settings(environ: dict[str, str]) -> Settings | None:
    """The settings, or None once a bad one is said, in one line, on stderr."""
    try:
        return Settings.load(environ)
    except SettingsError as exc:
        print(f"recordline: {exc}", file=sys.stderr)
        return None


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
    environ = {**os.environ, **{k: v for k, v in overrides.items() if v is not None}}
    settings = _settings(environ)
    if settings is None:
        return 2

    import uvicorn

    from app.asgi import create_app
    from app.telemetry import configure_logging, google_project

    configure_logging(
        settings.server.log_level,
        settings.server.log_format,
        project=google_project(settings),
        system=settings.telemetry.system,
    )
    try:
        # create_app refuses settings that would leave the service open (app.auth).
        app = create_app(settings)
    except SettingsError as exc:
        print(f"recordline: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        OneLineStartFailure(app),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(settings.server.shutdown_grace_seconds),
        # Pub/Sub keeps connections open; a short idle timeout would churn them.
        timeout_keep_alive=75,
    )
    stop_on_hangup()
    quiet_garbage_collector()
    # A failure to start exits with uvicorn's status for it, 3.
    try:
        uvicorn.Server(config).run()
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


class OneLineStartFailure:
    """The app, but a failure to start it that the service expects is said in one line.

    Litestar reports a lifespan that raised with its whole traceback, for a store
    that cannot be opened an ExceptionGroup of some 30 lines. A failure the
    service raises on purpose (a RecordlineError, such as a store that cannot be
    reached, or a SettingsError, such as a Spanner schema that differs) is said
    by its message; anything else is a bug and keeps its traceback.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        failed: list[Message] = []

        async def held(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                failed.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, held)
        except BaseException as exc:
            reasons = _expected(exc)
            if not failed or reasons is None:
                for message in failed:
                    await send(message)
                raise
            start_log.error("cannot start: %s", "; ".join(reasons))
            # An empty message: the server says no more than that start-up failed.
            await send({"type": "lifespan.startup.failed", "message": ""})


def _expected(exc: BaseException) -> list[str] | None:
    """The messages of the failures the service raises on purpose, or None for any other."""
    from app.errors import RecordlineError

    if isinstance(exc, BaseExceptionGroup):
        found: list[str] = []
        for inner in exc.exceptions:
            reasons = _expected(inner)
            if reasons is None:
                return None
            found += reasons
        return found
    if isinstance(exc, RecordlineError | SettingsError):
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
        SCHEMA_DIR / f"{name}.json": json.dumps(bigquery_schema(row_type), indent=2) + "\n"
        for name, row_type in TABLES.items()
    }
    files[SPANNER_TEMPLATE] = ddl_template()
    return files


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
        return 0
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

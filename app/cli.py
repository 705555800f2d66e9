"""The `recordline` command."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from app.records import TABLES, bigquery_schema
from app.settings import Settings, SettingsError, reference

# The checkout this module runs from, if it does: installed from a wheel, the
# directory above app/ is site-packages.
CHECKOUT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = CHECKOUT / "infra" / "terraform" / "modules" / "system" / "schemas"


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

    commands.add_parser("config", help="every setting, as a Markdown table")

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
            print(config_table())
            return 0
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


def _serve(args: argparse.Namespace) -> int:
    overrides = {"RECORDLINE_HOST": args.host, "PORT": args.port, "RECORDLINE_STORE": args.store}
    environ = {**os.environ, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        settings = Settings.load(environ)
    except SettingsError as exc:
        print(f"recordline: {exc}", file=sys.stderr)
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
        app,
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
    files[SCHEMA_DIR / "spanner.sql.tftpl"] = ddl_template()
    return files


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
        for path, text in schema_files().items():
            path.write_text(text)
            print(f"wrote {path}")
        return 0
    if target == "spanner":
        from app.store.spanner.schema import ddl_text

        try:
            settings = Settings.load()
        except SettingsError as exc:
            print(f"recordline: {exc}", file=sys.stderr)
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

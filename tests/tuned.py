"""`recordline serve` with some of the service's constants given other values, for the
tests that need a real process (its memory, its sockets, its signals) and cannot wait
out the real ones (a header timeout of 10 s, a long-poll of 20 s):

    python tests/tuned.py '{"server": {"header_timeout_seconds": 1}}' --port P --store S

The settings are read from the environment as `recordline serve` reads them; the JSON
then sets fields of their sections (`app.settings`) that no variable sets, checked
against their types and bounds, and the service runs with them (`app.cli.serve`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from app.cli import serve
from app.settings import Settings

TUNED = str(Path(__file__).resolve())


def argv(changes: dict[str, dict[str, Any]], *args: str) -> list[str]:
    """The command that serves with `changes` (section → field → value); `args` as
    `recordline serve` takes them (`--port`, `--store`)."""
    return [sys.executable, TUNED, msgspec.json.encode(changes).decode(), *args]


def tuned(settings: Settings, changes: dict[str, dict[str, Any]]) -> Settings:
    """`settings` with `changes`, each section's fields checked as its type declares."""
    sections = {}
    for name, fields in changes.items():
        section = getattr(settings, name)
        merged = {**msgspec.structs.asdict(section), **fields}
        sections[name] = msgspec.convert(merged, type(section))
    return msgspec.structs.replace(settings, **sections)


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tests/tuned.py")
    parser.add_argument("changes")
    parser.add_argument("--port", required=True)
    parser.add_argument("--store", required=True)
    given = parser.parse_args(args)
    environ = {**os.environ, "PORT": given.port, "RECORDLINE_STORE": given.store}
    return serve(tuned(Settings.load(environ), msgspec.json.decode(given.changes)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

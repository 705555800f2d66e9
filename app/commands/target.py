"""Where a command finds one system of a cell, and how it reaches a running service.

`one_system` gives a command that works on a system's stores (`recordline export`) that
system's settings. `service_target` gives one that asks the service (`audit`, `replay`)
its URL (`--url` or RECORDLINE_URL, in a cell the system's paths under it) and tokens:
`--token`, or, as a cell's job (RECORDLINE_URL and RECORDLINE_READ_AUDIENCE set), ID
tokens for the read audience from the metadata server (`credentials.IdTokens`).

Design: docs/operations.md#running-commands-as-a-cells-job
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple

from app.commands.credentials import IdTokens
from app.settings import (
    SYSTEM_ACCEPTED,
    Settings,
    is_system_name,
    system_path,
    system_settings,
)

if TYPE_CHECKING:  # imported where used: `--help` must not pay for it
    import httpx

# Where a running service answers when neither --url nor RECORDLINE_URL says.
DEFAULT_URL: Final = "http://127.0.0.1:8080"
# At most this many of a cell's systems are named in a refusal.
_NAMED: Final = 5


class TargetError(Exception):
    """The command cannot find its system or reach its service; said in one line."""


def add_system_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--system",
        type=system_name,
        help=f"in a cell (RECORDLINE_CELL), the system {what}: its entry in "
        "RECORDLINE_SYSTEMS, its paths under /systems/SYSTEM",
    )


def system_name(text: str) -> str:
    """`--system`, refused at once (argparse: exit 2) unless it is a system's name."""
    if not is_system_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a system's name: {SYSTEM_ACCEPTED}")
    return text


def _systems_named(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    return shown + (f" and {len(names) - _NAMED} more" if len(names) > _NAMED else "")


def one_system(settings: Settings, system: str | None) -> Settings:
    """The settings a command runs with for `system`: in a cell, that system's (its
    entry in RECORDLINE_SYSTEMS over the cell's); for a deployment of one, the
    process's own. TargetError for a cell without `system`, or a system it lacks."""
    systems = settings.systems()
    if system is None:
        if settings.cell.name:
            raise TargetError(
                f"RECORDLINE_CELL={settings.cell.name!r}: name the system (--system=SYSTEM; "
                f"the cell's: {_systems_named(list(systems))})"
            )
        return settings
    entry = systems.get(system)
    if entry is None:
        if not systems:
            raise TargetError(f"--system={system}: RECORDLINE_SYSTEMS names no system here")
        raise TargetError(
            f"--system={system}: no such system in RECORDLINE_SYSTEMS (it names "
            f"{_systems_named(list(systems))})"
        )
    return system_settings(settings, system, entry)


class Target(NamedTuple):
    """The service a command asks, and the bearer token of each request (None: none)."""

    url: str
    token: Callable[[], str | None]


def service_target(
    settings: Settings, *, system: str | None, url: str | None, token: str | None
) -> Target:
    """Where a command asks the service, and with which token (see the module notes);
    TargetError for a cell's command without `system`, or a system the cell lacks."""
    base = url or settings.command.url or DEFAULT_URL
    if system is None and settings.cell.name:
        one_system(settings, None)  # refused, naming the cell's systems
    if system is not None:
        systems = settings.systems()
        # Where the cell's systems' file is not at hand (a shell with only --url), the
        # service says whether it serves the system.
        if systems:
            one_system(settings, system)
        base = base.rstrip("/") + system_path(system)
    if token:
        return Target(base, lambda: token)
    audience = next((a.strip() for a in settings.auth.read_audience.split(",") if a.strip()), "")
    if url is None and settings.command.url and audience:
        return Target(base, IdTokens(audience))
    return Target(base, lambda: None)


class Unreachable(RuntimeError):
    """What a command waits for did not answer in time; the message says what and where."""


def problem_detail(response: httpx.Response) -> str:
    """What a problem document says went wrong (its `detail`), not its raw JSON."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict) and problem.get("detail"):
        return str(problem["detail"])
    text = response.text.strip()
    return text[:300] or response.reason_phrase


def transport_reason(exc: httpx.TransportError) -> str:
    """A transport failure in a few words: a refused connection, above all, says "not running"."""
    import httpx

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return str(exc) or type(exc).__name__

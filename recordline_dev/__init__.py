"""Local tools around the service: `recordline dev` and `publish` (and `replay`'s
status line on a terminal; the command is the service's, which a cell's job runs).

They live apart from `app/`, the service, and are not in its wheel or image:
the development environment has this directory on its path (the project's
editable install) and installs their libraries (`rich`, `google-cloud-pubsub`)
with the dev dependency group. They add their subcommands to `recordline` through
the entry point `recordline.tools` (tools.py, named in pyproject.toml): the service
imports nothing of them, and runs its own commands alone where they are absent.

A new command: a module here with `add_arguments(parser)` and `run(args)`,
listed in COMMANDS by name (imported only when the command runs).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Callable
from typing import NamedTuple


class Command(NamedTuple):
    """A command, named by where it lives: its module is imported only once the
    command is asked for, so that `recordline --help` imports none of them."""

    help: str
    module: str
    add_arguments: str
    run: str

    def load(self) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]:
        """The command's argument builder and runner; ImportError where the dev
        dependency group is not installed (its libraries are looked for, not
        imported: the modules import them where they use them, so `--help` is quick)."""
        for library in DEV_LIBRARIES:
            try:
                found = importlib.util.find_spec(library)
            except ImportError:  # its parent package is missing too
                found = None
            if found is None:
                raise ImportError(f"{library} is not installed (the dev dependency group)")
        module = importlib.import_module(f"recordline_dev.{self.module}")
        return getattr(module, self.add_arguments), getattr(module, self.run)


# What the tools need beyond the service's own dependencies: the dev group's.
DEV_LIBRARIES = ("rich", "google.cloud.pubsub_v1")

COMMANDS: dict[str, Command] = {
    "dev": Command(
        "the local stack: Pub/Sub emulator pushing to the service (Ctrl-C stops it)",
        "devstack",
        "add_dev_arguments",
        "dev_command",
    ),
    "publish": Command(
        "publish records to a Pub/Sub topic", "client", "add_publish_arguments", "publish_command"
    ),
}


def commands() -> dict[str, Command]:
    return dict(COMMANDS)


__all__ = ["COMMANDS", "Command", "commands"]

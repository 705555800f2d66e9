"""Local tools around the service: `recordline dev`, `publish`, `tail` and `replay`.

They live apart from `app/`, the service, and are not in its wheel or image:
the development environment has this directory on its path (the project's
editable install) and installs their libraries (`rich`, `google-cloud-pubsub`)
with the dev dependency group. `app.cli` adds their subcommands when this
package can be imported.

A new command: a module here with `add_arguments(parser)` and `run(args)`,
listed in COMMANDS.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def commands() -> dict[str, Command]:
    from recordline_dev import client, devstack, replay

    return {
        "dev": Command(
            "the local stack: Pub/Sub emulator pushing to the service (Ctrl-C stops it)",
            devstack.add_dev_arguments,
            devstack.dev_command,
        ),
        "publish": Command(
            "publish records to a Pub/Sub topic",
            client.add_publish_arguments,
            client.publish_command,
        ),
        "replay": Command(
            "replay rejected or dead-lettered messages through today's validation, once",
            replay.add_replay_arguments,
            replay.replay_command,
        ),
        "tail": Command(
            "follow /v1/records, printing records as JSON lines",
            client.add_tail_arguments,
            client.tail_command,
        ),
    }


__all__ = ["Command", "commands"]

"""Google's Spanner emulator, started for the tests that need a real Spanner.

The emulator and the making of its instance and databases are the local tools'
(recordline_dev/serving.py, which `recordline dev --serving` uses too). One
emulator serves a test session; each test gets a database of its own, made
with exactly the statements `recordline schema spanner` prints. The emulator
keeps everything in memory and aborts a read-write transaction that races
another, which exercises the retry path the real Spanner needs too.

Its clock runs ahead of this machine's, further with use: it hands out each
time at least a microsecond after the last, and asks for two at every request,
so its commit timestamps were 13 ms ahead after tests/spanner/ (none at its
start). A read at a time past its clock waits for it, as Spanner's waits out
its uncertainty, and another instance's followers hear of a commit that much
later. A read at an exact time is complete all the same: it waits for every
commit stamped before that time (reads of `[end, now)` at `now`, as the tail
reads, missed none of 800 commits made alongside them, on a loaded machine too).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

from app.settings import QuerySettings
from app.store.open import spanner_database
from app.store.spanner.schema import ddl
from recordline_dev import serving

PROJECT = "recordline-test"
INSTANCE = "serving"
# An instance holds at most 100 databases (the emulator keeps Spanner's quota):
# a session's tests fill a new instance once one is nearly full.
DATABASES_PER_INSTANCE = 90


def find_emulator() -> Path:
    """The emulator binary; raises EmulatorNotFound with a message starting "Spanner emulator"."""
    return serving.find_spanner_emulator()


class SpannerEmulator:
    """One emulator process on a loopback port, with one instance made in it."""

    def __init__(self, binary: Path, log: Path) -> None:
        self._emulator = serving.SpannerEmulator(binary, log_path=log)
        self.process = self._emulator.process
        self.port = self._emulator.port
        self.host = self._emulator.host
        self._names = itertools.count()
        self.client: Any = self._emulator.client(PROJECT)
        self.instance = self._emulator.create_instance(self.client, INSTANCE)
        self._instances = itertools.count(1)

    def database(self, statements: list[str] | None = None) -> str:
        """A new database with `statements` (the service's schema by default): its URL."""
        window = QuerySettings().dedupe_window_seconds
        number = next(self._names)
        if number and not number % DATABASES_PER_INSTANCE:
            name = f"{INSTANCE}-{next(self._instances)}"
            self.instance = self._emulator.create_instance(self.client, name)
        return self._emulator.create_database(
            self.instance,
            f"db{number}",
            ddl(window) if statements is None else statements,
        )

    def database_of(self, url: str) -> Any:
        """The client's handle on the database a URL of `database()` names, in whichever
        instance made it (a later one is made once one is nearly full)."""
        where = spanner_database(url)
        return self.client.instance(where.instance).database(where.database)

    def database_in(self, project: str, like: str) -> str:
        """A new database with the service's schema in `project`, its instance and its own
        names those of `like` (a database of this emulator): the same names elsewhere."""
        where = spanner_database(like)
        client = self._emulator.client(project)
        try:
            instance = client.instance(where.instance)
            if not instance.exists():
                instance = self._emulator.create_instance(client, where.instance)
            window = QuerySettings().dedupe_window_seconds
            return self._emulator.create_database(instance, where.database, ddl(window))
        finally:
            client.close()

    def pause(self) -> None:
        """Stop answering (as an unreachable Spanner), keeping every row: returns once
        every thread of the emulator's processes is stopped, not only signalled (a
        thread busy on another core, or in a system call, stops a moment later)."""
        os.killpg(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        # Nothing tells this process when another's threads stop (waitid reports its own
        # children, not the emulator's, nor threads): /proc is read again every ms.
        while not all_stopped(self.process.pid):
            if time.monotonic() > deadline:
                raise RuntimeError("the Spanner emulator did not stop within 5 s of SIGSTOP")
            time.sleep(0.001)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.resume()  # a paused emulator cannot stop
        self._emulator.stop()
        self.client.close()


def all_stopped(group: int) -> bool:
    """Whether every thread of every live process in process group `group` is stopped
    (state T in /proc), as SIGSTOP leaves it once it has taken hold."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name, in parentheses, may hold spaces: fields follow the last ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != group or fields[0] == "Z":
                continue
            for task in stat.parent.glob("task/*/stat"):
                with contextlib.suppress(OSError):
                    if task.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                        return False
    return True

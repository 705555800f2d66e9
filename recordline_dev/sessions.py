"""The dev stack's sessions: what each one ran, and whether it still runs.

`recordline dev` gives each session a directory of its own (`.recordline-dev/
session-YYYYmmdd-HHMMSS`). Once its stack is up it writes what runs there into
`stack.json` (the store, the service's and the emulators' addresses) and holds an
advisory lock on the file `running` for as long as it runs; a `recordline dev`
killed with -9 lets go of it with its other files, so a session that stopped,
however it stopped, is never taken for one that runs. `recordline sql --dev` and
`--serving`, and `recordline publish` (to count what the service stored), read them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec

# Below where `recordline dev` runs (its --data-dir), as `recordline sql --dev` looks.
DEV_SESSIONS = ".recordline-dev"
STACK_FILE = "stack.json"
LOCK_FILE = "running"
# A session's own DuckDB store, when it runs on one.
STORE_FILE = "records.duckdb"


class Stack(msgspec.Struct, kw_only=True, frozen=True):
    """What one session's stack runs, as its banner names it."""

    # RECORDLINE_STORE: the session's DuckDB file, another store (--store), or the
    # BigQuery stand-in's dataset (--serving).
    store: str
    service_url: str
    started: str
    # --serving: RECORDLINE_SERVING, and the stand-in's jobs.query endpoint.
    serving: str = ""
    bigquery_jobs: str = ""
    project: str = ""
    dataset: str = ""
    emulator_host: str = ""


class Session(msgspec.Struct, frozen=True):
    directory: Path
    stack: Stack | None
    running: bool

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def serving(self) -> bool:
        return self.stack is not None and bool(self.stack.serving)

    def duckdb_file(self) -> Path | None:
        """The DuckDB file the session stored into, if it has one here."""
        if self.stack is not None:
            scheme, _, rest = self.stack.store.partition(":")
            if scheme != "duckdb":
                return None
            path = Path(rest.removeprefix("//"))
        else:  # written before sessions said what they ran
            path = self.directory / STORE_FILE
        return path if path.is_file() else None

    def described(self) -> str:
        """The session as a reader finds it: its name, and whether it still runs."""
        return f"{self.name} ({'running' if self.running else 'stopped'})"


def sessions(data_dir: Path = Path(DEV_SESSIONS)) -> list[Session]:
    """Every session in `data_dir`, the oldest first (their names sort by start)."""
    found = []
    for directory in sorted(data_dir.glob("session-*")):
        if directory.is_dir():
            found.append(Session(directory, _stack(directory), _running(directory)))
    return found


def _stack(directory: Path) -> Stack | None:
    try:
        return msgspec.json.decode((directory / STACK_FILE).read_bytes(), type=Stack)
    except (OSError, msgspec.DecodeError):
        return None


def _running(directory: Path) -> bool:
    """Whether a `recordline dev` holds the session's lock."""
    try:
        lock = (directory / LOCK_FILE).open("rb")
    except OSError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def holding(directory: Path, stack: Stack) -> Iterator[None]:
    """Say that the session in `directory` runs `stack`, for as long as the block runs."""
    lock: IO[bytes] = (directory / LOCK_FILE).open("wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Written whole under another name, then renamed: a reader never sees half of it.
        partial = directory / f".{STACK_FILE}.{os.getpid()}"
        partial.write_bytes(msgspec.json.encode(stack))
        partial.replace(directory / STACK_FILE)
        yield
    finally:
        lock.close()  # the lock goes with it


def serving_stack(data_dir: Path = Path(DEV_SESSIONS)) -> Session | None:
    """The newest session whose `recordline dev --serving` runs, if any."""
    running = [s for s in sessions(data_dir) if s.running and s.serving]
    return running[-1] if running else None


def of_emulator(host: str, data_dir: Path = Path(DEV_SESSIONS)) -> Session | None:
    """The running session whose Pub/Sub emulator is at `host` (PUBSUB_EMULATOR_HOST;
    `localhost` is the loopback address the stack listens on)."""
    wanted = _loopback(host)
    for session in reversed(sessions(data_dir)):
        stack = session.stack
        if session.running and stack is not None and _loopback(stack.emulator_host) == wanted:
            return session
    return None


def _loopback(host: str) -> str:
    name, colon, port = host.rpartition(":")
    return f"127.0.0.1:{port}" if colon and name in ("localhost", "127.0.0.1") else host

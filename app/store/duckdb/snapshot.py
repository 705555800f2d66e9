"""A DuckDB store's file, read by another process while the service holds it.

DuckDB locks a database file to one process, even against readers; a reader that
finds the lock held takes a copy of the file and its write-ahead log instead. A
copy is consistent when nothing was written to either file while it was taken (a
state DuckDB recovers from after a crash): each file's size and modification time
before and after say whether that held, else the copy is taken again.

Design: docs/typed-columns.md#on-duckdb
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

# How long to keep trying for a copy that nothing was written into meanwhile.
COPY_SECONDS = 10.0
# Between tries: a write in progress is over by then.
RETRY_SECONDS = 0.02


class SnapshotError(RuntimeError):
    """The file cannot be read, as it stands or as a copy; the message says why."""


def _state(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_size, found.st_mtime_ns


def held(exc: duckdb.Error) -> bool:
    """Whether `exc` says another process holds the file's lock."""
    return "lock" in str(exc).lower()


# The service applies rows every 50 ms at most and a copy of a laptop's file takes
# milliseconds, so a retry or two does.
def copy(path: Path, into: Path, *, seconds: float = COPY_SECONDS) -> Path:
    """A consistent copy of the database at `path` (and its log) in the directory `into`."""
    wal = path.with_name(path.name + ".wal")
    target = into / path.name
    deadline = time.monotonic() + seconds
    while True:
        before = (_state(path), _state(wal))
        if before[0] is None:
            raise SnapshotError(f"{path} does not exist")
        target.with_name(target.name + ".wal").unlink(missing_ok=True)
        shutil.copyfile(path, target)
        if before[1] is not None:
            with contextlib.suppress(FileNotFoundError):  # checkpointed meanwhile: tried again
                shutil.copyfile(wal, target.with_name(target.name + ".wal"))
        if (_state(path), _state(wal)) == before:
            return target
        if time.monotonic() > deadline:
            raise SnapshotError(
                f"{path} was written to during every copy for {seconds:g} s; try again when "
                "the service is less busy, or stop it"
            )
        time.sleep(RETRY_SECONDS)


@contextlib.contextmanager
def reading(path: Path) -> Iterator[tuple[duckdb.DuckDBPyConnection, bool]]:
    """A read-only connection to the database at `path`, and whether it is a copy
    (taken because a running service holds the file)."""
    if not path.exists():
        raise SnapshotError(f"{path} does not exist")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        if not held(exc):
            raise SnapshotError(f"{path}: {str(exc).splitlines()[0]}") from None
    else:
        try:
            yield con, False
        finally:
            con.close()
        return
    with tempfile.TemporaryDirectory(prefix="recordline-snapshot-") as directory:
        copied = copy(path, Path(directory))
        # Opened writable once, so that DuckDB replays the log into the copy; then
        # read-only, as the file itself would be.
        duckdb.connect(str(copied)).close()
        os.chmod(copied, 0o400)
        con = duckdb.connect(str(copied), read_only=True)
        try:
            yield con, True
        finally:
            con.close()

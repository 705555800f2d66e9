"""The dev stack's sessions say what each ran and whether it still runs
(recordline_dev.sessions)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from recordline_dev.sessions import Stack, holding, of_emulator, serving_stack, sessions

STACK = Stack(
    store="bigquery://recordline-dev/recordline",
    service_url="http://127.0.0.1:8080",
    started="2026-01-01T00:00:00Z",
    serving="spanner://projects/recordline-dev/instances/recordline/databases/recordline",
    emulator_host="127.0.0.1:8085",
)


def test_a_session_runs_while_it_holds_its_lock(tmp_path: Path) -> None:
    directory = tmp_path / "session-20260101-000000"
    directory.mkdir()
    with holding(directory, STACK):
        (found,) = sessions(tmp_path)
        assert found.running
        assert found.stack == STACK
        assert serving_stack(tmp_path) == found
        # `localhost` names the address the stack listens on.
        assert of_emulator("localhost:8085", tmp_path) == found
        assert of_emulator("127.0.0.1:8086", tmp_path) is None
    (stopped,) = sessions(tmp_path)
    assert not stopped.running
    assert stopped.stack == STACK  # what it ran is still said
    assert serving_stack(tmp_path) is None


def test_a_session_killed_with_sigkill_is_seen_stopped(tmp_path: Path) -> None:
    # A `recordline dev` killed with -9 runs no clean-up: its lock goes with it.
    directory = tmp_path / "session-20260101-000000"
    directory.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib\n"
            "from recordline_dev.sessions import Stack, holding\n"
            f"stack = Stack(store='memory:', service_url='u', started='t')\n"
            f"with holding(pathlib.Path({str(directory)!r}), stack):\n"
            "    print('holding', flush=True)\n"
            "    sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"holding\n"
        assert sessions(tmp_path)[0].running
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        assert not sessions(tmp_path)[0].running
    finally:
        holder.kill()

"""`recordline dev` with Google's Pub/Sub emulator, as a user runs it in a terminal.

The emulator numbers message ids from 1 every time it starts: two sessions
on one store would take the second's messages for copies of the first's.
Here each session keeps its own, and a stop while the JVM boots leaves
nothing behind (tests/test_devstack.py does the same with a stand-in).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from recordline_dev.devstack import find_emulator
from recordline_dev.processes import EmulatorNotFound
from tests.processes import (
    BANNER,
    RECORDLINE,
    START_SECONDS,
    Terminal,
    assert_nothing_left,
    dev_terminal,
    stop,
)
from tests.waiting import until_blocking

pytestmark = pytest.mark.emulator

SEED = int(os.environ.get("RECORDLINE_SEED", time.time_ns() % 1_000_000))


@pytest.fixture
def launcher() -> Path:
    try:
        return find_emulator()
    except EmulatorNotFound as exc:
        pytest.skip(str(exc))  # starts "Pub/Sub emulator": CI turns it into a failure


def stored_ids(url: str, *, want: set[str], timeout: float) -> set[str]:
    """The record ids the service at `url` serves, once `want` are among them or time is up."""

    def ids() -> set[str]:
        page = httpx.get(
            f"{url}/v1/records", params={"since": "2000-01-01T00:00:00Z", "limit": 1000}
        ).json()
        return {r["id"] for r in page["records"]}

    with contextlib.suppress(AssertionError):  # the time ran out
        until_blocking(lambda: want <= ids(), timeout=timeout, interval=0.2)
    return ids()


@pytest.mark.usefixtures("launcher")
def test_two_sessions_in_a_row_keep_both_sessions_messages(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    seen: set[str] = set()
    for session, how in ((1, "ctrl-c"), (2, "terminal closes")):
        terminal, port, emulator_port = dev_terminal(tmp_path)
        terminals.append(terminal)
        assert terminal.wait_for(BANNER, timeout=START_SECONDS), terminal.output
        lines = tmp_path / f"session-{session}.jsonl"
        want = {f"s{session}-{n}" for n in range(3)}
        lines.write_text("".join(json.dumps({"id": i, "data": session}) + "\n" for i in want))
        env = {**os.environ, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{emulator_port}"}
        published = subprocess.run(
            [RECORDLINE, "publish", "--topic", "records", "--file", str(lines)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert published.returncode == 0, published.stderr
        url = f"http://127.0.0.1:{port}"
        # Only this session's messages: on a shared store the second session's
        # would be taken for the first's (same message ids) and never shown.
        assert stored_ids(url, want=want, timeout=30) == want, terminal.output[-3000:]
        stop(terminal, how)
        assert_nothing_left(terminal, how, f"ending session {session}")
        # The banner named the session's own store.
        (directory,) = [d for d in (tmp_path / "sessions").iterdir() if d.name not in seen]
        seen.add(directory.name)
        assert f"store      duckdb://{directory / 'records.duckdb'}" in terminal.output
        assert "this session's own" in terminal.output

    first, second = sorted((tmp_path / "sessions").iterdir())
    message_ids = []
    for session, directory in ((1, first), (2, second)):
        with duckdb.connect(str(directory / "records.duckdb"), read_only=True) as con:
            rows = con.execute("SELECT id, message_id FROM records").fetchall()
        assert {record_id for record_id, _ in rows} == {f"s{session}-{n}" for n in range(3)}
        message_ids.append({message_id for _, message_id in rows})
        assert (directory / "emulator.log").exists()
    # Why the stores must be apart: the emulator gave both sessions the same ids.
    assert message_ids[0] == message_ids[1]


@pytest.mark.usefixtures("launcher")
def test_ctrl_c_while_the_jvm_boots_leaves_no_process(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    terminal, _port, _emulator_port = dev_terminal(tmp_path)
    terminals.append(terminal)
    assert terminal.wait_for("starting the Pub/Sub emulator", timeout=START_SECONDS)
    delay = random.Random(SEED).uniform(0, 3)
    time.sleep(delay)  # the moment of the stop is what is tested: a random one
    stop(terminal, "ctrl-c")
    assert_nothing_left(terminal, "ctrl-c", f"{delay:.2f} s into the JVM's boot, seed {SEED}")

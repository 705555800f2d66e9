"""`recordline dev` and `python3 dev.py serve` as a user runs them, stopped at any moment.

Each runs in a terminal of its own (tests/processes.py): a Ctrl-C is a ^C
typed into it, a terminal closing is its hang-up. Signals land at random
moments of start-up, each drawn after a line the command prints (so that
start-up's phases are all reached however slow the machine): `RECORDLINE_SEED`
repeats a run. Afterwards `ps` must list nothing of the session. Without
Java this file runs a stand-in for the emulator's launcher, which boots for
ever and leaves a helper deaf to SIGTERM; the real emulator runs in
tests/e2e/test_devstack_emulator.py.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from app.commands.replay import add_arguments
from recordline_dev.devstack import DevStack, instructions
from tests.processes import (
    BANNER,
    ROOT,
    START_SECONDS,
    STOP_SECONDS,
    Terminal,
    assert_nothing_left,
    dev_terminal,
    fake_emulator,
    free_port,
    stop,
    wait_ready,
    wait_until_gone,
)

SEED = int(os.environ.get("RECORDLINE_SEED", time.time_ns() % 1_000_000))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    return random.Random(f"{SEED}-{request.node.name}")


def dev_env(tmp_path: Path, *, emulator: bool) -> dict[str, str]:
    """The environment: the stand-in emulator, or one that is missing (the service alone)."""
    launcher = fake_emulator(tmp_path) if emulator else tmp_path / "no-emulator-here"
    # find_emulator wants Java too; the stand-in needs none.
    return {**os.environ, "RECORDLINE_PUBSUB_EMULATOR": str(launcher), "JAVA_HOME": "/nonexistent"}


def dev(
    tmp_path: Path, terminals: list[Terminal], *, emulator: bool, extra: tuple[str, ...] = ()
) -> Terminal:
    terminal, _port, _emulator_port = dev_terminal(
        tmp_path, *extra, env=dev_env(tmp_path, emulator=emulator)
    )
    terminals.append(terminal)
    return terminal


# Where each stop lands: after which line, plus a random delay up to how long.
CASES = [
    # While the emulator boots (the stand-in never answers, as a slow JVM).
    ("ctrl-c", True, "starting the Pub/Sub emulator", 1.5),
    # While the service starts: its imports, its store, its journal writer.
    ("SIGTERM", False, "starting the service", 2.0),
    ("terminal closes", False, "starting the service", 2.0),
    # Anywhere from the first instant, the interpreter's own start included.
    ("terminal closes", True, "", 3.0),
    # Once it runs (on a store named by --store).
    ("ctrl-c", False, BANNER, 1.0),
]


@pytest.mark.slow
@pytest.mark.parametrize(("how", "emulator", "after", "within"), CASES)
def test_a_stop_at_a_random_moment_of_start_up_leaves_no_process(
    tmp_path: Path,
    terminals: list[Terminal],
    rng: random.Random,
    how: str,
    emulator: bool,
    after: str,
    within: float,
) -> None:
    kept = tmp_path / "kept.duckdb"
    extra = ("--store", f"duckdb://{kept}") if after == BANNER else ()
    terminal = dev(tmp_path, terminals, emulator=emulator, extra=extra)
    if after:
        assert terminal.wait_for(after, timeout=START_SECONDS), terminal.output
    delay = rng.uniform(0, within)
    time.sleep(delay)  # the moment of the stop is what is tested: a random one
    stop(terminal, how)
    assert_nothing_left(terminal, how, f"{delay:.2f} s after {after or 'the start'!r}, seed {SEED}")
    if after == BANNER:
        assert "stopping" in terminal.output
        # The store --store named is used, and the banner says ids may collide there.
        assert f"store      duckdb://{kept}" in terminal.output
        assert "named by --store: it holds no message" in " ".join(terminal.output.split())
        assert kept.exists()


@pytest.mark.parametrize("taken", ["emulator", "service"])
def test_a_port_taken_by_an_earlier_run_is_named_before_anything_starts(
    tmp_path: Path, terminals: list[Terminal], taken: str
) -> None:
    # What a killed `recordline dev` leaves: a process still listening on the port.
    port = free_port()
    # It listens until the test closes its stdin, or ends.
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys\n"
            f"s = socket.create_server(('127.0.0.1', {port}))\n"
            "print('listening', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"listening\n"
            option = "--emulator-port" if taken == "emulator" else "--port"
            terminal = dev(tmp_path, terminals, emulator=True, extra=(option, str(port)))
            status = terminal.wait(STOP_SECONDS)
            assert status == 1, terminal.output
            what = "Pub/Sub emulator" if taken == "emulator" else "service"
            assert f"port {port}, for the {what}, is taken by pid {holder.pid} (" in terminal.output
            assert f"kill {holder.pid}" in terminal.output
            assert option in terminal.output.split("is taken by", 1)[1]
            # Named, not reused, and nothing else started.
            assert BANNER not in terminal.output
            assert "starting the Pub/Sub emulator" not in terminal.output
            assert wait_until_gone(terminal.session, terminal.markers, timeout=5) == []
            assert holder.poll() is None
            assert list((tmp_path / "sessions").iterdir()) == []  # no empty session left
        finally:
            holder.kill()


@pytest.mark.slow
def test_a_store_an_earlier_session_pushed_into_is_refused_with_the_fix(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    # `dev --store <an earlier session's file>`: the new emulator numbers from 1 again,
    # so "published 2 of 2" stored nothing new, and /v1/records/new1 was a 404.
    from litestar.testing import TestClient

    from app.asgi import create_app
    from recordline_dev.devstack import earlier_sessions_messages
    from tests.conftest import envelope, settings

    kept = tmp_path / "earlier.duckdb"
    earlier = {"subscription": "projects/recordline-dev/subscriptions/records-push"}
    with TestClient(create_app(settings(RECORDLINE_STORE=f"duckdb://{kept}"))) as client:
        for n in (1, 2):
            body = {**envelope({"id": f"old{n}"}, message_id=str(n)), **earlier}
            assert client.post("/pubsub/push", json=body).status_code == 204
    terminal = dev(tmp_path, terminals, emulator=True, extra=("--store", f"duckdb://{kept}"))
    assert terminal.wait(STOP_SECONDS) == 2, terminal.output
    said = " ".join(terminal.output.split())
    assert f"--store duckdb://{kept} holds 2 messages an earlier session's" in said, said
    assert "(ids up to 2)" in said
    assert "Drop --store" in said
    assert "starting" not in said  # refused before anything started
    # A store the dev stack never pushed into (the tour's curl, a new file) is taken.
    fresh = tmp_path / "fresh.duckdb"
    with TestClient(create_app(settings(RECORDLINE_STORE=f"duckdb://{fresh}"))) as client:
        assert client.post("/pubsub/push", json=envelope({"id": "1"})).status_code == 204
    assert earlier_sessions_messages(f"duckdb://{fresh}") is None
    assert earlier_sessions_messages(f"duckdb://{tmp_path / 'new.duckdb'}") is None
    assert earlier_sessions_messages("memory:") is None


def test_a_second_dev_where_one_runs_says_to_use_it_not_to_kill_it(tmp_path: Path) -> None:
    # It said to `kill -- -PGID` a live, healthy stack, as if it were leftovers.
    from recordline_dev.devstack import running_here
    from recordline_dev.sessions import Stack, holding

    session = tmp_path / "session-2026-11-27T09-00-00"
    session.mkdir()
    stack = Stack(
        store="duckdb://x.duckdb", service_url="http://127.0.0.1:8123", started="09:00:00"
    )
    with holding(session, stack):
        said = running_here(tmp_path, 8123)
        assert said is not None
        assert "a dev stack runs here already" in said
        assert "http://127.0.0.1:8123" in said
        assert "kill" not in said
        assert running_here(tmp_path, 8124) is None  # another port: no clash
    assert running_here(tmp_path, 8123) is None  # stopped: its port is free again


def test_every_port_an_earlier_run_left_taken_is_named_at_once(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    # A `recordline dev` killed with -9 leaves its service and its emulator: each run
    # named one of them, so it took a run a port to find them all.
    ports = free_port(), free_port()
    listen = "".join(f"socket.create_server(('127.0.0.1', {p})), " for p in ports)
    with subprocess.Popen(
        [sys.executable, "-c", f"import socket, sys\nkept = [{listen}]\n"
         "print('listening', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # a process group of its own, as the stack's children
    ) as holder:  # fmt: skip
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"listening\n"
            extra = ("--port", str(ports[0]), "--emulator-port", str(ports[1]))
            terminal = dev(tmp_path, terminals, emulator=True, extra=extra)
            assert terminal.wait(STOP_SECONDS) == 1, terminal.output
            said = " ".join(terminal.output.split())
            assert f"{ports[0]} (the service) by pid {holder.pid}" in said, said
            assert f"{ports[1]} (the Pub/Sub emulator) by pid {holder.pid}" in said, said
            assert f"kill -- -{holder.pid} (their process group)" in said, said
            assert "--port, --emulator-port" in said, said
            assert "starting the Pub/Sub emulator" not in terminal.output
        finally:
            holder.kill()


# -- python3 dev.py serve ---------------------------------------------------------


def serve(tmp_path: Path, terminals: list[Terminal]) -> tuple[Terminal, str, Path]:
    port = free_port()
    db = tmp_path / "records.duckdb"
    terminal = Terminal(
        [
            sys.executable,
            str(ROOT / "dev.py"),
            "serve",
            "--port",
            str(port),
            "--store",
            f"duckdb://{db}",
        ],
        cwd=tmp_path,
        markers=(str(tmp_path),),
    )
    terminals.append(terminal)
    return terminal, f"http://127.0.0.1:{port}", db


@pytest.mark.slow
def test_dev_py_serve_killed_with_sigterm_leaves_nothing_holding_the_store(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    # `kill PID` reaches the process the user started, and that process alone.
    terminal, url, db = serve(tmp_path, terminals)
    wait_ready(url, terminal)
    terminal.process.send_signal(signal.SIGTERM)
    assert_nothing_left(terminal, "SIGTERM", "once ready")
    assert "accepted rows drained, store closed" in terminal.output
    duckdb.connect(str(db)).close()  # the lock is free


@pytest.mark.slow
def test_dev_py_serve_stops_at_a_random_moment_of_start_up(
    tmp_path: Path, terminals: list[Terminal], rng: random.Random
) -> None:
    terminal, _url, db = serve(tmp_path, terminals)
    delay = rng.uniform(0, 4)
    time.sleep(delay)  # the moment of the stop is what is tested: a random one
    stop(terminal, rng.choice(["SIGTERM", "terminal closes"]))
    # A stop while dev.py still prepares the environment (its `call`) is passed on to
    # the child, and dev.py exits 128 + the signal, as a shell does.
    handled = frozenset({128 + signal.SIGTERM, 128 + signal.SIGHUP})
    allowed = handled | {0, -signal.SIGTERM, -signal.SIGHUP}
    assert_nothing_left(
        terminal, "a stop", f"{delay:.2f} s after the start, seed {SEED}", statuses=allowed
    )
    if db.exists():
        duckdb.connect(str(db)).close()


# -- recordline dev --serving, refused before anything starts ---------------------


def test_dev_serving_takes_no_store(tmp_path: Path, terminals: list[Terminal]) -> None:
    terminal = dev(tmp_path, terminals, emulator=True, extra=("--serving", "--store", "memory:"))
    assert terminal.wait(STOP_SECONDS) == 2, terminal.output
    assert "--serving runs on the BigQuery stand-in and Spanner's emulator" in terminal.output
    assert "starting" not in terminal.output
    assert list((tmp_path / "sessions").glob("*")) == []


def test_dev_serving_without_the_spanner_emulator_says_how_to_get_it(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    env = {**dev_env(tmp_path, emulator=True), "RECORDLINE_SPANNER_EMULATOR": "/no/emulator"}
    terminal, _port, _emulator_port = dev_terminal(tmp_path, "--serving", env=env)
    terminals.append(terminal)
    assert terminal.wait(STOP_SECONDS) == 1, terminal.output
    assert (
        "recordline dev --serving: Spanner emulator: RECORDLINE_SPANNER_EMULATOR=/no/emulator "
        "is not an executable" in terminal.output
    )
    assert "starting" not in terminal.output
    assert wait_until_gone(terminal.session, terminal.markers, timeout=5) == []


def test_a_free_port_is_one_no_outgoing_connection_can_take_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The kernel gives outgoing connections their local ports from its range: a port
    # chosen there could be taken by one before its listener binds it.
    from recordline_dev import processes

    low, _ = processes._outgoing_ports()
    ports = {processes.free_port() for _ in range(50)}
    assert len(ports) == 50
    assert all(processes.LOWEST_PORT <= p < low for p in ports)
    # Each worker of a parallel run draws from a share of its own.
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    shares = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        processes._ports.cache_clear()
        shares.append({processes.free_port() for _ in range(20)})
    processes._ports.cache_clear()
    half = processes.LOWEST_PORT + (low - processes.LOWEST_PORT) // 2
    assert all(p < half for p in shares[0])
    assert all(p >= half for p in shares[1])


def test_the_banners_replay_command_parses_whatever_its_token_starts_with() -> None:
    # A push token is `secrets.token_urlsafe`, which starts with `-` one time in 64: the
    # banner's `--token TOKEN` then read as a missing argument (a newcomer's pasted
    # command failed, and a run of the whole suite with it).
    token = "-leading-dash-token"
    stack = DevStack(
        service_url="http://127.0.0.1:8080",
        store="duckdb:///tmp/x.duckdb",
        emulator_host="127.0.0.1:8085",
        push_subscription="records-push",
        dead_letter_subscription="records-dead-letter-replay",
        push_token=token,
    )
    (line,) = [x for x in instructions(stack).splitlines() if " replay dead-letters " in x]
    words = shlex.split(line)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(words[words.index("replay") + 1 :])
    assert args.token == token

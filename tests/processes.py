"""Real process trees under a terminal of their own, for the tests and bench/stops.py.

`Terminal` runs a command as a user's shell would run it in a terminal: the
session leader, with a pseudo-terminal as its controlling terminal, so that
Ctrl-C (a ^C written to the terminal) reaches its foreground process group
through the line discipline, and closing the terminal sends SIGHUP, both as
the kernel does it. `left_behind` asks `ps` what is still there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from recordline_dev.processes import free_port
from tests.waiting import until_blocking

ROOT = Path(__file__).resolve().parent.parent
RECORDLINE = str(Path(sys.executable).with_name("recordline"))
# recordline dev's bounds: the service's stop (15 s), the emulator's (5 s), the
# group's SIGTERM (1 s) and SIGKILL (5 s), and room for a loaded machine.
STOP_SECONDS = 45
START_SECONDS = 120
# The last line of `recordline dev`'s banner: the stack is up.
BANNER = "Ctrl-C stops everything."

# A stand-in for the emulator's launcher: it boots for ever, and leaves a
# helper that ignores SIGTERM (as a wedged JVM would), so only a stop that ends
# with SIGKILL for the whole group gets rid of it. Both keep the launcher's
# path in their command line, for `left_behind` to find them wherever they went.
FAKE_EMULATOR = """#!/bin/sh
(trap '' TERM; exec tail -f "$0") &
exec tail -f "$0"
"""


def fake_emulator(directory: Path) -> Path:
    launcher = directory / "cloud-pubsub-emulator"
    launcher.write_text(FAKE_EMULATOR)
    launcher.chmod(0o755)
    return launcher


def _controlling_terminal() -> None:
    # In the child, after setsid(): stdin, the pty's slave end, becomes its terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _ignore_nothing(signum: int, frame: object) -> None:
    """A handler in name only: what matters is that a child's exec turns it into
    the signal's default action, where an ignored signal stays ignored."""


@contextlib.contextmanager
def signals_as_a_shell_gives_them() -> Iterator[None]:
    """While a child starts, the stop signals this process ignores are handled
    instead, so the child gets them at their defaults, as a shell gives a command it
    runs in a terminal. The suite may run as a background job (`… &` in a script:
    SIGINT and SIGQUIT ignored) or under nohup (SIGHUP ignored), and a child inherits
    what is ignored: Ctrl-C or the terminal closing would then reach nothing. (Not in
    the child itself: between fork and exec, with threads about, Python must not run.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
    ignored = [s for s in stops if signal.getsignal(s) == signal.SIG_IGN]
    for signum in ignored:
        signal.signal(signum, _ignore_nothing)
    try:
        yield
    finally:
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)


class Terminal:
    """`argv` running in a terminal of its own; what it printed is in `output`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        markers: Sequence[str] = (),
    ) -> None:
        # Text in the command line of every process the command starts: its
        # session is not enough, a child may have left it (setsid).
        self.markers = tuple(markers)
        master, slave = os.openpty()
        self._master = master
        with signals_as_a_shell_gives_them():
            self.process = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_controlling_terminal,
            )
        os.close(slave)
        self.session = self.process.pid
        self._chunks: list[bytes] = []
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(master,), daemon=True)
        self._reader.start()

    def _read(self, master: int) -> None:
        # The reader closes the terminal itself: a close() from another thread
        # while this one sits in read() would not release it, and the kernel
        # hangs up only once the last reference goes.
        try:
            while not self._closing.is_set():
                if not select.select([master], [], [], 0.05)[0]:
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: nobody holds the other end any more
                    chunk = b""
                if not chunk:
                    self._closing.wait()
                    return
                self._chunks.append(chunk)
        finally:
            os.close(master)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, text: str, *, timeout: float) -> bool:
        """Whether `text` shows within `timeout` seconds, or before the command ends."""
        with contextlib.suppress(AssertionError):  # the time ran out
            until_blocking(
                lambda: text in self.output or self.process.poll() is not None,
                timeout=timeout,
                interval=0.05,
            )
        return text in self.output

    def ctrl_c(self) -> None:
        """What a Ctrl-C does: the line discipline signals the foreground group."""
        assert not self._closing.is_set()
        os.write(self._master, b"\x03")

    def close(self) -> None:
        """The terminal window closes: the kernel hangs up on the session (SIGHUP)."""
        self._closing.set()
        self._reader.join(timeout=5)

    def wait(self, timeout: float) -> int:
        """The exit status; raises subprocess.TimeoutExpired if it does not stop in time."""
        return self.process.wait(timeout=timeout)

    def kill_everything(self) -> None:
        """Clean-up after a failed test: SIGKILL whatever it left."""
        for pid, _stat, _command in left_behind(self.session, self.markers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def left_behind(session: int, markers: Sequence[str] = ()) -> list[tuple[int, str, str]]:
    """Every process `ps` lists of session `session`, or with a marker in its command line.

    Pid, state, command; zombies included: a process nobody reaped is left
    behind too.
    """
    # -ww: whole command lines; cut at the screen's width, a marker may not show.
    listing = subprocess.run(
        ["ps", "-e", "-ww", "-o", "pid=,sid=,stat=,args="],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    left = []
    for line in listing.splitlines():
        pid, sid, stat, *rest = line.split(None, 3)
        command = rest[0] if rest else ""
        if int(pid) == os.getpid() or command.startswith("ps -e "):
            continue
        if int(sid) == session or any(marker in command for marker in markers):
            left.append((int(pid), stat, command))
    return left


def wait_until_gone(
    session: int, markers: Sequence[str] = (), *, timeout: float
) -> list[tuple[int, str, str]]:
    """What is left once nothing is, or `timeout` passes.

    A process stopped at once may take a moment to be reaped by its parent.
    """
    with contextlib.suppress(AssertionError):  # the time ran out
        until_blocking(lambda: not left_behind(session, markers), timeout=timeout, interval=0.1)
    return left_behind(session, markers)


def wait_ready(url: str, terminal: Terminal) -> None:
    """Until the service at `url` answers /readyz with 200; fails at once if it ends."""

    def ready() -> bool:
        assert terminal.process.poll() is None, terminal.output
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    until_blocking(
        ready,
        timeout=START_SECONDS,
        interval=0.1,
        what=lambda: f"{url}/readyz to answer 200\n{terminal.output}",
    )


def dev_terminal(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[Terminal, int, int]:
    """`recordline dev` in a terminal, on free ports, its sessions in `tmp_path`.

    Returns the terminal, the service's port and the emulator's.
    """
    port, emulator_port = free_port(), free_port()
    argv = [
        RECORDLINE,
        "dev",
        "--port",
        str(port),
        "--emulator-port",
        str(emulator_port),
        "--data-dir",
        str(tmp_path / "sessions"),
        *extra,
    ]
    # The service names its store (in tmp_path, or the one --store names) and
    # its port; the JVM its port; the stand-in emulator its path (in tmp_path).
    markers = (str(tmp_path), f"--port {port}", f"--port={emulator_port}")
    return Terminal(argv, env=env, cwd=tmp_path, markers=markers), port, emulator_port


def stop(terminal: Terminal, how: str) -> None:
    match how:
        case "ctrl-c":
            terminal.ctrl_c()
        case "terminal closes":
            terminal.close()
        case "SIGTERM":
            terminal.process.send_signal(signal.SIGTERM)


def assert_nothing_left(
    terminal: Terminal, how: str, when: str, *, statuses: frozenset[int] | None = None
) -> None:
    """It stops within bounds, with one of `statuses`, and `ps` lists nothing of its session.

    By default 0 (the stop was handled) or the signal's own status: before the
    interpreter handles it, its default action ends the process, with nothing
    started yet.
    """
    try:
        status = terminal.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{how} {when}: still running after {STOP_SECONDS} s\n{terminal.output}")
    left = wait_until_gone(terminal.session, terminal.markers, timeout=5)
    assert left == [], f"{how} {when} left {left}\n{terminal.output[-3000:]}"
    allowed = statuses or {0, -signal.SIGINT, -signal.SIGTERM, -signal.SIGHUP}
    assert status in allowed, f"{how} {when}: exit status {status}\n{terminal.output[-3000:]}"

"""The dev stack's child processes, started and stopped as one.

`recordline dev` runs the Pub/Sub emulator (a JVM behind a shell launcher) and
`recordline serve` (which has a journal writer process of its own). All of
them go into one process group, not the terminal's: a Ctrl-C reaches only
`recordline dev`, which stops the group in order (the service first, so it
drains in-flight pushes), waits a bounded time, then kills whatever is left
of the group. SIGINT, SIGTERM and SIGHUP (the terminal closing) stop it the
same way at any moment, the seconds while the JVM boots included: a signal
that arrives while a child is being forked takes effect once the child is on
the list, so none escapes the stop, and a second signal during the stop cuts
the waiting short.

Ports are checked before anything starts, and what answers on them once
started must be ours: an emulator or service left by an earlier run (a
killed `recordline dev`) is named, never reused with its old push token.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Self

import msgspec

# The signals that stop the stack: Ctrl-C, `kill`, the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# After SIGKILL a process is gone within milliseconds unless it is stuck in the
# kernel (a dead NFS mount); past this, it is reported rather than waited for.
KILL_SECONDS = 5.0
# `gcloud info` imports the whole CLI: ~2 s when warm, far more on a cold disk.
GCLOUD_INFO_SECONDS = 30.0
# How often a stop looks at its children while it waits.
_POLL_SECONDS = 0.05
# prctl(2): PR_SET_CHILD_SUBREAPER.
_PR_SET_CHILD_SUBREAPER = 36


class Interrupted(BaseException):
    """A stop signal arrived. A BaseException, as KeyboardInterrupt is, so that
    no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread, while installed.

    A signal the process was started with ignored (`nohup` ignores SIGHUP, a
    shell ignores SIGINT in background jobs) stays ignored, as the caller asked.
    Within `deferred()` a signal is noted and raised when the block ends; once
    `stopping`, it is only noted (and `hurry` set), so the stop runs to its end.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.hurry = False
        self.stopping = False
        self._deferring = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            self.hurry = True
            return
        self.received = signum
        if not self._deferring:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if self._deferring == 0 and self.received is not None and not self.stopping:
            raise Interrupted(self.received)


class Listener(msgspec.Struct, frozen=True):
    """A process listening on a TCP port."""

    pid: int
    pgid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now.

    SO_REUSEADDR as servers set it: the connections an earlier run left in
    TIME_WAIT do not make a port look taken, a listener does.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def listener(port: int) -> Listener | None:
    """The process listening on `port` (any address), as far as /proc tells.

    None where there is no /proc (not Linux), nobody listens, or the socket
    belongs to a process we may not look into (another user's).
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        return _describe(int(fd_dir.parent.name))
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def _describe(pid: int) -> Listener | None:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        pgid = os.getpgid(pid)
    except (OSError, ProcessLookupError):
        return None
    return Listener(pid=pid, pgid=pgid, command=_shorten(command))


def _shorten(command: str, limit: int = 160) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"


class PortTaken(RuntimeError):
    """Something else listens where a child of ours should; the message names it."""


def ensure_free(port: int, what: str, option: str) -> None:
    """Raise PortTaken, naming the listener, unless `port` is free on 127.0.0.1."""
    if port_is_free(port):
        return
    found = listener(port)
    if found is None:
        holder, stop = "by a process this system does not let us name", "stop it"
    else:
        holder, stop = f"by {found}", f"stop it (kill {found.pid})"
    raise PortTaken(
        f"port {port}, for the {what}, is taken {holder}; perhaps a {what} an earlier run "
        f"left behind: {stop}, or pick another port with {option}"
    )


def ensure_all_free(wanted: Sequence[tuple[int, str, str]]) -> None:
    """Raise PortTaken unless every (port, what, option) of `wanted` is free, naming
    every one taken at once: a `recordline dev` killed with -9 leaves a process on
    each of its ports, which one run at a time would find one port at a time."""
    taken = [(port, what, option) for port, what, option in wanted if not port_is_free(port)]
    if len(taken) <= 1:
        for port, what, option in taken:
            ensure_free(port, what, option)
        return
    found = [(port, what, listener(port)) for port, what, _ in taken]
    named = [
        f"{port} (the {what}) by {holder}"
        if holder is not None
        else f"{port} (the {what}) by a process this system does not let us name"
        for port, what, holder in found
    ]
    holders = [holder for _, _, holder in found if holder is not None]
    groups = {holder.pgid for holder in holders}
    if len(holders) == len(found) and len(groups) == 1:
        stop = f"kill -- -{groups.pop()} (their process group)"
    elif holders:
        stop = f"kill {' '.join(str(holder.pid) for holder in holders)}"
    else:
        stop = "stop them"
    options = ", ".join(option for _, _, option in taken)
    raise PortTaken(
        f"ports taken, perhaps by what an earlier run left behind: {'; '.join(named)}. "
        f"Stop them ({stop}), or pick other ports with {options}"
    )


def group_members(pgid: int) -> list[tuple[int, str]]:
    """Processes of group `pgid` that still run (pid, command), zombies aside.

    From /proc; where there is none, the group's existence is all one can
    know, and its leader stands for it.
    """
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [(pgid, "?")]
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the command, which is in parentheses and may hold spaces.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            state, group = fields[0], int(fields[2])
            if group == pgid and state != "Z":
                pid = int(stat.parent.name)
                found = _describe(pid)
                members.append((pid, found.command if found else "?"))
    return members


def become_subreaper() -> None:
    """Adopt our orphaned descendants, so that we can reap them.

    A child killed before its own child (the service before its journal
    writer) leaves an orphan, which goes to PID 1; in a container whose PID 1
    does not reap, its zombie then stays for good. As a subreaper (Linux) this
    process adopts it instead and `ProcessGroup.stop` reaps it. Elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Child(msgspec.Struct):
    name: str
    process: subprocess.Popen[bytes]
    stop_seconds: float


class ProcessGroup:
    """Children in one process group of their own; `stop` ends every process in it.

    The first child leads the group; later ones join it, and whatever they
    start (the JVM, the journal writer) is in it too, unless it moves itself.
    """

    def __init__(self, signals: StopSignals, *, say: Callable[[str], None]) -> None:
        self.signals = signals
        self.say = say
        self.pgid: int | None = None
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, stop_seconds: float, **popen: Any
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in the group; `stop` gives it `stop_seconds` after SIGTERM."""
        # Deferred: a signal between the fork and the list would lose the child.
        with self.signals.deferred():
            process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                argv,
                process_group=0 if self.pgid is None else self.pgid,
                stdin=subprocess.DEVNULL,
                **popen,
            )
            if self.pgid is None:
                self.pgid = process.pid
            self.children.append(Child(name, process, stop_seconds))
        return process

    def stop(self) -> list[tuple[int, str]]:
        """Stop every child, the last started first, then the whole group.

        Each child gets SIGTERM and its `stop_seconds`; then the group gets
        SIGTERM and a moment, then SIGKILL. Signals meanwhile only hurry it.
        Returns what still runs after all that (nothing, unless a process is
        stuck in the kernel).
        """
        self.signals.stopping = True
        if self.pgid is None:
            return []
        for child in reversed(self.children):
            if child.process.poll() is None:
                _signal(child.process.pid, signal.SIGTERM)
                if not self._wait(functools.partial(_exited, child.process), child.stop_seconds):
                    self.say(
                        f"recordline dev: the {child.name} did not stop within "
                        f"{child.stop_seconds:g} s of SIGTERM; killing it"
                    )
        pgid = self.pgid
        if not self._wait(lambda: not self._alive(pgid), 0):
            _killpg(pgid, signal.SIGTERM)
            if not self._wait(lambda: not self._alive(pgid), 1.0):
                _killpg(pgid, signal.SIGKILL)
                self._wait(lambda: not self._alive(pgid), KILL_SECONDS, hurry_ok=False)
        self._reap()
        return group_members(pgid)

    def _alive(self, pgid: int) -> bool:
        self._reap()
        return bool(group_members(pgid))

    def _reap(self) -> None:
        for child in self.children:
            child.process.poll()
        # Orphans of the group adopted by this process (see become_subreaper).
        if self.pgid is not None:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-self.pgid, os.WNOHANG)[0] > 0:
                    pass

    def _wait(self, done: Callable[[], bool], seconds: float, *, hurry_ok: bool = True) -> bool:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() >= deadline or (hurry_ok and self.signals.hurry):
                return done()
            time.sleep(_POLL_SECONDS)
        return True


def _exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _killpg(pgid: int, signum: int) -> None:
    # PermissionError: no member left that we may signal (one changed user).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class EmulatorNotFound(RuntimeError):
    """The emulator or Java is missing; the message says which and how to get it."""


def emulator_in_sdk(name: str, relative: Path, *, install: str, override: str) -> Path:
    """The emulator at `relative` in the Google Cloud CLI's installation.

    Raises EmulatorNotFound with a message that starts with `name` and says how to
    install it (`install`) or where else to point (`override`, a variable).
    """
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorNotFound(
            f"{name}: not found; install the Google Cloud CLI and {install}, or set {override}"
        )
    try:
        root = subprocess.run(  # noqa: S603 - our own argv, no shell
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            check=True,
            timeout=GCLOUD_INFO_SECONDS,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        raise EmulatorNotFound(f"{name}: `gcloud info` failed: {exc}") from None
    path = Path(root) / relative
    if not path.is_file():
        raise EmulatorNotFound(f"{name}: not installed in {root}; run {install}")
    return path


# Where free_port draws from: below the kernel's range for outgoing connections.
LOWEST_PORT = 10_000


def _outgoing_ports() -> tuple[int, int]:
    """The range the kernel takes a connection's local port from (Linux's default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


@functools.cache
def _ports() -> Iterator[int]:
    """This process's ports to try, in turn from a random start.

    A port the kernel chose (bind to 0) is one it also gives outgoing connections:
    between its choice and the listener's bind, a client's connection may take it,
    and the listener fails (Address already in use). So ports are drawn from below
    that range, each worker of a parallel test run (pytest-xdist) from a share of its
    own, so that two workers do not draw the same one at once.
    """
    low, high = LOWEST_PORT, _outgoing_ports()[0]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    share = (high - low) // max(workers, 1)
    if share < 1_000:  # a machine that hands out low ports: the kernel's choice
        return iter(())
    first = low + int(worker or 0) % workers * share
    start = int.from_bytes(os.urandom(4), "big") % share
    # Every port of the share once, a long stride apart: a caller that wants a port and
    # the one after it (the BigQuery stand-in's two) is not handed that next one.
    stride = next(p for p in (7919, 7907, 7901) if share % p)
    return iter([first + (start + i * stride) % share for i in range(share)])


def free_port() -> int:
    """A port nothing listens on now, unlikely to be taken before it is listened on."""
    for port in _ports():
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM the process group `process` leads, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        # Bounded even now: a process stuck in the kernel is left, not waited on forever.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=KILL_SECONDS)


def until_listening(
    port: int, process: subprocess.Popen[bytes], log: Path, what: str, seconds: float
) -> None:
    """Return once `process` (`what`) listens on loopback `port`; RuntimeError, with the
    end of its `log`, if it exits first or does not listen within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{what} exited {process.returncode}: {text[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {seconds:g} s")


def terminate(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM `process`, then SIGKILL it if it lingers past `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
